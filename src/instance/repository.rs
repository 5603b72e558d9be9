// SPDX-License-Identifier: Apache-2.0
//! An instance's offsite restic repository: its settings checked, the repository
//! as restic opens it (password file, credentials, cache), restic's failures
//! explained in one line with what to do, and the operations `offsite` and
//! `restore --offsite` share (init, list, check, unlock, fetch a snapshot). The
//! nightly upload and its retention are the `offsite` capability's.

use std::path::{Path, PathBuf};

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::base::exit::{fail, Code};
use crate::base::logging;
use crate::host::restic::{self, Repo, ResticError, Trouble};
use crate::instance::config::{Instance, Offsite};

/// The tags every snapshot of `instance` carries (the filter is the first two).
pub(crate) fn filter_tags(instance: &str) -> String {
    format!("synbackup,instance={instance}")
}

/// The instance's offsite settings, or a usage error saying how to set them.
pub(crate) fn settings(inst: &Instance) -> Result<&Offsite> {
    inst.offsite.as_ref().ok_or_else(|| {
        fail(
            Code::Usage,
            format!(
                "instance {} has no offsite repository: set SYNBACKUP_OFFSITE_REPOSITORY and SYNBACKUP_OFFSITE_PASSWORD_FILE in its config",
                inst.name
            ),
        )
    })
}

/// Refuse a secrets file (`what`, set by `key`) others could read or change: root
/// reads it and hands it to restic, so it must be root's (ours, when not run as
/// root) and at most 0600. Exit 2, the fix in the line.
fn check_secret_file(path: &Path, what: &str, key: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()), // the open below says why it cannot be read
    };
    let me = nix::unistd::Uid::effective().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() == me && mode & 0o077 == 0 {
        return Ok(());
    }
    let owner = if me == 0 {
        "root"
    } else {
        "the user synbackup runs as"
    };
    Err(fail(
        Code::Usage,
        format!(
            "the offsite {what} {p} is owned by {}:{} with mode {mode:04o}; it must be {owner}'s and 0600 at most: run `chmod 600 {p}; chown {}: {p}` (or fix {key})",
            meta.uid(),
            meta.gid(),
            if me == 0 { "root".to_string() } else { me.to_string() },
            p = path.display(),
        ),
    ))
}

/// The repository as restic opens it: password file checked, credentials read.
pub(crate) fn repo(o: &Offsite) -> Result<Repo> {
    check_secret_file(
        &o.password_file,
        "password file",
        "SYNBACKUP_OFFSITE_PASSWORD_FILE",
    )?;
    if let Some(p) = &o.env_file {
        check_secret_file(p, "env file", "SYNBACKUP_OFFSITE_ENV_FILE")?;
    }
    if let Err(e) = std::fs::File::open(&o.password_file) {
        return Err(fail(
            Code::Offsite,
            format!(
                "cannot read the offsite password file {}: {e}; fix SYNBACKUP_OFFSITE_PASSWORD_FILE",
                o.password_file.display()
            ),
        ));
    }
    let env = match &o.env_file {
        Some(p) => restic::read_env_file(p).map_err(|e| fail(Code::Offsite, format!("{e:#}")))?,
        None => Default::default(),
    };
    Ok(Repo {
        bin: o.restic.clone(),
        repository: o.repository.clone(),
        password_file: o.password_file.clone(),
        env,
        // systemd's CacheDirectory= (the units set it); else restic's own default.
        cache_dir: std::env::var_os("CACHE_DIRECTORY").map(|d| PathBuf::from(d).join("restic")),
    })
}

/// The repository string without the credentials it may carry.
pub(crate) use crate::host::restic::redacted;

