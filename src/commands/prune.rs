// SPDX-License-Identifier: Apache-2.0
//! `synbackup prune INSTANCE [--dry-run]`: retention by hand (`instance::prune`),
//! never while a run, window or restore of the instance holds its lock.

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

/// Prune under the instance lock: while a run, window or restore holds it, a
/// prune refuses (exit 7) and removes nothing; a dry run says what it would do.
pub(crate) fn exec(dirs: &Dirs, args: &PruneArgs) -> Result<ExitCode> {
    let inst = config::load(
        &dirs.config_dir,
        &args.instance,
        &InstanceOverrides::default(),
    )?;
    let held = match lock::try_acquire(&dirs.lock_dir, &inst.name, "prune") {
        Ok(l) => Some(l),
        Err(e) if args.dry_run && code_of(&e) == Code::Locked => {
            log::info!("{e:#}; a prune now would remove nothing");
            None
        }
        Err(e) => return Err(e),
    };
    let own = held.is_some();
    let kept_names = prune::prune_kept(&inst, &dirs.state_dir, None, args.dry_run, own)?;
    let kept = kept_names.len();
    if own || args.dry_run {
        crate::pitr::retain::prune_segments(
            &inst.backup_root,
            &inst.name,
            &kept_names,
            args.dry_run,
            &|l| prune::tell(args.dry_run, l),
        )?;
    }
    log::info!(
        "{}: {kept} {} kept",
        inst.name,
        if kept == 1 { "backup" } else { "backups" }
    );
    Ok(ExitCode::SUCCESS)
}
