// SPDX-License-Identifier: Apache-2.0
//! A minimal telepath client for a Synapse service's unix socket (`DIR/sock`) or a
//! `tcp://` / `ssl://` URL (`engine::teleurl`, the link in `engine::telelink`).
//!
//! Telepath is a stream of msgpack values, each `[type, info]`. A client that can open
//! the socket (the service's user or root) is the service's root user, so no
//! credentials are sent there; over TCP the greeting carries the URL's user and
//! password as Synapse's `Proxy.handshake` does (`auth: [user, {passwd}]`, 2.256
//! and 3.7.0), or TLS presents a user certificate. We need a few calls: `freeze`, `resume`, `getCellInfo`
//! (whether the cell is `paused`, its iden and version), `getHealthCheck`,
//! `callStorm`, and `getReloadableSystems` / `reload` (new TLS certificates):
//! a plain request/answer loop (`t2:init`, then `t2:fini`). One streaming call,
//! `getNexusChanges` (the nexus archiver, `pitr`), answers `t2:genr` and then a
//! `t2:yield` per item until `t2:yield {retn: nil}`; [`Stream`] reads those and
//! keeps each item's bytes exactly as the service encoded them.

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rmpv::Value;

use crate::engine::cellstate::CellState;
use crate::engine::telelink::Link;
use crate::engine::teleurl::{Endpoint, TeleUrl};

/// A connected, greeted session with a service.
pub(crate) struct Client {
    /// What errors name: the socket's path, or the URL masked.
    path: String,
    /// The link; writes go to the inner stream (whole messages, never
    /// interleaved with a read).
    reader: BufReader<Link>,
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
        let link = Link::unix(sock)?;
        Client::greet(link, &sock.display().to_string(), None, timeout)
    }

    /// Connect to a `tcp://` or `ssl://` URL and greet the service with the URL's
    /// user and password (errors name the URL with the password masked).
    pub(crate) fn connect_url(url: &TeleUrl, timeout: Duration) -> Result<Client> {
        let link = Link::url(url, timeout)?;
        let auth = url.user.as_ref().map(|user| {
            let passwd = url
                .passwd
                .as_ref()
                .map_or(Value::Nil, |p| p.as_str().into());
            Value::Array(vec![user.as_str().into(), map(vec![("passwd", passwd)])])
        });
        let share = Some(url.share.as_str()).filter(|s| !s.is_empty());
        Client::greet_as(link, &url.to_string(), auth, share, timeout)
    }

    /// Connect to a service directory's socket or to a URL.
    pub(crate) fn open(at: &Endpoint, timeout: Duration) -> Result<Client> {
        match at {
            Endpoint::Dir(d) => Client::connect(&d.join("sock"), timeout),
            Endpoint::Url(u) => Client::connect_url(u, timeout),
        }
    }

    /// Greet the service on a connected `link` (`name` names it in errors).
    fn greet(link: Link, name: &str, auth: Option<Value>, timeout: Duration) -> Result<Client> {
        Client::greet_as(link, name, auth, None, timeout)
    }

    fn greet_as(
        link: Link,
        name: &str,
        auth: Option<Value>,
        share: Option<&str>,
        timeout: Duration,
    ) -> Result<Client> {
        link.set_timeout(timeout)?;
        let mut client = Client {
            path: name.to_string(),
            reader: BufReader::new(link),
            sess: Value::Nil,
        };
        client.send(&Value::Array(vec![
            "tele:syn".into(),
            map(vec![
                ("auth", auth.unwrap_or(Value::Nil)),
                ("vers", Value::Array(vec![3.into(), 0.into()])),
                ("name", share.map_or(Value::Nil, Value::from)),
            ]),
        ]))?;
        let reply = client.expect("tele:syn")?;
        if let Some(retn) = get(&reply, "retn") {
            parse_retn(retn).with_context(|| format!("{name} refused the session"))?;
        }
        client.sess = get(&reply, "sess").cloned().unwrap_or(Value::Nil);
        Ok(client)
    }

    /// Change the timeout for the next calls (a freeze may take its whole timeout).
    pub(crate) fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.reader.get_ref().set_timeout(timeout)
    }

    fn send(&mut self, mesg: &Value) -> Result<()> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, mesg)?;
        let link = self.reader.get_mut();
        link.write_all(&buf)
            .and_then(|()| link.flush())
            .with_context(|| format!("cannot write to {}", self.path))
    }

    /// Read one message: its type, its info map and its bytes as received.
    fn read_message(&mut self) -> Result<(String, Value, Vec<u8>)> {
        let mut tee = Tee {
            inner: &mut self.reader,
            seen: Vec::new(),
        };
        let mesg = rmpv::decode::read_value(&mut tee)
            .with_context(|| format!("no answer from {}", self.path))?;
        let raw = tee.seen;
        let arr = mesg
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| anyhow!("malformed telepath message from {}", self.path))?;
        let kind = arr[0].as_str().unwrap_or("").to_string();
        Ok((kind, arr[1].clone(), raw))
    }

    /// Read messages until one of type `want` arrives; return its info map.
    fn expect(&mut self, want: &str) -> Result<Value> {
        loop {
            let (kind, info, _) = self.read_message()?;
            if kind == want {
                return Ok(info);
            }
            log::trace!("telepath: ignoring {kind} message");
        }
    }

    /// Send `t2:init` for `name(*args, **kwargs)` on the default share.
    fn init_task(
        &mut self,
        name: &str,
        args: Vec<Value>,
        kwargs: Vec<(&str, Value)>,
    ) -> Result<()> {
        let todo = Value::Array(vec![name.into(), Value::Array(args), map(kwargs)]);
        let mesg = Value::Array(vec![
            "t2:init".into(),
            map(vec![
                ("todo", todo),
                ("name", Value::Nil),
                ("sess", self.sess.clone()),
            ]),
        ]);
        self.send(&mesg)
    }

    /// Call `name(*args, **kwargs)` on the service's default share.
    pub(crate) fn call(
        &mut self,
        name: &str,
        args: Vec<Value>,
        kwargs: Vec<(&str, Value)>,
    ) -> Result<Value> {
        self.init_task(name, args, kwargs)?;
        let fini = self.expect("t2:fini")?;
        let retn = get(&fini, "retn").ok_or_else(|| anyhow!("t2:fini without retn"))?;
        parse_retn(retn).with_context(|| format!("{name}() on {} failed", self.path))
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
        parse_retn(retn)
            .with_context(|| format!("the cell on {} failed to reload {subsystem}", self.path))?;
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

/// A reader that keeps a copy of every byte read through it.
struct Tee<'r, R> {
    inner: &'r mut R,
    seen: Vec<u8>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// One item a streaming call yielded: its value, and its msgpack bytes exactly as
/// the service sent them (what an archive keeps).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Yielded {
    pub(crate) value: Value,
    pub(crate) raw: Vec<u8>,
}

