// SPDX-License-Identifier: Apache-2.0
//! The byte stream under a telepath session: a service's unix socket, or a TCP
//! connection (plain for `tcp://`, TLS for `ssl://`). TLS is set up as Synapse's
//! `telepath.openinfo` and `CertDir.getClientSSLContext` do (2.256 and 3.7.0):
//! TLS 1.2 or later; the system's CAs and every `cas/*.crt` of the certificate
//! directory (`?certdir=`, else `$SYN_CERT_DIR`, else `~/.syn/certs`) are trusted;
//! a user certificate `users/NAME.crt` + `users/NAME.key` is presented when the
//! URL says `?certname=NAME`, or when it has a user and no password
//! (`USER@HOST`, then `USER@` each parent domain of HOST: `getUserForHost`). The
//! service's certificate is then checked by hand as Synapse does: its SHA-256
//! fingerprint against `?certhash=` (then no CA check), else its common name
//! against `?hostname=` or the host.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use openssl::nid::Nid;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion};

use crate::engine::teleurl::TeleUrl;

/// A connected stream.
pub(crate) enum Link {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Link {
    /// Connect to a unix socket.
    pub(crate) fn unix(sock: &Path) -> Result<Link> {
        let s = UnixStream::connect(sock)
            .with_context(|| format!("cannot connect to {}", sock.display()))?;
        Ok(Link::Unix(s))
    }

    /// Connect to the host and port of `url` (TLS for `ssl://`), each step
    /// bounded by `timeout`.
    pub(crate) fn url(url: &TeleUrl, timeout: Duration) -> Result<Link> {
        let addrs: Vec<_> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", url.host))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e).context(format!("cannot connect to {url}")),
            (None, None) => bail!("{} resolves to no address", url.host),
        };
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        tcp.set_nodelay(true)?;
        if !url.tls {
            return Ok(Link::Tcp(tcp));
        }
        let tls = tls_connect(url, tcp).with_context(|| format!("TLS with {url} failed"))?;
        Ok(Link::Tls(Box::new(tls)))
    }

    fn socket_fd(&self) -> BorrowedFd<'_> {
        match self {
            Link::Unix(s) => s.as_fd(),
            Link::Tcp(s) => s.as_fd(),
            Link::Tls(s) => s.get_ref().as_fd(),
        }
    }

    /// The file descriptor to poll for input.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.socket_fd()
    }

    /// Bytes already decrypted and waiting (TLS), which a poll would not see.
    pub(crate) fn pending(&self) -> bool {
        match self {
            Link::Tls(s) => s.ssl().pending() > 0,
            _ => false,
        }
    }

    /// Bound every read and write by `timeout`.
    pub(crate) fn set_timeout(&self, timeout: Duration) -> Result<()> {
        match self {
            Link::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
            Link::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
            Link::Tls(s) => {
                s.get_ref().set_read_timeout(Some(timeout))?;
                s.get_ref().set_write_timeout(Some(timeout))?;
            }
        }
        Ok(())
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Unix(s) => s.read(buf),
            Link::Tcp(s) => s.read(buf),
            Link::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Unix(s) => s.write(buf),
            Link::Tcp(s) => s.write(buf),
            Link::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Unix(s) => s.flush(),
            Link::Tcp(s) => s.flush(),
            Link::Tls(s) => s.flush(),
        }
    }
}

