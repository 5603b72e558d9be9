// SPDX-License-Identifier: Apache-2.0
//! The man pages against the code they document: every subcommand and long option
//! the real binary's `--help` shows, every exit code and journal MESSAGE_ID is in
//! `man/synbackup.8.scd`. A new option without documentation fails here, by name.
//! (The config keys of `man/synbackup.conf.5.scd` and the example config are held
//! to their declarations by the unit tests of src/instance/settings.rs.)
//! (That the pages render without warnings is checked by packaging/build-assets.)

use std::collections::BTreeSet;
use std::path::Path;

use crate::util::bin;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `synbackup ARGS --help`, as a user sees it.
fn help(args: &[&str]) -> String {
    let o = bin()
        .args(args)
        .arg("--help")
        .output()
        .expect("run synbackup");
    assert!(o.status.success(), "synbackup {args:?} --help failed");
    String::from_utf8(o.stdout).expect("utf-8 help")
}

/// The names listed under "Commands:" in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues deeper than the names.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Every `--long-option` named at the start of an option line in a help text.
fn long_options(help: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in help.lines() {
        let t = line.trim_start();
        if !t.starts_with('-') {
            continue;
        }
        // "-v, --verbose...", "--config-dir <CONFIG_DIR>", "-j, --jobs <N>"
        for word in t.split_whitespace().take(2) {
            if let Some(name) = word.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !name.is_empty() {
                    out.insert(format!("--{name}"));
                }
            }
        }
    }
    out
}

#[test]
fn every_subcommand_and_long_option_is_in_the_man_page() {
    let page = read("man/synbackup.8.scd");
    let top = help(&[]);
    let commands = subcommands(&top);
    assert!(
        commands.len() >= 10 && commands.iter().any(|c| c == "backup"),
        "could not read the commands from --help:\n{top}"
    );
    let mut missing = Vec::new();
    for opt in long_options(&top) {
        if !page.contains(&format!("*{opt}*")) {
            missing.push(format!("global option {opt}"));
        }
    }
    let mut checked = 0;
    for cmd in &commands {
        // Each command has its own section, `## NAME ...`.
        if !page.lines().any(|l| {
            l.strip_prefix("## ")
                .is_some_and(|h| h.split_whitespace().next() == Some(cmd))
        }) {
            missing.push(format!("subcommand {cmd} (a `## {cmd}` section)"));
        }
        if cmd == "help" {
            continue;
        }
        let cmd_help = help(&[cmd]);
        for opt in long_options(&cmd_help) {
            checked += 1;
            if !page.contains(&format!("*{opt}*")) {
                missing.push(format!("option {opt} of {cmd}"));
            }
        }
        // Subcommands of a subcommand (`certs deploy`): a `## CMD SUB` section, options.
        for sub in subcommands(&cmd_help).iter().filter(|s| *s != "help") {
            // `## certs deploy ...`, or one section for several: `## offsite init|list ...`.
            let documented = page.lines().any(|l| {
                l.strip_prefix(&format!("## {cmd} "))
                    .and_then(|rest| rest.split_whitespace().next())
                    .is_some_and(|w| w.split('|').any(|s| s == sub.as_str()))
            });
            if !documented {
                missing.push(format!(
                    "subcommand {cmd} {sub} (a `## {cmd} {sub}` section)"
                ));
            }
            for opt in long_options(&help(&[cmd, sub])) {
                checked += 1;
                if !page.contains(&format!("*{opt}*")) {
                    missing.push(format!("option {opt} of {cmd} {sub}"));
                }
            }
        }
    }
    assert!(checked > 50, "too few options read from --help ({checked})");
    assert!(
        missing.is_empty(),
        "not documented in man/synbackup.8.scd:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_exit_code_and_message_id_is_in_the_man_page() {
    let page = read("man/synbackup.8.scd");
    let exit_status = page
        .split("# EXIT STATUS")
        .nth(1)
        .and_then(|s| s.split("\n# ").next())
        .expect("an EXIT STATUS section");
    // `Name = N,` in src/base/exit.rs's enum Code.
    let codes: Vec<String> = read("src/base/exit.rs")
        .lines()
        .filter_map(|l| {
            let (_, n) = l.trim().strip_suffix(',')?.split_once(" = ")?;
            n.parse::<u8>().ok().map(|n| n.to_string())
        })
        .collect();
    assert!(
        codes.len() >= 10,
        "could not read the exit codes: {codes:?}"
    );
    // The entries are `*N*` or `*N, M*` lines.
    let documented: BTreeSet<String> = exit_status
        .lines()
        .filter(|l| l.starts_with('*'))
        .flat_map(|l| l.trim_matches('*').split(", "))
        .map(String::from)
        .collect();
    for code in std::iter::once("0".to_string()).chain(codes) {
        assert!(
            documented.contains(&code),
            "exit code {code} is not in synbackup(8)'s EXIT STATUS"
        );
    }
    // `pub(crate) const MSG_...: &str = "...";` in src/base/logging.rs.
    let ids: Vec<String> = read("src/base/logging.rs")
        .lines()
        .filter(|l| l.contains("const MSG_"))
        .filter_map(|l| l.split('"').nth(1).map(String::from))
        .collect();
    assert!(ids.len() >= 5, "could not read the MESSAGE_IDs: {ids:?}");
    for id in ids {
        assert!(page.contains(&id), "MESSAGE_ID {id} is not in synbackup(8)");
    }
}

#[test]
fn every_option_bash_completion_offers_is_in_the_man_page() {
    let page = read("man/synbackup.8.scd");
    let o = bin()
        .args(["completions", "bash"])
        .output()
        .expect("run synbackup");
    assert!(o.status.success());
    let script = String::from_utf8(o.stdout).expect("utf-8 script");
    let offered: BTreeSet<&str> = script
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("opts=\""))
        .flat_map(|l| l.trim_end_matches('"').split_whitespace())
        .filter(|w| w.starts_with("--"))
        .collect();
    assert!(
        offered.contains("--config-dir"),
        "could not read the script"
    );
    let missing: Vec<_> = offered
        .iter()
        .filter(|opt| !page.contains(&format!("*{opt}*")))
        .collect();
    assert!(
        missing.is_empty(),
        "completion offers undocumented {missing:?}"
    );
}
