#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The maintenance window and restore must lose nothing and never leave the service
# down (issue: "lose nothing, never leave the service down"), on a real Cortex unit:
#  1. a window on a Cortex with a backups/ tree made by Synapse's own runBackup, an
#     Axon blob, and directories in SYNBACKUP_SKIPDIRS: every path, owner, mode,
#     time and byte is still in the live directory (environments compacted);
#  2. the kept DIR.pre-cold-* outlives the next nightly run (expiry by the time
#     recorded in its name, and the run may remove an expired one under the unit);
#  3. restore by backup name (health checked, status and journal recorded); restore
#     failing after the stop (fault points) rolls back: same directory, unit active;
#     a mistyped SERVICE_UNIT fails at once;
#  4. a window whose files stay held after the stop: the unit is started again;
#  5. a unit with Restart=on-failure and a start-rate limit, and a unit BindsTo= it:
#     after a rolled-back window both are active;
#  6. a second SIGTERM during rollback: the rollback finishes, status recorded;
#  7. the service's user (the directory given to nobody) swaps, between the scan
#     and the copy of a window, a file for a link to a root-only file, then an
#     environment's data.mdb for a link to a root-only environment: the window fails
#     naming the path and rolls back (the directory as it was, the service active),
#     and the secrets are nowhere (live and kept directories, output, status);
#  8. a service directory that is a mount point: window and restore refuse before
#     stopping anything;
#  9. on XFS (issue 36: a second Cortex, its directory and backup root on one XFS
#     with reflinks, loop-mounted by the host before the boot): the window
#     succeeds, every node, path and byte carried; its plain files (Synapse's
#     backups/, a blob) share their extents with the kept directory (FIEMAP's
#     shared flag, `filefrag -v`) and take no room, its compacted environments share
#     none; a nightly backup of that directory shares no extent (a backup is a
#     second copy of the data); a window failing its health check rolls back with
#     every node, path and byte.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

# 9.'s filesystem: made and mounted on the host before the boot, bound in.
ns_xfs 4G
ns_boot t21 --bind="$NS_XFS:/srv/xfs"
sb_install
sb_cortex cortex00
svc=synapse-cortex@cortex00.service
ns_defer ns_exec systemctl stop $svc
dir=/srv/cortex/cortex00
cold=synbackup-cold@cortex00.service
ns_exec storm.py add $dir 300 >/dev/null
sb_config cortex00 <<'CONF'
SYNBACKUP_STOP_TIMEOUT=20s
SYNBACKUP_HEALTH_TIMEOUT=120s
SYNBACKUP_SKIPDIRS=axon skipped
SYNBACKUP_COLD_KEEP_OLD=1h
CONF

answers() { ns_exec storm.py wait $dir --timeout 120 >/dev/null; }
inode() { ns_exec stat -c %i $dir; }
state_of() { ns_exec python3 -c "import json,sys;s=json.load(open('/var/lib/synbackup/cortex00.$1.json'));print(s['result'], s['exit_code'])"; }
svc_active() { ns_assert_eq active "$(sb_prop $svc ActiveState)" "$1: $svc"; }
# Every path but sock and lock.mdb, with type, mode, owner; files also with size,
# mtime and SHA-256, except the live environments' data.mdb (compacted), and no
# mtime for the *.opts.yaml the service rewrites at every start.
tree() {
  ns_exec python3 - "$1" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]
for d, dirs, files in os.walk(root):
    dirs.sort()
    for n in sorted(dirs + files):
        p = os.path.join(d, n); rel = os.path.relpath(p, root)
        if n in ('sock', 'lock.mdb'):
            continue
        st = os.lstat(p)
        line = f'{rel} {stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid}'
        live_env = n == 'data.mdb' and not rel.startswith(('backups/', 'tmp/'))
        if stat.S_ISREG(st.st_mode) and not live_env:
            h = hashlib.sha256(open(p, 'rb').read()).hexdigest()
            # Synapse rewrites each slab's *.opts.yaml when it opens it (same bytes).
            mtime = '-' if n.endswith('.opts.yaml') else st.st_mtime_ns
            line += f' {st.st_size} {mtime} {h}'
        print(line)
PY
}

