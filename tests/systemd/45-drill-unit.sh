#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# synbackup-drill@.service and synbackup-drill@.timer as installed by the .deb, in a
# booted systemd: the drill takes the Python and module from the Cortex unit's
# ExecStart, boots the newest verified backup isolated under the hardened unit,
# records status and metrics, writes the pass MESSAGE_ID, leaves no scratch copy;
# the timer is shipped but not enabled. The server runs as a hardened transient unit
# (systemd-run: PrivateNetwork, its own network namespace) with the Cortex unit's
# Environment= and EnvironmentFile=; a drill killed meanwhile leaves that unit
# running, and the next drill stops it before it boots the backup again. With
# SYNBACKUP_DRILL_AFTER_RUN=yes the backup unit drills the backup it made. The Cortex
# runs as User=synapse with only the README's three config lines: the generator's
# 0700 root backup root is not the server's way to its copy (a bind mount is). Then a
# mirror's backup drilled on both isolation paths (the leader gets no write), that
# backup taken by SYNBACKUP_SOURCE=mirror with the leader named by a tcp:// URL
# with a password (the leader never frozen), the leader restored while the mirror
# is ahead (the warning in status until acknowledged), an offsite copy under the
# hardened unit, and the disaster-recovery path in a second, fresh container.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

ns_boot t40 --bind-ro=/usr/bin/restic:/usr/bin/restic
sb_install
# The Cortex runs as User=synapse (as synbackup(8) EXAMPLES set it up), with an
# environment the drill's server must get too.
ns_exec useradd --system --no-create-home --shell /usr/sbin/nologin synapse
ns_exec mkdir -p /srv/cortex /etc/systemd/system/synapse-cortex@cortex00.service.d
ns_exec install -d -o synapse -g synapse -m 0750 /srv/cortex/cortex00
printf '[Service]\nUser=synapse\nGroup=synapse\nEnvironment=SB_DRILL_MARK=from-environment\nEnvironmentFile=-/etc/default/cortex00-env\n' |
  ns_exec tee /etc/systemd/system/synapse-cortex@cortex00.service.d/env.conf >/dev/null
echo SB_DRILL_FILE_MARK=from-file | ns_exec tee /etc/default/cortex00-env >/dev/null
sb_cortex cortex00
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
ns_exec storm.py add /srv/cortex/cortex00 50 >/dev/null
# Only the README's three lines: the backup root and its parents are made by the
# generator's ExecStartPre (0700 root, UMask=0077), not by the test.
printf '%s\n' SYNBACKUP_SERVICE_DIR=/srv/cortex/cortex00 \
  SYNBACKUP_SERVICE_UNIT=synapse-cortex@cortex00.service \
  SYNBACKUP_BACKUP_ROOT=/srv/backups/cortex00 |
  ns_exec tee /etc/synbackup/cortex00.conf >/dev/null
ns_exec systemctl daemon-reload
ns_exec test ! -e /srv/backups
ns_exec mkdir -p /var/lib/prometheus/node-exporter

# The timer is shipped, not enabled.
ns_assert_eq disabled "$(ns_exec systemctl is-enabled synbackup-drill@cortex00.timer || true)" "drill timer"
ns_exec systemd-analyze verify synbackup-drill@cortex00.service synbackup-drill@cortex00.timer

ns_exec systemctl start synbackup@cortex00.service
ns_assert_eq success "$(sb_prop synbackup@cortex00.service Result)" "Result of the backup"

# The default layout: root-only directories above a backup owned by synapse.
ns_assert_eq "root 700 root 700 synapse" \
  "$(ns_exec sh -c 'stat -c "%U %a" /srv/backups /srv/backups/cortex00; stat -c %U /srv/backups/cortex00/cortex00_*' | tr '\n' ' ' | sed 's/ $//')" \
  "owners and modes of the backup root, its parent and the backup"
synapse_uid=$(ns_exec id -u synapse)

