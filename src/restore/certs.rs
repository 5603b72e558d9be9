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
//! The directory is the service user's: every write is by descriptor
//! (`base::heldir`). It is opened once, refusing a link its user could have
//! planted on the way (`~/.syn -> /etc/ssl`), and every file, link and
//! subdirectory is then created, kept and renamed beneath that descriptor, never
//! through a link: a link planted while the restore runs changes nothing.
//!
//! [`Placed::undo`] takes it back (the restore rolled back): the kept files
//! renamed back over the new ones, created files and directories removed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::base::digest::Algo;
use crate::base::exit::{fail, Code};
use crate::base::heldir::{self, Entry, HeldDir, NewDirs};
use crate::base::pathtext::{self, Escaped};
use crate::base::{fsutil, xattrs};
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

/// What [`Placed::undo`] reverses, in the order it was done: names in the held
/// directories they were made in (never paths another user could redirect).
#[derive(Debug, Default)]
struct Undo {
    /// Parents of the directory that were missing (made by path: emptied only).
    new_parents: Vec<PathBuf>,
    /// (the directory it is in, its name, its path in the backup's carried tree)
    new_dirs: Vec<(Rc<HeldDir>, OsString, PathBuf)>,
    new_files: Vec<(Rc<HeldDir>, OsString)>,
    /// (the directory, the place, the kept name, the kept file's mode before it
    /// was narrowed to 0600)
    kept: Vec<(Rc<HeldDir>, OsString, OsString, Option<u32>)>,
}

/// What an operator does about a link planted on the way to the directory.
const FIX: &str = "replace it with the directory it points to, or give --cert-dir a path without it, and restore again";

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
/// manifest `m`) into `target`; `stamp` names the kept old files. Every write is
/// by descriptor (`base::heldir`): the directory is held once, without following
/// a link its user could have planted, and everything is written beneath it.
pub(crate) fn put_back(backup: &Path, m: &Manifest, target: &Path, stamp: &str) -> Result<Placed> {
    let info = carried(backup, m)?;
    let src = backup.join(path_of(&info.path));
    let mut placed = Placed {
        dir: pathtext::key(target),
        ..Placed::default()
    };
    let result = (|| -> Result<()> {
        let top = Rc::new(hold_target(target, &info, &mut placed.undo)?);
        crate::base::fault::point("restore-certs-held")?;
        let mut held: BTreeMap<PathBuf, Rc<HeldDir>> = BTreeMap::new();
        held.insert(PathBuf::new(), top.clone());
        let mut dirs: Vec<PathBuf> = m
            .dirs
            .iter()
            .filter_map(|d| under(&info.path, &d.path))
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        dirs.sort();
        for rel in &dirs {
            let parent = parent_held(&held, rel)?;
            let name = name_of(rel).to_os_string();
            place_dir(&parent, &name, rel, &mut placed.undo)?;
            held.insert(rel.clone(), Rc::new(parent.sub(Path::new(&name))?));
        }
        let algo = m.algo();
        let want: BTreeMap<PathBuf, &str> = m
            .files
            .iter()
            .filter_map(|f| Some((under(&info.path, &f.path)?, f.digest(algo))))
            .collect();
        for (rel, digest) in &want {
            let parent = parent_held(&held, rel)?;
            place_file(
                &src.join(rel),
                &parent,
                name_of(rel),
                (algo, digest),
                stamp,
                &mut placed,
            )?;
        }
        for l in m.symlinks.iter().filter(|l| !l.followed) {
            if let Some(rel) = under(&info.path, &l.path) {
                let parent = parent_held(&held, &rel)?;
                place_link(&src.join(&rel), &parent, name_of(&rel), stamp, &mut placed)?;
            }
        }
        // The directories we made get the backup's owner, mode and times last.
        for (parent, name, rel) in placed.undo.new_dirs.iter().rev() {
            let from = src.join(rel);
            if from.is_dir() {
                let d = parent.sub(Path::new(name))?;
                fsutil::copy_meta_fd(
                    d.file(),
                    d.path(),
                    &fs::metadata(&from)?,
                    true,
                    &workers::source_xattrs(&from)?,
                )?;
                d.sync()?;
                parent.sync()?;
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

/// The name `rel` ends in.
fn name_of(rel: &Path) -> &std::ffi::OsStr {
    heldir::name_of(rel)
}

/// The held directory `rel` is in.
fn parent_held(held: &BTreeMap<PathBuf, Rc<HeldDir>>, rel: &Path) -> Result<Rc<HeldDir>> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    held.get(parent).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "the backup lists {} without its directory {}",
            rel.escaped(),
            parent.escaped()
        )
    })
}

/// The certificate directory held: its parents (made when missing: the
/// directory's owner, 0700) without a link another user could have planted, then
/// the directory itself (made when missing, 0700 until the backup's metadata).
fn hold_target(target: &Path, info: &CertDirInfo, undo: &mut Undo) -> Result<HeldDir> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let new = NewDirs {
        uid: info.uid,
        gid: info.gid,
        mode: 0o700,
    };
    let held_parent = Rc::new(HeldDir::open_trusted(
        parent,
        Some(new),
        FIX,
        &mut undo.new_parents,
    )?);
    let name = heldir::name_of(target).to_os_string();
    match held_parent.entry(&name)? {
        Entry::Missing => {
            held_parent.mkdir(&name)?;
            undo.new_dirs
                .push((held_parent.clone(), name.clone(), PathBuf::new()));
            held_parent.sub(Path::new(&name))
        }
        // A link at the directory's own place follows the same rule.
        Entry::Symlink => HeldDir::open_trusted(target, None, FIX, &mut Vec::new()),
        Entry::Dir => held_parent.sub(Path::new(&name)),
        _ => Err(fail(
            Code::BadPath,
            format!(
                "{} is not a directory, but the backup has a directory there; move it away and restore again",
                target.escaped()
            ),
        )),
    }
}