/// What [`Stream::next_within`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// An item.
    Item(Yielded),
    /// The end marker (`t2:yield {retn: nil}`): the generator finished.
    End,
    /// Nothing arrived within the wait.
    Idle,
}

/// The answer of a streaming call (`t2:genr`, then `t2:yield` messages). The
/// connection serves nothing else until the stream ends.
pub(crate) struct Stream<'c> {
    client: &'c mut Client,
    name: String,
    ended: bool,
}

/// The bytes of the value in a `t2:yield` message `raw` whose retn is `[true,
/// VALUE]`: the service encodes `["t2:yield", {"retn": [true, VALUE]}]` (nexus.py
/// writes this prefix itself for mirrors in the realtime window), so VALUE is the
/// message's tail; the prefix is walked with msgpack's own markers.
fn yielded_bytes(raw: &[u8]) -> Result<&[u8]> {
    use rmp::decode::{read_array_len, read_bool, read_map_len, read_str_len};
    let mut cur = raw;
    let bad = || anyhow!("a t2:yield message of an unexpected shape");
    let skip_str = |cur: &mut &[u8]| -> Result<()> {
        let n = read_str_len(cur).map_err(|_| bad())? as usize;
        *cur = cur.get(n..).ok_or_else(bad)?;
        Ok(())
    };
    (read_array_len(&mut cur).map_err(|_| bad())? == 2)
        .then_some(())
        .ok_or_else(bad)?;
    skip_str(&mut cur)?;
    (read_map_len(&mut cur).map_err(|_| bad())? == 1)
        .then_some(())
        .ok_or_else(bad)?;
    skip_str(&mut cur)?;
    (read_array_len(&mut cur).map_err(|_| bad())? == 2)
        .then_some(())
        .ok_or_else(bad)?;
    read_bool(&mut cur).map_err(|_| bad())?;
    Ok(cur)
}

