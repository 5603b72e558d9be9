// SPDX-License-Identifier: Apache-2.0
//! Instances: `run`, `list`, `prune`, `status`, metrics, the lock, and `restore`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A configured instance `c0` in a temporary tree.
struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    backups: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let src = root.join("svc");
        fake_service(&src, 200);
        let backups = root.join("backups");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/c0.conf"),
            format!(
                "# test instance\nSYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\n{extra}",
                src.display(),
                backups.display()
            ),
        )
        .unwrap();
        Setup {
            _t: t,
            root,
            src,
            backups,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = bin();
        c.arg("--config-dir")
            .arg(self.root.join("etc"))
            .arg("--state-dir")
            .arg(self.root.join("state"))
            .arg("--lock-dir")
            .arg(self.root.join("lock"))
            .arg("--metrics-dir")
            .arg(self.root.join("metrics"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run `run c0` and return the name of the backup it made.
    fn backup_now(&self) -> String {
        let o = self.run(&["run", "c0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        fs::read_dir(&self.backups)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("c0_"))
            .unwrap()
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.root.join("state/c0.json")).unwrap()).unwrap()
    }

    fn metrics(&self) -> String {
        fs::read_to_string(self.root.join("metrics/synbackup-c0.prom")).unwrap()
    }
}

fn metric(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{instance=\"c0\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

#[test]
fn runs_back_up_verify_prune_and_record_status() {
    let s = Setup::new("SYNBACKUP_KEEP_LAST=2\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\nSYNBACKUP_KEEP_MONTHLY=0\n");
    // Things in the root that are not ours: never touched.
    fs::create_dir_all(s.backups.join("c0_20200101T000000Z")).unwrap();
    fs::create_dir_all(s.backups.join("unrelated")).unwrap();
    for _ in 0..3 {
        let o = s.run(&["run", "c0"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let ours: Vec<String> = names(&s.backups)
        .into_iter()
        .filter(|n| n != "unrelated" && n != "c0_20200101T000000Z")
        .collect();
    assert_eq!(ours.len(), 2, "keep last 2: {ours:?}");
    assert!(s.backups.join("c0_20200101T000000Z").exists() && s.backups.join("unrelated").exists());
    for n in &ours {
        assert!(n.starts_with("c0_") && n.contains('T'), "{n}");
        assert!(run(&[&"verify", &s.backups.join(n)]).status.success());
    }

    let st = s.status_json();
    assert_eq!(st["result"], "success");
    assert_eq!(st["exit_code"], 0);
    assert!(st["bytes"].as_u64().unwrap() > 0);
    assert_eq!(st["backups_kept"], 2);
    let newest = st["backup"].as_str().unwrap();
    assert!(Path::new(newest).exists());
    assert_eq!(st["last_success_backup"].as_str(), Some(newest));

    let m = s.metrics();
    assert_eq!(metric(&m, "synbackup_last_success"), 1.0);
    assert_eq!(metric(&m, "synbackup_backups_kept"), 2.0);
    assert!(metric(&m, "synbackup_last_success_timestamp_seconds") > 1.7e9);
    assert!(metric(&m, "synbackup_last_bytes") > 0.0);

    let o = s.run(&["list", "c0", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|e| e["state"] == "verified" && e["bytes"].as_u64().unwrap() > 0));
    let o = s.run(&["list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified"));

    let o = s.run(&["status", "c0"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("c0: OK"));
}

#[test]
fn a_failed_run_is_recorded_and_keeps_the_last_success() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    let good = s.status_json();
    // The service directory disappears: the next run fails.
    fs::rename(&s.src, s.root.join("moved")).unwrap();
    let o = s.run(&["run", "c0"]);
    assert_fails(&o, 3, "svc");
    let st = s.status_json();
    assert_eq!(st["result"], "failed");
    assert_eq!(st["exit_code"], 3);
    assert!(st["error"].as_str().unwrap().contains("svc"));
    assert_eq!(
        st["last_success"], good["last_success"],
        "a failure must not move last_success"
    );
    let m = s.metrics();
    assert_eq!(metric(&m, "synbackup_last_success"), 0.0);
    assert_eq!(metric(&m, "synbackup_last_exit_code"), 3.0);
    let then =
        chrono::DateTime::parse_from_rfc3339(good["last_success"].as_str().unwrap()).unwrap();
    assert_eq!(
        metric(&m, "synbackup_last_success_timestamp_seconds"),
        then.timestamp_millis() as f64 / 1000.0
    );
    let o = s.run(&["status", "c0", "--json"]);
    assert_eq!(o.status.code(), Some(9));
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h[0]["healthy"], false);
    assert!(h[0]["problem"]
        .as_str()
        .unwrap()
        .starts_with("last run failed"));
}

#[test]
fn status_calls_an_old_backup_stale() {
    let s = Setup::new("SYNBACKUP_MAX_AGE=26h\n");
    assert!(s.run(&["run", "c0"]).status.success());
    let mut st = s.status_json();
    let old = (chrono::Utc::now() - chrono::Duration::hours(30)).to_rfc3339();
    st["last_success"] = serde_json::Value::String(old);
    fs::write(
        s.root.join("state/c0.json"),
        serde_json::to_vec(&st).unwrap(),
    )
    .unwrap();
    let o = s.run(&["status"]);
    assert_eq!(o.status.code(), Some(9));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("c0: PROBLEM: last good backup is 30h old (more than 26h)"),
        "{out}"
    );
}

#[test]
fn two_runs_at_once_the_second_exits_busy() {
    let s = Setup::new("");
    // Enough data that the first run is still copying when the second starts.
    let big: Vec<u8> = (0..96u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(s.src.join("big.bin"), &big).unwrap();
    let first = s
        .cmd()
        .args(["run", "c0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first run holds the lock once its temporary exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(s.backups.exists()
        && names(&s.backups)
            .iter()
            .any(|n| n.contains("synbackup-partial")))
    {
        assert!(
            Instant::now() < deadline,
            "the first run never started copying"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = s.run(&["run", "c0"]);
    assert_fails(&second, 7, "instance c0 is busy");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        s.status_json()["result"],
        "success",
        "the busy run must not overwrite the status"
    );
}

#[test]
fn prune_removes_temporaries_of_dead_runs_only() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    let tmp = s
        .backups
        .join(".c0_20260101T000000Z.synbackup-partial.424242");
    fs::create_dir_all(tmp.join("slabs")).unwrap();
    // A live run: something holds the instance lock.
    let mut holder = Command::new("flock")
        .arg(s.root.join("lock/c0.lock"))
        .args(["-c", "echo locked; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let o = s.run(&["prune", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmp.exists(), "a live run's temporary was removed");
    assert!(stderr(&o).contains("in progress"));
    // The run dies: its temporary goes.
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    holder.wait().unwrap();
    let o = s.run(&["prune", "c0", "--dry-run"]);
    assert!(tmp.exists() && stderr(&o).contains("would remove"));
    let o = s.run(&["prune", "c0"]);
    assert!(o.status.success());
    assert!(!tmp.exists(), "{}", stderr(&o));
    assert_eq!(names(&s.backups).len(), 1);
}

#[test]
fn config_errors_are_one_line_with_file_and_line() {
    let s = Setup::new("SYNBACKUP_KEEP_DAILY=seven\n");
    let o = s.run(&["run", "c0"]);
    assert_fails(
        &o,
        2,
        "c0.conf:4: SYNBACKUP_KEEP_DAILY=\"seven\" is not valid: expected a whole number",
    );
    let o = s.run(&["run", "nosuch"]);
    assert_fails(&o, 2, "nosuch.conf does not exist");
    let o = s.run(&["run", "../x"]);
    assert_fails(&o, 2, "bad instance name");
}

#[test]
fn restore_refuses_a_running_service_and_restores_a_stopped_one() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("core00");
    let mut core = Cortex::start(&dir);
    let d = core.url_dir().to_string();
    storm(&["add", &d, "120"]);
    let bk = t.path().join("bk");
    assert!(run(&[&"backup", &dir, &bk]).status.success());
    storm(&["add", &d, "30", "--start", "5000"]);
    assert_eq!(storm(&["count", &d, "inet:ipv4"]), "150");

    // Running: refused, nothing changed.
    let before = names(t.path());
    let o = run(&[&"restore", &bk, &dir]);
    assert_fails(&o, 8, "is in use");
    assert_eq!(names(t.path()), before);

    core.stop();
    let o = run(&[&"restore", &bk, &dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("to undo:"));
    let aside: Vec<String> = names(t.path())
        .into_iter()
        .filter(|n| n.starts_with("core00.pre-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old directory is kept");
    assert!(!dir.join("synbackup-manifest.json").exists());
    let restored = Cortex::start(&dir);
    assert_eq!(restored.count(), 120);
}

#[test]
fn restore_that_fails_midway_leaves_the_directory_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 200);
    let bk = t.path().join("bk");
    assert!(run(&[&"backup", &src, &bk]).status.success());
    // The service directory lives on a filesystem that runs out of inodes midway.
    let small = t.path().join("small");
    let _fs = Tmpfs::mount(&small, "size=64m,nr_inodes=16");
    let dir = small.join("svc");
    fs::create_dir(&dir).unwrap();
    // The same cell (another one would be refused before any copy).
    fs::copy(src.join("cell.guid"), dir.join("cell.guid")).unwrap();
    fs::write(dir.join("marker"), "original").unwrap();
    let before = hash_tree(&dir);
    let o = run(&[&"restore", &bk, &dir]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(error_lines(&o).len(), 1, "{}", stderr(&o));
    assert_eq!(hash_tree(&dir), before, "the directory changed");
    assert_eq!(
        names(&small),
        vec!["svc"],
        "the unfinished copy must be removed"
    );
}

#[test]
fn restore_takes_a_backup_name_and_records_its_result() {
    let s = Setup::new("");
    let name = s.backup_now();
    fs::write(s.src.join("added-later"), "x").unwrap();
    // The name as `list` prints it, from the instance's backup root.
    let o = s.run(&["restore", "--instance", "c0", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!s.src.join("added-later").exists());
    assert!(s.src.join("slabs/cell.lmdb/data.mdb").is_file());
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(s.root.join("state/c0.restore.json")).unwrap()).unwrap();
    assert_eq!(st["kind"], "restore");
    assert_eq!(st["result"], "success");
    assert!(st["backup"].as_str().unwrap().ends_with(&name));

    // A name that is not there: the failure is recorded too.
    let o = s.run(&["restore", "--instance", "c0", "c0_19990101T000000Z"]);
    assert_fails(&o, 3, "c0_19990101T000000Z cannot be used");
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(s.root.join("state/c0.restore.json")).unwrap()).unwrap();
    assert_eq!(st["result"], "failed");
    assert_eq!(st["exit_code"], 3);
}

#[test]
fn restore_of_another_cell_needs_force() {
    let s = Setup::new("");
    let bk = s.backups.join(s.backup_now());
    fs::write(s.src.join("cell.guid"), "fedcba9876543210fedcba9876543210").unwrap();
    let before = names(&s.root);
    let o = s.run(&["restore", "--instance", "c0", bk.to_str().unwrap()]);
    assert_fails(&o, 3, "pass --force");
    assert!(
        stderr(&o).contains("fedcba9876543210fedcba9876543210"),
        "{}",
        stderr(&o)
    );
    assert_eq!(names(&s.root), before, "nothing may change");
    let o = s.run(&[
        "restore",
        "--force",
        "--instance",
        "c0",
        bk.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("restoring anyway (--force)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        fs::read_to_string(s.src.join("cell.guid")).unwrap(),
        "0123456789abcdef0123456789abcdef"
    );
}

#[test]
fn restore_through_a_symlinked_service_dir_swaps_the_real_directory() {
    let s = Setup::new("");
    let name = s.backup_now();
    // SYNBACKUP_SERVICE_DIR=ROOT/svc is a symlink to the volume's ROOT/vol/svc.
    let real = s.root.join("vol/svc");
    fs::create_dir(s.root.join("vol")).unwrap();
    fs::rename(&s.src, &real).unwrap();
    std::os::unix::fs::symlink(&real, &s.src).unwrap();
    let o = s.run(&["restore", "--instance", "c0", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::symlink_metadata(&s.src)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(real.join("slabs/cell.lmdb/data.mdb").is_file());
    assert_eq!(
        names(&s.root.join("vol"))
            .iter()
            .filter(|n| n.starts_with("svc.pre-restore-"))
            .count(),
        1,
        "the previous directory is kept beside the real one"
    );
    assert!(
        !names(&s.root)
            .iter()
            .any(|n| n.starts_with("svc.pre-restore-")),
        "the symlink was moved aside"
    );
}
