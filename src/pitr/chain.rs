// SPDX-License-Identifier: Apache-2.0
//! The chain of base backups and archived nexus entries, checked from the files
//! alone (what `verify --instance`, `status` and `check` report, like WAL-G's
//! `wal-verify`): the archive's segments follow each other with no gap and no
//! overlap, each closed segment matches its `.json` (BLAKE3, offsets, count), the
//! open one holds whole records in order, and each kept good backup's recorded
//! nexus index is covered from there to the newest archived entry. The cell's own
//! index (the archiver's lag in entries) is added by the caller when the cell
//! answers (`live`). `verify` reads every segment ([`Depth::Full`]); the others
//! read the closed segments that changed since a check found them whole
//! ([`Depth::Changed`], `checked`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::engine::manifest::Manifest;
use crate::instance::catalog::{self, State};
use crate::pitr::archive::{self, Closed, Seg};
use crate::pitr::checked::Checked;

/// A base backup that records its nexus index.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Base {
    pub(crate) backup: String,
    pub(crate) nexus_index: u64,
}

/// What the chain check found.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Chain {
    /// The archive directory.
    pub(crate) archive: String,
    /// Whether it exists (an archiver ran).
    pub(crate) present: bool,
    pub(crate) segments: usize,
    pub(crate) bytes: u64,
    /// The first archived offset.
    pub(crate) first: Option<u64>,
    /// One past the newest archived entry (the offset the archiver asks next).
    pub(crate) next: Option<u64>,
    /// When the newest archived entry was received (RFC 3339) and its age.
    pub(crate) newest_received: Option<String>,
    #[serde(skip)]
    pub(crate) newest_received_us: Option<u64>,
    /// Offset ranges missing between segments (inclusive).
    pub(crate) gaps: Vec<(u64, u64)>,
    /// Damaged or overlapping segments, one line each.
    pub(crate) damaged: Vec<String>,
    /// The kept good backups that record their nexus index, oldest first.
    pub(crate) bases: Vec<Base>,
    /// The oldest of them from which a restore to a point reaches the newest
    /// archived entry (None: from none).
    pub(crate) pitr_from: Option<Base>,
    /// Entries set aside when the cell came back behind its archive
    /// (`archive::set_aside_from`): each directory with its first and last offset.
    pub(crate) diverged: Vec<(String, u64, u64)>,
}

impl Chain {
    /// The gaps a kept backup needs: those at or after the oldest base's index
    /// (older ones are below every backup, and retention removes them).
    pub(crate) fn needed_gaps(&self) -> Vec<(u64, u64)> {
        let oldest = self.bases.first().map_or(0, |b| b.nexus_index);
        self.gaps
            .iter()
            .copied()
            .filter(|(_, b)| *b >= oldest)
            .collect()
    }

    /// Entries the archiver set aside when the cell parted from its archive, one
    /// line each: not a fault of the chain (verify passes), but what `status` and
    /// `check` report until the directory is moved out of the archive.
    pub(crate) fn kept_aside(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (dir, first, last) in &self.diverged {
            out.push(format!(
                "the cell parted from its nexus archive at offset {first} (killed before its slabs were written, or restored to an older state): the archived entries {first}-{last} are no longer the cell's; they are kept aside in {dir} (closed segments with their index) and the archive goes on with the cell's own entries from {first}; no restore applies them: review them, then move the directory out of the archive"
            ));
        }
        out
    }

    /// What is wrong with the chain, one line each (empty: nothing): a damaged or
    /// overlapping segment, a gap a kept backup needs, no kept backup covered.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = self.damaged.clone();
        for (a, b) in self.needed_gaps() {
            out.push(format!(
                "the nexus archive {} misses offsets {a}-{b}: a restore to a point past {a} needs a backup taken after {b}",
                self.archive
            ));
        }
        if self.present && self.next.is_some() && !self.bases.is_empty() && self.pitr_from.is_none()
        {
            out.push(format!(
                "no kept backup is covered by the nexus archive {} (it holds offsets {}-{}; the newest backup is at index {}): no restore to a point is possible",
                self.archive,
                self.first.unwrap_or(0),
                self.next.unwrap_or(0).saturating_sub(1),
                self.bases.last().map_or(0, |b| b.nexus_index)
            ));
        }
        out
    }

    /// One line for `status` and `check`.
    pub(crate) fn summary(&self) -> String {
        let Some(next) = self.next else {
            return format!("the nexus archive {} holds no entries yet", self.archive);
        };
        let from = match (&self.pitr_from, self.bases.first()) {
            (Some(p), Some(o)) if p == o => format!(
                "a restore to a point is possible from the oldest kept backup {} (index {}) on",
                p.backup, p.nexus_index
            ),
            (Some(p), _) => format!(
                "a restore to a point is possible from backup {} (index {}) on, not from older ones",
                p.backup, p.nexus_index
            ),
            (None, _) => "no kept backup is covered".to_string(),
        };
        format!(
            "nexus archive: offsets {}-{} in {} segments ({}), newest received {}; {from}",
            self.first.unwrap_or(0),
            next.saturating_sub(1),
            self.segments,
            crate::base::fsutil::human(self.bytes),
            self.newest_received.as_deref().unwrap_or("?"),
        )
    }
}

