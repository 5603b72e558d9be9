// SPDX-License-Identifier: Apache-2.0
//! `synbackup seed-mirror --instance LEADER NEWDIR`: a new mirror of an
//! instance's leader made from the leader's newest good backup, instead of
//! Synapse's clone (`_initCloneCell`, which makes the leader write a whole new
//! backup, `backuprunning` set, and stream it as a tar.gz to every new mirror).
//! The leader is only asked two questions (`getCellInfo`, and the first entry of
//! `getNexusChanges` from the backup's index); once started, the mirror asks it
//! for the entries since the backup, nothing else.
//!
//! Steps, the ones that change nothing first:
//! 1. NEWDIR must not exist or be an empty directory, outside the leader's
//!    directory and the instance's backup root; with `--unit`, the unit exists
//!    and is not running;
//! 2. the backup: `--backup NAME|PATH`, else the newest complete one of the
//!    instance that is not marked damaged; it must be of the leader's cell
//!    (`cell.guid`); its nexus index (manifest `cell.nexus_index`, else its files);
//! 3. the leader (SYNBACKUP_LEADER, else SYNBACKUP_SERVICE_DIR) must answer on
//!    its socket, be the leader, be at or past that index, and still hold its
//!    nexus entry at that index: a mirror at index N asks for the changes from N
//!    (`runMirrorLoop`) and stops "out of sync" when the first it gets is later
//!    (the log was culled past N). Refused with exit 14 otherwise;
//! 4. the backup copied with the restore's checked copy (each byte read once,
//!    checked against the manifest, every environment read to its end), into a
//!    staging place (a sibling of NEWDIR, or inside NEWDIR when it exists empty,
//!    e.g. a mount point);
//! 5. the copy made a follower (`follower`): the leader's role, identity and
//!    listener keys dropped, `nexslog:en: true` and `mirror:` (2.x) / `parent:`
//!    (3.x) set to the upstream (`--upstream`, else `cell://LEADER_DIR`), the
//!    leader's `prov.done` and AHA host key removed; owners set (`--owner`);
//! 6. published as NEWDIR (renamed into place; durably);
//! 7. with `--unit`: the unit started, and the mirror waited for (bounded by
//!    `--wait`) until it answers, is a mirror of the leader's cell and has applied
//!    every change before the leader's index at step 3 (`waitNexsOffs`, what
//!    Synapse's own handoff waits with). Without it: the line says how to start it.
//!
//! A failure before step 6 leaves nothing (the staging copy is removed) and
//! NEWDIR as it was; the backup and the leader are never changed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::follower::{self, Changes};
use super::{copy, copy_tree, Staging};
use crate::base::exit::{fail, Code};
use crate::base::fsutil::{self, human};
use crate::base::pathtext::{shell_word, Escaped};
use crate::base::units::format_duration;
use crate::engine::manifest::Manifest;
use crate::engine::mirror::{self, Holds, LeaderAt};
use crate::engine::{cellinfo, nexus, telepath};
use crate::instance::catalog::{self, State};
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::service::preflight;

/// What `seed-mirror` is asked.
#[derive(Debug, Clone)]
pub(crate) struct SeedRequest {
    /// The leader's instance.
    pub(crate) instance: String,
    /// The new mirror's service directory.
    pub(crate) dir: PathBuf,
    /// A backup's name in the instance's backup root, or a path.
    pub(crate) backup: Option<PathBuf>,
    /// The telepath URL the mirror follows (default `cell://LEADER_DIR`).
    pub(crate) upstream: Option<String>,
    /// `USER[:GROUP]` to own the mirror's files (default: the backup's owners).
    pub(crate) owner: Option<String>,
    /// The unit that runs the new mirror: started, and waited for.
    pub(crate) unit: Option<String>,
    /// How long to wait for the started mirror to catch up.
    pub(crate) wait: Duration,
    pub(crate) dry_run: bool,
}

/// Everything checked before anything is written.
struct Plan {
    dir: PathBuf,
    /// NEWDIR exists (empty): the copy is staged inside it and moved up.
    dir_exists: bool,
    backup: PathBuf,
    manifest: Manifest,
    backup_index: u64,
    leader: LeaderAt,
    major: u64,
    upstream: String,
    owner: Option<(u32, u32)>,
    need: u64,
}

