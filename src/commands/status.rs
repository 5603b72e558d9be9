// SPDX-License-Identifier: Apache-2.0
//! `synbackup status [INSTANCE] [--json]`: the last results of every instance; exits
//! `Unhealthy` (9) when one failed or its last good backup is too old, so it serves
//! as a monitoring check.

use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use crate::base::exit::Code;
use crate::base::units::format_duration;
use crate::commands::print_json;
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::status::{self, Status};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this instance (default: every configured instance).
    pub(crate) instance: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
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
    /// The last certificate check (`synbackup certs`, every `run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    certs: Option<crate::instance::certs::CertsState>,
}

/// `synbackup status [INSTANCE] [--json]`: a monitoring check.
pub(crate) fn exec(dirs: &Dirs, args: &StatusArgs) -> Result<ExitCode> {
    let now = Utc::now();
    let mut all = Vec::new();
    for name in config::selected(&dirs.config_dir, args.instance.as_deref())? {
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
        let certs = crate::instance::certs::load_state(&dirs.state_dir, &name);
        all.push(Health {
            instance: name,
            healthy: problem.is_none(),
            problem,
            last_success_age_seconds: age,
            max_age_seconds: max_age.as_secs(),
            backup,
            cold,
            certs,
        });
    }
    if args.json {
        print_json(&all)?;
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
            if let Some(w) = h.certs.as_ref().and_then(|c| c.worst_finding.as_ref()) {
                writeln!(out, "{}: certificates: {w}", h.instance)?;
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
