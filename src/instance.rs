// SPDX-License-Identifier: Apache-2.0
//! Instances: `run` (what `synbackup@.service` runs), `list`, `prune` and `status`.
//!
//! A run takes the instance lock, backs up into `BACKUP_ROOT/INSTANCE_TIMESTAMP`
//! (verified before it is published), prunes by retention and records status and
//! metrics, on failure too. Pruning only ever removes directories that carry our
//! name pattern and manifest, or our temporaries; a backup is first renamed to a
//! temporary name, so a removal cut short never leaves a half backup that looks
//! complete.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::backup::{self, PARTIAL_MARK};
use crate::catalog::{self, State};
use crate::cli::{Dirs, InstanceOverrides, ListArgs, PruneArgs, RunArgs, StatusArgs};
use crate::config::{self, Instance};
use crate::exit::{code_of, fail, Code};
use crate::fsutil::human;
use crate::status::{self, Status};
use crate::units::format_duration;
use crate::{lock, retention};

fn now_str(t: DateTime<Utc>) -> String {
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
        record_failure(dirs, name, kind, started, t0, &e, None);
        crate::exit::reported(&e)
    })
}

/// `synbackup run INSTANCE`.
pub(crate) fn run(dirs: &Dirs, args: &RunArgs, show_bar: bool) -> Result<ExitCode> {
    let started = Utc::now();
    let t0 = Instant::now();
    let inst = load_for_run(dirs, &args.instance, &args.overrides, "backup", started, t0)?;
    // A second run exits here, and leaves the first one's status alone.
    let _lock = lock::acquire(&dirs.lock_dir, &inst.name, "run")?;
    let result = backup_and_prune(&inst, started, show_bar);
    match result {
        Ok((summary, kept)) => {
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
                details: None,
            };
            status::record(&dirs.state_dir, &dirs.metrics_dir, &st)?;
            crate::logging::event(
                log::Level::Info,
                crate::logging::MSG_BACKUP_OK,
                &inst.name,
                &[
                    ("SYNBACKUP_BACKUP", summary.backup.as_str()),
                    ("SYNBACKUP_BYTES", &summary.bytes_written.to_string()),
                ],
                &format!("{}: {}", inst.name, summary.line()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            record_failure(dirs, &inst.name, "backup", started, t0, &e, None);
            Err(crate::exit::reported(&e))
        }
    }
}

/// Record a failed run of `kind`: keeps the last success, logs the failure event.
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
        result: "failed".into(),
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
    let id = if kind == "backup" {
        crate::logging::MSG_BACKUP_FAILED
    } else {
        crate::logging::MSG_COLD_FAILED
    };
    crate::logging::event(
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
) -> Result<(backup::Summary, usize)> {
    fs::create_dir_all(&inst.backup_root).map_err(|e| {
        fail(
            Code::BadPath,
            format!(
                "cannot create the backup root {}: {e}; create it or fix SYNBACKUP_BACKUP_ROOT",
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
        jobs: inst.jobs,
        freeze: inst.freeze,
        freeze_timeout: inst.freeze_timeout.as_secs(),
        verify: true,
        min_free: inst.min_free,
        show_bar,
    };
    let summary = backup::run(&req)?;
    let kept = prune(inst, Some(&name), false, true)?;
    // Directories kept by maintenance windows expire after SYNBACKUP_COLD_KEEP_OLD.
    crate::cold::remove_kept(&inst.service_dir, None, Some(inst.cold_keep_old));
    Ok((summary, kept))
}

/// Apply retention; remove temporaries when `own_lock` (no run can be live).
/// Returns how many complete backups remain.
fn prune(inst: &Instance, newest: Option<&str>, dry_run: bool, own_lock: bool) -> Result<usize> {
    let entries = catalog::scan(&inst.backup_root, &inst.name)?;
    let complete: Vec<_> = entries
        .iter()
        .filter(|e| e.state != State::Partial)
        .collect();
    let times: Vec<_> = complete.iter().map(|e| e.time).collect();
    let reasons = retention::reasons(&times, inst.keep);
    let verb = if dry_run { "would remove" } else { "removing" };
    let mut kept = 0;
    for (e, why) in complete.iter().zip(reasons) {
        if !why.is_empty() || Some(e.name.as_str()) == newest {
            kept += 1;
            log::debug!(
                "keeping {} ({})",
                e.name,
                if why.is_empty() {
                    "new".to_string()
                } else {
                    why.join(", ")
                }
            );
            continue;
        }
        log::info!(
            "{verb} {}: kept by no rule (keep last {}, daily {}, weekly {}, monthly {})",
            e.path.display(),
            inst.keep.last,
            inst.keep.daily,
            inst.keep.weekly,
            inst.keep.monthly
        );
        if !dry_run {
            remove_backup(&e.path, &e.name)?;
        }
    }
    for e in entries.iter().filter(|e| e.state == State::Partial) {
        if !own_lock {
            log::info!(
                "leaving {}: a run of {} is in progress",
                e.path.display(),
                inst.name
            );
            continue;
        }
        log::info!(
            "{verb} {}: temporary of a run that did not finish",
            e.path.display()
        );
        if !dry_run {
            remove_tree(&e.path)?;
        }
    }
    Ok(kept)
}

/// Rename a backup to a temporary name, then delete it.
fn remove_backup(path: &Path, name: &str) -> Result<()> {
    let doomed = path.with_file_name(format!(".{name}{PARTIAL_MARK}removing"));
    match fs::rename(path, &doomed) {
        Ok(()) => remove_tree(&doomed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()), // a concurrent prune won
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// `synbackup prune INSTANCE [--dry-run]`.
pub(crate) fn prune_cmd(dirs: &Dirs, args: &PruneArgs) -> Result<ExitCode> {
    let inst = config::load(
        &dirs.config_dir,
        &args.instance,
        &InstanceOverrides::default(),
    )?;
    let lock = lock::acquire(&dirs.lock_dir, &inst.name, "prune");
    let own = lock.is_ok();
    if let Err(e) = &lock {
        if code_of(e) != Code::Locked {
            return Err(lock
                .err()
                .map(|e| e.context("prune"))
                .unwrap_or_else(|| anyhow::anyhow!("lock")));
        }
    }
    let kept = prune(&inst, None, args.dry_run, own)?;
    log::info!("{}: {kept} backups kept", inst.name);
    Ok(ExitCode::SUCCESS)
}

fn instances(dirs: &Dirs, one: Option<&str>) -> Result<Vec<String>> {
    match one {
        Some(n) => {
            config::check_name(n)?;
            Ok(vec![n.to_string()])
        }
        None => config::instance_names(&dirs.config_dir),
    }
}

#[derive(Serialize)]
struct Listed {
    instance: String,
    name: String,
    path: String,
    time: String,
    age_seconds: i64,
    bytes: u64,
    state: State,
}

/// `synbackup list [INSTANCE] [--json]`.
pub(crate) fn list_cmd(dirs: &Dirs, args: &ListArgs) -> Result<ExitCode> {
    let now = Utc::now();
    let mut rows = Vec::new();
    for name in instances(dirs, args.instance.as_deref())? {
        let inst = config::load(&dirs.config_dir, &name, &InstanceOverrides::default())?;
        for e in catalog::scan(&inst.backup_root, &name)? {
            rows.push(Listed {
                instance: name.clone(),
                name: e.name,
                path: e.path.to_string_lossy().into_owned(),
                time: now_str(e.time),
                age_seconds: (now - e.time).num_seconds(),
                bytes: e.bytes,
                state: e.state,
            });
        }
    }
    if args.json {
        crate::print_json(&rows)?;
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<40} {:<20} {:>8} {:>10}  STATE",
            "BACKUP", "TIME (UTC)", "AGE", "SIZE"
        )?;
        for r in &rows {
            let age = std::time::Duration::from_secs(r.age_seconds.max(0) as u64);
            let state = serde_json::to_value(r.state)?
                .as_str()
                .unwrap_or("")
                .to_string();
            writeln!(
                out,
                "{:<40} {:<20} {:>8} {:>10}  {state}",
                r.name,
                &r.time[..19.min(r.time.len())],
                format_duration(age),
                human(r.bytes)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Health {
    instance: String,
    healthy: bool,
    problem: Option<String>,
    last_success_age_seconds: Option<i64>,
    max_age_seconds: u64,
    backup: Option<Status>,
    cold: Option<Status>,
}

/// `synbackup status [INSTANCE] [--json]`: a monitoring check.
pub(crate) fn status_cmd(dirs: &Dirs, args: &StatusArgs) -> Result<ExitCode> {
    let now = Utc::now();
    let mut all = Vec::new();
    for name in instances(dirs, args.instance.as_deref())? {
        let max_age = config::load(&dirs.config_dir, &name, &InstanceOverrides::default())
            .map(|i| i.max_age)
            .unwrap_or(std::time::Duration::from_secs(26 * 3600));
        let backup = status::load(&dirs.state_dir, &name, "backup");
        let cold = status::load(&dirs.state_dir, &name, "cold");
        let age = backup
            .as_ref()
            .and_then(|s| s.last_success.as_deref())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (now - t.with_timezone(&Utc)).num_seconds());
        let problem = match (&backup, age) {
            (None, _) => Some("no run recorded yet".to_string()),
            (Some(s), _) if s.result != "success" => Some(format!(
                "last run failed: {}",
                s.error.clone().unwrap_or_default()
            )),
            (_, None) => Some("no successful backup yet".to_string()),
            (_, Some(a)) if a as u64 > max_age.as_secs() => Some(format!(
                "last good backup is {} old (more than {})",
                format_duration(std::time::Duration::from_secs(a as u64)),
                format_duration(max_age)
            )),
            _ => None,
        };
        all.push(Health {
            instance: name,
            healthy: problem.is_none(),
            problem,
            last_success_age_seconds: age,
            max_age_seconds: max_age.as_secs(),
            backup,
            cold,
        });
    }
    if args.json {
        crate::print_json(&all)?;
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if all.is_empty() {
            writeln!(
                out,
                "no instances configured in {}",
                dirs.config_dir.display()
            )?;
        }
        for h in &all {
            let last = match h.last_success_age_seconds {
                Some(a) => format!(
                    "last good backup {} ago",
                    format_duration(std::time::Duration::from_secs(a.max(0) as u64))
                ),
                None => "no good backup".to_string(),
            };
            match &h.problem {
                None => writeln!(out, "{}: OK, {last}", h.instance)?,
                Some(p) => writeln!(out, "{}: PROBLEM: {p}; {last}", h.instance)?,
            }
            if let Some(c) = &h.cold {
                writeln!(
                    out,
                    "{}: last maintenance window {} at {}",
                    h.instance, c.result, c.finished
                )?;
            }
        }
    }
    if all.iter().all(|h| h.healthy) {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(Code::Unhealthy as u8))
    }
}
