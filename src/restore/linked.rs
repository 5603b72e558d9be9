// SPDX-License-Identifier: Apache-2.0
//! Links a backup followed, restored as links (issue 32). A layer that did not fit
//! on the service's disk lives on another one (`layers/IDEN -> /otherdisk/IDEN`);
//! the backup copied its data in the link's place and the manifest lists the link
//! as `followed`. A restore that made it a local directory would put it back on
//! the disk it did not fit on, and leave the other disk a stale copy. So:
//!
//! - the link is recreated in the restored directory, with the target it had;
//! - a target outside the directory (and outside the directory the backup was
//!   made of) gets the data: copied, checked against the manifest and made durable
//!   like the rest, into a staging sibling of the target on its own disk while
//!   the service still runs (`.IDEN.synbackup-restoring.PID`), then, after the
//!   service stopped and the directory was swapped, swapped in the same way: what
//!   is at the target moves aside to `TARGET.pre-restore-TIMESTAMP` (kept, never
//!   deleted), the copy into its place, the parent fsynced. A rollback puts it
//!   back. A file whose target already holds the backup's bytes (a key on a
//!   secrets mount) is left as it is;
//! - a target inside the tree (an absolute link to the directory's own file)
//!   needs no data: the link alone;
//! - a target that cannot be written (its parent missing: the other disk is not
//!   mounted; something of another kind in its place; a followed link inside
//!   another one) is refused before anything changes, with a line saying what to
//!   do. A link is never silently turned into a local directory.

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::base::digest::Algo;
use crate::base::exit::{fail, Code};
use crate::base::fsutil;
use crate::base::pathtext::{self, Escaped};
use crate::base::readback;
use crate::engine::manifest::{path_of, Manifest};
use crate::host::holders;

/// What a followed link's target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory (a layer, an environment): its items are under the link.
    Dir,
    File,
}

/// One link the backup followed, and where its data goes.
#[derive(Debug)]
pub(crate) struct Linked {
    /// The link, relative to the service directory.
    pub(crate) rel: PathBuf,
    /// Its target as the link holds it (relative or absolute).
    pub(crate) target: PathBuf,
    /// Where the data goes: `None` when the target is inside the tree (the link
    /// alone is restored) or already holds the backup's bytes.
    pub(crate) to: Option<Outside>,
    /// What is done with the data (the report's `data`).
    data: &'static str,
}

/// A target outside the tree that receives the data.
#[derive(Debug)]
pub(crate) struct Outside {
    /// The target, absolute.
    pub(crate) path: PathBuf,
    /// The copy is staged here (a sibling of `path`) before the swap.
    pub(crate) staging: PathBuf,
    /// Where what was at `path` is kept.
    pub(crate) aside: PathBuf,
    /// Bytes of the backup's files that go there.
    pub(crate) bytes: u64,
    /// Something was at `path` (moved aside at the swap).
    pub(crate) existed: bool,
    /// The copy was swapped in.
    swapped: bool,
}

/// What the report says of one restored link.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The link (relative) and its target, as `pathtext::key`s.
    pub(crate) path: String,
    pub(crate) target: String,
    /// `written` (the data is at the target), `link` (inside the tree), or
    /// `unchanged` (the target already held the backup's bytes).
    pub(crate) data: &'static str,
    /// Where the previous target was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kept_previous: Option<String>,
}

