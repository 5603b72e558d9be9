// SPDX-License-Identifier: Apache-2.0
//! What a running cell says about itself, from `getCellInfo()`, the same way on
//! Synapse 2.x and 3.x: its iden, the id of this boot (`run`, a new one at every
//! start), whether it is frozen (`paused`), its role and its nexus index.
//!
//! Where the two lines differ: the nexus index is `cell.nexus.indx` on both
//! (2.x also has `cell.nexsindx`, gone in 3.x); the upstream a mirror follows is
//! `cell.mirror` on 2.x and `cell.parent` on 3.x (Synapse strips any password from
//! the URL); `cell.active` is false on a mirror (a 3.x follower) on both.
//! A cell's freeze carries no time or token of its own: the boot id and the nexus
//! index (which cannot move while the cell is frozen: its nexus lock is held, and
//! a mirror applies its leader's entries under the same lock) are what tells one
//! freeze from another (`freeze_record`).

use anyhow::{anyhow, Result};
use rmpv::Value;

use crate::engine::synapse::{self, Version};
use crate::engine::telepath::get;

/// A running cell's answer to `getCellInfo()`, the parts synbackup uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CellState {
    /// `cell.iden`: the cell's GUID (`cell.guid`), shared by a leader and its mirrors.
    pub(crate) iden: String,
    /// `cell.run`: the id of this boot.
    pub(crate) run: String,
    /// `cell.paused`: frozen.
    pub(crate) paused: bool,
    /// `cell.active`: the leader (false: a mirror).
    pub(crate) active: bool,
    /// The URL of the upstream a mirror follows (`cell.mirror` on 2.x, `cell.parent` on 3.x).
    pub(crate) upstream: Option<String>,
    /// The nexus index: the offset the next change will get.
    pub(crate) nexus_index: u64,
    /// A mirror is connected to its upstream (`cell.nexus['uplink:ready']`).
    pub(crate) uplink: bool,
    /// The Synapse release (`synapse.version`).
    pub(crate) version: Option<Version>,
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl CellState {
    /// Read it from a `getCellInfo()` answer.
    pub(crate) fn from_info(info: &Value) -> Result<CellState> {
        let cell = get(info, "cell").ok_or_else(|| anyhow!("getCellInfo answer without cell"))?;
        let nexus = get(cell, "nexus");
        let nexus_index = nexus
            .and_then(|n| get(n, "indx"))
            .or_else(|| get(cell, "nexsindx"))
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("getCellInfo answer without the nexus index"))?;
        Ok(CellState {
            iden: text(get(cell, "iden"))
                .ok_or_else(|| anyhow!("getCellInfo without cell.iden"))?,
            run: text(get(cell, "run")).unwrap_or_default(),
            paused: get(cell, "paused")
                .and_then(Value::as_bool)
                .ok_or_else(|| anyhow!("getCellInfo answer without cell.paused"))?,
            active: get(cell, "active").and_then(Value::as_bool).unwrap_or(true),
            // Synapse shows it sanitized; masked again in case a release does not.
            upstream: text(get(cell, "mirror"))
                .or_else(|| text(get(cell, "parent")))
                .map(|u| crate::engine::teleurl::mask_text(&u)),
            nexus_index,
            uplink: nexus
                .and_then(|n| get(n, "uplink:ready"))
                .or_else(|| get(cell, "uplink"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            version: synapse::of_cell_info(info),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    #[test]
    fn reads_both_lines() {
        // 2.256: nexsindx and mirror beside nexus; the version a tuple.
        let v2 = map(vec![
            (
                "synapse",
                map(vec![(
                    "version",
                    Value::Array(vec![2.into(), 256.into(), 0.into()]),
                )]),
            ),
            (
                "cell",
                map(vec![
                    ("iden", "a4046b".into()),
                    ("run", "1f99fa".into()),
                    ("paused", false.into()),
                    ("active", false.into()),
                    ("nexsindx", 52.into()),
                    ("uplink", true.into()),
                    ("mirror", "cell:///tmp/mx/L".into()),
                    (
                        "nexus",
                        map(vec![("indx", 52.into()), ("uplink:ready", true.into())]),
                    ),
                ]),
            ),
        ]);
        let s = CellState::from_info(&v2).unwrap();
        assert_eq!(s.nexus_index, 52);
        assert_eq!(s.upstream.as_deref(), Some("cell:///tmp/mx/L"));
        assert!(s.uplink && !s.active && !s.paused);
        assert_eq!(s.version.unwrap().major(), 2);
        // 3.7.0: parent, nexus only.
        let v3 = map(vec![
            ("synapse", map(vec![("version", "3.7.0".into())])),
            (
                "cell",
                map(vec![
                    ("iden", "b1".into()),
                    ("run", "r".into()),
                    ("paused", true.into()),
                    ("active", true.into()),
                    ("parent", Value::Nil),
                    ("nexus", map(vec![("indx", 7.into())])),
                ]),
            ),
        ]);
        let s = CellState::from_info(&v3).unwrap();
        assert_eq!((s.nexus_index, s.paused, s.active), (7, true, true));
        assert_eq!(s.upstream, None);
        assert!(CellState::from_info(&map(vec![("cell", map(vec![]))])).is_err());
    }
}
