// SPDX-License-Identifier: Apache-2.0
//! An instance's TLS check: where its certificate directory is, the metrics
//! (`METRICS_DIR/synbackup-INSTANCE-certs.prom`, in x509-certificate-exporter's
//! shape: a `not_after` timestamp per certificate, an error gauge per file), and one
//! journal event when a certificate enters the warning window or expires (the last
//! state of each is kept in `STATE_DIR/INSTANCE.certs.json`, so the event is logged
//! once per change, not at every run; the worst finding is kept there too, for
//! `status`). `run` checks after every backup; a failed check never fails the backup.
//!
//! The certificate directory: `SYNBACKUP_CERT_DIR` when set; else the unit's
//! `Environment=SYN_CERT_DIR=...`; else `~/.syn/certs` of the unit's `User=` (root
//! when unset), its home from the passwd database; none without a unit. `run`
//! carries it in every backup ([`cert_dir_to_carry`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::Level;
use serde::{Deserialize, Serialize};

use crate::base::fsutil::write_atomic;
use crate::base::logging::{self, MSG_CERT_EXPIRY};
use crate::certs::{self, CertInfo, Report, Severity};
use crate::instance::certdir::resolve_cert_dir;
use crate::instance::config::Instance;
use crate::instance::dirs::Dirs;

/// What `STATE_DIR/INSTANCE.certs.json` keeps of the last check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CertsState {
    /// When it ran (RFC 3339).
    pub(crate) checked: String,
    /// The worst severity, `None` when every check passed.
    pub(crate) worst: Option<Severity>,
    /// That finding, as `CHECK PATH: MESSAGE`.
    pub(crate) worst_finding: Option<String>,
    /// `ok`, `expiring` or `expired` by "PATH SERIAL".
    pub(crate) expiry: BTreeMap<String, String>,
}

fn state_path(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join(format!("{instance}.certs.json"))
}

