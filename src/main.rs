// SPDX-License-Identifier: Apache-2.0
//! synbackup: consistent, compacted, verified backups of Synapse services, and the
//! maintenance windows, host tuning and status around them.
//!
//! `main` parses the command line, sets up logging and signal handling, runs one
//! subcommand and turns its result into a documented exit code (`exit.rs`), printing
//! the error's whole context chain on one line.
#![deny(missing_docs)]

/// Backups of a service directory: the engine everything else runs.
mod backup;
/// An instance's backups in its backup root.
mod catalog;
/// The command line (clap types only).
mod cli;
/// The maintenance window: stop, compact, swap, start, roll back.
mod cold;
/// Instance configuration files.
mod config;
/// Compacting LMDB copies through pipes, with a point-in-time start.
mod envcopy;
/// Exit codes and typed failures.
mod exit;
/// Named fault-injection points for tests.
mod fault;
/// Sparse copies, fsync, atomic writes, free space.
mod fsutil;
/// The systemd generator that writes per-instance ReadWritePaths= drop-ins.
mod generator;
/// Processes holding a directory's LMDB files (procfs).
mod holders;
/// Readers of /proc/meminfo and /proc/sys under a root directory.
mod host;
/// Instances: run, list, prune, status.
mod instance;
/// SIGINT/SIGTERM, and resuming a frozen service whatever happens.
mod interrupt;
/// LMDB through lmdb-rkv-sys.
mod lmdb;
/// The per-instance lock.
mod lock;
/// Journal or stderr logging.
mod logging;
/// The backup manifest format.
mod manifest;
/// Progress bar and systemd status lines.
mod progress;
/// Restoring a backup into a service directory.
mod restore;
/// Which backups retention keeps.
mod retention;
/// The source walk and its skip rules.
mod scan;
/// Status files and metrics for monitoring.
mod status;
/// The sysctl drop-in computed from the host's RAM: print, write, apply, check.
mod sysctl;
/// sd_notify and systemctl.
mod systemd;
/// The telepath client for a service's unix socket.
mod telepath;
/// Sizes and durations in config files and options.
mod units;
/// Checking a backup against its manifest.
mod verify;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::exit::{code_of, Code};

fn main() -> ExitCode {
    // Linked as /usr/lib/systemd/system-generators/synbackup-generator.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "synbackup-generator")
    {
        let args: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
        let dir: std::path::PathBuf = std::env::var_os("SYNBACKUP_CONFIG_DIR")
            .map(Into::into)
            .unwrap_or_else(|| "/etc/synbackup".into());
        return match generator::generate(&dir, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("synbackup-generator: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Code::Usage as u8 } else { 0 });
        }
    };
    logging::init(logging::level_for(cli.verbose, cli.quiet));
    if let Err(e) = interrupt::install() {
        log::warn!("cannot handle signals: {e:#}");
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let code = code_of(&e);
            if !exit::is_reported(&e) {
                log::error!("{e:#}");
            }
            ExitCode::from(code.as_i32() as u8)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Print `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Backup(a) => {
            let req = backup::Request {
                src: a.src,
                dst: a.dst,
                skipdirs: a.engine.skipdirs,
                jobs: a.engine.jobs,
                freeze: a.engine.freeze,
                freeze_timeout: a.engine.freeze_timeout,
                verify: a.verify,
                min_free: 0,
                show_bar: !quiet,
            };
            let summary = backup::run(&req)?;
            log::info!("{}", summary.line());
            if a.json {
                print_json(&summary)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(a) => {
            let report = verify::verify(&a.backup)?;
            if a.json {
                print_json(&report)?;
            }
            if report.ok() {
                log::info!(
                    "{} is intact: {} files ({}), {} environments, {} databases, {} entries",
                    report.backup,
                    report.files,
                    fsutil::human(report.bytes),
                    report.environments,
                    report.databases,
                    report.entries
                );
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &report.problems {
                    log::error!("{p}");
                }
                Err(exit::fail(
                    Code::Verify,
                    format!(
                        "{} failed verification: {} problems",
                        report.backup,
                        report.problems.len()
                    ),
                ))
            }
        }
        Command::Sysctl(a) => sysctl::cmd(&a),
        Command::Completions(a) => {
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "synbackup", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => instance::run(&cli.dirs, &a, !quiet),
        Command::Cold(a) => cold::cold_cmd(&cli.dirs, &a, !quiet),
        Command::List(a) => instance::list_cmd(&cli.dirs, &a),
        Command::Prune(a) => instance::prune_cmd(&cli.dirs, &a),
        Command::Status(a) => instance::status_cmd(&cli.dirs, &a),
        Command::Restore(a) => restore::restore_cmd(&cli.dirs, &a),
    }
}
