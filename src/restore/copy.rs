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
//! 2. [`Checker::copy_file`]: each file copied once (`base::filecopy`), by a
//!    reflink (`FICLONE`: XFS, btrfs) where the filesystem shares extents, else,
//!    for a backup of more than a sixteenth of the memory available
//!    (`filecopy::direct_pays`), where the copy's filesystem takes `O_DIRECT` and
//!    the file is 1 MiB or more,
//!    each range read into a buffer, hashed there and written from it with
//!    `O_DIRECT` by a writer thread while the next is read (the digest of what was
//!    read is the digest of what was written; nothing left dirty for the
//!    `syncfs`; issue 36's fourth pass), else `copy_file_range` of
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
//!    are copied (its pages are in the page cache: no second read of the device;
//!    a `data.mdb` written with `O_DIRECT` is not, and its environment is read in
//!    the backup, whose pages the copy just read);
//!    [`Checker::finish`] waits for those checks and compares the nexus index of
//!    the copy with what the frozen cell reported, as `verify` does.
//!
//! Any failure marks the backup damaged (`engine::damaged`, as `verify` does; the
//! problems in the error, exit 6) before anything is stopped or swapped: the
//! caller's staging copy is removed and the service directory untouched. A pass
//! leaves a damaged mark where it was: the bytes came through the page cache, not
//! necessarily from the device (`synbackup verify` reads the device and removes it).
//!
//! Files are copied one at a time (the environment checks run beside them).
//! Copying files in parallel was measured (bounded to 2 workers, `copy_hashed`
//! on 8 files of 64 MiB, /var/tmp on the 2-core guest's virtio disk, shared:
//! load 12-13, three rounds): warm 1.93-2.05 s with one worker, 1.69-2.71 s with
//! two (median 1.98 against 2.16: no gain); cold 1.94-4.24 s against 2.11-3.17 s
//! (median 3.79 against 2.51, inside the noise of one round). A backup's bytes are
//! mostly in a few `data.mdb` files, which parallel files would not split; not
//! done until a quiet machine shows a gain.
//!
//! The per-file copy itself is `base::filecopy`, shared with the drill's scratch
//! copy and the maintenance window's plain files. `restore --offsite` copies
//! nothing: [`checked_in_place`] checks restic's copy where it is.
//!
//! The fault points `restore-mid-copy` (after each file copied) and
//! `restore-mid-check` (after each file checked in place) let a test interrupt
//! the copy half way.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

use crate::base::digest::Algo;
use crate::base::exit::{fail, Code};
use crate::base::fault;
use crate::base::filecopy::{self, How};
use crate::base::fsutil;
use crate::base::pathtext::Escaped;
use crate::engine::damaged;
use crate::engine::manifest::{path_key, MANIFEST_NAME};
use crate::engine::manifest::{path_of, Manifest, CERTS_DIR};
use crate::engine::verify;

/// Step 1: the backup's structure checked without reading its data; its manifest.
/// A problem marks the backup damaged and fails (exit 6) naming every problem.
pub(crate) fn checked_manifest(backup: &Path) -> Result<Manifest> {
    log::info!(
        "checking {} (its files are checked as they are copied)",
        backup.escaped()
    );
    structure(backup)
}