# 1. The window carries everything.
name=$(ns_exec /opt/synapse-venv/bin/python - <<'PY'
import asyncio
import synapse.telepath as t
async def main():
    async with await t.openurl('cell:///srv/cortex/cortex00') as core:
        print(await core.runBackup())
asyncio.run(main())
PY
)
ns_exec test -f "$dir/backups/$name/cell.guid" || ns_die "Synapse's backup $name is not in $dir/backups"
# shellcheck disable=SC2016 # Storm variables, not shell ones
sha=$(ns_exec storm.py storm $dir '$buf=$lib.base64.decode("c3luYmFja3VwIHdpbmRvdyB0ZXN0IGJsb2I=") ($size, $sha)=$lib.axon.put($buf) $lib.print($sha)' 2>&1 | sed -n 's/^print: //p')
[ ${#sha} = 64 ] || ns_die "no blob put in the Axon ($sha)"
ns_exec mkdir -p $dir/skipped/deep
ns_exec sh -c "head -c 3000000 /dev/urandom > $dir/skipped/deep/blob.bin; echo hi > $dir/skipped/owned; chown nobody:nogroup $dir/skipped/owned; chmod 0640 $dir/skipped/owned; touch -d '2020-01-02 03:04:05' $dir/skipped/owned; ln -s deep/blob.bin $dir/skipped/link"
# The whole output is read (grep -q would end the pipe early: SIGPIPE, pipefail).
axon_has() { ns_exec storm.py storm $dir "if \$lib.axon.has('$1') { \$lib.print('yes') }" 2>&1 | grep 'print: yes' >/dev/null; }
axon_has "$sha" || ns_die "the blob is not in the Axon"
nodes=$(ns_exec storm.py count $dir inet:ipv4)
ns_exec systemctl start $cold
ns_assert_eq success "$(sb_prop $cold Result)" "window result"
svc_active "window"
answers
kept=$(ns_exec sh -c "ls -d $dir.pre-cold-*")
diff <(tree "$kept") <(tree $dir) || ns_die "the live directory differs from the one before the window"
ns_log "ok: every path, owner, mode, time and byte carried over ($(tree $dir | wc -l) paths)"
axon_has "$sha" || ns_die "the Axon lost its blob in the window"
ns_log "ok: \$lib.axon.has(...) after the window"
ns_assert_eq "$nodes" "$(ns_exec storm.py count $dir inet:ipv4)" "nodes after the window"

# 2. The kept directory outlives the next nightly run; one kept 2 h ago (the name
#    says so; COLD_KEEP_OLD=1h) is removed, under the unit's ProtectSystem=strict.
ns_exec touch -d '3 hours ago' "$kept"
expired="$dir.pre-cold-$(date -u -d '2 hours ago' +%Y%m%dT%H%M%SZ)"
ns_exec mkdir "$expired"
ns_exec systemctl start synbackup@cortex00.service
ns_assert_eq success "$(sb_prop synbackup@cortex00.service Result)" "nightly run"
ns_exec test -d "$kept" || ns_die "the nightly run removed the directory the window just kept"
ns_exec test ! -e "$expired" || ns_die "the nightly run did not expire $expired"
ns_log "ok: the kept directory outlived the nightly run; the expired one is gone"
backup=$(ns_exec sh -c 'ls /srv/backups/cortex00 | grep "^cortex00_" | tail -n1')

# 3. Restore by name; restore failing after the stop; a mistyped unit.
ns_exec storm.py add $dir 5 --start 90000 >/dev/null
ns_exec synbackup restore --instance cortex00 "$backup"
svc_active "restore"
answers
ns_assert_eq "$nodes" "$(ns_exec storm.py count $dir inet:ipv4)" "nodes after the restore"
ns_assert_eq "success 0" "$(state_of restore)" "restore status"
ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e05 -o cat | grep "restored" >/dev/null || ns_die "no restore event in the journal"
for f in restore-after-stop restore-after-swap restore-health; do
  ino=$(inode)
  rc=0; ns_exec env SYNBACKUP_FAULT=$f synbackup restore --instance cortex00 "$backup" || rc=$?
  ns_assert_eq 10 "$rc" "$f: exit code"
  ns_assert_eq "$ino" "$(inode)" "$f: the previous directory (inode) in place"
  svc_active "$f"
  answers
  ns_assert_eq "failed 10" "$(state_of restore)" "$f: restore status"
done
ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e06 -o cat | grep "restore failed" >/dev/null || ns_die "no failed-restore event in the journal"
# status tells the truth about the failed restore (issue 14): a problem, exit 9.
rc=0; out=$(ns_exec synbackup status cortex00 2>&1) || rc=$?
ns_assert_eq 9 "$rc" "status after a failed restore: exit code"
grep -q 'PROBLEM: .*last restore failed' <<<"$out" || ns_die "status after a failed restore: $out"
sed 's/^SYNBACKUP_SERVICE_UNIT=.*/SYNBACKUP_SERVICE_UNIT=synapse-cortex@cortx00.service/' \
  < <(ns_exec cat /etc/synbackup/cortex00.conf) | ns_exec tee /etc/synbackup/typo.conf >/dev/null
# Beside cortex00.conf, a second config of the same directory is refused first,
# naming the other (two instances would take different locks).
rc=0
out=$(ns_exec synbackup restore --instance typo "/srv/backups/cortex00/$backup" 2>&1) || rc=$?
ns_assert_eq 2 "$rc" "a second config of one directory: exit code"
grep -q 'is also the service directory of instance cortex00 (/etc/synbackup/cortex00.conf:' <<<"$out" \
  || ns_die "a second config of one directory: $out"
# Alone, the mistyped unit is found at once.
ns_exec mv /etc/synbackup/cortex00.conf /root/cortex00.conf.away
t0=$SECONDS rc=0
out=$(ns_exec synbackup restore --instance typo "/srv/backups/cortex00/$backup" 2>&1) || rc=$?
ns_assert_eq 8 "$rc" "mistyped unit: exit code"
grep -q 'synapse-cortex@cortx00.service is inactive: it is not the unit that runs there; fix SYNBACKUP_SERVICE_UNIT' <<<"$out" || ns_die "mistyped unit: $out"
[ $((SECONDS - t0)) -lt 10 ] || ns_die "mistyped unit: took $((SECONDS - t0)) s"
ns_exec rm /etc/synbackup/typo.conf
ns_exec mv /root/cortex00.conf.away /etc/synbackup/cortex00.conf
svc_active "mistyped unit"

# 4. Files held after the stop (a process outside the unit maps data.mdb).
ns_exec systemd-run -q --unit=holder python3 -c "import mmap, time; f = open('$dir/slabs/cell.lmdb/data.mdb', 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); time.sleep(600)"
maps_it() { ns_exec sh -c "grep -q cell.lmdb/data.mdb /proc/\$(systemctl show -p MainPID --value holder)/maps"; }
ns_wait_until 20 "the holder to map data.mdb" maps_it
ino=$(inode)
if ns_exec systemctl start $cold; then ns_die "held: the window succeeded"; fi
ns_journal -u $cold | grep 'still in use' >/dev/null || ns_die "held: the reason is not in the journal"
svc_active "held"
ns_assert_eq "$ino" "$(inode)" "held: directory in place"
answers
ns_exec systemctl stop holder
ns_exec systemctl reset-failed $cold

# 5. Restart=on-failure with a start-rate limit, and a unit bound to the service.
ns_exec mkdir -p /etc/systemd/system/$svc.d
printf '[Unit]\nStartLimitIntervalSec=10min\nStartLimitBurst=2\n[Service]\nRestart=on-failure\n' \
  | ns_exec tee /etc/systemd/system/$svc.d/restart.conf >/dev/null
printf '[Unit]\nBindsTo=%s\nAfter=%s\n[Service]\nExecStart=/bin/sleep infinity\n' $svc $svc \
  | ns_exec tee /etc/systemd/system/sidecar.service >/dev/null
ns_exec systemctl daemon-reload
ns_exec systemctl restart $svc
answers
ns_exec systemctl start sidecar.service
ns_exec mkdir -p /etc/systemd/system/$cold.d
printf '[Service]\nEnvironment=SYNBACKUP_FAULT=cold-health\n' | ns_exec tee /etc/systemd/system/$cold.d/fault.conf >/dev/null
ns_exec systemctl daemon-reload
ino=$(inode)
if ns_exec systemctl start $cold; then ns_die "rate limit: the window succeeded"; fi
svc_active "rate limit"
ns_assert_eq active "$(sb_prop sidecar.service ActiveState)" "rate limit: the bound unit"
ns_assert_eq "$ino" "$(inode)" "rate limit: directory in place"
answers
ns_exec rm /etc/systemd/system/$cold.d/fault.conf /etc/systemd/system/$svc.d/restart.conf
ns_exec systemctl daemon-reload
ns_exec systemctl reset-failed $cold

# 6. A second SIGTERM during the rollback.
ns_exec dd if=/dev/zero of=$dir/bulk.bin bs=1M count=800 status=none
ns_exec rm -f /var/lib/synbackup/cortex00.cold.json
ino=$(inode)
ns_exec systemctl start --no-block $cold
copying() { sb_prop $cold StatusText | grep ' of ' >/dev/null; }
# The journal, not StatusText: the health wait's heartbeat replaces the status line.
rollbacks() { ns_journal -u $cold | grep -c 'rolling back' || true; }
rolled_before=$(rollbacks)
rolling() { [ "$(rollbacks)" -gt "$rolled_before" ]; }
ended() { ! sb_prop $cold ActiveState | grep -E 'activating|deactivating' >/dev/null; }
ns_wait_until 120 "the window's copy to start" copying
ns_exec systemctl kill --kill-who=main -s SIGTERM $cold
ns_wait_until 60 "the rollback to begin" rolling
ns_exec systemctl kill --kill-who=main -s SIGTERM $cold
ns_wait_until 180 "the window to end" ended
svc_active "second signal"
ns_assert_eq "$ino" "$(inode)" "second signal: directory in place"
# Stopped by the operator and rolled back cleanly: cancelled, not failed.
case "$(state_of cold)" in cancelled\ *) ns_log "ok: second signal: status says $(state_of cold)";; *) ns_die "second signal: status $(state_of cold)";; esac
ns_journal -u $cold | grep 'a rollback is under way' >/dev/null || ns_die "second signal: not noted"
answers
ns_exec rm $dir/bulk.bin
ns_exec systemctl reset-failed $cold

