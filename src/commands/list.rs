// SPDX-License-Identifier: Apache-2.0
//! `synbackup list [INSTANCE] [--json]`: every backup of the instances with its age,
//! size and state (`instance::catalog`), and whether a drill booted it
//! (`instance::tested`: when, which Synapse, boot seconds, nodes), and which
//! restic snapshot holds its offsite copy (`instance::offsite_copies`: the short
//! id in the table, the full one in `--json`). An instance whose configuration does not
//! load is reported on stderr and the others are still listed (exit 2).

use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;
use clap::Args;
use serde::Serialize;

use crate::base::exit::Code;
use crate::base::fsutil::human;
use crate::base::units::format_duration;
use crate::commands::print_json;
use crate::instance::catalog::{self, State};
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::offsite_copies::{self, OffsiteCopy};
use crate::instance::record::now_str;
use crate::instance::tested::{self, Tested};

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this instance (default: every configured instance).
    pub(crate) instance: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
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
    /// The backup's last drill (`synbackup drill`), if any.
    tested: Option<Tested>,
    /// The restic snapshot holding its offsite copy, as the last offsite copy
    /// found the repository (`instance::offsite_copies`), if any.
    offsite: Option<OffsiteCopy>,
}

/// `synbackup list [INSTANCE] [--json]`.
pub(crate) fn exec(dirs: &Dirs, args: &ListArgs) -> Result<ExitCode> {
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut broken = 0;
    for name in config::selected(&dirs.config_dir, args.instance.as_deref())? {
        // One broken file must not hide every other instance's backups.
        let inst = match config::load(&dirs.config_dir, &name, &InstanceOverrides::default()) {
            Ok(i) => i,
            Err(e) => {
                log::error!("{name}: not listed: {e:#}");
                broken += 1;
                continue;
            }
        };
        let mut drilled = tested::load(&dirs.state_dir, &name);
        let mut offsite = offsite_copies::load(&dirs.state_dir, &name);
        for e in catalog::scan(&inst.backup_root, &name)? {
            rows.push(Listed {
                offsite: offsite.remove(&e.name),
                tested: drilled.remove(&e.name),
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
        print_json(&rows)?;
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<40} {:<20} {:>8} {:>10}  {:<9} {:<8} TESTED",
            "BACKUP", "TIME (UTC)", "AGE", "SIZE", "STATE", "OFFSITE"
        )?;
        for r in &rows {
            let age = std::time::Duration::from_secs(r.age_seconds.max(0) as u64);
            let state = serde_json::to_value(r.state)?
                .as_str()
                .unwrap_or("")
                .to_string();
            let tested = r
                .tested
                .as_ref()
                .map(tested::describe)
                .unwrap_or_else(|| "-".into());
            let offsite = r.offsite.as_ref().map_or("-", |o| o.short_id.as_str());
            writeln!(
                out,
                "{:<40} {:<20} {:>8} {:>10}  {state:<9} {offsite:<8} {tested}",
                r.name,
                &r.time[..19.min(r.time.len())],
                format_duration(age),
                human(r.bytes)
            )?;
        }
    }
    if broken > 0 {
        return Ok(ExitCode::from(Code::Usage as u8));
    }
    Ok(ExitCode::SUCCESS)
}
