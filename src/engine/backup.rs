// SPDX-License-Identifier: Apache-2.0
//! `synbackup backup SRC DST`: a consistent, compacted, checksummed copy of a service
//! directory that appears atomically.
//!
//! Order of work, one function per step ([`run`] reads as this list): check the
//! paths; size up (scan, open every environment, count the compacted bytes); check
//! free space; create a private temporary beside DST (`partial`) and lay out its
//! directories and links; take the snapshots (freeze; begin a read transaction on
//! every environment; resume); copy: the compacting copies of those snapshots and
//! the plain files, `--jobs` at a time (`workers`), each file hashed as written and
//! fsynced; give directories their modes; assemble and write the manifest;
//! optionally verify; publish (rename the temporary to DST and fsync the parent).
//! Given the service's certificate directory (`Request::cert_dir`), it is walked
//! with the source and copied after it, under `synbackup-certs/` (`certdir`).
//! Anything that fails removes the temporary (and only it); a killed run leaves only
//! `.NAME.synbackup-partial.PID`, which nothing mistakes for a backup.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::base::digest::Algo;
use crate::base::durable::Durability;
use crate::base::exit::{bail_code, fail, Code};
use crate::base::fault;
use crate::base::fsutil::{self, human};
use crate::base::interrupt;
use crate::base::progress::Reporter;
use crate::engine::certdir::{self, Carried, CertPlan};
use crate::engine::envcopy::CopyMode;
use crate::engine::freeze::{self, FreezeMode, Frozen};
use crate::engine::lmdb::{self, Env, EnvInfo, Snapshot};
use crate::engine::lockowner;
use crate::engine::manifest::{
    self, CellAtSnapshot, DirEntry, EnvEntry, FileEntry, FreezeInfo, FromMirror, LinkEntry,
    Manifest,
};
use crate::engine::mirror::OnMirror;
use crate::engine::partial::Partial;
use crate::engine::paths::{bad, check_destination, check_source};
use crate::engine::progress::{Heartbeat, Progress};
use crate::engine::scan::{self, Item};
use crate::engine::telepath::{self, Probe};
use crate::engine::teleurl::Endpoint;
use crate::engine::verify;
use crate::engine::workers::{self, rel_str, Done, Source, Task};
use crate::host::celllock;

/// What to back up, and how.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) src: PathBuf,
    pub(crate) dst: PathBuf,
    pub(crate) skipdirs: Vec<String>,
    /// Copy the whole directory (a maintenance window): no skip rule applies and
    /// `skipdirs` is ignored (`scan::scan_whole`).
    pub(crate) whole: bool,
    pub(crate) jobs: Option<u32>,
    pub(crate) freeze: FreezeMode,
    pub(crate) freeze_timeout: u64,
    /// How long to wait for a service that runs on SRC (holds the lock on its
    /// `cell.guid`) but does not answer on its socket yet: a cell that is booting.
    pub(crate) boot_wait: Duration,
    pub(crate) verify: bool,
    /// Compacting copies of the environments, or plain ones (`--no-compact`).
    pub(crate) copy: CopyMode,
    /// Space that must remain free at the destination after the backup.
    pub(crate) min_free: u64,
    /// Who shows the progress (a bar, systemd's status line): the caller's choice.
    pub(crate) progress: Arc<dyn Reporter>,
    /// The service's certificate directory, carried in the backup (`certdir`).
    pub(crate) cert_dir: Option<PathBuf>,
    /// The digest of every file (the manifest names it).
    pub(crate) hash: Algo,
    /// SRC is a mirror caught up with its leader (`engine::mirror`): it is frozen
    /// whatever `freeze` says, its index at the snapshots must be at least the
    /// leader's at the start, and the manifest records both (`from_mirror`).
    pub(crate) on_mirror: Option<OnMirror>,
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
    /// Data bytes written into the backup (holes of sparse files are not written).
    pub(crate) bytes_written: u64,
    pub(crate) seconds: f64,
    /// Source bytes not written thanks to compaction (and holes).
    pub(crate) saved_bytes: u64,
    /// The environments were compacted (false: `--no-compact`, pages in place).
    pub(crate) compacted: bool,
    /// Source bytes a compacting copy leaves out (the free pages): what a
    /// maintenance window would reclaim. `saved_bytes` when compacted.
    pub(crate) reclaimable_bytes: u64,
    pub(crate) frozen: bool,
    /// Milliseconds the service was frozen (None: not frozen).
    pub(crate) freeze_ms: Option<f64>,
    /// Of which: the service's own freeze call (nexus lock and flush).
    pub(crate) freeze_call_ms: Option<f64>,
    pub(crate) verified: bool,
    /// The certificate directory carried, and its files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cert_dir: Option<String>,
    pub(crate) cert_files: usize,
}

