// SPDX-License-Identifier: Apache-2.0
//! `synbackup run INSTANCE`: what `synbackup@.service` runs (`nightly`: back up,
//! prune, certificates, offsite, and with `SYNBACKUP_DRILL_AFTER_RUN=yes` a drill
//! of the backup it just made).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::instance::config::InstanceOverrides;
use crate::instance::dirs::Dirs;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The instance name (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    #[command(flatten)]
    pub(crate) overrides: InstanceOverrides,
    /// Say what the run would do (the backup and the room for it, the freeze,
    /// retention, expiries, offsite, drill), changing nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Back up the instance, prune, record status; copy offsite and drill if configured.
pub(crate) fn exec(dirs: &Dirs, a: &RunArgs, show_bar: bool) -> Result<ExitCode> {
    if a.dry_run {
        crate::nightly::plan::dry_run(dirs, &a.instance, &a.overrides)?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::nightly::run(dirs, &a.instance, &a.overrides, show_bar)?;
    Ok(ExitCode::SUCCESS)
}
