// SPDX-License-Identifier: Apache-2.0
//! `restore`'s copy (issue 36): each byte of the backup read once from the device,
//! a damaged byte caught as it is copied (the backup marked damaged, nothing
//! swapped), an interrupted copy leaving the directory as it was and no staging
//! copy, and a finished one equal to the backup byte for byte with its owners and
//! modes. LMDB only: in the quick tier.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

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

    /// The staging copies beside the service directory.
    fn staging(&self) -> Vec<String> {
        self.beside()
            .into_iter()
            .filter(|n| n.starts_with(".svc.synbackup-restoring."))
            .collect()
    }

    /// A restore started with `env` and held at the fault point `point` (it
    /// waits there for a signal, or for the file `SYNBACKUP_FAULT_RELEASE` in
    /// `env` names).
    fn held_at(&self, point: &str, env: &[(&str, &str)]) -> std::process::Child {
        let mut c = self.restore();
        c.envs(env.iter().copied())
            .env("SYNBACKUP_FAULT", format!("hold:{point}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        stderr_until(&mut child, &format!("holding at {point}"));
        child
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
    let o = command("fincore")
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
    // Through the page cache (a backup small against the memory), and around it
    // (O_DIRECT: a backup of more than a quarter of it).
    for mode in ["never", "always"] {
        evict(&s.backup);
        // Held before the swap, the copy and every check done: count what it read.
        let release = s.root.join(format!("release-{mode}"));
        let mut child = s.held_at(
            "restore-before-swap",
            &[
                ("SYNBACKUP_COPY_DIRECT", mode),
                ("SYNBACKUP_FAULT_RELEASE", release.to_str().unwrap()),
            ],
        );
        let read = read_bytes(child.id());
        let cached = cached_bytes(&s.backup);
        fs::write(&release, "").unwrap();
        assert!(child.wait().unwrap().success());
        eprintln!(
            "{mode}: the backup holds {data} bytes of data; the restore read {read} from the \
             device and left {cached} of them cached"
        );
        // The count sees the device (else this test proves nothing) ...
        assert!(
            read >= data * 8 / 10,
            "{mode}: read {read} of {data}: were the pages not evicted?"
        );
        // ... and each byte once: a verify before the copy read them twice more.
        assert!(
            read <= data + data / 5 + (1 << 20),
            "{mode}: read {read} bytes for {data} bytes of data: more than once"
        );
        if mode == "always" {
            // Read once, then left: a restore around the page cache keeps none of
            // the backup there (its large files dropped once copied and checked).
            assert!(
                cached < data / 10,
                "{cached} bytes of the backup's {data} still in the page cache after the restore"
            );
        }
    }
}

#[test]
fn a_byte_flipped_in_any_file_of_the_backup_fails_the_restore_before_anything_changes() {
    // Every file: the small ones (copied by copy_file_range and read back), the
    // large ones (hashed in the buffer written with O_DIRECT) in their middle and
    // in their last byte (the padded last block), the manifest itself.
    let s = Setup::new(4000);
    fs::write(s.src.join("marker"), "the directory as it was").unwrap();
    let before = hash_tree(&s.src);
    let beside = s.beside();
    let mark = s.backup.join("synbackup-damaged");
    let mut tried = 0;
    let mut large = 0;
    for f in files(&s.backup) {
        let len = fs::metadata(&f).unwrap().len();
        // The verified mark records a past verify; it is not restored.
        if len == 0 || f.ends_with("synbackup-verified") {
            continue;
        }
        let mut spots = vec![len / 2];
        if len >= 1 << 20 {
            large += 1;
            spots.push(len - 1);
        }
        let modes: &[&str] = if len >= 1 << 20 {
            &["always", "never"]
        } else {
            &["never"]
        };
        for (at, mode) in spots
            .into_iter()
            .flat_map(|at| modes.iter().map(move |m| (at, *m)))
        {
            flip_byte_at(&f, at);
            // --force: a flipped cell.guid is otherwise refused as another cell
            // (exit 3) before any byte is checked.
            let o = s
                .restore()
                .arg("--force")
                .env("SYNBACKUP_COPY_DIRECT", mode)
                .output()
                .unwrap();
            let shown = format!("{} at {at} ({mode})", f.display());
            assert_eq!(o.status.code(), Some(6), "{shown}: {}", stderr(&o));
            assert_eq!(hash_tree(&s.src), before, "{shown}: the directory changed");
            assert_eq!(
                s.beside(),
                beside,
                "{shown}: a staging copy was left behind"
            );
            flip_byte_at(&f, at);
            if mark.exists() {
                fs::remove_file(&mark).unwrap();
            }
            tried += 1;
        }
    }
    assert!(
        large >= 2,
        "only {large} files of 1 MiB or more: the direct copy untried"
    );
    eprintln!("{tried} flipped bytes, each refused");
    // As it was, the backup restores.
    let o = s.restore().output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
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
    let mut child = s.held_at("restore-mid-copy", &[]);
    let staging = s.staging();
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
fn a_restore_stopped_in_the_middle_of_a_file_leaves_the_directory_as_it_was() {
    // Large enough that its big files are copied in several ranges (4 MiB).
    let s = Setup::new(4000);
    fs::write(s.src.join("marker"), "the directory as it was").unwrap();
    let before = hash_tree(&s.src);
    let beside = s.beside();

    // A failure half way through a file, through the page cache.
    let o = s
        .restore()
        .env("SYNBACKUP_COPY_DIRECT", "never")
        .env("SYNBACKUP_FAULT", "copy-mid-file")
        .output()
        .unwrap();
    assert_fails(&o, 1, "injected fault at copy-mid-file");
    assert_eq!(hash_tree(&s.src), before, "the directory changed");
    assert_eq!(s.beside(), beside, "a staging copy was left behind");

    // SIGTERM there, around the page cache (O_DIRECT, a block on its way to the
    // device): the copy is removed, the directory untouched.
    let mut child = s.held_at("copy-mid-file", &[("SYNBACKUP_COPY_DIRECT", "always")]);
    assert_eq!(s.staging().len(), 1, "the copy is under way");
    nix_kill(child.id() as i32, libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_eq!(hash_tree(&s.src), before, "the directory changed");
    assert_eq!(s.beside(), beside, "a staging copy was left behind");

    // SIGKILL there (or the power lost): nothing can clean up, the directory is
    // still untouched, and the next restore removes the unfinished copy first.
    let mut child = s.held_at("copy-mid-file", &[("SYNBACKUP_COPY_DIRECT", "always")]);
    nix_kill(child.id() as i32, libc::SIGKILL).unwrap();
    child.wait().unwrap();
    assert_eq!(hash_tree(&s.src), before, "the directory changed");
    let left = s.staging();
    assert_eq!(left.len(), 1, "{:?}", s.beside());
    let o = s.restore().output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the unfinished copy of a restore that no longer runs"),
        "{}",
        stderr(&o)
    );
    assert_eq!(s.staging(), Vec::<String>::new(), "{left:?} was left");
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
