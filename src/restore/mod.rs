// SPDX-License-Identifier: Apache-2.0
//! `synbackup restore BACKUP DIR`: the seed guide's restore (`mv dir dir_old;
//! cp -R backup dir; start`), made safe.
//!
//! Order: check what changes nothing first (the unit exists and runs on DIR, DIR
//! is not a mount point, a running service is refused unless a unit is named, the
//! backup is of the same cell unless `--force`), then check the backup's structure
//! (`copy`: its data is checked as it is copied); check space; copy it (each byte
//! read once, sparse-aware, owners, modes and times kept, every file's digest
//! checked against the manifest and every environment read to its end on the
//! copy, `copy`) into a staging sibling of DIR while the
//! service still runs; only then stop the service, move DIR aside to
//! `DIR.pre-restore-TIMESTAMP` (never deleted), rename the staging copy into place,
//! fsync, start the service again, wait for its health check and print how to undo.
//! A failure before the stop leaves DIR untouched (the staging copy is removed);
//! any failure after it rolls back as the window does: DIR back in place, the
//! service started again (exit 10). Every result is recorded: the journal (with
//! its MESSAGE_ID) always, the instance's `restore` status with `--instance`.
//!
//! From offsite (`--offsite SNAPSHOT`): restic restores the snapshot into a
//! staging directory beside DIR first (on DIR's filesystem), made durable by one
//! syncfs; that copy is checked where it is, each byte read once, from the page
//! cache restic wrote it to (`copy::checked_in_place`: structure, every digest,
//! every environment read to its end, the nexus index), and then moved (not
//! copied again) into the staging place of the steps above.
//!
//! DIR given through a symlink is resolved first: the swap happens beside the
//! real directory, not on the symlink's file system.
//!
//! Roles (`roles`): the role of the directory (leader or mirror) and of the backup
//! are compared before anything changes, and a change of role is refused without
//! `--force`; the restored copy keeps the directory's own role settings (`mirror`,
//! `parent`, `aha:*` in its `cell.yaml` and `cell.mods.yaml`); a directory ahead of
//! the backup (its nexus index greater) is a warning that names both indexes and
//! what its mirrors must do, recorded in the restore's status.
//!
//! `--certs` also puts the backup's copy of the certificate directory back
//! (`certrestore`), after the swap and before the start (the service reads it when
//! it starts its `ssl://` listeners): into `--cert-dir`, else the instance's (or
//! the unit's) certificate directory, else where the backup found it. A rollback
//! takes it back too.

/// `restore --certs`: the backup's certificate directory put back in place.
pub(crate) mod certs;
/// The copy, each byte of the backup read once and checked as it is copied.
pub(crate) mod copy;
/// What makes a seeded copy a mirror, and what of the leader's it must not keep.
pub(crate) mod follower;
/// Links the backup followed (a layer on another disk), restored as links.
pub(crate) mod linked;
/// The leader's mirrors asked for their nexus indexes before a restore.
pub(crate) mod mirrors;
/// `restore --dry-run`: the restore's steps, taking none.
pub(crate) mod plan;
/// Roles (leader, mirror) and nexus indexes of the directory and the backup.
pub(crate) mod roles;
/// `seed-mirror`: a new mirror of a leader made from its backup.
pub(crate) mod seed;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;

use self::certs::Placed;
use self::linked::Linked;
use crate::base::durable::Durability;
use crate::base::exit::{fail, Code};
use crate::base::fault;
use crate::base::fsutil::{self, human};
use crate::base::heldir::{self, HeldDir};
use crate::base::pathtext::Escaped;
use crate::base::pathtext::{self, shell_word};
use crate::base::xattrs;
use crate::engine::manifest::{path_of, Manifest};
use crate::engine::scan::{self, Item};
use crate::engine::telepath;
use crate::engine::workers;
use crate::host::holders;
use crate::instance::certdir;
use crate::instance::config;
use crate::instance::config::InstanceOverrides;
use crate::instance::dirs::Dirs;
use crate::instance::kept;
use crate::instance::lock;
use crate::instance::record::{self, Event, Made, Recorder};
use crate::instance::repository;
use crate::instance::status::Kind;
use crate::service::preflight;
use crate::service::swap::{rolled_back_error, Steps, Swap, Swapped};

/// A staging copy that is removed unless it was swapped in.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Staging {
    /// `PARENT/.DIRNAME.synbackup-TAG.PID`, removed when dropped unless disarmed.
    fn beside(dir: &Path, tag: &str) -> Staging {
        Staging {
            path: staging_path(dir, tag),
            armed: true,
        }
    }
}

/// Remove the staging copies beside `dir` left by restores that no longer run
/// (killed, or the host lost power, during the copy: the directory itself was
/// never touched, but the unfinished copy takes room the next restore needs).
/// Only `.DIRNAME.synbackup-restoring.PID` directories, never a link, owned by
/// the user this restore runs as, whose PID no longer runs; each removal logged.
fn remove_stale_staging(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let prefix = sibling_name(dir, ".", ".synbackup-restoring.");
    let prefix = prefix.as_encoded_bytes();
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .as_encoded_bytes()
            .strip_prefix(prefix)
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = e.path();
        let ours = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if !ours || pid == std::process::id() || crate::base::process::alive(pid) {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => log::warn!(
                "removed {}, the unfinished copy of a restore that no longer runs (pid {pid})",
                path.escaped()
            ),
            Err(e) => log::error!("could not remove {}: {e}", path.escaped()),
        }
    }
}

