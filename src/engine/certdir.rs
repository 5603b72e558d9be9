// SPDX-License-Identifier: Apache-2.0
//! The service's certificate directory (`~/.syn/certs` of its user, or
//! `$SYN_CERT_DIR`), carried in a backup. It lives outside the service directory,
//! so a host rebuilt from the service directory alone loses its CA, host and user
//! keys; a backup given a certificate directory holds a copy of it under
//! `synbackup-certs/` ([`CERTS_DIR`], a name Synapse does not read: the backup
//! still starts as the service), listed in the manifest (`cert_dir`, and its
//! files, directories and links beside the others), so `verify` checks it.
//!
//! It is walked with the backup's rules (a link out of the tree is copied as data)
//! and copied by the same workers (hashed, owners, modes, times, xattrs kept,
//! fsynced); then every private key (`*.key`, `*.p12`, `*.pfx`, or a file holding
//! a PEM `PRIVATE KEY`) is given at most 0600: easycert writes keys 0644 inside a
//! 0700 directory, and a backup root may be read by more people than that directory.
//! A certificate directory inside the service directory is already in the backup
//! and is not carried twice.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::base::digest::Algo;
use crate::base::durable::Durability;
use anyhow::Result;

use crate::base::exit::{fail, Code};
use crate::base::{fsutil, xattrs};
use crate::engine::manifest::{
    self, path_of, CertDirInfo, DirEntry, FileEntry, LinkEntry, CERTS_DIR,
};
use crate::engine::progress::Progress;
use crate::engine::scan::{self, Item};
use crate::engine::workers::{self, rel_str, Done, Task};

/// A certificate directory to carry, walked.
pub(crate) struct CertPlan {
    /// Its canonical path.
    pub(crate) dir: PathBuf,
    meta: fs::Metadata,
    plan: scan::Plan,
    /// Bytes its files take.
    pub(crate) bytes: u64,
}

/// What was copied, as the manifest lists it (paths under [`CERTS_DIR`]).
pub(crate) struct Carried {
    pub(crate) info: CertDirInfo,
    pub(crate) files: Vec<FileEntry>,
    pub(crate) dirs: Vec<DirEntry>,
    pub(crate) symlinks: Vec<LinkEntry>,
    pub(crate) bytes: u64,
}

fn bad(msg: String) -> anyhow::Error {
    fail(Code::BadPath, msg)
}

/// Check and walk the certificate directory `dir` for a backup of `src` to `dst`;
/// `None` when it is inside `src` (already in the backup).
pub(crate) fn plan_cert_dir(dir: &Path, src: &Path, dst: &Path) -> Result<Option<CertPlan>> {
    let canon = fs::canonicalize(dir).map_err(|e| {
        bad(format!(
            "certificate directory {} cannot be used: {e}; give the service's certificate directory (--cert-dir, SYNBACKUP_CERT_DIR)",
            dir.display()
        ))
    })?;
    let meta =
        fs::metadata(&canon).map_err(|e| bad(format!("cannot stat {}: {e}", canon.display())))?;
    if !meta.is_dir() {
        return Err(bad(format!(
            "certificate directory {} is not a directory; give the service's certificate directory (--cert-dir, SYNBACKUP_CERT_DIR)",
            dir.display()
        )));
    }
    if canon.starts_with(src) {
        log::info!(
            "the certificate directory {} is inside {}: it is in the backup already",
            canon.display(),
            src.display()
        );
        return Ok(None);
    }
    if src.starts_with(&canon) || dst.starts_with(&canon) {
        return Err(bad(format!(
            "certificate directory {} contains the service directory {} or the destination {}; give the directory that holds only cas/, hosts/, users/",
            canon.display(),
            src.display(),
            dst.display()
        )));
    }
    let plan = scan::scan(&canon, &scan::compile_skipdirs(&[])?)?;
    if let Some(Item::Env { rel, .. }) = plan.envs().next() {
        return Err(bad(format!(
            "{} holds an LMDB environment ({}): it is not a certificate directory",
            canon.display(),
            rel.display()
        )));
    }
    let bytes = plan
        .items
        .iter()
        .map(|i| match i {
            Item::File { meta, .. } => meta.len(),
            _ => 0,
        })
        .sum();
    Ok(Some(CertPlan {
        dir: canon,
        meta,
        plan,
        bytes,
    }))
}

/// Whether the file at `path` holds a private key: by its name, or a PEM
/// `PRIVATE KEY` block in its first 64 KiB.
pub(crate) fn holds_private_key(path: &Path) -> Result<bool> {
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "key" | "p12" | "pfx"));
    if by_name {
        return Ok(true);
    }
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let needle = b"PRIVATE KEY-----";
    Ok(head.windows(needle.len()).any(|w| w == needle))
}

/// The path under [`CERTS_DIR`] of `rel` (relative to the certificate directory).
fn carried_rel(rel: &Path) -> PathBuf {
    Path::new(CERTS_DIR).join(rel)
}

