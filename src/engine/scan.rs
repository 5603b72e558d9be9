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
//! skipped too (as is its `synbackup-verified` marker), and so is a top-level
//! `synbackup-certs/` (a backup's copy of the certificate directory, left by a
//! restore done by hand with `cp -a`: synbackup's own, never the service's), in a
//! maintenance window too (the copy stays in the window's kept directory).
//!
//! Symlinks: Synapse's tool follows a link to a file or to an environment and copies
//! the data. So do we, for every link that is absolute or resolves outside the tree
//! (a layer on another disk, an `sslkey.pem` from a secrets mount): the target is
//! copied in the link's place (an environment behind a link is an environment:
//! compacted, counted, hashed; a directory is walked) and the manifest says so. Only
//! a relative link that resolves inside the tree is kept as a link (it stays valid
//! in the backup). A dangling link, or one to a directory already being walked (a
//! loop), is kept as a link with a warning. (Synapse's tool also copies links inside
//! the tree as files, makes a link to a plain directory an empty directory, and
//! drops dangling links: we keep, walk and keep them.)
//!
//! A maintenance window walks the whole directory instead (`scan_whole`): it is not
//! a backup, the copy becomes the live service. No skip rule applies; environments
//! are still compacted, except under `tmp/`, `backups/` and `sockets/` (Synapse's own
//! backups and scratch, not environments the service runs on), which are copied
//! file by file as they are. Every symlink stays a symlink (following one would
//! give the live service a private copy of data that lives elsewhere). Only
//! sockets (the service recreates `sock`), fifos, devices and `lock.mdb` of
//! compacted environments are left out.

use std::fs::{self, Metadata};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::base::exit::{fail, Code};
use crate::engine::manifest::CERTS_DIR;

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
    /// Links whose targets were copied in their place: `(rel, target)`.
    pub(crate) followed: Vec<(PathBuf, PathBuf)>,
}

impl Plan {
    fn note_followed(&mut self, rel: &Path, link: Option<PathBuf>) {
        if let Some(target) = link {
            self.followed.push((rel.to_path_buf(), target));
        }
    }

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
    let root = fs::canonicalize(src).map_err(|e| unreadable(src, e))?;
    walk(
        src,
        &root,
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
    let root = fs::canonicalize(src).map_err(|e| unreadable(src, e))?;
    walk(src, &root, Path::new(""), Rules::Whole, false, &mut plan)?;
    Ok(plan)
}

/// The metadata to copy a symlink at `path` by: its target's when the target is
/// to be copied in its place, None when the link itself is kept.
fn follow(root: &Path, dir: &Path, path: &Path, target: &Path) -> Option<Metadata> {
    let resolved = fs::canonicalize(path).ok();
    let Some(resolved) = resolved else {
        log::warn!(
            "{} is a dangling symlink (to {}); kept as a link",
            path.display(),
            target.display()
        );
        return None;
    };
    if target.is_relative() && resolved.starts_with(root) {
        return None; // stays valid in the backup
    }
    let meta = fs::metadata(path).ok()?;
    let walking = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if meta.is_dir() && walking.starts_with(&resolved) {
        log::warn!(
            "{} links to {}, a directory that contains it; kept as a link",
            path.display(),
            resolved.display()
        );
        return None;
    }
    Some(meta)
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
fn walk(
    src: &Path,
    root: &Path,
    rel: &Path,
    rules: Rules,
    in_env: bool,
    plan: &mut Plan,
) -> Result<()> {
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
        let mut meta = fs::symlink_metadata(&path).map_err(|e| unreadable(&path, e))?;
        let mut link = None;
        // A window keeps every link as it is.
        if meta.file_type().is_symlink() && matches!(rules, Rules::Backup(_)) {
            let target = fs::read_link(&path).map_err(|e| unreadable(&path, e))?;
            if let Some(followed) = follow(root, &dir, &path, &target) {
                log::info!(
                    "{} is a symlink to {}: copying its data",
                    path.display(),
                    target.display()
                );
                link = Some(target);
                meta = followed;
            }
        }
        let ft = meta.file_type();
        let name_str = name.to_string_lossy();
        if in_env && (name_str == "data.mdb" || name_str == "lock.mdb") {
            continue;
        }
        if ft.is_dir() {
            if rel.as_os_str().is_empty() && name_str == CERTS_DIR {
                log::info!(
                    "leaving out {}: a backup's copy of a certificate directory, not part of the service",
                    path.display()
                );
                continue;
            }
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
                        plan.note_followed(&rel_child, link);
                        plan.items.push(Item::Env {
                            rel: rel_child.clone(),
                            meta,
                            data,
                        });
                        if matches!(rules, Rules::Whole) {
                            // Anything beside the environment's own files is kept.
                            walk(src, root, &rel_child, Rules::Verbatim, true, plan)?;
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
            plan.note_followed(&rel_child, link);
            plan.items.push(Item::Dir {
                rel: rel_child.clone(),
                meta,
            });
            walk(src, root, &rel_child, child_rules, false, plan)?;
        } else if ft.is_file() {
            if rel.as_os_str().is_empty() && crate::engine::manifest::is_own_file(&name_str) {
                log::debug!("skipping an old manifest {}", path.display());
                continue;
            }
            plan.note_followed(&rel_child, link);
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
            "synbackup-certs/hosts",
            "slabs/synbackup-certs",
        ] {
            fs::create_dir_all(s.join(d)).unwrap();
        }
        for f in [
            "synbackup-certs/hosts/h.key",
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
                "d slabs/synbackup-certs",
            ]
        );
    }

    #[test]
    fn links_out_of_the_tree_are_followed_links_inside_kept() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("svc");
        let out = t.path().join("elsewhere");
        fs::create_dir_all(s.join("a")).unwrap();
        fs::create_dir_all(out.join("env")).unwrap();
        fs::create_dir_all(out.join("plain")).unwrap();
        fs::write(out.join("env/data.mdb"), b"x").unwrap();
        fs::write(out.join("plain/f"), b"x").unwrap();
        fs::write(out.join("key.pem"), b"x").unwrap();
        fs::write(s.join("cell.guid"), b"x").unwrap();
        let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, s.join(name));
        link(&out.join("env"), "env.lmdb").unwrap();
        link(&out.join("plain"), "plain").unwrap();
        link(Path::new("../elsewhere/key.pem"), "key.pem").unwrap();
        link(Path::new("cell.guid"), "inside").unwrap();
        link(&s.join("cell.guid"), "absolute-inside").unwrap();
        link(Path::new("/nonexistent/x"), "dangling").unwrap();
        link(&s, "a/loop").unwrap();
        let plan = scan(&s, &GlobSet::empty()).unwrap();
        assert_eq!(
            rels(&plan),
            vec![
                "d a",
                "l a/loop",
                "f absolute-inside",
                "f cell.guid",
                "l dangling",
                "e env.lmdb",
                "l inside",
                "f key.pem",
                "d plain",
                "f plain/f",
            ]
        );
        let followed: Vec<_> = plan.followed.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(
            followed,
            ["absolute-inside", "env.lmdb", "key.pem", "plain"].map(PathBuf::from)
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
            "synbackup-certs",
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
        // Links stay links in a window, even those a backup follows.
        std::os::unix::fs::symlink("/etc/hostname", s.join("outside")).unwrap();
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
                "l outside",
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
