// SPDX-License-Identifier: Apache-2.0
//! Compacting (or plain) copies of LMDB environments from held snapshots, hashed in
//! place.
//!
//! The snapshots (read transactions, `lmdb::Snapshot`) are taken first, all while the
//! service is frozen; a copy is `mdb_env_copycb3(.., MDB_CP_COMPACT, txn)` of one of
//! them (vendor/lmdb/copy-callback.patch): LMDB's writer thread hands us each of its
//! buffers, which is hashed where it lies and written with O_DIRECT by the draining
//! worker at the same time (`Copy::drain`). The plain copy (`CopyMode::Plain`,
//! `--no-compact`: flags 0) keeps every page where it is, so consecutive backups of a
//! slowly changing environment share more of their bytes (deduplicated offsite
//! copies, bench/RESULTS.md); it reads the free pages too, which a live writer may be
//! reusing, so LMDB copies each piece out of the map before our sink hashes and
//! writes it (the same bytes both times). Only `--jobs` copies run at once (each
//! holds LMDB's 2 MiB double buffer); the others wait as bare transactions. A
//! snapshot is released as soon as its copy has ended, so the service can reuse its
//! pages.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

use crate::base::digest::{Algo, Hasher};
use crate::base::exit::{fail, Code};
use crate::base::fsutil::{self, DirectWriter, Hashed};
use crate::base::interrupt;
use crate::engine::lmdb::{MdbError, Snapshot};

/// How an environment is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyMode {
    /// LMDB's compacting copy: the trees rewritten in walk order, free pages left out.
    Compact,
    /// LMDB's plain copy: every page below the snapshot's last one, in place.
    Plain,
}

impl CopyMode {
    /// The name the manifest records (`env_copy`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            CopyMode::Compact => "compact",
            CopyMode::Plain => "plain",
        }
    }
}

/// A copy of a held snapshot, run by `drain`.
pub(crate) struct Copy {
    snap: Snapshot,
    mode: CopyMode,
    algo: Algo,
}

/// Reads the live pages of a source `data.mdb` ahead of the compacting copy.
///
/// The copy walks the B-trees, so on a cold page cache it faults pages in tree order:
/// small random reads, one page fault at a time, on the copy's critical path. The
/// prefetcher asks the kernel (readahead(2), no copy into user memory) for the pages
/// that are live in the snapshot (every page up to the last one but those on its free
/// list, small free gaps read anyway), front to back in runs of at most one window
/// (each in calls no larger than the device lets one call read), on its own thread:
/// the device sees large reads in file order and the walk finds its pages in the
/// cache, and the free third of a fragmented file is not read. The
/// pages are page cache, not our memory (RssAnon does not grow) and reclaimable; when
/// the live pages are more than half the available memory nothing is prefetched
/// (they would evict themselves before the walk reached them). The free-page bitmap
/// is bounded (MAX_BITMAP); a larger environment is read by its whole used range, and
/// so is a small one (at most two windows: one request costs less than reading its
/// free list first). Small environments matter too: a Cortex with 200 layers has
/// hundreds of a few MiB, each walked by page faults when not prefetched (the many
/// shape, bench/RESULTS.md). The snapshot's map is read at random (`MDB_NORDAHEAD`,
/// lmdb.rs): a fault reads its page only, never the free pages and the sparse tail
/// around it; when nothing is prefetched the kernel's readahead is given back.
struct Prefetch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Size of one readahead request.
const PREFETCH_WINDOW: u64 = 8 << 20;

/// Free pages between two live runs that are read anyway: one larger read costs less
/// than two requests.
const MERGE_GAP_PAGES: u64 = 16;

/// The most memory the free-page bitmap may take: 1 MiB, 8 Mi pages (32 GiB of
/// 4 KiB pages).
const MAX_BITMAP: usize = 1 << 20;

/// Runs `(first page, pages)` of live pages in file order: pages `0..pages` not set in
/// `free` (all of them when there is no bitmap), free gaps shorter than `gap` merged.
struct LiveRuns {
    free: Option<Vec<u64>>,
    pages: u64,
    pos: u64,
    gap: u64,
}

impl LiveRuns {
    fn is_free(&self, pg: u64) -> bool {
        match &self.free {
            None => false,
            Some(bits) => bits
                .get((pg / 64) as usize)
                .is_some_and(|w| w >> (pg % 64) & 1 == 1),
        }
    }

    /// Live pages (exact; merged gaps not counted).
    fn live_pages(&self) -> u64 {
        let free: u64 = self
            .free
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        self.pages.saturating_sub(free)
    }
}

impl Iterator for LiveRuns {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        while self.pos < self.pages && self.is_free(self.pos) {
            self.pos += 1;
        }
        if self.pos >= self.pages {
            return None;
        }
        let start = self.pos;
        loop {
            while self.pos < self.pages && !self.is_free(self.pos) {
                self.pos += 1;
            }
            // A free gap: merged when short and followed by a live page.
            let mut end = self.pos;
            while end < self.pages && end - self.pos < self.gap && self.is_free(end) {
                end += 1;
            }
            if end < self.pages && end - self.pos < self.gap && !self.is_free(end) {
                self.pos = end;
                continue;
            }
            return Some((start, self.pos - start));
        }
    }
}

