// SPDX-License-Identifier: Apache-2.0
//! The run recorder: every recorded run (the nightly backup, a maintenance window,
//! a restore, a drill, an offsite copy, a certificate deploy) begins with
//! [`Recorder::begin`] and ends with [`Recorder::succeeded`] or
//! [`Recorder::failed`], which write the status file, the metrics and the journal
//! event in one place, so no run can forget one of them. A failure keeps the last
//! success (never makes it look recent); a run that found the instance lock held is
//! recorded as `skipped`.
//!
//! [`begin_locked`] is the start every scheduled run shares: its clock, the
//! instance's settings (a configuration that does not load is recorded as the
//! run's failure), and the instance lock, waited for within `SYNBACKUP_LOCK_WAIT`.

use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::base::exit::{code_of, Code};
use crate::base::logging;
use crate::instance::catalog::{self, State};
use crate::instance::config::{self, Instance, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::lock;
use crate::instance::notify::{self, Notify};
use crate::instance::status::{self, Kind, Outcome, Status};

/// A time as status files and listings write it.
pub(crate) fn now_str(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What a finished run made or learnt (all optional but the kind's own).
#[derive(Debug, Default)]
pub(crate) struct Made {
    /// The backup it made, restored, drilled or copied.
    pub(crate) backup: Option<String>,
    pub(crate) bytes: u64,
    pub(crate) freeze_ms: Option<f64>,
    /// Complete backups in the root afterwards (the nightly run).
    pub(crate) backups_kept: usize,
    /// The kind's own facts (a window's downtime, a drill's counts, ...).
    pub(crate) details: Option<serde_json::Value>,
}

/// The journal line of a run's end: extra fields and the text.
#[derive(Debug, Default)]
pub(crate) struct Event<'a> {
    pub(crate) fields: Vec<(&'a str, String)>,
    pub(crate) text: String,
}

impl Event<'_> {
    /// An event with only a text.
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Event {
            fields: Vec::new(),
            text: text.into(),
        }
    }
}

/// How a restore or window that did not succeed ended: `Cancelled` when a signal
/// stopped it and everything is as it was (it had `changed` nothing, or it was
/// `rolled_back` cleanly); `Refused` when it had changed nothing and `may_refuse`
/// (a restore: the operator who asked was told why); else `Failed`.
pub(crate) fn ended_as(
    err: &anyhow::Error,
    changed: bool,
    rolled_back: bool,
    may_refuse: bool,
) -> Outcome {
    let signalled = matches!(
        code_of(err),
        Code::Interrupted | Code::Terminated | Code::HungUp
    ) || crate::base::interrupt::requested();
    let as_before = !changed || rolled_back;
    if code_of(err) == Code::Locked {
        Outcome::Skipped
    } else if signalled && as_before {
        Outcome::Cancelled
    } else if !changed && may_refuse {
        Outcome::Refused
    } else {
        Outcome::Failed
    }
}

/// One run being recorded.
pub(crate) struct Recorder<'a> {
    dirs: &'a Dirs,
    /// Empty: a run of no instance (`restore DIR`): only the journal event.
    instance: String,
    kind: Kind,
    started: DateTime<Utc>,
    t0: Instant,
    /// Copy the event to the journal also when it goes to a terminal.
    journaled: bool,
    /// The instance's `SYNBACKUP_METRICS` (its config may be gone or broken: on).
    metrics: bool,
    /// The instance's `SYNBACKUP_NOTIFY`.
    notify: Option<Notify>,
}

impl<'a> Recorder<'a> {
    /// Start the clock of a run of `kind` of `instance`.
    pub(crate) fn begin(dirs: &'a Dirs, instance: &str, kind: Kind) -> Self {
        let inst = (!instance.is_empty())
            .then(|| config::load(&dirs.config_dir, instance, &InstanceOverrides::default()).ok())
            .flatten();
        let rec = Recorder {
            dirs,
            instance: instance.to_string(),
            kind,
            started: Utc::now(),
            t0: Instant::now(),
            journaled: false,
            metrics: inst.as_ref().map_or(true, |i| i.metrics),
            notify: inst.and_then(|i| i.notify),
        };
        if let Some(n) = &rec.notify {
            let doc = serde_json::json!({
                "instance": rec.instance,
                "kind": kind.as_str(),
                "event": "start",
                "started": now_str(rec.started),
            });
            notify::send(n, "start", kind.as_str(), &rec.instance, &doc);
        }
        rec
    }

