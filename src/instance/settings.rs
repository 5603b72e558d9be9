// SPDX-License-Identifier: Apache-2.0
//! Every key of `INSTANCE.conf`, declared once: its name, what it accepts (its
//! kind), what an unset or empty key means, and a line saying what to set. The
//! loader (`config.rs`) reads values through these declarations, the "did you
//! mean" list of an unknown key is [`SETTINGS`], and the tests below hold
//! synbackup.conf(5) and the example config to the same keys and defaults.
//!
//! Each kind checks its values in one place and says what it accepts when a value
//! is wrong: a typo must not pass as a default.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::base::units::{parse_duration, parse_size};
use crate::engine::envcopy::CopyMode;
use crate::engine::freeze::FreezeMode;
use crate::engine::teleurl::Endpoint;
use crate::host::transient::Isolation;
use crate::instance::source::{NoMirror, SourceMode};

/// What a setting accepts: `parse` turns a value into its type, or says what is
/// accepted ("an absolute path").
pub(crate) trait Kind {
    type Value;
    fn parse(&self, text: &str) -> Result<Self::Value, String>;
}

/// An absolute path.
pub(crate) struct AbsPath;

impl Kind for AbsPath {
    type Value = PathBuf;
    fn parse(&self, text: &str) -> Result<PathBuf, String> {
        if text.starts_with('/') {
            Ok(PathBuf::from(text))
        } else {
            Err("an absolute path".into())
        }
    }
}

/// A program: a name found in PATH, or a path.
pub(crate) struct Program;

impl Kind for Program {
    type Value = PathBuf;
    fn parse(&self, text: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(text))
    }
}

/// A whole number in a range.
pub(crate) struct Count(RangeInclusive<u32>);

impl Kind for Count {
    type Value = u32;
    fn parse(&self, text: &str) -> Result<u32, String> {
        text.parse::<u32>()
            .ok()
            .filter(|n| self.0.contains(n))
            .ok_or_else(|| format!("a whole number from {} to {}", self.0.start(), self.0.end()))
    }
}

/// A duration (`26h`, `90m`, `1d12h`, seconds).
pub(crate) struct Span;

impl Kind for Span {
    type Value = Duration;
    fn parse(&self, text: &str) -> Result<Duration, String> {
        parse_duration(text).map_err(|e| format!("a duration such as 26h or 90m ({e})"))
    }
}

/// A size in bytes (`10GiB`, `512M`).
pub(crate) struct Bytes;

impl Kind for Bytes {
    type Value = u64;
    fn parse(&self, text: &str) -> Result<u64, String> {
        parse_size(text).map_err(|e| format!("a size such as 10GiB ({e})"))
    }
}

/// One of a few words, each standing for a value.
pub(crate) struct OneOf<T: 'static>(&'static [(&'static str, T)]);

impl<T: Copy> Kind for OneOf<T> {
    type Value = T;
    fn parse(&self, text: &str) -> Result<T, String> {
        if let Some((_, v)) = self.0.iter().find(|(w, _)| *w == text) {
            return Ok(*v);
        }
        let words: Vec<&str> = self.0.iter().map(|(w, _)| *w).collect();
        Err(match words.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        })
    }
}

/// Free text.
pub(crate) struct Text;

impl Kind for Text {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        Ok(text.to_string())
    }
}

/// A cell: an absolute service directory, or a `tcp://` / `ssl://` telepath URL.
pub(crate) struct Cell;

impl Kind for Cell {
    type Value = Endpoint;
    fn parse(&self, text: &str) -> Result<Endpoint, String> {
        Endpoint::parse(text).map_err(|why| {
            format!("an absolute service directory or a tcp:// or ssl:// telepath URL ({why})")
        })
    }
}

/// Space-separated cells (directories or URLs).
pub(crate) struct Cells;

