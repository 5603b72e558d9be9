// SPDX-License-Identifier: Apache-2.0
//! Compacting copies of LMDB environments through pipes, from held snapshots.
//!
//! The snapshots (read transactions, `lmdb::Snapshot`) are taken first, all while the
//! service is frozen; a copy is `mdb_env_copyfd3(.., MDB_CP_COMPACT, txn)` of one of
//! them, run on its own thread into a pipe, and drained by a worker that hashes each
//! byte once on its way into the file. Only `--jobs` copies run at once (each holds
//! LMDB's 2 MiB double buffer); the others wait as bare transactions. A snapshot is
//! released as soon as its copy has ended, so the service can reuse its pages.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use openssl::sha::Sha256;

use crate::base::exit::{fail, Code};
use crate::base::fsutil::{self, Hashed, CHUNK};
use crate::base::interrupt;
use crate::engine::lmdb::{MdbError, Snapshot};

/// A compacting copy in flight: its thread and the pipe's read end.
pub(crate) struct Copy {
    dir: PathBuf,
    reader: Option<File>,
    thread: Option<JoinHandle<Result<(), MdbError>>>,
    /// Bytes of `data.mdb` in use (pages up to the last one) when the copy started.
    used: u64,
}

/// Reads a source `data.mdb` ahead of the compacting copy while it is drained.
///
/// The copy walks the B-trees, so on a cold page cache it faults pages in tree order:
/// small random reads, one page fault at a time, on the copy's critical path. The
/// prefetcher asks the kernel (readahead(2), no copy into user memory) for the used
/// range front to back in large windows on its own thread, so the device sees large
/// sequential reads and the walk finds its pages in the cache. The pages are page
/// cache, not our memory (RssAnon does not grow) and reclaimable; ranges larger
/// than half the available memory are not prefetched (they would evict themselves
/// before the walk reached them).
struct Prefetch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Size of one readahead request.
const PREFETCH_WINDOW: u64 = 8 << 20;

impl Prefetch {
    fn start(path: PathBuf, used: u64) -> Option<Prefetch> {
        if used < 2 * PREFETCH_WINDOW
            || used > crate::host::procfs::mem_available().unwrap_or(0) / 2
        {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lmdb-prefetch".into())
            .spawn(move || {
                let Ok(f) = File::open(&path) else { return };
                let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
                let mut off = 0u64;
                while off < used && !stop2.load(Ordering::Relaxed) {
                    let len = PREFETCH_WINDOW.min(used - off);
                    // SAFETY: readahead on a descriptor we own; it only fills the cache.
                    if unsafe { libc::readahead(fd, off as i64, len as usize) } != 0 {
                        return;
                    }
                    off += len;
                }
            })
            .ok()?;
        Some(Prefetch {
            stop,
            thread: Some(thread),
        })
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

fn make_pipe() -> Result<(File, OwnedFd)> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // A larger pipe lets the copy run ahead of the hashing reader; the system's
    // maximum (fs.pipe-max-size) may be lower, so failure here is fine.
    // SAFETY: fcntl on a pipe fd we own.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&w),
            libc::F_SETPIPE_SZ,
            CHUNK as libc::c_int,
        );
    }
    Ok((File::from(r), w))
}

/// Start a compacting copy of `snap` on its own thread; the snapshot is released
/// when the copy ends.
pub(crate) fn start(snap: Snapshot) -> Result<Copy> {
    let dir = snap.dir().to_path_buf();
    let used = snap
        .info()
        .map(|i| (i.last_pgno + 1) * i.page_size)
        .unwrap_or(0);
    let (reader, writer) = make_pipe()?;
    let thread = std::thread::Builder::new()
        .name("lmdb-copy".into())
        .spawn(move || {
            let result = snap.copy_compact_to(writer.as_fd());
            drop(snap); // released: the service may reuse the pages it pinned
            drop(writer); // EOF for the reader
            result
        })
        .context("cannot start a copy thread")?;
    Ok(Copy {
        dir,
        reader: Some(reader),
        thread: Some(thread),
        used,
    })
}

impl Copy {
    fn join(&mut self) -> Result<()> {
        self.reader = None; // a blocked writer now fails with EPIPE instead of hanging
        match self.thread.take() {
            None => Ok(()),
            Some(t) => match t.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(corrupt_or_failed(&self.dir, e)),
                Err(_) => Err(anyhow!(
                    "the copy thread of {} panicked",
                    self.dir.display()
                )),
            },
        }
    }

    /// Drain the copy into the new file `dst`, hashing as it goes; fsync it.
    pub(crate) fn drain(
        mut self,
        dst: &Path,
        abort: &dyn Fn() -> bool,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Hashed> {
        let mut out = fsutil::create_new(dst)?;
        let _prefetch = Prefetch::start(self.dir.join("data.mdb"), self.used);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut size = 0u64;
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| anyhow!("copy already drained"))?;
        loop {
            if abort() {
                self.join().ok();
                interrupt::check()?;
                return Err(anyhow!("stopped after another copy failed"));
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("cannot read the copy pipe"),
            };
            h.update(&buf[..n]);
            if let Err(e) = std::io::Write::write_all(&mut out, &buf[..n]) {
                self.join().ok();
                return Err(fsutil::write_error(dst, e));
            }
            size += n as u64;
            on_bytes(n as u64);
        }
        self.join()?;
        out.sync_all().map_err(|e| fsutil::write_error(dst, e))?;
        Ok(Hashed {
            size,
            data_bytes: size,
            sha256: fsutil::hex(&h.finish()),
        })
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn corrupt_or_failed(dir: &Path, e: MdbError) -> anyhow::Error {
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
        anyhow::Error::new(e).context(format!("compacting copy of {} failed", dir.display()))
    }
}
