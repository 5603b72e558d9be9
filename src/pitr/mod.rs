// SPDX-License-Identifier: Apache-2.0
//! Point-in-time recovery: the cell's nexus log archived continuously beside the
//! backups (`follow` writes `archive`), and a restore that brings a base backup
//! forward to a chosen offset or time by applying the archived entries through
//! Synapse's own nexus code (`replay`).
//!
//! A base backup records the cell's nexus index at its freeze
//! (`manifest.cell.nexus_index`): the backup holds exactly the entries before that
//! offset, so backup + archived entries from that offset on form a chain.

/// The archive's files: segments, their index and digests, recovery after a crash.
pub(crate) mod archive;
/// The archiver: `getNexusChanges` followed into the archive, reconnecting.
pub(crate) mod follow;
