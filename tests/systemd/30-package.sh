#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2016 # single-quoted: expanded inside the container, or by dpkg-query
# The .deb on a booted Debian 12 with systemd, as an operator meets it:
# - install with apt: the tuning applies at once (synbackup-sysctl.service enabled
#   and run, the drop-ins exist, our sysctl keys and only them are applied, and
#   systemd-sysctl.service is not restarted: an administrator's runtime change to
#   another key stays), no template timer is enabled, the generator link,
#   `systemd-analyze verify` of every installed unit, `man` pages render without
#   warnings, bash completion works;
# - an instance for a running Cortex: `systemctl enable --now synbackup@cortex00.timer`
#   shows in list-timers, and a backup through the installed units succeeds;
# - upgrade to a rebuilt package with a higher version while a backup is running:
#   the edited config, the enabled timer and the running backup are kept as they are,
#   and the sysctl keys are applied as on install;
# - apt remove: binary and units go, the timers stop; config, state and every backup
#   stay;
# - apt install again: every enabled instance timer runs again (list-timers), one
#   that cannot start is a warning, not a failed install; a timer never enabled
#   stays stopped;
# - the .rpm's %preun (erase) and %post (install) scriptlets, run by hand on the
#   same systemd: timers stopped, then started again; sysctl as for the .deb;
# - apt purge: config, state and restic's cache go; every backup and the service
#   directory stay.
#
# Two packages: VERSION-1 and the same with revision 2 (sb_deb: the ones `run` built
# for this run, or built here; tests/run-all lints them).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

version=$(sb_version)
old=$version-1 new=$version-2
debs=("$(sb_deb 1)" "$(sb_deb 2)")

ns_boot t30
for deb in "${debs[@]}"; do ns_copy_in "$deb" "/root/$(basename "$deb")"; done

# what_is NAME...: "present" or "absent" for each path, for one comparison.
what_is() {
  local p out=()
  for p in "$@"; do
    if ns_exec test -e "$p" -o -L "$p"; then out+=("$p:present"); else out+=("$p:absent"); fi
  done
  echo "${out[*]}"
}
# unit_is STATE UNIT: does `systemctl is-active UNIT` say STATE?
unit_is() {
  [ "$(ns_exec systemctl is-active "$2" || true)" = "$1" ]
}
# backups_digest: every backup's name and manifest hash (what "kept" means).
backups_digest() {
  ns_exec sh -c 'cd /srv/backups/cortex00 && for d in cortex00_*; do
    printf "%s %s\n" "$d" "$(sha256sum <"$d/synbackup-manifest.json" | cut -d" " -f1)"; done'
}

# ---- an administrator's sysctl settings --------------------------------------------
# The administrator's own file sets a key of ours (it wins) and one of theirs, which
# they then change at runtime. Restarting systemd-sysctl.service (what the package
# did) writes every key of sysctl.d again and reverts that change. In the container
# only /proc/sys/net is writable (it has its own network namespace; the rest of
# /proc/sys is read-only), so the runtime change is to a net.* key, and which vm.*
# keys the package writes is read from systemd-sysctl's debug log instead
# (SYSTEMD_LOG_LEVEL reaches the maintainer script through apt and dpkg; writes to
# a read-only /proc/sys are logged and skipped).
ns_exec sh -c 'printf "%s\n" "net.ipv4.ip_default_ttl = 65" "vm.swappiness = 5" >/etc/sysctl.d/70-admin.conf'
ns_exec sysctl -q -w net.ipv4.ip_default_ttl=99
ns_exec systemctl restart systemd-sysctl.service
ns_assert_eq 65 "$(ns_exec sysctl -n net.ipv4.ip_default_ttl)" "net.ipv4.ip_default_ttl after restarting systemd-sysctl (the check can fail)"
ns_exec sysctl -q -w net.ipv4.ip_default_ttl=99
sysctl_id=$(ns_exec systemctl show -P InvocationID systemd-sysctl.service)

