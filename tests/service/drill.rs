// SPDX-License-Identifier: Apache-2.0
//! `synbackup drill` against real Synapse 2.256.0: a backup of a live Cortex boots
//! with its node counts (its copy of the certificate directory left out of the
//! scratch copy); a killed drill's scratch copy is removed by the next drill;
//! a backup whose `cell.yaml` the service rejects fails with the service's own
//! error; a restored mirror stays isolated from its upstream on the host's loopback;
//! `drill INSTANCE` picks the newest verified backup and records status and metrics.
//!
//! One test function runs the phases in order: each boot takes 15–60 s here.

use std::fs;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

/// Scratch copies and logs drills left in `dir`.
fn scratch_left(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".synbackup-drill."))
        .collect()
}

fn drill_args(backup: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "drill".into(),
        "--dir".into(),
        backup.into(),
        "--python".into(),
        python().into(),
        "--timeout".into(),
        "5m".into(),
        "--json".into(),
    ]
}

fn drill(backup: &Path) -> std::process::Output {
    bin().args(drill_args(backup)).output().unwrap()
}

/// Poll `cond` every 100 ms for up to `secs`.
fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A copy of `backup` changed by `edit`, backed up again (a new, valid manifest).
fn remade(t: &Path, backup: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = t.join(format!("{name}-src"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(backup)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_file(src.join("synbackup-manifest.json")).unwrap();
    let _ = fs::remove_file(src.join("synbackup-verified"));
    edit(&src);
    let dst = t.join(name);
    let o = run(&[&"backup", &src, &dst, &"--verify", &"-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    dst
}

#[test]
fn drills_on_real_cortex_backups() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("core00");
    let mut core = Cortex::start(&src);
    let d = core.url_dir().to_string();
    storm(&["add", &d, "120"]);
    let b1 = t.path().join("b1");
    // The backup carries a certificate directory; the drill's copy leaves it out.
    let certdir = t.path().join("certs");
    fs::create_dir_all(certdir.join("hosts")).unwrap();
    fs::write(certdir.join("hosts/core00.key"), "a key").unwrap();
    let o = run(&[
        &"backup",
        &"--cert-dir",
        &certdir,
        &src,
        &b1,
        &"--verify",
        &"-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let live_ipv4 = core.count();
    let live_tags: u64 = storm(&["count", &d, "syn:tag"]).parse().unwrap();
    let guid = fs::read_to_string(src.join("cell.guid")).unwrap();
    core.stop();
    let before = hash_tree(&b1);

    // Phase 1: a drill killed with SIGKILL takes its server along and leaves its
    // scratch copy, which the next drill removes.
    let mut child = bin()
        .args(drill_args(&b1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let scratch = t.path().join(format!(".b1.synbackup-drill.{}", child.id()));
    assert!(
        wait_for(300, || UnixStream::connect(scratch.join("sock")).is_ok()),
        "the drill's server never answered on {}",
        scratch.display()
    );
    assert!(b1.join("synbackup-certs/hosts/core00.key").is_file());
    assert!(!scratch.join("synbackup-certs").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(60, || UnixStream::connect(scratch.join("sock")).is_err()),
        "the server outlived its killed drill"
    );
    assert!(scratch.is_dir(), "a killed drill cannot clean up");

    // Phase 2: the drill passes with the live Cortex's node counts, and cleans up.
    let o = drill(&b1);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["form_counts"]["inet:ipv4"], live_ipv4, "{out}");
    assert_eq!(out["form_counts"]["syn:tag"], live_tags, "{out}");
    assert_eq!(out["cell_guid"], guid.trim());
    assert_eq!(out["synapse_version"], "2.256.0");
    assert_eq!(out["cell_type"], "cortex");
    assert!(["nominal", "degraded"].contains(&out["health"].as_str().unwrap()));
    assert!(stderr(&o).contains("drill passed"), "{}", stderr(&o));
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
    assert_eq!(hash_tree(&b1), before, "the drill changed the backup");
    let o = run(&[&"verify", &b1]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Phase 3: a cell.yaml the service rejects: exit 11, the service's own error.
    let bad = remade(t.path(), &b1, "bad", |dir| {
        fs::write(dir.join("cell.yaml"), "nexslog:en: notabool\n").unwrap();
    });
    let o = drill(&bad);
    assert_fails(&o, 11, "BadConfValu");
    assert!(error_lines(&o)[0].contains("nexslog:en"), "{}", stderr(&o));
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());

    // Phase 4: a mirror whose upstream listens on the host's loopback never reaches
    // it, and still answers.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    upstream.set_nonblocking(true).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicUsize::new(0));
    let (h, s) = (hits.clone(), stop.clone());
    let listener = std::thread::spawn(move || {
        while s.load(Ordering::SeqCst) == 0 {
            if upstream.accept().is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mirror = remade(t.path(), &b1, "mirror", |dir| {
        fs::write(
            dir.join("cell.yaml"),
            format!("mirror: tcp://root:secret@127.0.0.1:{port}/\nnexslog:en: true\n"),
        )
        .unwrap();
    });
    let o = drill(&mirror);
    stop.store(1, Ordering::SeqCst);
    listener.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the mirror reached its upstream"
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["form_counts"]["inet:ipv4"], live_ipv4, "{out}");
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());

    // Phase 5: an instance: the newest verified backup, the Python and module from
    // the config, the operator's check, status and metrics recorded.
    let etc = t.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(
        etc.join("c0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_DRILL_PYTHON={}\n\
             SYNBACKUP_DRILL_MODULE=synapse.servers.cortex\nSYNBACKUP_DRILL_CHECK=inet:ipv4 | limit 1\n",
            src.display(),
            t.path().join("root").display(),
            python().display()
        ),
    )
    .unwrap();
    // The collector's directory exists (node_exporter's package makes it): metrics
    // are written only then.
    fs::create_dir_all(t.path().join("metrics")).unwrap();
    let with_dirs = |args: &[&str]| {
        bin()
            .arg("--config-dir")
            .arg(&etc)
            .arg("--state-dir")
            .arg(t.path().join("state"))
            .arg("--lock-dir")
            .arg(t.path().join("lock"))
            .arg("--metrics-dir")
            .arg(t.path().join("metrics"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = with_dirs(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = with_dirs(&["drill", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(t.path().join("state/c0.drill.json")).unwrap()).unwrap();
    assert_eq!(st["result"], "success", "{st}");
    assert_eq!(st["details"]["form_counts"]["inet:ipv4"], live_ipv4, "{st}");
    let prom = fs::read_to_string(t.path().join("metrics/synbackup-c0-drill.prom")).unwrap();
    assert!(
        prom.contains("synbackup_drill_last_success_timestamp_seconds{instance=\"c0\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("synbackup_drill_boot_seconds{instance=\"c0\"} "),
        "{prom}"
    );
    assert_eq!(scratch_left(&t.path().join("root")), Vec::<String>::new());
}
