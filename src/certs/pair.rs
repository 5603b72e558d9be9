// SPDX-License-Identifier: Apache-2.0
//! The file side of `certs deploy`: check a renewed HTTPS pair before it goes
//! anywhere (the key is the certificate's, the chain verifies, every certificate is
//! within its dates, the names clients use are in the leaf), keep the pair in use
//! beside it (`sslcert.pem.old`, `sslkey.pem.old`), write the new one atomically
//! with the service directory's owner (the key 0600), and put the old one back.
//! The service directory is the service user's: every write is by the held
//! directory's descriptor (`base::heldir`), never through a link.
//!
//! Nothing here talks to the service: `certs::deploy` reloads and confirms.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use openssl::hash::MessageDigest;
use openssl::x509::X509Ref;

use super::{files, x509};
use crate::base::digest::hex;
use crate::base::exit::{fail, Code};
use crate::base::fsutil::write_error;
use crate::base::heldir::HeldDir;

/// The HTTPS pair's file names in a service directory (what Synapse's
/// `addHttpsPort` loads).
pub(crate) const CERT_FILE: &str = "sslcert.pem";
pub(crate) const KEY_FILE: &str = "sslkey.pem";
/// The suffix of the kept previous pair.
pub(crate) const OLD_SUFFIX: &str = ".old";

/// A new pair that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub(crate) fingerprint: String,
    pub(crate) subject_cn: String,
    pub(crate) names: Vec<String>,
    pub(crate) not_after: i64,
}

/// SHA-256 of a certificate's DER encoding, lower-case hex (what `openssl x509
/// -fingerprint -sha256` prints, without the colons).
pub(crate) fn fingerprint(cert: &X509Ref) -> Result<String> {
    Ok(hex(&cert.digest(MessageDigest::sha256())?))
}

/// A refused pair: exit code 9, the message naming the file and what to do.
fn refuse(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    fail(
        Code::Unhealthy,
        format!("refused {}: {why}; nothing was written", path.display()),
    )
}

/// Check the pair at `cert_path` / `key_path`: `names` must each be in the leaf,
/// the chain must verify against the system's roots or the `cas/` of `trust_dirs`.
pub(crate) fn check_candidate(
    cert_path: &Path,
    key_path: &Path,
    trust_dirs: &[PathBuf],
    names: &[String],
    now: i64,
) -> Result<Candidate> {
    let cert_pem =
        fs::read(cert_path).map_err(|e| refuse(cert_path, format!("cannot read it: {e}")))?;
    let key_pem =
        fs::read(key_path).map_err(|e| refuse(key_path, format!("cannot read it: {e}")))?;
    let chain = x509::load_chain(cert_path).map_err(|e| refuse(cert_path, format!("{e:#}")))?;
    let key = x509::load_key(key_path).map_err(|e| refuse(key_path, format!("{e:#}")))?;
    let leaf = &chain[0];
    let matches = leaf.public_key().is_ok_and(|pk| pk.public_eq(&key));
    if !matches {
        return Err(refuse(
            key_path,
            format!(
                "it is not the private key of {} (CN={}): give the key the certificate was issued for",
                cert_path.display(),
                x509::common_name(leaf.subject_name())
            ),
        ));
    }
    for (i, c) in chain.iter().enumerate() {
        check_dates(cert_path, i, c, now)?;
    }
    check_chain(cert_path, &chain, trust_dirs)?;
    for n in names {
        if !x509::covers_name(leaf, n) {
            return Err(refuse(
                cert_path,
                format!(
                    "the HTTPS server is reached as {n}, which is not among the certificate's names ({}): \
                     request a certificate for it, or name the ones it is reached by with --https-name (SYNBACKUP_CERT_NAMES)",
                    x509::names(leaf).join(", ")
                ),
            ));
        }
    }
    Ok(Candidate {
        fingerprint: fingerprint(leaf)?,
        subject_cn: x509::common_name(leaf.subject_name()),
        names: x509::names(leaf),
        not_after: x509::unix_time(leaf.not_after())?,
        cert_pem,
        key_pem,
    })
}

