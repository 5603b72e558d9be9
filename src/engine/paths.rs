// SPDX-License-Identifier: Apache-2.0
//! The two paths a backup starts from, checked before anything is written: SRC is a
//! Synapse service directory, DST is new (or empty), outside SRC, its parent made.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::exit::{fail, Code};

pub(crate) fn bad(msg: String) -> anyhow::Error {
    fail(Code::BadPath, msg)
}

/// Check SRC: an existing Synapse service directory. Returns its canonical path.
pub(crate) fn check_source(src: &Path) -> Result<PathBuf> {
    let canon = fs::canonicalize(src).map_err(|e| {
        bad(format!(
            "source {} cannot be used: {e}; give the service's directory",
            src.display()
        ))
    })?;
    if !canon.is_dir() {
        return Err(bad(format!(
            "source {} is not a directory; give the service's directory",
            src.display()
        )));
    }
    if !canon.join("cell.guid").is_file() {
        return Err(bad(format!(
            "source {} is not a Synapse service directory (no cell.guid); give the directory the service was started with",
            src.display()
        )));
    }
    Ok(canon)
}

/// Check DST against SRC; create its parent if needed. Returns the absolute DST.
pub(crate) fn check_destination(src: &Path, dst: &Path) -> Result<PathBuf> {
    let abs =
        std::path::absolute(dst).with_context(|| format!("bad destination {}", dst.display()))?;
    let name = abs
        .file_name()
        .ok_or_else(|| {
            bad(format!(
                "destination {} has no name; give a new directory path",
                dst.display()
            ))
        })?
        .to_owned();
    let parent = abs.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| {
        bad(format!(
            "cannot create {}: {e}; create it or choose another destination",
            parent.display()
        ))
    })?;
    let parent = fs::canonicalize(parent).map_err(|e| {
        bad(format!(
            "destination {} cannot be used: {e}",
            parent.display()
        ))
    })?;
    let dst = parent.join(name);
    if dst.starts_with(src) {
        return Err(bad(format!(
            "destination {} is inside the source {}; choose a destination outside the service directory",
            dst.display(),
            src.display()
        )));
    }
    match fs::symlink_metadata(&dst) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(bad(format!(
                "destination {} cannot be used: {e}",
                dst.display()
            )))
        }
        Ok(m) if m.is_dir() => {
            let mut entries = fs::read_dir(&dst)
                .map_err(|e| bad(format!("cannot read {}: {e}", dst.display())))?;
            if entries.next().is_some() {
                return Err(bad(format!(
                    "destination {} exists and is not empty; choose a new path (nothing was written)",
                    dst.display()
                )));
            }
        }
        Ok(_) => {
            return Err(bad(format!(
                "destination {} exists and is not a directory; choose a new path",
                dst.display()
            )))
        }
    }
    Ok(dst)
}
