// SPDX-License-Identifier: Apache-2.0
//! Backing up a mirror, the leader never paused (`SYNBACKUP_SOURCE`), with a real
//! leader and a real mirror on loopback, on 2.256.0 and 3.7.0. The pair is made
//! as `pair.rs` makes it (the leader's backup restored into a new directory that
//! follows the leader's socket); both run `tests/util/patched_cortex.py`: the
//! leader appends a line to an events file at every `freeze` call it gets
//! (`SYNTEST_EVENTS`), and the mirror's nexus holds the leader's changes back
//! while its control file says `SYNTEST_HOLD_NEXUS=1` (a mirror that is behind).
//!
//! 1. A nightly run from the mirror, the mirror held behind the leader: the run
//!    reads the leader's index, waits for the mirror (released by the test once
//!    the run says it waits), freezes only the mirror; held inside that freeze
//!    (`hold:after-freeze`), the leader is not paused, answers `getCellInfo` and
//!    takes an edit; the leader's events file has no freeze; the manifest's
//!    `from_mirror` records the leader and the mirror, an index at the snapshots
//!    at least the leader's at the start, itself at least what the test read
//!    before the run; a drill of the backup boots with the leader's node count at
//!    that index (the edit made during the freeze is not in it); the status says
//!    the mirror was used. On main, `run` backed up `SYNBACKUP_SERVICE_DIR` and
//!    froze the leader (and the keys were unknown: exit 2).
//! 2. No mirror ready: one held behind past `SYNBACKUP_MIRROR_WAIT` with
//!    `SYNBACKUP_NO_MIRROR=fail` (exit 13, nothing backed up); a leader whose
//!    index cannot be read (nothing answers at `SYNBACKUP_LEADER`): exit 13; the mirror
//!    stopped (unreachable): `fail` (exit 13), `leader` (the leader backed up,
//!    frozen), `skip` (exit 0, recorded skipped, nothing backed up); each in its
//!    status and in one line.
//! 3. The mirror's backup restored into the (stopped) leader's directory with
//!    `restore --instance`: taken as a backup of the leader (no role change
//!    refused), it boots as the leader with the nodes of the backup.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use serde_json::Value;

use crate::util::*;

/// The instance's config: the leader's directory, the mirror, the policy.
fn configure(root: &Path, ldir: &Path, mdir: &Path, backups: &Path, extra: &str) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/m0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_SOURCE=mirror\nSYNBACKUP_MIRRORS={}\n{extra}",
            ldir.display(),
            backups.display(),
            mdir.display()
        ),
    )
    .unwrap();
}

pub(super) fn status(root: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(root.join("state/m0.json")).unwrap()).unwrap()
}

fn run_m0(root: &Path) -> Output {
    run_at(root, &["run", "m0"])
}

/// The complete backups in `backups`, sorted.
pub(super) fn backups_in(backups: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(backups)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.join("synbackup-manifest.json").exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The lines of the leader's events file that record a freeze call.
fn leader_freezes(events: &Path) -> Vec<String> {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("freeze"))
        .map(String::from)
        .collect()
}

