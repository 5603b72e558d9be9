// SPDX-License-Identifier: Apache-2.0
//! Which backups a drill has booted: one record per backup name, kept in the state
//! directory (`STATE_DIR/INSTANCE.tested.json`), never in the backup (its files are
//! covered by its manifest and stay as they were written).
//!
//! `list` shows the record beside each backup; `status` the newest backup whose
//! last drill passed. Records of backups that are gone (pruned) are dropped at the
//! next write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::base::fsutil::write_atomic;

/// The last drill of one backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Tested {
    /// When the drill finished (RFC 3339).
    pub(crate) when: String,
    pub(crate) passed: bool,
    /// The Synapse that booted it (passed drills).
    #[serde(default)]
    pub(crate) synapse_version: Option<String>,
    /// The Synapse that last ran the backed-up service (from its cell data).
    #[serde(default)]
    pub(crate) backup_synapse_version: Option<String>,
    #[serde(default)]
    pub(crate) boot_seconds: Option<f64>,
    #[serde(default)]
    pub(crate) nodes: Option<u64>,
    #[serde(default)]
    pub(crate) form_counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// Where an instance's records live.
pub(crate) fn tested_path(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join(format!("{instance}.tested.json"))
}

/// Every record of `instance`, by backup name (none when the file is missing; an
/// unreadable file is reported and treated as empty).
pub(crate) fn load(state_dir: &Path, instance: &str) -> BTreeMap<String, Tested> {
    let p = tested_path(state_dir, instance);
    let Ok(bytes) = std::fs::read(&p) else {
        return BTreeMap::new();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        log::warn!("ignoring unreadable drill records {}: {e}", p.display());
        BTreeMap::new()
    })
}

/// Record the drill of backup `name`, keeping only the records of backups in
/// `existing` (and this one).
pub(crate) fn record(
    state_dir: &Path,
    instance: &str,
    name: &str,
    tested: Tested,
    existing: &[String],
) -> Result<()> {
    let mut all = load(state_dir, instance);
    all.retain(|k, _| existing.iter().any(|e| e == k));
    all.insert(name.to_string(), tested);
    std::fs::create_dir_all(state_dir).map_err(|e| {
        anyhow::Error::new(e).context(format!("cannot create {}", state_dir.display()))
    })?;
    let mut json = serde_json::to_vec_pretty(&all)?;
    json.push(b'\n');
    write_atomic(&tested_path(state_dir, instance), &json, 0o644)
}

/// The newest backup (by name, which sorts by time) among `existing` whose last
/// drill passed: a record of a backup that is gone names nothing.
pub(crate) fn newest_passed_of(
    all: &BTreeMap<String, Tested>,
    existing: &[String],
) -> Option<String> {
    all.iter()
        .rev()
        .find(|(name, t)| t.passed && existing.contains(name))
        .map(|(name, _)| name.clone())
}

/// "tested 2026-12-01 18:00 Synapse 2.256.0 boot 21.3 s 120 nodes" / "drill failed ...".
pub(crate) fn describe(t: &Tested) -> String {
    let when = &t.when[..16.min(t.when.len())];
    let when = when.replace('T', " ");
    if !t.passed {
        return format!("drill failed {when}");
    }
    let mut s = format!("tested {when}");
    if let Some(v) = &t.synapse_version {
        s.push_str(&format!(" Synapse {v}"));
        if let Some(b) = t.backup_synapse_version.as_ref().filter(|b| *b != v) {
            s.push_str(&format!(" (from {b})"));
        }
    }
    if let Some(b) = t.boot_seconds {
        s.push_str(&format!(" boot {b:.1} s"));
    }
    if let Some(n) = t.nodes {
        s.push_str(&format!(" {n} nodes"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(passed: bool) -> Tested {
        Tested {
            when: "2026-12-01T18:00:05Z".into(),
            passed,
            synapse_version: Some("2.256.0".into()),
            backup_synapse_version: Some("2.230.0".into()),
            boot_seconds: Some(21.34),
            nodes: Some(120),
            form_counts: BTreeMap::new(),
            error: None,
        }
    }

    #[test]
    fn records_drop_pruned_backups_and_find_the_newest_pass() {
        let d = tempfile::tempdir().unwrap();
        let names = [
            "c0_20261201T000000Z".to_string(),
            "c0_20261202T000000Z".to_string(),
        ];
        record(d.path(), "c0", &names[0], t(true), &names).unwrap();
        record(d.path(), "c0", &names[1], t(false), &names).unwrap();
        let all = load(d.path(), "c0");
        assert_eq!(all.len(), 2);
        assert_eq!(newest_passed_of(&all, &names).as_ref(), Some(&names[0]));
        // Gone from the root (retention, by hand): it is nobody's newest tested.
        assert_eq!(newest_passed_of(&all, &names[1..]), None);
        // The first backup was pruned: its record goes at the next write.
        record(d.path(), "c0", &names[1], t(true), &names[1..]).unwrap();
        let all = load(d.path(), "c0");
        assert_eq!(all.keys().collect::<Vec<_>>(), vec![&names[1]]);
    }

    #[test]
    fn describes_an_upgrade_rehearsal() {
        assert_eq!(
            describe(&t(true)),
            "tested 2026-12-01 18:00 Synapse 2.256.0 (from 2.230.0) boot 21.3 s 120 nodes"
        );
        assert_eq!(describe(&t(false)), "drill failed 2026-12-01 18:00");
    }
}
