// SPDX-License-Identifier: Apache-2.0
//! restic, the one program synbackup hands offsite copies to: one function per
//! restic command, each spawning the real binary with the repository, password file
//! and backend credentials in its environment (never on its command line, never
//! logged), and a pure parser per output it reads (`--json` lines, the `Fatal:`
//! line, the lock holder), tested on captured output.
//!
//! restic runs with `TZ=UTC` so that `--time` and the times it prints are UTC.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::base::envfile::{self, Entry, Rejected};

/// A repository and how to open it.
#[derive(Debug, Clone)]
pub(crate) struct Repo {
    /// The restic binary.
    pub(crate) bin: PathBuf,
    /// The repository string (`RESTIC_REPOSITORY`).
    pub(crate) repository: String,
    /// The file holding its password (`RESTIC_PASSWORD_FILE`).
    pub(crate) password_file: PathBuf,
    /// Backend credentials (`AWS_ACCESS_KEY_ID=...`), from the env file.
    pub(crate) env: BTreeMap<String, String>,
    /// restic's cache directory, when the unit gives one.
    pub(crate) cache_dir: Option<PathBuf>,
}

/// What went wrong with a restic command, classified for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// Another restic holds a lock: its PID and host.
    Locked { pid: u32, host: String },
    /// Anything else restic said (its `Fatal:` line, or its last line).
    Failed(String),
    /// restic was killed by a signal.
    Killed(i32),
}

/// A failed restic command: which, and why.
#[derive(Debug)]
pub(crate) struct ResticError {
    pub(crate) command: String,
    pub(crate) trouble: Trouble,
}

impl std::fmt::Display for ResticError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.trouble {
            Trouble::Locked { pid, host } => write!(
                f,
                "restic {}: the repository is locked by restic PID {pid} on {host}",
                self.command
            ),
            Trouble::Failed(m) => write!(f, "restic {}: {m}", self.command),
            Trouble::Killed(sig) => write!(f, "restic {} was killed by signal {sig}", self.command),
        }
    }
}

impl std::error::Error for ResticError {}

/// Read a `KEY=value` file of backend credentials (systemd's EnvironmentFile
/// syntax, `base::envfile`). The values are never logged.
pub(crate) fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the offsite env file {}", path.display()))?;
    parse_env_file(&text).map_err(|line| {
        anyhow::anyhow!(
            "{}:{line}: expected KEY=value (the value is not shown)",
            path.display()
        )
    })
}

/// Parse env file text; `Err(line number)` for a line that is not `KEY=value` or
/// a quote never closed. Unlike systemd, `export KEY=value` (a shell's credentials
/// file) is taken as `KEY=value`: this file is read by synbackup only.
pub(crate) fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, usize> {
    let mut out = BTreeMap::new();
    for item in envfile::parse(text) {
        let e = match item {
            Ok(e) => e,
            Err(Rejected::BadName(e)) => match e.key.strip_prefix("export ") {
                Some(k) if envfile::is_name(k.trim_start()) => Entry {
                    key: k.trim_start().to_string(),
                    ..e
                },
                _ => return Err(e.line),
            },
            Err(r) => return Err(r.line()),
        };
        if e.open_quote {
            return Err(e.line);
        }
        out.insert(e.key, e.value);
    }
    Ok(out)
}

impl Repo {
    /// `restic ARGS` with the repository in the environment, in `cwd`.
    fn command(&self, args: &[&str], cwd: Option<&Path>) -> Command {
        let mut c = Command::new(&self.bin);
        // Only what restic needs from ours: a stray RESTIC_* must not pick another
        // repository or password.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RESTIC_") {
                c.env_remove(&k);
            }
        }
        c.envs(&self.env)
            .env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("TZ", "UTC")
            .args(args)
            .stdin(Stdio::null());
        if let Some(d) = &self.cache_dir {
            c.env("RESTIC_CACHE_DIR", d);
        }
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        c
    }

    /// Run `restic ARGS`; its output, or the classified failure.
    pub(crate) fn run(&self, what: &str, args: &[&str], cwd: Option<&Path>) -> Result<Output> {
        self.run_with(what, args, cwd, |_| {})
    }

    /// As [`Repo::run`], calling `started` with the child's PID once it runs.
    pub(crate) fn run_with(
        &self,
        what: &str,
        args: &[&str],
        cwd: Option<&Path>,
        started: impl FnOnce(u32),
    ) -> Result<Output> {
        let mut cmd = self.command(args, cwd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        log::debug!("running {} {}", self.bin.display(), args.join(" "));
        let child = cmd.spawn().map_err(|e| {
            crate::base::exit::fail(
                crate::base::exit::Code::Offsite,
                format!(
                    "cannot run restic ({}): {e}; install Debian's restic package or set SYNBACKUP_RESTIC",
                    self.bin.display()
                ),
            )
        })?;
        started(child.id());
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for restic {what}"))?;
        if out.status.success() {
            return Ok(out);
        }
        // A SIGTERM or SIGINT to us reached restic too (one process group, one
        // cgroup): that is the stop, not a repository failure.
        crate::base::interrupt::check()?;
        use std::os::unix::process::ExitStatusExt;
        // restic (and the rclone it may run) prints the repository string as it
        // is, credentials included: never let them into a log, status or journal.
        let stderr = self.scrub(&String::from_utf8_lossy(&out.stderr));
        log::debug!("restic {what} said: {}", stderr.trim());
        let trouble = match out.status.signal() {
            Some(sig) => Trouble::Killed(sig),
            None => classify(&stderr),
        };
        Err(anyhow::Error::new(ResticError {
            command: what.to_string(),
            trouble,
        }))
    }
}

