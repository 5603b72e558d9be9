// SPDX-License-Identifier: Apache-2.0
//! The two Synapse release lines every test that starts a real service runs on:
//! 2.256.0 (the venv `.ci/setup` makes) and 3.7.0 (the Debian sid tree, `syn3`).
//!
//! A test that starts a service is written once, as `fn case(line: Line)`, and
//! [`on_both_lines!`](crate::on_both_lines) makes one `#[test]` per line of it:
//! `case::v2_256` and `case::v3_7_0` (so `cargo test v3_7_0` runs the 3.x column
//! of the matrix). What differs between the lines in a test is asked of the
//! [`Line`]: the Python that runs Synapse (the venv's, or the tree's through
//! `tests/synapse3/in-root`), the fixture Cortex, the form of an IPv4 node
//! (`inet:ipv4` on 2.x, `inet:ip` on 3.x), the `cell.yaml` keys of a mirror and
//! of AHA, the HTTP API's version and the version string. `storm.py`
//! decides the Storm it sends from what the service says, as synbackup does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{command, syn3};

/// A Synapse release line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// Synapse 2.256.0, Python 3.11, from the venv.
    V2,
    /// Synapse 3.7.0, Python 3.14, in the sid tree.
    V3,
}

impl Line {
    /// The release.
    pub fn version(self) -> &'static str {
        match self {
            Line::V2 => "2.256.0",
            Line::V3 => syn3::VERSION,
        }
    }

    /// `Some(self)` when this line's Synapse is installed; else `None`, after
    /// printing that `test` is skipped (only the 3.x tree may be missing, on a
    /// developer's machine; CI always has it).
    pub fn require(self, test: &str) -> Option<Line> {
        match self {
            Line::V2 => Some(self),
            Line::V3 => syn3::require(test).map(|_| self),
        }
    }

    /// A Python the host can call like a venv's `bin/python` (what a drill is
    /// given with `--python` or `SYNBACKUP_DRILL_PYTHON`).
    pub fn python(self) -> PathBuf {
        match self {
            Line::V2 => super::python(),
            Line::V3 => syn3::python(),
        }
    }

    /// A command running this line's Python with `env` set; its arguments follow.
    /// Paths under the temporary directory and the repository's `tests/` are the
    /// same for it as for the host.
    pub fn py(self, env: &[(&str, &str)]) -> Command {
        match self {
            Line::V2 => {
                let mut c = command(super::python());
                c.envs(env.iter().copied());
                c
            }
            Line::V3 => {
                let root = syn3::root().expect("the Synapse 3.x tree (Line::require first)");
                let mut c = syn3::in_root(&root);
                // in-root ends in `env -i ... CMD`: assignments before the command
                // are the command's environment.
                c.args(env.iter().map(|(k, v)| format!("{k}={v}")));
                c.arg(syn3::PYTHON);
                c
            }
        }
    }

    /// The fixture Cortex this line's release made (`tests/fixtures/`).
    pub fn fixture(self) -> PathBuf {
        let name = match self {
            Line::V2 => "cortex00",
            Line::V3 => "cortex00-v3",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// The form of an IPv4 address node: `inet:ipv4` (2.x), `inet:ip` (3.x).
    pub fn ip_form(self) -> &'static str {
        match self {
            Line::V2 => "inet:ipv4",
            Line::V3 => "inet:ip",
        }
    }

    /// The `cell.yaml` key that makes a cell follow an upstream: `mirror` (2.x),
    /// `parent` (3.x).
    pub fn upstream_key(self) -> &'static str {
        match self {
            Line::V2 => "mirror",
            Line::V3 => "parent",
        }
    }

    /// The `cell.yaml` key listing the AHA registry's URLs: `aha:registry` (2.x),
    /// `aha:servers` (3.x, `ssl://` URLs only).
    pub fn aha_key(self) -> &'static str {
        match self {
            Line::V2 => "aha:registry",
            Line::V3 => "aha:servers",
        }
    }

    /// The HTTPS endpoint that answers without a login: `/api/v1/active` (2.x),
    /// `/api/v3/active` (3.x: the HTTP API is `v3`).
    pub fn active_path(self) -> &'static str {
        match self {
            Line::V2 => "/api/v1/active",
            Line::V3 => "/api/v3/active",
        }
    }

    /// The other line.
    pub fn other(self) -> Line {
        match self {
            Line::V2 => Line::V3,
            Line::V3 => Line::V2,
        }
    }

    /// `tests/systemd/storm.py ARGS` with this line's Python (Synapse's own client).
    pub fn storm_cmd(self, args: &[&str]) -> Command {
        let mut c = self.py(&[]);
        c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd/storm.py"))
            .args(args);
        c
    }

    /// Run storm.py ARGS; panics on failure, returns stdout.
    pub fn storm(self, args: &[&str]) -> String {
        let out = self.storm_cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "storm.py ({}) {args:?}: {}",
            self.version(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Like [`Line::storm`] but returns whether it succeeded.
    pub fn storm_status(self, args: &[&str]) -> bool {
        self.storm_cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// storm.py ARGS started, its stdout piped.
    pub fn storm_spawn(self, args: &[&str]) -> Child {
        self.storm_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// One `#[test]` per release line for `fn case(line: Line)`: `case::v2_256` and
/// `case::v3_7_0` (skipped, saying so, without the 3.x tree).
#[macro_export]
macro_rules! on_both_lines {
    ($case:ident) => {
        mod $case {
            use $crate::util::Line;

            #[test]
            fn v2_256() {
                super::$case(Line::V2);
            }

            #[test]
            fn v3_7_0() {
                if let Some(line) = Line::V3.require(concat!(module_path!(), "::v3_7_0")) {
                    super::$case(line);
                }
            }
        }
    };
}
