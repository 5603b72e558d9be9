// SPDX-License-Identifier: Apache-2.0
//! LMDB (the vendored 0.9.33 with py-lmdb's patches, see build.rs): the few calls
//! synbackup needs, wrapped safely.
//!
//! Why this LMDB: it is the one Synapse writes with (lock-file format 1), so we can
//! open an environment next to a running service (heed's "0.9.70" cannot: see
//! Cargo.toml), and it has `mdb_env_copyfd3`, a compacting copy from a read
//! transaction we hold. Live environments are opened `MDB_RDONLY | MDB_NOTLS` (a
//! reader slot per transaction, not per thread: a snapshot is taken on one thread
//! and copied on another); our own copies, which nobody else uses, are opened
//! `MDB_NOLOCK` so that reading them creates no `lock.mdb` inside a backup.
//!
//! A source environment sits in a tree its service's user owns, and root opens it:
//! it is opened beneath a directory descriptor the caller checked against its scan
//! ([`Env::open_held`]: LMDB is given `/proc/self/fd/N`), LMDB opens no file through
//! a link at its name (vendor/lmdb/nofollow.patch: a `lock.mdb` linked to a root
//! file would be opened read-write and written), and its `data.mdb` must be the
//! file the scan saw (device, inode), also when it is reopened after a resize.

use std::ffi::{CStr, CString};
use std::fs::{File, Metadata};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

/// The C API of the vendored LMDB (vendor/lmdb/lmdb.h), as much as we call.
#[allow(non_camel_case_types)]
mod ffi {
    use std::ffi::{c_char, c_int, c_uint, c_void};

    /// Opaque handles.
    #[repr(C)]
    pub(crate) struct MDB_env {
        _p: [u8; 0],
    }
    #[repr(C)]
    pub(crate) struct MDB_txn {
        _p: [u8; 0],
    }
    #[repr(C)]
    pub(crate) struct MDB_cursor {
        _p: [u8; 0],
    }
    pub(crate) type MDB_dbi = c_uint;

    #[repr(C)]
    pub(crate) struct MDB_val {
        pub(crate) mv_size: usize,
        pub(crate) mv_data: *mut c_void,
    }

    #[repr(C)]
    pub(crate) struct MDB_stat {
        pub(crate) ms_psize: c_uint,
        pub(crate) ms_depth: c_uint,
        pub(crate) ms_branch_pages: usize,
        pub(crate) ms_leaf_pages: usize,
        pub(crate) ms_overflow_pages: usize,
        pub(crate) ms_entries: usize,
    }

    #[repr(C)]
    pub(crate) struct MDB_envinfo {
        pub(crate) me_mapaddr: *mut c_void,
        pub(crate) me_mapsize: usize,
        pub(crate) me_last_pgno: usize,
        pub(crate) me_last_txnid: usize,
        pub(crate) me_maxreaders: c_uint,
        pub(crate) me_numreaders: c_uint,
    }

    /// The receiver of `mdb_env_copycb3` (vendor/lmdb/copy-callback.patch).
    pub(crate) type MDB_copy_func =
        unsafe extern "C" fn(ctx: *mut c_void, buf: *const c_void, len: usize) -> c_int;

    pub(crate) const MDB_RDONLY: c_uint = 0x20000;
    pub(crate) const MDB_NOTLS: c_uint = 0x200000;
    pub(crate) const MDB_NORDAHEAD: c_uint = 0x800000;
    pub(crate) const MDB_NOLOCK: c_uint = 0x400000;
    pub(crate) const MDB_CP_COMPACT: c_uint = 0x01;
    pub(crate) const MDB_FIRST: c_uint = 0;
    pub(crate) const MDB_NEXT: c_uint = 8;
    pub(crate) const MDB_LAST: c_uint = 6;
    pub(crate) const MDB_NOTFOUND: c_int = -30798;
    pub(crate) const MDB_MAP_RESIZED: c_int = -30785;
    pub(crate) const MDB_INCOMPATIBLE: c_int = -30784;
    pub(crate) const MDB_DBS_FULL: c_int = -30791;