/// The followed links of the backup at `backup` (manifest `m`) as they are
/// restored into `dir`: checked, nothing written. `stamp` and `pid` name the
/// staging and kept siblings.
pub(crate) fn plan(backup: &Path, m: &Manifest, dir: &Path, stamp: &str) -> Result<Vec<Linked>> {
    let followed: Vec<(PathBuf, PathBuf)> = m
        .symlinks
        .iter()
        .filter(|l| l.followed)
        .map(|l| (path_of(&l.path), path_of(&l.target)))
        .collect();
    let source = path_of(&m.source);
    let algo = m.algo();
    let mut out = Vec::new();
    for (rel, target) in &followed {
        if rel.as_os_str().is_empty() || rel.starts_with(crate::engine::manifest::CERTS_DIR) {
            continue;
        }
        let in_backup = backup.join(rel);
        let meta = fs::symlink_metadata(&in_backup)
            .with_context(|| format!("cannot stat {}", in_backup.escaped()))?;
        let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
        if let Some((outer, _)) = followed
            .iter()
            .find(|(o, _)| o != rel && rel.starts_with(o))
        {
            return Err(fail(
                Code::BadPath,
                format!(
                    "{} was a link (to {}) inside {}, itself a link the backup followed: restore cannot recreate a link inside a linked directory; restore the backup elsewhere (`synbackup restore BACKUP NEWDIR`) and move the data by hand",
                    dir.join(rel).escaped(),
                    target.escaped(),
                    dir.join(outer).escaped()
                ),
            ));
        }
        let at = dir.join(rel);
        let parent = at.parent().unwrap_or(dir);
        let resolved = normalize(&parent.join(target));
        let inside = resolved.starts_with(dir)
            || normalize(&source.join(rel).parent().unwrap_or(&source).join(target))
                .starts_with(&source)
                && target.is_relative()
            || target.is_absolute() && target.starts_with(&source);
        let (to, data) = if inside {
            (None, "link")
        } else {
            match outside(m, rel, &resolved, kind, algo, stamp, &at)? {
                Some(o) => (Some(o), "written"),
                None => (None, "unchanged"),
            }
        };
        out.push(Linked {
            rel: rel.clone(),
            target: target.clone(),
            to,
            data,
        });
    }
    Ok(out)
}

/// The target `path` of the link at `at` (restored from `rel`): checked, and
/// `None` when it already holds the backup's bytes (a file).
fn outside(
    m: &Manifest,
    rel: &Path,
    path: &Path,
    kind: Kind,
    algo: Algo,
    stamp: &str,
    at: &Path,
) -> Result<Option<Outside>> {
    let refuse = |why: String| {
        fail(
            Code::BadPath,
            format!(
                "{} was a link to {} when it was backed up (the backup holds its data); {why}; restore never turns such a link into a local {}",
                at.escaped(),
                path.escaped(),
                if kind == Kind::Dir { "directory" } else { "file" }
            ),
        )
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    match fs::metadata(parent) {
        Ok(p) if p.is_dir() => {}
        _ => {
            return Err(refuse(format!(
                "{} does not exist here: mount the disk that held it there (or create the directory), and restore again",
                parent.escaped()
            )))
        }
    }
    let existing = fs::symlink_metadata(path).ok();
    if let Some(e) = &existing {
        let same_kind = match kind {
            Kind::Dir => e.is_dir(),
            Kind::File => e.is_file(),
        };
        if !same_kind {
            return Err(refuse(format!(
                "{} is now {}: move it away, and restore again",
                path.escaped(),
                if e.file_type().is_symlink() {
                    "a symlink"
                } else if e.is_dir() {
                    "a directory"
                } else {
                    "something else"
                }
            )));
        }
    }
    let key = crate::engine::manifest::path_key(rel);
    if kind == Kind::File && existing.is_some() {
        if let Some(f) = m.files.iter().find(|f| f.path == key) {
            if readback::hash_with(path, algo, false)?.hashed.digest == f.digest(algo) {
                return Ok(None);
            }
        }
    }
    let bytes = m
        .files
        .iter()
        .filter(|f| path_of(&f.path).starts_with(rel))
        .map(|f| f.size)
        .sum();
    let sibling = |prefix: &str, suffix: &str| {
        let mut n = std::ffi::OsString::from(prefix);
        n.push(path.file_name().unwrap_or_default());
        n.push(suffix);
        path.with_file_name(n)
    };
    Ok(Some(Outside {
        path: path.to_path_buf(),
        staging: sibling(".", &format!(".synbackup-restoring.{}", std::process::id())),
        aside: crate::instance::kept::free_aside(path, crate::instance::kept::PRE_RESTORE, stamp),
        bytes,
        existed: existing.is_some(),
        swapped: false,
    }))
}

/// `p` without `.` and with each `..` taking the component before it away
/// (lexically: the link is resolved where it will be, which may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Room for the copies outside the tree, on each target's file system.
pub(crate) fn check_space(links: &[Linked]) -> Result<()> {
    for o in links.iter().filter_map(|l| l.to.as_ref()) {
        let parent = o.path.parent().unwrap_or(Path::new("/"));
        let free = fsutil::free_space(parent)?;
        if o.bytes > free {
            return Err(fail(
                Code::NoSpace,
                format!(
                    "not enough space in {} for the data of the link to {}: it needs {} ({} bytes), {} ({free} bytes) is free; free space first",
                    parent.escaped(),
                    o.path.escaped(),
                    fsutil::human(o.bytes),
                    o.bytes,
                    fsutil::human(free)
                ),
            ));
        }
    }
    Ok(())
}

/// Where an item of the backup at `rel` is copied: under the restored directory
/// `dst`, or under the staging copy of the link it is in. `None`: the item is not
/// copied (inside a link whose target needs no data). The link itself (`rel` is
/// a link's) is made by the caller with [`link_at`].
pub(crate) fn dest(links: &[Linked], dst: &Path, rel: &Path) -> Option<PathBuf> {
    match links.iter().find(|l| rel.starts_with(&l.rel)) {
        None => Some(dst.join(rel)),
        Some(l) => {
            let o = l.to.as_ref()?;
            let sub = rel.strip_prefix(&l.rel).ok()?;
            Some(if sub.as_os_str().is_empty() {
                o.staging.clone()
            } else {
                o.staging.join(sub)
            })
        }
    }
}

/// The link whose own path is `rel`, if any.
pub(crate) fn link_at<'a>(links: &'a [Linked], rel: &Path) -> Option<&'a Linked> {
    links.iter().find(|l| l.rel == rel)
}

