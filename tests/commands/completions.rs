// SPDX-License-Identifier: Apache-2.0
//! The completion scripts the real binary prints, run in the real shells: bash (the
//! function bash calls), fish (`complete -C`, fish's own completion of a command
//! line) and zsh (the name functions clap's actions now call, with zsh's `compadd`
//! replaced by a printer: zsh's completion system needs a terminal). Each offers
//! instance names from the config directory and, once the instance is typed, the
//! backup names in its `SYNBACKUP_BACKUP_ROOT`.

use std::path::{Path, PathBuf};

use crate::util::{bin, command};

/// A config directory with two instances, one with two backups.
fn config_dir(t: &Path) -> PathBuf {
    let etc = t.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let root = t.join("backups");
    for b in ["cortex00_20261201T144445Z", "cortex00_20261130T010000Z"] {
        std::fs::create_dir_all(root.join(b)).unwrap();
    }
    std::fs::write(root.join("cortex00_notes.txt"), "not a backup").unwrap();
    std::fs::write(
        etc.join("cortex00.conf"),
        format!("SYNBACKUP_BACKUP_ROOT=\"{}\"\n", root.display()),
    )
    .unwrap();
    std::fs::write(etc.join("axon01.conf"), "").unwrap();
    etc
}

fn script(t: &Path, shell: &str) -> PathBuf {
    let o = bin()
        .args(["completions", shell])
        .output()
        .expect("run synbackup");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = t.join(format!("synbackup.{shell}"));
    std::fs::write(&path, &o.stdout).unwrap();
    path
}

fn sorted_lines(out: &[u8]) -> String {
    let mut lines: Vec<&str> = std::str::from_utf8(out).unwrap().lines().collect();
    lines.sort();
    lines.join("\n")
}

const BACKUPS: &str = "cortex00_20261130T010000Z\ncortex00_20261201T144445Z";

#[test]
fn bash_completes_instance_and_backup_names() {
    let t = tempfile::tempdir().unwrap();
    let etc = config_dir(t.path());
    let script = script(t.path(), "bash");
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let shell = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; \
             _synbackup_names synbackup '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let o = command("bash")
            .args(["-c", &shell])
            .env("SYNBACKUP_CONFIG_DIR", &etc)
            .output()
            .unwrap();
        sorted_lines(&o.stdout)
    };
    assert_eq!(complete("synbackup run c"), "cortex00");
    assert_eq!(complete("synbackup status "), "axon01\ncortex00");
    assert_eq!(complete("synbackup drill "), "axon01\ncortex00");
    assert_eq!(complete("synbackup certs a"), "axon01");
    assert_eq!(complete("synbackup certs deploy c"), "cortex00");
    assert_eq!(
        complete("synbackup certs deploy --cert f.pem --key k.pem a"),
        "axon01"
    );
    assert_eq!(complete("synbackup offsite check c"), "cortex00");
    assert_eq!(complete("synbackup restore --instance a"), "axon01");
    assert_eq!(complete("synbackup restore --instance cortex00 c"), BACKUPS);
    assert_eq!(complete("synbackup drill cortex00 "), BACKUPS);
    assert_eq!(
        complete("synbackup -v drill cortex00 cortex00_202612"),
        "cortex00_20261201T144445Z"
    );
}

#[test]
fn fish_completes_instance_and_backup_names() {
    let t = tempfile::tempdir().unwrap();
    let etc = config_dir(t.path());
    let script = script(t.path(), "fish");
    let complete = |line: &str| {
        let o = command("fish")
            .args(["--no-config", "-c"])
            .arg(format!("source {}; complete -C'{line}'", script.display()))
            .env("SYNBACKUP_CONFIG_DIR", &etc)
            .output()
            .expect("run fish (apt install fish)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // `complete -C` prints "candidate<TAB>description".
        let names: Vec<&str> = std::str::from_utf8(&o.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap_or(""))
            .collect();
        sorted_lines(names.join("\n").as_bytes())
    };
    assert_eq!(complete("synbackup run c"), "cortex00");
    assert_eq!(complete("synbackup status "), "axon01\ncortex00");
    assert_eq!(complete("synbackup prune a"), "axon01");
    assert_eq!(complete("synbackup certs deploy c"), "cortex00");
    assert_eq!(complete("synbackup offsite list a"), "axon01");
    assert_eq!(
        complete("synbackup restore --instance "),
        "axon01\ncortex00"
    );
    assert_eq!(complete("synbackup restore --instance cortex00 "), BACKUPS);
    assert_eq!(
        complete("synbackup restore --instance cortex00 --force c"),
        BACKUPS
    );
    assert_eq!(complete("synbackup drill cortex00 "), BACKUPS);
    let other = etc.parent().unwrap().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("jsonstor00.conf"), "").unwrap();
    assert_eq!(
        complete(&format!("synbackup --config-dir {} list ", other.display())),
        "jsonstor00"
    );
}

#[test]
fn zsh_completes_instance_and_backup_names() {
    let t = tempfile::tempdir().unwrap();
    let etc = config_dir(t.path());
    let script = script(t.path(), "zsh");
    let text = std::fs::read_to_string(&script).unwrap();
    // clap's actions for every instance and backup argument call our functions.
    for spec in [
        "':instance -- The instance name (its configuration is CONFIG_DIR/INSTANCE.conf):_synbackup_instances'",
        ":INSTANCE:_synbackup_instances'",
        "Default\\: the newest verified backup:_synbackup_backups'",
    ] {
        assert!(text.contains(spec), "zsh script lacks {spec}");
    }
    assert!(
        !text.contains(":INSTANCE:_default'"),
        "an --instance left to _default"
    );
    // The functions themselves, in zsh, as clap's `_arguments` calls them: `words`
    // holds the subcommand's words and CURRENT the one being completed.
    let complete = |words: &[&str]| {
        let list = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let func = if words[0] == "run" || words.ends_with(&["--instance", ""]) {
            "_synbackup_instances"
        } else {
            "_synbackup_backups"
        };
        let zsh = format!(
            "source {} 2>/dev/null; \
             compadd() {{ local -a a; a=(\"$@\"); shift $(( ${{a[(i)-a]}} )); print -l -- ${{(P)1}}; }}; \
             _files() {{ print FILES; }}; words=({list}); CURRENT={}; {func}",
            script.display(),
            words.len(),
        );
        let o = command("zsh")
            .args(["-f", "-c", &zsh])
            .env("SYNBACKUP_CONFIG_DIR", &etc)
            .output()
            .expect("run zsh (apt install zsh)");
        sorted_lines(&o.stdout)
    };
    assert_eq!(complete(&["run", ""]), "axon01\ncortex00");
    assert_eq!(complete(&["restore", "--instance", ""]), "axon01\ncortex00");
    assert_eq!(
        complete(&["restore", "--instance", "cortex00", ""]),
        BACKUPS
    );
    assert_eq!(
        complete(&["restore", "--instance=cortex00", "--force", ""]),
        BACKUPS
    );
    assert_eq!(complete(&["drill", "cortex00", ""]), BACKUPS);
    // No instance typed: a backup is a path.
    assert_eq!(complete(&["restore", ""]), "FILES");
}