impl Repo {
    /// `text` (what restic printed) without the credentials this repository is
    /// opened with: the repository string as [`redacted`] writes it, and every
    /// secret of 8 bytes or more it, the env file and the password file hold
    /// replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.repository, &redacted(&self.repository));
        if let Some(spec) = self.repository.strip_prefix("rclone:") {
            // rclone names its remote without restic's prefix.
            let clean = redacted(&self.repository);
            out = out.replace(spec, clean.trim_start_matches("rclone:"));
        }
        let mut secrets = repository_secrets(&self.repository);
        secrets.extend(self.env.values().cloned());
        if let Ok(pw) = std::fs::read_to_string(&self.password_file) {
            secrets.push(pw.trim().to_string());
        }
        // Values short enough to be words ("wrong" in "wrong password") are left:
        // the repository string itself is masked above. The longest first: a
        // secret that contains another is masked whole.
        secrets.retain(|s| s.len() >= 8);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in &secrets {
            out = out.replace(s.as_str(), "***");
        }
        out
    }
}

/// The credentials a repository string carries: a URL's password
/// (`rest:https://user:PASSWORD@host/`) and the values of an rclone connection
/// string's parameters (`rclone::s3,secret_access_key=VALUE:bucket`).
fn repository_secrets(repository: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, userinfo, _)) = url_userinfo(repository) {
        if let Some((_, pw)) = userinfo.split_once(':') {
            out.push(pw.to_string());
        }
    }
    if let Some(spec) = repository.strip_prefix("rclone:") {
        out.extend(
            rclone_params(spec)
                .into_iter()
                .map(|(a, b)| spec[a..b].to_string()),
        );
    }
    out
}

/// A URL's `user:password` part: (the text before it, it, the text after it).
fn url_userinfo(repository: &str) -> Option<(&str, &str, &str)> {
    let i = repository.find("://")? + 3;
    let rest = &repository[i..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..host_end].rfind('@')?;
    Some((&repository[..i], &rest[..at], &rest[at..]))
}

