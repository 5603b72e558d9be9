// SPDX-License-Identifier: Apache-2.0
//! `restore --certs`: put a backup's copy of the certificate directory
//! (`synbackup-certs/`, see `engine::certdir`) back where the service reads it.
//!
//! Each file is written beside its place under a temporary name, checked against
//! the manifest's SHA-256, given the owner, mode, times and xattrs it has in the
//! backup (the service user's, as recorded when the backup ran as root), fsynced,
//! and renamed into place (then the directory fsynced): a file is either the old
//! one or the whole new one. A file already there with the same content is left
//! as it is; one that differs is kept, by a hard link made before the rename, as
//! `NAME.synbackup-old-TIMESTAMP`, and named. Nothing else in the directory is
//! touched: files the backup does not have stay. Missing directories (the
//! directory itself on a rebuilt host) are created with the backup's owner and
//! modes; missing parents (`~/.syn`) get the directory's owner and 0700.
//!
//! [`Placed::undo`] takes it back (the restore rolled back): the kept files
//! renamed back over the new ones, created files and directories removed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::base::digest::Algo;
use crate::base::exit::{fail, Code};
use crate::base::{fsutil, pathtext, readback, xattrs};
use crate::engine::manifest::{path_of, CertDirInfo, Manifest};
use crate::engine::workers;

/// What a restore of the certificates did (paths as `pathtext::key`s).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Placed {
    pub(crate) dir: String,
    /// Files written where none was.
    pub(crate) created: usize,
    /// Files already there with the backup's content, left alone.
    pub(crate) identical: usize,
    /// Files that differed: `(path, kept as)`.
    pub(crate) replaced: Vec<(String, String)>,
    #[serde(skip)]
    undo: Undo,
}

/// What [`Placed::undo`] reverses, in the order it was done.
#[derive(Debug, Default)]
struct Undo {
    new_dirs: Vec<PathBuf>,
    new_files: Vec<PathBuf>,
    /// `(place, the old file kept)`.
    /// (place, kept name, the kept file's mode before it was narrowed to 0600)
    kept: Vec<(PathBuf, PathBuf, Option<u32>)>,
}

/// The backup's certificate directory, or an error saying it has none.
pub(crate) fn carried(backup: &Path, m: &Manifest) -> Result<CertDirInfo> {
    m.cert_dir.clone().ok_or_else(|| {
        fail(
            Code::BadPath,
            format!(
                "{} carries no certificate directory (made without one, or by an older synbackup); restore without --certs",
                backup.display()
            ),
        )
    })
}

/// `rel` (a manifest path) relative to the carried directory `top`, if under it.
fn under(top: &str, rel: &str) -> Option<PathBuf> {
    path_of(rel)
        .strip_prefix(path_of(top))
        .ok()
        .map(Path::to_path_buf)
}

