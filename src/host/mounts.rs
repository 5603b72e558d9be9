// SPDX-License-Identifier: Apache-2.0
//! Mount points, from `/proc/self/mountinfo`: a service directory that is its own
//! mount (a dedicated volume, a bind mount) cannot be renamed (`EBUSY`), so the
//! window and restore, which swap directories by rename, check this before they
//! stop anything. Bind mounts of a directory of the same file system have the same
//! `st_dev` as their parent, so comparing devices is not enough: the kernel's list
//! is read. The parser is a pure function.

use std::fs;
use std::path::{Path, PathBuf};

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points listed in a mountinfo text (its fifth field).
pub(crate) fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| PathBuf::from(unescape(m))))
        .collect()
}

/// The mount at `dir` itself (canonical path), if it is a mount point: its line's
/// mount point as the kernel lists it.
pub(crate) fn mount_at(dir: &Path) -> Option<PathBuf> {
    let canon = fs::canonicalize(dir).ok()?;
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mount_points(&text).into_iter().find(|m| *m == canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 8:1 /vol/c0 /srv/my\\040c0 rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
        assert_eq!(
            parse_mount_points(text),
            vec![PathBuf::from("/"), PathBuf::from("/srv/my c0")]
        );
        assert_eq!(mount_at(Path::new("/")), Some(PathBuf::from("/")));
    }
}
