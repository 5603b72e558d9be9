// SPDX-License-Identifier: Apache-2.0
//! The host around the service: systemd (sd_notify, systemctl), procfs readers
//! (meminfo, /proc/sys, which processes hold LMDB files) and the sysctl drop-in.
//! Imports only `base`.

/// Processes holding a directory's LMDB files (procfs).
pub(crate) mod holders;
/// Readers of /proc/meminfo and /proc/sys under a root directory.
pub(crate) mod procfs;
/// What a directory is stored on: file system type, rotational device.
pub(crate) mod storage;
/// The sysctl drop-in computed from the host's RAM.
pub(crate) mod sysctl;
/// sd_notify and systemctl.
pub(crate) mod systemd;
