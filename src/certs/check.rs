// SPDX-License-Identifier: Apache-2.0
//! The TLS material of a service directory, checked with OpenSSL: every certificate
//! parses (PEM chains), is within its dates (a warning inside the warning window,
//! a failure once expired), matches its key, verifies against the CAs of `cas/`
//! (and is not revoked by `crls/`), carries the names its listeners are reached by;
//! and no private key is open to other users, no CA key sits on the service host,
//! and the cell's HTTPS pair is not left as the self-signed default.
//!
//! Nothing here knows about instances: it takes the service directory and the
//! certificate directories, and returns a [`Report`] the callers print, turn into
//! metrics or compare with the last one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::files::{self, Pair, Role};
use super::listeners;
use super::x509::{self, Trust};
use crate::base::pathtext;

/// How bad a finding is; a report's worst decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// Act soon (expiring, the self-signed default).
    Warn,
    /// Broken or unsafe now.
    Fail,
}

/// The warnings an operator may accept on purpose (`SYNBACKUP_CERT_ACCEPT`): the
/// self-signed HTTPS pair Synapse made, a replaced key kept aside. Never a failure,
/// never an expiry (that one is a date, not a choice).
pub(crate) const ACCEPTABLE: [&str; 2] = ["self-signed", "kept-key"];

/// One finding about one file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub(crate) path: String,
    pub(crate) severity: Severity,
    /// A stable name for the check (`expired`, `key-mismatch`, ...).
    pub(crate) check: &'static str,
    pub(crate) message: String,
}

/// The facts of one certificate file (its leaf).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertInfo {
    pub(crate) path: String,
    pub(crate) role: Role,
    pub(crate) subject_cn: String,
    pub(crate) issuer_cn: String,
    pub(crate) serial: String,
    pub(crate) names: Vec<String>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// Whole days until `not_after` (negative once expired).
    pub(crate) days_left: i64,
    /// Certificates in the file (a full chain has more than one).
    pub(crate) chain_len: usize,
}

/// Everything checked and found (paths as `pathtext::key`s: lossless).
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Report {
    pub(crate) service_dir: String,
    pub(crate) cert_dirs: Vec<String>,
    pub(crate) warn_days: u32,
    /// Every certificate, CRL and key file looked at.
    pub(crate) files: Vec<String>,
    pub(crate) certs: Vec<CertInfo>,
    /// Private keys kept aside when they were replaced (`sslkey.pem.old`,
    /// `NAME.key.synbackup-old-STAMP`).
    pub(crate) kept_keys: Vec<KeptKeyInfo>,
    pub(crate) findings: Vec<Finding>,
    /// Warnings the instance accepts on purpose (`SYNBACKUP_CERT_ACCEPT`): shown,
    /// not counted as problems.
    pub(crate) accepted: Vec<Finding>,
}

/// A private key kept aside, and whether it still works.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeptKeyInfo {
    pub(crate) path: String,
    pub(crate) mode: u32,
    /// The certificate it is the key of, when one of those looked at is.
    pub(crate) cert: Option<String>,
    pub(crate) subject_cn: Option<String>,
    pub(crate) not_after: Option<i64>,
    /// Its certificate is within its dates: the key still proves that identity.
    pub(crate) still_valid: bool,
}

impl Report {
    /// The worst severity found, `None` when all is well.
    pub(crate) fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// The first of the worst findings.
    pub(crate) fn worst_finding(&self) -> Option<&Finding> {
        let worst = self.worst()?;
        self.findings.iter().find(|f| f.severity == worst)
    }

    /// True when a check failed.
    pub(crate) fn failed(&self) -> bool {
        self.worst() == Some(Severity::Fail)
    }

    /// True when a failed check concerns `path`.
    pub(crate) fn file_failed(&self, path: &str) -> bool {
        self.findings
            .iter()
            .any(|f| f.path == path && f.severity == Severity::Fail)
    }

    fn add(&mut self, path: &Path, severity: Severity, check: &'static str, message: String) {
        self.findings.push(Finding {
            path: pathtext::key(path),
            severity,
            check,
            message,
        });
    }
}

