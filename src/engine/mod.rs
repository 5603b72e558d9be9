// SPDX-License-Identifier: Apache-2.0
//! The backup engine: everything that turns a service directory into a verified
//! backup, and nothing that knows about instances, units or systemd's state. It
//! imports only `base` and `host` (procfs readers, storage); it reports progress
//! through `base::progress`'s traits, and the caller picks the reporter.

/// `synbackup backup`: the order of work, one function per step.
pub(crate) mod backup;
/// The Synapse version a service directory records (its `cell:info`).
pub(crate) mod cellinfo;
/// What a running cell says about itself: iden, boot, freeze, role, nexus index.
pub(crate) mod cellstate;
/// The top-level keys of a cell's config files, read and rewritten by line.
pub(crate) mod cellyaml;
/// The service's certificate directory, carried in a backup.
pub(crate) mod certdir;
/// The mark of a published backup a verification found damaged.
pub(crate) mod damaged;
/// Compacting (or plain) LMDB copies from held snapshots, hashed in place.
pub(crate) mod envcopy;
/// Freezing the running service for the snapshots; resuming it whatever happens.
pub(crate) mod freeze;
/// The record of a freeze in progress under the lock directory.
pub(crate) mod freeze_record;
/// The child process that resumes the service if synbackup dies during a freeze.
pub(crate) mod guardian;
/// LMDB through the vendored 0.9.33.
pub(crate) mod lmdb;
/// Opening a source environment without taking its lock file from its owner.
pub(crate) mod lockowner;
/// The backup manifest format.
pub(crate) mod manifest;
/// A backup taken on a mirror: the leader's index, the mirror caught up with it.
pub(crate) mod mirror;
/// The nexus index a directory holds on disk.
pub(crate) mod nexus;
/// The private temporary a backup is written under.
pub(crate) mod partial;
/// Checks of SRC and DST before anything is written.
pub(crate) mod paths;
/// The meter the copy workers share, counting into the caller's reporter.
pub(crate) mod progress;
/// Resuming a service, confirmed, retried for a bounded time.
pub(crate) mod resume;
/// The source walk and its skip rules.
pub(crate) mod scan;
/// What differs between Synapse 2.x and 3.x (Storm opts, versions, refusals).
pub(crate) mod synapse;
/// The stream under a telepath session: unix socket, TCP or TLS.
pub(crate) mod telelink;
/// The telepath client for a service's unix socket or a tcp/ssl URL.
pub(crate) mod telepath;
/// Telepath URLs and service directories, shown with passwords masked.
pub(crate) mod teleurl;
/// Checking a backup against its manifest.
pub(crate) mod verify;
/// The copy tasks and the `--jobs` workers that run them.
pub(crate) mod workers;
