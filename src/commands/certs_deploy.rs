// SPDX-License-Identifier: Apache-2.0
//! `synbackup certs deploy INSTANCE --cert FULLCHAIN --key KEY` (or `--dir DIR`):
//! a renewed HTTPS pair into the running cell, checked, reloaded without a restart,
//! confirmed on its HTTPS port, rolled back on any failure (`certs::deploy`).
//! Exit 9: the pair was refused (nothing written); 10: it failed and the old pair
//! is back. With an instance it takes the instance lock (a maintenance window would
//! swap the directory back under it) and records the `deploy` status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::base::exit::{fail, reported, Code};
use crate::certs::deploy::{self as certdeploy, Request};
use crate::commands::print_json;
use crate::instance::certdir::resolve_cert_dir;
use crate::instance::config::{self, InstanceOverrides};
use crate::instance::dirs::Dirs;

#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// The instance whose service gets the pair.
    #[arg(required_unless_present = "dir", conflicts_with = "dir")]
    pub(crate) instance: Option<String>,
    /// Deploy into this service directory instead of an instance's (its `sock` is asked to reload).
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub(crate) dir: Option<PathBuf>,
    /// The new certificate with its chain (certbot's fullchain.pem).
    #[arg(long, value_name = "FULLCHAIN", value_hint = clap::ValueHint::FilePath)]
    pub(crate) cert: PathBuf,
    /// The new private key (certbot's privkey.pem).
    #[arg(long, value_name = "KEY", value_hint = clap::ValueHint::FilePath)]
    pub(crate) key: PathBuf,
    /// A certificate directory whose cas/ the chain may verify against (default with an instance: from its unit).
    #[arg(long, value_name = "D", env = "SYNBACKUP_CERT_DIR", value_hint = clap::ValueHint::DirPath)]
    pub(crate) cert_dir: Option<PathBuf>,
    /// A name clients reach the HTTPS server by (repeatable; default: SYNBACKUP_CERT_NAMES, else the names of the certificate in use).
    #[arg(long = "https-name", value_name = "NAME")]
    pub(crate) https_names: Vec<String>,
    /// The HTTPS port to check on loopback (default: the listener the cell reports, else its https:port, else 4443).
    #[arg(long, value_name = "PORT")]
    pub(crate) https_port: Option<u16>,
    /// The unit to restart if the cell's version cannot reload (default with an instance: SYNBACKUP_SERVICE_UNIT).
    #[arg(long, value_name = "UNIT")]
    pub(crate) unit: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Deploy, log one journal line, record the instance's status.
pub(crate) fn exec(dirs: &Dirs, a: &DeployArgs) -> Result<ExitCode> {
    let (inst, req) = match (&a.instance, &a.dir) {
        (Some(name), None) => {
            let inst = config::load(&dirs.config_dir, name, &InstanceOverrides::default())?;
            let cert_dir = match &a.cert_dir {
                Some(d) => Some(d.clone()),
                None => resolve_cert_dir(&inst)?,
            };
            let req = Request {
                trust_dirs: trust_dirs(cert_dir, &inst.service_dir),
                service_dir: inst.service_dir.clone(),
                cert: a.cert.clone(),
                key: a.key.clone(),
                names: if a.https_names.is_empty() {
                    inst.cert_names.clone()
                } else {
                    a.https_names.clone()
                },
                unit: a.unit.clone().or_else(|| inst.service_unit.clone()),
                https_port: a.https_port,
                stop_timeout: inst.stop_timeout,
                health_timeout: inst.health_timeout,
            };
            (Some(inst), req)
        }
        (None, Some(dir)) => {
            let req = Request {
                trust_dirs: trust_dirs(a.cert_dir.clone(), dir),
                service_dir: dir.clone(),
                cert: a.cert.clone(),
                key: a.key.clone(),
                names: a.https_names.clone(),
                unit: a.unit.clone(),
                https_port: a.https_port,
                stop_timeout: Duration::from_secs(300),
                health_timeout: Duration::from_secs(300),
            };
            (None, req)
        }
        _ => return Err(fail(Code::Usage, "name an INSTANCE or give --dir DIR")),
    };
    if !req.service_dir.is_dir() {
        return Err(fail(
            Code::BadPath,
            format!(
                "{} is not a directory: give the service directory",
                req.service_dir.display()
            ),
        ));
    }
    let result = certdeploy::deploy_recorded(dirs, inst.as_ref(), &req);
    // The summary is the journal line above (also on stderr); --json for a machine.
    let outcome = result.map_err(|e| reported(&e))?;
    if a.json {
        print_json(&outcome)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The user's certificate directory (if any) and `DIR/certs`.
fn trust_dirs(cert_dir: Option<PathBuf>, service_dir: &std::path::Path) -> Vec<PathBuf> {
    cert_dir
        .into_iter()
        .chain(std::iter::once(service_dir.join("certs")))
        .collect()
}