# apt_install DEB LOG: apt-get install, with systemd's tools logging at debug level;
# the output (apt runs dpkg on a pty: the maintainer scripts' stderr is in it too)
# goes to LOG, printed if apt fails; dpkg's steps and our warnings are shown.
apt_install() {
  ns_exec env DEBIAN_FRONTEND=noninteractive SYSTEMD_LOG_LEVEL=debug \
    apt-get install -y --no-install-recommends "/root/$(basename "$1")" >"$2" 2>&1 \
    || { tail -n 40 "$2" >&2; ns_die "apt-get install $(basename "$1") failed"; }
  grep -E '^(Unpacking|Setting up|synbackup: )' "$2" >&2 || true
}
# sysctl_written LOG: the keys systemd-sysctl wrote (or tried to), KEY=VALUE.
sysctl_written() {
  sed -n "s|^Setting '/proc/sys/\([^']*\)' to '\([^']*\)'.*|\1=\2|p" "$1" | sed 's|/|.|g' | sort
}
# check_sysctl LOG WHEN: only our keys were written, with the values of the whole
# sysctl.d configuration (the administrator's vm.swappiness), the runtime change to
# another key is still there, and systemd-sysctl.service was not restarted.
check_sysctl() {
  local want
  want=$({ printf '%s\n' vm.swappiness=5 vm.dirty_expire_centisecs=20 vm.dirty_writeback_centisecs=20
           ns_exec sed -n 's/^\(vm\.[a-z_]*\) *= *\([0-9]*\)$/\1=\2/p' /run/sysctl.d/61-synbackup-memory.conf
         } | sort)
  ns_assert_eq "$(xargs <<<"$want")" "$(sysctl_written "$1" | xargs)" "sysctl keys written by the package ($2)"
  ns_assert_eq 99 "$(ns_exec sysctl -n net.ipv4.ip_default_ttl)" "the administrator's runtime net.ipv4.ip_default_ttl ($2)"
  ns_assert_eq "$sysctl_id" "$(ns_exec systemctl show -P InvocationID systemd-sysctl.service)" "systemd-sysctl.service not restarted ($2)"
}

# ---- install ----------------------------------------------------------------------
ns_log "apt install ./$(basename "${debs[0]}")"
# The container has no network: every dependency must already be there, which is
# what a Debian 12 with systemd has (libc6, libssl3, init-system-helpers).
apt_install "${debs[0]}" "$NS_STATE/install.log"
ns_assert_eq "install ok installed $old" "$(ns_exec dpkg-query -W -f='${Status} ${Version}' synbackup)" "package state"

ns_assert_eq enabled "$(ns_exec systemctl is-enabled synbackup-sysctl.service)" "synbackup-sysctl.service enabled"
ns_assert_eq active "$(ns_exec systemctl is-active synbackup-sysctl.service)" "synbackup-sysctl.service ran"
ns_exec test -s /usr/lib/sysctl.d/60-synbackup.conf
ns_exec grep -q '^vm.dirty' /run/sysctl.d/61-synbackup-memory.conf
ns_log "ok: sysctl drop-ins: $(ns_exec cat /run/sysctl.d/61-synbackup-memory.conf | grep '^vm' | xargs)"
check_sysctl "$NS_STATE/install.log" install
ns_assert_eq /usr/bin/synbackup "$(ns_exec readlink -f /usr/lib/systemd/system-generators/synbackup-generator)" "generator link"
ns_assert_eq "/etc/synbackup:present" "$(what_is /etc/synbackup)" "config directory"
# No template unit enabled by the package: no wants links, list-timers is empty.
ns_assert_eq "" "$(ns_exec find /etc/systemd/system -name 'synbackup*@*' -print)" "instance units enabled by the package"
ns_assert_eq "" "$(ns_exec systemctl list-timers --all --no-legend 'synbackup*' | grep -v '^0 timers' || true)" "timers after install"

# systemd-analyze verify on the installed units (templates through an instance);
# it also checks that the Documentation= man pages exist.
units=(synbackup-sysctl.service synbackup@cortex00.service synbackup@cortex00.timer
       synbackup-cold@cortex00.service synbackup-cold@cortex00.timer
       synbackup-failure@synbackup@cortex00.service.service)
verify=$(ns_exec systemd-analyze verify "${units[@]}" 2>&1) || ns_die "systemd-analyze verify failed: $verify"
ns_assert_eq "" "$verify" "systemd-analyze verify ${units[*]}"

