// SPDX-License-Identifier: Apache-2.0
//! `synbackup status [INSTANCE] [--json]`: the last results of every instance; exits
//! `Unhealthy` (9) when its configuration does not load, its last run, maintenance
//! window, restore, drill, offsite copy or certificate deploy failed or was skipped,
//! or its last good backup is too old, so it serves as a monitoring check.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use crate::base::exit::Code;
use crate::base::fsutil::human;
use crate::base::units::format_duration;
use crate::commands::print_json;
use crate::engine::damaged;
use crate::instance::catalog::{self, State};
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::status::{self, Kind, Outcome, Status};
use crate::instance::tested::{self, Tested};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this instance (default: every configured instance).
    pub(crate) instance: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Acknowledge the last failed or skipped run of KIND (of INSTANCE, else of
    /// every instance), or a restore's warning about mirrors to re-seed: it no
    /// longer makes `status` fail; the next run of that kind replaces it.
    #[arg(long, value_name = "KIND", value_parser = ["run", "cold", "restore", "deploy", "offsite", "drill", "all"])]
    pub(crate) acknowledge: Option<String>,
}

/// The status kinds `--acknowledge` names.
fn kinds_named(word: &str) -> Vec<Kind> {
    match word {
        "run" => vec![Kind::Backup],
        "all" => Kind::ALL.to_vec(),
        w => Kind::ALL.into_iter().filter(|k| k.as_str() == w).collect(),
    }
}

/// The warnings of a restore about mirrors ahead of the backup, until they are
/// acknowledged (the mirrors re-seeded).
fn mirrors_to_reseed(s: &Status) -> Vec<String> {
    if s.acknowledged.is_some() {
        return Vec::new();
    }
    crate::restore::mirrors::open_warnings(s.details.as_ref())
}

