// SPDX-License-Identifier: Apache-2.0
//! `synbackup verify BACKUP`: is this backup what its manifest says, and readable?
//!
//! Checks, each problem reported on its own line: the manifest is there, parses and
//! matches its own `body_sha256` (format 2 and later); every listed file exists
//! with its size, digest (the manifest's `hash`: BLAKE3, or SHA-256 before format 3)
//! and mode, read back from the device (`readback`: O_DIRECT, not the page cache
//! the backup was just written through); every listed directory with its mode; every kept symlink with
//! its target, and where a followed link was, data and no link; the xattrs of files
//! and directories (format 2: every `user.*` and ACL one, and the others the
//! manifest recorded); nothing unlisted was added (a stray `lock.mdb` from a Synapse
//! that ran on the backup is tolerated); every environment whose `data.mdb` hashed
//! correctly opens read-only (without creating a lock file), has every recorded
//! named database, and each (and the main database) reads to its end with the
//! recorded entry count. A damaged `data.mdb` is not opened (its checksum already
//! failed): reading a corrupt map could crash the reader. When the manifest records
//! what the running cell said while frozen (`cell`), and nothing else failed, the
//! nexus index the backup's own files hold (`engine::nexus`) is that index and the
//! iden is the backup's `cell.guid`: the snapshot is of the moment the cell
//! reported. A manifest without `cell` (older, or of a stopped cell) skips this.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::base::{readback, xattrs};
use crate::engine::lmdb::{Env, Mode};
use crate::engine::manifest::{self, path_key, path_of, Manifest, Xattrs};

/// The outcome of a verification.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) backup: String,
    pub(crate) files: usize,
    pub(crate) environments: usize,
    pub(crate) databases: usize,
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    /// The manifest's digest algorithm.
    pub(crate) hash: String,
    /// Of `bytes`, read from the device with O_DIRECT (the rest through the page
    /// cache: a filesystem without O_DIRECT).
    pub(crate) direct_bytes: u64,
    pub(crate) problems: Vec<String>,
}

impl Report {
    pub(crate) fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What the backup holds, by manifest path key.
#[derive(Default)]
struct Present {
    files: BTreeSet<String>,
    links: BTreeSet<String>,
}

fn walk_tree(root: &Path, rel: &Path, out: &mut Present) -> std::io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let r = rel.join(entry.file_name());
        if ft.is_dir() {
            walk_tree(root, &r, out)?;
        } else if ft.is_file() {
            out.files.insert(path_key(&r));
        } else if ft.is_symlink() {
            out.links.insert(path_key(&r));
        }
    }
    Ok(())
}

/// Compare the xattrs of `path` with those recorded.
fn check_xattrs(path: &Path, recorded: &Xattrs, problems: &mut Vec<String>) {
    let present = match File::open(path)
        .map_err(anyhow::Error::from)
        .and_then(|f| xattrs::read(&f, path))
    {
        Ok(a) => manifest::xattr_keys(&a),
        Err(e) => {
            problems.push(format!("{}: {e:#}", path.display()));
            return;
        }
    };
    for (name, value) in recorded {
        match present.get(name) {
            None => problems.push(format!("{}: xattr {name} is missing", path.display())),
            Some(v) if v != value => {
                problems.push(format!("{}: xattr {name} differs", path.display()))
            }
            Some(_) => {}
        }
    }
    for name in present.keys() {
        if !recorded.contains_key(name) && xattrs::required(&manifest::name_of(name)) {
            problems.push(format!(
                "{}: xattr {name} is not in the manifest",
                path.display()
            ));
        }
    }
}

/// Whether the link at `path` resolves to something outside the backup `dir`.
fn links_outside(dir: &Path, path: &Path) -> bool {
    match (fs::canonicalize(dir), fs::canonicalize(path)) {
        (Ok(top), Ok(to)) => !to.starts_with(top),
        _ => false, // dangling: nothing is missing from the backup
    }
}