impl Prefetch {
    /// `whole`: the whole used range (a plain copy reads the free pages too).
    fn start(snap: &Snapshot, whole: bool) -> Option<Prefetch> {
        let info = snap.info().ok()?;
        let used = (info.last_pgno + 1) * info.page_size;
        let free = if whole || used <= 2 * PREFETCH_WINDOW {
            None
        } else {
            snap.free_page_bitmap(info.last_pgno, MAX_BITMAP)
                .map_err(|e| log::debug!("{e:#}; prefetching the whole used range"))
                .ok()
                .flatten()
        };
        let runs = LiveRuns {
            free,
            pages: info.last_pgno + 1,
            pos: 0,
            gap: MERGE_GAP_PAGES,
        };
        let live = runs.live_pages() * info.page_size;
        if live == 0 || live > crate::host::procfs::mem_available().unwrap_or(0) / 2 {
            snap.advise_normal_reads(); // the walk reads alone: let its faults read around
            return None;
        }
        let psize = info.page_size;
        // LMDB's own descriptor of data.mdb, not the file at its path now.
        let f = snap.data_file().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lmdb-prefetch".into())
            .spawn(move || {
                read_ahead(&f, runs, psize, &stop2);
            })
            .ok()?;
        Some(Prefetch {
            stop,
            thread: Some(thread),
        })
    }
}

/// One readahead(2) call on a file with no block device of its own (btrfs, overlayfs,
/// NFS, ...): the kernel's default readahead window, the least a call reads unless
/// an administrator lowered it.
const READAHEAD_FLOOR: u64 = 128 << 10;

/// How much to ask for in one readahead(2) call on `f`: the kernel reads at most its
/// device's limit per call and silently drops the rest (`host::storage::
/// readahead_limit`, the larger of `read_ahead_kb` and `max_sectors_kb`). The
/// benchmark's virtio disk is set to 8 MiB; with Linux's default 128 KiB readahead
/// it takes 4 MiB, so one 8 MiB call read half its window and the walk faulted the
/// other half a page at a time: the inline shape's cold backup took 4.58 s instead
/// of 0.97 s (bench/RESULTS.md, the sixth pass).
fn readahead_chunk(f: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let limit = f.metadata().ok().and_then(|m| {
        let dev = m.dev();
        crate::host::storage::readahead_limit(Path::new("/"), libc::major(dev), libc::minor(dev))
    });
    limit
        .unwrap_or(READAHEAD_FLOOR)
        .clamp(4096, PREFETCH_WINDOW)
}

/// Ask the kernel for `runs` (pages of `psize`) of `f` in file order, a window at a
/// time, each in calls it honours whole; until the last or `stop`.
fn read_ahead(f: &File, runs: LiveRuns, psize: u64, stop: &AtomicBool) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    let chunk = readahead_chunk(f);
    for (first, count) in runs {
        let mut off = first * psize;
        let end = (first + count) * psize;
        while off < end {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let window_end = end.min(off + PREFETCH_WINDOW);
            while off < window_end {
                let len = chunk.min(window_end - off);
                // SAFETY: readahead on a descriptor we own; it only fills the cache.
                if unsafe { libc::readahead(fd, off as i64, len as usize) } != 0 {
                    return;
                }
                off += len;
            }
        }
    }
}

#[cfg(test)]
impl Prefetch {
    /// Wait for the prefetcher to have asked for every window (tests).
    fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pieces at least this large (the overflow pages of a big value) are written
/// straight from LMDB's memory, lent while the callback waits; everything else
/// (LMDB's 1 MiB buffers, short buffers and small overflow values, an Axon's blobs
/// are mostly 16-256 KiB) is copied into staging buffers and the callback returns at
/// once. Measured on the inline shape (bench/RESULTS.md): lending every 1 MiB buffer
/// made LMDB's walk wait for each device write (and for the writing thread to be
/// scheduled, on a loaded host); one memcpy into a queue of staging buffers keeps the
/// device busy and costs little next to SHA-256.
const LEND_MIN: usize = 4 << 20;

/// Size of one staging buffer.
const STAGE: usize = 2 << 20;

/// Staging buffers per copy: writes queued ahead of the device.
const STAGES: usize = 4;

/// Staging buffers of finished copies, for the next ones: a backup of hundreds of
/// small environments would otherwise allocate (and the kernel zero) `STAGES` new
/// buffers for each. At most `--jobs` × `STAGES` of them exist.
static SPARE_STAGES: std::sync::Mutex<Vec<Stage>> = std::sync::Mutex::new(Vec::new());

/// A staging buffer: `STAGE` bytes at a DIRECT_ALIGN-aligned address in `mem`.
struct Stage {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Stage {
    fn new() -> Stage {
        let mem = vec![0u8; STAGE + fsutil::DIRECT_ALIGN];
        let start = mem.as_ptr().align_offset(fsutil::DIRECT_ALIGN);
        Stage { mem, start, len: 0 }
    }

