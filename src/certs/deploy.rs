// SPDX-License-Identifier: Apache-2.0
//! `synbackup certs deploy`: put a renewed HTTPS pair into a running cell without a
//! restart (the step a certbot `--deploy-hook` calls).
//!
//! Order: check the new pair (`certs::pair`: key, chain, dates, names)
//! and ask the cell what it can do (its HTTPS listener from `getCellInfo`, whether
//! `getReloadableSystems` has `https:certs`) before anything is written; keep the
//! pair in use as `sslcert.pem.old` / `sslkey.pem.old`; write the new pair; ask the
//! cell to `reload('https:certs')` (or, for a version that cannot, restart its unit
//! and wait for the health check); connect to the HTTPS port and compare the served
//! leaf's SHA-256 with the new one. Any failure after the first write puts the old
//! pair back, reloads (or restarts) again and checks the old certificate is served:
//! exit 10. A refused pair writes nothing: exit 9. A cell that is not running gets
//! the files only (it loads them when it starts).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::base::exit::{code_of, fail, Code};
use crate::base::heldir::HeldDir;
use crate::certs::listeners::read_top_scalar;
use crate::certs::pair::{self as files, Candidate, CurrentPair};
use crate::certs::served::served_fingerprint;
use crate::engine::telepath::{self, get, Client};
use crate::host::systemd;
use crate::instance::config::Instance;
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::instance::record::{Event, Made, Recorder};
use crate::instance::status::Kind;
use crate::service::preflight;

/// The reload handler Synapse registers for a listener whose TLS context it manages.
const RELOAD_SYSTEM: &str = "https:certs";
/// Synapse's HTTPS port when `https:port` is not set.
const DEFAULT_HTTPS_PORT: u16 = 4443;
/// How long a reloaded cell may take to serve the new certificate.
const CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// Bounds each telepath call and TLS handshake.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What to deploy where.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) service_dir: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// Certificate directories whose `cas/` the chain may verify against.
    pub(crate) trust_dirs: Vec<PathBuf>,
    /// Names the HTTPS server is reached by; empty: those of the pair in use
    /// (unless it is the self-signed default).
    pub(crate) names: Vec<String>,
    /// The unit to restart when the cell cannot reload.
    pub(crate) unit: Option<String>,
    /// The HTTPS port to check, instead of the one the cell reports.
    pub(crate) https_port: Option<u16>,
    pub(crate) stop_timeout: Duration,
    pub(crate) health_timeout: Duration,
}

/// How the new pair was put into service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum How {
    /// `reload('https:certs')`: same process, new certificate.
    Reloaded,
    /// The unit was restarted (the version cannot reload).
    Restarted,
    /// The cell is not running: the files are in place for its next start.
    NotRunning,
    /// The cell runs without an HTTPS listener: nothing serves the pair now.
    NoHttps,
}

/// What a deploy did (paths as `pathtext::key`s).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) service_dir: String,
    pub(crate) how: How,
    /// SHA-256 of the new leaf (and of the one it replaced).
    pub(crate) fingerprint: String,
    pub(crate) old_fingerprint: Option<String>,
    pub(crate) subject_cn: String,
    pub(crate) names: Vec<String>,
    pub(crate) not_after: i64,
    /// The HTTPS address where the new certificate was seen.
    pub(crate) https: Option<String>,
    /// How long the cell took to reload (or the unit to restart and answer).
    pub(crate) reload_ms: f64,
    /// Where the previous pair was kept.
    pub(crate) kept: Vec<String>,
}

impl Outcome {
    /// The one-line summary (the journal line).
    pub(crate) fn line(&self) -> String {
        let how = match self.how {
            How::Reloaded => format!(
                "reloaded in {:.0} ms, served on {}",
                self.reload_ms,
                self.https.as_deref().unwrap_or("?")
            ),
            How::Restarted => format!(
                "the unit restarted in {:.1} s (this version cannot reload), served on {}",
                self.reload_ms / 1000.0,
                self.https.as_deref().unwrap_or("?")
            ),
            How::NotRunning => {
                "the service is not running: it loads the pair when it starts".into()
            }
            How::NoHttps => "the cell runs without an HTTPS listener: nothing to reload".into(),
        };
        format!(
            "deployed the HTTPS certificate CN={} (sha256 {}) to {}: {how}",
            self.subject_cn,
            self.fingerprint,
            crate::base::pathtext::shell_word(&crate::base::pathtext::path(&self.service_dir))
        )
    }
}

