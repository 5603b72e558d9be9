// SPDX-License-Identifier: Apache-2.0
//! Opening a source environment without taking it from its owner.
//!
//! Opening an environment Live creates its `lock.mdb` when there is none (a freshly
//! restored directory): as root, owned by root and mode 0600, which locks the
//! service's user out of its own data. A lock file this run created is given the
//! owner, group and mode (read/write bits) of the environment's `data.mdb` at once.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

use crate::engine::lmdb::{Env, Mode};

/// Open `dir` Live; a `lock.mdb` the open created gets `data.mdb`'s owner.
pub(crate) fn open_live(dir: &Path) -> Result<Env> {
    let lock = dir.join("lock.mdb");
    let existed = fs::symlink_metadata(&lock).is_ok();
    let env = Env::open(dir, Mode::Live)?;
    if !existed {
        give_data_owner(&lock, &dir.join("data.mdb"))?;
    }
    Ok(env)
}

fn give_data_owner(lock: &Path, data: &Path) -> Result<()> {
    let owner = fs::metadata(data).with_context(|| format!("cannot stat {}", data.display()))?;
    let f = File::open(lock).with_context(|| format!("cannot open {}", lock.display()))?;
    let ours = f
        .metadata()
        .with_context(|| format!("cannot stat {}", lock.display()))?;
    if (ours.uid(), ours.gid()) != (owner.uid(), owner.gid()) {
        match nix::unistd::fchown(
            std::os::fd::AsFd::as_fd(&f),
            Some(nix::unistd::Uid::from_raw(owner.uid())),
            Some(nix::unistd::Gid::from_raw(owner.gid())),
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EPERM) => {
                log::warn!(
                    "created {} and cannot give it the owner {}:{} of {} (not root); the service's user may not open it: remove it before starting the service",
                    lock.display(),
                    owner.uid(),
                    owner.gid(),
                    data.display()
                );
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot chown {}", lock.display())),
        }
    }
    let mode = (owner.mode() & 0o666) | 0o600;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", lock.display()))?;
    log::debug!(
        "created {}: gave it {}:{} {mode:04o}",
        lock.display(),
        owner.uid(),
        owner.gid()
    );
    Ok(())
}
