// SPDX-License-Identifier: Apache-2.0
//! What a service directory (or a backup of one) says about the Synapse that last
//! ran it: the `synapse:version` record of the `cell:info` database in
//! `slabs/cell.lmdb`, which every Cell rewrites at each boot (a msgpack array such as
//! `[2, 230, 0]`). Read-only and without a lock file, so a backup is never changed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::engine::lmdb::{Env, Mode};

/// The Synapse version that last ran the cell in `dir` ("2.230.0"), if recorded.
pub(crate) fn stored_synapse_version(dir: &Path) -> Result<Option<String>> {
    let env_dir = dir.join("slabs/cell.lmdb");
    if !env_dir.join("data.mdb").exists() {
        return Ok(None);
    }
    let env = Env::open(&env_dir, Mode::Private)?;
    let txn = env.read_txn()?;
    let Some(db) = txn
        .named_dbs()?
        .into_iter()
        .find(|d| d.name == b"cell:info")
    else {
        return Ok(None);
    };
    let Some(raw) = txn.value_of(&db, b"synapse:version")? else {
        return Ok(None);
    };
    let value = rmpv::decode::read_value(&mut raw.as_slice()).with_context(|| {
        format!(
            "{}: the synapse:version record is not msgpack",
            env_dir.display()
        )
    })?;
    Ok(parse_version(&value))
}

/// "2.230.0" from the msgpack array `[2, 230, 0]`.
fn parse_version(v: &rmpv::Value) -> Option<String> {
    let parts: Option<Vec<String>> = v
        .as_array()?
        .iter()
        .map(|p| p.as_u64().map(|n| n.to_string()))
        .collect();
    parts.filter(|p| !p.is_empty()).map(|p| p.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_version_array() {
        let v = rmpv::Value::Array(vec![2.into(), 230.into(), 0.into()]);
        assert_eq!(parse_version(&v).as_deref(), Some("2.230.0"));
        assert_eq!(parse_version(&rmpv::Value::from("x")), None);
    }
}