/// What the running cell offers, asked before anything is written.
#[derive(Debug, Clone)]
enum Cell {
    NotRunning,
    NoHttps,
    Serving { addr: SocketAddr, reload: bool },
}

/// Deploy the pair; see the module doc for the order and the exit codes.
pub(crate) fn deploy(req: &Request) -> Result<Outcome> {
    let dir = &req.service_dir;
    let old = files::read_current(dir)?;
    let names = if req.names.is_empty() {
        old.as_ref()
            .and_then(|o| o.names.clone())
            .unwrap_or_default()
    } else {
        req.names.clone()
    };
    let now = chrono::Utc::now().timestamp();
    let new = files::check_candidate(&req.cert, &req.key, &req.trust_dirs, &names, now)?;
    let cell = ask_cell(req)?;
    if let Cell::Serving { reload: false, .. } = cell {
        if req.unit.is_none() {
            return Err(fail(
                Code::Service,
                format!(
                    "the cell on {} cannot reload its HTTPS certificates (no {RELOAD_SYSTEM} in getReloadableSystems) \
                     and no unit to restart is known; nothing was written: give --unit (SYNBACKUP_SERVICE_UNIT)",
                    dir.display()
                ),
            ));
        }
    }
    // Every write from here on is beneath the directory held now: a link its
    // user plants on the way later redirects nothing.
    let held = HeldDir::open_trusted(
        dir,
        None,
        "point the service directory (SYNBACKUP_SERVICE_DIR or --dir) at the directory itself, and deploy again",
        &mut Vec::new(),
    )?;
    crate::base::fault::point("deploy-held")?;
    let mut kept = Vec::new();
    if let Some(o) = &old {
        files::keep_old(&held, o)?;
        for f in [files::CERT_FILE, files::KEY_FILE] {
            kept.push(crate::base::pathtext::key(
                &dir.join(format!("{f}{}", files::OLD_SUFFIX)),
            ));
        }
    }
    let activated = files::write_new(&held, &new, old.as_ref())
        .and_then(|()| activate(req, &cell, &new.fingerprint));
    match activated {
        Ok((how, addr, reload_ms)) => Ok(Outcome {
            service_dir: crate::base::pathtext::key(dir),
            how,
            fingerprint: new.fingerprint.clone(),
            old_fingerprint: old.as_ref().and_then(|o| o.fingerprint.clone()),
            subject_cn: new.subject_cn.clone(),
            names: new.names.clone(),
            not_after: new.not_after,
            https: addr.map(|a| a.to_string()),
            reload_ms,
            kept,
        }),
        Err(e) => Err(roll_back(req, &held, &cell, old.as_ref(), &new, e)),
    }
}

/// Put the old pair back and into service again; the error to return.
fn roll_back(
    req: &Request,
    held: &HeldDir,
    cell: &Cell,
    old: Option<&CurrentPair>,
    new: &Candidate,
    err: anyhow::Error,
) -> anyhow::Error {
    let dir = &req.service_dir;
    log::warn!(
        "deploying sha256 {} to {} failed: {err:#}; putting the old pair back",
        new.fingerprint,
        dir.display()
    );
    let back = files::put_back(held, old).and_then(|()| match old {
        // No pair on disk to load: the cell keeps serving what it has in memory.
        None => Ok(()),
        Some(o) => activate(req, cell, o.fingerprint.as_deref().unwrap_or("")).map(|_| ()),
    });
    match back {
        Ok(()) => fail(
            Code::RolledBack,
            format!(
                "{err:#}; rolled back: the old pair is in {} again{}",
                dir.display(),
                match (cell, old.and_then(|o| o.fingerprint.as_deref())) {
                    (Cell::Serving { .. }, Some(fp)) => format!(" and served (sha256 {fp})"),
                    _ => String::new(),
                }
            ),
        ),
        Err(e2) => fail(
            code_of(&e2),
            format!(
                "{err:#}; ROLLBACK FAILED: {e2:#}: the old pair is kept as {}{} and {}{}; put them back and reload the service",
                dir.join(files::CERT_FILE).display(),
                files::OLD_SUFFIX,
                dir.join(files::KEY_FILE).display(),
                files::OLD_SUFFIX
            ),
        ),
    }
}

