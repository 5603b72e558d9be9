// SPDX-License-Identifier: Apache-2.0
//! `synbackup verify BACKUP`: check a backup against its manifest (`engine::verify`)
//! and say so in one line.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{self, Code};
use crate::base::fsutil;
use crate::commands::print_json;
use crate::engine::verify;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The backup directory to check.
    pub(crate) backup: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Verify; every problem on its own line, exit code `Verify` when there is one.
pub(crate) fn exec(a: &VerifyArgs) -> Result<ExitCode> {
    let report = verify::verify(&a.backup)?;
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
