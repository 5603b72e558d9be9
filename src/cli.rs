// SPDX-License-Identifier: Apache-2.0
//! The command line: clap types only, no behaviour.
//!
//! Instance settings can come from the environment (clap's `env`) so that the units'
//! `EnvironmentFile=/etc/synbackup/%i.conf` and the command line read the same keys;
//! an explicit flag always wins. Every subcommand and long option here must also be
//! in `man/synbackup.8.scd` (a test checks it).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Consistent, compacted, verified backups of Synapse services.
#[derive(Debug, Parser)]
#[command(name = "synbackup", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// More log output (repeat for debug and trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) dirs: Dirs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where instance configuration, state, locks and metrics live.
#[derive(Debug, Args, Clone)]
pub(crate) struct Dirs {
    /// Directory of instance configuration files (INSTANCE.conf).
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_CONFIG_DIR",
        default_value = "/etc/synbackup"
    )]
    pub(crate) config_dir: PathBuf,
    /// Directory for per-instance status files.
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_STATE_DIR",
        default_value = "/var/lib/synbackup"
    )]
    pub(crate) state_dir: PathBuf,
    /// Directory for per-instance lock files.
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_LOCK_DIR",
        default_value = "/run/synbackup"
    )]
    pub(crate) lock_dir: PathBuf,
    /// Directory for Prometheus textfile-collector metrics.
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_METRICS_DIR",
        default_value = "/var/lib/prometheus/node-exporter"
    )]
    pub(crate) metrics_dir: PathBuf,
}

/// When to freeze the running service while the snapshots are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FreezeMode {
    /// Freeze when the service answers on its socket; a stopped service needs none.
    Auto,
    /// Fail unless the service can be frozen.
    Always,
    /// Never freeze: each environment is consistent on its own (like Synapse's tool).
    Never,
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

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Back up a service directory (a drop-in for `python -m synapse.tools.service.backup`).
    Backup(BackupArgs),
    /// Check a backup against its manifest and read every database to the end.
    Verify(VerifyArgs),
    /// Restore a backup into a service directory (the old one is moved aside).
    Restore(RestoreArgs),
    /// Back up an instance into its backup root, verify, prune, record status.
    Run(RunArgs),
    /// Maintenance window: stop the service, compact, swap in, start, roll back on failure.
    Cold(ColdArgs),
    /// List an instance's backups with age, size and state.
    List(ListArgs),
    /// Remove backups that retention no longer keeps, and stale temporaries.
    Prune(PruneArgs),
    /// Last run results; exits non-zero when failed or stale (a monitoring check).
    Status(StatusArgs),
    /// Print, write, apply or check the kernel settings computed from this host's RAM.
    Sysctl(SysctlArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

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

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The backup directory to check.
    pub(crate) backup: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

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

/// Instance settings (also read from INSTANCE.conf and the environment).
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct InstanceOverrides {
    /// The service directory (SYNBACKUP_SERVICE_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) service_dir: Option<PathBuf>,
    /// The unit that runs the service (SYNBACKUP_SERVICE_UNIT).
    #[arg(long, value_name = "UNIT")]
    pub(crate) service_unit: Option<String>,
    /// Where the instance's backups go (SYNBACKUP_BACKUP_ROOT).
    #[arg(long, value_name = "DIR")]
    pub(crate) backup_root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The instance name (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    #[command(flatten)]
    pub(crate) overrides: InstanceOverrides,
}

#[derive(Debug, Args)]
pub(crate) struct ColdArgs {
    /// The instance name (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    #[command(flatten)]
    pub(crate) overrides: InstanceOverrides,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this instance (default: every configured instance).
    pub(crate) instance: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// The instance whose backups are pruned.
    pub(crate) instance: String,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this instance (default: every configured instance).
    pub(crate) instance: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SysctlArgs {
    /// Compute for this much RAM instead of /proc/meminfo: bytes, or a number with a
    /// binary unit (K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB, any case; all powers of
    /// 1024, as /proc/meminfo's kB), e.g. 128GiB, 512MiB, 1.5T.
    #[arg(long, value_name = "SIZE")]
    pub(crate) mem_total: Option<String>,
    /// Write the drop-in atomically instead of printing it, creating the directory
    /// (default /run/sysctl.d/61-synbackup-memory.conf).
    #[arg(long, value_name = "PATH", num_args = 0..=1,
          default_missing_value = "/run/sysctl.d/61-synbackup-memory.conf")]
    pub(crate) write: Option<PathBuf>,
    /// Set the values now through /proc/sys, reporting old -> new.
    #[arg(long)]
    pub(crate) apply: bool,
    /// Compare the running values with the computed ones; list each difference and
    /// exit 9 when there is one.
    #[arg(long)]
    pub(crate) check: bool,
    /// Read /proc from below this directory instead of / (for tests).
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    pub(crate) root: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to print completions for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}
