// SPDX-License-Identifier: Apache-2.0
//! `synbackup drill INSTANCE [BACKUP]` and `synbackup drill --dir BACKUP --python PATH
//! --module MODULE`: boot a copy of a backup, isolated, and check it
//! (`service::drill`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{fail, Code};
use crate::base::units::parse_duration;
use crate::commands::print_json;
use crate::drill::{self, Request};
use crate::host::transient::Isolation;
use crate::instance::dirs::Dirs;

#[derive(Debug, Args)]
pub(crate) struct DrillArgs {
    /// The instance whose backup to drill (its Python and module from the config or
    /// the unit's ExecStart; the result is recorded).
    #[arg(conflicts_with_all = ["dir", "python", "module"])]
    pub(crate) instance: Option<String>,
    /// The backup (a path, or a name in the instance's backup root). Default: the
    /// newest verified backup.
    pub(crate) backup: Option<PathBuf>,
    /// Drill this backup directory, without an instance.
    #[arg(long, value_name = "BACKUP_DIR", requires = "python")]
    pub(crate) dir: Option<PathBuf>,
    /// The Python of the Synapse install to boot it with (with --dir).
    #[arg(long, value_name = "PATH")]
    pub(crate) python: Option<PathBuf>,
    /// The server module (with --dir).
    #[arg(long, value_name = "MODULE", default_value = "synapse.servers.cortex")]
    pub(crate) module: String,
    /// How long the service may take to boot and answer (with --dir).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub(crate) timeout: String,
    /// A Storm query that must succeed on the booted Cortex.
    #[arg(long, value_name = "STORM")]
    pub(crate) check: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// With --dir: boot without Synapse's safemode (crons, triggers, dmons and
    /// storm pools run).
    #[arg(long)]
    pub(crate) no_safemode: bool,
}

/// Drill as asked; exit code `Drill` when the backup did not boot or failed a check.
pub(crate) fn exec(dirs: &Dirs, a: &DrillArgs) -> Result<ExitCode> {
    let outcome = match (&a.instance, &a.dir) {
        (Some(name), None) => {
            drill::drill_instance(dirs, name, a.backup.as_deref(), a.check.clone())?
        }
        (None, Some(dir)) => {
            let timeout = parse_duration(&a.timeout).map_err(|e| {
                fail(
                    Code::Usage,
                    format!(
                        "--timeout {:?}: expected a duration such as 10m ({e})",
                        a.timeout
                    ),
                )
            })?;
            let req = Request {
                backup: dir.clone(),
                python: a.python.clone().unwrap_or_default(),
                module: a.module.clone(),
                timeout,
                check: a.check.clone(),
                isolation: Isolation::Auto,
                env: Default::default(),
                safemode: !a.no_safemode,
                config_dir: Some(dirs.config_dir.clone()),
            };
            drill::drill_dir(dirs, &req)?
        }
        _ => {
            return Err(fail(
                Code::Usage,
                "drill needs INSTANCE, or --dir BACKUP_DIR --python PATH",
            ))
        }
    };
    if a.json {
        print_json(&outcome)?;
    }
    Ok(ExitCode::SUCCESS)
}