    extern "C" {
        pub(crate) fn mdb_strerror(err: c_int) -> *const c_char;
        pub(crate) fn mdb_env_create(env: *mut *mut MDB_env) -> c_int;
        pub(crate) fn mdb_env_set_mapsize(env: *mut MDB_env, size: usize) -> c_int;
        pub(crate) fn mdb_env_set_maxdbs(env: *mut MDB_env, dbs: MDB_dbi) -> c_int;
        pub(crate) fn mdb_env_open(
            env: *mut MDB_env,
            path: *const c_char,
            flags: c_uint,
            mode: u32,
        ) -> c_int;
        pub(crate) fn mdb_env_close(env: *mut MDB_env);
        pub(crate) fn mdb_env_get_fd(env: *mut MDB_env, fd: *mut c_int) -> c_int;
        pub(crate) fn mdb_reader_check(env: *mut MDB_env, dead: *mut c_int) -> c_int;
        pub(crate) fn mdb_env_stat(env: *mut MDB_env, stat: *mut MDB_stat) -> c_int;
        pub(crate) fn mdb_env_info(env: *mut MDB_env, info: *mut MDB_envinfo) -> c_int;
        #[cfg(test)]
        pub(crate) fn mdb_env_copyfd3(
            env: *mut MDB_env,
            fd: c_int,
            flags: c_uint,
            txn: *mut MDB_txn,
        ) -> c_int;
        pub(crate) fn mdb_env_copycb3(
            env: *mut MDB_env,
            func: MDB_copy_func,
            ctx: *mut c_void,
            flags: c_uint,
            txn: *mut MDB_txn,
        ) -> c_int;
        pub(crate) fn mdb_txn_begin(
            env: *mut MDB_env,
            parent: *mut MDB_txn,
            flags: c_uint,
            txn: *mut *mut MDB_txn,
        ) -> c_int;
        pub(crate) fn mdb_txn_abort(txn: *mut MDB_txn);
        pub(crate) fn mdb_dbi_open(
            txn: *mut MDB_txn,
            name: *const c_char,
            flags: c_uint,
            dbi: *mut MDB_dbi,
        ) -> c_int;
        pub(crate) fn mdb_stat(txn: *mut MDB_txn, dbi: MDB_dbi, stat: *mut MDB_stat) -> c_int;
        pub(crate) fn mdb_cursor_open(
            txn: *mut MDB_txn,
            dbi: MDB_dbi,
            cursor: *mut *mut MDB_cursor,
        ) -> c_int;
        pub(crate) fn mdb_cursor_get(
            cursor: *mut MDB_cursor,
            key: *mut MDB_val,
            data: *mut MDB_val,
            op: c_uint,
        ) -> c_int;
        pub(crate) fn mdb_cursor_close(cursor: *mut MDB_cursor);
    }
}

/// The `max_dbs` Synapse's own tool opens environments with.
const MAX_DBS: u32 = 16384;

/// The named databases a live environment's snapshot can open: Synapse's have up to
/// about 30 (a JsonStor's cell.lmdb 28, a layer 21).
pub(crate) const LIVE_MAX_DBS: u32 = 128;

/// Whether `e` is LMDB's "no more named database slots" (`MDB_DBS_FULL`).
pub(crate) fn is_dbs_full(e: &anyhow::Error) -> bool {
    e.downcast_ref::<MdbError>()
        .is_some_and(|m| m.0 == ffi::MDB_DBS_FULL)
}

/// An LMDB error code with LMDB's own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MdbError(pub(crate) i32);

impl std::fmt::Display for MdbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: mdb_strerror returns a pointer to a static string for any code.
        let msg = unsafe { CStr::from_ptr(ffi::mdb_strerror(self.0)) };
        write!(f, "{} (LMDB error {})", msg.to_string_lossy(), self.0)
    }
}

impl std::error::Error for MdbError {}

fn check(rc: i32) -> std::result::Result<(), MdbError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(MdbError(rc))
    }
}

/// How an environment is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Next to a possibly running service: registers readers in its `lock.mdb`.
    Live,
    /// A copy only we use: no lock file is touched or created.
    Private,
}

/// An open, read-only environment. `Send`: with `MDB_NOTLS` LMDB allows use from
/// any thread, and we never share one between threads at the same time.
pub(crate) struct Env {
    raw: *mut ffi::MDB_env,
    /// The directory as shown to the operator.
    dir: PathBuf,
    mode: Mode,
    /// The directory LMDB was given, when held ([`Env::open_held`]), and the
    /// `data.mdb` (device, inode) it must hold.
    held: Option<Held>,
}

