// SPDX-License-Identifier: Apache-2.0
//! The nightly run (what `synbackup@.service` runs), as ordered steps over one
//! loaded configuration, under the instance lock:
//!
//! 1. back up into `BACKUP_ROOT/INSTANCE_TIMESTAMP` (verified before it is
//!    published, the service's certificate directory carried in it);
//! 2. prune by retention, expire directories kept by maintenance windows;
//! 3. check the certificates (never fails the run);
//! 4. record the run (status, metrics, journal), on failure too;
//! 5. with an offsite repository, copy the published backup there (`offsite`,
//!    recorded as its own run; a failure exits 12 and keeps the local backup);
//! 6. with `SYNBACKUP_DRILL_AFTER_RUN=yes`, drill the backup just made (`drill`,
//!    recorded as its own run; a failed drill exits 11 and keeps the backup).
//!
//! Before step 1, the source is chosen (`source`): the leader, or a mirror caught
//! up with it (`SYNBACKUP_SOURCE`); when no mirror is ready the run fails, backs
//! up the leader or is recorded skipped (`SYNBACKUP_NO_MIRROR`).
//!
//! The only module that composes capabilities.

/// `run --dry-run`: the plan, changing nothing.
pub(crate) mod plan;
/// Step 0: the leader or a mirror (`SYNBACKUP_SOURCE`), and the fallback policy.
pub(crate) mod source;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::base::exit::{fail, Code};
use crate::engine::backup;
use crate::instance::catalog;
use crate::instance::config::{Instance, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::record::{self, leave_final_status, Event, Made};
use crate::instance::status::{self, Kind};
use crate::instance::{kept, prune};
use source::Chosen;

/// `synbackup run INSTANCE`: every step, in order; the exit code of the first
/// failure that counts (a failed drill over a failed offsite copy).
pub(crate) fn run(
    dirs: &Dirs,
    name: &str,
    overrides: &InstanceOverrides,
    show_bar: bool,
) -> Result<()> {
    // A second run waits here for the first (within SYNBACKUP_LOCK_WAIT).
    let (inst, _lock, rec) = record::begin_locked(dirs, name, overrides, Kind::Backup)?;
    let started = rec.started();
    let chosen = source::choose(&inst.sources);
    let source = chosen.details(&inst.sources);
    let made = match &chosen {
        Chosen::Skip(why) => {
            let made = Made {
                backups_kept: record::backups_kept(&inst),
                details: Some(serde_json::json!({ "source": source })),
                ..Made::default()
            };
            rec.skipped(why, made);
            leave_final_status(dirs, name, Kind::Backup);
            return Ok(());
        }
        Chosen::Fail(why) => Err(source::no_mirror_error(&inst.sources, why)),
        Chosen::Leader { dir, .. } => {
            back_up_and_prune(&inst, dir, None, &dirs.state_dir, started, show_bar)
        }
        Chosen::Mirror(on) => back_up_and_prune(
            &inst,
            &on.mirror.dir,
            Some(on.clone()),
            &dirs.state_dir,
            started,
            show_bar,
        ),
    };
    crate::certs::record::check_after_run(dirs, &inst);
    let backup = record_backup(rec, &inst, made, source);
    leave_final_status(dirs, name, Kind::Backup);
    let backup = backup?;
    let offsite = match inst.offsite {
        Some(_) => {
            // The nexus archive goes with the backup (point-in-time recovery).
            let archive = crate::pitr::archive::dir_of(&inst.backup_root);
            let archive = archive.join("archive.json").exists().then_some(archive);
            crate::offsite::copy(dirs, &inst, &backup, started, archive.as_deref())
        }
        None => Ok(()),
    };
    if inst.drill_after_run {
        drill(dirs, &inst, &backup)?;
    }
    offsite
}

/// Step 4: the run's status, metrics and journal event; the published backup.
fn record_backup(
    rec: record::Recorder,
    inst: &Instance,
    made: Result<(Made, String)>,
    source: serde_json::Value,
) -> Result<PathBuf> {
    match made {
        Ok((mut made, line)) => {
            if let Some(d) = made.details.as_mut() {
                d["source"] = source;
            }
            let backup = made.backup.clone().unwrap_or_default();
            let event = Event {
                fields: vec![
                    ("SYNBACKUP_BACKUP", backup.clone()),
                    ("SYNBACKUP_BYTES", made.bytes.to_string()),
                ],
                text: format!("{}: {line}", inst.name),
            };
            rec.succeeded(made, event)?;
            Ok(PathBuf::from(backup))
        }
        Err(e) => {
            let made = Made {
                backups_kept: record::backups_kept(inst),
                details: Some(serde_json::json!({ "source": source })),
                ..Made::default()
            };
            rec.failed(&e, made, None);
            Err(crate::base::exit::reported(&e))
        }
    }
}

/// Every byte of the nexus archive read once a night (`pitr::chain`, full):
/// `status` and `check` read only the segments that changed since a check found
/// them whole, so this is where bits that rot on the medium are found. A segment
/// found damaged is no longer vouched for, so `status` reports it from then on;
/// the run itself goes on (its backup is made either way).
fn check_archive_whole(inst: &Instance) {
    let dir = crate::pitr::archive::dir_of(&inst.backup_root);
    if !dir.join("archive.json").exists() {
        return;
    }
    match crate::pitr::chain::inspect(
        &inst.backup_root,
        &inst.name,
        crate::pitr::chain::Depth::Full,
    ) {
        Ok(c) => {
            for d in &c.damaged {
                log::warn!("nexus archive of {}: {d}", inst.name);
            }
        }
        Err(e) => log::warn!("cannot check the nexus archive of {}: {e:#}", inst.name),
    }
}

/// Step 6: drill the backup just made, under the run's lock.
fn drill(dirs: &Dirs, inst: &Instance, backup: &Path) -> Result<()> {
    log::info!(
        "SYNBACKUP_DRILL_AFTER_RUN=yes: drilling {}",
        backup.display()
    );
    let drilled = crate::drill::drill_of(dirs, inst, Some(backup), None);
    leave_final_status(dirs, &inst.name, Kind::Drill);
    drilled.map(|_| ())
}

/// What a successful run learnt: the host facts, what a window would reclaim
/// (the free pages the compacting copy left out), the certificate directory carried.
/// `SYNBACKUP_NEXUS_TRIM=after-archive`: the guarded trim (`pitr::trim`) after
/// the backup, under the run's lock. A refused or failed trim is a warning and
/// a line in the run's status, never the run's failure (the backup is made).
fn trim_after_archive(inst: &Instance) -> serde_json::Value {
    let opts = crate::pitr::trim::Options {
        wait: std::time::Duration::from_secs(60),
        force: Vec::new(),
        dry_run: false,
    };
    match crate::pitr::trim::trim(inst, &opts) {
        Ok(line) => {
            log::info!("{line}");
            serde_json::json!({"result": "success", "text": line})
        }
        Err(e) => {
            log::warn!("SYNBACKUP_NEXUS_TRIM=after-archive: {e:#}");
            serde_json::json!({"result": "refused", "text": format!("{e:#}")})
        }
    }
}

fn run_details(inst: &Instance, summary: &backup::Summary) -> serde_json::Value {
    let mut facts = status::host_facts(&inst.service_dir, Some(summary.source_bytes));
    facts["reclaimable_bytes"] = serde_json::json!(summary.reclaimable_bytes);
    if let Some(d) = &summary.cert_dir {
        facts["cert_dir"] = serde_json::json!(d);
        facts["cert_files"] = serde_json::json!(summary.cert_files);
    }
    facts
}

/// The backup root, root's and 0700 whatever made it: a backup holds the service's
/// keys and data, and its top directory keeps the service's owner and mode (a
/// restore puts them back), so the root is what keeps other users out. A missing
/// one is made 0700 (as the generator does); an existing one that is not root's
/// or that others can enter is narrowed, with a warning naming what it was.
fn make_private_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| {
            let fix = if e.raw_os_error() == Some(libc::EROFS) {
                crate::base::fsutil::read_only_hint(root)
            } else {
                String::new()
            };
            fail(
                Code::BadPath,
                format!(
                    "cannot create the backup root {}: {e}{fix}; create it or fix SYNBACKUP_BACKUP_ROOT",
                    root.display()
                ),
            )
        })?;
    let meta = fs::metadata(root).map_err(|e| {
        fail(
            Code::BadPath,
            format!(
                "cannot stat the backup root {}: {e}; fix SYNBACKUP_BACKUP_ROOT",
                root.display()
            ),
        )
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    // Root's runs give it to root; another user's (tests, trials) keep their own.
    let me = nix::unistd::Uid::effective().as_raw();
    let owner = if me == 0 {
        (0, 0)
    } else {
        (meta.uid(), meta.gid())
    };
    if (meta.uid(), meta.gid()) == owner && mode == 0o700 {
        return Ok(());
    }
    log::warn!(
        "backup root {} was owned by {}:{} with mode {mode:04o}: made root:root 0700 (backups hold the service's keys)",
        root.display(),
        meta.uid(),
        meta.gid()
    );
    std::os::unix::fs::chown(root, Some(owner.0), Some(owner.1))
        .and_then(|()| fs::set_permissions(root, fs::Permissions::from_mode(0o700)))
        .map_err(|e| {
            fail(
                Code::BadPath,
                format!(
                    "cannot make the backup root {} root:root 0700: {e}; run `chown root: {0}; chmod 700 {0}`",
                    root.display()
                ),
            )
        })
}

/// Steps 1 and 2: the verified backup of `src` (the leader, or the mirror
/// `on_mirror` says caught up) under its timestamped name, then retention
/// and the expiry of directories kept by maintenance windows; what the run made
/// and its summary line.
fn back_up_and_prune(
    inst: &Instance,
    src: &Path,
    on_mirror: Option<crate::engine::mirror::OnMirror>,
    state_dir: &Path,
    started: DateTime<Utc>,
    show_bar: bool,
) -> Result<(Made, String)> {
    make_private_root(&inst.backup_root)?;
    let base = catalog::backup_name(&inst.name, started);
    let mut name = base.clone();
    let mut n = 2;
    while inst.backup_root.join(&name).exists() {
        name = format!("{base}-{n}");
        n += 1;
    }
    let req = backup::Request {
        src: src.to_path_buf(),
        dst: inst.backup_root.join(&name),
        skipdirs: inst.skipdirs.clone(),
        whole: false,
        jobs: inst.jobs,
        freeze: inst.freeze,
        freeze_timeout: inst.freeze_timeout.as_secs(),
        boot_wait: inst.boot_wait,
        verify: true,
        copy: inst.copy,
        min_free: inst.min_free,
        progress: crate::host::progress::standard(show_bar),
        cert_dir: crate::instance::certdir::cert_dir_to_carry(inst),
        hash: crate::base::digest::Algo::Blake3,
        on_mirror,
    };
    // The unit runs the instance's own directory (a mirror is asked, not assumed).
    let not_running = inst
        .service_unit
        .as_deref()
        .filter(|_| src == inst.service_dir.as_path())
        .and_then(crate::service::preflight::unit_not_running);
    if let Some(why) = &not_running {
        log::warn!("{why}: backing up its directory as it is on disk, without a freeze");
    }
    let summary = backup::run(&req)?;
    let kept_names = prune::prune_kept(inst, state_dir, Some(&name), false, true)?;
    let backups_kept = kept_names.len();
    // The nexus archive's segments no kept backup needs (`pitr::retain`); the
    // backup is made either way, so a failure here is logged, not the run's.
    if let Err(e) = crate::pitr::retain::prune_segments(
        &inst.backup_root,
        &inst.name,
        &kept_names,
        false,
        &|l| prune::tell(false, l),
    ) {
        log::warn!("nexus archive retention of {}: {e:#}", inst.name);
    }
    check_archive_whole(inst);
    // Directories kept by maintenance windows expire after SYNBACKUP_COLD_KEEP_OLD
    // (beside the canonical directory: the window swaps that one).
    let service_dir = fs::canonicalize(&inst.service_dir).unwrap_or(inst.service_dir.clone());
    let mut expiry_failed = kept::remove_kept(&service_dir, None, Some(inst.cold_keep_old));
    expiry_failed.extend(kept::remove_restored_aside(&service_dir, inst.keep_aside));
    let mut details = run_details(inst, &summary);
    if inst.nexus_trim {
        details["nexus_trim"] = trim_after_archive(inst);
    }
    let asides = kept::asides(&service_dir);
    details["aside_dirs"] = serde_json::json!(asides.len());
    details["aside_bytes"] = serde_json::json!(asides.iter().map(|a| a.bytes).sum::<u64>());
    if let Some(why) = &not_running {
        details["service_not_running"] = serde_json::json!(why);
    }
    // A kept window directory that could not be expired shows here.
    if !expiry_failed.is_empty() {
        details["kept_expiry_failed"] = serde_json::json!(expiry_failed);
    }
    let made = Made {
        backup: Some(summary.backup.clone()),
        bytes: summary.bytes_written,
        freeze_ms: summary.freeze_ms,
        backups_kept,
        details: Some(details),
    };
    Ok((made, summary.line()))
}
