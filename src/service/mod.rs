// SPDX-License-Identifier: Apache-2.0
//! The service unit's lifecycle, shared by the capabilities that stop and start
//! it (the maintenance window, restore, `certs deploy`): the checks before anything
//! stops, the health check after a start, and the swap protocol with its rollback.
//! Imports the engine and the host layer, never an instance or a capability.

/// Checks before stopping anything; the health check after starting.
pub(crate) mod preflight;
/// Stop, swap a prepared copy in, start, wait for health; roll back on failure.
pub(crate) mod swap;
