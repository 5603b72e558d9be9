// SPDX-License-Identifier: Apache-2.0
//! Operations that stop and start the service itself: the maintenance window and
//! the restore, and the restore drill. They use instances, the engine and the host's systemd.

/// Checks before stopping anything; the health check after starting.
pub(crate) mod preflight;
