// SPDX-License-Identifier: Apache-2.0
//! `synbackup restore ... --dry-run`: what the restore would check, copy, stop,
//! keep aside and start, with the room its copy needs beside the directory,
//! changing nothing: no lock waited for, no unit stopped, no file written (not in
//! the directory, the backup or the state directory), no status recorded.
//!
//! It runs the restore's own steps up to the first that would change something
//! (`resolve`, `resolve_backup`, `check_before_restore`, `check_same_cell`, the
//! roles, `linked::plan`, `cert_target`, `room`), so a refusal is the restore's,
//! with its exit code. Two steps are told rather than taken: the verification of
//! the backup (it reads every byte and records its finding in the backup: the dry
//! run names what it would check and a damage already recorded), and with
//! `--offsite` the fetch: the snapshot is chosen as the restore would choose it
//! (`latest` resolved to its id) and its size read from the repository, but
//! nothing is fetched, so the checks of the fetched copy (its cell, roles,
//! verification) are not made.

use std::path::Path;

use anyhow::Result;
use chrono::Utc;

use super::{
    cell_guid, cert_target, certs, check_before_restore, check_same_cell, linked, refuse_no_room,
    resolve, resolve_backup, roles, room, staging_path, Request, Target,
};
use crate::base::fsutil::{self, human};
use crate::base::plan::Plan;
use crate::base::units::format_duration;
use crate::engine::damaged;
use crate::engine::manifest::Manifest;
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::{kept, lock, repository};

/// Print the plan of the restore `args` asks for; `busy` are the lines of the
/// instances whose lock is held (a restore by path), from `lock::for_dry_run`.
pub(crate) fn dry_run(dirs: &Dirs, args: &Request, busy: Vec<String>) -> Result<()> {
    let mut plan = Plan::new(args.instance.as_deref(), "restore");
    for line in busy {
        plan.say(line);
    }
    let result = (|| {
        let mut held = None;
        let (target, _lock) = resolve(dirs, args, &mut |inst| {
            let (lock, line) = lock::for_dry_run(&dirs.lock_dir, inst, "restore")?;
            held = line;
            Ok(lock)
        })?;
        if let Some(line) = held {
            plan.say(line);
        }
        match &args.offsite {
            Some(id) => plan_offsite(dirs, args, id, &target, &mut plan),
            None => plan_local(&target, args.force, &mut plan),
        }
    })();
    plan.finish(result)
}

/// A restore of a local backup.
fn plan_local(t: &Target, force: bool, plan: &mut Plan) -> Result<()> {
    let dir = &t.dir;
    let backup = resolve_backup(t)?;
    let running = check_before_restore(t)?;
    check_same_cell(&backup, dir, force)?;
    let manifest = Manifest::load(&backup)?;
    if let Some(ours) = roles::of_dir(dir)? {
        let theirs = roles::of_backup(&backup, &manifest)?;
        roles::check_roles(dir, &ours, &backup, &theirs, force)?;
        if let Some(check) = super::mirrors::compare(&t.mirrors, dir, Some(&ours), Some(&theirs)) {
            for a in check.asked.iter().filter(|a| a.nexus_index.is_some()) {
                plan.say(format!(
                    "asked the mirror {} before the stop: nexus index {}, the backup's {}",
                    a.mirror,
                    a.nexus_index.unwrap_or_default(),
                    check.backup_index
                ));
            }
            for line in check.lines() {
                plan.say(format!("would warn: {line}"));
            }
        }
    }
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    plan.say(format!(
        "would verify {} against its manifest ({} files, {}){}",
        backup.display(),
        manifest.files.len(),
        human(total),
        match damaged::recorded(&backup) {
            Some(d) => format!(
                "; it was found damaged {} ({}): the restore refuses it unless it verifies now",
                d.when, d.problem
            ),
            None => String::new(),
        }
    ));
    let stamp = Utc::now().format(kept::STAMP).to_string();
    let links = linked::plan(&backup, &manifest, dir, &stamp)?;
    for o in links.iter().filter_map(|l| l.to.as_ref()) {
        plan.say(format!(
            "would write the data of the link to {} ({}) beside it{}",
            o.path.display(),
            human(o.bytes),
            if o.existed {
                format!(", keeping what is there at {}", o.aside.display())
            } else {
                String::new()
            }
        ));
    }
    if let Some(to) = &t.certs {
        let target = cert_target(&backup, &manifest, to.as_deref(), dir)?;
        certs::refuse_planted_links(&target)?;
        plan.say(format!(
            "would put the certificate directory the backup carries back at {} (a file there that differs kept as NAME.synbackup-old-{stamp})",
            target.display()
        ));
    }
    let room = room(t, &backup, &manifest, &links)?;
    let fits = linked::check_space(&links).and_then(|()| refuse_no_room(t, &room));
    plan.say(format!(
        "would copy it to {} while the service runs: {} needed, {} free in {}{}",
        staging_path(dir, "restoring").display(),
        human(room.need),
        human(room.free),
        room.at.display(),
        if fits.is_ok() {
            ""
        } else {
            ": NOT ENOUGH ROOM"
        }
    ));
    fits?;
    plan_swap(t, running, &stamp, plan);
    Ok(())
}