fn check_dates(path: &Path, index: usize, c: &X509Ref, now: i64) -> Result<()> {
    let which = if index == 0 {
        "the certificate".to_string()
    } else {
        format!(
            "certificate {} of the chain (CN={})",
            index + 1,
            x509::common_name(c.subject_name())
        )
    };
    let day = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default()
    };
    let nb = x509::unix_time(c.not_before())?;
    let na = x509::unix_time(c.not_after())?;
    if na <= now {
        return Err(refuse(
            path,
            format!("{which} expired on {}: give the renewed one", day(na)),
        ));
    }
    if nb > now {
        return Err(refuse(
            path,
            format!(
                "{which} is not valid before {}: check the host's clock",
                day(nb)
            ),
        ));
    }
    Ok(())
}

/// The chain (leaf first, intermediates after it, as in certbot's `fullchain.pem`)
/// must verify against the system's roots or a CA of `cas/`.
fn check_chain(path: &Path, chain: &[openssl::x509::X509], trust_dirs: &[PathBuf]) -> Result<()> {
    let mut cas = Vec::new();
    for d in trust_dirs {
        for f in files::files_with_extension(&d.join("cas"), "crt")? {
            if let Ok(c) = x509::load_chain(&f) {
                cas.extend(c);
            }
        }
    }
    let trust = x509::Trust::new(&cas, Vec::new())?;
    trust.verify(chain, true).map_err(|why| {
        let dirs = trust_dirs
            .iter()
            .map(|d| d.join("cas").display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        refuse(
            path,
            format!(
                "the chain does not verify against the system's CAs or {} (issuer CN={}): {why}; \
                 give the full chain (certbot's fullchain.pem)",
                if dirs.is_empty() {
                    "a cas/ directory".to_string()
                } else {
                    dirs
                },
                x509::common_name(chain[0].issuer_name())
            ),
        )
    })
}

/// One file of a pair in use, as it is on disk.
#[derive(Debug, Clone)]
pub(crate) struct KeptFile {
    pub(crate) bytes: Vec<u8>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u32,
}

/// The pair in use in a service directory.
#[derive(Debug, Clone)]
pub(crate) struct CurrentPair {
    pub(crate) cert: KeptFile,
    pub(crate) key: KeptFile,
    /// The leaf's fingerprint, `None` when the file does not parse.
    pub(crate) fingerprint: Option<String>,
    /// The leaf's names, when it is not the self-signed default.
    pub(crate) names: Option<Vec<String>>,
}

fn read_kept(path: &Path) -> Result<KeptFile> {
    let meta = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok(KeptFile {
        bytes: fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.permissions().mode() & 0o7777,
    })
}

/// The pair `dir` uses now; `None` when it has none yet (the cell makes a
/// self-signed one at its first start).
pub(crate) fn read_current(dir: &Path) -> Result<Option<CurrentPair>> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !cert.exists() && !key.exists() {
        return Ok(None);
    }
    let leaf = x509::load_chain(&cert).ok().map(|mut c| c.remove(0));
    Ok(Some(CurrentPair {
        cert: read_kept(&cert)?,
        key: read_kept(&key)?,
        fingerprint: leaf.as_ref().and_then(|l| fingerprint(l).ok()),
        names: leaf
            .as_ref()
            .filter(|l| !x509::is_self_signed(l))
            .map(|l| x509::names(l)),
    }))
}

/// Write `bytes` to a temporary beside `name` in `dir` (held: never through a
/// link), owned `uid:gid` with `mode`, fsynced; renamed over `name` by the caller.
fn write_temp(
    dir: &HeldDir,
    name: &str,
    bytes: &[u8],
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<OsString> {
    let tmp = OsString::from(format!(".{name}.deploy.{}", std::process::id()));
    let tmp_path = dir.path().join(&tmp);
    let result = (|| -> Result<()> {
        let mut f = dir.create_new(&tmp)?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).with_context(|| {
            format!(
                "cannot give {} to the service's owner {uid}:{gid}: run as root or as that user",
                tmp_path.display()
            )
        })?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes).map_err(|e| write_error(&tmp_path, e))?;
        f.sync_all().map_err(|e| write_error(&tmp_path, e))?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = dir.unlink(&tmp);
            Err(e)
        }
    }
}

