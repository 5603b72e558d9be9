// SPDX-License-Identifier: Apache-2.0
//! Cutting the drilled copy loose: before boot, the scratch copy's `cell.yaml` and
//! `cell.mods.yaml` lose the keys that make a cell follow or register with another
//! service ([`NEUTRALISED`]: a restored mirror follows its upstream and forwards
//! writes to it, an AHA member registers as the live one, provisioning talks to
//! AHA). Those of both release lines: 2.x's `mirror` and `aha:registry` are 3.x's
//! `parent` and `aha:servers` (a 3.x cell under AHA also refuses to boot when it
//! cannot reach AHA); removing a key the line does not have changes nothing, so
//! the list needs no version. Only the copy is rewritten, never the backup.
//!
//! Keys are removed, not set to null: Synapse 3.x fails the boot on an unknown key,
//! and both 2.256 and 3.7.0 treat a missing key as "not a mirror, no AHA". The
//! rewrite is by line, on top-level keys only (Synapse's config files are flat
//! maps): a key's line goes with the lines that continue its value (indented, or
//! list items). The same keys given as `SYN_<CELL>_<KEY>` in the service unit's
//! `Environment=` are dropped from what the server gets ([`neutralise_env`]).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

use crate::base::fsutil;

/// The `cell.yaml` keys a drilled copy must not keep (2.x and 3.x).
pub(crate) const NEUTRALISED: &[&str] = &[
    "mirror",
    "parent",
    "aha:registry",
    "aha:servers",
    "aha:provision",
    "aha:leader",
    "aha:network",
    "aha:name",
];

/// The config files of a cell that hold its keys.
const FILES: &[&str] = &["cell.yaml", "cell.mods.yaml"];

/// Remove the [`NEUTRALISED`] keys from the config files in `dir` (a scratch copy);
/// the keys removed, as `FILE:KEY`.
pub(crate) fn neutralise(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let (kept, keys) = strip_keys(&text);
        if keys.is_empty() {
            continue;
        }
        // A symlink is replaced by a file: writing through it could reach outside
        // the copy.
        fs::remove_file(&path).map_err(|e| fsutil::write_error(&path, e))?;
        fs::write(&path, kept).map_err(|e| fsutil::write_error(&path, e))?;
        let mode = if meta.is_symlink() {
            0o600
        } else {
            meta.mode() & 0o7777
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("cannot set the owner of {}", path.display()))?;
        removed.extend(keys.into_iter().map(|k| format!("{name}:{k}")));
    }
    Ok(removed)
}

/// The top-level key of a YAML line, if the line starts one.
fn top_key(line: &str) -> Option<&str> {
    if line.starts_with([' ', '\t', '#', '-']) || line.trim().is_empty() {
        return None;
    }
    // The key ends at the first `:` followed by a blank or the end of the line
    // (keys themselves hold colons: `aha:registry:`).
    let line = line.trim_end();
    let end = line
        .char_indices()
        .find(|&(i, c)| {
            c == ':'
                && line[i + 1..]
                    .chars()
                    .next()
                    .map_or(true, char::is_whitespace)
        })?
        .0;
    Some(line[..end].trim().trim_matches(|c| c == '"' || c == '\''))
}

/// `text` without the [`NEUTRALISED`] top-level keys (and their values' lines), and
/// the keys removed.
fn strip_keys(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut keys = Vec::new();
    let mut dropping = false;
    for line in text.split_inclusive('\n') {
        if let Some(key) = top_key(line) {
            dropping = NEUTRALISED.contains(&key);
            if dropping {
                keys.push(key.to_string());
            }
        } else if dropping && !(line.starts_with([' ', '\t', '-']) || line.trim().is_empty()) {
            dropping = false;
        }
        if !dropping {
            out.push_str(line);
        }
    }
    (out, keys)
}

/// The `SYN_<CELL>_<KEY>` form of a neutralised key's environment variable, e.g.
/// `SYN_CORTEX_MIRROR` or `SYN_CORTEX_AHA_REGISTRY`.
fn env_is_neutralised(var: &str) -> bool {
    let Some(rest) = var.strip_prefix("SYN_") else {
        return false;
    };
    let Some((_, key)) = rest.split_once('_') else {
        return false;
    };
    NEUTRALISED
        .iter()
        .any(|k| k.replace(':', "_").eq_ignore_ascii_case(key))
}

