// SPDX-License-Identifier: Apache-2.0
//! `synbackup sysctl`: the kernel's dirty-page settings for this host's RAM, printed,
//! written as a drop-in, applied through /proc/sys or checked (the computation is
//! `host::sysctl`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Args;

use crate::base::exit::{fail, Code};
use crate::base::fsutil;
use crate::host::procfs;
use crate::host::sysctl::{apply, compute, differences, render_dropin, write_dropin};

#[derive(Debug, Args)]
pub(crate) struct SysctlArgs {
    /// Compute for this much RAM instead of /proc/meminfo: bytes, or a number with a
    /// binary unit (K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB, any case; all powers of
    /// 1024, as /proc/meminfo's kB), e.g. 128GiB, 512MiB, 1.5T.
    #[arg(long, value_name = "SIZE")]
    pub(crate) mem_total: Option<String>,
    /// Write the drop-in atomically instead of printing it, creating the directory
    /// (default /run/sysctl.d/61-synbackup-memory.conf).
    #[arg(long, value_name = "PATH", num_args = 0..=1,
          default_missing_value = "/run/sysctl.d/61-synbackup-memory.conf")]
    pub(crate) write: Option<PathBuf>,
    /// Set the values now through /proc/sys, reporting old -> new.
    #[arg(long)]
    pub(crate) apply: bool,
    /// Compare the running values with the computed ones; list each difference and
    /// exit 9 when there is one.
    #[arg(long)]
    pub(crate) check: bool,
    /// Read /proc from below this directory instead of / (another host's copy, tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub(crate) root: PathBuf,
}

/// `synbackup sysctl`: print, write, apply and/or check.
pub(crate) fn exec(a: &SysctlArgs) -> Result<ExitCode> {
    let mem_total = match &a.mem_total {
        Some(s) => crate::base::units::parse_size(s)
            .and_then(|b| {
                if b == 0 {
                    Err(anyhow!("the size must be more than 0 bytes"))
                } else {
                    Ok(b)
                }
            })
            .map_err(|e| fail(Code::Usage, format!("--mem-total {s:?}: {e:#}")))?,
        None => procfs::mem_total_bytes(&a.root)?,
    };
    let settings = compute(mem_total);
    log::debug!("MemTotal {mem_total} bytes: {settings:?}");
    let dropin = render_dropin(&settings, mem_total);
    let mut out = std::io::stdout().lock();
    if a.write.is_none() && !a.apply && !a.check {
        out.write_all(dropin.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &a.write {
        write_dropin(path, &dropin)?;
        log::info!(
            "wrote {} for MemTotal {}",
            path.display(),
            fsutil::human(mem_total)
        );
    }
    let targets = settings.targets();
    if a.apply {
        let (changes, left) = apply(&a.root, &targets)?;
        for c in &changes {
            writeln!(out, "{c}")?;
        }
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(|d| d.to_string()).collect();
            bail!("the kernel did not take every value: {}", list.join("; "));
        }
    }
    if a.check {
        let diffs = differences(&targets, |k| procfs::read_sysctl(&a.root, k))?;
        for d in &diffs {
            writeln!(out, "{d}")?;
        }
        if !diffs.is_empty() {
            out.flush()?;
            return Err(fail(
                Code::Unhealthy,
                format!(
                    "{} running value(s) differ from those computed for MemTotal {}; \
                     `synbackup sysctl --apply` sets them",
                    diffs.len(),
                    fsutil::human(mem_total)
                ),
            ));
        }
        writeln!(
            out,
            "all {} settings match the values computed for MemTotal {}",
            targets.len(),
            fsutil::human(mem_total)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
