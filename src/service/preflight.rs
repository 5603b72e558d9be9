// SPDX-License-Identifier: Apache-2.0
//! Checks the window and restore make before they stop anything, and the health
//! check both wait for after starting the service again.
//!
//! - the unit exists, and when it runs, its main process runs on the directory
//!   (a mistyped SYNBACKUP_SERVICE_UNIT fails here, at once, not after a stop
//!   timeout);
//! - the directory is not a mount point (both swap by `rename`, which a mount
//!   refuses with `EBUSY`: found only after the stop, that left the service down).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::base::exit::{fail, Code};
use crate::base::interrupt;
use crate::base::pathtext::Escaped;
use crate::engine::telepath;
use crate::host::{holders, mounts, systemd};

/// Fail unless `unit` exists; when it is active, unless its main process runs on
/// `dir`. Returns the unit's state (`active`, `inactive`, `failed`, ...).
pub(crate) fn check_unit(unit: &str, dir: &Path) -> Result<String> {
    if !systemd::unit_exists(unit)? {
        return Err(fail(
            Code::Service,
            format!("unit {unit} does not exist; fix SYNBACKUP_SERVICE_UNIT (or --unit)"),
        ));
    }
    let state = systemd::active_state(unit)?;
    if state == "active" && !runs_on(unit, dir)? {
        return Err(fail(
            Code::Service,
            format!(
                "{unit} does not run on {}; check SYNBACKUP_SERVICE_DIR and SYNBACKUP_SERVICE_UNIT",
                dir.display()
            ),
        ));
    }
    Ok(state)
}

/// True when the main process of `unit` holds `dir`'s LMDB files or names `dir` as
/// one of its arguments (see [`names_dir`]).
fn runs_on(unit: &str, dir: &Path) -> Result<bool> {
    let pid = systemd::main_pid(unit)?;
    if pid == 0 {
        return Ok(false);
    }
    if holders::holders(Path::new("/proc"), dir)
        .iter()
        .any(|h| h.pid == pid)
    {
        return Ok(true);
    }
    let proc = Path::new("/proc").join(pid.to_string());
    let Ok(cmdline) = fs::read(proc.join("cmdline")) else {
        return Ok(false);
    };
    let cwd = fs::read_link(proc.join("cwd")).ok();
    Ok(names_dir(&cmdline, cwd.as_deref(), dir))
}

/// Whether an argument of the NUL-separated command line `cmdline` (of a process
/// whose working directory is `cwd`) is the directory `dir`: the whole argument
/// (or the value of an `--option=VALUE`) is the same path, written with a trailing
/// slash, relative to `cwd`, or through a link (compared resolved). A path that
/// merely begins with `dir`'s text (`/srv/cortex00` for `/srv/cortex0`) is another
/// directory.
pub(crate) fn names_dir(cmdline: &[u8], cwd: Option<&Path>, dir: &Path) -> bool {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let resolved = fs::canonicalize(dir).ok();
    cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .any(|arg| {
            let value = match arg.iter().position(|&b| b == b'=') {
                Some(i) if arg.starts_with(b"-") => &arg[i + 1..],
                _ => arg,
            };
            let p = Path::new(OsStr::from_bytes(value));
            let p = match cwd {
                Some(c) if p.is_relative() => c.join(p),
                _ => p.to_path_buf(),
            };
            // Path equality compares components: a trailing slash is the same path.
            p == dir
                || resolved
                    .as_ref()
                    .is_some_and(|r| fs::canonicalize(&p).is_ok_and(|q| &q == r))
        })
}

/// Fail when a user other than root could replace entries of `dir`'s parent: its
/// owner is not root, or group or others can write it without the sticky bit
/// (root's sticky `/tmp` passes: nobody else may rename what root made there).
/// `what` (the window) writes its copy there by path, and a link put in the
/// copy's place would send root's writes, as root, where it points.
pub(crate) fn refuse_open_parent(dir: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let meta = fs::metadata(parent).map_err(|e| {
        fail(
            Code::BadPath,
            format!("cannot stat {}: {e}", parent.escaped()),
        )
    })?;
    let mode = meta.mode() & 0o7777;
    let others_write = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if meta.uid() == 0 && !others_write {
        return Ok(());
    }
    Err(fail(
        Code::BadPath,
        format!(
            "{what} writes its copy beside {d}, in {p}, which is owned by {}:{} with mode {mode:04o}: another user could put a link in the copy's place and send root's writes elsewhere; nothing was stopped: make {p} root's and not writable by others (`chown root: {p}; chmod go-w {p}`), or move the service into such a directory",
            meta.uid(),
            meta.gid(),
            d = dir.escaped(),
            p = parent.escaped(),
        ),
    ))
}

/// Fail when `dir` is a mount point: `what` (the window, the restore) swaps it by
/// rename, which a mount refuses.
pub(crate) fn refuse_mount_point(dir: &Path, what: &str) -> Result<()> {
    if let Some(m) = mounts::mount_at(dir) {
        return Err(fail(
            Code::BadPath,
            format!(
                "{} is a mount point ({what} swaps the directory by rename, which a mount refuses); nothing was stopped: \
                 move the service into a directory inside the mount (e.g. {}/{}) and point SYNBACKUP_SERVICE_DIR there",
                m.display(),
                m.display(),
                m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "service".into())
            ),
        ));
    }
    Ok(())
}

