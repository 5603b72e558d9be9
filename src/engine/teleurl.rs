// SPDX-License-Identifier: Apache-2.0
//! Where a cell answers telepath: a service directory on this host (its unix
//! socket `DIR/sock`, Synapse's `cell:///DIR`) or a `tcp://` / `ssl://` URL as
//! Synapse writes them (`synapse/lib/urlhelp.py` `chopurl`, the same on 2.256 and
//! 3.7.0): `SCHEME://[USER[:PASSWD]@]HOST[:PORT][/SHARE][?KEY=VALUE&...]`, the port
//! 27492 when left out, user and password percent-decoded, the query keys
//! `certdir`, `certname`, `hostname`, `certhash` (and 3.x's `certhost`) as
//! `telepath.openinfo` reads them. A URL is only ever shown masked (`user:****@`, Synapse's `sanitizeUrl`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The telepath port Synapse uses when a URL names none.
pub(crate) const DEFAULT_PORT: u16 = 27492;

/// A `tcp://` or `ssl://` telepath URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TeleUrl {
    /// Whether the link is TLS (`ssl://`).
    pub(crate) tls: bool,
    pub(crate) user: Option<String>,
    pub(crate) passwd: Option<String>,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The share (`/NAME`), empty for the cell itself.
    pub(crate) share: String,
    /// The query parameters (`certname`, `hostname`, `certdir`, `certhash`).
    pub(crate) query: BTreeMap<String, String>,
}

impl std::fmt::Debug for TeleUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TeleUrl({self})")
    }
}

/// The URL with its password masked (never the password itself).
impl std::fmt::Display for TeleUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://", if self.tls { "ssl" } else { "tcp" })?;
        if let Some(u) = &self.user {
            write!(f, "{u}")?;
            if self.passwd.is_some() {
                write!(f, ":****")?;
            }
            write!(f, "@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if !self.share.is_empty() {
            write!(f, "/{}", self.share)?;
        }
        let mut sep = '?';
        for (k, v) in &self.query {
            write!(f, "{sep}{k}={v}")?;
            sep = '&';
        }
        Ok(())
    }
}

fn unquote(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad %-escape in the user or password")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a user or password that is not UTF-8".to_string())
}

impl TeleUrl {
    /// Parse `text` as Synapse's `chopurl` does; the error says what is wrong
    /// (never repeating the password).
    pub(crate) fn parse(text: &str) -> Result<TeleUrl, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("a telepath URL (tcp://HOST:PORT or ssl://HOST:PORT)")?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => false,
            "ssl" => true,
            other => {
                return Err(format!(
                    "a tcp:// or ssl:// URL or a service directory, not {other}://"
                ))
            }
        };
        let (rest, query_text) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let mut query = BTreeMap::new();
        for kv in query_text.into_iter().flat_map(|q| q.split('&')) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "certdir" | "certname" | "hostname" | "certhash" | "certhost" => {
                    query.insert(k.to_string(), v.to_string());
                }
                "" => {}
                other => {
                    return Err(format!(
                        "known query keys (certdir, certname, hostname, certhash, certhost), not {other}"
                    ))
                }
            }
        }
        let (netloc, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match netloc.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, netloc),
        };
        let (user, passwd) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(unquote(u)?), Some(unquote(p)?)),
                None => (Some(unquote(u)?), None),
            },
        };
        let bad_port = || "a port from 1 to 65535".to_string();
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once("]:").ok_or("[IPV6]:PORT")?;
            (h.to_string(), p.parse::<u16>().map_err(|_| bad_port())?)
        } else if hostport.matches(':').count() > 1 {
            (hostport.to_string(), DEFAULT_PORT)
        } else if let Some((h, p)) = hostport.split_once(':') {
            (h.to_string(), p.parse::<u16>().map_err(|_| bad_port())?)
        } else {
            (hostport.to_string(), DEFAULT_PORT)
        };
        if host.is_empty() {
            return Err("a URL with a host (tcp://HOST:PORT)".into());
        }
        if port == 0 {
            return Err(bad_port());
        }
        Ok(TeleUrl {
            tls,
            user,
            passwd,
            host,
            port,
            share: path.trim_start_matches('/').to_string(),
            query,
        })
    }

    /// The name TLS checks the service's certificate against (`hostname=`, else
    /// the host), as `openinfo` does.
    pub(crate) fn tls_hostname(&self) -> &str {
        self.query
            .get("hostname")
            .map(String::as_str)
            .unwrap_or(&self.host)
    }
}