# 7. The service's user swaps a file, then an environment's data.mdb, for a link to
#    root's between the scan and the copy of a window (issue 32). The window runs
#    from a shell, held after its copy's scan (SYNBACKUP_FAULT=hold:after-scan).
owner=$(ns_exec stat -c %u:%g $dir)
ns_exec chown -R nobody:nogroup $dir
as_user() { ns_exec runuser -u nobody -- sh -c "$1"; }
as_user "echo notes of the user > $dir/notes.txt"
ns_exec /opt/synapse-venv/bin/python - <<'PY'
import lmdb, os
# An environment of the user's (the window carries it), and root's, 0700/0600.
for d, val, owner in (('/srv/cortex/cortex00/extra.lmdb', b'a value of the user', 65534), ('/root/secret-env', b'ROOT ONLY ENV SECRET', 0)):
    env = lmdb.open(d, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b'key', val)
    env.close()
    for n in ('', 'data.mdb', 'lock.mdb'):
        os.chown(os.path.join(d, n), owner, owner)
os.chmod('/root/secret-env', 0o700)
os.chmod('/root/secret-env/data.mdb', 0o600)
PY
ns_exec sh -c 'umask 077; echo ROOT ONLY FILE SECRET > /root/secret-file'
# The tree but the sockets/ directories, which the service makes again at each
# start (as root, whoever owns the directory).
tree_kept() { tree "$1" | grep -v -E '(^|/)sockets( |/)'; }
before=$(tree_kept $dir)
# swap_during_window WHAT PATH TARGET: a window held after its scan, PATH swapped
# by the user for a link to TARGET, released; it must fail naming PATH and roll back.
swap_during_window() {
  local what=$1 path=$2 target=$3 ino rc window found
  ino=$(inode)
  ns_exec rm -f /root/release /root/window.rc /root/window.out /root/window.err
  ns_exec sh -c "SYNBACKUP_FAULT=hold:after-scan SYNBACKUP_FAULT_RELEASE=/root/release synbackup cold cortex00 >/root/window.out 2>/root/window.err; echo \$? >/root/window.rc" &
  window=$!
  held() { ns_exec grep -q 'holding at after-scan' /root/window.err; }
  ns_wait_until 180 "the window's copy to be scanned ($what)" held
  ns_assert_eq inactive "$(sb_prop $svc ActiveState)" "$what: the service is stopped for the copy"
  as_user "mv $path $path.away && ln -s $target $path"
  ns_exec touch /root/release
  ns_wait_until 300 "the window to end ($what)" ns_exec test -s /root/window.rc
  wait "$window"
  rc=$(ns_exec cat /root/window.rc)
  ns_log "$what: exit $rc: $(ns_exec grep 'error:' /root/window.err || true)"
  ns_assert_eq 10 "$rc" "$what: exit code (failed, rolled back)"
  ns_exec grep -q "$path changed between the scan and the copy" /root/window.err \
    || ns_die "$what: the error does not name $path: $(ns_exec cat /root/window.err)"
  ns_assert_eq "$ino" "$(inode)" "$what: the original directory (inode) in place"
  ns_exec test ! -e $dir.cold-new || ns_die "$what: the discarded copy is still there"
  svc_active "$what"
  answers
  ns_assert_eq "failed 10" "$(state_of cold)" "$what: window status"
  # The secrets nowhere: the service's tree and kept directories, the window's
  # output, status and records (data extents only: the environments are sparse).
  found=$(ns_exec python3 - /srv/cortex /var/lib/synbackup /root/window.out /root/window.err <<'PY'
import os, stat, sys
def files(top):
    if os.path.isfile(top):
        yield top
    for d, _, names in os.walk(top):
        yield from (os.path.join(d, n) for n in names)
for top in sys.argv[1:]:
    for p in files(top):
        if not stat.S_ISREG(os.lstat(p).st_mode):
            continue
        with open(p, 'rb') as f:
            fd, pos = f.fileno(), 0
            while True:
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, pos, os.SEEK_HOLE)
                os.lseek(fd, max(pos - 16, 0), os.SEEK_SET)
                if b'ROOT ONLY' in os.read(fd, end - max(pos - 16, 0)):
                    print(p)
                    break
                pos = end
PY
)
  [ -z "$found" ] || ns_die "$what: a root-only secret was copied into $found"
  as_user "rm $path && mv $path.away $path"
  diff <(echo "$before") <(tree_kept $dir) || ns_die "$what: the directory differs from the one before the window"
  ns_log "ok: $what swapped for a link during the window: refused, rolled back, no secret copied"
}
swap_during_window "a file" $dir/notes.txt /root/secret-file
swap_during_window "an environment's data.mdb" $dir/extra.lmdb/data.mdb /root/secret-env/data.mdb
ns_exec rm -rf $dir/notes.txt $dir/extra.lmdb /root/secret-env /root/secret-file
ns_exec chown -R "$owner" $dir

