// SPDX-License-Identifier: Apache-2.0
//! The top-level keys of a cell's config files (`cell.yaml`, and `cell.mods.yaml`,
//! the overrides Synapse itself writes, e.g. `mirror: null` when a mirror is
//! promoted), read and rewritten by line, without a YAML library: Synapse's config
//! files are flat maps of scalar (or list) values.
//!
//! A file is cut into blocks: a top-level key's line with the lines that continue
//! its value (indented, list items, blank lines and comments inside it); lines
//! before the first key are a block without a key. Rewriting keeps every other
//! block byte for byte.

use std::path::Path;

use anyhow::{Context, Result};

/// The config files of a cell, in the order Synapse applies them (the later wins).
pub(crate) const FILES: &[&str] = &["cell.yaml", "cell.mods.yaml"];

/// A top-level key's block (or the leading lines, `key` None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) key: Option<String>,
    pub(crate) text: String,
}

/// The top-level key a line starts and the rest of the line after its colon.
fn split_key(line: &str) -> Option<(&str, &str)> {
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
    let key = line[..end].trim().trim_matches(|c| c == '"' || c == '\'');
    Some((key, &line[end + 1..]))
}

/// The top-level key a line starts, if it starts one.
pub(crate) fn top_key(line: &str) -> Option<&str> {
    split_key(line).map(|(k, _)| k)
}

/// `text` cut into blocks (their texts put together are `text`).
pub(crate) fn blocks(text: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for line in text.split_inclusive('\n') {
        match top_key(line) {
            Some(key) => out.push(Block {
                key: Some(key.to_string()),
                text: line.to_string(),
            }),
            None => match out.last_mut() {
                Some(b) => b.text.push_str(line),
                None => out.push(Block {
                    key: None,
                    text: line.to_string(),
                }),
            },
        }
    }
    out
}

/// The scalar value of a `key: value` block: quotes and a trailing comment
/// removed; None for `null`, `~`, an empty value or a value that is not a scalar.
pub(crate) fn scalar(block: &Block) -> Option<String> {
    let (_, rest) = split_key(block.text.lines().next()?)?;
    let value = rest.trim();
    let value = match value.chars().next() {
        // Quoted: up to the closing quote (a comment may follow it).
        Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
        _ => value.split(" #").next().unwrap_or("").trim(),
    };
    match value {
        "" | "~" | "null" | "Null" | "NULL" => None,
        v => Some(v.to_string()),
    }
}

/// The blocks of `dir/name` (empty when there is no such file).
pub(crate) fn read_blocks(dir: &Path, name: &str) -> Result<Vec<Block>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(blocks(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The value `key` has for the cell in `dir`: from `cell.mods.yaml` when set
/// there (also to null), else from `cell.yaml`. Outer None: the key is in neither
/// file; Some(None): set to null.
pub(crate) fn effective(dir: &Path, key: &str) -> Result<Option<Option<String>>> {
    let mut found = None;
    for name in FILES {
        for b in read_blocks(dir, name)? {
            if b.key.as_deref() == Some(key) {
                found = Some(scalar(&b));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_put_together_are_the_text() {
        let text = "# leading\nnexslog:en: true\nmirror: \"cell:///data/leader\"  # upstream\naha:registry:\n  - ssl://a\n\n  - ssl://b\n'aha:name': core01\nparent: ~\n";
        let b = blocks(text);
        assert_eq!(
            b.iter().map(|b| b.key.as_deref()).collect::<Vec<_>>(),
            [
                None,
                Some("nexslog:en"),
                Some("mirror"),
                Some("aha:registry"),
                Some("aha:name"),
                Some("parent")
            ]
        );
        assert_eq!(b.iter().map(|b| b.text.as_str()).collect::<String>(), text);
        assert_eq!(scalar(&b[2]).as_deref(), Some("cell:///data/leader"));
        assert_eq!(scalar(&b[3]), None, "a list is not a scalar");
        assert_eq!(scalar(&b[4]).as_deref(), Some("core01"));
        assert_eq!(scalar(&b[5]), None);
        assert_eq!(scalar(&b[1]).as_deref(), Some("true"));
    }

    #[test]
    fn mods_override_the_config() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cell.yaml"), "mirror: tcp://l:1/\n").unwrap();
        assert_eq!(
            effective(t.path(), "mirror").unwrap(),
            Some(Some("tcp://l:1/".into()))
        );
        // A promoted mirror: Synapse writes `mirror: null` to cell.mods.yaml.
        std::fs::write(t.path().join("cell.mods.yaml"), "mirror: null\n").unwrap();
        assert_eq!(effective(t.path(), "mirror").unwrap(), Some(None));
        assert_eq!(effective(t.path(), "parent").unwrap(), None);
    }
}
