// SPDX-License-Identifier: Apache-2.0
//! `synbackup run INSTANCE`: what `synbackup@.service` runs (`instance::run`), then,
//! with `SYNBACKUP_DRILL_AFTER_RUN=yes`, a drill of the backup it just made
//! (`service::drill`): a failed drill exits with the drill's code and keeps the
//! backup.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{code_of, Code};
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The instance name (its configuration is CONFIG_DIR/INSTANCE.conf).
    pub(crate) instance: String,
    #[command(flatten)]
    pub(crate) overrides: InstanceOverrides,
}

/// Back up the instance, prune, record status; drill the new backup if configured.
pub(crate) fn exec(dirs: &Dirs, a: &RunArgs, show_bar: bool) -> Result<ExitCode> {
    let result = crate::nightly::run(dirs, &a.instance, &a.overrides, show_bar);
    leave_final_status(dirs, &a.instance, "backup");
    // A failed offsite copy leaves a good local backup: it is drilled all the same,
    // and the run then exits with the offsite failure (12) unless the drill failed.
    let offsite_failed = matches!(&result, Err(e) if code_of(e) == Code::Offsite);
    if !offsite_failed {
        result?;
        return drill_after_run(dirs, a);
    }
    drill_after_run(dirs, a)?;
    result.map(|()| ExitCode::SUCCESS)
}

/// `SYNBACKUP_DRILL_AFTER_RUN=yes`: drill the backup the run just made.
fn drill_after_run(dirs: &Dirs, a: &RunArgs) -> Result<ExitCode> {
    if let Some(backup) = backup_to_drill(dirs, a) {
        log::info!(
            "SYNBACKUP_DRILL_AFTER_RUN=yes: drilling {}",
            backup.display()
        );
        let drilled = crate::drill::drill_instance(dirs, &a.instance, Some(&backup), None);
        leave_final_status(dirs, &a.instance, "drill");
        drilled?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The backup this run made, when the instance drills after every run.
fn backup_to_drill(dirs: &Dirs, a: &RunArgs) -> Option<PathBuf> {
    let inst = config::load(&dirs.config_dir, &a.instance, &a.overrides).ok()?;
    if !inst.drill_after_run {
        return None;
    }
    let st = crate::instance::status::load(&dirs.state_dir, &a.instance, "backup")?;
    st.last_success_backup.map(PathBuf::from)
}

/// Replace the unit's last progress line with the result just recorded.
pub(crate) fn leave_final_status(dirs: &Dirs, instance: &str, kind: &str) {
    if let Some(st) = crate::instance::status::load(&dirs.state_dir, instance, kind) {
        crate::host::systemd::status(&crate::instance::status::final_line(&st));
        crate::host::systemd::barrier(std::time::Duration::from_secs(5));
    }
}
