// SPDX-License-Identifier: Apache-2.0
//! Writing into a directory another user owns, by descriptor (issue 32).
//!
//! Root writes into directories the service's user owns (a certificate directory
//! in its home, the service directory). A write by path follows whatever links
//! are on the path when it happens: a link the user plants in a parent between a
//! check and the write (`~/.syn -> /etc/ssl`) sends root's write, as root, where
//! the link points. So a [`HeldDir`] is opened once, component by component
//! without following a link another user could have made, and everything after
//! is relative to its descriptor: subdirectories opened beneath it without any
//! link (`openat2` `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`, else `O_NOFOLLOW` per
//! component), files created with `O_EXCL|O_NOFOLLOW`, renames, links and
//! removals by `*at` calls in it. What the user does to the path afterwards
//! changes nothing: the directory held is the one that was checked.
//!
//! A link on the way to the directory is followed only when it is an
//! administrator's: root owns it, and root owns its directory, which nobody else
//! can write (`/home -> /data/home`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::Mode;

use crate::base::exit::{fail, Code};
use crate::base::fsutil::write_error;
use crate::base::pathtext::Escaped;

/// A directory held by its descriptor, and the path it was opened by (for
/// messages only: nothing is done by that path).
#[derive(Debug)]
pub(crate) struct HeldDir {
    dir: File,
    path: PathBuf,
}

/// What became of one name in a held directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Missing,
    Dir,
    File,
    Symlink,
    Other,
}

/// Who owns the directories [`HeldDir::open_trusted`] creates, and their mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewDirs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u32,
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

