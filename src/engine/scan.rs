// SPDX-License-Identifier: Apache-2.0
//! What a backup of a service directory contains: the walk and its skip rules.
//!
//! The rules are those of `python -m synapse.tools.service.backup`, so synbackup is a
//! drop-in: a directory holding a regular `data.mdb` is an LMDB environment (copied
//! with LMDB's compacting copy, never descended into, so `lock.mdb` stays behind);
//! directories named `tmp` and `backups` are skipped at any depth, and `--skipdirs`
//! globs are matched against the relative directory path (`*` crosses `/`, as
//! Python's fnmatch; both `layers/x` and `./layers/x` forms are tried); a `*.lmdb`
//! directory without `data.mdb` is left out with a warning; sockets, fifos and
//! devices are skipped. Two additions: `sockets/` directories (runtime sockets) and
//! a top-level `synbackup-manifest.json` (a restored backup's old manifest) are
//! skipped too (as is its `synbackup-verified` marker), and symlinks are copied as
//! links instead of followed.
//!
//! A maintenance window walks the whole directory instead (`scan_whole`): it is not
//! a backup, the copy becomes the live service. No skip rule applies; environments
//! are still compacted, except under `tmp/`, `backups/` and `sockets/` (Synapse's own
//! backups and scratch, not environments the service runs on), which are copied
//! file by file as they are. Only sockets (the service recreates `sock`), fifos,
//! devices and `lock.mdb` of compacted environments are left out.

use std::fs::{self, Metadata};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::base::exit::{fail, Code};
use crate::engine::manifest::MANIFEST_NAME;

/// Directory names never backed up, at any depth.
const SKIP_DIR_NAMES: &[&str] = &["tmp", "backups", "sockets"];

/// One thing to put into the backup, by path relative to the source.
#[derive(Debug)]
pub(crate) enum Item {
    Dir {
        rel: PathBuf,
        meta: Metadata,
    },
    File {
        rel: PathBuf,
        meta: Metadata,
    },
    Symlink {
        rel: PathBuf,
        target: PathBuf,
        meta: Metadata,
    },
    /// An LMDB environment directory; `data` is the metadata of its `data.mdb`.
    Env {
        rel: PathBuf,
        meta: Metadata,
        data: Metadata,
    },
}

/// The walk's result, in walk order (parents before children).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) items: Vec<Item>,
}

impl Plan {
    pub(crate) fn envs(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| matches!(i, Item::Env { .. }))
    }
}

/// Compile `--skipdirs` patterns.
pub(crate) fn compile_skipdirs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p)
            .map_err(|e| fail(Code::Usage, format!("bad --skipdirs pattern {p:?}: {e}")))?;
        b.add(glob);
    }
    b.build().context("cannot compile --skipdirs patterns")
}

/// How a walk treats what it finds.
#[derive(Clone, Copy)]
enum Rules<'a> {
    /// A backup: the skip rules above, with these `--skipdirs`.
    Backup(&'a GlobSet),
    /// A maintenance window: everything, environments detected.
    Whole,
    /// Under `tmp/`, `backups/`, `sockets/` in a window: everything, as plain files.
    Verbatim,
}

fn skip_dir(rel: &Path, name: &str, user: &GlobSet) -> bool {
    if SKIP_DIR_NAMES.contains(&name) {
        return true;
    }
    !user.is_empty() && (user.is_match(rel) || user.is_match(Path::new(".").join(rel)))
}

/// Walk `src` and return everything a backup copies.
pub(crate) fn scan(src: &Path, skipdirs: &GlobSet) -> Result<Plan> {
    let mut plan = Plan::default();
    walk(
        src,
        Path::new(""),
        Rules::Backup(skipdirs),
        false,
        &mut plan,
    )?;
    Ok(plan)
}

/// Walk `src` and return everything a maintenance window carries over: the whole
/// directory (see the module's preamble).
pub(crate) fn scan_whole(src: &Path) -> Result<Plan> {
    let mut plan = Plan::default();
    walk(src, Path::new(""), Rules::Whole, false, &mut plan)?;
    Ok(plan)
}

fn unreadable(path: &Path, e: std::io::Error) -> anyhow::Error {
    fail(
        Code::BadPath,
        format!(
            "cannot read {}: {e}; fix its permissions or run as the service's user or root",
            path.display()
        ),
    )
}

