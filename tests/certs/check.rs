// SPDX-License-Identifier: Apache-2.0
//! `synbackup certs --dir DIR --cert-dir D` on real easycert material: the good
//! case passes; each broken case gives its own finding, on its file, and its exit
//! code (9 for a failure, 0 with a warning); a real Cortex of each release line
//! serves what the listener check passes and refuses to serve what it fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Output;

use crate::util::certs::*;
use crate::util::*;

fn check(m: &Material) -> Output {
    bin()
        .env_remove("SYNBACKUP_CERT_DIR")
        .env_remove("SYNBACKUP_CERT_WARN_DAYS")
        .args(["certs", "--json", "--dir"])
        .arg(&m.svc)
        .arg("--cert-dir")
        .arg(&m.certdir)
        .output()
        .unwrap()
}

fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// The findings as (severity, check, path relative to the temporary root).
fn findings(m: &Material, r: &serde_json::Value) -> Vec<(String, String, String)> {
    let root = format!("{}/", m.root.display());
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_string(),
                f["check"].as_str().unwrap().to_string(),
                f["path"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches(&root)
                    .to_string(),
            )
        })
        .collect()
}

fn expect(m: &Material, code: i32, want: &[(&str, &str, &str)]) -> serde_json::Value {
    let o = check(m);
    let r = report(&o);
    let got = findings(m, &r);
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(s, c, p)| (s.to_string(), c.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, want, "findings; stderr: {}", stderr(&o));
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code; stderr: {}",
        stderr(&o)
    );
    r
}

#[test]
fn good_material_passes_every_check() {
    let m = good_material();
    let r = expect(&m, 0, &[]);
    let certs = r["certs"].as_array().unwrap();
    let roles: Vec<&str> = certs.iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["https", "ca", "host", "user"]);
    let host = &certs[2];
    assert_eq!(host["subject_cn"], "cortex.local");
    assert_eq!(host["issuer_cn"], "testca");
    assert_eq!(
        host["names"],
        serde_json::json!(["cortex.local", "localhost"])
    );
    assert!(
        host["days_left"].as_i64().unwrap() > 3000,
        "easycert: ten years"
    );
    // The table on a terminal says the same.
    let o = bin()
        .args(["certs", "--dir"])
        .arg(&m.svc)
        .arg("--cert-dir")
        .arg(&m.certdir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("host   cortex.local"), "{text}");
    assert!(text.contains("4 certificates, 0 findings"), "{text}");
}

