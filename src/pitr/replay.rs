// SPDX-License-Identifier: Apache-2.0
//! Restore to a point (`restore --instance NAME --to TIME|OFFSET`): choose the base
//! backup and the archived entries that bring it to the target, and apply them to
//! the staged copy before it is swapped in.
//!
//! The target is a nexus index: OFFSET means "the cell as it was when its nexus
//! index was OFFSET" (entries before OFFSET applied, none from it on: what
//! `getNexsIndx()` and a backup's `manifest.cell.nexus_index` say). A TIME becomes
//! the offset of the first archived entry made after it (entries made at or
//! before it applied, as PostgreSQL's `recovery_target_time` stops before the
//! first commit after its target), on one of two clocks, said in the plan:
//! - the entries' edit times (`archive::edit_time_us`: the cell's own clock when
//!   it made the change), when every entry from the base backup up to and
//!   including the first one after TIME carries one (3.x's entries all do; on 2.x
//!   node edits do, a user or view change does not);
//! - else the times the archiver received them (one clock, going forward; an
//!   entry is received after it was made, so its receive time is later by the
//!   archiver's lag).
//!
//! The base is the
//! newest complete backup of the instance whose recorded index is at or before the
//! target; the entries from that index to the target must all be in the archive
//! (a target past a gap is refused, naming the missing offsets).
//!
//! Why this is exact: the staged copy is the backup, which holds exactly the
//! entries before its recorded index (it was taken while the cell was frozen);
//! `replay.py`, run with the service's own Python as the directory's owner, boots
//! that copy passive as a mirror boots (an active boot may issue changes of its
//! own: 3.x pushes `model:set`), in safemode, with no listeners, checks it is at
//! that index, and feeds
//! each archived entry, in order and at its own offset, to `nexsroot.eat` — the
//! call a mirror makes for each entry it receives from its upstream
//! (`runMirrorLoop`), which logs the entry at that offset and runs the same
//! handler the leader ran. The entries are the bytes the leader sent, decoded by
//! Synapse's own msgpack. It ends by checking the cell's index is the target.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::base::exit::{fail, Code};
use crate::engine::manifest::Manifest;
use crate::instance::catalog::{self, State};
use crate::instance::config::Instance;
use crate::pitr::archive::{self, Entry};

/// The helper that applies the entries (run with the service's Python).
const REPLAY_PY: &str = include_str!("replay.py");

/// A point to restore to, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Point {
    /// A nexus index.
    Offset(u64),
    /// A moment (UTC).
    Time(DateTime<Utc>),
}

/// Parse `--to`: digits are an offset; else an RFC 3339 time or
/// `YYYY-MM-DDTHH:MM:SS` (UTC).
pub(crate) fn parse_point(text: &str) -> Result<Point> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Point::Offset)
            .map_err(|e| fail(Code::Usage, format!("--to {text}: {e}")));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Point::Time(t.with_timezone(&Utc)));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Ok(Point::Time(t.and_utc()));
        }
    }
    Err(fail(
        Code::Usage,
        format!("--to {text:?} is neither a nexus offset (digits) nor a time (e.g. 2026-12-07T15:04:05Z, UTC when no zone is given)"),
    ))
}

/// What a restore to a point does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The base backup.
    pub(crate) backup: PathBuf,
    /// Its recorded nexus index: the first entry to apply.
    pub(crate) from: u64,
    /// The target nexus index: entries before it are applied.
    pub(crate) to: u64,
    /// The archived records of offsets `from..to`.
    records: Vec<Entry>,
    /// How a TIME became `to` (None for an OFFSET).
    pub(crate) clock: Option<Clock>,
}

/// The clock a `--to TIME` was resolved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// The entries' own edit times.
    Edit,
    /// The times the archiver received them.
    Receive,
}

impl Clock {
    /// What the plan says.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Clock::Edit => "the entries' edit times",
            Clock::Receive => "the times the archiver received the entries (not every entry in range carries an edit time)",
        }
    }
}

impl Plan {
    pub(crate) fn entries(&self) -> usize {
        self.records.len()
    }

    /// " (the time read on ...)" for a TIME, "" for an OFFSET.
    pub(crate) fn clock_said(&self) -> String {
        self.clock
            .map(|c| format!(" (the time read on {})", c.describe()))
            .unwrap_or_default()
    }
}

