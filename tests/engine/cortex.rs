// SPDX-License-Identifier: Apache-2.0
//! Against a real Synapse Cortex, on both release lines (2.256.0 and 3.7.0): a
//! backup taken under write load (compacted, and plain with `--no-compact`) is
//! consistent, verifies and starts; a failure after the freeze still resumes the
//! service; with the service stopped, Synapse's own tool (the line's own
//! `synapse.tools.service.backup`) and synbackup agree on every database's entry
//! count.
//!
//! One test function runs the phases in order: a Cortex takes 15–60 s to start.

use std::io::{BufRead, BufReader};

use crate::util::*;

crate::on_both_lines!(live_cortex_backups);

fn live_cortex_backups(line: Line) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("core00");
    let mut core = Cortex::start(line, &src);
    assert_eq!(core.add(300, 0), 300);

    // Phase 1: a backup while a writer adds nodes without pause.
    let mut writer = core.writer(100_000);
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap(); // the writer is connected
    lines.next().unwrap().unwrap(); // ... and has committed edits
    let before = core.count();
    let dst = t.path().join("b1");
    let o = run(&[&"backup", &src, &dst, &"--verify", &"--json"]);
    // ... and a plain one (pages in place), still under the writer.
    let plain = t.path().join("b1-plain");
    let op = run(&[
        &"backup",
        &src,
        &plain,
        &"--verify",
        &"--json",
        &"--no-compact",
    ]);
    let after = core.count();
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["frozen"], true, "a running service is frozen");
    assert!(summary["freeze_ms"].as_f64().unwrap() < 30_000.0);
    assert!(summary["verified"].as_bool().unwrap());
    assert!(op.status.success(), "{}", stderr(&op));
    let sp: serde_json::Value = serde_json::from_slice(&op.stdout).unwrap();
    assert_eq!(
        (&sp["frozen"], &sp["compacted"]),
        (&true.into(), &false.into())
    );
    assert!(
        after > before,
        "the writer kept writing ({before} -> {after})"
    );
    assert!(core
        .log_text()
        .contains("Resuming normal operations from a freeze"));
    assert!(!core.paused(), "the Cortex was left frozen");
    let o = run(&[&"verify", &dst]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A Cortex started on the backup answers Storm with a count in between.
    let mut restored = Cortex::start(line, &dst);
    let n = restored.count();
    assert!(
        before <= n && n <= after,
        "restored {n} nodes, not within {before}..={after}"
    );
    restored.stop();
    let mut restored = Cortex::start(line, &plain);
    let n = restored.count();
    assert!(
        before <= n && n <= after,
        "restored {n} nodes from the plain copy, not within {before}..={after}"
    );
    restored.stop();

    // Phase 2: a failure after the freeze: the service is resumed and takes edits.
    let o = bin()
        .env("SYNBACKUP_FAULT", "after-freeze")
        .arg("backup")
        .arg(&src)
        .arg(t.path().join("b2"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("injected fault at after-freeze"));
    assert!(!t.path().join("b2").exists());
    assert!(
        core.takes_edit("255.255.255.254", 20),
        "the service must accept edits after a failed backup"
    );

    // ... and also after a panic in a copy worker.
    let o = bin()
        .env("SYNBACKUP_FAULT", "panic:panic-in-worker")
        .arg("backup")
        .arg(&src)
        .arg(t.path().join("b3"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!t.path().join("b3").exists());
    assert!(
        core.takes_edit("255.255.255.253", 20),
        "the service must accept edits after a panic"
    );

    // Phase 3: stopped service: Synapse's tool and synbackup agree.
    core.stop();
    let py = t.path().join("py");
    let st = line
        .py(&[])
        .args(["-m", "synapse.tools.service.backup"])
        .arg(&src)
        .arg(&py)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let ours = t.path().join("ours");
    let o = run(&[&"backup", &src, &ours]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not frozen"),
        "a stopped service is not frozen"
    );
    let m = manifest(&ours);
    let envs = m["environments"].as_array().unwrap();
    assert!(envs.len() >= 10, "a Cortex has many environments");
    for e in envs {
        let rel = e["path"].as_str().unwrap();
        assert_eq!(
            mdb_stat_counts(&py.join(rel)),
            mdb_stat_counts(&ours.join(rel)),
            "{rel}"
        );
    }
}