# 8. A service directory that is a mount point.
ns_exec systemctl stop $svc
ns_exec mount --bind $dir $dir
ns_exec systemctl start $svc
answers
ino=$(inode)
since=$(sb_prop $svc ActiveEnterTimestampMonotonic)
if ns_exec systemctl start $cold; then ns_die "mount: the window succeeded"; fi
ns_journal -u $cold | grep "$dir is a mount point" >/dev/null || ns_die "mount: the window's reason is not in the journal"
rc=0; out=$(ns_exec synbackup restore --instance cortex00 "$backup" 2>&1) || rc=$?
ns_assert_eq 3 "$rc" "mount: restore exit code"
grep -q "$dir is a mount point" <<<"$out" || ns_die "mount: restore said $out"
svc_active "mount"
ns_assert_eq "$ino" "$(inode)" "mount: directory in place"
ns_assert_eq "$since" "$(sb_prop $svc ActiveEnterTimestampMonotonic)" "mount: the service was never stopped"
answers
ns_exec systemctl stop $svc
ns_exec umount $dir

# 9. The window on XFS: the service directory and the backup root on one XFS.
x=xfs00
xtop=/srv/xfs
xdir=$xtop/cortex/$x
xsvc=synapse-cortex@$x.service
xcold=synbackup-cold@$x.service
ns_assert_eq xfs "$(ns_exec stat -f -c %T $xtop)" "the filesystem at $xtop"
sb_cortex $x $xtop
ns_defer ns_exec systemctl stop $xsvc
ns_exec storm.py add $xdir 300 >/dev/null
ns_exec storm.py storm $xdir 'inet:ipv4 | limit 100 | delnode' >/dev/null
# Synapse's own backup in backups/ and a blob: plain files the window may reflink.
ns_exec /opt/synapse-venv/bin/python - $xdir <<'PY' >/dev/null
import asyncio, sys
import synapse.telepath as t
async def main():
    async with await t.openurl('cell://' + sys.argv[1]) as core:
        print(await core.runBackup())
