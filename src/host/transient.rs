// SPDX-License-Identifier: Apache-2.0
//! Running a process as a transient systemd service (`systemd-run`), hardened: no
//! network but its own loopback (`PrivateNetwork=yes`), as a given user, the file
//! system read-only but one directory (`ProtectSystem=strict`, `ReadWritePaths=`),
//! `NoNewPrivileges=yes`, `PrivateTmp=yes`, with the environment of another unit.
//! The writable directory is also bound at [`netns::CELL_PATH`] on a private tmpfs
//! `/run` (`TemporaryFileSystem=/run`, `BindPaths=`): the process reaches it there
//! whatever the modes of the directories that hold it on the host, and the host's
//! runtime sockets under `/run` do not exist for it.
//!
//! Used when systemd runs the host ([`systemd_runs`]): systemd then owns the process
//! and its cgroup, so it and every worker it spawns are stopped together, also by a
//! later run when the one that started it died (the unit's name is derived from
//! the starter's pid, see [`unit_name`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host::unitenv::UnitEnv;
use crate::host::{netns, systemd};

/// How the server under test is kept off the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Isolation {
    /// A transient unit when systemd runs the host, else a network namespace.
    Auto,
    /// A hardened transient unit (`systemd-run`, `PrivateNetwork=yes`).
    SystemdRun,
    /// A network namespace of its own, unshared by us.
    Netns,
}

impl Isolation {
    /// What `Auto` means on this host.
    pub(crate) fn resolved(self) -> Isolation {
        match self {
            Isolation::Auto if systemd_runs(Path::new("/")) => Isolation::SystemdRun,
            Isolation::Auto => Isolation::Netns,
            other => other,
        }
    }
}

/// True when systemd is PID 1 and has booted the host (`/run/systemd/system`).
pub(crate) fn systemd_runs(root: &Path) -> bool {
    let comm = std::fs::read_to_string(root.join("proc/1/comm")).unwrap_or_default();
    comm.trim() == "systemd" && root.join("run/systemd/system").is_dir()
}

/// The transient unit of the drill process `pid` (the scratch copy's suffix).
pub(crate) fn unit_name(pid: u32) -> String {
    format!("synbackup-drill-scratch-{pid}.service")
}

/// What to run, and how.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) unit: String,
    pub(crate) description: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// The one directory the process may write.
    pub(crate) writable: PathBuf,
    /// Its stdout and stderr (appended).
    pub(crate) log: PathBuf,
    pub(crate) env: UnitEnv,
    /// Directories and sockets made inaccessible (`InaccessiblePaths=`).
    pub(crate) hide: Vec<PathBuf>,
    pub(crate) argv: Vec<OsString>,
}

/// `path` as one word of a systemd path-list property, missing ones ignored (`-`).
fn optional_path_word(path: &Path) -> String {
    let p = path.display().to_string();
    format!("\"-{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `systemd-run` arguments for `spec`.
pub(crate) fn run_args(spec: &Spec) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        format!("--unit={}", spec.unit).into(),
        format!("--description={}", spec.description).into(),
        "--quiet".into(),
        "--collect".into(),
        "--service-type=exec".into(),
    ];
    let mut prop = |p: String| {
        a.push("--property".into());
        a.push(p.into());
    };
    prop("PrivateNetwork=yes".into());
    prop(format!("User={}", spec.uid));
    prop(format!("Group={}", spec.gid));
    prop("ProtectSystem=strict".into());
    prop(format!("ReadWritePaths={}", spec.writable.display()));
    prop("TemporaryFileSystem=/run:mode=0755".into());
    prop(format!(
        "BindPaths={}:{}",
        spec.writable.display(),
        netns::CELL_PATH
    ));
    prop("NoNewPrivileges=yes".into());
    prop("PrivateTmp=yes".into());
    prop("TemporaryFileSystem=/dev/shm:mode=1777".into());
    for p in &spec.hide {
        prop(format!("InaccessiblePaths={}", optional_path_word(p)));
    }
    prop("TimeoutStopSec=60".into());
    prop(format!("StandardOutput=append:{}", spec.log.display()));
    prop(format!("StandardError=append:{}", spec.log.display()));
    for (path, ignore) in &spec.env.files {
        let dash = if *ignore { "-" } else { "" };
        prop(format!("EnvironmentFile={dash}{}", path.display()));
    }
    for e in &spec.env.assignments {
        prop(format!("Environment={e}"));
    }
    a.push("--".into());
    a.extend(spec.argv.iter().cloned());
    a
}

