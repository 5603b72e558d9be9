# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Helpers shared by the synbackup tests in the booted container (source after
# lib.sh): install the package, start the test Cortex, write an instance config.

# The crate's version (Cargo.toml).
sb_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$NS_REPO/Cargo.toml" | head -n1
}

# sb_deb [REVISION]: the path of this tree's .deb with Debian revision REVISION (1 or
# 2, default 1): the one `run` built once for the whole run (NS_DEB_1, NS_DEB_2), or,
# when a test runs on its own, built now. packaging/build-package with SKIP_LINT=1:
# tests/run-all lints the packages.
sb_deb() {
  local rev=${1:-1} var deb
  var=NS_DEB_$rev
  deb=${!var:-}
  if [ -z "$deb" ]; then
    deb=$(SKIP_LINT=1 "$NS_REPO/packaging/build-package" deb "$(sb_version)-$rev" | tail -n1)
  fi
  [ -f "$deb" ] || ns_die "no .deb for revision $rev ($deb)"
  echo "$deb"
}

# Install the package as an operator would: the .deb built from this tree, with apt.
sb_install() {
  local deb
  deb=$(sb_deb 1)
  ns_copy_in "$deb" "/root/$(basename "$deb")"
  ns_exec env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "/root/$(basename "$deb")" >/dev/null
}

# sb_cortex NAME [TOP]: start the test Cortex NAME on TOP/cortex/NAME (TOP: /srv, or
# e.g. /srv/xfs, another filesystem: then a drop-in points the unit there, as an
# operator would) and wait until it answers.
sb_cortex() {
  local name=$1 top=${2:-/srv} d
  ns_install_unit "$NS_DIR/units/synapse-cortex@.service"
  ns_copy_in "$NS_DIR/storm.py" /usr/local/bin/storm.py
  if [ "$top" != /srv ]; then
    d=/etc/systemd/system/synapse-cortex@$name.service.d
    ns_exec mkdir -p "$top/cortex" "$d"
    ns_exec sed -n "s|^ExecStart=\(.*\) /srv/cortex/%i\$|[Service]\nExecStart=\nExecStart=\1 $top/cortex/%i|p" \
      /etc/systemd/system/synapse-cortex@.service | ns_exec tee "$d/dir.conf" >/dev/null
    ns_exec grep -q "$top/cortex/%i" "$d/dir.conf" || ns_die "sb_cortex: no ExecStart to point at $top"
    ns_exec systemctl daemon-reload
  fi
  ns_exec systemctl start "synapse-cortex@$name.service"
  ns_exec storm.py wait "$top/cortex/$name" --timeout 120
}

# sb_config NAME [TOP]: write /etc/synbackup/NAME.conf for the test Cortex NAME on
# TOP/cortex/NAME (default /srv), backups in TOP/backups/NAME, extra lines from stdin.
sb_config() {
  local name=$1 top=${2:-/srv} extra
  extra=$(cat)
  ns_exec mkdir -p "$top/backups/$name"
  printf '%s\n' \
    "SYNBACKUP_SERVICE_DIR=$top/cortex/$name" \
    "SYNBACKUP_SERVICE_UNIT=synapse-cortex@$name.service" \
    "SYNBACKUP_BACKUP_ROOT=$top/backups/$name" \
    "$extra" | ns_exec tee "/etc/synbackup/$name.conf" >/dev/null
  # The generator turns the config into ReadWritePaths= drop-ins.
  ns_exec systemctl daemon-reload
}

# `systemctl show -p PROP --value UNIT`
sb_prop() { ns_exec systemctl show -p "$2" --value "$1"; }
