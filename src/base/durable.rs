// SPDX-License-Identifier: Apache-2.0
//! Making everything a backup wrote durable: one syncfs(2) of its filesystem, or an
//! fsync per file where the kernel's syncfs cannot be trusted to report errors.
//!
//! An fsync per file costs a journal commit each (ext4, XFS): a backup of a Cortex
//! with 200 layers wrote 224 files and spent most of its non-copy time in fsync
//! (bench/RESULTS.md, the many shape). One syncfs at the end writes the same data
//! and metadata in one commit. Its error report is the filesystem's writeback error
//! sequence (Linux 5.8 and later): a write error on that filesystem since the
//! descriptor was opened is returned by the syncfs. So the descriptor is opened
//! before the first byte is written ([`Durability::begin`]) and the syncfs
//! ([`Durability::commit`]) is made before the backup is verified or published. An
//! error of another program's file on the same filesystem fails the backup too: a
//! filesystem losing writes is no place to trust one. On older kernels (RHEL 8's
//! 4.18) syncfs reports nothing, and every file is fsynced as it is finished, as
//! before; the syncfs then still makes the directories durable at once.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::fsutil::write_error;

/// The durability of what is written under one directory, on one filesystem.
pub(crate) struct Durability {
    /// Opened before anything was written: its syncfs reports errors since then.
    dir: File,
    path: PathBuf,
    per_file: bool,
}

impl Durability {
    /// Begin at `dir` (nothing written under it yet): per file on kernels whose
    /// syncfs does not report write errors, or when `per_file` is asked for.
    pub(crate) fn begin(dir: &Path, per_file: bool) -> Result<Durability> {
        let f = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        let per_file = per_file || !syncfs_reports_errors();
        log::debug!(
            "{}: {}",
            dir.display(),
            if per_file {
                "an fsync per file"
            } else {
                "one syncfs for every file"
            }
        );
        Ok(Durability {
            dir: f,
            path: dir.to_path_buf(),
            per_file,
        })
    }

    /// `f` (at `path`) is finished: fsynced now when per file, else at `commit`.
    pub(crate) fn file_done(&self, f: &File, path: &Path) -> Result<()> {
        if self.per_file {
            f.sync_all().map_err(|e| write_error(path, e))?;
        }
        Ok(())
    }

    /// The tree at `root` was written by another program (restic), which fsyncs
    /// nothing: when per file, every file and directory of it fsynced now (links
    /// not followed); else the [`commit`](Durability::commit) covers it.
    pub(crate) fn tree_done(&self, root: &Path) -> Result<()> {
        if !self.per_file {
            return Ok(());
        }
        fn walk(dir: &Path) -> Result<()> {
            for e in
                std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
                let ft = e.file_type()?;
                if ft.is_dir() {
                    walk(&e.path())?;
                } else if ft.is_file() {
                    let p = e.path();
                    File::open(&p)
                        .and_then(|f| f.sync_all())
                        .map_err(|err| write_error(&p, err))?;
                }
            }
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|err| write_error(dir, err))
        }
        walk(root)
    }

    /// Everything written on the filesystem so far (files, directories, metadata)
    /// is on the device; a write error since `begin` fails it.
    pub(crate) fn commit(&self) -> Result<()> {
        nix::unistd::syncfs(self.dir.as_fd())
            .map_err(|e| write_error(&self.path, io::Error::from(e)))
            .with_context(|| format!("cannot sync the filesystem of {}", self.path.display()))
    }
}

/// Does syncfs(2) return writeback errors (Linux 5.8, commit 735e4ae5ba28)?
fn syncfs_reports_errors() -> bool {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str().and_then(release_at_least_5_8))
        .unwrap_or(false)
}

/// "6.1.0-27-amd64" and the like: at least 5.8?
fn release_at_least_5_8(release: &str) -> Option<bool> {
    let mut parts = release.split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= (5, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_are_read_as_major_and_minor() {
        assert_eq!(release_at_least_5_8("6.1.0-27-amd64"), Some(true));
        assert_eq!(release_at_least_5_8("5.8.0"), Some(true));
        assert_eq!(release_at_least_5_8("5.10.0-30-cloud-amd64"), Some(true));
        assert_eq!(
            release_at_least_5_8("4.18.0-553.el8_10.x86_64"),
            Some(false)
        );
        assert_eq!(release_at_least_5_8("5.7.19"), Some(false));
        assert_eq!(release_at_least_5_8("garbage"), None);
    }

    #[test]
    fn a_commit_succeeds_and_per_file_fsyncs_what_it_is_given() {
        let t = tempfile::tempdir().unwrap();
        for per_file in [false, true] {
            let d = Durability::begin(t.path(), per_file).unwrap();
            let p = t.path().join(format!("f{per_file}"));
            std::fs::write(&p, b"x").unwrap();
            d.file_done(&File::open(&p).unwrap(), &p).unwrap();
            d.commit().unwrap();
        }
    }
}