impl Stream<'_> {
    /// The next item or the end; waits as long as the client's read timeout.
    #[cfg(test)]
    pub(crate) fn next_item(&mut self) -> Result<Option<Yielded>> {
        loop {
            match self.next_within(None)? {
                Next::Item(y) => return Ok(Some(y)),
                Next::End => return Ok(None),
                Next::Idle => continue,
            }
        }
    }

    /// The next item or the end, or [`Next::Idle`] when no message began to arrive
    /// within `wait` (None: the client's read timeout). A message that began is
    /// read whole, bounded by the read timeout.
    pub(crate) fn next_within(&mut self, wait: Option<Duration>) -> Result<Next> {
        if self.ended {
            return Ok(Next::End);
        }
        if let Some(wait) = wait {
            if !self.client.readable_within(wait)? {
                return Ok(Next::Idle);
            }
        }
        let (kind, info, raw) = self.client.read_message()?;
        if kind != "t2:yield" {
            self.ended = true;
            bail!(
                "{}() on {}: telepath protocol violation: {kind} in a stream",
                self.name,
                self.client.path
            );
        }
        let retn = get(&info, "retn").unwrap_or(&Value::Nil);
        if retn.is_nil() {
            self.ended = true;
            return Ok(Next::End);
        }
        let value = parse_retn(retn).map_err(|e| {
            self.ended = true;
            e.context(format!("{}() on {} failed", self.name, self.client.path))
        })?;
        let raw = match yielded_bytes(&raw) {
            Ok(tail) => tail.to_vec(),
            Err(e) => {
                log::debug!("{e}: the item is re-encoded");
                let mut buf = Vec::new();
                rmpv::encode::write_value(&mut buf, &value)?;
                buf
            }
        };
        Ok(Next::Item(Yielded { value, raw }))
    }
}

