// SPDX-License-Identifier: Apache-2.0
//! `synbackup cold INSTANCE`: what `synbackup-cold@.service` runs, the maintenance
//! window (`window`); with `--dry-run`, its plan (`window::dry_run`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::instance::config::InstanceOverrides;
use crate::instance::dirs::Dirs;
use crate::instance::record::leave_final_status;
use crate::instance::status::Kind;

#[derive(Debug, Args)]
pub(crate) struct ColdArgs {
    /// The instance name (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    #[command(flatten)]
    pub(crate) overrides: InstanceOverrides,
    /// Say what the window would stop, copy, keep aside and remove, and whether
    /// its copy fits, changing nothing (a refusal exits as the window would).
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Run the window for the instance.
pub(crate) fn exec(dirs: &Dirs, a: &ColdArgs, show_bar: bool) -> Result<ExitCode> {
    if a.dry_run {
        crate::window::dry_run(dirs, &a.instance, &a.overrides)?;
        return Ok(ExitCode::SUCCESS);
    }
    let result = crate::window::run(dirs, &a.instance, &a.overrides, show_bar);
    leave_final_status(dirs, &a.instance, Kind::Cold);
    result?;
    Ok(ExitCode::SUCCESS)
}