/// What to check against.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Warn when fewer days than this are left.
    pub(crate) warn_days: u32,
    /// Names clients reach the HTTPS server by (checked against `sslcert.pem`).
    pub(crate) https_names: Vec<String>,
    /// "Now", seconds since the epoch.
    pub(crate) now: i64,
    /// Warnings accepted on purpose (names in [`ACCEPTABLE`]).
    pub(crate) accept: Vec<String>,
}

/// Check the material of `service_dir`, with `cert_dir` (the user's certificate
/// directory, if any) and `service_dir/certs`.
pub(crate) fn check_material(
    service_dir: &Path,
    cert_dir: Option<&Path>,
    opts: &Options,
) -> Result<Report> {
    let mut cert_dirs: Vec<PathBuf> = cert_dir.map(Path::to_path_buf).into_iter().collect();
    cert_dirs.push(service_dir.join("certs"));
    let material = files::discover_material(service_dir, &cert_dirs)?;
    let mut r = Report {
        service_dir: pathtext::key(service_dir),
        cert_dirs: cert_dirs.iter().map(|d| pathtext::key(d)).collect(),
        warn_days: opts.warn_days,
        ..Report::default()
    };
    let trust = load_trust(&material, &mut r)?;
    for pair in &material.pairs {
        check_pair(pair, &trust, opts, &mut r)?;
    }
    check_listener(service_dir, &cert_dirs, &mut r)?;
    check_https_names(service_dir, &opts.https_names, &mut r);
    for kept in files::discover_kept_keys(service_dir, &cert_dirs)? {
        check_kept_key(&kept, opts, &mut r)?;
    }
    set_accepted_aside(&mut r, &opts.accept);
    Ok(r)
}

/// The warnings `accept` names move from the findings to `accepted`.
fn set_accepted_aside(r: &mut Report, accept: &[String]) {
    let (accepted, findings) = std::mem::take(&mut r.findings)
        .into_iter()
        .partition(|f| f.severity == Severity::Warn && accept.iter().any(|a| a == f.check));
    r.findings = findings;
    r.accepted = accepted;
}

/// A key kept aside: which certificate it belongs to and whether that is still
/// valid (a warning: a working key lying beside the one in use, to remove once the
/// new one is in service), and that no one else can read it (a failure).
fn check_kept_key(kept: &files::KeptKey, opts: &Options, r: &mut Report) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = &kept.key;
    r.files.push(pathtext::key(path));
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    let mut info = KeptKeyInfo {
        path: pathtext::key(path),
        mode,
        cert: None,
        subject_cn: None,
        not_after: None,
        still_valid: false,
    };
    if let Ok(key) = x509::load_key(path) {
        for cert in &kept.certs {
            let Ok(chain) = x509::load_chain(cert) else {
                continue;
            };
            let leaf = &chain[0];
            if !leaf.public_key().is_ok_and(|pk| pk.public_eq(&key)) {
                continue;
            }
            let nb = x509::unix_time(leaf.not_before())?;
            let na = x509::unix_time(leaf.not_after())?;
            info.cert = Some(pathtext::key(cert));
            info.subject_cn = Some(x509::common_name(leaf.subject_name()));
            info.not_after = Some(na);
            info.still_valid = nb <= opts.now && opts.now < na;
            break;
        }
    }
    if info.still_valid {
        let day = chrono::DateTime::from_timestamp(info.not_after.unwrap_or(0), 0)
            .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let cert = info.cert.as_deref().unwrap_or("");
        r.add(
            path,
            Severity::Warn,
            "kept-key",
            format!(
                "a private key kept aside when it was replaced, still valid: it is the key of {cert} (CN={}) until {day}; \
                 once the new one is in service, remove it: rm {}{}",
                info.subject_cn.as_deref().unwrap_or(""),
                path.display(),
                if cert.contains(".old") || cert.contains(".synbackup-old-") {
                    format!(" {cert}")
                } else {
                    String::new()
                }
            ),
        );
    }
    if let Some((who, mode)) = files::key_exposure(path)? {
        r.add(
            path,
            Severity::Fail,
            "key-readable",
            format!("kept-aside private key readable by {who} (mode {mode:04o}): chmod 600 it, or remove it"),
        );
    }
    r.kept_keys.push(info);
    Ok(())
}

