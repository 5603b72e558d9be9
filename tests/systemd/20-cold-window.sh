#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The maintenance window (synbackup-cold@.service) on a real Cortex unit: a window on
# a Cortex with many deleted nodes ends with the service answering, every node there
# (counted, and a sample compared property by property), the directory smaller (also
# with SYNBACKUP_COMPACT=no, which is for nightly backups) and the old one kept. Then
# a fault at each step - the copy fails, verify fails, the service will not start on
# the new directory, the health check times out, SIGTERM during the copy - each ends
# with the original directory in place (same inode), the service active and
# answering, and the failure reported. On the way: the window puts no certificate
# directory into the live one, and a nightly run carries the unit user's
# ~/.syn/certs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

ns_boot t20
sb_install
sb_cortex cortex00
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
dir=/srv/cortex/cortex00
cold=synbackup-cold@cortex00.service
ns_exec storm.py add $dir 3000 >/dev/null
ns_exec storm.py storm $dir 'inet:ipv4 | limit 2200 | delnode' >/dev/null
# Nightly backups plain (SYNBACKUP_COMPACT=no): the window compacts all the same
# (the directory must end smaller).
sb_config cortex00 <<'CONF'
SYNBACKUP_STOP_TIMEOUT=90s
SYNBACKUP_HEALTH_TIMEOUT=120s
SYNBACKUP_COMPACT=no
CONF

count() { ns_exec storm.py count $dir inet:ipv4; }
# 100 nodes, each with every property and tag, as sorted JSON lines.
sample() {
  ns_exec /opt/synapse-venv/bin/python - <<'PY'
import asyncio, json
import synapse.telepath as t
async def main():
    out = []
    async with await t.openurl('cell:///srv/cortex/cortex00') as core:
        async for m in core.storm('inet:ipv4 | limit 100'):
            if m[0] == 'node':
                (form, valu), info = m[1]
                out.append(json.dumps([form, valu, info.get('props'), sorted(info.get('tags', {}))], sort_keys=True))
    print('\n'.join(sorted(out)))
asyncio.run(main())
PY
}
inode() { ns_exec stat -c %i $dir; }
usage() { ns_exec du -s --block-size=1 $dir | cut -f1; }
cold_result() { ns_exec python3 -c "import json;s=json.load(open('/var/lib/synbackup/cortex00.cold.json'));print(s['result'], s['exit_code'])"; }
answers() { ns_exec storm.py wait $dir --timeout 120 >/dev/null; }

# The service's certificate directory: ~/.syn/certs of the unit's user (root: the
# unit has no User=), made by easycert; and a synbackup-certs/ that a
# restore by hand (`cp -a`) of a backup left in the live directory.
ns_exec /opt/synapse-venv/bin/python -m synapse.tools.utils.easycert --certdir /root/.syn/certs --ca testca >/dev/null
ns_exec mkdir -p $dir/synbackup-certs/cas
ns_exec sh -c "echo stale >$dir/synbackup-certs/cas/stale.crt"

nodes=$(count)
ns_assert_eq 800 "$nodes" "nodes before the window"
before_sample=$(sample)
before_usage=$(usage)
before_inode=$(inode)

# 1. The window.
ns_exec systemctl start $cold
ns_assert_eq success "$(sb_prop $cold Result)" "window result"
ns_assert_eq active "$(sb_prop synapse-cortex@cortex00.service ActiveState)" "service after the window"
answers
ns_assert_eq "$nodes" "$(count)" "nodes after the window"
[ "$(sample)" = "$before_sample" ] || ns_die "sampled nodes differ after the window"
ns_log "ok: 100 sampled nodes identical, property by property"
after_usage=$(usage)
[ "$after_usage" -lt "$before_usage" ] || ns_die "not smaller: $before_usage -> $after_usage bytes"
ns_log "ok: directory $before_usage -> $after_usage bytes"
[ "$(inode)" != "$before_inode" ] || ns_die "the directory was not swapped"
ns_exec sh -c "ls -d $dir.pre-cold-*" >/dev/null || ns_die "the old directory was not kept"
ns_assert_eq "success 0" "$(cold_result)" "cold status"
ns_has 'maintenance window done' -- ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e03 -o cat
ns_log "report: $(ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e03 -o cat | tail -n1)"

# The window carries no certificate directory into the live one (the stale copy
# stays in the kept directory); the nightly run carries the unit user's.
ns_exec test ! -e $dir/synbackup-certs || ns_die "the window put synbackup-certs/ into the live directory"
ns_exec sh -c "test -f $dir.pre-cold-*/synbackup-certs/cas/stale.crt" || ns_die "the kept directory lost synbackup-certs/"
ns_exec systemctl start synbackup@cortex00.service
backup=$(ns_exec sh -c 'ls -d /srv/backups/cortex00/cortex00_*' | tail -n1)
ns_exec cmp /root/.syn/certs/cas/testca.crt "$backup/synbackup-certs/cas/testca.crt"
ns_assert_eq 600 "$(ns_exec stat -c %a "$backup/synbackup-certs/cas/testca.key")" "the CA key's mode in the backup (easycert: 644)"
ns_exec test ! -e "$backup/synbackup-certs/cas/stale.crt" || ns_die "the backup took the stale synbackup-certs/ of the service directory"
ns_log "ok: the window left synbackup-certs/ out of the live directory; the run carried /root/.syn/certs"

