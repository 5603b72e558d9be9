// SPDX-License-Identifier: Apache-2.0
//! Readers (and the one writer) of the host's kernel interfaces: `/proc/meminfo` and
//! `/proc/sys`.
//!
//! Every function takes the `root` the host's `/proc` lives under, and the parsing is
//! a pure function over `&str`, so tests feed a fixture tree instead of mocking
//! anything (zram-generator's way). Errors name the file and fit on one line.
//!
//! `/proc/meminfo` is parsed by hand rather than with the `procfs` crate: its
//! `Meminfo::from_buf_read` does read from any path, but it requires some twenty
//! fields we never use, reports a bad line as a multi-line "please report this procfs
//! bug" error, and slices field names by byte (a panic on non-ASCII garbage). We need
//! one line of the file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::base::exit::{fail, Code};

/// Longest piece of a bad input line quoted in an error.
const QUOTE_MAX: usize = 60;

/// `MemTotal` of the host under `root`, in bytes.
///
/// A missing, unreadable or garbled `proc/meminfo` is a [`Code::BadPath`] failure
/// whose one-line message names the file.
pub(crate) fn mem_total_bytes(root: &Path) -> Result<u64> {
    let path = root.join("proc/meminfo");
    let text = fs::read_to_string(&path).map_err(|e| {
        fail(
            Code::BadPath,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    parse_meminfo(&text).map_err(|e| fail(Code::BadPath, format!("{}: {e:#}", path.display())))
}

/// The `MemTotal:` line of a `/proc/meminfo` text, in bytes (the kernel writes kB,
/// meaning KiB).
pub(crate) fn parse_meminfo(text: &str) -> Result<u64> {
    let bytes = parse_meminfo_field(text, "MemTotal")?;
    if bytes == 0 {
        bail!("MemTotal is 0");
    }
    Ok(bytes)
}

/// One `FIELD: N kB` line of a `/proc/meminfo` text, in bytes.
pub(crate) fn parse_meminfo_field(text: &str, field: &str) -> Result<u64> {
    let prefix = format!("{field}:");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .ok_or_else(|| anyhow!("no {field} line"))?;
    let bad = || anyhow!("bad {field} line {}, expected `{field}: N kB`", quote(line));
    let mut words = line[prefix.len()..].split_whitespace();
    let (Some(number), Some("kB"), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad());
    };
    let kib: u64 = number.parse().map_err(|_| bad())?;
    kib.checked_mul(1024)
        .ok_or_else(|| anyhow!("{field} {kib} kB is too large"))
}

/// This host's `MemAvailable` in bytes, if it can be read.
pub(crate) fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_field(&text, "MemAvailable").ok()
}

/// Where the value of a sysctl key (`vm.dirty_ratio`) lives under `root`.
pub(crate) fn sysctl_path(root: &Path, key: &str) -> PathBuf {
    root.join("proc/sys").join(key.replace('.', "/"))
}

/// The current value of a numeric sysctl key under `root`.
pub(crate) fn read_sysctl(root: &Path, key: &str) -> Result<u64> {
    let path = sysctl_path(root, key);
    let text = fs::read_to_string(&path).map_err(|e| {
        fail(
            Code::BadPath,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    parse_sysctl_value(&text).map_err(|e| fail(Code::BadPath, format!("{}: {e:#}", path.display())))
}

/// A numeric `/proc/sys` value: one unsigned integer and a newline.
pub(crate) fn parse_sysctl_value(text: &str) -> Result<u64> {
    let t = text.trim();
    t.parse()
        .map_err(|_| anyhow!("expected an unsigned number, found {}", quote(t)))
}

/// Set a numeric sysctl key under `root` (the file must exist: a key the kernel does
/// not have is an error, never a new file).
pub(crate) fn write_sysctl(root: &Path, key: &str, value: u64) -> Result<()> {
    let path = sysctl_path(root, key);
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()))
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (run as root)"
            } else {
                ""
            };
            fail(
                Code::Other,
                format!("cannot write {value} to {}: {e}{hint}", path.display()),
            )
        })
}

/// A piece of untrusted input for a one-line message: escaped, and cut if long.
fn quote(s: &str) -> String {
    let cut: String = s.chars().take(QUOTE_MAX).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "MemTotal:       131910244 kB\nMemFree:         1523412 kB\n\
                        MemAvailable:   98765432 kB\nHugePages_Total:       0\n";

    #[test]
    fn meminfo_fields() {
        let s = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(
            parse_meminfo_field(s, "MemAvailable").unwrap(),
            23_000_000 * 1024
        );
        assert!(parse_meminfo_field("MemTotal: 1 kB\n", "MemAvailable").is_err());
        assert!(parse_meminfo_field("MemAvailable: lots kB\n", "MemAvailable").is_err());
    }

    #[test]
    fn memtotal_in_bytes() {
        assert_eq!(parse_meminfo(REAL).unwrap(), 131910244 * 1024);
        assert_eq!(parse_meminfo("Foo: 1 kB\nMemTotal: 8 kB").unwrap(), 8192);
    }

    #[test]
    fn garbled_meminfo_is_refused() {
        for bad in [
            "",
            "MemFree: 5 kB\n",
            "MemTotal: lots kB\n",
            "MemTotal: 5\n",
            "MemTotal: 5 MB\n",
            "MemTotal: 5 kB extra\n",
            "MemTotal: -5 kB\n",
            "MemTotal: 0 kB\n",
            "MemTotal: 99999999999999999999 kB\n",
            "MemTotal: 18014398509481984 kB\n",
        ] {
            let e = parse_meminfo(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{bad:?}: {e}");
            assert!(e.contains("MemTotal"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn long_garbage_is_quoted_short_on_one_line() {
        let line = format!("MemTotal: {}\u{1b}\n", "x".repeat(500));
        let e = parse_meminfo(&line).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        assert!(!e.contains('\u{1b}'));
    }

    #[test]
    fn sysctl_values() {
        assert_eq!(parse_sysctl_value("20\n").unwrap(), 20);
        assert!(parse_sysctl_value("").is_err());
        assert!(parse_sysctl_value("4096\t8192\n").is_err());
        assert_eq!(
            sysctl_path(Path::new("/r"), "vm.dirty_ratio"),
            Path::new("/r/proc/sys/vm/dirty_ratio")
        );
    }

    #[test]
    fn read_and_write_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let vm = t.path().join("proc/sys/vm");
        fs::create_dir_all(&vm).unwrap();
        fs::write(vm.join("dirty_ratio"), "20\n").unwrap();
        write_sysctl(t.path(), "vm.dirty_ratio", 4).unwrap();
        assert_eq!(fs::read_to_string(vm.join("dirty_ratio")).unwrap(), "4\n");
        assert_eq!(read_sysctl(t.path(), "vm.dirty_ratio").unwrap(), 4);
        let e = write_sysctl(t.path(), "vm.nonexistent", 1).unwrap_err();
        assert!(format!("{e:#}").contains("proc/sys/vm/nonexistent"));
        assert!(!vm.join("nonexistent").exists());
        let e = read_sysctl(t.path(), "vm.swappiness").unwrap_err();
        assert_eq!(crate::base::exit::code_of(&e), Code::BadPath);
    }
}
