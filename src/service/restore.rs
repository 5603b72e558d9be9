// SPDX-License-Identifier: Apache-2.0
//! `synbackup restore BACKUP DIR`: the seed guide's restore (`mv dir dir_old;
//! cp -R backup dir; start`), made safe.
//!
//! Order: verify the backup; check space; copy it (sparse-aware, owners, modes and
//! times kept, every file's SHA-256 checked against the manifest on the way) into a
//! staging sibling of DIR while the service still runs; only then stop the service
//! (refused unless a unit is named), move DIR aside to `DIR.pre-restore-TIMESTAMP`
//! (never deleted), rename the staging copy into place, fsync, start the service
//! again and print how to undo. A failure before the swap leaves DIR untouched (the
//! staging copy is removed); a failure during the swap puts DIR back.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::base::exit::{fail, Code};
use crate::base::fsutil::{self, human};
use crate::engine::manifest::Manifest;
use crate::engine::scan::{self, Item};
use crate::engine::telepath;
use crate::engine::verify;
use crate::host::holders;
use crate::host::systemd;
use crate::instance::config;
use crate::instance::config::InstanceOverrides;
use crate::instance::dirs::Dirs;
use crate::instance::lock;

/// A staging copy that is removed unless it was swapped in.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed && self.path.exists() {
            match fs::remove_dir_all(&self.path) {
                Ok(()) => log::info!("removed the unfinished copy {}", self.path.display()),
                Err(e) => log::error!("could not remove {}: {e}", self.path.display()),
            }
        }
    }
}

/// Copy the backup tree into `dst` (new), checking hashes against the manifest.
pub(crate) fn copy_tree(backup: &Path, dst: &Path, manifest: &Manifest) -> Result<u64> {
    let want: BTreeMap<&str, &str> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let plan = scan::scan(backup, &scan::compile_skipdirs(&[])?)?;
    fs::create_dir(dst).map_err(|e| fsutil::write_error(dst, e))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o700))?;
    let mut bytes = 0;
    let mut copy_file = |rel: &Path, meta: &fs::Metadata| -> Result<()> {
        crate::base::interrupt::check()?;
        let sp = backup.join(rel);
        let dp = dst.join(rel);
        let sf = File::open(&sp).with_context(|| format!("cannot read {}", sp.display()))?;
        let df = fsutil::create_new(&dp)?;
        let h =
            fsutil::copy_sparse_hashed(&sf, &sp, &df, &dp, |_| crate::base::interrupt::check())?;
        let key = rel.to_string_lossy();
        if let Some(expected) = want.get(key.as_ref()) {
            if *expected != h.sha256 {
                return Err(fail(
                    Code::Verify,
                    format!(
                        "{} changed since it was verified (SHA-256 mismatch)",
                        sp.display()
                    ),
                ));
            }
        }
        fsutil::apply_meta_fd(&df, &dp, meta, true)?;
        df.sync_all().map_err(|e| fsutil::write_error(&dp, e))?;
        bytes += h.data_bytes;
        Ok(())
    };
    for item in &plan.items {
        match item {
            Item::Dir { rel, .. } => {
                let p = dst.join(rel);
                fs::create_dir(&p).map_err(|e| fsutil::write_error(&p, e))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
            }
            Item::Env { rel, .. } => {
                let p = dst.join(rel);
                fs::create_dir(&p).map_err(|e| fsutil::write_error(&p, e))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
                let data_rel = rel.join("data.mdb");
                let meta = fs::symlink_metadata(backup.join(&data_rel))?;
                copy_file(&data_rel, &meta)?;
            }
            Item::File { rel, meta } => copy_file(rel, meta)?,
            Item::Symlink { rel, target, meta } => {
                let p = dst.join(rel);
                std::os::unix::fs::symlink(target, &p).map_err(|e| fsutil::write_error(&p, e))?;
                fsutil::apply_meta_link(&p, meta)?;
            }
        }
    }
    for item in plan.items.iter().rev() {
        if let Item::Dir { rel, meta } | Item::Env { rel, meta, .. } = item {
            fsutil::apply_meta_dir(&dst.join(rel), meta)?;
        }
    }
    fsutil::apply_meta_dir(dst, &fs::metadata(backup)?)?;
    Ok(bytes)
}

/// Whether something runs on `dir`, and a description of what.
fn in_use(dir: &Path) -> Option<String> {
    if telepath::answers(&dir.join("sock")) {
        return Some(format!(
            "a service answers on {}",
            dir.join("sock").display()
        ));
    }
    holders::holders(Path::new("/proc"), dir)
        .first()
        .map(|h| format!("pid {} ({}) holds {}", h.pid, h.comm, h.path.display()))
}

/// What to restore, and where.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The backup to restore.
    pub(crate) backup: PathBuf,
    /// The service directory (default with `instance`: its SYNBACKUP_SERVICE_DIR).
    pub(crate) dir: Option<PathBuf>,
    /// The unit to stop and start again.
    pub(crate) unit: Option<String>,
    /// The instance whose directory, unit and lock to use.
    pub(crate) instance: Option<String>,
}

