// SPDX-License-Identifier: Apache-2.0
//! A backup taken on a mirror instead of its leader: the leader is asked for its
//! nexus index when the run starts (`getCellInfo`, never frozen), and the mirror is
//! given a bounded time to apply every change before that index (Synapse's
//! `waitNexsOffs(index - 1, timeout=...)`, the call its own handoff makes) before
//! it is frozen for the snapshots. Synapse (`synapse/lib/nexus.py`, the same on
//! 2.256 and 3.7.0) applies a leader's changes on a mirror in order and under the
//! mirror's nexus lock, which its freeze takes: a mirror frozen at index N holds
//! exactly the leader's changes before N, and a backup of it is a backup of the
//! leader at N.
//!
//! Whatever keeps a mirror from being used comes back as a [`NotReady`] line, for
//! the caller's policy (fail, back up the leader, skip); only this module talks to
//! the leader, and only to ask. The leader may be a service directory here or a
//! telepath URL (a leader on another host, the mirror on this one); a URL is only
//! ever shown with its password masked.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use rmpv::Value;

use crate::base::units::format_duration;
use crate::engine::cellstate::CellState;
use crate::engine::telepath::Client;
use crate::engine::teleurl::Endpoint;

/// How long a connection to a cell's socket may take to answer a plain call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the leader said when the run started.
#[derive(Debug, Clone)]
pub(crate) struct LeaderAt {
    /// Where it answered: its directory, or its URL.
    pub(crate) at: Endpoint,
    pub(crate) iden: String,
    /// Its nexus index: every change before it must be in the backup.
    pub(crate) nexus_index: u64,
}

/// A mirror that applied every change before the leader's index.
#[derive(Debug, Clone)]
pub(crate) struct MirrorReady {
    pub(crate) dir: PathBuf,
    /// Its index once it had caught up (it may be ahead of the leader's at start).
    pub(crate) nexus_index: u64,
    /// How long it took to catch up.
    pub(crate) waited: Duration,
}

/// A backup to take on a mirror: the leader at the start, the mirror caught up.
#[derive(Debug, Clone)]
pub(crate) struct OnMirror {
    pub(crate) leader: LeaderAt,
    pub(crate) mirror: MirrorReady,
}

/// Why no backup can be taken on a mirror: one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotReady(pub(crate) String);

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `getCellInfo()` of the cell at a directory or URL.
pub(crate) fn state_at(at: &Endpoint) -> Result<CellState> {
    Client::open(at, CALL_TIMEOUT)?.cell_state()
}

/// Ask the leader at `at` for its iden and nexus index (it must answer, and be
/// the leader).
pub(crate) fn leader_at_start(at: &Endpoint) -> Result<LeaderAt, NotReady> {
    let state = state_at(at).map_err(|e| {
        NotReady(format!(
            "the leader at {at} does not answer ({e:#}), so its nexus index cannot be read"
        ))
    })?;
    if !state.active {
        return Err(NotReady(format!(
            "{at} is not the leader (getCellInfo says it follows {}): fix SYNBACKUP_LEADER",
            state.upstream.as_deref().unwrap_or("another cell")
        )));
    }
    Ok(LeaderAt {
        at: at.clone(),
        iden: state.iden,
        nexus_index: state.nexus_index,
    })
}

/// Check the mirror in `dir` and wait up to `wait` for it to apply every change
/// before `leader`'s index.
pub(crate) fn wait_for_mirror(
    dir: &Path,
    leader: &LeaderAt,
    wait: Duration,
) -> Result<MirrorReady, NotReady> {
    let t0 = Instant::now();
    let sock = dir.join("sock");
    let not_ready = |why: String| NotReady(format!("the mirror at {}: {why}", dir.display()));
    let mut client = Client::connect(&sock, CALL_TIMEOUT)
        .map_err(|e| not_ready(format!("does not answer ({e:#})")))?;
    let state = client
        .cell_state()
        .map_err(|e| not_ready(format!("getCellInfo failed ({e:#})")))?;
    check_is_mirror_of(&state, leader).map_err(not_ready)?;
    let want = leader.nexus_index;
    if state.nexus_index < want {
        log::info!(
            "the mirror at {} is at nexus index {}, the leader at {want}: waiting up to {} for it (SYNBACKUP_MIRROR_WAIT)",
            dir.display(),
            state.nexus_index,
            format_duration(wait)
        );
        let applied = wait_nexus_offset(&mut client, want - 1, wait)
            .map_err(|e| not_ready(format!("waitNexsOffs failed ({e:#})")))?;
        if !applied {
            let now = client.cell_state().map(|s| s.nexus_index).ok();
            return Err(not_ready(format!(
                "did not reach the leader's nexus index {want} within {} (SYNBACKUP_MIRROR_WAIT; it is at {}{})",
                format_duration(wait),
                now.unwrap_or(state.nexus_index),
                if state.uplink { "" } else { ", not connected to its leader" }
            )));
        }
    }
    let now = client
        .cell_state()
        .map_err(|e| not_ready(format!("getCellInfo failed ({e:#})")))?;
    Ok(MirrorReady {
        dir: dir.to_path_buf(),
        nexus_index: now.nexus_index,
        waited: t0.elapsed(),
    })
}

