// SPDX-License-Identifier: Apache-2.0
//! The upgrade rehearsal, `drill --python NEWER`, across releases: a Cortex made by
//! Synapse 2.230.0 boots with 2.256.0 (same line: upgraded, its migrations timed);
//! a 2.256 backup drilled with 3.7.0 is refused with the one-line verdict that
//! in-place migration from 2.x to 3.x does not exist and what Vertex's 3.0.0 guide
//! says to do; a 3.7.0 backup drilled with 2.256 is a downgrade Synapse refuses.
//! The backup is never changed. The cases that cross the lines skip, saying so,
//! without the 3.x tree (CI always has it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::util::*;

/// Scratch copies and logs drills left in `dir`.
fn scratch_left(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".synbackup-drill."))
        .collect()
}

/// `drill --dir BACKUP --python PYTHON --json`.
fn drill(backup: &Path, python: &Path) -> std::process::Output {
    bin()
        .arg("drill")
        .arg("--dir")
        .arg(backup)
        .arg("--python")
        .arg(python)
        .args(["--timeout", "5m", "--json"])
        .output()
        .unwrap()
}

/// `synbackup backup --verify` of a line's fixture Cortex (a stopped directory).
fn backup_of_fixture(t: &Path, line: Line) -> PathBuf {
    let dst = t.join(format!("fixture-{}", line.version()));
    let o = run(&[&"backup", &line.fixture(), &dst, &"--verify", &"-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    dst
}

#[test]
fn upgrade_rehearsal_boots_a_2_230_cortex_with_2_256() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("old00");
    let mut core = Cortex::start_with_python(&src, &python_old());
    assert_eq!(core.add(60, 0), 60);
    let b = t.path().join("b");
    let o = run(&[&"backup", &src, &b, &"--verify", &"-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    core.stop();
    let before = hash_tree(&b);

    let t0 = Instant::now();
    let o = drill(&b, &Line::V2.python());
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["synapse_version"], "2.256.0", "{out}");
    assert_eq!(out["backup_synapse_version"], "2.230.0", "{out}");
    assert_eq!(out["form_counts"]["inet:ipv4"], 60, "{out}");
    let boot = out["boot_seconds"].as_f64().unwrap();
    assert!(boot > 0.0 && boot < secs, "{out}");
    let line = stderr(&o);
    assert!(
        line.contains("Synapse 2.256.0, upgraded from the backup's 2.230.0"),
        "{line}"
    );
    eprintln!("upgrade rehearsal: boot {boot:.1} s, drill {secs:.1} s");
    // The backup is untouched: same bytes, and its manifest still verifies.
    assert_eq!(hash_tree(&b), before, "the drill changed the backup");
    let o = run(&[&"verify", &b]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
}

#[test]
fn rehearsal_of_a_2_256_backup_with_3_7_0_is_refused() {
    let Some(v3) = Line::V3.require("rehearsal_of_a_2_256_backup_with_3_7_0_is_refused") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let b = backup_of_fixture(t.path(), Line::V2);
    let before = hash_tree(&b);
    let o = drill(&b, &v3.python());
    assert_fails(
        &o,
        11,
        "in-place migration from 2.x to 3.x does not exist; Vertex's 3.0.0 migration guide",
    );
    let line = &error_lines(&o)[0];
    assert!(line.contains("BadStorageVersion"), "{line}");
    assert!(line.contains("Synapse 2.256.0"), "{line}");
    assert_eq!(hash_tree(&b), before, "the rehearsal changed the backup");
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
}

#[test]
fn drill_of_a_3_7_0_backup_with_2_256_is_a_refused_downgrade() {
    let Some(v3) = Line::V3.require("drill_of_a_3_7_0_backup_with_2_256_is_a_refused_downgrade")
    else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let b = backup_of_fixture(t.path(), v3);
    let before = hash_tree(&b);
    let o = drill(&b, &Line::V2.python());
    assert_fails(&o, 11, "a downgrade is not possible");
    assert!(
        error_lines(&o)[0].contains("Synapse 3.7.0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(hash_tree(&b), before, "the drill changed the backup");
    assert_eq!(scratch_left(t.path()), Vec::<String>::new());
}
