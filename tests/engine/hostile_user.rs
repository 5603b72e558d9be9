// SPDX-License-Identifier: Apache-2.0
//! Root backs up a tree the service's user owns, and that user does not play fair
//! (issue 32): a file swapped for a link after the scan is never copied through it;
//! what root writes is never readable by others. Run as root against a directory
//! owned by `nobody` (65534).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};

use crate::util::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A small service tree at `dir/src` (its owner given away by the caller), or
/// `None` when not root (the test is skipped: the service's user is nobody).
fn service_tree(dir: &Path) -> Option<std::path::PathBuf> {
    if !is_root() {
        eprintln!("skipped: needs root (the service's user is nobody)");
        return None;
    }
    let src = dir.join("src");
    fake_service(&src, 20);
    Some(src)
}

/// Give the whole tree at `dir` to `nobody`, as a service's directory is its user's.
fn chown_tree(dir: &Path) {
    let st = command("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A root-only secret outside the service's tree.
fn root_secret(dir: &Path) -> std::path::PathBuf {
    let secret = dir.join("secret");
    fs::write(&secret, "ROOT ONLY SECRET\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    secret
}

/// `backup SRC DST` held right after its scan (until `release` exists), its stderr
/// in `log`: what the service's user may do in that moment, a test does.
fn backup_held_after_scan(src: &Path, dst: &Path, release: &Path, log: &Path) -> Child {
    let child = bin()
        .env("SYNBACKUP_FAULT", "hold:after-scan")
        .env("SYNBACKUP_FAULT_RELEASE", release)
        .args(["backup", "--freeze", "never"])
        .arg(src)
        .arg(dst)
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(60, || fs::read_to_string(log)
            .unwrap()
            .contains("holding at after-scan")),
        "{}",
        fs::read_to_string(log).unwrap()
    );
    child
}

#[test]
fn a_file_swapped_for_a_link_after_the_scan_is_not_copied_through_it() {
    let t = tempfile::tempdir().unwrap();
    let Some(src) = service_tree(t.path()) else {
        return;
    };
    fs::write(src.join("notes.txt"), "the user's notes\n").unwrap();
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/more.txt"), "more notes\n").unwrap();
    chown_tree(&src);
    let secret = root_secret(t.path());
    for (swapped, by) in [("notes.txt", "file"), ("sub/more.txt", "parent")] {
        let dst = t.path().join(format!("dst-{by}"));
        let release = t.path().join(format!("release-{by}"));
        let log = t.path().join(format!("stderr-{by}"));
        let mut child = backup_held_after_scan(&src, &dst, &release, &log);
        // What the service's user can do between the scan and the copy.
        let moved = t.path().join(format!("moved-{by}"));
        if by == "file" {
            fs::remove_file(src.join(swapped)).unwrap();
            std::os::unix::fs::symlink(&secret, src.join(swapped)).unwrap();
        } else {
            // The parent directory swapped for a link to a directory holding a
            // file of that name that root alone may read.
            let decoy = t.path().join("decoy");
            fs::create_dir_all(&decoy).unwrap();
            fs::copy(&secret, decoy.join("more.txt")).unwrap();
            fs::rename(src.join("sub"), &moved).unwrap();
            std::os::unix::fs::symlink(&decoy, src.join("sub")).unwrap();
        }
        fs::write(&release, "").unwrap();
        let st = child.wait().unwrap();
        let err = fs::read_to_string(&log).unwrap();
        assert_eq!(st.code(), Some(3), "{by}: exit 3 (unusable source)\n{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("synbackup: error:"))
            .unwrap_or_else(|| panic!("{by}: no error line:\n{err}"));
        assert!(
            line.contains(&format!(
                "{} changed between the scan and the copy",
                src.join(swapped).display()
            )),
            "{by}: {line}"
        );
        assert!(!dst.exists(), "{by}: nothing published");
        // Put the tree back for the next case.
        fs::remove_file(src.join(swapped.split('/').next().unwrap())).unwrap();
        if by == "file" {
            fs::write(src.join(swapped), "the user's notes\n").unwrap();
        } else {
            fs::rename(&moved, src.join("sub")).unwrap();
        }
        chown_tree(&src);
    }
}

/// A directory swapped for a link after the scan: its metadata (xattrs, ACLs) is
/// not read through the link; the run fails naming it.
#[test]
fn a_directory_swapped_for_a_link_after_the_scan_fails_the_run() {
    let t = tempfile::tempdir().unwrap();
    let Some(src) = service_tree(t.path()) else {
        return;
    };
    fs::create_dir(src.join("empty")).unwrap();
    chown_tree(&src);
    let elsewhere = t.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let (dst, release, log) = (
        t.path().join("dst"),
        t.path().join("release"),
        t.path().join("log"),
    );
    let mut child = backup_held_after_scan(&src, &dst, &release, &log);
    fs::remove_dir(src.join("empty")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, src.join("empty")).unwrap();
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    let err = fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "{} changed between the scan and the copy",
            src.join("empty").display()
        )),
        "{err}"
    );
    assert!(!dst.exists());
}