/// The kept good backups of `name` in `backup_root` that record their nexus
/// index, oldest index first.
pub(crate) fn bases(backup_root: &Path, name: &str) -> Result<Vec<Base>> {
    let mut out = Vec::new();
    for e in catalog::scan(backup_root, name)? {
        if !matches!(e.state, State::Complete | State::Verified) {
            continue;
        }
        if let Some(cell) = Manifest::load(&e.path).ok().and_then(|m| m.cell) {
            out.push(Base {
                backup: e.name,
                nexus_index: cell.nexus_index,
            });
        }
    }
    out.sort_by_key(|b| b.nexus_index);
    Ok(out)
}

/// A segment's offsets as read from its bytes.
struct Span {
    first: u64,
    last: u64,
    last_received_us: u64,
}

/// How much of the archive a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Every byte of every segment (`verify`).
    Full,
    /// The closed segments that changed since a check found them whole
    /// (`checked`), and the open one (`status`, `check`, `nexus-trim`).
    Changed,
}

/// Check the archive of `backup_root` and the backups of `name` it serves.
pub(crate) fn inspect(backup_root: &Path, name: &str, depth: Depth) -> Result<Chain> {
    let dir = archive::dir_of(backup_root);
    let start = Chain {
        archive: dir.display().to_string(),
        present: dir.join("archive.json").exists(),
        bases: bases(backup_root, name)?,
        diverged: archive::diverged(&dir)?
            .iter()
            .filter_map(|d| {
                archive::diverged_range(d).map(|(f, l)| (d.display().to_string(), f, l))
            })
            .collect(),
        ..Chain::default()
    };
    let before = Checked::load(&dir);
    let (mut c, checked) = archive::read_listed(&dir, |segs| {
        let mut c = start.clone();
        let mut checked = Checked::default();
        let names: Vec<String> = segs
            .iter()
            .filter_map(|s| s.path().file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        let known = (depth == Depth::Changed).then_some(&before);
        check_segments(&mut c, segs, known, &mut checked)?;
        checked.keep_only(&names);
        Ok((c, checked))
    })?;
    checked.save_if_changed(&dir, &before);
    c.newest_received = c.newest_received_us.and_then(|us| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    });
    c.pitr_from = covered_from(&c);
    Ok(c)
}

/// Each of `segs` checked in turn into `c`: offsets, gaps, damage. A segment
/// that cannot be read because it is no longer there (closed under its new name,
/// removed) is an error of its own, for the caller to list the segments again.
fn check_segments(
    c: &mut Chain,
    segs: Vec<Seg>,
    known: Option<&Checked>,
    checked: &mut Checked,
) -> Result<()> {
    let mut prev: Option<(u64, PathBuf)> = None;
    for seg in segs {
        c.segments += 1;
        let index = seg.path().with_extension("json");
        let whole = match (&seg, known) {
            (Seg::Closed { .. }, Some(k)) => k.still_whole(seg.path(), &index).cloned(),
            _ => None,
        };
        let result = match whole {
            Some(w) => Ok(Some(Span {
                first: w.first,
                last: w.last,
                last_received_us: w.last_received_us,
            })),
            None => check_segment(&seg),
        };
        if let (Seg::Closed { .. }, Ok(Some(s))) = (&seg, &result) {
            checked.note(seg.path(), &index, s.first, s.last, s.last_received_us);
        }
        let span = match result {
            Ok(s) => s,
            Err(why) => {
                if !seg.path().exists() {
                    return Err(std::io::Error::from(std::io::ErrorKind::NotFound))
                        .with_context(|| format!("{} vanished: {why}", seg.path().display()));
                }
                c.damaged.push(why);
                // What follows is judged against the offsets in its name.
                prev = Some((
                    match &seg {
                        Seg::Closed { last, .. } => *last,
                        Seg::Open { first, .. } => *first,
                    },
                    seg.path().to_path_buf(),
                ));
                continue;
            }
        };
        c.bytes += fs::metadata(seg.path()).map(|m| m.len()).unwrap_or(0);
        let Some(span) = span else { continue };
        match &prev {
            Some((last, p)) if span.first <= *last => c.damaged.push(format!(
                "{} overlaps {} (offset {} again): two archivers wrote the archive, or a segment was copied in",
                seg.path().display(),
                p.display(),
                span.first
            )),
            Some((last, _)) if span.first > last + 1 => c.gaps.push((last + 1, span.first - 1)),
            _ => {}
        }
        c.first = Some(c.first.unwrap_or(span.first));
        c.next = Some(span.last + 1);
        c.newest_received_us = Some(span.last_received_us);
        prev = Some((span.last, seg.path().to_path_buf()));
    }
    Ok(())
}

