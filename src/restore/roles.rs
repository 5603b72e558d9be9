// SPDX-License-Identifier: Apache-2.0
//! A restore never changes a cell's role in silence, and says what it does to the
//! cell's history.
//!
//! A leader and its mirrors share one `cell.guid`, so the same-cell check passes
//! between them; what tells them apart is the role: `mirror: URL` in `cell.yaml`
//! on 2.x, `parent: URL` on 3.x (`cell.mods.yaml` overrides both: a promoted
//! mirror has `mirror: null` there), and when the cell runs, `getCellInfo()`
//! (`cell.active` false on a mirror, its upstream in `cell.mirror` / `cell.parent`).
//!
//! - The role of the directory is what its running cell says, else its config
//!   files; the role of the backup is what the cell said while frozen for it
//!   (manifest `cell.role`), else the backup's config files. When they differ
//!   (leader and mirror), the restore is refused (exit code 3) naming both, unless
//!   `--force`. A backup a run took on a mirror for its leader (manifest
//!   `from_mirror`) is the leader's.
//! - The restored directory keeps the directory's own role settings: the
//!   [`is_role_key`] keys (`mirror`, `parent` and every `aha:` key: whom it follows,
//!   the AHA name, network and registry it has) of its `cell.yaml` and
//!   `cell.mods.yaml` replace the backup's in the restored copy (the backup itself
//!   is untouched). So the leader's backup restored into a mirror's directory
//!   stays a mirror of its leader (it catches up from the backup's index), and a
//!   mirror's backup restored into the leader's directory stays the leader, never
//!   a mirror of itself. A directory that is not a cell yet (no `cell.guid`) takes
//!   the backup's settings as they are.
//! - Nexus indexes: when the directory's cell is ahead of the backup (its index,
//!   from the running cell or its files, is greater than the one the backup
//!   holds), the restore takes the cell back that many changes. For a leader this
//!   is a warning with both numbers: every mirror that applied changes past the
//!   backup's index must be re-seeded from the restored leader (a new backup of
//!   it), or it diverges (Synapse's mirror asks for the changes from its own index
//!   on, and the restored leader gives new changes those offsets). The restore's
//!   status records both numbers and the warning.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::base::exit::{fail, Code};
use crate::base::fsutil;
use crate::engine::cellyaml::{self, Block, FILES};
use crate::engine::manifest::Manifest;
use crate::engine::nexus;
use crate::engine::telepath::{self, Client};

/// A cell's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    /// A mirror (a 3.x follower), and the upstream it follows when known.
    Mirror(Option<String>),
}

impl Role {
    fn is_mirror(&self) -> bool {
        matches!(self, Role::Mirror(_))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Leader => f.write_str("leader"),
            Role::Mirror(Some(u)) => write!(f, "mirror of {u}"),
            Role::Mirror(None) => f.write_str("mirror"),
        }
    }
}

/// The keys that make a directory the member of a deployment it is: whom it
/// follows (`mirror` on 2.x, `parent` on 3.x) and its AHA identity (`aha:*`).
pub(crate) fn is_role_key(key: &str) -> bool {
    key == "mirror" || key == "parent" || key.starts_with("aha:")
}

/// The role the config files of `dir` give it.
pub(crate) fn configured_role(dir: &Path) -> Result<Role> {
    for key in ["mirror", "parent"] {
        if let Some(Some(url)) = cellyaml::effective(dir, key)? {
            // Shown in lines and statuses: never its password.
            return Ok(Role::Mirror(Some(crate::engine::teleurl::mask_text(&url))));
        }
    }
    Ok(Role::Leader)
}

/// A role and a nexus index, and where they were read.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Side {
    #[serde(serialize_with = "as_text")]
    pub(crate) role: Role,
    pub(crate) nexus_index: Option<u64>,
    /// `the running cell`, `its manifest` or `its files`.
    pub(crate) from: &'static str,
}

fn as_text<S: serde::Serializer>(r: &Role, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&r.to_string())
}

