// SPDX-License-Identifier: Apache-2.0
//! Backups of service directories built from real LMDB environments.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn every_record_is_copied_and_runtime_files_are_left_out() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 3000);
    // A listening socket, as a running service has.
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let dst = t.path().join("out/backup");
    let o = run(&[&"backup", &src, &dst, &"--freeze", &"never"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("backed up"),
        "summary line: {}",
        stderr(&o)
    );

    for env in [
        "slabs/cell.lmdb",
        "layers/abc/layer_v2.lmdb",
        "axon/blob.lmdb",
    ] {
        assert_eq!(
            dump_env(&src.join(env)),
            dump_env(&dst.join(env)),
            "{env} differs"
        );
        assert!(!dst.join(env).join("lock.mdb").exists());
        // Compacted: much smaller than the sparse 256 MiB map.
        let size = fs::metadata(dst.join(env).join("data.mdb")).unwrap().len();
        assert!(size < 64 << 20, "{env} not compacted: {size}");
    }
    for gone in ["tmp", "backups", "sockets", "axon/tmp", "sock"] {
        assert!(!dst.join(gone).exists(), "{gone} must not be copied");
    }
    assert_eq!(
        fs::read_link(dst.join("guid-link")).unwrap(),
        Path::new("cell.guid")
    );
    // The sparse plain file stays sparse and equal.
    let sp = fs::metadata(dst.join("layers/abc/sparse.bin")).unwrap();
    assert_eq!(sp.len(), 32 << 20);
    assert!(sp.blocks() * 512 < 4 << 20, "sparse file was filled");
    assert_eq!(
        fs::read(src.join("layers/abc/sparse.bin")).unwrap(),
        fs::read(dst.join("layers/abc/sparse.bin")).unwrap()
    );
    // Nothing else next to the backup (the temporary is gone).
    assert_eq!(names(&t.path().join("out")), vec!["backup"]);

    let v = run(&[&"verify", &dst]);
    assert!(v.status.success(), "{}", stderr(&v));
}

#[test]
fn secrets_keep_modes_and_the_top_is_never_wider() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 50);
    // Give some files another owner: a root backup keeps it.
    let nobody = 65534;
    std::os::unix::fs::chown(src.join("sslkey.pem"), Some(nobody), Some(nobody)).unwrap();
    let dst = t.path().join("b");
    let o = run(&[&"backup", &src, &dst]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "sslkey.pem",
        "cookie.secret",
        "certs",
        "certs/users/u.key",
        "sslcert.pem",
        "slabs/cell.lmdb/data.mdb",
    ] {
        let a = fs::metadata(src.join(f)).unwrap();
        let b = fs::metadata(dst.join(f)).unwrap();
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "mode of {f}");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {f}");
    }
    assert_eq!(fs::metadata(&dst).unwrap().mode() & 0o7777, 0o750);
    let top = fs::metadata(dst.join("synbackup-manifest.json"))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(
        top & 0o002,
        0,
        "manifest must not be world-writable or wider than the top"
    );
    // Times of plain files are kept.
    let a = fs::metadata(src.join("sslcert.pem")).unwrap();
    let b = fs::metadata(dst.join("sslcert.pem")).unwrap();
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
}

