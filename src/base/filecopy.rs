// SPDX-License-Identifier: Apache-2.0
//! Copying one file of a backup: the one implementation every copy of a backup
//! uses (issue 36): the restore's checked copy (`restore::copy`) and the drill's
//! scratch copy (`drill::scratch`).
//!
//! A file is copied by a reflink (`FICLONE`: XFS, btrfs) where the filesystem
//! shares extents between the two, else by `copy_file_range` of each data extent
//! (holes stay holes; the kernel moves the bytes, page cache to page cache, or
//! server-side on NFS), else read and written through a buffer (a filesystem or
//! kernel that refuses `copy_file_range`). The next range of the source is asked of
//! the device (`POSIX_FADV_WILLNEED`) before the current one is copied.
//!
//! [`copy_hashed`] also hashes the copy. When the caller asks for it (a copy of
//! more than a sixteenth of the memory available: [`direct_pays`]), where the
//! destination takes `O_DIRECT` (ext4, XFS, btrfs, …) and the file is not a
//! reflink, each range of the source is
//! read once into an aligned buffer, hashed there, and written from that same buffer
//! with `O_DIRECT` by a writer thread while the next range is read and hashed: the
//! digest of what was read is the digest of what was written, nothing is copied
//! into the page cache or left dirty for the final `syncfs`, and the device writes
//! while the CPU reads and hashes ([`How::Direct`]; bench/RESULTS.md, issue 36's
//! fourth pass). Elsewhere the copy is read back range by range right after it
//! was written (from the page cache it was just written to; a reflink's shared
//! extents are read once, from the device): the digest is of what the copy holds.
//! [`copy_unhashed`] reads nothing back: a reflink reads nothing at all.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;

use anyhow::{anyhow, Context, Result};

use crate::base::digest::{Algo, Hasher};
use crate::base::exit::{fail, Code};
use crate::base::fsutil::{self, write_error, Hashed, DIRECT_ALIGN};

/// Bytes moved by one `copy_file_range` call and then read back: large enough for
/// the device to stream, small enough that the range is still in the page cache.
const RANGE: usize = 4 << 20;

/// Files shorter than this are copied by `copy_file_range` even where `O_DIRECT`
/// is available: a writer thread and its buffers cost more than they save.
const DIRECT_MIN: u64 = 1 << 20;

/// Buffers of [`RANGE`] bytes in flight in a direct copy: one being read and
/// hashed, one queued, one being written.
const BUFFERS: usize = 3;

/// How the bytes of a file were moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// A reflink: the copy shares the source's extents.
    Cloned,
    /// Read and hashed into a buffer, written from it with `O_DIRECT`.
    Direct,
    /// `copy_file_range` of each data extent.
    Ranged,
    /// Read into memory and written (`copy_file_range` refused).
    Buffered,
}