    /// A spare buffer of an earlier copy, or a new one.
    fn take() -> Stage {
        let spare = SPARE_STAGES.lock().ok().and_then(|mut v| v.pop());
        spare.unwrap_or_else(Stage::new)
    }

    /// Keep `stages` for the next copy.
    fn give_back(stages: impl Iterator<Item = Stage>) {
        if let Ok(mut v) = SPARE_STAGES.lock() {
            v.extend(stages.map(|mut s| {
                s.len = 0;
                s
            }));
        }
    }

    fn filled(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// Append as much of `buf` as fits; returns how much.
    fn push(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(STAGE - self.len);
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&buf[..n]);
        self.len += n;
        n
    }
}

/// What LMDB's writer thread (in the copy callback) sends the writing thread, in file
/// order.
enum Piece {
    /// One of LMDB's buffers, lent while the callback waits for its acknowledgement.
    Lent { ptr: *const u8, len: usize },
    /// A full (or last) staging buffer, sent back through the pool once written.
    Staged(Stage),
}

// SAFETY: a lent buffer's lender blocks until the borrower acknowledges; the memory
// stays valid and unchanged for that time (LMDB reuses a buffer only after the
// callback returns, and overflow pages are in the snapshot's map). Stage owns its
// memory.
unsafe impl Send for Piece {}

/// The copy callback's side: hashes every byte where it lies, stages it (or lends
/// a very large piece).
struct Sink {
    hash: Hasher,
    /// None once the copy has ended: the writing thread's loop ends with it.
    to_writer: Option<mpsc::SyncSender<Piece>>,
    acks: mpsc::Receiver<bool>,
    pool: mpsc::Receiver<Stage>,
    current: Option<Stage>,
    failed: Arc<AtomicBool>,
}

impl Sink {
    /// Take the next `buf` of the copy: 0, or an error code that ends the copy.
    fn take(&mut self, buf: &[u8]) -> i32 {
        if self.failed.load(Ordering::Relaxed) {
            return libc::ECANCELED;
        }
        if buf.len() >= LEND_MIN {
            // Whatever is staged goes first (file order), then the lent piece, hashed
            // here while the writing thread writes it.
            if self.flush().is_err() {
                return libc::ECANCELED;
            }
            let lent = Piece::Lent {
                ptr: buf.as_ptr(),
                len: buf.len(),
            };
            if self.send(lent).is_err() {
                return libc::ECANCELED;
            }
            self.hash.update(buf);
            return match self.acks.recv() {
                Ok(true) => 0,
                _ => libc::ECANCELED,
            };
        }
        self.hash.update(buf);
        let mut rest = buf;
        while !rest.is_empty() {
            let stage = match self.current.as_mut() {
                Some(s) => s,
                None => match self.pool.recv() {
                    Ok(s) => self.current.insert(s),
                    Err(_) => return libc::ECANCELED,
                },
            };
            let n = stage.push(rest);
            rest = &rest[n..];
            if stage.len == STAGE && self.flush().is_err() {
                return libc::ECANCELED;
            }
        }
        0
    }