/// True when a process accepts connections on `sock` (a socket file nobody
/// listens on, left by a killed service, is "not running").
fn cell_runs(sock: &Path) -> Result<bool> {
    match UnixStream::connect(sock) {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot connect to {}: run as root or as the service's user",
                sock.display()
            )
        }),
    }
}

fn ask_cell(req: &Request) -> Result<Cell> {
    let sock = req.service_dir.join("sock");
    if !cell_runs(&sock)? {
        return Ok(Cell::NotRunning);
    }
    let mut c = Client::connect(&sock, CALL_TIMEOUT)?;
    let Some(addr) = https_addr(req, &mut c)? else {
        return Ok(Cell::NoHttps);
    };
    // A version without getReloadableSystems (an error from the cell) cannot reload.
    let reload = match c.reloadable_systems() {
        Ok(names) => names.iter().any(|n| n == RELOAD_SYSTEM),
        Err(e) if e.chain().any(|x| x.is::<telepath::RemoteError>()) => {
            log::info!("the cell cannot list its reloadable systems ({e:#}): it will be restarted");
            false
        }
        Err(e) => return Err(e),
    };
    Ok(Cell::Serving { addr, reload })
}

/// Where the cell's HTTPS listener is reached on this host: `--https-port`; else
/// the listener `getCellInfo` reports (`cell.network.https`); else `https:port` of
/// the cell's config (4443 when unset). `None` when the cell reports no listener.
fn https_addr(req: &Request, c: &mut Client) -> Result<Option<SocketAddr>> {
    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    if let Some(p) = req.https_port {
        return Ok(Some(SocketAddr::new(loopback.ip(), p)));
    }
    let info = c.cell_info()?;
    let listeners = get(&info, "cell")
        .and_then(|v| get(v, "network"))
        .and_then(|v| get(v, "https"))
        .and_then(|v| v.as_array().cloned());
    match listeners {
        Some(list) => Ok(list.first().and_then(|l| {
            let port = get(l, "port")?
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())?;
            let host: IpAddr = get(l, "host")?.as_str()?.parse().ok()?;
            let ip = match host {
                IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            Some(SocketAddr::new(ip, port))
        })),
        None => Ok(configured_port(&req.service_dir)?.map(|p| SocketAddr::new(loopback.ip(), p))),
    }
}

/// `https:port` from `cell.yaml` / `cell.mods.yaml` (the latter wins), else 4443;
/// `None` when it is `null` (HTTPS disabled).
fn configured_port(dir: &Path) -> Result<Option<u16>> {
    let mut port = Some(DEFAULT_HTTPS_PORT);
    for f in ["cell.yaml", "cell.mods.yaml"] {
        let p = dir.join(f);
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        port = match read_top_scalar(&text, "https:port").as_deref() {
            None => port,
            Some("null" | "~") => None,
            Some(v) => Some(v.parse().map_err(|_| {
                anyhow!("https:port {v:?} in {} is not a port number", p.display())
            })?),
        };
    }
    Ok(port)
}

/// Put the files on disk into service and check `want` (a fingerprint; "" checks
/// nothing) is served. Returns how, where it was seen, and how long the reload
/// (or the restart) took in milliseconds.
fn activate(req: &Request, cell: &Cell, want: &str) -> Result<(How, Option<SocketAddr>, f64)> {
    let (addr, reload) = match cell {
        Cell::NotRunning => return Ok((How::NotRunning, None, 0.0)),
        Cell::NoHttps => return Ok((How::NoHttps, None, 0.0)),
        Cell::Serving { addr, reload } => (*addr, *reload),
    };
    let dir = &req.service_dir;
    let (how, addr, ms) = if reload {
        let mut c = Client::connect(&dir.join("sock"), CALL_TIMEOUT)?;
        let t = Instant::now();
        c.reload(RELOAD_SYSTEM)?;
        (How::Reloaded, addr, t.elapsed().as_secs_f64() * 1000.0)
    } else {
        let t = Instant::now();
        let unit = req
            .unit
            .as_deref()
            .ok_or_else(|| anyhow!("no unit to restart"))?;
        systemd::stop_unit(unit, req.stop_timeout)?;
        systemd::start_unit(unit, req.health_timeout)?;
        preflight::wait_healthy(dir, req.health_timeout, false)?;
        // An ephemeral port changes with the restart: ask again.
        let mut c = Client::connect(&dir.join("sock"), CALL_TIMEOUT)?;
        let addr = https_addr(req, &mut c)?.unwrap_or(addr);
        (How::Restarted, addr, t.elapsed().as_secs_f64() * 1000.0)
    };
    if !want.is_empty() {
        confirm_served(addr, want)?;
    }
    Ok((how, Some(addr), ms))
}