/// Drop the variables of neutralised keys from the server's environment (the unit's
/// `Environment=` and its `EnvironmentFile=`s, resolved); the variables dropped.
pub(crate) fn neutralise_env(env: &mut Vec<(String, String)>) -> Vec<String> {
    let mut dropped = Vec::new();
    env.retain(|(var, _)| {
        if env_is_neutralised(var) {
            let name = format!("env:{var}");
            if !dropped.contains(&name) {
                dropped.push(name);
            }
            false
        } else {
            true
        }
    });
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_mirror_and_aha_keys_with_their_values() {
        let text = "nexslog:en: true\nmirror: cell:///data/leader\naha:registry:\n  - ssl://aha.example:27492\n  - ssl://aha2.example\n\naha:name: core00\n'aha:network': prod.example\nhttps:port: 4443\naha:provision: ssl://aha:27272/x\n";
        let (kept, keys) = strip_keys(text);
        assert_eq!(kept, "nexslog:en: true\nhttps:port: 4443\n");
        assert_eq!(
            keys,
            [
                "mirror",
                "aha:registry",
                "aha:name",
                "aha:network",
                "aha:provision"
            ]
        );
        assert_eq!(strip_keys("a: 1\nb:\n  - x\n").1, Vec::<String>::new());
    }

    #[test]
    fn strips_the_3x_follower_and_aha_keys() {
        // Synapse 3.x: `parent` is a follower's upstream, `aha:servers` the registry.
        let text = "nexslog:en: true\nparent: cell:///srv/cortex/leader\naha:servers:\n  - ssl://aha.example:27492\naha:promotable: true\n";
        let (kept, keys) = strip_keys(text);
        assert_eq!(kept, "nexslog:en: true\naha:promotable: true\n");
        assert_eq!(keys, ["parent", "aha:servers"]);
        assert!(env_is_neutralised("SYN_CORTEX_PARENT"));
        assert!(env_is_neutralised("SYN_CORTEX_AHA_SERVERS"));
        assert!(!env_is_neutralised("SYN_CORTEX_AHA_PROMOTABLE"));
    }

    #[test]
    fn strips_the_3x_upstream_and_aha_keys() {
        // 3.7.0's follower and AHA keys (2.x: `mirror`, `aha:registry`).
        let text = "parent: cell:///srv/cortex/leader\naha:servers:\n  - ssl://aha.example:27492/\naha:name: core00\naha:network: prod.example\nnexslog:en: true\n";
        let (kept, keys) = strip_keys(text);
        assert_eq!(kept, "nexslog:en: true\n");
        assert_eq!(keys, ["parent", "aha:servers", "aha:name", "aha:network"]);
        let mut env = vec![
            ("SYN_CORTEX_PARENT".to_string(), "cell:///x".to_string()),
            ("SYN_CORTEX_AHA_SERVERS".to_string(), "ssl://a/".to_string()),
        ];
        assert_eq!(
            neutralise_env(&mut env),
            ["env:SYN_CORTEX_PARENT", "env:SYN_CORTEX_AHA_SERVERS"]
        );
    }

    #[test]
    fn rewrites_only_the_copy_and_drops_env() {
        let t = tempfile::tempdir().unwrap();
        let backup = t.path().join("b.yaml");
        fs::write(&backup, "mirror: tcp://127.0.0.1:1/x\nnexslog:en: true\n").unwrap();
        let copy = t.path().join("copy");
        fs::create_dir(&copy).unwrap();
        std::os::unix::fs::symlink(&backup, copy.join("cell.yaml")).unwrap();
        fs::write(copy.join("cell.mods.yaml"), "aha:leader: x\n").unwrap();
        let keys = neutralise(&copy).unwrap();
        assert_eq!(keys, ["cell.yaml:mirror", "cell.mods.yaml:aha:leader"]);
        assert_eq!(
            fs::read_to_string(copy.join("cell.yaml")).unwrap(),
            "nexslog:en: true\n"
        );
        assert!(fs::read_to_string(&backup).unwrap().starts_with("mirror:"));
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let mut env = vec![
            pair("SYN_CORTEX_MIRROR", "cell:///x"),
            pair("SYN_CORTEX_AHA_REGISTRY", "ssl://a"),
            pair("SYN_CORTEX_NEXSLOG_EN", "true"),
            pair("SYN_CORTEX_MIRROR", "tcp://x"),
        ];
        assert_eq!(
            neutralise_env(&mut env),
            ["env:SYN_CORTEX_MIRROR", "env:SYN_CORTEX_AHA_REGISTRY"]
        );
        assert_eq!(env, [pair("SYN_CORTEX_NEXSLOG_EN", "true")]);
    }
}
