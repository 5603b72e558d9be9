# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Helpers shared by the synbackup tests in the booted container (source after
# lib.sh): install synbackup, start the test Cortex, write an instance config.

# The binary under test: $SYNBACKUP_BIN, else the release build of this repo.
SB_BIN=${SYNBACKUP_BIN:-$NS_REPO/target/release/synbackup}

# Install the binary, units, generator link and static sysctl file as the package
# lays them out (the package test installs the real .deb instead).
sb_install() {
  [ -x "$SB_BIN" ] || ns_die "no synbackup binary at $SB_BIN (cargo build --release)"
  ns_copy_in "$SB_BIN" /usr/bin/synbackup
  local u
  for u in "$NS_REPO"/systemd/*; do
    ns_copy_in "$u" "/usr/lib/systemd/system/$(basename "$u")"
  done
  ns_exec mkdir -p /usr/lib/systemd/system-generators /etc/synbackup
  ns_exec ln -sf /usr/bin/synbackup /usr/lib/systemd/system-generators/synbackup-generator
  ns_exec systemctl daemon-reload
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