fn backup_from_a_mirror_never_pauses_the_leader(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host");
    let ldir = t.path().join("leader");
    let mdir = t.path().join("mirror");
    let backups = t.path().join("backups");
    let events = t.path().join("leader-events");
    let control = t.path().join("mirror-control");
    std::fs::create_dir_all(&ldir).unwrap();
    std::fs::write(ldir.join("cell.yaml"), "nexslog:en: true\n").unwrap();
    let mut leader =
        Cortex::start_patched(line, &ldir, &[("SYNTEST_EVENTS", events.to_str().unwrap())]);
    leader.add(20, 0);

    // The mirror, made as pair.rs makes it.
    let seed = t.path().join("seed");
    let o = run(&[&"backup", &ldir, &seed]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let o = run(&[&"restore", &seed, &mdir]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    std::fs::write(
        mdir.join("cell.yaml"),
        format!(
            "nexslog:en: true\n{}: cell://{}\n",
            line.upstream_key(),
            ldir.display()
        ),
    )
    .unwrap();
    std::fs::write(&control, "").unwrap();
    let mut mirror = Cortex::start_patched(
        line,
        &mdir,
        &[("SYNTEST_CONTROL", control.to_str().unwrap())],
    );
    let index = |c: &Cortex| c.info()["nexus_index"].as_u64().unwrap();
    assert!(
        wait_for(60, || index(&mirror) == index(&leader)),
        "{v}: the mirror follows"
    );
    // From here on, any freeze of the leader is in its events file.
    std::fs::write(&events, "").unwrap();
    configure(&root, &ldir, &mdir, &backups, "SYNBACKUP_MIRROR_WAIT=2m\n");
    let o = run_at(&root, &["run", "m0", "--dry-run"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        plan.contains(&format!(
            "SYNBACKUP_SOURCE=mirror: would back up the first of {} that applies the leader {}'s nexus index within 2m instead, frozen, the leader not; if none does: fail (exit code 13)",
            mdir.display(),
            ldir.display()
        )),
        "{v}: {plan}"
    );

    // 1. The mirror held behind: the run waits for it, then freezes it alone.
    std::fs::write(&control, "SYNTEST_HOLD_NEXUS=1\n").unwrap();
    let nodes = leader.add(10, 100);
    assert_eq!(nodes, 30, "{v}");
    let at_start = index(&leader);
    assert!(index(&mirror) < at_start, "{v}: the mirror is held behind");
    let release = t.path().join("release");
    let mut child: Child = bin_at(&root)
        .args(["run", "m0"])
        .env("SYNBACKUP_FAULT", "hold:after-freeze")
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    read_until(&mut reader, "waiting up to 2m for it", &mut seen);
    let waiting = seen.last().unwrap().clone();
    assert!(
        waiting.contains(&format!("the leader at {at_start}")),
        "{v}: {waiting}"
    );
    std::fs::write(&control, "").unwrap();
    read_until(
        &mut reader,
        "fault injection: holding at after-freeze",
        &mut seen,
    );
    // Inside the mirror's freeze: the mirror is frozen, the leader is not, it
    // answers and takes an edit.
    assert!(
        mirror.paused(),
        "{v}: the mirror is frozen for the snapshots"
    );
    assert!(!leader.paused(), "{v}: the leader is not paused");
    assert!(leader.answers(10), "{v}: the leader answers getCellInfo");
    assert!(
        leader.takes_edit("10.9.9.9", 10),
        "{v}: the leader takes an edit while the mirror is frozen"
    );
    std::fs::write(&release, "").unwrap();
    let rest: Vec<String> = reader.lines().map_while(Result::ok).collect();
    let st = child.wait().unwrap();
    let all = format!("{}{}", seen.join(""), rest.join("\n"));
    assert!(st.success(), "{v}: the run failed:\n{all}");
    assert!(!mirror.paused(), "{v}: the mirror resumed");
    assert_eq!(
        leader_freezes(&events),
        Vec::<String>::new(),
        "{v}: the leader was frozen"
    );
    let chose = all
        .lines()
        .filter(|l| l.contains("backing up the mirror"))
        .count();
    assert_eq!(chose, 1, "{v}: one line says the mirror was taken:\n{all}");

    let made = backups_in(&backups);
    assert_eq!(made.len(), 1, "{v}: {made:?}");
    let m = manifest(&made[0]);
    let fm = &m["from_mirror"];
    assert_eq!(fm["leader"], ldir.to_str().unwrap(), "{v}: {fm}");
    assert_eq!(fm["mirror"], mdir.to_str().unwrap(), "{v}: {fm}");
    assert_eq!(m["source"], mdir.to_str().unwrap());
    let leader_at = fm["leader_nexus_index"].as_u64().unwrap();
    let snapped = fm["nexus_index"].as_u64().unwrap();
    assert!(
        leader_at >= at_start,
        "{v}: {fm}, {at_start} before the run"
    );
    assert!(snapped >= leader_at, "{v}: {fm}");
    assert_eq!(m["cell"]["nexus_index"], snapped, "{v}");
    assert_eq!(m["cell"]["role"], "mirror", "{v}");
    let s = status(&root);
    assert_eq!(s["result"], "success", "{v}: {s}");
    let src = &s["details"]["source"];
    assert_eq!(src["used"], "mirror", "{v}: {s}");
    assert_eq!(src["leader_nexus_index"], leader_at, "{v}: {s}");
    // The mirror's index once caught up, before its freeze.
    let caught_up = src["mirror_nexus_index"].as_u64().unwrap();
    assert!(leader_at <= caught_up && caught_up <= snapped, "{v}: {s}");

    // The backup boots with the leader's nodes at that index: the 30 it had, not
    // the edit made while the mirror was frozen.
    assert_eq!(leader.count(), 31, "{v}");
    let o = bin()
        .arg("drill")
        .arg("--dir")
        .arg(&made[0])
        .arg("--python")
        .arg(line.python())
        .args(["--timeout", "5m", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{v}: drill: {}", stderr(&o));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["form_counts"][line.ip_form()], 30, "{v}: {d}");
    assert_eq!(d["backup_nexus_index"], snapped, "{v}: {d}");

    // 2. No mirror ready. Held behind longer than SYNBACKUP_MIRROR_WAIT: fail.
    std::fs::write(&control, "SYNTEST_HOLD_NEXUS=1\n").unwrap();
    leader.add(1, 200);
    configure(
        &root,
        &ldir,
        &mdir,
        &backups,
        "SYNBACKUP_MIRROR_WAIT=2s\nSYNBACKUP_NO_MIRROR=fail\n",
    );
    let o = run_m0(&root);
    assert_fails(&o, 13, "no mirror is ready");
    assert!(
        error_lines(&o)[0].contains("did not reach the leader's nexus index"),
        "{v}: {}",
        stderr(&o)
    );
    assert_eq!(backups_in(&backups).len(), 1, "{v}: nothing backed up");
    let s = status(&root);
    assert_eq!(
        (&s["result"], &s["exit_code"]),
        (&"failed".into(), &13.into())
    );
    assert_eq!(s["details"]["source"]["used"], "none", "{v}: {s}");
    std::fs::write(&control, "").unwrap();
    assert!(
        wait_for(60, || index(&mirror) == index(&leader)),
        "{v}: the mirror catches up once let go"
    );

    // The leader's index cannot be read (no leader answers there): no mirror is
    // ready either.
    let nowhere = t.path().join("no-leader");
    configure(
        &root,
        &ldir,
        &mdir,
        &backups,
        &format!("SYNBACKUP_LEADER={}\n", nowhere.display()),
    );
    let o = run_m0(&root);
    assert_fails(&o, 13, "no mirror is ready");
    assert!(
        error_lines(&o)[0].contains(&format!(
            "the leader at {} does not answer",
            nowhere.display()
        )),
        "{v}: {}",
        stderr(&o)
    );

    // The mirror unreachable (stopped): fail, then leader, then skip.
    mirror.stop();
    configure(&root, &ldir, &mdir, &backups, "SYNBACKUP_NO_MIRROR=fail\n");
    let o = run_m0(&root);
    assert_fails(&o, 13, "no mirror is ready");
    assert!(
        error_lines(&o)[0].contains(&format!(
            "the mirror at {}: does not answer",
            mdir.display()
        )),
        "{v}: {}",
        stderr(&o)
    );
    assert_eq!(backups_in(&backups).len(), 1, "{v}");
    assert_eq!(status(&root)["exit_code"], 13);
    assert!(leader_freezes(&events).is_empty(), "{v}");

    configure(
        &root,
        &ldir,
        &mdir,
        &backups,
        "SYNBACKUP_NO_MIRROR=leader\n",
    );
    let o = run_m0(&root);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let fell_back: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.contains("no mirror is ready"))
        .map(String::from)
        .collect();
    assert_eq!(fell_back.len(), 1, "{v}: {}", stderr(&o));
    assert!(
        fell_back[0].contains("backing up the leader") && fell_back[0].contains("does not answer"),
        "{v}: {}",
        fell_back[0]
    );
    let made = backups_in(&backups);
    assert_eq!(made.len(), 2, "{v}: {made:?}");
    let m = manifest(&made[1]);
    assert_eq!(m["source"], ldir.to_str().unwrap(), "{v}");
    assert!(m.get("from_mirror").is_none(), "{v}: {m}");
    assert_eq!(m["cell"]["role"], "leader", "{v}");
    assert_eq!(
        leader_freezes(&events).len(),
        1,
        "{v}: the leader was frozen for it"
    );
    let s = status(&root);
    assert_eq!(s["result"], "success", "{v}: {s}");
    assert_eq!(s["details"]["source"]["used"], "leader", "{v}: {s}");
    assert_eq!(s["details"]["source"]["policy"], "leader", "{v}: {s}");

    configure(&root, &ldir, &mdir, &backups, "SYNBACKUP_NO_MIRROR=skip\n");
    let o = run_m0(&root);
    assert_eq!(o.status.code(), Some(0), "{v}: {}", stderr(&o));
    assert!(error_lines(&o).is_empty(), "{v}: {}", stderr(&o));
    let skipped = stderr(&o)
        .lines()
        .filter(|l| l.contains("no mirror is ready") && l.contains("recorded skipped"))
        .count();
    assert_eq!(skipped, 1, "{v}: {}", stderr(&o));
    assert_eq!(backups_in(&backups).len(), 2, "{v}: nothing backed up");
    let s = status(&root);
    assert_eq!(
        (&s["result"], &s["exit_code"]),
        (&"skipped".into(), &0.into())
    );
    assert_eq!(s["details"]["source"]["used"], "none", "{v}: {s}");
    assert!(
        s["error"].as_str().unwrap().contains("does not answer"),
        "{v}: {s}"
    );
    assert_eq!(leader_freezes(&events).len(), 1, "{v}");

    // 3. The mirror's backup restored into the leader's directory: the leader's.
    let from_mirror = backups_in(&backups)[0].clone();
    leader.stop();
    let o = run_at(
        &root,
        &[
            "restore".as_ref(),
            "--instance".as_ref(),
            "m0".as_ref(),
            from_mirror.as_os_str(),
        ],
    );
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let yaml = std::fs::read_to_string(ldir.join("cell.yaml")).unwrap();
    assert!(!yaml.contains(line.upstream_key()), "{v}: {yaml}");
    let leader = Cortex::start(line, &ldir);
    assert_eq!(leader.info()["active"], true, "{v}: boots as the leader");
    assert_eq!(leader.count(), 30, "{v}: with the backup's nodes");
}

crate::on_both_lines!(backup_from_a_mirror_never_pauses_the_leader);
