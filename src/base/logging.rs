// SPDX-License-Identifier: Apache-2.0
//! Where log records go: the journal when stderr is connected to it (a unit's
//! `JOURNAL_STREAM`), else stderr, drawn around the progress bar on a terminal.
//!
//! Journal records keep `log`'s key-values as journal fields, so code can attach
//! `SYNBACKUP_INSTANCE` or a `MESSAGE_ID` and `journalctl MESSAGE_ID=...` finds them.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The progress bar currently drawn on the terminal, if any: log lines are printed
/// above it instead of through it.
static BAR: OnceLock<Mutex<Option<indicatif::ProgressBar>>> = OnceLock::new();

fn bar_slot() -> &'static Mutex<Option<indicatif::ProgressBar>> {
    BAR.get_or_init(|| Mutex::new(None))
}

/// Register (or clear) the progress bar log lines must not tear.
pub(crate) fn set_progress_bar(bar: Option<indicatif::ProgressBar>) {
    if let Ok(mut slot) = bar_slot().lock() {
        *slot = bar;
    }
}

/// The level for `-q` / `-v` counts.
pub(crate) fn level_for(verbose: u8, quiet: bool) -> LevelFilter {
    if quiet {
        return LevelFilter::Error;
    }
    match verbose {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// True when stderr is the journal (set up by systemd for a unit's output).
pub(crate) fn stderr_is_journal() -> bool {
    systemd_journal_logger::connected_to_journal()
}

/// Install the logger. Never fails: with no journal we fall back to stderr.
pub(crate) fn init(level: LevelFilter) {
    if stderr_is_journal() {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            let logger = logger.with_syslog_identifier("synbackup".to_string());
            if logger.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(StderrLog { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Plain `synbackup: level: message` lines on stderr.
struct StderrLog {
    level: LevelFilter,
}

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let line = format!("synbackup: {prefix}: {}", record.args());
        let bar = bar_slot().lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) if !bar.is_hidden() => bar.suspend(|| eprintln!("{line}")),
            _ => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Journal MESSAGE_IDs of the events an administrator searches for (also listed in
/// synbackup(8)): `journalctl MESSAGE_ID=...`.
pub(crate) const MSG_BACKUP_OK: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e01";
/// A `run` failed.
pub(crate) const MSG_BACKUP_FAILED: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e02";
/// A maintenance window succeeded.
pub(crate) const MSG_COLD_OK: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e03";
/// A maintenance window failed (and was rolled back).
pub(crate) const MSG_COLD_FAILED: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e04";
/// A restore finished.
pub(crate) const MSG_RESTORE_OK: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e05";
/// A restore failed (rolled back when it got as far as stopping the service).
pub(crate) const MSG_RESTORE_FAILED: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e06";

/// A restore drill passed.
pub(crate) const MSG_DRILL_OK: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e16";
/// A restore drill failed.
pub(crate) const MSG_DRILL_FAILED: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e17";
/// A backup was copied to the offsite repository.
pub(crate) const MSG_OFFSITE_OK: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e20";
/// The offsite copy of a backup failed (the local backup is kept).
pub(crate) const MSG_OFFSITE_FAILED: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e21";
/// `synbackup offsite check` found the repository damaged or could not check it.
pub(crate) const MSG_OFFSITE_CHECK_FAILED: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e22";
/// A certificate entered the warning window or expired (`synbackup certs`).
pub(crate) const MSG_CERT_EXPIRY: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e07";
/// `certs deploy` put a new HTTPS pair in place and the cell serves it.
pub(crate) const MSG_CERT_DEPLOY_OK: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e24";
/// `certs deploy` refused a pair, or failed and put the old one back.
pub(crate) const MSG_CERT_DEPLOY_FAILED: &str = "6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e25";

/// Log one event with a fixed MESSAGE_ID and the instance as journal fields (plain
/// text on stderr).
pub(crate) fn event(
    level: Level,
    message_id: &str,
    instance: &str,
    fields: &[(&str, &str)],
    text: &str,
) {
    emit(log::logger(), level, message_id, instance, fields, text);
}

/// As `event`, and into the journal also when run from a shell (stderr is not the
/// journal): an administrator's action, such as a restore, is found there either way.
pub(crate) fn event_journaled(
    level: Level,
    message_id: &str,
    instance: &str,
    fields: &[(&str, &str)],
    text: &str,
) {
    event(level, message_id, instance, fields, text);
    journal_copy(level, message_id, instance, fields, text);
}

/// Send an event (already logged by `event`) to the journal too when stderr is
/// not the journal; nothing when there is no journal.
pub(crate) fn journal_copy(
    level: Level,
    message_id: &str,
    instance: &str,
    fields: &[(&str, &str)],
    text: &str,
) {
    if !stderr_is_journal() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            let j = j.with_syslog_identifier("synbackup".to_string());
            emit(&j, level, message_id, instance, fields, text);
        }
    }
}

fn emit(
    logger: &dyn log::Log,
    level: Level,
    message_id: &str,
    instance: &str,
    fields: &[(&str, &str)],
    text: &str,
) {
    let mut kvs: Vec<(&str, &str)> =
        vec![("MESSAGE_ID", message_id), ("SYNBACKUP_INSTANCE", instance)];
    kvs.extend_from_slice(fields);
    let kvs: &dyn log::kv::Source = &kvs;
    if level <= log::max_level() {
        logger.log(
            &Record::builder()
                .level(level)
                .target("synbackup")
                .args(format_args!("{text}"))
                .key_values(kvs)
                .build(),
        );
    }
}
