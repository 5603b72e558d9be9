// SPDX-License-Identifier: Apache-2.0
//! What a drilled cell must not reach on the host's file system, beyond the network
//! its namespace already takes away.
//!
//! A drill boots a copy of a production cell. Its network namespace stops TCP, but a
//! unix socket is a file: a copy that follows its leader over `cell:///data/leader`
//! (or any Storm that opens such a URL) would reach the live service. So the server
//! sees the host read-only, with:
//! - every directory synbackup knows to belong to a live service or its backups
//!   replaced by an empty one: the backup's source (its manifest's `source`), every
//!   configured instance's `SERVICE_DIR` and `BACKUP_ROOT`, synbackup's own config
//!   directory, and the home directories (`/home`, `/root`: users' `~/.syn` holds
//!   client certificates for the production services);
//! - every unix socket listening on the host (`/proc/net/unix` of the host's network
//!   namespace) covered, so `connect()` is refused, wherever it lives;
//! - a private `/run`, `/tmp` and `/dev/shm`; only its scratch copy writable.
//!
//! A directory that holds the scratch copy or the Python that runs the server stays
//! visible (read-only) and is reported, as it must be for the server to start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::instance::config::{self, InstanceOverrides};

/// Directories whose sockets need no covering: private in the drill's namespace.
const PRIVATE: [&str; 3] = ["/run", "/tmp", "/dev/shm"];

/// What the drilled server does not see.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Hidden {
    /// Directories replaced by an empty one.
    pub(crate) dirs: Vec<PathBuf>,
    /// Listening unix sockets covered.
    pub(crate) sockets: Vec<PathBuf>,
    /// Directories that should be hidden but hold what the server needs.
    pub(crate) visible: Vec<PathBuf>,
}

impl Hidden {
    /// A few words for the drill's report line.
    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "{} directories and {} sockets of the host hidden",
            self.dirs.len(),
            self.sockets.len()
        );
        if !self.visible.is_empty() {
            let v: Vec<String> = self
                .visible
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            s.push_str(&format!(" ({} left visible, read-only)", v.join(", ")));
        }
        s
    }
}

/// The directories to hide: the backup's `source`, each instance's directories in
/// `config_dir` (and `config_dir` itself), the home directories.
pub(crate) fn candidate_dirs(source: Option<&Path>, config_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec!["/home".into(), "/root".into()];
    dirs.extend(source.map(Path::to_path_buf));
    if let Some(cd) = config_dir {
        dirs.push(cd.to_path_buf());
        for name in config::instance_names(cd).unwrap_or_default() {
            match config::load(cd, &name, &InstanceOverrides::default()) {
                Ok(inst) => {
                    dirs.push(inst.service_dir);
                    dirs.push(inst.backup_root);
                }
                Err(e) => log::debug!("drill seal: instance {name} not read: {e:#}"),
            }
        }
    }
    dirs
}

/// Plan the seal: of `candidates`, the existing absolute directories, outermost
/// only, but those holding one of `keep` (the scratch copy, the server's Python);
/// and the listening sockets of `proc_net_unix` outside them and the private
/// directories.
pub(crate) fn plan(candidates: &[PathBuf], keep: &[PathBuf], proc_net_unix: &str) -> Hidden {
    let mut hidden = Hidden::default();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for c in candidates {
        let Ok(c) = std::fs::canonicalize(c) else {
            continue;
        };
        if !c.is_dir() || c == Path::new("/") {
            continue;
        }
        if keep.iter().any(|k| k.starts_with(&c)) {
            if !hidden.visible.contains(&c) {
                hidden.visible.push(c);
            }
            continue;
        }
        dirs.insert(c);
    }
    // Outermost only: a directory inside another hidden one is hidden with it.
    let all: Vec<PathBuf> = dirs.iter().cloned().collect();
    hidden.dirs = all
        .iter()
        .filter(|d| !all.iter().any(|o| o != *d && d.starts_with(o)))
        .cloned()
        .collect();
    let mut sockets = BTreeSet::new();
    for s in listening_sockets(proc_net_unix) {
        let covered = PRIVATE.iter().any(|p| s.starts_with(p))
            || hidden.dirs.iter().any(|d| s.starts_with(d));
        if !covered {
            sockets.insert(s);
        }
    }
    hidden.sockets = sockets.into_iter().collect();
    hidden
}

