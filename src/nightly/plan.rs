// SPDX-License-Identifier: Apache-2.0
//! `synbackup run INSTANCE --dry-run`: what the nightly run would do now, changing
//! nothing (no lock, no backup, no status): where the backup would go and whether
//! it fits, whether the service would be frozen, which backups retention would
//! then remove, which directories kept aside would expire, and the offsite copy and
//! drill that would follow. Printed on stdout, one line each.

use std::path::Path;

use anyhow::Result;
use chrono::Utc;

use crate::base::fsutil::{self, human};
use crate::engine::telepath::{self, Probe};
use crate::instance::catalog::{self, State};
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;
use crate::instance::source::{NoMirror, SourceMode};
use crate::instance::{kept, retention, tested};

/// Print the plan of `run NAME`.
pub(crate) fn dry_run(dirs: &Dirs, name: &str, overrides: &InstanceOverrides) -> Result<()> {
    let inst = config::load(&dirs.config_dir, name, overrides)?;
    let now = Utc::now();
    let dst = inst.backup_root.join(catalog::backup_name(&inst.name, now));
    let mut lines = Vec::new();

    // 1. The backup: room, freeze.
    let need = crate::engine::backup::estimate(&inst.service_dir, &inst.skipdirs, false)?;
    let mut at = inst.backup_root.as_path();
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let free = fsutil::free_space(at)?;
    let fits = free >= need.saturating_add(inst.min_free);
    lines.push(format!(
        "would back up {} to {} (about {} needed, {} free, SYNBACKUP_MIN_FREE {}{})",
        inst.service_dir.display(),
        dst.display(),
        human(need),
        human(free),
        human(inst.min_free),
        if fits {
            ""
        } else {
            ": NOT ENOUGH ROOM, the run would fail"
        }
    ));
    let sock = inst.service_dir.join("sock");
    lines.push(match telepath::probe(&sock) {
        Probe::Answers => format!(
            "the service answers on {}: it would be frozen while every environment's snapshot is taken",
            sock.display()
        ),
        Probe::NoService => format!(
            "nothing answers on {}: it would be backed up without a freeze (as it is on disk)",
            sock.display()
        ),
        Probe::Unreachable(why) => format!("{why}: the run would wait for it, then fail"),
    });

    let src = &inst.sources;
    if src.mode != SourceMode::Leader {
        let mirrors: Vec<String> = src
            .local_mirrors()
            .map(|m| m.display().to_string())
            .collect();
        lines.push(format!(
            "SYNBACKUP_SOURCE={}: would back up the first of {} that applies the leader {}'s nexus index within {} instead, frozen, the leader not; if none does: {}",
            src.mode.name(),
            mirrors.join(", "),
            src.leader,
            crate::base::units::format_duration(src.wait),
            match src.no_mirror {
                NoMirror::Fail => "fail (exit code 13)",
                NoMirror::Leader => "back up the leader",
                NoMirror::Skip => "skip the run",
            }
        ));
    }

    // 2. Retention, with the new backup in the newest slot.
    let entries = catalog::scan(&inst.backup_root, &inst.name)?;
    let good: Vec<_> = entries
        .iter()
        .filter(|e| matches!(e.state, State::Complete | State::Verified))
        .collect();
    let mut times: Vec<_> = good.iter().map(|e| e.time).collect();
    times.push(now);
    let reasons = retention::reasons(&times, inst.keep);
    let names: Vec<String> = good.iter().map(|e| e.name.clone()).collect();
    let newest_tested =
        tested::newest_passed_of(&tested::load(&dirs.state_dir, &inst.name), &names);
    let doomed: Vec<&str> = good
        .iter()
        .zip(&reasons)
        .filter(|(e, why)| why.is_empty() && Some(&e.name) != newest_tested.as_ref())
        .map(|(e, _)| e.name.as_str())
        .collect();
    lines.push(if doomed.is_empty() {
        format!("retention would then keep all {} backups", good.len() + 1)
    } else {
        format!(
            "retention would then remove {} of {} backups: {}",
            doomed.len(),
            good.len() + 1,
            doomed.join(", ")
        )
    });
    for e in entries.iter().filter(|e| e.state == State::Damaged) {
        lines.push(format!(
            "{} was found damaged: retention would remove it (a newer good backup is kept)",
            e.name
        ));
    }

    // 3. Directories kept aside that would expire.
    let dir = std::fs::canonicalize(&inst.service_dir).unwrap_or(inst.service_dir.clone());
    for (marker, age, setting) in [
        (
            kept::PRE_COLD,
            inst.cold_keep_old,
            "SYNBACKUP_COLD_KEEP_OLD",
        ),
        (kept::PRE_RESTORE, inst.keep_aside, "SYNBACKUP_KEEP_ASIDE"),
    ] {
        for (p, at) in kept::aside_dirs(&dir, marker) {
            if at
                .and_then(|t| (now - t).to_std().ok())
                .is_some_and(|a| a >= age)
            {
                lines.push(format!(
                    "would remove {} ({} of it), older than {setting}",
                    p.display(),
                    human(crate::window::disk_usage(&p))
                ));
            }
        }
    }

    // 4. What follows.
    if let Some(o) = &inst.offsite {
        lines.push(format!(
            "would copy the backup offsite to {}",
            crate::instance::repository::redacted(&o.repository)
        ));
    }
    if inst.drill_after_run {
        lines.push("would drill the backup (SYNBACKUP_DRILL_AFTER_RUN=yes)".into());
    }
    lines.push("dry run: nothing was changed".into());
    let mut out = String::new();
    for l in lines {
        out.push_str(&format!("{}: {l}\n", inst.name));
    }
    print!("{out}");
    Ok(())
}