/// Wait (a few seconds at most) until `addr` serves the certificate `want`.
fn confirm_served(addr: SocketAddr, want: &str) -> Result<()> {
    let deadline = Instant::now() + CONFIRM_WAIT;
    loop {
        let seen = served_fingerprint(addr, CALL_TIMEOUT);
        match &seen {
            Ok(fp) if fp == want => return Ok(()),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(fp) => {
                return Err(anyhow!(
                    "{addr} still serves sha256 {fp}, not {want}, {}s after the reload",
                    CONFIRM_WAIT.as_secs()
                ))
            }
            Err(e) => return Err(anyhow!("cannot check what {addr} serves: {e:#}")),
        }
    }
}

/// `certs deploy`, recorded: with an instance under its lock (a maintenance
/// window would swap the directory back under it) and as its `deploy` run (status,
/// metrics); always the journal line (MESSAGE_ID done or failed).
pub(crate) fn deploy_recorded(
    dirs: &Dirs,
    inst: Option<&Instance>,
    req: &Request,
) -> Result<Outcome> {
    let instance = inst.map_or("", |i| i.name.as_str());
    let rec = Recorder::begin(dirs, instance, Kind::Deploy).journaled();
    let result = match inst {
        None => deploy(req),
        Some(inst) => {
            lock::acquire_for(&dirs.lock_dir, inst, "certs deploy").and_then(|_held| deploy(req))
        }
    };
    let cert = req.cert.display().to_string();
    match &result {
        Ok(o) => {
            let event = Event {
                fields: vec![
                    ("SYNBACKUP_CERT_PATH", cert),
                    ("SYNBACKUP_CERT_FINGERPRINT", o.fingerprint.clone()),
                    (
                        "SYNBACKUP_CERT_OLD_FINGERPRINT",
                        o.old_fingerprint.clone().unwrap_or_default(),
                    ),
                ],
                text: o.line(),
            };
            let made = Made {
                details: serde_json::to_value(o).ok(),
                ..Made::default()
            };
            if let Err(e) = rec.succeeded(made, event) {
                log::warn!("cannot record the deploy's status of {instance}: {e:#}");
            }
        }
        Err(e) => {
            let event = Event {
                fields: vec![
                    ("SYNBACKUP_CERT_PATH", cert),
                    ("SYNBACKUP_KEY_PATH", req.key.display().to_string()),
                ],
                text: format!(
                    "certificate deploy to {} failed (exit {}): {e:#}",
                    req.service_dir.display(),
                    code_of(e).as_i32()
                ),
            };
            rec.failed(e, Made::default(), Some(event));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_port_from_the_cell_config() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(configured_port(t.path()).unwrap(), Some(4443));
        std::fs::write(t.path().join("cell.yaml"), "https:port: 8443\n").unwrap();
        assert_eq!(configured_port(t.path()).unwrap(), Some(8443));
        std::fs::write(t.path().join("cell.mods.yaml"), "https:port: '9443'\n").unwrap();
        assert_eq!(configured_port(t.path()).unwrap(), Some(9443));
        std::fs::write(t.path().join("cell.mods.yaml"), "https:port: null\n").unwrap();
        assert_eq!(configured_port(t.path()).unwrap(), None);
        std::fs::write(t.path().join("cell.mods.yaml"), "https:port: high\n").unwrap();
        assert!(configured_port(t.path()).is_err());
    }
}