/// The cell is a mirror of `leader`'s cell, and not frozen by someone else.
fn check_is_mirror_of(state: &CellState, leader: &LeaderAt) -> Result<(), String> {
    if state.iden != leader.iden {
        return Err(format!(
            "is the cell {}, not the leader's {} (fix SYNBACKUP_MIRRORS)",
            state.iden, leader.iden
        ));
    }
    if state.active {
        return Err(format!(
            "is a leader of the same cell, not a mirror of {} (a promoted mirror? fix SYNBACKUP_MIRRORS or SYNBACKUP_LEADER)",
            leader.at
        ));
    }
    if state.paused {
        return Err("is frozen, not by this run (it cannot apply the leader's changes; whoever froze it must resume it)".into());
    }
    Ok(())
}

/// `waitNexsOffs(offs, timeout=...)`: true once the cell's nexus log holds `offs`,
/// false when `wait` passed first.
fn wait_nexus_offset(client: &mut Client, offs: u64, wait: Duration) -> Result<bool> {
    client.set_timeout(wait + CALL_TIMEOUT)?;
    let answer = client.call(
        "waitNexsOffs",
        vec![Value::from(offs)],
        vec![("timeout", Value::from(wait.as_secs_f64()))],
    )?;
    client.set_timeout(CALL_TIMEOUT)?;
    Ok(answer.as_bool().unwrap_or(false))
}

/// Where the leader's nexus log stands for a mirror at `offs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holds {
    /// It holds every entry from `offs` to its index (or `offs` is its index).
    Yes,
    /// Its first entry from `offs` on is this later one: the entries between were
    /// culled (a mirror at `offs` would stop, "out of sync").
    From(u64),
    /// It holds no entry from `offs` on, though its index is greater (its log was
    /// culled, or `nexslog:en` is off).
    None,
}

/// Ask the leader in `dir`, whose index is `index`, whether it still holds its
/// nexus entries from `offs` on: what a mirror at `offs` asks for first
/// (`getNexusChanges(offs)`, `synapse/lib/nexus.py` `runMirrorLoop`). Only the
/// first entry is read (`wait=False`: the stream ends at the leader's index).
pub(crate) fn leader_holds_from(at: &Endpoint, offs: u64, index: u64) -> Result<Holds> {
    if offs >= index {
        return Ok(Holds::Yes);
    }
    let mut client = Client::open(at, CALL_TIMEOUT)?;
    let mut stream = client.stream(
        "getNexusChanges",
        vec![Value::from(offs)],
        vec![("wait", Value::from(false))],
    )?;
    let first = match stream.next_within(Some(CALL_TIMEOUT))? {
        crate::engine::telepath::Next::Item(y) => y
            .value
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                anyhow::anyhow!("getNexusChanges yielded {}, not [offset, entry]", y.value)
            })?,
        crate::engine::telepath::Next::End => return Ok(Holds::None),
        crate::engine::telepath::Next::Idle => anyhow::bail!(
            "getNexusChanges({offs}) on {at} sent nothing within {}",
            format_duration(CALL_TIMEOUT)
        ),
    };
    Ok(if first == offs {
        Holds::Yes
    } else {
        Holds::From(first)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(iden: &str, active: bool, paused: bool) -> CellState {
        CellState {
            iden: iden.into(),
            run: "r".into(),
            paused,
            active,
            upstream: None,
            nexus_index: 5,
            uplink: true,
            version: None,
        }
    }

    #[test]
    fn only_an_unfrozen_mirror_of_the_leaders_cell_is_used() {
        let leader = LeaderAt {
            at: Endpoint::Dir("/srv/l".into()),
            iden: "c0".into(),
            nexus_index: 9,
        };
        assert_eq!(
            check_is_mirror_of(&state("c0", false, false), &leader),
            Ok(())
        );
        let other = check_is_mirror_of(&state("c1", false, false), &leader).unwrap_err();
        assert!(
            other.contains("is the cell c1, not the leader's c0"),
            "{other}"
        );
        let promoted = check_is_mirror_of(&state("c0", true, false), &leader).unwrap_err();
        assert!(promoted.contains("not a mirror of /srv/l"), "{promoted}");
        let frozen = check_is_mirror_of(&state("c0", false, true), &leader).unwrap_err();
        assert!(frozen.contains("is frozen"), "{frozen}");
    }
}