/// The directory's role and index: its running cell's, else its files'. None
/// when it is not a cell (no `cell.guid`).
pub(crate) fn of_dir(dir: &Path) -> Result<Option<Side>> {
    if !dir.join("cell.guid").exists() {
        return Ok(None);
    }
    let sock = dir.join("sock");
    if telepath::answers(&sock) {
        match Client::connect(&sock, std::time::Duration::from_secs(30))
            .and_then(|mut c| c.cell_state())
        {
            Ok(st) => {
                return Ok(Some(Side {
                    role: if st.active {
                        Role::Leader
                    } else {
                        Role::Mirror(st.upstream.clone())
                    },
                    nexus_index: Some(st.nexus_index),
                    from: "the running cell",
                }))
            }
            // Its files then; not its nexus, which a running cell writes.
            Err(e) => {
                log::warn!(
                    "cannot ask the cell on {} for its role and nexus index ({e:#}); its config files tell its role",
                    dir.display()
                );
                return Ok(Some(Side {
                    role: configured_role(dir)?,
                    nexus_index: None,
                    from: "its files",
                }));
            }
        }
    }
    Ok(Some(Side {
        role: configured_role(dir)?,
        nexus_index: stored_index(dir),
        from: "its files",
    }))
}

/// The backup's role and index: what the cell said while frozen for it, else the
/// backup's files.
pub(crate) fn of_backup(backup: &Path, m: &Manifest) -> Result<Side> {
    // Taken on a mirror for its leader (`SYNBACKUP_SOURCE`): the leader's data at
    // an index no less than the leader's when the run started.
    if let (Some(c), Some(_)) = (&m.cell, &m.from_mirror) {
        return Ok(Side {
            role: Role::Leader,
            nexus_index: Some(c.nexus_index),
            from: "its manifest: taken on a mirror for the leader",
        });
    }
    if let Some(c) = &m.cell {
        return Ok(Side {
            role: if c.role == "mirror" {
                Role::Mirror(c.upstream.clone())
            } else {
                Role::Leader
            },
            nexus_index: Some(c.nexus_index),
            from: "its manifest",
        });
    }
    Ok(Side {
        role: configured_role(backup)?,
        nexus_index: stored_index(backup),
        from: "its files",
    })
}

fn stored_index(dir: &Path) -> Option<u64> {
    nexus::stored_index(dir).unwrap_or_else(|e| {
        log::warn!("cannot read the nexus index of {}: {e:#}", dir.display());
        None
    })
}

/// Refuse a change of role unless `force`: one line naming both roles.
pub(crate) fn check_roles(
    dir: &Path,
    ours: &Side,
    backup: &Path,
    theirs: &Side,
    force: bool,
) -> Result<()> {
    if ours.role.is_mirror() == theirs.role.is_mirror() {
        return Ok(());
    }
    let what = format!(
        "{} is the {} ({}), but {} is a backup of the {} ({})",
        dir.display(),
        ours.role,
        ours.from,
        backup.display(),
        theirs.role,
        theirs.from
    );
    if !force {
        return Err(fail(
            Code::BadPath,
            format!(
                "{what}: restoring it changes the cell's role; pass --force to restore its data and keep the directory's role settings (mirror, parent and aha:* keys)"
            ),
        ));
    }
    log::warn!("{what}; restoring anyway (--force), the directory keeps its role settings");
    Ok(())
}

/// What the restore does to the cell's history, when the directory is ahead.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NexusCheck {
    pub(crate) directory_index: u64,
    pub(crate) backup_index: u64,
    /// The warning (or note, for a mirror) the restore logged.
    pub(crate) message: String,
}

/// Compare the indexes; a warning (leader) or a note (mirror) when the directory
/// is ahead of the backup.
pub(crate) fn compare_nexus(dir: &Path, ours: &Side, theirs: &Side) -> Option<NexusCheck> {
    let (Some(d), Some(b)) = (ours.nexus_index, theirs.nexus_index) else {
        return None;
    };
    if d <= b {
        return None;
    }
    let message = if ours.role.is_mirror() {
        let m = format!(
            "{} (a mirror) is at nexus index {d}, the backup at {b}: the restored mirror applies the {} changes again from its leader, which must still hold them",
            dir.display(),
            d - b
        );
        log::info!("{m}");
        m
    } else {
        let m = format!(
            "{} is at nexus index {d}, the backup at {b}: the restore takes the cell back {} changes; every mirror of this cell that applied changes past index {b} must be re-seeded from the restored leader (restore a new backup of it into the mirror's directory), or it diverges from it",
            dir.display(),
            d - b
        );
        log::warn!("{m}");
        m
    };
    Some(NexusCheck {
        directory_index: d,
        backup_index: b,
        message,
    })
}

