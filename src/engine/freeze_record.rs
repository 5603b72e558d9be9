// SPDX-License-Identifier: Apache-2.0
//! The record of a freeze in progress, under the lock directory (`/run/synbackup`
//! by default, `--lock-dir`): `frozen-ESCAPED-SOCKET.json` with the holder's pid,
//! the socket and when it froze, and what proves the freeze is ours: the cell's
//! iden, the id of its boot (`run`) and its nexus index, read before the freeze
//! call (`index_before`) and, once the cell confirmed it is frozen, while frozen
//! (`nexus_index`). Removed once the resume is confirmed. A run that finds one
//! whose holder is dead checks the service and resumes it only when the freeze in
//! place is provably that one (the last line of defence after a SIGKILL that also
//! killed the guardian: `systemctl kill -s KILL` signals the whole unit):
//!
//! - the cell runs the same boot (a restart ends every freeze) and it is frozen;
//! - its nexus index is the one recorded while frozen: a frozen cell's index
//!   cannot move (its nexus lock is held), so a different index means the freeze
//!   was resumed and the cell changed since, and the freeze now in place is
//!   someone else's (an operator's volume snapshot);
//! - a record not confirmed (the holder died inside the freeze call) counts only
//!   when the index is still the one read just before the call.
//!
//! Anything else is left frozen, the record dropped and the reason logged, and the
//! backup then fails as for any freeze it did not make. What cannot be told apart:
//! someone who resumed the dead run's freeze and froze the cell again before any
//! change reached its nexus (same boot, same index) is taken for the dead run.
//!
//! Best effort: a user who cannot write the directory (a plain `synbackup backup`
//! as the service's user) gets a debug line and no record.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::engine::cellstate::CellState;
use crate::engine::resume::{ensure_resumed, nothing_listens, Resumed, RESUME_BOUND};
use crate::engine::telepath::Client;

/// Where records go (set once from `--lock-dir`).
static DIR: OnceLock<PathBuf> = OnceLock::new();
const DEFAULT_DIR: &str = "/run/synbackup";

/// Use `dir` for freeze records (call once, before any backup).
pub(crate) fn set_dir(dir: &Path) {
    let _ = DIR.set(dir.to_path_buf());
}

