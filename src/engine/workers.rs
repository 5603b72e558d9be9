// SPDX-License-Identifier: Apache-2.0
//! The copy tasks of a backup and the `--jobs` workers that run them: compacting (or
//! plain) copies of environments (from held or fresh snapshots) and sparse copies of
//! plain files, each hashed as written, given its metadata and fsynced. The first
//! failure stops the others.
//!
//! A backup's plain files are read and written through a buffer, never
//! `copy_file_range` or a reflink: on XFS and btrfs both share the live file's
//! extents, and a backup that shares its blocks with the service is no second copy
//! of the data (one bad block would damage both). A maintenance window's copy
//! (`share_extents`) becomes the live directory, with the old one kept aside until
//! the next window: its plain files (`backups/` can outgrow the environments) go
//! through the restore's primitive (`base::filecopy`: a reflink where the
//! filesystem has them, else `copy_file_range` per data extent), hashed as read
//! back. On ext4 that costs what the buffered copy does (the window's measurement:
//! hashing, not copying, bounds it); on XFS and btrfs the window writes no data
//! for them (its room check still counts them).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Result};

use crate::base::digest::Algo;
use crate::base::durable::Durability;
use crate::base::filecopy;
use crate::base::fsutil;
use crate::base::interrupt;
use crate::base::xattrs;
use crate::engine::envcopy::{self, CopyMode};
use crate::engine::lmdb::{self, Env, Mode, Snapshot};
use crate::engine::manifest::{self, EnvEntry, FileEntry};
use crate::engine::paths::bad;
use crate::engine::progress::Progress;

/// What an environment task copies from.
pub(crate) enum Source {
    /// A snapshot taken while the service was frozen.
    Held(Snapshot),
    /// An open environment: its snapshot is taken when the task starts.
    Open(Env),
}

/// The work queue's items.
pub(crate) enum Task {
    Env {
        job_rel: PathBuf,
        data_meta: fs::Metadata,
        source: Source,
        mode: CopyMode,
    },
    File {
        rel: PathBuf,
        meta: fs::Metadata,
        /// The scan reached it through a link it follows (`Plan::followed`): opened
        /// through links, as the scan was; else no link may be on the way.
        via_link: bool,
    },
}

impl Task {
    /// A plain file's task; `followed` is the scan's list of links it follows.
    pub(crate) fn file(rel: PathBuf, meta: fs::Metadata, followed: &[(PathBuf, PathBuf)]) -> Task {
        let via_link = followed.iter().any(|(link, _)| rel.starts_with(link));
        Task::File {
            rel,
            meta,
            via_link,
        }
    }
}

/// A finished task.
pub(crate) enum Done {
    Env {
        file: FileEntry,
        env: EnvEntry,
        source_bytes: u64,
        /// What a compacted copy takes (the copy's size when it is one).
        compacted_bytes: u64,
    },
    File {
        file: FileEntry,
        source_bytes: u64,
        /// Data bytes written (holes are not written).
        written: u64,
    },
}

/// Run the copy tasks on `jobs` workers; the first failure stops the others. Each
/// finished file is handed to `sync` (fsynced now, or by its commit);
/// `share_extents`: a window's copy (module preamble).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_tasks(
    tasks: VecDeque<Task>,
    jobs: usize,
    src: &Path,
    tmp: &Path,
    algo: Algo,
    progress: &Progress,
    sync: &Durability,
    share_extents: bool,
) -> Result<Vec<Done>> {
    let queue = Mutex::new(tasks);
    let abort = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    let stop = || abort.load(Ordering::Relaxed) || interrupt::requested();
    let root = fsutil::open_source_root(src)?;
    let root = &root;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| loop {
                    if stop() {
                        break;
                    }
                    let task = match queue.lock() {
                        Ok(mut q) => q.pop_front(),
                        Err(_) => None,
                    };
                    let Some(task) = task else { break };
                    if let Err(e) = crate::base::fault::point("panic-in-worker") {
                        abort.store(true, Ordering::Relaxed);
                        if let Ok(mut errs) = errors.lock() {
                            errs.push(e);
                        }
                        break;
                    }
                    let ctx = Ctx {
                        root,
                        src,
                        tmp,
                        algo,
                        progress,
                        sync,
                        share_extents,
                    };
                    match run_task(task, &ctx, &stop) {
                        Ok(d) => {
                            if let Ok(mut r) = results.lock() {
                                r.push(d);
                            }
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut errs) = errors.lock() {
                                errs.push(e);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            if h.join().is_err() {
                abort.store(true, Ordering::Relaxed);
                if let Ok(mut errs) = errors.lock() {
                    errs.push(anyhow!("a copy worker panicked"));
                }
            }
        }
    });
    // Copies never taken from the queue are closed (and their threads joined) here.
    drop(queue);
    interrupt::check()?;
    let mut errors = errors.into_inner().unwrap_or_default();
    if !errors.is_empty() {
        // The first real failure, not the "stopped after another failed" echoes.
        let idx = errors
            .iter()
            .position(|e| !e.to_string().starts_with("stopped after"))
            .unwrap_or(0);
        return Err(errors.swap_remove(idx));
    }
    results
        .into_inner()
        .map_err(|_| anyhow!("result list poisoned"))
}

