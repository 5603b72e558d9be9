// SPDX-License-Identifier: Apache-2.0
//! Filesystem helpers where data safety lives: sparse-aware hashed copies,
//! ownership/mode/time preservation, fsync of files and directories, atomic writes
//! and free space.
//!
//! Writes are followed by an fsync of the file and then of its directory (or, for
//! the many directories of a backup, one `syncfs` before it is published): a file
//! we say is written is on disk. Sparse files (LMDB with writemap is as large as its
//! map) are copied by their data extents (SEEK_DATA/SEEK_HOLE); holes stay holes,
//! and only data counts as read and written.
//!
//! A file's digest (BLAKE3 or SHA-256, `digest`) is that of its whole logical
//! content, holes as zeros: what `b3sum` or `sha256sum` prints, so an operator can
//! check a backup with standard tools. Holes are never read: their zeros are fed to
//! the hash from a static block. Neither hash has a shortcut for a run of zeros, so a
//! hole still costs hashing time (SHA-256 with SHA-NI: about 0.5 s of CPU per GiB,
//! BLAKE3 a tenth of it); a digest that skipped holes would lose the standard tools'
//! compatibility, which matters more than that.
//!
//! Owners that cannot be given (not root) are handled by [`narrow_group`]; xattrs
//! are copied by `xattrs`.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, Gid, Uid};

use crate::base::digest::{Algo, Hasher};
use crate::base::exit::{fail, Code};
use crate::base::xattrs::{self, Attrs};

/// Size of the buffers data is moved in.
pub(crate) const CHUNK: usize = 1 << 20;

/// Map an I/O error while writing the backup: a full disk gets its own code.
pub(crate) fn write_error(path: &Path, e: io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => fail(
            Code::NoSpace,
            format!(
                "no space left writing {}: free space there and run again",
                path.display()
            ),
        ),
        Some(libc::EROFS) => fail(
            Code::BadPath,
            format!(
                "cannot write {}: {e}{}",
                path.display(),
                read_only_hint(path)
            ),
        ),
        _ => anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
    }
}

/// What to say after "Read-only file system": under a hardened unit the cause is
/// usually a path outside the unit's writable paths, which synbackup-generator
/// derives from the config at `systemctl daemon-reload`.
pub(crate) fn read_only_hint(path: &Path) -> String {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return String::new();
    }
    format!(
        " ({} is outside this unit's writable paths: synbackup-generator makes the configured \
         SYNBACKUP_SERVICE_DIR, SYNBACKUP_BACKUP_ROOT and a local SYNBACKUP_OFFSITE_REPOSITORY writable; after editing the config run \
         `systemctl daemon-reload`)",
        path.display()
    )
}

/// Data extents of a file: `(offset, len)` pairs, holes left out.
pub(crate) fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        let start = match lseek(file.as_fd(), pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole up to EOF
            Err(nix::errno::Errno::EINVAL) => return Ok(vec![(0, len)]), // no SEEK_DATA here
            Err(e) => return Err(e.into()),
        };
        let stop = lseek(file.as_fd(), start, Whence::SeekHole).map_err(io::Error::from)?;
        let stop = stop.min(end);
        if stop > start {
            out.push((start as u64, (stop - start) as u64));
        }
        pos = stop;
    }
    Ok(out)
}

/// What a hashed copy or read saw.
#[derive(Debug, Clone)]
pub(crate) struct Hashed {
    pub(crate) size: u64,
    pub(crate) data_bytes: u64,
    /// Hex digest, of the algorithm it was asked for.
    pub(crate) digest: String,
}

static ZEROS: [u8; CHUNK] = [0u8; CHUNK];

