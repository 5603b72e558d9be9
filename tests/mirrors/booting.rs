// SPDX-License-Identifier: Apache-2.0
//! A cell that is still booting: the real Cortex (2.256.0 and 3.7.0) started
//! through `tests/util/patched_cortex.py` with `SYNTEST_DELAY_LISTEN`, whose first
//! listen on `DIR/sock` waits: the process holds its LMDB files and the lock on
//! its `cell.guid`, and nothing answers. `backup` with a short `--boot-wait` refuses
//! it (exit 5, one line, nothing published; on main it was copied unfrozen, exit
//! 0, `frozen: false`); with the default it waits and backs it up frozen once it
//! answers. One boot per line serves both.

use std::path::Path;

use crate::util::syn3;
use crate::util::Line;
use crate::util::*;

/// Seconds the patched server waits before it listens on its socket.
const DELAY: &str = "40";

/// Wait until the patched server reached its delayed listen (its storage open).
fn wait_reached_listen(events: &Path, log: &Path) {
    assert!(
        wait_for(180, || std::fs::read_to_string(events)
            .unwrap_or_default()
            .contains("listen-delayed")),
        "the server never reached its listen; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn booting_cell_is_waited_for_then_refused(dir: &Path, events: &Path, log: &Path, v: &str) {
    wait_reached_listen(events, log);
    assert!(
        !dir.join("sock").exists()
            || std::os::unix::net::UnixStream::connect(dir.join("sock")).is_err(),
        "{v}: nothing answers yet"
    );
    let t = dir.parent().unwrap();
    let early = t.join("b-early");
    let o = run(&[&"backup", &dir, &early, &"--boot-wait", &"2s"]);
    assert_fails(&o, 5, "nothing answered on");
    let err = &error_lines(&o)[0];
    assert!(
        err.contains("holds its cell.guid lock") && err.contains("still booting"),
        "{v}: {err}"
    );
    assert!(!early.exists(), "{v}: nothing published");
    // The default wait sees it answer, then freezes it.
    let dst = t.join("b-waited");
    let o = run(&[&"backup", &dir, &dst, &"--json", &"--verify"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["frozen"], true, "{v}: {summary}");
    assert!(
        stderr(&o).contains("does not answer on") && stderr(&o).contains("answers after"),
        "{v}: says it waited: {}",
        stderr(&o)
    );
    let text = std::fs::read_to_string(events).unwrap();
    assert!(text.contains("listening"), "{v}: {text}");
    assert!(manifest(&dst)["cell"]["nexus_index"].is_u64(), "{v}");
}

#[test]
fn a_booting_cell_is_waited_for_2_256() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("core");
    let events = t.path().join("events");
    let ev = events.to_str().unwrap().to_string();
    let core = Cortex::spawn_patched(
        Line::V2,
        &dir,
        &[("SYNTEST_DELAY_LISTEN", DELAY), ("SYNTEST_EVENTS", &ev)],
    );
    booting_cell_is_waited_for_then_refused(&dir, &events, &core.log, "2.256.0");
    assert!(!core.paused());
}

#[test]
fn a_booting_cell_is_waited_for_3x() {
    let Some(_root) = syn3::require("a_booting_cell_is_waited_for_3x") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("core");
    let events = t.path().join("events");
    let ev = events.to_str().unwrap().to_string();
    let core = Cortex::spawn_patched(
        Line::V3,
        &dir,
        &[("SYNTEST_DELAY_LISTEN", DELAY), ("SYNTEST_EVENTS", &ev)],
    );
    booting_cell_is_waited_for_then_refused(&dir, &events, &core.log, syn3::VERSION);
    assert!(!core.paused());
}
