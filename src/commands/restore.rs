// SPDX-License-Identifier: Apache-2.0
//! `synbackup restore BACKUP [DIR] [--unit UNIT | --instance INSTANCE]`: put a
//! backup in place of a service directory (`service::restore`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::service::restore::{self, Request};

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup to restore.
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
}

/// Restore as asked. By path (no `--instance`), the locks of the configured
/// instances the backup or the directory belong to are held for the whole restore,
/// so that no run, window or prune removes the backup while it is copied.
pub(crate) fn exec(dirs: &Dirs, a: &RestoreArgs) -> Result<ExitCode> {
    let _locks = match &a.instance {
        Some(_) => Vec::new(), // the restore takes its instance's lock itself
        None => lock_owners(dirs, a)?,
    };
    restore::restore(
        dirs,
        &Request {
            backup: a.backup.clone(),
            dir: a.dir.clone(),
            unit: a.unit.clone(),
            instance: a.instance.clone(),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The locks of every configured instance whose backup root holds BACKUP or whose
/// service directory is DIR.
fn lock_owners(dirs: &Dirs, a: &RestoreArgs) -> Result<Vec<lock::InstanceLock>> {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let backup = resolve(&a.backup);
    let dir = a.dir.as_deref().map(resolve);
    let mut locks = Vec::new();
    for name in config::instance_names(&dirs.config_dir)? {
        let Ok(inst) = config::load(&dirs.config_dir, &name, &InstanceOverrides::default()) else {
            continue; // a broken config owns nothing
        };
        let owns_backup = backup.starts_with(resolve(&inst.backup_root));
        let owns_dir = dir.as_deref() == Some(resolve(&inst.service_dir).as_path());
        if owns_backup || owns_dir {
            locks.push(lock::acquire(&dirs.lock_dir, &name, "restore")?);
        }
    }
    Ok(locks)
}
