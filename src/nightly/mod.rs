// SPDX-License-Identifier: Apache-2.0
//! An instance's run (what `synbackup@.service` runs): take the instance lock, back
//! up into `BACKUP_ROOT/INSTANCE_TIMESTAMP` (verified before it is published, the
//! service's certificate directory carried in it), prune
//! by retention, expire directories kept by maintenance windows, and record status
//! and metrics, on failure too. With an offsite repository, the published backup
//! is then copied there (`instance::offsite`), under the same lock.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::base::exit::{code_of, fail, Code};
use crate::engine::backup;
use crate::instance::catalog::{self, State};
use crate::instance::config::{self, Instance, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::status::{self, Status};
use crate::instance::{kept, lock, prune};
use crate::offsite;

/// A time as status files and listings write it.
pub(crate) fn now_str(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Load an instance for a run of `kind`; a bad configuration is recorded as a
/// failed run (status, metrics, journal) and returned as reported.
pub(crate) fn load_for_run(
    dirs: &Dirs,
    name: &str,
    overrides: &InstanceOverrides,
    kind: &str,
    started: DateTime<Utc>,
    t0: Instant,
) -> Result<Instance> {
    config::check_name(name)?;
    config::load(&dirs.config_dir, name, overrides).map_err(|e| {
        // No file, no instance: a typo must not leave state that alerts forever.
        if !config::file_exists(&dirs.config_dir, name) {
            return e;
        }
        record_failure(dirs, name, kind, started, t0, &e, None);
        crate::base::exit::reported(&e)
    })
}

/// Take the instance lock for a run of `kind`, waiting for another run or window
/// within the bound; one that gives up is recorded as skipped.
pub(crate) fn lock_for_run(
    dirs: &Dirs,
    inst: &Instance,
    kind: &str,
    started: DateTime<Utc>,
    t0: Instant,
) -> Result<lock::InstanceLock> {
    let what = if kind == "backup" { "run" } else { kind };
    lock::acquire_within(&dirs.lock_dir, &inst.name, what, inst.lock_wait).map_err(|e| {
        record_failure(dirs, &inst.name, kind, started, t0, &e, None);
        crate::base::exit::reported(&e)
    })
}

/// The start of a recorded run of `kind` (a backup or a window): its clock, the
/// instance (a bad config recorded as a failed run), and the lock, waited for.
pub(crate) fn begin_run(
    dirs: &Dirs,
    name: &str,
    overrides: &InstanceOverrides,
    kind: &str,
) -> Result<(Instance, lock::InstanceLock, DateTime<Utc>, Instant)> {
    let started = Utc::now();
    let t0 = Instant::now();
    let inst = load_for_run(dirs, name, overrides, kind, started, t0)?;
    let lock = lock_for_run(dirs, &inst, kind, started, t0)?;
    Ok((inst, lock, started, t0))
}

/// `synbackup run INSTANCE`.
pub(crate) fn run(
    dirs: &Dirs,
    name: &str,
    overrides: &InstanceOverrides,
    show_bar: bool,
) -> Result<()> {
    // A second run waits here for the first (within SYNBACKUP_LOCK_WAIT).
    let (inst, _lock, started, t0) = begin_run(dirs, name, overrides, "backup")?;
    let result = backup_and_prune(&inst, started, show_bar);
    crate::certs::record::check_after_run(dirs, &inst);
    match result {
        Ok((summary, kept, expiry_failed)) => {
            let st = Status {
                instance: inst.name.clone(),
                kind: "backup".into(),
                result: "success".into(),
                started: now_str(started),
                finished: now_str(Utc::now()),
                duration_seconds: t0.elapsed().as_secs_f64(),
                backup: Some(summary.backup.clone()),
                bytes: summary.bytes_written,
                freeze_ms: summary.freeze_ms,
                exit_code: 0,
                error: None,
                last_success: Some(now_str(Utc::now())),
                last_success_backup: Some(summary.backup.clone()),
                backups_kept: kept,
                details: Some({
                    let mut d = run_details(&inst, &summary);
                    // A kept window directory that could not be expired shows here.
                    if !expiry_failed.is_empty() {
                        d["kept_expiry_failed"] = serde_json::json!(expiry_failed);
                    }
                    d
                }),
            };
            status::record(&dirs.state_dir, &dirs.metrics_dir, &st)?;
            crate::base::logging::event(
                log::Level::Info,
                crate::base::logging::MSG_BACKUP_OK,
                &inst.name,
                &[
                    ("SYNBACKUP_BACKUP", summary.backup.as_str()),
                    ("SYNBACKUP_BYTES", &summary.bytes_written.to_string()),
                ],
                &format!("{}: {}", inst.name, summary.line()),
            );
            if inst.offsite.is_some() {
                return copy_offsite(dirs, &inst, Path::new(&summary.backup), started);
            }
            Ok(())
        }
        Err(e) => {
            record_failure(dirs, &inst.name, "backup", started, t0, &e, None);
            Err(crate::base::exit::reported(&e))
        }
    }
}

/// The offsite copy of the backup just published (at `backup`, made at `time`),
/// recorded as the instance's `offsite` status; a failure leaves the local backup
/// and its success alone and exits 12.
fn copy_offsite(dirs: &Dirs, inst: &Instance, backup: &Path, time: DateTime<Utc>) -> Result<()> {
    let started = Utc::now();
    let t0 = Instant::now();
    let result = offsite::upload(dirs, inst, backup, time);
    let name = backup
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    offsite::record(dirs, inst, &name, started, t0, &result);
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = if code_of(&e) == Code::Other || code_of(&e) == Code::Usage {
                fail(Code::Offsite, format!("{e:#}"))
            } else {
                e
            };
            Err(crate::base::exit::reported(&e))
        }
    }
}

