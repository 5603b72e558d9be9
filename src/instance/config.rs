// SPDX-License-Identifier: Apache-2.0
//! Instance configuration: `CONFIG_DIR/INSTANCE.conf` in systemd's EnvironmentFile
//! syntax, so the units load it with `EnvironmentFile=/etc/synbackup/%i.conf` and
//! the command line reads the very same file.
//!
//! Precedence: the file, then the same keys from the environment (a unit has loaded
//! the file into it; a test may set them), then command-line flags. Unknown keys,
//! missing required keys and bad values are errors naming `file:line`, the key and
//! what is accepted: a typo must not silently turn into a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{fail, Code};
use crate::base::units::{parse_duration, parse_size};
use crate::engine::envcopy::CopyMode;
use crate::engine::freeze::FreezeMode;
use crate::host::transient::Isolation;

/// Instance settings (also read from INSTANCE.conf and the environment).
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct InstanceOverrides {
    /// The service directory (SYNBACKUP_SERVICE_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) service_dir: Option<PathBuf>,
    /// The unit that runs the service (SYNBACKUP_SERVICE_UNIT).
    #[arg(long, value_name = "UNIT")]
    pub(crate) service_unit: Option<String>,
    /// Where the instance's backups go (SYNBACKUP_BACKUP_ROOT).
    #[arg(long, value_name = "DIR")]
    pub(crate) backup_root: Option<PathBuf>,
}

/// Every key, its default and what it accepts (also in synbackup.conf(5)).
pub(crate) const KEYS: &[(&str, &str)] = &[
    (
        "SYNBACKUP_SERVICE_DIR",
        "the service directory (required, absolute path)",
    ),
    (
        "SYNBACKUP_SERVICE_UNIT",
        "the unit that runs the service (e.g. synapse-cortex@cortex00.service)",
    ),
    (
        "SYNBACKUP_BACKUP_ROOT",
        "where backups go (required, absolute path)",
    ),
    ("SYNBACKUP_KEEP_LAST", "a number (default 3)"),
    ("SYNBACKUP_KEEP_DAILY", "a number (default 7)"),
    ("SYNBACKUP_KEEP_WEEKLY", "a number (default 4)"),
    ("SYNBACKUP_KEEP_MONTHLY", "a number (default 6)"),
    ("SYNBACKUP_SKIPDIRS", "space-separated glob patterns"),
    ("SYNBACKUP_JOBS", "a number from 1 to 256"),
    ("SYNBACKUP_FREEZE", "auto, always or never (default auto)"),
    ("SYNBACKUP_FREEZE_TIMEOUT", "a duration (default 120s)"),
    (
        "SYNBACKUP_COMPACT",
        "yes or no: compact the environments of nightly backups (default yes, no with an offsite repository)",
    ),
    (
        "SYNBACKUP_MIN_FREE",
        "a size that must stay free (default 0), e.g. 10GiB",
    ),
    ("SYNBACKUP_MAX_AGE", "a duration (default 26h)"),
    ("SYNBACKUP_STOP_TIMEOUT", "a duration (default 5m)"),
    ("SYNBACKUP_HEALTH_TIMEOUT", "a duration (default 5m)"),
    ("SYNBACKUP_COLD_KEEP_OLD", "a duration (default 7d)"),
    (
        "SYNBACKUP_CERT_DIR",
        "the service's certificate directory (default: from the unit, ~/.syn/certs of its User= or its SYN_CERT_DIR)",
    ),
    (
        "SYNBACKUP_CERT_WARN_DAYS",
        "warn when a certificate has fewer days left (default 30)",
    ),
    (
        "SYNBACKUP_CERT_NAMES",
        "space-separated names clients reach the HTTPS server by (checked in sslcert.pem)",
    ),
    (
        "SYNBACKUP_LOCK_WAIT",
        "a duration a run or window waits for another to finish (default 1h)",
    ),
    (
        "SYNBACKUP_DRILL_PYTHON",
        "the Python a drill runs (default: from the unit's ExecStart)",
    ),
    (
        "SYNBACKUP_DRILL_MODULE",
        "the server module a drill runs, e.g. synapse.servers.cortex (default: from ExecStart)",
    ),
    (
        "SYNBACKUP_DRILL_CHECK",
        "a Storm query a drill runs, which must succeed",
    ),
    ("SYNBACKUP_DRILL_TIMEOUT", "a duration (default 10m)"),
    (
        "SYNBACKUP_OFFSITE_REPOSITORY",
        "a restic repository (a path, sftp:, rest:, s3:, b2:, rclone:, ...): each verified backup is copied there",
    ),
    (
        "SYNBACKUP_OFFSITE_PASSWORD_FILE",
        "the file holding the restic repository's password (required with a repository, absolute path)",
    ),
    (
        "SYNBACKUP_OFFSITE_ENV_FILE",
        "a KEY=value file of backend credentials for restic, e.g. AWS_ACCESS_KEY_ID (absolute path; never logged)",
    ),
    ("SYNBACKUP_OFFSITE_KEEP_LAST", "a number (default: SYNBACKUP_KEEP_LAST)"),
    ("SYNBACKUP_OFFSITE_KEEP_DAILY", "a number (default: SYNBACKUP_KEEP_DAILY)"),
    ("SYNBACKUP_OFFSITE_KEEP_WEEKLY", "a number (default: SYNBACKUP_KEEP_WEEKLY)"),
    ("SYNBACKUP_OFFSITE_KEEP_MONTHLY", "a number (default: SYNBACKUP_KEEP_MONTHLY)"),
    (
        "SYNBACKUP_OFFSITE_CHECK",
        "the share of pack data `offsite check` reads, as restic's --read-data-subset takes it: 5%, 1/10, 2G (default 5%)",
    ),
    (
        "SYNBACKUP_OFFSITE_PRUNE",
        "a duration: `run` prunes the repository (forget --prune) when the last prune is older (default 7d; 0: every run)",
    ),
    ("SYNBACKUP_RESTIC", "the restic binary (default restic, from PATH)"),
    (
        "SYNBACKUP_DRILL_ISOLATION",
        "auto, systemd-run or netns (default auto: a transient unit when systemd runs)",
    ),
    (
        "SYNBACKUP_DRILL_AFTER_RUN",
        "yes or no (default no): every run drills the backup it made",
    ),
];