/// The machine's host name as restic records it in locks.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A restic failure as one line for the operator, with what to do.
pub(crate) fn explain(err: anyhow::Error, inst: &str, repository: &str) -> anyhow::Error {
    let Some(r) = err.downcast_ref::<ResticError>() else {
        return err;
    };
    let repo = redacted(repository);
    let text = match &r.trouble {
        Trouble::Locked { pid, host } if *host == hostname() && !Path::new(&format!("/proc/{pid}")).exists() => format!(
            "restic {}: the repository {repo} is locked by restic PID {pid} on {host}, which no longer runs: run `synbackup offsite unlock {inst}`",
            r.command
        ),
        Trouble::Locked { pid, host } => format!(
            "restic {}: the repository {repo} is locked by restic PID {pid} on {host}, which may still run: try again when it is done (a lock of a dead restic on another host: `synbackup offsite unlock {inst}` after 30 minutes)",
            r.command
        ),
        Trouble::Killed(sig) => format!(
            "restic {} was killed by signal {sig}; its lock was removed; the next run uploads again",
            r.command
        ),
        Trouble::Failed(m) => format!(
            "restic {} on {repo}: {}{}",
            r.command,
            m.replace("offsite init INSTANCE", &format!("offsite init {inst}")),
            read_only_local(repository)
        ),
    };
    fail(Code::Offsite, text)
}

/// For a repository on a local path that this process sees read-only (a unit whose
/// `ReadWritePaths=` predate the config: no `daemon-reload`), what to do about it.
fn read_only_local(repository: &str) -> String {
    let local = repository.strip_prefix("local:").unwrap_or(repository);
    if !local.starts_with('/') {
        return String::new();
    }
    // The repository, or the nearest directory above it that exists.
    let mut p = Path::new(local);
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => return String::new(),
        }
    }
    let read_only = nix::sys::statvfs::statvfs(p)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    if !read_only {
        return String::new();
    }
    let hint = crate::base::fsutil::read_only_hint(Path::new(local));
    if hint.is_empty() {
        format!(" ({local} is on a read-only file system here)")
    } else {
        hint
    }
}

/// Remove the lock a killed restic of ours left (`restic unlock` removes only
/// stale locks: of processes gone from this host, or older than 30 minutes).
pub(crate) fn unlock_after_kill(repo: &Repo, err: &anyhow::Error) {
    if let Some(ResticError {
        trouble: Trouble::Killed(_),
        ..
    }) = err.downcast_ref::<ResticError>()
    {
        if let Err(e) = repo.run("unlock", &["unlock"], None) {
            log::warn!("could not remove the killed restic's lock: {e:#}");
        }
    }
}
/// One snapshot of the instance, for `offsite list`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Listed {
    pub(crate) id: String,
    pub(crate) short_id: String,
    /// The snapshot time (the backup's own time), RFC 3339.
    pub(crate) time: String,
    pub(crate) age_seconds: i64,
    /// The backup's name (the snapshot's one path).
    pub(crate) backup: String,
    pub(crate) hostname: String,
    pub(crate) tags: Vec<String>,
    /// Bytes a restore writes (`restic stats`, restore-size).
    pub(crate) bytes: Option<u64>,
}

/// The opened repository of an instance, restic errors explained.
pub(crate) struct Opened<'a> {
    pub(crate) inst: &'a Instance,
    pub(crate) o: &'a Offsite,
    pub(crate) repo: Repo,
}

impl<'a> Opened<'a> {
    pub(crate) fn open(inst: &'a Instance) -> Result<Opened<'a>> {
        let o = settings(inst)?;
        Ok(Opened {
            inst,
            o,
            repo: repo(o)?,
        })
    }

    fn run(&self, what: &str, args: &[&str], cwd: Option<&Path>) -> Result<std::process::Output> {
        self.repo
            .run(what, args, cwd)
            .inspect_err(|e| unlock_after_kill(&self.repo, e))
            .map_err(|e| explain(e, &self.inst.name, &self.o.repository))
    }

    /// Open the repository with its password and read its config (`restic cat
    /// config`: nothing is locked or written), for `synbackup check`.
    pub(crate) fn opens(&self) -> Result<String> {
        self.run("cat config", &["cat", "config"], None)?;
        Ok(format!(
            "the repository {} opens with its password",
            redacted(&self.o.repository)
        ))
    }

    /// `restic init` (what `synbackup offsite init` does; never implicit).
    pub(crate) fn init(&self) -> Result<String> {
        let out = self.run("init", &["init"], None)?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find(|l| l.starts_with("created restic repository"))
            .unwrap_or("repository created")
            .to_string())
    }