/// The marker the root-only environment holds.
const ENV_SECRET: &[u8] = b"ROOT ONLY ENV SECRET";

/// A root-only LMDB environment at `dir` (0700, its data.mdb 0600) whose one
/// record holds [`ENV_SECRET`].
fn root_secret_env(dir: &Path) {
    use lmdb::Transaction;
    fs::create_dir_all(dir).unwrap();
    let env = lmdb::Environment::new()
        .set_map_size(1 << 20)
        .open(dir)
        .unwrap();
    let db = env.open_db(None).unwrap();
    let mut txn = env.begin_rw_txn().unwrap();
    txn.put(db, b"key", &ENV_SECRET, lmdb::WriteFlags::empty())
        .unwrap();
    txn.commit().unwrap();
    drop(env);
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(dir.join("data.mdb"), fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every file under `dir` (not under one of `except`) whose bytes hold `marker`.
fn files_holding(dir: &Path, marker: &[u8], except: &[&Path]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if except.iter().any(|x| p.starts_with(x)) {
            continue;
        }
        if t.is_dir() {
            out.extend(files_holding(&p, marker, except));
        } else if t.is_file()
            && fs::read(&p)
                .unwrap()
                .windows(marker.len())
                .any(|w| w == marker)
        {
            out.push(p);
        }
    }
    out
}

/// An environment's `data.mdb`, or the environment directory itself, swapped after
/// the scan for a link to a root-only environment: LMDB opens nothing through the
/// link (the directory is held as the scan saw it, and LMDB follows no link at a
/// file's name), the run fails (exit 3) naming it, and the secret is nowhere.
#[test]
fn an_environment_swapped_for_a_link_after_the_scan_is_not_copied_through_it() {
    let t = tempfile::tempdir().unwrap();
    let Some(src) = service_tree(t.path()) else {
        return;
    };
    chown_tree(&src);
    let secret = t.path().join("root-env");
    root_secret_env(&secret);
    let env = src.join("slabs/cell.lmdb");
    for by in ["data.mdb", "directory"] {
        let dst = t.path().join(format!("dst-{by}"));
        let release = t.path().join(format!("release-{by}"));
        let log = t.path().join(format!("stderr-{by}"));
        let mut child = backup_held_after_scan(&src, &dst, &release, &log);
        let moved = t.path().join(format!("moved-{by}"));
        let swapped = if by == "data.mdb" {
            fs::rename(env.join("data.mdb"), &moved).unwrap();
            std::os::unix::fs::symlink(secret.join("data.mdb"), env.join("data.mdb")).unwrap();
            env.join("data.mdb")
        } else {
            fs::rename(&env, &moved).unwrap();
            std::os::unix::fs::symlink(&secret, &env).unwrap();
            env.clone()
        };
        fs::write(&release, "").unwrap();
        let st = child.wait().unwrap();
        let err = fs::read_to_string(&log).unwrap();
        assert_eq!(st.code(), Some(3), "{by}: exit 3 (unusable source)\n{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("synbackup: error:"))
            .unwrap_or_else(|| panic!("{by}: no error line:\n{err}"));
        assert!(
            line.contains(&format!(
                "{} changed between the scan and the copy",
                swapped.display()
            )) || line.contains(&format!(
                "{} changed between the scan and the copy",
                env.join("data.mdb").display()
            )),
            "{by}: {line}"
        );
        assert!(!dst.exists(), "{by}: nothing published");
        assert!(!err.contains("ROOT ONLY"), "{by}: {err}");
        assert_eq!(
            files_holding(t.path(), ENV_SECRET, &[&secret, &src, &moved]),
            Vec::<std::path::PathBuf>::new(),
            "{by}: the root-only environment's record was copied"
        );
        fs::remove_file(&swapped).unwrap();
        fs::rename(&moved, &swapped).unwrap();
    }
}

/// A `lock.mdb` swapped for a link to a root-only file after the scan: LMDB, which
/// opens a lock file read-write and writes its header into it, does not open it
/// through the link; the file is untouched and the run fails naming it (exit 3).
#[test]
fn a_lock_file_swapped_for_a_link_is_not_opened_through_it() {
    let t = tempfile::tempdir().unwrap();
    let Some(src) = service_tree(t.path()) else {
        return;
    };
    chown_tree(&src);
    let victim = root_secret(t.path());
    let before = fs::read(&victim).unwrap();
    let lock = src.join("slabs/cell.lmdb/lock.mdb");
    let (dst, release, log) = (
        t.path().join("dst"),
        t.path().join("release"),
        t.path().join("log"),
    );
    let mut child = backup_held_after_scan(&src, &dst, &release, &log);
    let _ = fs::remove_file(&lock);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    let err = fs::read_to_string(&log).unwrap();
    let after = fs::read(&victim).unwrap();
    assert!(
        after == before,
        "root's file was written through the link: {} bytes now, {} before, beginning {:02x?}",
        after.len(),
        before.len(),
        &after[..after.len().min(8)]
    );
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "{} changed between the scan and the copy (a symlink is now in its place)",
            lock.display()
        )),
        "{err}"
    );
    assert!(!dst.exists());
}
