// SPDX-License-Identifier: Apache-2.0
//! Retention of the nexus archive: after a prune, the closed segments whose every
//! entry is below the oldest kept good backup's nexus index are removed (no kept
//! backup can be brought forward with them). Never the open segment, never a
//! segment a kept backup needs, never a file the archiver did not name
//! (`FIRST-LAST.seg` and its `FIRST-LAST.json` only), and nothing at all while no
//! kept backup records its index (then every segment may still be needed).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::fsutil;
use crate::pitr::archive::{self, Seg};
use crate::pitr::chain;

/// What retention found removable.
#[derive(Debug, Default)]
pub(crate) struct Removable {
    /// The oldest kept backup's index (None: no kept backup records one).
    pub(crate) oldest_index: Option<u64>,
    /// Segments (and their `.json`) below it.
    pub(crate) segments: Vec<(u64, u64, PathBuf)>,
}

/// The closed segments of the archive of `backup_root` that no kept good backup
/// of `name` (those named in `kept`) needs.
pub(crate) fn removable(backup_root: &Path, name: &str, kept: &[String]) -> Result<Removable> {
    let mut bases = chain::bases(backup_root, name)?;
    bases.retain(|b| kept.contains(&b.backup));
    let Some(oldest) = bases.first().map(|b| b.nexus_index) else {
        return Ok(Removable::default());
    };
    let dir = archive::dir_of(backup_root);
    let segments = archive::segments(&dir)?
        .into_iter()
        .filter_map(|s| match s {
            Seg::Closed { first, last, path } if last < oldest => Some((first, last, path)),
            _ => None,
        })
        .collect();
    Ok(Removable {
        oldest_index: Some(oldest),
        segments,
    })
}

/// Remove (or, on a dry run, name) the segments no kept backup (the names in
/// `kept`) needs; `tell` says each. Returns how many were (or would be) removed.
pub(crate) fn prune_segments(
    backup_root: &Path,
    name: &str,
    kept: &[String],
    dry_run: bool,
    tell: &dyn Fn(&str),
) -> Result<usize> {
    let dir = archive::dir_of(backup_root);
    if !dir.exists() {
        return Ok(0);
    }
    let r = removable(backup_root, name, kept)?;
    let Some(oldest) = r.oldest_index else {
        tell(&format!(
            "keeping every segment of {}: no kept backup records its nexus index",
            dir.display()
        ));
        return Ok(0);
    };
    let verb = if dry_run { "would remove" } else { "removing" };
    for (first, last, path) in &r.segments {
        tell(&format!(
            "{verb} {} (offsets {first}-{last}): below the oldest kept backup's nexus index {oldest}",
            path.display()
        ));
        if !dry_run {
            // The segment first: a `.json` left by a removal cut short is
            // never read as a segment, and the next prune no longer lists it.
            remove_file(path)?;
            remove_file(&path.with_extension("json"))?;
        }
    }
    if !dry_run && !r.segments.is_empty() {
        fsutil::fsync_dir(&dir)?;
    }
    Ok(r.segments.len())
}

fn remove_file(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
    }
}
