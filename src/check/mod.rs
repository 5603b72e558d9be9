// SPDX-License-Identifier: Apache-2.0
//! `synbackup check [INSTANCE]`: is an instance ready for its nightly run? What
//! `pgbackrest check` and `borgmatic config validate` are to their tools: every
//! precondition of a run checked without making a backup, one line each, so a new
//! config is proven before the first night and a changed host after a change.
//!
//! The checks, in order (a config that does not load stops the others): the config
//! loads and is trusted (`instance::config`'s checks: root's, nobody else can write
//! it or its directories, secrets 0600); the service unit exists and runs on the
//! directory (under systemd); the service answers `getCellInfo` on its socket; the
//! backup root is (or can be made) root's, writable, with room for a backup (the
//! estimate of the compacted copy plus `SYNBACKUP_MIN_FREE`); the offsite
//! repository opens with its password (`restic cat config`), when one is set; the
//! certificate check (`synbackup certs`) finds nothing failing. A check that does
//! not apply (no unit, no systemd, no offsite repository) says why it was skipped.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::base::fsutil::{self, human};
use crate::engine::telepath::{self, Client, Probe};
use crate::host::transient;
use crate::instance::certdir::resolve_cert_dir;
use crate::instance::config::{self, Instance, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::repository::Opened;
use crate::service::preflight;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Ok,
    /// Passed, with something to look at (a certificate close to expiry).
    Warn,
    Fail,
    /// Does not apply here; the line says why.
    Skip,
}

impl Verdict {
    /// The word in the text report.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// One check of one instance.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Line {
    pub(crate) instance: String,
    pub(crate) check: &'static str,
    pub(crate) verdict: Verdict,
    pub(crate) text: String,
}

/// Every check of instance `name`.
pub(crate) fn check_instance(dirs: &Dirs, name: &str) -> Vec<Line> {
    let line = |check, verdict, text: String| Line {
        instance: name.to_string(),
        check,
        verdict,
        text,
    };
    let conf = dirs.config_dir.join(format!("{name}.conf"));
    let inst = match config::load(&dirs.config_dir, name, &InstanceOverrides::default()) {
        Ok(i) => i,
        Err(e) => return vec![line("config", Verdict::Fail, format!("{e:#}"))],
    };
    let mut out = vec![line(
        "config",
        Verdict::Ok,
        format!("{} loads and is trusted", conf.display()),
    )];
    let (v, t) = unit(&inst);
    out.push(line("unit", v, t));
    let (v, t) = service(&inst);
    out.push(line("service", v, t));
    let (v, t) = backup_root(&inst);
    out.push(line("backup root", v, t));
    let (v, t) = offsite(&inst);
    out.push(line("offsite", v, t));
    let (v, t) = certificates(&inst);
    out.push(line("certificates", v, t));
    let (v, t) = pitr(&inst);
    out.push(line("pitr", v, t));
    out
}

/// Point-in-time recovery: the nexus archive's chain and lag, or why it is off.
fn pitr(inst: &Instance) -> (Verdict, String) {
    let now_us = chrono::Utc::now().timestamp_micros().max(0) as u64;
    match crate::pitr::health::assess(inst, now_us) {
        Ok(p) if !p.problems.is_empty() => (Verdict::Fail, p.problems.join("; ")),
        Ok(p) if p.state == "on" => (Verdict::Ok, p.summary()),
        Ok(p) if p.state == "nexslog-off" => (Verdict::Warn, p.notes.join("; ")),
        Ok(p) => (Verdict::Skip, p.notes.join("; ")),
        Err(e) => (Verdict::Fail, format!("{e:#}")),
    }
}

/// The unit exists and runs on the directory.
fn unit(inst: &Instance) -> (Verdict, String) {
    let Some(unit) = inst.service_unit.as_deref() else {
        return (
            Verdict::Skip,
            "no SYNBACKUP_SERVICE_UNIT (windows, restores and drills need one)".into(),
        );
    };
    if !transient::systemd_runs(Path::new("/")) {
        return (
            Verdict::Skip,
            format!("{unit}: systemd does not run this host"),
        );
    }
    match preflight::check_unit(unit, &inst.service_dir) {
        Ok(state) => match preflight::not_running(unit, &state) {
            None => (
                Verdict::Ok,
                format!("{unit} is {state} on {}", inst.service_dir.display()),
            ),
            Some(why) => (Verdict::Fail, why),
        },
        Err(e) => (Verdict::Fail, format!("{e:#}")),
    }
}

