// SPDX-License-Identifier: Apache-2.0
//! The record of a freeze in progress, under the lock directory (`/run/synbackup`
//! by default, `--lock-dir`): `frozen-ESCAPED-SOCKET.json` with the holder's pid,
//! the socket and when it froze. Removed once the resume is confirmed. A run that
//! finds one whose holder is dead checks the service and, if it is still paused,
//! resumes it and says so: the last line of defence after a SIGKILL that also
//! killed the guardian (`systemctl kill -s KILL` signals the whole unit).
//!
//! Best effort: a user who cannot write the directory (a plain `synbackup backup`
//! as the service's user) gets a debug line and no record.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::engine::resume::{ensure_resumed, Resumed, RESUME_BOUND};
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

#[derive(Serialize, Deserialize)]
struct Content {
    pid: u32,
    sock: PathBuf,
    since: String,
}

/// A written record; [`Record::remove`] once the service is confirmed resumed.
pub(crate) struct Record {
    path: PathBuf,
}

impl Record {
    /// Record that this process is about to freeze the service at `sock`.
    pub(crate) fn write(sock: &Path) -> Option<Record> {
        let path = path_for(sock);
        match write_file(&path, sock) {
            Ok(()) => Some(Record { path }),
            Err(e) => {
                log::debug!("no freeze record: {e:#}");
                None
            }
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

fn write_file(path: &Path, sock: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let content = Content {
        pid: std::process::id(),
        sock: sock.to_path_buf(),
        since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(&content)?)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(())
}

/// True while process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A freeze of `sock` recorded by a process that is gone: resume the service if it
/// is still paused (and log that), then drop the record. A record of a live
/// process is left alone.
pub(crate) fn recover_stale(sock: &Path) -> Result<()> {
    let path = path_for(sock);
    let Ok(bytes) = fs::read(&path) else {
        return Ok(());
    };
    let Ok(rec) = serde_json::from_slice::<Content>(&bytes) else {
        log::warn!("ignoring unreadable freeze record {}", path.display());
        return Ok(());
    };
    if rec.pid != std::process::id() && alive(rec.pid) {
        log::info!(
            "{} records a freeze by pid {} that still runs; leaving it",
            path.display(),
            rec.pid
        );
        return Ok(());
    }
    let paused = Client::connect(sock, std::time::Duration::from_secs(10))
        .and_then(|mut c| c.paused())
        .unwrap_or(true);
    if paused {
        let outcome = ensure_resumed(sock, RESUME_BOUND)?;
        if outcome == Resumed::Now {
            log::warn!(
                "synbackup pid {} froze the service at {} at {} and died; it was still paused: resumed it",
                rec.pid,
                sock.display(),
                rec.since
            );
        }
    } else {
        log::info!(
            "synbackup pid {} froze the service at {} at {} and died; the service was resumed since",
            rec.pid,
            sock.display(),
            rec.since
        );
    }
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_flat_and_distinct() {
        let a = path_for(Path::new("/data/cortex00/sock"));
        assert_eq!(a.file_name().unwrap(), "frozen-data-cortex00-sock.json");
        let b = path_for(Path::new("/data/cortex 00/sock"));
        assert_eq!(b.file_name().unwrap(), "frozen-data-cortex%2000-sock.json");
    }
}
