#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main real-systemd paths on Synapse 3.7.0, in one booted container (the 2.256.0
# ones are 10 to 46): a 3.x Cortex run by User=synapse with the 3.x venv's Python
# (units/synapse-cortex3@.service; that Python is syn3-python, the Debian sid tree
# bound in read-only), and only the README's three config lines. The nightly run;
# `synbackup drill` from a shell and a run with SYNBACKUP_DRILL_AFTER_RUN=yes, both
# naming 3.7.0 and the node counts; the maintenance window and `restore --instance`,
# each after its dry run (which changes nothing);
# an offsite copy (restic, a local repository) restored with `--offsite latest`.
# Then a leader and a follower (3.x's `parent: cell:///...`, over the leader's unix
# socket): the follower's backup, drilled by synbackup-drill@.service (the timer's
# path) with a write in its check, sees no data newer than the backup, and the
# leader gets no write; the same with the drill run from a shell on the other
# isolation path (SYNBACKUP_DRILL_ISOLATION=netns).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

# The sid tree with Synapse 3.7.0 (.ci/setup builds it; built here when missing).
syn3_root=${SYNBACKUP_TEST_SYN3_ROOT:-$("$NS_REPO/tests/synapse3/build-root")}
[ -s "$syn3_root/etc/synbackup-syn3-root.stamp" ] || ns_die "no Synapse 3.x tree at $syn3_root (tests/synapse3/build-root)"

ns_boot t47 --bind-ro=/usr/bin/restic:/usr/bin/restic --bind-ro="$syn3_root:/opt/syn3-root"
sb_install
ns_exec useradd --system --no-create-home --shell /usr/sbin/nologin synapse
ns_copy_in "$NS_DIR/syn3-python" /opt/syn3/bin/python
ns_copy_in "$NS_DIR/storm.py" /usr/local/bin/storm.py
ns_install_unit "$NS_DIR/units/synapse-cortex3@.service"
ns_exec mkdir -p /var/lib/prometheus/node-exporter
# storm.py with the 3.x Python: Synapse 3.7.0's own client.
storm3() { ns_exec /opt/syn3/bin/python /usr/local/bin/storm.py "$@"; }
json() { ns_exec python3 -c "import json,sys;d=json.load(open('/var/lib/synbackup/$1'));print($2)"; }

# cortex3 NAME [CELL.YAML]: a 3.x Cortex on /srv/cortex/NAME, owned by synapse, started.
cortex3() {
  ns_exec install -d -o synapse -g synapse -m 0750 "/srv/cortex/$1"
  if [ -n "${2:-}" ]; then
    # shellcheck disable=SC2016 # expanded by the inner sh
    printf '%s' "$2" | ns_exec sh -c 'cat >"$1" && chown synapse:synapse "$1" && chmod 600 "$1"' sh "/srv/cortex/$1/cell.yaml"
  fi
  ns_exec systemctl start "synapse-cortex3@$1.service"
  ns_defer ns_exec systemctl stop "synapse-cortex3@$1.service"
  storm3 wait "/srv/cortex/$1" --timeout 120 >/dev/null
}
# readme_conf NAME [LINE...]: the README's three lines (and LINEs) for /srv/cortex/NAME.
readme_conf() {
  local name=$1
  shift
  printf '%s\n' "SYNBACKUP_SERVICE_DIR=/srv/cortex/$name" \
    "SYNBACKUP_SERVICE_UNIT=synapse-cortex3@$name.service" \
    "SYNBACKUP_BACKUP_ROOT=/srv/backups/$name" "$@" | ns_exec tee "/etc/synbackup/$name.conf" >/dev/null
  ns_exec systemctl daemon-reload
}
count() { storm3 count "/srv/cortex/$1" "$2"; }
newest() { ns_exec sh -c "ls -d /srv/backups/$1/$1_* | tail -n1"; }

dir=/srv/cortex/c3
# The leader of section 7: its nexus log on from the start.
cortex3 c3 $'nexslog:en: true\n'
ns_assert_eq 3.7.0 "$(storm3 wait $dir | awk '{print $3}')" "the Cortex's Synapse"
ns_assert_eq 50 "$(storm3 add $dir 50)" "inet:ip nodes added"
ns_assert_eq "$(ns_exec id -u synapse)" "$(ns_exec grep '^Uid:' "/proc/$(sb_prop synapse-cortex3@c3.service MainPID)/status" | cut -f2)" \
  "uid of the Cortex's server (the unit's MainPID)"

