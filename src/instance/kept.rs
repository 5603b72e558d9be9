// SPDX-License-Identifier: Apache-2.0
//! Service directories kept by maintenance windows (`DIR.pre-cold-TIMESTAMP`): the
//! way back after a window, expired by the next successful window or by age.
//!
//! The age is that of the window, recorded in the name when the directory was kept
//! (`YYYYmmddTHHMMSSZ`, UTC), not the directory's mtime: the mtime is whenever the
//! service last changed the directory, often long before the window. A name without
//! a readable time is never expired by age.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

/// The name part marking a directory kept by a window.
pub(crate) const PRE_COLD: &str = ".pre-cold-";

/// The format of the time in a kept directory's name.
pub(crate) const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// The time a window kept `name` (`DIR.pre-cold-STAMP`), from its name.
pub(crate) fn kept_at(name: &str) -> Option<DateTime<Utc>> {
    let (_, stamp) = name.rsplit_once(PRE_COLD)?;
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

/// Directories kept by earlier windows of `dir`, with the time each was kept.
pub(crate) fn kept_dirs(dir: &Path) -> Vec<(PathBuf, Option<DateTime<Utc>>)> {
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
        .map(|e| (e.path(), kept_at(&e.file_name().to_string_lossy())))
        .collect()
}

/// Remove directories kept by earlier windows: all but `keep`, or (with `max_age`)
/// those kept longer ago than that. Returns one line per directory that could not
/// be removed (the caller makes them visible).
pub(crate) fn remove_kept(
    dir: &Path,
    keep: Option<&Path>,
    max_age: Option<Duration>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (p, at) in kept_dirs(dir) {
        if Some(p.as_path()) == keep {
            continue;
        }
        if let Some(age) = max_age {
            let old_enough = at
                .and_then(|t| (Utc::now() - t).to_std().ok())
                .is_some_and(|a| a >= age);
            if !old_enough {
                continue;
            }
        }
        match fs::remove_dir_all(&p) {
            Ok(()) => log::info!(
                "removed {}, kept by an earlier maintenance window",
                p.display()
            ),
            Err(e) => {
                let line = format!(
                    "could not remove {}, kept by an earlier maintenance window: {e}",
                    p.display()
                );
                log::warn!("{line}");
                failed.push(line);
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_by_the_time_in_the_name_not_the_mtime() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c0");
        fs::create_dir(&dir).unwrap();
        let recent = Utc::now().format(STAMP).to_string();
        let old = (Utc::now() - chrono::Duration::days(8))
            .format(STAMP)
            .to_string();
        // Both have a fresh mtime; only the old one's name says it is 8 days old.
        for s in [&recent, &old, &"garbage".to_string()] {
            fs::create_dir(t.path().join(format!("c0{PRE_COLD}{s}"))).unwrap();
        }
        let week = Duration::from_secs(7 * 86400);
        assert!(remove_kept(&dir, None, Some(week)).is_empty());
        let mut left: Vec<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "c0".to_string(),
                format!("c0{PRE_COLD}{recent}"),
                format!("c0{PRE_COLD}garbage")
            ]
        );
        assert_eq!(
            kept_at(&format!("c0{PRE_COLD}20261201T144445Z")).map(|t| t.to_rfc3339()),
            Some("2026-12-01T14:44:45+00:00".into())
        );
    }
}