/// Start the transient unit; returns once systemd has started its process.
pub(crate) fn start(spec: &Spec) -> Result<()> {
    let out = Command::new("systemd-run")
        .args(run_args(spec))
        .output()
        .context("cannot run systemd-run")?;
    if !out.status.success() {
        bail!(
            "systemd-run --unit={} failed: {}",
            spec.unit,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The unit's state: its main pid (0 once it has ended) and `ActiveState`.
pub(crate) fn state(unit: &str) -> Result<(u32, String)> {
    let out = systemd::systemctl(&["show", "-p", "MainPID", "-p", "ActiveState", unit])?;
    Ok(parse_state(&out))
}

fn parse_state(out: &str) -> (u32, String) {
    let mut pid = 0;
    let mut active = String::new();
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("MainPID=") {
            pid = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("ActiveState=") {
            active = v.trim().to_string();
        }
    }
    (pid, active)
}

/// True once the unit's process has ended (inactive, failed, or collected).
pub(crate) fn ended(unit: &str) -> Result<bool> {
    let (pid, active) = state(unit)?;
    Ok(pid == 0 && matches!(active.as_str(), "inactive" | "failed" | ""))
}

/// Stop the unit (SIGTERM, SIGKILL after its 60 s) and forget a failed result.
/// Quiet when there is no such unit.
pub(crate) fn stop(unit: &str) {
    match systemd::systemctl(&["stop", unit]) {
        Ok(_) => log::debug!("stopped {unit}"),
        Err(e) => log::debug!("{e:#}"),
    }
    let _ = systemd::systemctl(&["reset-failed", unit]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_hardened_systemd_run_arguments() {
        let spec = Spec {
            unit: unit_name(42),
            description: "drill".into(),
            uid: 998,
            gid: 997,
            writable: "/srv/b/.x.synbackup-drill.42".into(),
            log: "/srv/b/.x.synbackup-drill.42.log".into(),
            env: UnitEnv {
                assignments: vec!["SYN_X=a b".into()],
                files: vec![("/etc/c0.env".into(), true)],
            },
            hide: vec!["/data/leader/sock".into(), "/srv/a \"b".into()],
            argv: vec!["/v/bin/python".into(), "-m".into(), "m".into()],
        };
        let a: Vec<String> = run_args(&spec)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join("\n");
        for want in [
            "--unit=synbackup-drill-scratch-42.service",
            "PrivateNetwork=yes",
            "User=998",
            "Group=997",
            "ProtectSystem=strict",
            "ReadWritePaths=/srv/b/.x.synbackup-drill.42",
            "TemporaryFileSystem=/run:mode=0755",
            "BindPaths=/srv/b/.x.synbackup-drill.42:/run/synbackup-drill",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "EnvironmentFile=-/etc/c0.env",
            "Environment=SYN_X=a b",
            "TemporaryFileSystem=/dev/shm:mode=1777",
            "InaccessiblePaths=\"-/data/leader/sock\"",
            "InaccessiblePaths=\"-/srv/a \\\"b\"",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing in {joined}");
        }
        assert_eq!(&a[a.len() - 4..], ["--", "/v/bin/python", "-m", "m"]);
    }

    #[test]
    fn parses_the_unit_state() {
        assert_eq!(
            parse_state("MainPID=123\nActiveState=active\n"),
            (123, "active".into())
        );
        assert_eq!(parse_state("MainPID=0\nActiveState=inactive\n").0, 0);
    }

    #[test]
    fn systemd_runs_only_with_pid1_systemd_and_run_dir() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("proc/1")).unwrap();
        std::fs::write(t.path().join("proc/1/comm"), "systemd\n").unwrap();
        assert!(!systemd_runs(t.path()));
        std::fs::create_dir_all(t.path().join("run/systemd/system")).unwrap();
        assert!(systemd_runs(t.path()));
        std::fs::write(t.path().join("proc/1/comm"), "init\n").unwrap();
        assert!(!systemd_runs(t.path()));
    }
}