    fn send(&self, piece: Piece) -> std::result::Result<(), ()> {
        match &self.to_writer {
            Some(tx) => tx.send(piece).map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Send the staging buffer being filled, if it holds anything.
    fn flush(&mut self) -> std::result::Result<(), ()> {
        match self.current.take() {
            Some(s) if s.len > 0 => self.send(Piece::Staged(s)),
            Some(s) => {
                self.current = Some(s);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The writing thread's ends of the queues between it and the [`Sink`].
struct Queues {
    /// The pieces to write, in file order; ends when the sink is gone.
    pieces: mpsc::Receiver<Piece>,
    /// A lent piece's acknowledgement: true, written.
    acks: mpsc::SyncSender<bool>,
    /// Written staging buffers, back to the sink.
    pool: mpsc::SyncSender<Stage>,
    /// Set when a piece was not written: the sink ends the copy.
    failed: Arc<AtomicBool>,
}

/// What the copy thread hands back when LMDB's copy has ended.
struct CopyEnd {
    result: std::result::Result<(), MdbError>,
    digest: String,
    /// The pool's receiver outlives the writing thread, so every staging buffer it
    /// sends back is there to be kept.
    pool: mpsc::Receiver<Stage>,
    current: Option<Stage>,
}

impl Sink {
    /// A sink hashing with `algo`, its staging pool filled, and the writing thread's
    /// ends of its queues.
    fn with_queues(algo: Algo) -> Result<(Sink, Queues)> {
        let (to_writer, pieces) = mpsc::sync_channel::<Piece>(STAGES);
        let (ack_tx, acks) = mpsc::sync_channel::<bool>(0);
        let (pool_tx, pool) = mpsc::sync_channel::<Stage>(STAGES);
        for _ in 0..STAGES {
            pool_tx
                .send(Stage::take())
                .map_err(|_| anyhow!("cannot fill the staging pool"))?;
        }
        let failed = Arc::new(AtomicBool::new(false));
        let sink = Sink {
            hash: Hasher::new(algo),
            to_writer: Some(to_writer),
            acks,
            pool,
            current: None,
            failed: failed.clone(),
        };
        let queues = Queues {
            pieces,
            acks: ack_tx,
            pool: pool_tx,
            failed,
        };
        Ok((sink, queues))
    }

    /// LMDB's copy of `snap` into this sink (on the `lmdb-copy` thread); the
    /// snapshot is released as soon as the copy has ended.
    fn copy(mut self, snap: Snapshot, mode: CopyMode) -> CopyEnd {
        let mut result = match mode {
            CopyMode::Compact => snap.copy_compact_with(|buf| self.take(buf)),
            CopyMode::Plain => snap.copy_plain_with(|buf| self.take(buf)),
        };
        drop(snap); // released: the service may reuse the pages it pinned
        if result.is_ok() && self.flush().is_err() {
            result = Err(MdbError(libc::ECANCELED));
        }
        self.to_writer = None; // the writing thread's loop ends
        CopyEnd {
            result,
            digest: self.hash.finish_hex(),
            pool: self.pool,
            current: self.current,
        }
    }
}

/// The writing thread's side: writes the pieces in file order and counts them.
struct Writer<'a> {
    out: DirectWriter,
    abort: &'a dyn Fn() -> bool,
    on_bytes: &'a dyn Fn(u64),
    /// The first failure; every later piece is refused.
    failure: Option<anyhow::Error>,
    pieces_written: u64,
}

impl Writer<'_> {
    /// Write every piece until the copy has ended (the sink, holding the sender, is
    /// dropped); acknowledge lent pieces and give staging buffers back.
    fn write_all(&mut self, q: &Queues) {
        for piece in q.pieces.iter() {
            let buf: &[u8] = match &piece {
                // SAFETY: the lender waits for our acknowledgement below.
                Piece::Lent { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
                Piece::Staged(stage) => stage.filled(),
            };
            let ok = self.write_piece(buf);
            if !ok {
                q.failed.store(true, Ordering::Relaxed);
            }
            match piece {
                Piece::Lent { .. } => {
                    if q.acks.send(ok).is_err() {
                        break;
                    }
                }
                Piece::Staged(mut stage) => {
                    stage.len = 0;
                    // The sink may be gone already (the copy ended): fine.
                    let _ = q.pool.try_send(stage);
                }
            }
        }
    }

    /// Write one piece, unless the copy already failed or must stop. False: not
    /// written (the failure is kept).
    fn write_piece(&mut self, buf: &[u8]) -> bool {
        if self.failure.is_some() {
            return false;
        }
        if (self.abort)() {
            self.failure = Some(
                interrupt::check()
                    .err()
                    .unwrap_or_else(|| anyhow!("stopped after another copy failed")),
            );
            return false;
        }
        let written = if self.pieces_written > 0 {
            crate::base::fault::point("mid-copy") // tests: a failure after some output
        } else {
            Ok(())
        }
        .and_then(|()| self.out.write(buf));
        if let Err(e) = written {
            self.failure = Some(e);
            return false;
        }
        self.pieces_written += 1;
        (self.on_bytes)(buf.len() as u64);
        true
    }

    /// The written file's size and digest (not fsynced).
    fn finish(self, dst: &Path, digest: String) -> Hashed {
        let size = self.out.len();
        log::debug!(
            "{}: {size} bytes in {} writes, {} bytes with O_DIRECT",
            dst.display(),
            self.pieces_written,
            self.out.direct_bytes()
        );
        drop(self.out.finish_unsynced());
        Hashed {
            size,
            data_bytes: size,
            digest,
        }
    }
}

/// Begin the copy of `snap` (it runs in `drain`), hashed with `algo`; the snapshot
/// is released as soon as the copy has ended.
pub(crate) fn start(snap: Snapshot, mode: CopyMode, algo: Algo) -> Result<Copy> {
    Ok(Copy { snap, mode, algo })
}

impl Copy {
    /// Run the copy into the new file `dst`, hashing every byte. Not fsynced: the
    /// caller gives it its metadata and then fsyncs it once.
    ///
    /// Three threads: `lmdb-copy` walks the B-trees into one of LMDB's two buffers
    /// while LMDB's writer thread, in our callback (`Sink`), hashes the other one
    /// where it lies and copies it into a queue of aligned staging buffers, which
    /// this thread writes (O_DIRECT where possible) one after another while the
    /// next ones fill (`Writer`); the overflow pages of a very large value are lent
    /// instead (written from LMDB's memory while hashed, the callback waiting). So
    /// hashing, the device and the walk overlap, and no pipe or page cache is in
    /// the way.
    pub(crate) fn drain(
        self,
        dst: &Path,
        abort: &dyn Fn() -> bool,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Hashed> {
        let dir = self.snap.dir().to_path_buf();
        let mut writer = Writer {
            out: DirectWriter::create(dst)?,
            abort,
            on_bytes,
            failure: None,
            pieces_written: 0,
        };
        let mode = self.mode;
        let _prefetch = Prefetch::start(&self.snap, mode == CopyMode::Plain);
        let (sink, queues) = Sink::with_queues(self.algo)?;
        let snap = self.snap;
        let end = std::thread::scope(|s| {
            let copier = std::thread::Builder::new()
                .name("lmdb-copy".into())
                .spawn_scoped(s, move || sink.copy(snap, mode))
                .context("cannot start a copy thread")?;
            writer.write_all(&queues);
            copier
                .join()
                .map_err(|_| anyhow!("the copy thread of {} panicked", dir.display()))
        })?;
        Stage::give_back(end.pool.try_iter().chain(end.current));
        if let Some(e) = writer.failure.take() {
            return Err(e);
        }
        end.result.map_err(|e| corrupt_or_failed(&dir, mode, e))?;
        Ok(writer.finish(dst, end.digest))
    }
}

fn corrupt_or_failed(dir: &Path, mode: CopyMode, e: MdbError) -> anyhow::Error {
    // MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_INVALID: the source is damaged.
    let damaged = [-30796, -30797, -30793];
    if damaged.contains(&e.0) {
        fail(
            Code::BadPath,
            format!(
                "{}/data.mdb is damaged ({e}); restore it from an older backup",
                dir.display()
            ),
        )
    } else {
        let what = match mode {
            CopyMode::Compact => "compacting copy",
            CopyMode::Plain => "plain copy",
        };
        anyhow::Error::new(e).context(format!("{what} of {} failed", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lmdb::{Env, Mode};
    use ::lmdb::{DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags};
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    /// An environment with inline values, overflow values (of 2, 5, 16 and 17 pages,
    /// copied into LMDB's buffer or handed off on their own, some larger than LMDB's
    /// 1 MiB buffer, one larger than LEND_MIN) and a third of its keys deleted.
    fn make_env(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let env = Environment::new()
            .set_flags(EnvironmentFlags::WRITE_MAP | EnvironmentFlags::NO_SYNC)
            .set_max_dbs(8)
            .set_map_size(256 << 20)
            .open(dir)
            .unwrap();
        let db = env.create_db(Some("data"), DatabaseFlags::empty()).unwrap();
        let mut txn = env.begin_rw_txn().unwrap();
        for k in 0..6000u32 {
            let size = match k % 50 {
                0 => 20_000,
                3 => 4_100,
                4 => 65_000,
                5 => 66_000,
                6 => 8_000,
                1 if k % 1000 == 1 => 3 << 20,
                2 if k == 2002 => 9 << 20, // lent, not staged
                _ => 16 + (k as usize * 37) % 3000,
            };
            let val: Vec<u8> = (0..size).map(|j| ((j as u32 + k) % 251) as u8).collect();
            txn.put(db, &format!("key{k:08}"), &val, WriteFlags::empty())
                .unwrap();
        }
        txn.commit().unwrap();
        let mut txn = env.begin_rw_txn().unwrap();
        for k in (0..6000u32).step_by(3) {
            txn.del(db, &format!("key{k:08}"), None).unwrap();
        }
        txn.commit().unwrap();
        env.sync(true).unwrap();
    }

    fn snapshot(dir: &Path) -> Snapshot {
        Snapshot::take(Env::open(dir, Mode::Private).unwrap()).unwrap()
    }

    #[test]
    fn the_callback_copy_is_lmdbs_own_copy_page_for_page() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("env");
        make_env(&src);
        let theirs = t.path().join("theirs.mdb");
        let f = File::create(&theirs).unwrap();
        snapshot(&src)
            .copy_compact_to(std::os::fd::AsFd::as_fd(&f))
            .unwrap();
        drop(f);
        let ours = t.path().join("ours.mdb");
        let seen = AtomicUsize::new(0);
        let h = start(snapshot(&src), CopyMode::Compact, Algo::Blake3)
            .unwrap()
            .drain(&ours, &|| false, &|n| {
                seen.fetch_add(n as usize, Ordering::Relaxed);
            })
            .unwrap();
        let want = std::fs::read(&theirs).unwrap();
        let got = std::fs::read(&ours).unwrap();
        assert!(
            want.len() > 4 << 20,
            "too small to span buffers: {}",
            want.len()
        );
        same_pages(&want, &got, "LMDB's copy to a descriptor");
        assert_eq!(h.size, got.len() as u64);
        assert_eq!(seen.load(Ordering::Relaxed), got.len());
        assert_eq!(h.digest, blake3::hash(&got).to_hex().to_string());
        let sha = t.path().join("sha.mdb");
        let h = start(snapshot(&src), CopyMode::Compact, Algo::Sha256)
            .unwrap()
            .drain(&sha, &|| false, &|_| {})
            .unwrap();
        let again = std::fs::read(&sha).unwrap();
        assert!(again == got, "two callback copies of one snapshot differ");
        assert_eq!(
            h.digest,
            crate::base::digest::hex(&openssl::sha::sha256(&got))
        );
        // And the stock LMDB's compacting copy (lmdb-utils' mdb_copy -c), which has
        // none of the vendored patches.
        let stock = t.path().join("stock");
        std::fs::create_dir(&stock).unwrap();
        let st = std::process::Command::new("mdb_copy")
            .arg("-c")
            .arg(&src)
            .arg(&stock)
            .status()
            .expect("mdb_copy (lmdb-utils) installed");
        assert!(st.success());
        let stock = std::fs::read(stock.join("data.mdb")).unwrap();
        same_pages(&stock, &got, "mdb_copy -c");
    }

    /// Two compacted copies hold the same pages at the same numbers: every meta
    /// page whole, every branch and leaf page's header, pointers and nodes, every
    /// overflow run whole. Only the unused middle of a branch or leaf page may
    /// differ: LMDB copies a page's used parts into its buffer, and the middle keeps
    /// whatever that buffer held before, which depends on how it was filled.
    fn same_pages(want: &[u8], got: &[u8], what: &str) {
        const PS: usize = 4096;
        const P_BRANCH: u16 = 0x01;
        const P_LEAF: u16 = 0x02;
        const P_OVERFLOW: u16 = 0x04;
        const P_META: u16 = 0x08;
        assert_eq!(got.len(), want.len(), "{what}: sizes differ");
        let mut pg = 0;
        let mut gaps = 0;
        while pg * PS < want.len() {
            let (w, g) = (&want[pg * PS..], &got[pg * PS..]);
            let flags = u16::from_le_bytes([w[10], w[11]]);
            let (n, lower, upper) = if flags & P_OVERFLOW != 0 {
                let pages = u32::from_le_bytes([w[12], w[13], w[14], w[15]]) as usize;
                (pages, pages * PS, pages * PS)
            } else if flags & (P_BRANCH | P_LEAF) != 0 && flags & P_META == 0 {
                let lower = u16::from_le_bytes([w[12], w[13]]) as usize;
                let upper = u16::from_le_bytes([w[14], w[15]]) as usize;
                (1, lower, upper)
            } else {
                (1, PS, PS)
            };
            assert!(
                w[..lower] == g[..lower],
                "{what}: page {pg} differs before its gap"
            );
            assert!(
                w[upper..n * PS] == g[upper..n * PS],
                "{what}: page {pg} differs after its gap"
            );
            gaps += usize::from(w[lower..upper] != g[lower..upper]);
            pg += n.max(1);
        }
        eprintln!("{what}: {pg} pages alike, {gaps} of them with a different unused middle");
    }

    /// Entries of the named database `data` of the environment at `dir`.
    fn data_entries(dir: &Path) -> u64 {
        let env = Env::open(dir, Mode::Private).unwrap();
        let txn = env.read_txn().unwrap();
        let dbs = txn.named_dbs().unwrap();
        let db = dbs.iter().find(|d| d.name == b"data").unwrap();
        txn.db_stat(db).unwrap().entries
    }

    #[test]
    fn the_plain_copy_is_the_snapshot_with_its_pages_in_place() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("env");
        make_env(&src);
        let snap = snapshot(&src);
        let info = snap.info().unwrap();
        let before = data_entries(&src);
        // One more commit after the snapshot: the file's meta pages now describe it
        // (and it may reuse pages free in the snapshot, never the snapshot's own).
        {
            let env = Environment::new()
                .set_flags(EnvironmentFlags::WRITE_MAP | EnvironmentFlags::NO_SYNC)
                .set_max_dbs(8)
                .set_map_size(256 << 20)
                .open(&src)
                .unwrap();
            let db = env.open_db(Some("data")).unwrap();
            let mut txn = env.begin_rw_txn().unwrap();
            for k in 0..500u32 {
                txn.put(db, &format!("new{k:08}"), &[7u8; 300], WriteFlags::empty())
                    .unwrap();
            }
            txn.commit().unwrap();
            env.sync(true).unwrap();
        }
        assert_eq!(data_entries(&src), before + 500);
        let out = t.path().join("copy");
        std::fs::create_dir(&out).unwrap();
        let h = start(snap, CopyMode::Plain, Algo::Blake3)
            .unwrap()
            .drain(&out.join("data.mdb"), &|| false, &|_| {})
            .unwrap();
        let got = std::fs::read(out.join("data.mdb")).unwrap();
        let ps = info.page_size as usize;
        let end = (info.last_pgno as usize + 1) * ps;
        assert_eq!(got.len(), end, "every page up to the snapshot's last one");
        assert_eq!(h.size, end as u64);
        assert_eq!(h.digest, blake3::hash(&got).to_hex().to_string());
        let now = std::fs::read(src.join("data.mdb")).unwrap();
        assert!(
            got[2 * ps..] == now[2 * ps..end],
            "the data pages are the file's, in place"
        );
        // The copy opens at the snapshot, not at the commit made after it.
        assert_eq!(data_entries(&out), before);
    }

    #[test]
    fn live_runs_skip_free_pages_and_merge_short_gaps() {
        // Pages 0..200: 10..20 free (a short gap, merged), 50..100 free (skipped),
        // 190..200 free (the end).
        let mut bits = vec![0u64; 4];
        for pg in (10..20).chain(50..100).chain(190..200) {
            bits[pg / 64] |= 1 << (pg % 64);
        }
        let runs = LiveRuns {
            free: Some(bits),
            pages: 200,
            pos: 0,
            gap: 16,
        };
        assert_eq!(runs.live_pages(), 130);
        assert_eq!(runs.collect::<Vec<_>>(), vec![(0, 50), (100, 90)]);
        let all = LiveRuns {
            free: None,
            pages: 7,
            pos: 0,
            gap: 16,
        };
        assert_eq!(all.collect::<Vec<_>>(), vec![(0, 7)]);
    }

    #[test]
    fn the_free_bitmap_matches_the_compacted_size() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("env");
        make_env(&src);
        let env = Env::open(&src, Mode::Private).unwrap();
        let info = env.info().unwrap();
        let compacted = env.read_txn().unwrap().compacted_pages(&info).unwrap();
        let snap = Snapshot::take(env).unwrap();
        let bits = snap
            .free_page_bitmap(info.last_pgno, 1 << 20)
            .unwrap()
            .unwrap();
        let runs = LiveRuns {
            free: Some(bits),
            pages: info.last_pgno + 1,
            pos: 0,
            gap: 1,
        };
        // Live = all pages less the free ones; the compacted copy also leaves out
        // the free list's own pages (a few, some of them overflow pages here).
        let live = runs.live_pages();
        assert!(
            live >= compacted && live <= compacted + 32,
            "{live} vs {compacted}"
        );
        assert!(snap.free_page_bitmap(info.last_pgno, 1).unwrap().is_none());
    }

    #[test]
    fn an_abort_mid_way_stops_the_copy_and_releases_the_snapshot() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("env");
        make_env(&src);
        let calls = AtomicUsize::new(0);
        let err = start(snapshot(&src), CopyMode::Compact, Algo::Blake3)
            .unwrap()
            .drain(
                &t.path().join("partial.mdb"),
                &|| calls.fetch_add(1, Ordering::Relaxed) >= 2,
                &|_| {},
            )
            .unwrap_err();
        assert!(err.to_string().contains("stopped after"), "{err:#}");
        // Nothing waits on the copy any more: a new snapshot and copy work.
        let h = start(snapshot(&src), CopyMode::Compact, Algo::Blake3)
            .unwrap()
            .drain(&t.path().join("again.mdb"), &|| false, &|_| {})
            .unwrap();
        assert!(h.size > 0);
    }

    /// Pages of `path` in the page cache from byte `from` on.
    fn cached_pages_from(path: &Path, from: u64) -> usize {
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let page = 4096usize;
        // SAFETY: a read-only shared map of a file we opened, only given to mincore,
        // unmapped before return.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut vec = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
            libc::munmap(map, len);
            vec[(from as usize).div_ceil(page)..]
                .iter()
                .filter(|b| **b & 1 == 1)
                .count()
        }
    }

    /// Drop `f`'s clean pages from the page cache.
    fn drop_cached_pages(f: &File) {
        // SAFETY: advice on a descriptor we own; it only drops clean cached pages.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
    }

    /// A `writemap` environment as Synapse makes them (its file as long as its map),
    /// of `keys` 1000-byte values, synced.
    fn make_writemap_env(dir: &Path, map_size: usize, keys: u32) {
        std::fs::create_dir_all(dir).unwrap();
        let env = Environment::new()
            .set_flags(EnvironmentFlags::WRITE_MAP)
            .set_max_dbs(8)
            .set_map_size(map_size)
            .open(dir)
            .unwrap();
        let db = env.create_db(Some("data"), DatabaseFlags::empty()).unwrap();
        let mut txn = env.begin_rw_txn().unwrap();
        for k in 0..keys {
            txn.put(db, &format!("key{k:08}"), &[7u8; 1000], WriteFlags::empty())
                .unwrap();
        }
        txn.commit().unwrap();
        env.sync(true).unwrap();
    }

    /// A Synapse `data.mdb` (`writemap`) is as long as its map, sparse past the used
    /// pages. Each page fault of the copy's walk also read the kernel's read-around
    /// (`read_ahead_kb`) about it, so that tail came into the page cache as zeros: a
    /// Cortex's 208 environments cached 2.8 GB for 1.2 GB used (bench/RESULTS.md).
    #[test]
    fn a_copy_of_a_live_environment_reads_nothing_past_its_used_pages() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("env");
        make_writemap_env(&src, 64 << 20, 300);
        let data = src.join("data.mdb");
        let f = File::open(&data).unwrap();
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), 64 << 20, "writemap sizes the file to its map");
        let used = {
            let snap = snapshot(&src);
            let info = snap.info().unwrap();
            (info.last_pgno + 1) * info.page_size
        };
        drop_cached_pages(&f);
        if std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 64 << 20
            || cached_pages_from(&data, 0) > 0
        {
            eprintln!(
                "skipped: {} is not sparse or keeps its cache",
                data.display()
            );
            return;
        }
        // As a backup does: open and snapshot (the meta pages), then copy.
        let snap = Snapshot::take(Env::open(&src, Mode::Live).unwrap()).unwrap();
        assert!(snap.info().unwrap().last_pgno * 4096 < used);
        let h = start(snap, CopyMode::Compact, Algo::Blake3)
            .unwrap()
            .drain(&t.path().join("copy.mdb"), &|| false, &|_| {})
            .unwrap();
        assert!(h.size > 0);
        assert!(cached_pages_from(&data, 0) > 0, "the copy read its pages");
        assert_eq!(
            cached_pages_from(&data, used),
            0,
            "pages past the used {used} bytes were read into the page cache"
        );
    }

    /// LMDB leaves `data.mdb`'s descriptor inheritable: a Cortex started while a
    /// backup held a snapshot kept the service's data open, and a restore then
    /// refused the directory as in use by that `python`.
    #[test]
    fn a_program_started_while_an_environment_is_open_inherits_none_of_its_files() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("env");
        make_env(&src);
        for mode in [Mode::Live, Mode::Private] {
            let env = Env::open(&src, mode).unwrap();
            let out = std::process::Command::new("sh")
                .args(["-c", "for f in /proc/self/fd/*; do readlink \"$f\"; done"])
                .output()
                .unwrap();
            drop(env);
            let fds = String::from_utf8_lossy(&out.stdout);
            assert!(
                !fds.contains(src.to_str().unwrap()),
                "{mode:?}: the child inherited {fds}"
            );
        }
    }

