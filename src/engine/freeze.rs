// SPDX-License-Identifier: Apache-2.0
//! Freezing a running service for the moment the snapshots are taken, and the one
//! place that knows a service is frozen.
//!
//! A frozen Synapse accepts no edits until someone resumes it, so nothing may leave
//! one frozen: the [`Frozen`] guard resumes on drop (errors, panics), and `main`
//! installs [`resume_if_frozen`] as the signal hook.
//!
//! Exactly-once resume: the freezer publishes the frozen socket only after `freeze`
//! returned and then re-checks the signal flag; the signal thread sets the flag
//! before it takes the socket. Whichever runs second sees the other's write.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use crate::base::interrupt::requested;
use crate::engine::telepath;

/// When to freeze the running service while the snapshots are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FreezeMode {
    /// Freeze when the service answers on its socket; a stopped service needs none.
    Auto,
    /// Fail unless the service can be frozen.
    Always,
    /// Never freeze: each environment is consistent on its own (like Synapse's tool).
    Never,
}

/// The socket of the service we froze and have not resumed yet.
static FROZEN: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Record that the service behind `sock` is frozen; resumes at once if a signal
/// arrived meanwhile. Pair with [`resume_if_frozen`] (the [`Frozen`] guard does).
fn publish_frozen(sock: &Path) {
    if let Ok(mut slot) = FROZEN.lock() {
        *slot = Some(sock.to_path_buf());
    }
    if requested() {
        resume_if_frozen("signal during freeze");
    }
}

/// Resume the frozen service, if any, exactly once. Returns whether it resumed one.
pub(crate) fn resume_if_frozen(why: &str) -> bool {
    let sock = match FROZEN.lock() {
        Ok(mut slot) => slot.take(),
        Err(_) => None,
    };
    let Some(sock) = sock else { return false };
    match telepath::Client::connect(&sock, Duration::from_secs(30)).and_then(|mut c| c.resume()) {
        Ok(()) => log::info!("resumed the service at {} ({why})", sock.display()),
        Err(e) => log::error!(
            "could not resume the service at {}: {e:#}; resume it with: python -m synapse.tools.service.snapshot resume --url cell://{}",
            sock.display(),
            sock.parent().unwrap_or(Path::new("/")).display()
        ),
    }
    true
}

/// A frozen service: resumed when this guard is dropped (errors, panics) unless
/// resumed before.
pub(crate) struct Frozen {
    _private: (),
}

impl Frozen {
    /// Freeze the service behind `sock` through telepath.
    pub(crate) fn freeze(sock: &Path, timeout_secs: u64) -> Result<Frozen> {
        let mut client = telepath::Client::connect(sock, Duration::from_secs(30))?;
        client.freeze(timeout_secs)?;
        publish_frozen(sock);
        Ok(Frozen { _private: () })
    }

    /// Resume now.
    pub(crate) fn resume(self) {
        drop(self)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        resume_if_frozen("done");
    }
}
