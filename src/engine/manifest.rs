// SPDX-License-Identifier: Apache-2.0
//! The manifest: what a backup contains and how to prove it is intact.
//!
//! `synbackup-manifest.json` sits at the top of every backup (Synapse ignores it, so
//! the backup stays a valid service directory). Format `synbackup-manifest/3`:
//!
//! - `hash`: the algorithm of the file digests, `blake3` (the default) or `sha256`
//!   (`backup --hash sha256`); each file entry holds its digest under that name;
//! - `body_sha256`: SHA-256 of the manifest file as written with this field's value
//!   empty (`"body_sha256": ""`), so `sed 's/"body_sha256": "[0-9a-f]*"/"body_sha256": ""/'
//!   synbackup-manifest.json | sha256sum` recomputes it;
//! - `tool`, `version`: who wrote it; `source`, `host`, `cell_guid`;
//! - `started`, `finished` (RFC 3339, UTC); `freeze`: `{mode, frozen, ms}`, and `reason`
//!   when a service's socket was there but could not be connected to;
//! - `env_copy`: how the environments were copied: `compact` (LMDB's compacting
//!   copy; also what a manifest without the field means) or `plain` (`--no-compact`:
//!   every page in place, as `mdb_copy` without `-c`);
//! - `files`: every regular file (LMDB `data.mdb` included) with `path` (relative),
//!   `size`, `blake3` or `sha256` (of the full logical content: holes count as
//!   zeros, so it is what `b3sum` or `sha256sum` prints), `mode` (as given in the backup) and `xattrs`;
//! - `symlinks`: `path` and `target`, and `followed: true` for a link whose data was
//!   copied in its place (it pointed outside the tree, or was absolute);
//!   `dirs`: `path`, `mode` and `xattrs`;
//! - `environments`: per LMDB environment `path`, `page_size`, `last_pgno`,
//!   `source_bytes` (space its data.mdb took at the source) and `databases`, the
//!   entry count of every named database (names that are not UTF-8 as `hex:...`),
//!   with `(main)` for the main database's own records;
//! - `cert_dir` (only when the backup carries the service's certificate
//!   directory): `source` (where it was), `path` (where it is in the backup:
//!   `synbackup-certs`), `uid` and `gid` of its owner. Its files, directories and
//!   links are listed in `files`, `dirs` and `symlinks` like the others, under `path`.
//! - `cell` (only in a backup of a running cell, frozen for it; since synbackup
//!   0.1.0 of the mirrors work): what the cell said over telepath while it was
//!   frozen, at the moment of the snapshots: `iden` (its GUID), `nexus_index` (the
//!   offset its next change would have had: the backup holds every change before
//!   it), `role` (`leader` or `mirror`), `upstream` (the URL a mirror followed, as
//!   Synapse shows it) and `synapse_version`. A backup of a stopped cell has none;
//!   its nexus index is the one its files hold (`engine::nexus`). `verify` checks
//!   the recorded index against the files when there is one, and reads manifests
//!   without it as before.
//! - `from_mirror` (only in a backup a run took on a mirror, `SYNBACKUP_SOURCE`):
//!   `leader` (its service directory), `leader_nexus_index` (the leader's index
//!   when the run started: the backup holds every change before it), `mirror`
//!   (the directory backed up, also `source`), `nexus_index` (the mirror's at the
//!   snapshots, as `cell.nexus_index`: never less than `leader_nexus_index`) and
//!   `waited_ms` (how long the mirror took to catch up). The leader was asked,
//!   never frozen. Older readers ignore it; restore takes such a backup as one of
//!   the leader.
//!
//! Paths, link targets and xattr names that are not UTF-8 (or that begin with
//! `hex:`) are written `hex:` and the lower-case hex of their bytes; `xattrs` maps
//! each attribute name to the hex of its value (left out when there are none).
//! `synbackup-manifest/2` (no `hash`: SHA-256 digests under `sha256`) and
//! `synbackup-manifest/1` (also no `body_sha256`, `xattrs`, `followed`; lossy names)
//! are still read. Writers add fields, never change the meaning of one; readers ignore
//! unknown ones.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::digest::{self, Algo};
use crate::base::exit::{fail, Code};

