// SPDX-License-Identifier: Apache-2.0
//! `synbackup cold INSTANCE`: the maintenance window. Stop the service, make a
//! compacted copy next to its directory, verify it, swap it in, start the service,
//! wait until it answers, and put everything back on any failure.
//!
//! Steps (each timed for the report):
//! 1. preflight (changes nothing): the directory's parent is root's and nobody
//!    else can write it (the copy is written there by path: another user's link
//!    in its place would redirect root's writes); the unit exists and is active, its main process
//!    runs on SYNBACKUP_SERVICE_DIR, the directory is not a mount point, there is
//!    room for a full compacted copy on that filesystem; note the active units that
//!    stop with it (`Requires=`/`BindsTo=`/`PartOf=`), to start them again;
//! 2. stop the unit; wait until no process holds an LMDB file of the directory;
//! 3. copy the *whole* directory to `DIR.cold-new` with the backup engine (no
//!    freeze: the service is down) and verify it: environments compacted,
//!    everything else (`backups/`, `tmp/`, SYNBACKUP_SKIPDIRS too: those are rules
//!    for backups, a window's copy becomes the live service) file by file with
//!    owners, modes and times, only sockets and `lock.mdb` left for the service to
//!    recreate (`scan::scan_whole`); the certificate directory is not carried (a
//!    `synbackup-certs/` a hand-made restore left in DIR stays in the kept
//!    directory, not in the new live one). The directory is the service user's,
//!    and it is read as a backup reads it (`fsutil::open_scanned`,
//!    `lmdb::Env::open_held`): a file, environment, `data.mdb` or `lock.mdb`
//!    swapped for a link after the copy's scan fails the window, naming it, and
//!    it rolls back;
//! 4. swap: `DIR` -> `DIR.pre-cold-TIMESTAMP` (kept; the name chosen as it is
//!    renamed, never replacing anything: `service::swap`), `DIR.cold-new` -> `DIR`,
//!    fsync;
//! 5. start the unit and wait until the service answers `getHealthCheck` with
//!    `nominal` or `degraded` (SYNBACKUP_HEALTH_TIMEOUT);
//! 6. report downtime, step times, space reclaimed; remove the directories kept by
//!    earlier windows (the one just kept stays until the next successful window or
//!    SYNBACKUP_COLD_KEEP_OLD, default 7 days, whichever comes first: `run` removes
//!    kept directories older than that).
//!
//! Rollback: any failure after the stop, SIGTERM included (`systemctl stop` of the
//! window), stops the unit if we started it, puts the original directory back (when
//! nothing was swapped yet there is nothing to wait for: a process still holding the
//! files does not keep the service down), removes our copy and starts the unit
//! again (its failed state and start-rate counter reset), then the units that
//! stopped with it. Once begun, a rollback finishes whatever signals arrive. The service is never left stopped by
//! us; if even the restart fails, the error says so and how to recover.
//!
//! Big non-LMDB trees (`backups/` can outgrow the environments) go through the
//! restore's per-file copy (`base::filecopy`, issue 36; `engine::workers` with
//! `share_extents`): a reflink where the filesystem has them (XFS, btrfs: no data
//! written, no room taken; the kept old directory and the new live one share
//! extents copy-on-write, never an inode), else `copy_file_range` of each data
//! extent (holes stay holes), hashed for the manifest as read back; then verify
//! reads the copy once. Hard links are out (the kept old directory and the live
//! one must not share an inode). Measured on this ext4 host before, a 2 GiB file
//! on 2 busy cores: the engine's buffered copy with verify took 22.7-29.9 s;
//! `copy_file_range` alone 4.9-17.2 s but hashing it 19.4-24.0 s per pass: on
//! ext4 hashing, not copying, bounds the window's copy, and the read-back hash
//! costs what the buffered one did (one pass); the gain is the reflink's.
//! A backup's own copy never shares extents (`engine::workers`).
//!
//! `--dry-run` (`dry_run`) runs the same preflight and prints the steps: the unit
//! stopped (and the units that stop with it), the copy with its size, the room
//! needed and free beside the directory, the name the directory would be kept
//! under, and the directories of earlier windows that would be removed. It stops
//! nothing and writes nothing (the estimate reads each live environment as any
//! LMDB reader does, taking a slot in its `lock.mdb`, the readers' table); a
//! refusal is the window's, with its exit code.
//!
//! The compacted copy is not also kept in the backup root: after the swap it *is*
//! the live directory, and the kept `DIR.pre-cold-*` is the way back. The nightly
//! `run` makes the next backup as usual.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use chrono::Utc;
use serde::Serialize;