/// The backup's structure checked; a problem marks it damaged and fails.
fn structure(backup: &Path) -> Result<Manifest> {
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

/// `restore --offsite`: restic's restored copy, already beside the directory and
/// made durable, checked where it is instead of copied again: step 1, then every
/// file hashed in place (one read, from the page cache restic wrote it to) and
/// each environment read to its end on its thread as soon as its `data.mdb`
/// matched, then the nexus index. It is then renamed into place. Any problem
/// marks it damaged and fails (exit 6); its manifest otherwise.
pub(crate) fn checked_in_place(copy: &Path) -> Result<Manifest> {
    log::info!(
        "checking {} where restic restored it (each file read once)",
        copy.escaped()
    );
    let m = structure(copy)?;
    {
        let checker = Checker::new(copy, &m)?;
        let env_of: BTreeMap<String, &str> = m
            .environments
            .iter()
            .map(|e| (format!("{}/data.mdb", e.path), e.path.as_str()))
            .collect();
        for f in &m.files {
            checker.check_in_place(&path_of(&f.path))?;
            if let Some(env) = env_of.get(&f.path) {
                let rel = path_of(env);
                let at = copy.join(&rel);
                let dir =
                    File::open(&at).with_context(|| format!("cannot read {}", at.escaped()))?;
                checker.env_copied(&rel, &at, &dir)?;
            }
        }
        checker.finish(None)?;
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
    /// Read, hashed and written with O_DIRECT from the same buffer.
    pub(crate) direct: u64,
    pub(crate) buffered: u64,
    /// Checked where they are (`restore --offsite`), not copied.
    pub(crate) in_place: u64,
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
    /// Whether the copy goes around the page cache (`filecopy::direct_pays` of
    /// the backup's bytes).
    through_direct: bool,
    /// The files copied with O_DIRECT: their pages are not in the page cache of
    /// the copy, so their environments are read in the backup (see `env_copied`).
    direct: std::cell::RefCell<std::collections::BTreeSet<PathBuf>>,
}

impl<'m> Checker<'m> {
    pub(crate) fn new(backup: &Path, manifest: &'m Manifest) -> Result<Checker<'m>> {
        let algo = manifest.algo();
        let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
        let through_direct = filecopy::direct_pays(bytes);
        log::debug!(
            "{bytes} bytes to copy: {}",
            if through_direct {
                "around the page cache (O_DIRECT where the filesystem takes it)"
            } else {
                "through the page cache"
            }
        );
        Ok(Checker {
            through_direct,
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
            direct: Default::default(),
        })
    }

    /// Copy the backup's file `rel` (open as `src`) into the new `dst` (at `dp`,
    /// open for reading and writing), checked against the manifest; the bytes of
    /// data copied. A mismatch marks the backup damaged and fails.
    pub(crate) fn copy_file(&self, rel: &Path, src: &File, dst: &File, dp: &Path) -> Result<u64> {
        let sp = self.backup.join(rel);
        let (h, how) = filecopy::copy_hashed(src, &sp, dst, dp, self.algo, self.through_direct)?;
        let mut ways = self.ways.get();
        match how {
            How::Cloned => ways.cloned += h.data_bytes,
            How::Ranged => ways.ranged += h.data_bytes,
            How::Direct => {
                ways.direct += h.data_bytes;
                if rel.ends_with("data.mdb") {
                    // Read again by its environment's check, which then drops it.
                    self.direct.borrow_mut().insert(rel.to_path_buf());
                } else {
                    fsutil::drop_cached(src);
                }
            }
            How::Buffered => ways.buffered += h.data_bytes,
        }
        self.ways.set(ways);
        self.check_digest(rel, &sp, &h.digest)?;
        fault::point("restore-mid-copy")?;
        Ok(h.data_bytes)
    }

    /// The backup's file `rel` hashed where it is (`restore --offsite`: restic's
    /// copy is already where it is swapped in from): one read, through the page
    /// cache restic wrote it to. A mismatch marks the backup damaged and fails.
    fn check_in_place(&self, rel: &Path) -> Result<()> {
        let sp = self.backup.join(rel);
        crate::base::interrupt::check()?;
        let f = File::open(&sp).with_context(|| format!("cannot read {}", sp.escaped()))?;
        let h = fsutil::hash_file(&f, &sp, self.algo)?;
        let mut ways = self.ways.get();
        ways.in_place += h.data_bytes;
        self.ways.set(ways);
        self.check_digest(rel, &sp, &h.digest)?;
        fault::point("restore-mid-check")
    }

    /// The digest of the backup's file `rel` (at `sp`) against the manifest's; a
    /// mismatch marks the backup damaged and fails.
    fn check_digest(&self, rel: &Path, sp: &Path, digest: &str) -> Result<()> {
        // The manifest's own key: a name that is not UTF-8 is `hex:`, never lossy.
        let key = path_key(rel);
        if let Some(expected) = self.want.get(key.as_str()) {
            if *expected != digest {
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
        Ok(())
    }

    /// The environment `rel` of the backup is copied (and its `data.mdb` matched)
    /// to `at`, the directory `dir` holds: checked there on the checker thread,
    /// through that descriptor (whoever can write the copy's parent can put a
    /// link in its place; the copy itself is root's).
    ///
    /// A `data.mdb` copied with O_DIRECT was hashed in the buffer it was written
    /// from: the digest of what was read is the digest of what was written, and
    /// the copy's pages are not in the page cache. Its environment is read in the
    /// backup instead, from the pages that copy just read (root's directory): the
    /// same bytes, not read from the device a second time.
    pub(crate) fn env_copied(&self, rel: &Path, at: &Path, dir: &File) -> Result<()> {
        if let Some(dbs) = self.envs.get(path_key(rel).as_str()) {
            let data = rel.join("data.mdb");
            let (dir, shown, read_once) = if self.direct.borrow().contains(&data) {
                let in_backup = self.backup.join(rel);
                let dir = File::open(&in_backup)
                    .with_context(|| format!("cannot read {}", in_backup.escaped()))?;
                let file = self.backup.join(&data);
                let file =
                    File::open(&file).with_context(|| format!("cannot read {}", file.escaped()))?;
                (dir, in_backup, Some(file))
            } else {
                let dir = dir
                    .try_clone()
                    .with_context(|| format!("cannot hold {}", at.display()))?;
                (dir, at.to_path_buf(), None)
            };
            self.checks.check(Held {
                dir,
                shown,
                dbs: (*dbs).clone(),
                read_once,
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
        if w.in_place > 0 {
            log::debug!("checked {} bytes where they are", w.in_place);
        } else {
            log::debug!(
                "copied {} bytes by reflink, {} read, hashed and written with O_DIRECT, {} by copy_file_range, {} read and written",
                w.cloned,
                w.direct,
                w.ranged,
                w.buffered
            );
        }
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
    /// The backup's `data.mdb` when the environment is read there: its pages are
    /// dropped from the page cache once checked. A restore reads a backup once;
    /// keeping gigabytes of it cached would only push out what the host uses (and,
    /// on a guest that hands free memory back to its host, make every new page of
    /// cache cost a fault there: bench/RESULTS.md, issue 36's fourth pass).
    read_once: Option<File>,
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
                        let found = verify::check_env_copy(&via(&e.dir), &e.dbs);
                        if let Some(f) = &e.read_once {
                            fsutil::drop_cached(f);
                        }
                        found
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

#[cfg(test)]
mod tests {
    use super::*;

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
                read_once: None,
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
}
