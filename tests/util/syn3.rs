// SPDX-License-Identifier: Apache-2.0
//! Synapse 3.7.0 for the integration tests: the Debian sid tree with python3.14 and a
//! venv at /opt/syn3 that `.ci/setup` builds (`tests/synapse3/build-root`). The
//! tests reach it through [`Line::V3`](super::Line).
//!
//! A 3.x process runs through `tests/synapse3/in-root`: chrooted into the tree in a
//! private mount namespace where the host's temporary directory is bound at the same
//! path (and the repository's `tests/`, read-only: storm.py, patched_cortex.py). A
//! Cortex started on `/tmp/.tmpXYZ/core` inside is therefore reached by the host's
//! `synbackup` at `/tmp/.tmpXYZ/core/sock`, and its files are the host's. The
//! launcher execs all the way down, so the child's pid is the server's: SIGTERM stops
//! it cleanly, and its mounts go with its mount namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::command;

/// The Synapse release the tree holds.
pub const VERSION: &str = "3.7.0";

/// The venv's Python inside the tree.
pub const PYTHON: &str = "/opt/syn3/bin/python";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The sid tree (`SYNBACKUP_TEST_SYN3_ROOT`, else the default cache path), when built.
pub fn root() -> Option<PathBuf> {
    let p = std::env::var_os("SYNBACKUP_TEST_SYN3_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/synbackup-ci/root-sid-synapse-3.7.0"));
    // The stamp is written last by build-root (the venv's python is a symlink
    // into the tree's /usr/bin, which does not resolve from the host).
    p.join("etc/synbackup-syn3-root.stamp")
        .exists()
        .then_some(p)
}

/// The tree, or `None` after printing why the calling test is skipped. CI always
/// has it (`.ci/setup`); a developer machine without it skips the 3.x tests.
pub fn require(test: &str) -> Option<PathBuf> {
    let r = root();
    if r.is_none() {
        eprintln!(
            "SKIPPED {test}: no Synapse {VERSION} sid tree (set SYNBACKUP_TEST_SYN3_ROOT or run .ci/setup, which runs tests/synapse3/build-root)"
        );
    }
    r
}

/// The host-callable Python of the tree (`tests/synapse3/python`): what a drill
/// is given to boot a backup with Synapse 3.7.0. A drill's server sees a private
/// `/tmp` and `/run` (drill/), so the wrapper and `in-root` are copied, once per
/// test process, to a directory under /var/tmp that the drill leaves visible (the
/// repository may be checked out under /tmp); those of finished test processes are
/// removed.
pub fn python() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let var_tmp = std::path::Path::new("/var/tmp");
        // Earlier test processes' copies, whose process is gone.
        for e in std::fs::read_dir(var_tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("synbackup-tests-syn3.") {
                if !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = var_tmp.join(format!("synbackup-tests-syn3.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["python", "in-root"] {
            std::fs::copy(repo().join("tests/synapse3").join(name), dir.join(name)).unwrap();
        }
        dir.join("python")
    })
    .clone()
}

/// The host directories a 3.x process sees at their own paths: the temporary
/// directory and the build's (`CARGO_TARGET_TMPDIR`, where some tests keep their
/// trees for its xattrs).
pub fn bound_dirs() -> [PathBuf; 2] {
    [
        std::env::temp_dir(),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ]
}

/// A command run in the tree with [`bound_dirs`] bound at their own paths and the
/// repository's `tests/` (storm.py, patched_cortex.py) bound read-only.
pub fn in_root(root: &Path) -> Command {
    let mut c = command(repo().join("tests/synapse3/in-root"));
    c.env("SYNBACKUP_TEST_SYN3_ROOT", root);
    for dir in bound_dirs() {
        c.arg("--bind").arg(dir);
    }
    c.arg("--bind-ro").arg(repo().join("tests")).arg("--");
    c
}
