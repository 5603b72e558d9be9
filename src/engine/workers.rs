// SPDX-License-Identifier: Apache-2.0
//! The copy tasks of a backup and the `--jobs` workers that run them: compacting (or
//! plain) copies of environments (from held or fresh snapshots) and sparse copies of
//! plain files, each hashed as written, given its metadata and fsynced. The first
//! failure stops the others.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Result};

use crate::base::digest::Algo;
use crate::base::durable::Durability;
use crate::base::fsutil;
use crate::base::interrupt;
use crate::base::xattrs;
use crate::engine::envcopy::{self, CopyMode};
use crate::engine::lmdb::{Env, Mode, Snapshot};
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
    },
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
/// finished file is handed to `sync` (fsynced now, or by its commit).
pub(crate) fn run_tasks(
    tasks: VecDeque<Task>,
    jobs: usize,
    src: &Path,
    tmp: &Path,
    algo: Algo,
    progress: &Progress,
    sync: &Durability,
) -> Result<Vec<Done>> {
    let queue = Mutex::new(tasks);
    let abort = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    let stop = || abort.load(Ordering::Relaxed) || interrupt::requested();
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
                    match run_task(task, src, tmp, algo, progress, sync, &stop) {
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

fn run_task(
    task: Task,
    src: &Path,
    tmp: &Path,
    algo: Algo,
    progress: &Progress,
    sync: &Durability,
    stop: &dyn Fn() -> bool,
) -> Result<Done> {
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
            let copy = envcopy::start(snap, mode, algo)?;
            let dst = tmp.join(&job_rel).join("data.mdb");
            let hashed = copy.drain(&dst, stop, &|n| progress.add(n))?;
            let rel = job_rel.join("data.mdb");
            let attrs = source_xattrs(&src.join(&rel))?;
            let f = File::open(&dst)?;
            let applied = fsutil::copy_meta_fd(&f, &dst, &data_meta, false, &attrs)?;
            sync.file_done(&f, &dst)?;
            drop(f);
            let (env, compacted) =
                describe_copy(&tmp.join(&job_rel), &job_rel, fsutil::allocated(&data_meta))?;
            let compacted_bytes = match mode {
                CopyMode::Compact => hashed.size,
                CopyMode::Plain => compacted,
            };
            Ok(Done::Env {
                file: file_entry(&rel, algo, hashed, &applied),
                env,
                source_bytes: fsutil::allocated(&data_meta),
                compacted_bytes,
            })
        }
        Task::File { rel, meta } => {
            let sp = src.join(&rel);
            let dp = tmp.join(&rel);
            let sf = File::open(&sp).map_err(|e| {
                bad(format!(
                    "cannot read {}: {e}; fix its permissions or run as the service's user or root",
                    sp.display()
                ))
            })?;
            let df = fsutil::create_new(&dp)?;
            let hashed = fsutil::copy_sparse_hashed(&sf, &sp, &df, &dp, algo, |n| {
                progress.add(n);
                if stop() {
                    interrupt::check()?;
                    return Err(anyhow!("stopped after another copy failed"));
                }
                Ok(())
            })?;
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

/// Page size, last page and entry counts of a finished copy, and the bytes a
/// compacted copy of it takes (from its free list).
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
