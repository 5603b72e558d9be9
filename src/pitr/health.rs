// SPDX-License-Identifier: Apache-2.0
//! Point-in-time recovery as `status` and `check` report it: the chain of backups
//! and archive (`chain`), the cell's nexus index and log (`live`), and from them
//! the archiver's lag and whether it is stale.
//!
//! The archiver counts as configured when its archive exists. It is stale when
//! the cell has entries the archive lacks and the newest archived entry was
//! received longer than `SYNBACKUP_NEXUS_MAX_LAG` ago: an idle cell makes no
//! entries, so an old newest entry alone is no problem.

use std::time::Duration;

use serde::Serialize;

use crate::base::units::format_duration;
use crate::instance::config::Instance;
use crate::pitr::chain::{self, Chain};
use crate::pitr::live::{self, CellNexus};

/// The report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pitr {
    /// `off` (no archive), `on`, or `nexslog-off` (the cell keeps no log).
    pub(crate) state: &'static str,
    pub(crate) chain: Chain,
    /// The cell, when it answered.
    pub(crate) cell: Option<CellNexus>,
    /// Entries the cell made that the archive lacks.
    pub(crate) lag_entries: Option<u64>,
    /// How long ago the newest archived entry was received.
    pub(crate) newest_age_seconds: Option<u64>,
    pub(crate) max_lag_seconds: u64,
    /// What makes `status` fail, one line each.
    pub(crate) problems: Vec<String>,
    /// Not a failure: what the operator should know.
    pub(crate) notes: Vec<String>,
}

/// Assess `inst` now (`now_us`: microseconds since the epoch).
pub(crate) fn assess(inst: &Instance, now_us: u64) -> anyhow::Result<Pitr> {
    let chain = chain::inspect(&inst.backup_root, &inst.name, chain::Depth::Changed)?;
    let cell = match live::ask(&inst.service_dir) {
        Ok(c) => c,
        Err(e) => {
            log::debug!(
                "the cell on {} did not say its nexus state: {e:#}",
                inst.service_dir.display()
            );
            None
        }
    };
    Ok(judge(
        chain,
        cell,
        inst.nexus_max_lag,
        now_us,
        &inst.service_dir,
    ))
}

/// The verdict from what was found.
pub(crate) fn judge(
    chain: Chain,
    cell: Option<CellNexus>,
    max_lag: Duration,
    now_us: u64,
    service_dir: &std::path::Path,
) -> Pitr {
    let mut problems = chain.problems();
    problems.extend(chain.kept_aside());
    let mut notes = Vec::new();
    let newest_age_seconds = chain
        .newest_received_us
        .map(|us| now_us.saturating_sub(us) / 1_000_000);
    let lag_entries = match (&cell, chain.next) {
        (Some(c), Some(n)) => Some(c.nexus_index.saturating_sub(n)),
        (Some(c), None) if chain.present => Some(c.nexus_index),
        _ => None,
    };
    let nexslog_off = cell.as_ref().is_some_and(|c| !c.nexslog);
    let state = if nexslog_off {
        if chain.present {
            problems.push(live::nexslog_off(service_dir));
        } else {
            notes.push(live::nexslog_off(service_dir));
        }
        "nexslog-off"
    } else if chain.present {
        "on"
    } else {
        notes.push(format!(
            "point-in-time recovery is off: no nexus archive in {} (enable synbackup-nexus@INSTANCE.service)",
            chain.archive
        ));
        "off"
    };
    if chain.present && !nexslog_off && lag_entries.is_some_and(|l| l > 0) {
        let stale = match newest_age_seconds {
            Some(age) => age > max_lag.as_secs(),
            // Nothing archived yet: the archiver has just started (catching up).
            None => false,
        };
        if stale {
            problems.push(format!(
                "the nexus archiver is behind: the cell is at index {}, the archive at {} ({} entries missing), its newest entry received {} ago (more than SYNBACKUP_NEXUS_MAX_LAG {}): is synbackup-nexus@.service running?",
                cell.as_ref().map_or(0, |c| c.nexus_index),
                chain.next.unwrap_or(0),
                lag_entries.unwrap_or(0),
                newest_age_seconds
                    .map(|a| format_duration(Duration::from_secs(a)))
                    .unwrap_or_else(|| "never".into()),
                format_duration(max_lag)
            ));
        }
    }
    Pitr {
        state,
        chain,
        cell,
        lag_entries,
        newest_age_seconds,
        max_lag_seconds: max_lag.as_secs(),
        problems,
        notes,
    }
}

impl Pitr {
    /// One line: the archive and the lag.
    pub(crate) fn summary(&self) -> String {
        let lag = match (self.lag_entries, self.newest_age_seconds) {
            (Some(l), _) => format!("; {l} entries behind the cell"),
            (None, _) if self.chain.present => "; the cell did not answer".to_string(),
            _ => String::new(),
        };
        format!("{}{lag}", self.chain.summary())
    }
}
