# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Helpers shared by the synbackup tests in the booted container (source after
# lib.sh): install the package, start the test Cortex, write an instance config.

# Install the package as an operator would: the .deb built from this tree
# (packaging/build-package; linted separately by tests/run-all), with apt.
sb_install() {
  local deb
  deb=$(SKIP_LINT=1 "$NS_REPO/packaging/build-package" deb | tail -n1)
  [ -f "$deb" ] || ns_die "no .deb built ($deb)"
  ns_copy_in "$deb" "/root/$(basename "$deb")"
  ns_exec env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "/root/$(basename "$deb")" >/dev/null
}

# Start the test Cortex NAME (/srv/cortex/NAME) and wait until it answers.
sb_cortex() {
  local name=$1
  ns_install_unit "$NS_DIR/units/synapse-cortex@.service"
  ns_copy_in "$NS_DIR/storm.py" /usr/local/bin/storm.py
  ns_exec systemctl start "synapse-cortex@$name.service"
  ns_exec storm.py wait "/srv/cortex/$name" --timeout 120
}

# Write /etc/synbackup/NAME.conf for the test Cortex NAME, extra lines from stdin.
sb_config() {
  local name=$1 extra
  extra=$(cat)
  ns_exec mkdir -p "/srv/backups/$name"
  printf '%s\n' \
    "SYNBACKUP_SERVICE_DIR=/srv/cortex/$name" \
    "SYNBACKUP_SERVICE_UNIT=synapse-cortex@$name.service" \
    "SYNBACKUP_BACKUP_ROOT=/srv/backups/$name" \
    "$extra" | ns_exec tee "/etc/synbackup/$name.conf" >/dev/null
  # The generator turns the config into ReadWritePaths= drop-ins.
  ns_exec systemctl daemon-reload
}

# `systemctl show -p PROP --value UNIT`
sb_prop() { ns_exec systemctl show -p "$2" --value "$1"; }
