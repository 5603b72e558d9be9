// SPDX-License-Identifier: Apache-2.0
//! What a service directory is stored on: the file system type and source from
//! `/proc/self/mountinfo`, and whether the block device under it is rotational
//! (`/sys/dev/block/MAJ:MIN/queue/rotational`, or its parent disk's for a
//! partition).
//!
//! The deployment guide says a Cortex must not live on a mechanical disk or on NFS
//! (EFS included); `status` and the metrics report both so that the advice is
//! checked, not just written down. Readers take the root the host's `/proc` and
//! `/sys` live under; the parser is a pure function over `&str`.

use std::path::{Path, PathBuf};

/// The mount a path lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub(crate) mount_point: PathBuf,
    pub(crate) fstype: String,
    pub(crate) source: String,
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

impl Mount {
    /// NFS of any version (EFS is NFS 4.1).
    pub(crate) fn is_network(&self) -> bool {
        matches!(
            self.fstype.as_str(),
            "nfs" | "nfs4" | "cifs" | "smb3" | "9p" | "fuse.sshfs" | "ceph" | "glusterfs"
        )
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(octal) {
            let n = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push((n & 0xff) as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` (absolute, resolved) lives on: the longest mount point that
/// is a prefix of it (the last such line wins, as mounts stack).
pub(crate) fn parse_mountinfo(text: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || fields.len() < dash + 3 {
            continue;
        }
        let Some((maj, min)) = fields[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape(fields[4]));
        if !path.starts_with(&mount_point) {
            continue;
        }
        let longer = match &best {
            None => true,
            Some(b) => mount_point.as_os_str().len() >= b.mount_point.as_os_str().len(),
        };
        if longer {
            best = Some(Mount {
                mount_point,
                fstype: fields[dash + 1].to_string(),
                source: unescape(fields[dash + 2]),
                major,
                minor,
            });
        }
    }
    best
}

/// The mount `path` lives on, from `ROOT/proc/self/mountinfo`.
pub(crate) fn mount_of(root: &Path, path: &Path) -> Option<Mount> {
    let path = std::fs::canonicalize(path).ok()?;
    let text = std::fs::read_to_string(root.join("proc/self/mountinfo")).ok()?;
    parse_mountinfo(&text, &path)
}

/// Whether the block device MAJ:MIN spins (None: not a block device, or unknown).
pub(crate) fn rotational(root: &Path, major: u32, minor: u32) -> Option<bool> {
    let dev = root.join(format!("sys/dev/block/{major}:{minor}"));
    // A partition has no queue/ of its own: its disk is the parent directory.
    for dir in [dev.clone(), dev.join("..")] {
        if let Ok(text) = std::fs::read_to_string(dir.join("queue/rotational")) {
            return Some(text.trim() == "1");
        }
    }
    None
}

/// The most one readahead(2) call of a file on block device MAJ:MIN reads, in bytes:
/// the kernel caps each call at the larger of the device's readahead window
/// (`queue/read_ahead_kb`) and its largest request (`queue/max_sectors_kb`), and
/// silently drops the rest of the range (None: not a block device, or unknown).
pub(crate) fn readahead_limit(root: &Path, major: u32, minor: u32) -> Option<u64> {
    let dev = root.join(format!("sys/dev/block/{major}:{minor}"));
    let kib = |dir: &Path, name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join("queue").join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    for dir in [dev.clone(), dev.join("..")] {
        if let (Some(ra), Some(req)) = (kib(&dir, "read_ahead_kb"), kib(&dir, "max_sectors_kb")) {
            return Some(ra.max(req) << 10);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
40 22 0:45 / /data rw,relatime shared:20 - nfs4 fs-1.efs.example:/ rw,vers=4.1
41 40 8:17 / /data/my\\040disk rw - xfs /dev/sdb1 rw
";

    #[test]
    fn the_longest_mount_point_wins() {
        let m = parse_mountinfo(MOUNTINFO, Path::new("/data/cortex00")).unwrap();
        assert_eq!((m.fstype.as_str(), m.major, m.minor), ("nfs4", 0, 45));
        assert!(m.is_network());
        let m = parse_mountinfo(MOUNTINFO, Path::new("/data/my disk/c0")).unwrap();
        assert_eq!(m.fstype, "xfs");
        assert_eq!(m.mount_point, PathBuf::from("/data/my disk"));
        let m = parse_mountinfo(MOUNTINFO, Path::new("/srv/c0")).unwrap();
        assert_eq!(m.fstype, "ext4");
        assert!(!m.is_network());
        // "/database" is not under "/data".
        assert_eq!(
            parse_mountinfo(MOUNTINFO, Path::new("/database"))
                .unwrap()
                .fstype,
            "ext4"
        );
    }

    #[test]
    fn a_partition_reads_its_disk() {
        let t = tempfile::tempdir().unwrap();
        let disk = t.path().join("sys/devices/sdb");
        std::fs::create_dir_all(disk.join("sdb1")).unwrap();
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        std::fs::write(disk.join("queue/rotational"), "1\n").unwrap();
        std::fs::create_dir_all(t.path().join("sys/dev/block")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdb1"), t.path().join("sys/dev/block/8:17")).unwrap();
        assert_eq!(rotational(t.path(), 8, 17), Some(true));
        assert_eq!(rotational(t.path(), 0, 45), None);
        // The readahead limit is the larger of the two, from the disk too.
        assert_eq!(readahead_limit(t.path(), 8, 17), None);
        std::fs::write(disk.join("queue/read_ahead_kb"), "128\n").unwrap();
        std::fs::write(disk.join("queue/max_sectors_kb"), "512\n").unwrap();
        assert_eq!(readahead_limit(t.path(), 8, 17), Some(512 << 10));
        std::fs::write(disk.join("queue/read_ahead_kb"), "8192\n").unwrap();
        assert_eq!(readahead_limit(t.path(), 8, 17), Some(8 << 20));
        assert_eq!(readahead_limit(t.path(), 0, 45), None);
    }
}