/// Modes and xattrs of the directories, targets of the links.
fn check_layout(dir: &Path, m: &Manifest, present: &Present, r: &mut Report) {
    let v2 = m.format != manifest::FORMAT_V1;
    for d in &m.dirs {
        let path = dir.join(path_of(&d.path));
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                if meta.mode() & 0o7777 != d.mode {
                    r.problems.push(format!(
                        "{}: mode {:04o} but the manifest says {:04o}",
                        path.display(),
                        meta.mode() & 0o7777,
                        d.mode
                    ));
                }
                if v2 {
                    check_xattrs(&path, &d.xattrs, &mut r.problems);
                }
            }
            Ok(_) => r
                .problems
                .push(format!("{}: not a directory", path.display())),
            Err(e) => r.problems.push(format!("{}: {e}", path.display())),
        }
    }
    let mut listed = BTreeSet::new();
    for l in &m.symlinks {
        let path = dir.join(path_of(&l.path));
        if l.followed {
            if present.links.contains(&l.path) {
                r.problems.push(format!(
                    "{}: a symlink, but its data was copied in its place",
                    path.display()
                ));
            } else if fs::symlink_metadata(&path).is_err() {
                r.problems.push(format!(
                    "{}: missing (the data of a link to {})",
                    path.display(),
                    l.target
                ));
            }
            continue;
        }
        listed.insert(l.path.clone());
        match fs::read_link(&path) {
            Ok(t) if t == path_of(&l.target) => {
                if !v2 && links_outside(dir, &path) {
                    r.problems.push(format!(
                        "{}: links to {}, outside the backup: this data is not in it (synbackup before manifest format 2 kept such links); make a new backup",
                        path.display(),
                        l.target
                    ));
                }
            }
            Ok(t) => r.problems.push(format!(
                "{}: links to {} but the manifest says {}",
                path.display(),
                t.display(),
                l.target
            )),
            Err(e) => r.problems.push(format!("{}: {e}", path.display())),
        }
    }
    for extra in present.links.difference(&listed) {
        r.problems.push(format!(
            "{}: a symlink not in the manifest",
            dir.join(path_of(extra)).display()
        ));
    }
}

/// Verify the published backup at `dir` before using it (`not_what`: "not
/// drilled"): its manifest when intact, else one `Verify` error listing every
/// problem (and the backup marked damaged: `engine::damaged`).
pub(crate) fn verified_manifest(dir: &Path, not_what: &str) -> Result<Manifest> {
    log::info!("verifying {}", dir.display());
    let report = crate::engine::damaged::verify_recorded(dir)?;
    if !report.ok() {
        return Err(crate::base::exit::fail(
            crate::base::exit::Code::Verify,
            format!(
                "{} failed verification, {not_what}: {}",
                dir.display(),
                report.problems.join("; ")
            ),
        ));
    }
    Manifest::load(dir)
}

/// Verify the backup at `dir`. Errors only when the manifest cannot be read; every
/// other finding is a problem in the report.
pub(crate) fn verify(dir: &Path) -> Result<Report> {
    let m = Manifest::load(dir)?;
    let algo = m.algo();
    let mut r = Report {
        backup: dir.to_string_lossy().into_owned(),
        hash: algo.name().to_string(),
        ..Report::default()
    };

    let (present, listed) = check_tree(dir, &m, &mut r);

    // Each environment is checked (opened, every database read) on a thread of its
    // own as soon as its data.mdb has hashed correctly, while the next files are
    // hashed: the check reads the map through the page cache, from the device again
    // (the hash read bypassed the cache), so overlapping the two keeps verify close
    // to one read of the backup. A data.mdb that failed is never opened.
    let env_of: BTreeMap<String, usize> = m
        .environments
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("{}/data.mdb", e.path), i))
        .collect();
    let outcomes = std::thread::scope(|s| -> Result<Vec<(usize, EnvOutcome)>> {
        let (to_checker, todo) = std::sync::mpsc::channel::<usize>();
        let envs = &m.environments;
        let checker = s.spawn(move || {
            todo.iter()
                .map(|i| {
                    let e = &envs[i];
                    (i, check_env(&dir.join(path_of(&e.path)), &e.databases))
                })
                .collect::<Vec<_>>()
        });
        for f in &m.files {
            let hashed_ok = hash_listed_file(dir, f, algo, &present, &m.format, &mut r)?;
            if let (true, Some(&i)) = (hashed_ok, env_of.get(&f.path)) {
                // The checker ends only with the channel: a send cannot fail.
                let _ = to_checker.send(i);
            }
        }
        drop(to_checker);
        checker
            .join()
            .map_err(|_| anyhow::anyhow!("the environment check of {} panicked", dir.display()))
    })?;
    check_envs_listed(dir, &m, &listed, &mut r.problems);
    // In the manifest's order, whatever order the checks ended in.
    let mut outcomes = outcomes;
    outcomes.sort_by_key(|(i, _)| *i);
    for (_, outcome) in outcomes {
        match outcome {
            Ok((dbs, entries)) => {
                r.environments += 1;
                r.databases += dbs;
                r.entries += entries;
            }
            Err(problems) => r.problems.extend(problems),
        }
    }
    if r.problems.is_empty() {
        check_cell_claim(dir, &m, &mut r.problems);
    }
    Ok(r)
}

