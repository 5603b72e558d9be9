// SPDX-License-Identifier: Apache-2.0
//! The reporters of `base::progress`, the way the reader can see progress: `STATUS=`
//! lines (and start-timeout extensions) under systemd, a bar on a terminal, nothing
//! in a pipe or cron job (the final summary line is logged either way). [`standard`]
//! is the pair a command passes to the engine.
//!
//! A step without a byte count (verify, a wait for a service) keeps the status line
//! current and extends the start timeout, but only up to the step's own bound, so a
//! hung step still times out.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::base::fsutil::human;
use crate::base::logging;
use crate::base::progress::{Fanout, Reporter, Silent, Step};
use crate::host::systemd;

/// How often the systemd status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How much more time each refresh asks for while bytes keep moving.
const EXTEND_BY: Duration = Duration::from_secs(120);

/// What a command shows: the bar on a terminal (`show_bar`: false for -q) and
/// systemd's status line under a unit. Each decides when a step starts whether it
/// has anyone to show it to.
pub(crate) fn standard(show_bar: bool) -> Arc<Fanout> {
    Arc::new(Fanout(vec![
        Box::new(SystemdStatus),
        Box::new(TerminalBar { show_bar }),
    ]))
}

/// A step without a byte count (a wait for a service), on systemd's status line.
pub(crate) fn heartbeat(label: &str, bound: Duration) -> Box<dyn Step> {
    SystemdStatus.waiting(label, bound)
}

/// A thread that runs `tick` every [`STATUS_EVERY`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(mut tick: impl FnMut() + Send + 'static) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                tick();
                std::thread::park_timeout(STATUS_EVERY);
            }
        });
        Ticker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// systemd's status line (`systemctl status`), when a unit started us
/// (`NOTIFY_SOCKET`).
#[derive(Debug)]
pub(crate) struct SystemdStatus;

/// A counted step as systemd sees it: the ticker reads what the workers add.
struct StatusStep {
    shared: Arc<Counted>,
    _ticker: Ticker,
}

struct Counted {
    done: AtomicU64,
    total: u64,
    label: Mutex<String>,
}

impl Step for StatusStep {
    fn add(&self, n: u64) {
        self.shared.done.fetch_add(n, Ordering::Relaxed);
    }
    fn set_label(&self, label: &str) {
        if let Ok(mut l) = self.shared.label.lock() {
            *l = label.to_string();
        }
    }
}

/// A step without a byte count as systemd sees it: the ticker is all there is.
struct Beat {
    _ticker: Ticker,
}

impl Step for Beat {
    fn add(&self, _n: u64) {}
    fn set_label(&self, _label: &str) {}
}

impl Reporter for SystemdStatus {
    fn bytes(&self, label: &str, total: u64) -> Box<dyn Step> {
        if !systemd::notify_enabled() {
            return Silent.bytes(label, total);
        }
        let shared = Arc::new(Counted {
            done: AtomicU64::new(0),
            total,
            label: Mutex::new(label.to_string()),
        });
        let seen = shared.clone();
        let mut last = u64::MAX;
        let ticker = Ticker::start(move || {
            let done = seen.done.load(Ordering::Relaxed);
            let total = seen.total.max(1);
            let label = seen.label.lock().map(|l| l.clone()).unwrap_or_default();
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
        });
        Box::new(StatusStep {
            shared,
            _ticker: ticker,
        })
    }

    fn waiting(&self, label: &str, bound: Duration) -> Box<dyn Step> {
        if !systemd::notify_enabled() {
            return Silent.waiting(label, bound);
        }
        let label = label.to_string();
        let t0 = Instant::now();
        let ticker = Ticker::start(move || {
            let elapsed = t0.elapsed();
            systemd::status(&format!("{label} ({}s)", elapsed.as_secs()));
            if elapsed < bound {
                systemd::extend_timeout(EXTEND_BY.min(bound - elapsed + STATUS_EVERY * 2));
            }
        });
        Box::new(Beat { _ticker: ticker })
    }
}

/// The bar on a terminal: drawn when asked for (not -q), stderr is a terminal and
/// not the journal. Log lines are printed above it (`logging::set_progress_bar`).
#[derive(Debug)]
pub(crate) struct TerminalBar {
    pub(crate) show_bar: bool,
}

/// A counted step as a bar.
struct BarStep(ProgressBar);

impl Step for BarStep {
    fn add(&self, n: u64) {
        self.0.inc(n);
    }
    fn set_label(&self, label: &str) {
        self.0.set_message(label.to_string());
    }
}

impl Drop for BarStep {
    fn drop(&mut self) {
        self.0.finish_and_clear();
        logging::set_progress_bar(None);
    }
}

impl Reporter for TerminalBar {
    fn bytes(&self, label: &str, total: u64) -> Box<dyn Step> {
        if !(self.show_bar && std::io::stderr().is_terminal() && !logging::stderr_is_journal()) {
            return Silent.bytes(label, total);
        }
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
        Box::new(BarStep(bar))
    }

    /// The bar shows counted steps only.
    fn waiting(&self, label: &str, bound: Duration) -> Box<dyn Step> {
        Silent.waiting(label, bound)
    }
}
