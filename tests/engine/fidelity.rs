// SPDX-License-Identifier: Apache-2.0
//! The backup is the source as it is: links out of the tree copied as data (an
//! environment behind one compacted and counted), names that are not UTF-8, xattrs
//! and ACLs, owners and groups that cannot be kept, sparse files counted by their
//! data; and `verify` checks everything the manifest promises.
//!
//! Directories are made under the build's target directory (`CARGO_TARGET_TMPDIR`):
//! ext4 there, where user xattrs work; /tmp may be a tmpfs without them.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use crate::util::*;

fn tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Readable by other users: some tests run the binary as nobody.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    t
}

fn getfacl(path: &Path) -> String {
    let o = command("getfacl")
        .args(["-c", "-n"])
        .arg(path)
        .output()
        .expect("getfacl (Debian's acl package) installed");
    assert!(o.status.success(), "getfacl {}", path.display());
    String::from_utf8(o.stdout).unwrap()
}

fn setfacl(args: &[&str], path: &Path) {
    let st = command("setfacl")
        .args(args)
        .arg(path)
        .status()
        .expect("setfacl (Debian's acl package) installed");
    assert!(st.success(), "setfacl {args:?} {}", path.display());
}

const LATIN1: &[u8] = b"caf\xe9.txt";

/// Links out of the tree, a Latin-1 name, xattrs and ACLs, added to a service
/// directory `src` (whose layer environment at `layer` is moved to `outside`).
fn add_the_hard_parts(src: &Path, layer: &str, outside: &Path) {
    // A layer environment on "another disk", linked into the tree.
    let env_out = outside.join("layer-disk");
    fs::create_dir_all(outside).unwrap();
    fs::rename(src.join(layer), &env_out).unwrap();
    std::os::unix::fs::symlink(&env_out, src.join(layer)).unwrap();
    // sslkey.pem from a secrets mount, through a relative link leaving the tree.
    let key_out = outside.join("sslkey.pem");
    fs::rename(src.join("sslkey.pem"), &key_out).unwrap();
    let rel = Path::new("..")
        .join(outside.file_name().unwrap())
        .join("sslkey.pem");
    assert!(src.parent().unwrap() == outside.parent().unwrap());
    std::os::unix::fs::symlink(&rel, src.join("sslkey.pem")).unwrap();
    // A name that is not UTF-8.
    fs::write(src.join(OsStr::from_bytes(LATIN1)), "latin-1 name").unwrap();
    // xattrs and ACLs on a file and a directory.
    xattr::set(src.join("cell.guid"), "user.origin", b"\x00binary\xff").unwrap();
    xattr::set(src.join("slabs"), "user.tier", b"fast").unwrap();
    xattr::set(src, "user.top", b"top").unwrap();
    // As root, labels and trusted.* are kept too.
    xattr::set(src.join("sslcert.pem"), "security.synbackup-test", b"label").unwrap();
    xattr::set(src.join("sslcert.pem"), "trusted.synbackup-test", b"t").unwrap();
    setfacl(&["-m", "u:65534:r"], &src.join("cookie.secret"));
    setfacl(&["-d", "-m", "u:65534:rx"], &src.join("slabs"));
}

