// SPDX-License-Identifier: Apache-2.0
//! `synbackup backup SRC DST`: a consistent, compacted, checksummed copy of a service
//! directory that appears atomically.
//!
//! Order of work: check the paths; scan; open every environment; check free space;
//! create a private temporary beside DST; (freeze; begin a read transaction on every
//! environment; resume); run the compacting copies of those snapshots `--jobs` at a
//! time, and copy plain files, each file hashed as written and fsynced; give directories their modes; write the
//! manifest; optionally verify; rename the temporary to DST and fsync the parent.
//! Anything that fails removes the temporary (and only it); a killed run leaves only
//! `.NAME.synbackup-partial.PID`, which nothing mistakes for a backup.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::cli::FreezeMode;
use crate::envcopy;
use crate::exit::{bail_code, fail, Code};
use crate::fsutil::{self, human};
use crate::interrupt::{self, Frozen};
use crate::lmdb::{Env, Mode, Snapshot};
use crate::manifest::{self, DirEntry, EnvEntry, FileEntry, FreezeInfo, LinkEntry, Manifest};
use crate::progress::Progress;
use crate::scan::{self, Item};
use crate::{telepath, verify};

/// The marker in a temporary's name: `.NAME.synbackup-partial.PID`.
pub(crate) const PARTIAL_MARK: &str = ".synbackup-partial.";

/// What to back up, and how.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) src: PathBuf,
    pub(crate) dst: PathBuf,
    pub(crate) skipdirs: Vec<String>,
    pub(crate) jobs: Option<u32>,
    pub(crate) freeze: FreezeMode,
    pub(crate) freeze_timeout: u64,
    pub(crate) verify: bool,
    /// Space that must remain free at the destination after the backup.
    pub(crate) min_free: u64,
    pub(crate) show_bar: bool,
}

/// What a finished backup reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) source: String,
    pub(crate) backup: String,
    pub(crate) environments: usize,
    pub(crate) files: usize,
    /// Bytes the copied data took at the source (allocated on disk).
    pub(crate) source_bytes: u64,
    /// Bytes written into the backup.
    pub(crate) bytes_written: u64,
    pub(crate) seconds: f64,
    /// Source bytes not written thanks to compaction (and holes).
    pub(crate) saved_bytes: u64,
    pub(crate) frozen: bool,
    /// Milliseconds the service was frozen (None: not frozen).
    pub(crate) freeze_ms: Option<f64>,
    /// Of which: the service's own freeze call (nexus lock and flush).
    pub(crate) freeze_call_ms: Option<f64>,
    pub(crate) verified: bool,
}

impl Summary {
    /// The one-line summary.
    pub(crate) fn line(&self) -> String {
        let mbps = self.bytes_written as f64 / 1e6 / self.seconds.max(1e-6);
        let freeze = match self.freeze_ms {
            Some(ms) => format!("frozen {ms:.0} ms"),
            None => "not frozen".to_string(),
        };
        format!(
            "backed up {} to {}: {} environments, {} files; read {}, wrote {} in {:.2} s ({mbps:.0} MB/s); compaction saved {}; {freeze}{}",
            self.source,
            self.backup,
            self.environments,
            self.files,
            human(self.source_bytes),
            human(self.bytes_written),
            self.seconds,
            human(self.saved_bytes),
            if self.verified { "; verified" } else { "" }
        )
    }
}

/// The temporary directory, removed on drop unless published.
struct Partial {
    path: PathBuf,
    armed: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                log::error!(
                    "could not remove the partial backup {}: {e}",
                    self.path.display()
                );
            } else {
                log::info!("removed the partial backup {}", self.path.display());
            }
        }
    }
}

/// The temporary's path for a final destination.
pub(crate) fn partial_path(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dst.with_file_name(format!(".{name}{PARTIAL_MARK}{}", std::process::id()))
}