impl Kind for Cells {
    type Value = Vec<Endpoint>;
    fn parse(&self, text: &str) -> Result<Vec<Endpoint>, String> {
        text.split_whitespace()
            .map(|w| Cell.parse(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| format!("space-separated {why}"))
    }
}

/// Space-separated words.
pub(crate) struct Words;

impl Kind for Words {
    type Value = Vec<String>;
    fn parse(&self, text: &str) -> Result<Vec<String>, String> {
        Ok(text.split_whitespace().map(String::from).collect())
    }
}

/// A systemd unit name.
pub(crate) struct UnitName;

impl Kind for UnitName {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        if text.contains('/') || text.contains(char::is_whitespace) {
            Err("a unit name such as synapse-cortex@cortex00.service".into())
        } else {
            Ok(text.to_string())
        }
    }
}

/// The share of pack data restic's `--read-data-subset` takes: `N%`, `n/t` or a
/// size (`2G`).
pub(crate) struct Share;

impl Kind for Share {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        if valid_subset(text) {
            Ok(text.to_string())
        } else {
            Err("a share such as 5%, 1/10 or 2G (restic's --read-data-subset)".into())
        }
    }
}

/// A `--read-data-subset` value restic takes: `N%`, `n/t` or a size (`2G`).
fn valid_subset(s: &str) -> bool {
    if let Some(p) = s.strip_suffix('%') {
        return p.parse::<f64>().is_ok_and(|v| v > 0.0 && v <= 100.0);
    }
    if let Some((n, t)) = s.split_once('/') {
        return matches!((n.parse::<u32>(), t.parse::<u32>()), (Ok(n), Ok(t)) if n >= 1 && n <= t);
    }
    let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', 't', 'T']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.parse::<u64>().is_ok_and(|v| v > 0)
}

/// What a key left out means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unset {
    /// It must be set.
    Required,
    /// This value, written as in the file (and as synbackup.conf(5)'s `Default:`).
    Default(&'static str),
    /// Nothing: the feature is off, or the loader finds the value elsewhere (the
    /// unit, the local policy, the CPUs).
    Absent,
}

/// What an empty value (`KEY=`) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blank {
    /// The same as leaving the key out.
    Unset,
    /// A value like any other, checked by the kind (most kinds refuse it).
    Checked,
}

/// One setting.
pub(crate) struct Setting<K> {
    pub(crate) key: &'static str,
    pub(crate) kind: K,
    pub(crate) unset: Unset,
    pub(crate) blank: Blank,
    /// What to set it to, for "KEY is missing: set it to ...".
    pub(crate) doc: &'static str,
}

/// A setting of any kind, as the list of all of them holds it.
/// (`unset` and `check` serve the tests that hold the man page and the defaults to
/// the declarations.)
pub(crate) trait Declared {
    fn key(&self) -> &'static str;
    #[cfg(test)]
    fn unset(&self) -> Unset;
    /// Check `text` as a value: `Err` says what is accepted.
    #[cfg(test)]
    fn check(&self, text: &str) -> Result<(), String>;
}

impl<K: Kind> Declared for Setting<K> {
    fn key(&self) -> &'static str {
        self.key
    }
    #[cfg(test)]
    fn unset(&self) -> Unset {
        self.unset
    }
    #[cfg(test)]
    fn check(&self, text: &str) -> Result<(), String> {
        self.kind.parse(text).map(|_| ())
    }
}

/// The settings as `NAME: KIND = KEY, CHECK, UNSET, BLANK, DOC;`, and [`SETTINGS`]
/// listing them all, so that no declared key can be missing from the list.
macro_rules! settings {
    ($($name:ident: $kind:ty = $key:literal, $check:expr, $unset:expr, $blank:ident, $doc:literal;)*) => {
        $(pub(crate) const $name: Setting<$kind> = Setting {
            key: $key,
            kind: $check,
            unset: $unset,
            blank: Blank::$blank,
            doc: $doc,
        };)*
        /// Every setting, in the order "known keys" lists them.
        pub(crate) const SETTINGS: &[&dyn Declared] = &[$(&$name),*];
    };
}

