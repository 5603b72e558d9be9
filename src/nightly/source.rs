// SPDX-License-Identifier: Apache-2.0
//! Step 0 of a run: which directory it backs up (`SYNBACKUP_SOURCE`). From a
//! mirror: the leader's nexus index is read, the mirrors of `SYNBACKUP_MIRRORS`
//! are tried in order until one applies it within `SYNBACKUP_MIRROR_WAIT`
//! (`engine::mirror`); that one is backed up, frozen, and the leader never is.
//! When none is ready, `SYNBACKUP_NO_MIRROR` decides: fail (exit code 13), back up
//! the leader, or skip the run. Either way one line says what was chosen and why,
//! and [`Chosen::details`] goes into the run's status.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::base::exit::{fail, Code};
use crate::engine::mirror::{self, LeaderAt, NotReady, OnMirror};
use crate::instance::source::{NoMirror, SourceMode, Sources};

/// What the run backs up.
#[derive(Debug)]
pub(crate) enum Chosen {
    /// The leader; `instead` says why when a mirror was wanted.
    Leader {
        dir: PathBuf,
        instead: Option<String>,
    },
    /// A mirror caught up with the leader.
    Mirror(OnMirror),
    /// Nothing (`SYNBACKUP_NO_MIRROR=skip`): why.
    Skip(String),
    /// Nothing, and the run fails (`SYNBACKUP_NO_MIRROR=fail`): why.
    Fail(String),
}

impl Chosen {
    /// What the run's status records as `details.source`.
    pub(crate) fn details(&self, s: &Sources) -> Value {
        let mut d = json!({
            "mode": s.mode.name(),
            "leader": s.leader,
        });
        match self {
            Chosen::Leader { dir, instead } => {
                d["used"] = json!("leader");
                d["dir"] = json!(dir);
                if let Some(why) = instead {
                    d["no_mirror"] = json!(why);
                    d["policy"] = json!(s.no_mirror.name());
                }
            }
            Chosen::Mirror(on) => {
                d["used"] = json!("mirror");
                d["dir"] = json!(on.mirror.dir);
                d["mirror"] = json!(on.mirror.dir);
                d["leader_nexus_index"] = json!(on.leader.nexus_index);
                d["mirror_nexus_index"] = json!(on.mirror.nexus_index);
                d["waited_ms"] = json!(on.mirror.waited.as_secs_f64() * 1e3);
            }
            Chosen::Skip(why) | Chosen::Fail(why) => {
                d["used"] = json!("none");
                d["no_mirror"] = json!(why);
                d["policy"] = json!(s.no_mirror.name());
            }
        }
        d
    }
}

/// The error of `SYNBACKUP_NO_MIRROR=fail` (exit code 13), one line.
pub(crate) fn no_mirror_error(s: &Sources, why: &str) -> anyhow::Error {
    fail(
        Code::NoMirror,
        format!(
            "no mirror is ready ({why}); nothing was backed up (SYNBACKUP_SOURCE={}, SYNBACKUP_NO_MIRROR=fail): bring a mirror up to date, or set SYNBACKUP_NO_MIRROR=leader to back up the leader instead",
            s.mode.name()
        ),
    )
}

/// Choose the source of this run (logged in one line; a failure is the caller's
/// to report).
pub(crate) fn choose(s: &Sources) -> Chosen {
    if s.mode == SourceMode::Leader {
        return match s.leader.dir() {
            Some(dir) => Chosen::Leader {
                dir: dir.to_path_buf(),
                instead: None,
            },
            // Refused at config time (`Sources::check`).
            None => Chosen::Fail(format!("the leader {} is not on this host", s.leader)),
        };
    }
    match find_mirror(s) {
        Ok(on) => {
            log::info!(
                "backing up the mirror {} (SYNBACKUP_SOURCE={}): it applied the leader {}'s nexus index {} (at {} now, after {:.1} s); the leader is not frozen",
                on.mirror.dir.display(),
                s.mode.name(),
                on.leader.at,
                on.leader.nexus_index,
                on.mirror.nexus_index,
                on.mirror.waited.as_secs_f64()
            );
            Chosen::Mirror(on)
        }
        Err(NotReady(why)) => no_mirror(s, why),
    }
}

/// The first mirror that applies the leader's index in time; else every reason.
fn find_mirror(s: &Sources) -> Result<OnMirror, NotReady> {
    let leader: LeaderAt = mirror::leader_at_start(&s.leader)?;
    let mut reasons = Vec::new();
    let local: Vec<&std::path::Path> = s.local_mirrors().collect();
    for url in s.mirrors.iter().filter_map(|m| m.url()) {
        log::debug!("the mirror {url} is on another host: not a backup source");
    }
    for dir in local.iter().copied() {
        match mirror::wait_for_mirror(dir, &leader, s.wait) {
            Ok(ready) => {
                return Ok(OnMirror {
                    leader,
                    mirror: ready,
                })
            }
            Err(NotReady(why)) => {
                if local.len() > 1 {
                    log::info!("{why}; trying the next mirror");
                }
                reasons.push(why);
            }
        }
    }
    Err(NotReady(reasons.join("; ")))
}

/// `SYNBACKUP_NO_MIRROR` applied to `why`.
fn no_mirror(s: &Sources, why: String) -> Chosen {
    let asked = format!(
        "SYNBACKUP_SOURCE={}, SYNBACKUP_NO_MIRROR={}",
        s.mode.name(),
        s.no_mirror.name()
    );
    match s.no_mirror {
        NoMirror::Fail => Chosen::Fail(why),
        NoMirror::Leader => {
            let Some(dir) = s.leader.dir() else {
                // Refused at config time (`Sources::check`).
                return Chosen::Fail(format!(
                    "{why}; the leader {} is not on this host",
                    s.leader
                ));
            };
            log::warn!(
                "no mirror is ready ({why}): backing up the leader {} instead, frozen as SYNBACKUP_FREEZE says ({asked})",
                dir.display()
            );
            Chosen::Leader {
                dir: dir.to_path_buf(),
                instead: Some(why),
            }
        }
        NoMirror::Skip => {
            log::warn!("no mirror is ready ({why}): this run backs up nothing and is recorded skipped ({asked})");
            Chosen::Skip(why)
        }
    }
}
