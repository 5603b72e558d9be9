// SPDX-License-Identifier: Apache-2.0
//! The archiver's own failure record, `STATE_DIR/INSTANCE.nexus-archive.json`, for
//! `synbackup status`: written when the archiver stops on an error (a full file
//! system, say), with the error and the offset up to which the archive is on
//! disk; removed once a later run has caught up with the cell again.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::base::fsutil;

/// The record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Failed {
    /// When it stopped (RFC 3339, UTC).
    pub(crate) at: String,
    /// Why, in one line.
    pub(crate) error: String,
    /// The archive holds every entry before this offset, durably (None: empty).
    pub(crate) archived_to: Option<u64>,
}

/// Where the record of `instance` lives.
pub(crate) fn path(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join(format!("{instance}.nexus-archive.json"))
}

/// Record that the archiver stopped on `error`.
pub(crate) fn record_failure(file: &Path, error: &str, archived_to: Option<u64>) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fsutil::write_error(dir, e))?;
    }
    let rec = Failed {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        error: error.to_string(),
        archived_to,
    };
    fsutil::write_atomic(file, &serde_json::to_vec_pretty(&rec)?, 0o644)
}

/// Forget a failure: the archiver has caught up with the cell again.
pub(crate) fn clear(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Ok(()) => {
            log::info!(
                "caught up again since the failure recorded in {}",
                file.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fsutil::write_error(file, e)),
    }
}

/// What `status` says about the archiver of `instance`: its last failure, if it
/// has not caught up since.
pub(crate) fn problem(state_dir: &Path, instance: &str) -> Option<String> {
    let file = path(state_dir, instance);
    let bytes = std::fs::read(&file).ok()?;
    let Ok(f) = serde_json::from_slice::<Failed>(&bytes) else {
        return Some(format!(
            "the nexus archiver's failure record {} does not parse",
            file.display()
        ));
    };
    let to = match f.archived_to {
        Some(n) => format!("entries before offset {n} are archived"),
        None => "nothing is archived yet".to_string(),
    };
    Some(format!(
        "the nexus archiver stopped at {}: {} ({to}; it has not caught up with the cell since)",
        f.at, f.error
    ))
}
