// SPDX-License-Identifier: Apache-2.0
//! The nexus archive on disk: `BACKUP_ROOT/nexus-archive/`, written only by the
//! archiver (`follow`) and read by the restore to a point (`replay`).
//!
//! - `archive.json`: the cell the archive belongs to (`{"format": 1, "cell": IDEN}`).
//! - `open-FIRST.seg`: the segment being written. FIRST and LAST are 16 hex digits.
//! - `FIRST-LAST.seg`: a closed segment (never written again), and beside it
//!   `FIRST-LAST.json`: its entry count, first and last offset, the times the
//!   first and last entry were received, and its BLAKE3 digest. The `.json` files
//!   are the archive's offset → time index.
//!
//! A segment is a plain stream of msgpack values, one per nexus entry:
//! `[offset, received_us, ENTRY]`, where ENTRY holds the bytes exactly as the cell
//! sent them in its `getNexusChanges` answer (`(nexsiden, event, args, kwargs,
//! meta)` on 2.x, with `etime` after `meta` on 3.x) and `received_us` is when the
//! archiver got it (microseconds since the epoch, UTC; entries carry no common
//! timestamp). Synapse reads the same stream with `synapse.lib.msgpack.iterfd`.
//!
//! Durability: entries are appended and the file is fsynced before the archiver
//! counts them as archived; a segment is closed by fsyncing it, writing its
//! `.json` (temporary, fsync, rename), renaming it to its closed name and fsyncing
//! the directory. After a crash, [`Archive::open`] cuts a torn record off the open
//! segment's tail and finishes a close that was interrupted, so the next offset
//! is exactly one past the last durable entry: no gap, no duplicate.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::exit::{fail, Code};
use crate::base::fsutil;

/// The archive's directory name in the backup root.
pub(crate) const DIR_NAME: &str = "nexus-archive";

/// The default size at which a segment is closed.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

/// `archive.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    cell: String,
}

/// A closed segment's index entry (`FIRST-LAST.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Closed {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) count: u64,
    pub(crate) first_received_us: u64,
    pub(crate) last_received_us: u64,
    pub(crate) blake3: String,
}

/// One archived entry as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) received_us: u64,
    /// The msgpack bytes of the whole record `[offset, received_us, ENTRY]`.
    pub(crate) record: Vec<u8>,
}

/// The archive of one cell, open for appending.
pub(crate) struct Archive {
    dir: PathBuf,
    segment_bytes: u64,
    /// The open segment: its first offset, file, length, count, first time.
    open: Option<OpenSeg>,
    /// The offset the next entry must have (None: nothing archived yet).
    next: Option<u64>,
}

struct OpenSeg {
    first: u64,
    file: File,
    len: u64,
    count: u64,
    first_received_us: u64,
    last_received_us: u64,
    last: u64,
}

fn hex16(n: u64) -> String {
    format!("{n:016x}")
}

fn open_name(first: u64) -> String {
    format!("open-{}.seg", hex16(first))
}

fn closed_stem(first: u64, last: u64) -> String {
    format!("{}-{}", hex16(first), hex16(last))
}

/// The archive directory of a backup root.
pub(crate) fn dir_of(backup_root: &Path) -> PathBuf {
    backup_root.join(DIR_NAME)
}

/// Encode one record: `[offset, received_us, ENTRY]` with ENTRY's bytes as given.
pub(crate) fn encode_record(offset: u64, received_us: u64, entry: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(entry.len() + 20);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_array_len(&mut buf, 3);
    let _ = rmp::encode::write_uint(&mut buf, offset);
    let _ = rmp::encode::write_uint(&mut buf, received_us);
    buf.extend_from_slice(entry);
    buf
}

/// Read the records of a segment's bytes; the length of the whole records and
/// the entries (a torn tail is left out, its start returned as the length).
pub(crate) fn parse_records(bytes: &[u8]) -> (u64, Vec<Entry>) {
    let mut pos = 0usize;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let mut cur = &bytes[pos..];
        let before = cur.len();
        let Ok(v) = rmpv::decode::read_value(&mut cur) else {
            break;
        };
        let used = before - cur.len();
        let fields = v.as_array().filter(|a| a.len() == 3);
        let (Some(offset), Some(received_us)) = (
            fields.and_then(|a| a[0].as_u64()),
            fields.and_then(|a| a[1].as_u64()),
        ) else {
            break;
        };
        out.push(Entry {
            offset,
            received_us,
            record: bytes[pos..pos + used].to_vec(),
        });
        pos += used;
    }
    (pos as u64, out)
}

