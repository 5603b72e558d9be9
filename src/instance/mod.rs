// SPDX-License-Identifier: Apache-2.0
//! Instances: one configured service each (`/etc/synbackup/NAME.conf`), with its
//! backup root, catalog, retention, lock, status and metrics, and the nightly run.
//! Imports the engine and the host layer, never a command.

/// An instance's backups in its backup root.
pub(crate) mod catalog;
/// Where an instance's certificate directory is.
pub(crate) mod certdir;
/// Instance configuration files.
pub(crate) mod config;
/// Where configuration, state, locks and metrics live.
pub(crate) mod dirs;
/// The systemd generator that writes per-instance ReadWritePaths= drop-ins.
pub(crate) mod generator;
/// Directories kept by maintenance windows, and their expiry.
pub(crate) mod kept;
/// The per-instance lock.
pub(crate) mod lock;
/// `SYNBACKUP_NOTIFY`: a command told of each run's start and end.
pub(crate) mod notify;
/// Which backups have an offsite copy, and its restic snapshot.
pub(crate) mod offsite_copies;
/// Retention applied to a backup root.
pub(crate) mod prune;
/// The run recorder: status, metrics and the journal event of every run.
pub(crate) mod record;
/// The instance's offsite restic repository.
pub(crate) mod repository;
/// Which backups retention keeps.
pub(crate) mod retention;
/// Every config key, declared once: its kind, default and doc line.
pub(crate) mod settings;
/// Where a run backs up from: the leader or a mirror, and the fallback policy.
pub(crate) mod source;
/// Status files and metrics for monitoring.
pub(crate) mod status;
/// Which backups a drill booted (per backup, in the state directory).
pub(crate) mod tested;