/// `SYNBACKUP_MAX_AGE` when unset.
pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(26 * 3600);

/// An instance's settings, validated.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) name: String,
    pub(crate) service_dir: PathBuf,
    pub(crate) service_unit: Option<String>,
    pub(crate) backup_root: PathBuf,
    pub(crate) keep: Keep,
    pub(crate) skipdirs: Vec<String>,
    pub(crate) jobs: Option<u32>,
    pub(crate) freeze: FreezeMode,
    pub(crate) freeze_timeout: Duration,
    /// How nightly backups copy the environments (SYNBACKUP_COMPACT).
    pub(crate) copy: CopyMode,
    pub(crate) min_free: u64,
    pub(crate) max_age: Duration,
    pub(crate) stop_timeout: Duration,
    pub(crate) health_timeout: Duration,
    pub(crate) cold_keep_old: Duration,
    pub(crate) cert_dir: Option<PathBuf>,
    pub(crate) cert_warn_days: u32,
    pub(crate) cert_names: Vec<String>,
    pub(crate) lock_wait: Duration,
    pub(crate) drill_python: Option<PathBuf>,
    pub(crate) drill_module: Option<String>,
    pub(crate) drill_check: Option<String>,
    pub(crate) drill_timeout: Duration,
    /// The offsite copy (restic), when SYNBACKUP_OFFSITE_REPOSITORY is set.
    pub(crate) offsite: Option<Offsite>,
    /// How a drill's server is kept off the network.
    pub(crate) drill_isolation: Isolation,
    /// `run` drills the backup it just made.
    pub(crate) drill_after_run: bool,
}

/// Where and how `run` copies its backups offsite (through restic).
#[derive(Debug, Clone)]
pub(crate) struct Offsite {
    pub(crate) repository: String,
    pub(crate) password_file: PathBuf,
    pub(crate) env_file: Option<PathBuf>,
    pub(crate) keep: Keep,
    pub(crate) check_subset: String,
    pub(crate) prune_every: Duration,
    pub(crate) restic: PathBuf,
}

/// Retention counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep {
    pub(crate) last: u32,
    pub(crate) daily: u32,
    pub(crate) weekly: u32,
    pub(crate) monthly: u32,
}