/// `synbackup seed-mirror`.
pub(crate) fn seed(dirs: &Dirs, r: &SeedRequest) -> Result<()> {
    let t0 = Instant::now();
    let inst = config::load(&dirs.config_dir, &r.instance, &InstanceOverrides::default())?;
    // Held for the copy: no prune removes the backup under it.
    let _lock = if r.dry_run {
        let (held, busy) = lock::for_dry_run(&dirs.lock_dir, &inst, "seed-mirror")?;
        if let Some(line) = busy {
            println!("{line}");
        }
        held
    } else {
        Some(lock::acquire_for(&dirs.lock_dir, &inst, "seed-mirror")?)
    };
    let plan = make_plan(&inst, r)?;
    if r.dry_run {
        print_plan(&plan, r);
        return Ok(());
    }
    let (bytes, changes) = build(&plan)?;
    let summary = format!(
        "seeded a mirror of {} in {} from {} (nexus index {}; the leader was at {}: {} entries to apply) ({} in {:.1} s); {}",
        plan.leader.at,
        shell_word(&plan.dir),
        shell_word(&plan.backup),
        plan.backup_index,
        plan.leader.nexus_index,
        plan.leader.nexus_index - plan.backup_index,
        human(bytes),
        t0.elapsed().as_secs_f64(),
        changes_line(&changes)
    );
    log::info!("{summary}");
    match &r.unit {
        Some(u) => {
            let started = Instant::now();
            let ready = start_and_wait(u, &plan, r.wait)?;
            println!(
                "{u} runs the mirror in {}: it applied the leader's changes up to index {} ({:.1} s after it was started, nexus index {} now)",
                shell_word(&plan.dir),
                plan.leader.nexus_index,
                started.elapsed().as_secs_f64(),
                ready.nexus_index
            );
        }
        None => println!(
            "start it as the service's user: python -m synapse.servers.cortex {} (or its systemd unit); it follows {} and catches up from nexus index {}",
            shell_word(&plan.dir),
            plan.upstream,
            plan.backup_index
        ),
    }
    Ok(())
}

/// Steps 1 to 3, and the room the copy needs.
fn make_plan(inst: &config::Instance, r: &SeedRequest) -> Result<Plan> {
    let dir = std::path::absolute(&r.dir)
        .with_context(|| format!("bad directory {}", r.dir.escaped()))?;
    let leader_at = inst.sources.leader.clone();
    let dir_exists = check_new_dir(&dir, leader_at.dir(), &inst.backup_root)?;
    // The copy is written by path, as root, in NEWDIR (when it exists) or beside
    // it: another user who can write there could put a link in its place.
    let written_in = if dir_exists {
        dir.join(".synbackup-seeding")
    } else {
        dir.clone()
    };
    if written_in.parent().is_some_and(Path::exists) {
        preflight::refuse_open_parent(&written_in, "seed-mirror")?;
    }
    if let Some(u) = &r.unit {
        let state = preflight::check_unit(u, &dir)?;
        if matches!(state.as_str(), "active" | "activating" | "reloading") {
            return Err(fail(
                Code::Service,
                format!("{u} is {state}: it already runs a service; give the unit of the new mirror (not started yet)"),
            ));
        }
    }
    let owner = r.owner.as_deref().map(parse_owner).transpose()?;
    let backup = choose_backup(inst, r.backup.as_deref())?;
    let manifest = copy::checked_manifest(&backup)?;
    let backup_index = index_of(&backup, &manifest)?;
    let leader = mirror::leader_at_start(&leader_at).map_err(|e| {
        fail(
            Code::Service,
            format!(
                "{e}; seed-mirror needs the running leader (set SYNBACKUP_LEADER to its directory)"
            ),
        )
    })?;
    check_same_cell(&backup, &manifest, &leader)?;
    check_leader_holds(&leader, &backup, backup_index)?;
    let major = cellinfo::stored_version(&backup)
        .ok()
        .flatten()
        .map(|v| v.major())
        .ok_or_else(|| {
            fail(
                Code::BadPath,
                format!(
                    "{} does not record the Synapse release that made it (slabs/cell.lmdb cell:info): cannot tell mirror: (2.x) from parent: (3.x)",
                    backup.escaped()
                ),
            )
        })?;
    let upstream = match (&r.upstream, leader_at.dir()) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) => format!("cell://{}", d.display()),
        (None, None) => {
            return Err(fail(
                Code::Usage,
                format!(
                    "the leader of {} is the URL {leader_at} (SYNBACKUP_LEADER): give --upstream with the URL the new mirror is to follow (it is written into its cell.yaml)",
                    inst.name
                ),
            ))
        }
    };
    let need = manifest.files.iter().map(|f| f.size).sum::<u64>();
    let need = need.min(copy::allocated_here(&backup, &manifest, &[], &dir));
    let mut at = dir.as_path();
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let free = fsutil::free_space(at)?;
    if need > free {
        return Err(fail(
            Code::NoSpace,
            format!(
                "not enough space in {}: the mirror needs {} ({need} bytes), {} ({free} bytes) is free; free space first",
                at.escaped(),
                human(need),
                human(free)
            ),
        ));
    }
    Ok(Plan {
        dir,
        dir_exists,
        backup,
        manifest,
        backup_index,
        leader,
        major,
        upstream,
        owner,
        need,
    })
}