/// `in_env`: `rel` is an environment (its `data.mdb` and `lock.mdb` are not files
/// of the plan).
fn walk(src: &Path, rel: &Path, rules: Rules, in_env: bool, plan: &mut Plan) -> Result<()> {
    let dir = src.join(rel);
    let mut entries = fs::read_dir(&dir)
        .map_err(|e| unreadable(&dir, e))?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| unreadable(&dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let rel_child = rel.join(&name);
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| unreadable(&path, e))?;
        let ft = meta.file_type();
        let name_str = name.to_string_lossy();
        if in_env && (name_str == "data.mdb" || name_str == "lock.mdb") {
            continue;
        }
        if ft.is_dir() {
            let mut child_rules = rules;
            match rules {
                Rules::Backup(skipdirs) if skip_dir(&rel_child, &name_str, skipdirs) => {
                    log::debug!("skipping directory {}", path.display());
                    continue;
                }
                Rules::Whole if SKIP_DIR_NAMES.contains(&name_str.as_ref()) => {
                    child_rules = Rules::Verbatim;
                }
                _ => {}
            }
            if !matches!(child_rules, Rules::Verbatim) {
                let data_path = path.join("data.mdb");
                match fs::symlink_metadata(&data_path) {
                    Ok(data) if data.file_type().is_file() => {
                        plan.items.push(Item::Env {
                            rel: rel_child.clone(),
                            meta,
                            data,
                        });
                        if matches!(rules, Rules::Whole) {
                            // Anything beside the environment's own files is kept.
                            walk(src, &rel_child, Rules::Verbatim, true, plan)?;
                        }
                        continue;
                    }
                    _ => {}
                }
                if name_str.ends_with(".lmdb") && matches!(rules, Rules::Backup(_)) {
                    log::warn!("{} has no data.mdb; not copied", path.display());
                    continue;
                }
            }
            plan.items.push(Item::Dir {
                rel: rel_child.clone(),
                meta,
            });
            walk(src, &rel_child, child_rules, false, plan)?;
        } else if ft.is_file() {
            if rel.as_os_str().is_empty()
                && (name_str == MANIFEST_NAME || name_str == crate::engine::manifest::VERIFIED_MARK)
            {
                log::debug!("skipping an old manifest {}", path.display());
                continue;
            }
            plan.items.push(Item::File {
                rel: rel_child,
                meta,
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| unreadable(&path, e))?;
            plan.items.push(Item::Symlink {
                rel: rel_child,
                target,
                meta,
            });
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "device"
            };
            log::debug!("skipping {kind} {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(plan: &Plan) -> Vec<String> {
        plan.items
            .iter()
            .map(|i| match i {
                Item::Dir { rel, .. } => format!("d {}", rel.display()),
                Item::File { rel, .. } => format!("f {}", rel.display()),
                Item::Symlink { rel, .. } => format!("l {}", rel.display()),
                Item::Env { rel, .. } => format!("e {}", rel.display()),
            })
            .collect()
    }

    #[test]
    fn skip_rules_match_synapse_tool() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        for d in [
            "slabs/cell.lmdb",
            "slabs/empty.lmdb",
            "tmp/x.lmdb",
            "axon/tmp",
            "backups/old",
            "sockets",
            "layers/abc/layer_v2.lmdb",
            "layers/skipme/nodeedits.lmdb",
        ] {
            fs::create_dir_all(s.join(d)).unwrap();
        }
        for f in [
            "cell.guid",
            "slabs/cell.lmdb/data.mdb",
            "slabs/cell.lmdb/lock.mdb",
            "tmp/x.lmdb/data.mdb",
            "axon/tmp/f",
            "backups/old/f",
            "layers/abc/layer_v2.lmdb/data.mdb",
            "layers/skipme/nodeedits.lmdb/data.mdb",
            "synbackup-manifest.json",
        ] {
            fs::write(s.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("cell.guid", s.join("link")).unwrap();
        std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
        let set = compile_skipdirs(&["layers/skip*".to_string()]).unwrap();
        let plan = scan(s, &set).unwrap();
        assert_eq!(
            rels(&plan),
            vec![
                "d axon",
                "f cell.guid",
                "d layers",
                "d layers/abc",
                "e layers/abc/layer_v2.lmdb",
                "l link",
                "d slabs",
                "e slabs/cell.lmdb",
            ]
        );
    }

    #[test]
    fn whole_keeps_everything_but_sockets_and_locks() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        for d in [
            "slabs/cell.lmdb",
            "backups/b1/slabs/cell.lmdb",
            "tmp",
            "axon",
            "x.lmdb",
        ] {
            fs::create_dir_all(s.join(d)).unwrap();
        }
        for f in [
            "cell.guid",
            "slabs/cell.lmdb/data.mdb",
            "slabs/cell.lmdb/lock.mdb",
            "slabs/cell.lmdb/notes",
            "backups/b1/slabs/cell.lmdb/data.mdb",
            "tmp/f",
            "axon/blob",
        ] {
            fs::write(s.join(f), b"x").unwrap();
        }
        std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
        assert_eq!(
            rels(&scan_whole(s).unwrap()),
            vec![
                "d axon",
                "f axon/blob",
                "d backups",
                "d backups/b1",
                "d backups/b1/slabs",
                "d backups/b1/slabs/cell.lmdb",
                "f backups/b1/slabs/cell.lmdb/data.mdb",
                "f cell.guid",
                "d slabs",
                "e slabs/cell.lmdb",
                "f slabs/cell.lmdb/notes",
                "d tmp",
                "f tmp/f",
                "d x.lmdb",
            ]
        );
    }

    #[test]
    fn dot_prefixed_patterns_work_too() {
        let set = compile_skipdirs(&["./layers".to_string()]).unwrap();
        assert!(skip_dir(Path::new("layers"), "layers", &set));
        assert!(!skip_dir(Path::new("slabs"), "slabs", &set));
    }
}
