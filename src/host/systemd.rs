// SPDX-License-Identifier: Apache-2.0
//! Everything that talks to systemd: sd_notify (status lines, timeout extension)
//! and unit control through `systemctl`.
//!
//! sd_notify is wrapped here once; the rest of the code says `systemd::status(..)`
//! and never sees the socket. Outside a unit (no `NOTIFY_SOCKET`) these are no-ops.
//!
//! Long runs: the units are `Type=oneshot` with a start timeout sized for a normal
//! backup; while the copy makes progress we send `EXTEND_TIMEOUT_USEC` for the next
//! interval, so a large backup is never killed for being large, and a hung one (no
//! progress, no extension) still hits the timeout. Waits for another unit to stop
//! or start extend it too, each only up to its own bound.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::base::exit::{fail, Code};
use sd_notify::NotifyState;

/// True when running under a unit that listens for notifications.
pub(crate) fn notify_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Show `text` in `systemctl status` (`STATUS=`).
pub(crate) fn status(text: &str) {
    if notify_enabled() {
        if let Err(e) = sd_notify::notify(false, &[NotifyState::Status(text)]) {
            log::debug!("sd_notify STATUS failed: {e}");
        }
    }
}

/// Tell systemd a `Type=notify` service is ready (`READY=1`).
pub(crate) fn ready() {
    if notify_enabled() {
        if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
            log::debug!("sd_notify READY failed: {e}");
        }
    }
}

/// Keep the unit's watchdog (`WatchdogSec=`) from firing (`WATCHDOG=1`); a no-op
/// when the unit has no watchdog.
pub(crate) fn watchdog() {
    if notify_enabled() && std::env::var_os("WATCHDOG_USEC").is_some() {
        if let Err(e) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
            log::debug!("sd_notify WATCHDOG failed: {e}");
        }
    }
}

/// Wait (up to `timeout`) until systemd has read every notification sent so far:
/// the final `STATUS=` of a process about to exit is otherwise lost when systemd
/// reads it after the exit (sd_notify_barrier(3): `BARRIER=1` with a pipe's write
/// end, which systemd closes once it has got that far).
pub(crate) fn barrier(timeout: Duration) {
    if notify_enabled() {
        if let Err(e) = try_barrier(timeout) {
            log::debug!("sd_notify BARRIER failed: {e:#}");
        }
    }
}

fn try_barrier(timeout: Duration) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{
        sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::{AsFd, AsRawFd};
    let path = std::env::var("NOTIFY_SOCKET").context("no NOTIFY_SOCKET")?;
    let addr = match path.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes())?,
        None => UnixAddr::new(path.as_str())?,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let (read_end, write_end) = nix::unistd::pipe()?;
    let fds = [write_end.as_raw_fd()];
    sendmsg(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(b"BARRIER=1\n")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        Some(&addr),
    )?;
    drop(write_end);
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    poll(
        &mut [PollFd::new(read_end.as_fd(), PollFlags::POLLHUP)],
        PollTimeout::from(ms),
    )?;
    Ok(())
}

/// Ask for `extra` more time before the unit's start timeout fires.
pub(crate) fn extend_timeout(extra: Duration) {
    if notify_enabled() {
        let usec = extra.as_micros().min(u128::from(u32::MAX)) as u32;
        if let Err(e) = sd_notify::notify(false, &[NotifyState::ExtendTimeoutUsec(usec)]) {
            log::debug!("sd_notify EXTEND_TIMEOUT_USEC failed: {e}");
        }
    }
}

/// Inside a bounded wait: say what we wait for and ask for a little more time (the
/// wait's own deadline ends it, so a hung unit still fails).
fn keep_alive(what: &str) {
    status(what);
    extend_timeout(Duration::from_secs(30));
}