/// Mark the unacknowledged failures of `kinds` of `name` acknowledged.
fn acknowledge(dirs: &Dirs, name: &str, kinds: &[Kind], now: DateTime<Utc>) -> Result<()> {
    let metrics = config::load(&dirs.config_dir, name, &InstanceOverrides::default())
        .map(|i| i.metrics)
        .unwrap_or(true);
    for kind in kinds {
        let Some(mut s) = status::load(&dirs.state_dir, name, *kind) else {
            continue;
        };
        if !s.needs_attention() && mirrors_to_reseed(&s).is_empty() {
            continue;
        }
        s.acknowledged = Some(crate::instance::record::now_str(now));
        status::record(&dirs.state_dir, &dirs.metrics_dir, metrics, &s)?;
        log::info!(
            "{name}: acknowledged the last {} ({} at {})",
            kind.title(),
            s.result.as_str(),
            s.finished
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct Health {
    instance: String,
    /// Whether the instance writes metrics (`SYNBACKUP_METRICS`).
    #[serde(skip)]
    metrics: bool,
    healthy: bool,
    /// Every problem, joined (absent when healthy).
    problem: Option<String>,
    problems: Vec<String>,
    last_success_age_seconds: Option<i64>,
    max_age_seconds: u64,
    backup: Option<Status>,
    cold: Option<Status>,
    restore: Option<Status>,
    /// The last offsite copy (with SYNBACKUP_OFFSITE_REPOSITORY).
    #[serde(skip_serializing_if = "Option::is_none")]
    offsite: Option<Status>,
    /// The last drill (`synbackup drill`, or `run` with SYNBACKUP_DRILL_AFTER_RUN).
    drill: Option<Status>,
    /// The newest backup whose last drill passed, and that drill.
    newest_tested: Option<NewestTested>,
    /// The service directory's file system and disk, data size, RAM, and the bytes
    /// a window would reclaim (from the last run).
    host: Option<serde_json::Value>,
    /// What the deployment guide warns about (not a failure).
    warnings: Vec<String>,
    /// The last certificate check (`synbackup certs`, every `run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    certs: Option<crate::certs::record::CertsState>,
    /// The last `certs deploy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<Status>,
    /// The directories windows and restores kept aside, with their sizes.
    aside: Vec<crate::instance::kept::Aside>,
    /// Point-in-time recovery: the nexus archive's chain and lag (`pitr::health`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pitr: Option<crate::pitr::health::Pitr>,
}

#[derive(Serialize)]
struct NewestTested {
    backup: String,
    #[serde(flatten)]
    tested: Tested,
}

/// `synbackup status [INSTANCE] [--json]`: a monitoring check.
pub(crate) fn exec(dirs: &Dirs, args: &StatusArgs) -> Result<ExitCode> {
    let now = Utc::now();
    let mut all = Vec::new();
    let names = config::selected(&dirs.config_dir, args.instance.as_deref())?;
    if let Some(word) = &args.acknowledge {
        for name in &names {
            acknowledge(dirs, name, &kinds_named(word), now)?;
        }
    }
    for name in names {
        all.push(health_of(dirs, &name, now));
    }
    if args.json {
        print_json(&all)?;
    } else {
        print_text(dirs, &all)?;
    }
    if all.iter().all(|h| h.healthy) {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(Code::Unhealthy as u8))
    }
}

/// One instance's health: its configuration, last run, window and restore.
fn health_of(dirs: &Dirs, name: &str, now: DateTime<Utc>) -> Health {
    let mut problems = Vec::new();
    // A configuration that does not parse is a failing check, never a default.
    let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default());
    let max_age = match &inst {
        Ok(i) => i.max_age,
        Err(e) => {
            problems.push(format!("bad configuration: {e:#}"));
            config::DEFAULT_MAX_AGE
        }
    };
    let backup = status::load(&dirs.state_dir, name, Kind::Backup);
    let last_run = backup
        .as_ref()
        .and_then(|b| b.details.clone())
        .unwrap_or_default();
    let host = inst.as_ref().ok().map(|i| {
        let mut facts = status::host_facts(&i.service_dir, last_run["data_bytes"].as_u64());
        facts["reclaimable_bytes"] = last_run["reclaimable_bytes"].clone();
        facts
    });
    let warnings = host.as_ref().map(status::host_warnings).unwrap_or_default();
    let cold = status::load(&dirs.state_dir, name, Kind::Cold);
    let restore = status::load(&dirs.state_dir, name, Kind::Restore);
    let deploy = status::load(&dirs.state_dir, name, Kind::Deploy);
    let offsite_configured = inst.as_ref().is_ok_and(|i| i.offsite.is_some());
    let offsite = status::load(&dirs.state_dir, name, Kind::Offsite).filter(|_| offsite_configured);
    let drill = status::load(&dirs.state_dir, name, Kind::Drill);
    let drilled = tested::load(&dirs.state_dir, name);
    let catalogued = inst
        .as_ref()
        .ok()
        .and_then(|i| catalog::scan(&i.backup_root, name).ok())
        .unwrap_or_default();
    // Only a backup that still exists and was not found damaged counts (retention
    // may have removed one, a verification may have found one damaged).
    let existing: Vec<String> = catalogued
        .iter()
        .filter(|e| matches!(e.state, State::Complete | State::Verified))
        .map(|e| e.name.clone())
        .collect();
    for e in catalogued.iter().filter(|e| e.state == State::Damaged) {
        let found = damaged::recorded(&e.path)
            .map(|d| format!(" {}: {}", d.when, d.problem))
            .unwrap_or_default();
        problems.push(format!(
            "backup {} was found damaged{found} (restore, drills and retention no longer count it; the next prune removes it once a newer good backup is kept)",
            e.name
        ));
    }
    let newest_tested = tested::newest_passed_of(&drilled, &existing).and_then(|b| {
        drilled.get(&b).map(|t| NewestTested {
            backup: b.clone(),
            tested: t.clone(),
        })
    });
    // The last run's backup found damaged: the last good backup is the newest
    // one that was not.
    let last_damaged = backup
        .as_ref()
        .and_then(|s| s.last_success_backup.as_deref())
        .and_then(|b| {
            Path::new(b)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .is_some_and(|b| {
            catalogued
                .iter()
                .any(|e| e.name == b && e.state == State::Damaged)
        });
    let age = if last_damaged {
        catalogued
            .iter()
            .rev()
            .find(|e| matches!(e.state, State::Complete | State::Verified))
            .map(|e| (now - e.time).num_seconds())
    } else {
        backup
            .as_ref()
            .and_then(|s| s.last_success.as_deref())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (now - t.with_timezone(&Utc)).num_seconds())
    };
    match (&backup, age) {
        (None, _) => problems.push("no run recorded yet".to_string()),
        (Some(s), _) if s.needs_attention() => problems.push(last_problem("run", s)),
        (_, None) if last_damaged => {
            problems.push("no good backup: the last run's was found damaged".to_string())
        }
        (_, None) => problems.push("no successful backup yet".to_string()),
        (_, Some(a)) if a as u64 > max_age.as_secs() => problems.push(format!(
            "last good backup is {} old (more than {})",
            format_duration(std::time::Duration::from_secs(a as u64)),
            format_duration(max_age)
        )),
        _ => {}
    }
    for (what, s) in [
        ("maintenance window", &cold),
        ("restore", &restore),
        ("certificate deploy", &deploy),
        ("offsite copy", &offsite),
        ("drill", &drill),
    ] {
        if let Some(s) = s.as_ref().filter(|s| s.needs_attention()) {
            problems.push(last_problem(what, s));
        }
    }
    if let Some(s) = &restore {
        for line in mirrors_to_reseed(s) {
            problems.push(format!("last restore at {}: {line}", s.finished));
        }
    }
    if let Some(p) = offsite_problem(offsite_configured, &backup, &offsite, max_age, now) {
        problems.push(p);
    }
    if let Some(p) = crate::pitr::state::problem(&dirs.state_dir, name) {
        problems.push(p);
    }
    // The service itself: a monitoring check that says OK while it crash-loops
    // would be muted within a week.
    if let Some(p) = inst
        .as_ref()
        .ok()
        .and_then(|i| i.service_unit.as_deref())
        .and_then(crate::service::preflight::unit_not_running)
    {
        problems.push(p);
    }
    let pitr = inst.as_ref().ok().and_then(|i| {
        let now_us = now.timestamp_micros().max(0) as u64;
        match crate::pitr::health::assess(i, now_us) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("cannot check the nexus archive: {e:#}"));
                None
            }
        }
    });
    if let Some(p) = &pitr {
        problems.extend(p.problems.iter().cloned());
    }
    Health {
        instance: name.to_string(),
        metrics: inst.as_ref().map(|i| i.metrics).unwrap_or(true),
        healthy: problems.is_empty(),
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        problems,
        last_success_age_seconds: age,
        max_age_seconds: max_age.as_secs(),
        backup,
        cold,
        restore,
        offsite,
        drill,
        newest_tested,
        host,
        warnings,
        certs: crate::certs::record::load_state(&dirs.state_dir, name),
        deploy,
        aside: inst
            .as_ref()
            .ok()
            .map(|i| {
                let dir = std::fs::canonicalize(&i.service_dir).unwrap_or(i.service_dir.clone());
                crate::instance::kept::asides(&dir)
            })
            .unwrap_or_default(),
        pitr,
    }
}

