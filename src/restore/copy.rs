// SPDX-License-Identifier: Apache-2.0
//! A restore's copy of the backup, checked as it is made: each byte of the backup
//! is read once (issue 36).
//!
//! A restore used to verify the backup first (every file read from the device
//! with O_DIRECT, every environment read again through LMDB's map) and then copy
//! it (read a third time, through the page cache). Now:
//!
//! 1. [`checked_manifest`]: the backup's structure, reading no file's data
//!    (`verify::check_structure`): the manifest and its own digest, the layout,
//!    every listed file there with its size, mode and xattrs, nothing unlisted.
//! 2. [`Checker::copy_file`]: each file copied once, by a reflink (`FICLONE`:
//!    XFS, btrfs) where the filesystem shares extents, else `copy_file_range` of
//!    each data extent (holes stay holes; the kernel moves the bytes, page cache
//!    to page cache, or server-side on NFS), else read and write. The copy is
//!    then hashed (the manifest's digest: BLAKE3, or SHA-256 before format 3) by
//!    reading back each range right after it was written, from the page cache it
//!    was just written to (a reflink's shared extents are read once, from the
//!    device), and compared with the manifest: what is checked is what will be
//!    swapped in. A mismatch stops the copy. The next range of the backup is asked
//!    of the device (`POSIX_FADV_WILLNEED`) before the current one is copied, so
//!    the device reads while the range is copied and hashed: measured cold on the
//!    mixed shape (0.52 GB, three paired rounds on a shared 2-core guest), 1.85,
//!    1.33 and 0.87 s with it against 2.81, 2.35 and 1.43 s without; reading and
//!    writing through a buffer instead of `copy_file_range` took 2.09, 1.45 and
//!    1.41 s with the same advice. Each range copied is sent to the device at once
//!    (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which waits for nothing): the
//!    device writes while the next ranges are copied and hashed, instead of
//!    everything at the final `syncfs` (bench/RESULTS.md, issue 36's third pass).
//! 3. [`Checker::env_copied`]: each environment of the copy, as soon as its
//!    `data.mdb` is copied and matched, opened read-only and every database read
//!    to its end with its entry count, on a thread of its own while the next files
//!    are copied (its pages are in the page cache: no second read of the device);
//!    [`Checker::finish`] waits for those checks and compares the nexus index of
//!    the copy with what the frozen cell reported, as `verify` does.
//!
//! Any failure marks the backup damaged (`engine::damaged`, as `verify` does; the
//! problems in the error, exit 6) before anything is stopped or swapped: the
//! caller's staging copy is removed and the service directory untouched. A pass
//! leaves a damaged mark where it was: the bytes came through the page cache, not
//! necessarily from the device (`synbackup verify` reads the device and removes it).
//!
//! The fault point `restore-mid-copy` (after each file) lets a test interrupt
//! the copy half way.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

use crate::base::digest::{Algo, Hasher};
use crate::base::exit::{fail, Code};
use crate::base::fault;
use crate::base::fsutil::{self, write_error, Hashed};
use crate::base::pathtext::Escaped;
use crate::engine::damaged;
use crate::engine::manifest::{path_key, MANIFEST_NAME};
use crate::engine::manifest::{path_of, Manifest, CERTS_DIR};
use crate::engine::verify;

/// Bytes moved by one `copy_file_range` call and then read back: large enough for
/// the device to stream, small enough that the range is still in the page cache.
const RANGE: usize = 4 << 20;

/// Step 1: the backup's structure checked without reading its data; its manifest.
/// A problem marks the backup damaged and fails (exit 6) naming every problem.
pub(crate) fn checked_manifest(backup: &Path) -> Result<Manifest> {
    log::info!(
        "checking {} (its files are checked as they are copied)",
        backup.escaped()
    );
    let (m, report) = match verify::check_structure(backup) {
        Ok(checked) => checked,
        Err(e) => {
            if backup.join(MANIFEST_NAME).is_file() {
                damaged::mark(backup, &[format!("{e:#}")]);
            }
            return Err(e);
        }
    };
    if !report.ok() {
        return Err(failed(backup, &report.problems));
    }
    Ok(m)
}

