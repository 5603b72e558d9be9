// SPDX-License-Identifier: Apache-2.0
//! Operations that stop and start the service itself: the maintenance window and
//! the restore, and the restore drill. They use instances, the engine and the host's systemd.

/// `restore --certs`: the backup's certificate directory put back in place.
pub(crate) mod certrestore;
/// Restore drills: boot a backup's copy, isolated, and check it.
pub(crate) mod drill;
/// Checks before stopping anything; the health check after starting.
pub(crate) mod preflight;
/// Restoring a backup into a service directory.
pub(crate) mod restore;
/// The drill's scratch copy of a backup, and removing dead drills' copies.
pub(crate) mod scratch;
/// The maintenance window: stop, compact, swap, start, roll back.
pub(crate) mod window;
