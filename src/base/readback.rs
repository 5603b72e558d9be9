// SPDX-License-Identifier: Apache-2.0
//! Reading a file back from the device to hash it: what `verify` (and `backup
//! --verify`) checks is what is on the disk, not the page cache that was just written.
//!
//! The data extents are read with `O_DIRECT` (aligned buffers and offsets; the page
//! cache is neither used nor filled, and the kernel writes back any dirty page of the
//! range before reading) by a reader thread, a few large requests ahead, while this
//! thread hashes the previous buffer: the device never waits for the hash, nor the
//! hash for the device. Where the filesystem refuses `O_DIRECT` (EINVAL at open or at
//! a read: tmpfs on older kernels, some FUSE and network filesystems) the file is read
//! through the page cache, which is then all that can be checked, and said so at
//! debug level. Holes are not read; their zeros are hashed as they are in the copy.
//!
//! Verify then reads each environment's databases through LMDB's map, from the
//! device a second time. Tried and measured instead (inline shape, 0.64 GB, cold,
//! same moment): dropping a `data.mdb`'s cached pages and hashing it through the
//! page cache, which the check then finds: 2.44 and 2.52 s (0.53 s system: filling
//! the cache) against 1.76 and 2.28 s for O_DIRECT and the second read; the O_DIRECT
//! hash alone took 0.79 s, `dd iflag=direct` of the same bytes 0.67-0.90 s.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;

use anyhow::{anyhow, Context, Result};

use crate::base::digest::{Algo, Hasher};
use crate::base::exit::{fail, Code};
use crate::base::fsutil::{self, Hashed, DIRECT_ALIGN};

/// Size of one read request: large enough that the device streams.
const READ_CHUNK: usize = 4 << 20;

/// Buffers in flight: one being hashed, the others being read ahead.
const BUFFERS: usize = 3;

/// A `READ_CHUNK` buffer at a `DIRECT_ALIGN`-aligned address.
struct Buf {
    mem: Vec<u8>,
    start: usize,
}

impl Buf {
    fn new() -> Buf {
        let mem = vec![0u8; READ_CHUNK + DIRECT_ALIGN];
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN);
        Buf { mem, start }
    }

    fn space(&mut self, len: usize) -> &mut [u8] {
        &mut self.mem[self.start..self.start + len]
    }
}

/// What the reader sends: `len` bytes of the file at `off`, from `buf[skip..]`.
enum Chunk {
    Data {
        buf: Buf,
        skip: usize,
        len: usize,
        off: u64,
    },
    Failed(io::Error),
}

/// What a read back saw: the file's digest, and how many bytes bypassed the cache.
pub(crate) struct ReadBack {
    pub(crate) hashed: Hashed,
    pub(crate) direct_bytes: u64,
}

/// Hash the file at `path` (its full logical content, holes as zeros) as the device
/// holds it.
pub(crate) fn hash_from_device(path: &Path, algo: Algo) -> Result<ReadBack> {
    hash_with(path, algo, true)
}

/// `hash_from_device`, with O_DIRECT not even tried (tests: the fallback).
pub(crate) fn hash_with(path: &Path, algo: Algo, try_direct: bool) -> Result<ReadBack> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let extents = fsutil::data_extents(&file, len)
        .with_context(|| format!("cannot map {}", path.display()))?;
    let direct = if try_direct { open_direct(path) } else { None };
    let (to_hasher, chunks) = mpsc::sync_channel::<Chunk>(BUFFERS);
    let (pool_tx, pool) = mpsc::sync_channel::<Buf>(BUFFERS);
    for _ in 0..BUFFERS {
        pool_tx
            .send(Buf::new())
            .map_err(|_| anyhow!("cannot fill the read-back pool"))?;
    }
    let mut h = Hasher::new(algo);
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    let direct_bytes = std::thread::scope(|s| -> Result<u64> {
        let reader = std::thread::Builder::new()
            .name("read-back".into())
            .spawn_scoped(s, || read_extents(&file, direct, &extents, pool, to_hasher))
            .context("cannot start a read-back thread")?;
        let mut failed = None;
        for chunk in chunks.iter() {
            match chunk {
                Chunk::Data {
                    buf,
                    skip,
                    len,
                    off,
                } => {
                    fsutil::hash_zeros(&mut h, off - pos);
                    h.update(&buf.mem[buf.start + skip..buf.start + skip + len]);
                    pos = off + len as u64;
                    data_bytes += len as u64;
                    // The reader may have ended already (the file's last chunk): fine.
                    let _ = pool_tx.try_send(buf);
                    if let Err(e) = crate::base::interrupt::check() {
                        failed = Some(e);
                        break;
                    }
                }
                Chunk::Failed(e) => {
                    failed = Some(fail(
                        Code::BadPath,
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    break;
                }
            }
        }
        drop(chunks); // a reader still sending stops
        drop(pool_tx);
        let direct_bytes = reader
            .join()
            .map_err(|_| anyhow!("the read-back thread of {} panicked", path.display()))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(direct_bytes),
        }
    })?;
    let size = len.max(pos);
    fsutil::hash_zeros(&mut h, size - pos);
    log::debug!(
        "{}: read back {data_bytes} bytes, {direct_bytes} with O_DIRECT",
        path.display()
    );
    Ok(ReadBack {
        hashed: Hashed {
            size,
            data_bytes,
            digest: h.finish_hex(),
        },
        direct_bytes,
    })
}