/// A retention count.
const KEEP: Count = Count(0..=100_000);
/// yes or no, for a switch.
const YES_NO: OneOf<bool> = OneOf(&[("yes", true), ("no", false)]);

use Unset::{Absent, Default, Required};

settings! {
    SERVICE_DIR: AbsPath = "SYNBACKUP_SERVICE_DIR", AbsPath, Required, Checked,
        "the service directory (required, absolute path)";
    SERVICE_UNIT: UnitName = "SYNBACKUP_SERVICE_UNIT", UnitName, Absent, Unset,
        "the unit that runs the service (e.g. synapse-cortex@cortex00.service)";
    BACKUP_ROOT: AbsPath = "SYNBACKUP_BACKUP_ROOT", AbsPath, Required, Checked,
        "where backups go (required, absolute path)";
    KEEP_LAST: Count = "SYNBACKUP_KEEP_LAST", KEEP, Default("3"), Checked, "a number (default 3)";
    KEEP_DAILY: Count = "SYNBACKUP_KEEP_DAILY", KEEP, Default("7"), Checked, "a number (default 7)";
    KEEP_WEEKLY: Count = "SYNBACKUP_KEEP_WEEKLY", KEEP, Default("4"), Checked, "a number (default 4)";
    KEEP_MONTHLY: Count = "SYNBACKUP_KEEP_MONTHLY", KEEP, Default("6"), Checked,
        "a number (default 6)";
    SKIPDIRS: Words = "SYNBACKUP_SKIPDIRS", Words, Absent, Unset, "space-separated glob patterns";
    JOBS: Count = "SYNBACKUP_JOBS", Count(1..=256), Absent, Checked, "a number from 1 to 256";
    FREEZE: OneOf<FreezeMode> = "SYNBACKUP_FREEZE",
        OneOf(&[
            ("auto", FreezeMode::Auto),
            ("always", FreezeMode::Always),
            ("never", FreezeMode::Never),
        ]),
        Default("auto"), Checked, "auto, always or never (default auto)";
    FREEZE_TIMEOUT: Span = "SYNBACKUP_FREEZE_TIMEOUT", Span, Default("120s"), Checked,
        "a duration (default 120s)";
    SOURCE: OneOf<SourceMode> = "SYNBACKUP_SOURCE",
        OneOf(&[
            ("leader", SourceMode::Leader),
            ("mirror", SourceMode::Mirror),
            ("auto", SourceMode::Auto),
        ]),
        Default("leader"), Checked,
        "leader, mirror or auto (default leader): back up the leader, one of SYNBACKUP_MIRRORS, or a mirror when one is ready and else the leader";
    // Absent: SYNBACKUP_SERVICE_DIR (config.rs).
    LEADER: Cell = "SYNBACKUP_LEADER", Cell, Absent, Unset,
        "the leader: its service directory (whose sock answers telepath) or a tcp:// or ssl:// telepath URL (default: a local mirror's mirror:/parent: URL, else SYNBACKUP_SERVICE_DIR)";
    MIRRORS: Cells = "SYNBACKUP_MIRRORS", Cells, Absent, Unset,
        "the leader's mirrors, space-separated: service directories on this host (backed up, tried in order) or telepath URLs (only compared by restore)";
    NO_MIRROR: OneOf<NoMirror> = "SYNBACKUP_NO_MIRROR",
        OneOf(&[
            ("fail", NoMirror::Fail),
            ("leader", NoMirror::Leader),
            ("skip", NoMirror::Skip),
        ]),
        Default("fail"), Checked,
        "fail, leader or skip (default fail): what SYNBACKUP_SOURCE=mirror does when no mirror is ready";
    MIRROR_WAIT: Span = "SYNBACKUP_MIRROR_WAIT", Span, Default("2m"), Checked,
        "a duration (default 2m): how long a mirror is given to apply the leader's nexus index";
    BOOT_WAIT: Span = "SYNBACKUP_BOOT_WAIT", Span, Default("5m"), Checked,
        "a duration a backup waits for a service that runs but does not answer on its socket yet (booting) before it refuses (default 5m)";
    // Absent: the default depends on SYNBACKUP_OFFSITE_REPOSITORY (config.rs).
    COMPACT: OneOf<CopyMode> = "SYNBACKUP_COMPACT",
        OneOf(&[("yes", CopyMode::Compact), ("no", CopyMode::Plain)]), Absent, Checked,
        "yes or no: compact the environments of nightly backups (default yes, no with an offsite repository)";
    MIN_FREE: Bytes = "SYNBACKUP_MIN_FREE", Bytes, Default("0"), Checked,
        "a size that must stay free (default 0), e.g. 10GiB";
    MAX_AGE: Span = "SYNBACKUP_MAX_AGE", Span, Default("26h"), Checked, "a duration (default 26h)";
    NEXUS_TRIM: OneOf<bool> = "SYNBACKUP_NEXUS_TRIM",
        OneOf(&[("no", false), ("after-archive", true)]), Default("no"), Checked,
        "no or after-archive (default no): after each nightly run, trim the cell's nexus log as `synbackup nexus-trim` does";
    NEXUS_MAX_LAG: Span = "SYNBACKUP_NEXUS_MAX_LAG", Span, Default("15m"), Checked,
        "a duration (default 15m): status fails when the cell has changes the nexus archive lacks and its newest entry is older";
    STOP_TIMEOUT: Span = "SYNBACKUP_STOP_TIMEOUT", Span, Default("5m"), Checked,
        "a duration (default 5m)";
    HEALTH_TIMEOUT: Span = "SYNBACKUP_HEALTH_TIMEOUT", Span, Default("5m"), Checked,
        "a duration (default 5m)";
    COLD_KEEP_OLD: Span = "SYNBACKUP_COLD_KEEP_OLD", Span, Default("7d"), Checked,
        "a duration (default 7d)";
    NOTIFY: AbsPath = "SYNBACKUP_NOTIFY", AbsPath, Absent, Unset,
        "a command (root's, writable by nobody else) run as COMMAND start|success|failure KIND INSTANCE, the outcome as JSON on stdin";
    NOTIFY_TIMEOUT: Span = "SYNBACKUP_NOTIFY_TIMEOUT", Span, Default("30s"), Checked,
        "a duration (default 30s): then the notify command is killed";
    KEEP_ASIDE: Span = "SYNBACKUP_KEEP_ASIDE", Span, Default("7d"), Checked,
        "a duration (default 7d): how long a restore's DIR.pre-restore-TIME is kept";
    CERT_DIR: AbsPath = "SYNBACKUP_CERT_DIR", AbsPath, Absent, Checked,
        "the service's certificate directory (default: from the unit, ~/.syn/certs of its User= or its SYN_CERT_DIR)";
    CERT_WARN_DAYS: Count = "SYNBACKUP_CERT_WARN_DAYS", KEEP, Default("30"), Checked,
        "warn when a certificate has fewer days left (default 30)";
    CERT_NAMES: Words = "SYNBACKUP_CERT_NAMES", Words, Absent, Unset,
        "space-separated names clients reach the HTTPS server by (checked in sslcert.pem)";
    CERT_ACCEPT: Words = "SYNBACKUP_CERT_ACCEPT", Words, Absent, Unset,
        "warnings of the certificate check accepted on purpose (self-signed, kept-key): reported as accepted, not as problems";
    LOCK_WAIT: Span = "SYNBACKUP_LOCK_WAIT", Span, Default("1h"), Checked,
        "a duration a run, window, restore, drill or certs deploy waits for another to finish (default 1h)";
    DRILL_PYTHON: Program = "SYNBACKUP_DRILL_PYTHON", Program, Absent, Unset,
        "the Python a drill runs (default: from the unit's ExecStart)";
    DRILL_MODULE: Text = "SYNBACKUP_DRILL_MODULE", Text, Absent, Unset,
        "the server module a drill runs, e.g. synapse.servers.cortex (default: from ExecStart)";
    DRILL_CHECK: Text = "SYNBACKUP_DRILL_CHECK", Text, Absent, Unset,
        "a Storm query a drill runs, which must succeed";
    DRILL_TIMEOUT: Span = "SYNBACKUP_DRILL_TIMEOUT", Span, Default("10m"), Checked,
        "a duration (default 10m)";
    OFFSITE_REPOSITORY: Text = "SYNBACKUP_OFFSITE_REPOSITORY", Text, Absent, Unset,
        "a restic repository (a path, sftp:, rest:, s3:, b2:, rclone:, ...): each verified backup is copied there";
    // Absent: required with a repository (config.rs).
    OFFSITE_PASSWORD_FILE: AbsPath = "SYNBACKUP_OFFSITE_PASSWORD_FILE", AbsPath, Absent, Checked,
        "the file holding the restic repository's password (required with a repository, absolute path)";
    OFFSITE_ENV_FILE: AbsPath = "SYNBACKUP_OFFSITE_ENV_FILE", AbsPath, Absent, Unset,
        "a KEY=value file of backend credentials for restic, e.g. AWS_ACCESS_KEY_ID (absolute path; never logged)";
    // Absent: the local policy's counts (config.rs).
    OFFSITE_KEEP_LAST: Count = "SYNBACKUP_OFFSITE_KEEP_LAST", KEEP, Absent, Checked,
        "a number (default: SYNBACKUP_KEEP_LAST)";
    OFFSITE_KEEP_DAILY: Count = "SYNBACKUP_OFFSITE_KEEP_DAILY", KEEP, Absent, Checked,
        "a number (default: SYNBACKUP_KEEP_DAILY)";
    OFFSITE_KEEP_WEEKLY: Count = "SYNBACKUP_OFFSITE_KEEP_WEEKLY", KEEP, Absent, Checked,
        "a number (default: SYNBACKUP_KEEP_WEEKLY)";
    OFFSITE_KEEP_MONTHLY: Count = "SYNBACKUP_OFFSITE_KEEP_MONTHLY", KEEP, Absent, Checked,
        "a number (default: SYNBACKUP_KEEP_MONTHLY)";
    OFFSITE_CHECK: Share = "SYNBACKUP_OFFSITE_CHECK", Share, Default("5%"), Checked,
        "the share of pack data `offsite check` reads, as restic's --read-data-subset takes it: 5%, 1/10, 2G (default 5%)";
    OFFSITE_PRUNE: Span = "SYNBACKUP_OFFSITE_PRUNE", Span, Default("7d"), Checked,
        "a duration: `run` prunes the repository (forget --prune) when the last prune is older (default 7d; 0: every run)";
    RESTIC: Program = "SYNBACKUP_RESTIC", Program, Default("restic"), Unset,
        "the restic binary (default restic, from PATH)";
    DRILL_ISOLATION: OneOf<Isolation> = "SYNBACKUP_DRILL_ISOLATION",
        OneOf(&[
            ("auto", Isolation::Auto),
            ("systemd-run", Isolation::SystemdRun),
            ("netns", Isolation::Netns),
        ]),
        Default("auto"), Checked,
        "auto, systemd-run or netns (default auto: a transient unit when systemd runs)";
    DRILL_AFTER_RUN: OneOf<bool> = "SYNBACKUP_DRILL_AFTER_RUN", YES_NO, Default("no"), Unset,
        "yes or no (default no): every run drills the backup it made";
    DRILL_SAFEMODE: OneOf<bool> = "SYNBACKUP_DRILL_SAFEMODE", YES_NO, Default("yes"), Unset,
        "yes or no (default yes): a drill boots the copy in Synapse's safemode (no crons, triggers, dmons, storm pools)";
    METRICS: OneOf<bool> = "SYNBACKUP_METRICS", YES_NO, Default("yes"), Unset,
        "yes or no (default yes): write this instance's metrics for node_exporter's textfile collector";
}