/// The byte ranges of the parameter values of an rclone remote spec
/// (`:s3,provider=X,secret_access_key=Y:bucket/path`, `remote,k=v:path`): a value
/// ends at an unquoted `,` or `:`; a quoted one (`k="a,b:c"`) at its closing quote.
fn rclone_params(spec: &str) -> Vec<(usize, usize)> {
    let b = spec.as_bytes();
    let mut out = Vec::new();
    let mut i = usize::from(b.first() == Some(&b':'));
    // The remote's name or backend.
    while i < b.len() && b[i] != b',' && b[i] != b':' {
        i += 1;
    }
    while i < b.len() && b[i] == b',' {
        i += 1;
        // key=
        while i < b.len() && b[i] != b'=' && b[i] != b',' && b[i] != b':' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let start = i;
        if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
            let q = b[i];
            i += 1;
            // A doubled quote is a quote inside the value.
            while i < b.len() && !(b[i] == q && b.get(i + 1) != Some(&q)) {
                i += if b[i] == q { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && b[i] != b',' && b[i] != b':' {
                i += 1;
            }
        }
        out.push((start, i));
    }
    out
}

/// The repository string without credentials: a URL's `user:password@` as
/// `***@` (`rest:https://***@host:8000/repo`), an rclone connection string's
/// parameter values as `***` (`rclone::s3,secret_access_key=***:bucket`).
pub(crate) fn redacted(repository: &str) -> String {
    if let Some((before, _, after)) = url_userinfo(repository) {
        return format!("{before}***{after}");
    }
    if let Some(spec) = repository.strip_prefix("rclone:") {
        let mut out = String::from("rclone:");
        let mut last = 0;
        for (a, b) in rclone_params(spec) {
            out.push_str(&spec[last..a]);
            out.push_str("***");
            last = b;
        }
        out.push_str(&spec[last..]);
        return out;
    }
    repository.to_string()
}

/// What a failed restic's stderr says: a lock held by another restic, else its
/// `Fatal:` line (or the last line), made one line.
pub(crate) fn classify(stderr: &str) -> Trouble {
    if let Some((pid, host)) = parse_lock_holder(stderr) {
        return Trouble::Locked { pid, host };
    }
    let fatal = stderr
        .lines()
        .position(|l| l.starts_with("Fatal: "))
        .map(|i| {
            // "Fatal: unable to open config file: ...\nIs there a repository at ...?"
            let mut lines: Vec<&str> = stderr.lines().skip(i).take(2).collect();
            lines[0] = lines[0].trim_start_matches("Fatal: ");
            if lines
                .get(1)
                .is_some_and(|l| l.starts_with("Is there a repository"))
            {
                lines.truncate(1);
                lines.push(
                    "is there a repository (run `synbackup offsite init INSTANCE` for a new one)",
                );
            } else {
                lines.truncate(1);
            }
            lines.join("; ")
        });
    // "Fatal: There were 2 errors" says little: the first error restic ignored says
    // which file and why ("ciphertext verification failed").
    let fatal = fatal.map(|f| {
        match stderr
            .lines()
            .find(|l| l.starts_with("ignoring error for "))
        {
            Some(first) if f.starts_with("There were ") => {
                format!("{f}, the first: {}", first.trim_start_matches("ignoring "))
            }
            _ => f,
        }
    });
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed without a message");
    Trouble::Failed(fatal.unwrap_or_else(|| last.trim().to_string()))
}

/// "repository is already locked [exclusively] by PID 5907 on vm by root (...)".
pub(crate) fn parse_lock_holder(stderr: &str) -> Option<(u32, String)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("repository is already locked"))?;
    let rest = &line[line.find(" by PID ")? + " by PID ".len()..];
    let (pid, rest) = rest.split_once(" on ")?;
    let host = rest.split(" by ").next()?.trim().to_string();
    Some((pid.trim().parse().ok()?, host))
}

/// The summary `restic backup --json` ends with.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct BackupSummary {
    pub(crate) snapshot_id: String,
    pub(crate) data_added: u64,
    pub(crate) total_bytes_processed: u64,
    pub(crate) total_files_processed: u64,
}

/// The summary line in `restic backup --json` output.
pub(crate) fn parse_backup_summary(stdout: &str) -> Option<BackupSummary> {
    stdout.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if v["message_type"] != "summary" {
            return None;
        }
        serde_json::from_value(v).ok()
    })
}

/// One snapshot as `restic snapshots --json` prints it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) id: String,
    pub(crate) short_id: String,
    pub(crate) time: String,
    #[serde(default)]
    pub(crate) paths: Vec<String>,
    #[serde(default)]
    pub(crate) hostname: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

/// `restic snapshots --json` output, oldest first.
pub(crate) fn parse_snapshots(stdout: &str) -> Result<Vec<Snapshot>> {
    let mut v: Vec<Snapshot> = serde_json::from_str(stdout.trim())
        .context("restic snapshots printed something that is not its JSON list")?;
    v.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(v)
}