/// `text` with the password of every `SCHEME://USER:PASSWD@` in it masked (for a
/// value that is not a valid URL, repeated in an error).
pub(crate) fn mask_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace())
            .unwrap_or(tail.len());
        let netloc = &tail[..end];
        match netloc.rfind('@') {
            Some(at) => {
                let userinfo = &netloc[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:****{}", &netloc[at..])),
                    None => out.push_str(netloc),
                }
            }
            None => out.push_str(netloc),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A cell named in a config: a service directory here, or a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A service directory on this host (`DIR/sock`).
    Dir(PathBuf),
    /// A `tcp://` or `ssl://` URL.
    Url(TeleUrl),
}

impl Endpoint {
    /// An absolute directory, `cell:///DIR`, or a `tcp://`/`ssl://` URL.
    pub(crate) fn parse(text: &str) -> Result<Endpoint, String> {
        if text.starts_with('/') {
            return Ok(Endpoint::Dir(PathBuf::from(text)));
        }
        if let Some(p) = text.strip_prefix("cell://") {
            let p = p.split_once(':').map(|(p, _)| p).unwrap_or(p);
            if p.starts_with('/') {
                return Ok(Endpoint::Dir(PathBuf::from(p)));
            }
            return Err("an absolute service directory (cell:///DIR)".into());
        }
        TeleUrl::parse(text).map(Endpoint::Url)
    }

    /// The service directory, when it is one on this host.
    pub(crate) fn dir(&self) -> Option<&Path> {
        match self {
            Endpoint::Dir(d) => Some(d),
            Endpoint::Url(_) => None,
        }
    }

    /// The URL, when it is one.
    pub(crate) fn url(&self) -> Option<&TeleUrl> {
        match self {
            Endpoint::Url(u) => Some(u),
            Endpoint::Dir(_) => None,
        }
    }
}

/// A directory as its path, a URL masked.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Dir(d) => write!(f, "{}", d.display()),
            Endpoint::Url(u) => write!(f, "{u}"),
        }
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_synapse_chops_them_and_shown_masked() {
        let u = TeleUrl::parse("tcp://root:s3%40cr:et@127.0.0.1:4444/").unwrap();
        assert!(!u.tls);
        assert_eq!(u.user.as_deref(), Some("root"));
        assert_eq!(u.passwd.as_deref(), Some("s3@cr:et"));
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 4444));
        assert_eq!(u.to_string(), "tcp://root:****@127.0.0.1:4444");
        assert!(!format!("{u:?}").contains("s3"));

        let u =
            TeleUrl::parse("ssl://backup@core00.example?certname=backup@example&hostname=core00")
                .unwrap();
        assert!(u.tls);
        assert_eq!(u.port, DEFAULT_PORT);
        assert_eq!(u.passwd, None);
        assert_eq!(u.tls_hostname(), "core00");
        assert_eq!(
            u.to_string(),
            "ssl://backup@core00.example:27492?certname=backup@example&hostname=core00"
        );
        let u = TeleUrl::parse("tcp://[::1]:9/cortex").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.share.as_str()),
            ("::1", 9, "cortex")
        );
        assert_eq!(u.to_string(), "tcp://[::1]:9/cortex");

        for (bad, why) in [
            ("http://h:1", "not http://"),
            ("tcp://h:x", "a port"),
            ("tcp://:1", "with a host"),
            ("tcp://u:secret@h:1?ca=x", "not ca"),
            ("relative/dir", "a telepath URL"),
        ] {
            let e = Endpoint::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn passwords_in_any_text_are_masked() {
        assert_eq!(
            mask_text("tcp://root:p@ss@h:x/ ssl://u@h cell:///d tcp://a:b@c"),
            "tcp://root:****@h:x/ ssl://u@h cell:///d tcp://a:****@c"
        );
        assert_eq!(mask_text("/srv/plain"), "/srv/plain");
    }

    #[test]
    fn endpoints_are_directories_or_urls() {
        assert_eq!(
            Endpoint::parse("/srv/c0").unwrap(),
            Endpoint::Dir("/srv/c0".into())
        );
        assert_eq!(
            Endpoint::parse("cell:///srv/c0").unwrap().dir(),
            Some(Path::new("/srv/c0"))
        );
        let e = Endpoint::parse("tcp://u:p@h:1").unwrap();
        assert_eq!(e.to_string(), "tcp://u:****@h:1");
        assert!(e.dir().is_none());
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"tcp://u:****@h:1\"");
    }
}