    /// Pages of `f`'s first `len` bytes in the page cache, read or being read
    /// (cachestat(2), Linux 6.5: mincore(2) counts only those already read, so it
    /// cannot tell a page asked for from one never asked for right after the ask).
    fn pages_asked_for(f: &File, len: u64) -> u64 {
        crate::base::cachestat::of(f, len)
            .unwrap_or_else(|| panic!("cachestat: {}", std::io::Error::last_os_error()))
            .pages
    }

    /// A loop device with an ext4 file system, detached and unmounted on drop.
    struct LoopFs {
        dev: String,
        mnt: PathBuf,
    }

    impl LoopFs {
        fn new(dir: &Path, mib: u64) -> LoopFs {
            let run = |cmd: &mut std::process::Command| {
                let out = cmd.output().unwrap();
                assert!(out.status.success(), "{cmd:?}: {out:?}");
                String::from_utf8(out.stdout).unwrap().trim().to_string()
            };
            let img = dir.join("disk.img");
            File::create(&img).unwrap().set_len(mib << 20).unwrap();
            let dev = run(std::process::Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&img));
            let fs = LoopFs {
                dev,
                mnt: dir.join("mnt"),
            };
            run(std::process::Command::new("mkfs.ext4").args(["-q", "-F", &fs.dev]));
            std::fs::create_dir_all(&fs.mnt).unwrap();
            run(std::process::Command::new("mount")
                .arg(&fs.dev)
                .arg(&fs.mnt));
            fs
        }
    }

