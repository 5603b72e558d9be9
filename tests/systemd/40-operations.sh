#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Operations at production size, in a booted systemd with a real Cortex unit: a
# newcomer's first run with only the README's three lines (no backup root yet); a
# start timeout much shorter than a slowed copy and verify; an unmounted backup
# volume; the nightly run and the maintenance window started together (one waits,
# both recorded); `status` with the service stopped and crash-looping;
# `status` after a failed window; the final status line of a unit; a window's
# dry run without room for its copy.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

ns_boot t40
sb_install
sb_cortex cortex00
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
ns_exec storm.py add /srv/cortex/cortex00 100 >/dev/null
unit=synbackup@cortex00.service
cold=synbackup-cold@cortex00.service
finished() { case "$(sb_prop "$1" ActiveState)" in inactive|failed) true ;; *) false ;; esac; }
result_of() { ns_exec python3 -c "import json;print(json.load(open('/var/lib/synbackup/$1'))['result'])"; }

# 1. First use: the README's three lines, daemon-reload, start. The backup root does
#    not exist; the unit creates it, root-owned and 0700.
printf '%s\n' SYNBACKUP_SERVICE_DIR=/srv/cortex/cortex00 \
  SYNBACKUP_SERVICE_UNIT=synapse-cortex@cortex00.service \
  SYNBACKUP_BACKUP_ROOT=/srv/backups/cortex00 | ns_exec tee /etc/synbackup/cortex00.conf >/dev/null
ns_exec test ! -e /srv/backups/cortex00
ns_exec systemctl daemon-reload
ns_exec systemctl start $unit
ns_assert_eq success "$(sb_prop $unit Result)" "a newcomer's first run"
ns_assert_eq "root root 700" "$(ns_exec stat -c '%U %G %a' /srv/backups/cortex00)" "the backup root the unit made"
# The unit's last STATUS= is the result (or nothing), never a stale progress line.
shown=$(sb_prop $unit StatusText)
ns_log "StatusText after the run: '$shown'"
if printf '%s' "$shown" | grep -q '%)'; then ns_die "a finished run still shows progress: $shown"; fi

# 2. A start timeout far shorter than the copy and the verify (each slowed by fault
#    injection): systemd is kept informed through both, the run succeeds.
ns_exec dd if=/dev/zero of=/srv/cortex/cortex00/bulk.bin bs=1M count=60 status=none
ns_exec mkdir -p /etc/systemd/system/$unit.d
printf '[Service]\nTimeoutStartSec=5s\nEnvironment=SYNBACKUP_FAULT=delay:copy-chunk:150,delay:verify:130000\n' \
  | ns_exec tee /etc/systemd/system/$unit.d/slow.conf >/dev/null
ns_exec systemctl daemon-reload
t0=$(date +%s)
ns_exec systemctl start $unit
took=$(( $(date +%s) - t0 ))
ns_assert_eq success "$(sb_prop $unit Result)" "a run ${took}s long under TimeoutStartSec=5s"
[ "$took" -gt 135 ] || ns_die "the slowed run took only ${took}s: the test proves nothing"
ns_exec rm /etc/systemd/system/$unit.d/slow.conf
ns_exec rm /srv/cortex/cortex00/bulk.bin

# 3. An unmounted backup volume: the unit fails on its mount dependency and writes
#    nothing into the mount point on the root file system.
# The volume's device holds no file system: the mount fails, as a missing disk's would.
ns_exec truncate -s 1M /srv/vol.img
printf '[Mount]\nWhat=/srv/vol.img\nWhere=/srv/vol\nType=ext4\n' \
  | ns_exec tee /etc/systemd/system/srv-vol.mount >/dev/null
printf '%s\n' SYNBACKUP_SERVICE_DIR=/srv/cortex/cortex00 SYNBACKUP_BACKUP_ROOT=/srv/vol/cortex00 \
  | ns_exec tee /etc/synbackup/vol.conf >/dev/null
ns_exec systemctl daemon-reload
if ns_exec systemctl start synbackup@vol.service; then ns_die "a run onto an unmounted volume succeeded"; fi
ns_exec test ! -e /srv/vol/cortex00 || ns_die "something was written into the unmounted mount point"
ns_has 'Dependency failed' -- ns_journal -u synbackup@vol.service \
  || ns_log "note: no 'Dependency failed' line for synbackup@vol.service"
ns_exec rm /etc/synbackup/vol.conf /etc/systemd/system/srv-vol.mount /srv/vol.img
ns_exec systemctl daemon-reload
ns_exec systemctl reset-failed

# 4. The nightly run and the window started together: one waits for the other's
#    lock, both complete, both are recorded.
ns_exec systemctl start --no-block $unit
ns_exec systemctl start --no-block $cold
ns_wait_until 300 "the run to finish" finished $unit
ns_wait_until 300 "the window to finish" finished $cold
ns_assert_eq success "$(sb_prop $unit Result)" "the run started with the window"
ns_assert_eq success "$(sb_prop $cold Result)" "the window started with the run"
ns_assert_eq success "$(result_of cortex00.json)" "run status"
ns_assert_eq success "$(result_of cortex00.cold.json)" "window status"
ns_has 'waiting up to .* for the lock held by' -- ns_journal -u $unit -u $cold \
  || ns_die "neither waited for the other"
ns_exec storm.py wait /srv/cortex/cortex00 --timeout 120

