#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Smoke test of the harness itself: a real Cortex runs as a systemd unit in the
# container, answers on its unix socket, stores nodes, and stops cleanly. If this
# fails, every later test would fail for the same reason.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns_boot t00
ns_install_unit "$NS_DIR/units/synapse-cortex@.service"
ns_copy_in "$NS_DIR/storm.py" /usr/local/bin/storm.py

ns_exec systemctl start synapse-cortex@test00.service
ns_defer ns_exec systemctl stop synapse-cortex@test00.service
start=$SECONDS
ns_exec storm.py wait /srv/cortex/test00 --timeout 90
ns_log "cortex answered after $((SECONDS - start)) s"

ns_assert_eq 50 "$(ns_exec storm.py add /srv/cortex/test00 50)" "nodes added"
ns_assert_eq 50 "$(ns_exec storm.py count /srv/cortex/test00 inet:ipv4)" "inet:ipv4 count"

# A clean stop: the unit ends inactive (not failed) and the service dir is on the
# host's disk, where backups will read it.
ns_exec systemctl stop synapse-cortex@test00.service
ns_assert_eq inactive "$(ns_exec systemctl is-active synapse-cortex@test00.service || true)" "unit state after stop"
[ -f "$NS_SRV/cortex/test00/cell.guid" ] || ns_die "no cell.guid in $NS_SRV/cortex/test00"

# A reboot keeps what the container wrote (the installed unit) and /srv.
ns_reboot
ns_exec systemctl cat synapse-cortex@.service >/dev/null
ns_exec test -f /srv/cortex/test00/cell.guid
ns_poweroff
