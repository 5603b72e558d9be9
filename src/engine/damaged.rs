// SPDX-License-Identifier: Apache-2.0
//! A published backup that a verification found damaged carries the mark
//! [`DAMAGED_MARK`](crate::engine::manifest::DAMAGED_MARK): when it was found and
//! the problems. Every verification of a published backup (`synbackup verify`, a
//! drill's) goes through [`verify_recorded`], which writes the mark on a failure
//! and removes it when a verification passes again; a restore, which checks the
//! backup as it copies it (`restore::copy`), writes it through [`mark`] on a
//! failure and leaves a mark it finds (its check read the page cache, not
//! necessarily the device: `verify` removes it). So `list`, `status`
//! and retention (`instance::catalog` reads the mark) all see the same verdict:
//! a damaged backup is not "verified", not the "last good backup", and fills no
//! retention slot.
//!
//! The mark is written by root (the backup directory is root's, 0700), never
//! through a link (`O_NOFOLLOW`), and made durable. A caller that cannot write it
//! (not root) is told so in a warning; the verdict itself is unchanged.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::base::fsutil;
use crate::engine::manifest::{DAMAGED_MARK, MANIFEST_NAME};
use crate::engine::verify::{self, Report};

/// What a damaged mark says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// When it was found (RFC 3339).
    pub(crate) when: String,
    /// The first problem found.
    pub(crate) problem: String,
}

/// Verify the published backup `dir` and record the verdict in it: the mark
/// written on a failure (also when the manifest itself cannot be read), removed
/// on a pass.
pub(crate) fn verify_recorded(dir: &Path) -> Result<Report> {
    match verify::verify(dir) {
        Ok(report) if report.ok() => {
            clear(dir);
            Ok(report)
        }
        Ok(report) => {
            mark(dir, &report.problems);
            Ok(report)
        }
        Err(e) => {
            if dir.join(MANIFEST_NAME).is_file() {
                mark(dir, &[format!("{e:#}")]);
            }
            Err(e)
        }
    }
}

/// Write the mark (best effort: the verdict stands without it).
pub(crate) fn mark(dir: &Path, problems: &[String]) {
    let when = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match write_mark(dir, &when, problems) {
        Ok(()) => log::warn!(
            "marked {} damaged: `list` shows it, `status` reports it, retention no longer counts it",
            dir.display()
        ),
        Err(e) => log::warn!("could not mark {} damaged: {e:#}", dir.display()),
    }
}

fn write_mark(dir: &Path, when: &str, problems: &[String]) -> Result<()> {
    let path = dir.join(DAMAGED_MARK);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| fsutil::write_error(&path, e))?;
    let mut text = format!("{when}\n");
    for p in problems {
        text.push_str(&p.replace('\n', " "));
        text.push('\n');
    }
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| fsutil::write_error(&path, e))?;
    fsutil::fsync_dir(dir)
}

/// Remove the mark of a backup that verified again.
fn clear(dir: &Path) {
    let path = dir.join(DAMAGED_MARK);
    match fs::remove_file(&path) {
        Ok(()) => {
            log::info!(
                "{} verified again: its damaged mark is removed",
                dir.display()
            );
            let _ = fsutil::fsync_dir(dir);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("could not remove {}: {e}", path.display()),
    }
}

/// The damage recorded in the backup at `dir`, if any.
pub(crate) fn recorded(dir: &Path) -> Option<Damage> {
    let meta = fs::symlink_metadata(dir.join(DAMAGED_MARK)).ok()?;
    if !meta.is_file() {
        return None;
    }
    let text = fs::read_to_string(dir.join(DAMAGED_MARK))
        .with_context(|| format!("cannot read {}", dir.join(DAMAGED_MARK).display()))
        .unwrap_or_default();
    let mut lines = text.lines();
    Some(Damage {
        when: lines.next().unwrap_or_default().to_string(),
        problem: lines.next().unwrap_or("(not recorded)").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_is_written_read_and_cleared() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(recorded(t.path()), None);
        write_mark(
            t.path(),
            "2026-12-07T06:00:00Z",
            &["a.mdb: digest\nmismatch".into()],
        )
        .unwrap();
        assert_eq!(
            recorded(t.path()),
            Some(Damage {
                when: "2026-12-07T06:00:00Z".into(),
                problem: "a.mdb: digest mismatch".into()
            })
        );
        clear(t.path());
        assert_eq!(recorded(t.path()), None);
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("elsewhere");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, t.path().join(DAMAGED_MARK)).unwrap();
        assert!(write_mark(t.path(), "now", &["x".into()]).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(recorded(t.path()), None);
    }
}
