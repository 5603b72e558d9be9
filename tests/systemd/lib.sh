# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2034 # NS_* globals are for the tests that source this file
# shellcheck shell=bash
# The real-systemd test harness: boots the cached Debian 12 tree (built by
# tests/systemd/build-rootfs) under systemd-nspawn and runs commands inside it.
#
# Sourced by every tests/systemd/NN-*.sh. One container per test process: ns_boot
# sets the NS_* globals below, every other ns_* function acts on that container, and
# an EXIT trap powers it off however the test ends (failure, `set -e`, a signal from
# the runner's timeout).
#
# Why these nspawn flags (see shared/systemd-testing.md; each was needed here):
# - --register=no --keep-unit: the host has no systemd and no system bus; without
#   them nspawn fails with "Failed to open system bus".
# - nspawn is started in a cgroup of its own that we remove afterwards: otherwise it
#   leaves cgroups behind on the host.
# - a tmpfs on the host's /run/systemd/nspawn: nspawn keeps state there and complains
#   at shutdown without it.
# - the root is an overlay of the cached tree with an upper layer in the test's temp
#   dir, so the cached tree stays pristine and every test starts from the same state.
#   (Like --volatile=overlay, but on disk rather than a 6 GB tmpfs, kept across
#   ns_reboot, and readable after a failure with NS_KEEP=1.) It is mounted in a
#   private mount namespace that nspawn execs into, so it disappears with nspawn,
#   even when a test is killed.
# - --private-network: services in the container (a Cortex binds TCP ports) only see
#   their own loopback, never the host's ports.
# - commands run through `nsenter -t LEADER -a`: `systemd-run -M`, `machinectl` and
#   `systemctl -M` need the host's bus and fail here ("Host is down").
#
# Globals after ns_boot: NS_NAME, NS_PID (systemd-nspawn), NS_LEADER (the container's
# PID 1 as seen from the host), NS_STATE (host temp dir), NS_SRV (host dir bound at
# /srv inside: service dirs live on a real disk, visible from the host), NS_UPPER
# (the overlay's upper layer: every file the container changed), NS_CONSOLE (the
# container's console log, appended to on every boot).

NS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NS_REPO=$(cd "$NS_DIR/../.." && pwd)
NS_CACHE=${SYNBACKUP_CACHE:-/var/cache/synbackup-ci}
NS_ROOTFS=${SYNBACKUP_ROOTFS:-$NS_CACHE/rootfs-bookworm}
# Written last by build-rootfs: a tree without it is not finished.
NS_STAMP_FILE=etc/synbackup-test-rootfs.stamp
# Parent cgroup (under each hierarchy nspawn uses) of every container one run starts,
# so the runner can find and remove whatever a killed test left behind. One parent
# per run (`synbackup-nspawn-RUNPID`, the runner's PID in NS_RUN_ID): runs from two
# checkouts at once never see, or clean up, each other's containers; a run removes
# the parents of runs whose runner is gone.
NS_CGROUP_PREFIX=synbackup-nspawn-
NS_CGROUP_PARENT=$NS_CGROUP_PREFIX${NS_RUN_ID:-$$}
NS_BOOT_TIMEOUT=${NS_BOOT_TIMEOUT:-60}
NS_POWEROFF_TIMEOUT=${NS_POWEROFF_TIMEOUT:-30}
# The environment of commands run inside: nsenter would otherwise pass on the host's
# (its PATH, proxies, CA paths, PIP_* settings), which a real system would not have.
NS_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0)

NS_NAME='' NS_PID='' NS_LEADER='' NS_STATE='' NS_SRV='' NS_UPPER='' NS_CONSOLE=''
NS_XFS=''
_NS_DEFERRED=() _NS_BOOT_ARGS=() _NS_HOST_CLEANUP=()

ns_log() { printf '[%s %s] %s\n' "$(date +%T)" "${NS_NAME:-ns}" "$*" >&2; }
ns_die() { ns_log "FAIL: $*"; exit 1; }

# ns_assert_eq EXPECTED ACTUAL WHAT
ns_assert_eq() {
  [ "$1" = "$2" ] || ns_die "$3: expected '$1', got '$2'"
  ns_log "ok: $3 = '$2'"
}

