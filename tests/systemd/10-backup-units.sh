#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# synbackup@.service and synbackup@.timer in a booted systemd, against a real Cortex
# running as a unit: a verified backup, progress in `systemctl status`, the journal's
# MESSAGE_ID, the timer, a failing run, and the units' verification and exposure.
# Then, in the same container (one boot and one Cortex for all of it): the test
# Cortex itself (it answers on its unix socket, stores nodes, stops cleanly; the
# harness's smoke test, formerly 00-boot-cortex), and after a reboot
# synbackup-sysctl.service at boot (formerly 15-sysctl-boot): /run starts empty and
# the drop-in computed from this host's RAM is there again, written before
# systemd-sysctl.service started, part of the configuration systemd-sysctl reads,
# with the values `synbackup sysctl` computes; an administrator's /etc/sysctl.d
# file of the same name wins. (/proc/sys/vm is read-only in the container: the
# kernel's values cannot change here, so they are not compared.)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

ns_boot t10
sb_install
ns_assert_eq enabled "$(ns_exec systemctl is-enabled synbackup-sysctl.service)" "synbackup-sysctl.service enabled by the package"
start=$SECONDS
sb_cortex cortex00
ns_log "cortex answered $((SECONDS - start)) s after its unit was started"
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
ns_assert_eq 200 "$(ns_exec storm.py add /srv/cortex/cortex00 200)" "nodes added"
ns_assert_eq 200 "$(ns_exec storm.py count /srv/cortex/cortex00 inet:ipv4)" "inet:ipv4 count"
# Enough data that a run lasts long enough to watch its status line.
ns_exec dd if=/dev/zero of=/srv/cortex/cortex00/bulk.bin bs=1M count=1500 status=none
sb_config cortex00 </dev/null
# node_exporter's textfile directory, as its package creates it.
ns_exec mkdir -p /var/lib/prometheus/node-exporter

unit=synbackup@cortex00.service
has_progress() { sb_prop $unit StatusText | grep -q '^copying /srv/cortex/cortex00: .* of '; }
finished() { [ "$(sb_prop $unit ActiveState)" = inactive ] || [ "$(sb_prop $unit ActiveState)" = failed ]; }
success_event() {
  ns_has 'backed up' -- ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e01 SYNBACKUP_INSTANCE=cortex00 -o cat
}

# 1. A verified backup of the running Cortex; the unit ends inactive with success.
ns_exec systemctl start --no-block $unit
ns_wait_until 60 "a STATUS= progress line" has_progress
shown=$(ns_exec systemctl status --no-pager $unit || true)
printf '%s\n' "$shown" | grep -E 'Status: "copying /srv/cortex/cortex00: .* of 1\.[0-9] GiB' \
  || ns_die "systemctl status shows no progress line: $shown"
ns_wait_until 300 "the backup to finish" finished
ns_assert_eq success "$(sb_prop synbackup@cortex00.service Result)" "Result of the run"
backup=$(ns_exec sh -c 'ls -d /srv/backups/cortex00/cortex00_*' | head -n1)
[ -n "$backup" ] || ns_die "no backup in /srv/backups/cortex00"
ns_exec synbackup verify "$backup"
ns_exec test -f "$backup/synbackup-verified"
ns_assert_eq success "$(ns_exec python3 -c 'import json;print(json.load(open("/var/lib/synbackup/cortex00.json"))["result"])')" "status file"
ns_exec grep -q 'synbackup_last_success{instance="cortex00"} 1' /var/lib/prometheus/node-exporter/synbackup-cortex00.prom
# The freeze happened (the Cortex logs it) and the service takes edits after it.
ns_has 'Resuming normal operations from a freeze' -- ns_journal -u synapse-cortex@cortex00.service
ns_exec storm.py add /srv/cortex/cortex00 5 --start 9000 >/dev/null

# 2. The journal has the success event with the instance as a field.
ns_wait_until 10 "the success event in the journal" success_event

# 3. The timer, made to fire soon by a drop-in, runs the service again.
ns_exec mkdir -p /etc/systemd/system/synbackup@cortex00.timer.d
printf '[Timer]\nOnCalendar=\nOnActiveSec=2s\nRandomizedDelaySec=0\nAccuracySec=1s\n' \
  | ns_exec tee /etc/systemd/system/synbackup@cortex00.timer.d/soon.conf >/dev/null
ns_exec systemctl daemon-reload
first=$(sb_prop synbackup@cortex00.service ExecMainStartTimestampMonotonic)
ns_exec systemctl start synbackup@cortex00.timer
ns_has 'synbackup@cortex00.timer' -- ns_exec systemctl list-timers --all --no-pager
ran_again() { [ "$(sb_prop $unit ExecMainStartTimestampMonotonic)" != "$first" ] && finished; }
ns_wait_until 300 "the timer to run the backup again" ran_again
ns_assert_eq success "$(sb_prop synbackup@cortex00.service Result)" "Result of the timer's run"
ns_exec systemctl stop synbackup@cortex00.timer

# 4. Restore the first backup (200 nodes) over the running Cortex (205 nodes now):
#    restore --instance stops the unit, swaps, starts it again and keeps the old dir.
ns_assert_eq 205 "$(ns_exec storm.py count /srv/cortex/cortex00 inet:ipv4)" "nodes before restore"
ns_has 'to undo:' -- ns_exec synbackup restore --instance cortex00 "$backup"
ns_assert_eq active "$(sb_prop synapse-cortex@cortex00.service ActiveState)" "service after restore"
ns_exec storm.py wait /srv/cortex/cortex00 --timeout 120
ns_assert_eq 200 "$(ns_exec storm.py count /srv/cortex/cortex00 inet:ipv4)" "nodes after restore"
ns_exec sh -c 'ls -d /srv/cortex/cortex00.pre-restore-*' >/dev/null || ns_die "the old directory was not kept"