# 1. The nightly run with only the README's three lines.
readme_conf c3
ns_exec systemctl start synbackup@c3.service
ns_assert_eq success "$(sb_prop synbackup@c3.service Result)" "Result of the nightly run"
ns_assert_eq "root 700 root 700 synapse" \
  "$(ns_exec sh -c 'stat -c "%U %a" /srv/backups /srv/backups/c3; stat -c %U /srv/backups/c3/c3_*' | tr '\n' ' ' | sed 's/ $//')" \
  "owners and modes of the backup root, its parent and the backup"
ns_assert_eq "1 verified" "$(ns_exec synbackup list c3 --json | python3 -c 'import json,sys;l=json.load(sys.stdin);print(len(l), l[-1]["state"])')" \
  "list after the run"
ns_exec synbackup status c3

# 2. `synbackup drill c3` from a shell: the server runs as a transient unit (systemd
#    is PID 1), as synapse, and reports Synapse 3.7.0 and the backup's nodes.
out=$(ns_exec synbackup drill c3 2>&1) || { printf '%s\n' "$out" >&2; ns_die "synbackup drill c3 failed"; }
grep -q 'drill passed: .* (Synapse 3\.7\.0, safemode) ' <<<"$out" || ns_die "no pass line naming Synapse 3.7.0: $out"
ns_assert_eq "success systemd-run 3.7.0 3.7.0 50" \
  "$(json c3.drill.json 'd["result"], d["details"]["isolation"], d["details"]["synapse_version"], d["details"]["backup_synapse_version"], d["details"]["form_counts"]["inet:ip"]')" \
  "the drill's status: result, isolation, versions, inet:ip nodes"
ns_assert_eq 0 "$(ns_exec sh -c 'ls -a /srv/backups/c3 | grep -c synbackup-drill || true')" "scratch copies left"
ns_assert_eq "True 3.7.0 50" "$(ns_exec synbackup list c3 --json | python3 -c 'import json,sys;t=json.load(sys.stdin)[-1]["tested"];print(t["passed"], t["synapse_version"], t["form_counts"]["inet:ip"])')" \
  "list: the backup tested, with 3.7.0"
ns_exec synbackup status c3 >/dev/null || ns_die "status c3 exits $? after the drill"
ns_assert_eq 50 "$(count c3 inet:ip)" "live nodes after the drill"

# 3. SYNBACKUP_DRILL_AFTER_RUN=yes: the nightly unit drills the backup it made.
ns_assert_eq 60 "$(storm3 add $dir 10 --start 50)" "inet:ip nodes after adding 10"
readme_conf c3 SYNBACKUP_DRILL_AFTER_RUN=yes
ns_exec systemctl start synbackup@c3.service
ns_assert_eq success "$(sb_prop synbackup@c3.service Result)" "Result of the run that drills"
ns_assert_eq "success True 60 3.7.0" \
  "$(ns_exec python3 -c '
import json
b = json.load(open("/var/lib/synbackup/c3.json"))["last_success_backup"]
d = json.load(open("/var/lib/synbackup/c3.drill.json"))
print(d["result"], d["backup"] == b, d["details"]["form_counts"]["inet:ip"], d["details"]["synapse_version"])')" \
  "the run drilled its own backup"
ns_has 'drill passed: .*(Synapse 3\.7\.0, safemode)' -- ns_exec journalctl -b -u synbackup@c3.service -o cat \
  || ns_die "the run's journal has no pass line naming 3.7.0"
readme_conf c3
after_run=$(newest c3)