use crate::base::exit::{fail, Code};
use crate::base::fault;
use crate::base::fsutil::human;
use crate::base::interrupt;
use crate::base::plan::Plan;
use crate::base::units::format_duration;
use crate::engine::backup;
use crate::engine::envcopy::CopyMode;
use crate::engine::freeze::FreezeMode;
use crate::host::systemd;
use crate::instance::config::{Instance, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::instance::record::{self, Event, Made};
use crate::instance::status::Kind;
use crate::service::preflight;
use crate::service::swap::{rolled_back_error, Steps, Swap, Swapped};

use crate::instance::kept::{self, PRE_COLD};

/// What a window reports.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) downtime_seconds: f64,
    pub(crate) copy_seconds: f64,
    pub(crate) stop_seconds: f64,
    pub(crate) start_seconds: f64,
    pub(crate) bytes_before: u64,
    pub(crate) bytes_after: u64,
    pub(crate) reclaimed_bytes: u64,
    /// The directory kept, as a `pathtext::key` (lossless).
    pub(crate) kept_old: Option<String>,
    pub(crate) rolled_back: bool,
    /// The swap began (the service was stopped).
    pub(crate) changed: bool,
}

/// Bytes a directory tree takes on disk.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(entries) = fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(t) if t.is_file() => e
                    .metadata()
                    .map(|m| crate::base::fsutil::allocated(&m))
                    .unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    walk(dir)
}

/// `dir`'s sibling named by its own name, byte for byte, and `suffix`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// `synbackup cold INSTANCE`: the window, recorded in status, metrics and journal.
pub(crate) fn run(
    dirs: &Dirs,
    name: &str,
    overrides: &InstanceOverrides,
    show_bar: bool,
) -> Result<()> {
    let (inst, _lock, rec) = record::begin_locked(dirs, name, overrides, Kind::Cold)?;
    let mut report = Report::default();
    let result = window(&inst, &mut report, show_bar);
    let made = Made {
        bytes: report.bytes_after,
        details: serde_json::to_value(&report).ok(),
        // A window publishes no backup; the directory it kept is `details.kept_old`.
        ..Made::default()
    };
    match result {
        Ok(()) => {
            let text = format!(
                "{}: maintenance window done: down {:.1} s (copy {:.1} s), {} -> {} (reclaimed {}), old directory kept at {}",
                inst.name,
                report.downtime_seconds,
                report.copy_seconds,
                human(report.bytes_before),
                human(report.bytes_after),
                human(report.reclaimed_bytes),
                report
                    .kept_old
                    .as_deref()
                    .map(|k| crate::base::pathtext::shell_word(&crate::base::pathtext::path(k)))
                    .unwrap_or_else(|| "-".into())
            );
            rec.succeeded(made, Event::text(text))
        }
        Err(e) => {
            let e = if report.rolled_back {
                rolled_back_error(
                    e,
                    "the original directory is in place and the service was started again",
                )
            } else {
                e
            };
            let made = Made {
                backups_kept: record::backups_kept(&inst),
                ..made
            };
            let result = record::ended_as(&e, report.changed, report.rolled_back, false);
            rec.failed_as(result, &e, made, None);
            Err(crate::base::exit::reported(&e))
        }
    }
}

/// What the preflight found (step 1): every check passed but the room, which
/// [`refuse_no_room`] judges from `need` and `free`.
struct Preflight {
    unit: String,
    dir: PathBuf,
    /// Active units that stop with the unit, started again after it.
    dependents: Vec<String>,
    /// Where the compacted copy is made.
    new: PathBuf,
    /// About what the compacted copy takes.
    need: u64,
    /// Free next to the directory.
    free: u64,
}