/// Feed `n` zero bytes (a hole) to the hash.
pub(crate) fn hash_zeros(h: &mut Hasher, mut n: u64) {
    while n > 0 {
        let k = n.min(CHUNK as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Read `src` extent by extent (holes skipped), hashing its full logical content
/// (holes as zeros); when `dst` is given, write each extent at the same offset there
/// (holes stay holes) and give it the same length. `on_bytes` is told each chunk.
fn walk_extents(
    src: &File,
    src_path: &Path,
    dst: Option<(&File, &Path)>,
    algo: Algo,
    mut on_bytes: impl FnMut(u64) -> Result<()>,
) -> Result<Hashed> {
    use std::os::unix::fs::FileExt;
    let len = src
        .metadata()
        .with_context(|| format!("cannot stat {}", src_path.display()))?
        .len();
    let extents =
        data_extents(src, len).with_context(|| format!("cannot map {}", src_path.display()))?;
    let mut h = Hasher::new(algo);
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    for (start, elen) in extents {
        hash_zeros(&mut h, start - pos);
        let mut off = start;
        let stop = start + elen;
        while off < stop {
            let want = ((stop - off) as usize).min(CHUNK);
            let n = src.read_at(&mut buf[..want], off).map_err(|e| {
                fail(
                    Code::BadPath,
                    format!("cannot read {}: {e}", src_path.display()),
                )
            })?;
            if n == 0 {
                break; // the file shrank meanwhile: what is there, then zeros
            }
            h.update(&buf[..n]);
            if let Some((dst, dst_path)) = dst {
                dst.write_all_at(&buf[..n], off)
                    .map_err(|e| write_error(dst_path, e))?;
            }
            off += n as u64;
            data_bytes += n as u64;
            on_bytes(n as u64)?;
        }
        pos = off;
        if off < stop {
            break;
        }
    }
    let size = len.max(pos);
    hash_zeros(&mut h, size - pos);
    if let Some((dst, dst_path)) = dst {
        dst.set_len(size).map_err(|e| write_error(dst_path, e))?;
    }
    Ok(Hashed {
        size,
        data_bytes,
        digest: h.finish_hex(),
    })
}

/// Copy `src` into the new, empty `dst` extent by extent (holes stay holes), hashing
/// the full logical content (holes as zeros). `on_bytes` is told each chunk written.
pub(crate) fn copy_sparse_hashed(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    algo: Algo,
    on_bytes: impl FnMut(u64) -> Result<()>,
) -> Result<Hashed> {
    walk_extents(src, src_path, Some((dst, dst_path)), algo, on_bytes)
}

/// The digest of the open file `f` (at `path`), holes as zeros.
pub(crate) fn hash_file(f: &File, path: &Path, algo: Algo) -> Result<Hashed> {
    walk_extents(f, path, None, algo, |_| Ok(()))
}

/// The source directory a copy reads beneath (see [`open_scanned`]).
pub(crate) fn open_source_root(root: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)
        .map_err(|e| {
            fail(
                Code::BadPath,
                format!(
                    "cannot read {}: {e}; fix its permissions or run as the service's user or root",
                    root.display()
                ),
            )
        })
}

/// Open for reading the file a scan recorded as `scanned` at `rel` under `root`
/// (`root_path` its path), and check it is that file: same device, inode and type.
/// The tree belongs to the service's user and root reads it: a file swapped for a
/// link (to `/etc/shadow`) after the scan must not be copied. Without `via_link` no
/// link may be anywhere on the way (openat2 `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`,
/// or `O_NOFOLLOW` per component on a kernel without openat2); with it (the scan
/// followed a link out of the tree) the links are followed as the scan did, and the
/// inode check alone keeps the copy to what the scan saw. `O_NONBLOCK`: a FIFO put
/// in its place cannot hang the open. A mismatch fails with exit 3 naming the path.
pub(crate) fn open_scanned(
    root: &File,
    root_path: &Path,
    rel: &Path,
    via_link: bool,
    scanned: &Metadata,
) -> Result<File> {
    let path = root_path.join(rel);
    let flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    let opened = if via_link {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&path)
    } else {
        open_beneath(root, rel, flags)
    };
    let file = match opened {
        Ok(f) => f,
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) =>
        {
            return Err(changed_since_scan(
                &path,
                root_path,
                "a symlink is now on its path",
            ));
        }
        Err(e) => {
            return Err(fail(
                Code::BadPath,
                format!(
                    "cannot read {}: {e}; fix its permissions or run as the service's user or root",
                    path.display()
                ),
            ))
        }
    };
    let now = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    check_scanned(&now, scanned, &path, root_path)?;
    Ok(file)
}

/// The failure of a copy whose source `path` (in the tree `root_path`) is not what
/// the scan recorded (`now` says how): exit 3, naming it.
pub(crate) fn changed_since_scan(path: &Path, root_path: &Path, now: &str) -> anyhow::Error {
    fail(
        Code::BadPath,
        format!(
            "{} changed between the scan and the copy ({now}); a file replaced during a backup is not Synapse's doing: find who writes in {}, then run again",
            path.display(),
            root_path.display()
        ),
    )
}

