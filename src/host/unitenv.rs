// SPDX-License-Identifier: Apache-2.0
//! A service unit's environment: its `Environment=` assignments and
//! `EnvironmentFile=`s, read from `systemctl show -p Environment -p EnvironmentFiles
//! UNIT`, so a drill can start the server with the environment the unit gives it
//! (`SYN_*` settings of a Synapse service are often set there).
//!
//! `systemctl show` prints `Environment=A=1 "B=two words"` (C-style quoting) and one
//! `EnvironmentFiles=PATH (ignore_errors=yes|no)` line per file. The files are read
//! with systemd's own rules (`base::envfile`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::base::envfile;
use crate::host::systemd;

/// What a unit sets in its processes' environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UnitEnv {
    /// `KEY=VALUE` assignments, in order.
    pub(crate) assignments: Vec<String>,
    /// Environment files, with whether a missing one is ignored (`-PATH`).
    pub(crate) files: Vec<(PathBuf, bool)>,
}

/// The environment `unit` sets.
pub(crate) fn of_unit(unit: &str) -> Result<UnitEnv> {
    let show = systemd::systemctl(&["show", "-p", "Environment", "-p", "EnvironmentFiles", unit])?;
    Ok(parse_show(&show))
}

/// Parse `systemctl show -p Environment -p EnvironmentFiles` output.
pub(crate) fn parse_show(show: &str) -> UnitEnv {
    let mut env = UnitEnv::default();
    for line in show.lines() {
        if let Some(v) = line.strip_prefix("Environment=") {
            env.assignments.extend(split_quoted(v));
        } else if let Some(v) = line.strip_prefix("EnvironmentFiles=") {
            let (path, flags) = v.rsplit_once(" (").unwrap_or((v, ""));
            if !path.is_empty() {
                env.files
                    .push((PathBuf::from(path), flags.contains("ignore_errors=yes")));
            }
        }
    }
    env
}

/// Words of a `systemctl show` value: spaces separate, double quotes group, and
/// backslash escapes the next character.
fn split_quoted(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('n') => cur.push('\n'),
                    Some('t') => cur.push('\t'),
                    Some(o) => cur.push(o),
                    None => {}
                }
            }
            '"' => {
                in_word = true;
                quoted = !quoted;
            }
            ' ' if !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            o => {
                in_word = true;
                cur.push(o);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The `(KEY, VALUE)` pairs of an environment file's text, as systemd gives them
/// to the service: lines systemd skips (no `=`, a key that is no variable name)
/// are skipped here too.
pub(crate) fn parse_env_file(text: &str) -> Vec<(String, String)> {
    envfile::parse(text)
        .into_iter()
        .flatten()
        .map(|e| (e.key, e.value))
        .collect()
}

/// Every `(KEY, VALUE)` the unit sets: its files first, then its assignments (which
/// systemd applies in that order too, later ones winning).
pub(crate) fn resolve(env: &UnitEnv) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (path, ignore) in &env.files {
        match std::fs::read_to_string(path) {
            Ok(t) => out.extend(parse_env_file(&t)),
            Err(_) if *ignore => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read the service unit's EnvironmentFile {}",
                        path.display()
                    )
                })
            }
        }
    }
    for a in &env.assignments {
        if let Some((k, v)) = a.split_once('=') {
            out.push((k.to_string(), v.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show_environment() {
        let show = "Environment=SYN_CORTEX_STORM_LOG=true \"SYN_X=two words\" A=b\\\"c\n\
                    EnvironmentFiles=/etc/syn/c0.env (ignore_errors=no)\n\
                    EnvironmentFiles=/etc/syn/opt.env (ignore_errors=yes)\n";
        let env = parse_show(show);
        assert_eq!(
            env.assignments,
            vec!["SYN_CORTEX_STORM_LOG=true", "SYN_X=two words", "A=b\"c"]
        );
        assert_eq!(
            env.files,
            vec![
                (PathBuf::from("/etc/syn/c0.env"), false),
                (PathBuf::from("/etc/syn/opt.env"), true)
            ]
        );
        assert_eq!(parse_show("Environment=\n"), UnitEnv::default());
    }

    #[test]
    fn parses_environment_files() {
        let t = "# comment\n; other\nA=1\nB = \"x y\"\nC='z'\nnot a line\n";
        assert_eq!(
            parse_env_file(t),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x y".into()),
                ("C".into(), "z".into())
            ]
        );
    }

    #[test]
    fn a_missing_file_fails_unless_ignored() {
        let env = UnitEnv {
            assignments: vec!["K=v".into()],
            files: vec![(PathBuf::from("/nonexistent/x.env"), true)],
        };
        assert_eq!(resolve(&env).unwrap(), vec![("K".into(), "v".into())]);
        let env = UnitEnv {
            assignments: vec![],
            files: vec![(PathBuf::from("/nonexistent/x.env"), false)],
        };
        assert!(format!("{:#}", resolve(&env).unwrap_err()).contains("/nonexistent/x.env"));
    }
}