/// An offsite copy that is missing or too old (a failed one is reported as failed).
fn offsite_problem(
    configured: bool,
    backup: &Option<Status>,
    offsite: &Option<Status>,
    max_age: std::time::Duration,
    now: DateTime<Utc>,
) -> Option<String> {
    if !configured {
        return None;
    }
    let Some(o) = offsite else {
        return backup
            .as_ref()
            .filter(|b| b.result == Outcome::Success)
            .map(|_| {
                "no offsite copy recorded yet (SYNBACKUP_OFFSITE_REPOSITORY is set)".to_string()
            });
    };
    let age = o
        .last_success
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (now - t.with_timezone(&Utc)).num_seconds().max(0) as u64)?;
    (o.result == Outcome::Success && age > max_age.as_secs()).then(|| {
        format!(
            "last good offsite copy is {} old (more than {})",
            format_duration(std::time::Duration::from_secs(age)),
            format_duration(max_age)
        )
    })
}

/// "last run failed: ..." / "last maintenance window was skipped: ...".
fn last_problem(what: &str, s: &Status) -> String {
    let verb = if s.result == Outcome::Skipped {
        "was skipped"
    } else {
        "failed"
    };
    format!(
        "last {what} {verb} at {}: {}",
        s.finished,
        s.error.as_deref().unwrap_or("no error recorded")
    )
}