/// What every task of one run shares.
struct Ctx<'a> {
    root: &'a File,
    src: &'a Path,
    tmp: &'a Path,
    algo: Algo,
    progress: &'a Progress,
    sync: &'a Durability,
    /// A window's copy: plain files may share the source's extents.
    share_extents: bool,
}

fn run_task(task: Task, ctx: &Ctx<'_>, stop: &dyn Fn() -> bool) -> Result<Done> {
    let Ctx {
        root,
        src,
        tmp,
        algo,
        progress,
        sync,
        share_extents,
    } = *ctx;
    match task {
        Task::Env {
            job_rel,
            data_meta,
            source,
            mode,
        } => {
            let snap = match source {
                Source::Held(snap) => snap,
                Source::Open(env) => Snapshot::take(env)?,
            };
            let described = describe_snapshot(&snap, mode)?;
            let job_dir = tmp.join(&job_rel);
            // The xattrs of the data.mdb LMDB holds, checked against the scan at
            // its open, not of whatever is at its path now.
            let rel = job_rel.join("data.mdb");
            let attrs = xattrs::read(&snap.data_file()?, &src.join(&rel))?;
            let copy = envcopy::start(snap, mode, algo)?;
            let dst = tmp.join(&job_rel).join("data.mdb");
            let hashed = copy.drain(&dst, stop, &|n| progress.add(n))?;
            let f = File::open(&dst)?;
            let applied = fsutil::copy_meta_fd(&f, &dst, &data_meta, false, &attrs)?;
            sync.file_done(&f, &dst)?;
            drop(f);
            let source_bytes = fsutil::allocated(&data_meta);
            let (env, compacted) = match described {
                Some(d) => d.entry(&job_rel, hashed.size, source_bytes),
                None => describe_copy(&job_dir, &job_rel, source_bytes)?,
            };
            let compacted_bytes = match mode {
                CopyMode::Compact => hashed.size,
                CopyMode::Plain => compacted,
            };
            Ok(Done::Env {
                file: file_entry(&rel, algo, hashed, &applied),
                env,
                source_bytes,
                compacted_bytes,
            })
        }
        Task::File {
            rel,
            meta,
            via_link,
        } => {
            let sp = src.join(&rel);
            let dp = tmp.join(&rel);
            // The file the scan saw, or the run fails: never what a link put in
            // its place since (the service's user owns the tree; root copies it).
            let sf = fsutil::open_scanned(root, src, &rel, via_link, &meta)?;
            let df = if share_extents {
                fsutil::create_new_rw(&dp)?
            } else {
                fsutil::create_new(&dp)?
            };
            let mut on_bytes = |n| {
                progress.add(n);
                if stop() {
                    interrupt::check()?;
                    return Err(anyhow!("stopped after another copy failed"));
                }
                Ok(())
            };
            let hashed = if share_extents {
                {
                    let direct = filecopy::direct_pays(meta.len());
                    filecopy::copy_hashed_with(&sf, &sp, &df, &dp, algo, direct, &mut on_bytes)?.0
                }
            } else {
                fsutil::copy_sparse_hashed(&sf, &sp, &df, &dp, algo, on_bytes)?
            };
            let attrs = xattrs::read(&sf, &sp)?;
            let applied = fsutil::copy_meta_fd(&df, &dp, &meta, true, &attrs)?;
            sync.file_done(&df, &dp)?;
            let source_bytes = hashed.data_bytes;
            Ok(Done::File {
                file: file_entry(&rel, algo, hashed, &applied),
                source_bytes,
                written: source_bytes,
            })
        }
    }
}