/// Whether a checked copy of `bytes` in all should go around the page cache
/// ([`How::Direct`]): when it is more than a sixteenth of the memory available.
/// Below that the page cache takes the copy at memory speed and the device
/// writes it behind (`copy_file_range` and writeback: as fast or faster on every
/// shape at 0.5–0.7 GB of data on the bench's 23 GiB guest). Above it the cache
/// must hold the source and the copy, evicting (and, on a guest that hands free
/// memory back to its host, faulting in from the host) as much again, and the
/// cached copy was measured at 0.9 then 3.5 s per GiB for 3.3 GB of data and 4.1–
/// 4.4 for 12 GB, against 1.1–1.5 around the cache, near the device's floor
/// (bench/RESULTS.md, issue 36's fourth pass). `SYNBACKUP_COPY_DIRECT=always` or
/// `never` overrides it (tests and benchmarks).
pub(crate) fn direct_pays(bytes: u64) -> bool {
    match std::env::var("SYNBACKUP_COPY_DIRECT").as_deref() {
        Ok("always") => return true,
        Ok("never") => return false,
        _ => {}
    }
    mem_available().is_some_and(|avail| bytes.saturating_mul(16) > avail)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Copy `src` into the new, empty `dst` (holes stay holes) and hash the copy: the
/// full logical content, holes as zeros. With `direct` (see [`direct_pays`]) and
/// where the filesystem takes it, through a buffer and `O_DIRECT`; else through
/// the page cache, hashed as read back.
pub(crate) fn copy_hashed(
    src: &File,
    sp: &Path,
    dst: &File,
    dp: &Path,
    algo: Algo,
    direct: bool,
) -> Result<(Hashed, How)> {
    copy_extents(src, sp, dst, dp, Some((algo, direct)), &mut |_| Ok(()))
}

/// [`copy_hashed`], `on_bytes` told the bytes of each range copied (a reflink's
/// once, when hashed) and failing the copy when it fails.
pub(crate) fn copy_hashed_with(
    src: &File,
    sp: &Path,
    dst: &File,
    dp: &Path,
    algo: Algo,
    direct: bool,
    on_bytes: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(Hashed, How)> {
    copy_extents(src, sp, dst, dp, Some((algo, direct)), on_bytes)
}

/// Copy `src` into the new, empty `dst` (holes stay holes), reading nothing back;
/// how, and the bytes of data written (0 for a reflink, which writes none).
pub(crate) fn copy_unhashed(src: &File, sp: &Path, dst: &File, dp: &Path) -> Result<(How, u64)> {
    let (h, how) = copy_extents(src, sp, dst, dp, None, &mut |_| Ok(()))?;
    Ok((how, h.data_bytes))
}

/// The copy, hashed when `checked` gives the algorithm (and whether to try
/// O_DIRECT); else its digest is empty, and a reflink counts no data bytes: it
/// wrote none.
fn copy_extents(
    src: &File,
    sp: &Path,
    dst: &File,
    dp: &Path,
    checked: Option<(Algo, bool)>,
    on_bytes: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(Hashed, How)> {
    let algo = checked.map(|(algo, _)| algo);
    let try_direct = checked.is_some_and(|(_, direct)| direct);
    crate::base::interrupt::check()?;
    if clone(src, dst) {
        log::trace!("{}: reflinked", dp.display());
        let h = match algo {
            Some(algo) => {
                let h = fsutil::hash_file(dst, dp, algo)?;
                on_bytes(h.data_bytes)?;
                h
            }
            None => Hashed {
                size: dst.metadata().map_or(0, |m| m.len()),
                data_bytes: 0,
                digest: String::new(),
            },
        };
        return Ok((h, How::Cloned));
    }
    let len = src
        .metadata()
        .with_context(|| format!("cannot stat {}", sp.display()))?
        .len();
    let extents =
        fsutil::data_extents(src, len).with_context(|| format!("cannot map {}", sp.display()))?;
    if let Some(algo) = algo.filter(|_| try_direct && len >= DIRECT_MIN) {
        if let Some(direct) = open_direct(dst, dp) {
            return copy_direct(src, sp, dst, dp, direct, &extents, len, algo, on_bytes);
        }
    }
    let mut h = algo.map(Hasher::new);
    let mut buf = Vec::new();
    let mut ranged = true;
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    'extents: for (start, elen) in extents {
        let stop = start + elen;
        let mut off = start;
        while off < stop {
            crate::base::interrupt::check()?;
            let want = ((stop - off) as usize).min(RANGE);
            // The next range asked of the device now, read while this one is
            // copied and hashed.
            read_ahead(src, off + want as u64, stop);
            let n = if ranged {
                match copy_range(src, dst, off, want) {
                    Ok(n) => n,
                    Err(e) if off == start && data_bytes == 0 && refused(&e) => {
                        log::debug!(
                            "{}: copy_file_range refused ({e}); reading and writing",
                            dp.display()
                        );
                        ranged = false;
                        continue;
                    }
                    Err(e) => return Err(range_error(sp, dp, e)),
                }
            } else {
                buf.resize(RANGE, 0);
                let n = src.read_at(&mut buf[..want], off).map_err(|e| {
                    fail(Code::BadPath, format!("cannot read {}: {e}", sp.display()))
                })?;
                dst.write_all_at(&buf[..n], off)
                    .map_err(|e| write_error(dp, e))?;
                n
            };
            if n == 0 {
                // The source shrank meanwhile: what is there, then zeros; the
                // digest tells.
                break 'extents;
            }
            if h.is_some() {
                // A copy that is checked is one that will be made durable: the
                // device writes this range while the next ones are copied and
                // hashed; the caller's syncfs waits for what is left and reports
                // errors.
                start_writeback(dst, dp, off, n)?;
            }
            if let Some(h) = h.as_mut() {
                // The range just written, read back from the page cache (hashed
                // from the buffer it was written from when that is where it came
                // from).
                if ranged {
                    buf.resize(RANGE, 0);
                    read_back(dst, dp, &mut buf[..n], off)?;
                }
                fsutil::hash_zeros(h, off - pos);
                h.update(&buf[..n]);
            }
            off += n as u64;
            pos = off;
            data_bytes += n as u64;
            on_bytes(n as u64)?;
            crate::base::fault::point("copy-mid-file")?;
        }
    }
    let size = len.max(pos);
    dst.set_len(size).map_err(|e| write_error(dp, e))?;
    let how = if ranged { How::Ranged } else { How::Buffered };
    let digest = h.map_or(String::new(), |mut h| {
        fsutil::hash_zeros(&mut h, size - pos);
        h.finish_hex()
    });
    Ok((
        Hashed {
            size,
            data_bytes,
            digest,
        },
        how,
    ))
}

/// A second descriptor of the new file `dst` (through `/proc/self/fd`: the same
/// open file, no path looked up again) with `O_DIRECT`, where its filesystem takes
/// it; None elsewhere (the copy goes through the page cache).
fn open_direct(dst: &File, dp: &Path) -> Option<File> {
    let fd = format!("/proc/self/fd/{}", dst.as_raw_fd());
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
        .open(&fd)
    {
        Ok(f) => Some(f),
        Err(e) => {
            log::debug!(
                "{}: no O_DIRECT ({e}); copying through the page cache",
                dp.display()
            );
            None
        }
    }
}

/// One range of the source, read and hashed, on its way to the writer.
struct Block {
    buf: Vec<u8>,
    off: u64,
    n: usize,
}

/// The buffers of direct copies that ended, kept for the next: a restore of many
/// files would otherwise fault in fresh pages for every one.
static SPARE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// A buffer of [`RANGE`] bytes at a [`DIRECT_ALIGN`]-aligned address (see
/// [`aligned`]): a spare one, else a new one.
fn new_buffer() -> Vec<u8> {
    let spare = SPARE.lock().ok().and_then(|mut s| s.pop());
    spare.unwrap_or_else(|| vec![0u8; RANGE + DIRECT_ALIGN])
}

/// Keep the buffers of a direct copy that ended for the next one.
fn keep_buffers(free: mpsc::Receiver<Vec<u8>>) {
    if let Ok(mut spare) = SPARE.lock() {
        let room = BUFFERS.saturating_sub(spare.len());
        spare.extend(free.try_iter().take(room));
    }
}

/// The aligned [`RANGE`] bytes of a [`new_buffer`] (never reallocated, so the
/// offset of its aligned start never moves).
fn aligned(buf: &mut [u8]) -> &mut [u8] {
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    &mut buf[start..start + RANGE]
}

/// The checked copy through `O_DIRECT` (`direct`, a descriptor of `dst`): this
/// thread reads each range of the source's data extents into a buffer and hashes
/// it there; a writer thread writes the buffer at the same offset while the next
/// range is read. Holes stay holes. A write error stops the reading and is the
/// one reported.
#[allow(clippy::too_many_arguments)]
fn copy_direct(
    src: &File,
    sp: &Path,
    dst: &File,
    dp: &Path,
    direct: File,
    extents: &[(u64, u64)],
    len: u64,
    algo: Algo,
    on_bytes: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(Hashed, How)> {
    let (to_writer, todo) = mpsc::sync_channel::<Block>(1);
    let (to_reader, free) = mpsc::channel::<Vec<u8>>();
    for _ in 0..BUFFERS {
        // The receiver is right here: the send cannot fail.
        let _ = to_reader.send(new_buffer());
    }
    let (read, wrote) = std::thread::scope(|s| {
        let writer = std::thread::Builder::new()
            .name("copy-write".into())
            .spawn_scoped(s, move || write_blocks(todo, to_reader, direct, dst, dp))
            .context("cannot start the copy's writer thread");
        let writer = match writer {
            Ok(w) => w,
            Err(e) => return (Err(e), Ok(0)),
        };
        let read = read_and_hash(src, sp, extents, algo, &free, &to_writer, on_bytes);
        drop(to_writer);
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the writer of {} panicked", dp.display())));
        (read, wrote)
    });
    keep_buffers(free);
    // A write error first: it is why the reading stopped.
    let direct_bytes = wrote?;
    let (h, pos, data_bytes) = read?;
    log::trace!(
        "{}: {data_bytes} bytes read and hashed, {direct_bytes} written with O_DIRECT",
        dp.display()
    );
    let size = len.max(pos);
    dst.set_len(size).map_err(|e| write_error(dp, e))?;
    let mut h = h;
    fsutil::hash_zeros(&mut h, size - pos);
    Ok((
        Hashed {
            size,
            data_bytes,
            digest: h.finish_hex(),
        },
        How::Direct,
    ))
}

/// The reading side of [`copy_direct`]: the hash so far, where the data ended and
/// the bytes of data read.
fn read_and_hash(
    src: &File,
    sp: &Path,
    extents: &[(u64, u64)],
    algo: Algo,
    free: &mpsc::Receiver<Vec<u8>>,
    to_writer: &mpsc::SyncSender<Block>,
    on_bytes: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(Hasher, u64, u64)> {
    let mut h = Hasher::new(algo);
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    let writer_stopped = || anyhow!("the copy's writer stopped");
    'extents: for &(start, elen) in extents {
        let stop = start + elen;
        let mut off = start;
        while off < stop {
            crate::base::interrupt::check()?;
            let want = ((stop - off) as usize).min(RANGE);
            read_ahead(src, off + want as u64, stop);
            let mut buf = free.recv().map_err(|_| writer_stopped())?;
            let n = read_full(src, sp, &mut aligned(&mut buf)[..want], off)?;
            if n == 0 {
                // The source shrank meanwhile: what is there, then zeros; the
                // digest tells.
                break 'extents;
            }
            fsutil::hash_zeros(&mut h, off - pos);
            h.update(&aligned(&mut buf)[..n]);
            to_writer
                .send(Block { buf, off, n })
                .map_err(|_| writer_stopped())?;
            off += n as u64;
            pos = off;
            data_bytes += n as u64;
            on_bytes(n as u64)?;
            // A test stops a copy here: half a file read, a block in flight.
            crate::base::fault::point("copy-mid-file")?;
        }
    }
    Ok((h, pos, data_bytes))
}

/// Read up to `buf.len()` bytes of `f` at `off`: fewer only at its end.
fn read_full(f: &File, path: &Path, buf: &mut [u8], off: u64) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(fail(
                    Code::BadPath,
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        }
    }
    Ok(got)
}

/// The writing side of [`copy_direct`]: each block at its offset, with `O_DIRECT`
/// (a short last block padded with zeros to the alignment: the copy's length is
/// set after), through the page cache where the offset is not aligned or the
/// filesystem refuses a direct write (EINVAL; the rest then too). Each buffer goes
/// back to the reader once written. The bytes written with `O_DIRECT`.
fn write_blocks(
    todo: mpsc::Receiver<Block>,
    to_reader: mpsc::Sender<Vec<u8>>,
    direct: File,
    dst: &File,
    dp: &Path,
) -> Result<u64> {
    let mut direct = Some(direct);
    let mut direct_bytes = 0u64;
    for mut b in todo {
        let data = aligned(&mut b.buf);
        let mut written = false;
        if let Some(d) = direct.as_ref().filter(|_| b.off % DIRECT_ALIGN as u64 == 0) {
            let padded = b.n.next_multiple_of(DIRECT_ALIGN);
            data[b.n..padded].fill(0);
            match d.write_all_at(&data[..padded], b.off) {
                Ok(()) => {
                    direct_bytes += b.n as u64;
                    written = true;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::debug!(
                        "{}: O_DIRECT write refused ({e}); writing through the page cache",
                        dp.display()
                    );
                    direct = None;
                }
                Err(e) => return Err(write_error(dp, e)),
            }
        }
        if !written {
            dst.write_all_at(&data[..b.n], b.off)
                .map_err(|e| write_error(dp, e))?;
            start_writeback(dst, dp, b.off, b.n)?;
        }
        // The reader may have stopped: then the buffer is not needed.
        let _ = to_reader.send(b.buf);
    }
    Ok(direct_bytes)
}

/// Start writing the `len` bytes of `f` at `off` back to the device now
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: it waits for nothing and makes
/// nothing durable; the copy's `syncfs` does). Without it, a warm restore copied
/// and hashed everything first and only then waited for the device at the syncfs,
/// as `cp` + `sync` does. A failure of the device fails the copy; a file system
/// without it is left to the syncfs.
fn start_writeback(f: &File, path: &Path, off: u64, len: usize) -> Result<()> {
    // SAFETY: a valid descriptor; the call only starts writeback of the range.
    let r = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE | libc::EOPNOTSUPP) => Ok(()),
        _ => Err(write_error(path, e)),
    }
}

