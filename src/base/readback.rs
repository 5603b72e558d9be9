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
//!
//! An environment's `data.mdb` is then read again by the check of its databases,
//! through LMDB's map: after an O_DIRECT hash, from the device a second time. So
//! `hash_through_cache` reads it once, into the page cache the check then finds: it
//! drops the file's cached pages first and proves with mincore(2) that none is left
//! (else the caller falls back to O_DIRECT), maps the file and hashes it where the
//! kernel's read-ahead puts it (no copy into our memory), the next chunks requested
//! ahead with readahead(2). Every byte hashed still came from the device. An earlier
//! try that hashed through read(2) (a copy per byte) was slower than two reads on a
//! loaded host; the mapped read is measured in bench/RESULTS.md.

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

/// Bytes hashed through the map at a time; the next `THROUGH_AHEAD` of them are
/// requested from the device before each.
const THROUGH_CHUNK: u64 = 4 << 20;
const THROUGH_AHEAD: u64 = 16 << 20;

/// A read-only shared mapping of a whole file, unmapped on drop.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn of(file: &File, len: u64) -> io::Result<Mapped> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: a new read-only mapping of a descriptor we hold; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(file),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    /// Whether any page of the file is in the page cache.
    fn any_cached(&self) -> io::Result<bool> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        // One byte per page, a window at a time (8 MiB of vector per 32 GiB).
        const WINDOW_PAGES: usize = 1 << 18;
        let mut vec = vec![0u8; WINDOW_PAGES];
        let mut off = 0usize;
        while off < self.len {
            let len = (self.len - off).min(WINDOW_PAGES * page);
            // SAFETY: [ptr+off, +len) lies in our mapping; vec holds a byte per page.
            let rc = unsafe {
                libc::mincore(
                    (self.ptr as *mut u8).add(off) as *mut libc::c_void,
                    len,
                    vec.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            if vec[..len.div_ceil(page)].iter().any(|b| b & 1 == 1) {
                return Ok(true);
            }
            off += len;
        }
        Ok(false)
    }

    fn bytes(&self, off: u64, len: u64) -> &[u8] {
        // SAFETY: the caller keeps [off, off+len) within the file, which is mapped
        // whole; the bytes are read only.
        unsafe {
            std::slice::from_raw_parts((self.ptr as *const u8).add(off as usize), len as usize)
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Hash the file at `path` as the device holds it, leaving it in the page cache for
/// a reader that follows (the environment check): its cached pages are dropped
/// first and none may be left, then it is read once through a shared map. `None`
/// when a page stayed cached (dirty, or locked by another process) or the file is
/// empty: the caller hashes it with `hash_from_device`. Like LMDB's own map, the
/// mapping assumes nobody truncates the file meanwhile.
pub(crate) fn hash_through_cache(path: &Path, algo: Algo) -> Result<Option<ReadBack>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: advice on a descriptor we hold.
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    let map = Mapped::of(&file, len).with_context(|| format!("cannot map {}", path.display()))?;
    if map
        .any_cached()
        .with_context(|| format!("cannot see the cached pages of {}", path.display()))?
    {
        log::debug!(
            "{}: still cached after dropping it; reading it with O_DIRECT",
            path.display()
        );
        return Ok(None);
    }
    let extents = fsutil::data_extents(&file, len)
        .with_context(|| format!("cannot map {}", path.display()))?;
    let mut h = Hasher::new(algo);
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    let mut requested = 0u64;
    for &(start, elen) in &extents {
        let stop = (start + elen).min(len);
        fsutil::hash_zeros(&mut h, start.saturating_sub(pos));
        let mut off = start;
        while off < stop {
            let n = THROUGH_CHUNK.min(stop - off);
            let want = (off + n + THROUGH_AHEAD).min(stop);
            if requested < want {
                let from = requested.max(off);
                // SAFETY: readahead on a descriptor we hold; it only fills the cache.
                unsafe { libc::readahead(fd, from as i64, (want - from) as usize) };
                requested = want;
            }
            h.update(map.bytes(off, n));
            off += n;
            data_bytes += n;
            crate::base::interrupt::check()?;
        }
        pos = stop;
    }
    fsutil::hash_zeros(&mut h, len - pos.min(len));
    log::debug!(
        "{}: read {data_bytes} bytes from the device through the page cache",
        path.display()
    );
    Ok(Some(ReadBack {
        hashed: Hashed {
            size: len,
            data_bytes,
            digest: h.finish_hex(),
        },
        direct_bytes: data_bytes,
    }))
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
    fn through_the_cache_it_is_read_from_the_device_and_left_cached() {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let (p, want) = sparse_file(t.path());
        // Cached before: the call must drop the pages to read from the device.
        std::fs::read(&p).unwrap();
        let f = File::open(&p).unwrap();
        let map = Mapped::of(&f, want.len() as u64).unwrap();
        assert!(map.any_cached().unwrap());
        for algo in [Algo::Blake3, Algo::Sha256] {
            let r = hash_through_cache(&p, algo)
                .unwrap()
                .expect("nothing stays cached on a disk filesystem");
            assert_eq!(r.hashed.digest, hex_digest(algo, &want), "{algo}");
            assert_eq!(r.hashed.size, want.len() as u64);
            assert_eq!(r.direct_bytes, r.hashed.data_bytes);
            assert!(
                r.hashed.data_bytes < want.len() as u64,
                "the hole is not read"
            );
            // What the environment check reads next is in the cache now.
            assert!(map.any_cached().unwrap());
        }
    }

    #[test]
    fn a_page_that_stays_cached_sends_the_file_to_o_direct() {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let (p, want) = sparse_file(t.path());
        let f = File::open(&p).unwrap();
        let map = Mapped::of(&f, want.len() as u64).unwrap();
        // A locked page cannot be dropped: the file cannot be shown uncached.
        // SAFETY: the first page of our own mapping.
        assert_eq!(unsafe { libc::mlock(map.ptr, 4096) }, 0);
        assert!(hash_through_cache(&p, Algo::Blake3).unwrap().is_none());
        // SAFETY: as above.
        unsafe { libc::munlock(map.ptr, 4096) };
        let empty = t.path().join("empty");
        File::create(&empty).unwrap();
        assert!(hash_through_cache(&empty, Algo::Blake3).unwrap().is_none());
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