/// `PARENT/.DIRNAME.synbackup-TAG.PID`: where a staging copy beside `dir` goes.
fn staging_path(dir: &Path, tag: &str) -> PathBuf {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    parent.join(sibling_name(
        dir,
        ".",
        &format!(".synbackup-{tag}.{}", std::process::id()),
    ))
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed && fs::symlink_metadata(&self.path).is_ok() {
            let removed = if self.path.is_dir() {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
            match removed {
                Ok(()) => log::info!("removed the unfinished copy {}", self.path.escaped()),
                Err(e) => log::error!("could not remove {}: {e}", self.path.escaped()),
            }
        }
    }
}

/// What an operator does about a link planted above where a restore writes.
const FIX_LINK: &str =
    "replace it with the directory it points to, or restore into a path without it";

/// The directories a copy writes into, held by descriptor (`base::heldir`) and
/// found by the path they stand for: a name is created beneath its parent's
/// descriptor, never through a link another user planted in a parent (the
/// service directory's parent, the disk of a linked layer, may be theirs).
#[derive(Default)]
struct Held(std::collections::HashMap<PathBuf, std::rc::Rc<HeldDir>>);

impl Held {
    /// The directory `path` is in, and its name there.
    fn parent_of<'p>(&self, path: &'p Path) -> Result<(std::rc::Rc<HeldDir>, &'p std::ffi::OsStr)> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let d = self
            .0
            .get(parent)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} is not held", parent.escaped()))?;
        Ok((d, heldir::name_of(path)))
    }

    /// Hold `path`'s parent (opened from `/`, refusing a planted link on the way).
    fn hold_parent(&mut self, path: &Path) -> Result<()> {
        let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let std::collections::hash_map::Entry::Vacant(e) = self.0.entry(parent) {
            let d = HeldDir::open_trusted(e.key(), None, FIX_LINK, &mut Vec::new())?;
            e.insert(std::rc::Rc::new(d));
        }
        Ok(())
    }

    /// Make the directory `path` (0700 until its metadata) and hold it.
    fn make_dir(&mut self, path: &Path) -> Result<()> {
        let (parent, name) = self.parent_of(path)?;
        parent.mkdir(name)?;
        let d = parent.sub(Path::new(name))?;
        self.0.insert(path.to_path_buf(), std::rc::Rc::new(d));
        Ok(())
    }

    fn get(&self, path: &Path) -> Result<std::rc::Rc<HeldDir>> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} is not held", path.escaped()))
    }
}