fn open_dir_at(at: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        at,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

impl HeldDir {
    /// The directory at `path`, held. A link on the way is followed only when it
    /// is an administrator's (see the module's preamble); any other link fails
    /// naming it, its target and who could have made it (exit 3), with `fix`
    /// (what the operator does about it) in the line. Missing directories on the
    /// way are created as `new` says (and listed in `made`, parents first) when
    /// `new` is given.
    pub(crate) fn open_trusted(
        path: &Path,
        new: Option<NewDirs>,
        fix: &str,
        made: &mut Vec<PathBuf>,
    ) -> Result<HeldDir> {
        let abs = std::path::absolute(path)
            .with_context(|| format!("bad directory {}", path.escaped()))?;
        let mut todo: std::collections::VecDeque<OsString> = abs
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        let root = || -> Result<(File, PathBuf)> {
            Ok((
                File::open("/").context("cannot open /")?,
                PathBuf::from("/"),
            ))
        };
        let (mut cur, mut at) = root()?;
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                cur = File::from(open_dir_at(cur.as_fd(), &name).map_err(errno)?);
                at.pop();
                continue;
            }
            let here = at.join(&name);
            match open_dir_at(cur.as_fd(), &name) {
                Ok(fd) => {
                    cur = File::from(fd);
                    at = here;
                }
                Err(nix::errno::Errno::ELOOP) | Err(nix::errno::Errno::ENOTDIR) => {
                    let st = nix::sys::stat::fstatat(
                        cur.as_fd(),
                        name.as_os_str(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| {
                        anyhow::Error::new(errno(e))
                            .context(format!("cannot stat {}", here.escaped()))
                    })?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                        return Err(fail(
                            Code::BadPath,
                            format!("{} is not a directory; {fix}", here.escaped()),
                        ));
                    }
                    let dir_meta = cur
                        .metadata()
                        .with_context(|| format!("cannot stat {}", at.escaped()))?;
                    let to = nix::fcntl::readlinkat(cur.as_fd(), name.as_os_str())
                        .map(PathBuf::from)
                        .unwrap_or_default();
                    let trusted =
                        st.st_uid == 0 && dir_meta.uid() == 0 && dir_meta.mode() & 0o022 == 0;
                    if !trusted {
                        return Err(fail(
                            Code::BadPath,
                            format!(
                                "{} is a symlink (to {}) that uid {} could have made; root does not write through it: {fix}",
                                here.escaped(),
                                to.escaped(),
                                if st.st_uid == 0 { dir_meta.uid() } else { st.st_uid }
                            ),
                        ));
                    }
                    hops += 1;
                    if hops > 40 {
                        return Err(fail(
                            Code::BadPath,
                            format!("{}: too many levels of symbolic links", here.escaped()),
                        ));
                    }
                    for c in to.components().rev() {
                        match c {
                            Component::Normal(n) => todo.push_front(n.to_os_string()),
                            Component::ParentDir => todo.push_front(OsString::from("..")),
                            _ => {}
                        }
                    }
                    if to.is_absolute() {
                        (cur, at) = root()?;
                    }
                }
                Err(nix::errno::Errno::ENOENT) if new.is_some() => {
                    let n = new.unwrap_or(NewDirs {
                        uid: 0,
                        gid: 0,
                        mode: 0o700,
                    });
                    nix::sys::stat::mkdirat(
                        cur.as_fd(),
                        name.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(|e| write_error(&here, errno(e)))?;
                    made.push(here.clone());
                    let fd = File::from(open_dir_at(cur.as_fd(), &name).map_err(|e| {
                        anyhow::Error::new(errno(e))
                            .context(format!("cannot open {}", here.escaped()))
                    })?);
                    let _ = std::os::unix::fs::fchown(&fd, Some(n.uid), Some(n.gid));
                    use std::os::unix::fs::PermissionsExt;
                    fd.set_permissions(std::fs::Permissions::from_mode(n.mode))
                        .with_context(|| format!("cannot chmod {}", here.escaped()))?;
                    cur = fd;
                    at = here;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(errno(e))
                        .context(format!("cannot open {}", here.escaped())))
                }
            }
        }
        Ok(HeldDir {
            dir: cur,
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened by (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own descriptor (its metadata is set through it).
    pub(crate) fn file(&self) -> &File {
        &self.dir
    }

    /// The subdirectory `rel` beneath it, no link anywhere on the way.
    pub(crate) fn sub(&self, rel: &Path) -> Result<HeldDir> {
        let path = self.path.join(rel);
        if rel.as_os_str().is_empty() {
            let fd = self
                .dir
                .try_clone()
                .with_context(|| format!("cannot open {}", path.escaped()))?;
            return Ok(HeldDir { dir: fd, path });
        }
        let fd = beneath(self.dir.as_fd(), rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) {
                fail(
                    Code::BadPath,
                    format!(
                        "{} has a symlink on its way, which another user could have made; root does not write through it: remove the link and run again",
                        path.escaped()
                    ),
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot open {}", path.escaped()))
            }
        })?;
        Ok(HeldDir {
            dir: File::from(fd),
            path,
        })
    }

    /// What `name` is in it (not following a link).
    pub(crate) fn entry(&self, name: &OsStr) -> Result<Entry> {
        match nix::sys::stat::fstatat(self.dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => Entry::Dir,
                libc::S_IFREG => Entry::File,
                libc::S_IFLNK => Entry::Symlink,
                _ => Entry::Other,
            }),
            Err(nix::errno::Errno::ENOENT) => Ok(Entry::Missing),
            Err(e) => Err(anyhow::Error::new(errno(e))
                .context(format!("cannot stat {}", self.path.join(name).escaped()))),
        }
    }

    /// Open the plain file `name` for reading, not through a link.
    pub(crate) fn open_file(&self, name: &OsStr) -> Result<File> {
        openat(
            self.dir.as_fd(),
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| {
            anyhow::Error::new(errno(e))
                .context(format!("cannot open {}", self.path.join(name).escaped()))
        })
    }

    /// Create the new file `name` (never an existing name, never through a link),
    /// mode 0600 until its metadata is set.
    pub(crate) fn create_new(&self, name: &OsStr) -> Result<File> {
        self.create_new_as(name, OFlag::O_WRONLY)
    }

    /// [`create_new`](HeldDir::create_new), open for reading too: a copy read
    /// back to check it (`restore::copy`).
    pub(crate) fn create_new_readable(&self, name: &OsStr) -> Result<File> {
        self.create_new_as(name, OFlag::O_RDWR)
    }

    fn create_new_as(&self, name: &OsStr, access: OFlag) -> Result<File> {
        let p = self.path.join(name);
        openat(
            self.dir.as_fd(),
            name,
            access | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(File::from)
        .map_err(|e| write_error(&p, errno(e)))
    }

    /// Make the directory `name` (0700 until its metadata is set).
    pub(crate) fn mkdir(&self, name: &OsStr) -> Result<()> {
        nix::sys::stat::mkdirat(self.dir.as_fd(), name, Mode::from_bits_truncate(0o700))
            .map_err(|e| write_error(&self.path.join(name), errno(e)))
    }

    /// The link `name` to `target`.
    pub(crate) fn symlink(&self, target: &Path, name: &OsStr) -> Result<()> {
        nix::unistd::symlinkat(target, self.dir.as_fd(), name)
            .map_err(|e| write_error(&self.path.join(name), errno(e)))
    }

    /// The target of the link `name`.
    pub(crate) fn read_link(&self, name: &OsStr) -> Result<PathBuf> {
        nix::fcntl::readlinkat(self.dir.as_fd(), name)
            .map(PathBuf::from)
            .map_err(|e| {
                anyhow::Error::new(errno(e))
                    .context(format!("cannot read {}", self.path.join(name).escaped()))
            })
    }

    /// Rename `from` to `to`, both in it (`to` replaced).
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        nix::fcntl::renameat(self.dir.as_fd(), from, self.dir.as_fd(), to).map_err(|e| {
            anyhow::Error::new(errno(e)).context(format!(
                "cannot rename {} to {}",
                self.path.join(from).escaped(),
                self.path.join(to).escaped()
            ))
        })
    }

    /// A second name `to` for `from` (a link itself, never its target).
    pub(crate) fn hard_link(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        nix::unistd::linkat(
            self.dir.as_fd(),
            from,
            self.dir.as_fd(),
            to,
            AtFlags::empty(),
        )
        .map_err(|e| {
            anyhow::Error::new(errno(e)).context(format!(
                "cannot keep {} as {}",
                self.path.join(from).escaped(),
                self.path.join(to).escaped()
            ))
        })
    }

    /// Remove the file (or link) `name`.
    pub(crate) fn unlink(&self, name: &OsStr) -> Result<()> {
        nix::unistd::unlinkat(
            self.dir.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| {
            anyhow::Error::new(errno(e))
                .context(format!("cannot remove {}", self.path.join(name).escaped()))
        })
    }

    /// Remove the empty directory `name`.
    pub(crate) fn rmdir(&self, name: &OsStr) -> Result<()> {
        nix::unistd::unlinkat(
            self.dir.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
        .map_err(|e| {
            anyhow::Error::new(errno(e))
                .context(format!("cannot remove {}", self.path.join(name).escaped()))
        })
    }

    /// Owner and times of the link `name` itself.
    pub(crate) fn link_meta(&self, name: &OsStr, meta: &std::fs::Metadata) -> Result<()> {
        let p = self.path.join(name);
        match nix::unistd::fchownat(
            self.dir.as_fd(),
            name,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(nix::errno::Errno::EPERM) => {}
            Err(e) => {
                return Err(
                    anyhow::Error::new(errno(e)).context(format!("cannot chown {}", p.escaped()))
                )
            }
        }
        nix::sys::stat::utimensat(
            self.dir.as_fd(),
            name,
            &nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec()),
            &nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| {
            anyhow::Error::new(errno(e)).context(format!("cannot set times of {}", p.escaped()))
        })
    }

    /// fsync the directory (its entries are durable afterwards).
    pub(crate) fn sync(&self) -> Result<()> {
        self.dir
            .sync_all()
            .with_context(|| format!("cannot fsync directory {}", self.path.escaped()))
    }
}

/// Open `rel` beneath the directory `root`, following no link.
fn beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(root, rel, how) {
        Ok(fd) => return Ok(fd),
        Err(nix::errno::Errno::ENOSYS) => {}
        Err(e) => return Err(errno(e)),
    }
    // Before Linux 5.6: one component at a time, none of them a link.
    let mut dir: Option<OwnedFd> = None;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        };
        let fd = match &dir {
            Some(d) => open_dir_at(d.as_fd(), name),
            None => open_dir_at(root, name),
        }
        .map_err(errno)?;
        dir = Some(fd);
    }
    dir.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// The name a path ends in (empty for `/`).
pub(crate) fn name_of(p: &Path) -> &OsStr {
    p.file_name().unwrap_or(OsStr::from_bytes(b""))
}
