// SPDX-License-Identifier: Apache-2.0
//! Instances: `run`, `list`, `prune`, `status`, metrics, the lock, and `restore`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
        // node_exporter's textfile directory, as its package makes it.
        fs::create_dir_all(root.join("metrics")).unwrap();
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
        bin_at(&self.root)
    }

    fn run(&self, args: &[&str]) -> Output {
        run_at(&self.root, args)
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

    /// `state/c0.KIND.json`.
    fn status_of(&self, kind: &str) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.root.join(format!("state/c0.{kind}.json"))).unwrap())
            .unwrap()
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
    // The guide's host advice, checked: what a window would reclaim, data vs RAM.
    assert!(metric(&m, "synbackup_reclaimable_bytes") >= 0.0);
    assert!(metric(&m, "synbackup_data_bytes") > 0.0);
    assert!(metric(&m, "synbackup_mem_total_bytes") > 0.0);
    assert!(
        m.contains("synbackup_service_dir_network_fs{instance=\"c0\"} 0\n"),
        "{m}"
    );

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
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("c0: OK"), "{out}");
    assert!(
        out.contains("c0: data ")
            && out.contains(", RAM ")
            && out.contains("a maintenance window would reclaim about"),
        "{out}"
    );
    let o = s.run(&["status", "c0", "--json"]);
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(h[0]["host"]["fstype"].is_string(), "{h}");
    assert!(h[0]["host"]["reclaimable_bytes"].is_u64(), "{h}");
}

