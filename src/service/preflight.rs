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

/// True when the main process of `unit` holds `dir`'s LMDB files or names `dir` on
/// its command line.
fn runs_on(unit: &str, dir: &Path) -> Result<bool> {
    let pid = systemd::main_pid(unit)?;
    Ok(pid != 0
        && (holders::holders(Path::new("/proc"), dir)
            .iter()
            .any(|h| h.pid == pid)
            || fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(dir.to_string_lossy().as_ref()))
                .unwrap_or(false)))
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
