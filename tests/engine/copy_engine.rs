// SPDX-License-Identifier: Apache-2.0
//! The copy engine's failure paths, through the real binary: a compacting copy that
//! fails after part of its output is written leaves nothing published and no
//! temporary behind, and the source untouched.

use std::fs;

use crate::util::*;

#[test]
fn a_copy_failing_mid_way_publishes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 3000);
    let before = hash_tree(&src);
    fs::create_dir(t.path().join("out")).unwrap();
    let dst = t.path().join("out/b");
    let o = bin()
        .arg("backup")
        .arg(&src)
        .arg(&dst)
        .arg("--freeze")
        .arg("never")
        .env("SYNBACKUP_FAULT", "mid-copy")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("injected fault at mid-copy"),
        "{}",
        stderr(&o)
    );
    assert!(!dst.exists());
    assert!(
        names(&t.path().join("out")).is_empty(),
        "left: {:?}",
        names(&t.path().join("out"))
    );
    assert_eq!(before, hash_tree(&src), "the source changed");
}
