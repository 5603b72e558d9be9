#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# synbackup-sysctl.service at boot: after a reboot (so /run starts empty) the drop-in
# computed from this host's RAM is there again, written before systemd-sysctl.service
# started, and it is part of the configuration systemd-sysctl reads, with the values
# `synbackup sysctl` computes. An administrator's /etc/sysctl.d file of the same name
# wins. (/proc/sys is read-only in the container: the kernel's values cannot change
# here, so they are not compared.)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

ns_boot t15
sb_install
ns_assert_eq enabled "$(ns_exec systemctl is-enabled synbackup-sysctl.service)" "unit enabled by the package"
ns_reboot

dropin=/run/sysctl.d/61-synbackup-memory.conf
ns_exec test -s $dropin || ns_die "no $dropin after boot"
ns_assert_eq active "$(sb_prop synbackup-sysctl.service ActiveState)" "synbackup-sysctl.service after boot"
# Ordering: ours finished before systemd-sysctl.service began (or was skipped).
ours=$(sb_prop synbackup-sysctl.service ExecMainExitTimestampMonotonic)
theirs=$(sb_prop systemd-sysctl.service InactiveExitTimestampMonotonic)
ns_log "synbackup-sysctl done at $ours us, systemd-sysctl left inactive at $theirs us"
[ "$ours" -gt 0 ] && [ "$ours" -le "$theirs" ] || ns_die "synbackup-sysctl did not run before systemd-sysctl"

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
