// SPDX-License-Identifier: Apache-2.0
//! The harness: the tests run as threads of one process, so what one test opens
//! must not leak into the programs another test starts.

use std::fs;
use std::path::Path;

use crate::util::*;

/// The descriptors of this process open on `path`, with whether each is
/// close-on-exec.
fn descriptors_on(path: &Path) -> Vec<(i32, bool)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        if target != path {
            continue;
        }
        let fd: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 {
            out.push((fd, flags & libc::FD_CLOEXEC != 0));
        }
    }
    out
}

/// An environment held open by this process (LMDB opens data.mdb without
/// O_CLOEXEC), and a plain descriptor opened without it: a program started through
/// `command` keeps neither. Before `command`, a program one test started (only the
/// test Cortexes closed what they inherited; `storm.py wait` and synbackup runs did
/// not) kept another test's data.mdb open, and that test's restore was refused as
/// "in use by python" (a red `tests/run-all`, twice).
#[test]
fn a_started_program_keeps_no_descriptor_a_test_has_open() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("env");
    make_env(&dir, 7, 10);
    let env = lmdb::Environment::new().open(&dir).unwrap();
    let data = fs::canonicalize(dir.join("data.mdb")).unwrap();
    let plain_path = t.path().join("plain");
    fs::write(&plain_path, "x").unwrap();
    // SAFETY: open(2) on a path we made, without O_CLOEXEC on purpose.
    let plain = unsafe {
        let c = std::ffi::CString::new(plain_path.to_str().unwrap()).unwrap();
        libc::open(c.as_ptr(), libc::O_RDONLY)
    };
    assert!(plain >= 0);
    // The premise: both are inherited by a program started the plain way.
    let held = descriptors_on(&data);
    assert!(
        held.iter().any(|(_, cloexec)| !cloexec),
        "LMDB's data.mdb is close-on-exec here ({held:?}): this test shows nothing"
    );

    let o = command("sh")
        .args(["-c", "ls -l /proc/self/fd/"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for p in [&data, &fs::canonicalize(&plain_path).unwrap()] {
        assert!(
            !listing.contains(p.to_str().unwrap()),
            "the child has {} open:\n{listing}",
            p.display()
        );
    }
    // SAFETY: closing the descriptor this test opened.
    unsafe { libc::close(plain) };
    drop(env);
}

/// Every program a test starts goes through `command`: one `Command::new` in the
/// tests, the one inside it.
#[test]
fn every_test_starts_its_programs_through_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut found = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).unwrap();
                let needle = ["Command", "::new("].concat();
                for (i, line) in text.lines().enumerate() {
                    if line.contains(&needle) {
                        found.push(format!("{}:{}", p.display(), i + 1));
                    }
                }
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "start programs with util::command: {found:?}"
    );
    assert!(found[0].contains("util/mod.rs"), "{found:?}");
}