/// Write the files (name in `dir`, contents, uid, gid, mode) together: every
/// temporary is written and fsynced before the first rename, then the directory is
/// fsynced. All by the held directory's descriptor.
fn write_files(dir: &HeldDir, files: &[(&str, &[u8], u32, u32, u32)]) -> Result<()> {
    let mut temps = Vec::new();
    for (name, bytes, uid, gid, mode) in files {
        match write_temp(dir, name, bytes, *uid, *gid, *mode) {
            Ok(t) => temps.push((t, *name)),
            Err(e) => {
                for (t, _) in &temps {
                    let _ = dir.unlink(t);
                }
                return Err(e);
            }
        }
    }
    // The key first: a cell reloading between the two renames finds the new key
    // with the old certificate, refuses it and keeps serving what it had.
    for (tmp, name) in &temps {
        dir.rename(tmp, OsStr::new(name))?;
    }
    dir.sync()
}

/// Keep the pair in use as `sslcert.pem.old` and `sslkey.pem.old` (replacing the
/// ones an earlier deploy kept), with its owners and modes; the key at most 0600:
/// it is still valid, and Synapse's default key is 0644.
pub(crate) fn keep_old(dir: &HeldDir, old: &CurrentPair) -> Result<()> {
    let (key, cert) = (
        format!("{KEY_FILE}{OLD_SUFFIX}"),
        format!("{CERT_FILE}{OLD_SUFFIX}"),
    );
    write_files(
        dir,
        &[
            (
                &key,
                &old.key.bytes,
                old.key.uid,
                old.key.gid,
                old.key.mode & 0o600,
            ),
            (
                &cert,
                &old.cert.bytes,
                old.cert.uid,
                old.cert.gid,
                old.cert.mode,
            ),
        ],
    )
}

/// Write the new pair, owned by the owner of `dir`; the key 0600, the certificate
/// with the mode the old one had (0644 when there was none).
pub(crate) fn write_new(dir: &HeldDir, new: &Candidate, old: Option<&CurrentPair>) -> Result<()> {
    let meta = dir
        .file()
        .metadata()
        .with_context(|| format!("cannot stat {}", dir.path().display()))?;
    let cert_mode = old.map_or(0o644, |o| o.cert.mode);
    write_files(
        dir,
        &[
            (KEY_FILE, &new.key_pem, meta.uid(), meta.gid(), 0o600),
            (CERT_FILE, &new.cert_pem, meta.uid(), meta.gid(), cert_mode),
        ],
    )
}

/// Put the old pair back exactly (bytes, owners, modes); with no old pair, remove
/// the new one (the cell makes its default at the next start, as before).
pub(crate) fn put_back(dir: &HeldDir, old: Option<&CurrentPair>) -> Result<()> {
    let Some(old) = old else {
        for name in [CERT_FILE, KEY_FILE] {
            dir.unlink(OsStr::new(name))?;
        }
        return dir.sync();
    };
    write_files(
        dir,
        &[
            (
                KEY_FILE,
                &old.key.bytes,
                old.key.uid,
                old.key.gid,
                old.key.mode,
            ),
            (
                CERT_FILE,
                &old.cert.bytes,
                old.cert.uid,
                old.cert.gid,
                old.cert.mode,
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_kept_aside_is_at_most_0600_its_owner_kept() {
        let t = tempfile::tempdir().unwrap();
        let kept = |bytes: &[u8], mode| KeptFile {
            bytes: bytes.to_vec(),
            uid: 65534,
            gid: 65534,
            mode,
        };
        let old = CurrentPair {
            cert: kept(b"cert", 0o644),
            key: kept(b"key", 0o644),
            fingerprint: None,
            names: None,
        };
        let held = HeldDir::open_trusted(t.path(), None, "", &mut Vec::new()).unwrap();
        keep_old(&held, &old).unwrap();
        let meta = |n: &str| fs::metadata(t.path().join(n)).unwrap();
        let key = meta("sslkey.pem.old");
        assert_eq!(key.permissions().mode() & 0o7777, 0o600);
        assert_eq!((key.uid(), key.gid()), (65534, 65534));
        assert_eq!(meta("sslcert.pem.old").permissions().mode() & 0o7777, 0o644);
    }
}
