// SPDX-License-Identifier: Apache-2.0
//! What the running cell says about point-in-time recovery: its nexus index (the
//! archiver's lag in entries) and whether it keeps its nexus log at all
//! (`nexslog:en`), asked over telepath on its socket.
//!
//! A cell with its log off answers `getNexusChanges(offs, tellready=True,
//! wait=False)` with an empty stream (`nexus.py`: `iter` returns at once when
//! `donexslog` is false); a cell with its log on sends the caught-up marker
//! (`None`) at the end. Asking from its last entry keeps the answer one entry long.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rmpv::Value;
use serde::Serialize;

use crate::engine::telepath::{self, Client, Next, Probe};

/// The cell as the chain check sees it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CellNexus {
    pub(crate) iden: String,
    /// The offset its next change gets.
    pub(crate) nexus_index: u64,
    /// It keeps its nexus log (`nexslog:en: true`).
    pub(crate) nexslog: bool,
}

/// Ask the cell on `dir/sock`; None when no service answers there.
pub(crate) fn ask(dir: &Path) -> Result<Option<CellNexus>> {
    let sock = dir.join("sock");
    if !matches!(telepath::probe(&sock), Probe::Answers) {
        return Ok(None);
    }
    let mut c = Client::connect(&sock, Duration::from_secs(10))?;
    let state = c.cell_state()?;
    let from = state.nexus_index.saturating_sub(1);
    let mut stream = c.stream(
        "getNexusChanges",
        vec![Value::from(from)],
        vec![("tellready", true.into()), ("wait", false.into())],
    )?;
    let mut nexslog = false;
    // A bounded read: the stored entries from `from` on, then the marker.
    for _ in 0..100_000 {
        match stream.next_within(Some(Duration::from_secs(10)))? {
            Next::Item(y) if y.value.is_nil() => nexslog = true,
            Next::Item(_) => {}
            Next::End => break,
            Next::Idle => return Err(anyhow!("getNexusChanges on {} did not end", sock.display())),
        }
    }
    Ok(Some(CellNexus {
        iden: state.iden,
        nexus_index: state.nexus_index,
        nexslog,
    }))
}

/// The line `status` and `check` give for a cell that keeps no nexus log.
pub(crate) fn nexslog_off(dir: &Path) -> String {
    format!(
        "point-in-time recovery is off: the cell on {} runs with nexslog:en false, so it keeps no log of its changes to archive (set `nexslog:en: true` in {} and restart the service)",
        dir.display(),
        dir.join("cell.yaml").display()
    )
}
