// SPDX-License-Identifier: Apache-2.0
//! Named fault-injection points for the test suites.
//!
//! Recovery code (resume after a failed backup, rollback of a maintenance window)
//! must be tested against real services, and the failures it recovers from (a disk
//! filling at the wrong moment, a crash between two steps) cannot be summoned on
//! demand. `SYNBACKUP_FAULT=NAME[,NAME...]` makes the point called NAME fail as a
//! real error would; `panic:NAME` makes it panic; `delay:NAME:MS` makes it take MS
//! milliseconds longer each time it is passed (a slow disk, for timeout tests);
//! `hold:NAME` makes it stop there (logging "fault injection: holding at NAME")
//! until a signal arrives or ten minutes passed, then fail: a test can kill the
//! process at that point; or until the file `SYNBACKUP_FAULT_RELEASE` names
//! exists, then go on: a test can change the source at that point. Documented in
//! synbackup(8) as a testing aid; unset, the points cost one environment lookup.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::base::interrupt;

/// The longest a `hold:` point waits.
const HOLD_MAX: Duration = Duration::from_secs(600);

/// Fail (or panic) here if `SYNBACKUP_FAULT` names this point.
pub(crate) fn point(name: &str) -> Result<()> {
    let Some(spec) = std::env::var_os("SYNBACKUP_FAULT") else {
        return Ok(());
    };
    let spec = spec.to_string_lossy();
    for item in spec.split(',').map(str::trim) {
        if item == name {
            log::warn!("fault injection: failing at {name}");
            return Err(anyhow!("injected fault at {name} (SYNBACKUP_FAULT)"));
        }
        if item.strip_prefix("hold:") == Some(name) {
            log::warn!("fault injection: holding at {name}");
            let until = Instant::now() + HOLD_MAX;
            let release = std::env::var_os("SYNBACKUP_FAULT_RELEASE");
            let released = || release.as_ref().is_some_and(|f| Path::new(f).exists());
            while !interrupt::requested() && !released() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            interrupt::check()?;
            if released() {
                log::warn!("fault injection: released at {name}");
                return Ok(());
            }
            return Err(anyhow!("injected hold at {name} ended (SYNBACKUP_FAULT)"));
        }
        if item.strip_prefix("panic:") == Some(name) {
            panic!("injected panic at {name} (SYNBACKUP_FAULT)");
        }
        if let Some((point, ms)) = item.strip_prefix("delay:").and_then(|d| d.split_once(':')) {
            if point == name {
                let ms = ms.parse::<u64>().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }
    Ok(())
}
