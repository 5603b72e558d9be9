// SPDX-License-Identifier: Apache-2.0
//! The shipped monitoring (packaging/monitoring/) against the metrics synbackup's
//! runs really write: the alert rules pass `promtool check rules`, and `promtool
//! test rules` over the series of a good nightly run (with its offsite copy and
//! certificate check), a failed window and a refused restore fires exactly the
//! window's problem; a backup that never succeeded fires the staleness alert; every
//! metric the rules and the Grafana dashboard query is one those runs wrote.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::*;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// promtool: `SYNBACKUP_TEST_PROMTOOL` (what .ci/setup unpacks), else from PATH.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SYNBACKUP_TEST_PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    let found = command("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()))
}

/// `(name, labels, value)` of every sample in the `.prom` files of `dir`.
fn samples(dir: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n.to_string(), format!("{{{l}")),
                None => (series.to_string(), String::new()),
            };
            out.push((name, labels, value.to_string()));
        }
    }
    out
}

/// The metric names an expression names (a `__name__` pattern's prefix left out).
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("synbackup_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if !name.ends_with('_') {
            out.push(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_shipped_alerts_and_dashboard_fit_the_metrics_runs_write() {
    let Some(promtool) = promtool() else {
        eprintln!("SKIPPED: no promtool (run .ci/setup, or install Debian's prometheus package)");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let src = root.join("svc");
    fake_service(&src, 100);
    crate::util::certs::easycert(&src.join("certs"), &["--ca", "testca"]);
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("metrics")).unwrap();
    let password = root.join("password");
    fs::write(&password, "correct horse battery staple\n").unwrap();
    fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(
        root.join("etc/c0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_OFFSITE_REPOSITORY={}\nSYNBACKUP_OFFSITE_PASSWORD_FILE={}\n",
            src.display(),
            root.join("backups").display(),
            root.join("repo").display(),
            password.display()
        ),
    )
    .unwrap();
    let ok = |args: &[&str]| {
        let o = run_at(root, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    ok(&["offsite", "init", "c0"]);
    ok(&["run", "c0"]);
    assert_fails(
        &run_at(root, &["cold", "c0"]),
        2,
        "no SYNBACKUP_SERVICE_UNIT",
    );
    assert_fails(
        &run_at(
            root,
            &["restore", "--instance", "c0", "c0_19990101T000000Z"],
        ),
        3,
        "cannot be used",
    );
    let written = samples(&root.join("metrics"));
    let seen: BTreeSet<String> = written.iter().map(|(n, _, _)| n.clone()).collect();

    // The rules and the dashboard name only metrics these runs wrote.
    let rules = repo_file("packaging/monitoring/synbackup-alerts.yml");
    let text = fs::read_to_string(&rules).unwrap();
    let dash: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(repo_file("packaging/monitoring/synbackup-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(str::to_string))
        .collect();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let named: BTreeSet<String> = exprs.iter().flat_map(|e| names_in(e)).collect();
    assert!(named.len() > 10, "{named:?}");
    let unknown: Vec<&String> = named.difference(&seen).collect();
    assert!(
        unknown.is_empty(),
        "queried but never written: {unknown:?} (written: {seen:?})"
    );

    let o = command(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // What the runs wrote, held for two hours: only the window's problem fires.
    let series: String = written
        .iter()
        .map(|(n, l, v)| format!("      - series: '{n}{l}'\n        values: '{v}+0x120'\n"))
        .collect();
    let tests = format!(
        r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{series}    alert_rule_test:
      - eval_time: 30m
        alertname: SynbackupProblem
        exp_alerts:
          - exp_labels:
              severity: critical
              instance: c0
            exp_annotations:
              summary: 'synbackup: synbackup_cold_last_problem on c0'
              description: 'The last synbackup_cold_last_problem of c0 failed: `synbackup status` says why.'
      - eval_time: 30m
        alertname: SynbackupNoRecentBackup
      - eval_time: 30m
        alertname: SynbackupOffsiteStale
      - eval_time: 30m
        alertname: SynbackupCertificateExpiring
      - eval_time: 30m
        alertname: SynbackupCertificateError
      - eval_time: 30m
        alertname: SynbackupReclaimable
      - eval_time: 30m
        alertname: SynbackupAsideCopies
  - interval: 1m
    input_series:
      - series: 'synbackup_last_success_timestamp_seconds{{instance="never"}}'
        values: '0x2460'
    alert_rule_test:
      - eval_time: 40h
        alertname: SynbackupNoRecentBackup
        exp_alerts:
          - exp_labels:
              severity: critical
              instance: never
            exp_annotations:
              summary: 'synbackup: no good backup of never for 36 h'
              description: 'The last good backup of never is 1d 16h 0m 0s old.'
"#,
        rules = rules.display()
    );
    let file = root.join("alerts-test.yml");
    fs::write(&file, tests).unwrap();
    let o = command(&promtool)
        .arg("test")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