fn bad(msg: String) -> anyhow::Error {
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

/// An environment to copy.
struct EnvJob {
    rel: PathBuf,
    env: Env,
    data_meta: fs::Metadata,
    compacted: u64,
}

fn open_env(src: &Path, rel: &Path, data_meta: &fs::Metadata) -> Result<EnvJob> {
    let dir = src.join(rel);
    let data = dir.join("data.mdb");
    let env = Env::open(&dir, Mode::Live).map_err(|e| {
        bad(format!(
            "{} cannot be opened as LMDB ({}); if it is damaged, restore it from an older backup",
            data.display(),
            e.root_cause()
        ))
    })?;
    let info = env.info()?;
    let needed = (info.last_pgno + 1) * info.page_size;
    if data_meta.len() < needed {
        return Err(bad(format!(
            "{} is truncated: {} bytes, but its last page ends at {needed}; restore it from an older backup",
            data.display(),
            data_meta.len()
        )));
    }
    let compacted = {
        let txn = env.read_txn()?;
        txn.compacted_pages(&info)? * info.page_size
    };
    Ok(EnvJob {
        rel: rel.to_path_buf(),
        env,
        data_meta: data_meta.clone(),
        compacted,
    })
}

/// What an environment task copies from.
enum Source {
    /// A snapshot taken while the service was frozen.
    Held(Snapshot),
    /// An open environment: its snapshot is taken when the task starts.
    Open(Env),
}

/// The work queue's items.
enum Task {
    Env {
        job_rel: PathBuf,
        data_meta: fs::Metadata,
        source: Source,
    },
    File {
        rel: PathBuf,
        meta: fs::Metadata,
    },
}

/// A finished task.
enum Done {
    Env {
        file: FileEntry,
        env: EnvEntry,
        source_bytes: u64,
    },
    File {
        file: FileEntry,
        source_bytes: u64,
    },
}

/// The scanned source, its open environments and the bytes a backup writes.
struct Sized {
    plan: scan::Plan,
    envs: Vec<EnvJob>,
    env_bytes: u64,
    file_bytes: u64,
    needed: u64,
}

fn size_up(src: &Path, skipdirs: &[String]) -> Result<Sized> {
    let skip = scan::compile_skipdirs(skipdirs)?;
    let plan = scan::scan(src, &skip)?;
    let mut envs = Vec::new();
    for item in plan.envs() {
        if let Item::Env { rel, data, .. } = item {
            envs.push(open_env(src, rel, data)?);
        }
    }
    let file_bytes: u64 = plan
        .items
        .iter()
        .map(|i| match i {
            Item::File { meta, .. } => fsutil::allocated(meta).min(meta.len()),
            _ => 0,
        })
        .sum();
    let env_bytes: u64 = envs.iter().map(|e| e.compacted).sum();
    let meta_bytes = 64 * 1024 + plan.items.len() as u64 * 256;
    let needed = env_bytes + file_bytes + meta_bytes;
    Ok(Sized {
        plan,
        envs,
        env_bytes,
        file_bytes,
        needed,
    })
}

/// Bytes a backup of `src` would write now (for preflights of callers).
pub(crate) fn estimate(src: &Path, skipdirs: &[String]) -> Result<u64> {
    Ok(size_up(src, skipdirs)?.needed)
}

/// Run a backup. The caller logs or prints the summary.
pub(crate) fn run(req: &Request) -> Result<Summary> {
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let src = check_source(&req.src)?;
    let dst = check_destination(&src, &req.dst)?;
    let Sized {
        plan,
        mut envs,
        env_bytes,
        file_bytes,
        needed,
    } = size_up(&src, &req.skipdirs)?;
    let parent = dst.parent().unwrap_or(Path::new("/"));
    let free = fsutil::free_space(parent)?;
    if needed + req.min_free > free {
        bail_code!(
            Code::NoSpace,
            "not enough space in {}: the backup needs {} ({} bytes){}, {} ({} bytes) is free; free space or choose another destination",
            parent.display(),
            human(needed),
            needed,
            if req.min_free > 0 { format!(" plus {} kept free", human(req.min_free)) } else { String::new() },
            human(free),
            free
        );
    }
    log::info!(
        "backing up {} to {}: {} environments ({}), {} other bytes, {} free",
        src.display(),
        dst.display(),
        envs.len(),
        human(env_bytes),
        human(file_bytes),
        human(free)
    );

    // The private temporary.
    let tmp = partial_path(&dst);
    fs::create_dir(&tmp).map_err(|e| fsutil::write_error(&tmp, e))?;
    let mut partial = Partial {
        path: tmp.clone(),
        armed: true,
    };
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))?;
    interrupt::check()?;

    // Directories (private while we fill them) and symlinks.
    let mut manifest_dirs = Vec::new();
    let mut symlinks = Vec::new();
    for item in &plan.items {
        match item {
            Item::Dir { rel, meta } | Item::Env { rel, meta, .. } => {
                let p = tmp.join(rel);
                fs::create_dir(&p).map_err(|e| fsutil::write_error(&p, e))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
                manifest_dirs.push(DirEntry {
                    path: rel_str(rel),
                    mode: meta.mode() & 0o7777,
                });
            }
            Item::Symlink { rel, target, meta } => {
                let p = tmp.join(rel);
                std::os::unix::fs::symlink(target, &p).map_err(|e| fsutil::write_error(&p, e))?;
                fsutil::apply_meta_link(&p, meta)?;
                symlinks.push(LinkEntry {
                    path: rel_str(rel),
                    target: target.to_string_lossy().into_owned(),
                });
            }
            Item::File { .. } => {}
        }
    }

    let jobs = req
        .jobs
        .map(|j| j as usize)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .min(envs.len().max(1))
        .max(1);
    let progress = Progress::start(
        &format!("backing up {}", src.display()),
        needed,
        req.show_bar,
    );

    // Snapshots: frozen together, or each on its own.
    let sock = src.join("sock");
    let want_freeze = match req.freeze {
        FreezeMode::Never => false,
        FreezeMode::Auto => telepath::answers(&sock),
        FreezeMode::Always => true,
    };
    let mut tasks: VecDeque<Task> = VecDeque::new();
    envs.sort_by_key(|e| std::cmp::Reverse(e.compacted));
    let (freeze_ms, freeze_call_ms) = if want_freeze {
        progress.set_label("freezing the service");
        let f0 = Instant::now();
        let frozen = Frozen::freeze(&sock, req.freeze_timeout).map_err(|e| {
            fail(
                Code::Freeze,
                format!(
                    "could not freeze the service at {}: {:#}; check that it runs and that this user may open its socket, or use --freeze never",
                    sock.display(),
                    e
                ),
            )
        })?;
        let call_ms = f0.elapsed().as_secs_f64() * 1e3;
        // Every snapshot while frozen: one point in time across environments.
        let mut snaps = Vec::new();
        let taken = (|| -> Result<()> {
            for e in envs.drain(..) {
                snaps.push((e.rel, e.data_meta, Snapshot::take(e.env)?));
            }
            crate::fault::point("after-freeze")
        })();
        frozen.resume();
        let ms = f0.elapsed().as_secs_f64() * 1e3;
        taken?;
        log::info!(
            "service frozen for {ms:.0} ms (freeze call {call_ms:.0} ms, {} snapshots {:.0} ms)",
            snaps.len(),
            ms - call_ms
        );
        for (rel, meta, snap) in snaps {
            tasks.push_back(Task::Env {
                job_rel: rel,
                data_meta: meta,
                source: Source::Held(snap),
            });
        }
        (Some(ms), Some(call_ms))
    } else {
        for e in envs.drain(..) {
            tasks.push_back(Task::Env {
                job_rel: e.rel,
                data_meta: e.data_meta,
                source: Source::Open(e.env),
            });
        }
        (None, None)
    };
    let mut files: Vec<(PathBuf, fs::Metadata)> = plan
        .items
        .iter()
        .filter_map(|i| match i {
            Item::File { rel, meta } => Some((rel.clone(), meta.clone())),
            _ => None,
        })
        .collect();
    files.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
    tasks.extend(
        files
            .into_iter()
            .map(|(rel, meta)| Task::File { rel, meta }),
    );

    progress.set_label(&format!("copying {}", src.display()));
    let done = run_tasks(tasks, jobs, &src, &tmp, &progress)?;

    // Assemble the manifest.
    let mut file_entries = Vec::new();
    let mut env_entries = Vec::new();
    let mut source_bytes = 0;
    for d in done {
        match d {
            Done::Env {
                file,
                env,
                source_bytes: s,
            } => {
                file_entries.push(file);
                env_entries.push(env);
                source_bytes += s;
            }
            Done::File {
                file,
                source_bytes: s,
            } => {
                file_entries.push(file);
                source_bytes += s;
            }
        }
    }
    file_entries.sort_by(|a, b| a.path.cmp(&b.path));
    env_entries.sort_by(|a, b| a.path.cmp(&b.path));
    let bytes_written: u64 = file_entries.iter().map(|f| f.size).sum();
    let n_files = file_entries.len() - env_entries.len();

    // Directory modes, owners and times, deepest first; then the top.
    for item in plan.items.iter().rev() {
        if let Item::Dir { rel, meta } | Item::Env { rel, meta, .. } = item {
            fsutil::apply_meta_dir(&tmp.join(rel), meta)?;
        }
    }
    let src_meta = fs::metadata(&src)?;
    let manifest = Manifest {
        format: manifest::FORMAT.to_string(),
        tool: "synbackup".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        source: src.to_string_lossy().into_owned(),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cell_guid: fs::read_to_string(src.join("cell.guid"))
            .ok()
            .map(|s| s.trim().to_string()),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        freeze: FreezeInfo {
            mode: format!("{:?}", req.freeze).to_lowercase(),
            frozen: freeze_ms.is_some(),
            ms: freeze_ms,
        },
        files: file_entries,
        symlinks,
        dirs: manifest_dirs,
        environments: env_entries,
    };
    let mpath = tmp.join(manifest::MANIFEST_NAME);
    {
        let f = fsutil::create_new(&mpath)?;
        std::io::Write::write_all(&mut &f, &manifest.to_json()?)
            .map_err(|e| fsutil::write_error(&mpath, e))?;
        // Readable by group/others only where the source's top directory is.
        let mode = 0o600 | (src_meta.mode() & 0o044);
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        let _ = nix::unistd::fchown(
            std::os::fd::AsFd::as_fd(&f),
            Some(nix::unistd::Uid::from_raw(src_meta.uid())),
            Some(nix::unistd::Gid::from_raw(src_meta.gid())),
        );
        f.sync_all().map_err(|e| fsutil::write_error(&mpath, e))?;
    }
    drop(progress);
    crate::fault::point("before-publish")?;

    let verified = if req.verify {
        interrupt::check()?;
        let report = verify::verify(&tmp)?;
        if !report.ok() {
            bail_code!(
                Code::Verify,
                "the new backup of {} failed verification ({}); it was not published",
                src.display(),
                report.problems.join("; ")
            );
        }
        let marker = tmp.join(crate::catalog::VERIFIED_MARK);
        fs::write(&marker, format!("{}\n", chrono::Utc::now().to_rfc3339()))
            .and_then(|()| File::open(&marker)?.sync_all())
            .map_err(|e| fsutil::write_error(&marker, e))?;
        true
    } else {
        false
    };

    // Publish: the top gets the source's owner and mode (never more open), then rename.
    interrupt::check()?;
    fsutil::apply_meta_dir(&tmp, &src_meta)?;
    fs::rename(&tmp, &dst).map_err(|e| {
        bad(format!(
            "cannot rename {} to {}: {e}; was the destination created meanwhile?",
            tmp.display(),
            dst.display()
        ))
    })?;
    partial.armed = false;
    fsutil::fsync_dir(parent)?;

    let allocated_src: u64 = source_bytes;
    Ok(Summary {
        source: src.to_string_lossy().into_owned(),
        backup: dst.to_string_lossy().into_owned(),
        environments: manifest.environments.len(),
        files: n_files,
        source_bytes: allocated_src,
        bytes_written,
        seconds: t0.elapsed().as_secs_f64(),
        saved_bytes: allocated_src.saturating_sub(bytes_written),
        frozen: freeze_ms.is_some(),
        freeze_ms,
        freeze_call_ms,
        verified,
    })
}

