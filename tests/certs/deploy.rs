// SPDX-License-Identifier: Apache-2.0
//! `synbackup certs deploy` against a real Cortex of each release line (2.256.0 and
//! 3.7.0, where `reload(*, subsystem)` is keyword-only) serving HTTPS on a free
//! loopback port (its `https:port` in `cell.yaml`), with easycert material: a good pair is
//! served after a reload by the same process, with HTTPS requests answered all
//! through it; a key of another pair, an expired pair, a pair for another name and
//! one from another CA are refused with nothing written; a pair the cell's TLS
//! context refuses (a 1024-bit key: OpenSSL parses and verifies it, the server at
//! its default security level does not load it) and a reload that loads nothing
//! (a patched handler) are rolled back: the old pair is in the files and served.
//!
//! The cases share one Cortex per line, started through `patched_cortex.py` whose
//! reload handler is the real one until the control file says `noop`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

use crate::util::certs::*;
use crate::util::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of the leaf of a PEM file.
fn file_fp(pem: &[u8]) -> String {
    let c = openssl::x509::X509::from_pem(pem).unwrap();
    hex(&c.digest(MessageDigest::sha256()).unwrap())
}

/// A TLS connection to the Cortex's HTTPS port, certificate not verified.
fn connect(port: u16) -> std::io::Result<SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    b.build()
        .connect("localhost", tcp)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn served(s: &SslStream<TcpStream>) -> String {
    hex(&s
        .ssl()
        .peer_certificate()
        .unwrap()
        .digest(MessageDigest::sha256())
        .unwrap())
}

fn served_now(port: u16) -> String {
    served(&connect(port).unwrap())
}

/// One keep-alive `GET PATH` (the line's `active` endpoint): the HTTP status code.
fn get_active(s: &mut SslStream<TcpStream>, path: &str) -> std::io::Result<u32> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))
}

struct Setup {
    m: Material,
    port: u16,
    cortex: Cortex,
    /// `patched_cortex.py`'s control file.
    control: PathBuf,
}

/// good_material's service directory (its HTTPS pair a testca certificate for
/// localhost) as a real Cortex of `line` with only HTTPS on a free port, an
/// instance `c0`.
fn setup(line: Line) -> Setup {
    let m = good_material();
    let port = free_port();
    fs::write(m.svc.join("cell.yaml"), format!("https:port: {port}\n")).unwrap();
    let control = m.root.join("control");
    let c = control.to_str().unwrap().to_string();
    let cortex = Cortex::start_patched(line, &m.svc, &[("SYNTEST_CONTROL", &c)]);
    m.write_instance_config();
    Setup {
        m,
        port,
        cortex,
        control,
    }
}

crate::on_both_lines!(certs_deploy_into_a_running_cortex);

fn certs_deploy_into_a_running_cortex(line: Line) {
    let s = setup(line);
    a_renewed_pair_is_served_after_a_reload_by_the_same_process(&s);
    a_reload_that_loads_nothing_is_caught_and_rolled_back(&s);
}

impl Setup {
    /// A pair in the scratch area: (cert path, key path).
    fn pair(&self, name: &str, pem: (Vec<u8>, Vec<u8>)) -> (PathBuf, PathBuf) {
        let d = self.m.root.join("new");
        fs::create_dir_all(&d).unwrap();
        let (c, k) = (d.join(format!("{name}.crt")), d.join(format!("{name}.key")));
        fs::write(&c, pem.0).unwrap();
        write_key(&k, &pem.1);
        (c, k)
    }

    fn signed(&self, name: &str, cn: &str, from: i64, to: i64) -> (PathBuf, PathBuf) {
        let pem = sign(
            &self.m.certdir,
            &self.m.root.join("testca.key"),
            cn,
            from,
            to,
        );
        self.pair(name, pem)
    }

    /// `synbackup certs deploy c0 --cert C --key K --json`.
    fn deploy(&self, cert: &Path, key: &Path) -> Output {
        bin_at(&self.m.root)
            .env_remove("SYNBACKUP_CERT_DIR")
            .args(["certs", "deploy", "c0", "--json", "--cert"])
            .arg(cert)
            .arg("--key")
            .arg(key)
            .output()
            .unwrap()
    }

    /// The service directory's files (name -> bytes), the Cortex's own excluded.
    fn pair_files(&self) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(&self.m.svc)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ssl"))
            .map(|n| (n.clone(), fs::read(self.m.svc.join(&n)).unwrap()))
            .collect()
    }
}

