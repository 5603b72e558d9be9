// SPDX-License-Identifier: Apache-2.0
//! Which certificates and keys a service uses: its HTTPS pair (`DIR/sslcert.pem`,
//! `DIR/sslkey.pem`) and, in every certificate directory (the user's `~/.syn/certs`
//! or `$SYN_CERT_DIR`, and `DIR/certs/`), the layout Synapse's `CertDir` reads:
//! `cas/NAME.crt` (+ `.key`), `hosts/NAME.crt` + `.key`, `users/NAME.crt` + `.key`
//! and `crls/NAME.crl`. Also whether a private key is open to other users.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// `cas/NAME.crt`: a CA the service trusts.
    Ca,
    /// `hosts/NAME.crt`: a telepath `ssl://` listener's certificate.
    Host,
    /// `users/NAME.crt`: a client certificate.
    User,
    /// `DIR/sslcert.pem`: the HTTPS server's certificate.
    Https,
}

/// A certificate file and the private key that belongs to it (if present).
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) role: Role,
    pub(crate) cert: PathBuf,
    pub(crate) key: Option<PathBuf>,
}

/// Everything found, in a stable order.
#[derive(Debug, Default)]
pub(crate) struct Material {
    pub(crate) pairs: Vec<Pair>,
    /// CRLs from every `crls/`.
    pub(crate) crls: Vec<PathBuf>,
}

/// Find the material of the service at `service_dir` in `cert_dirs` (missing
/// directories are skipped: a service without `ssl://` listeners has none).
pub(crate) fn discover_material(service_dir: &Path, cert_dirs: &[PathBuf]) -> Result<Material> {
    let mut m = Material::default();
    let https = service_dir.join("sslcert.pem");
    if https.exists() {
        let key = service_dir.join("sslkey.pem");
        m.pairs.push(Pair {
            role: Role::Https,
            cert: https,
            key: key.exists().then_some(key),
        });
    }
    for dir in cert_dirs {
        for (sub, role) in [
            ("cas", Role::Ca),
            ("hosts", Role::Host),
            ("users", Role::User),
        ] {
            for cert in files_with_extension(&dir.join(sub), "crt")? {
                let key = cert.with_extension("key");
                m.pairs.push(Pair {
                    role,
                    cert,
                    key: key.exists().then_some(key),
                });
            }
        }
        m.crls
            .extend(files_with_extension(&dir.join("crls"), "crl")?);
    }
    Ok(m)
}

/// A private key kept aside when it was replaced: `DIR/sslkey.pem.old` (by
/// `certs deploy`) or `NAME.key.synbackup-old-STAMP` in a certificate directory
/// (by `restore --certs`), with the certificate it belonged to when that is there
/// too (kept beside it with the same suffix, else the one in place).
#[derive(Debug, Clone)]
pub(crate) struct KeptKey {
    pub(crate) key: PathBuf,
    /// The kept certificate first, then the one in place.
    pub(crate) certs: Vec<PathBuf>,
}

/// The kept-aside keys of the service at `service_dir` and in `cert_dirs`.
pub(crate) fn discover_kept_keys(
    service_dir: &Path,
    cert_dirs: &[PathBuf],
) -> Result<Vec<KeptKey>> {
    let mut out = Vec::new();
    let old = service_dir.join(format!("sslkey.pem{}", super::pair::OLD_SUFFIX));
    if old.is_file() {
        out.push(KeptKey {
            key: old,
            certs: vec![
                service_dir.join(format!("sslcert.pem{}", super::pair::OLD_SUFFIX)),
                service_dir.join("sslcert.pem"),
            ],
        });
    }
    for dir in cert_dirs {
        for sub in ["cas", "hosts", "users"] {
            let d = dir.join(sub);
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
            };
            let mut found = Vec::new();
            for e in entries {
                let p = e
                    .with_context(|| format!("cannot read {}", d.display()))?
                    .path();
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let Some((stem, suffix)) = name.split_once(".key.synbackup-old-") else {
                    continue;
                };
                if p.is_file() {
                    found.push(KeptKey {
                        certs: vec![
                            d.join(format!("{stem}.crt.synbackup-old-{suffix}")),
                            d.join(format!("{stem}.crt")),
                        ],
                        key: p,
                    });
                }
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(found);
        }
    }
    Ok(out)
}

/// The files `dir/*.EXT`, sorted; none when `dir` does not exist.
pub(crate) fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if p.extension().is_some_and(|x| x == ext) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Who besides the owner can read the private key at `path`: "others" or "group"
/// when its mode allows it *and* every directory above it lets them through (easycert
/// writes keys 0644 inside a 0700 directory: not open). `None` when only the owner can.
pub(crate) fn key_exposure(path: &Path) -> Result<Option<(&'static str, u32)>> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .permissions()
        .mode();
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let (mut others_pass, mut group_pass) = (true, true);
    for dir in abs.ancestors().skip(1) {
        let m = std::fs::metadata(dir)
            .with_context(|| format!("cannot stat {}", dir.display()))?
            .permissions()
            .mode();
        others_pass &= m & 0o001 != 0;
        group_pass &= m & 0o011 != 0;
    }
    Ok(if mode & 0o004 != 0 && others_pass {
        Some(("others", mode & 0o7777))
    } else if mode & 0o040 != 0 && group_pass {
        Some(("group", mode & 0o7777))
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_key_in_a_closed_directory_is_not_exposed() {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = t.path().join("hosts");
        fs::create_dir(&d).unwrap();
        let k = d.join("h.key");
        fs::write(&k, "k").unwrap();
        fs::set_permissions(&k, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(key_exposure(&k).unwrap(), None);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(key_exposure(&k).unwrap(), Some(("others", 0o644)));
        fs::set_permissions(&k, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(key_exposure(&k).unwrap(), Some(("group", 0o640)));
        fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(key_exposure(&k).unwrap(), None);
    }
}