/// Copy the walked certificate directory into `tmp/synbackup-certs` (the backup's
/// temporary); private keys end at most 0600.
pub(crate) fn copy_cert_dir(
    p: &CertPlan,
    tmp: &Path,
    algo: Algo,
    progress: &Progress,
    sync: &Durability,
) -> Result<Carried> {
    let top = tmp.join(CERTS_DIR);
    make_private_dir(&top)?;
    let mut symlinks = Vec::new();
    for item in &p.plan.items {
        match item {
            Item::Dir { rel, .. } | Item::Env { rel, .. } => make_private_dir(&top.join(rel))?,
            Item::Symlink { rel, target, meta } => {
                let at = top.join(rel);
                std::os::unix::fs::symlink(target, &at).map_err(|e| fsutil::write_error(&at, e))?;
                fsutil::apply_meta_link(&at, meta)?;
                symlinks.push(LinkEntry {
                    path: rel_str(&carried_rel(rel)),
                    target: rel_str(target),
                    followed: false,
                });
            }
            Item::File { .. } => {}
        }
    }
    symlinks.extend(p.plan.followed.iter().map(|(rel, target)| LinkEntry {
        path: rel_str(&carried_rel(rel)),
        target: rel_str(target),
        followed: true,
    }));
    let tasks = p
        .plan
        .items
        .iter()
        .filter_map(|i| match i {
            Item::File { rel, meta } => {
                Some(Task::file(rel.clone(), meta.clone(), &p.plan.followed))
            }
            _ => None,
        })
        .collect();
    let mut files = Vec::new();
    let mut bytes = 0;
    for done in workers::run_tasks(tasks, 1, &p.dir, &top, algo, progress, sync, false)? {
        if let Done::File {
            mut file, written, ..
        } = done
        {
            let rel = path_of(&file.path);
            narrow_key(&top.join(&rel), &p.dir.join(&rel), &mut file)?;
            file.path = rel_str(&carried_rel(&rel));
            bytes += written;
            files.push(file);
        }
    }
    let mut dirs = Vec::new();
    for item in p.plan.items.iter().rev() {
        if let Item::Dir { rel, meta } = item {
            dirs.push(dir_meta(
                &p.dir.join(rel),
                &top.join(rel),
                meta,
                &carried_rel(rel),
            )?);
        }
    }
    dirs.push(dir_meta(&p.dir, &top, &p.meta, Path::new(CERTS_DIR))?);
    fsutil::fsync_dir(tmp)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    symlinks.sort_by(|a, b| a.path.cmp(&b.path));
    log::info!(
        "carrying the certificate directory {} ({} files) in the backup as {CERTS_DIR}/",
        p.dir.display(),
        files.len()
    );
    Ok(Carried {
        info: CertDirInfo {
            source: manifest::name_key(p.dir.as_os_str()),
            path: CERTS_DIR.to_string(),
            uid: p.meta.uid(),
            gid: p.meta.gid(),
        },
        files,
        dirs,
        symlinks,
        bytes,
    })
}

fn make_private_dir(p: &Path) -> Result<()> {
    fs::create_dir(p).map_err(|e| fsutil::write_error(p, e))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A copied private key (`copy`, of `source`) gets at most 0600 (its entry's mode
/// and xattrs follow: chmod rewrites an ACL's mask).
fn narrow_key(copy: &Path, source: &Path, entry: &mut FileEntry) -> Result<()> {
    if entry.mode & 0o077 == 0 || !holds_private_key(copy)? {
        return Ok(());
    }
    let mode = entry.mode & 0o600;
    log::info!(
        "{}: a private key, {:04o} in the backup ({:04o} here)",
        source.display(),
        mode,
        entry.mode
    );
    let f = File::open(copy).map_err(|e| bad(format!("cannot open {}: {e}", copy.display())))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| fsutil::write_error(copy, e))?;
    entry.xattrs = manifest::xattr_keys(&xattrs::read(&f, copy)?);
    f.sync_all().map_err(|e| fsutil::write_error(copy, e))?;
    entry.mode = mode;
    Ok(())
}

/// A copied directory's owner, mode, times and xattrs, and its manifest entry.
fn dir_meta(src: &Path, copy: &Path, meta: &fs::Metadata, rel: &Path) -> Result<DirEntry> {
    let attrs = workers::source_xattrs(src)?;
    let applied = fsutil::copy_meta_dir(copy, meta, &attrs)?;
    Ok(DirEntry {
        path: rel_str(rel),
        mode: applied.mode,
        xattrs: manifest::xattr_keys(&applied.xattrs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_name_or_content() {
        let t = tempfile::tempdir().unwrap();
        let w = |n: &str, c: &str| {
            let p = t.path().join(n);
            fs::write(&p, c).unwrap();
            p
        };
        assert!(holds_private_key(&w("a.key", "")).unwrap());
        assert!(holds_private_key(&w("u.p12", "")).unwrap());
        assert!(holds_private_key(&w("k.pem", "-----BEGIN RSA PRIVATE KEY-----\nx\n")).unwrap());
        assert!(!holds_private_key(&w("c.crt", "-----BEGIN CERTIFICATE-----\n")).unwrap());
    }
}