/// Copy the backup tree into `dst` (new), checking hashes against the manifest;
/// the data of the links the backup followed into their targets' staging copies,
/// the links themselves recreated (`linked`). Every name is made beneath a held
/// directory's descriptor ([`Held`]).
fn copy_tree(backup: &Path, dst: &Path, manifest: &Manifest, links: &[Linked]) -> Result<u64> {
    let checker = copy::Checker::new(backup, manifest)?;
    let plan = scan::scan(backup, &scan::compile_skipdirs(&[])?)?;
    let mut held = Held::default();
    held.hold_parent(dst)?;
    held.make_dir(dst)?;
    fault::point("restore-staging-held")?;
    for o in links.iter().filter_map(|l| l.to.as_ref()) {
        held.hold_parent(&o.staging)?;
    }
    // Durable as a backup is: one syncfs of each filesystem written once
    // everything is written (files, directories, links, metadata), reporting any
    // write error since now; an fsync per file (and per directory) where it cannot.
    let mut syncs = vec![(Durability::begin(dst, false)?, dst.to_path_buf())];
    for o in links.iter().filter_map(|l| l.to.as_ref()) {
        let parent = o.path.parent().unwrap_or(Path::new("/"));
        syncs.push((Durability::begin(parent, false)?, o.staging.clone()));
    }
    let sync = &syncs[0].0;
    let mut bytes = 0;
    let copy_file = |held: &Held, rel: &Path, dp: &Path, meta: &fs::Metadata| -> Result<u64> {
        crate::base::interrupt::check()?;
        let sp = backup.join(rel);
        let sf = File::open(&sp).with_context(|| format!("cannot read {}", sp.escaped()))?;
        let (parent, name) = held.parent_of(dp)?;
        let df = parent.create_new_readable(name)?;
        let data_bytes = checker.copy_file(rel, &sf, &df, dp)?;
        // The engine's metadata copy: owner, mode, times and xattrs/ACLs.
        fsutil::copy_meta_fd(&df, dp, meta, true, &xattrs::read(&sf, &sp)?)?;
        sync.file_done(&df, dp)?;
        Ok(data_bytes)
    };
    let make_link = |held: &Held, p: &Path, target: &Path, meta: &fs::Metadata| -> Result<()> {
        let (parent, name) = held.parent_of(p)?;
        parent.symlink(target, name)?;
        parent.link_meta(name, meta)
    };
    for item in &plan.items {
        let (Item::Dir { rel, meta } | Item::Env { rel, meta, .. } | Item::File { rel, meta }) =
            item
        else {
            if let Item::Symlink { rel, target, meta } = item {
                if let Some(p) = linked::dest(links, dst, rel) {
                    make_link(&held, &p, target, meta)?;
                }
            }
            continue;
        };
        if let Some(l) = linked::link_at(links, rel) {
            // The link the backup followed, as it was; its data (if any) to its
            // target's staging copy, below.
            make_link(&held, &dst.join(rel), &l.target, meta)?;
        }
        let Some(p) = linked::dest(links, dst, rel) else {
            continue;
        };
        match item {
            Item::Dir { .. } => held.make_dir(&p)?,
            Item::Env { rel, .. } => {
                held.make_dir(&p)?;
                let data_rel = rel.join("data.mdb");
                let meta = fs::symlink_metadata(backup.join(&data_rel))?;
                bytes += copy_file(&held, &data_rel, &p.join("data.mdb"), &meta)?;
                checker.env_copied(rel, &p, held.get(&p)?.file())?;
            }
            _ => bytes += copy_file(&held, rel, &p, meta)?,
        }
    }
    // The environments read on the copy; the nexus there unless a followed link
    // took it elsewhere.
    let nexus = Path::new("slabs/nexus.lmdb");
    let copy = held.get(dst)?;
    checker.finish(match linked::dest(links, dst, nexus) {
        Some(p) if p == dst.join(nexus) => Some((dst, copy.file())),
        _ => None,
    })?;
    for item in plan.items.iter().rev() {
        if let Item::Dir { rel, meta } | Item::Env { rel, meta, .. } = item {
            if let Some(p) = linked::dest(links, dst, rel) {
                let d = held.get(&p)?;
                fsutil::copy_meta_fd(
                    d.file(),
                    &p,
                    meta,
                    true,
                    &workers::source_xattrs(&backup.join(rel))?,
                )?;
            }
        }
    }
    fsutil::copy_meta_fd(
        held.get(dst)?.file(),
        dst,
        &fs::metadata(backup)?,
        true,
        &workers::source_xattrs(backup)?,
    )?;
    for (sync, root) in &syncs {
        if root.is_dir() {
            sync.tree_done(root)?;
        }
        sync.commit()?;
    }
    // The copies are swapped in by path: each must still be what was written.
    let mut roots = vec![dst.to_path_buf()];
    roots.extend(
        links
            .iter()
            .filter_map(|l| l.to.as_ref())
            .map(|o| o.staging.clone())
            .filter(|p| held.0.contains_key(p)),
    );
    for root in &roots {
        still_held(&*held.get(root)?, root)?;
    }
    Ok(bytes)
}

/// Fail unless `path` is still the directory `d` holds (not renamed away, no link
/// put in its place by whoever can write its parent).
fn still_held(d: &HeldDir, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let held = d
        .file()
        .metadata()
        .with_context(|| format!("cannot stat {}", path.escaped()))?;
    let now = fs::symlink_metadata(path).ok();
    if now.is_some_and(|m| m.is_dir() && m.dev() == held.dev() && m.ino() == held.ino()) {
        return Ok(());
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    Err(fail(
        Code::BadPath,
        format!(
            "{} was replaced while the restore wrote it (renamed away, or a link put in its place): nothing was swapped in; find who writes in {}, make it root's and not writable by others, and restore again",
            path.escaped(),
            parent.escaped()
        ),
    ))
}

/// Whether something runs on `dir`, and a description of what.
fn in_use(dir: &Path) -> Option<String> {
    if telepath::answers(&dir.join("sock")) {
        return Some(format!(
            "a service answers on {}",
            dir.join("sock").escaped()
        ));
    }
    holders::holders(Path::new("/proc"), dir)
        .first()
        .map(|h| format!("pid {} ({}) holds {}", h.pid, h.comm, h.path.escaped()))
}

/// What to restore, and where.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The backup to restore: a path, or with `instance` a name in its backup root.
    pub(crate) backup: PathBuf,
    /// The service directory (default with `instance`: its SYNBACKUP_SERVICE_DIR).
    pub(crate) dir: Option<PathBuf>,
    /// The unit to stop and start again.
    pub(crate) unit: Option<String>,
    /// The instance whose directory, unit and lock to use.
    pub(crate) instance: Option<String>,
    /// Restore a backup of another cell (`cell.guid` differs from DIR's).
    pub(crate) force: bool,
    /// Also restore the certificate directory the backup carries.
    pub(crate) certs: bool,
    /// Where to (default: the instance's or unit's, else where it was backed up from).
    pub(crate) cert_dir: Option<PathBuf>,
    /// Restore this snapshot (or `latest`) of the instance's offsite repository.
    pub(crate) offsite: Option<String>,
    /// A step run on the staged copy before the swap (`--to`: the archived nexus
    /// entries applied; the commands layer composes it).
    pub(crate) before_swap: Option<std::rc::Rc<dyn BeforeSwap>>,
}

/// A step that changes the staged copy before it is swapped in.
pub(crate) trait BeforeSwap: std::fmt::Debug {
    /// Change the copy at `staged`; the summary's addition and the status's details.
    fn run(&self, staged: &Path) -> Result<(String, serde_json::Value)>;
}

