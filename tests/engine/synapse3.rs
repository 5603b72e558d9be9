// SPDX-License-Identifier: Apache-2.0
//! Against real Synapse 3.7.0 (the Debian sid tree of `tests/synapse3/`, see
//! `util::syn3`): a live `backup --verify` of a running 3.x Cortex (freeze and
//! resume over telepath), `verify`, an instance's `run`, `drill`, `list` and `status`
//! (its backup tested with Synapse 3.7.0), `restore` (refused while the cell runs;
//! the restored directory boots with the same nodes); `drill` of a 3.x backup with its
//! node counts, a `--check` Storm query and the versions "3.7.0" (on the 2.x-only
//! code it failed: `mirror` in the Storm opts, an empty version); the upgrade
//! rehearsal of a 2.256 backup with 3.7.0 (refused: the one-line verdict) and a 3.7.0
//! backup drilled with 2.256 (a downgrade: refused); `certs deploy` into a running
//! 3.x Cortex, reloaded (`reload(*, subsystem)` is keyword-only on 3.x).
//!
//! Each test skips, saying so, when the sid tree is absent; CI always has it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::syn3::{self, Cortex3};
use crate::util::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `synbackup backup --verify` of a fixture (a stopped service directory).
fn backup_of_fixture(t: &Path, name: &str) -> PathBuf {
    let dst = t.join(format!("{name}-backup"));
    let o = run(&[&"backup", &fixture(name), &dst, &"--verify", &"-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    dst
}

fn drill(backup: &Path, python: &Path, extra: &[&str]) -> std::process::Output {
    bin()
        .arg("drill")
        .arg("--dir")
        .arg(backup)
        .arg("--python")
        .arg(python)
        .args(["--timeout", "5m", "--json"])
        .args(extra)
        .output()
        .unwrap()
}

fn scratch_left(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".synbackup-drill."))
        .collect()
}