/// What the manifest records of an environment's copy, read from the snapshot it is
/// made of (the same records; `verify` checks them against the copy itself).
struct Described {
    page_size: u64,
    databases: BTreeMap<String, u64>,
    /// Pages on the snapshot's free list (a plain copy keeps them).
    free_pages: u64,
}

impl Described {
    /// The manifest entry of the copy of `size` bytes, and the bytes a compacted copy
    /// of it takes. Both copies end at the snapshot's last page: the compacting one
    /// at its last live page, the plain one below the page it would allocate next.
    fn entry(self, rel: &Path, size: u64, source_bytes: u64) -> (EnvEntry, u64) {
        let pages = size / self.page_size;
        let entry = EnvEntry {
            path: rel_str(rel),
            page_size: self.page_size,
            last_pgno: pages.saturating_sub(1),
            source_bytes,
            databases: self.databases,
        };
        (
            entry,
            pages.saturating_sub(self.free_pages) * self.page_size,
        )
    }
}

/// Page size, the record count of every database and (for a plain copy) the free
/// pages of `snap`; `None` when it has more named databases than a live snapshot
/// can open (its copy is described instead). Reading them from the copy cost an
/// open and, the copy being written past the page cache, reads from the device for
/// each of a Cortex's hundreds of environments: the many shape's backup took 1.0 s
/// with it, 0.6 s without (bench/RESULTS.md).
fn describe_snapshot(snap: &Snapshot, mode: CopyMode) -> Result<Option<Described>> {
    let page_size = snap.info()?.page_size;
    let txn = snap.view();
    let named = match txn.named_dbs() {
        Ok(n) => n,
        Err(e) if lmdb::is_dbs_full(&e) => {
            log::debug!("{}: {e:#}; counting its copy", snap.dir().display());
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut databases = BTreeMap::new();
    databases.insert(manifest::MAIN_DB.to_string(), txn.main_stat()?.entries);
    for db in named {
        databases.insert(manifest::db_key(&db.name), txn.db_stat(&db)?.entries);
    }
    let free_pages = match mode {
        CopyMode::Compact => 0,
        CopyMode::Plain => txn.free_pages()?,
    };
    Ok(Some(Described {
        page_size,
        databases,
        free_pages,
    }))
}

/// Page size, last page and entry counts of a finished copy, and the bytes a
/// compacted copy of it takes (from its free list): for a snapshot with more named
/// databases than `describe_snapshot` can open.
fn describe_copy(dir: &Path, rel: &Path, source_bytes: u64) -> Result<(EnvEntry, u64)> {
    let env = Env::open(dir, Mode::Private)?;
    let info = env.info()?;
    let txn = env.read_txn()?;
    let compacted = txn.compacted_pages(&info)? * info.page_size;
    let mut databases = BTreeMap::new();
    databases.insert(manifest::MAIN_DB.to_string(), txn.main_stat()?.entries);
    for db in txn.named_dbs()? {
        databases.insert(manifest::db_key(&db.name), txn.db_stat(&db)?.entries);
    }
    let entry = EnvEntry {
        path: rel_str(rel),
        page_size: info.page_size,
        last_pgno: info.last_pgno,
        source_bytes,
        databases,
    };
    Ok((entry, compacted))
}

/// The xattrs of a source file or directory.
pub(crate) fn source_xattrs(path: &Path) -> Result<xattrs::Attrs> {
    let f = File::open(path).map_err(|e| {
        bad(format!(
            "cannot read {}: {e}; fix its permissions or run as the service's user or root",
            path.display()
        ))
    })?;
    xattrs::read(&f, path)
}

/// The xattrs of the source directory the scan recorded as `scanned` at `path`:
/// read from a descriptor checked to be that directory (device, inode), so a
/// directory swapped for a link after the scan fails the run naming it (exit 3).
pub(crate) fn scanned_dir_xattrs(path: &Path, scanned: &fs::Metadata) -> Result<xattrs::Attrs> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(path);
    let now = f.as_ref().ok().and_then(|f| f.metadata().ok());
    match (f, now) {
        (Ok(f), Some(now)) if now.dev() == scanned.dev() && now.ino() == scanned.ino() => {
            xattrs::read(&f, path)
        }
        (Err(e), _) if e.raw_os_error() != Some(libc::ENOTDIR) => Err(bad(format!(
            "cannot read {}: {e}; fix its permissions or run as the service's user or root",
            path.display()
        ))),
        _ => Err(bad(format!(
            "{} changed between the scan and the copy (not the directory the scan saw); a directory replaced during a backup is not Synapse's doing: find who writes there, then run again",
            path.display()
        ))),
    }
}

/// A path as the manifest writes it (lossless, see `manifest::path_key`).
pub(crate) fn rel_str(rel: &Path) -> String {
    manifest::path_key(rel)
}

/// The manifest entry of a copied file: what was written and the metadata given.
fn file_entry(
    rel: &Path,
    algo: Algo,
    hashed: fsutil::Hashed,
    applied: &fsutil::Applied,
) -> FileEntry {
    let mut entry = FileEntry {
        path: rel_str(rel),
        size: hashed.size,
        sha256: String::new(),
        blake3: String::new(),
        mode: applied.mode,
        xattrs: manifest::xattr_keys(&applied.xattrs),
    };
    entry.set_digest(algo, hashed.digest);
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::lmdb::{DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags};

    /// An environment with `dbs` named databases of a few records each, then a
    /// third of every database's records deleted (free pages for the plain copy).
    fn make_env(dir: &Path, dbs: u32) {
        fs::create_dir_all(dir).unwrap();
        let env = Environment::new()
            .set_flags(EnvironmentFlags::NO_SYNC)
            .set_max_dbs(dbs + 1)
            .set_map_size(64 << 20)
            .open(dir)
            .unwrap();
        for d in 0..dbs {
            let db = env
                .create_db(Some(&format!("db{d:03}")), DatabaseFlags::empty())
                .unwrap();
            let mut txn = env.begin_rw_txn().unwrap();
            for k in 0..(20 + d % 10 * 7) {
                let val = vec![(k % 251) as u8; 100 + (k as usize * 131) % 3000];
                txn.put(db, &format!("k{k:06}"), &val, WriteFlags::empty())
                    .unwrap();
            }
            txn.commit().unwrap();
            let mut txn = env.begin_rw_txn().unwrap();
            for k in (0..(20 + d % 10 * 7)).step_by(3) {
                txn.del(db, &format!("k{k:06}"), None).unwrap();
            }
            txn.commit().unwrap();
        }
        env.sync(true).unwrap();
    }

    /// Copy the environment at `src` to `out/data.mdb` as a backup's worker does;
    /// its manifest entry from the snapshot (None: too many databases for it) and
    /// from the copy.
    fn both_descriptions(
        src: &Path,
        out: &Path,
        mode: CopyMode,
    ) -> (Option<(EnvEntry, u64)>, (EnvEntry, u64)) {
        fs::create_dir_all(out).unwrap();
        let snap = Snapshot::take(Env::open(src, Mode::Live).unwrap()).unwrap();
        let described = describe_snapshot(&snap, mode).unwrap();
        let hashed = envcopy::start(snap, mode, Algo::Blake3)
            .unwrap()
            .drain(&out.join("data.mdb"), &|| false, &|_| {})
            .unwrap();
        let rel = Path::new("env");
        let from_snapshot = described.map(|d| d.entry(rel, hashed.size, 4096));
        (from_snapshot, describe_copy(out, rel, 4096).unwrap())
    }

    #[test]
    fn the_snapshot_describes_its_copy_as_the_copy_itself_does() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        make_env(&src, 12);
        for mode in [CopyMode::Compact, CopyMode::Plain] {
            let out = t.path().join(mode.name());
            let (snap, copy) = both_descriptions(&src, &out, mode);
            let (snap, copy) = (snap.expect("12 databases fit"), copy);
            assert_eq!(snap.0.databases.len(), 13, "{mode:?}: main and 12 named");
            assert_eq!(snap.0.databases, copy.0.databases, "{mode:?}");
            assert_eq!(snap.0.page_size, copy.0.page_size, "{mode:?}");
            assert_eq!(snap.0.last_pgno, copy.0.last_pgno, "{mode:?}");
            assert_eq!(snap.1, copy.1, "{mode:?}: compacted bytes");
        }
    }

    /// The window's copy (`scan_whole`, then these workers; its copy becomes the
    /// live directory): a file the service's user swaps for a link to a root-only
    /// file after the scan fails the copy, naming the path, and is never read.
    #[test]
    fn a_window_copy_refuses_a_file_swapped_for_a_link_after_the_scan() {
        use crate::base::progress::Silent;
        use crate::engine::scan::{self, Item};
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("svc");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("cell.guid"), "guid").unwrap();
        fs::write(src.join("notes.txt"), "notes").unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, "ROOT ONLY").unwrap();
        let plan = scan::scan_whole(&src).unwrap();
        fs::remove_file(src.join("notes.txt")).unwrap();
        std::os::unix::fs::symlink(&secret, src.join("notes.txt")).unwrap();
        let tasks: VecDeque<Task> = plan
            .items
            .iter()
            .filter_map(|i| match i {
                Item::File { rel, meta } => {
                    Some(Task::file(rel.clone(), meta.clone(), &plan.followed))
                }
                _ => None,
            })
            .collect();
        let tmp = t.path().join("copy");
        fs::create_dir(&tmp).unwrap();
        let sync = Durability::begin(&tmp, true).unwrap();
        let progress = Progress::start(&Silent, "copy", 0);
        let err = run_tasks(tasks, 1, &src, &tmp, Algo::Blake3, &progress, &sync, true)
            .err()
            .expect("the swapped file fails the copy");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!(
                "{} changed between the scan and the copy",
                src.join("notes.txt").display()
            )),
            "{msg}"
        );
        if let Ok(copied) = fs::read(tmp.join("notes.txt")) {
            assert_ne!(copied, b"ROOT ONLY", "never copied through the link");
        }
    }

    /// A window's plain files (`share_extents`) through the restore's primitive:
    /// the same digests as a backup's buffered copy, the same bytes, holes kept.
    #[test]
    fn a_window_copy_of_plain_files_hashes_and_keeps_holes_as_a_backups_does() {
        use crate::base::progress::Silent;
        use crate::engine::scan::{self, Item};
        use std::os::unix::fs::{FileExt, MetadataExt};
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let src = t.path().join("svc");
        fs::create_dir_all(src.join("backups")).unwrap();
        fs::write(src.join("cell.guid"), "guid").unwrap();
        let f = File::create(src.join("backups/big.bin")).unwrap();
        f.set_len(48 << 20).unwrap();
        f.write_all_at(&vec![7u8; 6 << 20], 9 << 20).unwrap();
        f.write_all_at(b"tail", (48 << 20) - 4).unwrap();
        drop(f);
        let plan = scan::scan_whole(&src).unwrap();
        let mut digests = Vec::new();
        for share in [false, true] {
            let tasks: VecDeque<Task> = plan
                .items
                .iter()
                .filter_map(|i| match i {
                    Item::File { rel, meta } => {
                        Some(Task::file(rel.clone(), meta.clone(), &plan.followed))
                    }
                    _ => None,
                })
                .collect();
            let tmp = t.path().join(format!("copy-{share}"));
            fs::create_dir_all(tmp.join("backups")).unwrap();
            let sync = Durability::begin(&tmp, true).unwrap();
            let progress = Progress::start(&Silent, "copy", 0);
            let done =
                run_tasks(tasks, 2, &src, &tmp, Algo::Blake3, &progress, &sync, share).unwrap();
            let mut d: Vec<(String, String, u64)> = done
                .into_iter()
                .filter_map(|d| match d {
                    Done::File { file, .. } => Some((file.path, file.blake3, file.size)),
                    _ => None,
                })
                .collect();
            d.sort();
            digests.push(d);
            let copy = tmp.join("backups/big.bin");
            assert!(
                fs::read(&copy).unwrap() == fs::read(src.join("backups/big.bin")).unwrap(),
                "share_extents {share}: content differs"
            );
            let blocks = fs::metadata(&copy).unwrap().blocks() * 512;
            assert!(
                blocks < 12 << 20,
                "share_extents {share}: holes filled ({blocks})"
            );
        }
        assert_eq!(digests[0].len(), 2, "{digests:?}");
        assert_eq!(digests[0], digests[1]);
    }

    #[test]
    fn a_snapshot_with_more_databases_than_slots_is_described_from_its_copy() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        make_env(&src, lmdb::LIVE_MAX_DBS + 2);
        let (snap, copy) = both_descriptions(&src, &t.path().join("out"), CopyMode::Compact);
        assert!(snap.is_none(), "more named databases than a live env opens");
        assert_eq!(copy.0.databases.len() as u32, lmdb::LIVE_MAX_DBS + 3);
    }
}
