// SPDX-License-Identifier: Apache-2.0
//! An instance's offsite copies, through restic: after `run` has published a
//! verified backup, upload it (`restic backup`, tagged `synbackup`,
//! `instance=NAME`, `cell=GUID`, the backup's own time as the snapshot time, the
//! backup's name as a relative path so a restore lands where asked), then forget
//! what the instance's offsite policy no longer keeps (`--group-by tags`: the same
//! group from any host; `--prune` only when the last prune is older than
//! `SYNBACKUP_OFFSITE_PRUNE`). The result is the instance's `offsite` status and
//! metrics (`synbackup-INSTANCE-offsite.prom`).
//!
//! An offsite failure never touches the local backup: the run's own status stays
//! a success and `run` exits 12. Nothing is initialised implicitly: a missing
//! repository is an error that names `synbackup offsite init`.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::base::exit::{code_of, fail, Code};
use crate::base::fsutil::human;
use crate::host::restic;
use crate::instance::config::{Instance, Keep};
use crate::instance::dirs::Dirs;
use crate::instance::offsite_copies;
use crate::instance::record::{now_str, Event, Made, Recorder};
use crate::instance::repository::{
    explain, filter_tags, redacted, repo, settings, unlock_after_kill,
};
use crate::instance::status::{self, Kind};

/// The nexus archive's closed segments offsite (point-in-time recovery).
pub(crate) mod nexus;

/// What an upload did.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Uploaded {
    pub(crate) snapshot_id: String,
    /// Bytes of the backup the snapshot holds.
    pub(crate) snapshot_bytes: u64,
    /// What the upload added to the repository after deduplication.
    pub(crate) added_bytes: u64,
    pub(crate) upload_seconds: f64,
    /// Whether this run pruned the repository.
    pub(crate) pruned: bool,
    /// When the repository was last pruned (RFC 3339).
    pub(crate) last_prune: Option<String>,
    /// The snapshot of the nexus archive's closed segments made with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) nexus_archive_snapshot: Option<String>,
    /// The instance's snapshots after the retention (`None` when they could not
    /// be listed): what `offsite_copies` records.
    #[serde(skip)]
    pub(crate) held: Option<Vec<restic::Snapshot>>,
}

/// `restic forget` arguments for a policy (a zero count is left out).
pub(crate) fn forget_args(inst: &str, keep: &Keep, prune: bool) -> Vec<String> {
    let mut a = vec![
        "forget".to_string(),
        "--tag".into(),
        filter_tags(inst),
        "--group-by".into(),
        "tags".into(),
    ];
    for (flag, n) in [
        ("--keep-last", keep.last),
        ("--keep-daily", keep.daily),
        ("--keep-weekly", keep.weekly),
        ("--keep-monthly", keep.monthly),
    ] {
        if n > 0 {
            a.push(flag.into());
            a.push(n.to_string());
        }
    }
    if prune {
        a.push("--prune".into());
    }
    a
}

/// Whether a prune is due: never pruned, or the last prune older than `every`.
pub(crate) fn prune_due(
    last_prune: Option<&str>,
    every: std::time::Duration,
    now: DateTime<Utc>,
) -> bool {
    let Some(t) = last_prune.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) else {
        return true;
    };
    (now - t.with_timezone(&Utc))
        .to_std()
        .is_ok_and(|age| age >= every)
}

/// The last prune recorded in the instance's offsite status.
fn last_prune(dirs: &Dirs, inst: &str) -> Option<String> {
    status::load(&dirs.state_dir, inst, Kind::Offsite)
        .and_then(|s| s.details)
        .and_then(|d| d["last_prune"].as_str().map(String::from))
}