#[test]
fn expiring_in_10_days_warns_and_expired_fails() {
    let m = good_material();
    add_host(&m, "soon.local", -355, 10);
    let r = expect(
        &m,
        0,
        &[("warn", "expiring", "home/.syn/certs/hosts/soon.local.crt")],
    );
    let soon = r["certs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["subject_cn"] == "soon.local")
        .unwrap()
        .clone();
    let days = soon["days_left"].as_i64().unwrap();
    assert!(
        days == 9 || days == 10,
        "10 days from signing, in whole days: {days}"
    );
    assert!(r["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("SYNBACKUP_CERT_WARN_DAYS=30"));

    add_host(&m, "old.local", -365, -20);
    expect(
        &m,
        9,
        &[
            ("fail", "expired", "home/.syn/certs/hosts/old.local.crt"),
            ("warn", "expiring", "home/.syn/certs/hosts/soon.local.crt"),
        ],
    );
}

#[test]
fn a_key_of_another_pair_fails() {
    let m = good_material();
    fs::copy(
        m.certdir.join("users/root@testca.key"),
        m.certdir.join("hosts/cortex.local.key"),
    )
    .unwrap();
    expect(
        &m,
        9,
        &[(
            "fail",
            "key-mismatch",
            "home/.syn/certs/hosts/cortex.local.key",
        )],
    );
}

#[test]
fn a_host_certificate_of_a_different_ca_fails() {
    let m = good_material();
    let other = m.root.join("other");
    easycert(&other, &["--ca", "otherca"]);
    easycert(&other, &["--server", "--signas", "otherca", "rogue.local"]);
    for ext in ["crt", "key"] {
        fs::copy(
            other.join(format!("hosts/rogue.local.{ext}")),
            m.certdir.join(format!("hosts/rogue.local.{ext}")),
        )
        .unwrap();
    }
    let r = expect(
        &m,
        9,
        &[("fail", "untrusted", "home/.syn/certs/hosts/rogue.local.crt")],
    );
    let msg = r["findings"][0]["message"].as_str().unwrap();
    assert!(msg.contains("issuer CN=otherca"), "{msg}");
}

#[test]
fn a_world_readable_key_fails() {
    let m = good_material();
    let hosts = m.certdir.join("hosts");
    // easycert's keys are 0644 in 0700 directories: closed until the directory opens.
    fs::set_permissions(&hosts, fs::Permissions::from_mode(0o755)).unwrap();
    for d in [
        m.root.join("home"),
        m.root.join("home/.syn"),
        m.certdir.clone(),
    ] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let r = expect(
        &m,
        9,
        &[(
            "fail",
            "key-readable",
            "home/.syn/certs/hosts/cortex.local.key",
        )],
    );
    assert!(r["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("readable by others (mode 0644)"));
}

#[test]
fn a_ca_key_in_the_certificate_directory_fails() {
    let m = good_material();
    fs::copy(m.root.join("testca.key"), m.certdir.join("cas/testca.key")).unwrap();
    expect(
        &m,
        9,
        &[("fail", "ca-key", "home/.syn/certs/cas/testca.key")],
    );
}

#[test]
fn a_revoked_user_certificate_fails() {
    let m = good_material();
    fs::copy(m.root.join("testca.key"), m.certdir.join("cas/testca.key")).unwrap();
    easycert(&m.certdir, &["--revokeas", "testca", "root@testca"]);
    fs::remove_file(m.certdir.join("cas/testca.key")).unwrap();
    expect(
        &m,
        9,
        &[("fail", "revoked", "home/.syn/certs/users/root@testca.crt")],
    );
}

#[test]
fn the_self_signed_default_https_pair_is_named() {
    let m = good_material();
    m.use_synapses_default_pair();
    let r = expect(&m, 0, &[("warn", "self-signed", "svc/sslcert.pem")]);
    assert!(r["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("CN=cortex"));
}

#[test]
fn listener_names_must_be_in_the_host_certificate() {
    let m = good_material();
    fs::write(
        m.svc.join("cell.yaml"),
        "dmon:listen: ssl://0.0.0.0:0?hostname=cortex.example&ca=nosuchca\n",
    )
    .unwrap();
    expect(
        &m,
        9,
        &[
            ("fail", "listener-cert-missing", "svc/cell.yaml"),
            ("fail", "listener-ca-missing", "svc/cell.yaml"),
        ],
    );
    // A certificate under the listener's name that does not carry it.
    let (crt, key) = sign(
        &m.certdir,
        &m.root.join("testca.key"),
        "elsewhere.example",
        -1,
        365,
    );
    fs::write(m.certdir.join("hosts/cortex.example.crt"), crt).unwrap();
    write_key(&m.certdir.join("hosts/cortex.example.key"), &key);
    fs::write(
        m.svc.join("cell.yaml"),
        "dmon:listen: ssl://0.0.0.0:0?hostname=cortex.example\n",
    )
    .unwrap();
    expect(
        &m,
        9,
        &[(
            "fail",
            "name-missing",
            "home/.syn/certs/hosts/cortex.example.crt",
        )],
    );
}

#[test]
fn an_https_name_not_in_the_certificate_fails() {
    let m = good_material();
    let o = bin()
        .args([
            "certs",
            "--json",
            "--https-name",
            "localhost",
            "--https-name",
            "cortex.example",
            "--dir",
        ])
        .arg(&m.svc)
        .arg("--cert-dir")
        .arg(&m.certdir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    let f = findings(&m, &report(&o));
    assert_eq!(
        f,
        [(
            "fail".to_string(),
            "name-missing".to_string(),
            "svc/sslcert.pem".to_string()
        )]
    );
}

/// A key kept aside and still valid is reported (issue 32), not passed over: the
/// HTTPS key `certs deploy` kept as `sslkey.pem.old` (with `sslcert.pem.old`),
/// and a host key `restore --certs` kept as `NAME.key.synbackup-old-STAMP` (the
/// key of the certificate in place): a warning each naming the certificate, its
/// expiry and the `rm` to run, in the table and in the JSON (`kept_keys`); once
/// readable by others, a failure.
#[test]
fn a_kept_aside_key_that_is_still_valid_is_reported() {
    let m = good_material();
    let (crt, key) = sign(&m.certdir, &m.root.join("testca.key"), "localhost", -1, 90);
    fs::write(m.root.join("new.crt"), crt).unwrap();
    write_key(&m.root.join("new.key"), &key);
    let o = bin()
        .env_remove("SYNBACKUP_CERT_DIR")
        .args(["certs", "deploy", "--dir"])
        .arg(&m.svc)
        .arg("--cert")
        .arg(m.root.join("new.crt"))
        .arg("--key")
        .arg(m.root.join("new.key"))
        .arg("--cert-dir")
        .arg(&m.certdir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let host_key = m.certdir.join("hosts/cortex.local.key");
    let kept = m
        .certdir
        .join("hosts/cortex.local.key.synbackup-old-20261201T000000Z");
    fs::copy(&host_key, &kept).unwrap();
    fs::set_permissions(&kept, fs::Permissions::from_mode(0o600)).unwrap();
    let r = expect(
        &m,
        0,
        &[
            ("warn", "kept-key", "svc/sslkey.pem.old"),
            (
                "warn",
                "kept-key",
                "home/.syn/certs/hosts/cortex.local.key.synbackup-old-20261201T000000Z",
            ),
        ],
    );
    let k = &r["kept_keys"];
    assert_eq!(k[0]["still_valid"], true, "{k}");
    assert_eq!(
        k[0]["cert"],
        m.svc.join("sslcert.pem.old").display().to_string()
    );
    assert_eq!(k[0]["mode"], 0o600);
    assert_eq!(
        k[1]["cert"],
        m.certdir
            .join("hosts/cortex.local.crt")
            .display()
            .to_string()
    );
    let msg = r["findings"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "rm {} {}",
            m.svc.join("sslkey.pem.old").display(),
            m.svc.join("sslcert.pem.old").display()
        )),
        "{msg}"
    );
    // The table says it in a line.
    let o = bin()
        .args(["certs", "--dir"])
        .arg(&m.svc)
        .arg("--cert-dir")
        .arg(&m.certdir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!(
            "WARN kept-key {}: a private key kept aside when it was replaced, still valid",
            m.svc.join("sslkey.pem.old").display()
        )),
        "{text}"
    );
    // Open to others (kept by an older synbackup at the key's old 0644): a failure.
    fs::set_permissions(&kept, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(m.certdir.join("hosts"), fs::Permissions::from_mode(0o755)).unwrap();
    for d in [
        m.certdir.clone(),
        m.certdir.parent().unwrap().to_path_buf(),
        m.root.join("home"),
    ] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = check(&m);
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    assert!(findings(&m, &report(&o)).contains(&(
        "fail".to_string(),
        "key-readable".to_string(),
        "home/.syn/certs/hosts/cortex.local.key.synbackup-old-20261201T000000Z".to_string()
    )));
}

#[test]
fn a_missing_service_directory_is_one_error_line() {
    let t = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["certs", "--dir"])
        .arg(t.path().join("nope"))
        .output()
        .unwrap();
    assert_fails(&o, 3, "nope is not a directory");
}

/// A TLS handshake with the listener at `port` as a telepath client does it: the
/// server's certificate verified against `cas/testca.crt` for `cortex.local`, the
/// user certificate `root@testca` presented. `Ok(CN)` of the server certificate.
fn handshake(m: &Material, port: u16) -> Result<String, String> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_ca_file(m.certdir.join("cas/testca.crt"))
        .map_err(|e| e.to_string())?;
    b.set_certificate_file(m.certdir.join("users/root@testca.crt"), SslFiletype::PEM)
        .map_err(|e| e.to_string())?;
    b.set_private_key_file(m.certdir.join("users/root@testca.key"), SslFiletype::PEM)
        .map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let tls = b
        .build()
        .connect("cortex.local", tcp)
        .map_err(|e| e.to_string())?;
    let cert = tls.ssl().peer_certificate().ok_or("no peer certificate")?;
    let cn = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .map(|e| e.data().as_slice().to_vec())
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(&cn).into_owned())
}

/// Start a real Cortex of `line` on `m.svc` with `SYN_CERT_DIR=m.certdir`, its `ssl://`
/// listener on a free port; wait (bounded) until a TLS handshake with it succeeds
/// (`Some(server CN)`) or it exits (`None`). The process is stopped before returning.
fn cortex_serves(line: Line, m: &Material) -> (Option<String>, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs::write(
        m.svc.join("cell.yaml"),
        format!("dmon:listen: ssl://127.0.0.1:{port}?hostname=cortex.local&ca=testca\n"),
    )
    .unwrap();
    let log = m.root.join("cortex.log");
    let logf = fs::File::create(&log).unwrap();
    let mut child = line
        .py(&[("SYN_CERT_DIR", m.certdir.to_str().unwrap())])
        .args(["-m", "synapse.servers.cortex", "--https", "0"])
        .arg(&m.svc)
        .process_group(0)
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let served = loop {
        if let Ok(cn) = handshake(m, port) {
            break Some(cn);
        }
        if child.try_wait().unwrap().is_some() {
            break None;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Cortex neither served nor exited: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = nix_kill(child.id() as i32, 15);
    let _ = child.wait();
    // SAFETY: kill(2) on the group the server led (its workers); ESRCH when none is left.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    (served, fs::read_to_string(&log).unwrap_or_default())
}

crate::on_both_lines!(a_real_cortex_agrees_with_the_listener_check);

fn a_real_cortex_agrees_with_the_listener_check(line: Line) {
    let m = good_material();
    expect(&m, 0, &[]);
    let (served, log) = cortex_serves(line, &m);
    assert_eq!(
        served.as_deref(),
        Some("cortex.local"),
        "the check passed but the Cortex did not serve hosts/cortex.local.crt: {log}"
    );

    // Without its host certificate: the check fails, and so does the Cortex.
    let moved = m.root.join("moved");
    fs::create_dir(&moved).unwrap();
    for ext in ["crt", "key"] {
        fs::rename(
            m.certdir.join(format!("hosts/cortex.local.{ext}")),
            moved.join(format!("cortex.local.{ext}")),
        )
        .unwrap();
    }
    expect(&m, 9, &[("fail", "listener-cert-missing", "svc/cell.yaml")]);
    let (served, log) = cortex_serves(line, &m);
    assert_eq!(
        served, None,
        "the Cortex served without hosts/cortex.local.crt: {log}"
    );
    assert!(
        log.contains("Missing TLS certificate file for host: cortex.local"),
        "{log}"
    );
}