/// Where a restore goes, resolved from the request and the instance.
struct Target {
    backup: PathBuf,
    dir: PathBuf,
    unit: Option<String>,
    stop_timeout: Duration,
    health_timeout: Duration,
    /// `--certs`: where the certificate directory goes (None: where the backup
    /// found it).
    certs: Option<Option<PathBuf>>,
    /// The backup is a copy made for this restore (fetched from offsite): it is
    /// moved into place instead of copied.
    disposable: bool,
    /// The instance's SYNBACKUP_KEEP_ASIDE (with `--instance`): how long the
    /// nightly run keeps the directory a restore moved aside.
    keep_aside: Option<Duration>,
    /// Run on the staged copy before the swap.
    before_swap: Option<std::rc::Rc<dyn BeforeSwap>>,
    /// The instance's mirrors (SYNBACKUP_MIRRORS), asked before a leader's restore.
    mirrors: Vec<crate::engine::teleurl::Endpoint>,
}

/// What a restore reports (the status's details; paths as `pathtext::key`s).
#[derive(Debug, Default, serde::Serialize)]
struct Outcome {
    backup: String,
    bytes: u64,
    kept_previous: Option<String>,
    rolled_back: bool,
    /// The swap began: the service was stopped or the directory moved.
    changed: bool,
    service_was_running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    certs: Option<Placed>,
    /// The links the backup followed, restored as links (`linked`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    linked: Vec<linked::Report>,
    /// The roles of the directory and the backup, and the role settings kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<RolesOutcome>,
    /// The directory was ahead of the backup (nexus indexes).
    #[serde(skip_serializing_if = "Option::is_none")]
    nexus: Option<roles::NexusCheck>,
    /// What the step before the swap did (`--to`: the archived nexus entries applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    before_swap: Option<serde_json::Value>,
    /// The leader's mirrors asked for their nexus indexes (`mirrors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    mirrors: Option<mirrors::MirrorsCheck>,
}

/// The roles a restore compared and the settings it kept.
#[derive(Debug, serde::Serialize)]
struct RolesOutcome {
    directory: roles::Side,
    backup: roles::Side,
    /// `FILE:KEY kept` (the directory's) and `FILE:KEY dropped` (the backup's).
    settings: Vec<String>,
}

/// `synbackup restore BACKUP [DIR] [--unit UNIT | --instance INSTANCE] [--force]`,
/// recorded in the journal and (with an instance) in its `restore` status.
pub(crate) fn restore(dirs: &Dirs, args: &Request) -> Result<()> {
    let instance = args.instance.as_deref().unwrap_or("");
    let rec = Recorder::begin(dirs, instance, Kind::Restore).journaled();
    // Errors here (no such instance, the lock held) leave the last status alone.
    let (mut target, _lock) = resolve(dirs, args, &mut |inst| {
        lock::acquire_for(&dirs.lock_dir, inst, "restore").map(Some)
    })?;
    let mut outcome = Outcome::default();
    // The fetched offsite copy (removed at the end unless it was moved into place).
    let mut _fetched: Option<Staging> = None;
    let result = (|| {
        // The snapshot restored: its full id, also when asked for `latest`.
        let mut snapshot = None;
        if let Some(id) = &args.offsite {
            let (staging, chosen) = fetch_offsite(dirs, args, id, &mut target)?;
            _fetched = Some(staging);
            snapshot = Some(chosen);
        }
        let text = restore_into(&target, args.force, &mut outcome)?;
        Ok(match (&args.offsite, snapshot) {
            (Some(asked), Some(id)) => {
                outcome.backup = format!("offsite:{id}");
                let short: String = id.chars().take(8).collect();
                if *asked == id || asked.len() < id.len() && id.starts_with(asked.as_str()) {
                    format!("{text} (offsite snapshot {short})")
                } else {
                    format!("{text} (offsite snapshot {short}, the {asked})")
                }
            }
            _ => text,
        })
    })();
    // Moved into place: only its empty staging directory is left to remove.
    if let Some(f) = _fetched.as_mut().filter(|_| result.is_ok()) {
        if fs::remove_dir(&f.path).is_ok() {
            f.armed = false;
        }
    }
    let made = Made {
        backup: Some(outcome.backup.clone()),
        bytes: outcome.bytes,
        details: serde_json::to_value(&outcome).ok(),
        ..Made::default()
    };
    match result {
        Ok(text) => rec.succeeded(made, Event::text(text)),
        Err(e) => {
            let e = if outcome.rolled_back {
                let what = format!(
                    "{} is as it was before the restore and the service was started again",
                    shell_word(&target.dir)
                );
                rolled_back_error(e, &what)
            } else {
                e
            };
            let made = Made {
                backup: None,
                bytes: 0,
                ..made
            };
            let result = record::ended_as(&e, outcome.changed, outcome.rolled_back, true);
            rec.failed_as(result, &e, made, None);
            Err(crate::base::exit::reported(&e))
        }
    }
}

