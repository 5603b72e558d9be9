// SPDX-License-Identifier: Apache-2.0
//! The nexus index a cell's directory holds on disk (a backup, or the directory of
//! a cell that does not run), read without booting it; a running cell is asked
//! instead (`cellstate`).
//!
//! Synapse (`synapse/lib/nexus.py`, the same on 2.256 and 3.7.0) keeps the index in
//! two places and boots at the greater: the hot count `nexs:indx` (database and key
//! of that name in `slabs/nexus.lmdb`, a signed 64-bit big-endian integer; what
//! counts the changes when `nexslog:en` is off) and, with the nexus log on, the
//! log itself: `slabs/nexuslog/seqnXXXXXXXXXXXXXXXX.lmdb`, each named by the
//! offset it starts at (16 hex digits), its entries in the database `nexuslog`
//! under 8-byte big-endian offsets; the index is the newest log's last offset plus
//! one, or its starting offset when it is empty. A frozen cell has committed
//! both (its freeze syncs every slab), so a backup taken while it was frozen
//! holds the index the cell reported. Read-only, without a lock file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::engine::lmdb::{Env, Mode};

/// The nexus index recorded in `dir`; None when it holds no nexus at all.
pub(crate) fn stored_index(dir: &Path) -> Result<Option<u64>> {
    let hot = hot_index(&dir.join("slabs/nexus.lmdb"))?;
    let log = log_index(&dir.join("slabs/nexuslog"))?;
    Ok(match (hot, log) {
        (Some(h), Some(l)) => Some(h.max(l)),
        (h, l) => h.or(l),
    })
}

/// The value of `key` in the named database `name` of the environment `env_dir`
/// (None: no such environment, database or key).
fn value(env_dir: &Path, name: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
    if !env_dir.join("data.mdb").exists() {
        return Ok(None);
    }
    let env = Env::open(env_dir, Mode::Private)?;
    let txn = env.read_txn()?;
    let Some(db) = txn.named_dbs()?.into_iter().find(|d| d.name == name) else {
        return Ok(None);
    };
    txn.value_of(&db, key)
}

fn hot_index(env_dir: &Path) -> Result<Option<u64>> {
    let Some(raw) = value(env_dir, b"nexs:indx", b"nexs:indx")? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = raw.as_slice().try_into().with_context(|| {
        format!(
            "{}: nexs:indx is {} bytes, not 8",
            env_dir.display(),
            raw.len()
        )
    })?;
    Ok(Some(i64::from_be_bytes(bytes).max(0) as u64))
}

/// The newest `seqn*.lmdb` of the log directory and the offset it starts at.
fn newest_log(log_dir: &Path) -> Result<Option<(PathBuf, u64)>> {
    let Ok(entries) = fs::read_dir(log_dir) else {
        return Ok(None);
    };
    let mut newest: Option<(PathBuf, u64)> = None;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", log_dir.display()))?;
        let name = e.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_prefix("seqn"))
            .and_then(|n| n.strip_suffix(".lmdb"))
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if newest.as_ref().map_or(true, |(_, s)| start > *s) {
            newest = Some((e.path(), start));
        }
    }
    Ok(newest)
}

fn log_index(log_dir: &Path) -> Result<Option<u64>> {
    let Some((env_dir, start)) = newest_log(log_dir)? else {
        return Ok(None);
    };
    if !env_dir.join("data.mdb").exists() {
        return Ok(Some(start));
    }
    let env = Env::open(&env_dir, Mode::Private)?;
    let txn = env.read_txn()?;
    let Some(db) = txn.named_dbs()?.into_iter().find(|d| d.name == b"nexuslog") else {
        return Ok(Some(start));
    };
    match txn.last_key(&db)? {
        None => Ok(Some(start)),
        Some(k) => {
            let bytes: [u8; 8] = k
                .as_slice()
                .try_into()
                .with_context(|| format!("{}: a nexuslog key is not 8 bytes", env_dir.display()))?;
            Ok(Some(u64::from_be_bytes(bytes) + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn fixtures_hold_an_index() {
        // Both fixtures were made by a real Cortex (2.x and 3.x) that wrote nodes.
        for name in ["cortex00", "cortex00-v3"] {
            let i = stored_index(&fixture(name)).unwrap();
            assert!(i.is_some_and(|i| i > 0), "{name}: {i:?}");
        }
        let t = tempfile::tempdir().unwrap();
        assert_eq!(stored_index(t.path()).unwrap(), None);
    }
}
