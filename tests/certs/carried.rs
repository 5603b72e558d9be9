// SPDX-License-Identifier: Apache-2.0
//! The certificate directory in backups, on real easycert material and a real
//! Cortex (both release lines where one is started): `run` carries the instance's certificate directory as
//! `synbackup-certs/` (listed in the manifest, verified, private keys at most
//! 0600); `restore --certs` puts it back on a host that lost it, and a telepath
//! `ssl://` client using the restored certificates reaches a Cortex started on the
//! restored directory; a file that differs is kept and named, identical ones are
//! left alone, and a restore that fails afterwards takes it all back.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::certs::easycert;
use crate::util::*;

/// A host: instance `c0` on a copy of a release line's fixture Cortex, its
/// certificate directory made by easycert in a temporary home (CA `testca`, host
/// `cortex.local` with its key 0640, user `root`).
struct Host {
    _t: tempfile::TempDir,
    root: PathBuf,
    svc: PathBuf,
    certdir: PathBuf,
    backups: PathBuf,
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

impl Host {
    fn new(line: Line) -> Host {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let svc = root.join("data/cortex00");
        fs::create_dir_all(root.join("data")).unwrap();
        let cp = command("cp")
            .arg("-a")
            .arg(line.fixture())
            .arg(&svc)
            .status();
        assert!(cp.unwrap().success());
        let certdir = root.join("home/synapse/.syn/certs");
        easycert(&certdir, &["--ca", "testca"]);
        easycert(
            &certdir,
            &["--server", "--signas", "testca", "cortex.local"],
        );
        easycert(&certdir, &["--signas", "testca", "root"]);
        let key = certdir.join("hosts/cortex.local.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let backups = root.join("backups");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/c0.conf"),
            format!(
                "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_CERT_DIR={}\n",
                svc.display(),
                backups.display(),
                certdir.display()
            ),
        )
        .unwrap();
        Host {
            _t: t,
            root,
            svc,
            certdir,
            backups,
        }
    }

    /// The binary for this host's instance, the runner's SYNBACKUP_CERT_DIR left out.
    fn cmd(&self) -> Command {
        let mut c = bin_at(&self.root);
        c.env_remove("SYNBACKUP_CERT_DIR");
        c
    }

