// SPDX-License-Identifier: Apache-2.0
//! The chain of backups and nexus archive from the files alone (no Cortex: the
//! quick tier): `verify --instance`, `status` and `check` on a whole archive, a
//! damaged segment and a gap, and the archive's retention after a prune. The
//! archive is written here with an independent msgpack encoder in the format the
//! archiver writes (`src/pitr/archive.rs`); the backups are real `run` backups
//! whose manifests are given the nexus index a frozen cell would have recorded.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::*;

/// A fake service, instance `c0` and its backup root, with `extra` config lines.
struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    backups: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        fake_service(&root.join("svc"), 50);
        let backups = root.join("backups");
        fs::create_dir_all(root.join("etc")).unwrap();
        let s = Setup {
            _t: t,
            root,
            backups,
        };
        s.config(extra);
        s
    }

    fn config(&self, extra: &str) {
        fs::write(
            self.root.join("etc/c0.conf"),
            format!(
                "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\n{extra}",
                self.root.join("svc").display(),
                self.backups.display()
            ),
        )
        .unwrap();
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        run_at(&self.root, args)
    }

    /// A `run` backup whose manifest records nexus index `index`.
    fn backup_at(&self, index: u64) -> String {
        fs::create_dir_all(&self.backups).unwrap();
        let before = names(&self.backups);
        let o = self.run(&["run", "c0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let name = names(&self.backups)
            .into_iter()
            .find(|n| n.starts_with("c0_") && !before.contains(n))
            .unwrap();
        set_manifest_index(&self.backups.join(&name), index);
        name
    }

    fn archive(&self) -> PathBuf {
        self.backups.join("nexus-archive")
    }
}

/// Record `index` as the frozen cell's nexus index in a backup's manifest, with
/// its body digest (SHA-256 of the file with the digest's value blank) renewed.
fn set_manifest_index(backup: &Path, index: u64) {
    let path = backup.join("synbackup-manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    m["cell"] = serde_json::json!({"iden": "cafe", "nexus_index": index, "role": "leader"});
    m["body_sha256"] = "".into();
    let mut text = serde_json::to_vec_pretty(&m).unwrap();
    text.push(b'\n');
    let digest = openssl::sha::sha256(&text);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let text = String::from_utf8(text).unwrap().replace(
        "\"body_sha256\": \"\"",
        &format!("\"body_sha256\": \"{hex}\""),
    );
    fs::write(&path, text).unwrap();
}

/// One archived record `[offset, received_us, ENTRY]` (ENTRY: a small array).
fn record(offset: u64) -> Vec<u8> {
    let mut b = Vec::new();
    rmp::encode::write_array_len(&mut b, 3).unwrap();
    rmp::encode::write_uint(&mut b, offset).unwrap();
    rmp::encode::write_uint(&mut b, 1_700_000_000_000_000 + offset * 1000).unwrap();
    rmp::encode::write_array_len(&mut b, 2).unwrap();
    rmp::encode::write_str(&mut b, "edit").unwrap();
    rmp::encode::write_uint(&mut b, offset).unwrap();
    b
}

/// Write the archive of offsets `first..=last` as closed segments of `each`
/// entries (with their `.json`), and `open` entries after them in an open one.
pub fn write_archive(dir: &Path, ranges: &[(u64, u64)], open: Option<(u64, u64)>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("archive.json"), r#"{"format": 1, "cell": "cafe"}"#).unwrap();
    for &(first, last) in ranges {
        let bytes: Vec<u8> = (first..=last).flat_map(record).collect();
        let stem = format!("{first:016x}-{last:016x}");
        fs::write(dir.join(format!("{stem}.seg")), &bytes).unwrap();
        let idx = serde_json::json!({
            "first": first, "last": last, "count": last - first + 1,
            "first_received_us": 1_700_000_000_000_000u64 + first * 1000,
            "last_received_us": 1_700_000_000_000_000u64 + last * 1000,
            "blake3": blake3::hash(&bytes).to_hex().to_string(),
        });
        fs::write(dir.join(format!("{stem}.json")), idx.to_string()).unwrap();
    }
    if let Some((first, last)) = open {
        let bytes: Vec<u8> = (first..=last).flat_map(record).collect();
        fs::write(dir.join(format!("open-{first:016x}.seg")), bytes).unwrap();
    }
}

fn seg(first: u64, last: u64) -> String {
    format!("{first:016x}-{last:016x}.seg")
}

/// `status c0` exits 9 with a PROBLEM line naming a segment's BLAKE3 mismatch.
fn assert_status_names_damage(s: &Setup) {
    let o = s.run(&["status", "c0"]);
    assert_eq!(o.status.code(), Some(9), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("PROBLEM") && stdout(&o).contains("does not match its BLAKE3"),
        "{}",
        stdout(&o)
    );
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn verify_status_and_check_follow_the_chain() {
    let s = Setup::new("");
    s.backup_at(120);
    s.backup_at(260);
    write_archive(&s.archive(), &[(100, 199), (200, 299)], Some((300, 340)));

    // Whole: verify --instance says where a restore to a point can start.
    let o = s.run(&["verify", "--instance", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("offsets 100-340 in 3 segments")
            && out.contains("possible from the oldest kept backup"),
        "{out}"
    );
    let o = s.run(&["status", "c0", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st[0]["pitr"]["state"], "on", "{st}");
    assert_eq!(st[0]["pitr"]["chain"]["next"], 341, "{st}");
    assert_eq!(st[0]["pitr"]["problems"], serde_json::json!([]), "{st}");
    let o = s.run(&["check", "c0"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains(" ok ") && l.contains("pitr")),
        "{}",
        stdout(&o)
    );

    // A flipped bit in a closed segment: verify fails (6), status and check too.
    let damaged = s.archive().join(seg(200, 299));
    let good = fs::read(&damaged).unwrap();
    let mut bad = good.clone();
    bad[40] ^= 0x01;
    fs::write(&damaged, &bad).unwrap();
    let o = s.run(&["verify", "--instance", "c0"]);
    assert_fails(&o, 6, "failed verification");
    assert!(
        stdout(&o).contains(&format!("{} does not match its BLAKE3", damaged.display())),
        "{}",
        stdout(&o)
    );
    assert_status_names_damage(&s);
    let o = s.run(&["check", "c0"]);
    assert_eq!(o.status.code(), Some(9), "{}", stdout(&o));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains("FAIL") && l.contains("pitr")),
        "{}",
        stdout(&o)
    );

    // A gap a kept backup needs: named, with the offsets.
    fs::write(&damaged, &good).unwrap();
    fs::remove_file(&damaged).unwrap();
    fs::remove_file(damaged.with_extension("json")).unwrap();
    let o = s.run(&["verify", "--instance", "c0"]);
    assert_fails(&o, 6, "failed verification");
    assert!(
        stdout(&o).contains("misses offsets 200-299"),
        "{}",
        stdout(&o)
    );
    let o = s.run(&["status", "c0"]);
    assert_eq!(o.status.code(), Some(9));
    assert!(
        stdout(&o).contains("misses offsets 200-299"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn retention_removes_only_segments_no_kept_backup_needs() {
    let keep = |n| {
        format!("SYNBACKUP_KEEP_LAST={n}\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\nSYNBACKUP_KEEP_MONTHLY=0\n")
    };
    let s = Setup::new(&keep(3));
    let first = s.backup_at(120);
    s.backup_at(260);
    s.backup_at(330);
    write_archive(
        &s.archive(),
        &[(0, 99), (100, 199), (200, 259), (260, 299)],
        Some((300, 340)),
    );
    // Files the archiver did not make stay, whatever their names.
    fs::write(s.archive().join("notes.txt"), "mine").unwrap();
    fs::write(s.archive().join(format!("{}.bak", seg(0, 99))), "mine").unwrap();
    let before = names(&s.archive());

    // Everything kept: only what is below the oldest backup (120) goes.
    s.config(&keep(2));
    let o = s.run(&["prune", "c0", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "would remove {}",
            s.backups.join(&first).display()
        )),
        "{out}"
    );
    // The backup at 120 goes, so the oldest kept is at 260: 0-99, 100-199 and
    // 200-259 are needed by none.
    for (a, b) in [(0, 99), (100, 199), (200, 259)] {
        assert!(
            out.contains(&format!(
                "would remove {}",
                s.archive().join(seg(a, b)).display()
            )),
            "{out}"
        );
    }
    assert!(!out.contains(&seg(260, 299)), "{out}");
    assert_eq!(names(&s.archive()), before, "a dry run removes nothing");

    let o = s.run(&["prune", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut want: Vec<String> = [
        "archive.json".to_string(),
        format!("{}.bak", seg(0, 99)),
        seg(260, 299),
        seg(260, 299).replace(".seg", ".json"),
        "notes.txt".to_string(),
        "open-000000000000012c.seg".to_string(),
    ]
    .to_vec();
    want.sort();
    assert_eq!(names(&s.archive()), want);
    // The chain is whole from the oldest kept backup on.
    let o = s.run(&["verify", "--instance", "c0"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("offsets 260-340"), "{}", stdout(&o));

    // Without a backup that records its index, nothing is removed.
    let s = Setup::new(&keep(1));
    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    write_archive(&s.archive(), &[(0, 99)], None);
    let o = s.run(&["prune", "c0", "--dry-run"]);
    assert!(
        stdout(&o).contains("keeping every segment") && !stdout(&o).contains("would remove"),
        "{}",
        stdout(&o)
    );
}

/// `status` reads only the closed segments that changed since a check found them
/// whole; bits that rot on the medium change no time, so each nightly `run`
/// reads the whole archive: it logs the damage, and `status` reports it from
/// then on. Here the rot is a flipped bit with the record of checked segments
/// then made to describe the file as it is (as if it rotted after the check).
#[test]
fn the_nightly_run_finds_a_segment_that_rotted_and_status_reports_it() {
    use std::os::unix::fs::MetadataExt;
    let s = Setup::new("");
    s.backup_at(120);
    write_archive(&s.archive(), &[(100, 199), (200, 299)], Some((300, 340)));
    let o = s.run(&["status", "c0", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st[0]["pitr"]["problems"], serde_json::json!([]), "{st}");

    let damaged = s.archive().join(seg(100, 199));
    let mut bytes = fs::read(&damaged).unwrap();
    bytes[40] ^= 0x01;
    fs::write(&damaged, &bytes).unwrap();
    let record_path = s.archive().join(".checked.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    let m = fs::metadata(&damaged).unwrap();
    record["segments"][seg(100, 199)]["segment"] = serde_json::json!({
        "ino": m.ino(),
        "size": m.size(),
        "mtime_ns": i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        "ctime_ns": i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    });
    fs::write(&record_path, record.to_string()).unwrap();
    let o = s.run(&["status", "c0", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st[0]["pitr"]["problems"],
        serde_json::json!([]),
        "status read the segment: {st}"
    );

    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{} does not match its BLAKE3", damaged.display())),
        "{}",
        stderr(&o)
    );
    assert_status_names_damage(&s);
}