/// Check an instance name: what systemd allows in an instance, no path parts.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-@:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(fail(
            Code::Usage,
            format!("bad instance name {name:?}: use letters, digits and _ . - @ : (it names CONFIG_DIR/NAME.conf)"),
        ))
    }
}

/// A value with where it came from (for error messages).
#[derive(Debug, Clone)]
struct Value {
    text: String,
    origin: String,
}

/// "unknown key X; did you mean Y?" when one key is close, else the known keys.
fn unknown_key(origin: &str, key: &str) -> String {
    let nearest = KEYS
        .iter()
        .map(|(k, _)| (strsim::jaro_winkler(key, k), *k))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.9);
    match nearest {
        Some((_, k)) => format!("{origin}: unknown key {key}; did you mean {k}?"),
        None => {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            format!(
                "{origin}: unknown key {key}; known keys: {}",
                known.join(", ")
            )
        }
    }
}

/// Parse EnvironmentFile text into key -> (value, "file:line").
fn parse_file(text: &str, path: &Path) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let origin = format!("{}:{}", path.display(), i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(fail(
                Code::Usage,
                format!("{origin}: expected KEY=value, found {line:?}"),
            ));
        };
        let key = key.trim();
        if !KEYS.iter().any(|(k, _)| *k == key) {
            return Err(fail(Code::Usage, unknown_key(&origin, key)));
        }
        let mut value = value.trim().to_string();
        for q in ['"', '\''] {
            if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
                value = value[1..value.len() - 1].to_string();
            }
        }
        out.insert(
            key.to_string(),
            Value {
                text: value,
                origin,
            },
        );
    }
    Ok(out)
}

/// Load and validate instance `name` from `config_dir`, the environment and flags.
pub(crate) fn load(config_dir: &Path, name: &str, flags: &InstanceOverrides) -> Result<Instance> {
    load_with(config_dir, name, flags, true)
}

/// Like [`load`], ignoring the environment (the generator runs in systemd's).
pub(crate) fn load_file_only(
    config_dir: &Path,
    name: &str,
    flags: &InstanceOverrides,
) -> Result<Instance> {
    load_with(config_dir, name, flags, false)
}