/// The store of `cas/*.crt` (and `crls/*.crl`); one that does not parse is a finding.
fn load_trust(m: &files::Material, r: &mut Report) -> Result<Trust> {
    let mut cas = Vec::new();
    for p in m.pairs.iter().filter(|p| p.role == Role::Ca) {
        if let Ok(chain) = x509::load_chain(&p.cert) {
            cas.extend(chain);
        }
    }
    let mut crls = Vec::new();
    for path in &m.crls {
        r.files.push(pathtext::key(path));
        match x509::load_crl(path) {
            Ok(c) => crls.push((path.display().to_string(), c)),
            Err(e) => r.add(path, Severity::Fail, "unreadable", format!("{e:#}")),
        }
    }
    Trust::new(&cas, crls)
}

/// Every check of one certificate file and its key.
fn check_pair(pair: &Pair, trust: &Trust, opts: &Options, r: &mut Report) -> Result<()> {
    r.files.push(pathtext::key(&pair.cert));
    let chain = match x509::load_chain(&pair.cert) {
        Ok(c) => c,
        Err(e) => {
            r.add(&pair.cert, Severity::Fail, "unreadable", format!("{e:#}"));
            return check_key_file(pair, None, r);
        }
    };
    let leaf = &chain[0];
    let not_before = x509::unix_time(leaf.not_before())?;
    let not_after = x509::unix_time(leaf.not_after())?;
    let days_left = (not_after - opts.now).div_euclid(86_400);
    r.certs.push(CertInfo {
        path: pathtext::key(&pair.cert),
        role: pair.role,
        subject_cn: x509::common_name(leaf.subject_name()),
        issuer_cn: x509::common_name(leaf.issuer_name()),
        serial: x509::serial_hex(leaf),
        names: x509::names(leaf),
        not_before,
        not_after,
        days_left,
        chain_len: chain.len(),
    });
    check_dates(pair, not_before, not_after, days_left, opts, r);
    check_chain(pair, &chain, trust, r);
    check_key_file(pair, Some(leaf), r)
}

fn check_dates(pair: &Pair, nb: i64, na: i64, days_left: i64, opts: &Options, r: &mut Report) {
    let day = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default()
    };
    if na <= opts.now {
        r.add(
            &pair.cert,
            Severity::Fail,
            "expired",
            format!("expired on {} ({} days ago): renew it", day(na), -days_left),
        );
    } else if nb > opts.now {
        r.add(
            &pair.cert,
            Severity::Fail,
            "not-yet-valid",
            format!("not valid before {}: check the host's clock", day(nb)),
        );
    } else if days_left < i64::from(opts.warn_days) {
        r.add(
            &pair.cert,
            Severity::Warn,
            "expiring",
            format!(
                "expires on {} (in {days_left} days, less than SYNBACKUP_CERT_WARN_DAYS={}): renew it",
                day(na),
                opts.warn_days
            ),
        );
    }
}

/// Host and user certificates must verify against `cas/` and not be revoked; the
/// HTTPS pair may also chain to the system's roots, or be self-signed (a warning).
fn check_chain(pair: &Pair, chain: &[openssl::x509::X509], trust: &Trust, r: &mut Report) {
    let leaf = &chain[0];
    let system_roots = match pair.role {
        Role::Ca => return,
        Role::Host | Role::User => false,
        Role::Https if x509::is_self_signed(leaf) => {
            r.add(
                &pair.cert,
                Severity::Warn,
                "self-signed",
                format!(
                    "the HTTPS certificate is self-signed (CN={}; Synapse generates one when none is given): \
                     the guide advises replacing it with one from a CA in production",
                    x509::common_name(leaf.subject_name())
                ),
            );
            return;
        }
        Role::Https => true,
    };
    if let Err(why) = trust.verify(chain, system_roots) {
        r.add(
            &pair.cert,
            Severity::Fail,
            "untrusted",
            format!(
                "does not verify against the CAs in cas/ (issuer CN={}): {why}",
                x509::common_name(leaf.issuer_name())
            ),
        );
    } else if let Some(crl) = trust.revoked_by(leaf) {
        r.add(
            &pair.cert,
            Severity::Fail,
            "revoked",
            format!("revoked by {crl}"),
        );
    }
}