/// The tree at `dir` against the manifest `m`, reading no file's data: the
/// layout (directories, links, their modes and xattrs) and nothing unlisted.
/// Returns what is there and what the manifest lists.
fn check_tree(dir: &Path, m: &Manifest, r: &mut Report) -> (Present, BTreeSet<String>) {
    let mut present = Present::default();
    if let Err(e) = walk_tree(dir, Path::new(""), &mut present) {
        r.problems
            .push(format!("cannot list {}: {e}", dir.display()));
    }
    check_layout(dir, m, &present, r);
    let listed: BTreeSet<String> = m.files.iter().map(|f| f.path.clone()).collect();
    for extra in present.files.difference(&listed) {
        if manifest::is_own_file(extra) || extra.ends_with("/lock.mdb") {
            continue;
        }
        r.problems.push(format!(
            "{}: not in the manifest",
            dir.join(path_of(extra)).display()
        ));
    }
    (present, listed)
}

/// Every environment of the manifest has its `data.mdb` listed.
fn check_envs_listed(
    dir: &Path,
    m: &Manifest,
    listed: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    for e in &m.environments {
        if !listed.contains(&format!("{}/data.mdb", e.path)) {
            problems.push(format!(
                "{}: environment without a data.mdb in the manifest",
                dir.join(path_of(&e.path)).display()
            ));
        }
    }
}

/// The backup at `dir` checked as `verify` checks it, but reading no file's data
/// (a restore reads each byte once, as it copies it: `restore::copy`): the
/// manifest, the layout, and every listed file there as a plain file with its
/// size, mode and xattrs. Errors only when the manifest cannot be read.
pub(crate) fn check_structure(dir: &Path) -> Result<(Manifest, Report)> {
    let m = Manifest::load(dir)?;
    let mut r = Report {
        backup: dir.to_string_lossy().into_owned(),
        hash: m.algo().name().to_string(),
        ..Report::default()
    };
    let (present, listed) = check_tree(dir, &m, &mut r);
    let v2 = m.format != manifest::FORMAT_V1;
    for f in &m.files {
        let path = dir.join(path_of(&f.path));
        if present.links.contains(&f.path) {
            r.problems
                .push(format!("{}: a symlink, not a file", path.display()));
            continue;
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {
                if meta.len() != f.size {
                    r.problems.push(format!(
                        "{}: size {} but the manifest says {}",
                        path.display(),
                        meta.len(),
                        f.size
                    ));
                }
                r.files += 1;
                r.bytes += meta.len();
                check_file_meta(&path, f, v2, &mut r.problems);
            }
            Ok(_) => r
                .problems
                .push(format!("{}: not a plain file", path.display())),
            Err(e) => r.problems.push(format!("{}: {e}", path.display())),
        }
    }
    check_envs_listed(dir, &m, &listed, &mut r.problems);
    Ok((m, r))
}

