// SPDX-License-Identifier: Apache-2.0
//! The engine's side of progress: a meter the copy workers share, counting into
//! whatever [`Reporter`] the caller passed (a bar, systemd's status line, nothing).
//! The engine never decides how progress is shown (`host::progress` does).

use std::time::Duration;

use crate::base::progress::{Reporter, Step};

/// A progress meter shared by the copy workers.
pub(crate) struct Progress(Box<dyn Step>);

impl Progress {
    /// Start a meter for about `total` bytes.
    pub(crate) fn start(reporter: &dyn Reporter, label: &str, total: u64) -> Progress {
        Progress(reporter.bytes(label, total))
    }

    /// Count `n` more bytes done.
    pub(crate) fn add(&self, n: u64) {
        // A slow disk on demand, for the timeout tests (a no-op otherwise).
        let _ = crate::base::fault::point("copy-chunk");
        self.0.add(n);
    }

    /// Change what is being done (shown in the bar and the status line).
    pub(crate) fn set_label(&self, label: &str) {
        self.0.set_label(label);
    }
}

/// Keeps the watchers informed through a long step without a byte count, until
/// `bound` has passed; dropping it ends the step.
pub(crate) struct Heartbeat {
    _step: Box<dyn Step>,
}

impl Heartbeat {
    /// Start beating for a step called `label` that should end within `bound`.
    pub(crate) fn start(reporter: &dyn Reporter, label: &str, bound: Duration) -> Heartbeat {
        Heartbeat {
            _step: reporter.waiting(label, bound),
        }
    }
}