/// A second, O_DIRECT descriptor of `path`, where the filesystem gives one.
fn open_direct(path: &Path) -> Option<File> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            log::debug!(
                "{}: no O_DIRECT ({e}); reading it back through the page cache",
                path.display()
            );
            None
        }
    }
}

/// The reader thread: every extent in order, in chunks; returns the bytes read with
/// O_DIRECT. Stops at the first error (sent) or when the hasher is gone.
fn read_extents(
    file: &File,
    mut direct: Option<File>,
    extents: &[(u64, u64)],
    pool: mpsc::Receiver<Buf>,
    to_hasher: mpsc::SyncSender<Chunk>,
) -> u64 {
    let align = DIRECT_ALIGN as u64;
    let mut direct_bytes = 0u64;
    for &(start, elen) in extents {
        let stop = start + elen;
        let mut off = start;
        while off < stop {
            let Ok(mut buf) = pool.recv() else {
                return direct_bytes;
            };
            let r = loop {
                match &direct {
                    Some(d) => {
                        // Aligned offset and length; the bytes before `off` (a hole's
                        // zeros) are skipped, a read past the end returns short.
                        let at = off - off % align;
                        let want = (stop - at).div_ceil(align) * align;
                        let want = want.min(READ_CHUNK as u64) as usize;
                        match d.read_at(buf.space(want), at) {
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                                log::debug!(
                                    "O_DIRECT read refused ({e}); reading through the page cache"
                                );
                                direct = None;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                            Ok(n) => {
                                let end = (at + n as u64).min(stop);
                                let len = end.saturating_sub(off) as usize;
                                direct_bytes += len as u64;
                                break Ok(((off - at) as usize, len));
                            }
                        }
                    }
                    None => {
                        let want = ((stop - off) as usize).min(READ_CHUNK);
                        match file.read_at(buf.space(want), off) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                            Ok(n) => break Ok((0, n)),
                        }
                    }
                }
            };
            match r {
                Err(e) => {
                    let _ = to_hasher.send(Chunk::Failed(e));
                    return direct_bytes;
                }
                // The file shrank meanwhile: what is there, then zeros (as a copy).
                Ok((_, 0)) => return direct_bytes,
                Ok((skip, len)) => {
                    let chunk = Chunk::Data {
                        buf,
                        skip,
                        len,
                        off,
                    };
                    if to_hasher.send(chunk).is_err() {
                        return direct_bytes;
                    }
                    off += len as u64;
                }
            }
        }
    }
    direct_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::digest::hex_digest;
    use std::io::{Seek, SeekFrom, Write};

    /// A sparse file with unaligned data runs and an unaligned end.
    fn sparse_file(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let p = dir.join("f");
        let mut f = File::create(&p).unwrap();
        let mut want = vec![0u8; 9 * READ_CHUNK / 2 + 777];
        for (i, b) in want.iter_mut().enumerate().skip(100) {
            if !(3 * READ_CHUNK / 2..=4 * READ_CHUNK).contains(&i) {
                *b = (i * 7 % 251) as u8 + 1;
            }
        }
        f.write_all(&want[..3 * READ_CHUNK / 2]).unwrap();
        f.seek(SeekFrom::Start(4 * READ_CHUNK as u64 + 1)).unwrap();
        f.write_all(&want[4 * READ_CHUNK + 1..]).unwrap();
        f.sync_all().unwrap();
        (p, want)
    }

    #[test]
    fn reads_back_what_was_written_direct_or_buffered() {
        // /var/tmp is a disk filesystem (O_DIRECT taken) where /tmp may be tmpfs.
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let (p, want) = sparse_file(t.path());
        for algo in [Algo::Blake3, Algo::Sha256] {
            for try_direct in [true, false] {
                let r = hash_with(&p, algo, try_direct).unwrap();
                assert_eq!(
                    r.hashed.digest,
                    hex_digest(algo, &want),
                    "{algo} {try_direct}"
                );
                assert_eq!(r.hashed.size, want.len() as u64);
                if !try_direct {
                    assert_eq!(r.direct_bytes, 0);
                }
            }
        }
    }

    #[test]
    fn empty_and_missing_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("empty");
        File::create(&p).unwrap();
        let r = hash_from_device(&p, Algo::Blake3).unwrap();
        assert_eq!(r.hashed.digest, hex_digest(Algo::Blake3, b""));
        assert!(hash_from_device(&t.path().join("nope"), Algo::Blake3).is_err());
    }
}