/// The refusals write nothing (the files byte for byte, no `.old` kept) and keep
/// the old certificate served.
fn assert_refused(s: &Setup, cert: &Path, key: &Path, needle: &str) {
    let before = s.pair_files();
    let served_before = served_now(s.port);
    let o = s.deploy(cert, key);
    assert_fails(&o, 9, needle);
    assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    assert_eq!(s.pair_files(), before, "files changed by a refused deploy");
    assert_eq!(served_now(s.port), served_before);
}

fn a_renewed_pair_is_served_after_a_reload_by_the_same_process(s: &Setup) {
    let pid = s.cortex.pid();
    let old = s.pair_files();
    let old_fp = file_fp(&old["sslcert.pem"]);
    assert_eq!(served_now(s.port), old_fp, "the Cortex serves sslcert.pem");

    // Refused before anything is written.
    let (good_crt, good_key) = s.signed("good", "localhost", -1, 90);
    let (_, other_key) = s.signed("other", "localhost", -1, 90);
    assert_refused(s, &good_crt, &other_key, "is not the private key of");
    let (exp_crt, exp_key) = s.signed("expired", "localhost", -30, -1);
    assert_refused(s, &exp_crt, &exp_key, "expired on");
    let (name_crt, name_key) = s.signed("wrongname", "evil.example", -1, 90);
    assert_refused(s, &name_crt, &name_key, "reached as localhost");
    let t = tempfile::tempdir().unwrap();
    easycert(t.path(), &["--ca", "otherca"]);
    easycert(
        t.path(),
        &[
            "--server",
            "--server-sans",
            "DNS:localhost",
            "--signas",
            "otherca",
            "localhost",
        ],
    );
    assert_refused(
        s,
        &t.path().join("hosts/localhost.crt"),
        &t.path().join("hosts/localhost.key"),
        "does not verify",
    );

    // HTTPS requests all through the deploy: one kept-alive connection and a loop
    // of new ones.
    let active = s.cortex.line.active_path();
    let mut kept = connect(s.port).unwrap();
    assert_eq!(get_active(&mut kept, active).unwrap(), 200);
    let stop = Arc::new(AtomicBool::new(false));
    let port = s.port;
    let looper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut samples: Vec<(f64, Result<String, String>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = connect(port)
                    .and_then(|mut c| get_active(&mut c, active).map(|code| (served(&c), code)))
                    .map_err(|e| e.to_string())
                    .and_then(|(fp, code)| {
                        if code == 200 {
                            Ok(fp)
                        } else {
                            Err(format!("HTTP {code}"))
                        }
                    });
                samples.push((t0.elapsed().as_secs_f64(), r));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_millis(500)); // requests before the deploy, for the record
    let o = s.deploy(&good_crt, &good_key);
    std::thread::sleep(Duration::from_millis(500)); // and after it
    stop.store(true, Ordering::Relaxed);
    let samples = looper.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let new_fp = file_fp(&fs::read(&good_crt).unwrap());
    assert_eq!(out["how"], "reloaded");
    assert_eq!(out["fingerprint"], new_fp.as_str());
    assert_eq!(out["old_fingerprint"], old_fp.as_str());
    assert_eq!(served_now(s.port), new_fp, "the new certificate is served");
    assert_eq!(s.cortex.pid(), pid);
    assert!(s.cortex.answers(10), "the same Cortex answers");

    // The files: the new pair (key 0600, the directory's owner), the old one beside it.
    let files = s.pair_files();
    assert_eq!(files["sslcert.pem"], fs::read(&good_crt).unwrap());
    assert_eq!(files["sslkey.pem"], fs::read(&good_key).unwrap());
    assert_eq!(files["sslcert.pem.old"], old["sslcert.pem"]);
    assert_eq!(files["sslkey.pem.old"], old["sslkey.pem"]);
    let mode = |n: &str| fs::metadata(s.m.svc.join(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("sslkey.pem"), 0o600);
    assert_eq!(mode("sslkey.pem.old"), 0o600);
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(s.m.root.join("state/c0.deploy.json")).unwrap()).unwrap();
    assert_eq!(status["result"], "success");
    assert_eq!(status["details"]["fingerprint"], new_fp.as_str());

    // The kept-alive connection: still open, still the old certificate.
    let kept_ok = get_active(&mut kept, active).map_err(|e| e.to_string());
    let kept_fp = served(&kept);
    // The loop: every request answered; old, then new, never back.
    let failed: Vec<_> = samples.iter().filter(|(_, r)| r.is_err()).collect();
    let first_new = samples
        .iter()
        .position(|(_, r)| r.as_deref() == Ok(new_fp.as_str()))
        .expect("a new connection saw the new certificate");
    let old_after_new = samples[first_new..]
        .iter()
        .filter(|(_, r)| r.as_deref() == Ok(old_fp.as_str()))
        .count();
    let gap_ms = (samples[first_new].0 - samples[first_new - 1].0) * 1000.0;
    eprintln!(
        "measured: reload {:.1} ms (cell side, reload() call); {} HTTPS requests on new connections \
         ({} before the switch, {} after), {} failed, {} old after the first new, last-old to first-new {gap_ms:.1} ms; \
         kept-alive connection after the reload: {kept_ok:?}, serving {}",
        out["reload_ms"].as_f64().unwrap(),
        samples.len(),
        first_new,
        samples.len() - first_new,
        failed.len(),
        old_after_new,
        if kept_fp == old_fp { "the old certificate" } else { "the new certificate" }
    );
    assert!(
        failed.is_empty(),
        "requests failed across the reload: {failed:?}"
    );
    assert_eq!(
        old_after_new, 0,
        "a new connection got the old certificate after the new one"
    );
    assert_eq!(kept_ok, Ok(200), "the kept-alive connection broke");
    assert_eq!(kept_fp, old_fp);

    // A pair the cell's TLS context refuses (a 1024-bit key) is rolled back.
    let weak = sign_bits(
        &s.m.certdir,
        &s.m.root.join("testca.key"),
        "localhost",
        -1,
        90,
        1024,
    );
    let (weak_crt, weak_key) = s.pair("weak", weak);
    let before = s.pair_files();
    let o = s.deploy(&weak_crt, &weak_key);
    assert_fails(&o, 10, "rolled back");
    assert!(
        stderr(&o).contains("failed to reload https:certs"),
        "{}",
        stderr(&o)
    );
    let after = s.pair_files();
    assert_eq!(after["sslcert.pem"], before["sslcert.pem"]);
    assert_eq!(after["sslkey.pem"], before["sslkey.pem"]);
    assert_eq!(
        served_now(s.port),
        new_fp,
        "the pair before is served again"
    );
    assert_eq!(s.cortex.pid(), pid);
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(s.m.root.join("state/c0.deploy.json")).unwrap()).unwrap();
    assert_eq!(status["result"], "failed");
    assert_eq!(status["exit_code"], 10);
    let o = run_at(&s.m.root, &["status", "c0"]);
    assert_eq!(o.status.code(), Some(9));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("last certificate deploy failed"),
        "status: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    // The example certbot hook (its map edited to this instance) deploys a renewal.
    let live = s.m.root.join("live");
    fs::create_dir_all(&live).unwrap();
    let renewed = sign(
        &s.m.certdir,
        &s.m.root.join("testca.key"),
        "localhost",
        -1,
        90,
    );
    fs::write(live.join("fullchain.pem"), &renewed.0).unwrap();
    write_key(&live.join("privkey.pem"), &renewed.1);
    let hook_src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples/certbot-deploy-hook");
    let hook = s.m.root.join("certbot-deploy-hook");
    let text = fs::read_to_string(hook_src).unwrap();
    assert!(text.contains("cortex.example.com  cortex00"));
    fs::write(
        &hook,
        text.replace("cortex.example.com  cortex00", "live c0"),
    )
    .unwrap();
    let bindir = Path::new(env!("CARGO_BIN_EXE_synbackup")).parent().unwrap();
    let o = command("sh")
        .arg(&hook)
        .env("RENEWED_LINEAGE", &live)
        .env(
            "PATH",
            format!("{}:{}", bindir.display(), std::env::var("PATH").unwrap()),
        )
        .env("SYNBACKUP_CONFIG_DIR", s.m.root.join("etc"))
        .env("SYNBACKUP_STATE_DIR", s.m.root.join("state"))
        .env("SYNBACKUP_LOCK_DIR", s.m.root.join("lock"))
        .env("SYNBACKUP_METRICS_DIR", s.m.root.join("metrics"))
        .env_remove("SYNBACKUP_CERT_DIR")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "hook: {}", stderr(&o));
    assert_eq!(
        served_now(s.port),
        file_fp(&renewed.0),
        "the hook's pair is served"
    );
    assert_eq!(s.cortex.pid(), pid);
}

