// SPDX-License-Identifier: Apache-2.0
//! Never leave the service frozen: a real Cortex of each release line (2.256.0 and
//! 3.7.0), started through `tests/util/patched_cortex.py` with functions patched as
//! each case asks: its flush is slow, its `resume` fails, or its synbackup is
//! killed mid-freeze. Each case ends with the Cortex unfrozen (`getCellInfo` says
//! not paused, an edit completes within seconds) and prints how long the service
//! stayed frozen, from the Cortex's own record of its freeze and resume calls.
//!
//! The cases share one Cortex per line (a boot takes 15–60 s): the patches read
//! their settings from a control file at each call, which each case rewrites.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// The patched Cortex the cases share, and its control file.
struct Server {
    t: tempfile::TempDir,
    core: Cortex,
    control: PathBuf,
}

/// One case: its patches' settings, events file, lock directory and destination.
struct Case<'a> {
    core: &'a Cortex,
    events: PathBuf,
    lock_dir: PathBuf,
    dst: PathBuf,
}

impl Server {
    fn start(line: Line) -> Server {
        let t = tempfile::tempdir().unwrap();
        let control = t.path().join("control");
        let c = control.to_str().unwrap().to_string();
        let core = Cortex::start_patched(line, &t.path().join("core"), &[("SYNTEST_CONTROL", &c)]);
        // A first edit (Storm's parser loads on first use) so later ones measure the freeze.
        assert!(core.takes_edit("10.9.9.9", 120), "first edit");
        Server { t, core, control }
    }

    /// Case `name` with the patches' `settings` (`SYNTEST_*` names and values).
    fn case(&self, name: &str, settings: &[(&str, &str)]) -> Case<'_> {
        let dir = self.t.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let events = dir.join("events");
        let mut text = format!("SYNTEST_EVENTS={}\n", events.display());
        for (k, v) in settings {
            text.push_str(&format!("{k}={v}\n"));
        }
        std::fs::write(&self.control, text).unwrap();
        Case {
            core: &self.core,
            lock_dir: dir.join("run"),
            dst: dir.join("backup"),
            events,
        }
    }
}

impl Case<'_> {
    fn backup(&self) -> std::process::Command {
        let mut c = bin();
        c.arg("--lock-dir")
            .arg(&self.lock_dir)
            .arg("backup")
            .arg(&self.core.dir)
            .arg(&self.dst);
        c
    }

    /// The longest span from a `freeze` call to the next successful `resume`, in
    /// seconds (None: a freeze never followed by a resume).
    fn longest_frozen(&self) -> Option<f64> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let mut longest: f64 = 0.0;
        let mut since: Option<f64> = None;
        for line in text.lines() {
            let (kind, t) = line.split_once(' ').unwrap();
            let t: f64 = t.parse().unwrap();
            match kind {
                "freeze" => since = since.or(Some(t)),
                "resumed" => {
                    if let Some(s) = since.take() {
                        longest = longest.max(t - s);
                    }
                }
                _ => {}
            }
        }
        if since.is_some() {
            None
        } else {
            Some(longest)
        }
    }

    /// The Cortex is not paused, takes an edit within 20 s (a loaded machine);
    /// returns the frozen span.
    fn assert_unfrozen(&self, case: &str, node: &str) -> f64 {
        assert!(!self.core.paused(), "{case}: the Cortex is still paused");
        assert!(
            self.core.takes_edit(node, 20),
            "{case}: an edit did not complete within 20 s"
        );
        let s = self
            .longest_frozen()
            .unwrap_or_else(|| panic!("{case}: a freeze was never resumed"));
        eprintln!(
            "{case} ({}): the service stayed frozen at most {s:.2} s",
            self.core.line.version()
        );
        s
    }
}

crate::on_both_lines!(a_freeze_is_always_resumed);

/// The cases in turn on one Cortex; the slow flush last.
fn a_freeze_is_always_resumed(line: Line) {
    let server = Server::start(line);
    a_resume_that_fails_once_is_retried_and_confirmed(&server);
    sigkill_mid_freeze_is_resumed_and_its_readers_cleared(&server);
    sighup_mid_freeze_stops_like_sigterm_and_resumes(&server);
    a_second_sigterm_while_resuming_waits_for_the_resume(&server);
    slow_flush_is_abandoned_with_a_resume(&server);
}

