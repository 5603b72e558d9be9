// SPDX-License-Identifier: Apache-2.0
//! `synbackup completions SHELL`: the completion script clap generates.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, CommandFactory};

use crate::commands::Cli;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to print completions for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// Print the script on stdout.
pub(crate) fn exec(a: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "synbackup", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
