// SPDX-License-Identifier: Apache-2.0
//! cachestat(2) (Linux 6.5) for the unit tests that check what a copy leaves in
//! the page cache: pages cached (read, or being read: mincore(2) counts only
//! those already read) and pages dirty.

use std::fs::File;
use std::os::fd::AsRawFd;

/// What cachestat(2) says of a range of a file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached {
    pub(crate) pages: u64,
    pub(crate) dirty: u64,
}

/// cachestat(2) of the first `len` bytes of `f` (0: the whole file), or None on a
/// kernel without it.
pub(crate) fn of(f: &File, len: u64) -> Option<Cached> {
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
    const SYS_CACHESTAT: libc::c_long = 451; // the same on every architecture
    let range = Range { off: 0, len };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and fills `st`, both ours and repr(C).
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    (rc == 0).then_some(Cached {
        pages: st.nr_cache,
        dirty: st.nr_dirty,
    })
}
