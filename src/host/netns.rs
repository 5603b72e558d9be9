// SPDX-License-Identifier: Apache-2.0
//! Starting a process isolated from the network: in a network namespace of its own
//! with only loopback (up), as a given user, killed when its parent dies.
//!
//! Done in the child between fork and exec (`pre_exec`), with raw syscalls only:
//! `setsid` (the server and every worker it spawns share one process group, so they
//! can be ended together, also by a later drill), `unshare(CLONE_NEWNET)` (needs root), `lo` brought up with `SIOCSIFFLAGS`, then
//! groups, gid and uid dropped, then `PR_SET_PDEATHSIG` = SIGKILL (set after the uid
//! change, which would clear it), so a drill killed with SIGKILL takes its server
//! along. std's own `Command::uid` would change the user before `pre_exec`, too
//! early for the unshare, so the user is changed here.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make `cmd` start in a new network namespace with only loopback, as `uid:gid`.
pub(crate) fn isolate(cmd: &mut Command, uid: u32, gid: u32) {
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe syscalls (no allocation).
    unsafe {
        cmd.pre_exec(move || isolate_child(uid, gid, parent));
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the forked child: the namespace, loopback, the user, the parent-death signal.
fn isolate_child(uid: u32, gid: u32, parent: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on values we own; no memory is shared with the parent.
    unsafe {
        check(libc::setsid())?;
        check(libc::unshare(libc::CLONE_NEWNET))?;
        loopback_up()?;
        if libc::geteuid() == 0 {
            check(libc::setgroups(0, std::ptr::null()))?;
        }
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if libc::getppid() as u32 != parent {
            return Err(io::Error::other(
                "the drill ended before its server started",
            ));
        }
    }
    Ok(())
}

/// Bring up `lo` in the current (new) network namespace.
unsafe fn loopback_up() -> io::Result<()> {
    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    check(fd)?;
    let mut req: libc::ifreq = std::mem::zeroed();
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
    if r == 0 {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    let r = if r == 0 {
        libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req)
    } else {
        r
    };
    let err = io::Error::last_os_error();
    libc::close(fd);
    if r < 0 {
        return Err(err);
    }
    Ok(())
}

/// The process group of `pid` (`/proc/PID/stat`), if it runs.
pub(crate) fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// SIGKILL every process in process group `pgid` (a server started by [`isolate`]).
pub(crate) fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill on a process group id; no memory involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}
