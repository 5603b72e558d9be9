// SPDX-License-Identifier: Apache-2.0
//! `synbackup verify BACKUP`: is this backup what its manifest says, and readable?
//!
//! Checks, each problem reported on its own line: the manifest is there and parses;
//! every listed file exists with its size and SHA-256; nothing unlisted was added
//! (a stray `lock.mdb` from a Synapse that ran on the backup is tolerated); every
//! environment whose `data.mdb` hashed correctly opens read-only (without creating
//! a lock file), has every recorded named database, and each reads to its end with
//! the recorded entry count. A damaged `data.mdb` is not opened (its checksum
//! already failed): reading a corrupt map could crash the reader.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::base::fsutil;
use crate::engine::lmdb::{Env, Mode};
use crate::engine::manifest::{self, Manifest};

/// The outcome of a verification.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) backup: String,
    pub(crate) files: usize,
    pub(crate) environments: usize,
    pub(crate) databases: usize,
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) problems: Vec<String>,
}

impl Report {
    pub(crate) fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn walk_files(root: &Path, rel: &Path, out: &mut BTreeSet<String>) -> std::io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let r = rel.join(entry.file_name());
        if ft.is_dir() {
            walk_files(root, &r, out)?;
        } else if ft.is_file() {
            out.insert(r.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Verify the backup at `dir`. Errors only when the manifest cannot be read; every
/// other finding is a problem in the report.
pub(crate) fn verify(dir: &Path) -> Result<Report> {
    let m = Manifest::load(dir)?;
    let mut r = Report {
        backup: dir.to_string_lossy().into_owned(),
        ..Report::default()
    };
    let mut bad_files = BTreeSet::new();

    let mut present = BTreeSet::new();
    if let Err(e) = walk_files(dir, Path::new(""), &mut present) {
        r.problems
            .push(format!("cannot list {}: {e}", dir.display()));
    }
    let listed: BTreeSet<String> = m.files.iter().map(|f| f.path.clone()).collect();
    for extra in present.difference(&listed) {
        if extra == manifest::MANIFEST_NAME
            || extra == crate::engine::manifest::VERIFIED_MARK
            || extra.ends_with("/lock.mdb")
        {
            continue;
        }
        r.problems.push(format!(
            "{}: not in the manifest",
            dir.join(extra).display()
        ));
    }

    for f in &m.files {
        let path = dir.join(&f.path);
        crate::base::interrupt::check()?;
        match fsutil::hash_file(&path) {
            Err(e) => {
                r.problems.push(format!("{}: {:#}", path.display(), e));
                bad_files.insert(f.path.clone());
            }
            Ok(h) => {
                r.files += 1;
                r.bytes += h.size;
                if h.size != f.size {
                    r.problems.push(format!(
                        "{}: size {} but the manifest says {}",
                        path.display(),
                        h.size,
                        f.size
                    ));
                    bad_files.insert(f.path.clone());
                } else if h.sha256 != f.sha256 {
                    r.problems.push(format!(
                        "{}: SHA-256 mismatch (content changed or damaged)",
                        path.display()
                    ));
                    bad_files.insert(f.path.clone());
                }
            }
        }
    }

    for e in &m.environments {
        let env_dir: PathBuf = dir.join(&e.path);
        let data_rel = format!("{}/data.mdb", e.path);
        if bad_files.contains(&data_rel) || !listed.contains(&data_rel) {
            if !listed.contains(&data_rel) {
                r.problems.push(format!(
                    "{}: environment without a data.mdb in the manifest",
                    env_dir.display()
                ));
            }
            continue;
        }
        match check_env(&env_dir, &e.databases) {
            Ok((dbs, entries)) => {
                r.environments += 1;
                r.databases += dbs;
                r.entries += entries;
            }
            Err(problems) => r.problems.extend(problems),
        }
    }
    Ok(r)
}

/// Open one environment and read every named database to its end.
fn check_env(
    dir: &Path,
    expected: &BTreeMap<String, u64>,
) -> std::result::Result<(usize, u64), Vec<String>> {
    let one = |msg: String| vec![msg];
    let env =
        Env::open(dir, Mode::Private).map_err(|e| one(format!("{}: {:#}", dir.display(), e)))?;
    let info = env
        .info()
        .map_err(|e| one(format!("{}: {:#}", dir.display(), e)))?;
    let len = fs::metadata(dir.join("data.mdb"))
        .map(|m| m.len())
        .unwrap_or(0);
    if len < (info.last_pgno + 1) * info.page_size {
        return Err(one(format!(
            "{}/data.mdb: truncated ({} bytes)",
            dir.display(),
            len
        )));
    }
    let txn = env
        .read_txn()
        .map_err(|e| one(format!("{}: {:#}", dir.display(), e)))?;
    let dbs = txn
        .named_dbs()
        .map_err(|e| one(format!("{}: {:#}", dir.display(), e)))?;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut entries = 0;
    for db in &dbs {
        let key = manifest::db_key(&db.name);
        match txn.count_by_reading(db) {
            Err(e) => problems.push(format!("{}: database {key}: {:#}", dir.display(), e)),
            Ok(n) => {
                entries += n;
                match expected.get(&key) {
                    None => problems.push(format!(
                        "{}: database {key} is not in the manifest",
                        dir.display()
                    )),
                    Some(&want) if want != n => problems.push(format!(
                        "{}: database {key} has {n} entries, the manifest says {want}",
                        dir.display()
                    )),
                    Some(_) => {}
                }
            }
        }
        seen.insert(key);
    }
    for key in expected.keys() {
        if key != manifest::MAIN_DB && !seen.contains(key) {
            problems.push(format!("{}: database {key} is missing", dir.display()));
        }
    }
    if problems.is_empty() {
        Ok((dbs.len(), entries))
    } else {
        Err(problems)
    }
}
