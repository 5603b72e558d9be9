// SPDX-License-Identifier: Apache-2.0
//! `synbackup run INSTANCE`: what `synbackup@.service` runs (`instance::run`).

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
}

/// Back up the instance, prune, record status.
pub(crate) fn exec(dirs: &Dirs, a: &RunArgs, show_bar: bool) -> Result<ExitCode> {
    let result = crate::instance::run::run(dirs, &a.instance, &a.overrides, show_bar);
    leave_final_status(dirs, &a.instance, "backup");
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Replace the unit's last progress line with the result just recorded.
pub(crate) fn leave_final_status(dirs: &Dirs, instance: &str, kind: &str) {
    if let Some(st) = crate::instance::status::load(&dirs.state_dir, instance, kind) {
        crate::host::systemd::status(&crate::instance::status::final_line(&st));
        crate::host::systemd::barrier(std::time::Duration::from_secs(5));
    }
}
