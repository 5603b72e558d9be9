// SPDX-License-Identifier: Apache-2.0
//! Instance configuration: `CONFIG_DIR/INSTANCE.conf` in systemd's EnvironmentFile
//! syntax, so the units load it with `EnvironmentFile=/etc/synbackup/%i.conf` and
//! the command line reads the very same file.
//!
//! Precedence: the file, then the same keys from the environment (a unit has loaded
//! the file into it; a test may set them), then command-line flags. The keys, what
//! each accepts and its default are declared once, in `settings.rs`; the file is
//! read by systemd's rules (`base::envfile`). Unknown keys, missing required keys
//! and bad values are errors naming `file:line`, the key and what is accepted: a
//! typo must not silently turn into a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::base::envfile::{self, Rejected};
use crate::base::exit::{fail, Code};
use crate::engine::envcopy::CopyMode;
use crate::engine::freeze::FreezeMode;
use crate::engine::teleurl::Endpoint;
use crate::host::transient::Isolation;
use crate::instance::settings::{self, Blank, Kind, Setting, Unset, SETTINGS};
use crate::instance::settings::{
    BACKUP_ROOT, BOOT_WAIT, CERT_ACCEPT, CERT_DIR, CERT_NAMES, CERT_WARN_DAYS, COLD_KEEP_OLD,
    COMPACT, DRILL_AFTER_RUN, DRILL_CHECK, DRILL_ISOLATION, DRILL_MODULE, DRILL_PYTHON,
    DRILL_SAFEMODE, DRILL_TIMEOUT, FREEZE, FREEZE_TIMEOUT, HEALTH_TIMEOUT, JOBS, KEEP_ASIDE,
    KEEP_DAILY, KEEP_LAST, KEEP_MONTHLY, KEEP_WEEKLY, LEADER, LOCK_WAIT, MAX_AGE, METRICS,
    MIN_FREE, MIRRORS, MIRROR_WAIT, NEXUS_MAX_LAG, NEXUS_TRIM, NOTIFY, NOTIFY_TIMEOUT, NO_MIRROR,
    OFFSITE_CHECK, OFFSITE_ENV_FILE, OFFSITE_KEEP_DAILY, OFFSITE_KEEP_LAST, OFFSITE_KEEP_MONTHLY,
    OFFSITE_KEEP_WEEKLY, OFFSITE_PASSWORD_FILE, OFFSITE_PRUNE, OFFSITE_REPOSITORY, RESTIC,
    SERVICE_DIR, SERVICE_UNIT, SKIPDIRS, SOURCE, STOP_TIMEOUT,
};
use crate::instance::source::{NoMirror, SourceMode, Sources};

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
    /// The leader, its mirrors and which of them a run backs up.
    pub(crate) sources: Sources,
    /// How long a backup waits for a booting service to answer (SYNBACKUP_BOOT_WAIT).
    pub(crate) boot_wait: Duration,
    /// How nightly backups copy the environments (SYNBACKUP_COMPACT).
    pub(crate) copy: CopyMode,
    pub(crate) min_free: u64,
    pub(crate) max_age: Duration,
    /// How stale the nexus archive may get while the cell changes (`pitr::health`).
    pub(crate) nexus_max_lag: Duration,
    /// `run` trims the cell's nexus log after its backup (`pitr::trim`).
    pub(crate) nexus_trim: bool,
    pub(crate) stop_timeout: Duration,
    pub(crate) health_timeout: Duration,
    pub(crate) cold_keep_old: Duration,
    pub(crate) cert_dir: Option<PathBuf>,
    pub(crate) cert_warn_days: u32,
    pub(crate) cert_names: Vec<String>,
    /// Certificate warnings accepted on purpose (`certs::check::ACCEPTABLE`).
    pub(crate) cert_accept: Vec<String>,
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
    /// A drill boots the copy in Synapse's safemode.
    pub(crate) drill_safemode: bool,
    /// How long a restore's `DIR.pre-restore-TIME` is kept.
    pub(crate) keep_aside: std::time::Duration,
    /// The command told of each run's start and end.
    pub(crate) notify: Option<crate::instance::notify::Notify>,
    /// Write metrics files for node_exporter.
    pub(crate) metrics: bool,
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
    let nearest = SETTINGS
        .iter()
        .map(|s| (strsim::jaro_winkler(key, s.key()), s.key()))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.9);
    match nearest {
        Some((_, k)) => format!("{origin}: unknown key {key}; did you mean {k}?"),
        None => {
            let known: Vec<&str> = SETTINGS.iter().map(|s| s.key()).collect();
            format!(
                "{origin}: unknown key {key}; known keys: {}",
                known.join(", ")
            )
        }
    }
}

