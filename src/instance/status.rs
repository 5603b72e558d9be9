// SPDX-License-Identifier: Apache-2.0
//! What monitoring reads: one JSON status file per instance in the state directory
//! (`/var/lib/synbackup/INSTANCE.json`) and a Prometheus textfile for
//! node_exporter's textfile collector (`METRICS_DIR/synbackup-INSTANCE.prom`).
//!
//! Both are rewritten atomically after every run, success or failure. A failure
//! keeps the previous `last_success` (never makes it look recent) and records the
//! error in one line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::fsutil::write_atomic;
use crate::base::logging;

/// What ran: each kind has its own status file, metrics and journal events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// The nightly run (`synbackup run`).
    #[default]
    Backup,
    /// A maintenance window.
    Cold,
    /// A restore.
    Restore,
    /// A restore drill.
    Drill,
    /// An offsite copy.
    Offsite,
    /// A certificate deploy.
    Deploy,
}

impl Kind {
    /// Every kind, for `retire`.
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Backup,
        Kind::Cold,
        Kind::Restore,
        Kind::Drill,
        Kind::Offsite,
        Kind::Deploy,
    ];

    /// The name in file names, metrics and messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Cold => "cold",
            Kind::Restore => "restore",
            Kind::Drill => "drill",
            Kind::Offsite => "offsite",
            Kind::Deploy => "deploy",
        }
    }

    /// The journal MESSAGE_ID of its success.
    pub(crate) fn ok_id(self) -> &'static str {
        match self {
            Kind::Backup => logging::MSG_BACKUP_OK,
            Kind::Cold => logging::MSG_COLD_OK,
            Kind::Restore => logging::MSG_RESTORE_OK,
            Kind::Drill => logging::MSG_DRILL_OK,
            Kind::Offsite => logging::MSG_OFFSITE_OK,
            Kind::Deploy => logging::MSG_CERT_DEPLOY_OK,
        }
    }

    /// The journal MESSAGE_ID of its failure.
    pub(crate) fn failed_id(self) -> &'static str {
        match self {
            Kind::Backup => logging::MSG_BACKUP_FAILED,
            Kind::Cold => logging::MSG_COLD_FAILED,
            Kind::Restore => logging::MSG_RESTORE_FAILED,
            Kind::Drill => logging::MSG_DRILL_FAILED,
            Kind::Offsite => logging::MSG_OFFSITE_FAILED,
            Kind::Deploy => logging::MSG_CERT_DEPLOY_FAILED,
        }
    }

    /// What an operator calls it.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Kind::Cold => "maintenance window",
            Kind::Offsite => "offsite copy",
            other => other.as_str(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    /// It did what it was asked.
    #[default]
    Success,
    /// It failed (the error says why).
    Failed,
    /// It did not run: another held the instance lock.
    Skipped,
    /// Refused before it changed anything (a restore of another cell, a damaged
    /// backup): the operator who asked was told; nothing needs attention.
    Refused,
    /// Stopped by the operator (a signal), and everything is as it was: nothing had
    /// changed yet, or the swap was rolled back cleanly and the service restarted.
    Cancelled,
}

impl Outcome {
    /// The word status files and reports use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Refused => "refused",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The last run of one kind of an instance.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct Status {
    pub(crate) instance: String,
    pub(crate) kind: Kind,
    pub(crate) result: Outcome,
    pub(crate) started: String,
    pub(crate) finished: String,
    pub(crate) duration_seconds: f64,
    pub(crate) backup: Option<String>,
    pub(crate) bytes: u64,
    pub(crate) freeze_ms: Option<f64>,
    pub(crate) exit_code: i32,
    pub(crate) error: Option<String>,
    /// When the last successful run finished (RFC 3339), and what it made.
    pub(crate) last_success: Option<String>,
    pub(crate) last_success_backup: Option<String>,
    pub(crate) backups_kept: usize,
    /// Extra facts of the kind (cold: downtime, reclaimed bytes, old directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<serde_json::Value>,
    /// When an operator acknowledged this failure (`status --acknowledge`): it no
    /// longer makes `status` fail. The next run of the kind replaces the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) acknowledged: Option<String>,
}

