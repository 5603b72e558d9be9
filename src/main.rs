// SPDX-License-Identifier: Apache-2.0
//! synbackup: consistent, compacted, verified backups of Synapse services, and the
//! maintenance windows, host tuning and status around them.
//!
//! `main` parses the command line, sets up logging and signal handling, runs one
//! subcommand and turns its result into a documented exit code (`exit.rs`), printing
//! the error's whole context chain on one line.
//!
//! The source tree is layered; each folder imports only the ones below it:
//!
//! - `commands/`: one file per subcommand (its arguments, then one call below);
//! - `service/`: what stops and starts the service (maintenance window, restore);
//! - `instance/`: configured instances (config, catalog, retention, lock, status,
//!   the nightly run, the generator);
//! - `engine/`: the backup engine (freeze, snapshots, LMDB, copies, manifest, verify);
//! - `host/`: systemd, procfs, sysctl;
//! - `base/`: exit codes, logging, signals, filesystem helpers.
#![deny(missing_docs)]

/// Exit codes, logging, signals, filesystem helpers.
mod base;
/// One file per subcommand.
mod commands;
/// The backup engine.
mod engine;
/// systemd, procfs, sysctl.
mod host;
/// Configured instances and their nightly run.
mod instance;
/// The maintenance window and the restore.
mod service;

use std::process::ExitCode;

use clap::Parser;

use crate::base::exit::{self, code_of, Code};
use crate::base::{interrupt, logging};
use crate::commands::Cli;
use crate::instance::generator;

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
    // Started by a freeze as its guardian (engine/guardian.rs).
    if let Some(code) = engine::guardian::main_if_guardian() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Code::Usage as u8 } else { 0 });
        }
    };
    logging::init(logging::level_for(cli.verbose, cli.quiet));
    if let Err(e) = interrupt::install(|why| {
        engine::freeze::resume_if_frozen(why);
    }) {
        log::warn!("cannot handle signals: {e:#}");
    }
    match commands::dispatch(cli) {
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