# The man pages render, and groff has nothing to say about them.
for page in synbackup synbackup.conf; do
  warn=$(ns_exec env MANWIDTH=80 man --warnings "$page" 2>&1 >/dev/null)
  ns_assert_eq "" "$warn" "man --warnings $page"
done
ns_has '^EXIT STATUS' -- ns_exec man -P cat synbackup
ns_has 'SYNBACKUP_KEEP_DAILY' -- ns_exec man -P cat synbackup.conf

# Bash completion, loaded on demand as in an interactive shell.
got=$(ns_exec bash -c '. /usr/share/bash-completion/bash_completion
  __load_completion synbackup || exit 1
  COMP_WORDS=(synbackup ba); COMP_CWORD=1; COMP_LINE="synbackup ba"; COMP_POINT=${#COMP_LINE}
  "$(complete -p synbackup | sed -n "s/.*-F \([^ ]*\) .*/\1/p")" synbackup ba synbackup
  echo "${COMPREPLY[@]}"')
ns_assert_eq backup "$got" "bash completion of 'synbackup ba'"

# ---- an instance for a running Cortex ---------------------------------------------
ns_install_unit "$NS_DIR/units/synapse-cortex@.service"
ns_copy_in "$NS_DIR/storm.py" /usr/local/bin/storm.py
ns_exec systemctl start synapse-cortex@cortex00.service
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
ns_exec storm.py wait /srv/cortex/cortex00 --timeout 120
ns_exec storm.py add /srv/cortex/cortex00 200 >/dev/null

# The operator's config: the shipped example, edited.
ns_exec sh -ec 'sed -e "s|^SYNBACKUP_SERVICE_DIR=.*|SYNBACKUP_SERVICE_DIR=/srv/cortex/cortex00|" \
    -e "s|^SYNBACKUP_BACKUP_ROOT=.*|SYNBACKUP_BACKUP_ROOT=/srv/backups/cortex00|" \
    -e "s|^#SYNBACKUP_KEEP_LAST=3|SYNBACKUP_KEEP_LAST=5|" \
    /usr/share/doc/synbackup/examples/instance.conf >/etc/synbackup/cortex00.conf
  mkdir -p /srv/backups/cortex00
  # What prometheus-node-exporter would have made: metrics are written when it exists.
  mkdir -p /var/lib/prometheus/node-exporter
  systemctl daemon-reload'
conf_sum=$(ns_exec sha256sum /etc/synbackup/cortex00.conf)
# The nightly and the monthly window, enabled; a timer started but never enabled.
ns_exec systemctl enable --now synbackup@cortex00.timer synbackup-cold@cortex00.timer
ns_exec systemctl start synbackup@scratch.timer
# in_list_timers UNIT: is UNIT in `systemctl list-timers` (running, with a next time)?
in_list_timers() {
  ns_has -F "$1" -- ns_exec systemctl list-timers --no-legend "$1"
}
for t in synbackup@cortex00.timer synbackup-cold@cortex00.timer; do
  in_list_timers $t || ns_die "$t is not in systemctl list-timers"
  ns_log "ok: $(ns_exec systemctl list-timers --no-legend $t)"
done

ns_exec systemctl start synbackup@cortex00.service
ns_assert_eq success "$(ns_exec systemctl show -P Result synbackup@cortex00.service)" "first backup through the installed unit"
ns_exec test -s /var/lib/synbackup/cortex00.json
ns_exec test -s /var/lib/prometheus/node-exporter/synbackup-cortex00.prom

# ---- upgrade, with a backup running ------------------------------------------------
# A drop-in holds the next backup in its start phase long enough to upgrade under it.
ns_exec sh -ec 'mkdir -p /run/systemd/system/synbackup@cortex00.service.d
  printf "[Service]\nExecStartPre=/bin/sleep 15\n" >/run/systemd/system/synbackup@cortex00.service.d/slow.conf
  systemctl daemon-reload'
ns_exec systemctl start --no-block synbackup@cortex00.service
ns_wait_until 10 "the backup to start" unit_is activating synbackup@cortex00.service
running_id=$(ns_exec systemctl show -P InvocationID synbackup@cortex00.service)
timer_id=$(ns_exec systemctl show -P InvocationID synbackup@cortex00.timer)
backups_before=$(backups_digest)

ns_log "apt install ./$(basename "${debs[1]}") (upgrade)"
apt_install "${debs[1]}" "$NS_STATE/upgrade.log"
ns_assert_eq "install ok installed $new" "$(ns_exec dpkg-query -W -f='${Status} ${Version}' synbackup)" "package state after upgrade"
check_sysctl "$NS_STATE/upgrade.log" upgrade
ns_assert_eq "$running_id" "$(ns_exec systemctl show -P InvocationID synbackup@cortex00.service)" "running backup not restarted by the upgrade"
ns_assert_eq "$timer_id" "$(ns_exec systemctl show -P InvocationID synbackup@cortex00.timer)" "timer not restarted by the upgrade"
ns_assert_eq "$conf_sum" "$(ns_exec sha256sum /etc/synbackup/cortex00.conf)" "edited config kept by the upgrade"
ns_assert_eq enabled "$(ns_exec systemctl is-enabled synbackup@cortex00.timer)" "timer still enabled after upgrade"
ns_assert_eq active "$(ns_exec systemctl is-active synbackup@cortex00.timer)" "timer still active after upgrade"
ns_assert_eq enabled "$(ns_exec systemctl is-enabled synbackup-sysctl.service)" "synbackup-sysctl.service after upgrade"
# The backup that was running when the package changed under it finishes well.
ns_wait_until 120 "the running backup to finish" unit_is inactive synbackup@cortex00.service
ns_assert_eq success "$(ns_exec systemctl show -P Result synbackup@cortex00.service)" "backup that ran across the upgrade"
ns_exec sh -c 'rm -r /run/systemd/system/synbackup@cortex00.service.d; systemctl daemon-reload'
backups=$(backups_digest)
[ "$(wc -l <<<"$backups")" -gt "$(wc -l <<<"$backups_before")" ] || ns_die "no new backup after the upgrade"
lost=$(comm -23 <(sort <<<"$backups_before") <(sort <<<"$backups"))
ns_assert_eq "" "$lost" "backups changed or gone across the upgrade"
ns_log "ok: $(wc -l <<<"$backups") backups"

# A timer enabled for an instance whose backup unit cannot be loaded (masked): it
# cannot start, and an install must not fail for it.
ns_exec systemctl mask synbackup@broken.service
ns_exec systemctl enable synbackup@broken.timer

# ---- remove -----------------------------------------------------------------------
ns_exec env DEBIAN_FRONTEND=noninteractive apt-get remove -y synbackup
ns_assert_eq "deinstall ok config-files" "$(ns_exec dpkg-query -W -f='${Status}' synbackup)" "package state after remove"
ns_assert_eq "/usr/bin/synbackup:absent /usr/lib/systemd/system/synbackup@.service:absent /usr/lib/systemd/system/synbackup@.timer:absent /usr/lib/systemd/system-generators/synbackup-generator:absent /run/sysctl.d/61-synbackup-memory.conf:absent" \
  "$(what_is /usr/bin/synbackup /usr/lib/systemd/system/synbackup@.service /usr/lib/systemd/system/synbackup@.timer \
       /usr/lib/systemd/system-generators/synbackup-generator /run/sysctl.d/61-synbackup-memory.conf)" "files after remove"
for t in synbackup@cortex00.timer synbackup-cold@cortex00.timer synbackup@scratch.timer; do
  ns_assert_eq inactive "$(ns_exec systemctl is-active $t || true)" "$t after remove"
done
ns_assert_eq "$conf_sum" "$(ns_exec sha256sum /etc/synbackup/cortex00.conf)" "config after remove"
ns_exec test -s /var/lib/synbackup/cortex00.json
ns_assert_eq "$backups" "$(backups_digest)" "backups after remove"

# ---- install again -----------------------------------------------------------------
# prerm stopped the timers; installing again starts the enabled ones (before, they
# stayed enabled and inactive, with nothing in list-timers, until a reboot).
ns_log "apt install ./$(basename "${debs[1]}") (after remove)"
apt_install "${debs[1]}" "$NS_STATE/reinstall.log"
ns_assert_eq "install ok installed $new" "$(ns_exec dpkg-query -W -f='${Status} ${Version}' synbackup)" "package state after installing again"
for t in synbackup@cortex00.timer synbackup-cold@cortex00.timer; do
  ns_assert_eq "enabled active" "$(ns_exec systemctl is-enabled $t) $(ns_exec systemctl is-active $t || true)" "$t after remove and install"
  in_list_timers $t || ns_die "$t is not in systemctl list-timers after remove and install"
done
ns_log "ok: $(ns_exec systemctl list-timers --no-legend 'synbackup*' | xargs)"
ns_assert_eq inactive "$(ns_exec systemctl is-active synbackup@scratch.timer || true)" "a timer never enabled, after remove and install"
grep -qF 'synbackup: warning: could not start synbackup@broken.timer' "$NS_STATE/reinstall.log" \
  || ns_die "no warning about synbackup@broken.timer: $(grep -v '^[A-Z]' "$NS_STATE/reinstall.log" | tail -n 5)"
ns_log "ok: $(grep -F 'synbackup: warning: could not start synbackup@broken.timer' "$NS_STATE/reinstall.log")"
check_sysctl "$NS_STATE/reinstall.log" "install after remove"
ns_exec systemctl disable synbackup@broken.timer
ns_exec systemctl unmask synbackup@broken.service

# ---- the .rpm's scriptlets, on this systemd ----------------------------------------
# packaging/rpm/preun and post (cargo-generate-rpm packages them verbatim), run by
# hand as rpm runs them for an erase and a new install (there is no rpm database
# here; the .deb's files stay): %preun 0 stops the instance timers and disables
# synbackup-sysctl.service, %post 1 enables and runs it, applies our sysctl keys
# only, and starts the enabled timers again.
for f in preun post; do ns_copy_in "$NS_REPO/packaging/rpm/$f" "/root/rpm-$f"; done
ns_exec sh /root/rpm-preun 0
for t in synbackup@cortex00.timer synbackup-cold@cortex00.timer synbackup-sysctl.service; do
  ns_assert_eq inactive "$(ns_exec systemctl is-active $t || true)" "$t after rpm %preun 0"
done
ns_exec env SYSTEMD_LOG_LEVEL=debug sh /root/rpm-post 1 >"$NS_STATE/rpm-post.log" 2>&1 \
  || { tail -n 40 "$NS_STATE/rpm-post.log" >&2; ns_die "rpm %post 1 failed"; }
for t in synbackup@cortex00.timer synbackup-cold@cortex00.timer synbackup-sysctl.service; do
  ns_assert_eq "enabled active" "$(ns_exec systemctl is-enabled $t) $(ns_exec systemctl is-active $t || true)" "$t after rpm %post 1"
done
in_list_timers synbackup@cortex00.timer || ns_die "synbackup@cortex00.timer is not in list-timers after rpm %post 1"
check_sysctl "$NS_STATE/rpm-post.log" "rpm %post 1"

# ---- purge ------------------------------------------------------------------------
# restic's cache, as the units' CacheDirectory=synbackup holds it for offsite copies.
ns_exec mkdir -p /var/cache/synbackup/restic/0123abcd
ns_exec env DEBIAN_FRONTEND=noninteractive apt-get purge -y synbackup
ns_assert_eq "" "$(ns_exec dpkg-query -W -f='${Status}' synbackup 2>/dev/null || true)" "package state after purge"
ns_assert_eq "/etc/synbackup:absent /var/lib/synbackup:absent /run/synbackup:absent /var/cache/synbackup:absent /var/lib/prometheus/node-exporter/synbackup-cortex00.prom:absent /etc/systemd/system/timers.target.wants/synbackup@cortex00.timer:absent" \
  "$(what_is /etc/synbackup /var/lib/synbackup /run/synbackup /var/cache/synbackup /var/lib/prometheus/node-exporter/synbackup-cortex00.prom \
       /etc/systemd/system/timers.target.wants/synbackup@cortex00.timer)" "files after purge"
ns_assert_eq "$backups" "$(backups_digest)" "backups after purge"
ns_exec test -f /srv/cortex/cortex00/cell.guid
ns_assert_eq active "$(ns_exec systemctl is-active synapse-cortex@cortex00.service)" "the service after purge"
ns_poweroff