# 4. The maintenance window: first its dry run (issue 34), which says what it would
#    stop, copy and keep and changes nothing (the service directory owned by
#    synapse, the backup root, the state: names, sizes, mtimes, owners, modes); the
#    Cortex still answers. Then the window: the Cortex is stopped, compacted,
#    swapped and started; it answers, healthy, with every node.
# (An environment's lock.mdb is LMDB's table of readers: the estimate of the
# compacted copy reads each live environment as any reader does, taking a slot
# there, so its mtime moves; its size, owner and mode may not.)
tree() {
  ns_exec sh -c 'find /srv/cortex /srv/backups /var/lib/synbackup -printf "%p %y %s %T@ %u:%g %m\n" | sort' \
    | sed -E 's#^(/[^ ]*/lock\.mdb f [0-9]+) [0-9.]+ #\1 - #'
}
# dry_run_changes_nothing WHAT CMD...: CMD (a dry run) printed its plan into $plan
# and left the tree and the Cortex as they were.
dry_run_changes_nothing() {
  local what=$1 before after
  shift
  before=$(tree)
  plan=$(ns_exec "$@")
  ns_log "$what: $plan"
  after=$(tree)
  [ "$after" = "$before" ] || ns_die "$what changed something: $(diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") || true)"
  ns_assert_eq active "$(sb_prop synapse-cortex3@c3.service ActiveState)" "the Cortex's unit after $what"
  storm3 wait $dir --timeout 120 >/dev/null
}
# says WANT...: the plan has each line part.
says() { local w; for w in "$@"; do printf '%s\n' "$plan" | grep -qF "$w" || ns_die "the plan does not say '$w': $plan"; done; }
dry_run_changes_nothing "cold --dry-run" synbackup cold c3 --dry-run
says "c3: synapse-cortex3@c3.service is active and runs on $dir: would stop it and wait up to" \
  "c3: would copy $dir (" " free beside it" "c3: would move $dir aside to $dir.pre-cold-" \
  "c3: would start synapse-cortex3@c3.service and wait up to" "c3: dry run: nothing was changed"
#    The window: the Cortex is stopped, compacted, swapped and started;
#    it answers, healthy, with every node.
ns_exec systemctl start synbackup-cold@c3.service
ns_assert_eq success "$(sb_prop synbackup-cold@c3.service Result)" "Result of the window"
ns_assert_eq "success active" "$(json c3.cold.json 'd["result"]') $(sb_prop synapse-cortex3@c3.service ActiveState)" "window status, the Cortex's unit"
storm3 wait $dir --timeout 120 >/dev/null
ns_assert_eq "nominal 60" "$(storm3 health $dir) $(count c3 inet:ip)" "health and nodes after the window"
ns_exec sh -c 'ls -d /srv/cortex/c3.pre-cold-*' >/dev/null || ns_die "the window kept no old directory"
#    A second window's dry run names the directory the first kept, which it
#    would remove after its own swap, and removes nothing.
dry_run_changes_nothing "a second cold --dry-run" synbackup cold c3 --dry-run
says "c3: would then remove $dir.pre-cold-" "kept by an earlier window" "c3: dry run: nothing was changed"

# 5. restore --instance of the run's backup (60 nodes) over a Cortex with 5 more:
#    stopped, swapped, started, healthy, the 5 gone, the directory before kept.
ns_assert_eq 65 "$(storm3 add $dir 5 --start 60)" "inet:ip nodes after adding 5"
# Its dry run first: the unit it would stop and start, the directory kept aside.
dry_run_changes_nothing "restore --dry-run" synbackup restore --instance c3 "$(basename "$after_run")" --dry-run
says "c3: would verify $after_run against its manifest (" "c3: would copy it to /srv/cortex/.c3.synbackup-restoring." \
  "c3: would stop synapse-cortex3@c3.service and wait up to" "c3: would move $dir aside to $dir.pre-restore-" \
  "c3: would start synapse-cortex3@c3.service and wait up to" "c3: dry run: nothing was changed"
ns_assert_eq 65 "$(count c3 inet:ip)" "inet:ip nodes after the restore's dry run"
ns_exec synbackup restore --instance c3 "$(basename "$after_run")"
ns_assert_eq "success active" "$(json c3.restore.json 'd["result"]') $(sb_prop synapse-cortex3@c3.service ActiveState)" "restore status, the Cortex's unit"
storm3 wait $dir --timeout 120 >/dev/null
ns_assert_eq "nominal 60" "$(storm3 health $dir) $(count c3 inet:ip)" "health and nodes after the restore"
ns_assert_eq "synapse" "$(ns_exec stat -c %U $dir/slabs/cell.lmdb/data.mdb)" "owner of the restored files"