/// `restic restore` the instance's offsite snapshot `id` into a staging directory
/// beside the service directory; the target's backup becomes the copy in it.
/// Returns the staging directory (removed when its guard drops) and the full id of
/// the snapshot restored.
fn fetch_offsite(
    dirs: &Dirs,
    args: &Request,
    id: &str,
    target: &mut Target,
) -> Result<(Staging, String)> {
    let name = args.instance.as_deref().ok_or_else(|| {
        fail(
            Code::Usage,
            "restore --offsite needs --instance (its repository is in the instance's config)",
        )
    })?;
    let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
    let repo = repository::Opened::open(&inst)?;
    let parent = target.dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| {
        fail(
            Code::BadPath,
            format!("cannot create {}: {e}", parent.escaped()),
        )
    })?;
    let staging = Staging::beside(&target.dir, "offsite");
    fs::create_dir(&staging.path).map_err(|e| fsutil::write_error(&staging.path, e))?;
    fs::set_permissions(&staging.path, fs::Permissions::from_mode(0o700))?;
    // restic fsyncs nothing it restores: made durable here, before it is
    // verified and moved into place (one syncfs reporting write errors since now).
    let sync = Durability::begin(&staging.path, false)?;
    let cell = cell_guid(&target.dir);
    let (backup, chosen) = repo.fetch(id, cell.as_deref(), &staging.path)?;
    target.backup = backup;
    sync.tree_done(&staging.path)?;
    sync.commit()?;
    fault::point("restore-offsite-fetched")?;
    target.disposable = true;
    Ok((staging, chosen))
}

/// A way to take the instance's lock: the restore's waits for it, a dry run's
/// only looks (`lock::for_dry_run`).
type TakeLock<'a> = dyn FnMut(&config::Instance) -> Result<Option<lock::InstanceLock>> + 'a;

/// The backup, directory, unit and timeouts, from the request and the instance's
/// configuration (whose lock, taken by `take_lock`, is held from here on).
fn resolve(
    dirs: &Dirs,
    args: &Request,
    take_lock: &mut TakeLock<'_>,
) -> Result<(Target, Option<lock::InstanceLock>)> {
    let mut mirrors = Vec::new();
    let (dir, unit, timeouts, root, lock, cert_dir, keep_aside) = match &args.instance {
        Some(name) => {
            let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
            let lock = take_lock(&inst)?;
            let cert_dir = match &args.cert_dir {
                Some(d) => Some(d.clone()),
                None if args.certs => certdir::resolve_cert_dir(&inst)?,
                None => None,
            };
            mirrors = inst.sources.mirrors.clone();
            (
                args.dir.clone().unwrap_or(inst.service_dir.clone()),
                inst.service_unit.clone(),
                (inst.stop_timeout, inst.health_timeout),
                Some(inst.backup_root.clone()),
                lock,
                cert_dir,
                Some(inst.keep_aside),
            )
        }
        None => {
            let dir = args.dir.clone().ok_or_else(|| {
                fail(
                    Code::Usage,
                    "restore needs DIR, or --instance to take it from the instance's configuration",
                )
            })?;
            let t = Duration::from_secs(300);
            let cert_dir = match (&args.cert_dir, &args.unit) {
                (Some(d), _) => Some(d.clone()),
                (None, Some(u)) if args.certs => Some(certdir::unit_cert_dir(u)?),
                _ => None,
            };
            (dir, args.unit.clone(), (t, t), None, None, cert_dir, None)
        }
    };
    let cert_dir = cert_dir
        .map(|d| std::path::absolute(&d).with_context(|| format!("bad directory {}", d.escaped())))
        .transpose()?;
    let dir =
        std::path::absolute(&dir).with_context(|| format!("bad directory {}", dir.escaped()))?;
    // Through a symlink: swap beside the real directory.
    let dir = fs::canonicalize(&dir).unwrap_or(dir);
    Ok((
        Target {
            backup: backup_path(&args.backup, root.as_deref()),
            dir,
            unit,
            stop_timeout: timeouts.0,
            health_timeout: timeouts.1,
            certs: args.certs.then_some(cert_dir),
            disposable: false,
            keep_aside,
            before_swap: args.before_swap.clone(),
            mirrors,
        },
        lock,
    ))
}

/// `arg` as a path, or, when no such path exists and it is a bare name, the backup
/// of that name in the instance's backup root (the name `list` prints).
fn backup_path(arg: &Path, root: Option<&Path>) -> PathBuf {
    if let Some(root) = root {
        if !arg.exists() && arg.components().count() == 1 && root.join(arg).exists() {
            return root.join(arg);
        }
    }
    arg.to_path_buf()
}