fn check_the_hard_parts(src: &Path, dst: &Path, layer: &str) {
    let layer_path = dst.join(layer);
    assert!(
        !fs::symlink_metadata(&layer_path)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the linked environment was copied as a link"
    );
    assert_eq!(dump_env(&src.join(layer)), dump_env(&layer_path));
    let key = fs::symlink_metadata(dst.join("sslkey.pem")).unwrap();
    assert!(key.is_file(), "sslkey.pem must be copied as data");
    assert_eq!(
        fs::read(src.join("sslkey.pem")).unwrap(),
        fs::read(dst.join("sslkey.pem")).unwrap()
    );
    assert_eq!(
        key.mode() & 0o7777,
        fs::metadata(src.join("sslkey.pem")).unwrap().mode() & 0o7777
    );
    assert_eq!(
        fs::read(dst.join(OsStr::from_bytes(LATIN1))).unwrap(),
        b"latin-1 name"
    );
    assert_eq!(
        xattr::get(dst.join("cell.guid"), "user.origin").unwrap(),
        Some(b"\x00binary\xff".to_vec())
    );
    assert_eq!(
        xattr::get(dst.join("slabs"), "user.tier").unwrap(),
        Some(b"fast".to_vec())
    );
    assert_eq!(xattr::get(dst, "user.top").unwrap(), Some(b"top".to_vec()));
    for name in ["security.synbackup-test", "trusted.synbackup-test"] {
        assert_eq!(
            xattr::get(dst.join("sslcert.pem"), name).unwrap(),
            xattr::get(src.join("sslcert.pem"), name).unwrap(),
            "{name}"
        );
    }
    for p in ["cookie.secret", "slabs"] {
        assert_eq!(getfacl(&src.join(p)), getfacl(&dst.join(p)), "ACL of {p}");
    }
    let m = manifest(dst);
    let links = m["symlinks"].as_array().unwrap();
    for p in [layer, "sslkey.pem"] {
        assert!(
            links
                .iter()
                .any(|l| l["path"] == p && l["followed"] == true),
            "the manifest says {p} was a link copied as data: {links:?}"
        );
    }
    assert!(m["environments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"] == layer));
    let v = run(&[&"verify", &dst]);
    assert!(v.status.success(), "{}", stderr(&v));
}