/// A segment file found in the archive directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Open {
        first: u64,
        path: PathBuf,
    },
    Closed {
        first: u64,
        last: u64,
        path: PathBuf,
    },
}

impl Seg {
    pub(crate) fn first(&self) -> u64 {
        match self {
            Seg::Open { first, .. } | Seg::Closed { first, .. } => *first,
        }
    }
    pub(crate) fn path(&self) -> &Path {
        match self {
            Seg::Open { path, .. } | Seg::Closed { path, .. } => path,
        }
    }
}

/// The segments of an archive directory, by first offset.
pub(crate) fn segments(dir: &Path) -> Result<Vec<Seg>> {
    let mut segs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(segs),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        let hex = |s: &str| {
            (s.len() == 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        if let Some(first) = stem.strip_prefix("open-").and_then(hex) {
            segs.push(Seg::Open {
                first,
                path: e.path(),
            });
        } else if let Some((a, b)) = stem.split_once('-') {
            if let (Some(first), Some(last)) = (hex(a), hex(b)) {
                segs.push(Seg::Closed {
                    first,
                    last,
                    path: e.path(),
                });
            }
        }
    }
    segs.sort_by_key(|s| (s.first(), matches!(s, Seg::Open { .. })));
    Ok(segs)
}

/// Every entry of the archive in `dir`, in offset order (the open segment's too).
pub(crate) fn read_all(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for seg in segments(dir)? {
        let bytes = fs::read(seg.path())
            .with_context(|| format!("cannot read {}", seg.path().display()))?;
        if let Seg::Closed { first, last, path } = &seg {
            check_closed(path, *first, *last, &bytes)?;
        }
        out.extend(parse_records(&bytes).1);
    }
    Ok(out)
}

/// A closed segment's bytes against its `.json`: the digest and the offsets.
fn check_closed(path: &Path, first: u64, last: u64, bytes: &[u8]) -> Result<()> {
    let idx_path = path.with_extension("json");
    let idx: Closed = serde_json::from_slice(
        &fs::read(&idx_path).with_context(|| format!("cannot read {}", idx_path.display()))?,
    )
    .with_context(|| format!("{} is not a segment index", idx_path.display()))?;
    let digest = blake3::hash(bytes).to_hex().to_string();
    if digest != idx.blake3 || idx.first != first || idx.last != last {
        return Err(fail(
            Code::Verify,
            format!(
                "{} does not match its index {} (BLAKE3 {digest}, recorded {}): the archive is damaged from offset {first}",
                path.display(),
                idx_path.display(),
                idx.blake3
            ),
        ));
    }
    Ok(())
}

impl Archive {
    /// Open (or create) the archive of cell `cell` in `dir`, repairing what a crash
    /// left: a torn tail of the open segment is cut, an interrupted close finished.
    pub(crate) fn open(dir: &Path, cell: &str, segment_bytes: u64) -> Result<Archive> {
        fs::create_dir_all(dir).map_err(|e| fsutil::write_error(dir, e))?;
        let header_path = dir.join("archive.json");
        match fs::read(&header_path) {
            Ok(bytes) => {
                let h: Header = serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not a nexus archive header", header_path.display())
                })?;
                if h.cell != cell {
                    return Err(fail(
                        Code::BadPath,
                        format!(
                            "{} is the nexus archive of cell {}, but the service is cell {cell}: move it aside to start a new archive",
                            dir.display(),
                            h.cell
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let h = serde_json::to_vec_pretty(&Header {
                    format: 1,
                    cell: cell.to_string(),
                })?;
                fsutil::write_atomic(&header_path, &h, 0o600)?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", header_path.display()))
            }
        }
        let mut a = Archive {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            open: None,
            next: None,
        };
        a.recover()?;
        Ok(a)
    }

    /// The offset the next entry must have; None when the archive is empty.
    pub(crate) fn next_offset(&self) -> Option<u64> {
        self.next
    }

    fn recover(&mut self) -> Result<()> {
        let segs = segments(&self.dir)?;
        for seg in &segs {
            match seg {
                Seg::Closed { last, .. } => {
                    self.next = Some(self.next.map_or(last + 1, |n| n.max(last + 1)));
                }
                Seg::Open { first, path } => {
                    let mut file = OpenOptions::new()
                        .read(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    let mut bytes = Vec::new();
                    file.read_to_end(&mut bytes)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let (good, entries) = parse_records(&bytes);
                    if good < bytes.len() as u64 {
                        log::warn!(
                            "{}: cutting {} bytes of a record torn by a crash (offset {} on is archived again)",
                            path.display(),
                            bytes.len() as u64 - good,
                            entries.last().map_or(*first, |e| e.offset + 1)
                        );
                        file.set_len(good)?;
                        file.sync_all()?;
                    }
                    file.seek(SeekFrom::End(0))?;
                    let Some(last) = entries.last() else {
                        fs::remove_file(path)?;
                        fsutil::fsync_dir(&self.dir)?;
                        continue;
                    };
                    self.next = Some(last.offset + 1);
                    self.open = Some(OpenSeg {
                        first: *first,
                        file,
                        len: good,
                        count: entries.len() as u64,
                        first_received_us: entries[0].received_us,
                        last_received_us: last.received_us,
                        last: last.offset,
                    });
                    // A close interrupted after its index was written.
                    let stem = closed_stem(*first, last.offset);
                    if self.dir.join(format!("{stem}.json")).exists() {
                        self.close_segment()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Append entries (offset, received time, entry bytes) and make them durable.
    /// Offsets must follow on from the archive; a jump is an error the caller
    /// turns into a gap (`follow`). Closes the segment when it reaches its size.
    pub(crate) fn append(&mut self, batch: &[(u64, u64, Vec<u8>)]) -> Result<()> {
        for (offset, received_us, entry) in batch {
            if let Some(next) = self.next {
                if *offset != next {
                    bail!("the cell sent offset {offset}, the archive expects {next}");
                }
            }
            if self.open.is_none() {
                let path = self.dir.join(open_name(*offset));
                let file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .read(true)
                    .open(&path)
                    .map_err(|e| fsutil::write_error(&path, e))?;
                fsutil::fsync_dir(&self.dir)?;
                self.open = Some(OpenSeg {
                    first: *offset,
                    file,
                    len: 0,
                    count: 0,
                    first_received_us: *received_us,
                    last_received_us: *received_us,
                    last: *offset,
                });
            }
            let seg = self
                .open
                .as_mut()
                .ok_or_else(|| anyhow!("no open segment"))?;
            let rec = encode_record(*offset, *received_us, entry);
            seg.file
                .write_all(&rec)
                .map_err(|e| fsutil::write_error(&self.dir.join(open_name(seg.first)), e))?;
            seg.len += rec.len() as u64;
            seg.count += 1;
            seg.last = *offset;
            seg.last_received_us = *received_us;
            self.next = Some(offset + 1);
            if seg.len >= self.segment_bytes {
                seg.file.sync_data()?;
                self.close_segment()?;
            }
        }
        if let Some(seg) = &self.open {
            seg.file
                .sync_data()
                .map_err(|e| fsutil::write_error(&self.dir.join(open_name(seg.first)), e))?;
        }
        Ok(())
    }

    /// Close the open segment: index (digest, offsets, times), rename, fsync dir.
    fn close_segment(&mut self) -> Result<()> {
        let Some(mut seg) = self.open.take() else {
            return Ok(());
        };
        seg.file.sync_all()?;
        let open_path = self.dir.join(open_name(seg.first));
        let mut bytes = Vec::new();
        seg.file.seek(SeekFrom::Start(0))?;
        seg.file.read_to_end(&mut bytes)?;
        let stem = closed_stem(seg.first, seg.last);
        let idx = Closed {
            first: seg.first,
            last: seg.last,
            count: seg.count,
            first_received_us: seg.first_received_us,
            last_received_us: seg.last_received_us,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
        };
        fsutil::write_atomic(
            &self.dir.join(format!("{stem}.json")),
            &serde_json::to_vec_pretty(&idx)?,
            0o600,
        )?;
        let closed = self.dir.join(format!("{stem}.seg"));
        fs::rename(&open_path, &closed).map_err(|e| fsutil::write_error(&closed, e))?;
        fsutil::fsync_dir(&self.dir)?;
        log::info!(
            "closed nexus archive segment {} ({} entries, offsets {}-{})",
            closed.display(),
            seg.count,
            seg.first,
            seg.last
        );
        Ok(())
    }

    /// Close the open segment before a jump in offsets (a gap): the next entry
    /// starts a new segment at its own offset.
    pub(crate) fn start_after_gap(&mut self, new_next: u64) -> Result<()> {
        self.close_segment()?;
        self.next = Some(new_next);
        Ok(())
    }
}

/// Where the archive of the entries from `from` (inclusive) to `to` (exclusive)
/// misses offsets: the first missing range, if any.
pub(crate) fn first_gap(entries: &[Entry], from: u64, to: u64) -> Option<(u64, u64)> {
    let mut want = from;
    for e in entries.iter().filter(|e| e.offset >= from && e.offset < to) {
        if e.offset != want {
            return Some((want, e.offset - 1));
        }
        want = e.offset + 1;
    }
    (want < to).then(|| (want, to - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> (u64, u64, Vec<u8>) {
        // A stand-in entry: any msgpack value (here an array of a string and n).
        let mut b = Vec::new();
        rmpv::encode::write_value(
            &mut b,
            &rmpv::Value::Array(vec!["edit".into(), rmpv::Value::from(n)]),
        )
        .unwrap();
        (n, 1_000_000 + n, b)
    }

    #[test]
    fn segments_close_resume_and_cut_a_torn_tail() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(DIR_NAME);
        let mut a = Archive::open(&dir, "cell1", 100).unwrap();
        assert_eq!(a.next_offset(), None);
        let batch: Vec<_> = (5..30).map(entry).collect();
        a.append(&batch).unwrap();
        assert_eq!(a.next_offset(), Some(30));
        let segs = segments(&dir).unwrap();
        assert!(segs.len() > 2, "{segs:?}");
        assert!(matches!(segs.last().unwrap(), Seg::Open { .. }));
        drop(a);
        // A torn record at the open segment's end (a crash mid-write).
        let open = segments(&dir).unwrap().last().unwrap().path().to_path_buf();
        let mut f = OpenOptions::new().append(true).open(&open).unwrap();
        f.write_all(&encode_record(30, 1, &entry(30).2)[..4])
            .unwrap();
        drop(f);
        let mut a = Archive::open(&dir, "cell1", 100).unwrap();
        assert_eq!(a.next_offset(), Some(30));
        assert!(a.append(&[entry(31)]).is_err(), "a jump is refused");
        a.append(&[entry(30)]).unwrap();
        let all = read_all(&dir).unwrap();
        let offs: Vec<u64> = all.iter().map(|e| e.offset).collect();
        assert_eq!(offs, (5..31).collect::<Vec<_>>());
        assert_eq!(first_gap(&all, 5, 31), None);
        assert_eq!(first_gap(&all, 3, 31), Some((3, 4)));
        assert_eq!(first_gap(&all, 5, 33), Some((31, 32)));
        // Another cell's archive is refused.
        assert!(Archive::open(&dir, "cell2", 100).is_err());
    }

    #[test]
    fn a_damaged_closed_segment_is_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(DIR_NAME);
        let mut a = Archive::open(&dir, "c", 10).unwrap();
        a.append(&(0..3).map(entry).collect::<Vec<_>>()).unwrap();
        let closed = segments(&dir)
            .unwrap()
            .into_iter()
            .find(|s| matches!(s, Seg::Closed { .. }))
            .unwrap();
        let mut bytes = fs::read(closed.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(closed.path(), bytes).unwrap();
        let e = read_all(&dir).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not match its index"),
            "{e:#}"
        );
    }
}