# 5. A failing run: the backup root is edited without `systemctl daemon-reload`, so
#    it is outside the unit's writable paths (read-only under ProtectSystem=strict).
#    The unit fails, status and metrics say so, the journal has one line with the
#    failure MESSAGE_ID that names the path and the fix.
ns_exec sed -i 's|^SYNBACKUP_BACKUP_ROOT=.*|SYNBACKUP_BACKUP_ROOT=/usr/local/lib/nowhere|' /etc/synbackup/cortex00.conf
if ns_exec systemctl start synbackup@cortex00.service; then ns_die "a run into a read-only root succeeded"; fi
ns_assert_eq failed "$(sb_prop synbackup@cortex00.service ActiveState)" "unit state after a failed run"
ns_assert_eq failed "$(ns_exec python3 -c 'import json;print(json.load(open("/var/lib/synbackup/cortex00.json"))["result"])')" "status file after failure"
ns_exec grep -q 'synbackup_last_success{instance="cortex00"} 0' /var/lib/prometheus/node-exporter/synbackup-cortex00.prom
lines=$(ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e02 SYNBACKUP_INSTANCE=cortex00 -o cat)
ns_log "failure event: $lines"
ns_assert_eq 1 "$(printf '%s\n' "$lines" | grep -c 'backup failed: cannot create the backup root /usr/local/lib/nowhere')" "one journal line saying why"
printf '%s\n' "$lines" | grep -q "outside this unit's writable paths.*systemctl daemon-reload" \
  || ns_die "the failure does not say that daemon-reload picks up the config: $lines"
ns_exec systemctl reset-failed synbackup@cortex00.service

# 6. Every unit verifies; record the exposure of the hardened ones.
for u in synbackup@cortex00.service synbackup@cortex00.timer synbackup-cold@cortex00.service \
         synbackup-cold@cortex00.timer synbackup-sysctl.service synbackup-failure@x.service; do
  ns_exec systemd-analyze verify "$u"
done
for u in synbackup@cortex00.service synbackup-cold@cortex00.service synbackup-sysctl.service; do
  ns_log "exposure $u: $(ns_exec systemd-analyze security --no-pager "$u" | tail -n1)"
done

# 7. A clean stop of the Cortex: the unit ends inactive (not failed), and the service
#    dir is on the host's disk, where backups read it.
ns_exec systemctl stop synapse-cortex@cortex00.service
ns_assert_eq inactive "$(ns_exec systemctl is-active synapse-cortex@cortex00.service || true)" "Cortex unit state after stop"
[ -f "$NS_SRV/cortex/cortex00/cell.guid" ] || ns_die "no cell.guid in $NS_SRV/cortex/cortex00"

# 8. A reboot keeps what the container wrote (the installed units) and /srv; /run
#    starts empty, and synbackup-sysctl.service writes the drop-in again at boot.
ns_reboot
ns_exec systemctl cat synapse-cortex@.service >/dev/null
ns_exec test -f /srv/cortex/cortex00/cell.guid
dropin=/run/sysctl.d/61-synbackup-memory.conf
ns_exec test -s $dropin || ns_die "no $dropin after boot"
ns_assert_eq active "$(sb_prop synbackup-sysctl.service ActiveState)" "synbackup-sysctl.service after boot"
# Ordering: ours finished before systemd-sysctl.service began (or was skipped).
ours=$(sb_prop synbackup-sysctl.service ExecMainExitTimestampMonotonic)
theirs=$(sb_prop systemd-sysctl.service InactiveExitTimestampMonotonic)
ns_log "synbackup-sysctl done at $ours us, systemd-sysctl left inactive at $theirs us"
if [ "$ours" -le 0 ] || [ "$ours" -gt "$theirs" ]; then
  ns_die "synbackup-sysctl did not run before systemd-sysctl"
fi

# systemd-sysctl's configuration includes the drop-in, with the computed values.
want=$(ns_exec synbackup sysctl | grep '^vm\.')
config=$(ns_exec /lib/systemd/systemd-sysctl --cat-config)
printf '%s\n' "$config" | grep -qxF "# $dropin" || ns_die "systemd-sysctl does not read $dropin"
while read -r line; do
  printf '%s\n' "$config" | grep -qxF "$line" || ns_die "systemd-sysctl's configuration lacks: $line"
done <<<"$want"
ns_log "ok: systemd-sysctl reads: $(printf '%s' "$want" | xargs)"
ns_exec grep -q '^vm.dirty_expire_centisecs *= *20' /usr/lib/sysctl.d/60-synbackup.conf

# An administrator's file of the same name in /etc wins over ours in /run.
printf 'vm.dirty_ratio = 7\n' | ns_exec tee /etc/sysctl.d/61-synbackup-memory.conf >/dev/null
config=$(ns_exec /lib/systemd/systemd-sysctl --cat-config)
printf '%s\n' "$config" | grep -qxF "# /etc/sysctl.d/61-synbackup-memory.conf" || ns_die "the admin's file is not read"
printf '%s\n' "$config" | grep -qxF "# $dropin" && ns_die "ours is still read next to the admin's file"
ns_log "ok: /etc/sysctl.d/61-synbackup-memory.conf overrides the generated drop-in"
ns_poweroff
