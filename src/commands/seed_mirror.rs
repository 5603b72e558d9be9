// SPDX-License-Identifier: Apache-2.0
//! `synbackup seed-mirror --instance LEADER NEWDIR [--backup NAME] [--upstream URL]
//! [--owner USER[:GROUP]] [--unit UNIT [--wait DURATION]] [--dry-run]`: a new
//! mirror of the instance's leader made from its newest good backup
//! (`restore::seed`), instead of Synapse's clone of the whole leader.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::instance::dirs::Dirs;
use crate::restore::seed::{self, SeedRequest};

#[derive(Debug, Args)]
pub(crate) struct SeedMirrorArgs {
    /// The leader's instance: its backups, and its leader (SYNBACKUP_LEADER, else
    /// SYNBACKUP_SERVICE_DIR), which must be running.
    #[arg(long)]
    pub(crate) instance: String,
    /// The new mirror's service directory: must not exist, or be empty.
    pub(crate) newdir: PathBuf,
    /// The backup to seed from: its name as `synbackup list` prints it, or a path
    /// (default: the instance's newest complete backup not marked damaged).
    #[arg(long, value_name = "NAME")]
    pub(crate) backup: Option<PathBuf>,
    /// The telepath URL the mirror follows (default: cell://LEADER_DIR, the
    /// leader's unix socket, for a mirror on the same host run by the same user).
    #[arg(long, value_name = "URL")]
    pub(crate) upstream: Option<String>,
    /// Give the mirror's files to USER[:GROUP] (default: the backup's owners,
    /// which are the leader's).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub(crate) owner: Option<String>,
    /// Start this unit (it must run the new directory) and wait until the mirror
    /// has applied every change the leader had when the seed began.
    #[arg(long)]
    pub(crate) unit: Option<String>,
    /// How long --unit waits for the mirror to start and catch up.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_wait, requires = "unit")]
    pub(crate) wait: Duration,
    /// Say which backup, index and leader it would use and what it would write,
    /// changing nothing (a refusal exits as the seed would).
    #[arg(long)]
    pub(crate) dry_run: bool,
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    crate::base::units::parse_duration(text)
}

pub(crate) fn exec(dirs: &Dirs, a: &SeedMirrorArgs) -> Result<ExitCode> {
    seed::seed(
        dirs,
        &SeedRequest {
            instance: a.instance.clone(),
            dir: a.newdir.clone(),
            backup: a.backup.clone(),
            upstream: a.upstream.clone(),
            owner: a.owner.clone(),
            unit: a.unit.clone(),
            wait: a.wait,
            dry_run: a.dry_run,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
