// SPDX-License-Identifier: Apache-2.0
//! The swap protocol the maintenance window and the restore both end with:
//!
//! 1. stop the unit (when there is one to stop) and wait until no process holds
//!    an LMDB file of the directory;
//! 2. the caller's `prepare` step (the window's compacted copy is made here, with
//!    the service down; a restore has staged its copy before the stop);
//! 3. swap: the live directory moves aside (kept, never deleted) under a name
//!    chosen at that moment ([`kept::free_aside`]), the prepared copy into its
//!    place, the parent directory fsynced. Every rename here and in the rollback
//!    is `RENAME_NOREPLACE` ([`fsutil::rename_noreplace`]): an entry that appeared
//!    at the name since it was chosen (an empty directory, a file, a link, made by
//!    anyone) is never replaced; the live directory is then kept under the next
//!    free name, and a copy or original that cannot go into place fails (rolled
//!    back) rather than replace what is there;
//! 4. the caller's `after_swap` step (a restore's certificate directory, undone
//!    by its `undo` on a rollback);
//! 5. start the unit and wait until the service answers its health check.
//!
//! Any failure from the stop on, SIGTERM included, rolls back
//! ([`Swap::roll_back`]): the unit is stopped if it runs (on our copy), our copy
//! moves out and is removed, the original directory moves back, the parent is
//! fsynced, the unit starts again and its health is awaited. Once begun, a
//! rollback finishes whatever signals arrive, and it asks systemd for the time it
//! needs. The service is never left stopped by us; if even the restart fails, the
//! error says so and how to recover.
//!
//! Fault points (tests): `PREFIX-after-stop`, `PREFIX-aside-chosen` (between the
//! choice of the kept name and the rename), `PREFIX-after-swap`, `PREFIX-health`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::base::exit::{fail, Code};
use crate::base::pathtext::Escaped;
use crate::base::{fault, fsutil, interrupt};
use crate::host::{holders, systemd};
use crate::instance::kept;
use crate::service::preflight;

/// The caller's steps inside the protocol (each defaults to nothing).
pub(crate) trait Steps {
    /// Step 2, after the stop: make the copy at `new` (the window's).
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }
    /// Step 4, after the swap and before the start.
    fn after_swap(&mut self) -> Result<()> {
        Ok(())
    }
    /// Undo what `after_swap` did, before the rollback starts the unit again.
    fn undo(&mut self) {}
}

/// One swap of a prepared copy into a service directory.
#[derive(Debug)]
pub(crate) struct Swap<'a> {
    /// The live service directory.
    pub(crate) dir: &'a Path,
    /// The prepared copy beside it (made by `prepare`, or staged before).
    pub(crate) new: &'a Path,
    /// How the live directory is kept: `DIR{marker}{stamp}` (numbered when taken),
    /// chosen when it is moved ([`kept::free_aside`]).
    pub(crate) keep_marker: &'a str,
    pub(crate) keep_stamp: &'a str,
    /// The unit to stop and start again (`None`: the service is not running).
    pub(crate) unit: Option<&'a str>,
    pub(crate) stop_timeout: Duration,
    pub(crate) health_timeout: Duration,
    /// The prefix of the fault points (`cold`, `restore`).
    pub(crate) fault_prefix: &'a str,
}

/// What a swap did, for the caller's report (also after a rollback).
#[derive(Debug, Default)]
pub(crate) struct Swapped {
    pub(crate) stop_seconds: f64,
    pub(crate) start_seconds: f64,
    /// From the stop until the service answered again (or was rolled back).
    pub(crate) downtime_seconds: f64,
    /// The health the service answered with after the start.
    pub(crate) health: Option<String>,
    /// The live directory was moved aside (to `aside`, where it stays on success).
    pub(crate) kept: bool,
    /// Where the live directory was moved (set when `kept`).
    pub(crate) aside: PathBuf,
    /// It failed and was rolled back (the original directory in place).
    pub(crate) rolled_back: bool,
}

