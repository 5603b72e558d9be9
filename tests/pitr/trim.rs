// SPDX-License-Identifier: Apache-2.0
//! `synbackup nexus-trim` on a real Cortex: refused while the archiver lags (the
//! cell's log keeps every entry, and `status` says the archiver is behind), done
//! once it has caught up, and the archive + backup still restore to a point
//! before the trim.

use super::*;

fn stop(mut child: std::process::Child) {
    let _ = nix_kill(child.id() as i32, 15);
    assert!(child.wait().unwrap().success());
}

/// The trim `o` was refused (exit 15) for `why`, saying nothing was culled, and
/// the cell's log still begins at 0.
fn assert_refused_log_whole(p: &Pitr, o: &std::process::Output, why: &str) {
    let v = p.core.line.version();
    assert_fails(o, 15, why);
    assert!(
        error_lines(o)[0].contains("nothing was culled"),
        "{v}: {}",
        stderr(o)
    );
    let log = cell_log(p.core.line, &p.dir);
    assert_eq!(
        log.first().map(|e| e.0),
        Some(0),
        "{v}: the cell's log was cut"
    );
}

fn refuses_behind_trims_caught_up(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let mut p = Pitr::start(line, t.path(), true);
    let conf = p.root.join("etc/c0.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "SYNBACKUP_DRILL_PYTHON={}\nSYNBACKUP_NEXUS_MAX_LAG=1s\n",
        line.python().display()
    ));
    fs::write(&conf, text).unwrap();

    assert_eq!(p.core.add(100, 0), 100);
    let a = p.archiver(4096);
    let o = run_at(&p.root, &["run", "c0"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    assert_eq!(p.core.add(100, 1000), 200);
    let target = p.wait_archived(60);
    stop(a);
    assert_eq!(p.core.add(50, 2000), 250);

    // The archive lags: status says so (once the newest entry is older than 1 s),
    // and the trim is refused with the cell's log untouched.
    assert!(
        wait_for(20, || String::from_utf8_lossy(
            &run_at(&p.root, &["status", "c0"]).stdout
        )
        .contains("the nexus archiver is behind")),
        "{v}: status never said the archiver is behind: {}",
        String::from_utf8_lossy(&run_at(&p.root, &["status", "c0"]).stdout)
    );
    let o = run_at(&p.root, &["nexus-trim", "c0", "--wait", "2s"]);
    assert_refused_log_whole(&p, &o, "the nexus archiver is behind");

    // Caught up, but a mirror of SYNBACKUP_MIRRORS does not answer: refused
    // before anything is rotated, unless --force-mirror names it.
    let a = p.archiver(4096);
    p.wait_archived(60);
    let gone = t.path().join("mirror-gone");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("SYNBACKUP_MIRRORS={}\n", gone.display()));
    fs::write(&conf, &text).unwrap();
    let o = run_at(&p.root, &["nexus-trim", "c0", "--dry-run"]);
    assert_fails(&o, 15, "does not answer");
    let o = run_at(&p.root, &["nexus-trim", "c0"]);
    assert_fails(&o, 15, &format!("pass --force-mirror {}", gone.display()));
    assert_eq!(cell_log(line, &p.dir).first().map(|e| e.0), Some(0), "{v}");
    let o = run_at(
        &p.root,
        &[
            "nexus-trim",
            "c0",
            "--dry-run",
            "--force-mirror",
            &gone.to_string_lossy(),
        ],
    );
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("would rotate the nexus log"),
        "{v}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The trim culls up to the rotation.
    let o = run_at(
        &p.root,
        &[
            "nexus-trim",
            "c0",
            "--wait",
            "60s",
            "--force-mirror",
            &gone.to_string_lossy(),
        ],
    );
    assert!(
        o.status.success(),
        "{v}: {}\nthe archiver's log:\n{}",
        stderr(&o),
        p.archiver_log()
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("culled the nexus log"), "{v}: {out}");
    let first = cell_log(line, &p.dir).first().map(|e| e.0).unwrap();
    assert!(first > target, "{v}: the log still starts at {first}");
    p.wait_archived(60);
    stop(a);
    let o = run_at(&p.root, &["verify", "--instance", "c0"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));

    // SYNBACKUP_NEXUS_TRIM=after-archive: each nightly run trims after its
    // backup; refused (the mirror does not answer) it is a warning in the run's
    // status, never the run's failure.
    // The configuration written before the archiver starts, which reads it: a
    // file rewritten under it can be read empty ("SYNBACKUP_SERVICE_DIR is
    // missing"), and with no archiver the run's trim waited its 60 s in vain.
    fs::write(&conf, format!("{text}SYNBACKUP_NEXUS_TRIM=after-archive\n")).unwrap();
    let a = p.archiver(4096);
    let o = run_at(&p.root, &["run", "c0"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(p.root.join("state/c0.json")).unwrap()).unwrap();
    assert_eq!(
        st["details"]["nexus_trim"]["result"], "refused",
        "{v}: {st}"
    );
    let text = text.replace(&format!("SYNBACKUP_MIRRORS={}\n", gone.display()), "");
    fs::write(&conf, format!("{text}SYNBACKUP_NEXUS_TRIM=after-archive\n")).unwrap();
    let o = run_at(&p.root, &["run", "c0"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(p.root.join("state/c0.json")).unwrap()).unwrap();
    assert_eq!(
        st["details"]["nexus_trim"]["result"],
        "success",
        "{v}: {st}\nthe archiver's log:\n{}",
        p.archiver_log()
    );
    let again = cell_log(line, &p.dir).first().map(|e| e.0).unwrap();
    assert!(again > first, "{v}: the run's trim left the log at {again}");
    let end = p.wait_archived(60);
    stop(a);

    // Archive + backup bring the cell to a point before the trim.
    p.core.stop();
    let o = run_at(
        &p.root,
        &["restore", "--instance", "c0", "--to", &target.to_string()],
    );
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    p.core = Cortex::start(line, &p.dir);
    assert_eq!(p.core.count(), 200, "{v}");
    println!("{v}: trim refused while the archive lagged; culled up to {} after it caught up (archive to {end}); restored to {target}", first - 1);
}
crate::on_both_lines!(refuses_behind_trims_caught_up);

/// A cell put back behind its archive, which then goes on with changes of its
/// own while the archiver is stopped: the archive is "ahead" of the rotation,
/// but with entries of the history the cell left at the offsets the cell
/// reuses. The trim compares them with the cell's and refuses (nothing culled,
/// the dry run says why); once the archiver has set them aside and archived
/// the cell's own entries, the trim culls. Before, the trim counted the other
/// history's entries and culled the cell's 40 new entries, which nothing had
/// archived, and the archiver then refused the cell for good.
fn refuses_an_archive_the_cell_came_back_behind(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let mut p = Pitr::start(line, t.path(), true);
    assert_eq!(p.core.add(100, 0), 100);
    let a = p.archiver(4096);
    p.wait_archived(60);
    p.core.stop();
    let earlier = t.path().join("earlier");
    p.copy_dir(&earlier);
    p.core = Cortex::start(line, &p.dir);
    assert_eq!(p.core.add(100, 1000), 200);
    let ahead = p.wait_archived(60);
    stop(a);
    p.put_back(&earlier);
    assert_eq!(p.core.add(20, 2000), 120);
    let now = p.index();
    assert!(
        now < ahead,
        "{v}: the cell at {now}, the archive at {ahead}"
    );

    let o = run_at(&p.root, &["nexus-trim", "c0", "--dry-run"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("would cull nothing now") && out.contains("is not the cell's"),
        "{v}: {out}"
    );
    let o = run_at(&p.root, &["nexus-trim", "c0", "--wait", "3s"]);
    assert_refused_log_whole(&p, &o, "does not hold the cell's own entries");

    // The archiver sets the other history aside and archives the cell's own
    // entries: now the trim culls.
    let a = p.archiver(4096);
    assert!(
        wait_for(120, || p.archiver_log().contains("parts from its archive")),
        "{v}: the archiver did not part from the cell:\n{}",
        p.archiver_log()
    );
    let o = run_at(&p.root, &["nexus-trim", "c0", "--wait", "60s"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let first = cell_log(line, &p.dir).first().map(|e| e.0).unwrap();
    assert!(first > now, "{v}: the log still starts at {first}");
    let end = p.wait_archived(60);
    stop(a);
    let recs = archived(&p.archive_dir());
    assert_contiguous(&recs, 0, end);
    println!("{v}: refused while the archive held another history from the cell's {now} on (archive at {ahead}); culled to {} once the archiver set it aside", first - 1);
}
crate::on_both_lines!(refuses_an_archive_the_cell_came_back_behind);