/// The manifest's file name at the top of a backup.
pub(crate) const MANIFEST_NAME: &str = "synbackup-manifest.json";
/// The marker written into a backup that passed verification before it was
/// published (ignored by `verify`, like the manifest).
pub(crate) const VERIFIED_MARK: &str = "synbackup-verified";
/// The marker written into a published backup that a later verification (`verify`,
/// a restore's or a drill's) found damaged: the time and the problems. Removed when
/// a verification passes again. Ignored by `verify`, like the manifest.
pub(crate) const DAMAGED_MARK: &str = "synbackup-damaged";

/// True for the files synbackup itself keeps at the top of a backup, outside its
/// manifest: the manifest and the markers.
pub(crate) fn is_own_file(name: &str) -> bool {
    name == MANIFEST_NAME || name == VERIFIED_MARK || name == DAMAGED_MARK
}
/// Where a backup carries the service's certificate directory: a top-level
/// directory Synapse does not read (a cell reads `DIR/certs/`, `cell.yaml` and its
/// own files by name; its only walk of the directory, `onboot:optimize`, looks for
/// `data.mdb`), so a backup still starts as the service it is a backup of.
pub(crate) const CERTS_DIR: &str = "synbackup-certs";
/// The format identifier written.
pub(crate) const FORMAT: &str = "synbackup-manifest/3";
/// The previous format (SHA-256 only), still read.
pub(crate) const FORMAT_V2: &str = "synbackup-manifest/2";
/// The first format, still read.
pub(crate) const FORMAT_V1: &str = "synbackup-manifest/1";
/// The field holding the digest of the manifest's own body.
const BODY_FIELD: &str = "\"body_sha256\": \"";

/// Extended attributes: name key (see [`name_key`]) to the hex of the value.
pub(crate) type Xattrs = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    /// The digest algorithm of `files` (format 3); before it always SHA-256.
    #[serde(default = "sha256_name")]
    pub(crate) hash: String,
    /// Empty in v1 manifests and while the digest is computed.
    #[serde(default)]
    pub(crate) body_sha256: String,
    pub(crate) tool: String,
    pub(crate) version: String,
    pub(crate) source: String,
    pub(crate) host: String,
    pub(crate) cell_guid: Option<String>,
    pub(crate) started: String,
    pub(crate) finished: String,
    /// `compact` or `plain` (`CopyMode::name`).
    #[serde(default = "default_env_copy")]
    pub(crate) env_copy: String,
    pub(crate) freeze: FreezeInfo,
    pub(crate) files: Vec<FileEntry>,
    #[serde(default)]
    pub(crate) symlinks: Vec<LinkEntry>,
    #[serde(default)]
    pub(crate) dirs: Vec<DirEntry>,
    pub(crate) environments: Vec<EnvEntry>,
    /// The certificate directory carried in the backup (`engine::certdir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_dir: Option<CertDirInfo>,
    /// What the running cell said while frozen for this backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cell: Option<CellAtSnapshot>,
    /// The leader and mirror of a backup taken on a mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) from_mirror: Option<FromMirror>,
}

/// A backup taken on a mirror for its leader, which was never frozen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct FromMirror {
    /// The leader's service directory (a path key).
    pub(crate) leader: String,
    /// The leader's nexus index when the run started.
    pub(crate) leader_nexus_index: u64,
    /// The mirror's service directory (a path key).
    pub(crate) mirror: String,
    /// The mirror's nexus index at the snapshots.
    pub(crate) nexus_index: u64,
    /// How long the mirror took to apply the leader's index.
    pub(crate) waited_ms: f64,
}

/// What a running cell said over telepath while it was frozen for the backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CellAtSnapshot {
    pub(crate) iden: String,
    /// The nexus index at the snapshots.
    pub(crate) nexus_index: u64,
    /// `leader` or `mirror`.
    pub(crate) role: String,
    /// The upstream a mirror followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) synapse_version: Option<String>,
}

impl CellAtSnapshot {
    /// From the frozen cell's state.
    pub(crate) fn of(state: &crate::engine::cellstate::CellState) -> CellAtSnapshot {
        CellAtSnapshot {
            iden: state.iden.clone(),
            nexus_index: state.nexus_index,
            role: if state.active { "leader" } else { "mirror" }.to_string(),
            upstream: state.upstream.clone(),
            synapse_version: state.version.as_ref().map(|v| v.to_string()),
        }
    }
}

/// Where a carried certificate directory came from and who owned it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CertDirInfo {
    /// Its absolute path at the source (a path key: `hex:` when not UTF-8).
    pub(crate) source: String,
    /// Where it is in the backup, relative (`synbackup-certs`).
    pub(crate) path: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// What a manifest written before `env_copy` existed means: every copy compacted.
