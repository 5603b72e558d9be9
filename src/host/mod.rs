// SPDX-License-Identifier: Apache-2.0
//! The host around the service: systemd (sd_notify, systemctl), procfs readers
//! (meminfo, /proc/sys, which processes hold LMDB files), the sysctl drop-in, and
//! how progress is shown here (systemd's status line, a terminal's bar).
//! Imports only `base`.

/// Whether a cell runs on a directory: the lock on its `cell.guid`.
pub(crate) mod celllock;
/// The Python and module a service unit's ExecStart runs.
pub(crate) mod execstart;
/// Processes holding a directory's LMDB files (procfs).
pub(crate) mod holders;
/// Mount points (/proc/self/mountinfo).
pub(crate) mod mounts;
/// Starting a process in a network namespace of its own (loopback only).
pub(crate) mod netns;
/// Readers of /proc/meminfo and /proc/sys under a root directory.
pub(crate) mod procfs;
/// Progress shown as systemd's status line and a terminal bar.
pub(crate) mod progress;
/// restic: backup, forget, snapshots, check, restore, unlock.
pub(crate) mod restic;
/// What a directory is stored on: file system type, rotational device.
pub(crate) mod storage;
/// The sysctl drop-in computed from the host's RAM.
pub(crate) mod sysctl;
/// sd_notify and systemctl.
pub(crate) mod systemd;
/// Running a process as a hardened transient unit (`systemd-run`).
pub(crate) mod transient;
/// A service unit's Environment= and EnvironmentFile= settings.
pub(crate) mod unitenv;