/// Parse an instance file (`base::envfile`, systemd's rules) into key -> (value,
/// "file:line"), refusing what systemd would skip, unknown keys and a quote that is
/// never closed.
fn parse_file(text: &str, path: &Path) -> Result<BTreeMap<&'static str, Value>> {
    if text.starts_with('\u{feff}') {
        return Err(fail(
            Code::Usage,
            format!(
                "{}:1: the file starts with a byte order mark (U+FEFF), which systemd reads as part of the first key; save it as plain UTF-8 without a BOM",
                path.display()
            ),
        ));
    }
    let mut out: BTreeMap<&'static str, Value> = BTreeMap::new();
    for item in envfile::parse(text) {
        let origin = |line: usize| format!("{}:{line}", path.display());
        let entry = match item {
            Ok(e) => e,
            Err(Rejected::NoAssignment { line, text }) => {
                return Err(fail(
                    Code::Usage,
                    format!("{}: expected KEY=value, found {text:?}", origin(line)),
                ))
            }
            Err(Rejected::BadName(e)) => {
                return Err(fail(Code::Usage, unknown_key(&origin(e.line), &e.key)))
            }
        };
        let Some(setting) = settings::find(&entry.key) else {
            return Err(fail(
                Code::Usage,
                unknown_key(&origin(entry.line), &entry.key),
            ));
        };
        if entry.open_quote {
            return Err(fail(
                Code::Usage,
                format!(
                    "{}: the quote that opens {}'s value is never closed",
                    origin(entry.line),
                    entry.key
                ),
            ));
        }
        if let Some(first) = out.get(setting.key()) {
            return Err(fail(
                Code::Usage,
                format!(
                    "{}: {} is given again (first at line {}); keep one of the two",
                    origin(entry.line),
                    entry.key,
                    first.origin.rsplit(':').next().unwrap_or("?")
                ),
            ));
        }
        let value = Value {
            text: entry.value,
            origin: origin(entry.line),
        };
        out.insert(setting.key(), value);
    }
    Ok(out)
}