impl Summary {
    /// The one-line summary.
    pub(crate) fn line(&self) -> String {
        let mbps = self.bytes_written as f64 / 1e6 / self.seconds.max(1e-6);
        let freeze = match self.freeze_ms {
            Some(ms) => format!("frozen {ms:.0} ms"),
            None => "not frozen".to_string(),
        };
        let compaction = if self.compacted {
            format!("compaction saved {}", human(self.saved_bytes))
        } else {
            format!(
                "not compacted (pages in place; compacting would save {})",
                human(self.reclaimable_bytes)
            )
        };
        format!(
            "backed up {} to {}: {} environments, {} files{}; read {}, wrote {} in {:.2} s ({mbps:.0} MB/s); {compaction}; {freeze}{}",
            self.source,
            self.backup,
            self.environments,
            self.files,
            match &self.cert_dir {
                Some(d) => format!(" and the certificate directory {d} ({} files)", self.cert_files),
                None => String::new(),
            },
            human(self.source_bytes),
            human(self.bytes_written),
            self.seconds,
            if self.verified { "; verified" } else { "" }
        )
    }
}

/// An environment to copy.
struct EnvJob {
    rel: PathBuf,
    env: Env,
    data_meta: fs::Metadata,
    compacted: u64,
    /// What a plain copy writes: every page up to the last.
    plain: u64,
}

/// Open the environment the scan recorded at `rel` (its directory `dir_meta`, its
/// `data.mdb` `data_meta`; `followed`: the scan's followed links) Live, from its
/// directory opened without following links and checked against the scan, as the
/// plain files are (`fsutil::open_scanned`): an environment, or its `data.mdb` or
/// `lock.mdb`, swapped for a link since the scan fails the run naming it (exit 3).
fn open_env(
    src: &Path,
    rel: &Path,
    dir_meta: &fs::Metadata,
    data_meta: &fs::Metadata,
    followed: &[(PathBuf, PathBuf)],
) -> Result<EnvJob> {
    let dir = src.join(rel);
    let data = dir.join("data.mdb");
    let root = fsutil::open_source_root(src)?;
    let via_link = followed.iter().any(|(link, _)| rel.starts_with(link));
    let held = lmdb::Held {
        dir: Arc::new(fsutil::open_scanned(&root, src, rel, via_link, dir_meta)?.into()),
        data: Arc::new(data_meta.clone()),
        root: src.to_path_buf(),
    };
    let env = lockowner::open_live(held, &dir).map_err(|e| {
        if crate::base::exit::code_of(&e) == Code::BadPath {
            return e;
        }
        bad(format!(
            "{} cannot be opened as LMDB ({}); if it is damaged, restore it from an older backup",
            data.display(),
            e.root_cause()
        ))
    })?;
    let info = env.info()?;
    check_not_truncated(&data, &env.data_file()?, &info)?;
    let compacted = {
        let txn = env.read_txn()?;
        txn.compacted_pages(&info)? * info.page_size
    };
    Ok(EnvJob {
        rel: rel.to_path_buf(),
        env,
        data_meta: data_meta.clone(),
        compacted,
        plain: (info.last_pgno + 1) * info.page_size,
    })
}

/// Fail when `data` (open as `file`, LMDB's own) is shorter than its newest meta
/// page says, compared against its size now (it may have grown since the scan);
/// returns its metadata now.
fn check_not_truncated(data: &Path, file: &File, info: &EnvInfo) -> Result<fs::Metadata> {
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat {}: {e}", data.display())))?;
    let needed = (info.last_pgno + 1) * info.page_size;
    if meta.len() < needed {
        return Err(bad(format!(
            "{} is truncated: {} bytes, but its last page ends at {needed}; restore it from an older backup",
            data.display(),
            meta.len()
        )));
    }
    Ok(meta)
}

/// The scanned source, its open environments and the bytes a backup writes.
struct Sized {
    plan: scan::Plan,
    envs: Vec<EnvJob>,
    env_bytes: u64,
    file_bytes: u64,
    needed: u64,
}