/// A restore of an offsite snapshot: which one, its size, the room beside the
/// directory; then the swap as for a local backup.
fn plan_offsite(dirs: &Dirs, args: &Request, id: &str, t: &Target, plan: &mut Plan) -> Result<()> {
    let name = args.instance.as_deref().unwrap_or_default();
    let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
    let repo = repository::Opened::open(&inst)?;
    let s = repo.choose(id, cell_guid(&t.dir).as_deref())?;
    let size = repo.restore_size(&s.id)?;
    let mut at = t.dir.parent().unwrap_or(Path::new("/"));
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let free = fsutil::free_space(at)?;
    plan.say(format!(
        "would fetch offsite snapshot {} ({}, backup {} of {}, from {}) from {} into {}: {} restored, {} free in {}{}",
        s.short_id,
        s.id,
        s.paths
            .first()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        s.time,
        s.hostname,
        repository::redacted(&repo.o.repository),
        staging_path(&t.dir, "offsite").display(),
        size.map(human).unwrap_or_else(|| "?".into()),
        human(free),
        at.display(),
        if size.is_some_and(|n| n > free) {
            ": NOT ENOUGH ROOM, restic would fail"
        } else {
            ""
        }
    ));
    plan.say(
        "would then check the fetched copy (its cell, roles and verification) as a local backup's: a dry run fetches nothing, so those checks are not made",
    );
    let running = check_before_restore(t)?;
    plan_swap(
        t,
        running,
        &Utc::now().format(kept::STAMP).to_string(),
        plan,
    );
    Ok(())
}

/// The stop, the swap (the name the directory is kept under) and the start.
fn plan_swap(t: &Target, running: bool, stamp: &str, plan: &mut Plan) {
    let dir = &t.dir;
    plan.say(match (&t.unit, running) {
        (Some(u), true) => format!(
            "would stop {u} and wait up to {} until no process holds the directory's files",
            format_duration(t.stop_timeout)
        ),
        (Some(u), false) => format!("{u} is not running: nothing to stop, and it is left stopped"),
        (None, _) => format!("nothing runs on {}: nothing to stop", dir.display()),
    });
    if dir.exists() {
        plan.say(format!(
            "would move {} aside to {} ({}) and the copy into its place",
            dir.display(),
            kept::free_aside(dir, kept::PRE_RESTORE, stamp).display(),
            match t.keep_aside {
                Some(d) => format!(
                    "kept: the nightly run removes it after SYNBACKUP_KEEP_ASIDE, {}",
                    format_duration(d)
                ),
                None => "kept until removed by hand".into(),
            }
        ));
    } else {
        plan.say(format!(
            "would put the copy at {} (nothing there to keep aside)",
            dir.display()
        ));
    }
    if let (Some(u), true) = (&t.unit, running) {
        plan.say(format!(
            "would start {u} and wait up to {} for its health check (on any failure: roll back to the original directory)",
            format_duration(t.health_timeout)
        ));
    }
    plan.say(
        "would remove nothing kept aside (a restore never does; the nightly run expires them)",
    );
}
