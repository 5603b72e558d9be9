// SPDX-License-Identifier: Apache-2.0
//! `synbackup verify BACKUP`: check a backup against its manifest (`engine::verify`)
//! and say so in one line.

use std::path::PathBuf;
use std::process::ExitCode;

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
