// SPDX-License-Identifier: Apache-2.0
//! `seed-mirror`: what turns a restored copy of a leader's backup into a mirror of
//! that leader, and what of the leader's own it must not carry.
//!
//! Synapse's clone (`_bootCellMirror`, 2.256 and 3.7.0) extracts the leader's
//! backup as it is and then rewrites the config with what AHA's provisioning gives
//! the mirror: its own `aha:name`, its upstream, its listeners; it drops the
//! leader's `aha:provision` and rewrites `prov.done`, and it makes the mirror its
//! own AHA host certificate. Seeding does the same without AHA:
//!
//! - in `cell.yaml` and `cell.mods.yaml` (a promoted leader has `mirror: null` in
//!   the latter, which would win) the [`DROPPED`] keys go: whom the leader followed
//!   (`mirror` on 2.x, `parent` on 3.x), its AHA identity (`aha:name`,
//!   `aha:provision`, `aha:leader`) and its own listeners (`dmon:listen`,
//!   `https:port`: a mirror on the same host would fail to bind them); then
//!   `nexslog:en: true` (a mirror needs its log) and the follower key with the
//!   upstream are written to `cell.yaml`. Every other key (`aha:network`, the
//!   registry, `aha:user`, storage settings) stays: the mirror is the same cell;
//! - the leader's `prov.done` (its provisioning marker) and its AHA host
//!   certificate, key and request (`certs/hosts/NAME.NETWORK.{crt,key,csr}`) are
//!   removed: the mirror must never present itself as the leader.
//!
//! `cell.guid` stays (a mirror is the same cell), and so do `sslcert.pem` and
//! `sslkey.pem`: the cell's HTTPS identity, which Synapse's clone keeps too.

use std::fs;
use std::path::Path;

use anyhow::Result;

use crate::base::fsutil;
use crate::engine::cellyaml::{self, Block, FILES};

/// The config keys a seeded mirror must not keep from its leader (2.x and 3.x).
pub(crate) const DROPPED: &[&str] = &[
    "mirror",
    "parent",
    "nexslog:en",
    "aha:name",
    "aha:provision",
    "aha:leader",
    "dmon:listen",
    "https:port",
];

/// The key that makes a cell follow an upstream on Synapse `major`: `mirror` on
/// 2.x, `parent` on 3.x.
pub(crate) fn follower_key(major: u64) -> &'static str {
    if major >= 3 {
        "parent"
    } else {
        "mirror"
    }
}

/// A YAML scalar that stays one whatever the URL holds (single-quoted).
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `text` (a config file) without the [`DROPPED`] keys, the keys removed, and
/// with `add` appended (each a whole line).
pub(crate) fn rewrite(text: &str, add: &[String]) -> (String, Vec<String>) {
    let (dropped, kept): (Vec<Block>, Vec<Block>) = cellyaml::blocks(text)
        .into_iter()
        .partition(|b| b.key.as_deref().is_some_and(|k| DROPPED.contains(&k)));
    let mut out: String = kept.iter().map(|b| b.text.as_str()).collect();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for line in add {
        out.push_str(line);
        out.push('\n');
    }
    (out, dropped.into_iter().filter_map(|b| b.key).collect())
}

/// The lines that make a cell follow `upstream` on Synapse `major`.
pub(crate) fn follower_lines(major: u64, upstream: &str) -> Vec<String> {
    vec![
        "nexslog:en: true".to_string(),
        format!("{}: {}", follower_key(major), quoted(upstream)),
    ]
}

/// What [`make_follower`] changed, for the summary and the plan.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Changes {
    /// `FILE:KEY` removed.
    pub(crate) dropped_keys: Vec<String>,
    /// The lines written to `cell.yaml`.
    pub(crate) set: Vec<String>,
    /// Files of the leader's removed (relative paths).
    pub(crate) removed_files: Vec<String>,
}

/// The leader's private files in `dir` a mirror must not carry (relative paths
/// of those present): `prov.done` and its AHA host certificate, key and request.
pub(crate) fn leader_material(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if fs::symlink_metadata(dir.join("prov.done")).is_ok() {
        out.push("prov.done".to_string());
    }
    let name = cellyaml::effective(dir, "aha:name")?.flatten();
    let network = cellyaml::effective(dir, "aha:network")?.flatten();
    if let (Some(name), Some(network)) = (name, network) {
        for ext in ["crt", "key", "csr"] {
            let rel = format!("certs/hosts/{name}.{network}.{ext}");
            if fs::symlink_metadata(dir.join(&rel)).is_ok() {
                out.push(rel);
            }
        }
    }
    Ok(out)
}

