// SPDX-License-Identifier: Apache-2.0
//! Progress told without knowing who watches (as rustic_core's `ProgressBars`): a
//! long step calls a [`Reporter`] for a [`Step`] and counts its bytes into it; the
//! front end decides what a reporter is: a bar on a terminal, `STATUS=` lines under
//! systemd, both, or nothing. The engine sees only these traits; the reporters live
//! in `host::progress`.

use std::fmt::Debug;
use std::time::Duration;

/// One long step under way. Dropping it ends the step (a bar is cleared, a status
/// ticker stops).
pub(crate) trait Step: Send + Sync {
    /// Count `n` more bytes done. Every copy worker calls it once per buffer: it
    /// must stay cheap (an atomic add, no allocation).
    fn add(&self, n: u64);
    /// Change what is being done (shown in the bar and the status line).
    fn set_label(&self, label: &str);
}

/// Whoever shows progress: makes one [`Step`] per long step.
pub(crate) trait Reporter: Send + Sync + Debug {
    /// A step that moves about `total` bytes.
    fn bytes(&self, label: &str, total: u64) -> Box<dyn Step>;
    /// A step that moves no countable bytes (verify, a wait for a service) and
    /// should end within `bound`: watchers are kept informed up to that bound only,
    /// so a hung step still times out.
    fn waiting(&self, label: &str, bound: Duration) -> Box<dyn Step>;
}

/// A step nobody watches.
struct Unwatched;

impl Step for Unwatched {
    fn add(&self, _n: u64) {}
    fn set_label(&self, _label: &str) {}
}

/// Shows nothing (a reporter with no watchers).
#[derive(Debug)]
pub(crate) struct Silent;

impl Reporter for Silent {
    fn bytes(&self, _label: &str, _total: u64) -> Box<dyn Step> {
        Box::new(Unwatched)
    }
    fn waiting(&self, _label: &str, _bound: Duration) -> Box<dyn Step> {
        Box::new(Unwatched)
    }
}

/// Several reporters at once: each step is shown by every one of them.
#[derive(Debug)]
pub(crate) struct Fanout(pub(crate) Vec<Box<dyn Reporter>>);

/// A step shown by several reporters.
struct Steps(Vec<Box<dyn Step>>);

impl Step for Steps {
    fn add(&self, n: u64) {
        for s in &self.0 {
            s.add(n);
        }
    }
    fn set_label(&self, label: &str) {
        for s in &self.0 {
            s.set_label(label);
        }
    }
}

impl Reporter for Fanout {
    fn bytes(&self, label: &str, total: u64) -> Box<dyn Step> {
        Box::new(Steps(
            self.0.iter().map(|r| r.bytes(label, total)).collect(),
        ))
    }
    fn waiting(&self, label: &str, bound: Duration) -> Box<dyn Step> {
        Box::new(Steps(
            self.0.iter().map(|r| r.waiting(label, bound)).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Counts what its steps were told.
    #[derive(Debug)]
    struct Counting(Arc<AtomicU64>);

    impl Step for Counting {
        fn add(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
        fn set_label(&self, _label: &str) {}
    }

    impl Reporter for Counting {
        fn bytes(&self, _label: &str, _total: u64) -> Box<dyn Step> {
            Box::new(Counting(self.0.clone()))
        }
        fn waiting(&self, _label: &str, _bound: Duration) -> Box<dyn Step> {
            Box::new(Counting(self.0.clone()))
        }
    }

    #[test]
    fn fanout_tells_every_reporter() {
        let (a, b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let both = Fanout(vec![
            Box::new(Counting(a.clone())),
            Box::new(Silent),
            Box::new(Counting(b.clone())),
        ]);
        let step = both.bytes("copying", 10);
        step.add(3);
        step.add(4);
        assert_eq!(
            (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)),
            (7, 7)
        );
    }
}
