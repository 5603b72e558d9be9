// SPDX-License-Identifier: Apache-2.0
//! The nexus archive on disk: `BACKUP_ROOT/nexus-archive/`, written only by the
//! archiver (`follow`) and read by the restore to a point (`replay`).
//!
//! - `archive.json`: the cell the archive belongs to (`{"format": 1, "cell": IDEN}`).
//! - `open-FIRST.seg`: the segment being written. FIRST and LAST are 16 hex digits.
//! - `FIRST-LAST.seg`: a closed segment (never written again), and beside it
//!   `FIRST-LAST.json`: its entry count, first and last offset, the times the
//!   first and last entry were received, the first and last edit time among its
//!   entries and how many carry one (see [`edit_time_us`]), and its BLAKE3
//!   digest. The `.json` files are the archive's offset → time index. The edit
//!   time fields were added later, optional, in the same format 1: an index
//!   written before has none (the times are read from the entries themselves),
//!   and an older reader ignores them.
//!
//! - `.checked.json`: the closed segments a check found whole, by file identity
//!   (`checked`; a cache `status` keeps, never read as part of the archive).
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
    /// How many of its entries carry an edit time (absent: an index written
    /// before edit times were indexed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) edit_times: Option<u64>,
    /// The edit time of the first and of the last entry that carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) first_edit_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_edit_us: Option<u64>,
    pub(crate) blake3: String,
}

/// One archived entry as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) received_us: u64,
    /// When the cell made the change, where the entry says ([`edit_time_us`]).
    pub(crate) edit_us: Option<u64>,
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
    edit_times: u64,
    first_edit_us: Option<u64>,
    last_edit_us: Option<u64>,
}

impl OpenSeg {
    /// Count an entry's edit time in the segment's index.
    fn note_edit(&mut self, edit_us: Option<u64>) {
        if let Some(t) = edit_us {
            self.edit_times += 1;
            self.first_edit_us.get_or_insert(t);
            self.last_edit_us = Some(t);
        }
    }
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

/// 3.x's clock: `s_common.now()` counts microseconds (2.x's milliseconds).
const V3_TIME_SCALE: u64 = 1;

/// When the cell made the change an entry records (microseconds since the epoch),
/// where the entry says: 3.x appends `etime` after `meta`
/// (`(nexsiden, event, args, kwargs, meta, etime)`); on 2.x the nexus `meta` may
/// carry a `time`, and a layer's node edits (event `edits`, args `(edits, meta)`)
/// carry the edit's `time` in their own meta. 2.x times are milliseconds.
/// Other entries (a user or a view changed on 2.x, say) carry none.
pub(crate) fn edit_time_us(entry: &rmpv::Value) -> Option<u64> {
    let items = entry.as_array()?;
    let time_in = |m: &rmpv::Value| -> Option<u64> {
        m.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some("time"))
            .and_then(|(_, v)| v.as_u64())
    };
    if items.len() >= 6 {
        return items[5]
            .as_u64()
            .or_else(|| time_in(&items[4]))
            .map(|t| t.saturating_mul(V3_TIME_SCALE));
    }
    let ms = items.get(4).and_then(time_in).or_else(|| {
        (items.get(1)?.as_str()? == "edits")
            .then(|| items.get(2)?.as_array()?.get(1).and_then(time_in))
            .flatten()
    })?;
    Some(ms.saturating_mul(1000))
}