fn default_env_copy() -> String {
    "compact".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FreezeInfo {
    pub(crate) mode: String,
    pub(crate) frozen: bool,
    pub(crate) ms: Option<f64>,
    /// Why a service with a socket was not frozen (`--freeze auto` could not connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct FileEntry {
    pub(crate) path: String,
    pub(crate) size: u64,
    /// The digest when the manifest's `hash` is `sha256` (every v1 and v2 manifest).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) sha256: String,
    /// The digest when the manifest's `hash` is `blake3`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) blake3: String,
    pub(crate) mode: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) xattrs: Xattrs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LinkEntry {
    pub(crate) path: String,
    pub(crate) target: String,
    /// The link's data was copied in its place; the backup holds no link here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) followed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DirEntry {
    pub(crate) path: String,
    pub(crate) mode: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) xattrs: Xattrs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EnvEntry {
    pub(crate) path: String,
    pub(crate) page_size: u64,
    pub(crate) last_pgno: u64,
    pub(crate) source_bytes: u64,
    pub(crate) databases: BTreeMap<String, u64>,
}

fn sha256_name() -> String {
    Algo::Sha256.name().to_string()
}

impl FileEntry {
    /// The recorded digest of algorithm `algo` (empty when there is none).
    pub(crate) fn digest(&self, algo: Algo) -> &str {
        match algo {
            Algo::Blake3 => &self.blake3,
            Algo::Sha256 => &self.sha256,
        }
    }

    /// Record `digest` of algorithm `algo` (the other field stays empty).
    pub(crate) fn set_digest(&mut self, algo: Algo, digest: String) {
        match algo {
            Algo::Blake3 => self.blake3 = digest,
            Algo::Sha256 => self.sha256 = digest,
        }
    }
}

/// The manifest's key for a database name.
pub(crate) fn db_key(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) if !s.starts_with("hex:") && s != MAIN_DB => s.to_string(),
        _ => format!("hex:{}", crate::base::digest::hex(name)),
    }
}

/// The key under which the main database's own record count is kept.
pub(crate) const MAIN_DB: &str = "(main)";

/// A name or path as the manifest writes it: plain when it is UTF-8 (and does not
/// begin with `hex:`), else `hex:` and the hex of its bytes. Lossless.
pub(crate) fn name_key(name: &OsStr) -> String {
    crate::base::pathtext::key_of(name)
}

/// A relative path as the manifest writes it.
pub(crate) fn path_key(rel: &Path) -> String {
    name_key(rel.as_os_str())
}

/// The bytes of a name written by [`name_key`] (a v1 manifest's lossy name as is).
pub(crate) fn name_of(key: &str) -> OsString {
    crate::base::pathtext::name(key)
}

/// The relative path written by [`path_key`].
pub(crate) fn path_of(key: &str) -> PathBuf {
    PathBuf::from(name_of(key))
}

/// Xattrs as the manifest writes them: name key to the hex of the value.
pub(crate) fn xattr_keys(attrs: &crate::base::xattrs::Attrs) -> Xattrs {
    attrs
        .iter()
        .map(|(n, v)| (name_key(n), crate::base::digest::hex(v)))
        .collect()
}

