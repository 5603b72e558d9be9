// SPDX-License-Identifier: Apache-2.0
//! `restore`'s copy (issue 36): each byte of the backup read once from the device,
//! a damaged byte caught as it is copied (the backup marked damaged, nothing
//! swapped), an interrupted copy leaving the directory as it was and no staging
//! copy, and a finished one equal to the backup byte for byte with its owners and
//! modes. LMDB only: in the quick tier.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

/// A service directory, an instance `c0` over it, and one backup of it, on a disk
/// filesystem: /var/tmp (/tmp may be a tmpfs, whose reads are no device's).
struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    backup: PathBuf,
}

impl Setup {
    fn new(entries: usize) -> Setup {
        Setup::new_with(entries, |_| {})
    }

    /// [`Setup::new`], `prepare` given the service directory before the backup.
    fn new_with(entries: usize, prepare: impl FnOnce(&Path)) -> Setup {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let root = t.path().to_path_buf();
        let src = root.join("svc");
        fake_service(&src, entries);
        prepare(&src);
        let backups = root.join("backups");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/c0.conf"),
            format!(
                "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\n",
                src.display(),
                backups.display()
            ),
        )
        .unwrap();
        let o = run_at(&root, &["run", "c0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let name = names(&backups)
            .into_iter()
            .find(|n| n.starts_with("c0_"))
            .unwrap();
        Setup {
            _t: t,
            backup: backups.join(name),
            root,
            src,
        }
    }

    /// `restore --instance c0 BACKUP`, not yet started.
    fn restore(&self) -> std::process::Command {
        let mut c = bin_at(&self.root);
        c.args(["restore", "--instance", "c0"]).arg(&self.backup);
        c
    }

    /// The names beside the service directory (a staging copy would be one).
    fn beside(&self) -> Vec<String> {
        names(&self.root)
    }
}

/// Every regular file under `dir`, walked.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files(&e.path()));
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// The backup's pages dropped from the page cache (they are clean: the backup
/// synced them), so that what the restore reads comes from the device.
fn evict(dir: &Path) {
    use std::os::fd::AsRawFd;
    for p in files(dir) {
        let f = fs::File::open(&p).unwrap();
        f.sync_all().unwrap();
        // SAFETY: a valid descriptor; advice only.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0, "fadvise {}", p.display());
    }
}

/// Bytes of the files under `dir` in the page cache (`fincore`).
fn cached_bytes(dir: &Path) -> u64 {
    let o = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .args(files(dir))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().parse::<u64>().unwrap())
        .sum()
}

/// Bytes of data the files under `dir` hold (holes are not data).
fn data_bytes(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().blocks() * 512)
        .sum()
}

#[test]
fn a_restore_reads_each_byte_of_the_backup_once() {
    let s = Setup::new(4000);
    let data = data_bytes(&s.backup);
    assert!(data > 8 << 20, "a backup too small to count: {data}");
    evict(&s.backup);
    // Held before the swap, the copy and every check done: count what it read.
    let release = s.root.join("release");
    let mut child = s
        .restore()
        .env("SYNBACKUP_FAULT", "hold:restore-before-swap")
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut child, "holding at restore-before-swap");
    let read = read_bytes(child.id());
    // Read once, then left: a restore of gigabytes keeps none of the backup in
    // the page cache (its large files were written with O_DIRECT and dropped once
    // checked, where the filesystem takes it).
    let cached = cached_bytes(&s.backup);
    fs::write(&release, "").unwrap();
    assert!(child.wait().unwrap().success());
    eprintln!(
        "the backup holds {data} bytes of data; the restore read {read} from the device \
         and left {cached} of them cached"
    );
    assert!(
        cached < data / 10,
        "{cached} bytes of the backup's {data} still in the page cache after the restore"
    );
    // The count sees the device (else this test proves nothing) ...
    assert!(
        read >= data * 8 / 10,
        "read {read} of {data}: were the pages not evicted?"
    );
    // ... and each byte once: a verify before the copy read them twice more.
    assert!(
        read <= data + data / 5 + (1 << 20),
        "read {read} bytes for {data} bytes of data: more than once"
    );
}