fn dir() -> PathBuf {
    DIR.get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// The record's file for `sock`: its path, `/` as `-`, other bytes outside
/// `[A-Za-z0-9._]` as `%XX`.
fn path_for(sock: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut name = String::from("frozen");
    for &b in sock.as_os_str().as_bytes() {
        match b {
            b'/' => name.push('-'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' => name.push(b as char),
            _ => name.push_str(&format!("%{b:02X}")),
        }
    }
    name.push_str(".json");
    dir().join(name)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Content {
    pid: u32,
    sock: PathBuf,
    since: String,
    /// The cell's iden, boot and nexus index before the freeze call.
    #[serde(default)]
    iden: Option<String>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    index_before: Option<u64>,
    /// The nexus index while frozen (None: the freeze was never confirmed).
    #[serde(default)]
    nexus_index: Option<u64>,
}

/// A written record; [`Record::remove`] once the service is confirmed resumed.
pub(crate) struct Record {
    path: PathBuf,
    content: Content,
}

impl Record {
    /// Record that this process is about to freeze the service at `sock`, which
    /// said `before` just now.
    pub(crate) fn write(sock: &Path, before: &CellState) -> Option<Record> {
        let path = path_for(sock);
        let content = Content {
            pid: std::process::id(),
            sock: sock.to_path_buf(),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            iden: Some(before.iden.clone()),
            run: Some(before.run.clone()),
            index_before: Some(before.nexus_index),
            nexus_index: None,
        };
        match write_file(&path, &content) {
            Ok(()) => Some(Record { path, content }),
            Err(e) => {
                log::debug!("no freeze record: {e:#}");
                None
            }
        }
    }

    /// The cell confirmed the freeze and said `frozen`: record its nexus index.
    pub(crate) fn confirm(&mut self, frozen: &CellState) {
        self.content.nexus_index = Some(frozen.nexus_index);
        if let Err(e) = write_file(&self.path, &self.content) {
            log::warn!("cannot update the freeze record: {e:#}");
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The service is resumed: forget the freeze.
    pub(crate) fn remove(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

fn write_file(path: &Path, content: &Content) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(content)?)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(())
}

/// Whether the freeze `now` shows is the one `rec` recorded; Err: why not.
fn owned(rec: &Content, now: &CellState) -> std::result::Result<(), String> {
    if rec.iden.as_deref().is_some_and(|i| i != now.iden) {
        return Err(format!(
            "the socket now serves cell {}, not the recorded {}",
            now.iden,
            rec.iden.as_deref().unwrap_or("")
        ));
    }
    match &rec.run {
        None => {
            return Err(
                "the record holds no proof of the freeze (an older synbackup wrote it)".into(),
            )
        }
        Some(run) if *run != now.run => {
            return Err("the cell was restarted since, which ended that freeze".into())
        }
        Some(_) => {}
    }
    let (want, what) = match (rec.nexus_index, rec.index_before) {
        (Some(i), _) => (i, "while frozen"),
        (None, Some(i)) => (i, "just before its freeze call"),
        (None, None) => return Err("the record holds no nexus index".into()),
    };
    if now.nexus_index != want {
        return Err(format!(
            "the cell's nexus index is {} now, {want} {what}: it was resumed and changed since",
            now.nexus_index
        ));
    }
    Ok(())
}

/// A freeze of `sock` recorded by a process that is gone: resume the service if it
/// is still frozen by that freeze (and log that); a freeze it cannot prove is that
/// one is left alone, with the reason logged. The record is dropped either way. A
/// record of a live process is left alone.
pub(crate) fn recover_stale(sock: &Path) -> Result<()> {
    let path = path_for(sock);
    let Ok(bytes) = fs::read(&path) else {
        return Ok(());
    };
    let Ok(rec) = serde_json::from_slice::<Content>(&bytes) else {
        log::warn!("ignoring unreadable freeze record {}", path.display());
        return Ok(());
    };
    if rec.pid != std::process::id() && crate::base::process::alive(rec.pid) {
        log::info!(
            "{} records a freeze by pid {} that still runs; leaving it",
            path.display(),
            rec.pid
        );
        return Ok(());
    }
    let now = match Client::connect(sock, std::time::Duration::from_secs(10)) {
        Err(e) if nothing_listens(&e) => None,
        Err(e) => {
            return Err(e.context(format!(
                "cannot check the freeze {} records",
                path.display()
            )))
        }
        Ok(mut c) => Some(
            c.cell_state()
                .with_context(|| format!("cannot check the freeze {} records", path.display()))?,
        ),
    };
    let who = format!(
        "synbackup pid {} froze the service at {} at {} and died",
        rec.pid,
        sock.display(),
        rec.since
    );
    match now {
        None => log::info!("{who}; the service does not run now"),
        Some(now) if !now.paused => log::info!("{who}; the service was resumed since"),
        Some(now) => match owned(&rec, &now) {
            Ok(()) => {
                if ensure_resumed(sock, RESUME_BOUND)? == Resumed::Now {
                    log::warn!("{who}; it was still paused: resumed it");
                }
            }
            Err(why) => log::warn!(
                "{who}, but the freeze in place now is not that one ({why}): left frozen"
            ),
        },
    }
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(run: &str, index: u64) -> CellState {
        CellState {
            iden: "c0".into(),
            run: run.into(),
            paused: true,
            active: true,
            upstream: None,
            nexus_index: index,
            uplink: false,
            version: None,
        }
    }

    #[test]
    fn only_the_recorded_freeze_is_owned() {
        let mut rec = Content {
            pid: 1,
            sock: "/d/sock".into(),
            since: String::new(),
            iden: Some("c0".into()),
            run: Some("r1".into()),
            index_before: Some(40),
            nexus_index: Some(42),
        };
        assert_eq!(owned(&rec, &state("r1", 42)), Ok(()));
        assert!(owned(&rec, &state("r1", 43)).unwrap_err().contains("43"));
        assert!(owned(&rec, &state("r2", 42))
            .unwrap_err()
            .contains("restarted"));
        // Died inside the freeze call: only the index read before it counts.
        rec.nexus_index = None;
        assert_eq!(owned(&rec, &state("r1", 40)), Ok(()));
        assert!(owned(&rec, &state("r1", 42)).is_err());
        rec.run = None;
        assert!(owned(&rec, &state("r1", 40)).is_err());
    }

    #[test]
    fn record_names_are_flat_and_distinct() {
        let a = path_for(Path::new("/data/cortex00/sock"));
        assert_eq!(a.file_name().unwrap(), "frozen-data-cortex00-sock.json");
        let b = path_for(Path::new("/data/cortex 00/sock"));
        assert_eq!(b.file_name().unwrap(), "frozen-data-cortex%2000-sock.json");
    }
}