/// Wait until the service at `dir` answers its health check with `nominal` or
/// `degraded`. `cancellable`: a SIGINT/SIGTERM ends the wait (not in a rollback).
pub(crate) fn wait_healthy(dir: &Path, timeout: Duration, cancellable: bool) -> Result<String> {
    let _beat = crate::host::progress::heartbeat("waiting for the health check", timeout);
    let deadline = Instant::now() + timeout;
    let sock = dir.join("sock");
    let mut last;
    loop {
        if cancellable {
            interrupt::check()?;
        }
        match telepath::Client::connect(&sock, Duration::from_secs(10))
            .and_then(|mut c| c.health_status())
        {
            Ok(s) if s == "nominal" || s == "degraded" => return Ok(s),
            Ok(s) => last = format!("health is {s}"),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            return Err(fail(
                Code::Service,
                format!(
                    "the service on {} did not answer its health check within {}s ({last})",
                    dir.display(),
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What to say of a service unit in `ActiveState` `state`, when it is not running:
/// `status` reports it, and a nightly run says it backs up a stopped service.
pub(crate) fn not_running(unit: &str, state: &str) -> Option<String> {
    match state {
        "active" | "reloading" => None,
        "activating" => Some(format!(
            "{unit} is activating (starting, or restarting after a crash): the service is not running yet"
        )),
        other => Some(format!("{unit} is {other}: the service is not running")),
    }
}

/// [`not_running`] for the live unit, when systemd runs the host and can tell.
pub(crate) fn unit_not_running(unit: &str) -> Option<String> {
    if !crate::host::transient::systemd_runs(Path::new("/")) {
        return None;
    }
    match crate::host::systemd::active_state(unit) {
        Ok(state) => not_running(unit, &state),
        Err(e) => Some(format!("cannot read the state of {unit}: {e:#}")),
    }
}

#[cfg(test)]
mod not_running_tests {
    use super::*;

    #[test]
    fn only_an_active_unit_runs() {
        assert_eq!(not_running("c.service", "active"), None);
        assert_eq!(not_running("c.service", "reloading"), None);
        assert_eq!(
            not_running("c.service", "failed").as_deref(),
            Some("c.service is failed: the service is not running")
        );
        assert!(not_running("c.service", "activating")
            .unwrap()
            .contains("restarting after a crash"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 32: the window refuses a service directory whose parent another user
    /// could write (group or others without the sticky bit, or not root's), exit
    /// 3, naming the parent, its owner and mode and the fix; root's 0755 and
    /// root's sticky 1777 pass.
    #[test]
    fn a_parent_another_user_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (a parent owned by root, and by nobody)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("p");
        fs::create_dir(&parent).unwrap();
        let dir = parent.join("svc");
        for (mode, uid, ok) in [
            (0o755, 0, true),
            (0o1777, 0, true),
            (0o775, 0, false),
            (0o757, 0, false),
            (0o777, 0, false),
            (0o755, 65534, false),
            (0o1777, 65534, false),
        ] {
            std::os::unix::fs::chown(&parent, Some(uid), Some(uid)).unwrap();
            fs::set_permissions(&parent, fs::Permissions::from_mode(mode)).unwrap();
            let r = refuse_open_parent(&dir, "the window");
            assert_eq!(r.is_ok(), ok, "{mode:04o} owned by {uid}");
            if let Err(e) = r {
                assert_eq!(crate::base::exit::code_of(&e), Code::BadPath);
                let line = e.to_string();
                assert!(
                    line.contains(&format!(
                        "in {}, which is owned by {uid}:{uid} with mode {mode:04o}",
                        parent.display()
                    )) && line.contains(&format!(
                        "chown root: {p}; chmod go-w {p}",
                        p = parent.display()
                    )),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn a_unit_runs_on_a_directory_named_by_a_whole_argument_only() {
        let t = tempfile::tempdir().unwrap();
        let (c0, c00) = (t.path().join("cortex0"), t.path().join("cortex00"));
        fs::create_dir(&c0).unwrap();
        fs::create_dir(&c00).unwrap();
        let line = |dir: &str| format!("/opt/v/bin/python\0-m\0synapse.servers.cortex\0{dir}\0");
        let of_c00 = line(&c00.display().to_string());
        // The unit of cortex00 does not run on cortex0 (issue 32).
        assert!(!names_dir(of_c00.as_bytes(), None, &c0));
        assert!(names_dir(of_c00.as_bytes(), None, &c00));
        let slash = line(&format!("{}/", c00.display()));
        assert!(names_dir(slash.as_bytes(), None, &c00));
        assert!(!names_dir(slash.as_bytes(), None, &c0));
        // Relative to the process's working directory, and as an option's value.
        assert!(names_dir(line("cortex00").as_bytes(), Some(t.path()), &c00));
        assert!(!names_dir(line("cortex00").as_bytes(), Some(t.path()), &c0));
        let opt = format!("python\0--dir={}\0", c00.display());
        assert!(names_dir(opt.as_bytes(), None, &c00));
        assert!(!names_dir(opt.as_bytes(), None, &c0));
        // Through a link.
        std::os::unix::fs::symlink(&c00, t.path().join("link")).unwrap();
        let via = line(&t.path().join("link").display().to_string());
        assert!(names_dir(via.as_bytes(), None, &c00));
        assert!(!names_dir(via.as_bytes(), None, &c0));
    }
}
