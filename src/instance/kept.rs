// SPDX-License-Identifier: Apache-2.0
//! Service directories kept aside: by maintenance windows (`DIR.pre-cold-TIMESTAMP`),
//! the way back after a window, expired by the next successful window or by age
//! (`SYNBACKUP_COLD_KEEP_OLD`); and by restores (`DIR.pre-restore-TIMESTAMP`), the
//! way back after a restore, expired by age (`SYNBACKUP_KEEP_ASIDE`). Each nightly
//! run expires them; `status` shows them with their size.
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
/// The name part marking a directory a restore moved aside.
pub(crate) const PRE_RESTORE: &str = ".pre-restore-";

/// The format of the time in a kept directory's name.
pub(crate) const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// The time in `name` (`DIR{marker}STAMP`).
fn aside_at(name: &str, marker: &str) -> Option<DateTime<Utc>> {
    let (_, stamp) = name.rsplit_once(marker)?;
    // A second directory kept in the same second carries a number (`STAMP-2`).
    let stamp = match stamp.rsplit_once('-') {
        Some((t, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => t,
        _ => stamp,
    };
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

/// The name beside `dir` to keep it under: `dir{marker}{stamp}`, or with `-2`,
/// `-3`, ... when a directory of that name is there already (two restores in one
/// second): a move aside never lands on, or into, something that exists.
pub(crate) fn free_aside(dir: &Path, marker: &str, stamp: &str) -> PathBuf {
    let base = dir.file_name().unwrap_or_default();
    let named = |n: u32| {
        let mut name = base.to_os_string();
        name.push(format!("{marker}{stamp}"));
        if n > 1 {
            name.push(format!("-{n}"));
        }
        dir.with_file_name(name)
    };
    (1..)
        .map(named)
        .find(|p| fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| named(1))
}

/// Directories `dir{marker}STAMP` beside `dir`, with the time in each name.
pub(crate) fn aside_dirs(dir: &Path, marker: &str) -> Vec<(PathBuf, Option<DateTime<Utc>>)> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{name}{marker}");
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.path(), aside_at(&e.file_name().to_string_lossy(), marker)))
        .collect()
}

/// One directory kept aside, for `status` and the metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Aside {
    pub(crate) path: String,
    /// `cold` or `restore`: what kept it.
    pub(crate) by: &'static str,
    pub(crate) kept_at: Option<String>,
    pub(crate) bytes: u64,
}

/// Every directory kept aside beside `dir` (windows and restores), with its size
/// on disk.
pub(crate) fn asides(dir: &Path) -> Vec<Aside> {
    let mut out = Vec::new();
    for (marker, by) in [(PRE_COLD, "cold"), (PRE_RESTORE, "restore")] {
        for (p, at) in aside_dirs(dir, marker) {
            out.push(Aside {
                bytes: crate::window::disk_usage(&p),
                path: p.to_string_lossy().into_owned(),
                by,
                kept_at: at.map(|t| t.to_rfc3339()),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Remove the directories restores moved aside beside `dir` longer ago than
/// `max_age` (never one whose name has no readable time). Returns one line per
/// directory that could not be removed.
pub(crate) fn remove_restored_aside(dir: &Path, max_age: Duration) -> Vec<String> {
    remove_aside(dir, PRE_RESTORE, "a restore", None, Some(max_age))
}

/// Remove directories kept by earlier windows: all but `keep`, or (with `max_age`)
/// those kept longer ago than that. Returns one line per directory that could not
/// be removed (the caller makes them visible).
pub(crate) fn remove_kept(
    dir: &Path,
    keep: Option<&Path>,
    max_age: Option<Duration>,
) -> Vec<String> {
    remove_aside(
        dir,
        PRE_COLD,
        "an earlier maintenance window",
        keep,
        max_age,
    )
}

fn remove_aside(
    dir: &Path,
    marker: &str,
    by: &str,
    keep: Option<&Path>,
    max_age: Option<Duration>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (p, at) in aside_dirs(dir, marker) {
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
            Ok(()) => log::info!("removed {}, kept by {by}", p.display()),
            Err(e) => {
                let line = format!("could not remove {}, kept by {by}: {e}", p.display());
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
            aside_at(&format!("c0{PRE_COLD}20261201T144445Z"), PRE_COLD).map(|t| t.to_rfc3339()),
            Some("2026-12-01T14:44:45+00:00".into())
        );
    }

    #[test]
    fn a_second_aside_in_one_second_gets_a_number_and_keeps_its_time() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c0");
        let stamp = "20261201T144445Z";
        let first = free_aside(&dir, PRE_RESTORE, stamp);
        assert_eq!(first, t.path().join(format!("c0{PRE_RESTORE}{stamp}")));
        fs::create_dir(&first).unwrap();
        let second = free_aside(&dir, PRE_RESTORE, stamp);
        assert_eq!(second, t.path().join(format!("c0{PRE_RESTORE}{stamp}-2")));
        std::os::unix::fs::symlink("/nowhere", &second).unwrap();
        let third = free_aside(&dir, PRE_RESTORE, stamp);
        assert_eq!(third, t.path().join(format!("c0{PRE_RESTORE}{stamp}-3")));
        assert_eq!(
            aside_at(&format!("c0{PRE_RESTORE}{stamp}-2"), PRE_RESTORE).map(|t| t.to_rfc3339()),
            Some("2026-12-01T14:44:45+00:00".into())
        );
    }
}