/// NEWDIR: absent (its parent is made) or an empty directory (true), never a
/// link, never inside the leader's directory or the backup root.
fn check_new_dir(dir: &Path, leader: Option<&Path>, backup_root: &Path) -> Result<bool> {
    let resolve = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let real = resolve(dir);
    let others = [
        leader.map(|l| (l, "the leader's directory")),
        Some((backup_root, "the backup root")),
    ];
    for (other, what) in others.into_iter().flatten() {
        let other = resolve(other);
        if real.starts_with(&other) || other.starts_with(&real) {
            return Err(fail(
                Code::BadPath,
                format!(
                    "{} overlaps {what} {}; give a new directory for the mirror",
                    dir.escaped(),
                    other.escaped()
                ),
            ));
        }
    }
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(fail(
            Code::BadPath,
            format!("cannot use {}: {e}", dir.escaped()),
        )),
        Ok(m) if !m.is_dir() => Err(fail(
            Code::BadPath,
            format!(
                "{} exists and is not a directory; give a new (or empty) directory for the mirror",
                dir.escaped()
            ),
        )),
        Ok(_) => {
            let mut entries =
                fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.escaped()))?;
            if let Some(e) = entries.next() {
                let name = e?.file_name();
                return Err(fail(
                    Code::BadPath,
                    format!(
                        "{} is not empty (it holds {}): seed-mirror never writes over a directory; give a new or empty one",
                        dir.escaped(),
                        Path::new(&name).escaped()
                    ),
                ));
            }
            Ok(true)
        }
    }
}

/// `USER[:GROUP]` as ids (the user's group when none is given).
fn parse_owner(text: &str) -> Result<(u32, u32)> {
    use nix::unistd::{Group, User};
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let bad = |what: &str| {
        fail(
            Code::Usage,
            format!("--owner {text}: no such {what} on this host; give USER[:GROUP]"),
        )
    };
    let u = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| bad("user"))?;
    let gid = match group {
        Some(g) => Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| bad("group"))?
            .gid
            .as_raw(),
        None => u.gid.as_raw(),
    };
    Ok((u.uid.as_raw(), gid))
}

/// `--backup`, else the instance's newest complete backup not marked damaged.
fn choose_backup(inst: &config::Instance, asked: Option<&Path>) -> Result<PathBuf> {
    if let Some(a) = asked {
        let p = super::backup_path(a, Some(&inst.backup_root));
        return fs::canonicalize(&p).map_err(|e| {
            fail(
                Code::BadPath,
                format!(
                    "backup {} cannot be used: {e}; give its path, or its name as `synbackup list {}` prints it",
                    a.escaped(),
                    inst.name
                ),
            )
        });
    }
    let entries = catalog::scan(&inst.backup_root, &inst.name)?;
    entries
        .iter()
        .rev()
        .find(|e| matches!(e.state, State::Verified | State::Complete))
        .map(|e| e.path.clone())
        .ok_or_else(|| {
            fail(
                Code::BadPath,
                format!(
                    "instance {} has no good backup in {} to seed a mirror from; run `synbackup run {}` first",
                    inst.name,
                    inst.backup_root.escaped(),
                    inst.name
                ),
            )
        })
}

/// The nexus index the backup holds: what its cell said when frozen, else its files.
fn index_of(backup: &Path, m: &Manifest) -> Result<u64> {
    if let Some(c) = &m.cell {
        return Ok(c.nexus_index);
    }
    nexus::stored_index(backup)?.ok_or_else(|| {
        fail(
            Code::BadPath,
            format!(
                "{} records no nexus index (no cell in its manifest, no nexus in its files): it cannot seed a mirror",
                backup.escaped()
            ),
        )
    })
}

