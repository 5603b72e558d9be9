// SPDX-License-Identifier: Apache-2.0
//! `restore --instance c0 --to TIME|OFFSET` end to end on a real Cortex: a base
//! backup, thousands of edits, a mass delete, more edits; the restore to just
//! before the delete brings back every deleted node and none of the later edits;
//! a target past a gap in the archive is refused naming the gap.

use super::*;

/// `cell.METHOD(*ARGS)` through Synapse's own client.
fn call(p: &Pitr, method: &str, args: &str) {
    let script = format!(
        "import sys, asyncio\nimport synapse.telepath as t\nasync def main():\n    async with await t.openurl('cell://' + sys.argv[1]) as c:\n        print(await c.{method}({args}))\nasyncio.run(main())\n"
    );
    let out = p
        .core
        .line
        .py(&[])
        .args(["-c", &script])
        .arg(&p.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn to_just_before_a_mass_delete(line: Line) {
    let v = line.version();
    let form = line.ip_form();
    let t = tempfile::tempdir().unwrap();
    let mut p = Pitr::start(line, t.path(), true);
    // The replay runs with the service's Python (no unit here: the drill's key).
    let conf = p.root.join("etc/c0.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "SYNBACKUP_DRILL_PYTHON={}\n",
        line.python().display()
    ));
    fs::write(&conf, text).unwrap();

    let add = |n: u32, start: u32, tag: &str| -> u64 {
        p.core
            .storm(
                "add",
                &[&n.to_string(), "--start", &start.to_string(), "--tag", tag],
            )
            .parse()
            .unwrap()
    };
    assert_eq!(add(500, 0, "base"), 500);
    let archiver = p.archiver(1 << 20);
    // 1. The base backup (the cell frozen: its manifest records the index).
    let o = run_at(&p.root, &["run", "c0"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    // 2. Thousands of edits after it.
    assert_eq!(add(3000, 1000, "pre"), 3000);
    let before = p.core.count();
    assert_eq!(before, 3500);
    let d = p.wait_archived(120);
    let moment = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20)); // distinct receive times
                                                              // 3. The mistake: every IPv4 node deleted; then more edits.
    p.core.storm("storm", &[&format!("{form} | delnode")]);
    assert_eq!(p.core.count(), 0, "{v}");
    assert_eq!(add(200, 100_000, "post"), 200);
    p.wait_archived(120);
    // 4. A gap: the archiver stopped, the cell's log rotated and culled past what
    //    it had archived, the archiver started again.
    let _ = nix_kill(archiver.id() as i32, 15);
    let mut archiver = archiver;
    assert!(archiver.wait().unwrap().success());
    let culled_from = p.index();
    assert_eq!(add(100, 200_000, "post"), 300);
    call(&p, "rotateNexsLog", "");
    let cull_to = p.index() - 1;
    call(&p, "cullNexsLog", &cull_to.to_string());
    assert_eq!(add(50, 300_000, "post"), 350);
    let mut archiver = p.archiver(1 << 20);
    let end = p.wait_archived(120);
    let _ = nix_kill(archiver.id() as i32, 15);
    assert!(archiver.wait().unwrap().success());
    assert!(
        p.archiver_log()
            .contains(&format!("gap in the nexus archive: offsets {culled_from}-")),
        "{v}: {}",
        p.archiver_log()
    );
    p.core.stop();

    // A target past the gap, from the only backup (before it): refused, named.
    let o = run_at(
        &p.root,
        &["restore", "--instance", "c0", "--to", &end.to_string()],
    );
    assert_fails(&o, 3, &format!("offsets {culled_from}-"));
    assert!(error_lines(&o)[0].contains("gap"), "{v}: {}", stderr(&o));

    // 5. To the moment before the delete (a time; it maps to index d).
    let to = moment.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // Its dry run names the base backup and the entries, and changes nothing.
    let beside = fs::read_dir(p.dir.parent().unwrap()).unwrap().count();
    let o = run_at(
        &p.root,
        &["restore", "--instance", "c0", "--to", &to, "--dry-run"],
    );
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        plan.contains(&format!("archived nexus entries up to index {d}"))
            && plan.contains("dry run: nothing was changed"),
        "{v}: {plan}"
    );
    assert_eq!(
        fs::read_dir(p.dir.parent().unwrap()).unwrap().count(),
        beside,
        "{v}: the dry run left something beside the directory"
    );
    let t0 = std::time::Instant::now();
    let o = run_at(&p.root, &["restore", "--instance", "c0", "--to", &to]);
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &stderr(&o);
    assert!(out.contains(&format!(" to {d} (")), "{v}: {out}");
    println!(
        "{v}: restore --to {to} (index {d}) in {secs:.1} s: {}",
        out.lines()
            .find(|l| l.contains("brought forward"))
            .unwrap_or("")
    );

    // The replay ended at index d (it checks that itself); its status says so.
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(p.root.join("state/c0.restore.json")).unwrap()).unwrap();
    let pitr = &st["details"]["before_swap"];
    assert_eq!(pitr["to"], d, "{v}: {st}");
    assert_eq!(
        pitr["applied"].as_u64().unwrap() + pitr["from"].as_u64().unwrap(),
        d,
        "{v}: {st}"
    );
    p.core = Cortex::start(line, &p.dir);
    // A leader's boot may issue changes of its own (3.7.0 pushes `model:set`).
    let booted = p.index();
    assert!(
        booted >= d && booted <= d + 2,
        "{v}: the restored cell booted at index {booted}, the replay ended at {d}"
    );
    assert_eq!(p.core.count(), before, "{v}: every deleted node is back");
    assert_eq!(p.core.count_of(&format!("{form}#base")), 500, "{v}");
    assert_eq!(p.core.count_of(&format!("{form}#pre")), 3000, "{v}");
    assert_eq!(
        p.core.count_of(&format!("{form}#post")),
        0,
        "{v}: no later edit"
    );
}
crate::on_both_lines!(to_just_before_a_mass_delete);

