// SPDX-License-Identifier: Apache-2.0
//! Where instance configuration, state, locks and metrics live on the host: one set
//! of directories shared by every command (global options, or the environment).

use std::path::PathBuf;

use clap::Args;

/// Where instance configuration, state, locks and metrics live.
#[derive(Debug, Args, Clone)]
pub(crate) struct Dirs {
    /// Directory of instance configuration files (INSTANCE.conf).
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_CONFIG_DIR",
        default_value = "/etc/synbackup"
    )]
    pub(crate) config_dir: PathBuf,
    /// Directory for per-instance status files.
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_STATE_DIR",
        default_value = "/var/lib/synbackup"
    )]
    pub(crate) state_dir: PathBuf,
    /// Directory for per-instance lock files.
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_LOCK_DIR",
        default_value = "/run/synbackup"
    )]
    pub(crate) lock_dir: PathBuf,
    /// Directory for Prometheus textfile-collector metrics.
    #[arg(
        long,
        global = true,
        env = "SYNBACKUP_METRICS_DIR",
        default_value = "/var/lib/prometheus/node-exporter"
    )]
    pub(crate) metrics_dir: PathBuf,
}
