// SPDX-License-Identifier: Apache-2.0
//! The telepath listener a cell's config asks for, and the names it will be reached
//! by: `dmon:listen` from `DIR/cell.yaml` (then `DIR/cell.mods.yaml`, which the cell
//! writes its own changes to and which wins), or, without it, the
//! `ssl://0.0.0.0:0?hostname=AHA:NAME.AHA:NETWORK&ca=AHA:NETWORK` listener Synapse
//! derives from `aha:name` and `aha:network`. The daemon looks its certificate up
//! as `hosts/HOSTNAME.crt` (the `hostname=` query, comma-separated for SNI, else the
//! URL's host) and client CAs as `cas/CA.crt` (the `ca=` query).
//!
//! Only top-level scalar keys are read (all Synapse writes there), so a small line
//! reader does instead of a YAML library. Settings given as `SYN_*` environment
//! variables of the unit are not seen.

use std::path::Path;

use anyhow::{Context, Result};

/// An `ssl://` listener from the cell's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    /// The URL as configured.
    pub(crate) url: String,
    /// Where the setting came from (`DIR/cell.yaml`, ...).
    pub(crate) origin: String,
    /// The names the host certificates are looked up by.
    pub(crate) hostnames: Vec<String>,
    /// The CA client certificates are checked against, when `ca=` is given.
    pub(crate) ca: Option<String>,
}

/// The cell's `ssl://` listener, if it has one (`tcp://`, `unix://` need no certificate).
pub(crate) fn find_ssl_listener(service_dir: &Path) -> Result<Option<Listener>> {
    let mut values: Vec<(String, String, String)> = Vec::new();
    for file in ["cell.yaml", "cell.mods.yaml"] {
        let path = service_dir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        for key in ["dmon:listen", "aha:name", "aha:network"] {
            if let Some(v) = read_top_scalar(&text, key) {
                values.retain(|(k, _, _)| k != key);
                values.push((key.to_string(), v, path.display().to_string()));
            }
        }
    }
    let get = |k: &str| values.iter().find(|(key, _, _)| key == k);
    let (url, origin) = match (get("dmon:listen"), get("aha:name"), get("aha:network")) {
        (Some((_, url, origin)), _, _) => (url.clone(), origin.clone()),
        (None, Some((_, name, origin)), Some((_, netw, _))) => (
            format!("ssl://0.0.0.0:0?hostname={name}.{netw}&ca={netw}"),
            format!("{origin} (aha:name, aha:network)"),
        ),
        _ => return Ok(None),
    };
    Ok(parse_ssl_url(&url).map(|(hostnames, ca)| Listener {
        url,
        origin,
        hostnames,
        ca,
    }))
}

/// `ssl://HOST:PORT?hostname=A,B&ca=C` -> (the names, the CA); `None` for other schemes.
pub(crate) fn parse_ssl_url(url: &str) -> Option<(Vec<String>, Option<String>)> {
    let rest = url.strip_prefix("ssl://")?;
    let (netloc, query) = rest.split_once('?').unwrap_or((rest, ""));
    let netloc = netloc.split('/').next().unwrap_or("");
    let netloc = netloc.rsplit_once('@').map_or(netloc, |(_, h)| h);
    let host = match netloc.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or("").to_string(),
        None => netloc.split(':').next().unwrap_or("").to_string(),
    };
    let (mut hostname, mut ca) = (None, None);
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("hostname", v)) => hostname = Some(v.to_string()),
            Some(("ca", v)) => ca = Some(v.to_string()),
            _ => {}
        }
    }
    let names = hostname
        .unwrap_or(host)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Some((names, ca))
}

/// The value of a top-level `key: value` line (quotes removed, a trailing ` #`
/// comment dropped).
pub(crate) fn read_top_scalar(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(key) else {
            continue;
        };
        let Some(value) = rest.strip_prefix(':') else {
            continue;
        };
        let value = value.split(" #").next().unwrap_or("").trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
            .unwrap_or(value);
        if !value.is_empty() {
            found = Some(value.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_urls() {
        assert_eq!(
            parse_ssl_url("ssl://0.0.0.0:27492?hostname=cortex.local&ca=testca"),
            Some((vec!["cortex.local".into()], Some("testca".into())))
        );
        assert_eq!(
            parse_ssl_url("ssl://cortex.local:27492"),
            Some((vec!["cortex.local".into()], None))
        );
        assert_eq!(
            parse_ssl_url("ssl://0.0.0.0:1?hostname=a.x,b.x").map(|p| p.0),
            Some(vec!["a.x".into(), "b.x".into()])
        );
        assert_eq!(parse_ssl_url("tcp://0.0.0.0:27492"), None);
    }

    #[test]
    fn top_level_scalars() {
        let y = "nexslog:en: true\ndmon:listen: 'ssl://0.0.0.0:1?hostname=h'  # telepath\n  dmon:listen: nested\n";
        assert_eq!(
            read_top_scalar(y, "dmon:listen").as_deref(),
            Some("ssl://0.0.0.0:1?hostname=h")
        );
        assert_eq!(read_top_scalar(y, "aha:name"), None);
    }
}
