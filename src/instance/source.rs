// SPDX-License-Identifier: Apache-2.0
//! Where a nightly run takes its backup from: the leader (the instance's own
//! directory unless `SYNBACKUP_LEADER` names another), or one of the leader's
//! mirrors on this host (`SYNBACKUP_MIRRORS`), so that the leader is never frozen
//! (`SYNBACKUP_SOURCE`), and what to do when no mirror is ready
//! (`SYNBACKUP_NO_MIRROR`). The settings, checked together; choosing a mirror at
//! run time is `nightly::source`.

use std::path::PathBuf;
use std::time::Duration;

/// `SYNBACKUP_SOURCE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceMode {
    /// The leader, frozen for the snapshots (what every run did before mirrors).
    Leader,
    /// A mirror that caught up with the leader; else `SYNBACKUP_NO_MIRROR`.
    Mirror,
    /// A mirror that caught up with the leader, else the leader.
    Auto,
}

impl SourceMode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SourceMode::Leader => "leader",
            SourceMode::Mirror => "mirror",
            SourceMode::Auto => "auto",
        }
    }
}

/// `SYNBACKUP_NO_MIRROR`: what a run from a mirror does when none is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoMirror {
    /// The run fails (exit code 13); no backup.
    Fail,
    /// The leader is backed up, frozen as `SYNBACKUP_FREEZE` says.
    Leader,
    /// No backup: the run is recorded `skipped` and exits 0.
    Skip,
}

impl NoMirror {
    pub(crate) fn name(self) -> &'static str {
        match self {
            NoMirror::Fail => "fail",
            NoMirror::Leader => "leader",
            NoMirror::Skip => "skip",
        }
    }
}

/// The sources of an instance's backups.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub(crate) mode: SourceMode,
    /// The leader's service directory (its `sock` is asked for the nexus index).
    pub(crate) leader: PathBuf,
    /// The mirrors' service directories, tried in this order.
    pub(crate) mirrors: Vec<PathBuf>,
    /// What `Mirror` does when no mirror is ready (`Auto`: always `Leader`).
    pub(crate) no_mirror: NoMirror,
    /// How long each mirror is given to apply the leader's index.
    pub(crate) wait: Duration,
}

impl Sources {
    /// The settings' combination, or what to fix (for "FILE: ...").
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.mode != SourceMode::Leader && self.mirrors.is_empty() {
            return Err(format!(
                "SYNBACKUP_SOURCE={} needs SYNBACKUP_MIRRORS: set it to the mirrors' service directories, or set SYNBACKUP_SOURCE=leader",
                self.mode.name()
            ));
        }
        if let Some(m) = self.mirrors.iter().find(|m| **m == self.leader) {
            return Err(format!(
                "SYNBACKUP_MIRRORS names the leader's directory {} (SYNBACKUP_LEADER, else SYNBACKUP_SERVICE_DIR): list only its mirrors",
                m.display()
            ));
        }
        Ok(())
    }
}
