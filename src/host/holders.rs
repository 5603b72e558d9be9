// SPDX-License-Identifier: Apache-2.0
//! Which processes hold a service directory's LMDB files: open descriptors
//! (`/proc/PID/fd`) and memory maps (`/proc/PID/maps`) of `data.mdb`/`lock.mdb`.
//!
//! A stopped unit is not enough before files are moved: a straggling child, or a
//! process outside the unit, may still map them. Reads take a proc root so tests can
//! feed a fake tree; the maps parser is a pure function.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::base::exit::{fail, Code};

/// A process holding a file under the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) path: PathBuf,
}

fn is_lmdb_file(p: &Path) -> bool {
    matches!(
        p.file_name().and_then(|n| n.to_str()),
        Some("data.mdb") | Some("lock.mdb")
    )
}

/// Paths mapped in a `/proc/PID/maps` text.
pub(crate) fn parse_maps(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            // address perms offset dev inode path (the path may contain spaces)
            let mut it = l.splitn(6, char::is_whitespace).filter(|s| !s.is_empty());
            let path = it.nth(5).or_else(|| l.find(" /").map(|i| &l[i + 1..]))?;
            let path = path.trim().trim_end_matches(" (deleted)");
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Every process (but this one) holding an LMDB file under `dir`.
pub(crate) fn holders(proc_root: &Path, dir: &Path) -> Vec<Holder> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = e.path();
        let comm = fs::read_to_string(base.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut paths: Vec<PathBuf> = Vec::new();
        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            paths.extend(fds.flatten().filter_map(|fd| fs::read_link(fd.path()).ok()));
        }
        if let Ok(maps) = fs::read_to_string(base.join("maps")) {
            paths.extend(parse_maps(&maps));
        }
        if let Some(p) = paths
            .into_iter()
            .find(|p| p.starts_with(dir) && is_lmdb_file(p))
        {
            out.push(Holder {
                pid,
                comm: comm.clone(),
                path: p,
            });
        }
    }
    out
}

/// Wait until no process holds LMDB files under `dir`, or fail after `timeout`.
/// `cancellable`: a SIGINT/SIGTERM ends the wait (not during a rollback).
pub(crate) fn wait_released(dir: &Path, timeout: Duration, cancellable: bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let h = holders(Path::new("/proc"), dir);
        if h.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(
                Code::Service,
                format!(
                    "{} is still in use after {}s: pid {} ({}) holds {}; stop that process",
                    dir.display(),
                    timeout.as_secs(),
                    h[0].pid,
                    h[0].comm,
                    h[0].path.display()
                ),
            ));
        }
        if cancellable {
            crate::base::interrupt::check()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let text = "7f0000000000-7f0000100000 rw-s 00000000 fd:01 1234   /data/c0/slabs/cell.lmdb/data.mdb\n\
                    7f0000100000-7f0000200000 r--p 00000000 00:00 0 \n\
                    7f0000300000-7f0000400000 r--p 00000000 fd:01 99 /data/my dir/lock.mdb (deleted)\n";
        assert_eq!(
            parse_maps(text),
            vec![
                PathBuf::from("/data/c0/slabs/cell.lmdb/data.mdb"),
                PathBuf::from("/data/my dir/lock.mdb")
            ]
        );
    }

    #[test]
    fn fake_proc_tree() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("4242");
        fs::create_dir_all(p.join("fd")).unwrap();
        fs::write(p.join("comm"), "python3\n").unwrap();
        std::os::unix::fs::symlink("/data/c0/slabs/x.lmdb/lock.mdb", p.join("fd/5")).unwrap();
        fs::write(p.join("maps"), "").unwrap();
        let h = holders(t.path(), Path::new("/data/c0"));
        assert_eq!(
            h,
            vec![Holder {
                pid: 4242,
                comm: "python3".into(),
                path: "/data/c0/slabs/x.lmdb/lock.mdb".into()
            }]
        );
        assert!(holders(t.path(), Path::new("/data/c1")).is_empty());
    }
}
