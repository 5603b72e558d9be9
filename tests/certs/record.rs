// SPDX-License-Identifier: Apache-2.0
//! `synbackup certs INSTANCE`: the certificate directory from the config, the
//! metrics file (a `not_after` timestamp per certificate, an error gauge per file)
//! and the expiry event, logged once when a certificate enters the warning window
//! and once more when it expires.

use std::fs;
use std::process::Output;

use crate::util::certs::*;
use crate::util::*;

struct Inst {
    m: Material,
}

impl Inst {
    fn new(m: Material) -> Inst {
        m.write_instance_config();
        // node_exporter's textfile directory: metrics are written only where it exists.
        fs::create_dir_all(m.root.join("metrics")).unwrap();
        Inst { m }
    }

    fn certs(&self) -> Output {
        bin_at(&self.m.root)
            .env_remove("SYNBACKUP_CERT_DIR")
            .env_remove("SYNBACKUP_CERT_WARN_DAYS")
            .args(["certs", "c0"])
            .output()
            .unwrap()
    }

    fn metrics(&self) -> String {
        fs::read_to_string(self.m.root.join("metrics/synbackup-c0-certs.prom")).unwrap()
    }

    /// The value of the metric line that starts with `name{` and has `label`.
    fn metric(&self, name: &str, label: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
    }
}

fn not_after(path: &std::path::Path) -> f64 {
    let c = openssl::x509::X509::from_pem(&fs::read(path).unwrap()).unwrap();
    let epoch = openssl::asn1::Asn1Time::from_unix(0).unwrap();
    let d = epoch.diff(c.not_after()).unwrap();
    f64::from(d.days) * 86_400.0 + f64::from(d.secs)
}

/// Breaks one file of the material; returns its path.
type Break = fn(&Material) -> std::path::PathBuf;

#[test]
fn each_case_gives_its_metric_and_exit_code() {
    let i = Inst::new(good_material());
    let o = i.certs();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let host = i.m.certdir.join("hosts/cortex.local.crt");
    let label = format!(
        "path=\"{}\",subject_cn=\"cortex.local\",issuer_cn=\"testca\",serial=",
        host.display()
    );
    assert_eq!(
        i.metric("synbackup_cert_not_after_timestamp_seconds", &label),
        Some(not_after(&host)),
        "{}",
        i.metrics()
    );
    assert_eq!(
        i.metric(
            "synbackup_cert_error",
            &format!("path=\"{}\"", host.display())
        ),
        Some(0.0)
    );

    // One broken file per case: its error gauge turns 1, exit 9.
    let cases: Vec<(&str, Break)> = vec![
        (
            "expired",
            (|m| add_host(m, "old.local", -365, -20)) as Break,
        ),
        (
            "key of another pair",
            (|m| {
                let k = m.certdir.join("hosts/cortex.local.key");
                fs::copy(m.certdir.join("users/root@testca.key"), &k).unwrap();
                k
            }) as Break,
        ),
        (
            "CA key",
            (|m| {
                let k = m.certdir.join("cas/testca.key");
                fs::copy(m.root.join("testca.key"), &k).unwrap();
                k
            }) as Break,
        ),
    ];
    for (what, make) in cases {
        let i = Inst::new(good_material());
        let bad = make(&i.m);
        let o = i.certs();
        assert_eq!(o.status.code(), Some(9), "{what}: {}", stderr(&o));
        assert_eq!(
            i.metric(
                "synbackup_cert_error",
                &format!("path=\"{}\"", bad.display())
            ),
            Some(1.0),
            "{what}: {}",
            i.metrics()
        );
        assert_eq!(
            i.metric(
                "synbackup_cert_error",
                &format!(
                    "path=\"{}\"",
                    i.m.certdir.join("hosts/cortex.local.crt").display()
                )
            ),
            Some(0.0),
            "{what}: only the broken file"
        );
    }
}