# A first drill: its server runs as a transient unit, hardened, with the Cortex
# unit's environment, as the backup's owner, sealed in a mount namespace with the
# copy at /run/synbackup-drill. Found while it runs; then the drill is killed.
drill_server() { # writes "UNIT PID" of the running drill server to $NS_STATE/server
  local unit pid
  unit=$(ns_exec systemctl list-units --plain --no-legend 'synbackup-drill-scratch-*.service' | awk '{print $1; exit}')
  [ -n "$unit" ] || return 1
  pid=$(sb_prop "$unit" MainPID)
  [ "$pid" != 0 ] || return 1
  echo "$unit $pid" >"$NS_STATE/server"
}
ns_exec systemctl start --no-block synbackup-drill@cortex00.service
ns_wait_until 300 "the drill's transient server unit" drill_server
read -r unit pid <"$NS_STATE/server"
ns_assert_eq "yes yes strict yes" "$(sb_prop "$unit" PrivateNetwork) $(sb_prop "$unit" NoNewPrivileges) $(sb_prop "$unit" ProtectSystem) $(sb_prop "$unit" PrivateTmp)" \
  "PrivateNetwork NoNewPrivileges ProtectSystem PrivateTmp of $unit"
[ "$(ns_exec readlink "/proc/$pid/ns/net")" != "$(ns_exec readlink /proc/1/ns/net)" ] ||
  ns_die "the drill's server shares the host's network namespace"
ns_assert_eq "$synapse_uid $synapse_uid" "$(sb_prop "$unit" User) $(ns_exec grep '^Uid:' "/proc/$pid/status" | cut -f2)" "User= and uid of the drill's server"
[ "$(ns_exec readlink "/proc/$pid/ns/mnt")" != "$(ns_exec readlink /proc/1/ns/mnt)" ] ||
  ns_die "the drill's server shares the host's mount namespace"
# /run is a tmpfs of its own (systemd keeps only its /run/systemd there): none of
# the host's runtime sockets (the system bus, systemd's private socket).
ns_assert_eq synbackup-drill "$(ns_exec nsenter -t "$pid" -m ls -A /run | grep -vx systemd)" "/run as the drill's server sees it"
ns_exec test -S /run/dbus/system_bus_socket
ns_exec nsenter -t "$pid" -m test ! -e /run/dbus/system_bus_socket ||
  ns_die "the drill's server sees the host's system bus"
ns_exec nsenter -t "$pid" -m test ! -e /run/systemd/private ||
  ns_die "the drill's server sees systemd's private socket"
ns_exec nsenter -t "$pid" -m test -S /run/synbackup-drill/sock ||
  ns_exec nsenter -t "$pid" -m test -f /run/synbackup-drill/cell.guid ||
  ns_die "the drill's server does not see its copy at /run/synbackup-drill"
env=$(ns_exec cat "/proc/$pid/environ" | tr '\0' '\n')
grep -qx SB_DRILL_MARK=from-environment <<<"$env" || ns_die "Environment= of the Cortex unit missing in the server"
grep -qx SB_DRILL_FILE_MARK=from-file <<<"$env" || ns_die "EnvironmentFile= of the Cortex unit missing in the server"
ns_exec systemctl kill -s KILL synbackup-drill@cortex00.service
drill_failed() { [ "$(sb_prop synbackup-drill@cortex00.service ActiveState)" = failed ]; }
ns_wait_until 60 "the killed drill to end" drill_failed
ns_assert_eq active "$(sb_prop "$unit" ActiveState)" "the killed drill's server unit"
ns_exec systemctl reset-failed synbackup-drill@cortex00.service

# The drill (oneshot: start returns when it is done); it stops the leftover unit.
ns_exec systemctl start synbackup-drill@cortex00.service
ns_assert_eq success "$(sb_prop synbackup-drill@cortex00.service Result)" "Result of the drill"
counts=$(ns_exec python3 -c 'import json;d=json.load(open("/var/lib/synbackup/cortex00.drill.json"));print(d["result"], d["details"]["form_counts"]["inet:ipv4"])')
ns_assert_eq "success 50" "$counts" "drill status and node count"
ns_exec grep -q 'synbackup_drill_boot_seconds{instance="cortex00"}' /var/lib/prometheus/node-exporter/synbackup-cortex00-drill.prom
ns_has 'drill passed' -- ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e16 SYNBACKUP_INSTANCE=cortex00 -o cat
ns_assert_eq systemd-run "$(ns_exec python3 -c 'import json;print(json.load(open("/var/lib/synbackup/cortex00.drill.json"))["details"]["isolation"])')" "isolation"
ns_assert_eq "" "$(ns_exec systemctl list-units --all --plain --no-legend 'synbackup-drill-scratch-*')" "drill server units left"
left=$(ns_exec sh -c 'ls -a /srv/backups/cortex00 | grep -c synbackup-drill || true')
ns_assert_eq 0 "$left" "scratch copies left"
# The live Cortex still answers.
ns_assert_eq 50 "$(ns_exec storm.py count /srv/cortex/cortex00 inet:ipv4)" "live nodes after the drill"

