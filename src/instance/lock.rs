// SPDX-License-Identifier: Apache-2.0
//! The per-instance lock: `LOCK_DIR/INSTANCE.lock`, held with flock(2) for the
//! whole of a `run`, `cold` window, `restore` or `prune`.
//!
//! flock dies with its process, so a killed run never leaves a stale lock, and
//! whether `prune` can take the lock tells it whether a temporary may belong to a
//! live run.
//!
//! flock works on a read-only descriptor, so anyone who can open the file can
//! block the instance: the directory is made 0700 and the files 0600 (root only).
//!
//! The nightly run and the monthly window can be due at the same time: a run or
//! window that finds the lock held waits for it, within `SYNBACKUP_LOCK_WAIT`
//! (default 1h), telling systemd it is still alive, and only then gives up.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::fcntl::{Flock, FlockArg};

use crate::base::exit::{fail, Code};
use crate::base::interrupt;
use crate::base::units::format_duration;
use crate::host::systemd;
use crate::instance::config::Instance;

/// How often a waiting run tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// A held instance lock; released on drop.
pub(crate) struct InstanceLock {
    _flock: Flock<File>,
}

fn lock_path(lock_dir: &Path, instance: &str) -> PathBuf {
    lock_dir.join(format!("{instance}.lock"))
}

/// Make the lock directory, root-only. An existing directory of ours is narrowed
/// to 0700; one of another owner is left alone.
fn make_private_dir(lock_dir: &Path) -> Result<()> {
    let cannot = |e: std::io::Error| {
        fail(
            Code::Other,
            format!(
                "cannot create the lock directory {}: {e}",
                lock_dir.display()
            ),
        )
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(lock_dir)
        .map_err(cannot)?;
    let meta = std::fs::metadata(lock_dir).map_err(cannot)?;
    if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(lock_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(cannot)?;
    }
    Ok(())
}

fn open(lock_dir: &Path, instance: &str) -> Result<(File, PathBuf)> {
    make_private_dir(lock_dir)?;
    let path = lock_path(lock_dir, instance);
    let cannot = |e: std::io::Error| {
        fail(
            Code::Other,
            format!("cannot open the lock {}: {e}", path.display()),
        )
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(cannot)?;
    // A lock file made by an older version was 0644.
    let meta = f.metadata().map_err(cannot)?;
    if meta.mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(cannot)?;
    }
    Ok((f, path))
}

/// Take `inst`'s lock for `what`, waiting for a holder up to the instance's
/// `SYNBACKUP_LOCK_WAIT` (its file, or the environment; every command reads the
/// setting the same way); then fail with `Code::Locked`.
pub(crate) fn acquire_for(lock_dir: &Path, inst: &Instance, what: &str) -> Result<InstanceLock> {
    acquire_within(lock_dir, &inst.name, what, inst.lock_wait)
}

/// Take the lock or fail at once with `Code::Locked`.
pub(crate) fn try_acquire(lock_dir: &Path, instance: &str, what: &str) -> Result<InstanceLock> {
    acquire_within(lock_dir, instance, what, Duration::ZERO)
}

/// A dry run's look at the lock: taken when free (and held while the dry run
/// looks, as a prune does), else the line saying whom the real `what` would wait
/// for and how long (`SYNBACKUP_LOCK_WAIT`). Other errors are the real command's.
pub(crate) fn for_dry_run(
    lock_dir: &Path,
    inst: &Instance,
    what: &str,
) -> Result<(Option<InstanceLock>, Option<String>)> {
    match try_acquire(lock_dir, &inst.name, what) {
        Ok(l) => Ok((Some(l), None)),
        Err(e) if crate::base::exit::code_of(&e) == Code::Locked => {
            let holder = holder_of(&lock_path(lock_dir, &inst.name));
            Ok((
                None,
                Some(format!(
                    "{holder} holds the lock of {}: the real {what} would wait up to {} for it (SYNBACKUP_LOCK_WAIT), then fail (exit {})",
                    inst.name,
                    format_duration(inst.lock_wait),
                    Code::Locked.as_i32()
                )),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Take the lock, waiting up to `wait` for its holder to finish.
pub(crate) fn acquire_within(
    lock_dir: &Path,
    instance: &str,
    what: &str,
    wait: Duration,
) -> Result<InstanceLock> {
    let (mut f, path) = open(lock_dir, instance)?;
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                if said {
                    log::info!("{instance}: the lock is free, going on with the {what}");
                }
                return Ok(write_holder(flock, what));
            }
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => f = back,
            Err((_, e)) => {
                return Err(fail(
                    Code::Other,
                    format!("cannot lock {}: {e}", path.display()),
                ))
            }
        }
        let holder = holder_of(&path);
        if Instant::now() >= deadline {
            return Err(fail(
                Code::Locked,
                format!(
                    "instance {instance} is busy: another synbackup holds {} ({holder}){}; try again when it has finished",
                    path.display(),
                    if wait.is_zero() { String::new() } else { format!(", waited {}", format_duration(wait)) }
                ),
            ));
        }
        if !said {
            log::info!(
                "{instance}: waiting up to {} for the lock held by {holder} (SYNBACKUP_LOCK_WAIT)",
                format_duration(wait)
            );
            systemd::status(&format!("waiting for {holder} to finish"));
            said = true;
        }
        systemd::extend_timeout(RETRY_EVERY * 8);
        interrupt::check()?;
        std::thread::sleep(RETRY_EVERY);
    }
}

/// Write who holds it, for people (and waiting runs) looking at the file.
fn write_holder(flock: Flock<File>, what: &str) -> InstanceLock {
    let _ = nix::unistd::ftruncate(&*flock, 0);
    let _ = std::io::Write::write_all(
        &mut &*flock,
        format!("{} {what}\n", std::process::id()).as_bytes(),
    );
    InstanceLock { _flock: flock }
}

/// "a run, pid 503" from the lock file's "503 run".
fn holder_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    describe_holder(&text)
}

fn describe_holder(text: &str) -> String {
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(pid), Some(what)) => format!("a {what}, pid {pid}"),
        _ => "another process".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_is_described_in_words() {
        assert_eq!(describe_holder("503 run\n"), "a run, pid 503");
        assert_eq!(describe_holder(""), "another process");
    }

    #[test]
    fn lock_files_are_root_only() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("locks");
        let _l = try_acquire(&dir, "c0", "run").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("c0.lock")), 0o600);
    }
}