/// The last check's state, if one was recorded.
pub(crate) fn load_state(state_dir: &Path, instance: &str) -> Option<CertsState> {
    let bytes = std::fs::read(state_path(state_dir, instance)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Which timestamp of a certificate a gauge shows.
type Timestamp = fn(&CertInfo) -> i64;

/// The Prometheus text of a report.
pub(crate) fn render_cert_metrics(instance: &str, r: &Report) -> String {
    let inst = label(instance);
    let mut out = String::new();
    let timestamps: [(&str, &str, Timestamp); 2] = [
        ("not_after", "When the certificate expires.", |c| {
            c.not_after
        }),
        ("not_before", "When the certificate becomes valid.", |c| {
            c.not_before
        }),
    ];
    for (what, help, value) in timestamps {
        let name = format!("synbackup_cert_{what}_timestamp_seconds");
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for c in &r.certs {
            out.push_str(&format!(
                "{name}{{instance=\"{inst}\",path=\"{}\",subject_cn=\"{}\",issuer_cn=\"{}\",serial=\"{}\"}} {}\n",
                label(&c.path),
                label(&c.subject_cn),
                label(&c.issuer_cn),
                label(&c.serial),
                value(c)
            ));
        }
    }
    out.push_str(
        "# HELP synbackup_cert_error 1 if a check of the file failed (see synbackup certs), else 0.\n\
         # TYPE synbackup_cert_error gauge\n",
    );
    let mut paths: Vec<&String> = r
        .files
        .iter()
        .chain(r.findings.iter().map(|f| &f.path))
        .collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        out.push_str(&format!(
            "synbackup_cert_error{{instance=\"{inst}\",path=\"{}\"}} {}\n",
            label(p),
            u8::from(r.file_failed(p))
        ));
    }
    out
}

/// Write the metrics file of `instance` (none when the metrics directory does not
/// exist, as for the run's metrics).
pub(crate) fn write_cert_metrics(metrics_dir: &Path, instance: &str, r: &Report) -> Result<()> {
    // As for the run's metrics: no collector directory, no metrics (never created here).
    if !metrics_dir.is_dir() {
        log::debug!(
            "no certificate metrics written: {} does not exist",
            metrics_dir.display()
        );
        return Ok(());
    }
    let path = metrics_dir.join(format!("synbackup-{instance}-certs.prom"));
    write_atomic(&path, render_cert_metrics(instance, r).as_bytes(), 0o644)
}

/// `ok`, `expiring` or `expired`, for each certificate (path and serial).
fn expiry_states(r: &Report) -> BTreeMap<String, String> {
    r.certs
        .iter()
        .map(|c| {
            let state = if c.days_left < 0 {
                "expired"
            } else if c.days_left < i64::from(r.warn_days) {
                "expiring"
            } else {
                "ok"
            };
            (format!("{} {}", c.path, c.serial), state.to_string())
        })
        .collect()
}

/// Log one `MSG_CERT_EXPIRY` event for each certificate whose state became
/// `expiring` or `expired` since the last check, and remember the states and the
/// worst finding.
pub(crate) fn announce_expiry_changes(
    state_dir: &Path,
    instance: &str,
    r: &Report,
) -> Result<usize> {
    let path = state_path(state_dir, instance);
    let before = load_state(state_dir, instance).unwrap_or_default().expiry;
    let now = expiry_states(r);
    let mut events = 0;
    for c in &r.certs {
        let key = format!("{} {}", c.path, c.serial);
        let state = now.get(&key).map(String::as_str).unwrap_or("ok");
        if state == "ok" || before.get(&key).map(String::as_str) == Some(state) {
            continue;
        }
        let (level, text) = if state == "expired" {
            (
                Level::Error,
                format!("certificate {} (CN={}) has expired", c.path, c.subject_cn),
            )
        } else {
            (
                Level::Warn,
                format!(
                    "certificate {} (CN={}) expires in {} days",
                    c.path, c.subject_cn, c.days_left
                ),
            )
        };
        let not_after = c.not_after.to_string();
        logging::event(
            level,
            MSG_CERT_EXPIRY,
            instance,
            &[
                ("SYNBACKUP_CERT_PATH", &c.path),
                ("SYNBACKUP_CERT_STATE", state),
                ("SYNBACKUP_CERT_NOT_AFTER", &not_after),
            ],
            &text,
        );
        events += 1;
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let state = CertsState {
        checked: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        worst: r.worst(),
        worst_finding: r
            .worst_finding()
            .map(|f| format!("{} {}: {}", f.check, f.path, f.message)),
        expiry: now,
    };
    let mut json = serde_json::to_vec_pretty(&state)?;
    json.push(b'\n');
    // Root's only, as the run statuses: a finding quotes the files it is about.
    write_atomic(&path, &json, 0o600)?;
    Ok(events)
}

/// Check an instance's material, write its metrics, log and record expiry changes.
pub(crate) fn check_and_record(
    dirs: &Dirs,
    inst: &Instance,
    opts: &certs::Options,
) -> Result<Report> {
    let dir = resolve_cert_dir(inst)?;
    let report = certs::check_material(&inst.service_dir, dir.as_deref(), opts)?;
    if inst.metrics {
        write_cert_metrics(&dirs.metrics_dir, &inst.name, &report)?;
    } else {
        crate::instance::status::remove_metrics_file(
            &dirs
                .metrics_dir
                .join(format!("synbackup-{}-certs.prom", inst.name)),
        );
    }
    announce_expiry_changes(&dirs.state_dir, &inst.name, &report)?;
    Ok(report)
}

/// The check `run` does after its backup, with the instance's settings: its
/// findings are logged (a failure as a warning), its own errors too; it never
/// fails the run.
pub(crate) fn check_after_run(dirs: &Dirs, inst: &Instance) {
    let opts = certs::Options {
        warn_days: inst.cert_warn_days,
        https_names: inst.cert_names.clone(),
        accept: inst.cert_accept.clone(),
        now: chrono::Utc::now().timestamp(),
    };
    match check_and_record(dirs, inst, &opts) {
        Ok(r) => {
            for f in &r.findings {
                log::warn!(
                    "certificates of {}: {} {}: {}",
                    inst.name,
                    f.check,
                    f.path,
                    f.message
                );
            }
        }
        Err(e) => log::warn!("cannot check the certificates of {}: {e:#}", inst.name),
    }
}