/// `restore --certs`: the certificate directory the backup carries (not part of
/// the staging copy) hashed now, before anything is stopped, against the manifest.
/// A mismatch marks the backup damaged and fails.
pub(crate) fn check_carried_certs(backup: &Path, m: &Manifest) -> Result<()> {
    let algo = m.algo();
    let prefix = format!("{CERTS_DIR}/");
    let mut problems = Vec::new();
    for f in m.files.iter().filter(|f| f.path.starts_with(&prefix)) {
        let path = backup.join(path_of(&f.path));
        crate::base::interrupt::check()?;
        match File::open(&path)
            .map_err(anyhow::Error::from)
            .and_then(|file| fsutil::hash_file(&file, &path, algo))
        {
            Ok(h) if h.size == f.size && h.digest == f.digest(algo) => {}
            Ok(_) => problems.push(format!(
                "{}: {} mismatch (content changed or damaged)",
                path.display(),
                algo.label()
            )),
            Err(e) => problems.push(format!("{}: {e:#}", path.display())),
        }
    }
    if !problems.is_empty() {
        return Err(failed(backup, &problems));
    }
    Ok(())
}

/// The bytes the copy of the backup's files takes in `dir`'s file system: what
/// they take in the backup (holes stay holes in the copy), less the data of the
/// links the backup followed, which goes elsewhere.
pub(crate) fn allocated_here(
    backup: &Path,
    m: &Manifest,
    links: &[crate::restore::linked::Linked],
    dir: &Path,
) -> u64 {
    m.files
        .iter()
        .filter(|f| {
            crate::restore::linked::dest(links, dir, &path_of(&f.path))
                .is_some_and(|p| p.starts_with(dir))
        })
        .map(|f| {
            std::fs::symlink_metadata(backup.join(path_of(&f.path)))
                .map_or(f.size, |meta| fsutil::allocated(&meta))
        })
        .sum()
}

/// Mark the backup damaged and say why it is not restored.
fn failed(backup: &Path, problems: &[String]) -> anyhow::Error {
    damaged::mark(backup, problems);
    fail(
        Code::Verify,
        format!(
            "{} failed verification, not restored: {}",
            backup.escaped(),
            problems.join("; ")
        ),
    )
}

/// How a file was copied (counted, for the log).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Ways {
    pub(crate) cloned: u64,
    pub(crate) ranged: u64,
    pub(crate) buffered: u64,
}

/// Steps 2 and 3 for one restore: the files copied and hashed, the environments
/// of the copy checked.
pub(crate) struct Checker<'m> {
    backup: PathBuf,
    manifest: &'m Manifest,
    algo: Algo,
    /// Digest by manifest path key.
    want: BTreeMap<&'m str, &'m str>,
    /// Recorded databases by environment path key.
    envs: BTreeMap<&'m str, &'m BTreeMap<String, u64>>,
    checks: EnvChecks,
    ways: std::cell::Cell<Ways>,
}