/// The key: present where needed, parses, matches the certificate, open to no one
/// else; a CA's key is a finding of its own.
fn check_key_file(pair: &Pair, leaf: Option<&openssl::x509::X509>, r: &mut Report) -> Result<()> {
    let Some(key_path) = &pair.key else {
        if matches!(pair.role, Role::Host | Role::Https) {
            r.add(
                &pair.cert,
                Severity::Fail,
                "key-missing",
                format!(
                    "no private key beside it ({}): the listener cannot start without one",
                    if pair.role == Role::Https {
                        pair.cert.with_file_name("sslkey.pem")
                    } else {
                        pair.cert.with_extension("key")
                    }
                    .display()
                ),
            );
        }
        return Ok(());
    };
    r.files.push(pathtext::key(key_path));
    match x509::load_key(key_path) {
        Err(e) => r.add(key_path, Severity::Fail, "unreadable", format!("{e:#}")),
        Ok(key) => {
            if let Some(leaf) = leaf {
                let matches = leaf.public_key().is_ok_and(|pk| pk.public_eq(&key));
                if !matches {
                    r.add(
                        key_path,
                        Severity::Fail,
                        "key-mismatch",
                        format!(
                            "is not the key of {} (another pair's key?): put the matching key there",
                            pair.cert.display()
                        ),
                    );
                }
            }
        }
    }
    if let Some((who, mode)) = files::key_exposure(key_path)? {
        r.add(
            key_path,
            Severity::Fail,
            "key-readable",
            format!("private key readable by {who} (mode {mode:04o}): chmod 600 it"),
        );
    }
    if pair.role == Role::Ca {
        r.add(
            key_path,
            Severity::Fail,
            "ca-key",
            "a CA's private key on a service host: keep it only where certificates are signed \
             (the guide: never distribute it) and remove it here"
                .into(),
        );
    }
    Ok(())
}

/// The telepath `ssl://` listener needs `hosts/NAME.crt` for each of its names,
/// carrying that name, and `cas/CA.crt` for its `ca=`.
fn check_listener(service_dir: &Path, cert_dirs: &[PathBuf], r: &mut Report) -> Result<()> {
    let Some(l) = listeners::find_ssl_listener(service_dir)? else {
        return Ok(());
    };
    let dirs = cert_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    let find = |sub: &str, name: &str| {
        cert_dirs
            .iter()
            .map(|d| d.join(sub).join(format!("{name}.crt")))
            .find(|p| p.is_file())
    };
    let origin = PathBuf::from(&l.origin);
    for host in &l.hostnames {
        match find("hosts", host) {
            None => r.add(
                &origin,
                Severity::Fail,
                "listener-cert-missing",
                format!(
                    "dmon:listen {} needs hosts/{host}.crt and hosts/{host}.key in {dirs}",
                    l.url
                ),
            ),
            Some(p) => {
                if let Ok(chain) = x509::load_chain(&p) {
                    if !x509::covers_name(&chain[0], host) {
                        r.add(
                            &p,
                            Severity::Fail,
                            "name-missing",
                            format!(
                                "dmon:listen {} is reached as {host}, which is not among the certificate's names ({})",
                                l.url,
                                x509::names(&chain[0]).join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
    if let Some(ca) = &l.ca {
        if find("cas", ca).is_none() {
            r.add(
                &origin,
                Severity::Fail,
                "listener-ca-missing",
                format!(
                    "dmon:listen {} checks clients against cas/{ca}.crt, which is not in {dirs}",
                    l.url
                ),
            );
        }
    }
    Ok(())
}

/// The HTTPS server is reached by `names`: each must be in `sslcert.pem`.
fn check_https_names(service_dir: &Path, names: &[String], r: &mut Report) {
    let path = service_dir.join("sslcert.pem");
    let Ok(chain) = x509::load_chain(&path) else {
        return;
    };
    for n in names {
        if !x509::covers_name(&chain[0], n) {
            r.add(
                &path,
                Severity::Fail,
                "name-missing",
                format!(
                    "the HTTPS server is reached as {n}, which is not among the certificate's names ({})",
                    x509::names(&chain[0]).join(", ")
                ),
            );
        }
    }
}
