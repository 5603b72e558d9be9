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
//! [`copy_hashed`] also hashes the copy, read back range by range right after it was
//! written (from the page cache it was just written to; a reflink's shared extents
//! are read once, from the device): the digest is of what the copy holds.
//! [`copy_unhashed`] reads nothing back: a reflink reads nothing at all.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::base::digest::{Algo, Hasher};
use crate::base::exit::{fail, Code};
use crate::base::fsutil::{self, write_error, Hashed};

/// Bytes moved by one `copy_file_range` call and then read back: large enough for
/// the device to stream, small enough that the range is still in the page cache.
const RANGE: usize = 4 << 20;

/// How the bytes of a file were moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// A reflink: the copy shares the source's extents.
    Cloned,
    /// `copy_file_range` of each data extent.
    Ranged,
    /// Read into memory and written (`copy_file_range` refused).
    Buffered,
}

/// Copy `src` into the new, empty `dst` (holes stay holes) and hash the copy, read
/// back: the full logical content, holes as zeros.
pub(crate) fn copy_hashed(
    src: &File,
    sp: &Path,
    dst: &File,
    dp: &Path,
    algo: Algo,
) -> Result<(Hashed, How)> {
    copy_extents(src, sp, dst, dp, Some(algo), &mut |_| Ok(()))
}

/// [`copy_hashed`], `on_bytes` told the bytes of each range copied (a reflink's
/// once, when hashed) and failing the copy when it fails.
pub(crate) fn copy_hashed_with(
    src: &File,
    sp: &Path,
    dst: &File,
    dp: &Path,
    algo: Algo,
    on_bytes: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(Hashed, How)> {
    copy_extents(src, sp, dst, dp, Some(algo), on_bytes)
}

/// Copy `src` into the new, empty `dst` (holes stay holes), reading nothing back;
/// how, and the bytes of data written (0 for a reflink, which writes none).
pub(crate) fn copy_unhashed(src: &File, sp: &Path, dst: &File, dp: &Path) -> Result<(How, u64)> {
    let (h, how) = copy_extents(src, sp, dst, dp, None, &mut |_| Ok(()))?;
    Ok((how, h.data_bytes))
}

/// The copy, hashed as read back when `algo` is given (else its digest is empty,
/// and a reflink counts no data bytes: it wrote none).
fn copy_extents(
    src: &File,
    sp: &Path,
    dst: &File,
    dp: &Path,
    algo: Option<Algo>,
    on_bytes: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(Hashed, How)> {
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
        // Without it the whole copy stayed dirty in the page cache until the
        // syncfs at the end, which then waited for all of it.
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let sp = t.path().join("s");
        let bytes: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&sp, &bytes).unwrap();
        File::open(&sp).unwrap().sync_all().unwrap();
        let dp = t.path().join("d");
        let dst = new_rw(&dp);
        let (h, how) =
            copy_hashed(&File::open(&sp).unwrap(), &sp, &dst, &dp, Algo::Blake3).unwrap();
        assert_eq!(h.digest, hex_digest(Algo::Blake3, &bytes));
        let Some(crate::base::cachestat::Cached {
            pages: cached,
            dirty,
        }) = crate::base::cachestat::of(&dst, 0)
        else {
            eprintln!("no cachestat(2) on this kernel: not checked");
            return;
        };
        assert!(cached > 0, "{how:?}: nothing of the copy in the page cache");
        assert!(
            dirty * 4 < cached,
            "{how:?}: {dirty} of the copy's {cached} cached pages still dirty after the copy"
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
        for algo in [Algo::Blake3, Algo::Sha256] {
            let dp = t.path().join(format!("d-{algo}"));
            let dst = new_rw(&dp);
            let (h, how) = copy_hashed(&src, &sp, &dst, &dp, algo).unwrap();
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
        )
        .unwrap();
        let mut want = vec![0u8; 1 << 20];
        want[..3].copy_from_slice(b"abc");
        assert_eq!(h.digest, hex_digest(Algo::Blake3, &want));
        assert_eq!(std::fs::metadata(&dp2).unwrap().len(), 1 << 20);
    }
}