/// Refuse a `target` reached through a symlink another user could have planted
/// (`~/.syn -> /etc/ssl` by the service's user): root would write, as root, where
/// the link points. A link on the way is followed only when root owns it and its
/// directory is root's and writable by nobody else (an administrator's link).
/// Checked before anything is written (the restore's first check); the writes
/// themselves hold the directory by descriptor ([`put_back`]), so a link planted
/// after this check redirects nothing.
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

/// A directory of the backup's, `name` in `parent`: made when missing (private
/// until its metadata).
fn place_dir(parent: &Rc<HeldDir>, name: &OsStr, rel: &Path, undo: &mut Undo) -> Result<()> {
    match parent.entry(name)? {
        Entry::Dir => Ok(()),
        Entry::Missing => {
            parent.mkdir(name)?;
            undo.new_dirs
                .push((parent.clone(), name.to_os_string(), rel.to_path_buf()));
            Ok(())
        }
        _ => Err(fail(
            Code::BadPath,
            format!(
                "{} is not a directory, but the backup has a directory there; move it away and restore again",
                parent.path().join(name).escaped()
            ),
        )),
    }
}

/// The name of the old file kept beside `name`: `NAME.synbackup-old-STAMP`
/// (`-2`, ... when that exists), byte for byte.
fn kept_name(parent: &HeldDir, name: &OsStr, stamp: &str) -> Result<OsString> {
    let mut n = 1;
    loop {
        let mut kept = name.to_os_string();
        kept.push(format!(".synbackup-old-{stamp}"));
        if n > 1 {
            kept.push(format!("-{n}"));
        }
        if parent.entry(&kept)? == Entry::Missing {
            return Ok(kept);
        }
        n += 1;
    }
}

/// Keep what is at `name` (a hard link: the place is never empty) before it is
/// replaced; returns the kept name.
fn keep_old(
    parent: &Rc<HeldDir>,
    name: &OsStr,
    stamp: &str,
    placed: &mut Placed,
) -> Result<OsString> {
    let old = kept_name(parent, name, stamp)?;
    parent.hard_link(name, &old)?;
    placed
        .undo
        .kept
        .push((parent.clone(), name.to_os_string(), old.clone(), None));
    placed.replaced.push((
        pathtext::key(&parent.path().join(name)),
        pathtext::key(&parent.path().join(&old)),
    ));
    Ok(old)
}

/// The temporary a file is written under beside `name`.
fn temp_beside(name: &OsStr) -> OsString {
    let mut t = OsString::from(".");
    t.push(name);
    t.push(format!(".synbackup-restoring.{}", std::process::id()));
    t
}

/// Put the backup's file `from` at `name` in `parent` (see the module's preamble).
fn place_file(
    from: &Path,
    parent: &Rc<HeldDir>,
    name: &OsStr,
    (algo, digest): (Algo, &str),
    stamp: &str,
    placed: &mut Placed,
) -> Result<()> {
    let path = parent.path().join(name);
    let existing = match parent.entry(name)? {
        Entry::Dir => {
            return Err(fail(
                Code::BadPath,
                format!(
                    "{} is a directory, but the backup has a file there; move it away and restore again",
                    path.escaped()
                ),
            ))
        }
        Entry::Missing => false,
        Entry::File => {
            let f = parent.open_file(name)?;
            if fsutil::hash_file(&f, &path, algo)?.digest == digest {
                placed.identical += 1;
                return Ok(());
            }
            true
        }
        _ => true,
    };
    let tmp = temp_beside(name);
    let tmp_path = parent.path().join(&tmp);
    let written = (|| -> Result<()> {
        let sf = File::open(from).with_context(|| format!("cannot read {}", from.escaped()))?;
        let df = parent.create_new(&tmp)?;
        let h = fsutil::copy_sparse_hashed(&sf, from, &df, &tmp_path, algo, |_| Ok(()))?;
        if h.digest != digest {
            return Err(fail(
                Code::Verify,
                format!(
                    "{} changed since it was verified ({} mismatch)",
                    from.escaped(),
                    algo.label()
                ),
            ));
        }
        let meta = fs::metadata(from)?;
        fsutil::copy_meta_fd(&df, &tmp_path, &meta, true, &xattrs::read(&sf, from)?)?;
        df.sync_all().map_err(|e| fsutil::write_error(&tmp_path, e))
    })();
    if let Err(e) = written {
        let _ = parent.unlink(&tmp);
        return Err(e);
    }
    swap_in(parent, &tmp, name, existing, stamp, placed)
}

