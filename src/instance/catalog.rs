// SPDX-License-Identifier: Apache-2.0
//! An instance's backups in its backup root, and what state each is in.
//!
//! Names: `INSTANCE_YYYYmmddTHHMMSSZ` (UTC), with `-N` appended in the rare case two
//! runs start in the same second. Only directories with such a name that hold a
//! synbackup manifest are ours to list and prune; partial temporaries are
//! `.INSTANCE_...synbackup-partial.PID`. Anything else in the root is left alone.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use crate::engine::damaged;
use crate::engine::manifest::{Manifest, MANIFEST_NAME, VERIFIED_MARK};
use crate::engine::partial::PARTIAL_MARK;

/// The timestamp format in backup names.
const TS: &str = "%Y%m%dT%H%M%SZ";

/// What a backup directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Written and published, with a manifest.
    Complete,
    /// Complete, and verified before it was published.
    Verified,
    /// A temporary of a run that is in progress or was killed.
    Partial,
    /// Complete, but a later verification found it damaged (`engine::damaged`):
    /// not good to restore, no retention slot.
    Damaged,
}

/// One backup (or temporary) of an instance.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) time: DateTime<Utc>,
    pub(crate) state: State,
    /// Bytes of the files in the backup (from its manifest); for a partial one, what
    /// it takes on disk now.
    pub(crate) bytes: u64,
}

/// The name for a new backup of `instance` made at `time`.
pub(crate) fn backup_name(instance: &str, time: DateTime<Utc>) -> String {
    format!("{instance}_{}", time.format(TS))
}

/// The time in a backup name of `instance`, if it is one.
pub(crate) fn parse_name(instance: &str, name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix(instance)?.strip_prefix('_')?;
    let ts = match rest.split_once('-') {
        Some((ts, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => ts,
        Some(_) => return None,
        None => rest,
    };
    NaiveDateTime::parse_from_str(ts, TS)
        .ok()
        .map(|t| t.and_utc())
}

/// Every backup and temporary of `instance` under `root`, oldest first.
pub(crate) fn scan(root: &Path, instance: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", root.display())))
        }
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if let Some(inner) = name.strip_prefix('.') {
            if let Some((base, _pid)) = inner.split_once(PARTIAL_MARK) {
                if let Some(time) = parse_name(instance, base) {
                    out.push(Entry {
                        name,
                        path,
                        time,
                        state: State::Partial,
                        bytes: disk_bytes(&e.path()),
                    });
                }
            }
            continue;
        }
        let Some(time) = parse_name(instance, &name) else {
            continue;
        };
        if !path.join(MANIFEST_NAME).is_file() {
            continue; // not something we made: never listed, never pruned
        }
        let bytes = Manifest::load(&path)
            .map(|m| m.files.iter().map(|f| f.size).sum())
            .unwrap_or(0);
        let state = if damaged::recorded(&path).is_some() {
            State::Damaged
        } else if path.join(VERIFIED_MARK).is_file() {
            State::Verified
        } else {
            State::Complete
        };
        out.push(Entry {
            name,
            path,
            time,
            state,
            bytes,
        });
    }
    out.sort_by(|a, b| {
        a.time
            .cmp(&b.time)
            .then(same_second_number(&a.name).cmp(&same_second_number(&b.name)))
            .then(a.name.cmp(&b.name))
    });
    Ok(out)
}

/// The number a backup made in the same second as another carries (`NAME-2`,
/// `NAME-10`; 1 for none), so that the tenth of a second sorts after the second.
fn same_second_number(name: &str) -> u64 {
    name.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1)
}

/// What a tree takes on disk (allocated blocks; unreadable parts count 0): a
/// killed run's temporary has no manifest to tell its size.
fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = crate::base::fsutil::allocated(&meta);
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            total += entries
                .flatten()
                .map(|e| disk_bytes(&e.path()))
                .sum::<u64>();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 3, 4, 5).unwrap();
        let n = backup_name("cortex00", t);
        assert_eq!(n, "cortex00_20261126T030405Z");
        assert_eq!(parse_name("cortex00", &n), Some(t));
        assert_eq!(parse_name("cortex00", &format!("{n}-2")), Some(t));
        assert_eq!(parse_name("cortex0", &n), None);
        assert_eq!(parse_name("cortex00", "cortex00_2026"), None);
        assert_eq!(parse_name("cortex00", &format!("{n}-x")), None);
    }
}
