// SPDX-License-Identifier: Apache-2.0
//! The archiver: follow a cell's nexus log over telepath and append every entry
//! to the instance's nexus archive (`archive`), for as long as it runs.
//!
//! It asks `getNexusChanges(NEXT, tellready=True, wait=True)`, NEXT being one past
//! the last entry the archive holds durably: the cell sends its stored entries
//! from NEXT on, then a `None` (it has caught up), then each new entry as it is
//! made. Entries that arrive together are appended and fsynced as one batch before
//! the archiver reads on; only then does it count them archived (`STATUS=`).
//!
//! Restarts without a gap or a duplicate: the archive's next offset comes from the
//! files alone (`Archive::open` cuts a torn tail), so an archiver killed at any
//! point asks again from the first entry it had not made durable; when the cell
//! restarts or the link drops, the stream fails and the archiver reconnects and
//! asks from the same place. The cell keeps its log across restarts, so it can
//! answer from there. Only when the cell no longer holds NEXT (its log was culled
//! past it) does the first entry come with a greater offset: that jump is logged
//! as an error naming the missing offsets, and the archive goes on after it (a
//! restore to a point refuses targets that need those offsets).
//!
//! A full file system (ENOSPC, EDQUOT) stops the archiver (exit 4): the entries it
//! had made durable stay counted, a record it was writing is cut when it starts
//! again, and the unit's `Restart=` starts it again, so it resumes from the same
//! offset once space is freed. Every stop on an error is recorded for `status`
//! (`state`) until a later run catches up with the cell.
//!
//! A cell without its nexus log (`nexslog:en: false`) ends the stream without the
//! caught-up marker: the archiver stops with a one-line error saying how to enable
//! it. A cell whose index is behind the archive (killed before its slabs were
//! written: Synapse commits them periodically, so a killed cell can come back
//! without its last entries, which the archive has; or restored to an older
//! state) would reuse archived offsets for new changes: the cell's last entries
//! are compared with the archive's to find where the histories part, the
//! archived entries from there are set aside in `diverged-FIRST-LAST/` (never
//! deleted; `status` reports them) and archiving goes on from there; when no
//! entry agrees it is refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use rmpv::Value;

use crate::base::exit::{fail, Code};
use crate::base::interrupt;
use crate::engine::telepath::{Client, Next};
use crate::host::systemd;
use crate::pitr::archive::{self, Archive};
use crate::pitr::compare::{self, split_item, Comparison};
use crate::pitr::state;

/// How the archiver runs.
pub(crate) struct Options {
    pub(crate) service_dir: PathBuf,
    pub(crate) archive_dir: PathBuf,
    pub(crate) segment_bytes: u64,
    /// The failure record `status` reads (`state`).
    pub(crate) state_file: Option<PathBuf>,
}

/// The longest wait between connection attempts while the cell is down.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long a message that began to arrive may take to arrive whole.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Most entries appended (and fsynced) as one batch.
const MAX_BATCH: usize = 4096;