impl Status {
    /// A failed or skipped run nobody acknowledged: what `status` and the
    /// `last_problem` metric report.
    pub(crate) fn needs_attention(&self) -> bool {
        matches!(self.result, Outcome::Failed | Outcome::Skipped) && self.acknowledged.is_none()
    }
}

/// The host facts the deployment guide asks about, for the service directory at
/// `service_dir` holding `data_bytes`: its file system and device, and RAM.
pub(crate) fn host_facts(service_dir: &Path, data_bytes: Option<u64>) -> serde_json::Value {
    let root = Path::new("/");
    let mount = crate::host::storage::mount_of(root, service_dir);
    let rotational = mount
        .as_ref()
        .and_then(|m| crate::host::storage::rotational(root, m.major, m.minor));
    serde_json::json!({
        "fstype": mount.as_ref().map(|m| m.fstype.clone()),
        "network_fs": mount.as_ref().map(|m| m.is_network()),
        "rotational": rotational,
        "data_bytes": data_bytes,
        "mem_total_bytes": crate::host::procfs::mem_total_bytes(root).ok(),
    })
}

/// What the guide warns about in `host_facts`: NFS, a spinning disk, data > RAM.
pub(crate) fn host_warnings(facts: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let fstype = facts["fstype"].as_str().unwrap_or("?");
    if facts["network_fs"] == true {
        out.push(format!(
            "the service directory is on {fstype}, a network file system: LMDB wants a local disk"
        ));
    }
    if facts["rotational"] == true {
        out.push(
            "the service directory is on a rotational (mechanical) disk: use an SSD".to_string(),
        );
    }
    if let (Some(data), Some(mem)) = (
        facts["data_bytes"].as_u64(),
        facts["mem_total_bytes"].as_u64(),
    ) {
        if data > mem {
            out.push(format!(
                "the data ({}) is larger than the RAM ({}): the service will read from disk",
                crate::base::fsutil::human(data),
                crate::base::fsutil::human(mem)
            ));
        }
    }
    out
}

/// Where an instance's status of `kind` lives.
pub(crate) fn status_path(state_dir: &Path, instance: &str, kind: &str) -> PathBuf {
    if kind == Kind::Backup.as_str() {
        state_dir.join(format!("{instance}.json"))
    } else {
        state_dir.join(format!("{instance}.{kind}.json"))
    }
}

/// The last recorded status, if any (unreadable files are reported, not fatal).
pub(crate) fn load(state_dir: &Path, instance: &str, kind: Kind) -> Option<Status> {
    let p = status_path(state_dir, instance, kind.as_str());
    let bytes = std::fs::read(&p).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("ignoring unreadable status {}: {e}", p.display());
            None
        }
    }
}

/// Record a run: the status file and the metrics file.
/// Remove a metrics file synbackup wrote, for an instance whose metrics are now
/// off (`SYNBACKUP_METRICS=no`): stale values must not keep an alert quiet or firing.
pub(crate) fn remove_metrics_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed {} (SYNBACKUP_METRICS=no)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("could not remove {}: {e}", path.display()),
    }
}

pub(crate) fn record(
    state_dir: &Path,
    metrics_dir: &Path,
    metrics: bool,
    status: &Status,
) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let mut json = serde_json::to_vec_pretty(status)?;
    json.push(b'\n');
    // Root's only: the error it may hold is other programs' text (restic's,
    // Synapse's, systemctl's), which may name what others should not read.
    write_atomic(
        &status_path(state_dir, &status.instance, status.kind.as_str()),
        &json,
        0o600,
    )?;
    // node_exporter's package makes its textfile directory; without it there is
    // no collector to read metrics, so none are written (`status` says so).
    let path = metrics_dir.join(format!(
        "synbackup-{}{}.prom",
        status.instance,
        suffix(status.kind.as_str())
    ));
    if !metrics {
        remove_metrics_file(&path);
    } else if metrics_dir.is_dir() {
        write_atomic(&path, render_metrics(status).as_bytes(), 0o644)?;
    } else {
        log::debug!(
            "no metrics written: {} does not exist",
            metrics_dir.display()
        );
    }
    Ok(())
}

