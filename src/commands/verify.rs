// SPDX-License-Identifier: Apache-2.0
//! `synbackup verify BACKUP`: check a backup against its manifest (`engine::verify`)
//! and say so in one line; `--print-sums`: the manifest's digests as a checksum
//! list for `b3sum -c` (or `sha256sum -c`), a check with a standard tool;
//! `verify --instance NAME`: the instance's point-in-time recovery chain
//! (`pitr::chain`).

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{self, Code};
use crate::base::fsutil;
use crate::commands::print_json;
use crate::engine::damaged;
use crate::engine::manifest::Manifest;
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The backup directory to check (a path: not completed as a backup name of
    /// an instance, which `--instance` would otherwise make it).
    #[arg(value_name = "BACKUP", required_unless_present = "instance")]
    pub(crate) backup_dir: Option<PathBuf>,
    /// Check the instance's point-in-time recovery chain instead: its nexus
    /// archive's segments (contiguous, digests) and the kept backups it covers.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["backup_dir", "print_sums"])]
    pub(crate) instance: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Check nothing but the manifest's own digest; print its file digests as a
    /// checksum list: `cd BACKUP && b3sum -c LIST` (`sha256sum -c` for a manifest
    /// of `--hash sha256` or before format 3) checks the files with a standard tool.
    #[arg(long, conflicts_with = "json")]
    pub(crate) print_sums: bool,
}

/// Verify; every problem on its own line, exit code `Verify` when there is one.
pub(crate) fn exec(dirs: &Dirs, a: &VerifyArgs) -> Result<ExitCode> {
    let backup = match (&a.instance, &a.backup_dir) {
        (Some(name), _) => return verify_chain(dirs, name, a.json),
        (None, Some(b)) => b,
        (None, None) => {
            return Err(exit::fail(
                Code::Usage,
                "verify needs a BACKUP or --instance NAME",
            ))
        }
    };
    if a.print_sums {
        return print_sums(backup);
    }
    let report = damaged::verify_recorded(backup)?;
    if a.json {
        print_json(&report)?;
    }
    // The verdict is the command's output (stdout); errors also go to stderr.
    let mut out = std::io::stdout().lock();
    if report.ok() {
        if !a.json {
            writeln!(
                out,
                "{} is intact: {} files ({}), {} environments, {} databases, {} entries",
                report.backup,
                report.files,
                fsutil::human(report.bytes),
                report.environments,
                report.databases,
                report.entries
            )?;
        }
        Ok(ExitCode::SUCCESS)
    } else {
        if !a.json {
            for p in &report.problems {
                writeln!(out, "{p}")?;
            }
        }
        let n = report.problems.len();
        Err(exit::fail(
            Code::Verify,
            format!(
                "{} failed verification: {n} {}",
                report.backup,
                if n == 1 { "problem" } else { "problems" }
            ),
        ))
    }
}

/// The instance's point-in-time recovery chain (`pitr::chain`): a line per
/// problem (exit `Verify`), else the archive's summary.
fn verify_chain(dirs: &Dirs, name: &str, json: bool) -> Result<ExitCode> {
    let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
    let chain = crate::pitr::chain::inspect(
        &inst.backup_root,
        &inst.name,
        crate::pitr::chain::Depth::Full,
    )?;
    if !chain.present {
        return Err(exit::fail(
            Code::BadPath,
            format!(
                "{} holds no nexus archive: run synbackup-nexus@{name}.service (synbackup nexus-archive) to make one",
                chain.archive
            ),
        ));
    }
    let problems = chain.problems();
    if json {
        print_json(&serde_json::json!({"chain": &chain, "problems": &problems}))?;
    }
    let mut out = std::io::stdout().lock();
    if problems.is_empty() {
        if !json {
            writeln!(out, "{}", chain.summary())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        for p in &problems {
            writeln!(out, "{p}")?;
        }
    }
    let n = problems.len();
    Err(exit::fail(
        Code::Verify,
        format!(
            "the point-in-time recovery chain of {name} failed verification: {n} {}",
            if n == 1 { "problem" } else { "problems" }
        ),
    ))
}

/// The checksum list of the backup's files, from its (intact) manifest.
fn print_sums(backup: &std::path::Path) -> Result<ExitCode> {
    let m = Manifest::load(backup)?;
    std::io::stdout().lock().write_all(&m.sums())?;
    log::info!(
        "{} files, {}: check them with `cd {} && {} -c LIST`",
        m.files.len(),
        m.algo().label(),
        backup.display(),
        m.algo().tool()
    );
    Ok(ExitCode::SUCCESS)
}
