// SPDX-License-Identifier: Apache-2.0
//! The drill's scratch copy: a writable copy of a backup that the service may change
//! without touching the backup itself.
//!
//! Each file is copied as a restore copies it (`base::filecopy`, one implementation):
//! a reflink clone (`FICLONE`: shared extents, copy-on-write; btrfs, XFS) where the
//! filesystem allows, else `copy_file_range` of each data extent (holes stay holes),
//! else read and written. The copy is not hashed: the drill verified the backup just
//! before, reading every byte from the device (O_DIRECT), and a reflink copy reads
//! nothing; hashing the copy as well would read every byte again to find what that
//! verify found. Owners, modes
//! and times are kept so the service runs as it would on the backup; the backup's
//! copy of the certificate directory (`synbackup-certs/`) is left out (the cell does
//! not read it, and its keys need not be copied again). The copy is a
//! sibling of the backup, `.NAME.synbackup-drill.PID`, holding the marker
//! [`SCRATCH_MARK`]; [`remove_stale`] removes the ones whose drill is gone (killed),
//! and only those: a directory without the marker is never deleted. The marker holds
//! the pid of the server started on the copy (its process group): the workers a
//! killed drill's server left are ended before their copy is removed; a server that
//! ran as a transient unit (`synbackup-drill-scratch-PID.service`) is stopped. The
//! copy's `.env` sibling (the server's environment for a transient unit) goes with it.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::exit::{fail, Code};
use crate::base::filecopy::{self, How};
use crate::base::fsutil::{self, human};
use crate::base::xattrs;
use crate::engine::manifest::CERTS_DIR;
use crate::host::{holders, netns, transient};

/// The part of a scratch copy's name after the backup's name.
pub(crate) const SCRATCH_INFIX: &str = ".synbackup-drill.";
/// The marker file in every scratch copy (never in a backup).
pub(crate) const SCRATCH_MARK: &str = "synbackup-drill-scratch";

/// How the files were copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Method {
    /// Every file a reflink clone.
    Reflink,
    /// Every file (or some, when reflinks failed midway) copied sparsely.
    Sparse,
}

/// A scratch copy, removed (with its log) when dropped.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) method: Method,
}

impl Scratch {
    /// Where the server's environment is written for a transient unit (root's,
    /// 0600, beside the copy; removed with it).
    pub(crate) fn env_file(&self) -> PathBuf {
        env_file_of(&self.path)
    }

    /// Note in the marker the server (process group) started on the copy.
    pub(crate) fn record_server(&self, pid: u32) -> Result<()> {
        let mark = self.path.join(SCRATCH_MARK);
        fs::write(&mark, format!("{pid}\n")).map_err(|e| fsutil::write_error(&mark, e))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_one(&self.path, &self.log);
    }
}

fn env_file_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".env");
    PathBuf::from(p)
}

fn remove_one(path: &Path, log: &Path) {
    let _ = fs::remove_file(env_file_of(path));
    if path.exists() {
        match fs::remove_dir_all(path) {
            Ok(()) => log::debug!("removed the scratch copy {}", path.display()),
            Err(e) => log::error!("could not remove the scratch copy {}: {e}", path.display()),
        }
    }
    let _ = fs::remove_file(log);
}

/// The scratch directory and log names for `backup` and drill process `pid`.
fn names_for(backup: &Path, pid: u32) -> (PathBuf, PathBuf) {
    let parent = backup.parent().unwrap_or(Path::new("/"));
    let name = backup
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = parent.join(format!(".{name}{SCRATCH_INFIX}{pid}"));
    let log = parent.join(format!(".{name}{SCRATCH_INFIX}{pid}.log"));
    (dir, log)
}

/// Remove the scratch copies (and logs) in `dir` left by drills that no longer run.
/// Returns how many were removed.
pub(crate) fn remove_stale(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(SCRATCH_INFIX))
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue; // `PID.log`: removed with its directory below
        };
        if crate::base::process::alive(pid) {
            continue;
        }
        let path = e.path();
        if !path.join(SCRATCH_MARK).is_file() {
            log::warn!(
                "leaving {}: named like a drill's scratch copy but without its marker",
                path.display()
            );
            continue;
        }
        if transient::systemd_runs(Path::new("/")) {
            // The dead drill's server, if it ran as a transient unit, still runs.
            transient::stop(&transient::unit_name(pid));
        }
        if !released(&path) {
            continue;
        }
        log::info!(
            "removing the scratch copy {} of a drill that ended without cleaning up",
            path.display()
        );
        remove_one(&path, &PathBuf::from(format!("{}.log", path.display())));
        removed += 1;
    }
    removed
}