#[test]
fn manifest_counts_match_mdb_stat_and_hashes_match_files() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 1500);
    let dst = t.path().join("b");
    let o = run(&[&"backup", &src, &dst, &"--jobs", &"1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = manifest(&dst);
    assert_eq!(m["format"], "synbackup-manifest/3");
    assert_eq!(m["cell_guid"], "0123456789abcdef0123456789abcdef");
    let envs = m["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 3);
    for e in envs {
        let dir = dst.join(e["path"].as_str().unwrap());
        let stat = mdb_stat_counts(&dir);
        let dbs = e["databases"].as_object().unwrap();
        for (name, n) in &stat {
            let key = if name == "Main DB" {
                "(main)"
            } else {
                name.as_str()
            };
            assert_eq!(
                dbs[key].as_u64().unwrap(),
                *n,
                "{name} in {}",
                dir.display()
            );
        }
        assert_eq!(dbs.len(), stat.len());
    }
    let files = hash_tree(&dst);
    for f in m["files"].as_array().unwrap() {
        let p = f["path"].as_str().unwrap();
        assert_eq!(files[p], f["blake3"].as_str().unwrap(), "{p}");
    }
}

#[test]
fn empty_destination_directory_and_relative_paths_work() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 100);
    fs::create_dir(t.path().join("empty")).unwrap();
    let o = bin()
        .current_dir(t.path())
        .args(["backup", "svc", "empty", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["environments"], 3);
    assert!(summary["bytes_written"].as_u64().unwrap() > 0);
    assert!(t.path().join("empty/synbackup-manifest.json").exists());
}

/// `verify --print-sums DST` checked by the standard tool in DST: did it pass?
fn standard_tool_passes(dst: &Path, tool: &str) -> bool {
    let o = run(&[&"verify", &"--print-sums", &dst]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sums = dst.with_extension("sums");
    fs::write(&sums, &o.stdout).unwrap();
    let c = command(tool)
        .arg("-c")
        .arg(&sums)
        .current_dir(dst)
        .output()
        .unwrap_or_else(|e| panic!("{tool} installed: {e}"));
    c.status.success()
}

/// Flip one byte of `victim` in the middle, check that verify (and the standard
/// tool) find it, and flip it back.
fn assert_flip_detected(dst: &Path, victim: &str, label: &str, tool: &str) {
    let p = dst.join(victim);
    let mut bytes = fs::read(&p).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    fs::write(&p, &bytes).unwrap();
    let o = run(&[&"verify", &dst]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    // The verdict, each problem on its own line, is verify's output (stdout).
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(victim) && out.contains(&format!("{label} mismatch")),
        "{out}\n{}",
        stderr(&o)
    );
    assert!(!standard_tool_passes(dst, tool), "{tool} missed {victim}");
    bytes[i] ^= 0x01;
    fs::write(&p, &bytes).unwrap();
    assert!(run(&[&"verify", &dst]).status.success());
}

#[test]
fn verify_catches_one_flipped_byte() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 500);
    let dst = t.path().join("b");
    assert!(run(&[&"backup", &src, &dst]).status.success());
    // BLAKE3 by default, checked by b3sum too.
    let m = manifest(&dst);
    assert_eq!(m["format"], "synbackup-manifest/3");
    assert_eq!(m["hash"], "blake3");
    assert!(m["files"][0].get("sha256").is_none());
    assert!(standard_tool_passes(&dst, "b3sum"));
    for victim in ["layers/abc/layer_v2.lmdb/data.mdb", "sslcert.pem"] {
        assert_flip_detected(&dst, victim, "BLAKE3", "b3sum");
    }
    assert!(standard_tool_passes(&dst, "b3sum"));
    // A file added to the backup is reported too.
    fs::write(dst.join("intruder"), "x").unwrap();
    let o = run(&[&"verify", &dst]);
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stdout).contains("intruder: not in the manifest"));
}

#[test]
fn sigkill_at_any_moment_leaves_no_backup_and_the_source_untouched() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 30000);
    let before = hash_tree(&src);
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    // How long a whole run takes here.
    let t0 = Instant::now();
    assert!(run(&[&"backup", &src, &out.join("full")]).status.success());
    let full = t0.elapsed();
    fs::remove_dir_all(out.join("full")).unwrap();
    let mut rng = Rng::new(7);
    for i in 0..10 {
        let dst = out.join(format!("b{i}"));
        let mut child = bin()
            .arg("backup")
            .arg(&src)
            .arg(&dst)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a pseudo-random moment within the run's duration.
        let at = full.mul_f64(rng.below(1000) as f64 / 1000.0);
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() || dst.exists() {
            // Finished, or killed after the publishing rename (while it fsyncs the
            // parent or logs its summary): then it must be a complete, good backup.
            let v = run(&[&"verify", &dst]);
            assert!(
                v.status.success(),
                "a killed run left {} and it does not verify: {}",
                dst.display(),
                String::from_utf8_lossy(&v.stdout)
            );
            fs::remove_dir_all(&dst).unwrap();
            continue;
        }
        for name in names(&out) {
            assert!(
                name.starts_with(".b") && name.contains(".synbackup-partial."),
                "unexpected {name}"
            );
            fs::remove_dir_all(out.join(name)).unwrap();
        }
    }
    assert_eq!(before, hash_tree(&src), "the source changed");
}

#[test]
fn sigterm_removes_the_partial_copy() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 1000);
    // 128 MiB of dense data: the copy (hash, write, fsync) outlasts the signal.
    let big: Vec<u8> = (0..128u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(src.join("big.bin"), &big).unwrap();
    let dst = t.path().join("out/b");
    fs::create_dir(t.path().join("out")).unwrap();
    let child = bin()
        .arg("backup")
        .arg(&src)
        .arg(&dst)
        .arg("--jobs")
        .arg("1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary exists (the copy has begun), then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(30);
    while names(&t.path().join("out")).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    nix_kill(child.id() as i32, 15).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(!dst.exists());
    assert!(
        names(&t.path().join("out")).is_empty(),
        "left: {:?}",
        names(&t.path().join("out"))
    );
}

#[test]
fn freeze_always_fails_without_a_running_service() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 10);
    let dst = t.path().join("b");
    let o = run(&[&"backup", &src, &dst, &"--freeze", &"always"]);
    assert_fails(&o, 5, "could not freeze the service");
    assert!(!dst.exists());
    assert!(names(t.path()) == vec!["svc"], "{:?}", names(t.path()));
    let _ = fs::Permissions::from_mode(0o700);
}

