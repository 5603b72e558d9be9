// SPDX-License-Identifier: Apache-2.0
//! What a service directory (or a backup of one) says about the Synapse that last
//! ran it: the `synapse:version` record of the `cell:info` database in
//! `slabs/cell.lmdb`, which every Cell rewrites at each boot (a msgpack array such as
//! `[2, 230, 0]` on 2.x, a string such as `"3.7.0"` on 3.x: `engine::synapse` reads
//! both). Read-only and without a lock file, so a backup is never changed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::engine::lmdb::{Env, Mode};
use crate::engine::synapse::Version;

/// The Synapse release that last ran the cell in `dir`, if recorded.
pub(crate) fn stored_version(dir: &Path) -> Result<Option<Version>> {
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
    Ok(Version::from_value(&value))
}
