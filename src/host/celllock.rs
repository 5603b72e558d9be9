// SPDX-License-Identifier: Apache-2.0
//! Whether a Synapse cell runs on a directory, whether or not it answers yet: the
//! exclusive POSIX lock every cell takes on its `cell.guid` early in its boot and
//! holds until it exits (`Cell._getCellLock`, `fcntl.lockf(..., LOCK_EX |
//! LOCK_NB)`: "Cannot start the cortex, another process is already running it"),
//! on 2.256 and 3.7.0 alike (a 3.x read-only cell takes none). It is taken before
//! any slab is opened and long before the unix socket listens: a cell that holds
//! it but does not answer on `sock` is booting (or hung).
//!
//! Asked with `F_GETLK` on a descriptor opened read-only: the kernel answers with
//! the holder's pid without taking anything, so the cell's own lock is never
//! disturbed (a POSIX lock is dropped when its owner closes any descriptor of the
//! file, but only locks this process holds, and it holds none).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The pid of the process that holds the lock on `dir/cell.guid` (None: no cell
/// runs there, or the file is missing or unreadable).
pub(crate) fn cell_lock_holder(dir: &Path) -> Option<u32> {
    let f = File::open(dir.join("cell.guid")).ok()?;
    // SAFETY: a zeroed flock is a valid argument; F_GETLK only writes into it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: F_GETLK on an open descriptor with a valid flock pointer.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 || fl.l_type == libc::F_UNLCK as libc::c_short || fl.l_pid <= 0 {
        return None;
    }
    Some(fl.l_pid as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn sees_a_lock_held_by_another_process() {
        let t = tempfile::tempdir().unwrap();
        let guid = t.path().join("cell.guid");
        std::fs::write(&guid, "0123\n").unwrap();
        assert_eq!(cell_lock_holder(t.path()), None);
        // python3's fcntl.lockf is what Synapse calls; flock(1) would take a BSD
        // lock, which F_GETLK does not see.
        let mut child = Command::new("python3")
            .arg("-c")
            .arg("import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('locked', flush=True); time.sleep(60)")
            .arg(&guid)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        assert_eq!(cell_lock_holder(t.path()), Some(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(cell_lock_holder(t.path()), None);
    }
}