/// The edit time of an archived ENTRY, decoded here on its own: 3.x's `etime`
/// (microseconds) after `meta`; 2.x's node edits carry `time` (milliseconds) in
/// their args' meta.
fn edit_time(line: Line, entry: &[u8]) -> Option<u64> {
    let v = rmpv::decode::read_value(&mut &entry[..]).unwrap();
    let a = v.as_array().unwrap();
    let time_of = |m: &rmpv::Value| {
        m.as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("time")))
            .and_then(|(_, t)| t.as_u64())
    };
    match line {
        Line::V3 => a[5].as_u64(),
        Line::V2 if a[1].as_str() == Some("edits") => {
            time_of(a[2].as_array()?.get(1)?).map(|ms| ms * 1000)
        }
        Line::V2 => time_of(&a[4]).map(|ms| ms * 1000),
    }
}

/// `--to TIME` on an archive received long after the edits: the receive times are
/// all after TIME, the edit times put it between two batches of edits, and the
/// plan takes the edit times, says so, and stops at the first edit after TIME.
fn time_is_read_on_edit_times(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let p = Pitr::start(line, t.path(), true);
    let conf = p.root.join("etc/c0.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "SYNBACKUP_DRILL_PYTHON={}\n",
        line.python().display()
    ));
    fs::write(&conf, text).unwrap();
    assert_eq!(p.core.add(20, 0), 20);
    let o = run_at(&p.root, &["run", "c0"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let a0 = p.index();
    assert_eq!(p.core.add(20, 100), 40);
    let b0 = p.index();
    assert_eq!(p.core.add(20, 200), 60);
    // Archived only now: every entry is received after both batches were made.
    let mut archiver = p.archiver(1 << 20);
    p.wait_archived(120);
    let _ = nix_kill(archiver.id() as i32, 15);
    assert!(archiver.wait().unwrap().success());

    let recs = archived(&p.archive_dir());
    let times: Vec<(u64, Option<u64>, u64)> = recs
        .iter()
        .map(|r| (r.offset, edit_time(line, &r.entry), r.received_us))
        .collect();
    let at = |o: u64| times.iter().find(|t| t.0 == o).unwrap();
    // TIME: the last edit of the first batch.
    let target = (a0..b0).filter_map(|o| at(o).1).max().unwrap();
    let want = times
        .iter()
        .find(|t| t.1.is_some_and(|e| e > target))
        .map(|t| t.0)
        .unwrap();
    assert_eq!(want, b0, "{v}: the second batch's first edit is after TIME");
    assert!(
        times.iter().all(|t| t.2 > target),
        "{v}: every entry was received after TIME"
    );
    let to = chrono::DateTime::from_timestamp_micros(target as i64)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut p = p;
    p.core.stop();
    let o = run_at(
        &p.root,
        &["restore", "--instance", "c0", "--to", &to, "--dry-run"],
    );
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        plan.contains(&format!(
            "up to index {want} (the time read on the entries' edit times)"
        )),
        "{v}: --to {to}: {plan}"
    );
    println!("{v}: --to {to} is index {want} on the edit times (every entry received after it)");
}
crate::on_both_lines!(time_is_read_on_edit_times);