#[test]
fn the_expiry_event_is_logged_once_per_change() {
    let i = Inst::new(good_material());
    let soon = add_host(&i.m, "soon.local", -355, 10);
    let first = i.certs();
    assert_eq!(
        first.status.code(),
        Some(0),
        "a warning only: {}",
        stderr(&first)
    );
    let line = format!("certificate {} (CN=soon.local) expires in", soon.display());
    assert_eq!(
        stderr(&first).matches(&line).count(),
        1,
        "{}",
        stderr(&first)
    );
    assert_eq!(
        i.metric(
            "synbackup_cert_not_after_timestamp_seconds",
            "subject_cn=\"soon.local\""
        ),
        Some(not_after(&soon))
    );
    let second = i.certs();
    assert!(
        !stderr(&second).contains(&line),
        "logged again: {}",
        stderr(&second)
    );
    // Replaced by an expired one under the same name: a new event, now an error.
    add_host(&i.m, "soon.local", -30, -1);
    let third = i.certs();
    assert_eq!(third.status.code(), Some(9));
    assert!(
        stderr(&third).contains(&format!(
            "error: certificate {} (CN=soon.local) has expired",
            soon.display()
        )),
        "{}",
        stderr(&third)
    );
}

#[test]
fn run_checks_the_certificates_and_status_shows_the_worst_finding() {
    let m = good_material();
    // fake_service writes placeholder HTTPS files: keep the material's pair.
    let pair: Vec<Vec<u8>> = ["sslcert.pem", "sslkey.pem"]
        .iter()
        .map(|n| fs::read(m.svc.join(n)).unwrap())
        .collect();
    fake_service(&m.svc, 50);
    fs::write(m.svc.join("sslcert.pem"), &pair[0]).unwrap();
    write_key(&m.svc.join("sslkey.pem"), &pair[1]);
    fs::copy(m.root.join("testca.key"), m.certdir.join("cas/testca.key")).unwrap();
    let i = Inst::new(m);
    let o = bin_at(&i.m.root)
        .env_remove("SYNBACKUP_CERT_DIR")
        .args(["-q", "run", "c0"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "a failed check does not fail the backup: {}",
        stderr(&o)
    );
    let ca_key = i.m.certdir.join("cas/testca.key");
    assert_eq!(
        i.metric(
            "synbackup_cert_error",
            &format!("path=\"{}\"", ca_key.display())
        ),
        Some(1.0)
    );
    let o = run_at(&i.m.root, &["status", "c0"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!(
            "c0: certificates: ca-key {}: a CA's private key",
            ca_key.display()
        )),
        "{text}"
    );
}

/// `SYNBACKUP_CERT_ACCEPT=self-signed`: the self-signed HTTPS pair Synapse made is
/// shown as accepted, and the check passes without a warning; a failure or an
/// expiry cannot be accepted (a configuration error naming the file and line).
#[test]
fn an_accepted_warning_is_shown_not_counted() {
    let m = good_material();
    m.use_synapses_default_pair();
    let i = Inst::new(m);
    let json = |o: &Output| -> serde_json::Value { serde_json::from_slice(&o.stdout).unwrap() };
    let certs_json = || {
        bin_at(&i.m.root)
            .env_remove("SYNBACKUP_CERT_DIR")
            .env_remove("SYNBACKUP_CERT_WARN_DAYS")
            .args(["certs", "c0", "--json"])
            .output()
            .unwrap()
    };
    // Not accepted: a warning.
    let o = certs_json();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        json(&o)["findings"][0]["check"],
        "self-signed",
        "{}",
        stderr(&o)
    );
    assert_eq!(json(&o)["accepted"], serde_json::json!([]));

    let conf = i.m.root.join("etc/c0.conf");
    let base = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, format!("{base}SYNBACKUP_CERT_ACCEPT=self-signed\n")).unwrap();
    let o = certs_json();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        json(&o)["findings"],
        serde_json::json!([]),
        "{}",
        stderr(&o)
    );
    assert_eq!(json(&o)["accepted"][0]["check"], "self-signed");
    let o = i.certs();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("ACCEPTED self-signed") && out.contains("all checks passed"),
        "{out}"
    );

    // A failure cannot be accepted.
    fs::write(
        &conf,
        format!("{base}SYNBACKUP_CERT_ACCEPT=self-signed ca-key\n"),
    )
    .unwrap();
    let o = i.certs();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = error_lines(&o);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains(&format!("{}:", conf.display()))
            && err[0].contains("\"ca-key\", which cannot be accepted"),
        "{err:?}"
    );
}