/// "data 1.2 GiB on ext4 (SSD), RAM 16 GiB; a window would reclaim 300 MiB".
fn describe_host(f: &serde_json::Value) -> String {
    let size = |k: &str| f[k].as_u64().map(human).unwrap_or_else(|| "?".into());
    let disk = match f["rotational"].as_bool() {
        Some(true) => " (rotational disk)",
        Some(false) => " (non-rotational disk)",
        None => "",
    };
    let reclaim = match f["reclaimable_bytes"].as_u64() {
        Some(b) => format!("; a maintenance window would reclaim about {}", human(b)),
        None => String::new(),
    };
    format!(
        "data {} on {}{disk}, RAM {}{reclaim}",
        size("data_bytes"),
        f["fstype"].as_str().unwrap_or("?"),
        size("mem_total_bytes")
    )
}

fn print_text(dirs: &Dirs, all: &[Health]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if all.is_empty() {
        writeln!(
            out,
            "no instances configured in {}",
            dirs.config_dir.display()
        )?;
    }
    if all.iter().any(|h| h.metrics) && !dirs.metrics_dir.is_dir() {
        // A note about the host, not part of the report (stdout).
        log::warn!(
            "no metrics are written: {} does not exist (install node_exporter's textfile collector, set --metrics-dir, or SYNBACKUP_METRICS=no)",
            dirs.metrics_dir.display()
        );
    }
    for h in all {
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
        if let Some(f) = &h.host {
            writeln!(out, "{}: {}", h.instance, describe_host(f))?;
        }
        for w in &h.warnings {
            writeln!(out, "{}: WARNING: {w}", h.instance)?;
        }
        if !h.aside.is_empty() {
            let total: u64 = h.aside.iter().map(|a| a.bytes).sum();
            let each: Vec<String> = h
                .aside
                .iter()
                .map(|a| {
                    let by = if a.by == "cold" {
                        "a window"
                    } else {
                        "a restore"
                    };
                    format!("{} ({}, by {by})", a.path, human(a.bytes))
                })
                .collect();
            writeln!(
                out,
                "{}: kept aside: {} in {}: {}",
                h.instance,
                human(total),
                h.aside.len(),
                each.join(", ")
            )?;
        }
        if let Some(p) = &h.pitr {
            match p.state {
                "on" => writeln!(
                    out,
                    "{}: point-in-time recovery: {}",
                    h.instance,
                    p.summary()
                )?,
                "nexslog-off" if p.problems.is_empty() => {
                    for n in &p.notes {
                        writeln!(out, "{}: {n}", h.instance)?;
                    }
                }
                _ => {}
            }
        }
        if let Some(w) = h.certs.as_ref().and_then(|c| c.worst_finding.as_ref()) {
            writeln!(out, "{}: certificates: {w}", h.instance)?;
        }
        for (what, s) in [
            ("maintenance window", &h.cold),
            ("restore", &h.restore),
            ("certificate deploy", &h.deploy),
            ("offsite copy", &h.offsite),
            ("drill", &h.drill),
        ] {
            if let Some(s) = s {
                let note = match (s.result, &s.acknowledged) {
                    (_, Some(when)) => format!(", acknowledged at {when}"),
                    (Outcome::Refused, _) => ", nothing changed".to_string(),
                    (Outcome::Cancelled, _) => ", everything as it was".to_string(),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "{}: last {what} {} at {} (exit {}{note})",
                    h.instance,
                    s.result.as_str(),
                    s.finished,
                    s.exit_code
                )?;
            }
        }
        match &h.newest_tested {
            Some(n) => writeln!(
                out,
                "{}: newest tested backup {}: {}",
                h.instance,
                n.backup,
                tested::describe(&n.tested)
            )?,
            None if h.drill.is_some() => {
                writeln!(out, "{}: no backup has passed a drill", h.instance)?
            }
            None => {}
        }
    }
    Ok(())
}