asyncio.run(main())
PY
ns_exec sh -c "head -c 64M /dev/urandom > $xdir/blob.bin"
sb_config $x $xtop <<'CONF'
SYNBACKUP_STOP_TIMEOUT=20s
SYNBACKUP_HEALTH_TIMEOUT=120s
CONF
ns_assert_eq "$(ns_exec stat -c %d $xdir)" "$(ns_exec stat -c %d $xtop/backups/$x)" "one filesystem for $xdir and its backup root"
xanswers() { ns_exec storm.py wait $xdir --timeout 120 >/dev/null; }
xinode() { ns_exec stat -c %i $xdir; }
xstate() { ns_exec python3 -c "import json;s=json.load(open('/var/lib/synbackup/$x.cold.json'));print(s['result'], s['exit_code'])"; }
xsvc_active() { ns_assert_eq active "$(sb_prop $xsvc ActiveState)" "$1: $xsvc"; }
# Every node, with every property and tag, as sorted JSON lines.
xnodes() {
  ns_exec /opt/synapse-venv/bin/python - $xdir <<'PY'
import asyncio, json, sys
import synapse.telepath as t
async def main():
    out = []
    async with await t.openurl('cell://' + sys.argv[1]) as core:
        async for m in core.storm('inet:ipv4'):
            if m[0] == 'node':
                (form, valu), info = m[1]
                out.append(json.dumps([form, valu, info.get('props'), sorted(info.get('tags', {}))], sort_keys=True))
    print('\n'.join(sorted(out)))
asyncio.run(main())
PY
}
# extents MODE ROOT [SINCE_NS]: FIEMAP's shared flag (`filefrag -v`) of every regular
# file under ROOT with data. MODE window: a live environment's data.mdb (compacted:
# written anew) shares no extent, every other file shares all of its extents,
# except those the service wrote after SINCE_NS (its restart in the window rewrites
# *.opts.yaml and the like). MODE backup: no file shares an extent. Prints what it
# saw; each violation on a line of its own starting with BAD, and exits 1.
extents() {
  ns_exec sync -f "$2"
  ns_exec python3 - "$@" <<'PY'
import os, stat, subprocess, sys
mode, root = sys.argv[1], sys.argv[2]
since = int(sys.argv[3]) if len(sys.argv) > 3 else 0
seen = {'shared': [], 'unshared': [], 'rewritten': []}
shared_bytes = bad = 0
for d, dirs, files in os.walk(root):
    dirs.sort()
    for n in sorted(files):
        p = os.path.join(d, n); rel = os.path.relpath(p, root)
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):
            continue
        out = subprocess.run(['filefrag', '-v', p], check=True, capture_output=True, text=True).stdout
        ext = [l for l in out.splitlines() if l.strip()[:1].isdigit() and ':' in l]
        if not ext:
            continue
        n_shared = sum('shared' in l for l in ext)
        live_env = n == 'data.mdb' and not rel.startswith(('backups/', 'tmp/'))
        if mode == 'backup' or live_env:
            want = 'unshared'
        elif st.st_mtime_ns >= since:
            seen['rewritten'].append(rel)
            continue
        else:
            want = 'shared'
        got = 'shared' if n_shared == len(ext) else 'unshared' if n_shared == 0 else 'partly shared'
        if got != want:
            print(f'BAD {rel}: {got} ({n_shared} of {len(ext)} extents), expected {want}')
            bad += 1
        seen[want].append(rel)
        if want == 'shared':
            shared_bytes += st.st_blocks * 512
