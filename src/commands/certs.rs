// SPDX-License-Identifier: Apache-2.0
//! `synbackup certs INSTANCE` or `synbackup certs --dir DIR [--cert-dir D]`: every
//! certificate and key the service uses, checked (`certs::check`); a table, or
//! `--json`; exit code `Unhealthy` (9) when a check fails. With an instance it also
//! writes the certificate metrics and logs the expiry events (`certs::record`).
//! `synbackup certs deploy ...` is its subcommand (`commands::certs_deploy`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::base::exit::{fail, Code};
use crate::certs::record as instance_certs;
use crate::certs::{self, Report, Severity};
use crate::commands::print_json;
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct CertsArgs {
    #[command(subcommand)]
    pub(crate) action: Option<CertsAction>,
    /// The instance whose service to check.
    #[arg(required_unless_present = "dir", conflicts_with = "dir")]
    pub(crate) instance: Option<String>,
    /// Check this service directory instead of an instance's.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// The certificate directory (default with an instance: from its unit).
    #[arg(long, value_name = "D", env = "SYNBACKUP_CERT_DIR")]
    pub(crate) cert_dir: Option<PathBuf>,
    /// Warn when a certificate has fewer days left (default 30).
    #[arg(long, value_name = "DAYS", env = "SYNBACKUP_CERT_WARN_DAYS")]
    pub(crate) warn_days: Option<u32>,
    /// A name clients reach the HTTPS server by (repeatable; checked in sslcert.pem).
    #[arg(long = "https-name", value_name = "NAME")]
    pub(crate) https_names: Vec<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What `certs` does besides checking.
#[derive(Debug, Subcommand)]
pub(crate) enum CertsAction {
    /// Put a renewed HTTPS pair into the running cell: check, keep the old, write, reload, confirm, roll back on failure.
    Deploy(crate::commands::certs_deploy::DeployArgs),
}

/// Check, report, exit 9 when a check failed.
pub(crate) fn exec(dirs: &Dirs, a: &CertsArgs) -> Result<ExitCode> {
    if let Some(CertsAction::Deploy(d)) = &a.action {
        return crate::commands::certs_deploy::exec(dirs, d);
    }
    let now = chrono::Utc::now().timestamp();
    let report = match (&a.instance, &a.dir) {
        (Some(name), _) => {
            let mut inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
            if a.cert_dir.is_some() {
                inst.cert_dir.clone_from(&a.cert_dir);
            }
            require_dir(&inst.service_dir)?;
            let opts = certs::Options {
                warn_days: a.warn_days.unwrap_or(inst.cert_warn_days),
                https_names: if a.https_names.is_empty() {
                    inst.cert_names.clone()
                } else {
                    a.https_names.clone()
                },
                now,
                accept: inst.cert_accept.clone(),
            };
            instance_certs::check_and_record(dirs, &inst, &opts)?
        }
        (None, Some(dir)) => {
            require_dir(dir)?;
            let opts = certs::Options {
                warn_days: a.warn_days.unwrap_or(30),
                https_names: a.https_names.clone(),
                now,
                accept: Vec::new(),
            };
            certs::check_material(dir, a.cert_dir.as_deref(), &opts)?
        }
        (None, None) => return Err(fail(Code::Usage, "name an INSTANCE or give --dir DIR")),
    };
    if a.json {
        print_json(&report)?;
    } else {
        print_table(&report)?;
    }
    Ok(if report.failed() {
        ExitCode::from(Code::Unhealthy as u8)
    } else {
        ExitCode::SUCCESS
    })
}

fn require_dir(dir: &std::path::Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(fail(
            Code::BadPath,
            format!(
                "{} is not a directory: give the service directory",
                dir.display()
            ),
        ))
    }
}

/// One line per certificate, then one per finding, then the verdict.
fn print_table(r: &Report) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<24} {:<16} {:<10} {:>6}  PATH",
        "ROLE", "SUBJECT CN", "ISSUER CN", "NOT AFTER", "DAYS"
    )?;
    for c in &r.certs {
        let day = chrono::DateTime::from_timestamp(c.not_after, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let role = serde_json::to_value(c.role)?;
        writeln!(
            out,
            "{:<6} {:<24} {:<16} {:<10} {:>6}  {}",
            role.as_str().unwrap_or(""),
            c.subject_cn,
            c.issuer_cn,
            day,
            c.days_left,
            shown(&c.path)
        )?;
    }
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Warn => "WARN",
            Severity::Fail => "FAIL",
        };
        writeln!(out, "{sev} {} {}: {}", f.check, shown(&f.path), f.message)?;
    }
    for f in &r.accepted {
        writeln!(
            out,
            "ACCEPTED {} {}: {} (SYNBACKUP_CERT_ACCEPT)",
            f.check,
            shown(&f.path),
            f.message
        )?;
    }
    let verdict = match r.worst() {
        None => "all checks passed",
        Some(Severity::Warn) => "passed with warnings",
        Some(Severity::Fail) => "a check FAILED",
    };
    writeln!(
        out,
        "{} certificates, {} findings in {} and {}: {verdict}",
        r.certs.len(),
        r.findings.len(),
        shown(&r.service_dir),
        r.cert_dirs
            .iter()
            .map(|d| shown(d))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(())
}

/// A path the report keeps as a `pathtext::key`, as printed for an operator.
fn shown(key: &str) -> String {
    use crate::base::pathtext;
    pathtext::shell_word(&pathtext::path(key))
}