/// A source environment's directory, opened without following links and checked
/// against the scan, and the `data.mdb` the scan recorded in it.
#[derive(Clone)]
pub(crate) struct Held {
    pub(crate) dir: Arc<OwnedFd>,
    pub(crate) data: Arc<Metadata>,
    /// The source tree the scan walked (named in the error when it changed).
    pub(crate) root: PathBuf,
}

// SAFETY: MDB_env with MDB_NOTLS may be used from other threads; Env is moved, not
// shared, between threads.
unsafe impl Send for Env {}

/// Facts about an environment at the moment they were read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnvInfo {
    pub(crate) page_size: u64,
    pub(crate) last_pgno: u64,
}

/// Page and entry counts of one database.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DbStat {
    pub(crate) entries: u64,
    pub(crate) pages: u64,
}

impl Env {
    /// Open the environment in directory `dir` read-only. The map size is the size of
    /// `data.mdb` (what Synapse's tool does): big enough for everything written.
    pub(crate) fn open(dir: &Path, mode: Mode) -> Result<Env> {
        Self::open_in(dir, None, mode)
    }

    /// Open the environment in `held.dir` (shown as `dir`): LMDB resolves its files
    /// beneath that descriptor and through no link; its `data.mdb` must be
    /// `held.data` (device, inode), else it fails naming it, as
    /// [`fsutil::open_scanned`](crate::base::fsutil::open_scanned) does (exit 3).
    pub(crate) fn open_held(held: Held, dir: &Path, mode: Mode) -> Result<Env> {
        Self::open_in(dir, Some(held), mode)
    }

