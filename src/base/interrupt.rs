// SPDX-License-Identifier: Apache-2.0
//! SIGINT/SIGTERM/SIGHUP handling (SIGHUP: a dropped SSH session, handled like
//! SIGTERM).
//!
//! The signal thread first runs the hook `main` installed (the engine's resume of a
//! frozen service: a frozen Synapse accepts no edits until someone resumes it, so a
//! signal must never leave one frozen), then sets a flag that the work checks
//! between chunks (`check()`), so each caller unwinds through its normal cleanup:
//! the backup engine removes its temporary, the cold window puts the original
//! directory back and starts the service. A second signal exits immediately after
//! the same hook (which waits for a resume in progress: the engine holds its lock),
//! except once a rollback has begun (`shield`): that one finishes.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::base::exit::{fail, Code};

/// The signal that interrupted us (0: none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Set once a rollback has begun: a further signal is noted, never an exit.
static SHIELDED: AtomicBool = AtomicBool::new(false);

/// A rollback begins: from now on a second SIGINT/SIGTERM no longer exits at once
/// (the rollback does not check for signals, it finishes and then reports).
pub(crate) fn shield() {
    SHIELDED.store(true, Ordering::SeqCst);
}
/// Start the signal thread. Call once, early in `main`; `on_signal` runs on every
/// signal before the flag is set (and before a second signal exits).
pub(crate) fn install(on_signal: fn(&str)) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let first = SIGNAL.swap(sig, Ordering::SeqCst) == 0;
                log::warn!("received {}, stopping", name_of(sig));
                on_signal("signal");
                if !first {
                    if SHIELDED.load(Ordering::SeqCst) {
                        log::warn!(
                            "a rollback is under way: it finishes first, then synbackup exits"
                        );
                    } else {
                        std::process::exit(code_for(sig).as_i32());
                    }
                }
            }
        })?;
    Ok(())
}

fn name_of(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "SIGTERM",
    }
}

fn code_for(sig: i32) -> Code {
    match sig {
        SIGINT => Code::Interrupted,
        SIGHUP => Code::HungUp,
        _ => Code::Terminated,
    }
}

/// True once a SIGINT, SIGTERM or SIGHUP arrived.
pub(crate) fn requested() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// An error if a signal arrived: call between steps and chunks.
pub(crate) fn check() -> Result<()> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        sig => Err(fail(code_for(sig), "interrupted by a signal")),
    }
}