    /// Tell `SYNBACKUP_NOTIFY` how the run ended.
    fn notify_end(&self, st: &Status) {
        if let Some(n) = &self.notify {
            let event = if st.result == Outcome::Success {
                "success"
            } else {
                "failure"
            };
            let mut doc = serde_json::to_value(st).unwrap_or_default();
            doc["event"] = serde_json::json!(event);
            notify::send(n, event, self.kind.as_str(), &self.instance, &doc);
        }
    }

    /// Also copy the final event to the journal when run from a terminal (an
    /// operator's restore or deploy must leave a trace where the timers' do).
    pub(crate) fn journaled(mut self) -> Self {
        self.journaled = true;
        self
    }

    /// When the run began (a backup is named by it).
    pub(crate) fn started(&self) -> DateTime<Utc> {
        self.started
    }

    /// The last recorded run of this kind, if any.
    pub(crate) fn previous(&self) -> Option<Status> {
        status::load(&self.dirs.state_dir, &self.instance, self.kind)
    }

    /// Record a success: the status (its `last_success` now), metrics, event.
    pub(crate) fn succeeded(self, made: Made, event: Event) -> Result<()> {
        let now = now_str(Utc::now());
        let st = Status {
            result: Outcome::Success,
            last_success: Some(now.clone()),
            last_success_backup: made.backup.clone(),
            ..self.status(made, now)
        };
        self.emit(log::Level::Info, self.kind.ok_id(), &event);
        let written = self.write(&st);
        self.notify_end(&st);
        written
    }

    /// Record a failure (`skipped` when the lock was held): the status keeps the
    /// last success; the event is `event`, else "INSTANCE: KIND failed: ERROR".
    /// Writing the status is best effort: the run's own error is what counts.
    pub(crate) fn failed(self, err: &anyhow::Error, made: Made, event: Option<Event>) {
        let result = if code_of(err) == Code::Locked {
            Outcome::Skipped
        } else {
            Outcome::Failed
        };
        self.failed_as(result, err, made, event)
    }

    /// Record a run that chose to back up nothing (`SYNBACKUP_NO_MIRROR=skip`):
    /// `skipped`, exit code 0, `why` as its error; the last success kept.
    pub(crate) fn skipped(self, why: &str, made: Made) {
        let prev = self.previous();
        let st = Status {
            result: Outcome::Skipped,
            exit_code: 0,
            error: Some(why.to_string()),
            last_success: prev.as_ref().and_then(|p| p.last_success.clone()),
            last_success_backup: prev.and_then(|p| p.last_success_backup),
            ..self.status(made, now_str(Utc::now()))
        };
        let who = format!("{}: ", self.instance);
        let event = Event::text(format!("{who}{} skipped: {why}", self.kind.as_str()));
        self.emit(log::Level::Warn, self.kind.failed_id(), &event);
        if let Err(e) = self.write(&st) {
            log::error!(
                "could not record the skipped run of {}: {e:#}",
                self.instance
            );
        }
        self.notify_end(&st);
    }