/// The certificate directory a URL uses: `?certdir=`, `$SYN_CERT_DIR`, or
/// `~/.syn/certs` (Synapse's `certdir.defdir`).
fn certdir_of(url: &TeleUrl) -> PathBuf {
    if let Some(d) = url.query.get("certdir") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("SYN_CERT_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".syn/certs")
}

/// The name of the first `users/USER@DOMAIN.crt` for `certname` (`USER@HOST`:
/// the host, then each parent domain: Synapse's `getUserForHost`), or of
/// `users/NAME.crt` for a name without `@`.
fn find_user_cert(users: &Path, certname: &str) -> Option<String> {
    let exists = |n: &String| users.join(format!("{n}.crt")).is_file();
    match certname.split_once('@') {
        Some((user, host)) => {
            let levels: Vec<&str> = host.split('.').collect();
            (0..levels.len())
                .map(|i| format!("{user}@{}", levels[i..].join(".")))
                .find(exists)
        }
        None => Some(certname.to_string()).filter(exists),
    }
}

/// The user certificate to present, as `openinfo` picks it: `certname`, else
/// `USER@HOSTNAME` when the URL has a user and no password (3.x: else
/// `USER@CERTHOST` when `?certhost=` is given and no certificate matches the
/// hostname); resolved as [`find_user_cert`] does.
fn user_cert(url: &TeleUrl, certdir: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let users = certdir.join("users");
    let certname = match (&url.query.get("certname"), &url.user, &url.passwd) {
        (Some(n), _, _) => n.to_string(),
        (None, Some(u), None) => {
            let by_host = format!("{u}@{}", url.tls_hostname());
            match url.query.get("certhost") {
                Some(h) if find_user_cert(&users, &by_host).is_none() => format!("{u}@{h}"),
                _ => by_host,
            }
        }
        _ => return Ok(None),
    };
    let name = find_user_cert(&users, &certname).ok_or_else(|| {
        anyhow!(
            "user certificate {certname} not found in {}",
            users.display()
        )
    })?;
    let key = users.join(format!("{name}.key"));
    if !key.is_file() {
        bail!("user private key {} not found", key.display());
    }
    Ok(Some((users.join(format!("{name}.crt")), key)))
}

/// TLS over `tcp` as Synapse's client makes it, then the service's certificate
/// checked by hand (fingerprint, else common name).
fn tls_connect(url: &TeleUrl, tcp: TcpStream) -> Result<SslStream<TcpStream>> {
    let certdir = certdir_of(url);
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    let pinned = url.query.get("certhash").map(|h| h.to_ascii_lowercase());
    if pinned.is_some() {
        b.set_verify(SslVerifyMode::NONE);
    } else {
        let cas = certdir.join("cas");
        if let Ok(rd) = std::fs::read_dir(&cas) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    b.load_verify_locations(Some(&p), None).with_context(|| {
                        format!("cannot load the CA certificate {}", p.display())
                    })?;
                }
            }
        }
    }
    if let Some((crt, key)) = user_cert(url, &certdir)? {
        b.set_certificate_file(&crt, SslFiletype::PEM)
            .with_context(|| format!("cannot load {}", crt.display()))?;
        b.set_private_key_file(&key, SslFiletype::PEM)
            .with_context(|| format!("cannot load {}", key.display()))?;
    }
    let mut cfg = b.build().configure()?;
    cfg.set_verify_hostname(false);
    let hostname = url.tls_hostname().to_string();
    let stream = cfg
        .connect(&hostname, tcp)
        .map_err(|e| anyhow!("handshake: {e}"))?;
    let cert = stream
        .ssl()
        .peer_certificate()
        .ok_or_else(|| anyhow!("the service sent no certificate"))?;
    if let Some(want) = pinned {
        let got = crate::base::digest::hex(&openssl::sha::sha256(&cert.to_der()?));
        if got != want {
            bail!("the service's certificate does not match certhash={want} (it is {got})");
        }
        return Ok(stream);
    }
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| String::from_utf8(e.data().as_slice().to_vec()).ok());
    if cn.as_deref() != Some(hostname.as_str()) {
        bail!(
            "the service's certificate is for {}, not {hostname} (set ?hostname= to the name it was issued for)",
            cn.as_deref().unwrap_or("no common name")
        );
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_certificates_are_picked_as_synapse_picks_them() {
        let t = tempfile::tempdir().unwrap();
        let users = t.path().join("users");
        std::fs::create_dir(&users).unwrap();
        for n in ["backup@example.com", "root"] {
            std::fs::write(users.join(format!("{n}.crt")), "").unwrap();
            std::fs::write(users.join(format!("{n}.key")), "").unwrap();
        }
        let pick = |url: &str| {
            let u = TeleUrl::parse(&format!("{url}&certdir={}", t.path().display())).unwrap();
            user_cert(&u, t.path())
                .map(|o| o.map(|(c, _)| c.file_name().unwrap().to_string_lossy().into_owned()))
                .map_err(|e| format!("{e:#}"))
        };
        // USER@HOST, then its parent domains.
        assert_eq!(
            pick("ssl://backup@core00.example.com:1?hostname=core00.example.com"),
            Ok(Some("backup@example.com.crt".into()))
        );
        assert_eq!(pick("ssl://h:1?certname=root"), Ok(Some("root.crt".into())));
        // A password: no certificate; 3.x's certhost= as the fallback.
        assert_eq!(pick("ssl://backup:pw@h:1?hostname=h"), Ok(None));
        assert_eq!(
            pick("ssl://backup@core00.other:1?certhost=example.com"),
            Ok(Some("backup@example.com.crt".into()))
        );
        let e = pick("ssl://backup@core00.other:1?hostname=core00.other").unwrap_err();
        assert!(
            e.contains("user certificate backup@core00.other not found"),
            "{e}"
        );
    }
}
