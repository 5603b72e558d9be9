// SPDX-License-Identifier: Apache-2.0
//! The private temporary a backup is written under: `.NAME.synbackup-partial.PID`
//! beside the destination, removed on failure (and only it), renamed into place on
//! success. Nothing mistakes one for a backup.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::base::fsutil;

/// The marker in a temporary's name: `.NAME.synbackup-partial.PID`.
pub(crate) const PARTIAL_MARK: &str = ".synbackup-partial.";

/// The temporary directory, removed on drop unless published.
pub(crate) struct Partial {
    path: PathBuf,
    armed: bool,
}

impl Partial {
    /// Create the temporary for `dst`, private (0700) while it is filled.
    pub(crate) fn create(dst: &Path) -> Result<Partial> {
        let path = partial_path(dst);
        fs::create_dir(&path).map_err(|e| fsutil::write_error(&path, e))?;
        let partial = Partial { path, armed: true };
        fs::set_permissions(&partial.path, fs::Permissions::from_mode(0o700))?;
        Ok(partial)
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Published: no longer ours to remove.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                log::error!(
                    "could not remove the partial backup {}: {e}",
                    self.path.display()
                );
            } else {
                log::info!("removed the partial backup {}", self.path.display());
            }
        }
    }
}

/// The temporary's path for a final destination.
pub(crate) fn partial_path(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dst.with_file_name(format!(".{name}{PARTIAL_MARK}{}", std::process::id()))
}