/// Run `systemctl ARGS`, returning its stdout; an error names the command and what
/// systemctl said.
pub(crate) fn systemctl(args: &[&str]) -> Result<String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .with_context(|| format!("cannot run systemctl {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unit's `ActiveState` (`active`, `inactive`, `failed`, `activating` ...).
pub(crate) fn active_state(unit: &str) -> Result<String> {
    let out = systemctl(&["show", "--property=ActiveState", "--value", unit])?;
    Ok(parse_value(&out))
}

/// The value printed by `systemctl show --value` (one line).
pub(crate) fn parse_value(out: &str) -> String {
    out.lines().next().unwrap_or("").trim().to_string()
}

/// The unit's main PID (0 when it has none).
pub(crate) fn main_pid(unit: &str) -> Result<u32> {
    let out = systemctl(&["show", "--property=MainPID", "--value", unit])?;
    Ok(parse_value(&out).parse().unwrap_or(0))
}

/// True when the unit is known to systemd (has a unit file or is loaded).
pub(crate) fn unit_exists(unit: &str) -> Result<bool> {
    let out = systemctl(&["show", "--property=LoadState", "--value", unit])?;
    Ok(parse_value(&out) == "loaded")
}

fn wait_state(unit: &str, want: &[&str], timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = active_state(unit)?;
        if want.contains(&state.as_str()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(
                Code::Service,
                format!(
                    "{unit} did not {what} within {}s (it is {state}); see journalctl -u {unit}",
                    timeout.as_secs()
                ),
            ));
        }
        keep_alive(&format!("waiting for {unit} to {what}"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stop `unit` and wait until it is inactive (or failed).
pub(crate) fn stop_unit(unit: &str, timeout: Duration) -> Result<()> {
    log::info!("stopping {unit}");
    systemctl(&["stop", "--no-block", unit]).map_err(|e| fail(Code::Service, format!("{e:#}")))?;
    wait_state(unit, &["inactive", "failed"], timeout, "stop")
}

/// Start `unit` and wait until it is active. A failed state and the start-rate
/// counter are reset first: a unit with `Restart=` that was started and stopped a
/// few times in a window would otherwise be refused ("start request repeated too
/// quickly") exactly when it must come back.
pub(crate) fn start_unit(unit: &str, timeout: Duration) -> Result<()> {
    log::info!("starting {unit}");
    if let Err(e) = systemctl(&["reset-failed", unit]) {
        log::debug!("{e:#}");
    }
    systemctl(&["start", "--no-block", unit]).map_err(|e| fail(Code::Service, format!("{e:#}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        match active_state(unit)?.as_str() {
            "active" => return Ok(()),
            "failed" => {
                return Err(fail(
                    Code::Service,
                    format!("{unit} failed to start; see journalctl -u {unit}"),
                ))
            }
            // Restart= may cycle it through these: keep waiting.
            state if Instant::now() > deadline => {
                return Err(fail(
                    Code::Service,
                    format!(
                        "{unit} did not start within {}s (it is {state}); see journalctl -u {unit}",
                        timeout.as_secs()
                    ),
                ))
            }
            _ => {
                keep_alive(&format!("waiting for {unit} to start"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Units that stop when `unit` stops (`Requires=`, `BindsTo=` or `PartOf=` it) and
/// are active now: they must be started again after the unit is.
pub(crate) fn active_dependents(unit: &str) -> Result<Vec<String>> {
    let out = systemctl(&[
        "show",
        "-p",
        "RequiredBy",
        "-p",
        "BoundBy",
        "-p",
        "ConsistsOf",
        unit,
    ])?;
    let mut deps = Vec::new();
    for dep in parse_unit_lists(&out) {
        if active_state(&dep)? == "active" {
            deps.push(dep);
        }
    }
    Ok(deps)
}

/// The unit names of `systemctl show -p A -p B` output (`A=x y`), deduplicated.
pub(crate) fn parse_unit_lists(out: &str) -> Vec<String> {
    let mut units: Vec<String> = Vec::new();
    for line in out.lines() {
        let Some((_, list)) = line.split_once('=') else {
            continue;
        };
        for u in list.split_whitespace() {
            if !units.iter().any(|x| x == u) {
                units.push(u.to_string());
            }
        }
    }
    units
}

/// Start the units `deps` again (each waited for); returns the errors, one line each.
pub(crate) fn start_dependents(deps: &[String], timeout: Duration) -> Vec<String> {
    deps.iter()
        .filter_map(|d| start_unit(d, timeout).err().map(|e| format!("{e:#}")))
        .inspect(|e| log::error!("{e}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_lists() {
        assert_eq!(
            super::parse_unit_lists(
                "RequiredBy=a.service b.service\nBoundBy=\nConsistsOf=a.service c.service\n"
            ),
            vec!["a.service", "b.service", "c.service"]
        );
    }

    #[test]
    fn parse_show_value() {
        assert_eq!(super::parse_value("active\n"), "active");
        assert_eq!(super::parse_value(""), "");
    }
}
