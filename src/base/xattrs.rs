// SPDX-License-Identifier: Apache-2.0
//! Extended attributes: `user.*`, POSIX ACLs (`system.posix_acl_access`,
//! `system.posix_acl_default`), SELinux labels and the rest of `security.*` and
//! `trusted.*`, read from a source and set on its copy, through open descriptors.
//!
//! The `xattr` crate (fd-based `FileExt`, over rustix) does the system calls; nix does
//! not wrap them. `user.*` and the POSIX ACLs must be kept: failing to set one is
//! an error naming the file. `security.*`, `trusted.*` and other `system.*` ones (an
//! NFSv4 ACL means nothing on a local disk) are best effort (an unprivileged run, or
//! a filesystem or LSM that refuses a label): skipped, logged once per run. Attributes the copy has that the source has not (a default ACL
//! inherited from the destination's directory) are removed, so the copy carries
//! exactly the source's.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use xattr::FileExt;

/// Attribute name to value.
pub(crate) type Attrs = BTreeMap<OsString, Vec<u8>>;

/// Whether an attribute is one we must keep (`user.*`, the POSIX ACLs); the others
/// are best effort.
pub(crate) fn required(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b"user.") || b.starts_with(b"system.posix_acl_")
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

/// Every attribute of an open file or directory (none where the filesystem has none).
pub(crate) fn read(file: &File, path: &Path) -> Result<Attrs> {
    let mut out = Attrs::new();
    let names = match file.list_xattr() {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(out),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list xattrs of {}", path.display()))
        }
    };
    for name in names {
        match file.get_xattr(&name) {
            Ok(Some(v)) => {
                out.insert(name, v);
            }
            Ok(None) => {} // removed meanwhile
            Err(e) if !required(&name) => {
                skipped_once(path, &name, &e);
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read xattr {} of {}",
                        name.to_string_lossy(),
                        path.display()
                    )
                })
            }
        }
    }
    Ok(out)
}

static WARNED: AtomicBool = AtomicBool::new(false);

fn skipped_once(path: &Path, name: &OsString, e: &io::Error) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "cannot keep xattr {} of {} ({e}); security.* and trusted.* attributes that cannot be kept are skipped (this is logged once)",
            name.to_string_lossy(),
            path.display()
        );
    } else {
        log::debug!(
            "xattr {} of {} skipped: {e}",
            name.to_string_lossy(),
            path.display()
        );
    }
}

/// Give the open `file` exactly the attributes `want` (best effort for security.*
/// and trusted.*); returns those it holds afterwards.
pub(crate) fn apply(file: &File, path: &Path, want: &Attrs) -> Result<Attrs> {
    let present = read(file, path)?;
    for name in present.keys() {
        if required(name) && !want.contains_key(name) {
            file.remove_xattr(name).with_context(|| {
                format!(
                    "cannot remove the inherited xattr {} of {}",
                    name.to_string_lossy(),
                    path.display()
                )
            })?;
        }
    }
    let mut kept = Attrs::new();
    for (name, value) in want {
        if present.get(name) == Some(value) {
            kept.insert(name.clone(), value.clone());
            continue;
        }
        match file.set_xattr(name, value) {
            Ok(()) => {
                kept.insert(name.clone(), value.clone());
            }
            Err(e) if !required(name) => skipped_once(path, name, &e),
            Err(e) => {
                let hint = if unsupported(&e) {
                    "; the destination's filesystem does not support it: choose one that does (ext4, xfs, btrfs)"
                } else {
                    ""
                };
                return Err(e).with_context(|| {
                    format!(
                        "cannot set xattr {} on {}{hint}",
                        name.to_string_lossy(),
                        path.display()
                    )
                });
            }
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_xattrs_are_copied_and_inherited_ones_removed() {
        // Under the build tree: ext4 here, where user xattrs work (tmpfs may not).
        let t = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let a = File::create(t.path().join("a")).unwrap();
        a.set_xattr("user.one", b"1").unwrap();
        let b = File::create(t.path().join("b")).unwrap();
        b.set_xattr("user.stray", b"x").unwrap();
        let want = read(&a, &t.path().join("a")).unwrap();
        let kept = apply(&b, &t.path().join("b"), &want).unwrap();
        assert_eq!(kept, want);
        assert_eq!(read(&b, &t.path().join("b")).unwrap(), want);
    }
}
