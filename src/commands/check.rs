// SPDX-License-Identifier: Apache-2.0
//! `synbackup check [INSTANCE] [--json]`: every precondition of an instance's run,
//! one line each (`check`); exit 9 when one fails.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::base::exit::Code;
use crate::check::{self, Verdict};
use crate::commands::print_json;
use crate::instance::config;
use crate::instance::dirs::Dirs;

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Only this instance (default: every configured instance).
    pub(crate) instance: Option<String>,
    /// Print the lines as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Check each instance; the lines on stdout; exit 9 on a failure.
pub(crate) fn exec(dirs: &Dirs, a: &CheckArgs) -> Result<ExitCode> {
    let mut lines = Vec::new();
    for name in config::selected(&dirs.config_dir, a.instance.as_deref())? {
        lines.extend(check::check_instance(dirs, &name));
    }
    if a.json {
        print_json(&lines)?;
    } else {
        let mut out = std::io::stdout().lock();
        for l in &lines {
            writeln!(
                out,
                "{}: {:<4} {:<12} {}",
                l.instance,
                l.verdict.word(),
                l.check,
                l.text
            )?;
        }
    }
    if lines.iter().any(|l| l.verdict == Verdict::Fail) {
        Ok(ExitCode::from(Code::Unhealthy as u8))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