/// Put the backup's link `from` at `name` in `parent`: left when the same, else
/// the old kept.
fn place_link(
    from: &Path,
    parent: &Rc<HeldDir>,
    name: &OsStr,
    stamp: &str,
    placed: &mut Placed,
) -> Result<()> {
    let target = fs::read_link(from).with_context(|| format!("cannot read {}", from.escaped()))?;
    let existing = match parent.entry(name)? {
        Entry::Missing => false,
        Entry::Symlink if parent.read_link(name)? == target => {
            placed.identical += 1;
            return Ok(());
        }
        Entry::Dir => {
            return Err(fail(
                Code::BadPath,
                format!(
                    "{} is a directory, but the backup has a link there; move it away and restore again",
                    parent.path().join(name).escaped()
                ),
            ))
        }
        _ => true,
    };
    let tmp = temp_beside(name);
    parent.symlink(&target, &tmp)?;
    if let Err(e) = parent.link_meta(&tmp, &fs::symlink_metadata(from)?) {
        let _ = parent.unlink(&tmp);
        return Err(e);
    }
    swap_in(parent, &tmp, name, existing, stamp, placed)
}

/// Rename the finished temporary `tmp` over `name` (both in `parent`): an existing
/// entry is kept aside first (`keep_old`), a new one remembered for the undo;
/// `tmp` never stays behind.
fn swap_in(
    parent: &Rc<HeldDir>,
    tmp: &OsStr,
    name: &OsStr,
    existed: bool,
    stamp: &str,
    placed: &mut Placed,
) -> Result<()> {
    if existed {
        if let Err(e) = keep_old(parent, name, stamp, placed) {
            let _ = parent.unlink(tmp);
            return Err(e);
        }
    }
    if let Err(e) = parent.rename(tmp, name) {
        let _ = parent.unlink(tmp);
        return Err(e);
    }
    if existed {
        // What is kept aside (an old key among them) is readable by its owner only.
        if let Some((dir, _, kept, before)) = placed.undo.kept.last_mut() {
            let kept_path = dir.path().join(&*kept);
            *before = match dir.open_file(kept) {
                Ok(f) => fsutil::narrow_kept_fd(&f, &kept_path)?,
                // A link kept aside: nothing to narrow.
                Err(_) => None,
            };
        }
    } else {
        placed
            .undo
            .new_files
            .push((parent.clone(), name.to_os_string()));
        placed.created += 1;
    }
    parent.sync()
}

impl Placed {
    /// Take the restore of the certificates back (the restore failed later).
    pub(crate) fn undo(&mut self) {
        for (dir, place, old, mode) in self.undo.kept.drain(..).rev() {
            if let Some(mode) = mode {
                let set = dir.open_file(&old).and_then(|f| {
                    use std::os::unix::fs::PermissionsExt;
                    f.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(anyhow::Error::from)
                });
                if let Err(e) = set {
                    log::warn!("{e:#}; it goes back with mode 0600");
                }
            }
            let at = dir.path().join(&place);
            match dir.rename(&old, &place) {
                Ok(()) => log::info!("put {} back", at.escaped()),
                Err(e) => log::error!(
                    "could not put {} back: {e:#}; rename it by hand",
                    at.escaped()
                ),
            }
        }
        for (dir, f) in self.undo.new_files.drain(..).rev() {
            if let Err(e) = dir.unlink(&f) {
                log::error!("could not remove the restored file: {e:#}");
            }
        }
        for (dir, d, _) in self.undo.new_dirs.drain(..).rev() {
            if let Err(e) = dir.rmdir(&d) {
                log::warn!("could not remove the directory made by the restore: {e:#}");
            }
        }
        for d in self.undo.new_parents.drain(..).rev() {
            if let Err(e) = fs::remove_dir(&d) {
                log::warn!(
                    "could not remove the directory {} made by the restore: {e}",
                    d.escaped()
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
        let d = HeldDir::open_trusted(t.path(), None, "", &mut Vec::new()).unwrap();
        fs::write(t.path().join("h.key"), "x").unwrap();
        let name = OsStr::new("h.key");
        let first = kept_name(&d, name, "20261201T000000Z").unwrap();
        assert_eq!(first, "h.key.synbackup-old-20261201T000000Z");
        fs::write(t.path().join(&first), "y").unwrap();
        assert_eq!(
            kept_name(&d, name, "20261201T000000Z").unwrap(),
            "h.key.synbackup-old-20261201T000000Z-2"
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