/// Restore the certificate directory of the backup at `backup` (verified, its
/// manifest `m`) into `target`; `stamp` names the kept old files.
pub(crate) fn put_back(backup: &Path, m: &Manifest, target: &Path, stamp: &str) -> Result<Placed> {
    let info = carried(backup, m)?;
    let src = backup.join(path_of(&info.path));
    let mut placed = Placed {
        dir: pathtext::key(target),
        ..Placed::default()
    };
    refuse_planted_links(target)?;
    let result = (|| -> Result<()> {
        make_parents(target, &info, &mut placed.undo)?;
        let mut dirs: Vec<PathBuf> = m
            .dirs
            .iter()
            .filter_map(|d| under(&info.path, &d.path))
            .collect();
        dirs.sort();
        for rel in &dirs {
            let at = if rel.as_os_str().is_empty() {
                target.to_path_buf()
            } else {
                target.join(rel)
            };
            place_dir(&at, &mut placed.undo)?;
        }
        let algo = m.algo();
        let want: BTreeMap<PathBuf, &str> = m
            .files
            .iter()
            .filter_map(|f| Some((under(&info.path, &f.path)?, f.digest(algo))))
            .collect();
        for (rel, digest) in &want {
            let (from, to) = (src.join(rel), target.join(rel));
            place_file(&from, &to, (algo, digest), stamp, &mut placed)?;
        }
        for l in m.symlinks.iter().filter(|l| !l.followed) {
            if let Some(rel) = under(&info.path, &l.path) {
                place_link(&src.join(&rel), &target.join(&rel), stamp, &mut placed)?;
            }
        }
        // The directories we made get the backup's owner, mode and times last.
        for dir in placed.undo.new_dirs.iter().rev() {
            if let Ok(rel) = dir.strip_prefix(target) {
                let from = src.join(rel);
                if from.is_dir() {
                    fsutil::copy_meta_dir(
                        dir,
                        &fs::metadata(&from)?,
                        &workers::source_xattrs(&from)?,
                    )?;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        placed.undo();
        return Err(e);
    }
    Ok(placed)
}

/// Refuse a `target` reached through a symlink another user could have planted
/// (`~/.syn -> /etc/ssl` by the service's user): root would write, as root, where
/// the link points. A link on the way is followed only when root owns it and its
/// directory is root's and writable by nobody else (an administrator's link).
/// Checked before anything is written; a link planted after this check is not
/// caught (the writes go by path).
pub(crate) fn refuse_planted_links(target: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let abs = std::path::absolute(target)
        .with_context(|| format!("bad certificate directory {}", target.display()))?;
    let mut at = PathBuf::new();
    for c in abs.components() {
        at.push(c);
        let meta = match fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", at.display())),
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        let dir = at.parent().unwrap_or(Path::new("/"));
        let dir_meta =
            fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
        let trusted = meta.uid() == 0 && dir_meta.uid() == 0 && dir_meta.mode() & 0o022 == 0;
        if !trusted {
            let to = fs::read_link(&at).unwrap_or_default();
            return Err(fail(
                Code::BadPath,
                format!(
                    "{} is a symlink (to {}) that uid {} could have made; restore --certs does not write through it: replace it with the directory it points to, or give --cert-dir a path without it, and restore again",
                    at.display(),
                    to.display(),
                    if meta.uid() == 0 { dir_meta.uid() } else { meta.uid() }
                ),
            ));
        }
    }
    Ok(())
}

/// Create the missing parents of `target` (the directory's owner, 0700).
fn make_parents(target: &Path, info: &CertDirInfo, undo: &mut Undo) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = target.parent();
    while let Some(dir) = p {
        if dir.as_os_str().is_empty() || dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
        p = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        fs::create_dir(&dir).map_err(|e| fsutil::write_error(&dir, e))?;
        undo.new_dirs.push(dir.clone());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let _ = nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(info.uid)),
            Some(nix::unistd::Gid::from_raw(info.gid)),
        );
    }
    Ok(())
}

/// A directory of the backup's: made when missing (private until its metadata).
fn place_dir(path: &Path, undo: &mut Undo) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(fail(
            Code::BadPath,
            format!(
                "{} is not a directory, but the backup has a directory there; move it away and restore again",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(path).map_err(|e| fsutil::write_error(path, e))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
            undo.new_dirs.push(path.to_path_buf());
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
}

/// The name of the old file kept beside `path`: `NAME.synbackup-old-STAMP`
/// (`-2`, ... when that exists).
fn kept_name(path: &Path, stamp: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut n = 1;
    loop {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let p = path.with_file_name(format!("{name}.synbackup-old-{stamp}{suffix}"));
        if fs::symlink_metadata(&p).is_err() {
            return p;
        }
        n += 1;
    }
}

/// Keep what is at `path` (a hard link: the place is never empty) before it is
/// replaced; returns the kept name.
fn keep_old(path: &Path, stamp: &str, placed: &mut Placed) -> Result<PathBuf> {
    let old = kept_name(path, stamp);
    fs::hard_link(path, &old).with_context(|| {
        format!(
            "cannot keep {} as {} before replacing it",
            path.display(),
            old.display()
        )
    })?;
    placed
        .undo
        .kept
        .push((path.to_path_buf(), old.clone(), None));
    placed
        .replaced
        .push((pathtext::key(path), pathtext::key(&old)));
    Ok(old)
}

/// The temporary a file is written under beside `path`.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.synbackup-restoring.{}",
        std::process::id()
    ))
}