/// `copying`: this is the copy's scan (not an estimate's): the test point
/// `after-scan` (between the scan and the first open) is passed.
fn size_up(
    src: &Path,
    skipdirs: &[String],
    whole: bool,
    copy: CopyMode,
    copying: bool,
) -> Result<Sized> {
    let plan = scan_source(src, skipdirs, whole)?;
    if copying {
        fault::point("after-scan")?;
    }
    let mut envs = Vec::new();
    for item in plan.envs() {
        if let Item::Env { rel, meta, data } = item {
            envs.push(open_env(src, rel, meta, data, &plan.followed)?);
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
    let env_bytes: u64 = envs
        .iter()
        .map(|e| match copy {
            CopyMode::Compact => e.compacted,
            CopyMode::Plain => e.plain,
        })
        .sum();
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
/// The walk of the source: a backup's (skip rules and `skipdirs`), or the whole
/// directory for a maintenance window (`Request::whole`).
fn scan_source(src: &Path, skipdirs: &[String], whole: bool) -> Result<scan::Plan> {
    if whole {
        scan::scan_whole(src)
    } else {
        scan::scan(src, &scan::compile_skipdirs(skipdirs)?)
    }
}

/// `whole`: as `Request::whole`.
pub(crate) fn estimate(src: &Path, skipdirs: &[String], whole: bool) -> Result<u64> {
    Ok(size_up(src, skipdirs, whole, CopyMode::Compact, false)?.needed)
}

/// Run a backup. The caller logs or prints the summary.
pub(crate) fn run(req: &Request) -> Result<Summary> {
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let src = check_source(&req.src)?;
    let dst = check_destination(&src, &req.dst)?;
    let mut sized = size_up(&src, &req.skipdirs, req.whole, req.copy, true)?;
    let certs = match &req.cert_dir {
        Some(d) => certdir::plan_cert_dir(d, &src, &dst)?,
        None => None,
    };
    sized.needed += certs.as_ref().map_or(0, |c| c.bytes + 64 * 1024);
    check_space(&src, &dst, &sized, req.min_free)?;
    let mut partial = Partial::create(&dst)?;
    interrupt::check()?;
    let tmp = partial.path().to_path_buf();
    // Before anything is written under it: its commit reports every write error since.
    let sync = Durability::begin(&tmp, false)?;
    let layout = lay_out(&sized.plan, &tmp)?;
    let jobs = job_count(req.jobs, sized.envs.len(), sized.env_bytes);
    let progress = Progress::start(
        req.progress.as_ref(),
        &format!("backing up {}", src.display()),
        sized.needed,
    );
    let (mut tasks, freeze, changes) =
        take_snapshots(req, &src, &sized.plan, sized.envs, &progress)?;
    let from_mirror = match &req.on_mirror {
        Some(on) => Some(check_caught_up(on, &src, &freeze)?),
        None => None,
    };
    lay_out_changes(&mut sized.plan, &tmp, changes)?;
    tasks.extend(file_tasks(&sized.plan));
    progress.set_label(&format!("copying {}", src.display()));
    // A window's copy may share the source's extents; a backup's never.
    let done = workers::run_tasks(
        tasks, jobs, &src, &tmp, req.hash, &progress, &sync, req.whole,
    )?;
    let mut copied = collect(done);
    let mut dirs = apply_dir_meta(&sized.plan, &src, &tmp)?;
    let mut layout = layout;
    let carried = carry_certs(certs.as_ref(), &tmp, req.hash, &progress, &sync)?;
    if let Some(c) = &carried {
        join_carried(c, &mut copied, &mut dirs, &mut layout);
    }
    let src_meta = fs::metadata(&src)?;
    let mut manifest = assemble_manifest(req, &src, started, &freeze, copied.clone(), layout, dirs);
    manifest.cert_dir = carried.as_ref().map(|c| c.info.clone());
    manifest.from_mirror = from_mirror;
    write_manifest(&tmp, &manifest, &src_meta)?;
    // Every file, directory and their metadata on the device, before the backup is
    // verified or published.
    sync.commit()?;
    drop(progress);
    fault::point("before-publish")?;
    let verified = req.verify
        && verify_before_publish(req.progress.as_ref(), &src, &tmp, copied.bytes_written)?;
    publish(&mut partial, &src, &src_meta, &dst)?;
    Ok(Summary {
        source: src.to_string_lossy().into_owned(),
        backup: dst.to_string_lossy().into_owned(),
        environments: manifest.environments.len(),
        files: copied.files.len() - copied.envs.len() - cert_files(&carried),
        cert_dir: certs.as_ref().map(|c| c.dir.to_string_lossy().into_owned()),
        cert_files: cert_files(&carried),
        source_bytes: copied.source_bytes,
        bytes_written: copied.bytes_written,
        seconds: t0.elapsed().as_secs_f64(),
        saved_bytes: copied.source_bytes.saturating_sub(copied.bytes_written),
        compacted: req.copy == CopyMode::Compact,
        reclaimable_bytes: copied
            .source_bytes
            .saturating_sub(copied.bytes_written - copied.env_bytes + copied.compacted_bytes),
        frozen: freeze.ms.is_some(),
        freeze_ms: freeze.ms,
        freeze_call_ms: freeze.call_ms,
        verified,
    })
}

/// A backup on a mirror: the mirror, frozen for the snapshots, said it is a
/// mirror at an index no less than the leader's at the start; what the manifest
/// records of it.
fn check_caught_up(on: &OnMirror, src: &Path, freeze: &FreezeTimes) -> Result<FromMirror> {
    let want = on.leader.nexus_index;
    let Some(cell) = &freeze.cell else {
        bail_code!(
            Code::Freeze,
            "the mirror at {} was not frozen or did not say its nexus index while frozen, so the backup cannot prove it holds the leader's index {want}; not published",
            src.display()
        );
    };
    if cell.role != "mirror" || cell.nexus_index < want {
        bail_code!(
            Code::NoMirror,
            "the cell at {} was, frozen for the snapshots, the {} at nexus index {}, not a mirror at the leader's index {want} or later (was it promoted or restored meanwhile?); not published",
            src.display(),
            cell.role,
            cell.nexus_index
        );
    }
    Ok(FromMirror {
        leader: match &on.leader.at {
            Endpoint::Dir(d) => manifest::path_key(d),
            url => url.to_string(),
        },
        leader_nexus_index: want,
        mirror: manifest::path_key(src),
        nexus_index: cell.nexus_index,
        waited_ms: on.mirror.waited.as_secs_f64() * 1e3,
    })
}

/// Copy the certificate directory (if any) after the source.
fn carry_certs(
    certs: Option<&CertPlan>,
    tmp: &Path,
    algo: Algo,
    progress: &Progress,
    sync: &Durability,
) -> Result<Option<Carried>> {
    let Some(plan) = certs else {
        return Ok(None);
    };
    interrupt::check()?;
    progress.set_label(&format!("copying {}", plan.dir.display()));
    Ok(Some(certdir::copy_cert_dir(
        plan, tmp, algo, progress, sync,
    )?))
}

/// The carried certificate directory's entries join the manifest's lists (kept
/// sorted).
fn join_carried(
    carried: &Carried,
    copied: &mut Copied,
    dirs: &mut Vec<DirEntry>,
    layout: &mut Layout,
) {
    copied.files.extend(carried.files.iter().cloned());
    copied.files.sort_by(|a, b| a.path.cmp(&b.path));
    copied.source_bytes += carried.bytes;
    copied.bytes_written += carried.bytes;
    dirs.extend(carried.dirs.iter().cloned());
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    layout.symlinks.extend(carried.symlinks.iter().cloned());
    layout.symlinks.sort_by(|a, b| a.path.cmp(&b.path));
}

fn cert_files(carried: &Option<Carried>) -> usize {
    carried.as_ref().map_or(0, |c| c.files.len())
}

/// Fail early, with both numbers, when DST's filesystem cannot hold the backup.
fn check_space(src: &Path, dst: &Path, sized: &Sized, min_free: u64) -> Result<()> {
    let parent = dst.parent().unwrap_or(Path::new("/"));
    let free = fsutil::free_space(parent)?;
    let needed = sized.needed;
    if needed + min_free > free {
        bail_code!(
            Code::NoSpace,
            "not enough space in {}: the backup needs {} ({} bytes){}, {} ({} bytes) is free; free space or choose another destination",
            parent.display(),
            human(needed),
            needed,
            if min_free > 0 { format!(" plus {} kept free", human(min_free)) } else { String::new() },
            human(free),
            free
        );
    }
    log::info!(
        "backing up {} to {}: {} environments ({}), {} other bytes, {} free",
        src.display(),
        dst.display(),
        sized.envs.len(),
        human(sized.env_bytes),
        human(sized.file_bytes),
        human(free)
    );
    Ok(())
}

/// The links of the backup, as the manifest lists them (followed ones included).
struct Layout {
    symlinks: Vec<LinkEntry>,
}

/// Create the directories (private while they are filled) and the symlinks.
fn lay_out(plan: &scan::Plan, tmp: &Path) -> Result<Layout> {
    let mut symlinks = Vec::new();
    for item in &plan.items {
        match item {
            Item::Dir { rel, .. } | Item::Env { rel, .. } => {
                make_dir(tmp, rel)?;
            }
            Item::Symlink { rel, target, meta } => {
                let p = tmp.join(rel);
                std::os::unix::fs::symlink(target, &p).map_err(|e| fsutil::write_error(&p, e))?;
                fsutil::apply_meta_link(&p, meta)?;
                symlinks.push(LinkEntry {
                    path: rel_str(rel),
                    target: rel_str(target),
                    followed: false,
                });
            }
            Item::File { .. } => {}
        }
    }
    symlinks.extend(plan.followed.iter().map(|(rel, target)| LinkEntry {
        path: rel_str(rel),
        target: rel_str(target),
        followed: true,
    }));
    symlinks.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Layout { symlinks })
}

/// Create directory `rel` in the temporary, private while it is filled.
fn make_dir(tmp: &Path, rel: &Path) -> Result<()> {
    let p = tmp.join(rel);
    fs::create_dir(&p).map_err(|e| fsutil::write_error(&p, e))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Environments of this size or less, on average, are copied two per CPU.
const SMALL_ENV: u64 = 32 << 20;

/// At most this many copies at once by default.
const MAX_DEFAULT_JOBS: usize = 8;

/// `--jobs`, or the CPUs (twice as many, up to MAX_DEFAULT_JOBS, when the
/// environments average SMALL_ENV or less); never more than the environments, at
/// least one. A small environment's copy spends much of its time starting and
/// draining (threads, the walk's first buffer, the last write, its metadata), with
/// the CPU and the device idle: on a Cortex of 200 small layers (the many shape,
/// bench/RESULTS.md) four copies at once on two CPUs took 0.95 s where two took
/// 1.2 s. A copy stages at most what it writes, so small ones hold little memory.
fn job_count(jobs: Option<u32>, envs: usize, env_bytes: u64) -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let small = envs > 0 && env_bytes / envs as u64 <= SMALL_ENV;
    let default = if small {
        (2 * cpus).min(MAX_DEFAULT_JOBS.max(cpus))
    } else {
        cpus
    };
    jobs.map(|j| j as usize)
        .unwrap_or(default)
        .min(envs.max(1))
        .max(1)
}

/// How long the service was frozen (None: not frozen).
struct FreezeTimes {
    ms: Option<f64>,
    call_ms: Option<f64>,
    /// Why a service that has a socket was not frozen (`--freeze auto`).
    reason: Option<String>,
    /// What the cell said while frozen (its iden, nexus index and role).
    cell: Option<CellAtSnapshot>,
}

/// Whether to freeze, and why not when a socket is there but cannot be used. A
/// service that runs on SRC but does not answer yet is waited for (`boot_wait`),
/// then refused. A freeze recorded by a synbackup that died is resumed first (when
/// it is provably still in place).
fn decide_freeze(
    mode: FreezeMode,
    src: &Path,
    sock: &Path,
    boot_wait: Duration,
    progress: &Progress,
) -> Result<(bool, Option<String>)> {
    let mut probe = telepath::probe(sock);
    if mode != FreezeMode::Never && !matches!(probe, Probe::Answers) {
        if let Some(pid) = celllock::cell_lock_holder(src) {
            progress.set_label("waiting for the service to answer");
            probe = wait_for_boot(src, sock, pid, boot_wait)?;
        }
    }
    if matches!(probe, Probe::Answers) {
        freeze::recover_stale(sock);
    }
    Ok(match (mode, probe) {
        (FreezeMode::Never, _) => (false, None),
        (FreezeMode::Always, _) | (FreezeMode::Auto, Probe::Answers) => (true, None),
        (FreezeMode::Auto, Probe::NoService) => (false, None),
        (FreezeMode::Auto, Probe::Unreachable(why)) => {
            log::warn!(
                "{why}; backing up without a freeze (--freeze auto): each environment is consistent on its own, not all at one point in time"
            );
            (false, Some(why))
        }
    })
}

/// A cell runs on `src` (process `pid` holds the lock on its `cell.guid`) but
/// nothing answers on its socket: it is booting. Wait until it answers (or ends)
/// within `bound`; refuse after that: copying it unfrozen would not be consistent.
fn wait_for_boot(src: &Path, sock: &Path, pid: u32, bound: Duration) -> Result<Probe> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    log::info!(
        "the service on {} runs (pid {pid} {comm} holds its cell.guid lock) but does not answer on {} yet: waiting up to {} for it (--boot-wait, SYNBACKUP_BOOT_WAIT)",
        src.display(),
        sock.display(),
        crate::base::units::format_duration(bound)
    );
    let t0 = Instant::now();
    loop {
        interrupt::check()?;
        let probe = telepath::probe(sock);
        if matches!(probe, Probe::Answers) {
            log::info!(
                "the service on {} answers after {:.1} s",
                src.display(),
                t0.elapsed().as_secs_f64()
            );
            return Ok(probe);
        }
        if celllock::cell_lock_holder(src).is_none() {
            log::info!("the service on {} ended before it answered", src.display());
            return Ok(probe);
        }
        if t0.elapsed() >= bound {
            bail_code!(
                Code::Freeze,
                "the service on {} runs (pid {pid} {comm} holds its cell.guid lock) but nothing answered on {} within {}: it is still booting (or hung), so it cannot be frozen and was not backed up; back up once it answers (--boot-wait or SYNBACKUP_BOOT_WAIT waits longer), or stop it first",
                src.display(),
                sock.display(),
                crate::base::units::format_duration(bound)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The environment tasks: snapshots taken together while the service is frozen, or
/// each taken when its copy starts (no freeze).
fn take_snapshots(
    req: &Request,
    src: &Path,
    plan: &scan::Plan,
    envs: Vec<EnvJob>,
    progress: &Progress,
) -> Result<(VecDeque<Task>, FreezeTimes, EnvChanges)> {
    let sock = src.join("sock");
    // A mirror is always frozen: that costs its leader nothing.
    let mode = if req.on_mirror.is_some() {
        FreezeMode::Always
    } else {
        req.freeze
    };
    let (want_freeze, reason) = decide_freeze(mode, src, &sock, req.boot_wait, progress)?;
    let mut tasks: VecDeque<Task> = VecDeque::new();
    fault::point("before-snapshots")?;
    if !want_freeze {
        let mut set = env_set_now(src, &req.skipdirs, req.whole, plan, envs)?;
        for e in set.envs.drain(..) {
            tasks.push_back(Task::Env {
                job_rel: e.rel,
                data_meta: e.data_meta,
                source: Source::Open(e.env),
                mode: req.copy,
            });
        }
        let none = FreezeTimes {
            ms: None,
            call_ms: None,
            reason,
            cell: None,
        };
        return Ok((tasks, none, set.changes));
    }
    progress.set_label("freezing the service");
    let f0 = Instant::now();
    let frozen = Frozen::freeze(&sock, req.freeze_timeout).map_err(|e| {
        if let Some(theirs) = e.downcast_ref::<freeze::AlreadyFrozen>() {
            return fail(Code::Freeze, theirs.to_string());
        }
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
    let cell = frozen.state.as_ref().map(CellAtSnapshot::of);
    // Every snapshot while frozen: one point in time across environments, of the
    // environments there are now.
    let mut snaps = Vec::new();
    let mut changes = EnvChanges::default();
    let taken = (|| -> Result<()> {
        let set = env_set_now(src, &req.skipdirs, req.whole, plan, envs)?;
        changes = set.changes;
        for e in set.envs {
            let snap = Snapshot::take(e.env)?;
            let meta = check_not_truncated(
                &snap.dir().join("data.mdb"),
                &snap.data_file()?,
                &snap.info()?,
            )?;
            snaps.push((e.rel, meta, snap));
        }
        fault::point("after-freeze")
    })();
    let resumed = frozen.resume();
    let ms = f0.elapsed().as_secs_f64() * 1e3;
    taken?;
    resumed?;
    log::info!(
        "service frozen for {ms:.0} ms, then resumed (freeze call {call_ms:.0} ms, {} snapshots {:.0} ms)",
        snaps.len(),
        ms - call_ms
    );
    for (rel, meta, snap) in snaps {
        tasks.push_back(Task::Env {
            job_rel: rel,
            data_meta: meta,
            source: Source::Held(snap),
            mode: req.copy,
        });
    }
    let times = FreezeTimes {
        ms: Some(ms),
        call_ms: Some(call_ms),
        reason: None,
        cell,
    };
    Ok((tasks, times, changes))
}

/// The environments to snapshot, as the source is now.
struct EnvSet {
    /// Open, largest first: those of the scan still there and those created since.
    envs: Vec<EnvJob>,
    changes: EnvChanges,
}

/// How the environments changed between the scan and the snapshot.
#[derive(Default)]
struct EnvChanges {
    /// Items of the environments created since the scan, and of their new parent
    /// directories (parents first).
    added: Vec<Item>,
    /// Environments of the scan that are gone.
    removed: Vec<PathBuf>,
}

/// Walk the source again (a cheap walk): an environment removed since the scan is
/// gone, not corrupt; one created since is opened and included.
fn env_set_now(
    src: &Path,
    skipdirs: &[String],
    whole: bool,
    scanned: &scan::Plan,
    envs: Vec<EnvJob>,
) -> Result<EnvSet> {
    let now = scan_source(src, skipdirs, whole)?;
    let known: HashSet<&Path> = scanned.items.iter().map(item_rel).collect();
    let current: HashSet<&Path> = now.envs().map(item_rel).collect();
    let mut kept: Vec<EnvJob> = Vec::new();
    let mut removed = Vec::new();
    for e in envs {
        if current.contains(e.rel.as_path()) {
            kept.push(e);
        } else {
            removed.push(e.rel.clone());
            log::info!(
                "{} was removed since the scan; it is not in the backup",
                src.join(&e.rel).display()
            );
        }
    }
    let new_envs: Vec<PathBuf> = current
        .iter()
        .filter(|r| !known.contains(*r))
        .map(|r| r.to_path_buf())
        .collect();
    let mut added = Vec::new();
    for item in now.items {
        let rel = item_rel(&item).to_path_buf();
        match &item {
            Item::Env { meta, data, .. } if new_envs.contains(&rel) => {
                log::info!(
                    "{} was created since the scan; it is included",
                    src.join(&rel).display()
                );
                kept.push(open_env(src, &rel, meta, data, &now.followed)?);
                added.push(item);
            }
            Item::Dir { .. }
                if !known.contains(rel.as_path())
                    && new_envs.iter().any(|e| e.starts_with(&rel)) =>
            {
                added.push(item)
            }
            _ => {}
        }
    }
    kept.sort_by_key(|e| std::cmp::Reverse(e.compacted));
    Ok(EnvSet {
        envs: kept,
        changes: EnvChanges { added, removed },
    })
}

fn item_rel(item: &Item) -> &Path {
    match item {
        Item::Dir { rel, .. }
        | Item::File { rel, .. }
        | Item::Symlink { rel, .. }
        | Item::Env { rel, .. } => rel,
    }
}

/// The temporary and the plan (whose directories get their metadata and manifest
/// entries at the end) after the environment changes: directories of new
/// environments are created, those of removed ones (empty, ours) removed.
fn lay_out_changes(plan: &mut scan::Plan, tmp: &Path, changes: EnvChanges) -> Result<()> {
    for rel in &changes.removed {
        plan.items.retain(|i| item_rel(i) != rel.as_path());
        let p = tmp.join(rel);
        fs::remove_dir(&p).map_err(|e| fsutil::write_error(&p, e))?;
    }
    for item in changes.added {
        if let Item::Dir { rel, .. } | Item::Env { rel, .. } = &item {
            make_dir(tmp, rel)?;
        }
        plan.items.push(item);
    }
    Ok(())
}

/// The plain files' tasks, largest first.
fn file_tasks(plan: &scan::Plan) -> Vec<Task> {
    let mut files: Vec<(PathBuf, fs::Metadata)> = plan
        .items
        .iter()
        .filter_map(|i| match i {
            Item::File { rel, meta } => Some((rel.clone(), meta.clone())),
            _ => None,
        })
        .collect();
    files.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
    files
        .into_iter()
        .map(|(rel, meta)| Task::file(rel, meta, &plan.followed))
        .collect()
}

/// What the copies wrote, sorted as the manifest lists it.
#[derive(Clone)]
struct Copied {
    files: Vec<FileEntry>,
    envs: Vec<EnvEntry>,
    source_bytes: u64,
    bytes_written: u64,
    /// Of `bytes_written`: the environments' data files.
    env_bytes: u64,
    /// What compacted copies of the environments take.
    compacted_bytes: u64,
}

fn collect(done: Vec<Done>) -> Copied {
    let mut files = Vec::new();
    let mut envs = Vec::new();
    let mut source_bytes = 0;
    let mut bytes_written = 0;
    let mut env_bytes = 0;
    let mut compacted_bytes = 0;
    for d in done {
        match d {
            Done::Env {
                file,
                env,
                source_bytes: s,
                compacted_bytes: c,
            } => {
                bytes_written += file.size; // an environment's copy has no holes
                env_bytes += file.size;
                compacted_bytes += c;
                files.push(file);
                envs.push(env);
                source_bytes += s;
            }
            Done::File {
                file,
                source_bytes: s,
                written,
            } => {
                files.push(file);
                source_bytes += s;
                bytes_written += written;
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    envs.sort_by(|a, b| a.path.cmp(&b.path));
    Copied {
        files,
        envs,
        source_bytes,
        bytes_written,
        env_bytes,
        compacted_bytes,
    }
}

/// Directory modes, owners, xattrs and times, deepest first; the manifest's list of
/// them (with the mode given, see `fsutil::copy_meta_dir`), sorted. Not fsynced one
/// by one: `publish` syncs the filesystem once before the rename (a Cortex with 200
/// environments has 300 directories, 300 journal commits of a few ms each).
fn apply_dir_meta(plan: &scan::Plan, src: &Path, tmp: &Path) -> Result<Vec<DirEntry>> {
    let mut dirs = Vec::new();
    for item in plan.items.iter().rev() {
        if let Item::Dir { rel, meta } | Item::Env { rel, meta, .. } = item {
            let attrs = workers::scanned_dir_xattrs(&src.join(rel), meta)?;
            let applied = fsutil::copy_meta_dir_unsynced(&tmp.join(rel), meta, &attrs)?;
            dirs.push(DirEntry {
                path: rel_str(rel),
                mode: applied.mode,
                xattrs: manifest::xattr_keys(&applied.xattrs),
            });
        }
    }
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(dirs)
}

fn assemble_manifest(
    req: &Request,
    src: &Path,
    started: chrono::DateTime<chrono::Utc>,
    freeze: &FreezeTimes,
    copied: Copied,
    layout: Layout,
    dirs: Vec<DirEntry>,
) -> Manifest {
    Manifest {
        format: manifest::FORMAT.to_string(),
        hash: req.hash.name().to_string(),
        body_sha256: String::new(),
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
        env_copy: req.copy.name().to_string(),
        freeze: FreezeInfo {
            mode: format!("{:?}", req.freeze).to_lowercase(),
            frozen: freeze.ms.is_some(),
            ms: freeze.ms,
            reason: freeze.reason.clone(),
        },
        files: copied.files,
        symlinks: layout.symlinks,
        dirs,
        environments: copied.envs,
        cert_dir: None,
        cell: freeze.cell.clone(),
        from_mirror: None,
    }
}

/// Write the manifest into the temporary, fsynced. It holds digests of every file:
/// readable by group/others only where the source's top directory and every file
/// it describes are (the mode of the most private one).
fn write_manifest(tmp: &Path, manifest: &Manifest, src_meta: &fs::Metadata) -> Result<()> {
    let mpath = tmp.join(manifest::MANIFEST_NAME);
    let f = fsutil::create_new(&mpath)?;
    std::io::Write::write_all(&mut &f, &manifest.to_json()?)
        .map_err(|e| fsutil::write_error(&mpath, e))?;
    let readable = manifest
        .files
        .iter()
        .fold(src_meta.mode() & 0o044, |m, f| m & f.mode);
    let mode = 0o600 | readable;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    let _ = nix::unistd::fchown(
        std::os::fd::AsFd::as_fd(&f),
        Some(nix::unistd::Uid::from_raw(src_meta.uid())),
        Some(nix::unistd::Gid::from_raw(src_meta.gid())),
    );
    f.sync_all().map_err(|e| fsutil::write_error(&mpath, e))?;
    Ok(())
}

/// Verify the temporary; mark it verified. Returns true (a failure is an error).
fn verify_before_publish(
    reporter: &dyn Reporter,
    src: &Path,
    tmp: &Path,
    bytes: u64,
) -> Result<bool> {
    interrupt::check()?;
    // Verify reads everything again: systemd hears from us until a generous bound.
    let bound = Duration::from_secs(600 + bytes / (20 << 20));
    let _beat = Heartbeat::start(reporter, &format!("verifying {}", tmp.display()), bound);
    fault::point("verify")?;
    let report = verify::verify(tmp)?;
    if !report.ok() {
        bail_code!(
            Code::Verify,
            "the new backup of {} failed verification ({}); it was not published",
            src.display(),
            report.problems.join("; ")
        );
    }
    let marker = tmp.join(manifest::VERIFIED_MARK);
    fs::write(&marker, format!("{}\n", chrono::Utc::now().to_rfc3339()))
        .and_then(|()| File::open(&marker)?.sync_all())
        .map_err(|e| fsutil::write_error(&marker, e))?;
    Ok(true)
}

/// The top gets the source's owner, mode (never more open) and xattrs, then the
/// rename and the parent's fsync.
fn publish(partial: &mut Partial, src: &Path, src_meta: &fs::Metadata, dst: &Path) -> Result<()> {
    interrupt::check()?;
    let tmp = partial.path().to_path_buf();
    // Everything under it is durable (Durability::commit in `run`).
    fsutil::copy_meta_dir(&tmp, src_meta, &workers::source_xattrs(src)?)?;
    fs::rename(&tmp, dst).map_err(|e| {
        bad(format!(
            "cannot rename {} to {}: {e}; was the destination created meanwhile?",
            tmp.display(),
            dst.display()
        ))
    })?;
    partial.disarm();
    fsutil::fsync_dir(dst.parent().unwrap_or(Path::new("/")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_environments_get_two_copies_per_cpu_and_jobs_wins() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mib = 1u64 << 20;
        assert_eq!(
            job_count(None, 200, 200 * 4 * mib),
            (2 * cpus).min(8.max(cpus))
        );
        assert_eq!(job_count(None, 5, 5 * 512 * mib), cpus.min(5));
        assert_eq!(
            job_count(None, 1, 4 * mib),
            1,
            "never more than the environments"
        );
        assert_eq!(job_count(None, 0, 0), 1);
        assert_eq!(job_count(Some(3), 200, 200 * mib), 3);
        assert_eq!(job_count(Some(16), 2, 2 * mib), 2);
    }
}