# SYNBACKUP_DRILL_AFTER_RUN=yes: the nightly unit drills the backup it just made (its
# server a transient unit too: the backup unit itself may not unshare namespaces).
echo SYNBACKUP_DRILL_AFTER_RUN=yes | ns_exec tee -a /etc/synbackup/cortex00.conf >/dev/null
ns_exec systemctl start synbackup@cortex00.service
ns_assert_eq success "$(sb_prop synbackup@cortex00.service Result)" "Result of the run that drills"
ns_assert_eq "success True 2" "$(ns_exec python3 -c '
import json
b = json.load(open("/var/lib/synbackup/cortex00.json"))["last_success_backup"]
d = json.load(open("/var/lib/synbackup/cortex00.drill.json"))
t = json.load(open("/var/lib/synbackup/cortex00.tested.json"))
print(d["result"], d["backup"] == b, sum(1 for v in t.values() if v["passed"]))')" "the run drilled its own backup; two tested backups"
ns_has 'drill passed' -- ns_exec journalctl -b -u synbackup@cortex00.service -o cat
st=$(ns_exec synbackup status cortex00)
grep -q 'newest tested backup cortex00_' <<<"$st" || ns_die "status names no tested backup: $st"
# The offsite run below need not drill again.
ns_exec sed -i '/^SYNBACKUP_DRILL_AFTER_RUN=/d' /etc/synbackup/cortex00.conf

# A mirror on Synapse 2.256.0 (`mirror: cell:///...` over its leader's unix socket),
# seeded from the leader's backup by `synbackup seed-mirror` and backed up by its own nightly unit; the
# leader then gets 7 more nodes, which the mirror receives. Its backup drilled by
# synbackup-drill@.service (systemd-run) and from a shell (netns), each with a
# write in its check: the drilled copy does not follow the leader (it sees the
# backup's 40 nodes, none newer), and the write reaches neither Cortex (a mirror
# forwards writes to its leader). 3.x's `parent:` follower: 47-synapse3.
ns_exec install -d -m 0750 /srv/cortex/l0 /srv/cortex/m0
# The leader also listens on a fixed loopback port with a root password: the
# mirror's instance below names it only by that URL (a leader on another host).
l0_pw=sb-Leader-pw1
l0_url="tcp://root:$l0_pw@127.0.0.1:27495"
l0_masked="tcp://root:****@127.0.0.1:27495"
printf 'nexslog:en: true\nauth:passwd: %s\n' "$l0_pw" | ns_exec tee /srv/cortex/l0/cell.yaml >/dev/null
ns_exec chmod 600 /srv/cortex/l0/cell.yaml
ns_exec mkdir -p /etc/systemd/system/synapse-cortex@l0.service.d
printf '[Service]\nExecStart=\nExecStart=/opt/synapse-venv/bin/python -m synapse.servers.cortex --telepath tcp://127.0.0.1:27495 --https 0 /srv/cortex/%%i\n' |
  ns_exec tee /etc/systemd/system/synapse-cortex@l0.service.d/listen.conf >/dev/null
