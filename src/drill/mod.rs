// SPDX-License-Identifier: Apache-2.0
//! `synbackup drill`: prove that a backup boots.
//!
//! Order: remove what dead drills left beside the backup; verify the backup (the
//! engine's verify); make a scratch copy of it (`scratch.rs`: reflink or sparse);
//! start the Synapse server on the copy, isolated (`host::netns`: a network
//! namespace with only loopback, as the backup's owner, killed if we die); wait,
//! within the timeout, until it answers `getCellInfo` on the copy's `sock`; check
//! that its `cell.guid` is the backup's (manifest `cell_guid`), its nexus index is
//! at least the one the backup claims (what the cell reported while frozen for
//! it, manifest `cell.nexus_index`, which verify held against the backup's files,
//! else what the files hold; more only by changes its boot made), its health is
//! nominal or degraded, and for a Cortex read the per-form node counts and run the
//! operator's check query; stop the server and remove the copy. The backup itself
//! is only read. With an instance, the result is recorded (status kind `drill`).

/// The drill's scratch copy of a backup, and removing dead drills' copies.
pub(crate) mod scratch;

/// The copy's `cell.yaml` without the keys that reach other services.
pub(crate) mod cellconf;

/// What of the host's file system the drilled cell must not see.
pub(crate) mod seal;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmpv::Value;
use serde::Serialize;

use self::scratch::{Method, Scratch};
use crate::base::exit::{fail, Code};
use crate::base::{envfile, fsutil};
use crate::engine::cellstate::CellState;
use crate::engine::telepath::{self, Client};
use crate::engine::{cellinfo, synapse, verify};
use crate::host::transient::{self, Isolation};
use crate::host::unitenv::{self, UnitEnv};
use crate::host::{execstart, netns};
use crate::instance::catalog::{self, State};
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::instance::record::{now_str, Event, Made, Recorder};
use crate::instance::status::Kind;
use crate::instance::tested::{self, Tested};

/// What to drill, with what.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) backup: PathBuf,
    pub(crate) python: PathBuf,
    pub(crate) module: String,
    /// How long the server may take to answer.
    pub(crate) timeout: Duration,
    /// A Storm query that must succeed (Cortex only).
    pub(crate) check: Option<String>,
    /// How the server is isolated.
    pub(crate) isolation: Isolation,
    /// The service unit's environment, given to the server.
    pub(crate) env: UnitEnv,
    /// Boot in Synapse's safemode (no crons, triggers, dmons, storm pools).
    pub(crate) safemode: bool,
    /// synbackup's config directory: its instances' directories are hidden from
    /// the server.
    pub(crate) config_dir: Option<PathBuf>,
}

/// An environment, `(VAR, VALUE)` in order.
type Env = Vec<(String, String)>;

/// How the server is started: its environment (the unit's, resolved and
/// neutralised) and what of the host it does not see.
struct Launch {
    env: Env,
    hidden: seal::Hidden,
}

/// What a passed drill found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) backup: String,
    pub(crate) scratch_method: Method,
    pub(crate) copy_seconds: f64,
    /// From starting the server until it answered.
    pub(crate) boot_seconds: f64,
    pub(crate) cell_type: String,
    pub(crate) cell_guid: String,
    pub(crate) synapse_version: String,
    /// The Synapse that last ran the backed-up service (its cell data), when
    /// recorded: differs from `synapse_version` in an upgrade rehearsal, and then
    /// `boot_seconds` includes the new version's data migrations (within a release
    /// line: 3.x refuses a 2.x backup, `engine::synapse::boot_refusal`).
    pub(crate) backup_synapse_version: Option<String>,
    pub(crate) health: String,
    /// Nodes per form (a Cortex's default view).
    pub(crate) form_counts: BTreeMap<String, u64>,
    pub(crate) nodes: u64,
    pub(crate) check: Option<String>,
    /// How the server was isolated: `systemd-run` (its transient unit) or `netns`.
    pub(crate) isolation: Isolation,
    /// The transient unit the server ran as (systemd-run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unit: Option<String>,
    /// Booted with `--safemode`.
    pub(crate) safemode: bool,
    /// What was removed from the copy so it reaches nothing (`cell.yaml:mirror`,
    /// `env:SYN_CORTEX_MIRROR`, ...).
    pub(crate) neutralised: Vec<String>,
    /// The host's directories and sockets the server did not see.
    pub(crate) hidden: seal::Hidden,
    /// The nexus index the booted cell reported.
    pub(crate) nexus_index: Option<u64>,
    /// The nexus index the backup claims: what the cell reported while frozen for
    /// it (manifest `cell.nexus_index`), else what its files hold.
    pub(crate) backup_nexus_index: Option<u64>,
    /// Where `backup_nexus_index` comes from: `manifest` or `files`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backup_nexus_from: Option<&'static str>,
}