fn rel_str(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// Run the copy tasks on `jobs` workers; the first failure stops the others.
fn run_tasks(
    tasks: VecDeque<Task>,
    jobs: usize,
    src: &Path,
    tmp: &Path,
    progress: &Progress,
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
                    if let Err(e) = crate::fault::point("panic-in-worker") {
                        abort.store(true, Ordering::Relaxed);
                        if let Ok(mut errs) = errors.lock() {
                            errs.push(e);
                        }
                        break;
                    }
                    match run_task(task, src, tmp, progress, &stop) {
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
    progress: &Progress,
    stop: &dyn Fn() -> bool,
) -> Result<Done> {
    match task {
        Task::Env {
            job_rel,
            data_meta,
            source,
        } => {
            let snap = match source {
                Source::Held(snap) => snap,
                Source::Open(env) => Snapshot::take(env)?,
            };
            let copy = envcopy::start(snap)?;
            let dst = tmp.join(&job_rel).join("data.mdb");
            let hashed = copy.drain(&dst, stop, &|n| progress.add(n))?;
            let f = File::open(&dst)?;
            fsutil::apply_meta_fd(&f, &dst, &data_meta, false)?;
            f.sync_all().map_err(|e| fsutil::write_error(&dst, e))?;
            drop(f);
            let env = describe_copy(&tmp.join(&job_rel), &job_rel, fsutil::allocated(&data_meta))?;
            let rel = job_rel.join("data.mdb");
            Ok(Done::Env {
                file: FileEntry {
                    path: rel_str(&rel),
                    size: hashed.size,
                    sha256: hashed.sha256,
                    mode: data_meta.mode() & 0o7777,
                },
                env,
                source_bytes: fsutil::allocated(&data_meta),
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
            let hashed = fsutil::copy_sparse_hashed(&sf, &sp, &df, &dp, |n| {
                progress.add(n);
                if stop() {
                    interrupt::check()?;
                    return Err(anyhow!("stopped after another copy failed"));
                }
                Ok(())
            })?;
            fsutil::apply_meta_fd(&df, &dp, &meta, true)?;
            df.sync_all().map_err(|e| fsutil::write_error(&dp, e))?;
            Ok(Done::File {
                file: FileEntry {
                    path: rel_str(&rel),
                    size: hashed.size,
                    sha256: hashed.sha256,
                    mode: meta.mode() & 0o7777,
                },
                source_bytes: hashed.data_bytes,
            })
        }
    }
}

/// Page size, last page and entry counts of a finished copy.
fn describe_copy(dir: &Path, rel: &Path, source_bytes: u64) -> Result<EnvEntry> {
    let env = Env::open(dir, Mode::Private)?;
    let info = env.info()?;
    let txn = env.read_txn()?;
    let mut databases = BTreeMap::new();
    databases.insert(manifest::MAIN_DB.to_string(), txn.main_stat()?.entries);
    for db in txn.named_dbs()? {
        databases.insert(manifest::db_key(&db.name), txn.db_stat(&db)?.entries);
    }
    Ok(EnvEntry {
        path: rel_str(rel),
        page_size: info.page_size,
        last_pgno: info.last_pgno,
        source_bytes,
        databases,
    })
}
