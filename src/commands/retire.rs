// SPDX-License-Identifier: Apache-2.0
//! `synbackup retire INSTANCE`: forget a removed instance. Its status files and
//! metrics files are removed, so that a typo'd or retired instance stops alerting;
//! its backups, service directory and anything else are never touched. Refused
//! while `CONFIG_DIR/INSTANCE.conf` exists (retire the config first).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{fail, Code};
use crate::instance::config;
use crate::instance::dirs::Dirs;
use crate::instance::status;

#[derive(Debug, Args)]
pub(crate) struct RetireArgs {
    /// The instance whose status and metrics files are removed.
    pub(crate) instance: String,
}

/// Remove the instance's state and metrics files; print each one removed.
pub(crate) fn exec(dirs: &Dirs, a: &RetireArgs) -> Result<ExitCode> {
    config::check_name(&a.instance)?;
    if config::file_exists(&dirs.config_dir, &a.instance) {
        return Err(fail(
            Code::Usage,
            format!(
                "{} still configures {}: remove or rename it first (its backups are never touched)",
                dirs.config_dir
                    .join(format!("{}.conf", a.instance))
                    .display(),
                a.instance
            ),
        ));
    }
    let removed = status::retire(&dirs.state_dir, &dirs.metrics_dir, &a.instance)?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for p in &removed {
        writeln!(out, "removed {}", p.display())?;
    }
    if removed.is_empty() {
        writeln!(out, "nothing recorded for {}", a.instance)?;
    }
    Ok(ExitCode::SUCCESS)
}
