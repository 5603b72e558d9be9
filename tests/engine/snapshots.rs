// SPDX-License-Identifier: Apache-2.0
//! The snapshot step against a source that changes under it: the environment set
//! is the one at the snapshot (created since the scan: included; removed: gone, not
//! corrupt), the truncation check uses the size at the snapshot, and `--freeze
//! auto` that finds a socket it cannot connect to says so and records why.
//! `hold:` fault points with `SYNBACKUP_FAULT_RELEASE` stop the run at the step
//! while the test changes the source.

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};

use lmdb::{EnvironmentFlags, Transaction, WriteFlags};

use crate::util::*;

/// Start `backup SRC DST` held at fault point `point`; returns once it holds.
fn spawn_held(src: &Path, dst: &Path, release: &Path, point: &str) -> Child {
    let mut child = bin()
        .env("SYNBACKUP_FAULT", format!("hold:{point}"))
        .env("SYNBACKUP_FAULT_RELEASE", release)
        .args(["backup", "--freeze", "never", "--json"])
        .arg(src)
        .arg(dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut child, &format!("holding at {point}"));
    child
}

fn env_paths(m: &serde_json::Value) -> Vec<String> {
    m["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn environments_created_or_removed_after_the_scan() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fake_service(&src, 200);
    let dst = t.path().join("dst");
    let release = t.path().join("release");
    let child = spawn_held(&src, &dst, &release, "before-snapshots");
    // A new layer (in a new directory) and a removed environment.
    make_env(&src.join("layers/new/layer_v2.lmdb"), 9, 300);
    fs::remove_dir_all(src.join("axon/blob.lmdb")).unwrap();
    fs::write(&release, "").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let envs = env_paths(&manifest(&dst));
    assert!(
        envs.contains(&"layers/new/layer_v2.lmdb".to_string()),
        "{envs:?}"
    );
    assert!(!envs.contains(&"axon/blob.lmdb".to_string()), "{envs:?}");
    assert_eq!(
        mdb_stat_counts(&src.join("layers/new/layer_v2.lmdb")),
        mdb_stat_counts(&dst.join("layers/new/layer_v2.lmdb"))
    );
    let v = run(&[&"verify", &dst]);
    assert!(v.status.success(), "{}", stderr(&v));
}

/// A small environment without writemap: its file grows as it is written.
fn growing_env(dir: &Path) -> lmdb::Environment {
    fs::create_dir_all(dir).unwrap();
    let env = lmdb::Environment::new()
        .set_flags(EnvironmentFlags::NO_SYNC)
        .set_map_size(64 << 20)
        .open(dir)
        .unwrap();
    fill(&env, 0, 10);
    env
}

fn fill(env: &lmdb::Environment, from: u32, n: u32) {
    let db = env.open_db(None).unwrap();
    let mut txn = env.begin_rw_txn().unwrap();
    for k in from..from + n {
        txn.put(db, &k.to_be_bytes(), &[7u8; 3000], WriteFlags::empty())
            .unwrap();
    }
    txn.commit().unwrap();
    env.sync(true).unwrap();
}

#[test]
fn an_environment_that_grew_after_the_scan_is_not_truncated() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fake_service(&src, 50);
    let env_dir = src.join("slabs/grow.lmdb");
    let env = growing_env(&env_dir);
    let before = fs::metadata(env_dir.join("data.mdb")).unwrap().len();
    let dst = t.path().join("dst");
    let release = t.path().join("release");
    let child = spawn_held(&src, &dst, &release, "after-scan");
    fill(&env, 10, 2000);
    assert!(fs::metadata(env_dir.join("data.mdb")).unwrap().len() > before * 10);
    fs::write(&release, "").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        mdb_stat_counts(&dst.join("slabs/grow.lmdb"))["Main DB"],
        2010,
        "the copy has the grown environment"
    );
}

#[test]
fn a_socket_that_refuses_is_a_warning_and_a_reason() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fake_service(&src, 50);
    // A socket file nobody listens on (a crashed service): connect is refused.
    drop(std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap());
    let dst = t.path().join("dst");
    let o = run(&[&"backup", &src, &dst]);
    assert!(o.status.success(), "{}", stderr(&o));
    let warn = stderr(&o)
        .lines()
        .find(|l| l.starts_with("synbackup: warning:") && l.contains("without a freeze"))
        .map(String::from);
    let warn = warn.unwrap_or_else(|| panic!("no warning:\n{}", stderr(&o)));
    assert!(warn.contains("sock") && warn.contains("refused"), "{warn}");
    let m = manifest(&dst);
    assert_eq!(m["freeze"]["frozen"], false);
    let reason = m["freeze"]["reason"].as_str().expect("freeze.reason");
    assert!(reason.contains("refused"), "{reason}");
}
