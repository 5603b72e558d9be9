// SPDX-License-Identifier: Apache-2.0
//! Bad input: one error line naming the path and what to do, a documented exit
//! code, and nothing left behind (the temporary removed, the source untouched).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn missing_source() {
    let t = tempfile::tempdir().unwrap();
    let o = run(&[&"backup", &t.path().join("nope"), &t.path().join("b")]);
    assert_fails(&o, 3, "nope");
    assert_eq!(names(t.path()), Vec::<String>::new());
}

#[test]
fn source_that_is_not_a_synapse_directory() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("plain")).unwrap();
    let o = run(&[&"backup", &t.path().join("plain"), &t.path().join("b")]);
    assert_fails(&o, 3, "not a Synapse service directory (no cell.guid)");
    assert_eq!(names(t.path()), vec!["plain"]);
}

#[test]
fn destination_inside_source() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 10);
    let before = hash_tree(&src);
    let o = run(&[&"backup", &src, &src.join("backups2/x")]);
    assert_fails(&o, 3, "is inside the source");
    assert_eq!(before, hash_tree(&src));
}

#[test]
fn destination_not_empty() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 10);
    fs::create_dir(t.path().join("b")).unwrap();
    fs::write(t.path().join("b/keep"), "mine").unwrap();
    let o = run(&[&"backup", &src, &t.path().join("b")]);
    assert_fails(&o, 3, "exists and is not empty");
    assert_eq!(names(&t.path().join("b")), vec!["keep"]);
    assert_eq!(fs::read_to_string(t.path().join("b/keep")).unwrap(), "mine");
}

#[test]
fn truncated_data_mdb() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 2000);
    let data = src.join("layers/abc/layer_v2.lmdb/data.mdb");
    fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(3 * 4096)
        .unwrap();
    let o = run(&[&"backup", &src, &t.path().join("b")]);
    assert_fails(&o, 3, "layer_v2.lmdb/data.mdb is truncated");
    assert_eq!(names(t.path()), vec!["svc"]);
}

#[test]
fn corrupt_data_mdb() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 200);
    let data = src.join("slabs/cell.lmdb/data.mdb");
    // Garbage over both meta pages.
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.write_all_at(&[0xA5u8; 8192], 0).unwrap();
    let o = run(&[&"backup", &src, &t.path().join("b")]);
    assert_fails(&o, 3, "slabs/cell.lmdb/data.mdb cannot be opened as LMDB");
    assert_eq!(names(t.path()), vec!["svc"]);
}

#[test]
fn not_enough_space_fails_before_writing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 20000);
    let small = t.path().join("small");
    let _fs = Tmpfs::mount(&small, "size=1m");
    let o = run(&[&"backup", &src, &small.join("b")]);
    assert_fails(&o, 4, "not enough space in");
    let line = &error_lines(&o)[0];
    assert!(
        line.contains("is free") && line.contains("needs"),
        "both numbers: {line}"
    );
    assert_eq!(
        names(&small),
        Vec::<String>::new(),
        "nothing may be left on the full filesystem"
    );
}

#[test]
fn full_disk_during_the_copy_removes_the_partial_copy() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 200);
    // The preflight counts bytes; a tmpfs with plenty of bytes but only a dozen
    // inodes runs out (ENOSPC) in the middle of the copy, deterministically.
    let small = t.path().join("small");
    let _fs = Tmpfs::mount(&small, "size=64m,nr_inodes=12");
    let o = run(&[&"backup", &src, &small.join("b")]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(error_lines(&o).len(), 1, "{}", stderr(&o));
    assert!(
        error_lines(&o)[0].contains("no space left"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        names(&small),
        Vec::<String>::new(),
        "the partial copy must be removed"
    );
}

#[test]
fn unreadable_file() {
    assert!(
        is_root(),
        "this test switches to user nobody: run the suite as root (CI does)"
    );
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 20);
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    command("chown")
        .args(["-R", "65534:65534"])
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap();
    // One file nobody may not read.
    std::os::unix::fs::chown(src.join("sslkey.pem"), Some(0), Some(0)).unwrap();
    let o = command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_synbackup"))
        .arg("backup")
        .arg(&src)
        .arg(out.join("b"))
        .output()
        .unwrap();
    assert_fails(&o, 3, "sslkey.pem");
    assert!(error_lines(&o)[0].contains("fix its permissions"));
    assert_eq!(names(&out), Vec::<String>::new());
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&[&"backup"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[&"backup", &"a", &"b", &"--freeze", &"sometimes"]);
    assert_eq!(o.status.code(), Some(2));
}