    impl Drop for LoopFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.mnt).status();
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.dev])
                .status();
        }
    }

    /// The kernel reads at most its device's limit per readahead(2) call, and drops
    /// the rest without a word: on this loop device (2.5 MiB per call) the 8 MiB
    /// calls read 6,407 of 20,114 live pages, and the walk faulted the other two
    /// thirds one at a time.
    #[test]
    fn the_prefetcher_reads_every_live_page_on_a_device_with_a_small_readahead() {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test makes a loop device: run the suite as root (CI does)"
        );
        let t = tempfile::tempdir().unwrap();
        let fs = LoopFs::new(t.path(), 256);
        let src = fs.mnt.join("env");
        make_writemap_env(&src, 128 << 20, 40_000);
        let data = src.join("data.mdb");
        let f = File::open(&data).unwrap();
        let chunk = readahead_chunk(&f);
        assert!(
            chunk < PREFETCH_WINDOW,
            "{}: one call reads {chunk}",
            fs.dev
        );
        drop_cached_pages(&f);
        assert_eq!(
            pages_asked_for(&f, 128 << 20),
            0,
            "the cache was not dropped"
        );
        let snap = Snapshot::take(Env::open(&src, Mode::Live).unwrap()).unwrap();
        let info = snap.info().unwrap();
        let used = (info.last_pgno + 1) * info.page_size;
        assert!(used > 4 * PREFETCH_WINDOW, "used {used}");
        let free = snap.free_page_bitmap(info.last_pgno, MAX_BITMAP).unwrap();
        let live = LiveRuns {
            free,
            pages: info.last_pgno + 1,
            pos: 0,
            gap: 0,
        }
        .live_pages();
        Prefetch::start(&snap, false)
            .expect("a prefetcher")
            .finish();
        let cached = pages_asked_for(&f, used);
        assert!(
            cached as u64 >= live,
            "{cached} of {live} live pages read ahead ({} used)",
            used / info.page_size
        );
    }
}