/// The line a finished unit leaves in `systemctl status` (`STATUS=`), so that it
/// does not keep showing the last progress line ("copying ... (90%)").
pub(crate) fn final_line(s: &Status) -> String {
    let what = s.kind.title();
    match s.result {
        Outcome::Success => format!(
            "{what} done at {} in {:.0} s{}",
            s.finished,
            s.duration_seconds,
            s.backup
                .as_deref()
                .map(|b| format!(": {b}"))
                .unwrap_or_default()
        ),
        result => format!(
            "{what} {} at {} (exit {}): {}",
            result.as_str(),
            s.finished,
            s.exit_code,
            s.error.as_deref().unwrap_or("")
        ),
    }
}

/// Remove every status and metrics file of `instance` (each [`Kind`]'s, and the
/// certificate check's: `certs::record` writes `INSTANCE.certs.json` and
/// `synbackup-INSTANCE-certs.prom`), and its records of drills and offsite
/// copies per backup; returns the paths removed.
pub(crate) fn retire(state_dir: &Path, metrics_dir: &Path, instance: &str) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let kinds = Kind::ALL.iter().map(|k| k.as_str()).chain(["certs"]);
    let records = [
        crate::instance::tested::tested_path(state_dir, instance),
        crate::instance::offsite_copies::record_path(state_dir, instance),
    ];
    for files in kinds
        .map(|kind| {
            vec![
                status_path(state_dir, instance, kind),
                metrics_dir.join(format!("synbackup-{instance}{}.prom", suffix(kind))),
            ]
        })
        .chain([records.to_vec()])
    {
        for p in files {
            match std::fs::remove_file(&p) {
                Ok(()) => removed.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
            }
        }
    }
    Ok(removed)
}

fn suffix(kind: &str) -> String {
    if kind == "backup" {
        String::new()
    } else {
        format!("-{kind}")
    }
}

fn epoch(rfc3339: Option<&str>) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339?).ok()?;
    Some(t.timestamp_millis() as f64 / 1000.0)
}

/// One gauge per line group, `PREFIX_NAME{instance="..."} VALUE`.
struct Gauges {
    prefix: String,
    label: String,
    out: String,
}

impl Gauges {
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let (prefix, label) = (&self.prefix, &self.label);
        self.out.push_str(&format!(
            "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} gauge\n{prefix}_{name}{label} {value}\n"
        ));
    }
}

