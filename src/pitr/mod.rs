// SPDX-License-Identifier: Apache-2.0
//! Point-in-time recovery: the cell's nexus log archived continuously beside the
//! backups (`follow` writes `archive`), and a restore that brings a base backup
//! forward to a chosen offset or time by applying the archived entries through
//! Synapse's own nexus code (`replay`).
//!
//! A base backup records the cell's nexus index at its freeze
//! (`manifest.cell.nexus_index`): the backup holds exactly the entries before that
//! offset, so backup + archived entries from that offset on form a chain.

/// The archive's files: segments, their index and digests, recovery after a crash.
pub(crate) mod archive;
/// The chain of backups and archive checked from the files (`verify`, `status`).
pub(crate) mod chain;
/// The closed segments a check found whole, so `status` reads only new ones.
pub(crate) mod checked;
/// Archived entries compared with the cell's own log (fork, trim).
pub(crate) mod compare;
/// The archiver: `getNexusChanges` followed into the archive, reconnecting.
pub(crate) mod follow;
/// Point-in-time recovery as `status` and `check` report it (chain, lag, log off).
pub(crate) mod health;
/// What the running cell says: its nexus index and whether it keeps its log.
pub(crate) mod live;
/// Restore to a point: the base backup and entries chosen, applied to the staged copy.
pub(crate) mod replay;
/// Archive segments no kept backup needs, removed after a prune.
pub(crate) mod retain;
/// The archiver's failure record, which `status` reads.
pub(crate) mod state;
/// `nexus-trim`: the cell's log trimmed no further than archive and mirrors.
pub(crate) mod trim;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::exit::{fail, Code};
use crate::instance::config::Instance;

/// A restore to a point, as the restore runs it on its staged copy.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub(crate) plan: replay::Plan,
    /// The service's Python (Synapse's code applies the entries).
    pub(crate) python: PathBuf,
}

impl Replay {
    /// Plan a restore of `inst` to `point` (the base backup is `plan.backup`).
    pub(crate) fn prepare(inst: &Instance, point: &replay::Point) -> Result<Replay> {
        let python = service_python(inst)?;
        let plan = replay::plan(inst, point)?;
        log::info!(
            "restore to nexus index {}{}: base backup {} (index {}), then {} archived entries",
            plan.to,
            plan.clock_said(),
            plan.backup.display(),
            plan.from,
            plan.entries()
        );
        Ok(Replay { plan, python })
    }

    /// Apply the entries to the staged copy `staged`, then flush it to disk.
    pub(crate) fn apply(&self, staged: &Path) -> Result<replay::Applied> {
        let applied = replay::apply(&self.plan, staged, &self.python)?;
        // The helper's unix socket, made by the replay, is not part of the copy.
        let sock = staged.join("sock");
        if std::fs::symlink_metadata(&sock)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            std::fs::remove_file(&sock)
                .with_context(|| format!("cannot remove {}", sock.display()))?;
        }
        let f = std::fs::File::open(staged)
            .with_context(|| format!("cannot open {}", staged.display()))?;
        nix::unistd::syncfs(&f).with_context(|| format!("cannot flush {}", staged.display()))?;
        Ok(applied)
    }
}

/// The Python that runs the service: SYNBACKUP_DRILL_PYTHON, else the unit's
/// `ExecStart`.
fn service_python(inst: &Instance) -> Result<PathBuf> {
    if let Some(p) = &inst.drill_python {
        return Ok(p.clone());
    }
    if let Some(u) = &inst.service_unit {
        let pm = crate::host::execstart::of_unit(u)?;
        return Ok(PathBuf::from(pm.python));
    }
    Err(fail(
        Code::Usage,
        format!(
            "restore --to applies the archived entries with the service's own Python: set SYNBACKUP_SERVICE_UNIT or SYNBACKUP_DRILL_PYTHON in the configuration of {}",
            inst.name
        ),
    ))
}