# ns_has [GREP-OPTION...] PATTERN -- CMD...: does CMD succeed, and does its output
# match PATTERN? The whole output is read first: with `CMD | grep -q`, grep exits at
# the first match, CMD's later writes fail (man's col, killed, exits 127) and
# pipefail reports that as a failure of the test (CI: 30-package, man | grep -q).
ns_has() {
  local args=() out
  while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
  [ $# -gt 1 ] || ns_die "ns_has: no command after --"
  shift
  out=$("$@") || return
  grep -q "${args[@]}" <<<"$out"
}

# ns_wait_until TIMEOUT_S WHAT CMD...: polls CMD (every 0.2 s) until it succeeds.
# The sleep only paces the polling; readiness is always CMD's own answer.
ns_wait_until() {
  local timeout=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { ns_log "timed out after ${timeout}s waiting for $what"; return 1; }
    sleep 0.2
  done
}

# ---- cgroups ---------------------------------------------------------------------

# The hierarchies nspawn and the container's systemd use on a hybrid host: the
# named v1 "systemd" one and the unified (v2) one; on a pure v2 host, the root.
_ns_cgroup_roots() {
  local fs
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    echo /sys/fs/cgroup
    return
  fi
  for fs in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    [ -e "$fs/cgroup.procs" ] && echo "$fs"
  done
  return 0
}

# _ns_cgroup_kill_remove NAME: kills what is left in the container's cgroups (only
# processes of the container we started) and removes them, deepest first.
_ns_cgroup_kill_remove() {
  local name=$1 root dir pid pids
  for root in $(_ns_cgroup_roots); do
    dir=$root/$NS_CGROUP_PARENT/$name
    [ -d "$dir" ] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      # `find` lists every cgroup.procs in the subtree; an empty subtree can go.
      pids=$(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
      [ -z "$pids" ] && break
      for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
      sleep 0.2
    done
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    if [ -d "$dir" ]; then
      ns_log "warning: could not remove cgroup $dir"
    else
      # The parent too, once no other container uses it: leave the host as it was.
      rmdir "$root/$NS_CGROUP_PARENT" 2>/dev/null || true
    fi
  done
  return 0
}

# ns_leftover_containers: names of containers whose cgroups still exist.
ns_leftover_containers() {
  local root
  for root in $(_ns_cgroup_roots); do
    [ -d "$root/$NS_CGROUP_PARENT" ] || continue
    find "$root/$NS_CGROUP_PARENT" -mindepth 1 -maxdepth 1 -type d -printf '%f\n'
  done | sort -u
}

# ns_cleanup_leftovers: removes what killed tests of this run left, and whatever
# runs whose runner process is gone left (used by the runner).
ns_cleanup_leftovers() {
  local name root dir run own=$NS_CGROUP_PARENT
  for root in $(_ns_cgroup_roots); do
    for dir in "$root/$NS_CGROUP_PREFIX"*; do
      [ -d "$dir" ] || continue
      run=${dir##*/"$NS_CGROUP_PREFIX"}
      [ "$NS_CGROUP_PREFIX$run" = "$own" ] && continue
      kill -0 "$run" 2>/dev/null && continue
      NS_CGROUP_PARENT=$NS_CGROUP_PREFIX$run
      for name in $(ns_leftover_containers); do
        ns_log "removing container $name left by dead run $run"
        _ns_cgroup_kill_remove "$name"
      done
      rmdir "$dir" 2>/dev/null || true
    done
  done
  NS_CGROUP_PARENT=$own
  for name in $(ns_leftover_containers); do
    ns_log "removing leftover container $name"
    _ns_cgroup_kill_remove "$name"
  done
}

# _ns_cgroup_prepare NAME: what must be in place before nspawn starts: the tmpfs on
# /run/systemd/nspawn and a fresh, empty cgroup NAME in each hierarchy.
_ns_cgroup_prepare() {
  local name=$1 root
  if ! mountpoint -q /run/systemd/nspawn; then
    mkdir -p /run/systemd/nspawn
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
  fi
  _ns_cgroup_kill_remove "$name"
  for root in $(_ns_cgroup_roots); do mkdir -p "$root/$NS_CGROUP_PARENT/$name"; done
}

# _ns_exec_nspawn [--setsid] [--overlay STATE] NAME ARGS...: moves the calling
# (sub)shell into cgroup NAME and replaces it with systemd-nspawn, so the caller's $!
# is nspawn itself. Call it in a subshell. Every step execs, none forks:
# --setsid gives nspawn a session of its own, so a Ctrl-C meant for the test reaches
#   the test's trap, which powers the container off cleanly, instead of reaching
#   nspawn directly (in a background subshell, setsid needs no fork);
# --overlay STATE mounts NS_ROOTFS + STATE/upper on STATE/root in a new mount
#   namespace (unshare), where nspawn then runs with -D STATE/root.
_ns_exec_nspawn() {
  local setsid=() overlay='' name root
  if [ "$1" = --setsid ]; then setsid=(setsid); shift; fi
  if [ "$1" = --overlay ]; then overlay=$2; shift 2; fi
  name=$1
  shift
  for root in $(_ns_cgroup_roots); do
    echo "$BASHPID" >"$root/$NS_CGROUP_PARENT/$name/cgroup.procs"
  done
  if [ -z "$overlay" ]; then
    exec "${setsid[@]}" systemd-nspawn --quiet --register=no --keep-unit "$@"
  fi
  # shellcheck disable=SC2016 # expanded by the inner sh
  exec "${setsid[@]}" unshare --mount --propagation private sh -ec '
    mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/root"
    shift 2
    exec systemd-nspawn --quiet --register=no --keep-unit "$@"' \
    sh "$NS_ROOTFS" "$overlay" -D "$overlay/root" "$@"
}

# ns_nspawn_run TREE NSPAWN-ARGS... -- CMD...: runs one command in TREE (no boot),
# writing to the tree itself; build-rootfs uses it to install the venv.
ns_nspawn_run() {
  local tree=$1 rc=0 name
  shift
  name=build-$$
  _ns_cgroup_prepare "$name"
  (_ns_exec_nspawn "$name" -D "$tree" --pipe --link-journal=no --timezone=off "$@") || rc=$?
  _ns_cgroup_kill_remove "$name"
  return $rc
}

# ---- the container ---------------------------------------------------------------

# _ns_alive: is systemd-nspawn still running (and not a zombie)?
_ns_alive() {
  local state
  [ -n "$NS_PID" ] || return 1
  state=$(awk '{print $3}' "/proc/$NS_PID/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# _ns_find_leader: the container's PID 1 is the process whose NSpid (its pid in each
# pid namespace, outermost first) has two entries ending in 1. It is in our cgroup
# at first, then in the "payload" cgroup nspawn makes, then in payload/init.scope.
_ns_find_leader() {
  local root pid nspid
  # The first hierarchy (not `| head -n1`: head exits before the second echo, and
  # bash prints "write error: Broken pipe").
  root=$(_ns_cgroup_roots)
  root=${root%%$'\n'*}
  while read -r pid; do
    nspid=$(awk '$1 == "NSpid:" {print NF - 1, $NF}' "/proc/$pid/status" 2>/dev/null) || continue
    if [ "$nspid" = "2 1" ]; then echo "$pid"; return 0; fi
  done < <(cat "$root/$NS_CGROUP_PARENT/$NS_NAME/cgroup.procs" \
               "$root/$NS_CGROUP_PARENT/$NS_NAME/payload/init.scope/cgroup.procs" \
               "$root/$NS_CGROUP_PARENT/$NS_NAME/payload/cgroup.procs" 2>/dev/null)
  return 1
}

# ns_boot NAME [NSPAWN-ARGS...]: boots the cached tree as container NAME and waits
# until its systemd says the boot is done (running or degraded). Extra arguments go
# to systemd-nspawn, e.g. --bind-ro="$NS_REPO/target/release/synbackup:/usr/bin/synbackup".
# A host temp dir (NS_SRV) is bound at /srv; tests put service dirs and backups there.
ns_boot() {
  local name=$1
  shift
  [ -z "$NS_PID" ] || ns_die "ns_boot: container $NS_NAME is already running (one per test)"
  [ "$(id -u)" = 0 ] || ns_die "ns_boot needs root (systemd-nspawn)"
  # A tree named by SYNBACKUP_ROOTFS is used as it is; the default one is (re)built
  # when missing or stale, which takes no time when it is cached.
  if [ -z "${SYNBACKUP_ROOTFS:-}" ]; then
    "$NS_DIR/build-rootfs" || ns_die "building the rootfs failed"
  fi
  [ -x "$NS_ROOTFS/opt/synapse-venv/bin/python" ] || ns_die "no usable tree at $NS_ROOTFS"

  NS_NAME=$name
  _NS_BOOT_ARGS=("$@")
  # The runner sets NS_TMPDIR to a directory of its own, so it can remove what a
  # killed test left there.
  NS_STATE=$(mktemp -d "${NS_TMPDIR:-${TMPDIR:-/tmp}}/synbackup-ns-$name.XXXXXX")
  NS_SRV=$NS_STATE/srv
  NS_UPPER=$NS_STATE/upper
  NS_CONSOLE=$NS_STATE/console.log
  mkdir -m 0755 "$NS_SRV" "$NS_UPPER" "$NS_STATE/work" "$NS_STATE/root"
  _ns_install_trap
  _ns_start
}

# ns_xfs SIZE: before ns_boot, an XFS filesystem as an operator with XFS has one
# (mkfs.xfs's defaults: reflink=1) on a sparse image of SIZE (e.g. 4G) in the run's
# temp dir, loop-mounted on the host at NS_XFS. Bind it in with
# `ns_boot NAME --bind="$NS_XFS:/srv/xfs"`: a mount made on the host after the boot
# would not reach the container (it runs in a private mount namespace). Unmounted
# (its loop device freed with it) and removed after the container is powered off,
# also when the test fails; `run` unmounts what a killed test left.
ns_xfs() {
  local size=$1 dir
  [ -z "$NS_XFS" ] || ns_die "ns_xfs: one XFS per test ($NS_XFS)"
  [ "$(id -u)" = 0 ] || ns_die "ns_xfs needs root (mount)"
  command -v mkfs.xfs >/dev/null || ns_die "ns_xfs needs mkfs.xfs (xfsprogs)"
  dir=$(mktemp -d "${NS_TMPDIR:-${TMPDIR:-/tmp}}/synbackup-xfs.XXXXXX")
  _ns_install_trap
  _NS_HOST_CLEANUP+=("$(printf '_ns_xfs_remove %q' "$dir")")
  mkdir "$dir/mnt"
  truncate -s "$size" "$dir/xfs.img"
  mkfs.xfs -q "$dir/xfs.img" || ns_die "mkfs.xfs failed"
  mount -o loop "$dir/xfs.img" "$dir/mnt" || ns_die "cannot loop-mount the XFS image"
  xfs_info "$dir/mnt" | grep -q 'reflink=1' || ns_die "mkfs.xfs made an XFS without reflink"
  NS_XFS=$dir/mnt
  ns_log "XFS of $size on $(findmnt -no SOURCE "$NS_XFS") at $NS_XFS"
}

# _ns_xfs_remove DIR: unmounts DIR/mnt (lazily if still busy) and removes DIR.
_ns_xfs_remove() {
  local dir=$1
  if mountpoint -q "$dir/mnt"; then
    umount "$dir/mnt" || { ns_log "warning: $dir/mnt busy; unmounting lazily"; umount -l "$dir/mnt"; }
  fi
  rm -rf --one-file-system "$dir"
  NS_XFS=''
}

# ns_umount_under DIR: unmounts (lazily) every mount under DIR, deepest first: what
# a test killed outright left of its ns_xfs (`run`, after each test).
ns_umount_under() {
  local m
  findmnt -rno TARGET | awk -v d="$1/" 'index($0, d) == 1' | sort -r | while read -r m; do
    ns_log "unmounting $m, left by a killed test"
    umount -l "$m" || true
  done
}

# _ns_host_cleanup: the host's cleanups (ns_xfs), last first, after the poweroff.
_ns_host_cleanup() {
  local i
  for ((i = ${#_NS_HOST_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${_NS_HOST_CLEANUP[i]}" || ns_log "warning: host cleanup '${_NS_HOST_CLEANUP[i]}' failed"
  done
  _NS_HOST_CLEANUP=()
}

# ns_reboot: powers the container off and boots it again with the same arguments,
# keeping what it wrote (the overlay's upper layer and /srv), as a real reboot would.
ns_reboot() {
  [ -n "$NS_PID" ] || ns_die "ns_reboot: no container"
  _ns_stop
  _ns_start
}

# _ns_start: starts nspawn on the container's state and waits for the boot.
_ns_start() {
  local deadline state start=$SECONDS
  _ns_cgroup_prepare "$NS_NAME"
  _ns_exec_nspawn --setsid --overlay "$NS_STATE" "$NS_NAME" \
    -M "$NS_NAME" -b --console=read-only --private-network --link-journal=no \
    --timezone=off --resolv-conf=off --bind="$NS_SRV:/srv" "${_NS_BOOT_ARGS[@]}" \
    </dev/null >>"$NS_CONSOLE" 2>&1 &
  NS_PID=$!

  deadline=$((SECONDS + NS_BOOT_TIMEOUT))
  until NS_LEADER=$(_ns_find_leader); do
    _ns_alive || { cat "$NS_CONSOLE" >&2; ns_die "systemd-nspawn exited during boot"; }
    [ $SECONDS -lt $deadline ] || ns_die "no container PID 1 after ${NS_BOOT_TIMEOUT}s"
    sleep 0.1
  done
  # systemctl fails until the container's systemd listens on its private socket;
  # after that, --wait blocks until the boot transaction is done.
  until state=$(timeout 10 nsenter -t "$NS_LEADER" -a -- env -i "${NS_ENV[@]}" \
                  systemctl is-system-running --wait 2>/dev/null) \
        && [ -n "$state" ] && [ "$state" != offline ]; do
    _ns_alive || { cat "$NS_CONSOLE" >&2; ns_die "systemd-nspawn exited during boot"; }
    [ $SECONDS -lt $deadline ] || { tail -n 40 "$NS_CONSOLE" >&2; ns_die "boot did not finish in ${NS_BOOT_TIMEOUT}s (state '$state')"; }
    sleep 0.1
  done
  case $state in
    running) ;;
    degraded) ns_log "warning: boot degraded: $(ns_exec systemctl --failed --plain --no-legend | awk '{print $1}' | xargs)" ;;
    *) tail -n 40 "$NS_CONSOLE" >&2; ns_die "boot ended in state '$state'" ;;
  esac
  ns_log "booted in $((SECONDS - start)) s (leader pid $NS_LEADER, /srv = $NS_SRV)"
}

# ns_exec CMD...: runs CMD inside the container (all its namespaces, its root, a clean
# environment), with stdin/stdout/stderr passed through. Not under the container's
# systemd: use ns_run for that.
ns_exec() {
  [ -n "$NS_LEADER" ] || ns_die "ns_exec: no container"
  nsenter -t "$NS_LEADER" -a -- env -i "${NS_ENV[@]}" "$@"
}

# ns_run CMD...: runs CMD as a transient service of the container's systemd (its
# cgroup, its journal, the unit's defaults) and waits for it; output is piped back.
ns_run() {
  ns_exec systemd-run --quiet --wait --pipe --collect --service-type=exec -- "$@"
}

# ns_copy_in HOSTPATH CONTAINERPATH: copies a file (keeping its mode) or a directory's
# contents (tar, keeping modes and times) into the container. Writes go to the
# overlay's upper layer, so the cached tree is never touched.
ns_copy_in() {
  local src=$1 dst=$2
  if [ -d "$src" ]; then
    ns_exec mkdir -p "$dst"
    tar -C "$src" -cf - . | ns_exec tar -C "$dst" -xpf -
  else
    [ -f "$src" ] || ns_die "ns_copy_in: no such file: $src"
    # shellcheck disable=SC2016,SC2094 # $1/$2 are expanded by the inner sh
    ns_exec sh -c 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"' \
      sh "$dst" "$(stat -c %a "$src")" <"$src"
  fi
}

# ns_copy_out CONTAINERFILE HOSTFILE
ns_copy_out() {
  ns_exec cat "$1" >"$2"
}

# ns_install_unit FILE...: installs unit files into /etc/systemd/system and reloads.
ns_install_unit() {
  local f
  for f in "$@"; do ns_copy_in "$f" "/etc/systemd/system/$(basename "$f")"; done
  ns_exec systemctl daemon-reload
}

# ns_journal [JOURNALCTL-ARGS...]: the container's journal of this boot.
ns_journal() {
  ns_exec journalctl -b --no-pager -q "$@"
}

# ns_defer CMD...: runs CMD (a test's own cleanup, e.g. stopping a unit) in
# ns_poweroff, before the container goes down, also when the test fails; the last
# deferred runs first. A failing CMD is logged, not fatal.
ns_defer() {
  _NS_DEFERRED+=("$(printf '%q ' "$@")")
}

# ns_poweroff: runs the deferred commands, powers the container off, and removes its
# cgroups and temp dir (kept when NS_KEEP=1).
ns_poweroff() {
  local start=$SECONDS i
  [ -n "$NS_NAME" ] || { _ns_host_cleanup; return 0; }
  if _ns_alive; then
    for ((i = ${#_NS_DEFERRED[@]} - 1; i >= 0; i--)); do
      eval "${_NS_DEFERRED[i]}" || ns_log "warning: deferred '${_NS_DEFERRED[i]}' failed"
    done
  fi
  _NS_DEFERRED=()
  _ns_stop
  _ns_host_cleanup
  if [ "${NS_KEEP:-0}" = 1 ]; then
    ns_log "kept $NS_STATE (NS_KEEP=1)"
  else
    rm -rf --one-file-system "$NS_STATE"
  fi
  ns_log "powered off in $((SECONDS - start)) s"
  NS_NAME='' NS_PID='' NS_LEADER='' NS_STATE='' NS_SRV='' NS_UPPER='' NS_CONSOLE=''
}

# _ns_kill_strays: kills what ns_exec started in the container and is still running
# (e.g. a command a failed test left waiting): such processes are in the container's
# pid namespace but not in its cgroups, and the container's shutdown would wait on
# them (systemd-shutdown's "Waiting for process") instead of killing them.
_ns_kill_strays() {
  local pidns p
  pidns=$(readlink "/proc/$NS_LEADER/ns/pid") || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$pidns" ] || continue
    grep -q "/$NS_CGROUP_PARENT/$NS_NAME/" "$p/cgroup" 2>/dev/null && continue
    kill -9 "${p#/proc/}" 2>/dev/null || true
  done
}

# _ns_stop: asks systemd inside to power off; if that does not finish in time, sends
# it SIGRTMIN+4 (its "poweroff now"); at last, kills. Then removes the cgroups.
_ns_stop() {
  local deadline
  if _ns_alive; then
    _ns_kill_strays
    timeout 10 nsenter -t "$NS_LEADER" -a -- env -i "${NS_ENV[@]}" \
      systemctl --no-block poweroff >/dev/null 2>&1 || true
    deadline=$((SECONDS + NS_POWEROFF_TIMEOUT))
    while _ns_alive && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if _ns_alive; then
      ns_log "warning: no poweroff after ${NS_POWEROFF_TIMEOUT}s; sending SIGRTMIN+4"
      kill -s RTMIN+4 "$NS_LEADER" 2>/dev/null || true
      deadline=$((SECONDS + 15))
      while _ns_alive && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    fi
    _ns_alive && { ns_log "warning: killing systemd-nspawn"; kill -9 "$NS_PID" 2>/dev/null || true; }
  fi
  wait "$NS_PID" 2>/dev/null || true
  _ns_cgroup_kill_remove "$NS_NAME"
  NS_PID='' NS_LEADER=''
}

# The EXIT trap: on failure, what a reader of the CI log needs to see (before any
# cleanup changes it), then poweroff (which runs the deferred commands). INT and
# TERM (the runner's timeout sends TERM) exit through it.
_ns_on_exit() {
  local rc=$?
  trap - EXIT INT TERM ERR
  set +e
  if [ $rc != 0 ] && _ns_alive; then
    ns_log "test failed (exit $rc); failed units and the end of the journal:"
    timeout 10 nsenter -t "$NS_LEADER" -a -- env -i "${NS_ENV[@]}" \
      sh -c 'systemctl --failed --no-pager; journalctl -b --no-pager -q -n 60' >&2
  fi
  ns_poweroff
  exit $rc
}

_ns_install_trap() {
  set -E
  trap _ns_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# The ERR trap names the command that failed and the test's line that led to it,
# which `set -e` alone would not. It is set here, at the test's top level, because
# bash restores a caller's ERR trap when a function returns; ns_boot turns on
# `set -E` so it also fires inside functions, where `set -e` stops the test.
_ns_on_err() {
  local rc=$1 cmd=$2 line=$3 n=${#BASH_SOURCE[@]}
  # The outermost frame is the test script; BASH_LINENO[n-2] is its line that called
  # into the function that failed (when it failed at top level, it is LINENO).
  [ "$n" -gt 2 ] && line=${BASH_LINENO[n - 2]}
  ns_log "command failed (exit $rc): $cmd [$(basename "${BASH_SOURCE[n - 1]}"):$line]"
}
trap '_ns_on_err $? "$BASH_COMMAND" "$LINENO"' ERR