/// Upload the published backup at `backup` (made at `time`), then apply the
/// offsite retention; then the nexus archive at `archive`, when there is one
/// (`nexus`). Records nothing: [`record`] does.
pub(crate) fn upload(
    dirs: &Dirs,
    inst: &Instance,
    backup: &Path,
    time: DateTime<Utc>,
    archive: Option<&Path>,
) -> Result<Uploaded> {
    let o = settings(inst)?;
    let repo = repo(o)?;
    let t0 = Instant::now();
    let (parent, name) = match (backup.parent(), backup.file_name()) {
        (Some(p), Some(n)) => (p, n.to_string_lossy().into_owned()),
        _ => {
            return Err(fail(
                Code::Other,
                format!("{} has no parent", backup.display()),
            ))
        }
    };
    let guid = std::fs::read_to_string(backup.join("cell.guid"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "none".into());
    let time_arg = time.format("%Y-%m-%d %H:%M:%S").to_string();
    let tag_instance = format!("instance={}", inst.name);
    let tag_cell = format!("cell={guid}");
    log::info!(
        "copying {} to the offsite repository {}",
        backup.display(),
        redacted(&o.repository)
    );
    crate::base::fault::point("offsite-before-upload")?;
    let out = repo
        .run_with(
            "backup",
            &[
                "backup",
                "--json",
                "--tag",
                "synbackup",
                "--tag",
                &tag_instance,
                "--tag",
                &tag_cell,
                "--time",
                &time_arg,
                &name,
            ],
            Some(parent),
            |pid| log::debug!("restic backup runs as PID {pid}"),
        )
        .inspect_err(|e| unlock_after_kill(&repo, e))
        .map_err(|e| explain(e, &inst.name, &o.repository))?;
    let summary = restic::parse_backup_summary(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| {
            fail(
                Code::Offsite,
                "restic backup printed no summary: the upload may be incomplete; check with `synbackup offsite list`",
            )
        })?;
    let upload_seconds = t0.elapsed().as_secs_f64();
    let now = Utc::now();
    let previous_prune = last_prune(dirs, &inst.name);
    let prune = prune_due(previous_prune.as_deref(), o.prune_every, now);
    let args = forget_args(&inst.name, &o.keep, prune);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    repo.run("forget", &args, None)
        .inspect_err(|e| unlock_after_kill(&repo, e))
        .map_err(|e| explain(e, &inst.name, &o.repository))?;
    // What the repository holds now, for `list` (the copy is made either way).
    let tags = filter_tags(&inst.name);
    let held = repo
        .run("snapshots", &["snapshots", "--json", "--tag", &tags], None)
        .and_then(|out| restic::parse_snapshots(&String::from_utf8_lossy(&out.stdout)))
        .inspect_err(|e| {
            unlock_after_kill(&repo, e);
            log::warn!(
                "{}: could not list the offsite snapshots after the copy: {e:#}",
                inst.name
            );
        })
        .ok();
    let nexus_archive_snapshot = match archive {
        Some(dir) => {
            let id = nexus::upload(&repo, &inst.name, &guid, &time_arg, dir)
                .inspect_err(|e| unlock_after_kill(&repo, e))
                .map_err(|e| explain(e, &inst.name, &o.repository))?;
            if let Some(oldest) = held.as_ref().and_then(|h| h.first()) {
                nexus::forget_older(&repo, &inst.name, &oldest.time)
                    .inspect_err(|e| unlock_after_kill(&repo, e))
                    .map_err(|e| explain(e, &inst.name, &o.repository))?;
            }
            id
        }
        None => None,
    };
    Ok(Uploaded {
        snapshot_id: summary.snapshot_id,
        snapshot_bytes: summary.total_bytes_processed,
        added_bytes: summary.data_added,
        upload_seconds,
        pruned: prune,
        last_prune: if prune {
            Some(now_str(now))
        } else {
            previous_prune
        },
        nexus_archive_snapshot,
        held,
    })
}

/// The offsite copy of the backup just published (at `backup`, made at `time`),
/// recorded as the instance's `offsite` run: status, metrics, one journal line. A
/// failure keeps the last success and the last prune, leaves the local backup and
/// its success alone, and exits 12.
pub(crate) fn copy(
    dirs: &Dirs,
    inst: &Instance,
    backup: &Path,
    time: DateTime<Utc>,
    archive: Option<&Path>,
) -> Result<()> {
    let rec = Recorder::begin(dirs, &inst.name, Kind::Offsite);
    let result = upload(dirs, inst, backup, time, archive).map_err(|e| {
        if matches!(code_of(&e), Code::Other | Code::Usage) {
            fail(Code::Offsite, format!("{e:#}"))
        } else {
            e
        }
    });
    let name = backup
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let repository = inst
        .offsite
        .as_ref()
        .map(|o| redacted(&o.repository))
        .unwrap_or_default();
    match result {
        Ok(u) => {
            record_copies(dirs, inst, &name, &u, time);
            let mut details = serde_json::to_value(&u).unwrap_or_default();
            details["repository"] = repository.clone().into();
            let event = Event {
                fields: vec![
                    ("SYNBACKUP_BACKUP", name.clone()),
                    ("SYNBACKUP_SNAPSHOT", u.snapshot_id.clone()),
                ],
                text: format!(
                    "{}: copied {name} to {repository} as snapshot {} ({}, {} added) in {:.1} s{}",
                    inst.name,
                    &u.snapshot_id,
                    human(u.snapshot_bytes),
                    human(u.added_bytes),
                    u.upload_seconds,
                    if u.pruned { "; repository pruned" } else { "" }
                ),
            };
            let made = Made {
                backup: Some(name),
                bytes: u.added_bytes,
                details: Some(details),
                ..Made::default()
            };
            if let Err(e) = rec.succeeded(made, event) {
                log::error!("could not record the offsite copy of {}: {e:#}", inst.name);
            }
            Ok(())
        }
        Err(e) => {
            let prev = rec.previous().and_then(|p| p.details).unwrap_or_default();
            let made = Made {
                backup: Some(name.clone()),
                details: Some(serde_json::json!({
                    "repository": repository,
                    "last_prune": prev.get("last_prune").cloned(),
                    // What the last good copy held, so the metrics keep saying it.
                    "snapshot_bytes": prev.get("snapshot_bytes").cloned(),
                })),
                ..Made::default()
            };
            let event = Event {
                fields: vec![("SYNBACKUP_BACKUP", name.clone())],
                text: format!(
                    "{}: the local backup {name} is kept, but its offsite copy failed: {e:#}",
                    inst.name
                ),
            };
            rec.failed(&e, made, Some(event));
            Err(crate::base::exit::reported(&e))
        }
    }
}

/// Record which backups the repository holds (`offsite_copies`): what it listed
/// after the copy, else the last record with the snapshot just uploaded.
fn record_copies(dirs: &Dirs, inst: &Instance, name: &str, u: &Uploaded, time: DateTime<Utc>) {
    let all = match &u.held {
        Some(snaps) => offsite_copies::from_snapshots(snaps),
        None => {
            let mut all = offsite_copies::load(&dirs.state_dir, &inst.name);
            all.insert(
                name.to_string(),
                offsite_copies::OffsiteCopy {
                    snapshot_id: u.snapshot_id.clone(),
                    short_id: u.snapshot_id.chars().take(8).collect(),
                    time: now_str(time),
                },
            );
            all
        }
    };
    if let Err(e) = offsite_copies::save(&dirs.state_dir, &inst.name, &all) {
        log::error!(
            "could not record which backups of {} are offsite: {e:#}",
            inst.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_leaves_zero_counts_out_and_groups_by_tags() {
        let keep = Keep {
            last: 3,
            daily: 0,
            weekly: 4,
            monthly: 0,
        };
        assert_eq!(
            forget_args("c0", &keep, true).join(" "),
            "forget --tag synbackup,instance=c0 --group-by tags --keep-last 3 --keep-weekly 4 --prune"
        );
    }

    #[test]
    fn prune_is_due_when_never_done_or_old() {
        let now = DateTime::parse_from_rfc3339("2026-12-10T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let week = std::time::Duration::from_secs(7 * 86400);
        assert!(prune_due(None, week, now));
        assert!(!prune_due(Some("2026-12-05T00:00:00Z"), week, now));
        assert!(prune_due(Some("2026-12-03T00:00:00Z"), week, now));
        assert!(prune_due(
            Some("2026-12-09T23:59:59Z"),
            std::time::Duration::ZERO,
            now
        ));
    }
}
