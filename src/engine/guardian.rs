// SPDX-License-Identifier: Apache-2.0
//! The guardian: a small child process that resumes the service if synbackup dies
//! while the service may be frozen (SIGKILL, the OOM killer, an abort).
//!
//! Before the freeze call, the freezer starts its own binary again (`/proc/self/exe`,
//! named `synbackup-guardian`, with `SYNBACKUP_GUARDIAN_SOCK` set) with a pipe as
//! its stdin. The guardian opens its own telepath session and waits on the pipe:
//! `done` (the freezer confirmed the resume) ends it quietly; end of file means the
//! freezer is gone, since the kernel closes the pipe when the process dies however
//! it dies. That is what `PR_SET_PDEATHSIG` would tell, but tied to the process
//! rather than to the thread that spawned the child. SIGTERM, SIGINT and SIGHUP make
//! the guardian resume at once too (`systemctl stop`, also what systemd sends to
//! the unit's other processes after the OOM killer took the main one).
//!
//! It runs in its own process group, so a SIGKILL of synbackup's process group (a
//! shell's `kill -9 -PGID`, a terminal) does not reach it. Under systemd it stays
//! in the unit's cgroup: `systemctl kill -s KILL` (whom: all) kills it with the
//! main process, whatever `KillMode=` says, and `KillMode=` controls only the stop
//! job, in which the guardian gets SIGTERM first and resumes. For that one case the
//! freeze record (`freeze_record`) lets the next run resume the service.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::base::logging;
use crate::engine::resume::{ensure_resumed, resume_on, Resumed, RESUME_BOUND};
use crate::engine::telepath::Client;

/// The socket to guard; set only in the guardian's environment.
const ENV_SOCK: &str = "SYNBACKUP_GUARDIAN_SOCK";
/// The freeze record to remove once resumed.
const ENV_RECORD: &str = "SYNBACKUP_GUARDIAN_RECORD";
/// The word the freezer sends when it resumed the service itself.
const DONE: &str = "done";

/// A running guardian; [`Guardian::release`] once the service is resumed.
pub(crate) struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guardian {
    /// Start a guardian for the service at `sock`.
    pub(crate) fn spawn(sock: &Path, record: Option<&Path>) -> Result<Guardian> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("synbackup-guardian")
            .env(ENV_SOCK, sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0);
        match record {
            Some(r) => cmd.env(ENV_RECORD, r),
            None => cmd.env_remove(ENV_RECORD),
        };
        let mut child = cmd.spawn().context("cannot start the freeze guardian")?;
        let stdin = child.stdin.take();
        log::debug!("freeze guardian pid {} for {}", child.id(), sock.display());
        Ok(Guardian { child, stdin })
    }

    /// The freezer resumed the service: end the guardian without it acting.
    pub(crate) fn release(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{DONE}");
        }
        let _ = self.child.wait();
    }
}

/// In the guardian process: guard and return its exit code; None in synbackup.
pub(crate) fn main_if_guardian() -> Option<ExitCode> {
    let sock = PathBuf::from(std::env::var_os(ENV_SOCK)?);
    let record = std::env::var_os(ENV_RECORD).map(PathBuf::from);
    logging::init(log::LevelFilter::Info);
    Some(match guard(&sock, record.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("guardian: {e:#}");
            ExitCode::FAILURE
        }
    })
}

/// Why the guardian woke up.
enum Wake {
    Done,
    FreezerGone,
    Signal(i32),
}

fn guard(sock: &Path, record: Option<&Path>) -> Result<()> {
    let freezer = nix::unistd::getppid();
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let stx = tx.clone();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = stx.send(Wake::Signal(sig));
        }
    });
    // Our own session now, while the service still answers quickly.
    let mut client = Client::connect(sock, Duration::from_secs(10)).ok();
    std::thread::spawn(move || {
        let mut line = String::new();
        let wake = match BufReader::new(std::io::stdin()).read_line(&mut line) {
            Ok(_) if line.trim() == DONE => Wake::Done,
            _ => Wake::FreezerGone,
        };
        let _ = tx.send(wake);
    });
    let why = match rx.recv() {
        Ok(Wake::Done) => return Ok(()),
        Ok(Wake::Signal(sig)) => format!("guardian received signal {sig}"),
        Ok(Wake::FreezerGone) | Err(_) => {
            format!("synbackup (pid {freezer}) ended while the service may be frozen")
        }
    };
    log::warn!("{why}: resuming the service at {}", sock.display());
    let held = client.as_mut().map(resume_on);
    let outcome = match held {
        Some(Ok(r)) => r,
        _ => ensure_resumed(sock, RESUME_BOUND)?,
    };
    if let Some(r) = record {
        let _ = std::fs::remove_file(r);
    }
    match outcome {
        Resumed::Now => log::warn!("guardian resumed the service at {}", sock.display()),
        Resumed::WasNotFrozen | Resumed::NotRunning => {
            log::info!("guardian: the service at {} was not frozen", sock.display())
        }
    }
    Ok(())
}