print(f"{len(seen['shared'])} files shared ({shared_bytes} bytes), {len(seen['unshared'])} unshared, "
      f"{len(seen['rewritten'])} written since the copy: {' '.join(seen['rewritten'])}")
print('shared:', ' '.join(seen['shared']))
sys.exit(1 if bad else 0)
PY
}
avail() { ns_exec sync -f $xtop; ns_exec df --output=avail -B1 $xtop | tail -n1 | tr -d ' '; }

# The window on XFS.
xcount=$(ns_exec storm.py count $xdir inet:ipv4)
ns_assert_eq 200 "$xcount" "$x: nodes before the window"
xbefore_nodes=$(xnodes)
xbefore_inode=$(xinode)
free_before=$(avail)
since=$(ns_exec date +%s%N)
ns_exec systemctl start $xcold
ns_assert_eq success "$(sb_prop $xcold Result)" "$x: window result"
xsvc_active "$x: window"
xanswers
ns_assert_eq "success 0" "$(xstate)" "$x: window status"
[ "$(xinode)" != "$xbefore_inode" ] || ns_die "$x: the directory was not swapped"
ns_assert_eq "$xcount" "$(ns_exec storm.py count $xdir inet:ipv4)" "$x: nodes after the window"
[ "$(xnodes)" = "$xbefore_nodes" ] || ns_die "$x: the nodes differ after the window"
ns_log "ok: $x: all $xcount nodes identical, property by property"
xkept=$(ns_exec sh -c "ls -d $xdir.pre-cold-*")
diff <(tree "$xkept") <(tree $xdir) || ns_die "$x: the live directory differs from the one before the window"
ns_log "ok: $x: every path, owner, mode, time and byte carried over ($(tree $xdir | wc -l) paths)"
out=$(extents window $xdir "$since") || { echo "$out" >&2; ns_die "$x: the window's copy does not share extents as it should"; }
ns_log "$x: window's copy: ${out%%$'\n'*}"
grep -Eq '^shared: (.* )?blob\.bin( |$)' <<<"$out" || ns_die "$x: blob.bin is not among the shared files: $out"
grep -q '^shared: .*backups/[^ ]*/data\.mdb' <<<"$out" || ns_die "$x: no data.mdb of Synapse's backups/ among the shared files: $out"
ns_log "ok: $x: plain files reflinked, live environments not"
# The room the window took: its compacted environments, never its plain files.
free_after=$(avail)
envs=$(ns_exec sh -c "find $xdir -name data.mdb -not -path '$xdir/backups/*' -not -path '$xdir/tmp/*' -printf '%b\n' | awk '{s += \$1 * 512} END {print s + 0}'")
plain=$(sed -n 's/^[0-9]* files shared (\([0-9]*\) bytes).*/\1/p' <<<"$out")
used=$((free_before - free_after))
ns_log "$x: the window took $used bytes of $xtop: environments $envs bytes, plain files $plain bytes"
[ "$plain" -gt $((64 << 20)) ] || ns_die "$x: too few shared bytes to tell ($plain)"
[ "$used" -lt $((envs + plain / 4)) ] || ns_die "$x: the window took $used bytes: its plain files ($plain bytes) were copied, not reflinked"