#[test]
fn no_compact_keeps_every_page_where_mdb_copy_puts_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 3000);
    let plain = t.path().join("plain");
    let o = run(&[
        &"backup",
        &src,
        &plain,
        &"--no-compact",
        &"--verify",
        &"--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["compacted"], false);
    assert_eq!(summary["verified"], true);
    assert!(summary["reclaimable_bytes"].as_u64().unwrap() > 0);
    assert!(
        stderr(&o).contains("not compacted (pages in place"),
        "{}",
        stderr(&o)
    );
    let compact = t.path().join("compact");
    assert!(run(&[&"backup", &src, &compact]).status.success());
    let (mp, mc) = (manifest(&plain), manifest(&compact));
    assert_eq!(mp["env_copy"], "plain");
    assert_eq!(mc["env_copy"], "compact");
    for b in [&plain, &compact] {
        let o = run(&[&"verify", b]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for e in mp["environments"].as_array().unwrap() {
        let env = e["path"].as_str().unwrap();
        let ps = e["page_size"].as_u64().unwrap() as usize;
        // The real mdb_copy without -c: the layout a plain copy must have.
        let theirs = t.path().join("mdb_copy").join(env);
        fs::create_dir_all(&theirs).unwrap();
        let st = command("mdb_copy")
            .arg(src.join(env))
            .arg(&theirs)
            .status()
            .expect("mdb_copy (lmdb-utils) installed");
        assert!(st.success());
        let want = fs::read(theirs.join("data.mdb")).unwrap();
        let got = fs::read(plain.join(env).join("data.mdb")).unwrap();
        assert_eq!(got.len(), want.len(), "{env}: every page up to the last");
        // Pages 0 and 1 are the meta pages, made from the snapshot.
        assert!(got[2 * ps..] == want[2 * ps..], "{env}: a page moved");
        assert_eq!(
            dump_env(&src.join(env)),
            dump_env(&plain.join(env)),
            "{env}"
        );
        let c = fs::metadata(compact.join(env).join("data.mdb"))
            .unwrap()
            .len();
        assert!(c < got.len() as u64, "{env}: free pages are copied too");
    }
}

/// Rewrite a `--hash sha256` backup's manifest as synbackup wrote format 2 (no
/// `hash` field), its body digest recomputed as that version did.
fn rewrite_as_format_2(dst: &Path) {
    let mpath = dst.join("synbackup-manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    m["format"] = serde_json::json!("synbackup-manifest/2");
    m["body_sha256"] = serde_json::json!("");
    m.as_object_mut().unwrap().remove("hash");
    let mut blank = serde_json::to_vec_pretty(&m).unwrap();
    blank.push(b'\n');
    let digest: String = openssl::sha::sha256(&blank)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = String::from_utf8(blank).unwrap().replacen(
        "\"body_sha256\": \"\"",
        &format!("\"body_sha256\": \"{digest}\""),
        1,
    );
    fs::write(&mpath, text).unwrap();
}

#[test]
fn sha256_backups_and_format_2_manifests_still_verify() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 500);
    let dst = t.path().join("b");
    let o = run(&[&"backup", &"--hash", &"sha256", &src, &dst]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = manifest(&dst);
    assert_eq!(m["hash"], "sha256");
    assert!(m["files"][0].get("blake3").is_none());
    assert!(standard_tool_passes(&dst, "sha256sum"));
    rewrite_as_format_2(&dst);
    let v = run(&[&"verify", &"--json", &dst]);
    assert!(v.status.success(), "{}", stderr(&v));
    let r: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(r["hash"], "sha256");
    assert!(standard_tool_passes(&dst, "sha256sum"));
    assert_flip_detected(
        &dst,
        "layers/abc/layer_v2.lmdb/data.mdb",
        "SHA-256",
        "sha256sum",
    );
    // A manifest naming a hash this synbackup does not know is refused, not misread.
    let mpath = dst.join("synbackup-manifest.json");
    let text = fs::read_to_string(&mpath).unwrap();
    fs::write(
        &mpath,
        text.replacen("synbackup-manifest/2", "synbackup-manifest/3", 1)
            .replacen(
                "\"body_sha256\"",
                "\"hash\": \"md5\",\n  \"body_sha256\"",
                1,
            ),
    )
    .unwrap();
    let v = run(&[&"verify", &dst]);
    assert_eq!(v.status.code(), Some(6), "{}", stderr(&v));
    assert!(
        stderr(&v).contains("unknown hash \"md5\""),
        "{}",
        stderr(&v)
    );
}