# 5. A service that is not running is something status reports (issue 34, item 3):
#    stopped, then crash-looping; a nightly run meanwhile backs up the directory as
#    it is on disk and says so at the default log level. Brought back after.
cortex=synapse-cortex@cortex00.service
status_of() { set +e; out=$(ns_exec synbackup status cortex00 2>&1); rc=$?; set -e; }
ns_exec systemctl stop $cortex
status_of
ns_log "status with the service stopped (exit $rc): $out"
ns_assert_eq 9 "$rc" "status exit code with the service stopped"
printf '%s\n' "$out" | grep -qE "^cortex00: PROBLEM: $cortex is (inactive|failed): the service is not running" \
  || ns_die "status with the service stopped: $out"
ns_exec systemctl start $unit
ns_assert_eq success "$(sb_prop $unit Result)" "a nightly run with the service stopped"
ns_has -E "$cortex is (inactive|failed): the service is not running: backing up its directory as it is on disk, without a freeze" \
  -- ns_journal -u $unit || ns_die "the nightly run did not say the service was not running"
ns_exec mkdir -p /etc/systemd/system/$cortex.d
printf '[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStartPre=/bin/false\nRestart=always\nRestartSec=2\n' \
  | ns_exec tee /etc/systemd/system/$cortex.d/crash.conf >/dev/null
ns_exec systemctl daemon-reload
ns_exec systemctl start --no-block $cortex
restarting() { [ "$(sb_prop $cortex NRestarts)" -ge 1 ]; }
ns_wait_until 60 "the service to crash and restart" restarting
status_of
ns_log "status with the service crash-looping (exit $rc): $out"
ns_assert_eq 9 "$rc" "status exit code with the service crash-looping"
printf '%s\n' "$out" | grep -q "PROBLEM: .*$cortex is activating (starting, or restarting after a crash)" \
  || ns_die "status with the service crash-looping: $out"
ns_exec rm /etc/systemd/system/$cortex.d/crash.conf
ns_exec systemctl daemon-reload
ns_exec systemctl stop $cortex
# Its start-rate counter cleared (a unit stopped clean is unloaded: nothing to reset).
ns_exec systemctl reset-failed $cortex 2>/dev/null || true
ns_exec systemctl start $cortex
ns_exec storm.py wait /srv/cortex/cortex00 --timeout 120
ns_exec synbackup status cortex00

# 6. A failed window (verify fails, rolled back): status says so and exits 9.
ns_exec synbackup status cortex00
ns_exec mkdir -p /etc/systemd/system/$cold.d
printf '[Service]\nEnvironment=SYNBACKUP_FAULT=cold-verify\n' | ns_exec tee /etc/systemd/system/$cold.d/fault.conf >/dev/null
ns_exec systemctl daemon-reload
if ns_exec systemctl start $cold; then ns_die "the faulted window succeeded"; fi
set +e
out=$(ns_exec synbackup status cortex00)
rc=$?
set -e
ns_log "status after the failed window: $out"
ns_assert_eq 9 "$rc" "status exit code after a failed window"
printf '%s\n' "$out" | grep -q '^cortex00: PROBLEM: last maintenance window failed' || ns_die "status: $out"
shown=$(sb_prop $cold StatusText)
ns_log "StatusText after the failed window: '$shown'"
if printf '%s' "$shown" | grep -qE '%\)|rolling back'; then ns_die "a finished window still shows: $shown"; fi
ns_exec rm /etc/systemd/system/$cold.d/fault.conf
ns_exec systemctl daemon-reload
ns_exec systemctl reset-failed

# 7. A window whose copy would not fit beside the directory (a Cortex on a small
#    file system, filled): its dry run says so with the numbers and exits 4, as
#    the window itself does, which stops nothing.
tiny=synapse-cortex@tiny.service
ns_exec mkdir -p /srv/small
ns_exec mount -t tmpfs -o size=128m,mode=755 tmpfs /srv/small
ns_defer ns_exec umount /srv/small
ns_exec mkdir -p /etc/systemd/system/$tiny.d
printf '[Service]\nExecStart=\nExecStart=/opt/synapse-venv/bin/python -m synapse.servers.cortex --telepath tcp://127.0.0.1:0 --https 0 /srv/small/tiny\n' \
  | ns_exec tee /etc/systemd/system/$tiny.d/small.conf >/dev/null
printf '%s\n' SYNBACKUP_SERVICE_DIR=/srv/small/tiny SYNBACKUP_SERVICE_UNIT=$tiny \
  SYNBACKUP_BACKUP_ROOT=/srv/backups/tiny | ns_exec tee /etc/synbackup/tiny.conf >/dev/null
ns_exec systemctl daemon-reload
ns_exec systemctl start $tiny
ns_defer ns_exec systemctl stop $tiny
ns_exec storm.py wait /srv/small/tiny --timeout 120
free=$(ns_exec df --output=avail -B1 /srv/small | tail -n1)
ns_exec fallocate -l $((free - 256 * 1024)) /srv/small/filler
set +e
plan=$(ns_exec synbackup cold tiny --dry-run)
rc=$?
set -e
ns_log "cold --dry-run without room (exit $rc): $plan"
ns_assert_eq 4 "$rc" "the dry run's exit code without room"
for w in "tiny: would copy /srv/small/tiny (" ": NOT ENOUGH ROOM" \
  "tiny: the real window would refuse here (exit 4): not enough space next to /srv/small/tiny: the compacted copy needs"; do
  printf '%s\n' "$plan" | grep -qF "$w" || ns_die "the dry run does not say '$w': $plan"
done
set +e
ns_exec synbackup cold tiny
rc=$?
set -e
ns_assert_eq 4 "$rc" "the window's own exit code without room"
ns_assert_eq active "$(sb_prop $tiny ActiveState)" "the small Cortex after the refused window"
ns_exec storm.py wait /srv/small/tiny --timeout 60
ns_poweroff