/// `total_size` from `restic stats --json`.
pub(crate) fn parse_stats_size(stdout: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).ok()?;
    v["total_size"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_message_names_its_holder() {
        let e = "unable to create lock in backend: repository is already locked exclusively by PID 5907 on vm by root (UID 0, GID 0)\nlock was created at 2026-12-01 18:14:29 (7.4s ago)\nstorage ID 86b7f2f8\nthe `unlock` command can be used to remove stale locks\n";
        assert_eq!(
            classify(e),
            Trouble::Locked {
                pid: 5907,
                host: "vm".into()
            }
        );
        let e = "repository is already locked by PID 12 on host-a.example by backup (UID 1, GID 1)";
        assert_eq!(parse_lock_holder(e), Some((12, "host-a.example".into())));
    }

    #[test]
    fn a_fatal_line_becomes_one_line() {
        let e = "Fatal: unable to open config file: stat /nonexist/config: no such file or directory\nIs there a repository at the following location?\n/nonexist\n";
        assert_eq!(
            classify(e),
            Trouble::Failed("unable to open config file: stat /nonexist/config: no such file or directory; is there a repository (run `synbackup offsite init INSTANCE` for a new one)".into())
        );
        assert_eq!(
            classify(
                "reading repository password from stdin\nFatal: wrong password or no key found\n"
            ),
            Trouble::Failed("wrong password or no key found".into())
        );
        assert_eq!(
            classify("a\nlast words\n\n"),
            Trouble::Failed("last words".into())
        );
    }

    #[test]
    fn backup_summary_and_snapshots() {
        let out = "{\"message_type\":\"status\",\"percent_done\":1}\n{\"message_type\":\"summary\",\"files_new\":1,\"data_added\":705,\"total_files_processed\":1,\"total_bytes_processed\":3,\"total_duration\":0.24,\"snapshot_id\":\"1ead4999\"}\n";
        let s = parse_backup_summary(out).unwrap();
        assert_eq!(s.snapshot_id, "1ead4999");
        assert_eq!(s.data_added, 705);
        assert_eq!(s.total_bytes_processed, 3);
        let snaps = parse_snapshots("[{\"time\":\"2026-12-02T10:00:00Z\",\"tree\":\"t\",\"paths\":[\"/b/x\"],\"hostname\":\"vm\",\"username\":\"root\",\"tags\":[\"synbackup\",\"c0\"],\"id\":\"bb\",\"short_id\":\"b\"},{\"time\":\"2026-12-01T10:00:00Z\",\"tree\":\"t\",\"paths\":[\"/b/y\"],\"hostname\":\"vm\",\"id\":\"aa\",\"short_id\":\"a\"}]").unwrap();
        assert_eq!(snaps[0].id, "aa");
        assert_eq!(snaps[1].tags, vec!["synbackup", "c0"]);
        assert_eq!(
            parse_stats_size("{\"total_size\":3,\"total_file_count\":2}"),
            Some(3)
        );
    }

    #[test]
    fn credentials_are_redacted_from_repository_strings_and_restic_output() {
        assert_eq!(
            redacted("rest:https://u:secret@host:8000/repo"),
            "rest:https://***@host:8000/repo"
        );
        assert_eq!(redacted("/srv/restic"), "/srv/restic");
        assert_eq!(
            redacted("s3:https://s3.example/b@x"),
            "s3:https://s3.example/b@x"
        );
        assert_eq!(
            redacted("rclone::s3,provider=Other,secret_access_key=SEKRIT:bucket/x"),
            "rclone::s3,provider=***,secret_access_key=***:bucket/x"
        );
        assert_eq!(
            redacted("rclone:remote,token=\"a,b:c\":path"),
            "rclone:remote,token=***:path"
        );
        assert_eq!(redacted("rclone:remote:path"), "rclone:remote:path");
        let repo = Repo {
            bin: "restic".into(),
            repository: "rclone::s3,secret_access_key=SEKRIT1234:bucket".into(),
            password_file: "/nonexistent".into(),
            env: [("AWS_SECRET_ACCESS_KEY".to_string(), "envsecret".to_string())].into(),
            cache_dir: None,
        };
        let said = "rclone: Failed for \":s3,secret_access_key=SEKRIT1234:bucket\" (envsecret)\nFatal: unable to open repository at rclone::s3,secret_access_key=SEKRIT1234:bucket: EOF";
        let clean = repo.scrub(said);
        assert!(
            !clean.contains("SEKRIT") && !clean.contains("envsecret"),
            "{clean}"
        );
        assert!(
            clean.contains("repository at rclone::s3,secret_access_key=***:bucket"),
            "{clean}"
        );
    }

    #[test]
    fn env_files() {
        let m = parse_env_file(
            "# creds\nAWS_ACCESS_KEY_ID=abc\nexport AWS_SECRET_ACCESS_KEY=\"s e\"\n",
        )
        .unwrap();
        assert_eq!(m["AWS_ACCESS_KEY_ID"], "abc");
        assert_eq!(m["AWS_SECRET_ACCESS_KEY"], "s e");
        assert_eq!(parse_env_file("ok=1\nnot a line\n"), Err(2));
        assert_eq!(parse_env_file("A=1\nB=\"never closed\nC=2\n"), Err(2));
    }
}