impl<'m> Checker<'m> {
    pub(crate) fn new(backup: &Path, manifest: &'m Manifest) -> Result<Checker<'m>> {
        let algo = manifest.algo();
        Ok(Checker {
            backup: backup.to_path_buf(),
            manifest,
            algo,
            want: manifest
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.digest(algo)))
                .collect(),
            envs: manifest
                .environments
                .iter()
                .map(|e| (e.path.as_str(), &e.databases))
                .collect(),
            checks: EnvChecks::start()?,
            ways: Default::default(),
        })
    }

    /// Copy the backup's file `rel` (open as `src`) into the new `dst` (at `dp`,
    /// open for reading and writing), checked against the manifest; the bytes of
    /// data copied. A mismatch marks the backup damaged and fails.
    pub(crate) fn copy_file(&self, rel: &Path, src: &File, dst: &File, dp: &Path) -> Result<u64> {
        let sp = self.backup.join(rel);
        let (h, how) = copy_hashed(src, &sp, dst, dp, self.algo)?;
        let mut ways = self.ways.get();
        match how {
            How::Cloned => ways.cloned += h.data_bytes,
            How::Ranged => ways.ranged += h.data_bytes,
            How::Buffered => ways.buffered += h.data_bytes,
        }
        self.ways.set(ways);
        // The manifest's own key: a name that is not UTF-8 is `hex:`, never lossy.
        let key = path_key(rel);
        if let Some(expected) = self.want.get(key.as_str()) {
            if *expected != h.digest {
                return Err(failed(
                    &self.backup,
                    &[format!(
                        "{}: {} mismatch (content changed or damaged)",
                        sp.display(),
                        self.algo.label()
                    )],
                ));
            }
        }
        fault::point("restore-mid-copy")?;
        Ok(h.data_bytes)
    }

    /// The environment `rel` of the backup is copied (and its `data.mdb` matched)
    /// to `at`, the directory `dir` holds: checked there on the checker thread,
    /// through that descriptor (whoever can write the copy's parent can put a
    /// link in its place; the copy itself is root's).
    pub(crate) fn env_copied(&self, rel: &Path, at: &Path, dir: &File) -> Result<()> {
        if let Some(dbs) = self.envs.get(path_key(rel).as_str()) {
            let dir = dir
                .try_clone()
                .with_context(|| format!("cannot hold {}", at.display()))?;
            self.checks.check(Held {
                dir,
                shown: at.to_path_buf(),
                dbs: (*dbs).clone(),
            });
        }
        Ok(())
    }

    /// Wait for the environments' checks; then the nexus index the copy holds
    /// against the one the frozen cell reported, read in the copy (`copy`: its
    /// path and the descriptor holding it), or in the backup when a link the
    /// backup followed put the nexus elsewhere (None). Any problem marks the
    /// backup damaged and fails.
    pub(crate) fn finish(self, copy: Option<(&Path, &File)>) -> Result<()> {
        let mut problems = self.checks.finish()?;
        if problems.is_empty() {
            match copy {
                Some((shown, dir)) => {
                    let mut found = Vec::new();
                    verify::check_cell_claim(&via(dir), self.manifest, &mut found);
                    problems.extend(found.iter().map(|p| shown_as(p, dir, shown)));
                }
                None => verify::check_cell_claim(&self.backup, self.manifest, &mut problems),
            }
        }
        let w = self.ways.get();
        log::debug!(
            "copied {} bytes by reflink, {} by copy_file_range, {} read and written",
            w.cloned,
            w.ranged,
            w.buffered
        );
        if !problems.is_empty() {
            return Err(failed(&self.backup, &problems));
        }
        Ok(())
    }
}

