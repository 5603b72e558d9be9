// SPDX-License-Identifier: Apache-2.0
//! Service directories kept by maintenance windows (`DIR.pre-cold-TIMESTAMP`): the
//! way back after a window, expired by the next successful window or by age.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name part marking a directory kept by a window.
pub(crate) const PRE_COLD: &str = ".pre-cold-";

/// Directories kept by earlier windows of `dir`, with their modification times.
pub(crate) fn kept_dirs(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{name}{PRE_COLD}");
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.modified().ok()?)))
        .collect()
}

/// Remove directories kept by earlier windows: all but `keep`, or those older than `max_age`.
pub(crate) fn remove_kept(dir: &Path, keep: Option<&Path>, max_age: Option<Duration>) {
    for (p, mtime) in kept_dirs(dir) {
        if Some(p.as_path()) == keep {
            continue;
        }
        if let Some(age) = max_age {
            if mtime.elapsed().map(|a| a < age).unwrap_or(true) {
                continue;
            }
        }
        match fs::remove_dir_all(&p) {
            Ok(()) => log::info!(
                "removed {}, kept by an earlier maintenance window",
                p.display()
            ),
            Err(e) => log::warn!("could not remove {}: {e}", p.display()),
        }
    }
}