/// The digest of a manifest file's bytes with its `body_sha256` value blanked.
fn body_digest(bytes: &[u8]) -> Option<String> {
    let field = BODY_FIELD.as_bytes();
    let at = bytes.windows(field.len()).position(|w| w == field)? + field.len();
    let len = bytes[at..].iter().position(|&b| b == b'"')?;
    let mut h = openssl::sha::Sha256::new();
    h.update(&bytes[..at]);
    h.update(&bytes[at + len..]);
    Some(crate::base::digest::hex(&h.finish()))
}

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
        if ![FORMAT, FORMAT_V2, FORMAT_V1].contains(&m.format.as_str()) {
            return Err(fail(
                Code::Verify,
                format!(
                    "{}: unknown format {:?} (this synbackup reads {FORMAT}, {FORMAT_V2} and {FORMAT_V1}); verify it with a newer synbackup",
                    path.display(),
                    m.format
                ),
            ));
        }
        if Algo::from_name(&m.hash).is_none() || (m.format != FORMAT && m.hash != sha256_name()) {
            return Err(fail(
                Code::Verify,
                format!(
                    "{}: unknown hash {:?} for {} (this synbackup knows blake3 and sha256); verify it with a newer synbackup",
                    path.display(),
                    m.hash,
                    m.format
                ),
            ));
        }
        if m.format != FORMAT_V1 && body_digest(&bytes).as_deref() != Some(m.body_sha256.as_str()) {
            return Err(fail(
                Code::Verify,
                format!(
                    "{}: the manifest was changed or damaged (its body_sha256 does not match); restore it from a copy of this backup or use another backup",
                    path.display()
                ),
            ));
        }
        Ok(m)
    }

    /// The digest algorithm of the file entries (checked by `load`).
    pub(crate) fn algo(&self) -> Algo {
        Algo::from_name(&self.hash).unwrap_or(Algo::Sha256)
    }

    /// A checksum list of every file, for `b3sum -c` or `sha256sum -c` run in the
    /// backup's directory (`verify --print-sums`).
    pub(crate) fn sums(&self) -> Vec<u8> {
        let algo = self.algo();
        let mut out = Vec::new();
        for f in &self.files {
            out.extend(digest::sums_line(
                f.digest(algo),
                name_of(&f.path).as_bytes(),
            ));
        }
        out
    }

    /// The manifest file's bytes, `body_sha256` filled in.
    pub(crate) fn to_json(&self) -> Result<Vec<u8>> {
        let mut blank = self.clone();
        blank.body_sha256 = String::new();
        let mut v = serde_json::to_vec_pretty(&blank).context("cannot encode the manifest")?;
        v.push(b'\n');
        let digest = body_digest(&v).context("cannot find body_sha256 in the manifest")?;
        let field = BODY_FIELD.as_bytes();
        let at = v
            .windows(field.len())
            .position(|w| w == field)
            .context("cannot find body_sha256 in the manifest")?
            + field.len();
        v.splice(at..at, digest.into_bytes());
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

    #[test]
    fn the_cell_record_is_optional() {
        let m = Manifest {
            format: FORMAT.into(),
            hash: "blake3".into(),
            body_sha256: String::new(),
            tool: "synbackup".into(),
            version: "0".into(),
            source: "/d".into(),
            host: "h".into(),
            cell_guid: Some("c0".into()),
            started: String::new(),
            finished: String::new(),
            env_copy: "compact".into(),
            freeze: FreezeInfo {
                mode: "auto".into(),
                frozen: false,
                ms: None,
                reason: None,
            },
            files: vec![],
            symlinks: vec![],
            dirs: vec![],
            environments: vec![],
            cert_dir: None,
            cell: None,
            from_mirror: None,
        };
        // Without it (a stopped cell, an older synbackup): no `cell` key at all.
        let text = String::from_utf8(m.to_json().unwrap()).unwrap();
        assert!(!text.contains("\"cell\""), "{text}");
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.cell, None);
        let with = Manifest {
            cell: Some(CellAtSnapshot {
                iden: "c0".into(),
                nexus_index: 42,
                role: "mirror".into(),
                upstream: Some("cell:///data/leader".into()),
                synapse_version: Some("2.256.0".into()),
            }),
            ..m
        };
        let back: Manifest = serde_json::from_slice(&with.to_json().unwrap()).unwrap();
        assert_eq!(back.cell, with.cell);
        assert!(!String::from_utf8(with.to_json().unwrap())
            .unwrap()
            .contains("from_mirror"));
        let on_mirror = Manifest {
            from_mirror: Some(FromMirror {
                leader: "/data/leader".into(),
                leader_nexus_index: 40,
                mirror: "/data/mirror".into(),
                nexus_index: 42,
                waited_ms: 3.5,
            }),
            ..with
        };
        let back: Manifest = serde_json::from_slice(&on_mirror.to_json().unwrap()).unwrap();
        assert_eq!(back.from_mirror, on_mirror.from_mirror);
    }

    #[test]
    fn names_round_trip_losslessly() {
        for raw in [
            &b"caf\xe9"[..],
            b"plain/name",
            b"hex:abc",
            b"",
            b"\xff/\x00x",
        ] {
            let os = OsStr::from_bytes(raw);
            assert_eq!(name_of(&name_key(os)).as_bytes(), raw);
        }
        assert_eq!(name_key(OsStr::new("a/b")), "a/b");
        assert_eq!(name_key(OsStr::from_bytes(b"caf\xe9")), "hex:636166e9");
    }
}
