// SPDX-License-Identifier: Apache-2.0
//! Freezing a running service for the moment the snapshots are taken, and the one
//! place that knows a service may be frozen.
//!
//! Synapse's `freeze()` holds the nexus lock from the moment it has it; its timeout
//! bounds only the lock wait, not the flush after it, and nothing in Synapse ever
//! resumes on its own. So nothing may leave a service frozen:
//!
//! - the service counts as possibly frozen from the moment the freeze call is sent;
//! - the whole call is bounded by `--freeze-timeout` plus [`FLUSH_MARGIN`]; a freeze
//!   that takes longer is abandoned: the connection is closed and the service
//!   resumed on a fresh one;
//! - every resume is [`ensure_resumed`]: retried for a bounded time, "not frozen"
//!   counts as done, confirmed with `getCellInfo`; if that fails the run fails
//!   with the freeze exit code (the [`Frozen`] guard also resumes on drop: errors,
//!   panics; `main` installs [`resume_if_frozen`] as the signal hook);
//! - a [`Guardian`] child resumes the service if this process dies meanwhile, and
//!   a record under the lock directory lets the next run resume it if both died.
//!
//! Only a freeze synbackup made is ever resumed. A cell that is frozen already when
//! a backup starts (an operator's `synapse.tools.service.snapshot freeze` for a
//! volume snapshot, or anyone's `freeze()`) is left frozen and the backup fails
//! ([`AlreadyFrozen`], the freeze exit code) naming the command that resumes it,
//! for whoever froze it. So is a freeze call the service answered with an error:
//! Synapse's `freeze` raises before it pauses (already frozen, the nexus lock not
//! had in time) or resumes itself when its flush fails, so the cell is not frozen
//! by us. Only a call that got no answer (the connection timed out or broke, a
//! signal) may have left our freeze in place, and that one is resumed.
//!
//! One resume at a time: [`ACTIVE`]'s lock is held for the whole resume, so a second
//! signal (whose hook takes the same lock before the process exits) cannot end the
//! process before the resume was sent. The freezer arms the slot again after the
//! freeze call returned and then re-checks the signal flag; the signal thread sets
//! the flag before it takes the slot: whichever runs second sees the other's write.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;

use crate::base::interrupt::requested;
use crate::engine::cellstate::CellState;
use crate::engine::freeze_record::{self, Record};
use crate::engine::guardian::Guardian;
use crate::engine::resume::{ensure_resumed, Resumed, RESUME_BOUND};
use crate::engine::synapse::resume_command;
use crate::engine::telepath::{self, RemoteError};

/// When to freeze the running service while the snapshots are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FreezeMode {
    /// Freeze when the service answers on its socket; a stopped service needs none.
    Auto,
    /// Fail unless the service can be frozen.
    Always,
    /// Never freeze: each environment is consistent on its own (like Synapse's tool).
    Never,
}

/// Added to `--freeze-timeout` (the nexus lock wait Synapse bounds itself) for the
/// whole freeze call, flush included, before it is abandoned.
pub(crate) const FLUSH_MARGIN: Duration = Duration::from_secs(5);

/// The socket of the service that may be frozen by us and is not confirmed resumed.
static ACTIVE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn active() -> MutexGuard<'static, Option<PathBuf>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn arm(sock: &Path) {
    *active() = Some(sock.to_path_buf());
}

/// The service is not frozen by us (the freeze call was answered with an error).
fn disarm() {
    *active() = None;
}

/// The cell was frozen already, by someone else: left frozen, not backed up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AlreadyFrozen(String);

fn already_frozen(sock: &Path, state: &CellState) -> anyhow::Error {
    let dir = sock.parent().unwrap_or(Path::new("/"));
    anyhow::Error::new(AlreadyFrozen(format!(
        "the service at {} was already frozen, not by this synbackup: it is left frozen and was not backed up; whoever froze it (a volume snapshot's `python -m synapse.tools.service.snapshot freeze`, say) must resume it when done: {}",
        dir.display(),
        resume_command(dir, state.version.as_ref())
    )))
}

/// Resume the service we may have frozen, if any, holding [`ACTIVE`] throughout.
/// Ok(false): there was none.
fn resume_armed(why: &str) -> Result<bool> {
    let mut slot = active();
    let Some(sock) = slot.clone() else {
        return Ok(false);
    };
    let outcome = ensure_resumed(&sock, RESUME_BOUND)?;
    *slot = None;
    match outcome {
        // After a normal freeze the caller logs how long it lasted, resume included.
        Resumed::Now if why == "done" => {
            log::debug!("resumed the service at {} ({why})", sock.display())
        }
        Resumed::Now => log::info!("resumed the service at {} ({why})", sock.display()),
        Resumed::WasNotFrozen => {
            log::info!("the service at {} is not frozen ({why})", sock.display())
        }
        Resumed::NotRunning => log::warn!(
            "the service at {} no longer answers; it is not frozen ({why})",
            sock.display()
        ),
    }
    Ok(true)
}

/// Resume the service we may have frozen, if any (the signal hook). Errors are
/// logged: the run fails on its own way out.
pub(crate) fn resume_if_frozen(why: &str) {
    if let Err(e) = resume_armed(why) {
        log::error!("{e:#}");
    }
}