/// Ask the kernel to read the range after `from` (up to [`RANGE`], within the
/// extent ending at `stop`) into the page cache in the background (advice only).
fn read_ahead(src: &File, from: u64, stop: u64) {
    if from < stop {
        let len = (stop - from).min(RANGE as u64);
        // SAFETY: a valid descriptor; advice only, its result does not matter.
        unsafe {
            libc::posix_fadvise(
                src.as_raw_fd(),
                from as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }
}

/// A reflink of the whole of `src` into `dst` (FICLONE), where the filesystem has
/// them and both are on it; false otherwise (nothing was written).
fn clone(src: &File, dst: &File) -> bool {
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    r == 0
}

/// One `copy_file_range` of up to `len` bytes at `off` (same offset in both).
fn copy_range(src: &File, dst: &File, off: u64, len: usize) -> std::io::Result<usize> {
    let mut off_in = off as i64;
    let mut off_out = off as i64;
    loop {
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(std::io::Error::from),
        }
    }
}

/// `copy_file_range` is not for these files (another filesystem on an old kernel,
/// a filesystem without it): read and write instead.
fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::EBADF)
    )
}

/// A failed `copy_file_range`: a full disk is the destination's, anything else
/// named with both paths.
fn range_error(sp: &Path, dp: &Path, e: std::io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS) => write_error(dp, e),
        _ => anyhow::Error::new(e).context(format!(
            "cannot copy {} to {}",
            sp.display(),
            dp.display()
        )),
    }
}

