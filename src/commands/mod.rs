// SPDX-License-Identifier: Apache-2.0
//! The commands layer: one file per subcommand, each with its clap arguments and an
//! `exec` that calls the layer below and returns the exit code. Nothing below this
//! folder parses a command line.
//!
//! Instance settings can come from the environment (clap's `env`) so that the units'
//! `EnvironmentFile=/etc/synbackup/%i.conf` and the command line read the same keys;
//! an explicit flag always wins. Every subcommand and long option here must also be
//! in `man/synbackup.8.scd` (a test checks it).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::instance::dirs::Dirs;

/// `synbackup backup SRC DST`.
pub(crate) mod backup;
/// `synbackup certs INSTANCE`.
pub(crate) mod certs;
/// `synbackup certs deploy INSTANCE --cert FULLCHAIN --key KEY`.
pub(crate) mod certs_deploy;
/// `synbackup check [INSTANCE]`.
pub(crate) mod check;
/// `synbackup cold INSTANCE`.
pub(crate) mod cold;
/// `synbackup completions SHELL`.
pub(crate) mod completions;
/// `synbackup drill INSTANCE [BACKUP]`.
pub(crate) mod drill;
/// `synbackup list [INSTANCE]`.
pub(crate) mod list;
/// `synbackup nexus-archive INSTANCE`.
pub(crate) mod nexus_archive;
/// `synbackup nexus-trim INSTANCE`.
pub(crate) mod nexus_trim;
/// `synbackup offsite init|list|check|unlock INSTANCE`.
pub(crate) mod offsite;
/// `synbackup prune INSTANCE`.
pub(crate) mod prune;
/// `synbackup restore BACKUP [DIR]`.
pub(crate) mod restore;
/// `synbackup retire INSTANCE`.
pub(crate) mod retire;
/// `synbackup run INSTANCE`.
pub(crate) mod run;
/// `synbackup seed-mirror --instance INSTANCE NEWDIR`.
pub(crate) mod seed_mirror;
/// `synbackup status [INSTANCE]`.
pub(crate) mod status;
/// `synbackup sysctl`.
pub(crate) mod sysctl;
/// `synbackup verify BACKUP`.
pub(crate) mod verify;

/// The `--help` section of the options every subcommand takes.
const GLOBAL: &str = "Global options";

/// Consistent, compacted, verified backups of Synapse services.
#[derive(Debug, Parser)]
#[command(name = "synbackup", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// More log output (repeat for debug and trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = GLOBAL)]
    pub(crate) verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose", help_heading = GLOBAL)]
    pub(crate) quiet: bool,
    #[command(flatten, next_help_heading = GLOBAL)]
    pub(crate) dirs: Dirs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Back up a service directory (a drop-in for `python -m synapse.tools.service.backup`).
    Backup(backup::BackupArgs),
    /// Check a backup against its manifest and read every database to the end.
    Verify(verify::VerifyArgs),
    /// Restore a backup into a service directory (the old one is moved aside).
    Restore(restore::RestoreArgs),
    /// Back up an instance into its backup root, verify, prune, record status.
    Run(run::RunArgs),
    /// Maintenance window: stop the service, compact, swap in, start, roll back on failure.
    Cold(cold::ColdArgs),
    /// Boot a copy of a backup, isolated from the network, and check that it answers.
    Drill(drill::DrillArgs),
    /// List an instance's backups with age, size and state.
    List(list::ListArgs),
    /// Follow the cell's nexus log into the instance's archive (point-in-time recovery).
    NexusArchive(nexus_archive::NexusArchiveArgs),
    /// Trim the cell's nexus log, never past what the archive and the mirrors have.
    NexusTrim(nexus_trim::NexusTrimArgs),
    /// The instance's offsite restic repository: init, list, check, unlock.
    Offsite(offsite::OffsiteArgs),
    /// Remove backups that retention no longer keeps, and stale temporaries.
    Prune(prune::PruneArgs),
    /// Make a new mirror of the instance's leader from its newest good backup.
    SeedMirror(seed_mirror::SeedMirrorArgs),
    /// Last run results; exits non-zero when failed or stale (a monitoring check).
    Status(status::StatusArgs),
    /// Print, write, apply or check the kernel settings computed from this host's RAM.
    Sysctl(sysctl::SysctlArgs),
    /// Check every certificate and key the service uses (dates, keys, chains, names, modes).
    Certs(certs::CertsArgs),
    /// Check that an instance is ready for its nightly run: config, unit, socket, backup root, offsite, certificates.
    Check(check::CheckArgs),
    /// Forget a removed instance: delete its status and metrics files (never backups).
    Retire(retire::RetireArgs),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
}

/// Run the subcommand the command line names.
pub(crate) fn dispatch(cli: Cli) -> Result<ExitCode> {
    let show_bar = !cli.quiet;
    let dirs = &cli.dirs;
    crate::engine::freeze_record::set_dir(&dirs.lock_dir);
    match &cli.command {
        Command::Run(_) => needs_root("run")?,
        Command::Check(_) => needs_root("check")?,
        Command::Cold(_) => needs_root("cold")?,
        Command::Restore(_) => needs_root("restore")?,
        Command::Drill(_) => needs_root("drill")?,
        Command::Offsite(_) => needs_root("offsite")?,
        Command::NexusArchive(_) => needs_root("nexus-archive")?,
        Command::NexusTrim(_) => needs_root("nexus-trim")?,
        Command::Retire(_) => needs_root("retire")?,
        Command::SeedMirror(_) => needs_root("seed-mirror")?,
        Command::Prune(a) if !a.dry_run => needs_root("prune")?,
        _ => {}
    }
    match cli.command {
        Command::Backup(a) => backup::exec(a, show_bar),
        Command::Verify(a) => verify::exec(dirs, &a),
        Command::Restore(a) => restore::exec(dirs, &a),
        Command::Run(a) => run::exec(dirs, &a, show_bar),
        Command::Cold(a) => cold::exec(dirs, &a, show_bar),
        Command::Drill(a) => drill::exec(dirs, &a),
        Command::List(a) => list::exec(dirs, &a),
        Command::Offsite(a) => offsite::exec(dirs, &a),
        Command::NexusArchive(a) => nexus_archive::exec(dirs, &a),
        Command::NexusTrim(a) => nexus_trim::exec(dirs, &a),
        Command::Prune(a) => prune::exec(dirs, &a),
        Command::SeedMirror(a) => seed_mirror::exec(dirs, &a),
        Command::Status(a) => status::exec(dirs, &a),
        Command::Sysctl(a) => sysctl::exec(&a),
        Command::Certs(a) => certs::exec(dirs, &a),
        Command::Check(a) => check::exec(dirs, &a),
        Command::Retire(a) => retire::exec(dirs, &a),
        Command::Completions(a) => completions::exec(&a),
    }
}

/// Refuse, first and once, a command that only root can carry out: it reads and
/// writes the service's files whoever owns them, the root-only state, locks and
/// backups, and stops and starts units.
fn needs_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(crate::base::exit::fail(
        crate::base::exit::Code::Usage,
        format!("synbackup {what} needs root (it works on the service's files whoever owns them, and on root-only state, locks and backups): run it with sudo, or through its systemd unit"),
    ))
}

/// Print `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