    fn open_in(dir: &Path, held: Option<Held>, mode: Mode) -> Result<Env> {
        let at = match &held {
            Some(h) => PathBuf::from(format!("/proc/self/fd/{}", h.dir.as_raw_fd())),
            None => dir.to_path_buf(),
        };
        let data = dir.join("data.mdb");
        let len = std::fs::symlink_metadata(at.join("data.mdb"))
            .with_context(|| format!("cannot stat {}", data.display()))?
            .len();
        let map_size = len.div_ceil(4096).max(1) * 4096;
        let cdir = CString::new(at.as_os_str().as_bytes())
            .with_context(|| format!("path {} contains a NUL byte", dir.display()))?;
        let mut raw = ptr::null_mut();
        // SAFETY: plain FFI calls on a handle we own; errors close the handle.
        unsafe {
            check(ffi::mdb_env_create(&mut raw)).context("mdb_env_create")?;
            // Private until opened: the reader check on drop needs an open env.
            let mut env = Env {
                raw,
                dir: dir.to_path_buf(),
                mode: Mode::Private,
                held: None,
            };
            check(ffi::mdb_env_set_mapsize(raw, map_size as usize))
                .with_context(|| format!("cannot set map size of {}", dir.display()))?;
            // A live environment is snapshotted, copied, its free list read and its
            // named databases counted from the snapshot (the manifest's record
            // counts). The environment and each read transaction allocate about
            // 100 bytes per slot, and a backup holds a snapshot of every environment:
            // at 16384 slots 200 of them took 185 MiB of RssAnon, at LIVE_MAX_DBS
            // 13 KiB each. A snapshot with more named databases is counted from its
            // copy instead (`is_dbs_full`). Our own copies get them all.
            let max_dbs = match mode {
                Mode::Live => LIVE_MAX_DBS,
                Mode::Private => MAX_DBS,
            };
            check(ffi::mdb_env_set_maxdbs(raw, max_dbs)).context("mdb_env_set_maxdbs")?;
            // A live environment's map is read at random (MDB_NORDAHEAD): a page fault
            // reads its own page, not the `read_ahead_kb` around it (8 MiB on
            // virtio-blk). That read-around took free pages and, past the used range,
            // the sparse tail Synapse's `writemap` leaves up to the map size, zero-filled
            // into the page cache, from the first touch of the meta pages on. The copy's
            // prefetcher reads the live pages in file order instead, and gives the
            // kernel's readahead back when it does not run (`advise_normal_reads`).
            let mut flags = ffi::MDB_RDONLY | ffi::MDB_NOTLS;
            match mode {
                Mode::Live => flags |= ffi::MDB_NORDAHEAD,
                Mode::Private => flags |= ffi::MDB_NOLOCK,
            }
            check(ffi::mdb_env_open(raw, cdir.as_ptr(), flags, 0o600)).map_err(|e| {
                if e.0 == libc::ELOOP {
                    // Which of its files is the link (LMDB opens lock.mdb first).
                    let lock_linked = std::fs::symlink_metadata(at.join("lock.mdb"))
                        .is_ok_and(|m| m.file_type().is_symlink());
                    let name = if lock_linked { "lock.mdb" } else { "data.mdb" };
                    crate::base::fsutil::changed_since_scan(
                        &dir.join(name),
                        held.as_ref().map_or(dir, |h| h.root.as_path()),
                        "a symlink is now in its place",
                    )
                } else {
                    anyhow::Error::new(e)
                        .context(format!("cannot open LMDB environment {}", dir.display()))
                }
            })?;
            env.mode = mode;
            env.close_data_fd_on_exec()?;
            if let Some(h) = &held {
                let now = env.data_meta()?;
                crate::base::fsutil::check_scanned(&now, &h.data, &data, &h.root)?;
            }
            env.held = held;
            env.clear_stale_readers();
            Ok(env)
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// LMDB's descriptor of `data.mdb`, borrowed for the env's life.
    fn data_fd(&self) -> Result<BorrowedFd<'_>> {
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: an open env; `fd` is an out-parameter.
        check(unsafe { ffi::mdb_env_get_fd(self.raw, &mut fd) }).context("mdb_env_get_fd")?;
        // SAFETY: LMDB keeps the descriptor open until mdb_env_close (in drop),
        // which the borrow of `self` outlives not.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// The metadata of the `data.mdb` LMDB has open (not of whatever is at its
    /// path now).
    pub(crate) fn data_meta(&self) -> Result<Metadata> {
        let f = self.data_file()?;
        f.metadata()
            .with_context(|| format!("cannot stat {}/data.mdb", self.dir.display()))
    }

    /// A descriptor of the `data.mdb` LMDB has open (its xattrs, its prefetch).
    pub(crate) fn data_file(&self) -> Result<File> {
        let fd = self
            .data_fd()?
            .try_clone_to_owned()
            .with_context(|| format!("cannot dup {}/data.mdb", self.dir.display()))?;
        Ok(File::from(fd))
    }

    /// LMDB opens `data.mdb` without `O_CLOEXEC` (its lock and meta descriptors have
    /// it: lmdb.h leaves `mdb_env_get_fd` to the caller), so every program started
    /// while an environment is open would inherit a descriptor of the service's
    /// data: a drill's Cortex, restic, a unit's ExecStart. A window or restore then
    /// finds the service directory held by that child (`host::holders`). Set it here,
    /// before anything can start one from this environment.
    fn close_data_fd_on_exec(&self) -> Result<()> {
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: an open env; `fd` is an out-parameter.
        check(unsafe { ffi::mdb_env_get_fd(self.raw, &mut fd) }).context("mdb_env_get_fd")?;
        // SAFETY: fcntl on LMDB's descriptor, open for the env's life; it only sets
        // the close-on-exec flag.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC)
            }
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!(
                    "cannot set close-on-exec on {}/data.mdb",
                    self.dir.display()
                )
            });
        }
        Ok(())
    }

    /// In a live environment, free the reader slots of processes that died holding
    /// one (a killed backup): while the service runs, LMDB never does, and the
    /// pages they pin cannot be reused. Done at open and at close; logged.
    fn clear_stale_readers(&self) {
        if self.mode != Mode::Live {
            return;
        }
        let mut dead: std::ffi::c_int = 0;
        // SAFETY: an open env; `dead` is an out-parameter.
        match check(unsafe { ffi::mdb_reader_check(self.raw, &mut dead) }) {
            Ok(()) if dead > 0 => log::warn!(
                "{}: cleared {dead} stale reader slot(s) of dead processes from lock.mdb",
                self.dir.display()
            ),
            Ok(()) => {}
            Err(e) => log::warn!("{}: mdb_reader_check: {e}", self.dir.display()),
        }
    }

    /// Give the kernel's readahead back to this map (opened `MDB_NORDAHEAD`), for a
    /// copy that walks it without a prefetcher. Only our mapping is affected, never
    /// the service's; a failure leaves the reads random, and is logged.
    pub(crate) fn advise_normal_reads(&self) {
        // SAFETY: out-parameter filled by LMDB; madvise only changes the kernel's
        // readahead policy of LMDB's own mapping of `me_mapsize` bytes at `me_mapaddr`.
        unsafe {
            let mut info: ffi::MDB_envinfo = std::mem::zeroed();
            if ffi::mdb_env_info(self.raw, &mut info) != 0 || info.me_mapaddr.is_null() {
                return;
            }
            if libc::madvise(info.me_mapaddr, info.me_mapsize, libc::MADV_NORMAL) != 0 {
                log::debug!(
                    "{}: madvise(MADV_NORMAL): {}",
                    self.dir.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    /// Page size and last used page (from the newest meta page).
    pub(crate) fn info(&self) -> Result<EnvInfo> {
        // SAFETY: out-parameters are plain structs filled by LMDB.
        unsafe {
            let mut stat: ffi::MDB_stat = std::mem::zeroed();
            check(ffi::mdb_env_stat(self.raw, &mut stat)).context("mdb_env_stat")?;
            let mut info: ffi::MDB_envinfo = std::mem::zeroed();
            check(ffi::mdb_env_info(self.raw, &mut info)).context("mdb_env_info")?;
            Ok(EnvInfo {
                page_size: u64::from(stat.ms_psize),
                last_pgno: info.me_last_pgno as u64,
            })
        }
    }

    /// Begin a read transaction (a snapshot held until the `Txn` is dropped).
    pub(crate) fn read_txn(&self) -> Result<Txn<'_>> {
        let mut raw = ptr::null_mut();
        // SAFETY: read-only transaction on our open env.
        unsafe {
            check(ffi::mdb_txn_begin(
                self.raw,
                ptr::null_mut(),
                ffi::MDB_RDONLY,
                &mut raw,
            ))
            .with_context(|| {
                format!("cannot begin a read transaction on {}", self.dir.display())
            })?;
        }
        Ok(Txn { raw, _env: self })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.clear_stale_readers();
        // SAFETY: every Txn borrows the Env, so none is alive here.
        unsafe { ffi::mdb_env_close(self.raw) }
    }
}

/// One point in time of an environment: a read transaction held on an environment
/// we own. It can move to another thread (MDB_NOTLS) and is released on drop: the
/// service can reuse the pages it pins only after that.
pub(crate) struct Snapshot {
    txn: *mut ffi::MDB_txn,
    env: Env,
}

// SAFETY: with MDB_NOTLS a read transaction may be used from another thread; a
// Snapshot is moved, never shared.
unsafe impl Send for Snapshot {}

/// How often a snapshot is retried when the service grows its map under us.
const RESIZE_RETRIES: u32 = 10;

impl Snapshot {
    /// Begin a read transaction on `env`. When the service has grown its map since we
    /// opened the environment (MDB_MAP_RESIZED), reopen it at the new size and retry.
    pub(crate) fn take(mut env: Env) -> Result<Snapshot> {
        let mut tries = 0;
        loop {
            let mut raw = ptr::null_mut();
            // SAFETY: a read-only transaction on our open env.
            let rc =
                unsafe { ffi::mdb_txn_begin(env.raw, ptr::null_mut(), ffi::MDB_RDONLY, &mut raw) };
            if rc == ffi::MDB_MAP_RESIZED && tries < RESIZE_RETRIES {
                tries += 1;
                log::debug!("{}: map resized, reopening", env.dir.display());
                env = Env::open_in(&env.dir.clone(), env.held.clone(), env.mode)?;
                continue;
            }
            check(rc).with_context(|| {
                format!("cannot begin a read transaction on {}", env.dir.display())
            })?;
            return Ok(Snapshot { txn: raw, env });
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        self.env.dir()
    }

    /// A descriptor of the snapshot's `data.mdb` (see [`Env::data_file`]).
    pub(crate) fn data_file(&self) -> Result<File> {
        self.env.data_file()
    }

    /// Page size and last page of the environment (newest meta page).
    pub(crate) fn info(&self) -> Result<EnvInfo> {
        self.env.info()
    }

    /// See [`Env::advise_normal_reads`].
    pub(crate) fn advise_normal_reads(&self) {
        self.env.advise_normal_reads();
    }

    /// The snapshot's read transaction, to read from; ended by the snapshot, never
    /// by this borrow.
    pub(crate) fn view(&self) -> std::mem::ManuallyDrop<Txn<'_>> {
        std::mem::ManuallyDrop::new(Txn {
            raw: self.txn,
            _env: &self.env,
        })
    }

    /// The free pages of this snapshot (its free list) as a bitmap over pages
    /// `0..=last_pgno`, a set bit a free page; `None` when the bitmap would take more
    /// than `max_bytes`. Reads only the free list (a few pages), not the trees.
    pub(crate) fn free_page_bitmap(
        &self,
        last_pgno: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<u64>>> {
        const FREE_DBI: ffi::MDB_dbi = 0;
        let pages = last_pgno + 1;
        let words = pages.div_ceil(64);
        if words.saturating_mul(8) > max_bytes as u64 {
            return Ok(None);
        }
        let mut bits = vec![0u64; words as usize];
        let word = std::mem::size_of::<usize>();
        walk_raw(self.txn, FREE_DBI, |_, v| {
            // An ID list: its length, then that many page numbers.
            let mut ids = v.chunks_exact(word).map(|c| {
                let mut b = [0u8; std::mem::size_of::<usize>()];
                b.copy_from_slice(c);
                usize::from_ne_bytes(b) as u64
            });
            let n = ids.next().unwrap_or(0);
            for pg in ids.take(n as usize) {
                if pg < pages {
                    bits[(pg / 64) as usize] |= 1 << (pg % 64);
                }
            }
            Ok(())
        })
        .with_context(|| format!("cannot read the free list of {}", self.dir().display()))?;
        Ok(Some(bits))
    }

    /// LMDB's own compacting copy of this snapshot into `fd`: what `copy_compact_with`
    /// must produce byte for byte (tests).
    #[cfg(test)]
    pub(crate) fn copy_compact_to(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> std::result::Result<(), MdbError> {
        // SAFETY: txn belongs to env and is alive; fd is valid for the call.
        check(unsafe {
            ffi::mdb_env_copyfd3(
                self.env.raw,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                ffi::MDB_CP_COMPACT,
                self.txn,
            )
        })
    }
}

/// The trampoline `mdb_env_copycb3` calls on LMDB's writer thread: `ctx` is the
/// caller's closure. A panic in it fails the copy (EIO) instead of unwinding into C.
unsafe extern "C" fn copy_trampoline<F>(
    ctx: *mut std::ffi::c_void,
    buf: *const std::ffi::c_void,
    len: usize,
) -> std::ffi::c_int
where
    F: FnMut(&[u8]) -> i32 + Send,
{
    // SAFETY: ctx is the &mut F that copy_compact_with passed, alive for the call;
    // LMDB gives a buffer of len bytes valid until we return.
    let f = unsafe { &mut *(ctx as *mut F) };
    let data = if len == 0 {
        &[][..]
    } else {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(buf as *const u8, len) }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(data))) {
        Ok(rc) => rc,
        Err(_) => libc::EIO,
    }
}

impl Snapshot {
    /// LMDB's compacting copy of this snapshot, each buffer handed to `sink` (on
    /// LMDB's writer thread, in file order; the slice is valid only during the call)
    /// instead of written to a descriptor. A non-zero return from `sink` fails the
    /// copy with that code. Blocks until the copy has ended.
    pub(crate) fn copy_compact_with<F>(&self, sink: F) -> std::result::Result<(), MdbError>
    where
        F: FnMut(&[u8]) -> i32 + Send,
    {
        self.copy_cb(ffi::MDB_CP_COMPACT, sink)
    }

    /// LMDB's plain copy of this snapshot (pages in place, the layout `mdb_copy`
    /// without `-c` gives; meta pages made from the snapshot), each piece handed to
    /// `sink` on this thread, as `copy_compact_with` does. Blocks until it has ended.
    pub(crate) fn copy_plain_with<F>(&self, sink: F) -> std::result::Result<(), MdbError>
    where
        F: FnMut(&[u8]) -> i32 + Send,
    {
        self.copy_cb(0, sink)
    }

    /// `mdb_env_copycb3` of this snapshot with `flags`, `sink` called for each piece
    /// (on LMDB's writer thread for the compacting copy, on this one for the plain).
    fn copy_cb<F>(&self, flags: u32, mut sink: F) -> std::result::Result<(), MdbError>
    where
        F: FnMut(&[u8]) -> i32 + Send,
    {
        // SAFETY: txn belongs to env and is alive; the closure outlives the call, which
        // joins LMDB's writer thread (if any) before returning.
        check(unsafe {
            ffi::mdb_env_copycb3(
                self.env.raw,
                copy_trampoline::<F>,
                &mut sink as *mut F as *mut std::ffi::c_void,
                flags,
                self.txn,
            )
        })
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // SAFETY: the transaction was begun on self.env, which is closed after this.
        unsafe { ffi::mdb_txn_abort(self.txn) }
    }
}

/// Walk every record of `dbi` in key order (duplicates included) in the live read
/// transaction `raw`, calling `each` with key and value.
fn walk_raw(
    raw: *mut ffi::MDB_txn,
    dbi: ffi::MDB_dbi,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut cur = ptr::null_mut();

    // SAFETY: cursor and slices live only inside this transaction; LMDB returns
    // pointers into its map that stay valid until the next cursor operation.
    unsafe {
        check(ffi::mdb_cursor_open(raw, dbi, &mut cur)).context("mdb_cursor_open")?;
        let mut key: ffi::MDB_val = std::mem::zeroed();
        let mut val: ffi::MDB_val = std::mem::zeroed();
        let mut op = ffi::MDB_FIRST;
        let result = loop {
            let rc = ffi::mdb_cursor_get(cur, &mut key, &mut val, op);
            if rc == ffi::MDB_NOTFOUND {
                break Ok(());
            }
            if let Err(e) = check(rc) {
                break Err(anyhow::Error::new(e));
            }
            let k = std::slice::from_raw_parts(key.mv_data as *const u8, key.mv_size);
            let v = std::slice::from_raw_parts(val.mv_data as *const u8, val.mv_size);
            if let Err(e) = each(k, v) {
                break Err(e);
            }
            op = ffi::MDB_NEXT;
        };
        ffi::mdb_cursor_close(cur);
        result
    }
}

/// A read transaction.
pub(crate) struct Txn<'e> {
    raw: *mut ffi::MDB_txn,
    _env: &'e Env,
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        // SAFETY: aborting a read transaction we began releases its reader slot.
        unsafe { ffi::mdb_txn_abort(self.raw) }
    }
}