/// The Prometheus text exposition of a status.
pub(crate) fn render_metrics(s: &Status) -> String {
    let prefix = match s.kind {
        Kind::Backup => "synbackup".to_string(),
        kind => format!("synbackup_{}", kind.as_str()),
    };
    let label = format!(
        "{{instance=\"{}\"}}",
        s.instance.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let mut g = Gauges {
        prefix,
        label,
        out: String::new(),
    };
    render_run_gauges(&mut g, s);
    let details = s.details.clone().unwrap_or_default();
    render_host_gauges(&mut g, &details);
    render_kind_gauges(&mut g, s, &details);
    g.out
}

/// What every kind reports: when, whether, how long, the exit code, the bytes.
fn render_run_gauges(g: &mut Gauges, s: &Status) {
    g.gauge(
        "last_attempt_timestamp_seconds",
        "When the last run finished (success or not).",
        epoch(Some(&s.finished)).unwrap_or(0.0),
    );
    g.gauge(
        "last_success",
        "1 if the last run succeeded, else 0.",
        if s.result == Outcome::Success {
            1.0
        } else {
            0.0
        },
    );
    g.gauge(
        "last_problem",
        "1 if the last run failed or was skipped and nobody acknowledged it, else 0 (a refused or cancelled run changed nothing).",
        if s.needs_attention() { 1.0 } else { 0.0 },
    );
    g.gauge(
        "last_success_timestamp_seconds",
        "When the last successful run finished (0: never).",
        epoch(s.last_success.as_deref()).unwrap_or(0.0),
    );
    g.gauge(
        "last_duration_seconds",
        "How long the last run took.",
        s.duration_seconds,
    );
    g.gauge(
        "last_exit_code",
        "Exit code of the last run.",
        f64::from(s.exit_code),
    );
    g.gauge(
        "last_bytes",
        "Bytes written by the last run.",
        s.bytes as f64,
    );
    if s.kind == Kind::Backup {
        g.gauge(
            "backups_kept",
            "Complete backups of the instance after the last run.",
            s.backups_kept as f64,
        );
    }
}

/// The host facts a run learnt (`host_facts`), where it recorded them.
fn render_host_gauges(g: &mut Gauges, details: &serde_json::Value) {
    let sizes = [
        ("reclaimable_bytes", "Bytes a maintenance window would reclaim now (free pages the last run compacted away)."),
        ("data_bytes", "Bytes in the service directory at the last run."),
        ("mem_total_bytes", "MemTotal of the host at the last run."),
        ("aside_bytes", "Bytes in directories kept aside by windows and restores (DIR.pre-cold-*, DIR.pre-restore-*) after the last run."),
        ("aside_dirs", "Directories kept aside by windows and restores after the last run."),
    ];
    for (name, help) in sizes {
        if let Some(v) = details[name].as_u64() {
            g.gauge(name, help, v as f64);
        }
    }
    let flags = [
        (
            "service_dir_rotational",
            "rotational",
            "1 if the service directory's disk is rotational.",
        ),
        (
            "service_dir_network_fs",
            "network_fs",
            "1 if the service directory is on a network file system (NFS, EFS).",
        ),
    ];
    for (name, key, help) in flags {
        if let Some(v) = details[key].as_bool() {
            g.gauge(name, help, if v { 1.0 } else { 0.0 });
        }
    }
}

/// What only one kind reports: a drill's boot time, an offsite copy's sizes, a
/// backup's freeze and the kept directories it could not expire.
fn render_kind_gauges(g: &mut Gauges, s: &Status, details: &serde_json::Value) {
    if s.kind == Kind::Drill {
        if let Some(boot) = details.get("boot_seconds").and_then(|b| b.as_f64()) {
            g.gauge(
                "boot_seconds",
                "How long the last drilled backup took to boot and answer.",
                boot,
            );
        }
    }
    if s.kind == Kind::Offsite {
        g.gauge(
            "snapshot_bytes",
            "Bytes of the backup in the last offsite snapshot.",
            details["snapshot_bytes"].as_u64().unwrap_or(0) as f64,
        );
        g.gauge(
            "added_bytes",
            "Bytes the last offsite upload added to the repository after deduplication (0 when it failed).",
            details["added_bytes"].as_u64().unwrap_or(0) as f64,
        );
    }
    if let Some(ms) = s.freeze_ms {
        g.gauge(
            "last_freeze_seconds",
            "How long the service was frozen in the last run.",
            ms / 1000.0,
        );
    }
    if s.kind == Kind::Backup {
        let failed = details
            .get("kept_expiry_failed")
            .and_then(|v| v.as_array())
            .map_or(0, Vec::len);
        g.gauge(
            "kept_expiry_failed",
            "Directories kept by maintenance windows that the last run could not expire.",
            failed as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text() {
        let s = Status {
            instance: "c0".into(),
            kind: Kind::Backup,
            result: Outcome::Failed,
            finished: "2026-11-26T02:30:00Z".into(),
            last_success: Some("2026-11-25T02:30:00Z".into()),
            exit_code: 4,
            ..Status::default()
        };
        let m = render_metrics(&s);
        assert!(
            m.contains("synbackup_last_success{instance=\"c0\"} 0\n"),
            "{m}"
        );
        assert!(
            m.contains("synbackup_last_success_timestamp_seconds{instance=\"c0\"} 1795573800\n"),
            "{m}"
        );
        assert!(
            m.contains("synbackup_last_attempt_timestamp_seconds{instance=\"c0\"} 1795660200\n"),
            "{m}"
        );
        assert!(m.contains("synbackup_last_exit_code{instance=\"c0\"} 4\n"));
        assert!(!m.contains("freeze"));
    }
}
