// SPDX-License-Identifier: Apache-2.0
//! `synbackup backup SRC DST`: a drop-in for `python -m synapse.tools.service.backup`
//! (the engine is `engine::backup`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::commands::print_json;
use crate::engine::backup;
use crate::engine::freeze::FreezeMode;

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The service directory to back up.
    pub(crate) src: PathBuf,
    /// Where the backup goes; must not exist, or be an empty directory.
    pub(crate) dst: PathBuf,
    #[command(flatten)]
    pub(crate) engine: EngineOpts,
    /// Verify the copy before it is published under DST.
    #[arg(long)]
    pub(crate) verify: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Options of the backup engine shared by `backup`, `run` and `cold`.
#[derive(Debug, Args, Clone)]
pub(crate) struct EngineOpts {
    /// Glob patterns of relative directory names to leave out (as Synapse's tool).
    #[arg(long, num_args = 1.., value_name = "GLOB")]
    pub(crate) skipdirs: Vec<String>,
    /// Environments copied at once (default: CPUs, at most the number of environments).
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) jobs: Option<u32>,
    /// Freeze the running service while the snapshots are taken.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = FreezeMode::Auto)]
    pub(crate) freeze: FreezeMode,
    /// Seconds the service may take to freeze (its nexus lock and flush).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub(crate) freeze_timeout: u64,
}

/// Back up, log the summary line, print it as JSON when asked.
pub(crate) fn exec(a: BackupArgs, show_bar: bool) -> Result<ExitCode> {
    let req = backup::Request {
        src: a.src,
        dst: a.dst,
        skipdirs: a.engine.skipdirs,
        whole: false,
        jobs: a.engine.jobs,
        freeze: a.engine.freeze,
        freeze_timeout: a.engine.freeze_timeout,
        verify: a.verify,
        min_free: 0,
        show_bar,
    };
    let summary = backup::run(&req)?;
    log::info!("{}", summary.line());
    if a.json {
        print_json(&summary)?;
    }
    Ok(ExitCode::SUCCESS)
}
