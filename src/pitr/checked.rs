// SPDX-License-Identifier: Apache-2.0
//! The closed segments a check read whole and found whole, by the identity of
//! their files: `.checked.json` in the archive directory.
//!
//! A closed segment is never written again, so `status`, `check` and
//! `nexus-trim` read one again only when it or its `.json` is no longer the file
//! that was checked (another inode, size, modification or change time): a call
//! then costs the segments closed since, not the whole archive (hundreds of
//! them, 16 MiB each, on a busy cell; `check` runs every few minutes). A segment
//! changed by a write, a copy or a restore changes its change time, so it is
//! read and hashed again. Bits that rot on the medium change no time: only
//! `verify --instance` reads every byte every time, and it records what it
//! found whole for the others.
//!
//! The record is a cache: unreadable or stale entries are ignored, entries of
//! segments no longer there are dropped, and it is written (atomically) only
//! when it changed and by whoever may (a reader without write access to the
//! archive just reads every segment). Offsite copies leave it out.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::base::fsutil;

/// The record's file name in the archive directory.
pub(crate) const FILE: &str = ".checked.json";

/// What identifies one file as the one that was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    /// The identity of `path` now (None: it cannot be looked at).
    pub(crate) fn of(path: &Path) -> Option<Identity> {
        let m = fs::symlink_metadata(path).ok()?;
        Some(Identity {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// A closed segment found whole: its files and what it spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Whole {
    pub(crate) segment: Identity,
    pub(crate) index: Identity,
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) last_received_us: u64,
}

/// The record: segment file name → what was found whole.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checked {
    format: u32,
    segments: BTreeMap<String, Whole>,
}

impl Checked {
    /// The record of the archive `dir` (empty when there is none or it is not
    /// one).
    pub(crate) fn load(dir: &Path) -> Checked {
        fs::read(dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Checked>(&b).ok())
            .filter(|c| c.format == 1)
            .unwrap_or_default()
    }

    /// What was found whole of the segment `seg` (and its `.json` `index`), if
    /// both are still the files that were checked.
    pub(crate) fn still_whole(&self, seg: &Path, index: &Path) -> Option<&Whole> {
        let w = self.segments.get(&file_name(seg))?;
        (Identity::of(seg) == Some(w.segment) && Identity::of(index) == Some(w.index)).then_some(w)
    }

    /// Note `seg` as found whole, as its files are now.
    pub(crate) fn note(&mut self, seg: &Path, index: &Path, first: u64, last: u64, last_us: u64) {
        let (Some(segment), Some(idx)) = (Identity::of(seg), Identity::of(index)) else {
            return;
        };
        self.segments.insert(
            file_name(seg),
            Whole {
                segment,
                index: idx,
                first,
                last,
                last_received_us: last_us,
            },
        );
    }

    /// Keep only the segments named in `names` (the others are gone).
    pub(crate) fn keep_only(&mut self, names: &[String]) {
        self.segments.retain(|n, _| names.contains(n));
    }

    /// Write the record into `dir` when it differs from `before`; a failure
    /// (no write access) is logged, never an error: it is a cache.
    pub(crate) fn save_if_changed(mut self, dir: &Path, before: &Checked) {
        if self.segments == before.segments && (before.format == 1 || self.segments.is_empty()) {
            return;
        }
        self.format = 1;
        let result = serde_json::to_vec(&self)
            .map_err(anyhow::Error::from)
            .and_then(|b| fsutil::write_atomic(&dir.join(FILE), &b, 0o600));
        if let Err(e) = result {
            log::debug!(
                "cannot record the checked nexus archive segments in {}: {e:#}",
                dir.display()
            );
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