#[test]
fn a_byte_flipped_in_the_backup_fails_the_restore_marks_it_damaged_and_swaps_nothing() {
    let s = Setup::new(300);
    fs::write(s.src.join("marker"), "the directory as it was").unwrap();
    let before = hash_tree(&s.src);
    // One byte of one environment's data.mdb, in its data, the size unchanged.
    let victim = s.backup.join("layers/abc/layer_v2.lmdb/data.mdb");
    let size = fs::metadata(&victim).unwrap().len();
    flip_byte(&victim);
    assert_eq!(fs::metadata(&victim).unwrap().len(), size);
    let beside = s.beside();
    let o = s.restore().output().unwrap();
    assert_fails(&o, 6, "failed verification, not restored");
    let err = stderr(&o);
    assert!(
        err.contains("layer_v2.lmdb/data.mdb: BLAKE3 mismatch"),
        "{err}"
    );
    assert_eq!(hash_tree(&s.src), before, "the directory changed");
    assert_eq!(s.beside(), beside, "a staging copy was left behind");
    assert!(s.backup.join("synbackup-damaged").is_file());
    let o = run_at(&s.root, &["list", "c0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed[0]["state"], "damaged", "{listed}");
}

#[test]
fn a_restore_interrupted_mid_copy_leaves_the_directory_and_no_staging_copy() {
    let s = Setup::new(300);
    fs::write(s.src.join("marker"), "the directory as it was").unwrap();
    let before = hash_tree(&s.src);
    let beside = s.beside();

    // A failure half way through the copy.
    let o = s
        .restore()
        .env("SYNBACKUP_FAULT", "restore-mid-copy")
        .output()
        .unwrap();
    assert_fails(&o, 1, "injected fault at restore-mid-copy");
    assert_eq!(hash_tree(&s.src), before, "the directory changed");
    assert_eq!(s.beside(), beside, "a staging copy was left behind");

    // Stopped by the operator (SIGTERM) half way through the copy.
    let mut child = s
        .restore()
        .env("SYNBACKUP_FAULT", "hold:restore-mid-copy")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut child, "holding at restore-mid-copy");
    let staging: Vec<String> = s
        .beside()
        .into_iter()
        .filter(|n| n.starts_with(".svc.synbackup-restoring."))
        .collect();
    assert_eq!(staging.len(), 1, "the copy is under way: {:?}", s.beside());
    assert!(
        !files(&s.root.join(&staging[0])).is_empty(),
        "held after a file was copied"
    );
    nix_kill(child.id() as i32, libc::SIGTERM).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(143), "{st:?}");
    assert_eq!(hash_tree(&s.src), before, "the directory changed");
    assert_eq!(s.beside(), beside, "a staging copy was left behind");
}

#[test]
fn a_restored_tree_is_the_backup_byte_for_byte_with_its_owners_and_modes() {
    // Owners and modes of the service's user, and a sparse file, in the backup.
    let s = Setup::new_with(300, |src| {
        for (rel, uid, gid, mode) in [
            ("slabs/cell.lmdb/data.mdb", 4242, 4343, 0o640),
            ("sslkey.pem", 4242, 4242, 0o600),
            ("layers", 4242, 4343, 0o750),
        ] {
            let p = src.join(rel);
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        }
    });
    let o = s.restore().output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // b3sum of both trees: every file of the backup (but synbackup's own) equal.
    let b3 = |dir: &Path| -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for p in files(dir) {
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("synbackup-") {
                continue;
            }
            let o = command("b3sum").arg("--no-names").arg(&p).output().unwrap();
            assert!(o.status.success());
            out.insert(rel, String::from_utf8(o.stdout).unwrap());
        }
        out
    };
    let want = b3(&s.backup);
    assert!(want.contains_key("layers/abc/layer_v2.lmdb/data.mdb"));
    assert_eq!(b3(&s.src), want);
    // Owners, modes and times of every file and directory; holes stay holes.
    let meta = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode(), m.mtime(), m.mtime_nsec())
    };
    for rel in want.keys().map(PathBuf::from).chain(
        ["slabs", "layers", "layers/abc", "slabs/cell.lmdb"]
            .iter()
            .map(PathBuf::from),
    ) {
        assert_eq!(
            meta(&s.src.join(&rel)),
            meta(&s.backup.join(&rel)),
            "{}",
            rel.display()
        );
    }
    assert_eq!(meta(&s.src.join("sslkey.pem")).0, 4242);
    let sparse = fs::metadata(s.src.join("layers/abc/sparse.bin")).unwrap();
    assert_eq!(sparse.len(), 32 << 20);
    assert!(sparse.blocks() * 512 < (1 << 20), "the holes were filled");
}

/// A backup holding sparse files (far larger than their data) on
/// a file system with room for the data: restored there, holes kept (before,
/// the space check counted the holes and refused, exit 4). The copy crosses file
/// systems, where `copy_file_range` may refuse: read and written instead.
#[test]
fn a_sparse_backup_restores_where_its_data_fits_but_not_its_holes() {
    let s = Setup::new(300);
    let apparent: u64 = files(&s.backup)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let small = s.root.join("small");
    let _fs = Tmpfs::mount(&small, "size=16m");
    assert!(apparent > 16 << 20, "not sparse enough: {apparent}");
    let dir = small.join("svc");
    let o = bin()
        .arg("restore")
        .arg(&s.backup)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let want = hash_tree(&s.backup);
    let got = hash_tree(&dir);
    for (rel, digest) in &got {
        assert_eq!(want.get(rel), Some(digest), "{rel}");
    }
    assert!(got.contains_key("layers/abc/layer_v2.lmdb/data.mdb"));
}
