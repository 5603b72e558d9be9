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
//!
//! With [`Seal`], the child also gets a mount namespace of its own
//! (`unshare(CLONE_NEWNS)`, every mount made private so nothing propagates back to
//! the host): a tmpfs on `/run` (the host's runtime sockets are gone), the scratch
//! copy bound at [`CELL_PATH`] in it (reachable by the backup's owner, whatever the
//! modes of the directories that hold the copy on the host), then a tmpfs on `/tmp`.
//! The copy is opened (in the new namespace) before the tmpfs cover anything, and
//! bound through `/proc/self/fd/N`, so a copy under `/tmp` or `/run` is still found.
//! Before that, every mount is made read-only (`mount_setattr`, recursive: Linux
//! 5.12); the copy's bind is made writable again, `/proc` too but for the kernel's
//! tunables (`/proc/sys`, `/proc/sysrq-trigger` stay read-only), and `/dev/shm` gets
//! a tmpfs of its own. The seal's other directories get an empty read-only tmpfs each, and its
//! sockets `/dev/null` bound over them (`connect()` is refused); one that vanished
//! since it was planned is skipped.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// Where the drilled cell finds its directory, in its own mount namespace.
pub(crate) const CELL_PATH: &str = "/run/synbackup-drill";

/// The mount namespace to seal the child in: the directory bound at [`CELL_PATH`],
/// the directories hidden and the sockets covered.
pub(crate) struct Seal {
    scratch: CString,
    hide: Vec<CString>,
    cover: Vec<CString>,
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("{} holds a NUL byte", p.display()))
}

impl Seal {
    /// A seal presenting `scratch` at [`CELL_PATH`], with the directories `hide`
    /// emptied and the sockets `cover` covered.
    pub(crate) fn new(scratch: &Path, hide: &[PathBuf], cover: &[PathBuf]) -> Result<Seal> {
        Ok(Seal {
            scratch: c_path(scratch)?,
            hide: hide.iter().map(|p| c_path(p)).collect::<Result<_>>()?,
            cover: cover.iter().map(|p| c_path(p)).collect::<Result<_>>()?,
        })
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Set (`set`) or clear the read-only flag of the mount at `path`, and of every
/// mount below it when `recursive`.
unsafe fn set_read_only(path: *const libc::c_char, set: bool, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: if set { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if set { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    let r = libc::syscall(
        libc::SYS_mount_setattr,
        libc::AT_FDCWD,
        path,
        flags as libc::c_uint,
        &attr as *const MountAttr,
        std::mem::size_of::<MountAttr>(),
    );
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// True for the errors of a path that vanished (or changed type) since planned.
fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Make `cmd` start in a new network namespace with only loopback, as `uid:gid`,
/// sealed in a mount namespace of its own when `seal` is given.
pub(crate) fn isolate(cmd: &mut Command, uid: u32, gid: u32, seal: Option<Seal>) {
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe syscalls (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(s) = &seal {
                seal_child(s)?;
            }
            isolate_child(uid, gid, parent)
        });
    }
}

/// `/proc/self/fd/N` as a NUL-terminated string, without allocating.
fn fd_path(fd: libc::c_int, buf: &mut [u8; 40]) -> *const libc::c_char {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
    buf.as_ptr().cast()
}

/// In the forked child, as root: the private mount namespace of [`Seal`].
fn seal_child(seal: &Seal) -> io::Result<()> {
    const RUN: &[u8] = b"/run\0";
    const TMP: &[u8] = b"/tmp\0";
    const CELL: &[u8] = b"/run/synbackup-drill\0";
    const TMPFS: &[u8] = b"tmpfs\0";
    const ROOT: &[u8] = b"/\0";
    const RUN_OPTS: &[u8] = b"mode=0755,size=16m\0";
    const TMP_OPTS: &[u8] = b"mode=1777\0";
    const SHM: &[u8] = b"/dev/shm\0";
    const NULL: &[u8] = b"/dev/null\0";
    const HIDE_OPTS: &[u8] = b"mode=0755,size=4k\0";
    let c = |b: &[u8]| b.as_ptr().cast::<libc::c_char>();
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: plain syscalls on NUL-terminated constants and a CString we own.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c(ROOT),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        // Opened in the new namespace (a bind from the old one's mounts is EINVAL),
        // before anything covers it.
        let fd = libc::open(
            seal.scratch.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        check(fd)?;
        set_read_only(c(ROOT), true, true)?;
        writable_proc();
        check(libc::mount(
            c(TMPFS),
            c(RUN),
            c(TMPFS),
            flags,
            c(RUN_OPTS).cast(),
        ))?;
        check(libc::mkdir(c(CELL), 0o755))?;
        let mut buf = [0u8; 40];
        check(libc::mount(
            fd_path(fd, &mut buf),
            c(CELL),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))?;
        libc::close(fd);
        set_read_only(c(CELL), false, false)?;
        for dir in [TMP, SHM] {
            check(libc::mount(
                c(TMPFS),
                c(dir),
                c(TMPFS),
                flags,
                c(TMP_OPTS).cast(),
            ))?;
        }
        for dir in &seal.hide {
            let r = check(libc::mount(
                c(TMPFS),
                dir.as_ptr(),
                c(TMPFS),
                flags | libc::MS_NOEXEC | libc::MS_RDONLY,
                c(HIDE_OPTS).cast(),
            ));
            match r {
                Err(e) if !vanished(&e) => return Err(e),
                _ => {}
            }
        }
        for sock in &seal.cover {
            let r = check(libc::mount(
                c(NULL),
                sock.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ));
            match r {
                Err(e) if !vanished(&e) => return Err(e),
                _ => {}
            }
        }
        // The drill's own working directory may be gone here (under /tmp): Python's
        // multiprocessing workers chdir to their parent's.
        check(libc::chdir(c(CELL)))?;
    }
    Ok(())
}

/// `/proc` writable again, but for the kernel's tunables (`/proc/sys`,
/// `/proc/sysrq-trigger`: bound read-only over themselves, as systemd's
/// `ProtectKernelTunables=`): a process writes its own `/proc/self` files (a user
/// namespace's `uid_map`, `oom_score_adj`). Where that cannot be had, `/proc` stays
/// read-only as a whole.
///
/// # Safety
/// In the forked child, in its own mount namespace.
unsafe fn writable_proc() {
    const PROC: &[u8] = b"/proc\0";
    let tunables: [&[u8]; 2] = [b"/proc/sys\0", b"/proc/sysrq-trigger\0"];
    let c = |b: &[u8]| b.as_ptr().cast::<libc::c_char>();
    if set_read_only(c(PROC), false, false).is_err() {
        return;
    }
    for t in tunables {
        let bound = check(libc::mount(
            c(t),
            c(t),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))
        .and_then(|()| set_read_only(c(t), true, true));
        // A kernel without it has nothing there to protect.
        if bound.as_ref().is_err_and(|e| !vanished(e)) {
            // A tunable left writable is not an option: all of /proc read-only.
            let _ = set_read_only(c(PROC), true, true);
            return;
        }
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