/// End what the dead drill's server left running on `path` (processes of its
/// process group only); true once nothing holds the copy's files.
fn released(path: &Path) -> bool {
    let server: Option<u32> = fs::read_to_string(path.join(SCRATCH_MARK))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let held = holders::holders(Path::new("/proc"), path);
        let Some(h) = held.first() else {
            return true;
        };
        let ours = server.filter(|s| held.iter().all(|h| netns::pgid_of(h.pid) == Some(*s)));
        match ours {
            Some(pgid) if std::time::Instant::now() < deadline => {
                log::info!(
                    "ending what a dead drill's server left on {} (process group {pgid})",
                    path.display()
                );
                netns::kill_group(pgid);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            _ => {
                log::warn!(
                    "leaving the stale scratch copy {}: pid {} ({}) still holds {}",
                    path.display(),
                    h.pid,
                    h.comm,
                    h.path.display()
                );
                return false;
            }
        }
    }
}

/// Make the scratch copy of `backup` (which needs `need` bytes when not reflinked).
pub(crate) fn make(backup: &Path, need: u64) -> Result<Scratch> {
    let parent = backup.parent().unwrap_or(Path::new("/"));
    let (path, log) = names_for(backup, std::process::id());
    let free = fsutil::free_space(parent)?;
    if need > free {
        return Err(fail(
            Code::NoSpace,
            format!(
                "not enough space in {} for the drill's scratch copy: it may need {} ({need} bytes), {} ({free} bytes) is free; free space first",
                parent.display(),
                human(need),
                human(free)
            ),
        ));
    }
    let mut scratch = Scratch {
        path,
        log,
        method: Method::Reflink,
    };
    fs::create_dir(&scratch.path).map_err(|e| fsutil::write_error(&scratch.path, e))?;
    fs::set_permissions(&scratch.path, fs::Permissions::from_mode(0o700))?;
    fs::write(scratch.path.join(SCRATCH_MARK), b"")
        .map_err(|e| fsutil::write_error(&scratch.path.join(SCRATCH_MARK), e))?;
    let mut sparse = false;
    copy_dir(backup, &scratch.path, &mut sparse, &[CERTS_DIR])?;
    copy_dir_meta(backup, &scratch.path, &fs::metadata(backup)?)?;
    if sparse {
        scratch.method = Method::Sparse;
    }
    Ok(scratch)
}

/// Copy what `src` holds into `dst`, but the entries named in `leave_out`.
fn copy_dir(src: &Path, dst: &Path, sparse: &mut bool, leave_out: &[&str]) -> Result<()> {
    for e in fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        crate::base::interrupt::check()?;
        let e = e?;
        if leave_out.iter().any(|n| e.file_name() == *n) {
            continue;
        }
        let sp = e.path();
        let dp = dst.join(e.file_name());
        let meta = fs::symlink_metadata(&sp)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dp).map_err(|e| fsutil::write_error(&dp, e))?;
            copy_dir(&sp, &dp, sparse, &[])?;
            copy_dir_meta(&sp, &dp, &meta)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&sp)?;
            std::os::unix::fs::symlink(&target, &dp).map_err(|e| fsutil::write_error(&dp, e))?;
            fsutil::apply_meta_link(&dp, &meta)?;
        } else if ft.is_file() {
            let sf = File::open(&sp).with_context(|| format!("cannot read {}", sp.display()))?;
            let df = fsutil::create_new(&dp)?;
            let (how, _) = filecopy::copy_unhashed(&sf, &sp, &df, &dp)?;
            if how != How::Cloned {
                *sparse = true;
            }
            let attrs = xattrs::read(&sf, &sp)?;
            fsutil::copy_meta_fd(&df, &dp, &meta, true, &attrs)?;
        }
    }
    Ok(())
}

/// A copied directory gets the source's owner, mode, times and xattrs.
fn copy_dir_meta(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<()> {
    let dir = File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    let attrs = xattrs::read(&dir, src)?;
    fsutil::copy_meta_dir(dst, meta, &attrs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_cleans_only_marked_dead_scratch() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path().join("c0_20261201T000000Z");
        fs::create_dir_all(b.join("slabs")).unwrap();
        fs::write(b.join("slabs/x"), b"data").unwrap();
        fs::create_dir_all(b.join("synbackup-certs/hosts")).unwrap();
        std::os::unix::fs::symlink("slabs/x", b.join("l")).unwrap();
        let s = make(&b, 4).unwrap();
        assert!(!s.path.join("synbackup-certs").exists());
        assert_eq!(fs::read(s.path.join("slabs/x")).unwrap(), b"data");
        assert!(fs::symlink_metadata(s.path.join("l")).unwrap().is_symlink());
        let p = s.path.clone();
        drop(s);
        assert!(!p.exists());
        // A dead drill's copy (pid far above pid_max) is removed; an unmarked one is kept.
        let dead = t.path().join(format!(".c0_x{SCRATCH_INFIX}999999999"));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(SCRATCH_MARK), b"").unwrap();
        let alien = t.path().join(format!(".c0_y{SCRATCH_INFIX}999999998"));
        fs::create_dir(&alien).unwrap();
        assert_eq!(remove_stale(t.path()), 1);
        assert!(!dead.exists());
        assert!(alien.exists());
        assert!(b.join("slabs/x").exists());
    }
}
