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
            let name = p.file_name().unwrap().to_string_lossy();
            p.extension().is_some_and(|x| x == "json")
                && name != "archive.json"
                && !name.starts_with('.')
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

/// The archive on a small file system that fills up under a writer: the archiver
/// stops (exit 4) naming the path and ENOSPC, `status` says so, every entry it had
/// counted archived is there intact, a second start on the full file system
/// stops again without a duplicate, and once space is freed it resumes and
/// catches up with no gap and no duplicate.
fn full_disk_stops_then_resumes(line: Line) {
    use std::io::Write;
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let p = Pitr::start(line, t.path(), true);
    assert_eq!(p.core.add(50, 0), 50);
    let _fs = Tmpfs::mount(&p.archive_dir(), "size=2m,mode=0700");
    let mut a = p.archiver(16 << 10);
    let caught_up = p.wait_archived(120);
    // Then nearly full: what a filler leaves is 64 KiB.
    let filler = p.archive_dir().join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len - (64 << 10)).unwrap();
    drop(f);

    let mut start = 1000;
    let status = loop {
        if let Some(st) = a.try_wait().unwrap() {
            break st;
        }
        assert!(
            start < 20_000,
            "{v}: the archiver did not stop on a full disk"
        );
        p.core.add(200, start);
        start += 200;
    };
    assert_eq!(status.code(), Some(4), "{v}: {}", p.archiver_log());
    let log = p.archiver_log();
    let dir = p.archive_dir().display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("(ENOSPC)") && l.contains(&dir) && l.contains("is on disk")),
        "{v}: {log}"
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&fs::read(p.root.join("state/c0.nexus-archive.json")).unwrap())
            .unwrap();
    let acked = rec["archived_to"].as_u64().unwrap();
    assert!(acked >= caught_up, "{v}: {rec}");
    let o = run_at(&p.root, &["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("PROBLEM: ")
            && out.contains("the nexus archiver stopped at")
            && out.contains("(ENOSPC)")
            && out.contains(&format!("entries before offset {acked} are archived")),
        "{v}: {out}"
    );
    // Everything counted archived is there, as the cell has it.
    let cell = cell_log(line, &p.dir);
    let check = |recs: &[Record], to: u64| {
        assert_contiguous(recs, 0, to);
        for r in recs {
            assert_eq!(
                r.entry, cell[r.offset as usize].1,
                "{v}: offset {}",
                r.offset
            );
        }
    };
    let recs = archived(&p.archive_dir());
    let held = recs.last().unwrap().offset + 1;
    assert!(held >= acked, "{v}: {held} < {acked}");
    check(&recs, held);
    // Started again on the full file system (Restart= does this): it stops again,
    // and what it held is unchanged (a record torn by the first stop is cut).
    let mut a = p.archiver(16 << 10);
    assert_eq!(a.wait().unwrap().code(), Some(4), "{v}");
    let recs = archived(&p.archive_dir());
    check(&recs, recs.last().unwrap().offset + 1);
    assert!(recs.len() as u64 >= held, "{v}");

    // Space freed: it resumes and catches up, no gap, no duplicate.
    fs::remove_file(&filler).unwrap();
    let a = p.archiver(16 << 10);
    let n = p.wait_archived(120);
    stop(a);
    let cell = cell_log(line, &p.dir);
    let recs = archived(&p.archive_dir());
    assert_contiguous(&recs, 0, n);
    for r in &recs {
        assert_eq!(
            r.entry, cell[r.offset as usize].1,
            "{v}: offset {}",
            r.offset
        );
    }
    assert!(
        !p.root.join("state/c0.nexus-archive.json").exists(),
        "{v}: the failure record is gone once it caught up"
    );
    let o = run_at(&p.root, &["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(!out.contains("nexus archiver"), "{v}: {out}");
    println!("{v}: stopped on a full disk at offset {acked} (held {held}), resumed to {n}");
}
crate::on_both_lines!(full_disk_stops_then_resumes);

/// A cell that comes back behind its archive (here: its directory put back as it
/// was, cold, earlier; a cell killed before its slabs committed its last entries
/// comes back the same way, and a 3.x cell adds an entry of its own at boot). The
/// archiver keeps the archived entries the cell no longer has aside, whole, and
/// goes on with the cell's own history; `status` says so. Before, it stopped
/// (exit 3, "behind its archive") and archived nothing more; and a cell put back
/// that went past the archive with changes of its own before the archiver
/// connected had them archived after the old ones: two histories mixed.
fn a_cell_back_behind_its_archive(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let mut p = Pitr::start(line, t.path(), true);
    assert_eq!(p.core.add(100, 0), 100);
    // One entry per segment, each cut slowed: the archive passes through every
    // offset between the old end and the fork while the archiver cuts.
    let a = p.archiver_with(1, &[("SYNBACKUP_FAULT", "delay:fork-mid-cut:100")]);
    p.wait_archived(60);
    // The directory as it is now, cold.
    p.core.stop();
    let earlier = t.path().join("earlier");
    p.copy_dir(&earlier);
    let earlier2 = t.path().join("earlier2");
    p.copy_dir(&earlier2);
    p.core = Cortex::start(line, &p.dir);
    assert_eq!(p.core.add(50, 1000), 150);
    let ahead = p.wait_archived(60);
    let old = archived(&p.archive_dir());
    // Put back as it was: the cell comes back behind the archive.
    p.put_back(&earlier);
    let back = p.index();
    assert!(
        back < ahead,
        "{v}: the cell at {back}, the archive at {ahead}"
    );
    assert_eq!(p.core.add(20, 2000), 120);
    // The old archive is longer than the cell's log now: wait for the archive to
    // end where the cell does, once the archiver has set aside what the cell no
    // longer has. While it cuts the old entries, newest segment first, the
    // archive ends at one old segment's end after another, and one of them can
    // be the cell's index: only the line it logs once the cut is done says the
    // archive holds the cell's history from there on.
    let n = p.index();
    assert!(
        wait_for(120, || p.archiver_log().contains("parts from its archive")
            && archived(&p.archive_dir()).last().map(|r| r.offset + 1)
                == Some(n)),
        "{v}: the archive did not go on from the cell's own history to {n}:\n{}",
        p.archiver_log()
    );
    stop(a);
    let log = p.archiver_log();
    assert!(
        log.contains("parts from its archive") && log.contains("are kept in"),
        "{v}: the archiver's log:\n{log}"
    );
    // The archive is the cell's own history again, byte for byte.
    let recs = archived(&p.archive_dir());
    assert_contiguous(&recs, 0, n);
    let cell = cell_log(line, &p.dir);
    assert_eq!(cell.len() as u64, n, "{v}");
    for (r, (o, bytes)) in recs.iter().zip(&cell) {
        assert_eq!((r.offset, &r.entry), (*o, bytes), "{v}: offset {o}");
    }
    // What the cell no longer has is kept aside, whole: every archived entry
    // from where the histories part to the newest one before.
    let aside: Vec<_> = std::fs::read_dir(p.archive_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.is_dir())
        .collect();
    assert_eq!(aside.len(), 1, "{v}: {aside:?}");
    let kept = archived(&aside[0]);
    let fork = kept.first().unwrap().offset;
    assert!(
        fork <= back,
        "{v}: set aside from {fork}, the cell back at {back}"
    );
    assert_contiguous(&kept, fork, ahead);
    for k in &kept {
        let o = &old[k.offset as usize];
        assert_eq!((k.offset, &k.entry), (o.offset, &o.entry), "{v}");
    }
    // status names it (and check, verify read the archive as a chain).
    let o = run_at(&p.root, &["status", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(9), "{v}: {out}");
    assert!(
        out.contains("parted from its nexus archive")
            && out.contains(&format!("{fork}-{}", ahead - 1)),
        "{v}: {out}"
    );
    println!("{v}: the cell came back at {back} behind the archive at {ahead}; {} entries from {fork} kept aside, the archive went on to {n}", kept.len());

    // Put back as it was again, with the archiver stopped meanwhile: the cell
    // goes past the archive with changes of its own before the archiver connects.
    // They part where the cell was put back, not where the archive ends.
    let before = archived(&p.archive_dir());
    p.put_back(&earlier2);
    assert_eq!(p.core.add(60, 3000), 160);
    let past = p.index();
    assert!(past > n, "{v}: the cell at {past}, the archive at {n}");
    let a = p.archiver(4096);
    assert!(
        wait_for(120, || archived(&p.archive_dir())
            .last()
            .map(|r| r.offset + 1)
            == Some(past)
            && std::fs::read_dir(p.archive_dir())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().is_dir())
                .count()
                == 2),
        "{v}: the archive did not go on from the cell's own history to {past}:\n{}",
        p.archiver_log()
    );
    stop(a);
    let recs = archived(&p.archive_dir());
    let cell = cell_log(line, &p.dir);
    assert_eq!(cell.len() as u64, past, "{v}");
    for (r, (o, bytes)) in recs.iter().zip(&cell) {
        assert_eq!((r.offset, &r.entry), (*o, bytes), "{v}: offset {o}");
    }
    let second = std::fs::read_dir(p.archive_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.is_dir() && *d != aside[0])
        .collect::<Vec<_>>();
    let kept2 = archived(&second[0]);
    let fork2 = kept2.first().unwrap().offset;
    assert_contiguous(&kept2, fork2, n);
    for k in &kept2 {
        let o = &before[k.offset as usize];
        assert_eq!((k.offset, &k.entry), (o.offset, &o.entry), "{v}");
    }
    println!("{v}: put back again, the cell went on to {past} past the archive at {n}; {} entries from {fork2} kept aside", kept2.len());
}
crate::on_both_lines!(a_cell_back_behind_its_archive);