/// A freeze recorded by a synbackup that died: resume the service if it is still
/// paused (logged). Errors are logged, not fatal to this run.
pub(crate) fn recover_stale(sock: &Path) {
    if let Err(e) = freeze_record::recover_stale(sock) {
        log::error!("{e:#}");
    }
}

/// A frozen service: resumed when this guard is dropped (errors, panics) unless
/// resumed before.
pub(crate) struct Frozen {
    guardian: Option<Guardian>,
    record: Option<Record>,
    resumed: bool,
    /// What the cell said once frozen (None: it could not be asked).
    pub(crate) state: Option<CellState>,
}

/// True when the service answered the call with an error of its own (it ran its
/// `freeze` to an end: not frozen by this call).
fn answered_with_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<RemoteError>().is_some())
}

impl Frozen {
    /// Freeze the service behind `sock` through telepath; `timeout_secs` bounds the
    /// nexus lock wait, plus [`FLUSH_MARGIN`] the whole call. A cell frozen already
    /// is refused ([`AlreadyFrozen`]) and left so; a freeze that may be ours and
    /// failed or was abandoned is resumed before this returns its error.
    pub(crate) fn freeze(sock: &Path, timeout_secs: u64) -> Result<Frozen> {
        let mut asker = telepath::Client::connect(sock, Duration::from_secs(30))?;
        let before = asker.cell_state()?;
        if before.paused {
            return Err(already_frozen(sock, &before));
        }
        let record = Record::write(sock, &before);
        let guardian = match Guardian::spawn(sock, record.as_ref().map(Record::path)) {
            Ok(g) => Some(g),
            Err(e) => {
                log::warn!("{e:#}; freezing without a guardian");
                None
            }
        };
        let mut frozen = Frozen {
            guardian,
            record,
            resumed: false,
            state: None,
        };
        arm(sock);
        let called = call_freeze(sock, timeout_secs);
        arm(sock);
        if requested() {
            resume_if_frozen("signal during freeze");
        }
        match called {
            // A signal resumed it already: the run ends with the signal's code.
            Ok(()) if requested() => Ok(frozen),
            Ok(()) => {
                frozen.confirm(sock, &mut asker, &before)?;
                Ok(frozen)
            }
            Err(e) if answered_with_error(&e) => {
                frozen.not_ours();
                if telepath::is_bad_state(&e) {
                    // Frozen by someone else between our look and our call.
                    return Err(already_frozen(sock, &before));
                }
                Err(e.context("the service refused the freeze and is not frozen by synbackup"))
            }
            Err(e) => match frozen.finish("freeze failed") {
                Ok(()) => Err(e.context("the service was resumed")),
                Err(r) => Err(r.context(format!("{e:#}"))),
            },
        }
    }

    /// After the freeze call: the cell says it is frozen, in the same boot;
    /// record its nexus index (the proof the freeze record keeps).
    fn confirm(
        &mut self,
        sock: &Path,
        asker: &mut telepath::Client,
        before: &CellState,
    ) -> Result<()> {
        match asker.cell_state() {
            Ok(now) if now.paused && now.run == before.run => {
                if let Some(r) = self.record.as_mut() {
                    r.confirm(&now);
                }
                self.state = Some(now);
                Ok(())
            }
            Ok(now) => {
                let e = anyhow::anyhow!(
                    "the service at {} is not frozen by synbackup right after its freeze call returned (resumed or restarted meanwhile)",
                    sock.display()
                );
                if now.run != before.run {
                    self.not_ours();
                } else {
                    self.finish("not frozen after the freeze")
                        .map_err(|r| r.context(format!("{e:#}")))?;
                }
                Err(e)
            }
            Err(e) => {
                log::warn!(
                    "cannot read the frozen cell's state ({e:#}); its nexus index is not recorded"
                );
                Ok(())
            }
        }
    }

    /// The freeze call was answered with an error: nothing of ours to resume.
    fn not_ours(&mut self) {
        self.resumed = true;
        disarm();
        if let Some(g) = self.guardian.take() {
            g.release();
        }
        if let Some(r) = self.record.take() {
            r.remove();
        }
    }

    /// Resume now and confirm it; an error (freeze exit code) when the service may
    /// still be frozen.
    pub(crate) fn resume(mut self) -> Result<()> {
        self.finish("done")
    }

    /// Resume (once: a failure is not retried by `drop`; the guardian, dropped
    /// unreleased with its pipe closed, then tries on its own).
    fn finish(&mut self, why: &str) -> Result<()> {
        self.resumed = true;
        resume_armed(why)?;
        if let Some(g) = self.guardian.take() {
            g.release();
        }
        if let Some(r) = self.record.take() {
            r.remove();
        }
        Ok(())
    }
}

/// The freeze call on its own connection, closed when it returns (a call that
/// timed out is thereby cancelled in the service).
fn call_freeze(sock: &Path, timeout_secs: u64) -> Result<()> {
    let mut client = telepath::Client::connect(sock, Duration::from_secs(30))?;
    client.set_timeout(Duration::from_secs(timeout_secs) + FLUSH_MARGIN)?;
    client.freeze(timeout_secs)
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.resumed {
            if let Err(e) = self.finish("cleanup") {
                log::error!("{e:#}");
            }
        }
    }
}
