// SPDX-License-Identifier: Apache-2.0
//! Synapse 3.7.0 for the integration tests: the Debian sid tree with python3.14 and a
//! venv at /opt/syn3 that `.ci/setup` builds (`tests/synapse3/build-root`), and real
//! 3.x Cortex processes run in it.
//!
//! A 3.x server runs through `tests/synapse3/in-root`: chrooted into the tree in a
//! private mount namespace where the host's temporary directory is bound at the same
//! path. A Cortex started on `/tmp/.tmpXYZ/core` inside is therefore reached by the
//! host's `synbackup` at `/tmp/.tmpXYZ/core/sock`, and its files are the host's. The
//! launcher execs all the way down, so the child's pid is the server's: SIGTERM stops
//! it cleanly, and its mounts go with its mount namespace. It leads a process group
//! of its own, ended after it, so a worker it forked (3.x runs a multiprocessing
//! forkserver) cannot outlive a test even when the server had to be killed. Readiness is storm.py's
//! `wait` (a real `getCellInfo` over telepath) run with the tree's own Python, so the
//! client is Synapse 3.7.0's.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{command, nix_kill};

/// The Synapse release the tree holds.
pub const VERSION: &str = "3.7.0";

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
/// `/tmp` and `/run` and the rest of the host read-only (drill/), so the wrapper and `in-root` are copied, once per
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
        // The drill's mount point inside the tree: a drill shows its server the
        // host read-only, so in-root cannot make it then.
        if let Some(root) = root() {
            std::fs::create_dir_all(root.join("run/synbackup-drill")).unwrap();
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

/// A command run in the tree with the temporary directory bound at its own path
/// and `tests/systemd` (storm.py) bound read-only.
pub fn in_root(root: &Path) -> Command {
    in_root_with(root, &[])
}

/// [`in_root`] with more host directories bound read-only at their own paths.
pub fn in_root_with(root: &Path, ro: &[PathBuf]) -> Command {
    let mut c = command(repo().join("tests/synapse3/in-root"));
    c.env("SYNBACKUP_TEST_SYN3_ROOT", root)
        .arg("--bind")
        .arg(std::env::temp_dir())
        .arg("--bind-ro")
        .arg(repo().join("tests/systemd"));
    for d in ro {
        c.arg("--bind-ro").arg(d);
    }
    c.arg("--");
    c
}

/// storm.py ARGS with the tree's Python (Synapse 3.7.0's own telepath client).
fn storm_cmd(root: &Path, args: &[&str]) -> Command {
    let mut c = in_root(root);
    c.arg("/opt/syn3/bin/python")
        .arg(repo().join("tests/systemd/storm.py"))
        .args(args);
    c
}

/// Run storm.py ARGS in the tree; panics on failure, returns stdout.
pub fn storm(root: &Path, args: &[&str]) -> String {
    let out = storm_cmd(root, args).output().unwrap();
    assert!(
        out.status.success(),
        "storm.py (3.x) {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real Synapse 3.7.0 Cortex on a host directory; stopped (SIGTERM, waited) on drop.
pub struct Cortex3 {
    pub dir: PathBuf,
    pub log: PathBuf,
    root: PathBuf,
    child: Option<Child>,
}

impl Cortex3 {
    /// Start a 3.7.0 Cortex on `dir` (under the temporary directory; created if
    /// needed) and wait until it answers `getCellInfo`.
    pub fn start(root: &Path, dir: &Path) -> Cortex3 {
        let mut c = Cortex3::spawn(root, dir, &[]);
        let d = c.url_dir().to_string();
        let ready = storm_cmd(root, &["wait", &d, "--timeout", "120"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !ready {
            c.stop();
            panic!(
                "3.x Cortex on {d} did not come up; its log:\n{}",
                c.log_text()
            );
        }
        c
    }

    /// Start a 3.7.0 Cortex through `tests/util/patched_cortex.py` (the one function
    /// `env`'s `SYNTEST_*` variables select patched) and return at once, without
    /// waiting for it to answer.
    pub fn spawn_patched(root: &Path, dir: &Path, env: &[(&str, &str)]) -> Cortex3 {
        Cortex3::spawn(root, dir, env)
    }

    /// Start the server (patched when `env` is not empty), not waiting for it.
    fn spawn(root: &Path, dir: &Path, env: &[(&str, &str)]) -> Cortex3 {
        assert!(
            dir.starts_with(std::env::temp_dir()),
            "a 3.x Cortex's directory must be under {} (bound into the tree)",
            std::env::temp_dir().display()
        );
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let log = dir.with_extension("log");
        let logf = fs::File::create(&log).unwrap();
        // The launcher's directory, bound only when it runs (the mount point stays
        // in the tree).
        let ro = if env.is_empty() {
            Vec::new()
        } else {
            vec![repo().join("tests/util")]
        };
        let mut cmd = in_root_with(root, &ro);
        if env.is_empty() {
            cmd.args(["/opt/syn3/bin/python", "-m", "synapse.servers.cortex"]);
        } else {
            // in-root clears the environment: env(1) sets the variables inside.
            cmd.arg("/usr/bin/env")
                .args(env.iter().map(|(k, v)| format!("{k}={v}")))
                .arg("/opt/syn3/bin/python")
                .arg(repo().join("tests/util/patched_cortex.py"));
        }
        let child = cmd
            .args(["--telepath", "tcp://127.0.0.1:0", "--https", "0"])
            .arg(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        Cortex3 {
            dir: dir.to_path_buf(),
            log,
            root: root.to_path_buf(),
            child: Some(child),
        }
    }

    pub fn url_dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// The server's process id (the chain of execs keeps it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// storm.py ARGS against this Cortex (its directory appended after the verb).
    pub fn storm(&self, verb: &str, rest: &[&str]) -> String {
        let mut args = vec![verb, self.url_dir()];
        args.extend_from_slice(rest);
        storm(&self.root, &args)
    }

    /// Add `n` `inet:ip` nodes 10.K.J.1 (3.x's form; `inet:ipv4` is gone), tagged
    /// `#t`, starting at the `start`-th address; the number of nodes now tagged.
    pub fn add_ips(&self, start: u32, n: u32) -> u64 {
        let text = format!(
            "for $k in $lib.range({}, start={start}) {{ $a = ($k / 250) $b = ($k % 250) [ inet:ip=`10.{{$a}}.{{$b}}.1` +#t ] }}",
            start + n
        );
        self.storm("storm", &[&text]);
        self.count("inet:ip#t")
    }

    /// How many nodes `query` yields (Synapse's own `count`).
    pub fn count(&self, query: &str) -> u64 {
        self.storm("count", &[query]).parse().unwrap()
    }

    /// storm.py's `info`: iden, run, paused, active, nexus_index, upstream.
    pub fn info(&self) -> serde_json::Value {
        serde_json::from_str(&self.storm("info", &[])).unwrap()
    }

    /// `getCellInfo()['cell']['paused']`.
    pub fn paused(&self) -> bool {
        match self.storm("paused", &[]).as_str() {
            "True" => true,
            "False" => false,
            other => panic!("storm.py paused printed {other:?}"),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (SIGKILL after 60 s), then end what is left of its group.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix_kill(child.id() as i32, 15);
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: kill(2) on the group the child led; ESRCH when none is left.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
        }
    }
}

impl Drop for Cortex3 {
    fn drop(&mut self) {
        self.stop();
    }
}