/// Read a config file only when nobody but root (or the user we run as) could have
/// written it or swapped it: the file and every directory above it owned by root
/// (or us) and not writable by group or others, as sshd's StrictModes wants; a
/// directory writable by others passes only with the sticky bit and root's (`/tmp`:
/// no one else can rename what is in it), one writable by its group only when that
/// group is root's. Whatever a config says (`SYNBACKUP_RESTIC`, the paths) root
/// runs or writes. Otherwise exit 2 naming the file, owner and mode, and the fix.
fn read_trusted(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    check_trusted(path, &meta, false)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut at = std::fs::canonicalize(dir)?;
    loop {
        let m = std::fs::metadata(&at)?;
        check_trusted(&at, &m, true)?;
        if !at.pop() {
            break;
        }
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// The error `read_trusted` gives for `path` (`dir`: one above the file), as an
/// I/O error of kind PermissionDenied carrying the whole line.
fn check_trusted(path: &Path, meta: &std::fs::Metadata, dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::Uid::effective().as_raw();
    let mode = meta.mode() & 0o7777;
    let owner_ok = meta.uid() == 0 || meta.uid() == me;
    let group_ok = mode & 0o020 == 0 || meta.gid() == 0;
    let other_ok = mode & 0o002 == 0 || (dir && mode & 0o1000 != 0 && meta.uid() == 0);
    if owner_ok && group_ok && other_ok {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        UntrustedConfig(format!(
            "{} is owned by {}:{} with mode {mode:04o}: another user could change what synbackup runs as root; run `chown root: {p}; chmod go-w {p}`",
            path.display(),
            meta.uid(),
            meta.gid(),
            p = path.display()
        )),
    ))
}

/// A config (or a directory above it) another user could write.
#[derive(Debug)]
struct UntrustedConfig(String);

impl std::fmt::Display for UntrustedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UntrustedConfig {}

/// The values given for an instance (file, environment, flags), read through the
/// settings' declarations.
struct Values {
    given: BTreeMap<&'static str, Value>,
    path: PathBuf,
    file_exists: bool,
}

impl Values {
    /// Read `CONFIG_DIR/NAME.conf`, then the environment (with `use_env`), then the
    /// flags, a later source winning.
    fn gather(
        config_dir: &Path,
        name: &str,
        flags: &InstanceOverrides,
        use_env: bool,
    ) -> Result<Values> {
        let path = config_dir.join(format!("{name}.conf"));
        let mut given = match read_trusted(&path) {
            Ok(text) => parse_file(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) if e.get_ref().is_some_and(|i| i.is::<UntrustedConfig>()) => {
                return Err(fail(Code::Usage, e.to_string()));
            }
            Err(e) => {
                return Err(fail(
                    Code::Usage,
                    format!("cannot read {}: {e}; fix its permissions (the file may hold paths only root should see)", path.display()),
                ))
            }
        };
        let file_exists = path.exists();
        for key in SETTINGS.iter().map(|s| s.key()).filter(|_| use_env) {
            if let Ok(text) = std::env::var(key) {
                let origin = format!("environment {key}");
                given.insert(key, Value { text, origin });
            }
        }
        let lossy = |p: &PathBuf| p.to_string_lossy().into_owned();
        let from_flags = [
            (SERVICE_DIR.key, flags.service_dir.as_ref().map(lossy)),
            (SERVICE_UNIT.key, flags.service_unit.clone()),
            (BACKUP_ROOT.key, flags.backup_root.as_ref().map(lossy)),
        ];
        for (key, text) in from_flags {
            if let Some(text) = text {
                let origin = "command line".to_string();
                given.insert(key, Value { text, origin });
            }
        }
        Ok(Values {
            given,
            path,
            file_exists,
        })
    }

    /// `s`'s value in its type: the one given, else its default; `None` when it
    /// has neither (and is not required).
    fn get<K: Kind>(&self, s: &Setting<K>) -> Result<Option<K::Value>> {
        let given = self
            .given
            .get(s.key)
            .filter(|v| !(v.text.is_empty() && s.blank == Blank::Unset));
        if let Some(v) = given {
            return s.kind.parse(&v.text).map(Some).map_err(|what| {
                fail(
                    Code::Usage,
                    format!(
                        "{}: {}={:?} is not valid: expected {what}",
                        v.origin,
                        s.key,
                        crate::engine::teleurl::mask_text(&v.text)
                    ),
                )
            });
        }
        match s.unset {
            Unset::Required => Err(self.missing(s.key, s.doc)),
            Unset::Default(d) => s.kind.parse(d).map(Some).map_err(|what| {
                anyhow::anyhow!("{}'s built-in default {d:?} is not {what}", s.key)
            }),
            Unset::Absent => Ok(None),
        }
    }

    /// `s`'s value, for a setting that is required or has a default.
    fn value<K: Kind>(&self, s: &Setting<K>) -> Result<K::Value> {
        self.get(s)?.ok_or_else(|| self.missing(s.key, s.doc))
    }

    /// Where `key` was given ("file:line"), else the file.
    fn origin(&self, key: &str) -> String {
        self.given
            .get(key)
            .map(|v| v.origin.clone())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// A required key that is not set: say where to set it.
    fn missing(&self, key: &str, doc: &str) -> anyhow::Error {
        let path = self.path.display();
        fail(
            Code::Usage,
            if self.file_exists {
                format!("{path}: {key} is missing: set it to {doc}")
            } else {
                format!("{path} does not exist: create it (see /usr/share/doc/synbackup/examples/instance.conf) and set {key}")
            },
        )
    }
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
    let v = Values::gather(config_dir, name, flags, use_env)?;
    let cert_dir = v.get(&CERT_DIR)?;
    let service_dir: PathBuf = v.value(&SERVICE_DIR)?;
    check_own_service_dir(config_dir, name, &service_dir)?;
    let backup_root = v.value(&BACKUP_ROOT)?;
    let sources = sources(&v, &service_dir)?;
    let keep = local_keep(&v)?;
    let offsite = offsite(&v, keep)?;
    // Measured (bench/RESULTS.md): plain copies never add more to a restic
    // repository per night than compacted ones (0 to 33 % less), so they are the
    // default where every backup is uploaded.
    let plain_by_default = v.given.contains_key(OFFSITE_REPOSITORY.key);
    let copy = v.get(&COMPACT)?.unwrap_or(if plain_by_default {
        CopyMode::Plain
    } else {
        CopyMode::Compact
    });
    Ok(Instance {
        name: name.to_string(),
        service_dir,
        service_unit: v.get(&SERVICE_UNIT)?,
        backup_root,
        keep,
        skipdirs: v.get(&SKIPDIRS)?.unwrap_or_default(),
        jobs: v.get(&JOBS)?,
        freeze: v.value(&FREEZE)?,
        freeze_timeout: v.value(&FREEZE_TIMEOUT)?,
        sources,
        boot_wait: v.value(&BOOT_WAIT)?,
        copy,
        min_free: v.value(&MIN_FREE)?,
        max_age: v.value(&MAX_AGE)?,
        nexus_max_lag: v.value(&NEXUS_MAX_LAG)?,
        nexus_trim: v.value(&NEXUS_TRIM)?,
        stop_timeout: v.value(&STOP_TIMEOUT)?,
        health_timeout: v.value(&HEALTH_TIMEOUT)?,
        cold_keep_old: v.value(&COLD_KEEP_OLD)?,
        keep_aside: v.value(&KEEP_ASIDE)?,
        cert_dir,
        cert_warn_days: v.value(&CERT_WARN_DAYS)?,
        cert_names: v.get(&CERT_NAMES)?.unwrap_or_default(),
        cert_accept: cert_accept(&v)?,
        lock_wait: v.value(&LOCK_WAIT)?,
        drill_python: v.get(&DRILL_PYTHON)?,
        drill_module: v.get(&DRILL_MODULE)?,
        drill_check: v.get(&DRILL_CHECK)?,
        drill_timeout: v.value(&DRILL_TIMEOUT)?,
        offsite,
        drill_isolation: v.value(&DRILL_ISOLATION)?,
        drill_after_run: v.value(&DRILL_AFTER_RUN)?,
        drill_safemode: v.value(&DRILL_SAFEMODE)?,
        metrics: v.value(&METRICS)?,
        notify: match v.get(&NOTIFY)? {
            Some(command) => Some(crate::instance::notify::Notify {
                command,
                timeout: v.value(&NOTIFY_TIMEOUT)?,
            }),
            None => None,
        },
    })
}

/// The leader, its mirrors and the source of the backups: `auto` falls back to
/// the leader (another `SYNBACKUP_NO_MIRROR` given with it is refused).
fn sources(v: &Values, service_dir: &std::path::Path) -> Result<Sources> {
    let mode = v.value(&SOURCE)?;
    let given = v
        .given
        .get(NO_MIRROR.key)
        .is_some_and(|g| !g.text.is_empty());
    let mut no_mirror = v.value(&NO_MIRROR)?;
    if mode == SourceMode::Auto {
        if given && no_mirror != NoMirror::Leader {
            return Err(fail(
                Code::Usage,
                format!(
                    "{}: SYNBACKUP_SOURCE=auto always falls back to the leader, but SYNBACKUP_NO_MIRROR={}: use SYNBACKUP_SOURCE=mirror with it, or leave SYNBACKUP_NO_MIRROR out",
                    v.origin(NO_MIRROR.key),
                    no_mirror.name()
                ),
            ));
        }
        no_mirror = NoMirror::Leader;
    }
    let mirrors: Vec<Endpoint> = v.get(&MIRRORS)?.unwrap_or_default();
    let set = v.get(&LEADER)?;
    let leader_set = set.is_some();
    let leader = match set {
        Some(l) => l,
        None if mode != SourceMode::Leader => {
            leader_of_mirrors(&mirrors).unwrap_or_else(|| Endpoint::Dir(service_dir.to_path_buf()))
        }
        None => Endpoint::Dir(service_dir.to_path_buf()),
    };
    let s = Sources {
        mode,
        leader,
        mirrors,
        no_mirror,
        leader_set,
        wait: v.value(&MIRROR_WAIT)?,
    };
    s.check()
        .map_err(|why| fail(Code::Usage, format!("{}: {why}", v.origin(SOURCE.key))))?;
    for key in [LEADER.key, MIRRORS.key] {
        check_private_if_password(v, key)?;
    }
    Ok(s)
}

/// The leader a local mirror follows (`mirror:` on 2.x, `parent:` on 3.x in its
/// `cell.yaml` / `cell.mods.yaml`), when SYNBACKUP_LEADER is not set: the first
/// local mirror whose files name a directory or a tcp/ssl URL.
fn leader_of_mirrors(mirrors: &[Endpoint]) -> Option<Endpoint> {
    mirrors.iter().filter_map(Endpoint::dir).find_map(|dir| {
        ["mirror", "parent"].iter().find_map(|key| {
            match crate::engine::cellyaml::effective(dir, key) {
                Ok(Some(Some(url))) => Endpoint::parse(&url).ok(),
                _ => None,
            }
        })
    })
}

/// A telepath URL with a password given in the config file: the file must be
/// readable by its owner only (root, or the user synbackup runs as), as the
/// offsite password file is. Exit 2 naming the file and the fix.
fn check_private_if_password(v: &Values, key: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(given) = v.given.get(key) else {
        return Ok(());
    };
    let in_file = given.origin.starts_with(&format!("{}:", v.path.display()));
    let has_password = given
        .text
        .split_whitespace()
        .filter_map(|w| Endpoint::parse(w).ok())
        .any(|e| e.url().is_some_and(|u| u.passwd.is_some()));
    if !in_file || !has_password {
        return Ok(());
    }
    let meta =
        std::fs::metadata(&v.path).with_context(|| format!("cannot stat {}", v.path.display()))?;
    let me = nix::unistd::Uid::effective().as_raw();
    let mode = meta.mode() & 0o7777;
    if (meta.uid() == me || meta.uid() == 0) && mode & 0o077 == 0 {
        return Ok(());
    }
    Err(fail(
        Code::Usage,
        format!(
            "{}: {key} holds a telepath password, but the file has mode {mode:04o} (owner {}): others could read it; run `chmod 600 {p}` (or use an ssl:// URL with a user certificate)",
            given.origin,
            meta.uid(),
            p = v.path.display()
        ),
    ))
}

/// The local retention policy, which must keep something.
fn local_keep(v: &Values) -> Result<Keep> {
    let keep = Keep {
        last: v.value(&KEEP_LAST)?,
        daily: v.value(&KEEP_DAILY)?,
        weekly: v.value(&KEEP_WEEKLY)?,
        monthly: v.value(&KEEP_MONTHLY)?,
    };
    if [keep.last, keep.daily, keep.weekly, keep.monthly] == [0; 4] {
        return Err(fail(
            Code::Usage,
            format!("{}: every SYNBACKUP_KEEP_* is 0, a policy that keeps nothing: set SYNBACKUP_KEEP_LAST to 1 or more", v.origin(KEEP_LAST.key)),
        ));
    }
    Ok(keep)
}

/// The offsite copy, when a repository is set: its password file is then
/// required, and its retention defaults to the local one and keeps the newest.
fn offsite(v: &Values, local: Keep) -> Result<Option<Offsite>> {
    let Some(repository) = v.get(&OFFSITE_REPOSITORY)? else {
        return Ok(None);
    };
    let password_file = v.get(&OFFSITE_PASSWORD_FILE)?.ok_or_else(|| {
        fail(
            Code::Usage,
            format!("{}: SYNBACKUP_OFFSITE_REPOSITORY is set but SYNBACKUP_OFFSITE_PASSWORD_FILE is missing: set it to the file holding the repository's password", v.origin(OFFSITE_REPOSITORY.key)),
        )
    })?;
    let keep = Keep {
        last: v.get(&OFFSITE_KEEP_LAST)?.unwrap_or(local.last),
        daily: v.get(&OFFSITE_KEEP_DAILY)?.unwrap_or(local.daily),
        weekly: v.get(&OFFSITE_KEEP_WEEKLY)?.unwrap_or(local.weekly),
        monthly: v.get(&OFFSITE_KEEP_MONTHLY)?.unwrap_or(local.monthly),
    };
    if keep.last == 0 {
        return Err(fail(
            Code::Usage,
            format!("{}: SYNBACKUP_OFFSITE_KEEP_LAST is 0: the newest snapshot must always be kept; set it to 1 or more", v.path.display()),
        ));
    }
    Ok(Some(Offsite {
        repository,
        password_file,
        env_file: v.get(&OFFSITE_ENV_FILE)?,
        keep,
        check_subset: v.value(&OFFSITE_CHECK)?,
        prune_every: v.value(&OFFSITE_PRUNE)?,
        restic: v.value(&RESTIC)?,
    }))
}

/// Refuse a service directory another instance's config names too: their locks
/// differ, so their runs, windows and restores could overlap on one directory.
fn check_own_service_dir(config_dir: &Path, name: &str, dir: &Path) -> Result<()> {
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.components().eq(b.components()),
    };
    for other in instance_names(config_dir)?
        .into_iter()
        .filter(|o| o != name)
    {
        let path = config_dir.join(format!("{other}.conf"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let theirs = envfile::parse(text.trim_start_matches('\u{feff}'))
            .into_iter()
            .flatten()
            .rfind(|e| e.key == SERVICE_DIR.key);
        if let Some(e) = theirs.filter(|e| same(Path::new(&e.value), dir)) {
            return Err(fail(
                Code::Usage,
                format!(
                    "{}: SYNBACKUP_SERVICE_DIR {} is also the service directory of instance {other} ({}:{}): two instances of one directory take different locks and could run at once; keep one config",
                    config_dir.join(format!("{name}.conf")).display(),
                    dir.display(),
                    path.display(),
                    e.line
                ),
            ));
        }
    }
    Ok(())
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

/// `SYNBACKUP_CERT_ACCEPT`: names of warnings only (a failure is never accepted,
/// an expiry is never silenced).
fn cert_accept(v: &Values) -> Result<Vec<String>> {
    let words = v.get(&CERT_ACCEPT)?.unwrap_or_default();
    if let Some(bad) = words
        .iter()
        .find(|w| !crate::certs::check::ACCEPTABLE.contains(&w.as_str()))
    {
        return Err(fail(
            Code::Usage,
            format!(
                "{}: SYNBACKUP_CERT_ACCEPT names {bad:?}, which cannot be accepted: only {} can (a failure or an expiry is never silenced)",
                v.origin(CERT_ACCEPT.key),
                crate::certs::check::ACCEPTABLE.join(" and ")
            ),
        ));
    }
    Ok(words)
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
        let e = err(&format!(
            "{base}SYNBACKUP_OFFSITE_REPOSITORY=/r\nSYNBACKUP_OFFSITE_PASSWORD_FILE=relative\n"
        ));
        assert!(e.contains("expected an absolute path"), "{e}");
    }

    #[test]
    fn sources_default_to_the_leader_and_mirror_settings_are_checked_together() {
        let base = "SYNBACKUP_SERVICE_DIR=/d\nSYNBACKUP_BACKUP_ROOT=/b\n";
        let s = load_text(base).unwrap().sources;
        assert_eq!(s.mode, SourceMode::Leader);
        assert_eq!(
            s.leader,
            Endpoint::Dir("/d".into()),
            "the instance's own directory"
        );
        assert!(s.mirrors.is_empty());
        assert_eq!(s.no_mirror, NoMirror::Fail);
        assert_eq!(s.wait, Duration::from_secs(120));
        let s = load_text(&format!(
            "{base}SYNBACKUP_SOURCE=mirror\nSYNBACKUP_MIRRORS=/m1  /m2\nSYNBACKUP_NO_MIRROR=skip\nSYNBACKUP_MIRROR_WAIT=30s\n"
        ))
        .unwrap()
        .sources;
        assert_eq!(s.mode, SourceMode::Mirror);
        assert_eq!(
            s.mirrors,
            [Endpoint::Dir("/m1".into()), Endpoint::Dir("/m2".into())]
        );
        assert_eq!(
            (s.no_mirror, s.wait),
            (NoMirror::Skip, Duration::from_secs(30))
        );
        let auto = format!("{base}SYNBACKUP_SOURCE=auto\nSYNBACKUP_MIRRORS=/m\n");
        assert_eq!(
            load_text(&auto).unwrap().sources.no_mirror,
            NoMirror::Leader
        );
        let e = err(&format!("{auto}SYNBACKUP_NO_MIRROR=fail\n"));
        assert!(
            e.contains("c0.conf:5: SYNBACKUP_SOURCE=auto always falls back to the leader"),
            "{e}"
        );
        let e = err(&format!("{base}SYNBACKUP_SOURCE=mirror\n"));
        assert!(
            e.contains("SYNBACKUP_SOURCE=mirror needs SYNBACKUP_MIRRORS"),
            "{e}"
        );
        let e = err(&format!(
            "{base}SYNBACKUP_SOURCE=auto\nSYNBACKUP_MIRRORS=/m /d\n"
        ));
        assert!(e.contains("SYNBACKUP_MIRRORS names the leader /d"), "{e}");
        let e = err(&format!("{base}SYNBACKUP_MIRRORS=relative\n"));
        assert!(
            e.contains("expected space-separated an absolute service directory or a tcp:// or ssl:// telepath URL"),
            "{e}"
        );
        let e = err(&format!("{base}SYNBACKUP_SOURCE=standby\n"));
        assert!(e.contains("expected leader, mirror or auto"), "{e}");
        let e = err(&format!("{base}SYNBACKUP_NO_MIRROR=wait\n"));
        assert!(e.contains("expected fail, leader or skip"), "{e}");
        let s = load_text(&format!("{base}SYNBACKUP_LEADER=/l\n"))
            .unwrap()
            .sources;
        assert_eq!(s.leader, Endpoint::Dir("/l".into()));
    }

    /// Writes `text` as c0.conf with `mode`, then loads it.
    fn load_mode(text: &str, mode: u32) -> Result<Instance> {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c0.conf");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        load(t.path(), "c0", &InstanceOverrides::default())
    }

    #[test]
    fn a_leader_by_url_is_only_asked_and_its_password_stays_private() {
        let base = "SYNBACKUP_SERVICE_DIR=/d
SYNBACKUP_BACKUP_ROOT=/b
";
        let url = "SYNBACKUP_LEADER=tcp://root:hunter2@10.0.0.1:27492
";
        let mirror = format!(
            "{base}{url}SYNBACKUP_SOURCE=mirror
SYNBACKUP_MIRRORS=/m ssl://10.0.0.2
"
        );
        let s = load_mode(&mirror, 0o600).unwrap().sources;
        assert_eq!(s.leader.to_string(), "tcp://root:****@10.0.0.1:27492");
        assert_eq!(s.local_mirrors().collect::<Vec<_>>(), [Path::new("/m")]);
        // Readable by others: refused, the password not repeated.
        let e = format!("{:#}", load_mode(&mirror, 0o644).unwrap_err());
        assert!(
            e.contains(
                "c0.conf:3: SYNBACKUP_LEADER holds a telepath password, but the file has mode 0644"
            ) && e.contains("chmod 600"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        // The leader's files are not here: backing it up is refused.
        for (extra, why) in [
            ("", "SYNBACKUP_SOURCE=leader backs up the leader's files, but SYNBACKUP_LEADER is the URL tcp://root:****@10.0.0.1:27492"),
            ("SYNBACKUP_SOURCE=auto\nSYNBACKUP_MIRRORS=/m\n", "SYNBACKUP_SOURCE=auto with SYNBACKUP_NO_MIRROR=leader backs up the leader's files"),
            ("SYNBACKUP_SOURCE=mirror\nSYNBACKUP_MIRRORS=tcp://10.0.0.2:1\n", "SYNBACKUP_MIRRORS names only URLs"),
        ] {
            let e = format!(
                "{:#}",
                load_mode(&format!("{base}{url}{}", extra.replace("\\n", "\n")), 0o600).unwrap_err()
            );
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = err(&format!("{base}SYNBACKUP_LEADER=http://x\n"));
        assert!(e.contains("not http://"), "{e}");
        let e = err(&format!(
            "{base}SYNBACKUP_LEADER=tcp://root:hunter2@h:port\n"
        ));
        assert!(
            e.contains("SYNBACKUP_LEADER=\"tcp://root:****@h:port\" is not valid: expected an absolute service directory or a tcp:// or ssl:// telepath URL (a port from 1 to 65535)"),
            "{e}"
        );
    }

    #[test]
    fn the_leader_defaults_to_what_a_local_mirror_follows() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("m");
        std::fs::create_dir(&m).unwrap();
        std::fs::write(
            m.join("cell.yaml"),
            "nexslog:en: true\nparent: ssl://core00.example:27492?certname=backup@example\n",
        )
        .unwrap();
        let s = load_text(&format!(
            "SYNBACKUP_SERVICE_DIR={m}\nSYNBACKUP_BACKUP_ROOT=/b\nSYNBACKUP_SOURCE=mirror\nSYNBACKUP_MIRRORS={m}\n",
            m = m.display()
        ))
        .unwrap()
        .sources;
        assert_eq!(
            s.leader.to_string(),
            "ssl://core00.example:27492?certname=backup@example"
        );
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
