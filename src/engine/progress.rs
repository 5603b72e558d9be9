// SPDX-License-Identifier: Apache-2.0
//! Progress of a long copy, told the way the reader can see it: a bar on a
//! terminal, `STATUS=` lines (and timeout extensions) under systemd, nothing in a
//! pipe or cron job (the final summary line is logged either way).
//!
//! Steps that move no countable bytes (verify, a wait for a service) hold a
//! [`Heartbeat`]: it keeps the status line current and extends the start timeout,
//! but only up to the step's own bound, so a hung step still times out.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::base::fsutil::human;
use crate::base::logging;
use crate::host::systemd;

/// How often the systemd status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How much more time each refresh asks for while bytes keep moving.
const EXTEND_BY: Duration = Duration::from_secs(120);

struct Shared {
    done: AtomicU64,
    total: AtomicU64,
    label: Mutex<String>,
    stop: AtomicBool,
}

/// A progress meter shared by the copy workers.
pub(crate) struct Progress {
    shared: Arc<Shared>,
    bar: Option<ProgressBar>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Start a meter for about `total` bytes. `show_bar`: draw a bar if stderr is a
    /// terminal (callers pass false for -q).
    pub(crate) fn start(label: &str, total: u64, show_bar: bool) -> Progress {
        let shared = Arc::new(Shared {
            done: AtomicU64::new(0),
            total: AtomicU64::new(total),
            label: Mutex::new(label.to_string()),
            stop: AtomicBool::new(false),
        });
        let bar = (show_bar && std::io::stderr().is_terminal() && !logging::stderr_is_journal())
            .then(|| {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_message(label.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                logging::set_progress_bar(Some(bar.clone()));
                bar
            });
        let ticker = systemd::notify_enabled().then(|| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut last = u64::MAX;
                while !shared.stop.load(Ordering::Relaxed) {
                    let done = shared.done.load(Ordering::Relaxed);
                    let total = shared.total.load(Ordering::Relaxed).max(1);
                    let label = shared.label.lock().map(|l| l.clone()).unwrap_or_default();
                    systemd::status(&format!(
                        "{label}: {} of {} ({}%)",
                        human(done),
                        human(total),
                        (done * 100 / total).min(100)
                    ));
                    if done != last {
                        systemd::extend_timeout(EXTEND_BY);
                        last = done;
                    }
                    std::thread::park_timeout(STATUS_EVERY);
                }
            })
        });
        Progress {
            shared,
            bar,
            ticker,
        }
    }

    /// Count `n` more bytes done.
    pub(crate) fn add(&self, n: u64) {
        // A slow disk on demand, for the timeout tests (a no-op otherwise).
        let _ = crate::base::fault::point("copy-chunk");
        self.shared.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Change what is being done (shown in the bar and the status line).
    pub(crate) fn set_label(&self, label: &str) {
        if let Ok(mut l) = self.shared.label.lock() {
            *l = label.to_string();
        }
        if let Some(bar) = &self.bar {
            bar.set_message(label.to_string());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            logging::set_progress_bar(None);
        }
    }
}

/// Keeps systemd informed through a long step without a byte count: `STATUS=`
/// with the elapsed time, and `EXTEND_TIMEOUT_USEC` until `bound` has passed.
pub(crate) struct Heartbeat {
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Start beating for a step called `label` that should end within `bound`.
    pub(crate) fn start(label: &str, bound: Duration) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = systemd::notify_enabled().then(|| {
            let stop = stop.clone();
            let label = label.to_string();
            std::thread::spawn(move || {
                let t0 = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let elapsed = t0.elapsed();
                    systemd::status(&format!("{label} ({}s)", elapsed.as_secs()));
                    if elapsed < bound {
                        systemd::extend_timeout(EXTEND_BY.min(bound - elapsed + STATUS_EVERY * 2));
                    }
                    std::thread::park_timeout(STATUS_EVERY);
                }
            })
        });
        Heartbeat { stop, ticker }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
