// SPDX-License-Identifier: Apache-2.0
//! `synbackup nexus-trim INSTANCE [--dry-run] [--wait DURATION] [--force-mirror MIRROR]`:
//! rotate and cull the cell's nexus log no further than the nexus archive and the
//! mirrors have got (`pitr::trim`), under the instance lock (never during a
//! run's freeze).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::pitr::trim;

#[derive(Debug, Args)]
pub(crate) struct NexusTrimArgs {
    /// The instance whose cell's nexus log is trimmed.
    pub(crate) instance: String,
    /// Say what would be culled; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// How long the archive and the mirrors get to reach the rotation.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::base::units::parse_duration)]
    pub(crate) wait: std::time::Duration,
    /// Trim even though this mirror (a directory of SYNBACKUP_MIRRORS) does not answer.
    #[arg(long = "force-mirror", value_name = "MIRROR")]
    pub(crate) force: Vec<PathBuf>,
}

/// Trim, or refuse (exit 15) what would break the chain.
pub(crate) fn exec(dirs: &Dirs, a: &NexusTrimArgs) -> Result<ExitCode> {
    let inst = config::load(&dirs.config_dir, &a.instance, &InstanceOverrides::default())?;
    let _held = if a.dry_run {
        None
    } else {
        Some(lock::try_acquire(&dirs.lock_dir, &inst.name, "nexus-trim")?)
    };
    let line = trim::trim(
        &inst,
        &trim::Options {
            wait: a.wait,
            force: a.force.clone(),
            dry_run: a.dry_run,
        },
    )?;
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