/// Fail ([`changed_since_scan`]) unless `now`, the metadata of what was opened at
/// `path`, is the file the scan recorded as `scanned`: device, inode and type.
pub(crate) fn check_scanned(
    now: &Metadata,
    scanned: &Metadata,
    path: &Path,
    root_path: &Path,
) -> Result<()> {
    if now.dev() != scanned.dev()
        || now.ino() != scanned.ino()
        || now.file_type() != scanned.file_type()
    {
        return Err(changed_since_scan(
            path,
            root_path,
            &format!(
                "scanned as inode {}:{}, now inode {}:{}{}",
                scanned.dev(),
                scanned.ino(),
                now.dev(),
                now.ino(),
                if now.file_type() == scanned.file_type() {
                    ""
                } else if scanned.is_dir() {
                    ", not a directory"
                } else {
                    ", not a plain file"
                }
            ),
        ));
    }
    Ok(())
}

/// Rename `from` to `to` unless something (anything: a file, a link, an empty
/// directory) is at `to`: then `EEXIST`, and both stay as they were (renameat2
/// `RENAME_NOREPLACE`). A plain rename would silently replace a file, a link or an
/// empty directory there, whoever put it there between a check and the rename.
/// On a file system without the flag (`EINVAL`), checked just before the rename
/// instead (logged).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            log::debug!(
                "{}: no RENAME_NOREPLACE on this file system; checking before the rename",
                to.display()
            );
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            fs::rename(from, to)
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Open `rel` beneath the directory `root` for reading, following no link.
fn open_beneath(root: &File, rel: &Path, flags: i32) -> io::Result<File> {
    use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let oflags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::from_bits_truncate(flags);
    let how = OpenHow::new()
        .flags(oflags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(root, rel, how) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(nix::errno::Errno::ENOSYS) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    // Before Linux 5.6: one component at a time, none of them a link.
    let mut dir: Option<std::os::fd::OwnedFd> = None;
    let mut comps = rel.components().peekable();
    while let Some(c) = comps.next() {
        let std::path::Component::Normal(name) = c else {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        };
        let last = comps.peek().is_none();
        let f = if last {
            oflags | OFlag::O_NOFOLLOW
        } else {
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW
        };
        let fd = match &dir {
            Some(d) => openat(d, name, f, Mode::empty()),
            None => openat(root, name, f, Mode::empty()),
        }
        .map_err(io::Error::from)?;
        if last {
            return Ok(File::from(fd));
        }
        dir = Some(fd);
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Narrow the plain file kept aside (an old key, an old certificate), opened as
/// `f` without following a link (the directory may be another user's), to at most
/// 0600, its owner kept. Returns the mode it had when it was changed; anything not
/// a plain file, or a file with other names, is left as it is.
pub(crate) fn narrow_kept_fd(f: &File, path: &Path) -> Result<Option<u32>> {
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_file() || meta.nlink() != 1 || mode & !0o600 == 0 {
        return Ok(None);
    }
    f.set_permissions(fs::Permissions::from_mode(mode & 0o600))
        .with_context(|| format!("cannot chmod {}; it keeps mode {mode:o}", path.display()))?;
    Ok(Some(mode))
}

/// Create a new file for writing (never overwrites), private until finished.
pub(crate) fn create_new(path: &Path) -> Result<File> {
    create_new_as(path, false)
}

/// [`create_new`], also open for reading (a copy read back as it is written:
/// `base::filecopy`).
pub(crate) fn create_new_rw(path: &Path) -> Result<File> {
    create_new_as(path, true)
}

fn create_new_as(path: &Path, read: bool) -> Result<File> {
    OpenOptions::new()
        .read(read)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| write_error(path, e))
}

/// Advise the kernel that the cached pages of `f` are not needed again
/// (`POSIX_FADV_DONTNEED`: clean pages are dropped now, dirty ones once written).
/// Advice only: nothing fails.
pub(crate) fn drop_cached(f: &File) {
    let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

/// Alignment O_DIRECT writes keep (buffer address, length and file offset): the
/// page size, a multiple of every block size we meet. A device needing more refuses
/// with EINVAL and the writer falls back to the page cache.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A new file written front to back, with `O_DIRECT` where the filesystem takes it:
/// aligned buffers go straight from the caller's memory to the device (no copy into
/// the page cache, nothing left to write back at fsync); an unaligned buffer (a
/// tail), and everything after it, is written through the page cache, as is
/// everything on a filesystem that refuses `O_DIRECT` (EINVAL at open or at the
/// first write). Durability is the caller's: fsync of the file `finish_unsynced`
/// gives back, once its metadata is set.
pub(crate) struct DirectWriter {
    /// Opened without O_DIRECT: the buffered writes, fsync and what `finish_unsynced` returns.
    file: File,
    /// A second descriptor of the same file with O_DIRECT, while it is usable.
    direct: Option<File>,
    pos: u64,
    align: usize,
    path: std::path::PathBuf,
    direct_bytes: u64,
}

impl DirectWriter {
    /// Create the new file `path` (never overwrites; mode 0600 until finished).
    pub(crate) fn create(path: &Path) -> Result<DirectWriter> {
        Self::create_with(path, DIRECT_ALIGN, true)
    }

    /// `create` with another alignment, or with O_DIRECT not even tried (tests).
    pub(crate) fn create_with(path: &Path, align: usize, try_direct: bool) -> Result<DirectWriter> {
        let file = create_new(path)?;
        let direct = if try_direct {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    log::debug!(
                        "{}: no O_DIRECT ({e}); writing through the page cache",
                        path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(DirectWriter {
            file,
            direct,
            pos: 0,
            align,
            path: path.to_path_buf(),
            direct_bytes: 0,
        })
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.pos
    }

    /// Of which written with O_DIRECT.
    pub(crate) fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    fn aligned(&self, buf: &[u8]) -> bool {
        let a = self.align;
        buf.as_ptr() as usize % a == 0 && buf.len() % a == 0 && self.pos % a as u64 == 0
    }

    /// Append `buf` to the file.
    pub(crate) fn write(&mut self, mut buf: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        while !buf.is_empty() {
            if self.direct.is_some() && !self.aligned(buf) {
                // An unaligned piece: it and the rest through the page cache, so no
                // page is ever both dirty in the cache and written around it.
                self.direct = None;
            }
            let r = match &self.direct {
                Some(d) => match d.write_at(buf, self.pos) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        log::debug!(
                            "{}: O_DIRECT write refused ({e}); writing through the page cache",
                            self.path.display()
                        );
                        self.direct = None;
                        continue;
                    }
                    Ok(n) => {
                        self.direct_bytes += n as u64;
                        Ok(n)
                    }
                    Err(e) => Err(e),
                },
                None => self.file.write_at(buf, self.pos),
            };
            match r {
                Ok(0) => return Err(write_error(&self.path, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.pos += n as u64;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(write_error(&self.path, e)),
            }
        }
        Ok(())
    }

    /// The file, not yet fsynced: for a caller that sets its metadata first and then
    /// fsyncs once (data, size and metadata in one flush).
    pub(crate) fn finish_unsynced(self) -> File {
        drop(self.direct);
        self.file
    }
}

fn ts(sec: i64, nsec: i64) -> TimeSpec {
    TimeSpec::new(sec, nsec)
}

/// What a copy was given: its mode (narrower than the source's when its owner or
/// group could not be kept) and the xattrs it holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    pub(crate) mode: u32,
    pub(crate) xattrs: Attrs,
}

/// Give an open file the owner, mode and times of `meta` (owner only where we may:
/// as root, or when it is already ours; see [`chown_fd`]), and exactly the xattrs
/// `attrs` (read from the source).
pub(crate) fn copy_meta_fd(
    file: &File,
    path: &Path,
    meta: &Metadata,
    keep_times: bool,
    attrs: &Attrs,
) -> Result<Applied> {
    set_meta_fd(file, path, meta, keep_times, Some(attrs))
}

fn set_meta_fd(
    file: &File,
    path: &Path,
    meta: &Metadata,
    keep_times: bool,
    attrs: Option<&Attrs>,
) -> Result<Applied> {
    let mode = chown_fd(file, path, meta)?;
    // After the chown (which may clear some), before the chmod (an ACL sets the
    // group bits; the source's mode already agrees with its ACL's mask).
    let xattrs = match attrs {
        Some(want) => xattrs::apply(file, path, want)?,
        None => Attrs::new(),
    };
    file.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    if keep_times {
        futimens(
            file.as_fd(),
            &ts(meta.atime(), meta.atime_nsec()),
            &ts(meta.mtime(), meta.mtime_nsec()),
        )
        .with_context(|| format!("cannot set times of {}", path.display()))?;
    }
    Ok(Applied { mode, xattrs })
}

/// The mode of a copy whose group is not the source's: the group gets no more than
/// others had (a member of our group was one of the others), and set-id bits go.
pub(crate) fn narrow_group(mode: u32) -> u32 {
    let others = mode & 0o007;
    let group = (mode >> 3) & 0o007 & others;
    (mode & !0o6070) | (group << 3)
}

/// Give the copy the source's owner and group; returns the mode it may then have.
/// Not root: the group alone when we are in it, else the group is ours and the mode
/// is narrowed ([`narrow_group`]) so that no one gains access; warned.
fn chown_fd(file: &File, path: &Path, meta: &Metadata) -> Result<u32> {
    let mode = meta.mode() & 0o7777;
    let (uid, gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
    match fchown(file.as_fd(), Some(uid), Some(gid)) {
        Ok(()) => Ok(mode),
        Err(nix::errno::Errno::EPERM) if !Uid::effective().is_root() => {
            let group_kept = fchown(file.as_fd(), None, Some(gid)).is_ok();
            let owner_kept = uid == Uid::effective();
            let given = match (owner_kept, group_kept) {
                (_, false) => narrow_group(mode),
                (false, true) => mode & !0o4000,
                (true, true) => mode,
            };
            log::warn!(
                "cannot give {} its owner {}:{} (not root): {}, mode {:04o}{}",
                path.display(),
                meta.uid(),
                meta.gid(),
                if group_kept {
                    "kept the group"
                } else {
                    "the group is ours"
                },
                given,
                if given != mode {
                    format!(" (narrowed from {mode:04o})")
                } else {
                    String::new()
                }
            );
            Ok(given)
        }
        Err(e) => Err(e).with_context(|| format!("cannot chown {}", path.display())),
    }
}

/// Owner, mode, times and exactly the xattrs `attrs` (read from the source) of a
/// directory (applied after its content is written).
pub(crate) fn copy_meta_dir(path: &Path, meta: &Metadata, attrs: &Attrs) -> Result<Applied> {
    copy_dir_meta(path, meta, Some(attrs))
}

/// [`copy_meta_dir`] without the fsync: for a caller that makes many directories
/// durable at once (`durable::Durability::commit`) before it relies on them.
pub(crate) fn copy_meta_dir_unsynced(
    path: &Path,
    meta: &Metadata,
    attrs: &Attrs,
) -> Result<Applied> {
    let dir = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    set_meta_fd(&dir, path, meta, true, Some(attrs))
}

fn copy_dir_meta(path: &Path, meta: &Metadata, attrs: Option<&Attrs>) -> Result<Applied> {
    let dir = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let applied = set_meta_fd(&dir, path, meta, true, attrs)?;
    dir.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(applied)
}

/// Owner and times of a symlink itself.
pub(crate) fn apply_meta_link(path: &Path, meta: &Metadata) -> Result<()> {
    match fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot chown {}", path.display())),
    }
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts(meta.atime(), meta.atime_nsec()),
        &ts(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("cannot set times of {}", path.display()))
}

/// fsync a directory (its entries are durable afterwards).
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", path.display()))
}

/// Write `bytes` to `path` atomically: temp file beside it, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| write_error(&tmp, e))?;
        f.write_all(bytes).map_err(|e| write_error(&tmp, e))?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all().map_err(|e| write_error(&tmp, e))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub(crate) fn free_space(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)
        .with_context(|| format!("cannot statvfs {}", path.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Bytes a file occupies on disk (sparse files less than their length).
pub(crate) fn allocated(meta: &Metadata) -> u64 {
    meta.blocks() * 512
}

/// Human-readable size (binary units).
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn sparse_copy_keeps_holes_and_hashes_zeros() {
        let t = tempfile::tempdir().unwrap();
        let src_path = t.path().join("s");
        let src = File::create(&src_path).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"hello", 10 << 20).unwrap();
        src.sync_all().unwrap();
        let src = File::open(&src_path).unwrap();
        let dst_path = t.path().join("d");
        let dst = create_new(&dst_path).unwrap();
        let h =
            copy_sparse_hashed(&src, &src_path, &dst, &dst_path, Algo::Sha256, |_| Ok(())).unwrap();
        assert_eq!(h.size, 64 << 20);
        assert!(h.data_bytes < (64 << 20));
        let meta = fs::metadata(&dst_path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(allocated(&meta) < (8 << 20), "holes were filled");
        let back = crate::base::readback::hash_from_device(&dst_path, Algo::Sha256).unwrap();
        assert_eq!(back.hashed.digest, h.digest);
        let mut full = vec![0u8; 64 << 20];
        full[10 << 20..(10 << 20) + 5].copy_from_slice(b"hello");
        assert_eq!(
            crate::base::digest::hex(&openssl::sha::sha256(&full)),
            h.digest
        );
    }

    /// `len` bytes of a pattern at a DIRECT_ALIGN-aligned address (`off` bytes past it).
    fn aligned_bytes(len: usize, off: usize) -> (Vec<u8>, usize) {
        let mut v = vec![0u8; len + off + DIRECT_ALIGN];
        let start = v.as_ptr().align_offset(DIRECT_ALIGN) + off;
        for (i, b) in v[start..start + len].iter_mut().enumerate() {
            *b = (i % 249) as u8;
        }
        (v, start)
    }

    fn write_pieces(dir: &Path, try_direct: bool, pieces: &[(usize, usize)]) -> (u64, Vec<u8>) {
        let p = dir.join("out");
        let mut w = DirectWriter::create_with(&p, DIRECT_ALIGN, try_direct).unwrap();
        let mut want = Vec::new();
        for &(len, off) in pieces {
            let (v, start) = aligned_bytes(len, off);
            w.write(&v[start..start + len]).unwrap();
            want.extend_from_slice(&v[start..start + len]);
        }
        assert_eq!(w.len(), want.len() as u64);
        let direct = w.direct_bytes();
        w.finish_unsynced().sync_all().unwrap();
        assert!(fs::read(&p).unwrap() == want, "content differs");
        fs::remove_file(&p).unwrap();
        (direct, want)
    }

    #[test]
    fn direct_writer_writes_aligned_buffers_direct_and_an_odd_tail_buffered() {
        let t = tempfile::tempdir().unwrap();
        let (direct, all) = write_pieces(t.path(), true, &[(1 << 20, 0), (8192, 0), (1000, 0)]);
        // Where the filesystem takes O_DIRECT, the aligned part went that way; the
        // 1000-byte tail never does.
        assert!(direct == 0 || direct == (1 << 20) + 8192, "direct {direct}");
        assert_eq!(all.len(), (1 << 20) + 8192 + 1000);
    }

    #[test]
    fn direct_writer_sends_an_unaligned_buffer_and_all_after_it_buffered() {
        let t = tempfile::tempdir().unwrap();
        let (direct, _) = write_pieces(t.path(), true, &[(4096, 0), (4096, 1), (4096, 0)]);
        assert!(direct <= 4096, "direct {direct}");
        let (direct, _) = write_pieces(t.path(), true, &[(100, 0), (4096, 0)]);
        assert_eq!(direct, 0);
    }

    #[test]
    fn direct_writer_without_o_direct_writes_the_same_bytes() {
        let t = tempfile::tempdir().unwrap();
        let (direct, _) = write_pieces(t.path(), false, &[(1 << 20, 0), (777, 0)]);
        assert_eq!(direct, 0);
    }

    #[test]
    fn direct_writer_on_tmpfs_falls_back_or_writes_direct_correctly() {
        // tmpfs refuses O_DIRECT on older kernels (EINVAL at open) and takes it on
        // newer ones; either way the bytes must be right.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let t = tempfile::tempdir_in(shm).unwrap();
        write_pieces(t.path(), true, &[(1 << 20, 0), (4096, 0), (3, 0)]);
    }

    #[test]
    fn direct_writer_never_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, b"x").unwrap();
        assert!(DirectWriter::create(&p).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"x");
    }

    #[test]
    fn atomic_write_replaces() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_rename_never_replaces_what_is_at_its_target() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("svc");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("data"), "live").unwrap();
        // An empty directory, a file, a link: rename(2) replaces the first
        // silently (and the others when the source is a file).
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let file = t.path().join("file");
        fs::write(&file, "theirs").unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink("/nowhere", &link).unwrap();
        for taken in [&empty, &file, &link] {
            let e = rename_noreplace(&dir, taken).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{}", taken.display());
        }
        assert!(fs::read_dir(&empty).unwrap().next().is_none());
        assert_eq!(fs::read(&file).unwrap(), b"theirs");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("/nowhere"));
        assert_eq!(fs::read(dir.join("data")).unwrap(), b"live");
        let free = t.path().join("free");
        rename_noreplace(&dir, &free).unwrap();
        assert_eq!(fs::read(free.join("data")).unwrap(), b"live");
    }

    #[test]
    fn a_group_not_kept_gets_no_more_than_others() {
        assert_eq!(narrow_group(0o640), 0o600);
        assert_eq!(narrow_group(0o644), 0o644);
        assert_eq!(narrow_group(0o2750), 0o0700);
        assert_eq!(narrow_group(0o755), 0o755);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