/// The paths of the listening unix sockets on the file system, from the text of
/// `/proc/net/unix` (`Num RefCount Protocol Flags Type St Inode Path`; flag
/// `0x10000` is `__SO_ACCEPTCON`, listening; abstract sockets start with `@` and
/// belong to the network namespace the drill leaves behind).
pub(crate) fn listening_sockets(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let flags = line.split_whitespace().nth(3);
        let listening = flags
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .is_some_and(|f| f & 0x10000 != 0);
        match after_fields(line, 7) {
            Some(path) if listening && path.starts_with('/') => out.push(PathBuf::from(path)),
            _ => {}
        }
    }
    out
}

/// What follows the first `n` whitespace-separated fields of `line` (a socket's
/// path may hold spaces).
fn after_fields(line: &str, n: usize) -> Option<&str> {
    let mut rest = line.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace)?;
        rest = rest[end..].trim_start();
    }
    Some(rest.trim_end()).filter(|r| !r.is_empty())
}

/// [`plan`] on this host's `/proc/net/unix`.
pub(crate) fn plan_here(candidates: &[PathBuf], keep: &[PathBuf]) -> Hidden {
    let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_else(|e| {
        log::warn!("cannot read /proc/net/unix ({e}): the host's sockets are not covered");
        String::new()
    });
    plan(candidates, keep, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 21005 /data/leader/sock
0000000000000000: 00000002 00000000 00010000 0001 01 21006 /run/systemd/notify
0000000000000000: 00000003 00000000 00000000 0001 03 21007 /data/client/sock
0000000000000000: 00000002 00000000 00010000 0001 01 21008 @/tmp/.X11-unix/X0
0000000000000000: 00000002 00000000 00010000 0001 01 21009 /srv/a b/sock
0000000000000000: 00000002 00000000 00010000 0001 01 21010
";

    #[test]
    fn finds_listening_file_sockets_only() {
        assert_eq!(
            listening_sockets(NET_UNIX),
            [
                PathBuf::from("/data/leader/sock"),
                "/run/systemd/notify".into(),
                "/srv/a b/sock".into()
            ]
        );
    }

    #[test]
    fn hides_outermost_dirs_keeps_what_the_server_needs() {
        let t = tempfile::tempdir().unwrap();
        let t = std::fs::canonicalize(t.path()).unwrap();
        for d in ["svc/cortex00", "backups/b1", "home/venv/bin", "svc2"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        let cands = vec![
            t.join("svc"),
            t.join("svc/cortex00"),
            t.join("backups"),
            t.join("home"),
            t.join("missing"),
            t.join("svc2"),
        ];
        let keep = vec![
            t.join("backups/.b1.synbackup-drill.1"),
            t.join("home/venv/bin/python"),
        ];
        let sockets = format!(
            "Num RefCount Protocol Flags Type St Inode Path\n0: 00000002 00000000 00010000 0001 01 1 {}\n0: 00000002 00000000 00010000 0001 01 2 /srv/other svc/sock\n0: 00000002 00000000 00010000 0001 01 3 /run/x.sock\n0: 00000002 00000000 00010000 0001 01 4 {}\n",
            t.join("svc/cortex00/sock").display(),
            t.join("tmp-is-private/sock").display()
        );
        let h = plan(&cands, &keep, &sockets);
        assert_eq!(h.dirs, [t.join("svc"), t.join("svc2")]);
        assert_eq!(h.visible, [t.join("backups"), t.join("home")]);
        // A temporary directory is under /tmp, private to the drill.
        assert_eq!(h.sockets, [PathBuf::from("/srv/other svc/sock")]);
        assert!(h
            .summary()
            .starts_with("2 directories and 1 sockets of the host hidden ("));
    }
}