/// The service answers on its socket.
fn service(inst: &Instance) -> (Verdict, String) {
    let sock = inst.service_dir.join("sock");
    match telepath::probe(&sock) {
        Probe::Answers => {}
        Probe::NoService => {
            return (
                Verdict::Fail,
                format!(
                    "no service answers on {}: it does not run (a run would back it up unfrozen)",
                    sock.display()
                ),
            )
        }
        Probe::Unreachable(why) => return (Verdict::Fail, why),
    }
    let info = Client::connect(&sock, Duration::from_secs(30)).and_then(|mut c| c.cell_info());
    match info {
        Ok(info) => {
            let kind = telepath::get(&info, "cell")
                .and_then(|c| telepath::get(c, "type"))
                .and_then(|t| t.as_str())
                .unwrap_or("service")
                .to_string();
            let version = crate::engine::synapse::of_cell_info(&info)
                .map(|v| format!(" (Synapse {v})"))
                .unwrap_or_default();
            (
                Verdict::Ok,
                format!("a {kind}{version} answers on {}", sock.display()),
            )
        }
        Err(e) => (
            Verdict::Fail,
            format!("{} does not answer getCellInfo: {e:#}", sock.display()),
        ),
    }
}

/// The backup root: root's, writable, with room for a backup.
fn backup_root(inst: &Instance) -> (Verdict, String) {
    let root = &inst.backup_root;
    // The root, or the directory a run would create it in.
    let mut at = root.as_path();
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    if let Err(e) = writable(at) {
        return (Verdict::Fail, format!("{e:#}"));
    }
    let need = match crate::engine::backup::estimate(&inst.service_dir, &inst.skipdirs, false) {
        Ok(n) => n,
        Err(e) => {
            return (
                Verdict::Fail,
                format!("cannot size up the service directory: {e:#}"),
            )
        }
    };
    let free = match fsutil::free_space(at) {
        Ok(f) => f,
        Err(e) => return (Verdict::Fail, format!("{e:#}")),
    };
    let want = need.saturating_add(inst.min_free);
    let text = format!(
        "{}: a backup needs about {} (and SYNBACKUP_MIN_FREE {} left over), {} is free",
        root.display(),
        human(need),
        human(inst.min_free),
        human(free)
    );
    if free < want {
        (Verdict::Fail, format!("not enough room in {text}"))
    } else if !root.exists() {
        (
            Verdict::Ok,
            format!("{text}; the first run creates it (root's, 0700)"),
        )
    } else {
        (Verdict::Ok, text)
    }
}

/// Create and remove a file in `dir` (the way to know, whatever the mount and ACLs).
fn writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".synbackup-check.{}", std::process::id()));
    fsutil::create_new(&probe).map_err(|e| {
        anyhow::anyhow!(
            "{} is not writable: {e:#}{}",
            dir.display(),
            fsutil::read_only_hint(dir)
        )
    })?;
    std::fs::remove_file(&probe)
        .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", probe.display()))
}

/// The offsite repository opens.
fn offsite(inst: &Instance) -> (Verdict, String) {
    if inst.offsite.is_none() {
        return (Verdict::Skip, "no SYNBACKUP_OFFSITE_REPOSITORY".into());
    }
    match Opened::open(inst).and_then(|o| o.opens()) {
        Ok(text) => (Verdict::Ok, text),
        Err(e) => (Verdict::Fail, format!("{e:#}")),
    }
}

/// The certificate check finds nothing failing.
fn certificates(inst: &Instance) -> (Verdict, String) {
    let opts = crate::certs::check::Options {
        warn_days: inst.cert_warn_days,
        https_names: inst.cert_names.clone(),
        accept: inst.cert_accept.clone(),
        now: chrono::Utc::now().timestamp(),
    };
    let report = resolve_cert_dir(inst).and_then(|dir| {
        crate::certs::check::check_material(&inst.service_dir, dir.as_deref(), &opts)
    });
    match report {
        Ok(r) => match r.worst_finding() {
            None => (
                Verdict::Ok,
                format!(
                    "{} certificates and keys pass (synbackup certs {})",
                    r.certs.len(),
                    inst.name
                ),
            ),
            Some(f) if r.failed() => (
                Verdict::Fail,
                format!(
                    "{} {}: {} (synbackup certs {})",
                    f.check, f.path, f.message, inst.name
                ),
            ),
            Some(f) => (
                Verdict::Warn,
                format!(
                    "{} {}: {} (synbackup certs {})",
                    f.check, f.path, f.message, inst.name
                ),
            ),
        },
        Err(e) => (Verdict::Fail, format!("{e:#}")),
    }
}