    /// The instance's snapshots, oldest first, with their sizes when `sizes`.
    pub(crate) fn list(&self, sizes: bool) -> Result<Vec<Listed>> {
        let tags = filter_tags(&self.inst.name);
        let out = self.run("snapshots", &["snapshots", "--json", "--tag", &tags], None)?;
        let snaps = restic::parse_snapshots(&String::from_utf8_lossy(&out.stdout))?;
        let now = Utc::now();
        let mut listed = Vec::new();
        for s in snaps {
            let bytes = if sizes {
                let out = self.run("stats", &["stats", "--json", &s.id], None)?;
                restic::parse_stats_size(&String::from_utf8_lossy(&out.stdout))
            } else {
                None
            };
            let age = DateTime::parse_from_rfc3339(&s.time)
                .map(|t| (now - t.with_timezone(&Utc)).num_seconds())
                .unwrap_or(0);
            listed.push(Listed {
                backup: s
                    .paths
                    .first()
                    .and_then(|p| Path::new(p).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                id: s.id,
                short_id: s.short_id,
                time: s.time,
                age_seconds: age,
                hostname: s.hostname,
                tags: s.tags,
                bytes,
            });
        }
        Ok(listed)
    }

    /// `restic check --read-data-subset SHARE`: the repository's structure and a
    /// share of its data. A damaged repository is a failure naming what restic found.
    pub(crate) fn check(&self, subset: Option<&str>) -> Result<String> {
        let subset = subset.unwrap_or(&self.o.check_subset).to_string();
        let arg = format!("--read-data-subset={subset}");
        match self.repo.run("check", &["check", &arg], None) {
            Ok(_) => Ok(format!(
                "offsite repository {} of {} is intact (read {subset} of its data)",
                redacted(&self.o.repository),
                self.inst.name
            )),
            Err(e) => {
                unlock_after_kill(&self.repo, &e);
                let found = e
                    .downcast_ref::<ResticError>()
                    .and_then(|r| match &r.trouble {
                        Trouble::Failed(m) => Some(m.clone()),
                        _ => None,
                    });
                let e = match found {
                    Some(m) if m.contains("repository contains errors") => fail(
                        Code::Offsite,
                        format!(
                            "offsite repository {} of {} is damaged: {m}; see `restic check` (RESTIC_REPOSITORY as in the config) and the restic manual on repairing",
                            redacted(&self.o.repository),
                            self.inst.name
                        ),
                    ),
                    _ => explain(e, &self.inst.name, &self.o.repository),
                };
                logging::event(
                    log::Level::Error,
                    logging::MSG_OFFSITE_CHECK_FAILED,
                    &self.inst.name,
                    &[],
                    &format!("{}: offsite check failed: {e:#}", self.inst.name),
                );
                Err(crate::base::exit::reported(&e))
            }
        }
    }

    /// `restic unlock`: stale locks only (dead processes on this host, or older
    /// than 30 minutes); a running restic's lock stays.
    pub(crate) fn unlock(&self) -> Result<String> {
        let out = self.run("unlock", &["unlock"], None)?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(if text.is_empty() {
            "no stale locks".to_string()
        } else {
            text
        })
    }

    /// The snapshot `latest` means for this instance: the newest of the cell
    /// `cell` (the service directory's, when it has one and it has snapshots), else
    /// the newest when every snapshot of the instance is of one cell. Snapshots of
    /// several cells under one instance name (two hosts sharing a repository, a
    /// rebuilt cell) make `latest` ambiguous: refused (exit 2), naming each cell
    /// with its hosts and newest snapshot, and how to pick one.
    fn latest(&self, cell: Option<&str>) -> Result<restic::Snapshot> {
        let name = &self.inst.name;
        let tags = filter_tags(name);
        let out = self.run("snapshots", &["snapshots", "--json", "--tag", &tags], None)?;
        let snaps = restic::parse_snapshots(&String::from_utf8_lossy(&out.stdout))?;
        let cell_of = |s: &restic::Snapshot| {
            s.tags
                .iter()
                .find_map(|t| t.strip_prefix("cell="))
                .unwrap_or("none")
                .to_string()
        };
        let mine: Vec<&restic::Snapshot> = match cell {
            Some(c) => snaps.iter().filter(|s| cell_of(s) == c).collect(),
            None => Vec::new(),
        };
        let pool: Vec<&restic::Snapshot> = if mine.is_empty() {
            snaps.iter().collect()
        } else {
            mine
        };
        // Oldest first: the last of each cell is its newest.
        let mut cells: std::collections::BTreeMap<String, (Vec<String>, &restic::Snapshot)> =
            Default::default();
        for s in &pool {
            let e = cells.entry(cell_of(s)).or_insert_with(|| (Vec::new(), s));
            if !e.0.contains(&s.hostname) {
                e.0.push(s.hostname.clone());
            }
            e.1 = s;
        }
        match cells.len() {
            0 => Err(fail(
                Code::BadPath,
                format!(
                    "the offsite repository {} has no snapshot of {name}; check SYNBACKUP_OFFSITE_REPOSITORY, or list them with `synbackup offsite list {name}`",
                    redacted(&self.o.repository)
                ),
            )),
            1 => Ok(pool[pool.len() - 1].clone()),
            _ => Err(fail(
                Code::Usage,
                format!(
                    "restore --offsite latest of {name} is ambiguous: the repository has snapshots of {} cells under that name ({}){}; pick one with --offsite ID (`synbackup offsite list {name}` lists them)",
                    cells.len(),
                    cells
                        .iter()
                        .map(|(c, (hosts, newest))| format!(
                            "cell {c} from {} (newest {} at {})",
                            hosts.join(", "),
                            newest.short_id,
                            newest.time
                        ))
                        .collect::<Vec<_>>()
                        .join("; "),
                    match cell {
                        Some(c) => format!(", none of them of {c}, the cell in the service directory"),
                        None => String::new(),
                    }
                ),
            )),
        }
    }

    /// The snapshot a restore of `id` (or `latest` of this instance: see
    /// [`Opened::latest`], `cell` the service directory's) fetches, read from
    /// the repository without restoring anything; refused when it is not one of
    /// the instance's.
    pub(crate) fn choose(&self, id: &str, cell: Option<&str>) -> Result<restic::Snapshot> {
        if id == "latest" {
            let s = self.latest(cell)?;
            log::info!(
                "the newest offsite snapshot of {} is {} ({}, from {}, {})",
                self.inst.name,
                s.short_id,
                s.time,
                s.hostname,
                s.tags
                    .iter()
                    .find(|t| t.starts_with("cell="))
                    .map_or("no cell", String::as_str)
            );
            return Ok(s);
        }
        let out = self.run("snapshots", &["snapshots", "--json", id], None)?;
        let snaps = restic::parse_snapshots(&String::from_utf8_lossy(&out.stdout))?;
        let ours = format!("instance={}", self.inst.name);
        // The snapshot's full id, whatever prefix of it was given.
        snaps
            .into_iter()
            .find(|s| s.tags.contains(&ours))
            .ok_or_else(|| {
                fail(
                    Code::BadPath,
                    format!(
                        "snapshot {id} is not a synbackup snapshot of {}; pick one from `synbackup offsite list {}`",
                        self.inst.name, self.inst.name
                    ),
                )
            })
    }

    /// Bytes a restore of snapshot `id` writes (`restic stats`, restore-size).
    pub(crate) fn restore_size(&self, id: &str) -> Result<Option<u64>> {
        let out = self.run("stats", &["stats", "--json", id], None)?;
        Ok(restic::parse_stats_size(&String::from_utf8_lossy(
            &out.stdout,
        )))
    }

    /// Restore snapshot `id` (or `latest` of this instance: see [`Opened::latest`],
    /// `cell` the service directory's) into `target` (new, empty); returns the
    /// backup directory in it.
    pub(crate) fn fetch(
        &self,
        id: &str,
        cell: Option<&str>,
        target: &Path,
    ) -> Result<(PathBuf, String)> {
        let tags = filter_tags(&self.inst.name);
        let chosen = self.choose(id, cell)?.id;
        let id = chosen.as_str();
        let target_s = target.to_string_lossy().into_owned();
        log::info!("restoring offsite snapshot {id} into {}", target.display());
        self.run(
            "restore",
            &["restore", id, "--tag", &tags, "--target", &target_s],
            None,
        )?;
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(target)
            .map_err(|e| {
                fail(
                    Code::Other,
                    format!("cannot read {}: {e}", target.display()),
                )
            })?
            .flatten()
            .map(|e| e.path())
            .collect();
        match dirs.len() {
            1 => Ok((dirs.remove(0), id.to_string())),
            n => Err(fail(
                Code::BadPath,
                format!(
                    "offsite snapshot {id} restored {n} entries into {}, expected the one backup directory a synbackup snapshot holds",
                    target.display()
                ),
            )),
        }
    }
}