# 6. Offsite: a run copies the backup into a local restic repository; the Cortex
#    then gets 5 more nodes and is restored from the repository's latest snapshot.
ns_exec sh -c 'head -c 32 /dev/urandom | base64 >/etc/synbackup/c3.restic; chmod 600 /etc/synbackup/c3.restic'
readme_conf c3 SYNBACKUP_OFFSITE_REPOSITORY=/srv/offsite/c3 SYNBACKUP_OFFSITE_PASSWORD_FILE=/etc/synbackup/c3.restic
ns_exec mkdir -p /srv/offsite
ns_exec synbackup offsite init c3 >/dev/null
ns_exec systemctl start synbackup@c3.service
ns_assert_eq success "$(sb_prop synbackup@c3.service Result)" "Result of the run with an offsite copy"
ns_assert_eq success "$(json c3.offsite.json 'd["result"]')" "offsite status"
ns_assert_eq 1 "$(ns_exec synbackup offsite list c3 --json | python3 -c 'import json,sys;print(len(json.load(sys.stdin)))')" "snapshots offsite"
ns_assert_eq 65 "$(storm3 add $dir 5 --start 60)" "inet:ip nodes after adding 5"
ns_exec synbackup restore --instance c3 --offsite latest
storm3 wait $dir --timeout 120 >/dev/null
ns_assert_eq "success nominal 60" "$(json c3.restore.json 'd["result"]') $(storm3 health $dir) $(count c3 inet:ip)" \
  "restore status, health and nodes after the restore from offsite"

# 7. A follower of c3 (`parent:` over c3's unix socket), seeded from c3's newest
#    backup, backed up by its own nightly unit; then c3 gets 7 more nodes, which
#    the follower receives. The drill unit (what the timer starts) drills the
#    follower's backup with a write in its check: the drilled copy must not follow
#    c3, so it sees the backup's nodes only, and the write reaches neither Cortex.
readme_conf c3
ns_exec systemctl start synbackup@c3.service
ns_exec install -d -o synapse -g synapse -m 0750 /srv/cortex/f3
ns_exec cp -a "$(newest c3)/." /srv/cortex/f3/
ns_exec sh -c 'rm -f /srv/cortex/f3/synbackup-*; rm -rf /srv/cortex/f3/synbackup-certs'
cortex3 f3 $'parent: cell:///srv/cortex/c3\nnexslog:en: true\n'
ns_assert_eq 60 "$(count f3 inet:ip)" "the follower's nodes"
readme_conf f3 'SYNBACKUP_DRILL_CHECK=[inet:fqdn=written-by-drill.example]'
ns_exec systemctl start synbackup@f3.service
ns_assert_eq success "$(sb_prop synbackup@f3.service Result)" "Result of the follower's nightly run"
ns_assert_eq 67 "$(storm3 add $dir 7 --start 60)" "the leader's nodes after adding 7"
follower_has() { [ "$(count f3 inet:ip)" = "$1" ]; }
ns_wait_until 120 "the follower to receive the 7 nodes" follower_has 67
ns_exec systemctl start synbackup-drill@f3.service
ns_assert_eq success "$(sb_prop synbackup-drill@f3.service Result)" "Result of the follower's drill"
ns_assert_eq "0 0" "$(count c3 inet:fqdn=written-by-drill.example) $(count f3 inet:fqdn=written-by-drill.example)" \
  "the drill's write on the leader and on the follower"
ns_assert_eq "success systemd-run 60 ['cell.yaml:parent']" \
  "$(json f3.drill.json 'd["result"], d["details"]["isolation"], d["details"]["form_counts"]["inet:ip"], d["details"]["neutralised"]')" \
  "the follower's drill: result, isolation, nodes (the backup's, none newer), keys removed"
ns_has '^parent: cell:///srv/cortex/c3$' -- ns_exec sh -c "cat $(newest f3)/cell.yaml" \
  || ns_die "the drill changed the follower's backup's cell.yaml"
# The same drill from a shell on the other isolation path: a network and mount
# namespace of synbackup's own (SYNBACKUP_DRILL_ISOLATION=netns).
readme_conf f3 'SYNBACKUP_DRILL_CHECK=[inet:fqdn=written-by-drill.example]' SYNBACKUP_DRILL_ISOLATION=netns
ns_exec synbackup drill f3 2>/dev/null
ns_assert_eq "0 0" "$(count c3 inet:fqdn=written-by-drill.example) $(count f3 inet:fqdn=written-by-drill.example)" \
  "the netns drill's write on the leader and on the follower"
ns_assert_eq "success netns 60 ['cell.yaml:parent']" \
  "$(json f3.drill.json 'd["result"], d["details"]["isolation"], d["details"]["form_counts"]["inet:ip"], d["details"]["neutralised"]')" \
  "the follower's netns drill: result, isolation, nodes, keys removed"
ns_exec synbackup status >/dev/null || ns_die "status of c3 and f3 exits $? at the end"
ns_poweroff