/// Step 1 (changes nothing): the unit, the directory, its parent, and the room a
/// compacted copy needs beside it. The window and its dry run both start here.
fn preflight(inst: &Instance) -> Result<Preflight> {
    let unit = inst.service_unit.clone().ok_or_else(|| {
        fail(Code::Usage, format!("instance {} has no SYNBACKUP_SERVICE_UNIT: the window must know which unit to stop", inst.name))
    })?;
    let dir = crate::engine::paths::check_source(&inst.service_dir)?;
    preflight::refuse_open_parent(&dir, "the window")?;
    let state = preflight::check_unit(&unit, &dir)?;
    if state != "active" {
        return Err(fail(Code::Service, format!("{unit} is {state}, not active; start it first (the window only runs on a running service)")));
    }
    preflight::refuse_mount_point(&dir, "the window")?;
    let dependents = systemd::active_dependents(&unit)?;
    let new = sibling(&dir, ".cold-new");
    if new.exists() {
        return Err(fail(
            Code::BadPath,
            format!("{} exists (left by an interrupted window?); remove it after checking it is not needed", new.display()),
        ));
    }
    let need = backup::estimate(&dir, &[], true)?;
    let free = crate::base::fsutil::free_space(dir.parent().unwrap_or(Path::new("/")))?;
    Ok(Preflight {
        unit,
        dir,
        dependents,
        new,
        need,
        free,
    })
}

/// Refuse a window without room beside the directory for its compacted copy.
fn refuse_no_room(p: &Preflight) -> Result<()> {
    if p.need > p.free {
        return Err(fail(
            Code::NoSpace,
            format!(
                "not enough space next to {}: the compacted copy needs {}, {} is free",
                p.dir.display(),
                human(p.need),
                human(p.free)
            ),
        ));
    }
    Ok(())
}

fn window(inst: &Instance, report: &mut Report, show_bar: bool) -> Result<()> {
    // 1. Preflight: nothing changes when it fails.
    let p = preflight(inst)?;
    refuse_no_room(&p)?;
    let Preflight {
        unit,
        dir,
        dependents,
        new,
        ..
    } = p;
    report.bytes_before = disk_usage(&dir);
    interrupt::check()?;
    fault::point("cold-preflight")?;

    // 2-5. Stop, copy, swap, start: from the stop on, any failure rolls back.
    let stamp = Utc::now().format(kept::STAMP).to_string();
    let swap = Swap {
        dir: &dir,
        new: &new,
        keep_marker: PRE_COLD,
        keep_stamp: &stamp,
        unit: Some(&unit),
        stop_timeout: inst.stop_timeout,
        health_timeout: inst.health_timeout,
        fault_prefix: "cold",
    };
    let mut done = Swapped::default();
    report.changed = true;
    let mut copy = Copy {
        inst,
        dir: &dir,
        new: &new,
        show_bar,
        seconds: 0.0,
    };
    let result = swap.run(&mut done, &mut copy);
    report.copy_seconds = copy.seconds;
    report.stop_seconds = done.stop_seconds;
    report.start_seconds = done.start_seconds;
    report.downtime_seconds = done.downtime_seconds;
    report.rolled_back = done.rolled_back;
    let failed = systemd::start_dependents(&dependents, inst.health_timeout);
    match result {
        Ok(()) => {
            log::info!(
                "{unit} is back ({}) after {:.1} s down",
                done.health.as_deref().unwrap_or("?"),
                report.downtime_seconds
            );
            for line in failed {
                log::error!("the window succeeded but a unit that depends on {unit} did not start again: {line}");
            }
            report.kept_old = Some(crate::base::pathtext::key(&done.aside));
            report.bytes_after = disk_usage(&dir);
            report.reclaimed_bytes = report.bytes_before.saturating_sub(report.bytes_after);
            for line in kept::remove_kept(&dir, Some(&done.aside), None) {
                log::warn!("{line}; remove it by hand");
            }
            Ok(())
        }
        Err(e) => {
            for line in failed {
                log::error!(
                    "rolled back, but a unit that depends on {unit} did not start again: {line}"
                );
            }
            Err(e)
        }
    }
}

/// `synbackup cold INSTANCE --dry-run`: what the window would stop, copy, keep
/// aside and remove, and whether its copy fits, changing nothing (no unit stopped,
/// no file written, no status). The same preflight as the window's: a refusal is
/// the window's, with its exit code.
pub(crate) fn dry_run(dirs: &Dirs, name: &str, overrides: &InstanceOverrides) -> Result<()> {
    let inst = crate::instance::config::load(&dirs.config_dir, name, overrides)?;
    let mut plan = Plan::new(Some(&inst.name), "window");
    let result = (|| {
        let (_lock, busy) = lock::for_dry_run(&dirs.lock_dir, &inst, "window")?;
        if let Some(line) = busy {
            plan.say(line);
        }
        plan_window(&inst, &mut plan)
    })();
    plan.finish(result)
}

