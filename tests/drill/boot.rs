// SPDX-License-Identifier: Apache-2.0
//! `synbackup drill` against real Synapse, on both release lines (2.256.0 and
//! 3.7.0): a backup of a live Cortex boots with its node counts, the versions and
//! the operator's check in the line's Storm (a check in the other line's Storm
//! fails the drill); its copy of the certificate directory is left out of the
//! scratch copy; a killed drill's scratch copy is removed by the next drill; a
//! backup whose `cell.yaml` the service rejects fails with the service's own error;
//! a restored mirror stays isolated from its upstream on the host's loopback, a
//! leader registered with AHA boots without it (3.x refuses to boot a cell under
//! AHA that cannot reach AHA), and one following its live leader over the leader's
//! unix socket (2.x `mirror:`, 3.x
//! `parent:`) and registered with AHA (2.x `aha:registry:`, 3.x `aha:servers:`)
//! reaches neither: its copy's `cell.yaml` neutralised and booted in safemode, the
//! leader gets no write and the drill sees no node newer than the backup; a backup
//! without `cell.guid` is refused; a backup owned by another user is booted as
//! that user; `drill INSTANCE` picks the newest *verified* backup and records
//! status, metrics and the per-backup record `list` and `status` show;
//! `SYNBACKUP_DRILL_AFTER_RUN=yes` drills each run's backup. (The upgrade
//! rehearsals across releases: `rehearsal.rs`.)
//!
//! One test function per line runs the phases in order: each boot takes 15–60 s
//! here. Its tree is under the build's directory, not the temporary one: a drill's
//! server gets a private `/tmp`, and the leader's socket must stay where a drilled
//! copy that kept its `mirror:`/`parent:` would find it.

use std::fs;
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

/// Scratch copies and logs drills left in `dir`.
fn scratch_left(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".synbackup-drill."))
        .collect()
}

fn drill_args(line: Line, backup: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "drill".into(),
        "--dir".into(),
        backup.into(),
        "--python".into(),
        line.python().into(),
        "--timeout".into(),
        "5m".into(),
        "--json".into(),
    ]
}

fn drill(line: Line, backup: &Path) -> std::process::Output {
    bin().args(drill_args(line, backup)).output().unwrap()
}