/// `synbackup restore BACKUP [DIR] [--unit UNIT | --instance INSTANCE]`.
pub(crate) fn restore(dirs: &Dirs, args: &Request) -> Result<()> {
    let t0 = Instant::now();
    let (dir, unit, timeouts, _lock) = match &args.instance {
        Some(name) => {
            let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
            let lock = lock::acquire(&dirs.lock_dir, name, "restore")?;
            let dir = args.dir.clone().unwrap_or(inst.service_dir.clone());
            (
                dir,
                inst.service_unit.clone(),
                (inst.stop_timeout, inst.health_timeout),
                Some(lock),
            )
        }
        None => {
            let dir = args.dir.clone().ok_or_else(|| {
                fail(
                    Code::Usage,
                    "restore needs DIR, or --instance to take it from the instance's configuration",
                )
            })?;
            let t = std::time::Duration::from_secs(300);
            (dir, args.unit.clone(), (t, t), None)
        }
    };
    let dir =
        std::path::absolute(&dir).with_context(|| format!("bad directory {}", dir.display()))?;
    let backup = fs::canonicalize(&args.backup).map_err(|e| {
        fail(
            Code::BadPath,
            format!("backup {} cannot be used: {e}", args.backup.display()),
        )
    })?;
    if dir.starts_with(&backup) || backup.starts_with(&dir) {
        return Err(fail(
            Code::BadPath,
            format!(
                "{} and {} overlap; restore elsewhere",
                backup.display(),
                dir.display()
            ),
        ));
    }

    // 1. Verify.
    log::info!("verifying {}", backup.display());
    let report = verify::verify(&backup)?;
    if !report.ok() {
        return Err(fail(
            Code::Verify,
            format!(
                "{} failed verification, not restored: {}",
                backup.display(),
                report.problems.join("; ")
            ),
        ));
    }
    let manifest = Manifest::load(&backup)?;

    // 2. Refuse early when the service runs and we may not stop it.
    let busy = in_use(&dir);
    if let (Some(what), None) = (&busy, &unit) {
        return Err(fail(
            Code::Service,
            format!("{} is in use ({what}); stop the service first, or pass --unit UNIT so restore stops and restarts it", dir.display()),
        ));
    }

    // 3. Space, then the staging copy while the service still runs.
    let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| {
        fail(
            Code::BadPath,
            format!("cannot create {}: {e}", parent.display()),
        )
    })?;
    let need: u64 = manifest.files.iter().map(|f| f.size).sum();
    let free = fsutil::free_space(&parent)?;
    if need > free {
        return Err(fail(
            Code::NoSpace,
            format!(
                "not enough space in {}: the restore needs {} ({need} bytes), {} ({free} bytes) is free; free space first",
                parent.display(),
                human(need),
                human(free)
            ),
        ));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut staging = Staging {
        path: parent.join(format!(
            ".{name}.synbackup-restoring.{}",
            std::process::id()
        )),
        armed: true,
    };
    log::info!("copying {} to {}", backup.display(), staging.path.display());
    let bytes = copy_tree(&backup, &staging.path, &manifest)?;
    crate::base::fault::point("restore-before-swap")?;

    // 4. Stop the service if it runs (we were told which unit).
    let mut restart = false;
    if let Some(u) = &unit {
        let state = systemd::active_state(u)?;
        if busy.is_some() || state == "active" || state == "activating" {
            systemd::stop_unit(u, timeouts.0)?;
            restart = true;
        }
    }
    holders::wait_released(&dir, timeouts.0, true)?;

    // 5. Swap: DIR aside (kept), the copy into place.
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = parent.join(format!("{name}.pre-restore-{stamp}"));
    let had_dir = dir.exists();
    if had_dir {
        fs::rename(&dir, &aside).with_context(|| {
            format!("cannot move {} aside to {}", dir.display(), aside.display())
        })?;
    }
    if let Err(e) = fs::rename(&staging.path, &dir) {
        if had_dir {
            if let Err(e2) = fs::rename(&aside, &dir) {
                log::error!(
                    "could not put {} back from {}: {e2}",
                    dir.display(),
                    aside.display()
                );
            }
        }
        if restart {
            if let Some(u) = &unit {
                let _ = systemd::start_unit(u, timeouts.1);
            }
        }
        return Err(anyhow::Error::new(e).context(format!(
            "cannot move the restored copy into {}",
            dir.display()
        )));
    }
    staging.armed = false;
    fsutil::fsync_dir(&parent)?;

    // 6. Start again.
    if restart {
        if let Some(u) = &unit {
            systemd::start_unit(u, timeouts.1)?;
        }
    }
    let text = format!(
        "restored {} into {} ({} in {:.1} s){}",
        backup.display(),
        dir.display(),
        human(bytes),
        t0.elapsed().as_secs_f64(),
        if had_dir {
            format!("; the previous directory is kept at {}", aside.display())
        } else {
            String::new()
        }
    );
    crate::base::logging::event(
        log::Level::Info,
        crate::base::logging::MSG_RESTORE_OK,
        args.instance.as_deref().unwrap_or(""),
        &[],
        &text,
    );
    if had_dir {
        let u = unit.as_deref().unwrap_or("UNIT");
        println!(
            "to undo: systemctl stop {u}; mv {d} {d}.restored-{stamp} && mv {a} {d}; systemctl start {u}",
            d = dir.display(),
            a = aside.display()
        );
    }
    Ok(())
}