impl Outcome {
    /// The one-line summary.
    pub(crate) fn line(&self) -> String {
        let version = match &self.backup_synapse_version {
            Some(b) if *b != self.synapse_version => format!(
                "Synapse {}, upgraded from the backup's {b}: allow {:.0} s for its first boot",
                self.synapse_version,
                self.boot_seconds.ceil()
            ),
            _ => format!("Synapse {}", self.synapse_version),
        };
        let sealed = if self.neutralised.is_empty() {
            String::new()
        } else {
            format!("; neutralised {}", self.neutralised.join(", "))
        };
        let sealed = format!("; {}{sealed}", self.hidden.summary());
        let nexus = match (self.nexus_index, self.backup_nexus_index) {
            (Some(i), Some(b)) => format!(
                ", nexus index {b} as the backup's {} records{}",
                self.backup_nexus_from.unwrap_or("files"),
                if i > b {
                    format!(" ({i} after {} changes its boot made)", i - b)
                } else {
                    String::new()
                }
            ),
            (Some(i), None) => format!(", nexus index {i}"),
            _ => String::new(),
        };
        format!(
            "drill passed: {} booted as {} {}{nexus} ({version}{}) in {:.1} s, health {}, {} nodes in {} forms; scratch copy by {} in {:.1} s{sealed}",
            self.backup,
            self.cell_type,
            self.cell_guid,
            if self.safemode { ", safemode" } else { ", full boot" },
            self.boot_seconds,
            self.health,
            self.nodes,
            self.form_counts.len(),
            match self.scratch_method {
                Method::Reflink => "reflink",
                Method::Sparse => "sparse copy",
            },
            self.copy_seconds
        )
    }
}

/// How the server under test runs.
enum Runner {
    /// Our child, in a network namespace of its own.
    Child(Child),
    /// A transient unit of systemd's.
    Unit(String),
}

/// The server under test; stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    runner: Runner,
    /// Stopped, and its process group ended.
    ended: bool,
}

impl Server {
    /// How it ended, once it has.
    fn exited(&mut self) -> Result<Option<String>> {
        match &mut self.runner {
            Runner::Child(c) => Ok(c.try_wait()?.map(|st| st.to_string())),
            Runner::Unit(u) => Ok(transient::ended(u)?.then(|| format!("its unit {u} ended"))),
        }
    }

