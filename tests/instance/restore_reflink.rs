// SPDX-License-Identifier: Apache-2.0
//! Reflinks, for real (issue 36): on a loop-mounted XFS (reflinks on by default),
//! a restore's copy and a drill's scratch copy share the backup's extents
//! (FIEMAP's shared flag, as `filefrag -v` prints it; the free space does not go
//! down by the data), and a byte flipped in the backup still fails the restore
//! with exit 6, nothing swapped. Needs root, `mkfs.xfs` (xfsprogs) and a kernel
//! that loop-mounts; skipped, saying so, only when the mount is refused. LMDB only:
//! in the quick tier.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::*;

/// An XFS filesystem on a sparse image in /var/tmp, loop-mounted; unmounted and
/// removed when dropped.
struct Xfs {
    _t: tempfile::TempDir,
    mnt: PathBuf,
}

impl Xfs {
    /// None (with the reason printed) when this kernel or container cannot
    /// loop-mount.
    fn mount() -> Option<Xfs> {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let img = t.path().join("xfs.img");
        let mnt = t.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        fs::File::create(&img).unwrap().set_len(400 << 20).unwrap();
        let o = command("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .output()
            .expect("mkfs.xfs (xfsprogs) is needed for the reflink tests");
        assert!(o.status.success(), "mkfs.xfs: {}", stderr(&o));
        let o = command("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        if !o.status.success() {
            eprintln!(
                "SKIPPED: this kernel or container cannot loop-mount an XFS image ({}): reflinks untested",
                stderr(&o).trim()
            );
            return None;
        }
        Some(Xfs { _t: t, mnt })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let ok = command("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = command("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Whether every extent of `file` holding data is shared (FIEMAP_EXTENT_SHARED).
fn shared(file: &Path) -> bool {
    let o = command("filefrag").arg("-v").arg(file).output().unwrap();
    assert!(o.status.success(), "filefrag: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .filter(|l| l.contains(':'))
        .collect();
    !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
}

/// Bytes free on the filesystem of `p` (after a sync: XFS counts delayed
/// allocations late).
fn avail(p: &Path) -> u64 {
    assert!(command("sync").arg("-f").arg(p).status().unwrap().success());
    let o = command("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// An instance `c0` over a service directory on `root`, and one backup of it.
fn backed_up(root: &Path) -> (PathBuf, PathBuf) {
    let src = root.join("svc");
    fake_service(&src, 3000);
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
    let o = run_at(root, &["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let name = names(&backups)
        .into_iter()
        .find(|n| n.starts_with("c0_"))
        .unwrap();
    (src, backups.join(name))
}

#[test]
fn on_xfs_a_restore_shares_the_backups_extents_and_still_catches_a_flipped_byte() {
    let Some(x) = Xfs::mount() else {
        return;
    };
    let root = &x.mnt;
    let (src, backup) = backed_up(root);
    let data: u64 = data_files(&backup)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(data > 4 << 20, "a backup too small to tell: {data}");
    let free = avail(root);
    let o = bin_at(root)
        .args(["-vv", "restore", "--instance", "c0"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            " bytes by reflink, 0 read, hashed and written with O_DIRECT, 0 by copy_file_range"
        ),
        "{}",
        stderr(&o)
    );
    let restored = data_files(&src);
    assert_eq!(restored.len(), 3, "{restored:?}");
    for f in &restored {
        assert!(
            shared(f),
            "{} shares no extent with the backup",
            f.display()
        );
    }
    let used = free.saturating_sub(avail(root));
    assert!(
        used < data / 2,
        "the restore took {used} bytes for {data} bytes of environments: not reflinked"
    );
    assert_eq!(
        hash_tree(&src)
            .into_iter()
            .filter(|(k, _)| k.ends_with("data.mdb"))
            .collect::<Vec<_>>(),
        hash_tree(&backup)
            .into_iter()
            .filter(|(k, _)| k.ends_with("data.mdb"))
            .collect::<Vec<_>>()
    );

    // A byte flipped in the backup (copy-on-write: the restored copy keeps its
    // own): the reflinked copy is hashed as read back, and fails.
    fs::write(src.join("marker"), "the directory as it was").unwrap();
    let before = hash_tree(&src);
    let beside = names(root);
    flip_byte(&backup.join("layers/abc/layer_v2.lmdb/data.mdb"));
    let o = bin_at(root)
        .args(["restore", "--instance", "c0"])
        .arg(&backup)
        .output()
        .unwrap();
    assert_fails(&o, 6, "failed verification, not restored");
    assert!(
        stderr(&o).contains("layer_v2.lmdb/data.mdb: BLAKE3 mismatch"),
        "{}",
        stderr(&o)
    );
    assert_eq!(hash_tree(&src), before, "the directory changed");
    assert_eq!(names(root), beside, "a staging copy was left behind");
}

#[test]
fn on_xfs_a_drills_scratch_copy_shares_the_backups_extents() {
    let Some(x) = Xfs::mount() else {
        return;
    };
    let root = &x.mnt;
    let (_src, backup) = backed_up(root);
    // Held once the scratch copy is made, before any server starts (none is
    // needed to see the copy).
    let mut child = bin_at(root)
        .args(["drill", "--dir"])
        .arg(&backup)
        .args(["--python", "/usr/bin/python3", "--module", "none"])
        .env("SYNBACKUP_FAULT", "hold:drill-scratch-made")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut child, "holding at drill-scratch-made");
    let parent = backup.parent().unwrap();
    let scratch: Vec<String> = names(parent)
        .into_iter()
        .filter(|n| n.contains(".synbackup-drill.") && !n.ends_with(".log"))
        .collect();
    assert_eq!(scratch.len(), 1, "{:?}", names(parent));
    let copies = data_files(&parent.join(&scratch[0]));
    assert_eq!(copies.len(), 3, "{copies:?}");
    for f in &copies {
        assert!(
            shared(f),
            "{} shares no extent with the backup",
            f.display()
        );
    }
    nix_kill(child.id() as i32, libc::SIGTERM).unwrap();
    child.wait().unwrap();
    assert!(
        !names(parent)
            .iter()
            .any(|n| n.contains(".synbackup-drill.")),
        "the scratch copy is removed: {:?}",
        names(parent)
    );
}