/// One environment of a backup's copy (`dir`, e.g. a restore's staging copy)
/// checked as `verify` checks the backup's: opened read-only, every recorded
/// database read to its end with its entry count. Its problems, if any.
pub(crate) fn check_env_copy(dir: &Path, expected: &BTreeMap<String, u64>) -> Vec<String> {
    check_env(dir, expected).err().unwrap_or_default()
}

/// What the manifest says the frozen cell reported (`cell`) against the backup's
/// own files (or a copy of them at `dir`): its nexus index and iden.
pub(crate) fn check_cell_claim(dir: &Path, m: &Manifest, problems: &mut Vec<String>) {
    let Some(cell) = &m.cell else {
        return;
    };
    if m.cell_guid.as_deref().is_some_and(|g| g != cell.iden) {
        problems.push(format!(
            "{}: the manifest records cell {} frozen, but the backup's cell.guid is {}",
            dir.display(),
            cell.iden,
            m.cell_guid.as_deref().unwrap_or("")
        ));
    }
    match crate::engine::nexus::stored_index(dir) {
        Ok(Some(i)) if i == cell.nexus_index => {}
        Ok(found) => problems.push(format!(
            "{}: the cell reported nexus index {} while frozen, but the backup's nexus holds {}",
            dir.display(),
            cell.nexus_index,
            found.map_or("none".to_string(), |i| i.to_string())
        )),
        Err(e) => problems.push(format!(
            "{}: cannot read the backup's nexus index: {e:#}",
            dir.display()
        )),
    }
}

/// What checking one environment found: (databases, entries), or its problems.
type EnvOutcome = std::result::Result<(usize, u64), Vec<String>>;

/// Check one listed file: not a symlink, its mode and xattrs, and its size and digest
/// as read from the device. Problems go to `r`; returns whether its content is right.
fn hash_listed_file(
    dir: &Path,
    f: &manifest::FileEntry,
    algo: crate::base::digest::Algo,
    present: &Present,
    format: &str,
    r: &mut Report,
) -> Result<bool> {
    let path = dir.join(path_of(&f.path));
    if present.links.contains(&f.path) {
        r.problems
            .push(format!("{}: a symlink, not a file", path.display()));
        return Ok(false);
    }
    check_file_meta(&path, f, format != manifest::FORMAT_V1, &mut r.problems);
    crate::base::interrupt::check()?;
    let h = match readback::hash_from_device(&path, algo) {
        Err(e) => {
            r.problems.push(format!("{}: {:#}", path.display(), e));
            return Ok(false);
        }
        Ok(b) => {
            r.direct_bytes += b.direct_bytes;
            b.hashed
        }
    };
    r.files += 1;
    r.bytes += h.size;
    if h.size != f.size {
        r.problems.push(format!(
            "{}: size {} but the manifest says {}",
            path.display(),
            h.size,
            f.size
        ));
        return Ok(false);
    }
    if h.digest != f.digest(algo) {
        r.problems.push(format!(
            "{}: {} mismatch (content changed or damaged)",
            path.display(),
            algo.label()
        ));
        return Ok(false);
    }
    Ok(true)
}

/// Mode and (format 2) xattrs of a listed file.
fn check_file_meta(path: &Path, f: &manifest::FileEntry, v2: bool, problems: &mut Vec<String>) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.mode() & 0o7777 != f.mode {
            problems.push(format!(
                "{}: mode {:04o} but the manifest says {:04o}",
                path.display(),
                meta.mode() & 0o7777,
                f.mode
            ));
        }
        if v2 {
            check_xattrs(path, &f.xattrs, problems);
        }
    }
}

/// Open one environment and read every named database to its end.
fn check_env(dir: &Path, expected: &BTreeMap<String, u64>) -> EnvOutcome {
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
    if let Some(&want) = expected.get(manifest::MAIN_DB) {
        match txn.main_stat() {
            Ok(s) if s.entries != want => problems.push(format!(
                "{}: the main database has {} entries, the manifest says {want}",
                dir.display(),
                s.entries
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: main database: {e:#}", dir.display())),
        }
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
