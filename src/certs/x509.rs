// SPDX-License-Identifier: Apache-2.0
//! The OpenSSL side of the checks: reading PEM chains and keys, dates as Unix
//! times, names (CN and SAN, with the leftmost-label wildcard TLS clients accept),
//! and verification against the CAs of `cas/` with the revocations of `crls/` (as
//! Synapse's `CertDir` does: a CRL applies to the certificates its CA issued; a CA
//! without a CRL revokes nothing).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{CrlStatus, X509Crl, X509NameRef, X509Ref, X509StoreContext, X509};

/// Every certificate of the PEM file at `path` (the leaf first); an error when it
/// holds none.
pub(crate) fn load_chain(path: &Path) -> Result<Vec<X509>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let chain = X509::stack_from_pem(&pem).map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    if chain.is_empty() {
        return Err(anyhow!("no PEM certificate in it"));
    }
    Ok(chain)
}

/// The PEM private key at `path`.
pub(crate) fn load_key(path: &Path) -> Result<PKey<Private>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    PKey::private_key_from_pem(&pem).map_err(|e| anyhow!("not a PEM private key: {e}"))
}

/// An ASN.1 time as seconds since the epoch.
pub(crate) fn unix_time(t: &Asn1TimeRef) -> Result<i64> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// The first CN of a name ("" when it has none).
pub(crate) fn common_name(name: &X509NameRef) -> String {
    name.entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

/// The serial number in lower-case hex.
pub(crate) fn serial_hex(cert: &X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_lowercase()))
        .unwrap_or_default()
}

/// The names a client may reach the certificate's holder by: DNS and IP SANs, and the CN.
pub(crate) fn names(cert: &X509Ref) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(sans) = cert.subject_alt_names() {
        for san in &sans {
            if let Some(d) = san.dnsname() {
                out.push(d.to_string());
            } else if let Some(ip) = san.ipaddress() {
                out.push(format_ip(ip));
            }
        }
    }
    let cn = common_name(cert.subject_name());
    if !cn.is_empty() && !out.contains(&cn) {
        out.push(cn);
    }
    out
}

fn format_ip(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::from([b[0], b[1], b[2], b[3]]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => String::new(),
    }
}

/// True when `host` is one of the certificate's names (case-insensitive; `*.x`
/// matches one label).
pub(crate) fn covers_name(cert: &X509Ref, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    names(cert).iter().any(|n| {
        let n = n.to_ascii_lowercase();
        match n.strip_prefix("*.") {
            Some(rest) => host
                .split_once('.')
                .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
            None => n == host,
        }
    })
}

/// True when the certificate is its own issuer and its signature verifies with its
/// own key.
pub(crate) fn is_self_signed(cert: &X509Ref) -> bool {
    let same = cert
        .subject_name()
        .try_cmp(cert.issuer_name())
        .is_ok_and(|o| o.is_eq());
    same && cert
        .public_key()
        .and_then(|k| cert.verify(&k))
        .unwrap_or(false)
}

/// The CAs and CRLs a certificate directory trusts.
pub(crate) struct Trust {
    store: X509Store,
    with_system_roots: X509Store,
    crls: Vec<(String, X509Crl)>,
    cas: Vec<X509>,
}

impl Trust {
    /// The stores of `cas` (one also with the system's roots), with `crls` (file
    /// name, CRL) checked by hand in [`Trust::revoked_by`].
    pub(crate) fn new(cas: &[X509], crls: Vec<(String, X509Crl)>) -> Result<Trust> {
        let build = |system_roots: bool| -> Result<X509Store> {
            let mut b = X509StoreBuilder::new()?;
            for ca in cas {
                // A duplicate (the same CA in two certificate directories) is not an error.
                let _ = b.add_cert(ca.clone());
            }
            if system_roots {
                b.set_default_paths()?;
            }
            // Dates are their own finding: do not report an expired leaf twice.
            b.set_flags(X509VerifyFlags::NO_CHECK_TIME)?;
            Ok(b.build())
        };
        Ok(Trust {
            store: build(false)?,
            with_system_roots: build(true)?,
            crls,
            cas: cas.to_vec(),
        })
    }

    /// Verify `chain` (leaf first, the rest untrusted intermediates) against `cas/`,
    /// and the system's roots too when `system_roots`: `Err` says why not.
    pub(crate) fn verify(&self, chain: &[X509], system_roots: bool) -> Result<(), String> {
        let store = if system_roots {
            &self.with_system_roots
        } else {
            &self.store
        };
        let mut untrusted = Stack::new().map_err(|e| e.to_string())?;
        for c in chain.iter().skip(1) {
            untrusted.push(c.clone()).map_err(|e| e.to_string())?;
        }
        let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
        let (ok, why) = ctx
            .init(store, &chain[0], &untrusted, |c| {
                let ok = c.verify_cert()?;
                Ok((ok, c.error().error_string().to_string()))
            })
            .map_err(|e| e.to_string())?;
        if ok {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// The CRL file that revokes `cert`, if one does: a CRL whose issuer is the
    /// certificate's issuer and whose signature verifies with that CA's key.
    pub(crate) fn revoked_by(&self, cert: &X509) -> Option<String> {
        for (file, crl) in &self.crls {
            let same_issuer = crl
                .issuer_name()
                .try_cmp(cert.issuer_name())
                .is_ok_and(|o| o.is_eq());
            if !same_issuer {
                continue;
            }
            let signed = self.cas.iter().any(|ca| {
                ca.subject_name()
                    .try_cmp(crl.issuer_name())
                    .is_ok_and(|o| o.is_eq())
                    && ca
                        .public_key()
                        .and_then(|k| crl.verify(&k))
                        .unwrap_or(false)
            });
            if signed && !matches!(crl.get_by_cert(cert), CrlStatus::NotRevoked) {
                return Some(file.clone());
            }
        }
        None
    }
}

/// The CRL at `path` (PEM, as easycert writes it, or DER).
pub(crate) fn load_crl(path: &Path) -> Result<X509Crl> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    X509Crl::from_pem(&bytes)
        .or_else(|_| X509Crl::from_der(&bytes))
        .map_err(|e| anyhow!("not a CRL: {e}"))
}