# A nightly backup of the reflinked directory, on the same XFS, shares nothing.
ns_exec systemctl start synbackup@$x.service
ns_assert_eq success "$(sb_prop synbackup@$x.service Result)" "$x: nightly run"
xbackup=$(ns_exec sh -c "ls -d $xtop/backups/$x/${x}_*" | tail -n1)
ns_exec cmp $xdir/blob.bin "$xbackup/blob.bin"
out=$(extents backup "$xbackup") || { echo "$out" >&2; ns_die "$x: the nightly backup shares extents with the live directory"; }
grep -q '^0 files shared (0 bytes), [1-9][0-9]* unshared' <<<"$out" || ns_die "$x: no file of the backup looked at: $out"
ns_log "ok: $x: the nightly backup shares no extent: ${out%%$'\n'*}"

# A window failing its health check after the swap rolls back with every byte.
ns_exec mkdir -p /etc/systemd/system/$xcold.d
printf '[Service]\nEnvironment=SYNBACKUP_FAULT=cold-health\n' | ns_exec tee /etc/systemd/system/$xcold.d/fault.conf >/dev/null
ns_exec systemctl daemon-reload
ino=$(xinode)
xbefore_tree=$(tree $xdir)
if ns_exec systemctl start $xcold; then ns_die "$x: cold-health: the window succeeded"; fi
ns_assert_eq "failed 10" "$(xstate)" "$x: cold-health: window status"
ns_assert_eq "$ino" "$(xinode)" "$x: cold-health: the original directory (inode) in place"
ns_exec test ! -e $xdir.cold-new || ns_die "$x: cold-health: the discarded copy is still there"
xsvc_active "$x: cold-health"
xanswers
ns_assert_eq "$xcount" "$(ns_exec storm.py count $xdir inet:ipv4)" "$x: cold-health: nodes"
[ "$(xnodes)" = "$xbefore_nodes" ] || ns_die "$x: cold-health: the nodes differ after the rollback"
diff <(echo "$xbefore_tree") <(tree $xdir) || ns_die "$x: cold-health: the directory differs after the rollback"
ns_log "ok: $x: cold-health rolled back: every node, path and byte as before"
ns_exec rm /etc/systemd/system/$xcold.d/fault.conf
ns_exec systemctl daemon-reload
ns_exec systemctl stop $xsvc
ns_poweroff
