// SPDX-License-Identifier: Apache-2.0
//! Against a real Synapse Cortex (synapse 2.256.0 from the venv): a backup taken
//! under write load (compacted, and plain with `--no-compact`) is consistent and
//! starts; a failure after the freeze still resumes the service; with the service
//! stopped, Synapse's own tool and synbackup agree on every database's entry count.
//!
//! One test function runs the phases in order: a Cortex takes 15–25 s to start.

use std::io::{BufRead, BufReader};

use crate::util::*;

fn count(dir: &str) -> u64 {
    storm(&["count", dir, "inet:ipv4"]).parse().unwrap()
}

#[test]
fn live_cortex_backups() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("core00");
    let mut core = Cortex::start(&src);
    let d = core.url_dir().to_string();
    storm(&["add", &d, "300"]);

    // Phase 1: a backup while a writer adds nodes without pause.
    let mut writer = storm_spawn(&["writer", &d, "--start", "100000"]);
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap(); // the writer is connected
    lines.next().unwrap().unwrap(); // ... and has committed edits
    let before = count(&d);
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
    let after = count(&d);
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

    // A Cortex started on the backup answers Storm with a count in between.
    let mut restored = Cortex::start(&dst);
    let n = count(restored.url_dir());
    assert!(
        before <= n && n <= after,
        "restored {n} nodes, not within {before}..={after}"
    );
    restored.stop();
    let mut restored = Cortex::start(&plain);
    let n = count(restored.url_dir());
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
        storm_status(&[
            "storm",
            &d,
            "[inet:ipv4=255.255.255.254]",
            "--timeout",
            "20"
        ]),
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
        storm_status(&[
            "storm",
            &d,
            "[inet:ipv4=255.255.255.253]",
            "--timeout",
            "20"
        ]),
        "the service must accept edits after a panic"
    );

    // Phase 3: stopped service: Synapse's tool and synbackup agree.
    core.stop();
    let py = t.path().join("py");
    let st = command(python())
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