/// Fill `buf` with the bytes of `f` at `off` (just written: in the page cache).
fn read_back(f: &File, path: &Path, buf: &mut [u8], off: u64) -> Result<()> {
    f.read_exact_at(buf, off)
        .with_context(|| format!("cannot read back {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::digest::hex_digest;
    use std::os::unix::fs::MetadataExt;

    fn new_rw(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn a_checked_copy_is_sent_to_the_device_as_it_is_made() {
        // Through the page cache: without the writeback the whole copy stayed
        // dirty until the syncfs at the end, which then waited for all of it.
        // Direct: nothing of it in the page cache at all.
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let sp = t.path().join("s");
        let bytes: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&sp, &bytes).unwrap();
        File::open(&sp).unwrap().sync_all().unwrap();
        for direct in [false, true] {
            let dp = t.path().join(format!("d-{direct}"));
            let dst = new_rw(&dp);
            let (h, how) = copy_hashed(
                &File::open(&sp).unwrap(),
                &sp,
                &dst,
                &dp,
                Algo::Blake3,
                direct,
            )
            .unwrap();
            assert_eq!(h.digest, hex_digest(Algo::Blake3, &bytes));
            let Some(crate::base::cachestat::Cached {
                pages: cached,
                dirty,
            }) = crate::base::cachestat::of(&dst, 0)
            else {
                eprintln!("no cachestat(2) on this kernel: not checked");
                return;
            };
            if how == How::Direct {
                // Written from the hashed buffer straight to the device: nothing
                // copied into the page cache, nothing left dirty for the syncfs.
                assert_eq!(
                    (cached, dirty),
                    (0, 0),
                    "cached and dirty pages of a direct copy"
                );
                continue;
            }
            assert!(cached > 0, "{how:?}: nothing of the copy in the page cache");
            assert!(
                dirty * 4 < cached,
                "{how:?}: {dirty} of the copy's {cached} cached pages still dirty after the copy"
            );
        }
    }

    #[test]
    fn a_direct_copy_of_a_file_of_odd_length_is_the_file() {
        // O_DIRECT writes whole aligned blocks: the last one is padded and the
        // copy's length set after; a hole in the middle stays a hole.
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let sp = t.path().join("s");
        let len = (9u64 << 20) + 123;
        let mut want = vec![0u8; len as usize];
        {
            let f = File::create(&sp).unwrap();
            f.set_len(len).unwrap();
            for (at, n) in [
                (0usize, 3 << 20),
                ((6 << 20) + 4096, (3 << 20) - 4096 + 123),
            ] {
                let bytes: Vec<u8> = (0..n).map(|i| (i % 253) as u8 + 1).collect();
                f.write_all_at(&bytes, at as u64).unwrap();
                want[at..at + n].copy_from_slice(&bytes);
            }
            f.sync_all().unwrap();
        }
        let dp = t.path().join("d");
        let dst = new_rw(&dp);
        let (h, how) = copy_hashed(
            &File::open(&sp).unwrap(),
            &sp,
            &dst,
            &dp,
            Algo::Blake3,
            true,
        )
        .unwrap();
        if how != How::Direct {
            eprintln!("{how:?}: no O_DIRECT on this filesystem: the direct path not checked");
        }
        assert_eq!(h.digest, hex_digest(Algo::Blake3, &want), "{how:?}");
        assert_eq!(h.size, len);
        assert_eq!(std::fs::metadata(&dp).unwrap().len(), len);
        assert!(
            std::fs::read(&dp).unwrap() == want,
            "{how:?}: content differs"
        );
        let meta = std::fs::metadata(&dp).unwrap();
        assert!(
            meta.blocks() * 512 < (8 << 20),
            "{how:?}: the hole was filled"
        );
    }

    #[test]
    fn a_sparse_file_is_copied_sparse_and_hashed_as_read_back() {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let sp = t.path().join("s");
        let src = File::create(&sp).unwrap();
        src.set_len(64 << 20).unwrap();
        let mut want = vec![0u8; 64 << 20];
        for (at, len) in [(5u64 << 20, 9 << 20), ((40 << 20) + 123, 777)] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            src.write_all_at(&bytes, at).unwrap();
            want[at as usize..at as usize + len].copy_from_slice(&bytes);
        }
        src.sync_all().unwrap();
        let src = File::open(&sp).unwrap();
        for (algo, direct) in [
            (Algo::Blake3, true),
            (Algo::Blake3, false),
            (Algo::Sha256, false),
        ] {
            let dp = t.path().join(format!("d-{algo}-{direct}"));
            let dst = new_rw(&dp);
            let (h, how) = copy_hashed(&src, &sp, &dst, &dp, algo, direct).unwrap();
            assert_eq!(h.digest, hex_digest(algo, &want), "{how:?}");
            assert_eq!(h.size, 64 << 20);
            assert!(std::fs::read(&dp).unwrap() == want, "content differs");
            let meta = std::fs::metadata(&dp).unwrap();
            assert!(meta.blocks() * 512 < (20 << 20), "holes were filled");
        }
        // Unhashed (the drill's scratch copy): the same bytes, the same holes.
        let dp = t.path().join("d-unhashed");
        let (how, data) = copy_unhashed(&src, &sp, &new_rw(&dp), &dp).unwrap();
        assert!(
            std::fs::read(&dp).unwrap() == want,
            "content differs ({how:?})"
        );
        // Data extents are whole blocks: the 777 bytes take one.
        let extents = (9 << 20) + 777..=(9 << 20) + 8192;
        assert!(
            how == How::Cloned || extents.contains(&data),
            "{how:?} {data}"
        );
        let meta = std::fs::metadata(&dp).unwrap();
        assert!(meta.blocks() * 512 < (20 << 20), "holes were filled");
    }

    #[test]
    fn an_empty_file_and_a_file_ending_in_a_hole() {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let sp = t.path().join("s");
        File::create(&sp).unwrap();
        let dp = t.path().join("d");
        let (h, _) = copy_hashed(
            &File::open(&sp).unwrap(),
            &sp,
            &new_rw(&dp),
            &dp,
            Algo::Blake3,
            true,
        )
        .unwrap();
        assert_eq!(h.digest, hex_digest(Algo::Blake3, b""));
        let f = File::create(&sp).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        f.set_len(1 << 20).unwrap();
        let dp2 = t.path().join("d2");
        let (h, _) = copy_hashed(
            &File::open(&sp).unwrap(),
            &sp,
            &new_rw(&dp2),
            &dp2,
            Algo::Blake3,
            true,
        )
        .unwrap();
        let mut want = vec![0u8; 1 << 20];
        want[..3].copy_from_slice(b"abc");
        assert_eq!(h.digest, hex_digest(Algo::Blake3, &want));
        assert_eq!(std::fs::metadata(&dp2).unwrap().len(), 1 << 20);
    }
}