/// The cell's GUID in a directory, if it has one.
fn cell_guid(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("cell.guid"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Refuse a backup of another cell unless `force`: it would replace this service
/// with a different one.
fn check_same_cell(backup: &Path, dir: &Path, force: bool) -> Result<()> {
    let (Some(theirs), Some(ours)) = (cell_guid(backup), cell_guid(dir)) else {
        return Ok(());
    };
    if theirs == ours {
        return Ok(());
    }
    let what = format!(
        "{} is a backup of cell {theirs}, but {} is cell {ours}",
        backup.escaped(),
        dir.escaped()
    );
    if !force {
        return Err(fail(
            Code::BadPath,
            format!("{what}: restoring it replaces this service with another; pass --force if that is what you mean"),
        ));
    }
    log::warn!("{what}; restoring anyway (--force)");
    Ok(())
}

fn restore_into(t: &Target, force: bool, outcome: &mut Outcome) -> Result<String> {
    let t0 = Instant::now();
    let dir = &t.dir;
    let backup = resolve_backup(t)?;
    outcome.backup = pathtext::key(&backup);
    // 1. What changes nothing and fails fast.
    let running = check_before_restore(t)?;
    check_same_cell(&backup, dir, force)?;
    let ours = roles::of_dir(dir)?;
    if let Some(ours) = ours {
        let theirs = roles::of_backup(&backup, &Manifest::load(&backup)?)?;
        roles::check_roles(dir, &ours, &backup, &theirs, force)?;
        outcome.roles = Some(RolesOutcome {
            directory: ours,
            backup: theirs,
            settings: Vec::new(),
        });
    }
    // 2. Check (a copy fetched for this restore and moved into place: verify); the
    // links the backup followed, checked where their data goes.
    let manifest = if t.disposable {
        copy::checked_in_place(&backup)?
    } else {
        copy::checked_manifest(&backup)?
    };
    let stamp = Utc::now().format(kept::STAMP).to_string();
    let mut links = linked::plan(&backup, &manifest, dir, &stamp)?;
    let cert_target = match &t.certs {
        Some(to) => Some(cert_target(&backup, &manifest, to.as_deref(), dir)?),
        None => None,
    };
    if let Some(target) = &cert_target {
        // Before anything changes; checked again where the files are written.
        certs::refuse_planted_links(target)?;
        if !t.disposable {
            copy::check_carried_certs(&backup, &manifest)?;
        }
    }
    // 3. Space, then the staging copy while the service still runs.
    let staged = stage(t, &backup, &manifest, &links, outcome)?;
    if let Some(r) = outcome.roles.as_mut() {
        outcome.nexus = roles::compare_nexus(dir, &r.directory, &r.backup);
        // Before the stop: the mirrors still follow the leader as it is.
        outcome.mirrors = mirrors::compare(&t.mirrors, dir, Some(&r.directory), Some(&r.backup));
        r.settings = roles::keep_dir_settings(dir, &staged.copy.path)?;
        if !r.settings.is_empty() {
            log::info!(
                "the restored directory keeps {}'s role settings: {}",
                dir.display(),
                r.settings.join(", ")
            );
        }
    }
    let mut before_swap_line = None;
    if let Some(step) = &t.before_swap {
        let (line, details) = step.run(&staged.copy.path)?;
        before_swap_line = Some(line);
        outcome.before_swap = Some(details);
    }
    fault::point("restore-before-swap")?;
    // 4. Stop (if it runs and we were told which unit), swap, certificates, start.
    outcome.service_was_running = running;
    if let (Some(u), false) = (&t.unit, running) {
        log::info!("{u} was stopped before the restore and is left stopped");
    }
    let swap = Swap {
        dir,
        new: &staged.copy.path,
        keep_marker: kept::PRE_RESTORE,
        keep_stamp: &stamp,
        unit: t.unit.as_deref().filter(|_| running),
        stop_timeout: t.stop_timeout,
        health_timeout: t.health_timeout,
        fault_prefix: "restore",
    };
    let mut finish = Finish {
        links: &mut links,
        stop_timeout: t.stop_timeout,
        certs: PutCerts {
            source: &staged.cert_source,
            manifest: &manifest,
            target: cert_target.as_deref(),
            stamp: &stamp,
            placed: None,
        },
    };
    let mut done = Swapped::default();
    outcome.changed = true;
    let result = swap.run(&mut done, &mut finish);
    let certs = finish.certs;
    outcome.rolled_back = done.rolled_back;
    result?;
    outcome.linked = links.iter().map(Linked::report).collect();
    if let (Some(u), Some(h)) = (swap.unit, &done.health) {
        log::info!("{u} runs on the restored directory ({h})");
    }
    // 5. What to tell the operator.
    let certs_line = certs.placed.as_ref().map(|p| {
        for (file, kept) in &p.replaced {
            println!(
                "{} differed from the backup: the old one is kept as {}",
                shell_word(&pathtext::path(file)),
                shell_word(&pathtext::path(kept))
            );
        }
        format!("; {}", p.line())
    });
    outcome.certs = certs.placed;
    if done.kept {
        outcome.kept_previous = Some(pathtext::key(&done.aside));
        let u = t.unit.as_deref().unwrap_or("UNIT");
        println!(
            "to undo: systemctl stop {u}; mv {d} {r} && mv {a} {d}; systemctl start {u}",
            d = shell_word(dir),
            r = shell_word(&dir.with_file_name(sibling_name(
                dir,
                "",
                &format!(".restored-{stamp}")
            ))),
            a = shell_word(&done.aside)
        );
    }
    for o in links.iter().filter_map(|l| l.to.as_ref()) {
        if o.existed {
            println!(
                "and the data of the link to {p}: mv {p} {r} && mv {a} {p}",
                p = shell_word(&o.path),
                r = shell_word(&o.path.with_file_name(sibling_name(
                    &o.path,
                    "",
                    &format!(".restored-{stamp}")
                ))),
                a = shell_word(&o.aside)
            );
        }
    }
    let nexus_line = outcome.nexus.as_ref().map(|n| {
        format!(
            "; the cell went back from nexus index {} to {}{}",
            n.directory_index,
            n.backup_index,
            match outcome.roles.as_ref().map(|r| &r.directory.role) {
                Some(roles::Role::Leader) => ": re-seed its mirrors from it",
                _ => "",
            }
        )
    });
    Ok(format!(
        "restored {} into {} ({} in {:.1} s){}{}{}{}",
        shell_word(&backup),
        shell_word(dir),
        human(outcome.bytes),
        t0.elapsed().as_secs_f64(),
        before_swap_line.or(nexus_line).unwrap_or_default(),
        certs_line.unwrap_or_default(),
        if done.kept {
            format!(
                "; the previous directory is kept at {}",
                shell_word(&done.aside)
            )
        } else {
            String::new()
        },
        match (&t.unit, running) {
            (Some(u), false) => format!("; {u} was stopped before the restore and is left stopped"),
            _ => String::new(),
        }
    ))
}

/// The name of a sibling of `dir`: its own name, byte for byte (a name that is not
/// UTF-8 stays what it is), between `prefix` and `suffix`.
fn sibling_name(dir: &Path, prefix: &str, suffix: &str) -> std::ffi::OsString {
    let mut name = std::ffi::OsString::from(prefix);
    name.push(dir.file_name().unwrap_or_default());
    name.push(suffix);
    name
}

/// The backup's real path; refused when missing or overlapping the directory.
fn resolve_backup(t: &Target) -> Result<PathBuf> {
    let backup = fs::canonicalize(&t.backup).map_err(|e| {
        fail(
            Code::BadPath,
            format!(
                "backup {} cannot be used: {e}; give its path, or with --instance its name as `synbackup list` prints it",
                t.backup.escaped()
            ),
        )
    })?;
    if t.dir.starts_with(&backup) || backup.starts_with(&t.dir) {
        return Err(fail(
            Code::BadPath,
            format!(
                "{} and {} overlap; restore elsewhere",
                backup.escaped(),
                t.dir.escaped()
            ),
        ));
    }
    Ok(backup)
}

/// Step 1: the unit runs on the directory, it is not a mount point, and a service
/// that uses it can be stopped (a unit was named). Whether the service runs.
fn check_before_restore(t: &Target) -> Result<bool> {
    let dir = &t.dir;
    let state = match &t.unit {
        Some(u) => Some(preflight::check_unit(u, dir)?),
        None => None,
    };
    if dir.exists() {
        preflight::refuse_mount_point(dir, "restore")?;
    }
    let busy = in_use(dir);
    match (&busy, &t.unit, state.as_deref()) {
        (Some(what), None, _) => {
            return Err(fail(
                Code::Service,
                format!("{} is in use ({what}); stop the service first, or pass --unit UNIT so restore stops and restarts it", dir.escaped()),
            ));
        }
        // A mistyped template instance exists as far as systemd is concerned, but
        // stopping it would stop nothing: say so now, not after a stop timeout.
        (Some(what), Some(u), Some(st)) if st != "active" => {
            return Err(fail(
                Code::Service,
                format!("{} is in use ({what}) but {u} is {st}: it is not the unit that runs there; fix SYNBACKUP_SERVICE_UNIT (or --unit)", dir.escaped()),
            ));
        }
        _ => {}
    }
    Ok(busy.is_some() || matches!(state.as_deref(), Some("active" | "activating")))
}

/// The restored copy beside the directory, ready to swap in.
struct Staged {
    /// The copy (removed unless it was swapped in).
    copy: Staging,
    /// Where `--certs` reads the carried certificate directory from: the backup,
    /// or for a disposable one, a sibling it was moved out to.
    cert_source: PathBuf,
    /// That sibling (removed at the end).
    _cert_staging: Option<Staging>,
    /// The copies beside the targets of followed links (removed unless swapped in).
    _link_stagings: Vec<Staging>,
}

/// Step 3: room for the copy, then the copy (a disposable backup, fetched for this
/// restore and checked just now, is moved instead).
fn stage(
    t: &Target,
    backup: &Path,
    manifest: &Manifest,
    links: &[Linked],
    outcome: &mut Outcome,
) -> Result<Staged> {
    let dir = &t.dir;
    let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| {
        fail(
            Code::BadPath,
            format!("cannot create {}: {e}", parent.escaped()),
        )
    })?;
    linked::check_space(links)?;
    remove_stale_staging(dir);
    let room = room(t, backup, manifest, links)?;
    refuse_no_room(t, &room)?;
    let need = room.need;
    let staging = Staging::beside(dir, "restoring");
    // Where `--certs` reads the carried certificate directory from: the backup,
    // or for a disposable one, a sibling it is moved out to (removed at the end).
    let mut cert_source = backup.to_path_buf();
    let mut _cert_staging = None;
    // The copies at the targets of followed links, removed unless swapped in.
    let _link_stagings: Vec<Staging> = links
        .iter()
        .filter_map(|l| l.to.as_ref())
        .map(|o| Staging {
            path: o.staging.clone(),
            armed: true,
        })
        .collect();
    // A fetched copy is moved into place whole, unless links it followed put
    // some of its data on other disks: then it is copied like any backup.
    if t.disposable && links.is_empty() {
        // Checked just now and made for this restore: moved, not copied again.
        fs::rename(backup, &staging.path).with_context(|| {
            format!(
                "cannot move {} to {}",
                backup.escaped(),
                staging.path.escaped()
            )
        })?;
        outcome.bytes = need;
        let carried = staging.path.join(crate::engine::manifest::CERTS_DIR);
        if carried.exists() {
            // Not part of the service directory (a normal restore's copy skips it).
            let aside = Staging::beside(dir, "offsite-certs");
            fs::create_dir(&aside.path).map_err(|e| fsutil::write_error(&aside.path, e))?;
            fs::set_permissions(&aside.path, fs::Permissions::from_mode(0o700))?;
            let to = aside.path.join(crate::engine::manifest::CERTS_DIR);
            fs::rename(&carried, &to).with_context(|| {
                format!("cannot move {} to {}", carried.escaped(), to.escaped())
            })?;
            cert_source = aside.path.clone();
            _cert_staging = Some(aside);
        }
    } else {
        log::info!("copying {} to {}", backup.escaped(), staging.path.escaped());
        outcome.bytes = copy_tree(backup, &staging.path, manifest, links)?;
    }
    Ok(Staged {
        copy: staging,
        cert_source,
        _cert_staging,
        _link_stagings,
    })
}

/// The room the staging copy takes beside the directory, and what is free there.
struct Room {
    /// What the copy needs there (the data of followed links goes elsewhere).
    need: u64,
    free: u64,
    /// Where it was measured: the directory's parent, or (not there yet, in a dry
    /// run) its nearest existing ancestor.
    at: PathBuf,
}

/// Step 3's measure: the backup's bytes less what goes to the targets of followed
/// links (checked there by `linked::check_space`), against what is free beside
/// the directory.
fn room(t: &Target, backup: &Path, manifest: &Manifest, links: &[Linked]) -> Result<Room> {
    // What goes to the targets of followed links needs room there, not here.
    let elsewhere: u64 = links
        .iter()
        .filter_map(|l| l.to.as_ref())
        .map(|o| o.bytes)
        .sum();
    let need: u64 = manifest.files.iter().map(|f| f.size).sum::<u64>() - elsewhere;
    // What the copy takes there: holes stay holes.
    let need = need.min(copy::allocated_here(backup, manifest, links, &t.dir));
    let mut at = t.dir.parent().unwrap_or(Path::new("/"));
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    Ok(Room {
        need,
        free: fsutil::free_space(at)?,
        at: at.to_path_buf(),
    })
}

/// Refuse a copy that does not fit (a fetched copy is moved, not copied).
fn refuse_no_room(t: &Target, room: &Room) -> Result<()> {
    let Room { need, free, at } = room;
    if need > free && !t.disposable {
        return Err(fail(
            Code::NoSpace,
            format!(
                "not enough space in {}: the restore needs {} ({need} bytes), {} ({free} bytes) is free; free space first",
                at.escaped(),
                human(*need),
                human(*free)
            ),
        ));
    }
    Ok(())
}

/// The restore's steps after the swap: the data of followed links into their
/// targets' places, then the certificates; both taken back on a rollback.
struct Finish<'a, 'b> {
    links: &'b mut [Linked],
    stop_timeout: Duration,
    certs: PutCerts<'a>,
}

impl Steps for Finish<'_, '_> {
    fn after_swap(&mut self) -> Result<()> {
        for l in self.links.iter_mut() {
            l.swap_in(self.stop_timeout)?;
        }
        fault::point("restore-after-links")?;
        self.certs.after_swap()
    }

    fn undo(&mut self) {
        self.certs.undo();
        for l in self.links.iter_mut().rev() {
            l.undo();
        }
    }
}

/// `--certs`: the certificate directory put back after the swap (the service reads
/// it when it starts), taken back on a rollback.
struct PutCerts<'a> {
    source: &'a Path,
    manifest: &'a Manifest,
    target: Option<&'a Path>,
    stamp: &'a str,
    placed: Option<Placed>,
}

impl Steps for PutCerts<'_> {
    fn after_swap(&mut self) -> Result<()> {
        if let Some(to) = self.target {
            self.placed = Some(certs::put_back(self.source, self.manifest, to, self.stamp)?);
            fault::point("restore-after-certs")?;
        }
        Ok(())
    }

    fn undo(&mut self) {
        if let Some(p) = self.placed.as_mut() {
            p.undo();
        }
    }
}

/// Where `--certs` puts the certificate directory of the backup (`to`, else where
/// the backup found it); refused inside the service directory or the backup.
fn cert_target(backup: &Path, m: &Manifest, to: Option<&Path>, dir: &Path) -> Result<PathBuf> {
    let info = certs::carried(backup, m)?;
    let target = to
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path_of(&info.source));
    let real = fs::canonicalize(&target).unwrap_or(target.clone());
    if real.starts_with(dir) || real.starts_with(backup) {
        return Err(fail(
            Code::BadPath,
            format!(
                "the certificate directory {} is inside {} or {}; give another with --cert-dir",
                target.escaped(),
                dir.escaped(),
                backup.escaped()
            ),
        ));
    }
    log::info!(
        "the certificate directory of {} goes to {}",
        backup.escaped(),
        target.escaped()
    );
    Ok(target)
}
