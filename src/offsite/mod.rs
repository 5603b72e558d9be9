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

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::base::exit::{fail, Code};
use crate::base::fsutil::human;
use crate::base::logging;
use crate::host::restic::{self, Repo, ResticError, Trouble};
use crate::instance::config::{Instance, Keep, Offsite};
use crate::instance::dirs::Dirs;
use crate::instance::status::{self, Status};
use crate::nightly::now_str;

/// The status kind of offsite copies.
pub(crate) const KIND: &str = "offsite";

/// The tags every snapshot of `instance` carries (the filter is the first two).
pub(crate) fn filter_tags(instance: &str) -> String {
    format!("synbackup,instance={instance}")
}

/// The instance's offsite settings, or a usage error saying how to set them.
pub(crate) fn settings(inst: &Instance) -> Result<&Offsite> {
    inst.offsite.as_ref().ok_or_else(|| {
        fail(
            Code::Usage,
            format!(
                "instance {} has no offsite repository: set SYNBACKUP_OFFSITE_REPOSITORY and SYNBACKUP_OFFSITE_PASSWORD_FILE in its config",
                inst.name
            ),
        )
    })
}

/// The repository as restic opens it: password file checked, credentials read.
pub(crate) fn repo(o: &Offsite) -> Result<Repo> {
    if let Err(e) = std::fs::File::open(&o.password_file) {
        return Err(fail(
            Code::Offsite,
            format!(
                "cannot read the offsite password file {}: {e}; fix SYNBACKUP_OFFSITE_PASSWORD_FILE",
                o.password_file.display()
            ),
        ));
    }
    let env = match &o.env_file {
        Some(p) => restic::read_env_file(p).map_err(|e| fail(Code::Offsite, format!("{e:#}")))?,
        None => Default::default(),
    };
    Ok(Repo {
        bin: o.restic.clone(),
        repository: o.repository.clone(),
        password_file: o.password_file.clone(),
        env,
        // systemd's CacheDirectory= (the units set it); else restic's own default.
        cache_dir: std::env::var_os("CACHE_DIRECTORY").map(|d| PathBuf::from(d).join("restic")),
    })
}

/// The repository string without credentials a URL may carry (`rest:https://u:p@h/`).
pub(crate) fn redacted(repository: &str) -> String {
    match repository.find("://") {
        Some(i) => {
            let rest = &repository[i + 3..];
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{}://***@{}", &repository[..i], &rest[at + 1..]),
                None => repository.to_string(),
            }
        }
        None => repository.to_string(),
    }
}

/// The machine's host name as restic records it in locks.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A restic failure as one line for the operator, with what to do.
pub(crate) fn explain(err: anyhow::Error, inst: &str, repository: &str) -> anyhow::Error {
    let Some(r) = err.downcast_ref::<ResticError>() else {
        return err;
    };
    let repo = redacted(repository);
    let text = match &r.trouble {
        Trouble::Locked { pid, host } if *host == hostname() && !Path::new(&format!("/proc/{pid}")).exists() => format!(
            "restic {}: the repository {repo} is locked by restic PID {pid} on {host}, which no longer runs: run `synbackup offsite unlock {inst}`",
            r.command
        ),
        Trouble::Locked { pid, host } => format!(
            "restic {}: the repository {repo} is locked by restic PID {pid} on {host}, which may still run: try again when it is done (a lock of a dead restic on another host: `synbackup offsite unlock {inst}` after 30 minutes)",
            r.command
        ),
        Trouble::Killed(sig) => format!(
            "restic {} was killed by signal {sig}; its lock was removed; the next run uploads again",
            r.command
        ),
        Trouble::Failed(m) => format!(
            "restic {} on {repo}: {}",
            r.command,
            m.replace("offsite init INSTANCE", &format!("offsite init {inst}"))
        ),
    };
    fail(Code::Offsite, text)
}

/// Remove the lock a killed restic of ours left (`restic unlock` removes only
/// stale locks: of processes gone from this host, or older than 30 minutes).
fn unlock_after_kill(repo: &Repo, err: &anyhow::Error) {
    if let Some(ResticError {
        trouble: Trouble::Killed(_),
        ..
    }) = err.downcast_ref::<ResticError>()
    {
        if let Err(e) = repo.run("unlock", &["unlock"], None) {
            log::warn!("could not remove the killed restic's lock: {e:#}");
        }
    }
}

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
    status::load(&dirs.state_dir, inst, KIND)
        .and_then(|s| s.details)
        .and_then(|d| d["last_prune"].as_str().map(String::from))
}

/// Upload the published backup at `backup` (made at `time`), then apply the
/// offsite retention. Records nothing: [`record`] does.
pub(crate) fn upload(
    dirs: &Dirs,
    inst: &Instance,
    backup: &Path,
    time: DateTime<Utc>,
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
    })
}