/// Put the backup's file `from` at `path` (see the module's preamble).
fn place_file(
    from: &Path,
    path: &Path,
    (algo, digest): (Algo, &str),
    stamp: &str,
    placed: &mut Placed,
) -> Result<()> {
    let existing = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(fail(
                Code::BadPath,
                format!(
                    "{} is a directory, but the backup has a file there; move it away and restore again",
                    path.display()
                ),
            ))
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if let Some(m) = &existing {
        if m.is_file() && readback::hash_with(path, algo, false)?.hashed.digest == digest {
            placed.identical += 1;
            return Ok(());
        }
    }
    let tmp = temp_beside(path);
    let written = (|| -> Result<()> {
        let sf = File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
        let df = fsutil::create_new(&tmp)?;
        let h = fsutil::copy_sparse_hashed(&sf, from, &df, &tmp, algo, |_| Ok(()))?;
        if h.digest != digest {
            return Err(fail(
                Code::Verify,
                format!(
                    "{} changed since it was verified ({} mismatch)",
                    from.display(),
                    algo.label()
                ),
            ));
        }
        let meta = fs::metadata(from)?;
        fsutil::copy_meta_fd(&df, &tmp, &meta, true, &xattrs::read(&sf, from)?)?;
        df.sync_all().map_err(|e| fsutil::write_error(&tmp, e))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    swap_in(&tmp, path, existing.is_some(), stamp, placed)
}

/// Put the backup's link `from` at `path`: left when the same, else the old kept.
fn place_link(from: &Path, path: &Path, stamp: &str, placed: &mut Placed) -> Result<()> {
    let target = fs::read_link(from).with_context(|| format!("cannot read {}", from.display()))?;
    let existing = fs::symlink_metadata(path).ok();
    if existing.is_some() {
        if fs::read_link(path).ok().as_deref() == Some(target.as_path()) {
            placed.identical += 1;
            return Ok(());
        }
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(fail(
                Code::BadPath,
                format!(
                    "{} is a directory, but the backup has a link there; move it away and restore again",
                    path.display()
                ),
            ));
        }
    }
    let tmp = temp_beside(path);
    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| fsutil::write_error(&tmp, e))?;
    fsutil::apply_meta_link(&tmp, &fs::symlink_metadata(from)?)?;
    swap_in(&tmp, path, existing.is_some(), stamp, placed)
}

/// Rename the finished temporary `tmp` over `path`: an existing entry is kept aside
/// first (`keep_old`), a new one remembered for the undo; `tmp` never stays behind.
fn swap_in(tmp: &Path, path: &Path, existed: bool, stamp: &str, placed: &mut Placed) -> Result<()> {
    if existed {
        if let Err(e) = keep_old(path, stamp, placed) {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
    }
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        fsutil::write_error(path, e)
    })?;
    if existed {
        // What is kept aside (an old key among them) is readable by its owner only.
        if let Some((_, kept, before)) = placed.undo.kept.last_mut() {
            *before = fsutil::narrow_kept(kept)?;
        }
    } else {
        placed.undo.new_files.push(path.to_path_buf());
        placed.created += 1;
    }
    fsutil::fsync_dir(path.parent().unwrap_or(Path::new("/")))
}

impl Placed {
    /// Take the restore of the certificates back (the restore failed later).
    pub(crate) fn undo(&mut self) {
        for (place, old, mode) in self.undo.kept.drain(..).rev() {
            if let Some(mode) = mode {
                if let Err(e) = fsutil::set_mode_nofollow(&old, mode) {
                    log::warn!("{e:#}; it goes back with mode 0600");
                }
            }
            match fs::rename(&old, &place) {
                Ok(()) => log::info!("put {} back", place.display()),
                Err(e) => log::error!(
                    "could not put {} back from {}: {e}; rename it by hand",
                    place.display(),
                    old.display()
                ),
            }
        }
        for f in self.undo.new_files.drain(..).rev() {
            if let Err(e) = fs::remove_file(&f) {
                log::error!("could not remove the restored {}: {e}", f.display());
            }
        }
        for d in self.undo.new_dirs.drain(..).rev() {
            if let Err(e) = fs::remove_dir(&d) {
                log::warn!(
                    "could not remove the directory {} made by the restore: {e}",
                    d.display()
                );
            }
        }
        self.created = 0;
        self.identical = 0;
        self.replaced.clear();
    }

    /// One line for the restore's report.
    pub(crate) fn line(&self) -> String {
        format!(
            "certificates restored into {}: {} new, {} already there, {} that differed replaced (the old ones kept beside them)",
            pathtext::shell_word(&pathtext::path(&self.dir)),
            self.created,
            self.identical,
            self.replaced.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_names_do_not_collide() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("h.key");
        fs::write(&p, "x").unwrap();
        let first = kept_name(&p, "20261201T000000Z");
        assert_eq!(first, t.path().join("h.key.synbackup-old-20261201T000000Z"));
        fs::write(&first, "y").unwrap();
        assert_eq!(
            kept_name(&p, "20261201T000000Z"),
            t.path().join("h.key.synbackup-old-20261201T000000Z-2")
        );
    }

    #[test]
    fn paths_under_the_carried_directory() {
        assert_eq!(
            under("synbackup-certs", "synbackup-certs/hosts/h.key"),
            Some(PathBuf::from("hosts/h.key"))
        );
        assert_eq!(
            under("synbackup-certs", "synbackup-certs"),
            Some(PathBuf::new())
        );
        assert_eq!(under("synbackup-certs", "slabs/x"), None);
        assert_eq!(under("synbackup-certs", "synbackup-certsX/y"), None);
    }
}