impl Linked {
    /// Step 4 of the restore, after the directory's swap: the copy into the
    /// target's place, what was there kept aside.
    pub(crate) fn swap_in(&mut self, stop_timeout: std::time::Duration) -> Result<()> {
        let Some(o) = self.to.as_mut() else {
            return Ok(());
        };
        if o.existed {
            // The service ran on it: nothing may hold it any more.
            holders::wait_released(&o.path, stop_timeout, true)?;
            fsutil::rename_noreplace(&o.path, &o.aside).map_err(|e| {
                fail(
                    Code::Other,
                    format!(
                        "cannot move {} aside to {}: {e}",
                        o.path.escaped(),
                        o.aside.escaped()
                    ),
                )
            })?;
        }
        o.swapped = true;
        fsutil::rename_noreplace(&o.staging, &o.path).map_err(|e| {
            fail(
                Code::Other,
                format!(
                    "cannot move {} into place at {}: {e}",
                    o.staging.escaped(),
                    o.path.escaped()
                ),
            )
        })?;
        fsutil::fsync_dir(o.path.parent().unwrap_or(Path::new("/")))
    }

    /// Take [`Linked::swap_in`] back: the copy out (to its staging name, removed
    /// with it), what was there back.
    pub(crate) fn undo(&mut self) {
        let Some(o) = self.to.as_mut().filter(|o| o.swapped) else {
            return;
        };
        let back = (|| -> Result<()> {
            if !o.existed || o.aside.exists() {
                if fs::symlink_metadata(&o.path).is_ok() && !o.staging.exists() {
                    fsutil::rename_noreplace(&o.path, &o.staging)?;
                }
                if o.existed {
                    fsutil::rename_noreplace(&o.aside, &o.path)?;
                }
            }
            fsutil::fsync_dir(o.path.parent().unwrap_or(Path::new("/")))
        })();
        match back {
            Ok(()) => {
                log::info!("put {} back", o.path.escaped());
                o.swapped = false;
            }
            Err(e) => log::error!(
                "could not put {} back from {}: {e:#}; move it back by hand",
                o.path.escaped(),
                o.aside.escaped()
            ),
        }
    }

    /// What the report says of it.
    pub(crate) fn report(&self) -> Report {
        Report {
            path: pathtext::key(&self.rel),
            target: pathtext::key(&self.target),
            data: self.data,
            kept_previous: self
                .to
                .as_ref()
                .filter(|o| o.existed)
                .map(|o| pathtext::key(&o.aside)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_lexically_where_they_will_be() {
        assert_eq!(
            normalize(Path::new("/srv/c0/layers/../../other/x")),
            Path::new("/srv/other/x")
        );
        assert_eq!(normalize(Path::new("/a/./b")), Path::new("/a/b"));
    }
}