/// [`edit_time_us`] of an entry's msgpack bytes.
pub(crate) fn edit_time_of(entry: &[u8]) -> Option<u64> {
    let mut cur = entry;
    rmpv::decode::read_value(&mut cur)
        .ok()
        .as_ref()
        .and_then(edit_time_us)
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
        let edit_us = fields.and_then(|a| edit_time_us(&a[2]));
        out.push(Entry {
            offset,
            received_us,
            edit_us,
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

/// How often a reader lists the segments again when one vanished under it (a
/// millisecond apart after the first: the archiver closes a segment per
/// `--segment-bytes`, 16 MiB by default, so two closes in a row are rare).
const RELIST: u32 = 100;

/// True when `e` is a file that is no longer there.
fn vanished(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// `read` over the segments of `dir`, listed again when a file vanished between
/// the listing and its read: the archiver runs beside every reader, and it
/// renames the open segment when it closes it (a fork or the retention of old
/// segments removes some).
pub(crate) fn read_listed<T>(dir: &Path, mut read: impl FnMut(Vec<Seg>) -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match read(segments(dir)?) {
            Err(e) if vanished(&e) && tries < RELIST => {
                if tries > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Every entry of the archive in `dir`, in offset order (the open segment's too).
pub(crate) fn read_all(dir: &Path) -> Result<Vec<Entry>> {
    read_listed(dir, |segs| read_segments(segs, 0))
}

/// The entries of `segs` from offset `from` on (only the segments that reach it
/// are read; closed ones checked against their index).
fn read_segments(segs: Vec<Seg>, from: u64) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for seg in segs {
        if matches!(seg, Seg::Closed { last, .. } if last < from) {
            continue;
        }
        let bytes = fs::read(seg.path())
            .with_context(|| format!("cannot read {}", seg.path().display()))?;
        if let Seg::Closed { first, last, path } = &seg {
            check_closed(path, *first, *last, &bytes)?;
        }
        out.extend(
            parse_records(&bytes)
                .1
                .into_iter()
                .filter(|e| e.offset >= from),
        );
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
                            "{}: cutting {} bytes of a record torn by a crash or a full file system (offset {} on is archived again)",
                            path.display(),
                            bytes.len() as u64 - good,
                            entries.last().map_or(*first, |e| e.offset + 1)
                        );
                        file.set_len(good)
                            .with_context(|| format!("cannot cut {}", path.display()))?;
                    }
                    // What a run that failed (a full disk) wrote but never
                    // fsynced: durable before the next offset is taken from it.
                    file.sync_all().map_err(|e| fsutil::write_error(path, e))?;
                    file.seek(SeekFrom::End(0))?;
                    let Some(last) = entries.last() else {
                        fs::remove_file(path)?;
                        fsutil::fsync_dir(&self.dir)?;
                        continue;
                    };
                    self.next = Some(last.offset + 1);
                    let mut seg = OpenSeg {
                        first: *first,
                        file,
                        len: good,
                        count: entries.len() as u64,
                        first_received_us: entries[0].received_us,
                        last_received_us: last.received_us,
                        last: last.offset,
                        edit_times: 0,
                        first_edit_us: None,
                        last_edit_us: None,
                    };
                    for e in &entries {
                        seg.note_edit(e.edit_us);
                    }
                    self.open = Some(seg);
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
                    edit_times: 0,
                    first_edit_us: None,
                    last_edit_us: None,
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
            seg.note_edit(edit_time_of(entry));
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
            edit_times: Some(seg.edit_times),
            first_edit_us: seg.first_edit_us,
            last_edit_us: seg.last_edit_us,
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

/// The ENTRY bytes of a record `[offset, received_us, ENTRY]`, as the cell sent them.
pub(crate) fn entry_bytes(record: &[u8]) -> Option<&[u8]> {
    let mut cur = record;
    (rmp::decode::read_array_len(&mut cur).ok()? == 3).then_some(())?;
    let _: u64 = rmp::decode::read_int(&mut cur).ok()?;
    let _: u64 = rmp::decode::read_int(&mut cur).ok()?;
    Some(cur)
}

/// The archived entries from offset `from` on (only the segments that reach it
/// are read; closed ones checked against their index).
pub(crate) fn entries_from(dir: &Path, from: u64) -> Result<Vec<Entry>> {
    read_listed(dir, |segs| read_segments(segs, from))
}

/// The prefix of the names of the directories [`set_aside_from`] makes.
pub(crate) const DIVERGED_PREFIX: &str = "diverged-";

/// The directories of entries set aside in the archive `dir`, by name.
pub(crate) fn diverged(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIVERGED_PREFIX))
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The first and last offset a `diverged-FIRST-LAST` directory holds.
pub(crate) fn diverged_range(path: &Path) -> Option<(u64, u64)> {
    let name = path.file_name()?.to_str()?.strip_prefix(DIVERGED_PREFIX)?;
    // `FIRST-LAST`, or `FIRST-LAST-N` for another set aside from the same offset.
    let mut parts = name.split('-');
    let (a, b) = (parts.next()?, parts.next()?);
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// Write `entries` (in order, contiguous) as one closed segment of `dir`, with its
/// index, durable.
fn write_closed(dir: &Path, entries: &[Entry]) -> Result<()> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|e| e.record.iter().copied())
        .collect();
    let with_edit: Vec<u64> = entries.iter().filter_map(|e| e.edit_us).collect();
    let idx = Closed {
        first: first.offset,
        last: last.offset,
        count: entries.len() as u64,
        first_received_us: first.received_us,
        last_received_us: last.received_us,
        edit_times: Some(with_edit.len() as u64),
        first_edit_us: with_edit.first().copied(),
        last_edit_us: with_edit.last().copied(),
        blake3: blake3::hash(&bytes).to_hex().to_string(),
    };
    let stem = closed_stem(first.offset, last.offset);
    fsutil::write_atomic(&dir.join(format!("{stem}.seg")), &bytes, 0o600)?;
    fsutil::write_atomic(
        &dir.join(format!("{stem}.json")),
        &serde_json::to_vec_pretty(&idx)?,
        0o600,
    )
}

/// The archive in `dir` holds entries from `index` on that the cell no longer has
/// (it came back behind its archive: killed before its slabs committed them, or
/// restored to an older state). Move them aside, never deleting one: they are
/// written first, durable, as closed segments of `dir/diverged-INDEX-LAST/` (an
/// archive of their own, `archive.json` too), then cut from the archive (a
/// segment that holds entries on both sides is rewritten with those before
/// `index` as the open segment), so it ends at `index - 1` and the archiver goes
/// on with the cell's new entries from `index`. A fork interrupted by a crash is
/// done again: a directory already set aside from `index` that holds the tail
/// is kept, not written twice. Returns that directory, None when nothing was
/// past `index`.
pub(crate) fn set_aside_from(dir: &Path, index: u64) -> Result<Option<PathBuf>> {
    let mut tail = Vec::new();
    let mut parsed = Vec::new();
    for seg in segments(dir)? {
        if matches!(seg, Seg::Closed { last, .. } if last < index) {
            continue; // wholly before the index: neither read nor changed
        }
        let bytes = fs::read(seg.path())
            .with_context(|| format!("cannot read {}", seg.path().display()))?;
        if let Seg::Closed { first, last, path } = &seg {
            check_closed(path, *first, *last, &bytes)?;
        }
        let (_, entries) = parse_records(&bytes);
        tail.extend(entries.iter().filter(|e| e.offset >= index).cloned());
        parsed.push((seg, entries));
    }
    let Some(last) = tail.last().map(|e| e.offset) else {
        return Ok(None);
    };
    let stem = format!("{DIVERGED_PREFIX}{}-{}", hex16(index), hex16(last));
    // A fork a crash interrupted before its cut left the same entries aside:
    // kept, not written twice. Other entries from the same offset (the cell
    // parted there again, another time) go to a directory of their own.
    let mut done_before = None;
    for d in diverged(dir)? {
        if diverged_range(&d).is_some_and(|(f, l)| f == index && l >= last) {
            let held = read_all(&d)?;
            let same = tail.iter().all(|e| {
                held.get((e.offset - index) as usize)
                    .is_some_and(|h| h == e)
            });
            if same {
                done_before = Some(d);
                break;
            }
        }
    }
    let mut name = stem.clone();
    let mut n = 1;
    while done_before.is_none() && dir.join(&name).exists() {
        n += 1;
        name = format!("{stem}-{n}");
    }
    let aside = dir.join(&name);
    let aside = match done_before {
        Some(d) => d,
        None => {
            let tmp = dir.join(format!(".{name}.tmp"));
            if tmp.exists() {
                // Ours, from a fork a crash interrupted before its rename.
                fs::remove_dir_all(&tmp)
                    .with_context(|| format!("cannot remove {}", tmp.display()))?;
            }
            fs::create_dir(&tmp).map_err(|e| fsutil::write_error(&tmp, e))?;
            fs::copy(dir.join("archive.json"), tmp.join("archive.json"))
                .map_err(|e| fsutil::write_error(&tmp, e))?;
            File::open(tmp.join("archive.json"))
                .and_then(|f| f.sync_all())
                .map_err(|e| fsutil::write_error(&tmp, e))?;
            write_closed(&tmp, &tail)?;
            fsutil::fsync_dir(&tmp)?;
            fs::rename(&tmp, &aside).map_err(|e| fsutil::write_error(&aside, e))?;
            fsutil::fsync_dir(dir)?;
            aside
        }
    };
    // The cut, newest segment first: a crash part way leaves the archive ending
    // where the cell's entries end or later, and the fork is done again.
    for (seg, entries) in parsed.into_iter().rev() {
        if seg.first() >= index {
            fs::remove_file(seg.path())
                .with_context(|| format!("cannot remove {}", seg.path().display()))?;
            if let Seg::Closed { .. } = seg {
                let idx = seg.path().with_extension("json");
                fs::remove_file(&idx)
                    .with_context(|| format!("cannot remove {}", idx.display()))?;
            }
        } else if entries.iter().any(|e| e.offset >= index) {
            let keep: Vec<u8> = entries
                .iter()
                .filter(|e| e.offset < index)
                .flat_map(|e| e.record.iter().copied())
                .collect();
            // The entries before `index` as the open segment (it is appended
            // to again); a closed one's files go once that is durable.
            fsutil::write_atomic(&dir.join(open_name(seg.first())), &keep, 0o600)?;
            if let Seg::Closed { .. } = seg {
                fs::remove_file(seg.path())
                    .with_context(|| format!("cannot remove {}", seg.path().display()))?;
                let idx = seg.path().with_extension("json");
                fs::remove_file(&idx)
                    .with_context(|| format!("cannot remove {}", idx.display()))?;
            }
        }
        fsutil::fsync_dir(dir)?;
        crate::base::fault::point("fork-mid-cut")?;
    }
    Ok(Some(aside))
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

    /// Every file of `dir` (not below it) with its bytes.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_tail_the_cell_lost_is_set_aside_whole_and_the_archive_goes_on() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(DIR_NAME);
        let mut a = Archive::open(&dir, "cell1", 100).unwrap();
        a.append(&(0..30).map(entry).collect::<Vec<_>>()).unwrap();
        drop(a);
        let before = read_all(&dir).unwrap();
        // 17 falls inside a closed segment; later closed ones and the open one go
        // whole.
        let straddled = segments(&dir)
            .unwrap()
            .into_iter()
            .any(|s| matches!(s, Seg::Closed { first, last, .. } if first < 17 && last >= 17));
        assert!(straddled, "the test needs a closed segment across 17");
        let whole = files(&dir);
        let aside = set_aside_from(&dir, 17).unwrap().unwrap();
        assert_eq!(
            aside.file_name().unwrap().to_string_lossy(),
            format!("diverged-{:016x}-{:016x}", 17, 29)
        );
        // Nothing lost: the entries set aside, byte for byte, in a closed segment
        // that checks against its index; the archive ends at 16.
        let kept = read_all(&aside).unwrap();
        assert_eq!(kept, before[17..].to_vec());
        assert!(segments(&aside)
            .unwrap()
            .iter()
            .all(|s| matches!(s, Seg::Closed { .. })));
        assert_eq!(read_all(&dir).unwrap(), before[..17].to_vec());
        assert_eq!(diverged(&dir).unwrap(), vec![aside.clone()]);
        assert_eq!(diverged_range(&aside), Some((17, 29)));
        // The archiver goes on from 17 with the cell's new entries.
        let mut a = Archive::open(&dir, "cell1", 100).unwrap();
        assert_eq!(a.next_offset(), Some(17));
        let mut new: Vec<_> = (17..40).map(entry).collect();
        for e in &mut new {
            e.1 += 7; // received later: not the entries set aside
        }
        a.append(&new).unwrap();
        drop(a);
        let all = read_all(&dir).unwrap();
        assert_eq!(all.len(), 40);
        assert_eq!(first_gap(&all, 0, 40), None);
        assert_eq!(all[17].received_us, 1_000_017 + 7);
        // The cell parts from the same offset once more: the new entries there
        // are not the ones set aside before, so they get a directory of their own.
        let again = set_aside_from(&dir, 17).unwrap().unwrap();
        assert_ne!(again, aside);
        assert_eq!(read_all(&again).unwrap(), all[17..].to_vec());
        assert_eq!(read_all(&aside).unwrap(), before[17..].to_vec());
        assert_eq!(diverged(&dir).unwrap().len(), 2);
        assert_eq!(read_all(&dir).unwrap(), before[..17].to_vec());
        // A fork that a crash interrupted before the cut is done again without a
        // second copy: the directory already set aside is kept.
        let t2 = tempfile::tempdir().unwrap();
        let dir2 = t2.path().join(DIR_NAME);
        fs::create_dir(&dir2).unwrap();
        for (n, b) in &whole {
            fs::write(dir2.join(n), b).unwrap();
        }
        let copy = dir2.join(aside.file_name().unwrap());
        fs::create_dir(&copy).unwrap();
        for (n, b) in files(&aside) {
            fs::write(copy.join(n), b).unwrap();
        }
        assert_eq!(set_aside_from(&dir2, 17).unwrap(), Some(copy.clone()));
        assert_eq!(diverged(&dir2).unwrap(), vec![copy]);
        assert_eq!(read_all(&dir2).unwrap(), before[..17].to_vec());
        // Nothing past the index: nothing to do.
        assert_eq!(set_aside_from(&dir2, 17).unwrap(), None);
    }

    fn value(v: rmpv::Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        b
    }

    #[test]
    fn edit_times_of_both_lines_in_the_index() {
        use rmpv::Value as V;
        let map = |k: &str, t: u64| V::Map(vec![(k.into(), V::from(t))]);
        // 2.x node edits: (layriden, 'edits', (edits, {'time': ms, ...}), {}, None).
        let v2 = V::Array(vec![
            "layr".into(),
            "edits".into(),
            V::Array(vec![V::Array(vec![]), map("time", 1_700_000_000_123)]),
            V::Map(vec![]),
            V::Nil,
        ]);
        assert_eq!(
            edit_time_of(&value(v2.clone())),
            Some(1_700_000_000_123_000)
        );
        // 2.x with a nexus meta time; a user change without one.
        let mut m2 = v2.as_array().unwrap().clone();
        m2[1] = "user:add".into();
        assert_eq!(edit_time_of(&value(V::Array(m2.clone()))), None);
        m2[4] = map("time", 5);
        assert_eq!(edit_time_of(&value(V::Array(m2))), Some(5000));
        // 3.x: etime (microseconds) after meta.
        let v3 = V::Array(vec![
            "cell".into(),
            "model:set".into(),
            V::Array(vec![]),
            V::Map(vec![]),
            V::Map(vec![]),
            V::from(1_700_000_000_123_456u64),
        ]);
        assert_eq!(
            edit_time_of(&value(v3.clone())),
            Some(1_700_000_000_123_456)
        );

        // The closed segment's index: first and last edit time, how many.
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(DIR_NAME);
        let mut a = Archive::open(&dir, "c", 1 << 20).unwrap();
        a.append(&[
            (0, 10, value(v2.clone())),
            (1, 11, entry(1).2),
            (2, 12, value(v3)),
        ])
        .unwrap();
        drop(a);
        // Reopened (the open segment's times read back), then closed.
        let mut a = Archive::open(&dir, "c", 1).unwrap();
        a.append(&[(3, 13, entry(3).2)]).unwrap();
        let json = dir.join(format!("{}.json", closed_stem(0, 3)));
        let idx: Closed = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        assert_eq!(idx.edit_times, Some(2));
        assert_eq!(idx.first_edit_us, Some(1_700_000_000_123_000));
        assert_eq!(idx.last_edit_us, Some(1_700_000_000_123_456));
        let all = read_all(&dir).unwrap();
        let edits: Vec<_> = all.iter().map(|e| e.edit_us).collect();
        assert_eq!(
            edits,
            [
                Some(1_700_000_000_123_000),
                None,
                Some(1_700_000_000_123_456),
                None
            ]
        );
        // An index written before edit times were indexed still reads.
        let mut old: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        for k in ["edit_times", "first_edit_us", "last_edit_us"] {
            old.as_object_mut().unwrap().remove(k);
        }
        fs::write(&json, serde_json::to_vec(&old).unwrap()).unwrap();
        let idx: Closed = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        assert_eq!((idx.edit_times, idx.first_edit_us), (None, None));
        assert_eq!(read_all(&dir).unwrap().len(), 4);
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