impl Client {
    /// Call the generator `name(*args, **kwargs)`: the service answers `t2:genr`
    /// (or `t2:fini` with the error it raised before yielding anything).
    pub(crate) fn stream(
        &mut self,
        name: &str,
        args: Vec<Value>,
        kwargs: Vec<(&str, Value)>,
    ) -> Result<Stream<'_>> {
        self.init_task(name, args, kwargs)?;
        let (kind, info, _) = self.read_message()?;
        match kind.as_str() {
            "t2:genr" => Ok(Stream {
                client: self,
                name: name.to_string(),
                ended: false,
            }),
            "t2:fini" => {
                let retn = get(&info, "retn").ok_or_else(|| anyhow!("t2:fini without retn"))?;
                parse_retn(retn).with_context(|| format!("{name}() on {} failed", self.path))?;
                bail!("{name}() on {} answered a value, not a stream", self.path)
            }
            other => bail!(
                "{name}() on {}: telepath protocol violation: {other} instead of t2:genr",
                self.path
            ),
        }
    }

    /// True when a message is buffered or the socket becomes readable within `wait`.
    fn readable_within(&mut self, wait: Duration) -> Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        if !self.reader.buffer().is_empty() || self.reader.get_ref().pending() {
            return Ok(true);
        }
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.reader.get_ref().fd(), PollFlags::POLLIN)];
        let n = match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context(format!("cannot poll {}", self.path)),
        };
        Ok(n > 0)
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
    match std::os::unix::net::UnixStream::connect(sock) {
        Ok(_) => Probe::Answers,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::NoService,
        Err(e) => Probe::Unreachable(format!("cannot connect to {}: {e}", sock.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

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

    /// Messages as Synapse 2.256.0 encodes them (`synapse.lib.msgpack.en`, and
    /// nexus.py's own `YIELD_PREFIX + en(indx) + packitem` for mirrors in the
    /// realtime window), captured with the venv's Python.
    mod captured {
        pub(super) const SYN: &str =
            "92a874656c653a73796e83a476657273920300a47265746e92c3c0a473657373a473657373";
        pub(super) const GENR: &str = "92a774323a67656e7280";
        pub(super) const YIELD_FAST: &str = "92a874323a7969656c6481a47265746e92c392ce0001117095b030633261376465306131653463336232a56564697473929193d94062626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262a9696e65743a6970763491920092ce010203040482a474696d65cf0000019af8289300a475736572a275318081a474696d65cf0000019af828937b";
        pub(super) const YIELD_TX: &str = "92a874323a7969656c6481a47265746e92c3920395b030633261376465306131653463336232a56564697473929193d94062626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262a9696e65743a6970763491920092ce010203040482a474696d65cf0000019af8289300a475736572a275318081a474696d65cf0000019af828937b";
        pub(super) const ITEM: &str = "95b030633261376465306131653463336232a56564697473929193d94062626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262a9696e65743a6970763491920092ce010203040482a474696d65cf0000019af8289300a475736572a275318081a474696d65cf0000019af828937b";
        pub(super) const READY: &str = "92a874323a7969656c6481a47265746e92c3c0";
        pub(super) const END: &str = "92a874323a7969656c6481a47265746ec0";
        pub(super) const ERR: &str = "92a874323a7969656c6481a47265746e92c292a6497346696e6981a46d657367d9304e6578757320686173206265656e2073687574646f776e2c2063616e6e6f742069746572617465206368616e6765732e";
        pub(super) const FINI_ERR: &str = "92a774323a66696e6981a47265746e92c292aa4e6f537563684d65746881a46d657367aa4e6f537563684d657468";
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A client greeted by a peer that then sends `replies` (hex) and keeps the
    /// socket open until the returned end is dropped.
    fn client_with(replies: &[&str]) -> (Client, UnixStream) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&unhex(captured::SYN)).unwrap();
        for r in replies {
            theirs.write_all(&unhex(r)).unwrap();
        }
        let c = Client::greet(Link::Unix(ours), "test-sock", None, Duration::from_secs(5)).unwrap();
        (c, theirs)
    }

    #[test]
    fn stream_keeps_each_item_as_sent_and_ends_at_the_marker() {
        use captured::*;
        let (mut c, _peer) = client_with(&[GENR, YIELD_TX, YIELD_FAST, READY, END]);
        let mut s = c.stream("getNexusChanges", vec![0.into()], vec![]).unwrap();
        let a = s.next_item().unwrap().unwrap();
        let b = s.next_item().unwrap().unwrap();
        // [offs, item]: the offset, then the entry's bytes exactly as encoded.
        let item = unhex(ITEM);
        assert_eq!(a.value.as_array().unwrap()[0], Value::from(3));
        assert_eq!(b.value.as_array().unwrap()[0], Value::from(70000));
        assert!(a.raw.ends_with(&item) && b.raw.ends_with(&item));
        assert_eq!(a.raw.len(), item.len() + 2); // fixarray + positive fixint 3
        assert_eq!(b.raw.len(), item.len() + 6); // fixarray + uint32 70000
        let ready = s.next_item().unwrap().unwrap();
        assert!(ready.value.is_nil());
        assert_eq!(s.next_item().unwrap(), None);
        // After the end the stream stays ended; the connection serves calls again.
        assert_eq!(s.next_item().unwrap(), None);
    }

    #[test]
    fn stream_error_mid_way_and_before_the_first_item() {
        use captured::*;
        let (mut c, _peer) = client_with(&[GENR, YIELD_TX, ERR]);
        let mut s = c.stream("getNexusChanges", vec![0.into()], vec![]).unwrap();
        assert!(s.next_item().unwrap().is_some());
        let e = s.next_item().unwrap_err();
        let remote = e.downcast_ref::<RemoteError>().unwrap();
        assert_eq!(remote.class, "IsFini");
        assert!(format!("{e:#}").contains("getNexusChanges() on test-sock failed"));
        assert_eq!(s.next_item().unwrap(), None);

        let (mut c, _peer) = client_with(&[FINI_ERR]);
        let e = c.stream("getNexusChangez", vec![], vec![]).err().unwrap();
        assert!(format!("{e:#}").contains("NoSuchMeth"), "{e:#}");
    }

    #[test]
    fn stream_idle_then_item_and_a_dropped_peer_is_an_error() {
        use captured::*;
        let (mut c, mut peer) = client_with(&[GENR]);
        let mut s = c.stream("getNexusChanges", vec![0.into()], vec![]).unwrap();
        assert_eq!(
            s.next_within(Some(Duration::from_millis(50))).unwrap(),
            Next::Idle
        );
        peer.write_all(&unhex(YIELD_FAST)).unwrap();
        assert!(matches!(
            s.next_within(Some(Duration::from_secs(5))).unwrap(),
            Next::Item(_)
        ));
        drop(peer);
        assert!(s.next_within(Some(Duration::from_secs(5))).is_err());
    }
}
