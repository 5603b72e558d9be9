// SPDX-License-Identifier: Apache-2.0
//! A minimal telepath client for a Synapse service's unix socket (`DIR/sock`).
//!
//! Telepath is a stream of msgpack values, each `[type, info]`. A client that can open
//! the socket (the service's user or root) is the service's root user, so no
//! credentials are sent. We need a few calls: `freeze`, `resume`, `getCellInfo`
//! (whether the cell is `paused`, its iden and version), `getHealthCheck`,
//! `callStorm`, and `getReloadableSystems` / `reload` (new TLS certificates),
//! nothing with generators, so this is a plain request/answer loop.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rmpv::Value;

use crate::engine::cellstate::CellState;

/// A connected, greeted session with a service.
pub(crate) struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    sess: Value,
}

/// An error the service returned: its exception class and message.
#[derive(Debug)]
pub(crate) struct RemoteError {
    pub(crate) class: String,
    pub(crate) mesg: String,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.mesg)
    }
}

impl std::error::Error for RemoteError {}

/// True when the chain holds the service's `BadState` (e.g. "The service is not
/// frozen." from `resume`).
pub(crate) fn is_bad_state(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<RemoteError>()
            .is_some_and(|r| r.class == "BadState")
    })
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// The value under `key` in a msgpack map.
pub(crate) fn get<'a>(info: &'a Value, key: &str) -> Option<&'a Value> {
    info.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Turn a telepath `retn` (`[true, value]` or `[false, [class, info]]`) into a Result.
pub(crate) fn parse_retn(retn: &Value) -> Result<Value> {
    let arr = retn
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| anyhow!("malformed telepath answer: {retn}"))?;
    if arr[0].as_bool() == Some(true) {
        return Ok(arr[1].clone());
    }
    let (class, mesg) = match arr[1].as_array() {
        Some(exc) if !exc.is_empty() => {
            let class = exc[0].as_str().unwrap_or("Error").to_string();
            let mesg = exc
                .get(1)
                .and_then(|info| get(info, "mesg"))
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string();
            (class, mesg)
        }
        _ => ("Error".to_string(), arr[1].to_string()),
    };
    Err(anyhow::Error::new(RemoteError { class, mesg }))
}

impl Client {
    /// Connect to `sock` and greet the service. `timeout` bounds every read/write.
    pub(crate) fn connect(sock: &Path, timeout: Duration) -> Result<Client> {
        let stream = UnixStream::connect(sock)
            .with_context(|| format!("cannot connect to {}", sock.display()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut client = Client {
            path: sock.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            sess: Value::Nil,
        };
        client.send(&Value::Array(vec![
            "tele:syn".into(),
            map(vec![
                ("auth", Value::Nil),
                ("vers", Value::Array(vec![3.into(), 0.into()])),
                ("name", Value::Nil),
            ]),
        ]))?;
        let reply = client.expect("tele:syn")?;
        if let Some(retn) = get(&reply, "retn") {
            parse_retn(retn).with_context(|| format!("{} refused the session", sock.display()))?;
        }
        client.sess = get(&reply, "sess").cloned().unwrap_or(Value::Nil);
        Ok(client)
    }

    /// Change the timeout for the next calls (a freeze may take its whole timeout).
    pub(crate) fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    fn send(&mut self, mesg: &Value) -> Result<()> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, mesg)?;
        self.writer
            .write_all(&buf)
            .with_context(|| format!("cannot write to {}", self.path.display()))
    }