/// Record an upload's result: the `offsite` status and metrics, one journal line.
/// A failure keeps the last success and the last prune.
pub(crate) fn record(
    dirs: &Dirs,
    inst: &Instance,
    backup: &str,
    started: DateTime<Utc>,
    t0: Instant,
    result: &Result<Uploaded>,
) {
    let prev = status::load(&dirs.state_dir, &inst.name, KIND);
    let repository = inst
        .offsite
        .as_ref()
        .map(|o| redacted(&o.repository))
        .unwrap_or_default();
    let st = match result {
        Ok(u) => Status {
            instance: inst.name.clone(),
            kind: KIND.into(),
            result: "success".into(),
            started: now_str(started),
            finished: now_str(Utc::now()),
            duration_seconds: t0.elapsed().as_secs_f64(),
            backup: Some(backup.to_string()),
            bytes: u.added_bytes,
            freeze_ms: None,
            exit_code: 0,
            error: None,
            last_success: Some(now_str(Utc::now())),
            last_success_backup: Some(backup.to_string()),
            backups_kept: 0,
            details: Some({
                let mut d = serde_json::to_value(u).unwrap_or_default();
                d["repository"] = repository.clone().into();
                d
            }),
        },
        Err(e) => Status {
            instance: inst.name.clone(),
            kind: KIND.into(),
            result: "failed".into(),
            started: now_str(started),
            finished: now_str(Utc::now()),
            duration_seconds: t0.elapsed().as_secs_f64(),
            backup: Some(backup.to_string()),
            bytes: 0,
            freeze_ms: None,
            exit_code: Code::Offsite.as_i32(),
            error: Some(format!("{e:#}")),
            last_success: prev.as_ref().and_then(|p| p.last_success.clone()),
            last_success_backup: prev.as_ref().and_then(|p| p.last_success_backup.clone()),
            backups_kept: 0,
            details: Some(serde_json::json!({
                "repository": repository,
                "last_prune": prev.as_ref().and_then(|p| p.details.as_ref()).and_then(|d| d.get("last_prune")).cloned(),
                // What the last good copy held, so the metrics keep saying it.
                "snapshot_bytes": prev.as_ref().and_then(|p| p.details.as_ref()).and_then(|d| d.get("snapshot_bytes")).cloned(),
            })),
        },
    };
    if let Err(e) = status::record(&dirs.state_dir, &dirs.metrics_dir, &st) {
        log::error!("could not record the offsite copy of {}: {e:#}", inst.name);
    }
    match result {
        Ok(u) => logging::event(
            log::Level::Info,
            logging::MSG_OFFSITE_OK,
            &inst.name,
            &[
                ("SYNBACKUP_BACKUP", backup),
                ("SYNBACKUP_SNAPSHOT", &u.snapshot_id),
            ],
            &format!(
                "{}: copied {backup} to {repository} as snapshot {} ({}, {} added) in {:.1} s{}",
                inst.name,
                &u.snapshot_id,
                human(u.snapshot_bytes),
                human(u.added_bytes),
                u.upload_seconds,
                if u.pruned { "; repository pruned" } else { "" }
            ),
        ),
        Err(e) => logging::event(
            log::Level::Error,
            logging::MSG_OFFSITE_FAILED,
            &inst.name,
            &[("SYNBACKUP_BACKUP", backup)],
            &format!(
                "{}: the local backup {backup} is kept, but its offsite copy failed: {e:#}",
                inst.name
            ),
        ),
    }
}

/// One snapshot of the instance, for `offsite list`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Listed {
    pub(crate) id: String,
    pub(crate) short_id: String,
    /// The snapshot time (the backup's own time), RFC 3339.
    pub(crate) time: String,
    pub(crate) age_seconds: i64,
    /// The backup's name (the snapshot's one path).
    pub(crate) backup: String,
    pub(crate) hostname: String,
    pub(crate) tags: Vec<String>,
    /// Bytes a restore writes (`restic stats`, restore-size).
    pub(crate) bytes: Option<u64>,
}

/// The opened repository of an instance, restic errors explained.
pub(crate) struct Opened<'a> {
    pub(crate) inst: &'a Instance,
    pub(crate) o: &'a Offsite,
    pub(crate) repo: Repo,
}

impl<'a> Opened<'a> {
    pub(crate) fn open(inst: &'a Instance) -> Result<Opened<'a>> {
        let o = settings(inst)?;
        Ok(Opened {
            inst,
            o,
            repo: repo(o)?,
        })
    }

    fn run(&self, what: &str, args: &[&str], cwd: Option<&Path>) -> Result<std::process::Output> {
        self.repo
            .run(what, args, cwd)
            .inspect_err(|e| unlock_after_kill(&self.repo, e))
            .map_err(|e| explain(e, &self.inst.name, &self.o.repository))
    }

    /// `restic init` (what `synbackup offsite init` does; never implicit).
    pub(crate) fn init(&self) -> Result<String> {
        let out = self.run("init", &["init"], None)?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find(|l| l.starts_with("created restic repository"))
            .unwrap_or("repository created")
            .to_string())
    }