/// The oldest base from which the archive runs unbroken to its newest entry.
fn covered_from(c: &Chain) -> Option<Base> {
    let (first, next) = (c.first?, c.next?);
    c.bases
        .iter()
        .find(|b| {
            b.nexus_index >= first
                && b.nexus_index <= next
                && !c.gaps.iter().any(|(_, gb)| *gb >= b.nexus_index)
                && c.damaged.is_empty()
        })
        .cloned()
}

/// A segment's records against its name (and a closed one's `.json`); None for
/// an open segment with no whole record yet.
fn check_segment(seg: &Seg) -> std::result::Result<Option<Span>, String> {
    let path = seg.path();
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (good, entries) = archive::parse_records(&bytes);
    let (first, named_last) = match seg {
        Seg::Open { first, .. } => (*first, None),
        Seg::Closed { first, last, .. } => (*first, Some(*last)),
    };
    if let Some((i, e)) = entries
        .iter()
        .enumerate()
        .find(|(i, e)| e.offset != first + *i as u64)
    {
        return Err(format!(
            "{} holds offset {} where {} belongs: the segment is damaged",
            path.display(),
            e.offset,
            first + i as u64
        ));
    }
    if let Some(last) = named_last {
        let idx_path = path.with_extension("json");
        let idx: Closed = fs::read(&idx_path)
            .with_context(|| format!("cannot read {}", idx_path.display()))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .with_context(|| format!("{} is not a segment index", idx_path.display()))
            })
            .map_err(|e| format!("{e:#}: the segment {} cannot be checked", path.display()))?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        if digest != idx.blake3 {
            return Err(format!(
                "{} does not match its BLAKE3 in {} (damaged): a restore to a point past offset {first} needs it",
                path.display(),
                idx_path.display()
            ));
        }
        let n = entries.len() as u64;
        if good != bytes.len() as u64
            || idx.first != first
            || idx.last != last
            || idx.count != n
            || entries.last().map(|e| e.offset) != Some(last)
        {
            return Err(format!(
                "{} holds {n} entries, its name and {} say {}-{} ({} entries): the segment is damaged",
                path.display(),
                idx_path.display(),
                idx.first,
                idx.last,
                idx.count
            ));
        }
    }
    Ok(entries.last().map(|l| Span {
        first,
        last: l.offset,
        last_received_us: l.received_us,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::archive::Archive;

    fn entry(n: u64) -> (u64, u64, Vec<u8>) {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &rmpv::Value::from(n)).unwrap();
        (n, 1_000_000 * n, b)
    }

    /// An archive of the entries `offsets` in segments of 20 bytes: its backup
    /// root, its directory and the archive, open to go on.
    fn archive_of(offsets: std::ops::Range<u64>) -> (tempfile::TempDir, PathBuf, Archive) {
        let t = tempfile::tempdir().unwrap();
        let dir = archive::dir_of(t.path());
        let mut a = Archive::open(&dir, "c", 20).unwrap();
        a.append(&offsets.map(entry).collect::<Vec<_>>()).unwrap();
        (t, dir, a)
    }

    /// A full check of the archive of `root` names a segment that does not
    /// match its BLAKE3.
    fn verify_finds_a_digest_mismatch(root: &Path) {
        let c = inspect(root, "x", Depth::Full).unwrap();
        assert!(
            c.damaged
                .iter()
                .any(|d| d.contains("does not match its BLAKE3")),
            "{:?}",
            c.damaged
        );
    }

    #[test]
    fn contiguous_archive_gap_and_damage() {
        let (t, dir, mut a) = archive_of(10..40);
        let c = inspect(t.path(), "x", Depth::Full).unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!((c.first, c.next), (Some(10), Some(40)));
        assert!(c.gaps.is_empty());
        // A gap: the archiver goes on after a jump.
        a.start_after_gap(50).unwrap();
        a.append(&(50..55).map(entry).collect::<Vec<_>>()).unwrap();
        let c = inspect(t.path(), "x", Depth::Full).unwrap();
        assert_eq!(c.gaps, vec![(40, 49)]);
        assert_eq!(c.next, Some(55));
        assert_eq!(c.problems().len(), 1, "{:?}", c.problems());
        // A flipped bit in a closed segment.
        let closed = archive::segments(&dir)
            .unwrap()
            .into_iter()
            .find(|s| matches!(s, Seg::Closed { .. }))
            .unwrap();
        let mut bytes = fs::read(closed.path()).unwrap();
        bytes[2] ^= 0x01;
        fs::write(closed.path(), bytes).unwrap();
        verify_finds_a_digest_mismatch(t.path());
    }

    /// `status` reads a closed segment again only when its files changed since a
    /// check found it whole; `verify` reads every byte every time.
    #[test]
    fn status_reads_only_segments_changed_since_they_were_found_whole() {
        let (t, dir, _a) = archive_of(0..30);
        let c = inspect(t.path(), "x", Depth::Changed).unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let closed: Vec<Seg> = archive::segments(&dir)
            .unwrap()
            .into_iter()
            .filter(|s| matches!(s, Seg::Closed { .. }))
            .collect();
        let record = Checked::load(&dir);
        for s in &closed {
            assert!(
                record
                    .still_whole(s.path(), &s.path().with_extension("json"))
                    .is_some(),
                "{} not recorded whole",
                s.path().display()
            );
        }
        // Bits that rot after the check change no time: here, a flipped bit
        // with the record then made to describe the file as it is.
        let seg = closed[1].path().to_path_buf();
        let idx = seg.with_extension("json");
        let was = record.still_whole(&seg, &idx).unwrap().clone();
        let good = fs::read(&seg).unwrap();
        let mut bad = good.clone();
        bad[2] ^= 0x01;
        fs::write(&seg, &bad).unwrap();
        let mut forged = Checked::load(&dir);
        forged.note(&seg, &idx, was.first, was.last, was.last_received_us);
        forged.save_if_changed(&dir, &Checked::default());
        let c = inspect(t.path(), "x", Depth::Changed).unwrap();
        assert!(
            c.problems().is_empty(),
            "status read it: {:?}",
            c.problems()
        );
        // verify reads it, finds it, and the record no longer vouches for it.
        verify_finds_a_digest_mismatch(t.path());
        let c = inspect(t.path(), "x", Depth::Changed).unwrap();
        assert!(!c.damaged.is_empty(), "the record still vouches for it");
        // A write changes the file's times: read again, whole again.
        fs::write(&seg, &good).unwrap();
        let c = inspect(t.path(), "x", Depth::Changed).unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        // And a change status has not seen is found by status too.
        fs::write(&seg, &bad).unwrap();
        let c = inspect(t.path(), "x", Depth::Changed).unwrap();
        assert!(!c.damaged.is_empty(), "status missed a rewritten segment");
    }

    /// `status`, `check` and `nexus-trim` read the archive while the archiver
    /// writes it: a segment it closes (renamed) while a reader lists the
    /// directory is read under its new name, never reported damaged. Before,
    /// "cannot read .../open-….seg: No such file or directory" was damage, and
    /// the trim refused on it ("mend the archive").
    #[test]
    fn an_archive_read_while_its_segments_close_is_whole() {
        let t = tempfile::tempdir().unwrap();
        let dir = archive::dir_of(t.path());
        let mut a = Archive::open(&dir, "c", 40).unwrap();
        a.append(&[entry(0)]).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for n in 1..3000 {
                    a.append(&[entry(n)]).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let c = inspect(t.path(), "x", Depth::Full).unwrap();
                assert!(c.problems().is_empty(), "{:?}", c.problems());
                let all = archive::read_all(&dir).unwrap();
                assert!(
                    all.iter().enumerate().all(|(i, e)| e.offset == i as u64),
                    "not contiguous from 0"
                );
                crate::pitr::trim::archived_next(&dir).unwrap();
                reads += 1;
            }
            assert!(reads > 10, "only {reads} reads while it wrote");
        });
    }
}
