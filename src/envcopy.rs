// SPDX-License-Identifier: Apache-2.0
//! Compacting copies of LMDB environments from held snapshots, hashed in place.
//!
//! The snapshots (read transactions, `lmdb::Snapshot`) are taken first, all while the
//! service is frozen; a copy is `mdb_env_copycb3(.., MDB_CP_COMPACT, txn)` of one of
//! them (vendor/lmdb/copy-callback.patch): LMDB's writer thread hands us each of its
//! buffers, which is hashed where it lies and written with O_DIRECT by the draining
//! worker at the same time (`Copy::drain`). Only `--jobs` copies run at once (each
//! holds LMDB's 2 MiB double buffer); the others wait as bare transactions. A
//! snapshot is released as soon as its copy has ended, so the service can reuse its
//! pages.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use openssl::sha::Sha256;

use crate::exit::{fail, Code};
use crate::fsutil::{self, DirectWriter, Hashed};
use crate::interrupt;
use crate::lmdb::{MdbError, Snapshot};

/// A compacting copy of a held snapshot, run by `drain`.
pub(crate) struct Copy {
    snap: Snapshot,
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
        if used < 2 * PREFETCH_WINDOW || used > crate::host::mem_available().unwrap_or(0) / 2 {
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

/// One of LMDB's buffers, lent to the writing thread while LMDB's writer thread
/// (inside the copy callback) waits for it to be written.
struct Lent {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the lender blocks until the borrower acknowledges; the memory stays valid
// and unchanged for that time (LMDB reuses a buffer only after the callback returns).
unsafe impl Send for Lent {}

/// Begin the compacting copy of `snap` (it runs in `drain`); the snapshot is released
/// as soon as the copy has ended.
pub(crate) fn start(snap: Snapshot) -> Result<Copy> {
    let used = snap
        .info()
        .map(|i| (i.last_pgno + 1) * i.page_size)
        .unwrap_or(0);
    Ok(Copy { snap, used })
}

impl Copy {
    /// Run the copy into the new file `dst`, hashing every byte; fsync it.
    ///
    /// Three threads: `lmdb-copy` walks the B-trees into one of LMDB's two buffers
    /// while LMDB's writer thread, in our callback, lends the other buffer to this
    /// thread, which writes it (O_DIRECT where possible), and hashes it in place
    /// meanwhile; the callback returns (and LMDB reuses the buffer) when both are
    /// done. So hashing, the device and the walk overlap, and no byte is copied on
    /// its way (no pipe, no page cache where O_DIRECT is taken).
    pub(crate) fn drain(
        self,
        dst: &Path,
        abort: &dyn Fn() -> bool,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Hashed> {
        let dir = self.snap.dir().to_path_buf();
        let mut out = DirectWriter::create(dst)?;
        let _prefetch = Prefetch::start(dir.join("data.mdb"), self.used);
        let (job_tx, job_rx) = mpsc::sync_channel::<Lent>(0);
        let (ack_tx, ack_rx) = mpsc::sync_channel::<bool>(0);
        let snap = self.snap;
        let mut failure: Option<anyhow::Error> = None;
        let mut buffers = 0u64;
        let joined = std::thread::scope(|s| {
            let copier = std::thread::Builder::new()
                .name("lmdb-copy".into())
                .spawn_scoped(s, move || {
                    let mut h = Sha256::new();
                    let hash = &mut h;
                    let result = snap.copy_compact_with(move |buf| {
                        let lent = Lent {
                            ptr: buf.as_ptr(),
                            len: buf.len(),
                        };
                        if job_tx.send(lent).is_err() {
                            return libc::ECANCELED;
                        }
                        hash.update(buf); // while the other thread writes the same bytes
                        match ack_rx.recv() {
                            Ok(true) => 0,
                            _ => libc::ECANCELED,
                        }
                    });
                    drop(snap); // released: the service may reuse the pages it pinned
                    (result, h.finish())
                });
            let copier = match copier {
                Ok(c) => c,
                Err(e) => return Err(anyhow::Error::new(e).context("cannot start a copy thread")),
            };
            // Ends when the copy has ended (its callback, holding job_tx, is dropped).
            for lent in job_rx.iter() {
                // SAFETY: the lender waits for our acknowledgement below.
                let buf = unsafe { std::slice::from_raw_parts(lent.ptr, lent.len) };
                let ok = if failure.is_some() {
                    false
                } else if abort() {
                    failure = Some(
                        interrupt::check()
                            .err()
                            .unwrap_or_else(|| anyhow!("stopped after another copy failed")),
                    );
                    false
                } else if let Err(e) = (if buffers > 0 {
                    crate::fault::point("mid-copy") // tests: a failure after some output
                } else {
                    Ok(())
                })
                .and_then(|()| {
                    buffers += 1;
                    out.write(buf)
                }) {
                    failure = Some(e);
                    false
                } else {
                    on_bytes(buf.len() as u64);
                    true
                };
                if ack_tx.send(ok).is_err() {
                    break;
                }
            }
            copier
                .join()
                .map_err(|_| anyhow!("the copy thread of {} panicked", dir.display()))
        });
        let (result, digest) = joined?;
        if let Some(e) = failure {
            return Err(e);
        }
        result.map_err(|e| corrupt_or_failed(&dir, e))?;
        let size = out.len();
        log::debug!(
            "{}: {size} bytes in {buffers} buffers, {} of them with O_DIRECT",
            dst.display(),
            out.direct_bytes()
        );
        out.finish()?;
        Ok(Hashed {
            size,
            data_bytes: size,
            sha256: fsutil::hex(&digest),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lmdb::{Env, Mode};
    use ::lmdb::{DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags};
    use std::sync::atomic::AtomicUsize;

    /// An environment with inline values, overflow values (one larger than LMDB's
    /// 1 MiB buffer) and a third of its keys deleted.
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
                1 if k % 1000 == 1 => 3 << 20,
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
    fn the_callback_copy_is_lmdbs_own_copy_byte_for_byte() {
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
        let h = start(snapshot(&src))
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
        assert!(
            want == got,
            "copies differ ({} and {} bytes)",
            want.len(),
            got.len()
        );
        assert_eq!(h.size, want.len() as u64);
        assert_eq!(seen.load(Ordering::Relaxed), want.len());
        assert_eq!(h.sha256, fsutil::hex(&openssl::sha::sha256(&want)));
    }

    #[test]
    fn an_abort_mid_way_stops_the_copy_and_releases_the_snapshot() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("env");
        make_env(&src);
        let calls = AtomicUsize::new(0);
        let err = start(snapshot(&src))
            .unwrap()
            .drain(
                &t.path().join("partial.mdb"),
                &|| calls.fetch_add(1, Ordering::Relaxed) >= 2,
                &|_| {},
            )
            .unwrap_err();
        assert!(err.to_string().contains("stopped after"), "{err:#}");
        // Nothing waits on the copy any more: a new snapshot and copy work.
        let h = start(snapshot(&src))
            .unwrap()
            .drain(&t.path().join("again.mdb"), &|| false, &|_| {})
            .unwrap();
        assert!(h.size > 0);
    }
}