    fn stop_child(child: &mut Child) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        log::warn!("the drill's server did not stop within 60 s; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stop the server, then end any worker of its process group (or unit) still
    /// running.
    fn stop_all(&mut self) {
        if self.ended {
            return;
        }
        match &mut self.runner {
            Runner::Child(c) => {
                Server::stop_child(c);
                netns::kill_group(c.id());
            }
            Runner::Unit(u) => transient::stop(u),
        }
        self.ended = true;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The last line of the server's log that says something (its error, usually).
fn cause_from_log(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(its log is empty)");
    line.chars().take(400).collect()
}

fn failed(message: String) -> anyhow::Error {
    fail(Code::Drill, message)
}

/// The server's command line on the scratch copy, which it finds at
/// [`netns::CELL_PATH`] in its own mount namespace (both isolation paths).
fn server_argv(req: &Request) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = vec![
        req.python.clone().into(),
        "-m".into(),
        req.module.clone().into(),
        "--telepath".into(),
        "tcp://127.0.0.1:0".into(),
        "--https".into(),
        "0".into(),
        netns::CELL_PATH.into(),
    ];
    if req.safemode {
        // A config option made a flag by Synapse (2.256 and 3.7.0): it takes a
        // value, read with Python's `bool`.
        argv.splice(3..3, ["--safemode".into(), "true".into()]);
    }
    argv
}

/// Start the server on the scratch copy, isolated, as the backup's owner, with the
/// service unit's environment: as a transient unit or in a network namespace.
fn start_server(
    req: &Request,
    launch: &Launch,
    scratch: &Scratch,
    owner: (u32, u32),
) -> Result<Server> {
    match req.isolation.resolved() {
        Isolation::SystemdRun => start_unit(req, launch, scratch, owner),
        _ => start_child(req, launch, scratch, owner),
    }
}

/// Write the server's environment where its transient unit reads it: root's file,
/// 0600 (the values may be secrets: never on a command line or in `systemctl show`).
fn write_env_file(path: &Path, env: &[(String, String)]) -> Result<()> {
    use std::io::Write;
    let _ = fs::remove_file(path); // a leftover of an earlier drill with our pid
    let mut f = fsutil::create_new(path)?;
    f.write_all(envfile::render(env).as_bytes())
        .map_err(|e| fsutil::write_error(path, e))
}

fn start_unit(
    req: &Request,
    launch: &Launch,
    scratch: &Scratch,
    owner: (u32, u32),
) -> Result<Server> {
    let unit = transient::unit_name(std::process::id());
    transient::stop(&unit); // a leftover of an earlier drill with our pid
    let env_file = scratch.env_file();
    write_env_file(&env_file, &launch.env)?;
    let spec = transient::Spec {
        unit: unit.clone(),
        description: format!("synbackup drill of {}", scratch.path.display()),
        uid: owner.0,
        gid: owner.1,
        writable: scratch.path.clone(),
        log: scratch.log.clone(),
        env: UnitEnv {
            assignments: Vec::new(),
            files: vec![(env_file, false)],
        },
        hide: launch
            .hidden
            .dirs
            .iter()
            .chain(&launch.hidden.sockets)
            .cloned()
            .collect(),
        argv: server_argv(req),
    };
    transient::start(&spec).map_err(|e| failed(format!("cannot start the server: {e:#}")))?;
    let server = Server {
        runner: Runner::Unit(unit.clone()),
        ended: false,
    };
    let (pid, _) = transient::state(&unit)?;
    scratch.record_server(pid)?;
    log::info!(
        "the server runs as the transient unit {unit} (PrivateNetwork=yes, User={}), pid {pid}",
        owner.0
    );
    Ok(server)
}

fn start_child(
    req: &Request,
    launch: &Launch,
    scratch: &Scratch,
    owner: (u32, u32),
) -> Result<Server> {
    let log = File::create(&scratch.log)
        .with_context(|| format!("cannot create {}", scratch.log.display()))?;
    let argv = server_argv(req);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(launch.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    netns::isolate(
        &mut cmd,
        owner.0,
        owner.1,
        Some(netns::Seal::new(
            &scratch.path,
            &launch.hidden.dirs,
            &launch.hidden.sockets,
        )?),
    );
    let child = cmd.spawn().map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) => {
                " (a drill runs the server in a network namespace of its own: run it as root)"
                    .to_string()
            }
            Some(libc::EACCES) => format!(
                " (the server runs as the backup's owner, uid {}: that user must be able to run it)",
                owner.0
            ),
            _ => String::new(),
        };
        failed(format!(
            "cannot start {} -m {}: {e}{hint}",
            req.python.display(),
            req.module
        ))
    })?;
    let server = Server {
        runner: Runner::Child(child),
        ended: false,
    };
    if let Runner::Child(c) = &server.runner {
        scratch.record_server(c.id())?;
    }
    Ok(server)
}