/// Turn `dir` (a restored copy of the leader's backup, not yet in use) into a
/// mirror following `upstream` on Synapse `major`: the config rewritten and the
/// leader's private files removed (both durably).
pub(crate) fn make_follower(dir: &Path, major: u64, upstream: &str) -> Result<Changes> {
    let mut changes = Changes {
        removed_files: leader_material(dir)?,
        ..Changes::default()
    };
    for name in FILES {
        let path = dir.join(name);
        let add = if *name == "cell.yaml" {
            follower_lines(major, upstream)
        } else {
            Vec::new()
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !add.is_empty() => String::new(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
            }
        };
        let (new, keys) = rewrite(&text, &add);
        if new == text {
            continue;
        }
        changes
            .dropped_keys
            .extend(keys.iter().map(|k| format!("{name}:{k}")));
        if !add.is_empty() {
            changes.set = add;
        }
        super::roles::write_config(&path, &dir.join("cell.guid"), &new)?;
    }
    for rel in &changes.removed_files {
        let p = dir.join(rel);
        fs::remove_file(&p).map_err(|e| fsutil::write_error(&p, e))?;
        fsutil::fsync_dir(p.parent().unwrap_or(dir))?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaders_config_becomes_a_followers() {
        let text = "nexslog:en: false\naha:name: core00\naha:network: prod.example\ndmon:listen: ssl://0.0.0.0:27492?hostname=core00.prod.example\nhttps:port: 4443\nlayers:lockmemory: false\n";
        let (new, dropped) = rewrite(text, &follower_lines(2, "cell:///srv/cortex/core00"));
        assert_eq!(
            new,
            "aha:network: prod.example\nlayers:lockmemory: false\nnexslog:en: true\nmirror: 'cell:///srv/cortex/core00'\n"
        );
        assert_eq!(
            dropped,
            ["nexslog:en", "aha:name", "dmon:listen", "https:port"]
        );
        // 3.x: `parent`; a quote in the URL stays inside the scalar.
        let (new, _) = rewrite("a: 1", &follower_lines(3, "tcp://it's:1/"));
        assert_eq!(new, "a: 1\nnexslog:en: true\nparent: 'tcp://it''s:1/'\n");
    }

    #[test]
    fn a_promoted_leaders_mods_lose_their_null_mirror() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(d.join("cell.guid"), "c0\n").unwrap();
        fs::write(
            d.join("cell.yaml"),
            "aha:name: core00\naha:network: n.example\n",
        )
        .unwrap();
        fs::write(d.join("cell.mods.yaml"), "mirror: null\nstorm:log: true\n").unwrap();
        fs::write(d.join("prov.done"), "abc").unwrap();
        fs::create_dir_all(d.join("certs/hosts")).unwrap();
        fs::write(d.join("certs/hosts/core00.n.example.key"), "k").unwrap();
        fs::write(d.join("certs/hosts/core00.n.example.crt"), "c").unwrap();
        fs::write(d.join("certs/hosts/other.n.example.crt"), "o").unwrap();
        let c = make_follower(d, 2, "cell:///l").unwrap();
        assert_eq!(
            c.removed_files,
            [
                "prov.done",
                "certs/hosts/core00.n.example.crt",
                "certs/hosts/core00.n.example.key"
            ]
        );
        assert_eq!(
            c.dropped_keys,
            ["cell.yaml:aha:name", "cell.mods.yaml:mirror"]
        );
        assert_eq!(
            fs::read_to_string(d.join("cell.mods.yaml")).unwrap(),
            "storm:log: true\n"
        );
        assert_eq!(
            crate::restore::roles::configured_role(d).unwrap(),
            crate::restore::roles::Role::Mirror(Some("cell:///l".into()))
        );
        assert!(d.join("certs/hosts/other.n.example.crt").exists());
        assert!(!d.join("prov.done").exists());
    }
}
