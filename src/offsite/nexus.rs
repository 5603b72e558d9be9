// SPDX-License-Identifier: Apache-2.0
//! The nexus archive offsite (point-in-time recovery): after a backup's upload,
//! the archive's closed segments, their `.json` and `archive.json` go to the same
//! repository as a snapshot of their own, tagged `synbackup-nexus`,
//! `instance=NAME`, `cell=GUID`, with the backup's time, path `nexus-archive`
//! relative to the backup root (a restore writes `TARGET/nexus-archive/`). The
//! open segment (still written), temporaries and the record of checked segments
//! (`pitr::checked`, a cache of this host's files) are excluded; unchanged segments
//! cost nothing after the first upload (restic deduplicates).
//!
//! Retention: each archive snapshot holds what the local retention kept that
//! night (the segments from the oldest local backup on), so the archive
//! snapshots from the oldest offsite backup's time on hold every segment a
//! restore to a point from an offsite backup needs; older ones are forgotten
//! (never the newest). The backups' own `forget` (tag `synbackup`) never
//! touches them, and `offsite list` and `restore --offsite` never see them.
//!
//! `offsite fetch-archive INSTANCE TARGET` restores every archive snapshot,
//! oldest first, into TARGET: `TARGET/nexus-archive/` is the union.

use std::path::Path;

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::base::exit::{fail, Code};
use crate::host::restic::{self, Repo};

/// The tag of the archive's snapshots.
pub(crate) const TAG: &str = "synbackup-nexus";

/// `synbackup-nexus,instance=NAME`: the archive snapshots of an instance.
pub(crate) fn filter(instance: &str) -> String {
    format!("{TAG},instance={instance}")
}

/// Whether `dir` holds a closed segment (`FIRST-LAST.seg`).
fn has_closed_segment(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok()).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".seg") && !n.starts_with("open-") && !n.starts_with('.')
        })
    })
}

/// Upload the closed part of the archive at `archive` (a directory of the backup
/// root); the snapshot id, or None when it holds no closed segment yet.
pub(crate) fn upload(
    repo: &Repo,
    instance: &str,
    guid: &str,
    time_arg: &str,
    archive: &Path,
) -> Result<Option<String>> {
    if !has_closed_segment(archive) {
        log::info!(
            "{}: no closed nexus archive segment to copy offsite yet",
            archive.display()
        );
        return Ok(None);
    }
    let (Some(parent), Some(name)) = (archive.parent(), archive.file_name()) else {
        return Err(fail(
            Code::Other,
            format!("{} has no parent", archive.display()),
        ));
    };
    let name = name.to_string_lossy();
    let tag_instance = format!("instance={instance}");
    let tag_cell = format!("cell={guid}");
    let out = repo.run(
        "backup",
        &[
            "backup",
            "--json",
            "--tag",
            TAG,
            "--tag",
            &tag_instance,
            "--tag",
            &tag_cell,
            "--time",
            time_arg,
            "--exclude",
            "open-*.seg",
            "--exclude",
            ".*.tmp.*",
            "--exclude",
            ".*.tmp",
            "--exclude",
            crate::pitr::checked::FILE,
            &name,
        ],
        Some(parent),
    )?;
    let summary =
        restic::parse_backup_summary(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            fail(
                Code::Offsite,
                "restic backup of the nexus archive printed no summary: the upload may be incomplete",
            )
        })?;
    log::info!(
        "copied the nexus archive {} offsite as snapshot {}",
        archive.display(),
        summary.snapshot_id
    );
    Ok(Some(summary.snapshot_id))
}

/// The instance's archive snapshots, oldest first.
pub(crate) fn snapshots(repo: &Repo, instance: &str) -> Result<Vec<restic::Snapshot>> {
    let out = repo.run(
        "snapshots",
        &["snapshots", "--json", "--tag", &filter(instance)],
        None,
    )?;
    restic::parse_snapshots(&String::from_utf8_lossy(&out.stdout))
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Forget the archive snapshots older than the oldest backup snapshot the
/// repository holds (`oldest`), never the newest; how many were forgotten.
pub(crate) fn forget_older(repo: &Repo, instance: &str, oldest: &str) -> Result<usize> {
    let Some(oldest) = parse_time(oldest) else {
        return Ok(0);
    };
    let snaps = snapshots(repo, instance)?;
    let doomed: Vec<&str> = snaps
        .iter()
        .take(snaps.len().saturating_sub(1))
        .filter(|s| parse_time(&s.time).is_some_and(|t| t < oldest))
        .map(|s| s.id.as_str())
        .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    let mut args = vec!["forget"];
    args.extend(doomed.iter().copied());
    repo.run("forget", &args, None)?;
    Ok(doomed.len())
}

/// Restore every archive snapshot of `instance`, oldest first, into `target`;
/// how many there were.
pub(crate) fn fetch(repo: &Repo, instance: &str, target: &Path) -> Result<usize> {
    let snaps = snapshots(repo, instance)?;
    if snaps.is_empty() {
        return Err(fail(
            Code::Offsite,
            format!("the offsite repository holds no nexus archive of {instance} (snapshots tagged {TAG})"),
        ));
    }
    let target_arg = target.to_string_lossy();
    for s in &snaps {
        repo.run(
            "restore",
            &["restore", &s.id, "--target", &target_arg],
            None,
        )?;
    }
    Ok(snaps.len())
}
