// SPDX-License-Identifier: Apache-2.0
//! The ground floor every layer stands on: exit codes, logging, signals, fault
//! injection, filesystem helpers, the units of sizes and durations, the
//! EnvironmentFile syntax, and the traits long steps report their progress through.
//! Imports nothing of this crate outside `base`.

/// cachestat(2), for the tests of what a copy leaves in the page cache.
#[cfg(test)]
pub(crate) mod cachestat;
/// BLAKE3 or SHA-256: the digest of every copied byte.
pub(crate) mod digest;
/// One syncfs for everything a backup wrote (or an fsync per file).
pub(crate) mod durable;
/// systemd's EnvironmentFile= syntax: one parser for every file in it.
pub(crate) mod envfile;
/// Exit codes and typed failures.
pub(crate) mod exit;
/// Named fault-injection points for tests.
pub(crate) mod fault;
/// Copying one file of a backup: reflink, else copy_file_range, holes kept.
pub(crate) mod filecopy;
/// Sparse copies, fsync, atomic writes, free space.
pub(crate) mod fsutil;
/// Writing into another user's directory by descriptor, never through a link.
pub(crate) mod heldir;
/// SIGINT/SIGTERM handling.
pub(crate) mod interrupt;
/// Journal or stderr logging.
pub(crate) mod logging;
/// Paths as text: lossless keys for records, escaped words for people.
pub(crate) mod pathtext;
/// What a `--dry-run` of `cold` and `restore` prints.
pub(crate) mod plan;
/// Whether a recorded process still runs.
pub(crate) mod process;
/// The progress traits long steps report through (the reporters live above).
pub(crate) mod progress;
/// Hashing a file as the device holds it (O_DIRECT, read ahead on a thread).
pub(crate) mod readback;
/// Sizes and durations in config files and options.
pub(crate) mod units;
/// Extended attributes, ACLs and labels: read from a source, set on its copy.
pub(crate) mod xattrs;