#[test]
fn without_a_metrics_directory_no_metrics_are_written_and_status_says_so() {
    let s = Setup::new("");
    fs::remove_dir(s.root.join("metrics")).unwrap();
    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("metrics"), "{}", stderr(&o));
    assert!(
        !s.root.join("metrics").exists(),
        "a run made the collector's directory"
    );
    let o = s.run(&["status"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    // A note about the host on stderr, not inside the report.
    assert!(!out.contains("metrics"), "{out}");
    assert!(
        stderr(&o).contains("no metrics are written:"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn metrics_can_be_turned_off_per_instance() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    let prom = s.root.join("metrics/synbackup-c0.prom");
    assert!(prom.is_file());
    let conf = s.root.join("etc/c0.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("SYNBACKUP_METRICS=no\n");
    fs::write(&conf, text).unwrap();
    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!prom.exists(), "the instance's old metrics are removed");
    assert!(!s.root.join("metrics/synbackup-c0-certs.prom").exists());
    fs::remove_dir(s.root.join("metrics")).unwrap();
    let o = s.run(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("metrics"), "{}", stderr(&o));
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

/// Something holds the instance lock (a live run, window or restore) until the
/// returned function is called.
fn hold_lock(s: &Setup) -> impl FnOnce() {
    fs::create_dir_all(s.root.join("lock")).unwrap();
    let mut holder = command("flock")
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
    move || {
        holder.stdin.take().unwrap().write_all(b"\n").unwrap();
        holder.wait().unwrap();
    }
}

/// Dry runs (issue 34) look at the lock without waiting for it: a restore's says
/// whom the restore would wait for and how long, and goes on; and they refuse as
/// the real command does, with its exit code, recording nothing (the window's
/// refusal of an instance without a unit is recorded by the window, not by its
/// dry run).
#[test]
fn dry_runs_look_at_the_lock_without_waiting_and_refuse_as_the_real_command() {
    let s = Setup::new("SYNBACKUP_LOCK_WAIT=1h\n");
    let name = s.backup_now();
    let release = hold_lock(&s);
    let t0 = std::time::Instant::now();
    let o = s.run(&["restore", "--instance", "c0", &name, "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        t0.elapsed().as_secs() < 60,
        "the dry run waited for the lock"
    );
    assert!(
        out.contains(" holds the lock of c0: the real restore would wait up to 60m for it")
            && out.contains("(SYNBACKUP_LOCK_WAIT), then fail (exit 7)")
            && out.contains(&format!("c0: would move {} aside to ", s.src.display())),
        "{out}"
    );
    release();

    let o = s.run(&["cold", "c0", "--dry-run"]);
    assert_fails(&o, 2, "no SYNBACKUP_SERVICE_UNIT");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        out,
        "c0: the real window would refuse here (exit 2): instance c0 has no SYNBACKUP_SERVICE_UNIT: the window must know which unit to stop\nc0: dry run: nothing was changed\n"
    );
    assert!(!s.root.join("state/c0.cold.json").exists());
    assert!(!s.root.join("state/c0.restore.json").exists());
    assert_fails(&s.run(&["cold", "c0"]), 2, "no SYNBACKUP_SERVICE_UNIT");
    assert_eq!(s.status_of("cold")["exit_code"], 2);
}

#[test]
fn a_run_waits_for_the_lock_and_one_that_gives_up_is_recorded_as_skipped() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    let release = hold_lock(&s);
    // No waiting allowed: refused at once, and recorded (not silently dropped).
    let o = s
        .cmd()
        .args(["run", "c0"])
        .env("SYNBACKUP_LOCK_WAIT", "0")
        .output()
        .unwrap();
    assert_fails(&o, 7, "instance c0 is busy");
    let st = s.status_json();
    assert_eq!(st["result"], "skipped", "{st}");
    assert_eq!(st["exit_code"], 7);
    assert!(
        st["last_success"].is_string(),
        "a skip keeps the last success"
    );
    let o = s.run(&["status", "c0"]);
    assert_eq!(o.status.code(), Some(9));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("last run was skipped"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Within the bound: the run waits for the holder, then runs.
    let mut waiting = s
        .cmd()
        .args(["run", "c0"])
        .env("SYNBACKUP_LOCK_WAIT", "2m")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(waiting.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("waiting up to 2m for the lock held by") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the run never waited"
        );
    }
    release();
    let rest: Vec<String> = err.lines().map(|l| l.unwrap()).collect();
    assert!(waiting.wait().unwrap().success(), "{rest:?}");
    assert_eq!(s.status_json()["result"], "success");
}

#[test]
fn lock_files_are_root_only() {
    let s = Setup::new("");
    fs::create_dir_all(s.root.join("lock")).unwrap();
    // A lock file left by an older version, world-readable.
    fs::write(s.root.join("lock/c0.lock"), "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(s.root.join("lock"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        s.root.join("lock/c0.lock"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert!(s.run(&["run", "c0"]).status.success());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.root.join("lock")), 0o700);
    assert_eq!(mode(&s.root.join("lock/c0.lock")), 0o600);
}

#[test]
fn status_reports_a_failed_window() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    assert_eq!(s.run(&["status", "c0"]).status.code(), Some(0));
    // A window that fails (this instance has no SYNBACKUP_SERVICE_UNIT to stop).
    let o = s.run(&["cold", "c0"]);
    assert_fails(&o, 2, "no SYNBACKUP_SERVICE_UNIT");
    let o = s.run(&["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(9), "{out}");
    assert!(
        out.contains("c0: PROBLEM: last maintenance window failed"),
        "{out}"
    );
    assert!(
        out.contains("c0: last maintenance window failed at"),
        "{out}"
    );
    let o = s.run(&["status", "c0", "--json"]);
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h[0]["healthy"], false);
    assert_eq!(h[0]["cold"]["exit_code"], 2);
    let cold_metrics =
        || fs::read_to_string(s.root.join("metrics/synbackup-c0-cold.prom")).unwrap();
    assert_eq!(metric(&cold_metrics(), "synbackup_cold_last_problem"), 1.0);

    // Acknowledged: status is healthy again and says so; the metric follows.
    let o = s.run(&["status", "c0", "--acknowledge", "cold"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("c0: last maintenance window failed at"),
        "{out}"
    );
    assert!(out.contains(", acknowledged at "), "{out}");
    assert_eq!(metric(&cold_metrics(), "synbackup_cold_last_problem"), 0.0);
    assert_eq!(s.run(&["status", "c0"]).status.code(), Some(0));
    // A new failure is a new problem.
    assert_fails(&s.run(&["cold", "c0"]), 2, "no SYNBACKUP_SERVICE_UNIT");
    assert_eq!(s.run(&["status", "c0"]).status.code(), Some(9));
}

#[test]
fn status_fails_on_a_config_that_does_not_parse() {
    for bad in [
        "SYNBACKUP_MAX_AGE=12 hours\n",
        "SYNBACKUP_KEEP_LAST=three\n",
        "SYNBACKUP_KEEP_DAYLY=3\n",
    ] {
        let s = Setup::new("");
        assert!(s.run(&["run", "c0"]).status.success());
        let conf = s.root.join("etc/c0.conf");
        let mut text = fs::read_to_string(&conf).unwrap();
        text.push_str(bad);
        fs::write(&conf, text).unwrap();
        let o = s.run(&["status"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(9), "{bad}: {out}");
        assert!(out.contains("c0: PROBLEM: bad configuration:"), "{out}");
        assert!(out.contains("c0.conf:4:"), "{out}");
    }
}

#[test]
fn prune_never_removes_the_newest_verified_backup() {
    let s = Setup::new("SYNBACKUP_KEEP_LAST=1\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\nSYNBACKUP_KEEP_MONTHLY=0\n");
    assert!(s.run(&["run", "c0"]).status.success());
    let verified = s.status_json()["backup"].as_str().unwrap().to_string();
    // A newer, unverified backup (made by hand without --verify).
    let newer = s.backups.join("c0_29991231T000000Z");
    assert!(run(&[&"backup", &s.src, &newer]).status.success());
    let o = s.run(&["prune", "c0", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(the newest verified backup)"),
        "a dry run's answer is on stdout: {}",
        stderr(&o)
    );
    let o = s.run(&["prune", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        Path::new(&verified).exists(),
        "the only verified backup was pruned"
    );
    assert!(newer.exists());
    assert!(stderr(&o).contains("c0: 2 backups kept"), "{}", stderr(&o));
}

#[test]
fn config_refuses_a_policy_that_keeps_nothing() {
    let s = Setup::new("SYNBACKUP_KEEP_LAST=0\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\nSYNBACKUP_KEEP_MONTHLY=0\n");
    let o = s.run(&["prune", "c0"]);
    assert_fails(&o, 2, "c0.conf:4: every SYNBACKUP_KEEP_* is 0");
}

#[test]
fn a_run_of_an_unconfigured_instance_writes_no_state() {
    let s = Setup::new("");
    let o = s.run(&["run", "nosuch"]);
    assert_fails(&o, 2, "nosuch.conf does not exist");
    assert!(!s.root.join("state/nosuch.json").exists());
    assert!(!s.root.join("metrics/synbackup-nosuch.prom").exists());
}

#[test]
fn list_shows_the_others_when_one_config_is_broken_and_a_partial_by_its_size() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    fs::write(s.root.join("etc/bad.conf"), "SYNBACKUP_NOPE=1\n").unwrap();
    let tmp = s
        .backups
        .join(".c0_20260101T000000Z.synbackup-partial.424242");
    fs::create_dir_all(&tmp).unwrap();
    fs::write(tmp.join("data.mdb"), vec![7u8; 3 << 20]).unwrap();
    let o = s.run(&["list", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad: not listed"), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let partial = rows.iter().find(|r| r["state"] == "partial").unwrap();
    assert!(partial["bytes"].as_u64().unwrap() >= 3 << 20, "{partial}");
}

#[test]
fn prune_removes_temporaries_of_dead_runs_only_and_nothing_while_locked() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    let tmp = s
        .backups
        .join(".c0_20260101T000000Z.synbackup-partial.424242");
    fs::create_dir_all(tmp.join("slabs")).unwrap();
    let before = names(&s.backups);
    // A live run, window or restore holds the instance lock: prune refuses.
    let release = hold_lock(&s);
    let o = s.run(&["prune", "c0"]);
    assert_fails(&o, 7, "instance c0 is busy");
    assert_eq!(
        names(&s.backups),
        before,
        "a prune under a live lock removed something"
    );
    let o = s.run(&["prune", "c0", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("in progress"),
        "{}",
        stderr(&o)
    );
    // The run dies: its temporary goes.
    release();
    let o = s.run(&["prune", "c0", "--dry-run"]);
    assert!(tmp.exists() && String::from_utf8_lossy(&o.stdout).contains("would remove"));
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

crate::on_both_lines!(restore_refuses_a_running_service_and_restores_a_stopped_one);

fn restore_refuses_a_running_service_and_restores_a_stopped_one(line: Line) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("core00");
    let mut core = Cortex::start(line, &dir);
    assert_eq!(core.add(120, 0), 120);
    let bk = t.path().join("bk");
    assert!(run(&[&"backup", &dir, &bk]).status.success());
    assert_eq!(core.add(30, 5000), 150);
    assert_eq!(core.count(), 150);

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
    let restored = Cortex::start(line, &dir);
    assert_eq!(restored.count(), 120, "the backup's nodes");
}

crate::on_both_lines!(restore_dry_run_changes_nothing_and_says_what_it_would_do);

/// `restore --dry-run` (issue 34) against a real Cortex whose files an
/// unprivileged user owns: while it runs, the restore's own refusal with its exit
/// code, the service still answering; stopped, the plan (verify, the copy and
/// the room for it, nothing to stop, the name the directory would be kept
/// under); without room, the space refusal and its exit code, as the real
/// restore gives them. Nothing changes in the service directory, the backup root,
/// the state or metrics directories (owners, sizes, mtimes), no status recorded.
fn restore_dry_run_changes_nothing_and_says_what_it_would_do(line: Line) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let dir = root.join("core00");
    let backups = root.join("backups");
    for d in ["etc", "metrics"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("etc/c0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_KEEP_ASIDE=3d\n",
            dir.display(),
            backups.display()
        ),
    )
    .unwrap();
    let mut core = Cortex::start(line, &dir);
    assert_eq!(core.add(40, 0), 40);
    let o = run_at(root, &["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let name = fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("c0_"))
        .unwrap();
    let bk = backups.join(&name);
    let watched = [
        dir.clone(),
        backups.clone(),
        root.join("state"),
        root.join("metrics"),
    ];
    let listing = || full_listings(&watched);

    // Running: the restore's refusal, with its code; the service still answers.
    let before = listing();
    let o = run_at(root, &["restore", "--instance", "c0", &name, "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(8), "{out}{}", stderr(&o));
    assert!(
        out.contains("c0: the real restore would refuse here (exit 8): ")
            && out.contains("is in use")
            && out.ends_with("c0: dry run: nothing was changed\n"),
        "{out}"
    );
    assert_eq!(before, listing(), "a dry run changed something");
    assert_eq!(core.count(), 40, "the service answers");
    let real = run_at(root, &["restore", "--instance", "c0", &name]);
    assert_eq!(real.status.code(), o.status.code(), "{}", stderr(&real));

    // Stopped, owned by an unprivileged user: the plan.
    core.stop();
    chown_tree(&dir, 65534, 65534);
    let before = listing();
    let o = run_at(root, &["restore", "--instance", "c0", &name, "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}{}", stderr(&o));
    for want in [
        format!("c0: would verify {} against its manifest (", bk.display()),
        format!(
            "c0: would copy it to {}/.core00.synbackup-restoring.",
            root.display()
        ),
        format!("free in {}\n", root.display()),
        format!("c0: nothing runs on {}: nothing to stop\n", dir.display()),
        format!(
            "c0: would move {} aside to {}.pre-restore-",
            dir.display(),
            dir.display()
        ),
        "(kept: the nightly run removes it after SYNBACKUP_KEEP_ASIDE, 3d".to_string(),
        "c0: would remove nothing kept aside".to_string(),
        "c0: dry run: nothing was changed\n".to_string(),
    ] {
        assert!(out.contains(&want), "{want}: {out}");
    }
    assert!(!out.contains("NOT ENOUGH ROOM"), "{out}");
    assert_eq!(before, listing(), "a dry run changed something");

    // No room beside the directory (by path, into a small tmpfs): the restore's
    // space refusal and its exit code.
    let small = root.join("small");
    let _fs = Tmpfs::mount(&small, "size=128k,mode=755");
    let into = small.join("core00");
    fs::create_dir(&into).unwrap();
    fs::copy(dir.join("cell.guid"), into.join("cell.guid")).unwrap();
    let before = (listing(), full_listing(&small));
    let o = run(&[&"restore", &bk, &into, &"--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(4), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!("free in {}: NOT ENOUGH ROOM\n", small.display()))
            && out.contains(&format!(
                "the real restore would refuse here (exit 4): not enough space in {}: the restore needs ",
                small.display()
            )),
        "{out}"
    );
    assert_eq!(
        before,
        (listing(), full_listing(&small)),
        "a dry run changed something"
    );
    let real = run(&[&"restore", &bk, &into]);
    assert_fails(&real, 4, "not enough space in");
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

    // A name that is not there: refused before anything changed, recorded as
    // such, and `status` stays healthy (the operator who asked was told).
    let o = s.run(&["restore", "--instance", "c0", "c0_19990101T000000Z"]);
    assert_fails(&o, 3, "c0_19990101T000000Z cannot be used");
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(s.root.join("state/c0.restore.json")).unwrap()).unwrap();
    assert_eq!(st["result"], "refused");
    assert_eq!(st["exit_code"], 3);
    let o = s.run(&["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("last restore refused at") && out.contains("nothing changed"),
        "{out}"
    );
    assert_eq!(
        metric(
            &fs::read_to_string(s.root.join("metrics/synbackup-c0-restore.prom")).unwrap(),
            "synbackup_restore_last_problem"
        ),
        0.0
    );
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

/// Set the nexus index a cell's files hold (the hot count Synapse keeps in
/// `slabs/nexus.lmdb`, database and key `nexs:indx`, a signed big-endian i64).
fn set_nexus_index(dir: &Path, index: i64) {
    use lmdb::Transaction;
    let env_dir = dir.join("slabs/nexus.lmdb");
    fs::create_dir_all(&env_dir).unwrap();
    let env = lmdb::Environment::new()
        .set_max_dbs(8)
        .set_map_size(1 << 20)
        .open(&env_dir)
        .unwrap();
    let db = env
        .create_db(Some("nexs:indx"), lmdb::DatabaseFlags::empty())
        .unwrap();
    let mut txn = env.begin_rw_txn().unwrap();
    txn.put(
        db,
        b"nexs:indx",
        &index.to_be_bytes(),
        lmdb::WriteFlags::empty(),
    )
    .unwrap();
    txn.commit().unwrap();
}

#[test]
fn restore_refuses_a_change_of_role_and_keeps_the_directorys_role_settings() {
    let s = Setup::new("");
    // The leader's backup; then the directory is the cell's mirror (same cell.guid).
    fs::write(
        s.src.join("cell.yaml"),
        "nexslog:en: true\naha:name: core00\n",
    )
    .unwrap();
    let bk = s.backups.join(s.backup_now());
    let mirror_yaml = "nexslog:en: true\nmirror: cell:///data/leader\naha:name: core01\n";
    fs::write(s.src.join("cell.yaml"), mirror_yaml).unwrap();
    fs::write(s.src.join("added-later"), "x").unwrap();
    let before = names(&s.root);
    let o = s.run(&["restore", "--instance", "c0", bk.to_str().unwrap()]);
    assert_fails(&o, 3, "changes the cell's role");
    let err = &error_lines(&o)[0];
    assert!(
        err.contains("is the mirror of cell:///data/leader (its files)")
            && err.contains("is a backup of the leader (its files)"),
        "{err}"
    );
    assert_eq!(names(&s.root), before, "nothing may change");
    assert!(s.src.join("added-later").exists());
    // --force: the backup's data, the directory's role settings.
    let o = s.run(&[
        "restore",
        "--force",
        "--instance",
        "c0",
        bk.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !s.src.join("added-later").exists(),
        "the backup is restored"
    );
    assert_eq!(
        fs::read_to_string(s.src.join("cell.yaml")).unwrap(),
        "nexslog:en: true\nmirror: cell:///data/leader\naha:name: core01\n",
        "the mirror keeps its mirror: and aha:name"
    );
    // The backup itself is untouched.
    assert_eq!(
        fs::read_to_string(bk.join("cell.yaml")).unwrap(),
        "nexslog:en: true\naha:name: core00\n"
    );
    let st = s.status_of("restore");
    let settings = &st["details"]["roles"]["settings"];
    assert_eq!(
        settings,
        &serde_json::json!([
            "cell.yaml:aha:name dropped",
            "cell.yaml:mirror kept",
            "cell.yaml:aha:name kept"
        ]),
        "{st}"
    );
}

#[test]
fn restore_warns_when_the_directory_is_ahead_of_the_backup() {
    let s = Setup::new("");
    set_nexus_index(&s.src, 40);
    let bk = s.backups.join(s.backup_now());
    set_nexus_index(&s.src, 45);
    let o = s.run(&["restore", "--instance", "c0", bk.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let warn = stderr(&o)
        .lines()
        .find(|l| l.starts_with("synbackup: warning:") && l.contains("nexus index"))
        .map(String::from)
        .unwrap_or_else(|| panic!("no warning:\n{}", stderr(&o)));
    assert!(
        warn.contains("is at nexus index 45, the backup at 40")
            && warn.contains("takes the cell back 5 changes")
            && warn.contains("must be re-seeded from the restored leader"),
        "{warn}"
    );
    let st = s.status_of("restore");
    assert_eq!(st["details"]["nexus"]["directory_index"], 45, "{st}");
    assert_eq!(st["details"]["nexus"]["backup_index"], 40, "{st}");
    // A backup that is not behind: nothing to say.
    let o = s.run(&["restore", "--instance", "c0", bk.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("nexus index"), "{}", stderr(&o));
}

#[test]
fn restore_by_path_takes_the_lock_of_the_instance_it_restores_from() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    let backup = s.status_json()["backup"].as_str().unwrap().to_string();
    let target = s.root.join("restored");
    let release = hold_lock(&s);
    let o = s
        .cmd()
        .args(["restore", &backup])
        .arg(&target)
        .env("SYNBACKUP_LOCK_WAIT", "0")
        .output()
        .unwrap();
    assert_fails(&o, 7, "instance c0 is busy");
    assert!(!target.exists(), "restored while a run held the lock");
    release();
    let o = s
        .cmd()
        .args(["restore", &backup])
        .arg(&target)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(target.join("cell.guid").exists());
}

#[test]
fn verify_prints_its_verdict_on_stdout() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    let backup = s.status_json()["backup"].as_str().unwrap().to_string();
    let o = run(&[&"verify", &backup]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("is intact"),
        "{}",
        stderr(&o)
    );
    // One damaged file: one problem, on stdout, and "1 problem" in the error.
    let victim = fs::read_dir(&backup)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_file()
                && !p.ends_with("synbackup-manifest.json")
                && !p.ends_with("synbackup-verified")
        })
        .unwrap();
    fs::write(&victim, b"damaged").unwrap();
    let o = run(&[&"verify", &backup]);
    assert_fails(&o, 6, "failed verification: 1 problem");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("size"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn backup_takes_skipdirs_before_src_dst_and_a_freeze_timeout_duration() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 50);
    fs::create_dir_all(src.join("cache/x")).unwrap();
    fs::write(src.join("cache/x/junk"), "junk").unwrap();
    let dst = t.path().join("bk");
    // The man page's (and Synapse's tool's) order: --skipdirs GLOB... SRC DST.
    let o = run(&[
        &"backup",
        &"--freeze-timeout",
        &"2m",
        &"--skipdirs",
        &"cache",
        &src,
        &dst,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dst.join("cell.guid").exists());
    assert!(
        !dst.join("cache").exists(),
        "--skipdirs before SRC DST was ignored"
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

#[test]
fn retire_removes_a_removed_instances_state_and_metrics_only() {
    let s = Setup::new("");
    assert!(s.run(&["run", "c0"]).status.success());
    // The run's certificate check leaves its own state and metrics.
    assert!(s.root.join("state/c0.certs.json").exists());
    assert!(s.root.join("metrics/synbackup-c0-certs.prom").exists());
    // The records of drills and offsite copies per backup (as a drill and an
    // offsite copy leave them).
    for f in ["c0.tested.json", "c0.offsite.snapshots.json"] {
        fs::write(s.root.join("state").join(f), "{}\n").unwrap();
    }
    let o = s.run(&["retire", "c0"]);
    assert_fails(&o, 2, "still configures c0");
    fs::remove_file(s.root.join("etc/c0.conf")).unwrap();
    let backups = names(&s.backups);
    let o = s.run(&["retire", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("c0.json"));
    assert!(!s.root.join("state/c0.json").exists());
    assert!(!s.root.join("metrics/synbackup-c0.prom").exists());
    assert!(!s.root.join("state/c0.certs.json").exists());
    assert!(!s.root.join("metrics/synbackup-c0-certs.prom").exists());
    assert!(!s.root.join("state/c0.tested.json").exists());
    assert!(!s.root.join("state/c0.offsite.snapshots.json").exists());
    assert_eq!(names(&s.backups), backups, "retire touched the backups");
}

#[test]
fn compact_no_makes_nightly_backups_plain_and_a_window_would_still_reclaim() {
    let s = Setup::new("SYNBACKUP_COMPACT=no\n");
    let name = s.backup_now();
    let b = s.backups.join(&name);
    let m = manifest(&b);
    assert_eq!(m["env_copy"], "plain");
    assert!(run(&[&"verify", &b]).status.success());
    // The free pages were copied, not left out, and are still reported as what a
    // window would reclaim.
    let env = "layers/abc/layer_v2.lmdb";
    let e = m["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == env)
        .unwrap();
    let pages = e["last_pgno"].as_u64().unwrap() + 1;
    let size = fs::metadata(b.join(env).join("data.mdb")).unwrap().len();
    assert_eq!(size, pages * e["page_size"].as_u64().unwrap());
    assert!(metric(&s.metrics(), "synbackup_reclaimable_bytes") > 0.0);

    let s = Setup::new("SYNBACKUP_COMPACT=maybe\n");
    assert_fails(
        &s.run(&["run", "c0"]),
        2,
        "c0.conf:4: SYNBACKUP_COMPACT=\"maybe\" is not valid: expected yes or no",
    );
}

/// `SYNBACKUP_LOCK_WAIT` in the instance's file bounds every command that takes
/// its lock (it was read from the environment only: a certbot hook behind a long
/// backup waited the default hour).
#[test]
fn lock_wait_in_the_config_bounds_restore_drill_and_certs_deploy() {
    let s = Setup::new("SYNBACKUP_LOCK_WAIT=0\n");
    let bk = s.backup_now();
    let release = hold_lock(&s);
    for args in [
        vec!["restore", "--instance", "c0", bk.as_str()],
        vec!["drill", "c0"],
        vec![
            "certs",
            "deploy",
            "c0",
            "--cert",
            "/nonexistent.pem",
            "--key",
            "/nonexistent.key",
        ],
    ] {
        let mut child = s
            .cmd()
            .args(&args)
            .env_remove("SYNBACKUP_LOCK_WAIT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ended = wait_for(120, || child.try_wait().unwrap().is_some());
        if !ended {
            child.kill().unwrap();
        }
        let o = child.wait_with_output().unwrap();
        assert!(
            ended,
            "{args:?} waited for the lock past its config's SYNBACKUP_LOCK_WAIT=0"
        );
        assert_fails(&o, 7, "instance c0 is busy");
    }
    release();
}

/// A UTF-8 byte order mark is named (it read as "unknown key SYNBACKUP_SERVICE_DIR;
/// did you mean SYNBACKUP_SERVICE_DIR?"), and a key given twice is an error naming
/// both lines (it was silently last-wins).
#[test]
fn a_bom_is_named_and_a_key_given_twice_names_both_lines() {
    let s = Setup::new("SYNBACKUP_KEEP_LAST=2\nSYNBACKUP_KEEP_LAST=5\n");
    let o = s.run(&["run", "c0"]);
    assert_fails(
        &o,
        2,
        "c0.conf:5: SYNBACKUP_KEEP_LAST is given again (first at line 4)",
    );
    let conf = s.root.join("etc/c0.conf");
    let text = fs::read_to_string(&conf).unwrap();
    let once: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    fs::write(&conf, format!("\u{feff}{once}")).unwrap();
    let o = s.run(&["run", "c0"]);
    assert_fails(&o, 2, "c0.conf:1: the file starts with a byte order mark");
    assert!(!s.backups.exists(), "a refused config made a backup");
}

/// The backup root is root's and 0700 whatever made it (issue 32): `run` makes a
/// missing one 0700, and narrows one the service's user owns or others can enter.
#[test]
fn the_backup_root_is_root_only_whatever_made_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Setup::new("");
    s.backup_now();
    let meta = |p: &Path| fs::metadata(p).unwrap();
    let m = meta(&s.backups);
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o700,
        "a missing root is made 0700"
    );
    assert_eq!((m.uid(), m.gid()), (0, 0));

    // A root the service's user owns, readable by all.
    std::os::unix::fs::chown(&s.backups, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&s.backups, fs::Permissions::from_mode(0o755)).unwrap();
    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = meta(&s.backups);
    assert_eq!(m.permissions().mode() & 0o7777, 0o700, "narrowed");
    assert_eq!((m.uid(), m.gid()), (0, 0), "given to root");
    assert!(
        stderr(&o).contains(&format!(
            "backup root {} was owned by 65534:65534 with mode 0755: made root:root 0700",
            s.backups.display()
        )),
        "{}",
        stderr(&o)
    );
}

/// A service directory whose name is not UTF-8 (issue 32): the kept directory is
/// its name byte for byte plus `.pre-restore-STAMP`, and the printed undo command
/// names it as a shell word (`$'...\xff...'`) that exists, not with U+FFFD.
#[test]
fn restore_keeps_a_non_utf8_directory_under_its_own_bytes_and_prints_them_escaped() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join(OsStr::from_bytes(b"svc\xff\xfe"));
    fake_service(&dir, 50);
    let bk = t.path().join("bk");
    assert!(run(&[&"backup", &dir, &bk]).status.success());
    let o = run(&[&"restore", &bk, &dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    let kept: Vec<Vec<u8>> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .filter(|n| n.starts_with(b"svc\xff\xfe.pre-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "kept under the directory's own bytes");
    let kept = String::from_utf8(kept[0][b"svc\xff\xfe".len()..].to_vec()).unwrap();
    let out = String::from_utf8(o.stdout.clone()).expect("printed as ASCII escapes");
    let word = |tail: &str| format!("$'{}/svc\\xff\\xfe{tail}'", t.path().display());
    assert!(
        out.contains(&format!("mv {} {}", word(&kept), word(""))),
        "{out}"
    );
    assert!(!out.contains('\u{fffd}'), "{out}");
}

/// Configs are trusted only when root owns them and nobody else can write them or
/// a directory above them (issue 32): a config owned by the service's user, a 0666
/// one, one in a 0777 directory are refused (exit 2), naming the file or
/// directory, its owner and mode and the fix; root's 0644 config under a sticky
/// /tmp passes (every test's does).
#[test]
fn a_config_another_user_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new("");
    let conf = s.root.join("etc/c0.conf");
    let etc = s.root.join("etc");
    let line = |p: &Path, who: &str, mode: &str| {
        format!(
            "{} is owned by {who} with mode {mode}: another user could change what synbackup runs as root; run `chown root: {p}; chmod go-w {p}`",
            p.display(),
            p = p.display()
        )
    };
    std::os::unix::fs::chown(&conf, Some(65534), Some(65534)).unwrap();
    assert_fails(
        &s.run(&["list", "c0"]),
        2,
        &line(&conf, "65534:65534", "0644"),
    );
    assert_fails(
        &s.run(&["run", "c0"]),
        2,
        &line(&conf, "65534:65534", "0644"),
    );
    std::os::unix::fs::chown(&conf, Some(0), Some(0)).unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o666)).unwrap();
    assert_fails(&s.run(&["run", "c0"]), 2, &line(&conf, "0:0", "0666"));
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o777)).unwrap();
    assert_fails(&s.run(&["run", "c0"]), 2, &line(&etc, "0:0", "0777"));
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o755)).unwrap();
    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The backups of `c0` in `list --json`, name → state.
fn states(s: &Setup) -> std::collections::BTreeMap<String, String> {
    let o = s.run(&["list", "c0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_backup_verify_found_damaged_is_not_good_anywhere() {
    let s = Setup::new("SYNBACKUP_KEEP_LAST=2\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\nSYNBACKUP_KEEP_MONTHLY=0\n");
    let backup_of_run = |s: &Setup| {
        let o = s.run(&["run", "c0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let b = PathBuf::from(s.status_json()["backup"].as_str().unwrap());
        b.file_name().unwrap().to_string_lossy().into_owned()
    };
    let b1 = backup_of_run(&s);
    let b2 = backup_of_run(&s);
    assert_ne!(b1, b2);

    // One byte of b2 flipped: `verify` says so and marks it.
    let m = manifest(&s.backups.join(&b2));
    let victim = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["size"].as_u64().unwrap() > 0)
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let path = s.backups.join(&b2).join(&victim);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let o = s.run(&["verify", s.backups.join(&b2).to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(s.backups.join(&b2).join("synbackup-damaged").is_file());

    // list, status and prune all see it.
    let st = states(&s);
    assert_eq!(st[&b2], "damaged", "{st:?}");
    assert_eq!(st[&b1], "verified", "{st:?}");
    let o = s.run(&["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(9), "{out}");
    assert!(
        out.contains(&format!("backup {b2} was found damaged")),
        "{out}"
    );
    let o = s.run(&["prune", "c0", "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("keeping {b1} (last)")),
        "the damaged backup fills no slot: {out}"
    );
    assert!(out.contains("for inspection"), "{out}");

    // A restore refuses it (and leaves the mark).
    let o = s.run(&["restore", "--instance", "c0", &b2]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("failed verification"), "{}", stderr(&o));

    // The next run's good backup takes its place; then prune removes it.
    let b3 = backup_of_run(&s);
    let st = states(&s);
    assert!(!st.contains_key(&b2), "{st:?}");
    assert_eq!(st.keys().cloned().collect::<Vec<_>>(), [b1.clone(), b3]);
    let o = s.run(&["status", "c0"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_backup_that_verifies_again_loses_its_mark() {
    let s = Setup::new("");
    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b = PathBuf::from(s.status_json()["backup"].as_str().unwrap());
    fs::write(
        b.join("synbackup-damaged"),
        "2026-01-01T00:00:00Z\nan old finding\n",
    )
    .unwrap();
    assert_eq!(s.run(&["status", "c0"]).status.code(), Some(9));
    let o = s.run(&["verify", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!b.join("synbackup-damaged").exists());
    assert_eq!(s.run(&["status", "c0"]).status.code(), Some(0));
}

#[test]
fn commands_that_need_root_say_so_once_first() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new("");
    // The binary where uid 65534 can run it.
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = t.path().join("synbackup");
    fs::copy(env!("CARGO_BIN_EXE_synbackup"), &exe).unwrap();
    for args in [
        vec!["run", "c0"],
        vec!["cold", "c0"],
        vec!["restore", "--instance", "c0", "x"],
        vec!["drill", "c0"],
        vec!["prune", "c0"],
    ] {
        let o = command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .arg("--config-dir")
            .arg(s.root.join("etc"))
            .arg("--state-dir")
            .arg(s.root.join("state"))
            .arg("--lock-dir")
            .arg(s.root.join("lock"))
            .args(&args)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains(&format!("synbackup {} needs root", args[0])),
            "{args:?}: {err}"
        );
    }
    assert!(!s.root.join("state").exists(), "nothing recorded");
}

#[test]
fn two_instances_of_one_service_directory_are_refused() {
    let s = Setup::new("");
    // The same directory, spelt with a trailing slash and through a link.
    std::os::unix::fs::symlink(&s.src, s.root.join("svc-link")).unwrap();
    fs::write(
        s.root.join("etc/c1.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}/\nSYNBACKUP_BACKUP_ROOT={}\n",
            s.root.join("svc-link").display(),
            s.root.join("backups1").display()
        ),
    )
    .unwrap();
    let o = s.run(&["run", "c0"]);
    assert_fails(&o, 2, "is also the service directory of instance c1");
    assert!(stderr(&o).contains("c1.conf:1"), "{}", stderr(&o));
    let o = s.run(&["run", "c1"]);
    assert_fails(&o, 2, "is also the service directory of instance c0");
    assert!(!s.backups.exists() && !s.root.join("backups1").exists());
    let o = s.run(&["status"]);
    assert_eq!(o.status.code(), Some(9));
    fs::remove_file(s.root.join("etc/c1.conf")).unwrap();
    assert!(s.run(&["run", "c0"]).status.success());
}

#[test]
fn directories_kept_aside_are_shown_and_expire() {
    let s = Setup::new("SYNBACKUP_KEEP_ASIDE=2d\n");
    let name = s.backup_now();
    let o = s.run(&["restore", "--instance", "c0", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let aside: Vec<PathBuf> = fs::read_dir(&s.root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("svc.pre-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let o = s.run(&["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("c0: kept aside: ") && out.contains("by a restore"),
        "{out}"
    );
    let o = s.run(&["status", "c0", "--json"]);
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h[0]["aside"][0]["by"], "restore");
    assert!(h[0]["aside"][0]["bytes"].as_u64().unwrap() > 0);

    // A run keeps a young one, and counts it in the metrics ...
    assert!(s.run(&["run", "c0"]).status.success());
    assert!(aside[0].exists());
    assert_eq!(metric(&s.metrics(), "synbackup_aside_dirs"), 1.0);
    // ... and removes one older than SYNBACKUP_KEEP_ASIDE (by the time in its name),
    // but never a directory whose name has no time.
    let old = s.root.join(format!(
        "svc.pre-restore-{}",
        (chrono::Utc::now() - chrono::Duration::days(3)).format("%Y%m%dT%H%M%SZ")
    ));
    fs::rename(&aside[0], &old).unwrap();
    let odd = s.root.join("svc.pre-restore-by-hand");
    fs::create_dir(&odd).unwrap();
    assert!(s.run(&["run", "c0"]).status.success());
    assert!(!old.exists(), "an expired restore's directory is removed");
    assert!(odd.exists());
    assert_eq!(metric(&s.metrics(), "synbackup_aside_dirs"), 1.0);
}

#[test]
fn check_says_what_a_run_would_meet_one_line_each() {
    let s = Setup::new("");
    // No service runs on the directory: that fails; the rest passes or is skipped.
    let o = s.run(&["check", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(9), "{out}");
    assert_eq!(out.lines().count(), 7, "{out}");
    for want in [
        "c0: ok   config",
        "c0: skip unit         no SYNBACKUP_SERVICE_UNIT",
        "c0: FAIL service      no service answers on",
        "c0: ok   backup root",
        "c0: skip offsite      no SYNBACKUP_OFFSITE_REPOSITORY",
        "c0: skip pitr         point-in-time recovery is off: no nexus archive in",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert!(!s.backups.exists(), "check creates nothing");
    let o = s.run(&["check", "c0", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[2]["check"], "service");
    assert_eq!(v[2]["verdict"], "fail");

    // A backup root without room (a 64 KiB tmpfs).
    let small = s.root.join("small");
    let _fs = Tmpfs::mount(&small, "size=64k");
    let conf = s.root.join("etc/c0.conf");
    let text = fs::read_to_string(&conf).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.starts_with("SYNBACKUP_BACKUP_ROOT=") {
            true => format!("SYNBACKUP_BACKUP_ROOT={}/c0\n", small.display()),
            false => format!("{l}\n"),
        })
        .collect();
    fs::write(&conf, text).unwrap();
    let o = s.run(&["check", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("c0: FAIL backup root  not enough room in"),
        "{out}"
    );

    // A config that does not load: its one line, and nothing else is tried.
    fs::write(&conf, "SYNBACKUP_SERVICE_DIRR=/x\n").unwrap();
    let o = s.run(&["check", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(9), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("c0: FAIL config"), "{out}");
}

#[test]
fn notify_is_told_of_each_start_and_end_and_never_fails_a_run() {
    use std::os::unix::fs::PermissionsExt;
    let hooks = tempfile::tempdir().unwrap();
    let log = hooks.path().join("log");
    let hook = |name: &str, body: &str, mode: u32| {
        let p = hooks.path().join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let good = hook(
        "good",
        &format!(
            "printf '%s %s %s ' \"$1\" \"$2\" \"$3\" >>{l}; cat >>{l}",
            l = log.display()
        ),
        0o755,
    );
    let s = Setup::new(&format!("SYNBACKUP_NOTIFY={}\n", good.display()));
    assert!(s.run(&["run", "c0"]).status.success());
    assert_fails(&s.run(&["cold", "c0"]), 2, "no SYNBACKUP_SERVICE_UNIT");
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("start backup c0 {"), "{text}");
    assert!(lines[1].starts_with("success backup c0 {"), "{text}");
    let end: serde_json::Value =
        serde_json::from_str(lines[1].splitn(4, ' ').nth(3).unwrap()).unwrap();
    assert_eq!(end["result"], "success");
    assert!(end["backup"].as_str().unwrap().contains("c0_"), "{end}");
    assert!(lines[2].starts_with("start cold c0 "), "{text}");
    let end: serde_json::Value =
        serde_json::from_str(lines[3].strip_prefix("failure cold c0 ").unwrap()).unwrap();
    assert_eq!(end["result"], "failed");
    assert_eq!(end["exit_code"], 2);

    // A hook that hangs, fails or is not root's own: the run still succeeds, and
    // says why the hook did not do its job.
    let conf = s.root.join("etc/c0.conf");
    let base = fs::read_to_string(&conf)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("SYNBACKUP_NOTIFY"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    for (hook, extra, needle) in [
        (
            hook("slow", "exec sleep 600", 0o755),
            "SYNBACKUP_NOTIFY_TIMEOUT=1s\n",
            "was killed after 1 s",
        ),
        (
            hook("bad", "echo nope >&2; exit 3", 0o755),
            "",
            "failed (exit status: 3): nope",
        ),
        (hook("open", "exit 0", 0o757), "", "writable by nobody else"),
    ] {
        fs::write(
            &conf,
            format!("{base}SYNBACKUP_NOTIFY={}\n{extra}", hook.display()),
        )
        .unwrap();
        let o = s.run(&["run", "c0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
}

#[test]
fn run_dry_run_says_what_it_would_do_and_changes_nothing() {
    let s = Setup::new("SYNBACKUP_KEEP_LAST=2\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\nSYNBACKUP_KEEP_MONTHLY=0\n");
    assert!(s.run(&["run", "c0"]).status.success());
    let first = PathBuf::from(s.status_json()["backup"].as_str().unwrap());
    assert!(s.run(&["run", "c0"]).status.success());
    let old_aside = s.root.join(format!(
        "svc.pre-restore-{}",
        (chrono::Utc::now() - chrono::Duration::days(9)).format("%Y%m%dT%H%M%SZ")
    ));
    fs::create_dir(&old_aside).unwrap();
    let before = hash_tree(&s.root);
    let o = s.run(&["run", "c0", "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", stderr(&o));
    for want in [
        "c0: would back up ".to_string(),
        "c0: nothing answers on ".to_string(),
        format!(
            "c0: retention would then remove 1 of 3 backups: {}",
            first.file_name().unwrap().to_string_lossy()
        ),
        format!("c0: would remove {} (", old_aside.display()),
        "c0: dry run: nothing was changed".to_string(),
    ] {
        assert!(out.contains(&want), "{want}: {out}");
    }
    assert_eq!(before, hash_tree(&s.root), "a dry run changed something");
}

/// A path that is not UTF-8 round-trips through what synbackup records (issue
/// 32): restoring into a service directory named `svc\xff\xfe`, the restore's
/// status names the kept directory (and the backup) losslessly, as `hex:` and its
/// bytes, which decode to the directory that exists; the journal line prints the
/// paths escaped (`$'...\xff\xfe...'`), never as U+FFFD.
#[test]
fn a_non_utf8_service_directory_round_trips_through_the_restore_status() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let s = Setup::new("");
    let name = s.backup_now();
    let dir = s.root.join(OsStr::from_bytes(b"svc\xff\xfe"));
    fs::rename(&s.src, &dir).unwrap();
    let o = s
        .cmd()
        .args(["restore", "--instance", "c0", &name])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(s.root.join("state/c0.restore.json")).unwrap()).unwrap();
    let unhex = |k: &str| -> PathBuf {
        let h = k
            .strip_prefix("hex:")
            .unwrap_or_else(|| panic!("not hex: {k}"));
        let bytes: Vec<u8> = (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect();
        PathBuf::from(std::ffi::OsString::from_vec(bytes))
    };
    let kept = unhex(st["details"]["kept_previous"].as_str().unwrap());
    assert!(kept.is_dir(), "{} exists", kept.display());
    assert_eq!(kept.parent(), Some(s.root.as_path()));
    assert!(kept
        .file_name()
        .unwrap()
        .as_bytes()
        .starts_with(b"svc\xff\xfe.pre-restore-"));
    assert!(kept.join("cell.guid").is_file());
    let text = fs::read_to_string(s.root.join("state/c0.restore.json")).unwrap();
    assert!(!text.contains('\u{fffd}'), "{text}");
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("restored "))
        .unwrap_or_else(|| panic!("no restored line: {err}"));
    assert!(
        line.contains(&format!("into $'{}/svc\\xff\\xfe'", s.root.display())),
        "{line}"
    );
    assert!(!err.contains('\u{fffd}'), "{err}");
}

/// A layer on another disk (`layers/abc -> OTHER/abc`, a link the backup follows
/// and copies the data of) is restored as that link, its data written at the
/// target (issue 32): `restore --instance` leaves `layers/abc` a link to
/// `OTHER/abc` (a tmpfs of its own), `OTHER/abc` holds the backup's records, what
/// was there is kept as `OTHER/abc.pre-restore-STAMP`, the status and the undo
/// lines name it, no staging copy is left. A link whose disk is not there is
/// refused before anything changes, with what to do.
#[test]
fn restore_keeps_a_layer_on_another_disk_a_link_and_writes_its_data_there() {
    let s = Setup::new("");
    let other = s.root.join("otherdisk");
    let _disk = Tmpfs::mount(&other, "size=64m");
    let layer = s.src.join("layers/abc");
    let on_other = other.join("abc");
    let cp = command("cp").arg("-a").arg(&layer).arg(&on_other).status();
    assert!(cp.unwrap().success());
    fs::remove_dir_all(&layer).unwrap();
    std::os::unix::fs::symlink(&on_other, &layer).unwrap();
    let records = dump_env(&on_other.join("layer_v2.lmdb"));
    let name = s.backup_now();
    let m = manifest(&s.backups.join(&name));
    assert!(
        m["symlinks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["path"] == "layers/abc" && l["followed"] == true),
        "{}",
        m["symlinks"]
    );
    // The layer changes after the backup.
    fs::write(on_other.join("added-later"), "x").unwrap();

    // A failure after the layer's data was swapped in takes it back too.
    let o = s
        .cmd()
        .env("SYNBACKUP_FAULT", "restore-after-links")
        .args(["restore", "--instance", "c0", &name])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    assert!(on_other.join("added-later").is_file(), "the target is back");
    assert_eq!(names(&other), vec!["abc"], "no copy, nothing kept");
    assert_eq!(fs::read_link(&layer).unwrap(), on_other);

    let o = s.run(&["restore", "--instance", "c0", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = fs::symlink_metadata(&layer).unwrap();
    assert!(meta.file_type().is_symlink(), "layers/abc is a link again");
    assert_eq!(fs::read_link(&layer).unwrap(), on_other);
    assert!(!on_other.join("added-later").exists());
    assert_eq!(dump_env(&on_other.join("layer_v2.lmdb")), records);
    assert!(on_other.join("sparse.bin").is_file());
    let listed = names(&other);
    assert_eq!(listed.len(), 2, "{listed:?}: the target and the kept one");
    let kept = other.join(
        listed
            .iter()
            .find(|n| n.starts_with("abc.pre-restore-"))
            .unwrap(),
    );
    assert!(kept.join("added-later").is_file(), "what was there is kept");
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(s.root.join("state/c0.restore.json")).unwrap()).unwrap();
    let l = &st["details"]["linked"][0];
    assert_eq!(l["path"], "layers/abc");
    assert_eq!(l["target"], on_other.display().to_string());
    assert_eq!(l["data"], "written");
    assert_eq!(l["kept_previous"], kept.display().to_string());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "and the data of the link to {p}: mv {p} ",
            p = on_other.display()
        )) && out.contains(&format!("&& mv {} {}", kept.display(), on_other.display())),
        "{out}"
    );

    // A link to a disk that is not there: refused, nothing changed.
    let gone = s.root.join("gone");
    fs::create_dir(&gone).unwrap();
    let cp = command("cp")
        .arg("-a")
        .arg(&on_other)
        .arg(gone.join("abc"))
        .status();
    assert!(cp.unwrap().success());
    fs::remove_file(&layer).unwrap();
    std::os::unix::fs::symlink(gone.join("abc"), &layer).unwrap();
    let first = name.clone();
    assert!(wait_for(3, || chrono::Utc::now()
        .format("c0_%Y%m%dT%H%M%SZ")
        .to_string()
        != first));
    let o = s.run(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let second = names(&s.backups)
        .into_iter()
        .filter(|n| n.starts_with("c0_") && *n != first)
        .max()
        .unwrap();
    fs::remove_dir_all(&gone).unwrap();
    let before = hash_tree(&s.src);
    let o = s.run(&["restore", "--instance", "c0", &second]);
    assert_fails(
        &o,
        3,
        &format!(
            "{} was a link to {} when it was backed up (the backup holds its data); {} does not exist here: mount the disk that held it there (or create the directory), and restore again; restore never turns such a link into a local directory",
            layer.display(),
            gone.join("abc").display(),
            gone.display()
        ),
    );
    assert_eq!(hash_tree(&s.src), before);
    assert_eq!(fs::read_link(&layer).unwrap(), gone.join("abc"));
    assert!(!gone.exists());
}

/// The window writes its compacted copy beside the service directory by path
/// (issue 32): in a parent another user owns, that user could put a link in the
/// copy's place and send root's writes elsewhere. Refused before anything stops,
/// exit 3, naming the parent, its owner and mode and the fix (no systemd needed:
/// this comes before the unit is asked).
#[test]
fn the_window_refuses_a_service_directory_in_a_directory_another_user_owns() {
    let s = Setup::new("");
    let users = s.root.join("users");
    fs::create_dir(&users).unwrap();
    let svc = users.join("svc");
    fs::rename(&s.src, &svc).unwrap();
    std::os::unix::fs::chown(&users, Some(65534), Some(65534)).unwrap();
    fs::write(
        s.root.join("etc/c0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_SERVICE_UNIT=synapse-cortex@c0.service\n",
            svc.display(),
            s.backups.display()
        ),
    )
    .unwrap();
    let before = hash_tree(&svc);
    let o = s.run(&["cold", "c0"]);
    assert_fails(
        &o,
        3,
        &format!(
            "the window writes its copy beside {}, in {u}, which is owned by 65534:65534 with mode 0755: another user could put a link in the copy's place and send root's writes elsewhere; nothing was stopped: make {u} root's and not writable by others (`chown root: {u}; chmod go-w {u}`)",
            svc.display(),
            u = users.display()
        ),
    );
    assert_eq!(hash_tree(&svc), before);
    assert_eq!(names(&users), vec!["svc"]);
}

/// Restore writes its copy by descriptor beside the service directory (issue 32):
/// in a parent the service's user owns, that user swapping the staging copy for
/// a link to a root-owned directory while it is written redirects no write (root's
/// directory stays as it was), and the restore fails before it stops or swaps
/// anything (the copy is no longer what it wrote), exit 3, naming it.
#[test]
fn restore_never_writes_through_a_link_put_in_place_of_its_copy() {
    use std::process::Stdio;
    let t = tempfile::tempdir().unwrap();
    let users = t.path().join("users");
    let svc = users.join("svc");
    fake_service(&svc, 50);
    let bk = t.path().join("bk");
    assert!(run(&[&"backup", &svc, &bk]).status.success());
    fs::write(svc.join("added-later"), "x").unwrap();
    let st = command("chown")
        .args(["-R", "65534:65534"])
        .arg(&users)
        .status()
        .unwrap();
    assert!(st.success());
    let decoy = t.path().join("root-only");
    fs::create_dir(&decoy).unwrap();
    fs::write(decoy.join("secret"), "root's\n").unwrap();
    let before = hash_tree(&svc);
    let (release, log) = (t.path().join("release"), t.path().join("log"));
    let mut child = bin()
        .env("SYNBACKUP_FAULT", "hold:restore-staging-held")
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .arg("restore")
        .arg(&bk)
        .arg(&svc)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(60, || fs::read_to_string(&log)
            .unwrap()
            .contains("holding at restore-staging-held")),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    let staging = names(&users)
        .into_iter()
        .find(|n| n.starts_with(".svc.synbackup-restoring."))
        .unwrap();
    fs::rename(users.join(&staging), t.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&decoy, users.join(&staging)).unwrap();
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    let err = fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "{} was replaced while the restore wrote it",
            users.join(&staging).display()
        )),
        "{err}"
    );
    assert_eq!(names(&decoy), vec!["secret"], "nothing written there");
    assert_eq!(hash_tree(&svc), before, "the service directory untouched");
}

/// A restore of a fake service (no unit) into `svc`, held at the fault point
/// `point` (until `release` exists), its stdout and stderr in files under `t`.
fn restore_held_at(
    t: &Path,
    bk: &Path,
    svc: &Path,
    point: &str,
) -> (std::process::Child, PathBuf, PathBuf, PathBuf) {
    let (release, out, err) = (t.join("release"), t.join("out"), t.join("err"));
    let child = bin()
        .env("SYNBACKUP_FAULT", format!("hold:{point}"))
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .arg("restore")
        .arg(bk)
        .arg(svc)
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(60, || fs::read_to_string(&err)
            .unwrap()
            .contains(&format!("holding at {point}"))),
        "{}",
        fs::read_to_string(&err).unwrap()
    );
    (child, release, out, err)
}

/// The inode of `p` (not following a link).
fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).unwrap().ino()
}

/// Issue 32: the name a restore keeps the live directory under is chosen before
/// the service stops, and renamed to after: an entry that appears at that name in
/// between (here an empty directory, made by another process while the restore
/// waits after the stop) was silently replaced by rename(2). It is left as it is,
/// and the previous directory kept under a free name, the one printed.
#[test]
fn a_restore_never_replaces_an_entry_that_appeared_at_its_kept_name_after_the_stop() {
    let t = tempfile::tempdir().unwrap();
    let svc = t.path().join("svc");
    fake_service(&svc, 30);
    let bk = t.path().join("bk");
    assert!(run(&[&"backup", &svc, &bk]).status.success());
    fs::write(svc.join("added-later"), "x").unwrap();
    let before = hash_tree(&svc);
    let from = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (mut child, release, out, err) = restore_held_at(t.path(), &bk, &svc, "restore-after-stop");
    // Every name the restore may have chosen (its stamp is a second between the
    // start and now), taken by an empty directory.
    let mut planted = Vec::new();
    let mut at = from;
    while at <= chrono::Utc::now() + chrono::Duration::seconds(1) {
        let p = t
            .path()
            .join(format!("svc.pre-restore-{}", at.format("%Y%m%dT%H%M%SZ")));
        fs::create_dir(&p).unwrap();
        planted.push((inode(&p), p));
        at += chrono::Duration::seconds(1);
    }
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    let (out, err) = (
        fs::read_to_string(out).unwrap(),
        fs::read_to_string(err).unwrap(),
    );
    assert_eq!(st.code(), Some(0), "{err}");
    for (ino, p) in &planted {
        assert!(
            p.is_dir() && inode(p) == *ino && names(p).is_empty(),
            "{} was replaced by the previous directory:\n{err}",
            p.display()
        );
    }
    let kept: Vec<String> = names(t.path())
        .into_iter()
        .filter(|n| n.starts_with("svc.pre-restore-"))
        .filter(|n| !planted.iter().any(|(_, p)| p.ends_with(n)))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}\n{err}");
    assert_eq!(
        hash_tree(&t.path().join(&kept[0])),
        before,
        "the previous directory, kept"
    );
    assert!(
        out.contains(&format!(
            "&& mv {} {};",
            t.path().join(&kept[0]).display(),
            svc.display()
        )),
        "the undo command names the kept directory: {out}"
    );
}

/// Issue 32: between the choice of the kept name and the rename (the fault point
/// `restore-aside-chosen`), an entry put at that name is not replaced: the rename
/// is RENAME_NOREPLACE, and the next free name is taken.
#[test]
fn a_restore_never_replaces_an_entry_that_appeared_at_its_kept_name_as_it_renames() {
    let t = tempfile::tempdir().unwrap();
    let svc = t.path().join("svc");
    fake_service(&svc, 30);
    let bk = t.path().join("bk");
    assert!(run(&[&"backup", &svc, &bk]).status.success());
    fs::write(svc.join("added-later"), "x").unwrap();
    let before = hash_tree(&svc);
    let (mut child, release, out, err) =
        restore_held_at(t.path(), &bk, &svc, "restore-aside-chosen");
    let log = fs::read_to_string(&err).unwrap();
    let prefix = format!("keeping {} at ", svc.display());
    let chosen = PathBuf::from(
        log.lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, a)| a.to_string()))
            .unwrap_or_else(|| panic!("no kept name logged:\n{log}")),
    );
    fs::create_dir(&chosen).unwrap();
    let planted = inode(&chosen);
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    let (out, err) = (
        fs::read_to_string(out).unwrap(),
        fs::read_to_string(err).unwrap(),
    );
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        inode(&chosen) == planted && names(&chosen).is_empty(),
        "{} was replaced:\n{err}",
        chosen.display()
    );
    assert!(
        err.contains(&format!(
            "{} appeared since it was chosen; it is left as it is",
            chosen.display()
        )),
        "{err}"
    );
    let second = PathBuf::from(format!("{}-2", chosen.display()));
    assert_eq!(hash_tree(&second), before, "the previous directory, kept");
    assert!(
        out.contains(&format!("&& mv {} {};", second.display(), svc.display())),
        "the undo command names the kept directory: {out}"
    );
}

/// seed-mirror writes its copy by path, as root, inside NEWDIR when it exists
/// (an empty mount point, say) or beside it: a NEWDIR (or parent) another user can
/// write is refused before anything is read or asked, exit 3, nothing made. Before,
/// such a NEWDIR owned by the service user passed and the seed went on (here to
/// "instance l0 has no good backup").
#[test]
fn seed_mirror_refuses_a_new_directory_another_user_can_write() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host");
    let ldir = t.path().join("leader");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(&ldir).unwrap();
    fs::write(
        root.join("etc/l0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\n",
            ldir.display(),
            t.path().join("backups").display()
        ),
    )
    .unwrap();
    // An empty NEWDIR the service user (65534 here) owns.
    let newdir = t.path().join("m0");
    fs::create_dir(&newdir).unwrap();
    chown(&newdir, Some(65534), Some(65534)).unwrap();
    let o = run_at(
        &root,
        &["seed-mirror", "--instance", "l0", newdir.to_str().unwrap()],
    );
    assert_fails(&o, 3, "another user could put a link");
    assert!(
        fs::read_dir(&newdir).unwrap().next().is_none(),
        "nothing made"
    );
    // A new NEWDIR in a parent others can write (no sticky bit): the same.
    let open = t.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let o = run_at(
        &root,
        &[
            "seed-mirror",
            "--instance",
            "l0",
            open.join("m1").to_str().unwrap(),
        ],
    );
    assert_fails(&o, 3, "another user could put a link");
    assert!(!open.join("m1").exists());
}