/// The backup is of the leader's cell (a mirror shares it).
fn check_same_cell(backup: &Path, m: &Manifest, leader: &LeaderAt) -> Result<()> {
    let theirs = m.cell.as_ref().map(|c| c.iden.clone()).or_else(|| {
        fs::read_to_string(backup.join("cell.guid"))
            .ok()
            .map(|s| s.trim().to_string())
    });
    match theirs {
        Some(i) if i == leader.iden => Ok(()),
        other => Err(fail(
            Code::BadPath,
            format!(
                "{} is a backup of cell {}, but the leader {} is cell {}: a mirror must be of the leader's cell; give one of its backups",
                backup.escaped(),
                other.as_deref().unwrap_or("(unknown)"),
                leader.at,
                leader.iden
            ),
        )),
    }
}

/// The leader is at or past the backup's index and still holds its entries from
/// there (exit 14 otherwise).
fn check_leader_holds(leader: &LeaderAt, backup: &Path, index: u64) -> Result<()> {
    if index > leader.nexus_index {
        return Err(fail(
            Code::BadPath,
            format!(
                "{} is at nexus index {index}, ahead of the leader {} at {}: the leader was restored to an older state; seed from a backup taken since",
                backup.escaped(),
                leader.at,
                leader.nexus_index
            ),
        ));
    }
    let holds =
        mirror::leader_holds_from(&leader.at, index, leader.nexus_index).with_context(|| {
            format!(
                "cannot ask the leader {} for its nexus entries from {index}",
                leader.at
            )
        })?;
    let since = match holds {
        Holds::Yes => return Ok(()),
        Holds::From(first) => format!("its log begins at {first}"),
        Holds::None => "it holds none from there (culled, or nexslog:en is off)".to_string(),
    };
    Err(fail(
        Code::NexusGone,
        format!(
            "the leader {} no longer holds nexus entry {index}, which a mirror seeded from {} needs first ({since}; the leader is at {}): take a new backup (synbackup run) and seed from it",
            leader.at,
            backup.escaped(),
            leader.nexus_index
        ),
    ))
}

/// Steps 4 to 6: the checked copy, made a follower, owned, published. The bytes
/// copied and the config changes.
fn build(plan: &Plan) -> Result<(u64, Changes)> {
    let staging = if plan.dir_exists {
        Staging {
            path: plan
                .dir
                .join(format!(".synbackup-seeding.{}", std::process::id())),
            armed: true,
        }
    } else {
        let parent = plan.dir.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(|e| {
            fail(
                Code::BadPath,
                format!("cannot create {}: {e}", parent.escaped()),
            )
        })?;
        Staging::beside(&plan.dir, "seeding")
    };
    let mut staging = staging;
    log::info!(
        "copying {} to {} ({})",
        plan.backup.escaped(),
        staging.path.escaped(),
        human(plan.need)
    );
    let bytes = copy_tree(&plan.backup, &staging.path, &plan.manifest, &[])?;
    let changes = follower::make_follower(&staging.path, plan.major, &plan.upstream)?;
    if let Some((uid, gid)) = plan.owner {
        set_owner(&staging.path, uid, gid)?;
    }
    crate::base::fault::point("seed-before-publish")?;
    publish(plan, &staging.path)?;
    staging.armed = false;
    Ok((bytes, changes))
}