/// Poll `cond` every 100 ms for `secs`; true once it holds.
fn within(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Spawn synbackup held inside the freeze (`hold:after-freeze`) in its own process
/// group; returns once it says it is holding, with the stderr lines so far.
fn spawn_held(case: &Case, extra: &[&str]) -> (Child, Vec<String>) {
    let mut cmd = case.backup();
    cmd.env("SYNBACKUP_FAULT", "hold:after-freeze")
        .args(extra)
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let lines = stderr_until(&mut child, "fault injection: holding at after-freeze");
    (child, lines)
}

/// The pids in an environment's reader table, as the real `mdb_stat -r` prints it.
fn reader_pids(env: &Path) -> Vec<i32> {
    let out = command("mdb_stat")
        .arg("-r")
        .arg(env)
        .output()
        .expect("mdb_stat (lmdb-utils) installed");
    // (mdb_stat -r exits 1 when the table is empty.)
    assert!(
        out.stdout.starts_with(b"Reader Table Status"),
        "mdb_stat -r {}: {}",
        env.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 3 {
                f[0].parse().ok()
            } else {
                None
            }
        })
        .collect()
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn slow_flush_is_abandoned_with_a_resume(server: &Server) {
    // The flush sleeps 60 s: longer than --freeze-timeout 2 and the client's bound.
    let case = server.case("slow-flush", &[("SYNTEST_SLOW_SYNC", "60")]);
    let t0 = Instant::now();
    let o = case
        .backup()
        .args(["--freeze-timeout", "2"])
        .output()
        .unwrap();
    let took = t0.elapsed().as_secs_f64();
    assert_fails(&o, 5, "could not freeze the service");
    assert!(
        stderr(&o).contains("the service was resumed"),
        "{}",
        stderr(&o)
    );
    assert!(took < 30.0, "gave up after {took:.1} s");
    assert!(!case.dst.exists());
    let s = case.assert_unfrozen("slow flush", "10.0.0.1");
    assert!(s < 15.0, "frozen {s:.1} s");
    // The abandoned flush still sleeps: a new control text ends it.
    server.case("after-slow-flush", &[]);
}

fn a_resume_that_fails_once_is_retried_and_confirmed(server: &Server) {
    let case = server.case("resume-fails-once", &[("SYNTEST_RESUME_FAILS", "1")]);
    let o = case.backup().arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("injected resume failure"),
        "the failed attempt is logged: {}",
        stderr(&o)
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["frozen"], true);
    let s = case.assert_unfrozen("resume fails once", "10.0.0.2");
    let ms = summary["freeze_ms"].as_f64().unwrap();
    assert!(
        ms >= s * 1e3 * 0.5,
        "the reported freeze ({ms:.0} ms) includes the retried resume ({s:.2} s)"
    );
}

fn sigkill_mid_freeze_is_resumed_and_its_readers_cleared(server: &Server) {
    let case = server.case("sigkill", &[]);
    // 1. SIGKILL of synbackup's whole process group: the guardian resumes.
    let (mut child, _) = spawn_held(&case, &[]);
    assert!(case.core.paused(), "held inside the freeze");
    let killed = Instant::now();
    // SAFETY: kill(2) has no memory preconditions.
    assert_eq!(
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) },
        0
    );
    let _ = child.wait();
    assert!(
        within(10, || !case.core.paused()),
        "still paused 10 s after the SIGKILL"
    );
    eprintln!(
        "SIGKILL: resumed {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    case.assert_unfrozen("SIGKILL of synbackup", "10.0.0.3");
    assert!(!case.dst.exists());
    // The killed run's snapshot left its reader slot in the live lock.mdb.
    let env = case.core.dir.join("slabs/cell.lmdb");
    let first = child.id() as i32;
    assert!(
        reader_pids(&env).contains(&first),
        "a stale reader of pid {first}: {:?}",
        reader_pids(&env)
    );

    // 2. The guardian killed too (`systemctl kill -s KILL` signals the whole unit):
    // the next run finds the record, resumes the service and says so.
    let (mut child, lines) = spawn_held(&case, &["-v"]);
    let guardian: i32 = lines
        .iter()
        .find_map(|l| l.split("freeze guardian pid ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the guardian's pid is logged at debug level")
        .parse()
        .unwrap();
    nix_kill(guardian, 9).unwrap();
    assert!(within(10, || !pid_alive(guardian)), "guardian gone");
    nix_kill(child.id() as i32, 9).unwrap();
    let _ = child.wait();
    assert!(case.core.paused(), "nothing resumed it");
    let records: Vec<String> = names(&case.lock_dir)
        .into_iter()
        .filter(|n| n.starts_with("frozen-"))
        .collect();
    assert_eq!(records.len(), 1, "the freeze is recorded: {records:?}");
    let o = case.backup().output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("and died; it was still paused: resumed it"),
        "{}",
        stderr(&o)
    );
    assert!(names(&case.lock_dir)
        .iter()
        .all(|n| !n.starts_with("frozen-")));
    case.assert_unfrozen("SIGKILL of synbackup and its guardian", "10.0.0.4");
    // ... and that run cleared both killed runs' reader slots, and said so.
    let readers = reader_pids(&env);
    assert!(
        !readers.contains(&first) && !readers.contains(&(child.id() as i32)),
        "stale readers left: {readers:?}"
    );
    assert!(
        stderr(&o).contains("stale reader slot(s) of dead processes"),
        "{}",
        stderr(&o)
    );
}

fn sighup_mid_freeze_stops_like_sigterm_and_resumes(server: &Server) {
    let case = server.case("sighup", &[]);
    let (mut child, _) = spawn_held(&case, &[]);
    assert!(case.core.paused(), "held inside the freeze");
    nix_kill(child.id() as i32, 1).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(129), "SIGHUP exits 129: {st:?}");
    assert!(!case.dst.exists());
    case.assert_unfrozen("SIGHUP", "10.0.0.5");
}

fn a_second_sigterm_while_resuming_waits_for_the_resume(server: &Server) {
    // The resume fails 4 times: synbackup is still retrying when both signals come.
    let case = server.case("two-sigterms", &[("SYNTEST_RESUME_FAILS", "4")]);
    let mut child = case
        .backup()
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    stderr_until(&mut child, "retrying");
    let pid = child.id() as i32;
    nix_kill(pid, 15).unwrap();
    nix_kill(pid, 15).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(143), "{st:?}");
    assert!(!case.dst.exists());
    case.assert_unfrozen("two SIGTERMs while resuming", "10.0.0.6");
}