impl Swap<'_> {
    /// Stop, `prepare`, swap, `after_swap`, start, wait for health; on any failure
    /// roll back and return the failure (a failed rollback's error instead).
    pub(crate) fn run(&self, done: &mut Swapped, steps: &mut impl Steps) -> Result<()> {
        let down = Instant::now();
        let had_dir = self.dir.exists();
        let mut swapped = false;
        let result = self.forward(done, had_dir, &mut swapped, steps);
        done.downtime_seconds = down.elapsed().as_secs_f64();
        let Err(e) = result else {
            return Ok(());
        };
        log::error!("{e:#}; rolling back {}", self.dir.escaped());
        systemd::status("rolling back");
        steps.undo();
        self.roll_back(swapped, &done.aside)?;
        done.rolled_back = true;
        done.kept = false;
        done.downtime_seconds = down.elapsed().as_secs_f64();
        Err(e)
    }

    /// Steps 1 to 5.
    fn forward(
        &self,
        done: &mut Swapped,
        had_dir: bool,
        swapped: &mut bool,
        steps: &mut impl Steps,
    ) -> Result<()> {
        let t = Instant::now();
        if let Some(unit) = self.unit {
            systemd::status(&format!("stopping {unit}"));
            systemd::stop_unit(unit, self.stop_timeout)?;
        }
        holders::wait_released(self.dir, self.stop_timeout, true)?;
        done.stop_seconds = t.elapsed().as_secs_f64();
        self.fault("after-stop")?;
        interrupt::check()?;
        steps.prepare()?;
        interrupt::check()?;
        self.swap(had_dir, swapped, &mut done.aside)?;
        done.kept = had_dir;
        self.fault("after-swap")?;
        steps.after_swap()?;
        if let Some(unit) = self.unit {
            let t = Instant::now();
            systemd::status(&format!("starting {unit}"));
            systemd::start_unit(unit, self.health_timeout)?;
            self.fault("health")?;
            done.health = Some(preflight::wait_healthy(
                self.dir,
                self.health_timeout,
                true,
            )?);
            done.start_seconds = t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Step 3: the live directory aside (to `aside`), the prepared copy into
    /// place, fsynced. No rename replaces anything.
    fn swap(&self, had_dir: bool, swapped: &mut bool, aside: &mut PathBuf) -> Result<()> {
        if had_dir {
            *aside = self.move_aside()?;
        }
        *swapped = true;
        fsutil::rename_noreplace(self.new, self.dir).map_err(|e| {
            fail(
                Code::Other,
                format!(
                    "cannot move {} into place at {}: {e}{}",
                    self.new.escaped(),
                    self.dir.escaped(),
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        " (something was put there since the directory was moved aside; it is left as it is)"
                    } else {
                        ""
                    }
                ),
            )
        })?;
        fsutil::fsync_dir(self.parent())
    }

    /// The live directory renamed to a free `DIR{marker}{stamp}[-N]`; a name taken
    /// between its choice and the rename is left as it is and the next one tried.
    fn move_aside(&self) -> Result<PathBuf> {
        const TRIES: u32 = 20;
        for _ in 0..TRIES {
            let aside = kept::free_aside(self.dir, self.keep_marker, self.keep_stamp);
            log::info!("keeping {} at {}", self.dir.escaped(), aside.escaped());
            self.fault("aside-chosen")?;
            match fsutil::rename_noreplace(self.dir, &aside) {
                Ok(()) => return Ok(aside),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => log::warn!(
                    "{} appeared since it was chosen; it is left as it is, and {} is kept under another name",
                    aside.escaped(),
                    self.dir.escaped()
                ),
                Err(e) => {
                    return Err(fail(
                        Code::Other,
                        format!(
                            "cannot move {} aside to {}: {e}",
                            self.dir.escaped(),
                            aside.escaped()
                        ),
                    ))
                }
            }
        }
        Err(fail(
            Code::Other,
            format!(
                "cannot move {} aside: {TRIES} names beside it were taken as they were chosen; find what creates them",
                self.dir.escaped()
            ),
        ))
    }

    /// Put the original directory back and start the unit again; errors only when
    /// that fails. Once begun it finishes: further signals are noted, not obeyed
    /// (`interrupt::shield`), and it asks systemd for the time it needs
    /// (`EXTEND_TIMEOUT_USEC`: a `systemctl stop` of the window otherwise kills it
    /// after `TimeoutStopSec=`, which cannot know the service's timeouts).
    fn roll_back(&self, swapped: bool, aside: &Path) -> Result<()> {
        interrupt::shield();
        systemd::extend_timeout(
            2 * self.stop_timeout + 2 * self.health_timeout + Duration::from_secs(60),
        );
        if let Some(unit) = self.unit {
            // It may be running on our copy: stop it first.
            if !matches!(systemd::active_state(unit)?.as_str(), "inactive" | "failed") {
                systemd::stop_unit(unit, self.stop_timeout)?;
            }
        }
        if swapped {
            self.put_back(aside)?;
        }
        if self.new.exists() {
            if let Err(e) = fs::remove_dir_all(self.new) {
                log::warn!(
                    "could not remove the discarded copy {}: {e}",
                    self.new.escaped()
                );
            }
        }
        let Some(unit) = self.unit else {
            return Ok(());
        };
        systemd::start_unit(unit, self.health_timeout).map_err(|e| {
            fail(
                Code::Service,
                format!(
                    "ROLLBACK INCOMPLETE: the original directory is back at {} but {unit} did not start: {e:#}",
                    self.dir.escaped()
                ),
            )
        })?;
        match preflight::wait_healthy(self.dir, self.health_timeout, false) {
            Ok(h) => log::info!("rolled back: {unit} runs on the original directory ({h})"),
            Err(e) => log::error!("rolled back, but the service does not answer yet: {e:#}"),
        }
        Ok(())
    }

    /// Our copy out of the directory's place (nothing may hold it), the original
    /// back in from `aside`; neither rename replaces anything.
    fn put_back(&self, aside: &Path) -> Result<()> {
        let at = |p: &Path| fs::symlink_metadata(p).is_ok();
        if at(self.dir) && !at(self.new) {
            holders::wait_released(self.dir, self.stop_timeout, false)?;
            fsutil::rename_noreplace(self.dir, self.new).map_err(|e| {
                fail(
                    Code::Other,
                    format!(
                        "ROLLBACK FAILED: cannot move {} away: {e}; the original directory is at {}",
                        self.dir.escaped(),
                        aside.escaped()
                    ),
                )
            })?;
        }
        if !aside.as_os_str().is_empty() && aside.is_dir() {
            fsutil::rename_noreplace(aside, self.dir).map_err(|e| {
                fail(
                    Code::Other,
                    format!(
                        "ROLLBACK FAILED: cannot move {} back to {}: {e}; move it back by hand and start the service",
                        aside.escaped(),
                        self.dir.escaped()
                    ),
                )
            })?;
        }
        fsutil::fsync_dir(self.parent())
    }

    fn parent(&self) -> &Path {
        self.dir.parent().unwrap_or(Path::new("/"))
    }

    fn fault(&self, step: &str) -> Result<()> {
        fault::point(&format!("{}-{step}", self.fault_prefix))
    }
}

/// A failure that was rolled back, as the operator reads it (exit 10), unless it
/// was a signal (its own exit code).
pub(crate) fn rolled_back_error(e: anyhow::Error, what: &str) -> anyhow::Error {
    let code = crate::base::exit::code_of(&e);
    if code == Code::Interrupted || code == Code::Terminated {
        return e;
    }
    fail(Code::RolledBack, format!("{e:#}; rolled back: {what}"))
}
