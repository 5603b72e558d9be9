// SPDX-License-Identifier: Apache-2.0
//! Where a command line takes an instance or a backup name, read from the clap
//! types so that the three shells' scripts follow every new subcommand: a
//! positional argument named `instance`, an `--instance` option, and a positional
//! named `backup` in a subcommand that also names its instance. Subcommand paths
//! are joined with `/` (`certs/deploy`).

use std::collections::BTreeSet;

use clap::Command;

/// The name slots of the whole command tree.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// Every subcommand path (to tell a subcommand from a positional argument).
    pub(crate) paths: Vec<String>,
    /// Paths whose first positional argument is an instance name.
    pub(crate) instance_positional: Vec<String>,
    /// Paths that take `--instance NAME`.
    pub(crate) instance_option: Vec<String>,
    /// `PATH:N`: the N-th (from 0) positional of PATH is a backup of the instance.
    pub(crate) backup_positional: Vec<String>,
    /// Options that take a value (the word after them is not a positional).
    pub(crate) value_options: BTreeSet<String>,
}

/// Walk the command tree.
pub(crate) fn collect_slots(cli: &Command) -> Slots {
    let mut slots = Slots::default();
    for sub in cli.get_subcommands() {
        visit_subcommand(&mut slots, sub, sub.get_name().to_string());
    }
    // Global options (`--config-dir`) are propagated to the subcommands only when
    // clap builds them; take the top level's own too.
    add_value_options(&mut slots, cli);
    slots
}

fn visit_subcommand(slots: &mut Slots, cmd: &Command, path: String) {
    add_value_options(slots, cmd);
    let positionals: Vec<&str> = cmd.get_positionals().map(|a| a.get_id().as_str()).collect();
    let by_position = positionals.first() == Some(&"instance");
    let by_option = cmd.get_opts().any(|a| a.get_long() == Some("instance"));
    if by_position {
        slots.instance_positional.push(path.clone());
    }
    if by_option {
        slots.instance_option.push(path.clone());
    }
    if by_position || by_option {
        if let Some(n) = positionals.iter().position(|id| *id == "backup") {
            slots.backup_positional.push(format!("{path}:{n}"));
        }
    }
    for sub in cmd.get_subcommands() {
        visit_subcommand(slots, sub, format!("{path}/{}", sub.get_name()));
    }
    slots.paths.push(path);
}

fn add_value_options(slots: &mut Slots, cmd: &Command) {
    for opt in cmd.get_opts() {
        if let Some(long) = opt.get_long() {
            slots.value_options.insert(format!("--{long}"));
        }
        if let Some(short) = opt.get_short() {
            slots.value_options.insert(format!("-{short}"));
        }
    }
}

impl Slots {
    /// A list for a shell word list: space-separated.
    pub(crate) fn words(list: impl IntoIterator<Item = impl AsRef<str>>) -> String {
        list.into_iter()
            .map(|s| s.as_ref().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }
}