/// The path of the directory `dir` holds, through the descriptor
/// (`/proc/self/fd/N`): no link planted above it is followed.
fn via(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// A problem found through [`via`]`(dir)`, told with the path it stands for.
fn shown_as(problem: &str, dir: &File, shown: &Path) -> String {
    problem.replace(
        &via(dir).display().to_string(),
        &shown.display().to_string(),
    )
}

/// An environment of the copy to check: held by its directory's descriptor.
struct Held {
    dir: File,
    shown: PathBuf,
    dbs: BTreeMap<String, u64>,
}

/// The environment checks, on a thread of their own.
struct EnvChecks {
    to_checker: Option<mpsc::Sender<Held>>,
    checker: Option<JoinHandle<Vec<String>>>,
}

impl EnvChecks {
    fn start() -> Result<EnvChecks> {
        let (to_checker, todo) = mpsc::channel::<Held>();
        let checker = std::thread::Builder::new()
            .name("env-check".into())
            .spawn(move || {
                todo.iter()
                    .flat_map(|e| {
                        verify::check_env_copy(&via(&e.dir), &e.dbs)
                            .into_iter()
                            .map(move |p| shown_as(&p, &e.dir, &e.shown))
                    })
                    .collect()
            })
            .context("cannot start the environment check thread")?;
        Ok(EnvChecks {
            to_checker: Some(to_checker),
            checker: Some(checker),
        })
    }

    fn check(&self, env: Held) {
        if let Some(tx) = &self.to_checker {
            // The checker ends only with the channel: a send cannot fail.
            let _ = tx.send(env);
        }
    }

    /// Every problem the checks found.
    fn finish(mut self) -> Result<Vec<String>> {
        drop(self.to_checker.take());
        match self.checker.take() {
            Some(c) => c
                .join()
                .map_err(|_| anyhow!("the environment check of the restored copy panicked")),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for EnvChecks {
    /// A copy that failed: its checks end before the copy is removed.
    fn drop(&mut self) {
        drop(self.to_checker.take());
        if let Some(c) = self.checker.take() {
            let _ = c.join();
        }
    }
}

/// How the bytes of a file were moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// A reflink: the copy shares the backup's extents.
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
    crate::base::interrupt::check()?;
    if clone(src, dst) {
        log::trace!("{}: reflinked", dp.display());
        let h = fsutil::hash_file(dst, dp, algo)?;
        return Ok((h, How::Cloned));
    }
    let len = src
        .metadata()
        .with_context(|| format!("cannot stat {}", sp.display()))?
        .len();
    let extents =
        fsutil::data_extents(src, len).with_context(|| format!("cannot map {}", sp.display()))?;
    let mut h = Hasher::new(algo);
    let mut buf = vec![0u8; RANGE];
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
                let n = src.read_at(&mut buf[..want], off).map_err(|e| {
                    fail(Code::BadPath, format!("cannot read {}: {e}", sp.display()))
                })?;
                dst.write_all_at(&buf[..n], off)
                    .map_err(|e| write_error(dp, e))?;
                n
            };
            if n == 0 {
                // The backup's file shrank meanwhile: what is there, then zeros;
                // the manifest's digest tells.
                break 'extents;
            }
            // The device writes this range while the next ones are copied and
            // hashed; the final syncfs waits for what is left and reports errors.
            start_writeback(dst, dp, off, n)?;
            // The range just written, read back from the page cache (hashed from
            // the buffer it was written from when that is where it came from).
            if ranged {
                read_back(dst, dp, &mut buf[..n], off)?;
            }
            fsutil::hash_zeros(&mut h, off - pos);
            h.update(&buf[..n]);
            off += n as u64;
            pos = off;
            data_bytes += n as u64;
        }
    }
    let size = len.max(pos);
    fsutil::hash_zeros(&mut h, size - pos);
    dst.set_len(size).map_err(|e| write_error(dp, e))?;
    Ok((
        Hashed {
            size,
            data_bytes,
            digest: h.finish_hex(),
        },
        if ranged { How::Ranged } else { How::Buffered },
    ))
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
    }

    #[test]
    fn an_environment_of_the_copy_is_read_through_its_descriptor() {
        use ::lmdb::{DatabaseFlags, Environment, Transaction, WriteFlags};
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("e.lmdb");
        std::fs::create_dir(&dir).unwrap();
        {
            let env = Environment::new().set_max_dbs(4).open(&dir).unwrap();
            let db = env.create_db(Some("data"), DatabaseFlags::empty()).unwrap();
            let mut txn = env.begin_rw_txn().unwrap();
            for k in 0..100u32 {
                txn.put(db, &k.to_be_bytes(), &[7u8; 300], WriteFlags::empty())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let shown = Path::new("/where/the/copy/is");
        for (count, problems) in [(100u64, 0), (99, 1)] {
            let checks = EnvChecks::start().unwrap();
            checks.check(Held {
                dir: File::open(&dir).unwrap(),
                shown: shown.to_path_buf(),
                dbs: [("data".to_string(), count)].into_iter().collect(),
            });
            let found = checks.finish().unwrap();
            assert_eq!(found.len(), problems, "{found:?}");
            if let Some(p) = found.first() {
                assert!(
                    p.starts_with("/where/the/copy/is: database data has 100 entries"),
                    "{p}"
                );
            }
        }
    }

    /// cachestat(2) (Linux 6.5) of the whole of `f`: (pages in the page cache,
    /// of which dirty), or None on a kernel without it.
    fn cached_and_dirty(f: &File) -> Option<(u64, u64)> {
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        const SYS_CACHESTAT: libc::c_long = 451;
        let range = Range { off: 0, len: 0 };
        let mut st = Stat::default();
        // SAFETY: a valid descriptor and two structs of the kernel's layout.
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                f.as_raw_fd(),
                &range as *const Range,
                &mut st as *mut Stat,
                0,
            )
        };
        (r == 0).then_some((st.nr_cache, st.nr_dirty))
    }

    #[test]
    fn the_copy_is_sent_to_the_device_as_it_is_made() {
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
        let Some((cached, dirty)) = cached_and_dirty(&dst) else {
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