#[test]
fn links_out_of_the_tree_latin1_names_xattrs_and_acls_survive() {
    let t = tempdir();
    let src = t.path().join("svc");
    fake_service(&src, 200);
    add_the_hard_parts(&src, "layers/abc/layer_v2.lmdb", &t.path().join("disk2"));
    let dst = t.path().join("b");
    let o = run(&[&"backup", &src, &dst, &"--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_the_hard_parts(&src, &dst, "layers/abc/layer_v2.lmdb");
    // A link inside the tree stays a link.
    assert_eq!(
        fs::read_link(dst.join("guid-link")).unwrap(),
        Path::new("cell.guid")
    );
    // The manifest holds the digests of secrets: as private as the most private file.
    assert_eq!(
        fs::metadata(dst.join("synbackup-manifest.json"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
}

crate::on_both_lines!(a_cortex_starts_on_a_copy_with_links_latin1_names_xattrs_and_acls);

fn a_cortex_starts_on_a_copy_with_links_latin1_names_xattrs_and_acls(line: Line) {
    let t = tempdir();
    let src = t.path().join("core");
    let mut core = Cortex::start(line, &src);
    assert_eq!(core.add(50, 0), 50);
    let before = core.count();
    core.stop();
    let layer = fs::read_dir(src.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("layer_v2.lmdb"))
        .find(|p| p.join("data.mdb").is_file())
        .expect("a Cortex has a layer");
    let layer = layer
        .strip_prefix(&src)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    add_the_hard_parts(&src, &layer, &t.path().join("disk2"));
    let dst = t.path().join("copy");
    let o = run(&[&"backup", &src, &dst, &"--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_the_hard_parts(&src, &dst, &layer);
    let restored = Cortex::start(line, &dst);
    assert_eq!(restored.count(), before, "the copy's layer holds the nodes");
}

/// A backup of a small service, for the verify cases.
fn small_backup(t: &Path) -> std::path::PathBuf {
    let src = t.join("svc");
    fake_service(&src, 50);
    xattr::set(src.join("cell.guid"), "user.origin", b"x").unwrap();
    let dst = t.join("b");
    let o = run(&[&"backup", &src, &dst]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run(&[&"verify", &dst]).status.success());
    dst
}

fn assert_verify_fails(dst: &Path, needle: &str) {
    let o = run(&[&"verify", &dst]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    // The problems are verify's verdict, on stdout; an unreadable manifest is an
    // error, on stderr.
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(out.contains(needle), "want {needle:?}: {out}");
}

#[test]
fn verify_catches_a_dir_mode_a_link_target_a_stripped_xattr_and_a_tampered_manifest() {
    let t = tempdir();
    let dst = small_backup(t.path());

    fs::set_permissions(dst.join("certs"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_verify_fails(&dst, "certs: mode 0755 but the manifest says 0700");
    fs::set_permissions(dst.join("certs"), fs::Permissions::from_mode(0o700)).unwrap();

    fs::remove_file(dst.join("guid-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dst.join("guid-link")).unwrap();
    assert_verify_fails(&dst, "guid-link: links to /etc/passwd");
    fs::remove_file(dst.join("guid-link")).unwrap();
    std::os::unix::fs::symlink("cell.guid", dst.join("guid-link")).unwrap();

    xattr::remove(dst.join("cell.guid"), "user.origin").unwrap();
    assert_verify_fails(&dst, "cell.guid: xattr user.origin is missing");
    xattr::set(dst.join("cell.guid"), "user.origin", b"x").unwrap();
    assert!(run(&[&"verify", &dst]).status.success());

    // One recorded mode widened (0600 to 0644): the manifest's own digest catches it.
    let mpath = dst.join("synbackup-manifest.json");
    let text = fs::read_to_string(&mpath).unwrap();
    let tampered = text.replacen("\"mode\": 384", "\"mode\": 420", 1);
    assert_ne!(text, tampered);
    fs::write(&mpath, tampered).unwrap();
    assert_verify_fails(&dst, "the manifest was changed or damaged");
}

/// Rewrite the backup's manifest as synbackup 0.1 wrote it (format 1: no body
/// digest, no xattrs, no followed links, SHA-256 digests), after `edit`.
fn rewrite_as_format_1(dst: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut m = manifest(dst);
    edit(&mut m);
    m["format"] = serde_json::json!("synbackup-manifest/1");
    let o = m.as_object_mut().unwrap();
    o.remove("body_sha256");
    o.remove("hash");
    for list in ["files", "dirs"] {
        for e in o[list].as_array_mut().unwrap() {
            let e = e.as_object_mut().unwrap();
            e.remove("xattrs");
            if e.remove("blake3").is_some() {
                let p = dst.join(e["path"].as_str().unwrap());
                let h = openssl::sha::sha256(&fs::read(p).unwrap());
                let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                e.insert("sha256".into(), serde_json::json!(hex));
            }
        }
    }
    let mpath = dst.join("synbackup-manifest.json");
    fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn verify_checks_the_main_database_count() {
    let t = tempdir();
    let dst = small_backup(t.path());
    let mut n = 0;
    // As format 1 (no digest to fail first), so only the count is wrong.
    rewrite_as_format_1(&dst, |m| {
        let dbs = &mut m["environments"][0]["databases"];
        n = dbs["(main)"].as_u64().unwrap();
        dbs["(main)"] = serde_json::json!(n + 1);
    });
    assert_verify_fails(
        &dst,
        &format!(
            "the main database has {n} entries, the manifest says {}",
            n + 1
        ),
    );
}

#[test]
fn verify_reads_format_1_manifests() {
    let t = tempdir();
    let dst = small_backup(t.path());
    rewrite_as_format_1(&dst, |_| {});
    let v = run(&[&"verify", &dst]);
    assert!(v.status.success(), "{}", stderr(&v));
    // A link such a version kept to data outside the backup is reported.
    let outside = t.path().join("svc/sslkey.pem");
    std::os::unix::fs::symlink(&outside, dst.join("key-link")).unwrap();
    rewrite_as_format_1(&dst, |m| {
        m["symlinks"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "path": "key-link", "target": outside.to_str().unwrap()
            }))
    });
    assert_verify_fails(&dst, "key-link: links to");
    fs::remove_file(dst.join("key-link")).unwrap();
    rewrite_as_format_1(&dst, |m| {
        m["symlinks"]
            .as_array_mut()
            .unwrap()
            .retain(|l| l["path"] != "key-link")
    });
    // ... and still checks the files.
    fs::write(dst.join("sslcert.pem"), "changed").unwrap();
    assert_verify_fails(&dst, "sslcert.pem: size");
}

/// Run the binary as nobody (uid/gid 65534), with supplementary group `groups`.
fn run_as_nobody(groups: &str, args: &[&dyn AsRef<OsStr>]) -> std::process::Output {
    let mut c = command("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        &format!("--groups={groups}"),
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_synbackup"));
    for a in args {
        c.arg(a);
    }
    c.env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
    c.output().unwrap()
}

#[test]
fn not_root_keeps_the_group_it_can_and_narrows_the_mode_otherwise() {
    let t = tempdir();
    let src = t.path().join("svc");
    fake_service(&src, 20);
    chown_tree(&src, 65534, 65534);
    // The service's own key, group root: nobody is not in group 0.
    std::os::unix::fs::chown(src.join("sslkey.pem"), Some(65534), Some(0)).unwrap();
    fs::set_permissions(src.join("sslkey.pem"), fs::Permissions::from_mode(0o640)).unwrap();
    // Another user's file, group 100 ("users"): nobody runs with it as a supplementary group.
    fs::write(src.join("shared.pem"), "shared").unwrap();
    std::os::unix::fs::chown(src.join("shared.pem"), Some(0), Some(100)).unwrap();
    fs::set_permissions(src.join("shared.pem"), fs::Permissions::from_mode(0o640)).unwrap();
    // security.* can be read by anyone, set only with CAP_SYS_ADMIN: skipped, warned once.
    for f in ["sslcert.pem", "cell.guid"] {
        xattr::set(src.join(f), "security.synbackup-test", b"label").unwrap();
    }
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    let dst = out.join("b");
    let o = run_as_nobody(
        "100",
        &[&"backup", &src, &dst, &"--freeze", &"never", &"--verify"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let key = fs::metadata(dst.join("sslkey.pem")).unwrap();
    assert_eq!(
        (key.mode() & 0o7777, key.uid(), key.gid()),
        (0o600, 65534, 65534),
        "group 0 could not be kept: the group must not read it"
    );
    let shared = fs::metadata(dst.join("shared.pem")).unwrap();
    assert_eq!(
        (shared.mode() & 0o7777, shared.uid(), shared.gid()),
        (0o640, 65534, 100),
        "group 100 is ours: kept"
    );
    assert!(
        stderr(&o).contains("sslkey.pem its owner 65534:0") && stderr(&o).contains("narrowed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stderr(&o).matches("this is logged once").count(),
        1,
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_lock_file_created_in_the_source_belongs_to_the_environments_owner() {
    // SAFETY: geteuid has no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "run the suite as root");
    let t = tempdir();
    let src = t.path().join("svc");
    fake_service(&src, 20);
    chown_tree(&src, 65534, 65534);
    let env = src.join("slabs/cell.lmdb");
    let _ = fs::remove_file(env.join("lock.mdb")); // a freshly restored directory
    let o = run(&[&"backup", &src, &t.path().join("b"), &"--freeze", &"never"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lock = fs::metadata(env.join("lock.mdb")).unwrap();
    assert_eq!((lock.uid(), lock.gid()), (65534, 65534));
    fn owners(dir: &Path, out: &mut Vec<(String, u32, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            out.push((p.display().to_string(), m.uid(), m.gid()));
            if m.is_dir() {
                owners(&p, out);
            }
        }
    }
    let mut all = Vec::new();
    owners(&src, &mut all);
    let strangers: Vec<_> = all
        .iter()
        .filter(|(_, u, g)| (*u, *g) != (65534, 65534))
        .collect();
    assert!(strangers.is_empty(), "owned by someone else: {strangers:?}");
}

#[test]
fn a_sparse_file_counts_its_data_not_its_holes() {
    let t = tempdir();
    let src = t.path().join("svc");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("cell.guid"), "0123456789abcdef0123456789abcdef").unwrap();
    let f = fs::File::create(src.join("sparse.bin")).unwrap();
    f.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 4096], 512 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let dst = t.path().join("b");
    let t0 = Instant::now();
    let o = run(&[&"backup", &src, &dst, &"--json", &"--verify"]);
    let took = t0.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let written = s["bytes_written"].as_u64().unwrap();
    assert!(
        (4096..64 << 10).contains(&written),
        "wrote {written} bytes for 4 KiB of data"
    );
    assert!(s["source_bytes"].as_u64().unwrap() < 64 << 10);
    // Its digest is that of the full logical content, as b3sum prints it.
    let m = manifest(&dst);
    let entry = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "sparse.bin")
        .unwrap()
        .clone();
    let sum = command("b3sum")
        .arg(dst.join("sparse.bin"))
        .output()
        .unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    assert_eq!(entry["blake3"].as_str().unwrap(), &sum[..64]);
    assert_eq!(entry["size"], 1u64 << 30);
    // Backup and verify hash 2 GiB of logical content: without reading the holes.
    assert!(took.as_secs() < 30, "took {took:?}");
}