    fn run(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `run c0`; the backup it made.
    fn backup_now(&self) -> PathBuf {
        let o = self.run(&[&"run", &"c0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        fs::read_dir(&self.backups)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("c0_"))
            .unwrap()
    }
}

/// Connect to `ssl://127.0.0.1:PORT` as user `root` with the certificates of
/// `certdir`, through Synapse's own client (of `line`); the cell's iden, or the error.
fn ssl_client(line: Line, certdir: &Path, port: u16) -> Result<String, String> {
    let script = r#"
import asyncio, sys
import synapse.telepath as s_telepath
import synapse.lib.certdir as s_certdir
async def main():
    cdir = s_certdir.CertDir(path=(sys.argv[1],))
    url = f'ssl://127.0.0.1:{sys.argv[2]}/?hostname=cortex.local&certname=root'
    async with await s_telepath.openurl(url, certdir=cdir) as core:
        print((await core.getCellInfo())['cell']['iden'])
asyncio.run(asyncio.wait_for(main(), 60))
"#;
    let o = line
        .py(&[])
        .args(["-c", script])
        .arg(certdir)
        .arg(port.to_string())
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(stderr(&o))
    }
}

crate::on_both_lines!(a_rebuilt_host_gets_its_certificates_back_and_ssl_clients_connect);

fn a_rebuilt_host_gets_its_certificates_back_and_ssl_clients_connect(line: Line) {
    let h = Host::new(line);
    let before = hash_tree(&h.certdir);
    let b = h.backup_now();

    // The backup holds the directory, listed and verified, keys at most 0600.
    let carried = b.join("synbackup-certs");
    assert_eq!(hash_tree(&carried), before);
    assert_eq!(mode(&carried.join("hosts/cortex.local.key")), 0o600);
    assert_eq!(
        mode(&carried.join("users/root.key")),
        0o600,
        "easycert's 0644"
    );
    assert_eq!(mode(&carried.join("hosts/cortex.local.crt")), 0o644);
    assert_eq!(mode(&carried.join("hosts")), mode(&h.certdir.join("hosts")));
    let m = manifest(&b);
    let source = fs::canonicalize(&h.certdir).unwrap();
    assert_eq!(m["cert_dir"]["source"], source.to_str().unwrap());
    assert_eq!(m["cert_dir"]["path"], "synbackup-certs");
    let listed: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .filter(|p| p.starts_with("synbackup-certs/"))
        .collect();
    assert_eq!(listed.len(), before.len(), "{listed:?}");
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(h.root.join("state/c0.json")).unwrap()).unwrap();
    assert_eq!(status["details"]["cert_dir"], source.to_str().unwrap());
    assert_eq!(status["details"]["cert_files"], before.len());

    // A host without the service directory and without the certificate directory.
    fs::remove_dir_all(&h.svc).unwrap();
    fs::remove_dir_all(h.root.join("home")).unwrap();
    let name = b.file_name().unwrap().to_owned();
    let o = h.run(&[&"restore", &"--instance", &"c0", &"--certs", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "certificates restored into {}: {} new",
            h.certdir.display(),
            before.len()
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(hash_tree(&h.certdir), before);
    assert_eq!(mode(&h.certdir.join("hosts/cortex.local.key")), 0o600);
    assert_eq!(mode(&h.certdir.join("hosts")), 0o700);
    assert!(!h.svc.join("synbackup-certs").exists());

    // The restored Cortex listens with the restored host certificate and checks
    // clients against the restored CA; the client uses the restored user key.
    let port = free_port();
    let listen = format!("ssl://127.0.0.1:{port}/?hostname=cortex.local&ca=testca");
    let cert_env = h.certdir.to_str().unwrap().to_string();
    let _core = Cortex::start_with(line, &h.svc, &listen, &[("SYN_CERT_DIR", &cert_env)]);
    let guid = fs::read_to_string(h.svc.join("cell.guid")).unwrap();
    assert_eq!(
        ssl_client(line, &h.certdir, port),
        Ok(guid.trim().to_string())
    );
    // Without those certificates the same client is refused.
    let empty = h.root.join("empty-certs");
    fs::create_dir_all(&empty).unwrap();
    assert!(ssl_client(line, &empty, port).is_err());
}

#[test]
fn verify_fails_when_a_carried_file_changes_and_bad_cert_dirs_are_refused() {
    let h = Host::new(Line::V2);
    let b = h.backup_now();
    let o = h.run(&[&"verify", &b]);
    assert!(o.status.success(), "{}", stderr(&o));
    let crt = b.join("synbackup-certs/cas/testca.crt");
    let mut text = fs::read(&crt).unwrap();
    text[100] ^= 1;
    fs::write(&crt, text).unwrap();
    let o = h.run(&[&"verify", &b]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("synbackup-certs/cas/testca.crt")
            || stderr(&o).contains("synbackup-certs/cas/testca.crt"),
        "{}",
        stderr(&o)
    );
    // restore --certs hashes the carried files before anything changes (the copy
    // of the service directory does not hold them): exit 6, nothing swapped.
    let target = h.root.join("restored-from-damaged");
    let o = h.run(&[
        &"restore",
        &"--certs",
        &"--cert-dir",
        &h.root.join("certs-out"),
        &b,
        &target,
    ]);
    assert_fails(&o, 6, "synbackup-certs/cas/testca.crt: BLAKE3 mismatch");
    assert!(!target.exists() && !h.root.join("certs-out").exists());

    // A certificate directory that is not there: one error line, exit 3, nothing made.
    let dst = h.root.join("plain");
    let o = h.run(&[
        &"backup",
        &"--cert-dir",
        &h.root.join("nowhere"),
        &h.svc,
        &dst,
    ]);
    assert_fails(&o, 3, "nowhere");
    assert!(!dst.exists());
    // A backup without one: restore --certs refuses before it changes anything.
    let o = h.run(&[&"backup", &h.svc, &dst]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dst.join("synbackup-certs").exists());
    let target = h.root.join("restored");
    let o = h.run(&[&"restore", &"--certs", &dst, &target]);
    assert_fails(&o, 3, "carries no certificate directory");
    assert!(!target.exists());
}

#[test]
fn restore_certs_keeps_a_differing_file_names_it_and_rolls_back() {
    let h = Host::new(Line::V2);
    let b = h.backup_now();
    let hosts = h.certdir.join("hosts");
    fs::write(hosts.join("cortex.local.crt"), "a renewed certificate\n").unwrap();
    fs::write(hosts.join("other.crt"), "not in the backup\n").unwrap();
    fs::remove_file(h.certdir.join("users/root.key")).unwrap();
    let same = fs::metadata(h.certdir.join("cas/testca.crt")).unwrap();

    // A restore that fails after the certificates were placed takes them back.
    let target = h.root.join("elsewhere");
    let o = h
        .cmd()
        .env("SYNBACKUP_FAULT", "restore-after-certs")
        .args(["restore", "--certs"])
        .arg(&b)
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    assert_eq!(
        fs::read_to_string(hosts.join("cortex.local.crt")).unwrap(),
        "a renewed certificate\n"
    );
    assert!(!h.certdir.join("users/root.key").exists());
    let names = |d: &Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&hosts),
        ["cortex.local.crt", "cortex.local.key", "other.crt"]
    );

    // Plain restore: to where the backup found it (no --cert-dir, no instance).
    let o = h
        .cmd()
        .args(["restore", "--certs"])
        .arg(&b)
        .arg(&target)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let place = hosts.join("cortex.local.crt");
    let kept: Vec<String> = names(&hosts)
        .into_iter()
        .filter(|n| n.starts_with("cortex.local.crt.synbackup-old-"))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", names(&hosts));
    let kept = hosts.join(&kept[0]);
    assert!(
        out.contains(&format!(
            "{} differed from the backup: the old one is kept as {}",
            place.display(),
            kept.display()
        )),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(&kept).unwrap(),
        "a renewed certificate\n"
    );
    assert_eq!(
        fs::read(&place).unwrap(),
        fs::read(b.join("synbackup-certs/hosts/cortex.local.crt")).unwrap()
    );
    assert_eq!(mode(&h.certdir.join("users/root.key")), 0o600);
    assert!(hosts.join("other.crt").exists());
    // The identical file was not rewritten.
    let now = fs::metadata(h.certdir.join("cas/testca.crt")).unwrap();
    assert_eq!(
        (now.ino(), now.mtime_nsec()),
        (same.ino(), same.mtime_nsec())
    );
}

/// A differing key kept aside by `restore --certs` is readable by its owner only
/// (issue 32): it was 0644 and still valid. Its owner (the service's user) is kept.
#[test]
fn restore_certs_keeps_a_replaced_key_aside_at_most_0600() {
    let h = Host::new(Line::V2);
    let b = h.backup_now();
    let key = h.certdir.join("hosts/cortex.local.key");
    fs::write(&key, "a key the user put there\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    let o = h.run(&[&"restore", &"--certs", &b, &h.root.join("elsewhere")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let kept: Vec<PathBuf> = fs::read_dir(h.certdir.join("hosts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("cortex.local.key.synbackup-old-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        fs::read_to_string(&kept[0]).unwrap(),
        "a key the user put there\n"
    );
    assert_eq!(mode(&kept[0]), 0o600, "kept aside at most 0600");
    let meta = fs::metadata(&kept[0]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "its owner kept");
}

/// `restore --certs` does not write through a link the service's user planted in
/// a parent of the certificate directory (`~/.syn -> a root-owned directory`,
/// issue 32): refused before anything is written, naming the link; the directory
/// it points to is untouched.
#[test]
fn restore_certs_refuses_a_link_the_service_user_planted_above_the_directory() {
    let h = Host::new(Line::V2);
    let b = h.backup_now();
    let home = h.root.join("home/synapse");
    let st = command("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .status()
        .unwrap();
    assert!(st.success());
    // Root's own directory, with a file the backup would replace.
    let decoy = h.root.join("etc-ssl");
    fs::create_dir_all(decoy.join("certs/cas")).unwrap();
    let anchor = decoy.join("certs/cas/testca.crt");
    fs::write(&anchor, "root's own trust anchor\n").unwrap();
    // The service's user swaps ~/.syn for a link to it.
    fs::rename(home.join(".syn"), home.join(".syn-real")).unwrap();
    std::os::unix::fs::symlink(&decoy, home.join(".syn")).unwrap();
    std::os::unix::fs::lchown(home.join(".syn"), Some(65534), Some(65534)).unwrap();
    let o = h.run(&[&"restore", &"--certs", &b, &h.root.join("elsewhere")]);
    assert_fails(
        &o,
        3,
        &format!(
            "{} is a symlink (to {}) that uid 65534 could have made; restore --certs does not write through it",
            home.join(".syn").display(),
            decoy.display()
        ),
    );
    assert_eq!(
        fs::read_to_string(&anchor).unwrap(),
        "root's own trust anchor\n"
    );
    assert_eq!(fs::metadata(&anchor).unwrap().uid(), 0);
    assert_eq!(
        fs::read_dir(decoy.join("certs/cas")).unwrap().count(),
        1,
        "nothing written there"
    );
}

/// `restore --certs` writes by descriptor (issue 32): the certificate directory is
/// held once it is checked, so a link the service's user plants in a parent while
/// the restore runs (`~/.syn -> a root-owned directory`, between the check and the
/// writes) redirects nothing: the files land in the directory that was checked,
/// and root's directory is untouched.
#[test]
fn restore_certs_does_not_follow_a_link_planted_while_it_writes() {
    use std::process::Stdio;
    let h = Host::new(Line::V2);
    let b = h.backup_now();
    let home = h.root.join("home/synapse");
    // A file the restore has to write (the host lost it).
    fs::remove_file(h.certdir.join("hosts/cortex.local.key")).unwrap();
    let st = command("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .status()
        .unwrap();
    assert!(st.success());
    let decoy = h.root.join("etc-ssl");
    fs::create_dir_all(decoy.join("certs/cas")).unwrap();
    let anchor = decoy.join("certs/cas/testca.crt");
    fs::write(&anchor, "root's own trust anchor\n").unwrap();
    let (release, log) = (h.root.join("release"), h.root.join("restore.log"));
    let mut child = h
        .cmd()
        .env("SYNBACKUP_FAULT", "hold:restore-certs-held")
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .args(["restore", "--certs"])
        .arg(&b)
        .arg(h.root.join("elsewhere"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(120, || fs::read_to_string(&log)
            .unwrap()
            .contains("holding at restore-certs-held")),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    // The service's user swaps ~/.syn for a link to root's directory.
    fs::rename(home.join(".syn"), home.join(".syn-real")).unwrap();
    std::os::unix::fs::symlink(&decoy, home.join(".syn")).unwrap();
    std::os::unix::fs::lchown(home.join(".syn"), Some(65534), Some(65534)).unwrap();
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    let err = fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{err}");
    assert_eq!(
        fs::read_to_string(&anchor).unwrap(),
        "root's own trust anchor\n"
    );
    assert_eq!(fs::metadata(&anchor).unwrap().uid(), 0);
    assert_eq!(
        names(&decoy.join("certs")),
        vec!["cas"],
        "nothing written there"
    );
    assert_eq!(names(&decoy.join("certs/cas")), vec!["testca.crt"]);
    let key = home.join(".syn-real/certs/hosts/cortex.local.key");
    assert!(key.is_file(), "written where it was checked");
    assert_eq!(
        fs::metadata(&key).unwrap().uid(),
        0,
        "the backup's owner (root ran easycert)"
    );
}
