// SPDX-License-Identifier: Apache-2.0
//! Exit codes and the typed failure that carries one.
//!
//! Operators script around `synbackup` (cron lines, `OnFailure=` hooks, monitoring
//! checks), so every kind of failure has its own documented, stable exit code. Code
//! deep in the call stack returns `anyhow` errors with context; where the *kind* of
//! failure is known it wraps a [`Failure`], and `main` finds it in the chain.

/// The documented exit codes (also in `synbackup(8)`, section EXIT STATUS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// Any failure without a more specific code.
    Other = 1,
    /// Bad command line or bad configuration file.
    Usage = 2,
    /// The source or destination is unusable (missing, not a Synapse directory,
    /// destination inside the source or not empty, unreadable or corrupt input).
    BadPath = 3,
    /// Not enough free space at the destination.
    NoSpace = 4,
    /// The running service could not be frozen (or resumed).
    Freeze = 5,
    /// Verification of a backup failed.
    Verify = 6,
    /// Another run holds the instance lock.
    Locked = 7,
    /// The service is running and must be stopped first, or could not be
    /// stopped or started.
    Service = 8,
    /// `status`: the last run failed or the last good backup is too old.
    Unhealthy = 9,
    /// A maintenance window failed and was rolled back.
    RolledBack = 10,
    /// A restore drill failed: the backup's copy did not boot or failed a check.
    Drill = 11,
    /// `run`: the local backup is made and verified, but its offsite copy failed;
    /// `offsite`: the repository could not be used or failed its check.
    Offsite = 12,
    /// `run` with `SYNBACKUP_SOURCE=mirror` and `SYNBACKUP_NO_MIRROR=fail`: no
    /// mirror was ready (the leader or every mirror did not answer, or no mirror
    /// caught up with the leader in time); nothing was backed up.
    NoMirror = 13,
    /// `seed-mirror`: the leader no longer holds the nexus entries the backup
    /// needs (its log was culled past the backup's index, or is off).
    NexusGone = 14,
    /// `nexus-trim` refused: the trim would break the point-in-time recovery
    /// chain (the archiver or a mirror behind, a damaged archive, a mirror that
    /// does not answer); nothing was culled.
    TrimRefused = 15,
    /// Stopped by SIGHUP (the terminal or SSH session went away).
    HungUp = 129,
    /// Interrupted by SIGINT.
    Interrupted = 130,
    /// Stopped by SIGTERM.
    Terminated = 143,
}

impl Code {
    pub(crate) fn as_i32(self) -> i32 {
        self as i32
    }
}

/// An error of a known kind: its message is shown to the operator as-is, and its
/// code becomes the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    pub(crate) code: Code,
    pub(crate) message: String,
}

/// Build an `anyhow::Error` of a known kind.
pub(crate) fn fail(code: Code, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code,
        message: message.into(),
    })
}

/// An error already told to the operator (as a journal event with a MESSAGE_ID):
/// `main` exits with its code without printing it again.
#[derive(Debug, thiserror::Error)]
#[error("failed (reported above), exit code {}", .0.as_i32())]
pub(crate) struct Reported(pub(crate) Code);

/// Mark an error as reported, keeping its exit code.
pub(crate) fn reported(err: &anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Reported(code_of(err)))
}

/// True when the error was already reported.
pub(crate) fn is_reported(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Reported>().is_some()
}

/// The exit code for an error chain: the first [`Failure`] in it, else `Other`.
pub(crate) fn code_of(err: &anyhow::Error) -> Code {
    err.chain()
        .find_map(|e| {
            e.downcast_ref::<Failure>()
                .map(|f| f.code)
                .or_else(|| e.downcast_ref::<Reported>().map(|r| r.0))
        })
        .unwrap_or(Code::Other)
}

/// Shorthand: return early with a typed failure.
macro_rules! bail_code {
    ($code:expr, $($arg:tt)*) => {
        return Err($crate::base::exit::fail($code, format!($($arg)*)))
    };
}
pub(crate) use bail_code;

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn code_is_found_under_context() {
        let err = Err::<(), _>(fail(Code::NoSpace, "full"))
            .context("outer")
            .unwrap_err();
        assert_eq!(code_of(&err), Code::NoSpace);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Code::Other);
    }
}
