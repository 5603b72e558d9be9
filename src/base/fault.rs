// SPDX-License-Identifier: Apache-2.0
//! Named fault-injection points for the test suites.
//!
//! Recovery code (resume after a failed backup, rollback of a maintenance window)
//! must be tested against real services, and the failures it recovers from (a disk
//! filling at the wrong moment, a crash between two steps) cannot be summoned on
//! demand. `SYNBACKUP_FAULT=NAME[,NAME...]` makes the point called NAME fail as a
//! real error would; `panic:NAME` makes it panic; `delay:NAME:MS` makes it take MS
//! milliseconds longer each time it is passed (a slow disk, for timeout tests). Documented in synbackup(8) as a
//! testing aid; unset, the points cost one environment lookup.

use anyhow::{anyhow, Result};

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
        if item.strip_prefix("panic:") == Some(name) {
            panic!("injected panic at {name} (SYNBACKUP_FAULT)");
        }
        if let Some((point, ms)) = item.strip_prefix("delay:").and_then(|d| d.split_once(':')) {
            if point == name {
                let ms = ms.parse::<u64>().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
    Ok(())
}