#[test]
fn live_3x_cortex_backup_verify_restore() {
    let Some(root) = syn3::require("live_3x_cortex_backup_verify_restore") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("core00");
    let mut core = Cortex3::start(&root, &src);
    assert_eq!(core.add_ips(0, 300), 300);
    assert!(
        !src.join("axon").exists(),
        "3.x has no embedded Axon (the layout the tests assume)"
    );

    // A live backup: frozen over telepath, resumed, verified.
    let b1 = t.path().join("b1");
    let o = run(&[&"backup", &src, &b1, &"--verify", &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["frozen"], true, "a running 3.x service is frozen");
    assert!(summary["verified"].as_bool().unwrap(), "{summary}");
    assert!(!core.paused(), "the 3.x Cortex was left frozen");
    assert!(
        core.log_text()
            .contains("Resuming normal operations from a freeze"),
        "{}",
        core.log_text()
    );
    // It takes edits again, and `verify` passes on the backup.
    assert_eq!(core.add_ips(300, 30), 330);
    let o = run(&[&"verify", &b1]);
    assert!(o.status.success(), "{}", stderr(&o));

    // An instance on the running 3.x Cortex: `run` backs it up live, `drill` boots
    // that backup with 3.7.0 and runs the 3.x check, `list` and `status` show it
    // tested with Synapse 3.7.0 (the 2.x-only drill failed here: `mirror`).
    let etc = t.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(
        etc.join("c3.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_DRILL_PYTHON={}\n\
             SYNBACKUP_DRILL_MODULE=synapse.servers.cortex\nSYNBACKUP_DRILL_CHECK=inet:ip | limit 1\n",
            src.display(),
            t.path().join("root").display(),
            syn3::python().display()
        ),
    )
    .unwrap();
    let with_dirs = |args: &[&str]| {
        bin()
            .arg("--config-dir")
            .arg(&etc)
            .arg("--state-dir")
            .arg(t.path().join("state"))
            .arg("--lock-dir")
            .arg(t.path().join("lock"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = with_dirs(&["run", "c3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!core.paused(), "`run` left the 3.x Cortex frozen");
    let o = with_dirs(&["drill", "c3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = with_dirs(&["list", "c3", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tested = &listed[0]["tested"];
    assert_eq!(tested["passed"], true, "{listed}");
    assert_eq!(tested["synapse_version"], syn3::VERSION, "{listed}");
    assert_eq!(tested["backup_synapse_version"], syn3::VERSION, "{listed}");
    assert_eq!(tested["form_counts"]["inet:ip"], 330, "{listed}");
    let o = with_dirs(&["status", "c3", "--json"]);
    let health: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(health[0]["drill"]["result"], "success", "{health}");
    assert_eq!(
        health[0]["newest_tested"]["backup"], listed[0]["name"],
        "{health}"
    );

    // Restore: refused while the 3.x cell runs on the directory; done once stopped.
    let before = names(t.path());
    let o = run(&[&"restore", &b1, &src]);
    assert_fails(&o, 8, "is in use");
    assert_eq!(names(t.path()), before);
    core.stop();
    let o = run(&[&"restore", &b1, &src]);
    assert!(o.status.success(), "{}", stderr(&o));
    let restored = Cortex3::start(&root, &src);
    assert_eq!(restored.count("inet:ip#t"), 300, "the backup's nodes");
}

#[test]
fn drill_of_a_3x_backup_counts_checks_and_names_3_7_0() {
    let Some(_root) = syn3::require("drill_of_a_3x_backup_counts_checks_and_names_3_7_0") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let b = backup_of_fixture(t.path(), "cortex00-v3");
    let guid = fs::read_to_string(fixture("cortex00-v3/cell.guid")).unwrap();
    let before = hash_tree(&b);
    // The check query is 3.x Storm: `inet:ip` and `(true)` ($lib.true is gone).
    let o = drill(
        &b,
        &syn3::python(),
        &["--check", "if (true) { inet:ip#t } return((true))"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["synapse_version"], syn3::VERSION, "{out}");
    assert_eq!(out["backup_synapse_version"], syn3::VERSION, "{out}");
    assert_eq!(out["form_counts"]["inet:ip"], 400, "{out}");
    assert_eq!(out["cell_type"], "cortex");
    assert_eq!(out["cell_guid"], guid.trim());
    assert!(
        stderr(&o).contains("(Synapse 3.7.0, safemode)"),
        "{}",
        stderr(&o)
    );
    // A check that fails is the drill's failure (exit 11), with Storm's error.
    let o = drill(&b, &syn3::python(), &["--check", "inet:ipv4"]);
    assert_fails(&o, 11, "SYNBACKUP_DRILL_CHECK failed");
    assert_eq!(hash_tree(&b), before, "the drill changed the backup");
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
}

#[test]
fn rehearsal_of_a_2_256_backup_with_3_7_0_is_refused() {
    let Some(_root) = syn3::require("rehearsal_of_a_2_256_backup_with_3_7_0_is_refused") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let b = backup_of_fixture(t.path(), "cortex00");
    let before = hash_tree(&b);
    let o = drill(&b, &syn3::python(), &[]);
    assert_fails(
        &o,
        11,
        "in-place migration from 2.x to 3.x does not exist; Vertex's 3.0.0 migration guide",
    );
    let line = &error_lines(&o)[0];
    assert!(line.contains("BadStorageVersion"), "{line}");
    assert!(line.contains("Synapse 2.256.0"), "{line}");
    assert_eq!(hash_tree(&b), before, "the rehearsal changed the backup");
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
}

#[test]
fn drill_of_a_3_7_0_backup_with_2_256_is_a_refused_downgrade() {
    let Some(_root) = syn3::require("drill_of_a_3_7_0_backup_with_2_256_is_a_refused_downgrade")
    else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let b = backup_of_fixture(t.path(), "cortex00-v3");
    let o = drill(&b, &python(), &[]);
    assert_fails(&o, 11, "a downgrade is not possible");
    assert!(
        error_lines(&o)[0].contains("Synapse 3.7.0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
}

/// SHA-256 (hex) of the certificate the HTTPS listener on `port` serves.
fn served_fingerprint(port: u16) -> String {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let s = b.build().connect("localhost", tcp).unwrap();
    let digest = s
        .ssl()
        .peer_certificate()
        .unwrap()
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap();
    digest.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn certs_deploy_reloads_a_3x_cortex() {
    let Some(root) = syn3::require("certs_deploy_reloads_a_3x_cortex") else {
        return;
    };
    // The easycert material (a testca pair for localhost); the 3.x Cortex serves
    // only HTTPS, on a free loopback port.
    let m = crate::util::certs::good_material();
    let port = free_port();
    fs::write(m.svc.join("cell.yaml"), format!("https:port: {port}\n")).unwrap();
    let core = Cortex3::start(&root, &m.svc);
    m.write_instance_config();
    let pid = core.pid();
    let old_fp = served_fingerprint(port);

    // `reload(*, subsystem)` is keyword-only on 3.x: sent as a keyword, it reloads.
    let (crt_pem, key_pem) =
        crate::util::certs::sign(&m.certdir, &m.root.join("testca.key"), "localhost", -1, 90);
    let new = m.root.join("new");
    fs::create_dir_all(&new).unwrap();
    fs::write(new.join("good.crt"), &crt_pem).unwrap();
    crate::util::certs::write_key(&new.join("good.key"), &key_pem);
    let o = bin()
        .env_remove("SYNBACKUP_CERT_DIR")
        .arg("--config-dir")
        .arg(m.root.join("etc"))
        .arg("--state-dir")
        .arg(m.root.join("state"))
        .arg("--lock-dir")
        .arg(m.root.join("lock"))
        .args(["certs", "deploy", "c0", "--json", "--cert"])
        .arg(new.join("good.crt"))
        .arg("--key")
        .arg(new.join("good.key"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["how"], "reloaded", "{out}");
    let new_fp = served_fingerprint(port);
    assert_ne!(new_fp, old_fp);
    assert_eq!(out["fingerprint"], new_fp.as_str(), "{out}");
    assert_eq!(core.pid(), pid);
    assert!(!core.paused());
}