/// What a successful run learnt: the host facts, what a window would reclaim
/// (the free pages the compacting copy left out), the certificate directory carried.
fn run_details(inst: &Instance, summary: &backup::Summary) -> serde_json::Value {
    let mut facts = status::host_facts(&inst.service_dir, Some(summary.source_bytes));
    facts["reclaimable_bytes"] = serde_json::json!(summary.reclaimable_bytes);
    if let Some(d) = &summary.cert_dir {
        facts["cert_dir"] = serde_json::json!(d);
        facts["cert_files"] = serde_json::json!(summary.cert_files);
    }
    facts
}

/// Record a failed run of `kind` (`skipped` when the lock was busy): keeps the last
/// success, logs the failure event.
pub(crate) fn record_failure(
    dirs: &Dirs,
    instance: &str,
    kind: &str,
    started: DateTime<Utc>,
    t0: Instant,
    err: &anyhow::Error,
    details: Option<serde_json::Value>,
) {
    let prev = status::load(&dirs.state_dir, instance, kind);
    let kept = config::load(&dirs.config_dir, instance, &InstanceOverrides::default())
        .ok()
        .and_then(|i| catalog::scan(&i.backup_root, instance).ok())
        .map(|v| v.iter().filter(|e| e.state != State::Partial).count())
        .unwrap_or(0);
    let st = Status {
        instance: instance.to_string(),
        kind: kind.to_string(),
        result: if code_of(err) == Code::Locked {
            "skipped"
        } else {
            "failed"
        }
        .into(),
        started: now_str(started),
        finished: now_str(Utc::now()),
        duration_seconds: t0.elapsed().as_secs_f64(),
        backup: None,
        bytes: 0,
        freeze_ms: None,
        exit_code: code_of(err).as_i32(),
        error: Some(format!("{err:#}")),
        last_success: prev.as_ref().and_then(|p| p.last_success.clone()),
        last_success_backup: prev.as_ref().and_then(|p| p.last_success_backup.clone()),
        backups_kept: kept,
        details,
    };
    if let Err(e) = status::record(&dirs.state_dir, &dirs.metrics_dir, &st) {
        log::error!("could not record the failure of {instance}: {e:#}");
    }
    let id = match kind {
        "backup" => crate::base::logging::MSG_BACKUP_FAILED,
        "restore" => crate::base::logging::MSG_RESTORE_FAILED,
        _ => crate::base::logging::MSG_COLD_FAILED,
    };
    crate::base::logging::event(
        log::Level::Error,
        id,
        instance,
        &[],
        &format!("{instance}: {kind} failed: {err:#}"),
    );
}

fn backup_and_prune(
    inst: &Instance,
    started: DateTime<Utc>,
    show_bar: bool,
) -> Result<(backup::Summary, usize, Vec<String>)> {
    fs::create_dir_all(&inst.backup_root).map_err(|e| {
        let fix = if e.raw_os_error() == Some(libc::EROFS) {
            crate::base::fsutil::read_only_hint(&inst.backup_root)
        } else {
            String::new()
        };
        fail(
            Code::BadPath,
            format!(
                "cannot create the backup root {}: {e}{fix}; create it or fix SYNBACKUP_BACKUP_ROOT",
                inst.backup_root.display()
            ),
        )
    })?;
    let base = catalog::backup_name(&inst.name, started);
    let mut name = base.clone();
    let mut n = 2;
    while inst.backup_root.join(&name).exists() {
        name = format!("{base}-{n}");
        n += 1;
    }
    let req = backup::Request {
        src: inst.service_dir.clone(),
        dst: inst.backup_root.join(&name),
        skipdirs: inst.skipdirs.clone(),
        whole: false,
        jobs: inst.jobs,
        freeze: inst.freeze,
        freeze_timeout: inst.freeze_timeout.as_secs(),
        verify: true,
        copy: inst.copy,
        min_free: inst.min_free,
        show_bar,
        cert_dir: crate::instance::certdir::cert_dir_to_carry(inst),
        hash: crate::base::digest::Algo::Blake3,
    };
    let summary = backup::run(&req)?;
    let kept = prune::prune(inst, Some(&name), false, true)?;
    // Directories kept by maintenance windows expire after SYNBACKUP_COLD_KEEP_OLD
    // (beside the canonical directory: the window swaps that one).
    let service_dir = fs::canonicalize(&inst.service_dir).unwrap_or(inst.service_dir.clone());
    let expiry_failed = kept::remove_kept(&service_dir, None, Some(inst.cold_keep_old));
    Ok((summary, kept, expiry_failed))
}
