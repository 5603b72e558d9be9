// SPDX-License-Identifier: Apache-2.0
//! The manifest: what a backup contains and how to prove it is intact.
//!
//! `synbackup-manifest.json` sits at the top of every backup (Synapse ignores it, so
//! the backup stays a valid service directory). Format `synbackup-manifest/1`:
//!
//! - `tool`, `version`: who wrote it; `source`, `host`, `cell_guid`;
//! - `started`, `finished` (RFC 3339, UTC); `freeze`: `{mode, frozen, ms}`;
//! - `files`: every regular file (LMDB `data.mdb` included) with `path` (relative),
//!   `size`, `sha256` (of the bytes as they were written) and `mode`;
//! - `symlinks`: `path` and `target`; `dirs`: `path` and `mode`;
//! - `environments`: per LMDB environment `path`, `page_size`, `last_pgno`,
//!   `source_bytes` (space its data.mdb took at the source) and `databases`, the
//!   entry count of every named database (names that are not UTF-8 as `hex:...`),
//!   with `(main)` for the main database's own records.
//!
//! Writers add fields, never change the meaning of one; readers ignore unknown ones.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::exit::{fail, Code};

/// The manifest's file name at the top of a backup.
pub(crate) const MANIFEST_NAME: &str = "synbackup-manifest.json";
/// The marker written into a backup that passed verification before it was
/// published (ignored by `verify`, like the manifest).
pub(crate) const VERIFIED_MARK: &str = "synbackup-verified";
/// The format identifier.
pub(crate) const FORMAT: &str = "synbackup-manifest/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    pub(crate) tool: String,
    pub(crate) version: String,
    pub(crate) source: String,
    pub(crate) host: String,
    pub(crate) cell_guid: Option<String>,
    pub(crate) started: String,
    pub(crate) finished: String,
    pub(crate) freeze: FreezeInfo,
    pub(crate) files: Vec<FileEntry>,
    #[serde(default)]
    pub(crate) symlinks: Vec<LinkEntry>,
    #[serde(default)]
    pub(crate) dirs: Vec<DirEntry>,
    pub(crate) environments: Vec<EnvEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FreezeInfo {
    pub(crate) mode: String,
    pub(crate) frozen: bool,
    pub(crate) ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct FileEntry {
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LinkEntry {
    pub(crate) path: String,
    pub(crate) target: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DirEntry {
    pub(crate) path: String,
    pub(crate) mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EnvEntry {
    pub(crate) path: String,
    pub(crate) page_size: u64,
    pub(crate) last_pgno: u64,
    pub(crate) source_bytes: u64,
    pub(crate) databases: BTreeMap<String, u64>,
}

/// The manifest's key for a database name.
pub(crate) fn db_key(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) if !s.starts_with("hex:") && s != MAIN_DB => s.to_string(),
        _ => format!("hex:{}", crate::base::fsutil::hex(name)),
    }
}

/// The key under which the main database's own record count is kept.
pub(crate) const MAIN_DB: &str = "(main)";

impl Manifest {
    /// Read the manifest of the backup at `dir`.
    pub(crate) fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_NAME);
        let bytes = std::fs::read(&path).map_err(|e| {
            fail(
                Code::Verify,
                format!(
                    "cannot read {}: {e}; not a complete synbackup backup",
                    path.display()
                ),
            )
        })?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                Code::Verify,
                format!("{} is not a valid manifest: {e}", path.display()),
            )
        })?;
        if m.format != FORMAT {
            return Err(fail(
                Code::Verify,
                format!(
                    "{}: unknown format {:?} (this synbackup reads {FORMAT})",
                    path.display(),
                    m.format
                ),
            ));
        }
        Ok(m)
    }

    pub(crate) fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).context("cannot encode the manifest")?;
        v.push(b'\n');
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_keys() {
        assert_eq!(db_key(b"nodes"), "nodes");
        assert_eq!(db_key(b"\xff\x00"), "hex:ff00");
        assert_eq!(db_key(b"hex:ab"), "hex:6865783a6162");
        assert_eq!(db_key(b"(main)"), "hex:286d61696e29");
    }
}