    /// Record a run that did not succeed as `result` (`Refused`, `Cancelled`: it
    /// changed nothing), as [`Recorder::failed`] does.
    pub(crate) fn failed_as(
        self,
        result: Outcome,
        err: &anyhow::Error,
        made: Made,
        event: Option<Event>,
    ) {
        let prev = self.previous();
        let st = Status {
            result,
            exit_code: code_of(err).as_i32(),
            error: Some(format!("{err:#}")),
            last_success: prev.as_ref().and_then(|p| p.last_success.clone()),
            last_success_backup: prev.and_then(|p| p.last_success_backup),
            ..self.status(made, now_str(Utc::now()))
        };
        let event = event.unwrap_or_else(|| {
            let who = if self.instance.is_empty() {
                String::new()
            } else {
                format!("{}: ", self.instance)
            };
            let verb = match result {
                Outcome::Refused => "refused",
                Outcome::Cancelled => "cancelled",
                _ => "failed",
            };
            Event::text(format!("{who}{} {verb}: {err:#}", self.kind.as_str()))
        });
        self.emit(log::Level::Error, self.kind.failed_id(), &event);
        if let Err(e) = self.write(&st) {
            log::error!("could not record the failure of {}: {e:#}", self.instance);
        }
        self.notify_end(&st);
    }

    /// The fields every record has, as of `finished`.
    fn status(&self, made: Made, finished: String) -> Status {
        Status {
            instance: self.instance.clone(),
            kind: self.kind,
            started: now_str(self.started),
            finished,
            duration_seconds: self.t0.elapsed().as_secs_f64(),
            backup: made.backup,
            bytes: made.bytes,
            freeze_ms: made.freeze_ms,
            backups_kept: made.backups_kept,
            details: made.details,
            ..Status::default()
        }
    }

    /// The status file and the metrics (nothing for a run of no instance).
    fn write(&self, st: &Status) -> Result<()> {
        if self.instance.is_empty() {
            return Ok(());
        }
        status::record(
            &self.dirs.state_dir,
            &self.dirs.metrics_dir,
            self.metrics,
            st,
        )
    }

    fn emit(&self, level: log::Level, id: &str, event: &Event) {
        let fields: Vec<(&str, &str)> =
            event.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let log = if self.journaled {
            logging::event_journaled
        } else {
            logging::event
        };
        log(level, id, &self.instance, &fields, &event.text);
    }
}

/// Complete backups of the instance in its root (what `backups_kept` counts).
pub(crate) fn backups_kept(inst: &Instance) -> usize {
    catalog::scan(&inst.backup_root, &inst.name)
        .map(|v| v.iter().filter(|e| e.state != State::Partial).count())
        .unwrap_or(0)
}

/// The start of a scheduled run of `kind` (the nightly backup, a window): its
/// recorder, the instance (a bad config recorded as a failed run, unless there is
/// no config file at all: a typo must not leave state that alerts forever) and the
/// instance lock, waited for within `SYNBACKUP_LOCK_WAIT` (one that gives up is
/// recorded as skipped).
pub(crate) fn begin_locked<'a>(
    dirs: &'a Dirs,
    name: &str,
    overrides: &InstanceOverrides,
    kind: Kind,
) -> Result<(Instance, lock::InstanceLock, Recorder<'a>)> {
    let rec = Recorder::begin(dirs, name, kind);
    config::check_name(name)?;
    let inst = match config::load(&dirs.config_dir, name, overrides) {
        Ok(inst) => inst,
        Err(e) if !config::file_exists(&dirs.config_dir, name) => return Err(e),
        Err(e) => {
            rec.failed(&e, Made::default(), None);
            return Err(crate::base::exit::reported(&e));
        }
    };
    let what = if kind == Kind::Backup {
        "run"
    } else {
        kind.as_str()
    };
    match lock::acquire_within(&dirs.lock_dir, &inst.name, what, inst.lock_wait) {
        Ok(held) => Ok((inst, held, rec)),
        Err(e) => {
            let made = Made {
                backups_kept: backups_kept(&inst),
                ..Made::default()
            };
            rec.failed(&e, made, None);
            Err(crate::base::exit::reported(&e))
        }
    }
}

/// Replace the unit's last progress line with the result just recorded.
pub(crate) fn leave_final_status(dirs: &Dirs, instance: &str, kind: Kind) {
    if let Some(st) = status::load(&dirs.state_dir, instance, kind) {
        crate::host::systemd::status(&status::final_line(&st));
        crate::host::systemd::barrier(std::time::Duration::from_secs(5));
    }
}