/// Every file and directory under `root` (links themselves) given `uid:gid`.
fn set_owner(root: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {}", root.escaped()))?;
    let meta = fs::symlink_metadata(root)?;
    if meta.is_dir() {
        for e in fs::read_dir(root).with_context(|| format!("cannot read {}", root.escaped()))? {
            set_owner(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Step 6: the staged copy becomes NEWDIR: renamed into place, or (NEWDIR an
/// existing empty directory) its entries moved up, `cell.guid` last (a directory
/// without it is no cell to Synapse), NEWDIR given the copy's owner and mode.
fn publish(plan: &Plan, staged: &Path) -> Result<()> {
    let parent = plan.dir.parent().unwrap_or(Path::new("/"));
    if !plan.dir_exists {
        fs::rename(staged, &plan.dir).with_context(|| {
            format!(
                "cannot rename {} to {}",
                staged.escaped(),
                plan.dir.escaped()
            )
        })?;
        return fsutil::fsync_dir(parent);
    }
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(staged)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort_by_key(|n| n == "cell.guid");
    for n in &names {
        let (from, to) = (staged.join(n), plan.dir.join(n));
        fs::rename(&from, &to)
            .with_context(|| format!("cannot rename {} to {}", from.escaped(), to.escaped()))?;
    }
    let meta = fs::symlink_metadata(staged)?;
    fs::remove_dir(staged).with_context(|| format!("cannot remove {}", staged.escaped()))?;
    std::os::unix::fs::chown(&plan.dir, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("cannot chown {}", plan.dir.escaped()))?;
    fs::set_permissions(&plan.dir, meta.permissions())
        .with_context(|| format!("cannot chmod {}", plan.dir.escaped()))?;
    fsutil::fsync_dir(&plan.dir)
}

/// Step 7: start the unit, wait until the mirror answers, then until it applied
/// every change before the leader's index at the start.
fn start_and_wait(unit: &str, plan: &Plan, wait: Duration) -> Result<mirror::MirrorReady> {
    let deadline = Instant::now() + wait;
    crate::host::systemd::start_unit(unit, wait)?;
    let sock = plan.dir.join("sock");
    while !telepath::answers(&sock) {
        crate::base::interrupt::check()?;
        if Instant::now() > deadline {
            return Err(fail(
                Code::Service,
                format!(
                    "{unit} started, but the mirror did not answer on {} within {} (--wait); see journalctl -u {unit}",
                    sock.escaped(),
                    format_duration(wait)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    mirror::wait_for_mirror(&plan.dir, &plan.leader, left.max(Duration::from_secs(1)))
        .map_err(|e| fail(Code::Service, format!("{e}; see journalctl -u {unit}")))
}

/// What the follower rewrite changed, in one clause.
fn changes_line(c: &Changes) -> String {
    let mut parts = vec![format!("cell.yaml: {}", c.set.join(", "))];
    if !c.dropped_keys.is_empty() {
        parts.push(format!(
            "dropped the leader's {}",
            c.dropped_keys.join(", ")
        ));
    }
    if !c.removed_files.is_empty() {
        parts.push(format!(
            "removed the leader's {}",
            c.removed_files.join(", ")
        ));
    }
    parts.join("; ")
}

/// `--dry-run`: the plan, changing nothing.
fn print_plan(p: &Plan, r: &SeedRequest) {
    println!(
        "would seed a mirror of {} (cell {}, at nexus index {}) into {}{}",
        p.leader.at,
        p.leader.iden,
        p.leader.nexus_index,
        shell_word(&p.dir),
        if p.dir_exists { " (empty, kept)" } else { "" }
    );
    println!(
        "from {} (nexus index {}): the leader still holds its entries from there; the mirror applies {} of them",
        shell_word(&p.backup),
        p.backup_index,
        p.leader.nexus_index - p.backup_index
    );
    println!(
        "would copy {} (checked against the backup's manifest), then set in cell.yaml: {}",
        human(p.need),
        follower::follower_lines(p.major, &p.upstream).join(", ")
    );
    println!(
        "would drop the leader's keys among {} and its prov.done and AHA host key, if any",
        follower::DROPPED.join(", ")
    );
    if let Some((uid, gid)) = p.owner {
        println!("would give every file to {uid}:{gid}");
    }
    match &r.unit {
        Some(u) => println!(
            "would start {u} and wait up to {} for the mirror to reach index {}",
            format_duration(r.wait),
            p.leader.nexus_index
        ),
        None => println!("would leave it stopped (no --unit)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_absent_or_empty_and_apart() {
        let t = tempfile::tempdir().unwrap();
        let (leader, root) = (t.path().join("leader"), t.path().join("backups"));
        fs::create_dir_all(&leader).unwrap();
        fs::create_dir_all(&root).unwrap();
        assert!(!check_new_dir(&t.path().join("m"), Some(&leader), &root).unwrap());
        fs::create_dir(t.path().join("e")).unwrap();
        assert!(check_new_dir(&t.path().join("e"), Some(&leader), &root).unwrap());
        fs::write(t.path().join("e/x"), "").unwrap();
        let e = check_new_dir(&t.path().join("e"), Some(&leader), &root).unwrap_err();
        assert!(format!("{e}").contains("is not empty (it holds x)"), "{e}");
        let e = check_new_dir(&leader.join("m"), Some(&leader), &root).unwrap_err();
        assert!(
            format!("{e}").contains("overlaps the leader's directory"),
            "{e}"
        );
        let e = check_new_dir(&root.join("m"), Some(&leader), &root).unwrap_err();
        assert!(format!("{e}").contains("overlaps the backup root"), "{e}");
    }
}