fn load_with(
    config_dir: &Path,
    name: &str,
    flags: &InstanceOverrides,
    use_env: bool,
) -> Result<Instance> {
    check_name(name)?;
    let path = config_dir.join(format!("{name}.conf"));
    let mut values = match std::fs::read_to_string(&path) {
        Ok(text) => parse_file(&text, &path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            return Err(fail(
                Code::Usage,
                format!("cannot read {}: {e}; fix its permissions (the file may hold paths only root should see)", path.display()),
            ))
        }
    };
    let file_exists = path.exists();
    for (key, _) in KEYS.iter().filter(|_| use_env) {
        if let Ok(v) = std::env::var(key) {
            values.insert(
                key.to_string(),
                Value {
                    text: v,
                    origin: format!("environment {key}"),
                },
            );
        }
    }
    let flag = |key: &str, v: Option<String>, values: &mut BTreeMap<String, Value>| {
        if let Some(v) = v {
            values.insert(
                key.to_string(),
                Value {
                    text: v,
                    origin: "command line".into(),
                },
            );
        }
    };
    flag(
        "SYNBACKUP_SERVICE_DIR",
        flags
            .service_dir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        &mut values,
    );
    flag(
        "SYNBACKUP_SERVICE_UNIT",
        flags.service_unit.clone(),
        &mut values,
    );
    flag(
        "SYNBACKUP_BACKUP_ROOT",
        flags
            .backup_root
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        &mut values,
    );

    let bad = |key: &str, v: &Value, what: &str| {
        fail(
            Code::Usage,
            format!(
                "{}: {key}={:?} is not valid: expected {what}",
                v.origin, v.text
            ),
        )
    };
    let describe = |key: &str| {
        KEYS.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, d)| *d)
            .unwrap_or("")
    };
    let required_path = |key: &str| -> Result<PathBuf> {
        match values.get(key) {
            None => Err(fail(
                Code::Usage,
                if file_exists {
                    format!(
                        "{}: {key} is missing: set it to {}",
                        path.display(),
                        describe(key)
                    )
                } else {
                    format!(
                        "{} does not exist: create it (see /usr/share/doc/synbackup/examples/instance.conf) and set {key}",
                        path.display()
                    )
                },
            )),
            Some(v) if !v.text.starts_with('/') => Err(bad(key, v, "an absolute path")),
            Some(v) => Ok(PathBuf::from(&v.text)),
        }
    };
    let number = |key: &str, default: u32, range: std::ops::RangeInclusive<u32>| -> Result<u32> {
        match values.get(key) {
            None => Ok(default),
            Some(v) => v
                .text
                .parse::<u32>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    bad(
                        key,
                        v,
                        &format!("a whole number from {} to {}", range.start(), range.end()),
                    )
                }),
        }
    };
    let duration = |key: &str, default: Duration| -> Result<Duration> {
        match values.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(&v.text)
                .map_err(|e| bad(key, v, &format!("a duration such as 26h or 90m ({e})"))),
        }
    };

    let cert_dir = match values.get("SYNBACKUP_CERT_DIR") {
        None => None,
        Some(v) if v.text.starts_with('/') => Some(PathBuf::from(&v.text)),
        Some(v) => return Err(bad("SYNBACKUP_CERT_DIR", v, "an absolute path")),
    };
    let service_dir = required_path("SYNBACKUP_SERVICE_DIR")?;
    let backup_root = required_path("SYNBACKUP_BACKUP_ROOT")?;
    let service_unit = match values.get("SYNBACKUP_SERVICE_UNIT") {
        None => None,
        Some(v) if v.text.is_empty() => None,
        Some(v) if v.text.contains('/') || v.text.contains(char::is_whitespace) => {
            return Err(bad(
                "SYNBACKUP_SERVICE_UNIT",
                v,
                "a unit name such as synapse-cortex@cortex00.service",
            ))
        }
        Some(v) => Some(v.text.clone()),
    };
    let freeze = match values.get("SYNBACKUP_FREEZE") {
        None => FreezeMode::Auto,
        Some(v) => match v.text.as_str() {
            "auto" => FreezeMode::Auto,
            "always" => FreezeMode::Always,
            "never" => FreezeMode::Never,
            _ => return Err(bad("SYNBACKUP_FREEZE", v, "auto, always or never")),
        },
    };
    // Measured (bench/RESULTS.md): plain copies never add more to a restic
    // repository per night than compacted ones (0 to 33 % less), so they are the
    // default where every backup is uploaded.
    let copy = match values.get("SYNBACKUP_COMPACT") {
        None if values.contains_key("SYNBACKUP_OFFSITE_REPOSITORY") => CopyMode::Plain,
        None => CopyMode::Compact,
        Some(v) => match v.text.as_str() {
            "yes" => CopyMode::Compact,
            "no" => CopyMode::Plain,
            _ => return Err(bad("SYNBACKUP_COMPACT", v, "yes or no")),
        },
    };
    let drill_after_run = match values.get("SYNBACKUP_DRILL_AFTER_RUN") {
        None => false,
        Some(v) => match v.text.as_str() {
            "yes" => true,
            "no" | "" => false,
            _ => return Err(bad("SYNBACKUP_DRILL_AFTER_RUN", v, "yes or no")),
        },
    };
    let drill_isolation = match values.get("SYNBACKUP_DRILL_ISOLATION") {
        None => Isolation::Auto,
        Some(v) => Isolation::parse(&v.text)
            .ok_or_else(|| bad("SYNBACKUP_DRILL_ISOLATION", v, "auto, systemd-run or netns"))?,
    };
    let jobs = match values.get("SYNBACKUP_JOBS") {
        None => None,
        Some(_) => Some(number("SYNBACKUP_JOBS", 0, 1..=256)?),
    };
    let min_free = match values.get("SYNBACKUP_MIN_FREE") {
        None => 0,
        Some(v) => parse_size(&v.text).map_err(|e| {
            bad(
                "SYNBACKUP_MIN_FREE",
                v,
                &format!("a size such as 10GiB ({e})"),
            )
        })?,
    };
    let keep = Keep {
        last: number("SYNBACKUP_KEEP_LAST", 3, 0..=100_000)?,
        daily: number("SYNBACKUP_KEEP_DAILY", 7, 0..=100_000)?,
        weekly: number("SYNBACKUP_KEEP_WEEKLY", 4, 0..=100_000)?,
        monthly: number("SYNBACKUP_KEEP_MONTHLY", 6, 0..=100_000)?,
    };
    if keep
        == (Keep {
            last: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
        })
    {
        let origin = values
            .get("SYNBACKUP_KEEP_LAST")
            .map(|v| v.origin.clone())
            .unwrap_or_else(|| path.display().to_string());
        return Err(fail(
            Code::Usage,
            format!("{origin}: every SYNBACKUP_KEEP_* is 0, a policy that keeps nothing: set SYNBACKUP_KEEP_LAST to 1 or more"),
        ));
    }
    let offsite = match values.get("SYNBACKUP_OFFSITE_REPOSITORY") {
        None => None,
        Some(v) if v.text.is_empty() => None,
        Some(v) => {
            let password_file = match values.get("SYNBACKUP_OFFSITE_PASSWORD_FILE") {
                None => {
                    return Err(fail(
                        Code::Usage,
                        format!("{}: SYNBACKUP_OFFSITE_REPOSITORY is set but SYNBACKUP_OFFSITE_PASSWORD_FILE is missing: set it to the file holding the repository's password", v.origin),
                    ))
                }
                Some(_) => required_path("SYNBACKUP_OFFSITE_PASSWORD_FILE")?,
            };
            let env_file = match values.get("SYNBACKUP_OFFSITE_ENV_FILE") {
                None => None,
                Some(e) if e.text.is_empty() => None,
                Some(_) => Some(required_path("SYNBACKUP_OFFSITE_ENV_FILE")?),
            };
            let check_subset = match values.get("SYNBACKUP_OFFSITE_CHECK") {
                None => "5%".to_string(),
                Some(c) if valid_subset(&c.text) => c.text.clone(),
                Some(c) => {
                    return Err(bad(
                        "SYNBACKUP_OFFSITE_CHECK",
                        c,
                        "a share such as 5%, 1/10 or 2G (restic's --read-data-subset)",
                    ))
                }
            };
            Some(Offsite {
                repository: v.text.clone(),
                password_file,
                env_file,
                keep: Keep {
                    last: number("SYNBACKUP_OFFSITE_KEEP_LAST", keep.last, 0..=100_000)?,
                    daily: number("SYNBACKUP_OFFSITE_KEEP_DAILY", keep.daily, 0..=100_000)?,
                    weekly: number("SYNBACKUP_OFFSITE_KEEP_WEEKLY", keep.weekly, 0..=100_000)?,
                    monthly: number("SYNBACKUP_OFFSITE_KEEP_MONTHLY", keep.monthly, 0..=100_000)?,
                },
                check_subset,
                prune_every: duration("SYNBACKUP_OFFSITE_PRUNE", Duration::from_secs(7 * 86400))?,
                restic: values
                    .get("SYNBACKUP_RESTIC")
                    .filter(|r| !r.text.is_empty())
                    .map(|r| PathBuf::from(&r.text))
                    .unwrap_or_else(|| PathBuf::from("restic")),
            })
        }
    };
    if let Some(o) = &offsite {
        if o.keep.last == 0 {
            return Err(fail(
                Code::Usage,
                format!("{}: SYNBACKUP_OFFSITE_KEEP_LAST is 0: the newest snapshot must always be kept; set it to 1 or more", path.display()),
            ));
        }
    }
    Ok(Instance {
        name: name.to_string(),
        service_dir,
        service_unit,
        backup_root,
        keep,
        skipdirs: values
            .get("SYNBACKUP_SKIPDIRS")
            .map(|v| v.text.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        jobs,
        freeze,
        freeze_timeout: duration("SYNBACKUP_FREEZE_TIMEOUT", Duration::from_secs(120))?,
        copy,
        min_free,
        max_age: duration("SYNBACKUP_MAX_AGE", DEFAULT_MAX_AGE)?,
        stop_timeout: duration("SYNBACKUP_STOP_TIMEOUT", Duration::from_secs(300))?,
        health_timeout: duration("SYNBACKUP_HEALTH_TIMEOUT", Duration::from_secs(300))?,
        cold_keep_old: duration("SYNBACKUP_COLD_KEEP_OLD", Duration::from_secs(7 * 86400))?,
        cert_dir,
        cert_warn_days: number("SYNBACKUP_CERT_WARN_DAYS", 30, 0..=100_000)?,
        cert_names: values
            .get("SYNBACKUP_CERT_NAMES")
            .map(|v| v.text.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        lock_wait: duration("SYNBACKUP_LOCK_WAIT", crate::instance::lock::DEFAULT_WAIT)?,
        drill_python: values
            .get("SYNBACKUP_DRILL_PYTHON")
            .filter(|v| !v.text.is_empty())
            .map(|v| PathBuf::from(&v.text)),
        drill_module: values
            .get("SYNBACKUP_DRILL_MODULE")
            .filter(|v| !v.text.is_empty())
            .map(|v| v.text.clone()),
        drill_check: values
            .get("SYNBACKUP_DRILL_CHECK")
            .filter(|v| !v.text.is_empty())
            .map(|v| v.text.clone()),
        drill_timeout: duration("SYNBACKUP_DRILL_TIMEOUT", Duration::from_secs(600))?,
        offsite,
        drill_isolation,
        drill_after_run,
    })
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

/// True when `CONFIG_DIR/NAME.conf` exists (the instance is configured).
pub(crate) fn file_exists(config_dir: &Path, name: &str) -> bool {
    check_name(name).is_ok() && config_dir.join(format!("{name}.conf")).exists()
}

/// The instances configured in `config_dir` (every `NAME.conf`), sorted.
pub(crate) fn instance_names(config_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(config_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => {
            return Err(fail(
                Code::Usage,
                format!("cannot read {}: {e}", config_dir.display()),
            ))
        }
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = n.strip_suffix(".conf") {
            if check_name(stem).is_ok() {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The instances a command names: `one`, or every configured instance.
pub(crate) fn selected(config_dir: &Path, one: Option<&str>) -> Result<Vec<String>> {
    match one {
        Some(n) => {
            check_name(n)?;
            Ok(vec![n.to_string()])
        }
        None => instance_names(config_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Instance> {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("c0.conf"), text).unwrap();
        load(t.path(), "c0", &InstanceOverrides::default())
    }

    fn err(text: &str) -> String {
        format!("{:#}", load_text(text).unwrap_err())
    }

    #[test]
    fn full_config() {
        let i = load_text(
            "# comment\n\nSYNBACKUP_SERVICE_DIR=/data/c0\nSYNBACKUP_SERVICE_UNIT=\"synapse-cortex@c0.service\"\n\
             SYNBACKUP_BACKUP_ROOT=/backups\nSYNBACKUP_KEEP_LAST=5\nSYNBACKUP_SKIPDIRS=a/* b\n\
             SYNBACKUP_FREEZE=never\nSYNBACKUP_MIN_FREE=10GiB\nSYNBACKUP_MAX_AGE=2d\n",
        )
        .unwrap();
        assert_eq!(i.service_dir, PathBuf::from("/data/c0"));
        assert_eq!(i.service_unit.as_deref(), Some("synapse-cortex@c0.service"));
        assert_eq!(
            i.keep,
            Keep {
                last: 5,
                daily: 7,
                weekly: 4,
                monthly: 6
            }
        );
        assert_eq!(i.skipdirs, vec!["a/*", "b"]);
        assert_eq!(i.freeze, FreezeMode::Never);
        assert_eq!(i.min_free, 10 << 30);
        assert_eq!(i.max_age, Duration::from_secs(2 * 86400));
    }

    #[test]
    fn nightly_backups_are_plain_copies_by_default_only_with_an_offsite_repository() {
        let base = "SYNBACKUP_SERVICE_DIR=/d\nSYNBACKUP_BACKUP_ROOT=/b\n";
        let offsite = "SYNBACKUP_OFFSITE_REPOSITORY=/r\nSYNBACKUP_OFFSITE_PASSWORD_FILE=/pw\n";
        assert_eq!(load_text(base).unwrap().copy, CopyMode::Compact);
        assert_eq!(
            load_text(&format!("{base}{offsite}")).unwrap().copy,
            CopyMode::Plain
        );
        let asked = format!("{base}{offsite}SYNBACKUP_COMPACT=yes\n");
        assert_eq!(load_text(&asked).unwrap().copy, CopyMode::Compact);
    }

    #[test]
    fn offsite_keys_default_to_the_local_policy_and_need_a_password_file() {
        let base = "SYNBACKUP_SERVICE_DIR=/d\nSYNBACKUP_BACKUP_ROOT=/b\nSYNBACKUP_KEEP_DAILY=9\n";
        assert!(load_text(base).unwrap().offsite.is_none());
        let i = load_text(&format!(
            "{base}SYNBACKUP_OFFSITE_REPOSITORY=sftp:u@h:/r\nSYNBACKUP_OFFSITE_PASSWORD_FILE=/etc/pw\nSYNBACKUP_OFFSITE_KEEP_LAST=1\n"
        ))
        .unwrap();
        let o = i.offsite.unwrap();
        assert_eq!(o.repository, "sftp:u@h:/r");
        assert_eq!(o.keep.last, 1);
        assert_eq!(o.keep.daily, 9, "the local policy's count");
        assert_eq!(o.check_subset, "5%");
        assert_eq!(o.prune_every, Duration::from_secs(7 * 86400));
        assert_eq!(o.restic, PathBuf::from("restic"));
        let e = err(&format!("{base}SYNBACKUP_OFFSITE_REPOSITORY=/r\n"));
        assert!(
            e.contains("SYNBACKUP_OFFSITE_PASSWORD_FILE is missing"),
            "{e}"
        );
        let with = |extra: &str| {
            format!("{base}SYNBACKUP_OFFSITE_REPOSITORY=/r\nSYNBACKUP_OFFSITE_PASSWORD_FILE=/pw\n{extra}")
        };
        for ok in ["10%", "2.5%", "1/10", "2G", "500m"] {
            assert!(
                load_text(&with(&format!("SYNBACKUP_OFFSITE_CHECK={ok}\n"))).is_ok(),
                "{ok}"
            );
        }
        for bad in ["0%", "120%", "11/10", "lots", "G"] {
            let e = err(&with(&format!("SYNBACKUP_OFFSITE_CHECK={bad}\n")));
            assert!(e.contains("SYNBACKUP_OFFSITE_CHECK"), "{bad}: {e}");
        }
        let e = err(&with("SYNBACKUP_OFFSITE_KEEP_LAST=0\n"));
        assert!(e.contains("newest snapshot must always be kept"), "{e}");
        let e = err(&with("SYNBACKUP_OFFSITE_PASSWORD_FILE=relative\n"));
        assert!(e.contains("expected an absolute path"), "{e}");
    }

    #[test]
    fn errors_name_file_line_key_and_what_is_accepted() {
        let e =
            err("SYNBACKUP_SERVICE_DIR=/d\nSYNBACKUP_BACKUP_ROOT=/b\nSYNBACKUP_KEEP_LAST=many\n");
        assert!(
            e.contains(
                "c0.conf:3: SYNBACKUP_KEEP_LAST=\"many\" is not valid: expected a whole number"
            ),
            "{e}"
        );
        let e = err("SYNBACKUP_SERVICE_DIR=/d\nSYNBACKUP_BACKUP_ROOT=/b\nSYNBACKUP_KEEP_LSAT=2\n");
        assert!(
            e.contains("c0.conf:3: unknown key SYNBACKUP_KEEP_LSAT"),
            "{e}"
        );
        let e = err("SYNBACKUP_BACKUP_ROOT=/b\n");
        assert!(e.contains("SYNBACKUP_SERVICE_DIR is missing"), "{e}");
        let e = err("SYNBACKUP_SERVICE_DIR=relative\nSYNBACKUP_BACKUP_ROOT=/b\n");
        assert!(e.contains("c0.conf:1: SYNBACKUP_SERVICE_DIR=\"relative\" is not valid: expected an absolute path"), "{e}");
        let e = err("SYNBACKUP_SERVICE_DIR=/d\nSYNBACKUP_BACKUP_ROOT=/b\nSYNBACKUP_FREEZE=maybe\n");
        assert!(e.contains("expected auto, always or never"), "{e}");
        let e = err("SYNBACKUP_SERVICE_DIR=/d\nSYNBACKUP_BACKUP_ROOT=/b\nSYNBACKUP_MAX_AGE=3y\n");
        assert!(e.contains("c0.conf:3: SYNBACKUP_MAX_AGE"), "{e}");
        let e = err("just words\n");
        assert!(e.contains("c0.conf:1: expected KEY=value"), "{e}");
        assert!(check_name("../etc").is_err());
        assert!(check_name("cortex00").is_ok());
    }
}
