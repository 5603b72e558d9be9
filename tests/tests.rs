// SPDX-License-Identifier: Apache-2.0
//! The integration tests, grouped as `src/` is: the shared layers, then one group
//! per capability. Each runs the real binary against real LMDB environments or a
//! real Synapse Cortex (2.256.0 from the venv that `.ci/setup` makes,
//! `SYNBACKUP_TEST_VENV` points elsewhere; 3.7.0 from its Debian sid tree,
//! `SYNBACKUP_TEST_SYN3_ROOT`). A test that starts a Cortex runs on both release
//! lines: `NAME::v2_256` and `NAME::v3_7_0` (`util::line`). The real-systemd tests
//! are shell scripts in `tests/systemd/`.

mod util;

/// The engine: `backup` and `verify` on LMDB environments and a live Cortex.
mod engine {
    /// `synbackup backup` and `verify` on LMDB environments the tests create.
    mod backup;
    /// Bad input: each case one error line, its exit code, nothing left behind.
    mod bad_input;
    /// The copy engine's failure paths: a copy failing mid-way publishes nothing.
    mod copy_engine;
    /// Against a real, running Cortex: freeze, write load, Synapse's own tool.
    mod cortex;
    /// The source as it is: links, names, xattrs, ACLs, owners, sparse files; verify.
    mod fidelity;
    /// Never leave a service frozen: slow flush, failing resume, SIGKILL, SIGHUP.
    mod freeze;
    /// A service user who does not play fair: swaps after the scan, what others read.
    mod hostile_user;
    /// The snapshot step on a source that changes: environment set, sizes, socket.
    mod snapshots;
}

/// Instances and the nightly run: run, list, prune, status, metrics, the lock,
/// restore (the window's cases need systemd: `tests/systemd/`).
mod instance {
    /// Runs, retention, status and metrics, the lock, restore.
    mod instances;
    /// The shipped alert rules and dashboard against the metrics runs write.
    mod monitoring;
    /// Restore's copy: each byte read once, checked on the way, nothing left half done.
    mod restore_copy;
    /// Restore's and the drill's copies on a loop-mounted XFS: reflinks, checked.
    mod restore_reflink;
}

/// The TLS capability.
mod certs {
    /// The carried certificate directory; `restore --certs`; `ssl://` clients.
    mod carried;
    /// `certs`: the TLS material of a service, checked on real easycert material.
    mod check;
    /// `certs deploy`: a renewed HTTPS pair into a running Cortex, reloaded, rolled back.
    mod deploy;
    /// `certs INSTANCE`: certificate metrics and expiry events.
    mod record;
}

/// The offsite capability.
mod offsite {
    /// Offsite copies through the real restic: local and REST repositories, failures.
    mod restic;
}

/// The drill capability.
mod drill {
    /// `synbackup drill`: boot a backup's copy isolated, check it, clean up.
    mod boot;
    /// The upgrade rehearsal across releases: 2.230 to 2.256, 2.x to 3.x, a downgrade.
    mod rehearsal;
    /// The drilled cell sees none of the host's services and runs no dmon.
    mod sealed;
}

/// The host layer.
mod host {
    /// `synbackup sysctl` against fixture trees (tests/sysctl/NN-name/).
    mod sysctl;
}

/// The command surface.
mod commands {
    /// The bash, zsh and fish completion scripts, run in those shells.
    mod completions;
    /// The man pages cover every subcommand, option, exit code, MESSAGE_ID and config key.
    mod manpage;
}

/// Leaders and mirrors (real pairs on loopback, 2.256.0 and 3.7.0).
mod mirrors {
    /// A cell that holds its files but does not answer yet: waited for, refused.
    mod booting;
    /// A leader and a mirror made from its backup: freeze ownership, the nexus
    /// index in manifests and drills, roles and indexes on restore.
    mod pair;
    /// A leader named by a tcp:// URL with a password; restore asks the mirrors.
    mod remote;
    /// seed-mirror: a new mirror from the leader's backup follows the leader;
    /// refused when the leader's log was culled past the backup.
    mod seed;
    /// Nightly runs from a mirror, the leader never frozen; no mirror ready:
    /// fail, the leader, skip.
    mod source;
}

/// Point-in-time recovery: the nexus archive (real Cortexes, both lines).
mod pitr;

/// The harness itself: what every other test relies on.
mod harness;