fn a_reload_that_loads_nothing_is_caught_and_rolled_back(s: &Setup) {
    fs::write(&s.control, "SYNTEST_CERTS_RELOAD=noop\n").unwrap();
    let old = s.pair_files();
    let old_fp = file_fp(&old["sslcert.pem"]);
    assert_eq!(served_now(s.port), old_fp);
    let (crt, key) = s.signed("noop", "localhost", -1, 90);
    let o = bin()
        .env_remove("SYNBACKUP_CERT_DIR")
        .args(["certs", "deploy", "--dir"])
        .arg(&s.m.svc)
        .arg("--cert-dir")
        .arg(&s.m.certdir)
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert_fails(&o, 10, "still serves");
    let after = s.pair_files();
    assert_eq!(after["sslcert.pem"], old["sslcert.pem"]);
    assert_eq!(after["sslkey.pem"], old["sslkey.pem"]);
    assert_eq!(served_now(s.port), old_fp);
}

/// `certs deploy` writes by descriptor (issue 32): a service directory reached
/// through a link its user could have made (`HOME/svc -> a root-owned directory`,
/// in a directory the user owns) is refused, exit 3, naming the link, nothing
/// written there; a link the user plants while the deploy runs (after the
/// directory is held, before the writes) redirects nothing: the pair lands in the
/// directory that was checked and root's directory is untouched. The cell is not
/// running: the files alone.
#[test]
fn deploy_never_writes_through_a_link_the_service_user_planted() {
    use std::os::unix::fs::MetadataExt;
    use std::process::Stdio;
    let m = good_material();
    let users = m.root.join("users");
    fs::create_dir(&users).unwrap();
    let svc = users.join("svc");
    fs::rename(&m.svc, &svc).unwrap();
    let st = command("chown")
        .args(["-R", "65534:65534"])
        .arg(&users)
        .status()
        .unwrap();
    assert!(st.success());
    let (crt, key) = sign(&m.certdir, &m.root.join("testca.key"), "localhost", -1, 90);
    fs::write(m.root.join("new.crt"), &crt).unwrap();
    write_key(&m.root.join("new.key"), &key);
    let decoy = m.root.join("etc-decoy");
    fs::create_dir(&decoy).unwrap();
    for f in ["sslcert.pem", "sslkey.pem"] {
        fs::copy(svc.join(f), decoy.join(f)).unwrap();
    }
    let root_files = || -> Vec<(String, Vec<u8>)> {
        names(&decoy)
            .into_iter()
            .map(|n| (n.clone(), fs::read(decoy.join(&n)).unwrap()))
            .collect()
    };
    let before = root_files();
    let deploy = |dir: &Path| {
        let mut c = bin();
        c.env_remove("SYNBACKUP_CERT_DIR")
            .args(["certs", "deploy", "--dir"])
            .arg(dir)
            .arg("--cert")
            .arg(m.root.join("new.crt"))
            .arg("--key")
            .arg(m.root.join("new.key"))
            .arg("--cert-dir")
            .arg(&m.certdir);
        c
    };

    // Planted before: refused.
    let link = users.join("planted");
    std::os::unix::fs::symlink(&decoy, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let o = deploy(&link).output().unwrap();
    assert_fails(
        &o,
        3,
        &format!(
            "{} is a symlink (to {}) that uid 65534 could have made; root does not write through it",
            link.display(),
            decoy.display()
        ),
    );
    assert_eq!(root_files(), before, "nothing written through the link");

    // Planted while it runs: the directory held is the one written.
    let (release, log) = (m.root.join("release"), m.root.join("deploy.log"));
    let mut child = deploy(&svc)
        .env("SYNBACKUP_FAULT", "hold:deploy-held")
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(60, || fs::read_to_string(&log)
            .unwrap()
            .contains("holding at deploy-held")),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    let real = users.join("svc-real");
    fs::rename(&svc, &real).unwrap();
    std::os::unix::fs::symlink(&decoy, &svc).unwrap();
    std::os::unix::fs::lchown(&svc, Some(65534), Some(65534)).unwrap();
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{}", fs::read_to_string(&log).unwrap());
    assert_eq!(root_files(), before, "root's directory untouched");
    assert_eq!(fs::read(real.join("sslcert.pem")).unwrap(), crt);
    assert!(real.join("sslkey.pem.old").is_file());
    assert_eq!(fs::metadata(real.join("sslkey.pem")).unwrap().uid(), 65534);
}
