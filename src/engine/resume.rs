// SPDX-License-Identifier: Apache-2.0
//! Making sure a service is not left frozen, whatever happened to the freeze.
//!
//! Each attempt opens a fresh connection (the one that froze may be the one that
//! failed), calls `resume`, treats the service's "not frozen" (`BadState`) as done,
//! and then confirms with `getCellInfo()` that `cell.paused` is false. A socket that
//! is gone or refuses (nothing listens) means the service does not run, so it is
//! not frozen either. Attempts are retried for [`RESUME_BOUND`]; after that the
//! caller fails with the freeze exit code, naming the service.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::base::exit::{fail, Code};
use crate::engine::synapse::resume_command;
use crate::engine::telepath::{self, Client};

/// How long resuming is retried before the run fails (documented in synbackup(8)).
pub(crate) const RESUME_BOUND: Duration = Duration::from_secs(60);
/// Pause between two resume attempts.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// Bound of each connect and call of an attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a successful [`ensure_resumed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resumed {
    /// `resume` was accepted and the cell reports not paused.
    Now,
    /// The service said it was not frozen (and reports not paused).
    WasNotFrozen,
    /// Nothing listens on the socket: a service that does not run is not frozen.
    NotRunning,
}

/// Resume the service behind `sock` and confirm it is not paused, retrying for
/// `bound`. The error carries [`Code::Freeze`] and says how to resume by hand.
pub(crate) fn ensure_resumed(sock: &Path, bound: Duration) -> Result<Resumed> {
    let deadline = Instant::now() + bound;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match resume_once(sock) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if Instant::now() + RETRY_EVERY >= deadline {
            return Err(fail(
                Code::Freeze,
                format!(
                    "the service at {} may still be frozen: {attempts} resume attempts in {} s failed, the last: {last:#}; resume it with: {}",
                    sock.display(),
                    bound.as_secs(),
                    resume_command(sock.parent().unwrap_or(Path::new("/")), None)
                ),
            ));
        }
        log::warn!(
            "resuming the service at {} (attempt {attempts}): {last:#}; retrying",
            sock.display()
        );
        thread::sleep(RETRY_EVERY);
    }
}

/// One attempt on a fresh connection.
fn resume_once(sock: &Path) -> Result<Resumed> {
    let mut client = match Client::connect(sock, CALL_TIMEOUT) {
        Ok(c) => c,
        Err(e) if nothing_listens(&e) => return Ok(Resumed::NotRunning),
        Err(e) => return Err(e),
    };
    resume_on(&mut client)
}

/// `resume` on an open session, then the `getCellInfo` confirmation.
pub(crate) fn resume_on(client: &mut Client) -> Result<Resumed> {
    let outcome = match client.resume() {
        Ok(()) => Resumed::Now,
        Err(e) if telepath::is_bad_state(&e) => Resumed::WasNotFrozen,
        Err(e) => return Err(e),
    };
    if client.paused()? {
        bail!("getCellInfo still reports the cell paused after resume");
    }
    Ok(outcome)
}

/// True when the connection failed because no process listens on the socket.
pub(crate) fn nothing_listens(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            )
        })
    })
}
