#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# synbackup-drill@.service and synbackup-drill@.timer as installed by the .deb, in a
# booted systemd: the drill takes the Python and module from the Cortex unit's
# ExecStart, boots the newest verified backup isolated under the hardened unit,
# records status and metrics, writes the pass MESSAGE_ID, leaves no scratch copy;
# the timer is shipped but not enabled.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

ns_boot t40
sb_install
sb_cortex cortex00
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
ns_exec storm.py add /srv/cortex/cortex00 50 >/dev/null
sb_config cortex00 </dev/null
ns_exec mkdir -p /var/lib/prometheus/node-exporter

# The timer is shipped, not enabled.
ns_assert_eq disabled "$(ns_exec systemctl is-enabled synbackup-drill@cortex00.timer || true)" "drill timer"
ns_exec systemd-analyze verify synbackup-drill@cortex00.service synbackup-drill@cortex00.timer

ns_exec systemctl start synbackup@cortex00.service
ns_assert_eq success "$(sb_prop synbackup@cortex00.service Result)" "Result of the backup"

# The drill (oneshot: start returns when it is done).
ns_exec systemctl start synbackup-drill@cortex00.service
ns_assert_eq success "$(sb_prop synbackup-drill@cortex00.service Result)" "Result of the drill"
counts=$(ns_exec python3 -c 'import json;d=json.load(open("/var/lib/synbackup/cortex00.drill.json"));print(d["result"], d["details"]["form_counts"]["inet:ipv4"])')
ns_assert_eq "success 50" "$counts" "drill status and node count"
ns_exec grep -q 'synbackup_drill_boot_seconds{instance="cortex00"}' /var/lib/prometheus/node-exporter/synbackup-cortex00-drill.prom
ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e16 SYNBACKUP_INSTANCE=cortex00 -o cat | grep -q 'drill passed'
left=$(ns_exec sh -c 'ls -a /srv/backups/cortex00 | grep -c synbackup-drill || true')
ns_assert_eq 0 "$left" "scratch copies left"
# The live Cortex still answers.
ns_assert_eq 50 "$(ns_exec storm.py count /srv/cortex/cortex00 inet:ipv4)" "live nodes after the drill"
