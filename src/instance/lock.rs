// SPDX-License-Identifier: Apache-2.0
//! The per-instance lock: `LOCK_DIR/INSTANCE.lock`, held with flock(2) for the
//! whole of a `run`, `cold` window, `restore --instance` or `prune`.
//!
//! flock dies with its process, so a killed run never leaves a stale lock, and
//! whether `prune` can take the lock tells it whether a temporary may belong to a
//! live run.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use nix::fcntl::{Flock, FlockArg};

use crate::base::exit::{fail, Code};

/// A held instance lock; released on drop.
pub(crate) struct InstanceLock {
    _flock: Flock<File>,
}

fn lock_path(lock_dir: &Path, instance: &str) -> PathBuf {
    lock_dir.join(format!("{instance}.lock"))
}

fn open(lock_dir: &Path, instance: &str) -> Result<(File, PathBuf)> {
    std::fs::create_dir_all(lock_dir).map_err(|e| {
        fail(
            Code::Other,
            format!(
                "cannot create the lock directory {}: {e}",
                lock_dir.display()
            ),
        )
    })?;
    let path = lock_path(lock_dir, instance);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| {
            fail(
                Code::Other,
                format!("cannot open the lock {}: {e}", path.display()),
            )
        })?;
    Ok((f, path))
}

/// Take the lock or fail at once with `Code::Locked`.
pub(crate) fn acquire(lock_dir: &Path, instance: &str, what: &str) -> Result<InstanceLock> {
    let (f, path) = open(lock_dir, instance)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(flock) => {
            // Who holds it, for people looking at the file.
            let _ = nix::unistd::ftruncate(&*flock, 0);
            let _ = std::io::Write::write_all(
                &mut &*flock,
                format!("{} {what}\n", std::process::id()).as_bytes(),
            );
            Ok(InstanceLock { _flock: flock })
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(fail(
                Code::Locked,
                format!(
                    "instance {instance} is busy: another synbackup holds {} ({}); try again when it has finished",
                    path.display(),
                    holder.trim()
                ),
            ))
        }
        Err((_, e)) => Err(fail(
            Code::Other,
            format!("cannot lock {}: {e}", path.display()),
        )),
    }
}
