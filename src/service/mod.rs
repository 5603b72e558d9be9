// SPDX-License-Identifier: Apache-2.0
//! Operations that stop and start the service itself: the maintenance window and
//! the restore. They use instances, the engine and the host's systemd.

/// Checks before stopping anything; the health check after starting.
pub(crate) mod preflight;
/// Restoring a backup into a service directory.
pub(crate) mod restore;
/// The maintenance window: stop, compact, swap, start, roll back.
pub(crate) mod window;
