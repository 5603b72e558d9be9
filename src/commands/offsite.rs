// SPDX-License-Identifier: Apache-2.0
//! `synbackup offsite init|list|check|unlock INSTANCE`: the instance's restic
//! repository by hand (`instance::offsite`): create it (never done implicitly),
//! list its snapshots with size and age, check it with the configured share of
//! its data, remove stale locks, fetch the nexus archive (`offsite::nexus`).
//! Failures exit 12.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::base::fsutil::human;
use crate::base::units::format_duration;
use crate::commands::print_json;
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::repository::Opened;

#[derive(Debug, Args)]
pub(crate) struct OffsiteArgs {
    #[command(subcommand)]
    pub(crate) action: Action,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// Create the instance's restic repository (`restic init`).
    Init(One),
    /// The instance's snapshots with size and age.
    List(ListArgs),
    /// `restic check`, reading SYNBACKUP_OFFSITE_CHECK of the data.
    Check(One),
    /// Remove stale locks (of a restic that no longer runs) from the repository.
    Unlock(One),
    /// Restore the instance's offsite nexus archive into TARGET/nexus-archive/.
    FetchArchive(FetchArchiveArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FetchArchiveArgs {
    /// The instance (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    /// The directory to write `nexus-archive/` into (created; must not hold one).
    pub(crate) target: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct One {
    /// The instance (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The instance (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Run the offsite action.
pub(crate) fn exec(dirs: &Dirs, a: &OffsiteArgs) -> Result<ExitCode> {
    let name = match &a.action {
        Action::Init(o) | Action::Check(o) | Action::Unlock(o) => &o.instance,
        Action::List(l) => &l.instance,
        Action::FetchArchive(f) => &f.instance,
    };
    config::check_name(name)?;
    let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
    let repo = Opened::open(&inst)?;
    match &a.action {
        Action::Init(_) => println!("{}", repo.init()?),
        Action::Check(_) => println!("{}", repo.check(None)?),
        Action::Unlock(_) => println!("{}", repo.unlock()?),
        Action::FetchArchive(f) => fetch_archive(&repo, f)?,
        Action::List(l) => {
            let rows = repo.list(true)?;
            if l.json {
                print_json(&rows)?;
            } else {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<10} {:<40} {:<20} {:>8} {:>10}  HOST",
                    "SNAPSHOT", "BACKUP", "TIME (UTC)", "AGE", "SIZE"
                )?;
                for r in &rows {
                    let age = std::time::Duration::from_secs(r.age_seconds.max(0) as u64);
                    writeln!(
                        out,
                        "{:<10} {:<40} {:<20} {:>8} {:>10}  {}",
                        r.short_id,
                        r.backup,
                        &r.time[..19.min(r.time.len())].replace('T', " "),
                        format_duration(age),
                        r.bytes.map(human).unwrap_or_else(|| "?".into()),
                        r.hostname
                    )?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `offsite fetch-archive INSTANCE TARGET`: every archive snapshot restored into
/// TARGET, then the chain of what came back said.
fn fetch_archive(repo: &Opened, f: &FetchArchiveArgs) -> Result<()> {
    let dest = f.target.join("nexus-archive");
    if dest.exists() {
        return Err(crate::base::exit::fail(
            crate::base::exit::Code::BadPath,
            format!(
                "{} exists: fetch into another TARGET (nothing is merged into an archive)",
                dest.display()
            ),
        ));
    }
    let n = crate::offsite::nexus::fetch(&repo.repo, &repo.inst.name, &f.target).map_err(|e| {
        crate::instance::repository::explain(e, &repo.inst.name, &repo.o.repository)
    })?;
    println!(
        "fetched {n} nexus archive snapshots of {} into {}: to restore to a point with it, move the instance's own {} aside and this one in its place",
        repo.inst.name,
        dest.display(),
        crate::pitr::archive::dir_of(&repo.inst.backup_root).display()
    );
    Ok(())
}