/// Wait until the server answers `getCellInfo` on `sock`; its answer. A server
/// that exits first fails the drill with its log's last line, or with what the
/// release lines say about it (`synapse::boot_refusal`: 2.x to 3.x, a downgrade),
/// given the release that last ran the backup.
fn wait_answers(
    server: &mut Server,
    sock: &Path,
    log: &Path,
    timeout: Duration,
    backup_version: Option<&synapse::Version>,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no socket yet");
    loop {
        crate::base::interrupt::check()?;
        if let Some(st) = server.exited()? {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(verdict) = synapse::boot_refusal(backup_version, &text) {
                return Err(failed(format!("the service did not boot: {verdict}")));
            }
            return Err(failed(format!(
                "the service did not boot: it exited ({st}) before answering; its log says: {}",
                cause_from_log(log)
            )));
        }
        if sock.exists() {
            match Client::connect(sock, Duration::from_secs(30)).and_then(|mut c| c.cell_info()) {
                Ok(info) => return Ok(info),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "the service did not answer on {} within {} s ({last}); its log ends: {}",
                sock.display(),
                timeout.as_secs(),
                cause_from_log(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn text_at(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for k in path {
        match telepath::get(cur, k) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    cur.as_str().map(String::from).unwrap_or_default()
}

fn form_counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_map()
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| Some((k.as_str()?.to_string(), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Drill one backup (no instance): verify, copy, boot isolated, check, clean up.
pub(crate) fn drill(req: &Request) -> Result<Outcome> {
    let backup = fs::canonicalize(&req.backup).map_err(|e| {
        fail(
            Code::BadPath,
            format!("backup {} cannot be used: {e}", req.backup.display()),
        )
    })?;
    if let Some(parent) = backup.parent() {
        scratch::remove_stale(parent);
    }
    let manifest = verify::verified_manifest(&backup, "not drilled")?;
    let Some(want_guid) = manifest.cell_guid.clone() else {
        return Err(failed(format!(
            "{} has no cell.guid (its manifest records none): a service started on it would be a new cell, not this one",
            backup.display()
        )));
    };
    let backup_version = cellinfo::stored_version(&backup).unwrap_or_else(|e| {
        log::warn!("cannot read the backup's Synapse version: {e:#}");
        None
    });
    let meta = fs::metadata(&backup)?;
    let need: u64 = manifest.files.iter().map(|f| f.size).sum();

    let t_copy = Instant::now();
    let scratch = scratch::make(&backup, need)?;
    let copy_seconds = t_copy.elapsed().as_secs_f64();
    crate::base::fault::point("drill-scratch-made")?;
    let mut neutralised = cellconf::neutralise(&scratch.path)?;
    let (env, dropped) = server_env(&req.env)?;
    neutralised.extend(dropped);
    if !neutralised.is_empty() {
        log::info!(
            "removed from the scratch copy's config: {}",
            neutralised.join(", ")
        );
    }
    let hidden = seal::plan_here(
        &seal::candidate_dirs(
            Some(Path::new(&manifest.source)).filter(|p| p.is_absolute()),
            req.config_dir.as_deref(),
        ),
        &python_locations(&req.python)
            .into_iter()
            .chain([scratch.path.clone()])
            .collect::<Vec<_>>(),
    );
    log::info!("{}", hidden.summary());
    log::debug!(
        "hidden from the server: {:?}; sockets covered: {:?}",
        hidden.dirs,
        hidden.sockets
    );
    let launch = Launch { env, hidden };
    log::info!(
        "scratch copy {} made by {} in {copy_seconds:.1} s",
        scratch.path.display(),
        if scratch.method == Method::Reflink {
            "reflink"
        } else {
            "sparse copy"
        }
    );

    let t_boot = Instant::now();
    let mut server = start_server(req, &launch, &scratch, (meta.uid(), meta.gid()))?;
    let sock = scratch.path.join("sock");
    let info = wait_answers(
        &mut server,
        &sock,
        &scratch.log,
        req.timeout,
        backup_version.as_ref(),
    )?;
    let (isolation, unit) = match &server.runner {
        Runner::Unit(u) => (Isolation::SystemdRun, Some(u.clone())),
        Runner::Child(_) => (Isolation::Netns, None),
    };
    let boot_seconds = t_boot.elapsed().as_secs_f64();
    let (claimed, claimed_from) = claimed_index(&backup, &manifest);
    let booted = CellState::from_info(&info).ok().map(|s| s.nexus_index);
    let checked = check_nexus(booted, claimed, claimed_from)
        .and_then(|()| check_service(req, &sock, &info, &want_guid, &scratch.log));
    server.stop_all();
    drop(server);
    let scratch_method = scratch.method;
    drop(scratch);
    let (health, counts) = checked?;
    Ok(Outcome {
        backup: backup.display().to_string(),
        scratch_method,
        copy_seconds,
        boot_seconds,
        cell_type: text_at(&info, &["cell", "type"]),
        cell_guid: want_guid,
        synapse_version: synapse::of_cell_info(&info)
            .map(|v| v.to_string())
            .unwrap_or_default(),
        backup_synapse_version: backup_version.map(|v| v.to_string()),
        health,
        nodes: counts.values().sum(),
        form_counts: counts,
        check: req.check.clone(),
        isolation,
        unit,
        safemode: req.safemode,
        neutralised,
        hidden: launch.hidden,
        nexus_index: booted,
        backup_nexus_index: claimed,
        backup_nexus_from: claimed.map(|_| claimed_from),
    })
}

/// Where the server's Python is: as given (its directory made canonical: a venv's
/// `bin/python`) and the interpreter that links to (its standard library beside
/// it): what must stay visible to the server.
fn python_locations(python: &Path) -> Vec<PathBuf> {
    let name = python.file_name().unwrap_or_default();
    let given = match python.parent().map(fs::canonicalize) {
        Some(Ok(dir)) => dir.join(name),
        _ => python.to_path_buf(),
    };
    let mut out = vec![given];
    out.extend(fs::canonicalize(python).ok());
    out
}

/// The server's environment: the unit's `EnvironmentFile=`s and `Environment=`
/// resolved as systemd would, without the variables of neutralised keys (also when
/// they come from a file); the variables dropped.
fn server_env(unit: &UnitEnv) -> Result<(Env, Vec<String>)> {
    let mut env = unitenv::resolve(unit).map_err(|e| failed(format!("{e:#}")))?;
    let dropped = cellconf::neutralise_env(&mut env);
    Ok((env, dropped))
}

/// The nexus index the backup claims: the one the cell reported while frozen
/// for it (its manifest), else the one its files hold.
fn claimed_index(
    backup: &Path,
    m: &crate::engine::manifest::Manifest,
) -> (Option<u64>, &'static str) {
    if let Some(c) = &m.cell {
        return (Some(c.nexus_index), "manifest");
    }
    let stored = crate::engine::nexus::stored_index(backup).unwrap_or_else(|e| {
        log::warn!("cannot read the nexus index of {}: {e:#}", backup.display());
        None
    });
    (stored, "files")
}

/// The booted cell holds every change the backup claims: its index is at least
/// the claimed one. It is that one exactly when the boot itself changed nothing
/// (Synapse 2.x in safemode); a boot may add changes before it answers (Synapse
/// 3.7.0 pushes `model:set` at every boot, in safemode too; a full boot's crons,
/// an upgrade's migrations), which the outcome reports. That the backup's files
/// hold exactly the claimed index was checked by verify, before the boot.
fn check_nexus(booted: Option<u64>, claimed: Option<u64>, from: &str) -> Result<()> {
    match (booted, claimed) {
        (Some(b), Some(c)) if b < c => Err(failed(format!(
            "the booted cell reports nexus index {b}, but the backup's {from} records {c}: the backup does not hold the changes it claims"
        ))),
        _ => Ok(()),
    }
}

/// The checks on a server that answers: guid, health, form counts, operator check.
fn check_service(
    req: &Request,
    sock: &Path,
    info: &Value,
    want_guid: &str,
    log: &Path,
) -> Result<(String, BTreeMap<String, u64>)> {
    let guid = text_at(info, &["cell", "iden"]);
    if guid != want_guid {
        return Err(failed(format!(
            "the service booted as cell {guid}, not the backup's {want_guid} (is cell.guid missing or changed in the backup?)"
        )));
    }
    let mut client = Client::connect(sock, req.timeout)?;
    let health = client.health_status()?;
    if health != "nominal" && health != "degraded" {
        return Err(failed(format!(
            "the service's health check says {health}; its log ends: {}",
            cause_from_log(log)
        )));
    }
    let mut counts = BTreeMap::new();
    if text_at(info, &["cell", "type"]) == "cortex" {
        let opts = synapse::storm_opts(synapse::of_cell_info(info).as_ref());
        let v = client
            .call_storm("return($lib.view.get().getFormCounts())", opts.clone())
            .context("cannot read the per-form node counts")
            .map_err(|e| failed(format!("{e:#}")))?;
        counts = form_counts(&v);
        if let Some(q) = &req.check {
            client.call_storm(q, opts).map_err(|e| {
                failed(format!(
                    "the check query SYNBACKUP_DRILL_CHECK failed: {e:#}"
                ))
            })?;
        }
    }
    Ok((health, counts))
}

/// Drill an instance's backup (`backup`: a path or a name in its root; default the
/// newest verified one) under the instance lock.
pub(crate) fn drill_instance(
    dirs: &Dirs,
    name: &str,
    backup: Option<&Path>,
    check: Option<String>,
) -> Result<Outcome> {
    let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
    let _lock = lock::acquire_for(&dirs.lock_dir, &inst, "drill")?;
    drill_of(dirs, &inst, backup, check)
}

/// Drill a backup of `inst` (the caller holds its lock), taking Python and module
/// from the config or the unit, and record the result: the `drill` run and, for a
/// backup of the instance's root, which backup it tested.
pub(crate) fn drill_of(
    dirs: &Dirs,
    inst: &config::Instance,
    backup: Option<&Path>,
    check: Option<String>,
) -> Result<Outcome> {
    let rec = Recorder::begin(dirs, &inst.name, Kind::Drill);
    let backup = backup_to_drill(inst, backup)?;
    let result = python_and_module(inst).and_then(|(python, module)| {
        drill(&Request {
            backup: backup.clone(),
            python,
            module,
            timeout: inst.drill_timeout,
            check: check.or(inst.drill_check.clone()),
            isolation: inst.drill_isolation,
            env: service_env(inst)?,
            safemode: inst.drill_safemode,
            config_dir: Some(dirs.config_dir.clone()),
        })
    });
    let finished = now_str(chrono::Utc::now());
    if let Err(e) = record_tested(dirs, inst, &backup, &finished, &result) {
        log::error!("could not record which backup the drill tested: {e:#}");
    }
    let made = Made {
        backup: Some(backup.display().to_string()),
        ..Made::default()
    };
    record(rec, made, &result);
    result.map_err(|e| crate::base::exit::reported(&e))
}

/// `drill --dir BACKUP` (no instance): the drill, its journal event.
pub(crate) fn drill_dir(dirs: &Dirs, req: &Request) -> Result<Outcome> {
    let rec = Recorder::begin(dirs, "", Kind::Drill);
    let result = drill(req);
    record(rec, Made::default(), &result);
    result.map_err(|e| crate::base::exit::reported(&e))
}

/// The drill's run: status and metrics (for an instance) and the journal line
/// (MESSAGE_ID pass or fail).
fn record(rec: Recorder, made: Made, result: &Result<Outcome>) {
    match result {
        Ok(o) => {
            let event = Event {
                fields: vec![("SYNBACKUP_BACKUP", o.backup.clone())],
                text: o.line(),
            };
            let made = Made {
                details: serde_json::to_value(o).ok(),
                ..made
            };
            if let Err(e) = rec.succeeded(made, event) {
                log::error!("could not record the drill's status: {e:#}");
            }
        }
        Err(e) => rec.failed(e, made, Some(Event::text(format!("drill failed: {e:#}")))),
    }
}

/// The backup to drill: `backup` (a path, or a name in the root), else the newest
/// verified one.
fn backup_to_drill(inst: &config::Instance, backup: Option<&Path>) -> Result<PathBuf> {
    Ok(match backup {
        Some(b) if b.is_absolute() || b.exists() => b.to_path_buf(),
        Some(b) => inst.backup_root.join(b),
        None => catalog::scan(&inst.backup_root, &inst.name)?
            .into_iter()
            .rfind(|e| e.state == State::Verified)
            .map(|e| e.path)
            .ok_or_else(|| {
                fail(
                    Code::BadPath,
                    format!(
                        "{} holds no verified backup of {}; run `synbackup run {}` first or name a BACKUP",
                        inst.backup_root.display(),
                        inst.name,
                        inst.name
                    ),
                )
            })?,
    })
}

/// Note the drill of `backup` (a backup of the instance's root) for `list`.
fn record_tested(
    dirs: &Dirs,
    inst: &config::Instance,
    backup: &Path,
    finished: &str,
    result: &Result<Outcome>,
) -> Result<()> {
    let in_root = backup
        .parent()
        .map(|p| fs::canonicalize(p).ok() == fs::canonicalize(&inst.backup_root).ok());
    let name = backup
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if in_root != Some(true) || catalog::parse_name(&inst.name, &name).is_none() {
        return Ok(()); // not one of the instance's own backups: nothing to list it by
    }
    let existing: Vec<String> = catalog::scan(&inst.backup_root, &inst.name)?
        .into_iter()
        .map(|e| e.name)
        .collect();
    let t = match result {
        Ok(o) => Tested {
            when: finished.to_string(),
            passed: true,
            synapse_version: Some(o.synapse_version.clone()),
            backup_synapse_version: o.backup_synapse_version.clone(),
            boot_seconds: Some(o.boot_seconds),
            nodes: Some(o.nodes),
            form_counts: o.form_counts.clone(),
            error: None,
        },
        Err(e) => Tested {
            when: finished.to_string(),
            passed: false,
            synapse_version: None,
            backup_synapse_version: None,
            boot_seconds: None,
            nodes: None,
            form_counts: BTreeMap::new(),
            error: Some(format!("{e:#}")),
        },
    };
    tested::record(&dirs.state_dir, &inst.name, &name, t, &existing)
}

/// The service unit's environment, when there is a unit and systemd to ask.
fn service_env(inst: &config::Instance) -> Result<UnitEnv> {
    match &inst.service_unit {
        Some(unit) if transient::systemd_runs(Path::new("/")) => unitenv::of_unit(unit)
            .with_context(|| format!("cannot read the environment of {unit}"))
            .map_err(|e| failed(format!("{e:#}"))),
        _ => Ok(UnitEnv::default()),
    }
}

/// The Python and module for an instance: its config, else its unit's ExecStart.
fn python_and_module(inst: &config::Instance) -> Result<(PathBuf, String)> {
    let from_unit = match (&inst.drill_python, &inst.drill_module, &inst.service_unit) {
        (Some(_), Some(_), _) => None,
        (_, _, Some(unit)) => Some(execstart::of_unit(unit)?),
        _ => {
            return Err(fail(
                Code::Usage,
                format!("instance {}: set SYNBACKUP_DRILL_PYTHON and SYNBACKUP_DRILL_MODULE, or SYNBACKUP_SERVICE_UNIT to take them from its ExecStart", inst.name),
            ))
        }
    };
    let python = inst
        .drill_python
        .clone()
        .or_else(|| from_unit.as_ref().map(|u| PathBuf::from(&u.python)))
        .unwrap_or_default();
    let module = inst
        .drill_module
        .clone()
        .or_else(|| from_unit.map(|u| u.module))
        .unwrap_or_default();
    Ok((python, module))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_env_drops_neutralised_keys_from_environment_files_too() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("cortex.env");
        fs::write(
            &file,
            "SYN_CORTEX_MIRROR=cell:///data/leader\nSYN_CORTEX_AHA_REGISTRY=ssl://aha\nSYN_CORTEX_NEXSLOG_EN=true\n",
        )
        .unwrap();
        let unit = UnitEnv {
            assignments: vec!["SYN_CORTEX_AHA_NAME=core00".into(), "TZ=UTC".into()],
            files: vec![(file, false)],
        };
        let (env, dropped) = server_env(&unit).unwrap();
        assert_eq!(
            env,
            [
                ("SYN_CORTEX_NEXSLOG_EN".to_string(), "true".to_string()),
                ("TZ".into(), "UTC".into())
            ]
        );
        assert_eq!(
            dropped,
            [
                "env:SYN_CORTEX_MIRROR",
                "env:SYN_CORTEX_AHA_REGISTRY",
                "env:SYN_CORTEX_AHA_NAME"
            ]
        );
    }

    #[test]
    fn python_locations_keep_the_venv_and_its_interpreter() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("usr/bin/python3.11");
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        fs::write(&real, "").unwrap();
        let bin = t.path().join("venv/bin");
        fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(&real, bin.join("python")).unwrap();
        let t = fs::canonicalize(t.path()).unwrap();
        assert_eq!(
            python_locations(&bin.join("python")),
            [t.join("venv/bin/python"), t.join("usr/bin/python3.11")]
        );
    }
}
