// SPDX-License-Identifier: Apache-2.0
//! `synbackup backup SRC DST`: a drop-in for `python -m synapse.tools.service.backup`
//! (the engine is `engine::backup`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::base::digest::Algo;
use crate::base::exit::{fail, Code};
use crate::base::units::parse_duration;
use crate::commands::print_json;
use crate::engine::backup;
use crate::engine::envcopy::CopyMode;
use crate::engine::freeze::FreezeMode;

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The service directory to back up.
    #[arg(value_name = "SRC")]
    pub(crate) src: Option<PathBuf>,
    /// Where the backup goes; must not exist, or be an empty directory.
    #[arg(value_name = "DST")]
    pub(crate) dst: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) engine: EngineOpts,
    /// Also carry this certificate directory (the service user's ~/.syn/certs or
    /// its SYN_CERT_DIR) in the backup, as DST/synbackup-certs/.
    #[arg(long, value_name = "D")]
    pub(crate) cert_dir: Option<PathBuf>,
    /// Verify the copy before it is published under DST.
    #[arg(long)]
    pub(crate) verify: bool,
    /// Copy each environment with its pages in place (LMDB's plain copy, as
    /// `mdb_copy` without -c) instead of compacting it: free pages are copied too,
    /// but consecutive backups share most of their bytes (deduplicated uploads).
    #[arg(long)]
    pub(crate) no_compact: bool,
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
    /// Environments copied at once (default: CPUs, twice that for small environments;
    /// at most the number of environments).
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) jobs: Option<u32>,
    /// Freeze the running service while the snapshots are taken.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = FreezeMode::Auto)]
    pub(crate) freeze: FreezeMode,
    /// How long the service may take to take its nexus lock (the whole freeze gets
    /// 5 s more): a duration such as 120s or 5m, as SYNBACKUP_FREEZE_TIMEOUT.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub(crate) freeze_timeout: Duration,
    /// How long to wait for a service that runs on SRC but does not answer on its
    /// socket yet (it is booting) before refusing (exit code 5), as
    /// SYNBACKUP_BOOT_WAIT; --freeze never copies it without waiting.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub(crate) boot_wait: Duration,
    /// The digest of every file in the manifest: blake3 (checked by `b3sum -c`) or
    /// sha256 (by `sha256sum -c`), see `verify --print-sums`.
    #[arg(long, value_enum, value_name = "ALGO", default_value_t = Algo::Blake3)]
    pub(crate) hash: Algo,
}

/// SRC and DST: after the options, or (Synapse's tool's synopsis) the last two
/// words of a `--skipdirs` list that swallowed them.
fn src_and_dst(a: &mut BackupArgs) -> Result<(PathBuf, PathBuf)> {
    let mut missing = usize::from(a.src.is_none()) + usize::from(a.dst.is_none());
    let mut taken = Vec::new();
    while missing > 0 && a.engine.skipdirs.len() > 1 {
        taken.push(PathBuf::from(a.engine.skipdirs.pop().unwrap_or_default()));
        missing -= 1;
    }
    // Positionals given after the list come after the ones taken from it.
    let mut paths: Vec<PathBuf> = taken.into_iter().rev().collect();
    paths.extend(a.src.take());
    paths.extend(a.dst.take());
    match <[PathBuf; 2]>::try_from(paths) {
        Ok([src, dst]) => Ok((src, dst)),
        Err(_) => Err(fail(
            Code::Usage,
            "backup needs SRC and DST: synbackup backup [--skipdirs GLOB...] SRC DST",
        )),
    }
}

/// Back up, log the summary line, print it as JSON when asked.
pub(crate) fn exec(mut a: BackupArgs, show_bar: bool) -> Result<ExitCode> {
    let (src, dst) = src_and_dst(&mut a)?;
    let req = backup::Request {
        src,
        dst,
        skipdirs: a.engine.skipdirs,
        whole: false,
        jobs: a.engine.jobs,
        freeze: a.engine.freeze,
        freeze_timeout: a.engine.freeze_timeout.as_secs(),
        boot_wait: a.engine.boot_wait,
        verify: a.verify,
        copy: if a.no_compact {
            CopyMode::Plain
        } else {
            CopyMode::Compact
        },
        min_free: 0,
        progress: crate::host::progress::standard(show_bar),
        cert_dir: a.cert_dir,
        hash: a.engine.hash,
        on_mirror: None,
    };
    let summary = backup::run(&req)?;
    log::info!("{}", summary.line());
    if a.json {
        print_json(&summary)?;
    }
    Ok(ExitCode::SUCCESS)
}
