// SPDX-License-Identifier: Apache-2.0
//! Opening a source environment without taking it from its owner.
//!
//! Opening an environment Live creates its `lock.mdb` when there is none (a freshly
//! restored directory): as root, owned by root and mode 0600, which locks the
//! service's user out of its own data. A lock file this run created is given the
//! owner, group and mode (read/write bits) of the environment's `data.mdb` at once.
//! The directory is the service user's: the environment is opened beneath a
//! descriptor checked against the scan (`Env::open_held`), and the lock file is
//! chowned only when it is, beneath it, a plain file with one name (never a link,
//! nor a hard link, put in its place).

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, Mode as FileMode};

use crate::engine::lmdb::{Env, Held, Mode};

/// Open the environment in `held` (shown as `dir`) Live; a `lock.mdb` the open
/// created gets the owner of its `data.mdb`. Every name is looked up beneath the
/// held directory without following a link: the service's user owns it.
pub(crate) fn open_live(held: Held, dir: &Path) -> Result<Env> {
    let lock = dir.join("lock.mdb");
    let existed = fstatat(
        held.dir.as_fd(),
        "lock.mdb",
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok();
    let data = held.data.clone();
    let dir_fd = held.dir.clone();
    let env = Env::open_held(held, dir, Mode::Live)?;
    if !existed {
        give_data_owner(&dir_fd, &lock, &data)?;
    }
    Ok(env)
}

/// Give the `lock.mdb` just created in `dir_fd` (shown as `lock`) the owner of the
/// environment's `data.mdb` (`owner`, checked against the scan by the open). Opened
/// beneath the directory without following a link, and only a plain file with no
/// other name: never a file a link or hard link put in its place since.
fn give_data_owner(dir_fd: &std::os::fd::OwnedFd, lock: &Path, owner: &fs::Metadata) -> Result<()> {
    let fd = openat(
        dir_fd,
        "lock.mdb",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
        FileMode::empty(),
    )
    .with_context(|| format!("cannot open {}", lock.display()))?;
    let f = File::from(fd);
    let ours = f
        .metadata()
        .with_context(|| format!("cannot stat {}", lock.display()))?;
    if !ours.is_file() || ours.nlink() != 1 {
        return Err(crate::base::fsutil::changed_since_scan(
            lock,
            lock.parent().unwrap_or(Path::new("/")),
            "not the lock file LMDB made: another file or a hard link is in its place",
        ));
    }
    if (ours.uid(), ours.gid()) != (owner.uid(), owner.gid()) {
        match nix::unistd::fchown(
            std::os::fd::AsFd::as_fd(&f),
            Some(nix::unistd::Uid::from_raw(owner.uid())),
            Some(nix::unistd::Gid::from_raw(owner.gid())),
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EPERM) => {
                log::warn!(
                    "created {} and cannot give it the owner {}:{} of its data.mdb (not root); the service's user may not open it: remove it before starting the service",
                    lock.display(),
                    owner.uid(),
                    owner.gid(),
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
