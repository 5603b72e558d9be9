// SPDX-License-Identifier: Apache-2.0
//! `synbackup verify BACKUP`: check a backup against its manifest (`engine::verify`)
//! and say so in one line; `--print-sums`: the manifest's digests as a checksum
//! list for `b3sum -c` (or `sha256sum -c`), a check with a standard tool.

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

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The backup directory to check.
    pub(crate) backup: PathBuf,
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
pub(crate) fn exec(a: &VerifyArgs) -> Result<ExitCode> {
    if a.print_sums {
        return print_sums(a);
    }
    let report = damaged::verify_recorded(&a.backup)?;
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

/// The checksum list of the backup's files, from its (intact) manifest.
fn print_sums(a: &VerifyArgs) -> Result<ExitCode> {
    let m = Manifest::load(&a.backup)?;
    std::io::stdout().lock().write_all(&m.sums())?;
    log::info!(
        "{} files, {}: check them with `cd {} && {} -c LIST`",
        m.files.len(),
        m.algo().label(),
        a.backup.display(),
        m.algo().tool()
    );
    Ok(ExitCode::SUCCESS)
}