    /// The instance's snapshots, oldest first, with their sizes when `sizes`.
    pub(crate) fn list(&self, sizes: bool) -> Result<Vec<Listed>> {
        let tags = filter_tags(&self.inst.name);
        let out = self.run("snapshots", &["snapshots", "--json", "--tag", &tags], None)?;
        let snaps = restic::parse_snapshots(&String::from_utf8_lossy(&out.stdout))?;
        let now = Utc::now();
        let mut listed = Vec::new();
        for s in snaps {
            let bytes = if sizes {
                let out = self.run("stats", &["stats", "--json", &s.id], None)?;
                restic::parse_stats_size(&String::from_utf8_lossy(&out.stdout))
            } else {
                None
            };
            let age = DateTime::parse_from_rfc3339(&s.time)
                .map(|t| (now - t.with_timezone(&Utc)).num_seconds())
                .unwrap_or(0);
            listed.push(Listed {
                backup: s
                    .paths
                    .first()
                    .and_then(|p| Path::new(p).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                id: s.id,
                short_id: s.short_id,
                time: s.time,
                age_seconds: age,
                hostname: s.hostname,
                tags: s.tags,
                bytes,
            });
        }
        Ok(listed)
    }

    /// `restic check --read-data-subset SHARE`: the repository's structure and a
    /// share of its data. A damaged repository is a failure naming what restic found.
    pub(crate) fn check(&self, subset: Option<&str>) -> Result<String> {
        let subset = subset.unwrap_or(&self.o.check_subset).to_string();
        let arg = format!("--read-data-subset={subset}");
        match self.repo.run("check", &["check", &arg], None) {
            Ok(_) => Ok(format!(
                "offsite repository {} of {} is intact (read {subset} of its data)",
                redacted(&self.o.repository),
                self.inst.name
            )),
            Err(e) => {
                unlock_after_kill(&self.repo, &e);
                let found = e
                    .downcast_ref::<ResticError>()
                    .and_then(|r| match &r.trouble {
                        Trouble::Failed(m) => Some(m.clone()),
                        _ => None,
                    });
                let e = match found {
                    Some(m) if m.contains("repository contains errors") => fail(
                        Code::Offsite,
                        format!(
                            "offsite repository {} of {} is damaged: {m}; see `restic check` (RESTIC_REPOSITORY as in the config) and the restic manual on repairing",
                            redacted(&self.o.repository),
                            self.inst.name
                        ),
                    ),
                    _ => explain(e, &self.inst.name, &self.o.repository),
                };
                logging::event(
                    log::Level::Error,
                    logging::MSG_OFFSITE_CHECK_FAILED,
                    &self.inst.name,
                    &[],
                    &format!("{}: offsite check failed: {e:#}", self.inst.name),
                );
                Err(crate::base::exit::reported(&e))
            }
        }
    }

    /// `restic unlock`: stale locks only (dead processes on this host, or older
    /// than 30 minutes); a running restic's lock stays.
    pub(crate) fn unlock(&self) -> Result<String> {
        let out = self.run("unlock", &["unlock"], None)?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(if text.is_empty() {
            "no stale locks".to_string()
        } else {
            text
        })
    }

    /// Restore snapshot `id` (or `latest` of this instance) into `target` (new,
    /// empty); returns the backup directory in it.
    pub(crate) fn fetch(&self, id: &str, target: &Path) -> Result<PathBuf> {
        let tags = filter_tags(&self.inst.name);
        if id != "latest" {
            let out = self.run("snapshots", &["snapshots", "--json", id], None)?;
            let snaps = restic::parse_snapshots(&String::from_utf8_lossy(&out.stdout))?;
            let ours = format!("instance={}", self.inst.name);
            if !snaps.iter().any(|s| s.tags.contains(&ours)) {
                return Err(fail(
                    Code::BadPath,
                    format!(
                        "snapshot {id} is not a synbackup snapshot of {}; pick one from `synbackup offsite list {}`",
                        self.inst.name, self.inst.name
                    ),
                ));
            }
        }
        let target_s = target.to_string_lossy().into_owned();
        log::info!("restoring offsite snapshot {id} into {}", target.display());
        self.run(
            "restore",
            &["restore", id, "--tag", &tags, "--target", &target_s],
            None,
        )?;
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(target)
            .map_err(|e| {
                fail(
                    Code::Other,
                    format!("cannot read {}: {e}", target.display()),
                )
            })?
            .flatten()
            .map(|e| e.path())
            .collect();
        match dirs.len() {
            1 => Ok(dirs.remove(0)),
            n => Err(fail(
                Code::BadPath,
                format!(
                    "offsite snapshot {id} restored {n} entries into {}, expected the one backup directory a synbackup snapshot holds",
                    target.display()
                ),
            )),
        }
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

    #[test]
    fn credentials_in_a_repository_url_are_not_shown() {
        assert_eq!(
            redacted("rest:https://u:secret@host:8000/repo"),
            "rest:https://***@host:8000/repo"
        );
        assert_eq!(redacted("/srv/restic"), "/srv/restic");
        assert_eq!(
            redacted("s3:https://s3.example/b@x"),
            "s3:https://s3.example/b@x"
        );
    }
}
