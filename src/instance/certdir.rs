// SPDX-License-Identifier: Apache-2.0
//! Where an instance's certificate directory is: `SYNBACKUP_CERT_DIR` when set;
//! else the unit's `Environment=SYN_CERT_DIR=...`; else `~/.syn/certs` of the
//! unit's `User=` (root when unset), its home from the passwd database; none
//! without a unit. The nightly run carries it in every backup
//! ([`cert_dir_to_carry`]), `certs` checks it, `restore --certs` puts it back.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::host::systemd;
use crate::instance::config::Instance;

/// The instance's certificate directory (see the module doc), `None` when it has no
/// unit to ask and no `SYNBACKUP_CERT_DIR`.
pub(crate) fn resolve_cert_dir(inst: &Instance) -> Result<Option<PathBuf>> {
    if let Some(d) = &inst.cert_dir {
        return Ok(Some(d.clone()));
    }
    let Some(unit) = &inst.service_unit else {
        return Ok(None);
    };
    unit_cert_dir(unit).map(Some)
}

/// The certificate directory of the service `unit` runs (its `SYN_CERT_DIR`, else
/// `~/.syn/certs` of its `User=`).
pub(crate) fn unit_cert_dir(unit: &str) -> Result<PathBuf> {
    let out = systemd::systemctl(&["show", "--property=User", "--property=Environment", unit])
        .with_context(|| {
            format!("cannot find the certificate directory of {unit}: set SYNBACKUP_CERT_DIR")
        })?;
    let (user, env_dir) = parse_unit_cert_settings(&out);
    if let Some(d) = env_dir {
        return Ok(PathBuf::from(d));
    }
    let user = user.unwrap_or_else(|| "root".to_string());
    let home = nix::unistd::User::from_name(&user)
        .with_context(|| format!("cannot look up user {user} of {unit}"))?
        .map(|u| u.dir)
        .with_context(|| {
            format!(
                "{unit} runs as {user}, who is not in the passwd database: set SYNBACKUP_CERT_DIR"
            )
        })?;
    Ok(home.join(".syn/certs"))
}

/// The certificate directory a run carries in its backup: `SYNBACKUP_CERT_DIR`
/// always (a missing one fails the backup: the setting is wrong); the unit's when
/// it exists (a service without `ssl://` listeners may have none). One that cannot
/// be found is a warning, not a failed backup.
pub(crate) fn cert_dir_to_carry(inst: &Instance) -> Option<PathBuf> {
    if inst.cert_dir.is_some() {
        return inst.cert_dir.clone();
    }
    match resolve_cert_dir(inst) {
        Ok(Some(d)) if d.is_dir() => Some(d),
        Ok(Some(d)) => {
            log::info!(
                "{}: no certificate directory at {} to carry in the backup",
                inst.name,
                d.display()
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            log::warn!(
                "{}: the backup carries no certificate directory: {e:#}",
                inst.name
            );
            None
        }
    }
}

/// `User=` and `SYN_CERT_DIR` from `systemctl show --property=User --property=Environment`.
pub(crate) fn parse_unit_cert_settings(show: &str) -> (Option<String>, Option<String>) {
    let (mut user, mut dir) = (None, None);
    for line in show.lines() {
        if let Some(u) = line.strip_prefix("User=") {
            user = Some(u.trim().to_string()).filter(|u| !u.is_empty());
        } else if let Some(env) = line.strip_prefix("Environment=") {
            for word in env.split_whitespace() {
                if let Some(d) = word.strip_prefix("SYN_CERT_DIR=") {
                    dir = Some(d.trim_matches('"').to_string());
                }
            }
        }
    }
    (user, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_settings() {
        assert_eq!(
            parse_unit_cert_settings("User=synapse\nEnvironment=A=1 SYN_CERT_DIR=/etc/syn/certs\n"),
            (Some("synapse".into()), Some("/etc/syn/certs".into()))
        );
        assert_eq!(
            parse_unit_cert_settings("User=\nEnvironment=\n"),
            (None, None)
        );
    }
}
