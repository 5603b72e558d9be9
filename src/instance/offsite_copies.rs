// SPDX-License-Identifier: Apache-2.0
//! Which backups have an offsite copy: the restic snapshot holding each backup
//! name, kept in the state directory (`STATE_DIR/INSTANCE.offsite.snapshots.json`),
//! never in the backup (its files are covered by its manifest).
//!
//! Written after each successful offsite copy from what the repository holds then
//! (`restic snapshots` of the instance, after the offsite retention's `forget`):
//! a snapshot the offsite policy forgot is no longer named, and one uploaded by
//! another host sharing the repository is. When that listing fails, the snapshot
//! just uploaded is added to the last record. `list` shows the id beside each
//! backup; records of backups that are gone locally are simply not shown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::base::fsutil::write_atomic;
use crate::host::restic::Snapshot;

/// The offsite copy of one backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct OffsiteCopy {
    /// restic's full snapshot id.
    pub(crate) snapshot_id: String,
    pub(crate) short_id: String,
    /// The snapshot's time (the backup's own), RFC 3339.
    pub(crate) time: String,
}

/// Where an instance's record lives.
pub(crate) fn record_path(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join(format!("{instance}.offsite.snapshots.json"))
}

/// The record of `instance`, by backup name (none when the file is missing; an
/// unreadable file is reported and treated as empty).
pub(crate) fn load(state_dir: &Path, instance: &str) -> BTreeMap<String, OffsiteCopy> {
    let p = record_path(state_dir, instance);
    let Ok(bytes) = std::fs::read(&p) else {
        return BTreeMap::new();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        log::warn!("ignoring unreadable offsite records {}: {e}", p.display());
        BTreeMap::new()
    })
}

/// The backups `snapshots` (oldest first, as `restic::parse_snapshots` sorts
/// them) hold, by backup name: a snapshot's one path is the backup's name; of two
/// snapshots of one name, the newer.
pub(crate) fn from_snapshots(snapshots: &[Snapshot]) -> BTreeMap<String, OffsiteCopy> {
    let mut all = BTreeMap::new();
    for s in snapshots {
        let Some(name) = s
            .paths
            .first()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
        else {
            continue;
        };
        all.insert(
            name,
            OffsiteCopy {
                snapshot_id: s.id.clone(),
                short_id: s.short_id.clone(),
                time: s.time.clone(),
            },
        );
    }
    all
}

/// Replace the record of `instance` with `all`.
pub(crate) fn save(
    state_dir: &Path,
    instance: &str,
    all: &BTreeMap<String, OffsiteCopy>,
) -> Result<()> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        anyhow::Error::new(e).context(format!("cannot create {}", state_dir.display()))
    })?;
    let mut json = serde_json::to_vec_pretty(all)?;
    json.push(b'\n');
    write_atomic(&record_path(state_dir, instance), &json, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, path: &str, time: &str) -> Snapshot {
        Snapshot {
            id: id.repeat(8),
            short_id: id.to_string(),
            time: time.into(),
            paths: vec![path.into()],
            hostname: "h".into(),
            tags: vec![],
        }
    }

    #[test]
    fn each_backup_names_its_newest_snapshot() {
        let all = from_snapshots(&[
            snap("aaaaaaaa", "c0_20261201T010000Z", "2026-12-01T01:00:00Z"),
            snap("bbbbbbbb", "/x/c0_20261202T010000Z", "2026-12-02T01:00:00Z"),
            snap("cccccccc", "c0_20261201T010000Z", "2026-12-01T01:00:00Z"),
        ]);
        assert_eq!(all.len(), 2);
        assert_eq!(all["c0_20261201T010000Z"].short_id, "cccccccc");
        assert_eq!(all["c0_20261202T010000Z"].snapshot_id, "bbbbbbbb".repeat(8));
    }
}