/// The window's steps as the dry run tells them.
fn plan_window(inst: &Instance, plan: &mut Plan) -> Result<()> {
    let p = preflight(inst)?;
    let with = if p.dependents.is_empty() {
        String::new()
    } else {
        format!(" (and {}, which stop with it)", p.dependents.join(", "))
    };
    plan.say(format!(
        "{} is active and runs on {}: would stop it{with} and wait up to {} until no process holds its files",
        p.unit,
        p.dir.display(),
        format_duration(inst.stop_timeout)
    ));
    let fits = refuse_no_room(&p);
    plan.say(format!(
        "would copy {} ({} on disk) compacted to {} and verify it: about {} needed, {} free beside it{}",
        p.dir.display(),
        human(disk_usage(&p.dir)),
        p.new.display(),
        human(p.need),
        human(p.free),
        if fits.is_ok() { "" } else { ": NOT ENOUGH ROOM" }
    ));
    fits?;
    let aside = kept::free_aside(
        &p.dir,
        PRE_COLD,
        &Utc::now().format(kept::STAMP).to_string(),
    );
    plan.say(format!(
        "would move {} aside to {} (kept until the next window or SYNBACKUP_COLD_KEEP_OLD, {}) and the copy into its place",
        p.dir.display(),
        aside.display(),
        format_duration(inst.cold_keep_old)
    ));
    plan.say(format!(
        "would start {}{} and wait up to {} for its health check (on any failure: roll back to the original directory)",
        p.unit,
        if p.dependents.is_empty() { "" } else { " and the units that stopped with it" },
        format_duration(inst.health_timeout)
    ));
    for (old, _) in kept::aside_dirs(&p.dir, PRE_COLD) {
        plan.say(format!(
            "would then remove {} ({}), kept by an earlier window",
            old.display(),
            human(disk_usage(&old))
        ));
    }
    Ok(())
}

/// The window's step inside the swap: the compacted copy, made after the stop.
struct Copy<'a> {
    inst: &'a Instance,
    dir: &'a Path,
    new: &'a Path,
    show_bar: bool,
    /// How long it took.
    seconds: f64,
}

impl Steps for Copy<'_> {
    fn prepare(&mut self) -> Result<()> {
        let t = Instant::now();
        copy_compacted(self.inst, self.dir, self.new, self.show_bar)?;
        self.seconds = t.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Step 3: the whole directory copied beside it with the engine (no freeze: the
/// service is down), environments compacted, verified; the backup's marker files
/// dropped (the copy is a service directory now).
fn copy_compacted(inst: &Instance, dir: &Path, new: &Path, show_bar: bool) -> Result<()> {
    fault::point("cold-copy")?;
    let summary = backup::run(&backup::Request {
        src: dir.to_path_buf(),
        dst: new.to_path_buf(),
        // A window carries the whole directory: SYNBACKUP_SKIPDIRS is for backups.
        skipdirs: Vec::new(),
        whole: true,
        jobs: inst.jobs,
        freeze: FreezeMode::Never,
        freeze_timeout: 0,
        // The service is stopped and released before the copy (never frozen).
        boot_wait: std::time::Duration::ZERO,
        verify: true,
        // The window's purpose: compacted whatever SYNBACKUP_COMPACT says.
        copy: CopyMode::Compact,
        min_free: 0,
        progress: crate::host::progress::standard(show_bar),
        // The copy becomes the live directory: the certificate directory stays
        // where the service reads it, and none is carried into the service's.
        cert_dir: None,
        hash: crate::base::digest::Algo::Blake3,
        on_mirror: None,
    })?;
    fault::point("cold-verify")?;
    for f in [
        crate::engine::manifest::MANIFEST_NAME,
        crate::engine::manifest::VERIFIED_MARK,
        crate::engine::manifest::DAMAGED_MARK,
    ] {
        let _ = fs::remove_file(new.join(f));
    }
    log::info!("{}", summary.line());
    Ok(())
}