# A failed window must leave things exactly as they were.
# rolled_back WHAT INODE [RESULT]: the window failed and rolled back; its status
# result is RESULT (default failed; a window stopped by the operator is cancelled).
rolled_back() {
  local what=$1 ino=$2 want=${3:-failed}
  ns_assert_eq failed "$(sb_prop $cold ActiveState)" "$what: window unit state"
  ns_assert_eq "$ino" "$(inode)" "$what: the original directory (inode) in place"
  ns_exec test ! -e $dir.cold-new || ns_die "$what: the discarded copy is still there"
  ns_assert_eq active "$(sb_prop synapse-cortex@cortex00.service ActiveState)" "$what: service state"
  answers
  ns_assert_eq "$nodes" "$(count)" "$what: nodes"
  case "$(cold_result)" in "$want "*) ns_log "ok: $what: status says $(cold_result)";; *) ns_die "$what: status $(cold_result)";; esac
  ns_exec systemctl reset-failed $cold
}
fault() {
  ns_exec mkdir -p /etc/systemd/system/$cold.d
  printf '[Service]\nEnvironment=SYNBACKUP_FAULT=%s\n' "$1" | ns_exec tee /etc/systemd/system/$cold.d/fault.conf >/dev/null
  ns_exec systemctl daemon-reload
}
no_fault() { ns_exec rm -f /etc/systemd/system/$cold.d/fault.conf; ns_exec systemctl daemon-reload; }

# 2. The copy fails; 3. verification fails.
for f in cold-copy cold-verify; do
  ino=$(inode)
  fault $f
  if ns_exec systemctl start $cold; then ns_die "$f: the window succeeded"; fi
  rolled_back "$f" "$ino"
done
no_fault

# 4. The service will not start on the new directory (a drop-in that fails when
#    there is no lock.mdb yet, i.e. on a fresh copy); on the original it starts.
ns_exec mkdir -p /etc/systemd/system/synapse-cortex@cortex00.service.d
printf '[Service]\nExecStartPre=/bin/test -e %s/slabs/cell.lmdb/lock.mdb\n' $dir \
  | ns_exec tee /etc/systemd/system/synapse-cortex@cortex00.service.d/picky.conf >/dev/null
ns_exec systemctl daemon-reload
ino=$(inode)
if ns_exec systemctl start $cold; then ns_die "start-fails: the window succeeded"; fi
rolled_back "start-fails" "$ino"
ns_has 'failed to start' -- ns_journal -u $cold || ns_die "start-fails: the reason is not in the journal"
ns_exec rm /etc/systemd/system/synapse-cortex@cortex00.service.d/picky.conf
ns_exec systemctl daemon-reload

# 5. The health check times out (the Cortex needs more than 2 s to answer).
ns_exec sed -i 's/^SYNBACKUP_HEALTH_TIMEOUT=.*/SYNBACKUP_HEALTH_TIMEOUT=2s/' /etc/synbackup/cortex00.conf
ino=$(inode)
if ns_exec systemctl start $cold; then ns_die "health-timeout: the window succeeded"; fi
rolled_back "health-timeout" "$ino"
ns_exec sed -i 's/^SYNBACKUP_HEALTH_TIMEOUT=.*/SYNBACKUP_HEALTH_TIMEOUT=120s/' /etc/synbackup/cortex00.conf

# 6. SIGTERM (systemctl stop of the window) during the copy.
ns_exec dd if=/dev/zero of=$dir/bulk.bin bs=1M count=1500 status=none
copying() { sb_prop $cold StatusText | grep -q ' of '; }
ino=$(inode)
ns_exec systemctl start --no-block $cold
ns_wait_until 120 "the window's copy to start" copying
ns_exec systemctl stop $cold
rolled_back "sigterm" "$ino" cancelled
ns_has 'rolling back' -- ns_journal -u $cold || ns_die "sigterm: no rollback in the journal"
# Cancelled and rolled back cleanly: status tells so, and exits 0 (a problem
# would make it 9 until the next successful window, possibly a month away).
ns_has 'last maintenance window cancelled .*(exit 143, everything as it was)' -- ns_exec synbackup status cortex00 \
  || ns_die "status after the cancelled window: $(ns_exec synbackup status cortex00 || echo "exit $?")"
ns_poweroff
