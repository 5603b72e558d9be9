// SPDX-License-Identifier: Apache-2.0
//! Retention applied to an instance's backup root: what the policy no longer keeps
//! is removed, and temporaries of runs that died. Only directories that carry our
//! name pattern and manifest, or our temporaries, are ever removed; a backup is first
//! renamed to a temporary name, so a removal cut short never leaves a half backup
//! that looks complete. The newest verified backup and the newest backup a drill
//! booted are never removed, whatever the policy says: pruning must not leave an
//! instance with nothing to restore, nor with no backup known to boot. A backup a
//! verification found damaged fills no slot; it is removed once a newer good backup
//! is kept, and kept for inspection until then.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::engine::damaged;
use crate::engine::partial::PARTIAL_MARK;
use crate::instance::catalog::{self, State};
use crate::instance::config::Instance;
use crate::instance::{retention, tested};

/// Apply retention; remove temporaries when `own_lock` (no run can be live).
/// `state_dir` holds the drills' records. Returns the names of the complete
/// backups it keeps (on a dry run: would keep), for what depends on them (the
/// nexus archive's retention).
pub(crate) fn prune_kept(
    inst: &Instance,
    state_dir: &Path,
    newest: Option<&str>,
    dry_run: bool,
    own_lock: bool,
) -> Result<Vec<String>> {
    let entries = catalog::scan(&inst.backup_root, &inst.name)?;
    // A backup found damaged fills no slot (below: removed once a newer good one
    // is kept).
    let complete: Vec<_> = entries
        .iter()
        .filter(|e| !matches!(e.state, State::Partial | State::Damaged))
        .collect();
    let times: Vec<_> = complete.iter().map(|e| e.time).collect();
    let reasons = retention::reasons(&times, inst.keep);
    let newest_verified = complete
        .iter()
        .rev()
        .find(|e| e.state == State::Verified)
        .map(|e| e.name.clone());
    let names: Vec<String> = complete.iter().map(|e| e.name.clone()).collect();
    let newest_tested = tested::newest_passed_of(&tested::load(state_dir, &inst.name), &names);
    let verb = if dry_run { "would remove" } else { "removing" };
    let mut kept = Vec::new();
    let mut newest_kept = None;
    for (e, why) in complete.iter().zip(reasons) {
        let why = if !why.is_empty() {
            why.join(", ")
        } else if Some(e.name.as_str()) == newest {
            "just made".to_string()
        } else if Some(&e.name) == newest_verified.as_ref() {
            "the newest verified backup".to_string()
        } else if Some(&e.name) == newest_tested.as_ref() {
            "the newest backup a drill booted".to_string()
        } else {
            String::new()
        };
        if !why.is_empty() {
            kept.push(e.name.clone());
            newest_kept = Some(e.name.clone());
            // A dry run is asked to explain itself; a real prune only on -v.
            if dry_run {
                tell(dry_run, &format!("keeping {} ({why})", e.name));
            } else {
                log::debug!("keeping {} ({why})", e.name);
            }
            continue;
        }
        tell(
            dry_run,
            &format!(
                "{verb} {}: kept by no rule (keep last {}, daily {}, weekly {}, monthly {})",
                e.path.display(),
                inst.keep.last,
                inst.keep.daily,
                inst.keep.weekly,
                inst.keep.monthly
            ),
        );
        if !dry_run {
            remove_backup(&e.path, &e.name)?;
        }
    }
    // The catalog is in order, so "newer" is "after in it" (two backups of one
    // second are told apart by their number).
    let newest_kept_at = newest_kept.and_then(|n| entries.iter().position(|e| e.name == n));
    for (at, e) in entries.iter().enumerate() {
        if e.state != State::Damaged {
            continue;
        }
        let newer_kept = newest_kept_at.is_some_and(|k| k > at);
        prune_damaged(e, newer_kept, dry_run)?;
    }
    for e in entries.iter().filter(|e| e.state == State::Partial) {
        if !own_lock {
            tell(
                dry_run,
                &format!(
                    "leaving {}: a run of {} is in progress",
                    e.path.display(),
                    inst.name
                ),
            );
            continue;
        }
        tell(
            dry_run,
            &format!(
                "{verb} {}: temporary of a run that did not finish",
                e.path.display()
            ),
        );
        if !dry_run {
            remove_tree(&e.path)?;
        }
    }
    Ok(kept)
}

/// A backup found damaged: removed once a newer backup that is not is kept (never
/// before: a device that fails every read must not make retention empty the root);
/// until then kept for inspection.
fn prune_damaged(e: &catalog::Entry, newer_kept: bool, dry_run: bool) -> Result<()> {
    let found = damaged::recorded(&e.path)
        .map(|d| format!("found damaged {}: {}", d.when, d.problem))
        .unwrap_or_else(|| "found damaged".to_string());
    if newer_kept {
        let verb = if dry_run { "would remove" } else { "removing" };
        tell(
            dry_run,
            &format!(
                "{verb} {} ({found}; a newer good backup is kept)",
                e.path.display()
            ),
        );
        if !dry_run {
            remove_backup(&e.path, &e.name)?;
        }
    } else {
        let line = format!(
            "keeping {} for inspection ({found}; no newer good backup yet)",
            e.path.display()
        );
        if dry_run {
            tell(dry_run, &line);
        } else {
            log::warn!("{line}");
        }
    }
    Ok(())
}

/// A dry run's answer is its output (stdout, to pipe or read); a real prune logs
/// what it does (stderr or the journal).
pub(crate) fn tell(dry_run: bool, line: &str) {
    if dry_run {
        println!("{line}");
    } else {
        log::info!("{line}");
    }
}

/// Rename a backup to a temporary name, then delete it.
fn remove_backup(path: &Path, name: &str) -> Result<()> {
    let doomed = path.with_file_name(format!(".{name}{PARTIAL_MARK}removing"));
    match fs::rename(path, &doomed) {
        Ok(()) => remove_tree(&doomed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()), // a concurrent prune won
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}