/// The declared setting named `key`.
pub(crate) fn find(key: &str) -> Option<&'static dyn Declared> {
    SETTINGS.iter().copied().find(|s| s.key() == key)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn read(rel: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// The keys a text names as `KEY=`, within `*...*` in the man page.
    fn named(text: &str, prefix: &str, suffix: &str) -> BTreeSet<String> {
        text.split(prefix)
            .skip(1)
            .filter_map(|rest| {
                let key: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest[key.len()..]
                    .starts_with(suffix)
                    .then(|| format!("SYNBACKUP_{key}"))
            })
            .collect()
    }

    fn declared() -> BTreeSet<String> {
        SETTINGS.iter().map(|s| s.key().to_string()).collect()
    }

    /// Fail, naming them, when `found` in `file` and the declared keys differ.
    fn assert_same_keys(found: &BTreeSet<String>, file: &str) {
        let declared = declared();
        let undeclared: Vec<_> = found.difference(&declared).collect();
        let missing: Vec<_> = declared.difference(found).collect();
        assert!(
            undeclared.is_empty() && missing.is_empty(),
            "{file} has keys src/instance/settings.rs does not declare: {undeclared:?}; \
             declared keys {file} lacks: {missing:?}"
        );
    }

    #[test]
    fn keys_are_declared_once_and_every_default_is_valid() {
        assert_eq!(declared().len(), SETTINGS.len(), "a key declared twice");
        for s in SETTINGS {
            if let Default(d) = s.unset() {
                assert_eq!(s.check(d), Ok(()), "{}'s default {d:?}", s.key());
            }
        }
        assert_eq!(LOCK_WAIT.unset, Default("1h"));
        assert_eq!(MAX_AGE.unset, Default("26h"));
        assert_eq!(
            Span.parse("26h").unwrap(),
            crate::instance::config::DEFAULT_MAX_AGE
        );
    }

    /// synbackup.conf(5) has an entry `*KEY=*` for every declared key and none
    /// other, each saying its default as `Default: *VALUE*`.
    #[test]
    fn synbackup_conf_5_documents_every_setting_and_its_default() {
        let page = read("man/synbackup.conf.5.scd");
        let documented = named(&page, "*SYNBACKUP_", "=*");
        assert_same_keys(&documented, "man/synbackup.conf.5.scd");
        for s in SETTINGS {
            let Default(d) = s.unset() else { continue };
            let entry = page
                .split(&format!("*{}=*", s.key()))
                .nth(1)
                .and_then(|rest| rest.split("\n*SYNBACKUP_").next())
                .and_then(|rest| rest.split("\n# ").next())
                .unwrap_or_default();
            assert!(
                entry.contains(&format!("Default: *{d}*")),
                "synbackup.conf(5) does not say `Default: *{d}*` for {}",
                s.key()
            );
        }
    }

    #[test]
    fn the_example_config_shows_every_setting_and_no_other() {
        let example = read("packaging/instance.conf");
        assert_same_keys(
            &named(&example, "SYNBACKUP_", "="),
            "packaging/instance.conf",
        );
    }

    #[test]
    fn one_of_says_the_words_it_takes() {
        assert_eq!(YES_NO.parse("maybe"), Err("yes or no".to_string()));
        assert_eq!(FREEZE.kind.parse("x"), Err("auto, always or never".into()));
        assert_eq!(DRILL_AFTER_RUN.kind.parse("yes"), Ok(true));
    }
}