/// Choose the base backup and the entries for `point`.
pub(crate) fn plan(inst: &Instance, point: &Point) -> Result<Plan> {
    let dir = archive::dir_of(&inst.backup_root);
    let all = archive::read_all(&dir)?;
    let Some(last) = all.last() else {
        return Err(fail(
            Code::BadPath,
            format!(
                "{} holds no archived nexus entries: run synbackup-nexus@{}.service (synbackup nexus-archive) to archive them",
                dir.display(),
                inst.name
            ),
        ));
    };
    let (to, clock) = match point {
        Point::Offset(n) => (*n, None),
        Point::Time(t) => {
            let (to, clock) = resolve_time(inst, &all, t)?;
            (to, Some(clock))
        }
    };
    if to > last.offset + 1 {
        return Err(fail(
            Code::BadPath,
            format!(
                "nexus index {to} is past the archive {} (its last entry is offset {}, received {})",
                dir.display(),
                last.offset,
                micros(last.received_us)
            ),
        ));
    }
    let (backup, from) = base_backup(inst, to)?;
    if let Some((a, b)) = archive::first_gap(&all, from, to) {
        return Err(fail(
            Code::BadPath,
            format!(
                "nexus index {to} is past a gap in the archive {}: offsets {a}-{b} are missing, and the newest backup before it ({}) is at index {from}; restore to {a} or earlier, or to a point after a backup taken past the gap",
                dir.display(),
                backup.display()
            ),
        ));
    }
    let records = all
        .into_iter()
        .filter(|e| e.offset >= from && e.offset < to)
        .collect();
    Ok(Plan {
        backup,
        from,
        to,
        records,
        clock,
    })
}

/// The offset of the first entry of `all` whose time (by `time_of`; entries
/// without one are passed over) is after `us`; one past the last entry if none.
fn first_after(all: &[Entry], us: u64, time_of: impl Fn(&Entry) -> Option<u64>) -> u64 {
    all.iter()
        .find(|e| time_of(e).is_some_and(|t| t > us))
        .map_or_else(|| all.last().map_or(0, |e| e.offset + 1), |e| e.offset)
}

/// The nexus index a TIME means, and the clock it was read on: edit times when
/// every entry from the base backup's index up to and including the first one
/// after TIME has one, else receive times.
fn resolve_time(inst: &Instance, all: &[Entry], t: &DateTime<Utc>) -> Result<(u64, Clock)> {
    let us = t.timestamp_micros().max(0) as u64;
    let by_edit = first_after(all, us, |e| e.edit_us);
    let edit_ok = base_backup(inst, by_edit).is_ok_and(|(_, from)| {
        all.iter()
            .filter(|e| e.offset >= from && e.offset <= by_edit)
            .all(|e| e.edit_us.is_some())
    });
    let (to, clock) = if edit_ok {
        (by_edit, Clock::Edit)
    } else {
        (
            first_after(all, us, |e| Some(e.received_us)),
            Clock::Receive,
        )
    };
    if to <= all[0].offset {
        let first = &all[0];
        return Err(fail(
            Code::BadPath,
            format!(
                "{t} is before the first archived nexus entry (offset {}, received {}{}): nothing in {} tells the cell's state then",
                first.offset,
                micros(first.received_us),
                first
                    .edit_us
                    .map(|e| format!(", made {}", micros(e)))
                    .unwrap_or_default(),
                archive::dir_of(&inst.backup_root).display()
            ),
        ));
    }
    log::info!("--to {t} is nexus index {to}, read on {}", clock.describe());
    Ok((to, clock))
}

fn micros(us: u64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| us.to_string())
}

/// The newest complete backup whose recorded nexus index is at or before `to`.
fn base_backup(inst: &Instance, to: u64) -> Result<(PathBuf, u64)> {
    let mut best: Option<(u64, DateTime<Utc>, PathBuf)> = None;
    let mut oldest: Option<u64> = None;
    for e in catalog::scan(&inst.backup_root, &inst.name)? {
        if !matches!(e.state, State::Complete | State::Verified) {
            continue;
        }
        let Ok(m) = Manifest::load(&e.path) else {
            continue;
        };
        let Some(cell) = m.cell else {
            continue; // made without a running cell: no recorded index
        };
        let i = cell.nexus_index;
        oldest = Some(oldest.map_or(i, |o| o.min(i)));
        if i <= to
            && best
                .as_ref()
                .map_or(true, |(bi, bt, _)| (i, e.time) > (*bi, *bt))
        {
            best = Some((i, e.time, e.path));
        }
    }
    match best {
        Some((i, _, p)) => Ok((p, i)),
        None => Err(fail(
            Code::BadPath,
            match oldest {
                Some(o) => format!(
                    "no backup of {} at or before nexus index {to}: the oldest one recording its index is at {o}",
                    inst.name
                ),
                None => format!(
                    "no backup of {} in {} records the cell's nexus index (made by `synbackup run` of a running cell)",
                    inst.name,
                    inst.backup_root.display()
                ),
            },
        )),
    }
}

