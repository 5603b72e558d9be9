// SPDX-License-Identifier: Apache-2.0
//! Where a nightly run takes its backup from: the leader (the instance's own
//! directory unless `SYNBACKUP_LEADER` names another directory or a telepath
//! URL), or one of the leader's mirrors on this host (`SYNBACKUP_MIRRORS`), so
//! that the leader is never frozen (`SYNBACKUP_SOURCE`), and what to do when no
//! mirror is ready (`SYNBACKUP_NO_MIRROR`). The settings, checked together;
//! choosing a mirror at run time is `nightly::source`.
//!
//! A mirror named by URL is on another host: its files cannot be copied, so it is
//! never a backup source (a run skips it); restore asks it for its nexus index.

use std::path::Path;
use std::time::Duration;

use crate::engine::teleurl::Endpoint;

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
    /// The leader: its service directory (its `sock` is asked for the nexus
    /// index) or its telepath URL.
    pub(crate) leader: Endpoint,
    /// The mirrors: service directories here (tried in this order) or URLs.
    pub(crate) mirrors: Vec<Endpoint>,
    /// What `Mirror` does when no mirror is ready (`Auto`: always `Leader`).
    pub(crate) no_mirror: NoMirror,
    /// `SYNBACKUP_LEADER` was set (else the leader is what a mirror follows, or
    /// the instance's directory).
    pub(crate) leader_set: bool,
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
        if self.mode != SourceMode::Leader && self.local_mirrors().next().is_none() {
            return Err(format!(
                "SYNBACKUP_SOURCE={} backs up a mirror on this host, but SYNBACKUP_MIRRORS names only URLs (their files are on other hosts): add a mirror's service directory, or set SYNBACKUP_SOURCE=leader",
                self.mode.name()
            ));
        }
        if let Some(m) = self.mirrors.iter().find(|m| **m == self.leader) {
            return Err(format!(
                "SYNBACKUP_MIRRORS names the leader {m} (SYNBACKUP_LEADER, else SYNBACKUP_SERVICE_DIR): list only its mirrors"
            ));
        }
        let backs_up_leader = self.no_mirror == NoMirror::Leader || self.mode == SourceMode::Leader;
        if backs_up_leader && self.leader.dir().is_none() {
            let policy = if self.mode == SourceMode::Leader {
                String::new()
            } else {
                format!(" with SYNBACKUP_NO_MIRROR={}", self.no_mirror.name())
            };
            return Err(format!(
                "SYNBACKUP_SOURCE={}{policy} backs up the leader's files, but SYNBACKUP_LEADER is the URL {} (another host): back up a mirror here with SYNBACKUP_SOURCE=mirror and SYNBACKUP_NO_MIRROR=fail or skip",
                self.mode.name(),
                self.leader
            ));
        }
        Ok(())
    }

    /// The nightly unit may need the network: the leader is a URL, or (from a
    /// mirror, SYNBACKUP_LEADER unset) it is read from a mirror's `cell.yaml` at
    /// run time, which may name a URL the generator could not read at boot.
    pub(crate) fn may_ask_over_network(&self) -> bool {
        self.leader.url().is_some() || (self.mode != SourceMode::Leader && !self.leader_set)
    }

    /// The mirrors whose files are on this host, in order: the backup sources.
    pub(crate) fn local_mirrors(&self) -> impl Iterator<Item = &Path> {
        self.mirrors.iter().filter_map(Endpoint::dir)
    }
}
