// SPDX-License-Identifier: Apache-2.0
//! `synbackup nexus-archive`: a real Cortex's nexus log followed into the archive,
//! exactly and without a gap or a duplicate across restarts of either side.

use std::process::Child;

use super::*;

fn stop(mut child: Child) {
    let _ = nix_kill(child.id() as i32, 15);
    let st = child.wait().unwrap();
    assert!(st.success(), "the archiver exited {st} on SIGTERM");
}

fn follows_and_resumes(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let mut p = Pitr::start(line, t.path(), true);
    assert_eq!(p.core.add(300, 0), 300);

    // 1. From nothing: the cell's stored log, then live edits.
    let mut a = p.archiver(8192);
    p.wait_archived(60);
    let mut w = p.core.writer(1000);
    stderr_until_offset(&p, 200);
    // 2. Killed mid-stream (SIGKILL: no chance to tidy up), restarted.
    let _ = nix_kill(a.id() as i32, 9);
    let _ = a.wait();
    let a = p.archiver(8192);
    stderr_until_offset(&p, 200);
    // 3. The Cortex restarted under the archiver (which reconnects).
    let _ = w.kill();
    let _ = w.wait();
    p.core.stop();
    p.core = Cortex::start(line, &p.dir);
    assert_eq!(p.core.add(50, 5000), 350);
    let n = p.wait_archived(60);
    stop(a);
    let log = p.archiver_log();
    assert!(
        log.contains("caught up with the cell") && log.contains("connecting again"),
        "{v}: the archiver's log:\n{log}"
    );

    let recs = archived(&p.archive_dir());
    assert_contiguous(&recs, 0, n);
    assert!(
        recs.windows(2)
            .all(|w| w[0].received_us <= w[1].received_us),
        "{v}: received times go forward"
    );
    // Byte for byte what Synapse's own client reads from the cell's log.
    let log = cell_log(line, &p.dir);
    assert_eq!(log.len() as u64, n, "{v}");
    for (r, (o, bytes)) in recs.iter().zip(&log) {
        assert_eq!(r.offset, *o);
        assert_eq!(
            &r.entry, bytes,
            "{v}: offset {o} differs from the cell's log"
        );
    }
    // Closed segments carry their index and digest.
    let closed: Vec<_> = std::fs::read_dir(p.archive_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json") && p.file_name().unwrap() != "archive.json"
        })
        .collect();
    assert!(closed.len() >= 2, "{v}: {closed:?}");
    for j in &closed {
        let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(j).unwrap()).unwrap();
        let seg = std::fs::read(j.with_extension("seg")).unwrap();
        assert_eq!(
            idx["blake3"].as_str().unwrap(),
            blake3::hash(&seg).to_hex().as_str(),
            "{v}: {}",
            j.display()
        );
    }
    println!("{v}: {n} entries archived in {} closed segments, across an archiver SIGKILL and a Cortex restart", closed.len());
}
crate::on_both_lines!(follows_and_resumes);

/// Wait until the archive has `more` entries beyond what it had when called.
fn stderr_until_offset(p: &Pitr, more: u64) {
    let have = archived(&p.archive_dir()).last().map_or(0, |r| r.offset);
    assert!(
        wait_for(120, || archived(&p.archive_dir())
            .last()
            .is_some_and(|r| r.offset >= have + more)),
        "the archive did not grow by {more} entries from {have}"
    );
}

fn refuses_without_the_nexus_log(line: Line) {
    let t = tempfile::tempdir().unwrap();
    let p = Pitr::start(line, t.path(), false);
    // No archive yet: `check` warns and `status` says point-in-time recovery is
    // off, and why (not a failure: nothing was set up for it).
    let o = run_at(&p.root, &["check", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.lines()
            .any(|l| l.contains("WARN") && l.contains("pitr") && l.contains("nexslog:en false")),
        "{out}"
    );
    let o = run_at(&p.root, &["status", "c0", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st[0]["pitr"]["state"], "nexslog-off", "{st}");
    assert_eq!(st[0]["pitr"]["problems"], serde_json::json!([]), "{st}");
    let o = run_at(&p.root, &["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("point-in-time recovery is off") && out.contains("nexslog:en false"),
        "{out}"
    );

    let o = run_at(&p.root, &["nexus-archive", "c0"]);
    assert_fails(&o, 2, "nexslog:en false");
    let err = &error_lines(&o)[0];
    assert!(
        err.contains("point-in-time recovery needs the cell's nexus log")
            && err.contains("set `nexslog:en: true` in"),
        "{err}"
    );
    // An archive was set up for it: now a failing check and a status PROBLEM.
    let o = run_at(&p.root, &["check", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.lines()
            .any(|l| l.contains("FAIL") && l.contains("pitr") && l.contains("nexslog:en false")),
        "{out}"
    );
    let o = run_at(&p.root, &["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("PROBLEM") && out.contains("point-in-time recovery is off"),
        "{out}"
    );
}
crate::on_both_lines!(refuses_without_the_nexus_log);