/// What the replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Applied {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) applied: u64,
    /// Entries whose handler raised (on the leader too): logged, as a mirror does.
    pub(crate) errors: u64,
    /// How long the replay took (the cell's boot included).
    pub(crate) seconds: f64,
    /// How long the copy took to boot before the first entry was applied.
    pub(crate) boot_seconds: f64,
}

impl Applied {
    /// What the restore's summary says.
    pub(crate) fn line(&self) -> String {
        format!(
            "; brought forward from nexus index {} to {} ({} archived entries applied in {:.1} s{})",
            self.from,
            self.to,
            self.applied,
            self.seconds,
            match self.errors {
                0 => String::new(),
                n => format!(", {n} of them raised in their handler as on the leader"),
            }
        )
    }
}

/// Refuse a staged copy whose own settings would make it reach out while it is
/// replayed (a mirror's upstream, AHA), which this replay does not isolate yet.
fn check_settings(staged: &Path) -> Result<()> {
    for file in ["cell.yaml", "cell.mods.yaml"] {
        let text = std::fs::read_to_string(staged.join(file)).unwrap_or_default();
        for line in text.lines() {
            let key = line.split(':').next().unwrap_or("");
            if ["mirror", "parent", "aha"].contains(&key) || line.starts_with("aha:") {
                return Err(fail(
                    Code::BadPath,
                    format!(
                        "{} sets {}: restoring a mirror or an AHA member to a point is not supported yet; restore its leader to the point and re-seed the mirror",
                        staged.join(file).display(),
                        line.trim()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Apply the plan's entries to the staged copy with `python`, as the copy's owner.
pub(crate) fn apply(plan: &Plan, staged: &Path, python: &Path) -> Result<Applied> {
    check_settings(staged)?;
    let meta =
        std::fs::metadata(staged).with_context(|| format!("cannot stat {}", staged.display()))?;
    log::info!(
        "applying {} archived nexus entries (offsets {}-{}) to {} with {}",
        plan.records.len(),
        plan.from,
        plan.to.saturating_sub(1),
        staged.display(),
        python.display()
    );
    let started = std::time::Instant::now();
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(REPLAY_PY)
        .arg(staged)
        .arg(plan.from.to_string())
        .arg(plan.to.to_string())
        .current_dir(staged)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if nix::unistd::geteuid().is_root() {
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let records: Vec<u8> = plan
        .records
        .iter()
        .flat_map(|e| e.record.iter().copied())
        .collect();
    let feeder = std::thread::spawn(move || stdin.write_all(&records));
    let mut err = String::new();
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let errs = std::thread::spawn(move || {
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout"))?
        .read_to_string(&mut out)?;
    let status = child.wait()?;
    let fed = feeder
        .join()
        .map_err(|_| anyhow!("the feeder thread panicked"))?;
    let err = errs.join().unwrap_or_default();
    for l in err.lines().filter(|l| l.contains("raised")) {
        log::warn!("{l}");
    }
    if !status.success() {
        let why = err
            .lines()
            .rev()
            .find(|l| l.starts_with("synbackup replay:"))
            .or_else(|| err.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output");
        return Err(fail(
            Code::Other,
            format!(
                "applying the archived nexus entries to {} failed ({status}): {why}",
                staged.display()
            ),
        ));
    }
    fed.context("cannot feed the entries to the replay")?;
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .with_context(|| format!("the replay printed {out:?}"))?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Applied {
        from: plan.from,
        to: plan.to,
        applied: n("applied"),
        errors: n("errors"),
        seconds: started.elapsed().as_secs_f64(),
        boot_seconds: v
            .get("boot_seconds")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points() {
        assert_eq!(parse_point("1234").unwrap(), Point::Offset(1234));
        let Point::Time(t) = parse_point("2026-12-07T15:04:05Z").unwrap() else {
            panic!()
        };
        assert_eq!(t.timestamp(), 1_796_655_845);
        assert_eq!(parse_point("2026-12-07T15:04:05").unwrap(), Point::Time(t));
        assert_eq!(
            parse_point("2026-12-07T16:04:05+01:00").unwrap(),
            Point::Time(t)
        );
        assert!(parse_point("yesterday").is_err());
    }
}