    /// Read messages until one of type `want` arrives; return its info map.
    fn expect(&mut self, want: &str) -> Result<Value> {
        loop {
            let mesg = rmpv::decode::read_value(&mut self.reader)
                .with_context(|| format!("no answer from {}", self.path.display()))?;
            let arr = mesg.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                anyhow!("malformed telepath message from {}", self.path.display())
            })?;
            if arr[0].as_str() == Some(want) {
                return Ok(arr[1].clone());
            }
            log::trace!("telepath: ignoring {} message", arr[0]);
        }
    }

    /// Call `name(*args, **kwargs)` on the service's default share.
    pub(crate) fn call(
        &mut self,
        name: &str,
        args: Vec<Value>,
        kwargs: Vec<(&str, Value)>,
    ) -> Result<Value> {
        let todo = Value::Array(vec![name.into(), Value::Array(args), map(kwargs)]);
        let mesg = Value::Array(vec![
            "t2:init".into(),
            map(vec![
                ("todo", todo),
                ("name", Value::Nil),
                ("sess", self.sess.clone()),
            ]),
        ]);
        self.send(&mesg)?;
        let fini = self.expect("t2:fini")?;
        let retn = get(&fini, "retn").ok_or_else(|| anyhow!("t2:fini without retn"))?;
        parse_retn(retn).with_context(|| format!("{name}() on {} failed", self.path.display()))
    }

    /// Freeze: the service takes its nexus lock (no edits; `timeout_secs` bounds
    /// the wait for it) and flushes to disk. The read timeout set before bounds the
    /// whole call.
    pub(crate) fn freeze(&mut self, timeout_secs: u64) -> Result<()> {
        self.call(
            "freeze",
            vec![],
            vec![("timeout", Value::from(timeout_secs))],
        )?;
        Ok(())
    }

    /// Resume a frozen service.
    pub(crate) fn resume(&mut self) -> Result<()> {
        self.call("resume", vec![], vec![])?;
        Ok(())
    }

    /// Whether the cell is frozen now (`getCellInfo()['cell']['paused']`).
    pub(crate) fn paused(&mut self) -> Result<bool> {
        let info = self.cell_info()?;
        get(&info, "cell")
            .and_then(|c| get(c, "paused"))
            .and_then(Value::as_bool)
            .ok_or_else(|| anyhow!("getCellInfo answer without cell.paused"))
    }

    /// `getCellInfo()` as [`CellState`]: iden, boot, freeze, role, nexus index.
    pub(crate) fn cell_state(&mut self) -> Result<CellState> {
        CellState::from_info(&self.cell_info()?)
    }

    /// `getCellInfo()`: `cell` (type, iden, ...) and `synapse` (version) sections.
    pub(crate) fn cell_info(&mut self) -> Result<Value> {
        self.call("getCellInfo", vec![], vec![])
    }

    /// `callStorm(text, opts=opts)` on a Cortex: the value the query returns.
    /// `opts` depend on the Synapse line (`engine::synapse::storm_opts`).
    pub(crate) fn call_storm(&mut self, text: &str, opts: Value) -> Result<Value> {
        self.call("callStorm", vec![text.into()], vec![("opts", opts)])
    }

    /// `getReloadableSystems()`: the names `reload` takes (`https:certs`, ...).
    pub(crate) fn reloadable_systems(&mut self) -> Result<Vec<String>> {
        let v = self.call("getReloadableSystems", vec![], vec![])?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `reload(subsystem)`: the cell runs that reload function. The cell catches
    /// the function's exception and answers `{subsystem: [false, [class, info]]}`,
    /// so that answer is turned into an error here.
    pub(crate) fn reload(&mut self, subsystem: &str) -> Result<()> {
        let answer = self.call("reload", vec![], vec![("subsystem", subsystem.into())])?;
        let retn = get(&answer, subsystem)
            .ok_or_else(|| anyhow!("reload({subsystem}) answered without a result: {answer}"))?;
        parse_retn(retn).with_context(|| {
            format!(
                "the cell on {} failed to reload {subsystem}",
                self.path.display()
            )
        })?;
        Ok(())
    }

    /// The health status word (`nominal`, `degraded`, `failed`).
    pub(crate) fn health_status(&mut self) -> Result<String> {
        let health = self.call("getHealthCheck", vec![], vec![])?;
        match get(&health, "status").and_then(|s| s.as_str()) {
            Some(s) => Ok(s.to_string()),
            None => bail!("getHealthCheck answer without status"),
        }
    }
}

/// What a connection attempt to a service's socket found.
#[derive(Debug)]
pub(crate) enum Probe {
    /// Something accepts connections on it.
    Answers,
    /// No socket: no service runs on this directory.
    NoService,
    /// A socket that could not be connected to (permission, refused, ...): why.
    Unreachable(String),
}

/// True when something accepts connections on `sock`.
pub(crate) fn answers(sock: &Path) -> bool {
    matches!(probe(sock), Probe::Answers)
}

/// Try to connect to `sock` once.
pub(crate) fn probe(sock: &Path) -> Probe {
    match UnixStream::connect(sock) {
        Ok(_) => Probe::Answers,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::NoService,
        Err(e) => Probe::Unreachable(format!("cannot connect to {}: {e}", sock.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retn_ok_and_error() {
        let ok = Value::Array(vec![true.into(), 5.into()]);
        assert_eq!(parse_retn(&ok).unwrap(), Value::from(5));
        let err = Value::Array(vec![
            false.into(),
            Value::Array(vec![
                "BadState".into(),
                map(vec![("mesg", "already frozen".into())]),
            ]),
        ]);
        let e = parse_retn(&err).unwrap_err();
        let remote = e.downcast_ref::<RemoteError>().unwrap();
        assert_eq!(remote.class, "BadState");
        assert_eq!(remote.mesg, "already frozen");
        assert!(parse_retn(&Value::from(1)).is_err());
    }
}
