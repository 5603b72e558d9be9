// SPDX-License-Identifier: Apache-2.0
//! SIGINT/SIGTERM handling, and the one place that knows a service is frozen.
//!
//! A frozen Synapse accepts no edits until someone resumes it, so a signal must never
//! leave one frozen. The signal thread resumes a frozen service at once, then sets
//! a flag that the work checks between chunks (`check()`), so each caller unwinds
//! through its normal cleanup: the backup engine removes its temporary, the cold
//! window puts the original directory back and starts the service. A second signal
//! exits immediately (after the same resume).
//!
//! Exactly-once resume: the freezer publishes the frozen socket only after `freeze`
//! returned and then re-checks the flag; the signal thread sets the flag before it
//! takes the socket. Whichever runs second sees the other's write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::exit::{fail, Code};
use crate::telepath;

/// The signal that interrupted us (0: none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The socket of the service we froze and have not resumed yet.
static FROZEN: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Start the signal thread. Call once, early in `main`.
pub(crate) fn install() -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let first = SIGNAL.swap(sig, Ordering::SeqCst) == 0;
                log::warn!(
                    "received {}, stopping",
                    if sig == SIGINT { "SIGINT" } else { "SIGTERM" }
                );
                resume_if_frozen("signal");
                if !first {
                    std::process::exit(code_for(sig).as_i32());
                }
            }
        })?;
    Ok(())
}

fn code_for(sig: i32) -> Code {
    if sig == SIGINT {
        Code::Interrupted
    } else {
        Code::Terminated
    }
}

/// True once a SIGINT or SIGTERM arrived.
pub(crate) fn requested() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// An error if a signal arrived: call between steps and chunks.
pub(crate) fn check() -> Result<()> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        sig => Err(fail(
            code_for(sig),
            "interrupted by a signal; nothing was published",
        )),
    }
}

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
