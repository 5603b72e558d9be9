// SPDX-License-Identifier: Apache-2.0
//! synbackup: consistent, compacted, verified backups of Synapse services, and the
//! maintenance windows, host tuning and status around them.
//!
//! `main` parses the command line, sets up logging and signal handling, runs one
//! subcommand and turns its result into a documented exit code (`exit.rs`), printing
//! the error's whole context chain on one line.
//!
//! The source tree is layered; each folder imports only the ones below it, and a
//! capability never imports another (only `nightly` composes them):
//!
//! - `commands/`: one file per subcommand (its arguments, then one call below);
//! - capabilities, one folder each: `nightly/` (the nightly run's steps),
//!   `window/` (the maintenance window), `restore/`, `drill/`, `offsite/`, `certs/`;
//! - `service/`: the service unit's lifecycle (preflight, health, the swap);
//! - `instance/`: configured instances (settings, catalog, retention, lock, status
//!   and the run recorder, the generator);
//! - `engine/`: the backup engine (freeze, snapshots, LMDB, copies, manifest, verify);
//! - `host/`: systemd, procfs, sysctl, restic;
//! - `base/`: exit codes, logging, signals, filesystem helpers.
#![deny(missing_docs)]

/// Exit codes, logging, signals, filesystem helpers.
mod base;
/// TLS material: checks, records, `certs deploy`.
mod certs;
/// `synbackup check`: an instance's preconditions, one line each.
mod check;
/// One file per subcommand.
mod commands;
/// Restore drills: boot a backup's copy, sealed, and check it.
mod drill;
/// The backup engine.
mod engine;
/// systemd, procfs, sysctl.
mod host;
/// Configured instances: settings, catalog, retention, lock, status.
mod instance;
/// The nightly run: back up, prune, certificates, offsite, drill.
mod nightly;
/// Offsite copies through restic.
mod offsite;
/// Point-in-time recovery: the nexus archive and the restore to a point.
mod pitr;
/// Restoring a backup into a service directory.
mod restore;
/// The service unit's lifecycle: preflight, health, the swap.
mod service;
/// The maintenance window: stop, compact, swap, start, roll back.
mod window;

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