sb_cortex l0
ns_defer ns_exec systemctl stop synapse-cortex@l0.service
ns_assert_eq 40 "$(ns_exec storm.py add /srv/cortex/l0 40)" "the leader's nodes"
sb_config l0 </dev/null
ns_exec systemctl start synbackup@l0.service
# The nexus archiver of l0 (nexslog on) under synbackup-nexus@.service: started
# once it has caught up (Type=notify), a watchdog, the archive in the backup root
# written through the generator's drop-in, a Cortex restart followed without the
# unit restarting, the leader's newest offset archived, a clean stop; a full disk
# (below). A Cortex
# with `nexslog:en: false` (n0; a Cortex's default is true) fails at once with
# exit 2, and Restart= does not retry it.
ns_exec systemctl start synbackup-nexus@l0.service
ns_assert_eq active "$(sb_prop synbackup-nexus@l0.service ActiveState)" "the archiver is up (READY=1 once caught up)"
ns_assert_eq 1min "$(sb_prop synbackup-nexus@l0.service WatchdogUSec)" "the archiver's watchdog"
ns_exec systemctl restart synapse-cortex@l0.service
ns_exec storm.py wait /srv/cortex/l0 --timeout 120
# (An inet:fqdn: the mirror and drill checks below count inet:ipv4 nodes.)
ns_assert_eq 1 "$(ns_exec storm.py storm /srv/cortex/l0 '[inet:fqdn=archived.example]')" "an edit after the leader's restart"
l0_index=$(ns_exec storm.py info /srv/cortex/l0 | python3 -c 'import json,sys;print(json.load(sys.stdin)["nexus_index"])')
archived_to() { sb_prop synbackup-nexus@l0.service StatusText | grep -q "^archived to offset $1 "; }
ns_wait_until 120 "the archive to reach the leader's index $l0_index" archived_to "$l0_index"
ns_exec sh -c 'ls /srv/backups/l0/nexus-archive/open-*.seg /srv/backups/l0/nexus-archive/archive.json' >/dev/null
ns_assert_eq 0 "$(sb_prop synbackup-nexus@l0.service NRestarts)" "the archiver followed the Cortex's restart without restarting"
# A killed cell: SIGKILL while edits arrive. It may come back without its last
# entries (Synapse commits its slabs periodically); the archiver then keeps those
# aside in nexus-archive/diverged-*, whole, and follows the cell's own history
# again, without stopping. Either way the archive reaches the cell's new index and
# holds the cell's entries, no gap; status names what was kept aside, which the
# operator then moves out of the archive.
# (Tagged inet:fqdn nodes: the checks below count inet:ipv4 nodes and the full
# disk makes inet:asn ones.)
# shellcheck disable=SC2016 # expanded in the container
ns_exec sh -c 'storm.py storm /srv/cortex/l0 "for \$i in \$lib.range(3000) { \$n=\$lib.str.format(\"k{i}.killed.example\", i=\$i) [inet:fqdn=\$n +#killed] }" >/dev/null 2>&1 &
  until [ "$(storm.py count /srv/cortex/l0 "#killed")" -gt 20 ]; do :; done
  systemctl kill -s KILL synapse-cortex@l0.service; wait' || true
ns_exec systemctl start synapse-cortex@l0.service
ns_exec storm.py wait /srv/cortex/l0 --timeout 120
ns_assert_eq 1 "$(ns_exec storm.py storm /srv/cortex/l0 '[inet:fqdn=after-the-kill.example]')" "an edit after the kill"
l0_index=$(ns_exec storm.py info /srv/cortex/l0 | python3 -c 'import json,sys;print(json.load(sys.stdin)["nexus_index"])')
ns_wait_until 120 "the archive to reach the killed leader's new index $l0_index" archived_to "$l0_index"
ns_assert_eq 0 "$(sb_prop synbackup-nexus@l0.service NRestarts)" "the archiver went on after the kill without restarting"
ns_exec synbackup verify --instance l0 >/dev/null
aside=$(ns_exec sh -c 'ls -d /srv/backups/l0/nexus-archive/diverged-* 2>/dev/null || true')
if [ -n "$aside" ]; then
  ns_log "the killed cell came back behind its archive; kept aside: $aside"
  ns_has 'parted from its nexus archive' -- ns_exec sh -c 'synbackup status l0 || true'
  ns_exec mv "$aside" /srv/backups/l0-diverged-reviewed
else
  ns_log "the killed cell came back with every archived entry"
fi
# The chain (verify --instance, status, check). (No nexus-trim here: the mirror
# m0 below is seeded from l0's older backup and needs l0's log from its index;
# tests/pitr/trim.rs covers the trim on both lines.)
ns_exec synbackup verify --instance l0 >/dev/null
ns_has 'l0: point-in-time recovery: nexus archive: offsets 0-' -- ns_exec sh -c 'synbackup status l0 || true'
ns_has -E 'l0: ok +pitr' -- ns_exec sh -c 'synbackup check l0 || true'
ns_exec systemctl stop synbackup-nexus@l0.service
ns_assert_eq success "$(sb_prop synbackup-nexus@l0.service Result)" "the archiver stopped cleanly"
# A full disk under the archiver: its archive moved onto a 2 MiB tmpfs, filled but
# for 64 KiB, then edits (inet:asn: nothing below counts them) until the unit stops
# on ENOSPC. The journal names the archive and ENOSPC; status has a PROBLEM line;
# every offset it had counted archived (its failure record's) is there with no gap
# or duplicate, and `restore --to` that offset plans (it reads every segment, checks
# the closed ones' BLAKE3, finds no gap). Space freed: Restart= starts it again and
# it catches up with the leader, no gap, no duplicate, and status is clear of it.
a=/srv/backups/l0/nexus-archive
ns_exec sh -c "mv $a $a.disk && install -d -m 0700 $a && mount -t tmpfs -o size=2m,mode=0700 tmpfs $a && cp -a $a.disk/. $a/ && rm -r $a.disk"
ns_defer ns_exec umount "$a"
ns_exec sh -c "dd if=/dev/zero of=$a/filler bs=4k 2>/dev/null; truncate -s -64k $a/filler"
archive_offsets() { # "FIRST LAST COUNT" of the archive's records; fails on a gap or duplicate
  ns_exec /opt/synapse-venv/bin/python -c '
import glob, sys
import synapse.lib.msgpack as m
offs = []
for p in sorted(glob.glob(sys.argv[1] + "/*.seg")):  # closed (hex names), then open-*
    offs += [r[0] for _, r in m.Unpk().feed(open(p, "rb").read())]
assert offs == list(range(offs[0], offs[0] + len(offs))), "a gap or a duplicate"
print(offs[0], offs[-1], len(offs))' "$a"
}
ns_exec systemctl start synbackup-nexus@l0.service
asn=1000
archiver_full() {
  ns_exec storm.py storm /srv/cortex/l0 "[ $(seq -f 'inet:asn=%g' "$asn" $((asn + 199)) | tr '\n' ' ')]" >/dev/null
  asn=$((asn + 200))
  ns_has "nexus archive $a is full (ENOSPC)" -- ns_journal -u synbackup-nexus@l0.service
}
ns_wait_until 300 "the archiver to stop on the full disk" archiver_full
st=$(ns_exec synbackup status l0 || true)
grep -q "PROBLEM: .*the nexus archiver stopped at .*(ENOSPC)" <<<"$st" || ns_die "status does not report the full archive: $st"
acked=$(ns_exec python3 -c 'import json;print(json.load(open("/var/lib/synbackup/l0.nexus-archive.json"))["archived_to"])')
read -r first last count <<<"$(archive_offsets)"
ns_assert_eq "0 $((last + 1))" "$first $count" "the archive's first offset and count after the disk filled"
[ "$last" -ge $((acked - 1)) ] || ns_die "offsets up to $((acked - 1)) were acknowledged, the archive holds up to $last"
ns_has "up to index $acked\$" -- ns_exec synbackup restore --instance l0 --to "$acked" --dry-run
ns_exec rm "$a/filler"
l0_index=$(ns_exec storm.py info /srv/cortex/l0 | python3 -c 'import json,sys;print(json.load(sys.stdin)["nexus_index"])')
ns_wait_until 120 "the archiver to start again and reach the leader's index $l0_index" archived_to "$l0_index"
ns_assert_eq "0 $((l0_index - 1)) $l0_index" "$(archive_offsets)" "the archive after space was freed: first, last, count"
[ "$(sb_prop synbackup-nexus@l0.service NRestarts)" -ge 1 ] || ns_die "the archiver was not restarted"
st=$(ns_exec synbackup status l0 || true)
if grep -q 'nexus archiver' <<<"$st"; then ns_die "status still reports the archiver: $st"; fi
ns_exec test ! -e /var/lib/synbackup/l0.nexus-archive.json
ns_exec systemctl stop synbackup-nexus@l0.service
ns_exec install -d -m 0750 /srv/cortex/n0
echo 'nexslog:en: false' | ns_exec tee /srv/cortex/n0/cell.yaml >/dev/null
sb_cortex n0
ns_defer ns_exec systemctl stop synapse-cortex@n0.service
sb_config n0 </dev/null
if ns_exec systemctl start synbackup-nexus@n0.service 2>/dev/null; then
  ns_die "synbackup-nexus@n0.service started on a cell with nexslog:en false"
fi
ns_assert_eq 2 "$(sb_prop synbackup-nexus@n0.service ExecMainStatus)" "exit code without the nexus log"
ns_assert_eq 0 "$(sb_prop synbackup-nexus@n0.service NRestarts)" "not restarted (RestartPreventExitStatus)"
ns_has 'runs with nexslog:en false' -- ns_journal -u synbackup-nexus@n0.service
ns_has -E 'n0: FAIL +pitr +point-in-time recovery is off: .* nexslog:en false' -- ns_exec sh -c 'synbackup check n0 || true'
ns_exec systemctl stop synapse-cortex@n0.service
# The mirror seeded by `synbackup seed-mirror` from l0's backup into the empty
# /srv/cortex/m0, its unit started by it and waited for until the mirror has the
# leader's changes, the edit made after the backup among them.
ns_exec synbackup seed-mirror --instance l0 /srv/cortex/m0 --unit synapse-cortex@m0.service --wait 5m
ns_defer ns_exec systemctl stop synapse-cortex@m0.service
ns_assert_eq active "$(sb_prop synapse-cortex@m0.service ActiveState)" "the seeded mirror's unit"
ns_assert_eq 40 "$(ns_exec storm.py count /srv/cortex/m0 inet:ipv4)" "the mirror's nodes"
ns_assert_eq 1 "$(ns_exec storm.py count /srv/cortex/m0 inet:fqdn=archived.example)" "the edit made after the backup, on the mirror"
ns_assert_eq "False cell:///srv/cortex/l0" "$(ns_exec storm.py info /srv/cortex/m0 | python3 -c 'import json,sys;i=json.load(sys.stdin);print(i["active"], i["upstream"])')" "the seeded cell is a mirror of l0"
# The mirror's instance backs up the mirror (SYNBACKUP_SOURCE=mirror), its leader
# named by URL with the password (so the config is 0600): the leader is asked for
# its index, never frozen (Synapse logs "Freezing service" at every freeze: none
# in the leader's journal during the run, one in the mirror's).
printf '%s\n' 'SYNBACKUP_DRILL_CHECK=[inet:fqdn=written-by-drill.example]' SYNBACKUP_SOURCE=mirror \
  SYNBACKUP_MIRRORS=/srv/cortex/m0 "SYNBACKUP_LEADER=$l0_url" | sb_config m0
# 0600 before the generator reads it: a config holding a password that others
# can read is refused (the generator skips it: no drop-in, no network).
ns_exec chmod 600 /etc/synbackup/m0.conf
ns_exec systemctl daemon-reload
freezes() { ns_journal -u "synapse-cortex@$1.service" -o cat | grep -c 'Freezing service for volume snapshot' || true; }
l0_freezes=$(freezes l0)
m0_freezes=$(freezes m0)
ns_exec systemctl start --no-block synbackup@m0.service
run_done() {
  ns_assert_eq False "$(ns_exec storm.py paused /srv/cortex/l0)" "the leader paused during the mirror's run"
  [ "$(sb_prop synbackup@m0.service ActiveState)" != activating ]
}
ns_wait_until 300 "the mirror's nightly run" run_done
ns_assert_eq success "$(sb_prop synbackup@m0.service Result)" "Result of the mirror's nightly run"
mirror_frozen() { [ "$(freezes m0)" -gt "$m0_freezes" ]; }
ns_wait_until 30 "the mirror's freeze in its journal" mirror_frozen
ns_assert_eq "$l0_freezes" "$(freezes l0)" "the leader's freezes after the mirror's run"
ns_assert_eq "mirror $l0_masked /srv/cortex/m0 True" "$(ns_exec python3 -c '
import glob, json
b = json.load(open("/var/lib/synbackup/m0.json"))
m = json.load(open(b["last_success_backup"] + "/synbackup-manifest.json"))
f = m["from_mirror"]
print(b["details"]["source"]["used"], f["leader"], f["mirror"], f["nexus_index"] >= f["leader_nexus_index"] > 0)')" \
  "source, leader, mirror and nexus indexes of the mirror's backup"
if ns_exec grep -rqF --include='*.json' "$l0_pw" /var/lib/synbackup /srv/backups/m0 ||
  ns_journal -u synbackup@m0.service -o cat | grep -qF "$l0_pw"; then
  ns_die "the leader's password was written or logged"
fi
ns_assert_eq 47 "$(ns_exec storm.py add /srv/cortex/l0 7 --start 40)" "the leader's nodes after adding 7"
mirror_has() { [ "$(ns_exec storm.py count /srv/cortex/m0 inet:ipv4)" = "$1" ]; }
ns_wait_until 120 "the mirror to receive the 7 nodes" mirror_has 47
index_of() { ns_exec storm.py info "/srv/cortex/$1" | python3 -c 'import json,sys;print(json.load(sys.stdin)["nexus_index"])'; }
same_index() { [ "$(index_of l0)" = "$(index_of m0)" ]; }
ns_wait_until 60 "the mirror to reach the leader's nexus index" same_index
ns_assert_eq "$(ns_exec storm.py count /srv/cortex/l0 inet:ipv4)" "$(ns_exec storm.py count /srv/cortex/m0 inet:ipv4)" "the leader's and the mirror's nodes at the same index"
written() { # the check's node on the leader and on the mirror
  echo "$(ns_exec storm.py count /srv/cortex/l0 inet:fqdn=written-by-drill.example)" \
    "$(ns_exec storm.py count /srv/cortex/m0 inet:fqdn=written-by-drill.example)"
}
mirror_drill() { ns_exec python3 -c 'import json
d = json.load(open("/var/lib/synbackup/m0.drill.json"))
print(d["result"], d["details"]["isolation"], d["details"]["form_counts"]["inet:ipv4"], d["details"]["neutralised"])'; }
ns_exec systemctl start synbackup-drill@m0.service
ns_assert_eq success "$(sb_prop synbackup-drill@m0.service Result)" "Result of the mirror's drill"
ns_assert_eq "0 0" "$(written)" "the drill's write on the leader and on the mirror"
ns_assert_eq "success systemd-run 40 ['cell.yaml:mirror']" "$(mirror_drill)" \
  "the mirror's drill: result, isolation, nodes (the backup's, none newer), keys removed"
echo SYNBACKUP_DRILL_ISOLATION=netns | ns_exec tee -a /etc/synbackup/m0.conf >/dev/null
ns_exec systemctl daemon-reload
ns_exec synbackup drill m0 2>/dev/null
ns_assert_eq "0 0" "$(written)" "the netns drill's write on the leader and on the mirror"
ns_assert_eq "success netns 40 ['cell.yaml:mirror']" "$(mirror_drill)" \
  "the mirror's netns drill: result, isolation, nodes, keys removed"
# The leader restored to its first backup (40 nodes) while its mirror is past it
# (47 and the edit): the restore asks the mirror before the stop, warns with both
# indexes, and `status` reports it until acknowledged.
echo SYNBACKUP_MIRRORS=/srv/cortex/m0 | ns_exec tee -a /etc/synbackup/l0.conf >/dev/null
l0_backup=$(ns_exec sh -c 'ls -d /srv/backups/l0/l0_* | head -n1')
m0_index=$(ns_exec storm.py info /srv/cortex/m0 | python3 -c 'import json,sys;print(json.load(sys.stdin)["nexus_index"])')
ns_has "would warn: the mirror /srv/cortex/m0 is at nexus index $m0_index" -- \
  ns_exec synbackup restore --dry-run --instance l0 "$l0_backup"
ns_exec synbackup restore --instance l0 "$l0_backup" 2>"$NS_STATE/restore-l0.err" ||
  ns_die "the leader's restore failed: $(cat "$NS_STATE/restore-l0.err")"
grep -q "the mirror /srv/cortex/m0 is at nexus index $m0_index, the backup at" "$NS_STATE/restore-l0.err" ||
  ns_die "no warning about the mirror: $(cat "$NS_STATE/restore-l0.err")"
status_l0() { ns_exec synbackup status l0 || true; }
ns_has 'last restore at .*the mirror /srv/cortex/m0 is at nexus index' -- status_l0
ns_exec synbackup status l0 --acknowledge restore >"$NS_STATE/status-l0" || true
if grep -q 'the mirror /srv/cortex/m0 is at nexus index' "$NS_STATE/status-l0"; then
  ns_die "status still warns after --acknowledge restore: $(cat "$NS_STATE/status-l0")"
fi
ns_exec systemctl stop synapse-cortex@m0.service synapse-cortex@l0.service

# Offsite copies under the hardened unit, then the disaster-recovery path: a second,
# fresh container with only the .deb, the config and the password file restores the
# Cortex from the repository, and it starts. restic is the host's (Debian's restic,
# which needs only libc), bound in read-only: the cached tree stays as it is.
ns_exec sh -c 'head -c 32 /dev/urandom | base64 >/etc/synbackup/cortex00.restic; chmod 600 /etc/synbackup/cortex00.restic'
printf '%s\n' SYNBACKUP_OFFSITE_REPOSITORY=/srv/offsite/cortex00 \
  SYNBACKUP_OFFSITE_PASSWORD_FILE=/etc/synbackup/cortex00.restic \
  | ns_exec tee -a /etc/synbackup/cortex00.conf >/dev/null
ns_exec systemctl daemon-reload
ns_exec mkdir -p /srv/offsite
ns_exec synbackup offsite init cortex00 >/dev/null
ns_exec systemctl start synbackup@cortex00.service
ns_assert_eq success "$(sb_prop synbackup@cortex00.service Result)" "Result of the run with an offsite copy"
ns_assert_eq success "$(ns_exec python3 -c 'import json;print(json.load(open("/var/lib/synbackup/cortex00.offsite.json"))["result"])')" "offsite status"
ns_has 'as snapshot' -- ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e20 SYNBACKUP_INSTANCE=cortex00 -o cat
ns_assert_eq 1 "$(ns_exec synbackup offsite list cortex00 --json | python3 -c 'import json,sys;print(len(json.load(sys.stdin)))')" "snapshots offsite"
# What survives the host: the repository, the config, the password file.
dr=$(mktemp -d "${NS_TMPDIR:-${TMPDIR:-/tmp}}/synbackup-dr.XXXXXX")
cp -a "$NS_SRV/offsite" "$dr/offsite"
ns_copy_out /etc/synbackup/cortex00.conf "$dr/cortex00.conf"
ns_copy_out /etc/synbackup/cortex00.restic "$dr/cortex00.restic"
ns_poweroff

ns_boot t45dr --bind-ro=/usr/bin/restic:/usr/bin/restic
sb_install
ns_install_unit "$NS_DIR/units/synapse-cortex@.service"
ns_copy_in "$NS_DIR/storm.py" /usr/local/bin/storm.py
cp -a "$dr/offsite" "$NS_SRV/offsite"
ns_copy_in "$dr/cortex00.conf" /etc/synbackup/cortex00.conf
ns_copy_in "$dr/cortex00.restic" /etc/synbackup/cortex00.restic
rm -rf "$dr"
ns_exec chmod 600 /etc/synbackup/cortex00.restic
ns_exec systemctl daemon-reload
ns_exec test ! -e /srv/cortex/cortex00
ns_exec synbackup offsite list cortex00
ns_exec synbackup restore --instance cortex00 --offsite latest
ns_exec systemctl start synapse-cortex@cortex00.service
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
ns_exec storm.py wait /srv/cortex/cortex00 --timeout 120
ns_assert_eq 50 "$(ns_exec storm.py count /srv/cortex/cortex00 inet:ipv4)" "nodes of the Cortex restored on a new host"
ns_assert_eq success "$(ns_exec python3 -c 'import json;print(json.load(open("/var/lib/synbackup/cortex00.restore.json"))["result"])')" "restore status on the new host"
