// SPDX-License-Identifier: Apache-2.0
//! `SYNBACKUP_NOTIFY`: a command an instance runs at the start and the end of each
//! run, window, restore, drill, offsite copy and certificate deploy, as borgmatic's
//! monitoring hooks do: `COMMAND EVENT KIND INSTANCE` (EVENT `start`, `success` or
//! `failure`; KIND `backup`, `cold`, `restore`, `drill`, `offsite`, `deploy`), with a
//! JSON document of the outcome on its standard input (for `start`: the instance,
//! the kind and the time; at the end: the status record `status` shows, its
//! `result` saying `failed`, `skipped`, `refused` or `cancelled` for a failure).
//!
//! The command runs as root, so it must be root's and writable by nobody else (else
//! it is not run, and the run says why). It gets `SYNBACKUP_NOTIFY_TIMEOUT` (default
//! 30 s), then is killed; its failure, timeout or output on stderr is logged, and
//! never changes the run's result or exit code.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where to send an instance's notifications.
#[derive(Debug, Clone)]
pub(crate) struct Notify {
    pub(crate) command: PathBuf,
    pub(crate) timeout: Duration,
}

/// Why `command` must not be run as root, if it must not.
fn untrusted(command: &Path) -> Option<String> {
    if !command.is_absolute() {
        return Some("it is not an absolute path".into());
    }
    let mut at = Some(command);
    while let Some(p) = at {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return Some(format!("{}: {e}", p.display())),
        };
        let others_write = meta.mode() & 0o022 != 0
            && !(meta.is_dir() && meta.mode() & 0o1000 != 0 && p != command);
        if meta.uid() != 0 || others_write {
            return Some(format!(
                "{} is owned by uid {} with mode {:o}: it must be root's and writable by nobody else",
                p.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
        at = p.parent();
    }
    None
}

/// Run the command for `event` with `doc` on its stdin; log, never fail.
pub(crate) fn send(n: &Notify, event: &str, kind: &str, instance: &str, doc: &serde_json::Value) {
    if let Some(why) = untrusted(&n.command) {
        log::error!(
            "not running SYNBACKUP_NOTIFY {} ({event} of {kind} of {instance}): {why}",
            n.command.display()
        );
        return;
    }
    let child = Command::new(&n.command)
        .args([event, kind, instance])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::warn!(
                "SYNBACKUP_NOTIFY {} did not start: {e}",
                n.command.display()
            );
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = serde_json::to_vec(doc).unwrap_or_default();
        text.push(b'\n');
        // A command that does not read its input gets EPIPE: not our failure.
        let _ = stdin.write_all(&text);
    }
    let deadline = Instant::now() + n.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                log::warn!("waiting for SYNBACKUP_NOTIFY {}: {e}", n.command.display());
                return;
            }
        }
    };
    let stderr = child
        .stderr
        .take()
        .map(|mut s| {
            let mut t = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut t);
            t
        })
        .unwrap_or_default();
    let said = stderr.trim().lines().last().unwrap_or("").to_string();
    match status {
        None => log::warn!(
            "SYNBACKUP_NOTIFY {} ({event}) was killed after {} s",
            n.command.display(),
            n.timeout.as_secs()
        ),
        Some(st) if !st.success() => log::warn!(
            "SYNBACKUP_NOTIFY {} ({event}) failed ({st}){}",
            n.command.display(),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ),
        Some(_) => log::debug!("SYNBACKUP_NOTIFY {} ({event}) done", n.command.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_roots_commands_are_trusted() {
        assert!(untrusted(Path::new("relative/cmd")).is_some());
        assert!(untrusted(Path::new("/bin/true")).is_none());
        let t = tempfile::tempdir().unwrap();
        let cmd = t.path().join("hook");
        std::fs::write(&cmd, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cmd, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(untrusted(&cmd).unwrap().contains("writable by nobody else"));
    }
}
