// SPDX-License-Identifier: Apache-2.0
//! `synbackup nexus-archive INSTANCE`: what `synbackup-nexus@.service` runs (`pitr`):
//! follow the cell's nexus log into `BACKUP_ROOT/nexus-archive/` until stopped.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::pitr::{archive, follow, state};

#[derive(Debug, Args)]
pub(crate) struct NexusArchiveArgs {
    /// The instance name (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    #[command(flatten)]
    pub(crate) overrides: InstanceOverrides,
    /// Close an archive segment once it holds this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = archive::DEFAULT_SEGMENT_BYTES)]
    pub(crate) segment_bytes: u64,
}

/// Follow the instance's cell until a signal stops it.
pub(crate) fn exec(dirs: &Dirs, a: &NexusArchiveArgs) -> Result<ExitCode> {
    let inst = config::load(&dirs.config_dir, &a.instance, &a.overrides)?;
    follow::run(&follow::Options {
        service_dir: inst.service_dir.clone(),
        archive_dir: follow::archive_dir(&inst.backup_root),
        segment_bytes: a.segment_bytes,
        state_file: Some(state::path(&dirs.state_dir, &inst.name)),
    })?;
    Ok(ExitCode::SUCCESS)
}
