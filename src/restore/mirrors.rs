// SPDX-License-Identifier: Apache-2.0
//! Before a leader is taken back to a backup, its mirrors are asked where they
//! are. A mirror that applied changes past the backup's nexus index keeps them,
//! and the restored leader gives new changes those same offsets: the mirror
//! diverges from it (Synapse's mirror asks for the changes from its own index on).
//! Such a mirror must be re-seeded from the restored leader (a new backup of it
//! restored into the mirror's directory).
//!
//! Every mirror the instance names (`SYNBACKUP_MIRRORS`: directories here or
//! telepath URLs) is asked for its nexus index (`getCellInfo`, bounded) before the
//! service is stopped; each one ahead of the backup is a warning with both
//! numbers, the ones that did not answer are named in one line, and all of it
//! goes into the restore's status, which `synbackup status` reports until
//! acknowledged (`status --acknowledge restore`). Only when the directory
//! restored is the leader: a mirror's restore takes nothing from its siblings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::telepath::Client;
use crate::engine::teleurl::Endpoint;
use crate::restore::roles::{Role, Side};

/// How long each mirror has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// One mirror asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Asked {
    /// Its directory, or its URL masked.
    pub(crate) mirror: String,
    /// Its nexus index (None: it did not answer).
    pub(crate) nexus_index: Option<u64>,
    /// Why it could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unreachable: Option<String>,
}

/// What the mirrors said, against the backup's index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct MirrorsCheck {
    pub(crate) backup_index: u64,
    /// Every mirror asked, in the order of SYNBACKUP_MIRRORS.
    pub(crate) asked: Vec<Asked>,
    /// The lines for the mirrors ahead of the backup (they must be re-seeded).
    pub(crate) ahead: Vec<String>,
    /// The line naming the mirrors that did not answer, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unreachable: Option<String>,
}

impl MirrorsCheck {
    /// Every line, the warnings first.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.ahead
            .iter()
            .chain(&self.unreachable)
            .cloned()
            .collect()
    }
}

/// Ask one mirror for its nexus index.
fn ask(m: &Endpoint) -> Asked {
    let answer = Client::open(m, ASK_TIMEOUT).and_then(|mut c| c.cell_state());
    match answer {
        Ok(state) => Asked {
            mirror: m.to_string(),
            nexus_index: Some(state.nexus_index),
            unreachable: None,
        },
        Err(e) => Asked {
            mirror: m.to_string(),
            nexus_index: None,
            unreachable: Some(format!("{e:#}")),
        },
    }
}

/// Ask `mirrors` (without the directory itself) when `ours`, the directory
/// restored, is a leader and the backup's index is known; log a warning per
/// mirror ahead and one line for those that did not answer.
pub(crate) fn compare(
    mirrors: &[Endpoint],
    dir: &std::path::Path,
    ours: Option<&Side>,
    theirs: Option<&Side>,
) -> Option<MirrorsCheck> {
    let ours = ours?;
    if ours.role != Role::Leader || mirrors.is_empty() {
        return None;
    }
    let backup_index = theirs?.nexus_index?;
    let asked: Vec<Asked> = mirrors
        .iter()
        .filter(|m| m.dir() != Some(dir))
        .map(ask)
        .collect();
    let check = judge(backup_index, asked);
    for line in &check.ahead {
        log::warn!("{line}");
    }
    if let Some(line) = &check.unreachable {
        log::warn!("{line}");
    }
    Some(check)
}

/// The lines for what the mirrors answered.
fn judge(backup_index: u64, asked: Vec<Asked>) -> MirrorsCheck {
    let ahead = asked
        .iter()
        .filter_map(|a| a.nexus_index.filter(|&i| i > backup_index).map(|i| (a, i)))
        .map(|(a, i)| {
            format!(
                "the mirror {} is at nexus index {i}, the backup at {backup_index}: it applied {} changes the restored leader will not have and will diverge from it; re-seed it from the restored leader (restore a new backup of the leader into its directory), then `synbackup status --acknowledge restore`",
                a.mirror,
                i - backup_index
            )
        })
        .collect();
    let down: Vec<String> = asked
        .iter()
        .filter_map(|a| {
            a.unreachable
                .as_ref()
                .map(|why| format!("{} ({why})", a.mirror))
        })
        .collect();
    let unreachable = (!down.is_empty()).then(|| {
        format!(
            "could not ask the mirrors {} for their nexus index: one that is past the backup's {backup_index} must be re-seeded from the restored leader",
            down.join(", ")
        )
    });
    MirrorsCheck {
        backup_index,
        asked,
        ahead,
        unreachable,
    }
}

/// What the last restore's status says about mirrors that must be re-seeded
/// (`details.mirrors.ahead`), for `synbackup status`.
pub(crate) fn open_warnings(details: Option<&serde_json::Value>) -> Vec<String> {
    details
        .and_then(|d| d.get("mirrors"))
        .and_then(|m| serde_json::from_value::<MirrorsCheck>(m.clone()).ok())
        .map(|m| m.ahead)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(m: &str, i: Option<u64>) -> Asked {
        Asked {
            mirror: m.into(),
            nexus_index: i,
            unreachable: i.is_none().then(|| "cannot connect".into()),
        }
    }

    #[test]
    fn a_mirror_past_the_backup_is_a_warning_with_both_numbers() {
        let c = judge(
            40,
            vec![
                asked("/srv/m1", Some(55)),
                asked("tcp://root:****@h:1", Some(40)),
                asked("/srv/m2", None),
            ],
        );
        assert_eq!(c.ahead.len(), 1);
        assert!(
            c.ahead[0].starts_with(
                "the mirror /srv/m1 is at nexus index 55, the backup at 40: it applied 15 changes"
            ),
            "{}",
            c.ahead[0]
        );
        assert!(c.ahead[0].contains("re-seed it from the restored leader"));
        let u = c.unreachable.clone().unwrap();
        assert!(u.contains("/srv/m2 (cannot connect)"), "{u}");
        let details = serde_json::json!({ "mirrors": c });
        assert_eq!(open_warnings(Some(&details)), c.ahead);
        assert!(open_warnings(None).is_empty());
    }
}
