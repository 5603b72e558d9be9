// SPDX-License-Identifier: Apache-2.0
//! `synbackup restore BACKUP [DIR] [--unit UNIT | --instance INSTANCE] [--certs
//! [--cert-dir D]]`: put a backup in place of a service directory, and its
//! certificate directory back (`service::restore`); with `--offsite SNAPSHOT` the
//! backup comes from the instance's restic repository; with `--to TIME|OFFSET` it
//! is chosen from the instance's backups and brought forward to that point with
//! the instance's nexus archive (`pitr`); `--dry-run` prints the plan
//! (`restore::plan`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::restore::{self, Request};

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup to restore: a path, or with --instance a backup's name in the
    /// instance's SYNBACKUP_BACKUP_ROOT (as `synbackup list` prints it).
    #[arg(required_unless_present_any = ["offsite", "to"])]
    pub(crate) backup: Option<PathBuf>,
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
    /// Also put back the certificate directory the backup carries (a file there
    /// that differs is kept as NAME.synbackup-old-TIMESTAMP and named).
    #[arg(long)]
    pub(crate) certs: bool,
    /// Where --certs puts it (default: the instance's or the unit's certificate
    /// directory, else where the backup found it).
    #[arg(long, value_name = "D", requires = "certs")]
    pub(crate) cert_dir: Option<PathBuf>,
    /// Restore this snapshot of the instance's offsite repository (an ID as
    /// `synbackup offsite list` prints it, or `latest`) instead of a local backup.
    #[arg(
        long,
        value_name = "SNAPSHOT",
        requires = "instance",
        conflicts_with = "backup"
    )]
    pub(crate) offsite: Option<String>,
    /// Say what the restore would check, copy, stop, keep aside and start, and
    /// whether its copy fits, changing nothing (a refusal exits as the restore
    /// would); with --offsite, which snapshot it would fetch, fetching nothing;
    /// with --to, which backup and how many archived entries it would apply.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Restore the instance to a point: a nexus offset (the cell's index then) or a
    /// time (UTC unless a zone is given). The newest backup at or before it is
    /// restored and the archived nexus entries up to it applied.
    #[arg(
        long,
        value_name = "TIME|OFFSET",
        requires = "instance",
        conflicts_with_all = ["backup", "offsite"]
    )]
    pub(crate) to: Option<String>,
}

/// Restore as asked. By path (no `--instance`), the locks of the configured
/// instances the backup or the directory belong to are held for the whole restore,
/// so that no run, window or prune removes the backup while it is copied.
pub(crate) fn exec(dirs: &Dirs, a: &RestoreArgs) -> Result<ExitCode> {
    let replay = match (&a.to, &a.instance) {
        (Some(to), Some(name)) => {
            let point = crate::pitr::replay::parse_point(to)?;
            let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
            Some(std::rc::Rc::new(ToPoint(crate::pitr::Replay::prepare(
                &inst, &point,
            )?)))
        }
        _ => None,
    };
    let (_locks, busy) = match &a.instance {
        Some(_) => (Vec::new(), Vec::new()), // the restore takes its instance's lock itself
        None => lock_owners(dirs, a)?,
    };
    let request = Request {
        backup: match &replay {
            Some(r) => r.0.plan.backup.clone(),
            None => a.backup.clone().unwrap_or_default(),
        },
        dir: a.dir.clone(),
        unit: a.unit.clone(),
        instance: a.instance.clone(),
        force: a.force,
        certs: a.certs,
        cert_dir: a.cert_dir.clone(),
        offsite: a.offsite.clone(),
        before_swap: replay
            .as_ref()
            .map(|r| std::rc::Rc::clone(r) as std::rc::Rc<dyn restore::BeforeSwap>),
    };
    if a.dry_run {
        if let Some(r) = &replay {
            println!(
                "would restore base backup {} (nexus index {}), then apply {} archived nexus entries up to index {}{}",
                crate::base::pathtext::shell_word(&r.0.plan.backup),
                r.0.plan.from,
                r.0.plan.entries(),
                r.0.plan.to,
                r.0.plan.clock_said()
            );
        }
        restore::plan::dry_run(dirs, &request, busy)?;
    } else {
        restore::restore(dirs, &request)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--to`: the restore's step before the swap brings the staged copy forward with
/// the instance's nexus archive (`pitr`).
#[derive(Debug)]
struct ToPoint(crate::pitr::Replay);

impl restore::BeforeSwap for ToPoint {
    fn run(&self, staged: &Path) -> Result<(String, serde_json::Value)> {
        let applied = self.0.apply(staged)?;
        Ok((applied.line(), serde_json::to_value(&applied)?))
    }
}

/// The locks of every configured instance whose backup root holds BACKUP or whose
/// service directory is DIR; for a dry run, those free, and a line for each held.
fn lock_owners(dirs: &Dirs, a: &RestoreArgs) -> Result<(Vec<lock::InstanceLock>, Vec<String>)> {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let backup = resolve(a.backup.as_deref().unwrap_or(Path::new("")));
    let dir = a.dir.as_deref().map(resolve);
    let mut locks = Vec::new();
    let mut busy = Vec::new();
    for name in config::instance_names(&dirs.config_dir)? {
        let Ok(inst) = config::load(&dirs.config_dir, &name, &InstanceOverrides::default()) else {
            continue; // a broken config owns nothing
        };
        let owns_backup = backup.starts_with(resolve(&inst.backup_root));
        let owns_dir = dir.as_deref() == Some(resolve(&inst.service_dir).as_path());
        if owns_backup || owns_dir {
            if a.dry_run {
                let (held, line) = lock::for_dry_run(&dirs.lock_dir, &inst, "restore")?;
                locks.extend(held);
                busy.extend(line);
            } else {
                locks.push(lock::acquire_for(&dirs.lock_dir, &inst, "restore")?);
            }
        }
    }
    Ok((locks, busy))
}