/// In `staged` (the restored copy), replace the backup's role settings by those of
/// `dir`, in `cell.yaml` and `cell.mods.yaml`; what changed, as `FILE:KEY kept` /
/// `FILE:KEY dropped`.
pub(crate) fn keep_dir_settings(dir: &Path, staged: &Path) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for name in FILES {
        let ours: Vec<Block> = cellyaml::read_blocks(dir, name)?
            .into_iter()
            .filter(|b| b.key.as_deref().is_some_and(is_role_key))
            .collect();
        let theirs = cellyaml::read_blocks(staged, name)?;
        let (dropped, mut kept): (Vec<Block>, Vec<Block>) = theirs
            .into_iter()
            .partition(|b| b.key.as_deref().is_some_and(is_role_key));
        if dropped == ours {
            continue; // the same settings already
        }
        for b in &dropped {
            if !ours.iter().any(|o| o == b) {
                changed.push(format!("{name}:{} dropped", b.key.as_deref().unwrap_or("")));
            }
        }
        for b in &ours {
            if !dropped.iter().any(|d| d == b) {
                changed.push(format!("{name}:{} kept", b.key.as_deref().unwrap_or("")));
            }
        }
        if let Some(last) = kept.last_mut() {
            if !last.text.ends_with('\n') {
                last.text.push('\n');
            }
        }
        kept.extend(ours);
        let text: String = kept.iter().map(|b| b.text.as_str()).collect();
        write_config(&staged.join(name), &dir.join(name), &text)?;
    }
    Ok(changed)
}

/// Write `text` to `path` (a config file of the restored copy), atomically and
/// durably, with the mode and owner it had, else those of `like` (the directory's).
pub(crate) fn write_config(path: &Path, like: &Path, text: &str) -> Result<()> {
    let meta = fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .or_else(|| fs::metadata(like).ok());
    let tmp = path.with_extension("yaml.synbackup-tmp");
    let _ = fs::remove_file(&tmp);
    let f = fsutil::create_new(&tmp)?;
    std::io::Write::write_all(&mut &f, text.as_bytes())
        .map_err(|e| fsutil::write_error(&tmp, e))?;
    if let Some(m) = &meta {
        f.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| fsutil::write_error(&tmp, e))?;
        std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
            .map_err(|e| fsutil::write_error(&tmp, e))?;
    }
    f.sync_all().map_err(|e| fsutil::write_error(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| fsutil::write_error(path, e))?;
    fsutil::fsync_dir(path.parent().unwrap_or(Path::new("/")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_keeps_its_role_settings() {
        let t = tempfile::tempdir().unwrap();
        let (dir, staged) = (t.path().join("dir"), t.path().join("staged"));
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&staged).unwrap();
        // The mirror's directory; the leader's backup restored into it.
        fs::write(
            dir.join("cell.yaml"),
            "nexslog:en: true\nmirror: cell:///data/leader\naha:name: core01\n",
        )
        .unwrap();
        fs::write(
            staged.join("cell.yaml"),
            "aha:name: core00\nhttps:port: 4443\n",
        )
        .unwrap();
        fs::write(staged.join("cell.mods.yaml"), "mirror: null\n").unwrap();
        let changed = keep_dir_settings(&dir, &staged).unwrap();
        assert_eq!(
            fs::read_to_string(staged.join("cell.yaml")).unwrap(),
            "https:port: 4443\nmirror: cell:///data/leader\naha:name: core01\n"
        );
        assert_eq!(
            fs::read_to_string(staged.join("cell.mods.yaml")).unwrap(),
            ""
        );
        assert_eq!(
            changed,
            [
                "cell.yaml:aha:name dropped",
                "cell.yaml:mirror kept",
                "cell.yaml:aha:name kept",
                "cell.mods.yaml:mirror dropped"
            ]
        );
        assert_eq!(
            configured_role(&staged).unwrap(),
            Role::Mirror(Some("cell:///data/leader".into()))
        );
        // Nothing to change the second time.
        assert!(keep_dir_settings(&dir, &staged).unwrap().is_empty());
    }
}