/// Follow the cell until a signal stops the archiver (Ok) or it cannot go on.
pub(crate) fn run(opts: &Options) -> Result<()> {
    let sock = opts.service_dir.join("sock");
    let mut backoff = Duration::from_millis(200);
    let mut announced = false;
    // The archive holds every entry before this offset durably.
    let mut archived_to = None;
    loop {
        if interrupt::requested() {
            stopped();
            return Ok(());
        }
        systemd::watchdog();
        match follow_once(opts, &sock, &mut announced, &mut archived_to) {
            Ok(()) => return Ok(()),
            Err(e) if e.chain().any(|c| c.downcast_ref::<Stopped>().is_some()) => {
                stopped();
                return Ok(());
            }
            Err(e) if is_fatal(&e) => {
                record_stop(opts, &e, archived_to);
                return Err(e);
            }
            Err(e) => {
                log::warn!(
                    "nexus archive of {}: {e:#}; connecting again",
                    opts.service_dir.display()
                );
                systemd::status(&format!(
                    "waiting for the cell on {}: {e:#}",
                    sock.display()
                ));
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if interrupt::requested() {
                        stopped();
                        return Ok(());
                    }
                    systemd::watchdog();
                    std::thread::sleep(Duration::from_millis(100));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The archiver stops on `e`: say so (a full file system by name) and record it
/// for `status`.
fn record_stop(opts: &Options, e: &anyhow::Error, archived_to: Option<u64>) {
    let full = e.chain().any(|c| {
        c.downcast_ref::<crate::base::exit::Failure>()
            .is_some_and(|f| f.code == Code::NoSpace)
    });
    let upto = match archived_to {
        Some(n) => format!("every entry before offset {n} is on disk"),
        None => "nothing was archived".to_string(),
    };
    let error = if full {
        let why = format!(
            "the file system of the nexus archive {} is full (ENOSPC): {e:#}",
            opts.archive_dir.display()
        );
        log::error!(
            "{why}; the archiver stops, {upto}; free space there: the unit starts it again (Restart=) and it resumes from there"
        );
        why
    } else {
        format!("{e:#}")
    };
    systemd::status(&format!("stopped: {error}"));
    if let Some(file) = &opts.state_file {
        if let Err(w) = state::record_failure(file, &error, archived_to) {
            log::warn!("cannot record the archiver's failure for status: {w:#}");
        }
    }
}

/// Log the stop at a signal.
fn stopped() {
    log::info!("stopped by a signal: every entry it counted archived is on disk");
}

/// Stop cleanly at a signal: everything archived so far is durable.
fn interrupt_ok() -> Result<()> {
    if interrupt::requested() {
        return Err(anyhow!(Stopped));
    }
    Ok(())
}

#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by a signal")
    }
}

impl std::error::Error for Stopped {}

/// Errors that a reconnect cannot mend: a typed failure (bad archive, nexus log
/// off, cell behind the archive) or a signal.
fn is_fatal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<crate::base::exit::Failure>().is_some()
            || c.downcast_ref::<Stopped>().is_some()
    })
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Where the cell's history and the archive's part, at or before `upto` (the
/// archive's next offset, or the cell's index when that is lower), or None when
/// they agree. Up to [`compare::WINDOW`] archived entries before `upto` are compared
/// with the cell's own, byte for byte, from the oldest the cell still holds: the
/// first that differs is the fork; when all agree and the cell is behind the
/// archive (`upto` is its index), `upto` is. A cell comes back behind its archive
/// when it was killed before its slabs were written (Synapse commits them
/// periodically) or restored to an older state, and a cell restored that way may
/// already have gone past the archive with changes of its own: both part there.
/// Refused when nothing can be compared while the cell is behind, or when even
/// the oldest compared entry differs (another history).
fn find_fork(opts: &Options, sock: &Path, upto: u64, behind: bool) -> Result<Option<u64>> {
    let refuse = |why: String| {
        fail(
            Code::BadPath,
            format!(
                "the cell on {} does not continue its archive {} ({why}): move the archive aside to start a new one",
                opts.service_dir.display(),
                opts.archive_dir.display()
            ),
        )
    };
    let nothing = |why: &str| {
        if behind {
            Err(refuse(format!(
                "it is at nexus index {upto}, behind the archive, and {why}"
            )))
        } else {
            Ok(None)
        }
    };
    let archived = compare::archived_before(&opts.archive_dir, upto)?;
    if archived.is_empty() {
        return nothing("no archived entry before it can be compared");
    }
    match compare::with_cell(sock, &archived)? {
        Comparison::NothingCompared => {
            nothing("its log holds none of the archived entries to compare")
        }
        Comparison::Parts {
            offset,
            first: true,
        } => Err(refuse(format!(
            "its nexus entry {offset} is not the archived one: another history"
        ))),
        Comparison::Parts { offset, .. } => Ok(Some(offset)),
        Comparison::Agree { .. } => Ok(behind.then_some(upto)),
    }
}

/// One connection: open the archive, check the cell, stream and append until the
/// link fails (Err, reconnect) or a signal (Err(Stopped)).
fn follow_once(
    opts: &Options,
    sock: &Path,
    announced: &mut bool,
    archived_to: &mut Option<u64>,
) -> Result<()> {
    let mut client = Client::connect(sock, Duration::from_secs(30))?;
    let state = client.cell_state()?;
    let mut arch = Archive::open(&opts.archive_dir, &state.iden, opts.segment_bytes)?;
    if let Some(n) = arch.next_offset() {
        let behind = state.nexus_index < n;
        if let Some(fork) = find_fork(opts, sock, n.min(state.nexus_index), behind)? {
            // The archived entries from the fork on are no longer the cell's:
            // kept aside, never deleted, and the archive follows the cell again.
            drop(arch);
            if let Some(aside) = archive::set_aside_from(&opts.archive_dir, fork)? {
                log::warn!(
                    "the cell on {} (nexus index {}) parts from its archive at offset {fork}: the archived entries from {fork} on, which the cell no longer has, are kept in {}; archiving goes on from {fork} (synbackup status reports them until the directory is moved out of the archive)",
                    opts.service_dir.display(),
                    state.nexus_index,
                    aside.display()
                );
            }
            arch = Archive::open(&opts.archive_dir, &state.iden, opts.segment_bytes)?;
        }
    }
    let next = arch.next_offset();
    *archived_to = next;
    let from = next.unwrap_or(0);
    log::info!(
        "following the nexus log of {} (cell {}, index {}) from offset {from} into {}",
        opts.service_dir.display(),
        state.iden,
        state.nexus_index,
        opts.archive_dir.display()
    );
    client.set_timeout(READ_TIMEOUT)?;
    let mut stream = client.stream(
        "getNexusChanges",
        vec![Value::from(from)],
        vec![("tellready", true.into()), ("wait", true.into())],
    )?;
    let mut caught_up = false;
    let mut archived = next;
    loop {
        interrupt_ok()?;
        systemd::watchdog();
        let first = stream.next_within(Some(Duration::from_secs(1)))?;
        let mut batch: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut pending = Some(first);
        while let Some(n) = pending.take() {
            match n {
                Next::Idle => break,
                Next::End if caught_up => {
                    // The cell is shutting down: what came is archived below.
                    append(&mut arch, &mut batch, &mut archived)?;
                    *archived_to = archived;
                    return Err(anyhow!("the cell ended the stream (shutting down)"));
                }
                Next::End => {
                    return Err(fail(
                        Code::Usage,
                        format!(
                            "point-in-time recovery needs the cell's nexus log, and the cell on {} runs with nexslog:en false: set `nexslog:en: true` in {} and restart the service",
                            opts.service_dir.display(),
                            opts.service_dir.join("cell.yaml").display()
                        ),
                    ));
                }
                Next::Item(y) if y.value.is_nil() => {
                    // The entries before the marker are made durable first: only
                    // then has it caught up (READY=1, a failure record cleared).
                    append(&mut arch, &mut batch, &mut archived)?;
                    *archived_to = archived;
                    caught_up = true;
                    let at = archived.unwrap_or(from);
                    log::info!("caught up with the cell at offset {at}");
                    if let Some(file) = &opts.state_file {
                        if let Err(e) = state::clear(file) {
                            log::warn!("{e:#}");
                        }
                    }
                    if !*announced {
                        *announced = true;
                        systemd::ready();
                    }
                }
                Next::Item(y) => {
                    let (offs, entry) = split_item(&y)?;
                    batch.push((offs, now_us(), entry));
                }
            }
            if batch.len() < MAX_BATCH {
                pending = match stream.next_within(Some(Duration::ZERO))? {
                    Next::Idle => None,
                    n => Some(n),
                };
            }
        }
        append(&mut arch, &mut batch, &mut archived)?;
        *archived_to = archived;
        if let Some(a) = archived {
            systemd::status(&format!(
                "archived to offset {} ({})",
                a,
                if caught_up {
                    "caught up"
                } else {
                    "catching up"
                }
            ));
        }
    }
}

/// Append `batch` (durable when this returns), handling a jump in offsets: the
/// entries before it are appended, the jump logged as a gap, the rest after it.
fn append(
    arch: &mut Archive,
    batch: &mut Vec<(u64, u64, Vec<u8>)>,
    archived: &mut Option<u64>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut start = 0;
    for i in 0..batch.len() {
        let offs = batch[i].0;
        match arch_next(arch, &batch[start..i]) {
            Some(want) if offs > want => {
                arch.append(&batch[start..i])?;
                log::error!(
                    "gap in the nexus archive: offsets {want}-{} are no longer in the cell's log (culled before they were archived); the archive goes on from {offs}",
                    offs - 1
                );
                arch.start_after_gap(offs)?;
                start = i;
            }
            Some(want) if offs < want => {
                anyhow::bail!("the cell sent offset {offs} again (the archive is at {want})");
            }
            _ => {}
        }
    }
    arch.append(&batch[start..])?;
    *archived = arch.next_offset();
    batch.clear();
    Ok(())
}

/// The offset the archive expects after `pending` is appended.
fn arch_next(arch: &Archive, pending: &[(u64, u64, Vec<u8>)]) -> Option<u64> {
    pending.last().map(|p| p.0 + 1).or(arch.next_offset())
}

/// The archive directory of an instance's backup root.
pub(crate) fn archive_dir(backup_root: &Path) -> PathBuf {
    archive::dir_of(backup_root)
}
