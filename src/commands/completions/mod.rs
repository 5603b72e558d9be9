// SPDX-License-Identifier: Apache-2.0
//! `synbackup completions SHELL`: the completion script clap generates, with what
//! clap cannot know added for bash, zsh and fish: instance names
//! (`CONFIG_DIR/*.conf`) wherever a subcommand takes one (`run`, `drill`,
//! `restore --instance`, ...: `slots.rs` reads them from the clap types), and
//! backup names from the instance's `SYNBACKUP_BACKUP_ROOT` once the instance is
//! typed (`restore --instance NAME BACKUP`, `drill NAME BACKUP`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::commands::Cli;

/// The bash function that wraps clap's.
mod bash;
/// The fish functions and completions.
mod fish;
/// Where the command line takes instance and backup names.
mod slots;
/// The zsh actions and functions.
mod zsh;

use slots::Slots;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to print completions for.
    #[arg(value_enum)]
    pub(crate) shell: Shell,
}

/// Print the script on stdout.
pub(crate) fn exec(a: &CompletionsArgs) -> Result<ExitCode> {
    let script = completion_script(a.shell)?;
    std::io::stdout()
        .lock()
        .write_all(&script)
        .context("cannot write the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// clap's script for SHELL, with instance and backup names added where we can.
fn completion_script(shell: Shell) -> Result<Vec<u8>> {
    let mut cmd = Cli::command();
    cmd.build();
    let slots = slots::collect_slots(&cmd);
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "synbackup", &mut script);
    match shell {
        // Registered last, so it replaces clap's `complete -F _synbackup`.
        Shell::Bash => script.extend_from_slice(bash::names_script(&slots).as_bytes()),
        Shell::Fish => script.extend_from_slice(fish::names_script(&slots).as_bytes()),
        Shell::Zsh => {
            let text = String::from_utf8(script).context("clap's zsh script is not UTF-8")?;
            script = zsh::rewrite(&text, &slots)?.into_bytes();
        }
        _ => {}
    }
    Ok(script)
}

/// TEMPLATE with `@PATHS@`, `@INSTANCE_POSITIONAL@`, `@INSTANCE_OPTION@`,
/// `@BACKUP_POSITIONAL@` and `@VALUE_OPTIONS@` replaced by the slots' word lists.
fn fill(template: &str, slots: &Slots) -> String {
    template
        .replace("@PATHS@", &Slots::words(&slots.paths))
        .replace(
            "@INSTANCE_POSITIONAL@",
            &Slots::words(&slots.instance_positional),
        )
        .replace("@INSTANCE_OPTION@", &Slots::words(&slots.instance_option))
        .replace(
            "@BACKUP_POSITIONAL@",
            &Slots::words(&slots.backup_positional),
        )
        .replace("@VALUE_OPTIONS@", &Slots::words(&slots.value_options))
}