/// A copy of `backup` changed by `edit`, backed up again (a new, valid manifest).
fn remade(t: &Path, backup: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = t.join(format!("{name}-src"));
    let st = command("cp")
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

/// A copy of `backup` without `cell.guid`, its manifest remade to match (the file's
/// entry and `cell_guid` gone, `body_sha256` recomputed): `backup` refuses such a
/// source, so the manifest is edited as the format documents.
fn without_guid(t: &Path, backup: &Path, name: &str) -> PathBuf {
    let dst = t.join(name);
    let st = command("cp")
        .arg("-a")
        .arg(backup)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_file(dst.join("cell.guid")).unwrap();
    let mpath = dst.join("synbackup-manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    m["files"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["path"] != "cell.guid");
    m["cell_guid"] = serde_json::Value::Null;
    m["body_sha256"] = "".into();
    let body = serde_json::to_string_pretty(&m).unwrap();
    fs::write(&mpath, &body).unwrap();
    let sum = command("sha256sum").arg(&mpath).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    let sum = sum.split_whitespace().next().unwrap();
    let body = body.replacen(
        "\"body_sha256\": \"\"",
        &format!("\"body_sha256\": \"{sum}\""),
        1,
    );
    fs::write(&mpath, body).unwrap();
    dst
}

/// True when uid 65534 can start `python` (its directories are reachable). Run
/// through `sh`: setpriv keeps its capabilities until its own exec, which would
/// reach through directories the user cannot.
fn runs_as_nobody(python: &Path) -> bool {
    command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/bin/sh", "-c", "exec \"$0\" -c ''"])
        .arg(python)
        // Its "Permission denied" is the answer, not news for the log.
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A copy of `b1` owned by uid 65534 boots with its server running as 65534.
fn drills_as_owner(line: Line, t: &Path, b1: &Path) {
    let owned = remade(t, b1, "owned", |dir| {
        let st = command("chown")
            .args(["-R", "65534:65534"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
    });
    let mut child = bin()
        .args(drill_args(line, &owned))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let scratch = t.join(format!(".owned.synbackup-drill.{}", child.id()));
    let mut server_uid = None;
    wait_for(300, || {
        let pid = fs::read_to_string(scratch.join("synbackup-drill-scratch")).unwrap_or_default();
        let status = fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        server_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|u| u.split_whitespace().map(String::from).collect::<Vec<_>>());
        server_uid.is_some() || child.try_wait().unwrap().is_some()
    });
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        server_uid.expect("the drill's server was never seen"),
        vec!["65534"; 4],
        "the server's real, effective, saved and fs uid"
    );
    assert_eq!(scratch_left(t), Vec::<String>::new());
}

/// A listener counting who connects, until dropped: a stand-in for a service a
/// drilled copy must not reach (an upstream on the host's loopback, AHA).
struct Tripwire {
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn tcp() -> (Tripwire, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        (Tripwire::watch(move || l.accept().is_ok()), port)
    }

    fn unix(sock: &Path) -> Tripwire {
        let l = UnixListener::bind(sock).unwrap();
        l.set_nonblocking(true).unwrap();
        Tripwire::watch(move || l.accept().is_ok())
    }

    fn watch(mut accepted: impl FnMut() -> bool + Send + 'static) -> Tripwire {
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicUsize::new(0));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while s.load(Ordering::SeqCst) == 0 {
                if accepted() {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Tripwire {
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop listening; how many connected.
    fn hits(mut self) -> usize {
        self.stop.store(1, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.hits.load(Ordering::SeqCst)
    }
}

crate::on_both_lines!(drills_on_real_cortex_backups);

fn drills_on_real_cortex_backups(line: Line) {
    let form = line.ip_form();
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = t.path().join("core00");
    // The live Cortex is also the leader of phase 4b: it keeps a nexus log.
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("cell.yaml"), "nexslog:en: true\n").unwrap();
    let mut core = Cortex::start(line, &src);
    assert_eq!(core.add(120, 0), 120);
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
    let live_ips = core.count();
    let live_tags = core.count_of("syn:tag");
    let guid = fs::read_to_string(src.join("cell.guid")).unwrap();
    // Nodes newer than the backup: a drilled copy that followed its leader would
    // count them.
    assert_eq!(core.add(40, 10_000), 160);
    let before = hash_tree(&b1);

    // Phase 1: a drill killed with SIGKILL takes its server along and leaves its
    // scratch copy, which the next drill removes.
    let mut child = bin()
        .args(drill_args(line, &b1))
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

    // Phase 2: the drill passes with the live Cortex's node counts and versions,
    // runs the operator's check (this line's Storm: `(true)`, the line's form),
    // and cleans up.
    let check = format!("if (true) {{ {form}#synbackup.test }} return((true))");
    let o = bin()
        .args(drill_args(line, &b1))
        .args(["--check", &check])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["form_counts"][form], live_ips, "{out}");
    assert_eq!(out["form_counts"]["syn:tag"], live_tags, "{out}");
    assert_eq!(out["cell_guid"], guid.trim());
    assert_eq!(out["synapse_version"], line.version(), "{out}");
    assert_eq!(out["backup_synapse_version"], line.version(), "{out}");
    assert_eq!(out["cell_type"], "cortex");
    assert!(["nominal", "degraded"].contains(&out["health"].as_str().unwrap()));
    assert!(stderr(&o).contains("drill passed"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("(Synapse {}, safemode)", line.version())),
        "{}",
        stderr(&o)
    );
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
    assert_eq!(hash_tree(&b1), before, "the drill changed the backup");
    let o = run(&[&"verify", &b1]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A check in the other line's Storm (its IPv4 form does not exist here) is
    // the drill's failure, with Storm's error.
    let o = bin()
        .args(drill_args(line, &b1))
        .args(["--check", line.other().ip_form()])
        .output()
        .unwrap();
    assert_fails(&o, 11, "SYNBACKUP_DRILL_CHECK failed");
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());

    // Phase 3: a cell.yaml the service rejects: exit 11, the service's own error.
    let bad = remade(t.path(), &b1, "bad", |dir| {
        fs::write(dir.join("cell.yaml"), "nexslog:en: notabool\n").unwrap();
    });
    let o = drill(line, &bad);
    assert_fails(&o, 11, "BadConfValu");
    assert!(error_lines(&o)[0].contains("nexslog:en"), "{}", stderr(&o));
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());

    // Phase 3b: a backup without cell.guid (manifest remade, verify passes) would
    // boot as a new cell: refused before anything starts.
    let noguid = without_guid(t.path(), &b1, "noguid");
    let o = run(&[&"verify", &noguid]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = drill(line, &noguid);
    assert_fails(&o, 11, "no cell.guid");
    assert!(
        error_lines(&o)[0].contains(noguid.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());

    // Phase 3c: a backup owned by another user is booted as that user (when that
    // user can run the line's Python at all: not when it lives under /root).
    if runs_as_nobody(&line.python()) {
        drills_as_owner(line, t.path(), &b1);
    } else {
        eprintln!(
            "SKIPPED phase 3c: uid 65534 cannot run {} on this machine",
            line.python().display()
        );
    }

    // Phase 4: a mirror whose upstream listens on the host's loopback never reaches
    // it, and still answers.
    let (upstream, port) = Tripwire::tcp();
    let mirror = remade(t.path(), &b1, "mirror", |dir| {
        fs::write(
            dir.join("cell.yaml"),
            format!(
                "{}: tcp://root:secret@127.0.0.1:{port}/\nnexslog:en: true\n",
                line.upstream_key()
            ),
        )
        .unwrap();
    });
    let o = drill(line, &mirror);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(upstream.hits(), 0, "the mirror reached its upstream");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["form_counts"][form], live_ips, "{out}");
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());

    // Phase 4a: a leader registered with AHA (on the host's loopback): the copy
    // loses the AHA keys (a 3.x cell given all three that cannot reach AHA refuses
    // to boot) and boots on its own, reaching nothing.
    let (aha, port) = Tripwire::tcp();
    let member = remade(t.path(), &b1, "member", |dir| {
        fs::write(
            dir.join("cell.yaml"),
            format!(
                "{}:\n  - ssl://127.0.0.1:{port}/\naha:name: core00\naha:network: drill.test\n",
                line.aha_key()
            ),
        )
        .unwrap();
    });
    let o = drill(line, &member);
    assert_eq!(aha.hits(), 0, "the drilled AHA member reached AHA");
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["form_counts"][form], live_ips, "{out}");
    assert_eq!(
        out["neutralised"],
        serde_json::json!([
            format!("cell.yaml:{}", line.aha_key()),
            "cell.yaml:aha:name",
            "cell.yaml:aha:network"
        ]),
        "{out}"
    );
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());

    // Phase 4b: a mirror that follows its live leader over the leader's unix
    // socket, and is registered with AHA: the drill's copy loses the upstream and
    // the `aha:*` keys (the backup keeps them), boots in safemode, sees none of the
    // leader's nodes newer than the backup, and a write in the check reaches
    // neither the leader (a mirror forwards its writes to its leader) nor AHA. 2.x
    // reaches AHA by `aha:registry` (a unix socket here), 3.x by `aha:servers`
    // (ssl:// only: a listener on the host's loopback).
    let aha_dir = t.path().join("aha");
    fs::create_dir_all(&aha_dir).unwrap();
    let (aha, aha_url) = match line {
        Line::V2 => (
            Tripwire::unix(&aha_dir.join("sock")),
            format!("cell://{}", aha_dir.display()),
        ),
        Line::V3 => {
            let (wire, port) = Tripwire::tcp();
            (wire, format!("ssl://127.0.0.1:{port}/"))
        }
    };
    let yaml = format!(
        "{}: cell://{}\n{}:\n  - {aha_url}\naha:name: core00\naha:network: drill.test\nnexslog:en: true\n",
        line.upstream_key(),
        src.display(),
        line.aha_key(),
    );
    let sockmirror = remade(t.path(), &b1, "sockmirror", |dir| {
        fs::write(dir.join("cell.yaml"), &yaml).unwrap();
    });
    let o = bin()
        .args(drill_args(line, &sockmirror))
        .args(["--check", "[inet:fqdn=written-by-drill.example]"])
        // The 3.x server sees the leader's directory where a native install would.
        .env("SYNBACKUP_SYN3_BINDS", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .unwrap();
    assert_eq!(aha.hits(), 0, "the drilled mirror reached AHA");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        core.count_of("inet:fqdn=written-by-drill.example"),
        0,
        "the drilled mirror wrote to its leader"
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        out["form_counts"][form], live_ips,
        "the drilled mirror saw the leader's newer nodes: {out}"
    );
    assert_eq!(out["safemode"], true, "{out}");
    assert_eq!(
        out["neutralised"],
        serde_json::json!([
            format!("cell.yaml:{}", line.upstream_key()),
            format!("cell.yaml:{}", line.aha_key()),
            "cell.yaml:aha:name",
            "cell.yaml:aha:network"
        ]),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(sockmirror.join("cell.yaml")).unwrap(),
        yaml,
        "the drill changed the backup's cell.yaml"
    );
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
    let live_now = core.count();
    core.stop();

    // Phase 5: an instance: the newest verified backup, the Python and module from
    // the config, the operator's check, status and metrics recorded.
    let etc = t.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(
        etc.join("c0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_DRILL_PYTHON={}\n\
             SYNBACKUP_DRILL_MODULE=synapse.servers.cortex\nSYNBACKUP_DRILL_CHECK={form} | limit 1\n",
            src.display(),
            t.path().join("root").display(),
            line.python().display()
        ),
    )
    .unwrap();
    // The collector's directory exists (node_exporter's package makes it): metrics
    // are written only then.
    fs::create_dir_all(t.path().join("metrics")).unwrap();
    let with_dirs = |args: &[&str]| run_at(t.path(), args);
    let o = with_dirs(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let root = t.path().join("root");
    let verified = names(&root)
        .into_iter()
        .find(|n| n.starts_with("c0_"))
        .unwrap();
    // A newer backup that is complete but not verified (and would not boot: no
    // cell.guid): the default is the newest *verified* one.
    let unverified = root.join("c0_29991231T000000Z");
    let st = command("cp")
        .arg("-a")
        .arg(&noguid)
        .arg(&unverified)
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_file(unverified.join("synbackup-verified")).unwrap();
    let o = with_dirs(&["drill", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(t.path().join("state/c0.drill.json")).unwrap()).unwrap();
    assert_eq!(st["result"], "success", "{st}");
    assert_eq!(
        st["backup"],
        root.join(&verified).to_str().unwrap(),
        "the newest verified backup"
    );
    assert_eq!(st["details"]["form_counts"][form], live_now, "{st}");
    let prom = fs::read_to_string(t.path().join("metrics/synbackup-c0-drill.prom")).unwrap();
    assert!(
        prom.contains("synbackup_drill_last_success_timestamp_seconds{instance=\"c0\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("synbackup_drill_boot_seconds{instance=\"c0\"} "),
        "{prom}"
    );
    assert_eq!(scratch_left(&root), Vec::<String>::new());

    // `list` marks the drilled backup as tested, the other not; `status` names it.
    let o = with_dirs(&["list", "c0", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let by_name = |n: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap()
    };
    let tested = by_name(&verified)["tested"].clone();
    assert_eq!(tested["passed"], true, "{listed}");
    assert_eq!(tested["synapse_version"], line.version(), "{listed}");
    assert_eq!(tested["backup_synapse_version"], line.version(), "{listed}");
    assert_eq!(tested["form_counts"][form], live_now, "{listed}");
    assert!(tested["boot_seconds"].as_f64().unwrap() > 0.0, "{listed}");
    assert!(
        by_name("c0_29991231T000000Z")["tested"].is_null(),
        "{listed}"
    );
    let o = with_dirs(&["list", "c0"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let row = text.lines().find(|l| l.starts_with(&verified)).unwrap();
    assert!(
        row.contains("tested ") && row.contains(&format!("Synapse {}", line.version())),
        "{text}"
    );
    let o = with_dirs(&["status", "c0", "--json"]);
    let health: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        health[0]["newest_tested"]["backup"],
        verified.as_str(),
        "{health}"
    );
    assert_eq!(health[0]["drill"]["result"], "success", "{health}");
    let o = with_dirs(&["status", "c0"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("newest tested backup {verified}")),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Phase 6: SYNBACKUP_DRILL_AFTER_RUN=yes: the run drills its own backup. A
    // drill that fails (the Python is gone) exits 11, keeps the backup, and status
    // says so; the backup it made is listed as a failed drill.
    fs::remove_dir_all(&unverified).unwrap();
    let conf = fs::read_to_string(etc.join("c0.conf")).unwrap();
    fs::write(
        etc.join("c0.conf"),
        format!("{conf}SYNBACKUP_DRILL_AFTER_RUN=yes\nSYNBACKUP_KEEP_LAST=10\n"),
    )
    .unwrap();
    let o = with_dirs(&["run", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("drill passed"),
        "{}\n{}",
        stderr(&o),
        String::from_utf8_lossy(&o.stdout)
    );
    let fresh = fs::read_to_string(t.path().join("state/c0.json")).unwrap();
    let fresh: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    let fresh = fresh["last_success_backup"].as_str().unwrap().to_string();
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(t.path().join("state/c0.drill.json")).unwrap()).unwrap();
    assert_eq!(st["backup"], fresh.as_str(), "{st}");
    fs::write(
        etc.join("c0.conf"),
        format!(
            "{}SYNBACKUP_DRILL_AFTER_RUN=yes\nSYNBACKUP_KEEP_LAST=10\nSYNBACKUP_DRILL_PYTHON=/nonexistent/python\n",
            // A key is given once (a second one is an error naming both lines).
            conf.replace(
                &format!("SYNBACKUP_DRILL_PYTHON={}\n", line.python().display()),
                ""
            )
        ),
    )
    .unwrap();
    let o = with_dirs(&["run", "c0"]);
    assert_fails(&o, 11, "cannot start /nonexistent/python");
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(t.path().join("state/c0.json")).unwrap()).unwrap();
    let failed_one = st["last_success_backup"].as_str().unwrap().to_string();
    assert_ne!(failed_one, fresh);
    assert!(
        Path::new(&failed_one)
            .join("synbackup-manifest.json")
            .is_file(),
        "the backup was kept"
    );
    let o = run(&[&"verify", &failed_one]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = with_dirs(&["status", "c0"]);
    assert_eq!(o.status.code(), Some(9));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("last drill failed"), "{text}");
    assert!(
        text.contains(&format!(
            "newest tested backup {}",
            Path::new(&fresh).file_name().unwrap().to_str().unwrap()
        )),
        "{text}"
    );
    assert_eq!(scratch_left(&root), Vec::<String>::new());

    // Phase 7: retention with KEEP_LAST=1 keeps the newest tested backup beside the
    // newest one (it removed it before, and `status` kept naming it); once that
    // backup is gone by hand, nothing names it any more.
    fs::write(
        etc.join("c0.conf"),
        format!(
            "{conf}SYNBACKUP_KEEP_LAST=1\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\nSYNBACKUP_KEEP_MONTHLY=0\n"
        ),
    )
    .unwrap();
    let o = with_dirs(&["prune", "c0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        Path::new(&fresh).is_dir(),
        "the newest tested backup was pruned"
    );
    assert!(
        Path::new(&failed_one).is_dir(),
        "the newest backup was pruned"
    );
    let o = with_dirs(&["status", "c0", "--json"]);
    let health: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fresh_name = Path::new(&fresh).file_name().unwrap().to_str().unwrap();
    assert_eq!(health[0]["newest_tested"]["backup"], fresh_name, "{health}");
    fs::remove_dir_all(&fresh).unwrap();
    let o = with_dirs(&["status", "c0", "--json"]);
    let health: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        health[0]["newest_tested"].is_null(),
        "status names a backup that is gone: {health}"
    );
}
