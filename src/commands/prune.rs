// SPDX-License-Identifier: Apache-2.0
//! `synbackup prune INSTANCE [--dry-run]`: retention by hand (`instance::prune`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{code_of, Code};
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::{lock, prune};

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// The instance whose backups are pruned.
    pub(crate) instance: String,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Prune; temporaries are removed only when no run holds the lock.
pub(crate) fn exec(dirs: &Dirs, args: &PruneArgs) -> Result<ExitCode> {
    let inst = config::load(
        &dirs.config_dir,
        &args.instance,
        &InstanceOverrides::default(),
    )?;
    let lock = lock::acquire(&dirs.lock_dir, &inst.name, "prune");
    let own = lock.is_ok();
    if let Err(e) = &lock {
        if code_of(e) != Code::Locked {
            return Err(lock
                .err()
                .map(|e| e.context("prune"))
                .unwrap_or_else(|| anyhow::anyhow!("lock")));
        }
    }
    let kept = prune::prune(&inst, None, args.dry_run, own)?;
    log::info!("{}: {kept} backups kept", inst.name);
    Ok(ExitCode::SUCCESS)
}