/// A named database of an environment.
#[derive(Debug, Clone)]
pub(crate) struct NamedDb {
    pub(crate) name: Vec<u8>,
    dbi: ffi::MDB_dbi,
}

impl Txn<'_> {
    fn stat_dbi(&self, dbi: ffi::MDB_dbi) -> Result<DbStat> {
        // SAFETY: dbi was opened in this transaction (or is FREE_DBI/MAIN_DBI).
        unsafe {
            let mut st: ffi::MDB_stat = std::mem::zeroed();
            check(ffi::mdb_stat(self.raw, dbi, &mut st)).context("mdb_stat")?;
            Ok(DbStat {
                entries: st.ms_entries as u64,
                pages: (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages) as u64,
            })
        }
    }

    fn open_main(&self) -> Result<ffi::MDB_dbi> {
        let mut dbi = 0;
        // SAFETY: opening the unnamed database never creates anything.
        unsafe { check(ffi::mdb_dbi_open(self.raw, ptr::null(), 0, &mut dbi)) }
            .context("cannot open the main database")?;
        Ok(dbi)
    }

    /// Walk every record of `dbi` in key order (duplicates included), calling `each`
    /// with key and value. Reads every page of the database.
    fn walk(&self, dbi: ffi::MDB_dbi, each: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        walk_raw(self.raw, dbi, each)
    }
    /// The named databases (records of the main database that are sub-databases).
    pub(crate) fn named_dbs(&self) -> Result<Vec<NamedDb>> {
        let main = self.open_main()?;
        let mut names = Vec::new();
        self.walk(main, |k, _| {
            names.push(k.to_vec());
            Ok(())
        })?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let mut cname = name.clone();
            if cname.contains(&0) {
                // Not a name LMDB can open (C string): a plain record of the main DB.
                continue;
            }
            cname.push(0);
            let mut dbi = 0;
            // SAFETY: NUL-terminated name; flags 0 never creates.
            let rc =
                unsafe { ffi::mdb_dbi_open(self.raw, cname.as_ptr() as *const _, 0, &mut dbi) };
            if rc == ffi::MDB_INCOMPATIBLE {
                continue; // a plain key of the main database
            }
            check(rc).with_context(|| {
                format!(
                    "cannot open named database {:?}",
                    String::from_utf8_lossy(&name)
                )
            })?;
            out.push(NamedDb { name, dbi });
        }
        Ok(out)
    }

    /// The value of `key` in the named database `db` (a walk: for small databases).
    pub(crate) fn value_of(&self, db: &NamedDb, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.walk(db.dbi, |k, v| {
            if found.is_none() && k == key {
                found = Some(v.to_vec());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// The greatest key of the named database `db` (None: it is empty).
    pub(crate) fn last_key(&self, db: &NamedDb) -> Result<Option<Vec<u8>>> {
        let mut cur = ptr::null_mut();
        // SAFETY: the cursor lives only inside this call and this transaction; the
        // key is copied out before the cursor is closed.
        unsafe {
            check(ffi::mdb_cursor_open(self.raw, db.dbi, &mut cur)).context("mdb_cursor_open")?;
            let mut key: ffi::MDB_val = std::mem::zeroed();
            let mut val: ffi::MDB_val = std::mem::zeroed();
            let rc = ffi::mdb_cursor_get(cur, &mut key, &mut val, ffi::MDB_LAST);
            let out = if rc == ffi::MDB_NOTFOUND {
                Ok(None)
            } else {
                check(rc)
                    .map(|()| {
                        Some(
                            std::slice::from_raw_parts(key.mv_data as *const u8, key.mv_size)
                                .to_vec(),
                        )
                    })
                    .map_err(anyhow::Error::new)
            };
            ffi::mdb_cursor_close(cur);
            out
        }
    }

    /// Entries and pages of a named database as its record says (no walk).
    pub(crate) fn db_stat(&self, db: &NamedDb) -> Result<DbStat> {
        self.stat_dbi(db.dbi)
    }

    /// Entries and pages of the main database.
    pub(crate) fn main_stat(&self) -> Result<DbStat> {
        let main = self.open_main()?;
        self.stat_dbi(main)
    }

    /// Read every record of a named database to the end and count them: every
    /// branch and leaf page of its tree is read, and every key. An overflow value's
    /// pages are not touched: a caller that reads the file whole (verify hashes it
    /// from the device first) knows them readable, and touching each value's first
    /// and last byte made a random read of two pages per value through the map (the
    /// log shape's verify: most of its time, bench/RESULTS.md).
    pub(crate) fn count_by_reading(&self, db: &NamedDb) -> Result<u64> {
        let mut n = 0u64;
        let mut fold = 0u8;
        self.walk(db.dbi, |k, _| {
            n += 1;
            fold ^= k.first().copied().unwrap_or(0) ^ k.last().copied().unwrap_or(0);
            Ok(())
        })?;
        std::hint::black_box(fold);
        Ok(n)
    }

    /// Pages a compacting copy of this snapshot writes: all pages up to the last one,
    /// less the free pages and the pages of the free list itself (as LMDB computes it).
    pub(crate) fn compacted_pages(&self, info: &EnvInfo) -> Result<u64> {
        Ok((info.last_pgno + 1).saturating_sub(self.free_pages()?))
    }

    /// Pages on the free list, and the free list's own pages.
    pub(crate) fn free_pages(&self) -> Result<u64> {
        const FREE_DBI: ffi::MDB_dbi = 0;
        let free_db = self.stat_dbi(FREE_DBI)?;
        let mut free_pages = free_db.pages;
        self.walk(FREE_DBI, |_, v| {
            // A free-list record is an ID list whose first word is its length.
            let word = std::mem::size_of::<usize>();
            if v.len() < word {
                bail!("malformed free-list record in {}", self._env.dir.display());
            }
            let mut first = [0u8; std::mem::size_of::<usize>()];
            first.copy_from_slice(&v[..word]);
            free_pages += usize::from_ne_bytes(first) as u64;
            Ok(())
        })?;
        Ok(free_pages)
    }
}
