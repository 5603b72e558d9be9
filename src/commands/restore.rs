// SPDX-License-Identifier: Apache-2.0
//! `synbackup restore BACKUP [DIR] [--unit UNIT | --instance INSTANCE]`: put a
//! backup in place of a service directory (`service::restore`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::instance::dirs::Dirs;
use crate::service::restore::{self, Request};

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup to restore: a path, or with --instance a backup's name in the
    /// instance's SYNBACKUP_BACKUP_ROOT (as `synbackup list` prints it).
    pub(crate) backup: PathBuf,
    /// The service directory to restore into (moved aside first if it exists).
    /// Default with --instance: the instance's SYNBACKUP_SERVICE_DIR.
    pub(crate) dir: Option<PathBuf>,
    /// Stop this unit before restoring and start it afterwards.
    #[arg(long, conflicts_with = "instance")]
    pub(crate) unit: Option<String>,
    /// Take the service directory and unit from this instance's configuration.
    #[arg(long)]
    pub(crate) instance: Option<String>,
    /// Restore even when the backup is of another cell (its cell.guid differs from
    /// the directory's): that replaces the service with a different one.
    #[arg(long)]
    pub(crate) force: bool,
}

/// Restore as asked.
pub(crate) fn exec(dirs: &Dirs, a: &RestoreArgs) -> Result<ExitCode> {
    restore::restore(
        dirs,
        &Request {
            backup: a.backup.clone(),
            dir: a.dir.clone(),
            unit: a.unit.clone(),
            instance: a.instance.clone(),
            force: a.force,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
