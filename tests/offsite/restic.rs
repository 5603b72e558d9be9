// SPDX-License-Identifier: Apache-2.0
//! Offsite copies against the real restic: a local-path repository and restic's
//! REST protocol served by the real `rclone serve restic` on loopback. Uploads
//! after `run`, retention, restores into a Cortex that starts (a live Cortex of
//! each release line, 2.256.0 and 3.7.0, backed up and restored), and each way the
//! repository fails (wrong password, unreachable, locked by a killed restic, restic
//! killed mid-upload, a full backend, a corrupted pack): one error line, exit 12,
//! the local backup intact, the next run succeeding.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use crate::util::*;

/// An instance `c0` with an offsite repository.
struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    backups: PathBuf,
    password: PathBuf,
}

impl Setup {
    /// `repo`: the repository string; `extra`: more config lines.
    fn new(src: Option<&Path>, repo: &str, extra: &str) -> Setup {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let s = Setup {
            src: src.map(Path::to_path_buf).unwrap_or(root.join("svc")),
            backups: root.join("backups"),
            password: root.join("etc/c0.restic"),
            root,
            _t: t,
        };
        if src.is_none() {
            fake_service(&s.src, 200);
        }
        fs::create_dir_all(s.root.join("etc")).unwrap();
        fs::create_dir_all(s.root.join("metrics")).unwrap();
        fs::write(&s.password, "correct horse battery staple\n").unwrap();
        // Secrets files are refused unless root's and 0600 at most.
        fs::set_permissions(&s.password, fs::Permissions::from_mode(0o600)).unwrap();
        s.write_config(repo, extra);
        s
    }

    fn write_config(&self, repo: &str, extra: &str) {
        fs::write(
            self.root.join("etc/c0.conf"),
            format!(
                "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_OFFSITE_REPOSITORY={repo}\nSYNBACKUP_OFFSITE_PASSWORD_FILE={}\n{extra}",
                self.src.display(),
                self.backups.display(),
                self.password.display()
            ),
        )
        .unwrap();
    }

    /// The binary for this host's instance, restic's cache under the host's root.
    fn cmd(&self) -> Command {
        let mut c = bin_at(&self.root);
        c.env("XDG_CACHE_HOME", self.root.join("cache"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["offsite", "list", "c0", "--json"])).unwrap()
    }

    fn status(&self, kind: &str) -> serde_json::Value {
        let f = if kind == "backup" {
            "c0.json".to_string()
        } else {
            format!("c0.{kind}.json")
        };
        serde_json::from_slice(&fs::read(self.root.join("state").join(f)).unwrap()).unwrap()
    }

    /// The local backups, oldest first.
    fn local_backups(&self) -> Vec<String> {
        if !self.backups.exists() {
            return Vec::new();
        }
        names(&self.backups)
            .into_iter()
            .filter(|n| n.starts_with("c0_"))
            .collect()
    }

    /// A run that fails offsite: exit 12, one error line with `needle`, the local
    /// backup made, verified and recorded as a success.
    fn run_fails_offsite(&self, needle: &str) {
        let before = self.local_backups().last().cloned();
        let o = self.run(&["run", "c0"]);
        assert_fails(&o, 12, needle);
        assert!(
            error_lines(&o)[0].contains("the local backup c0_"),
            "{}",
            stderr(&o)
        );
        let after = self.local_backups().last().cloned();
        assert!(
            after.is_some() && after > before,
            "a new local backup is published"
        );
        let newest = self.backups.join(after.unwrap());
        let v = run(&[&"verify", &newest]);
        assert!(v.status.success(), "local backup intact: {}", stderr(&v));
        assert_eq!(self.status("backup")["result"], "success");
        assert_eq!(self.status("offsite")["result"], "failed");
        assert_eq!(self.status("offsite")["exit_code"], 12);
        let prom = fs::read_to_string(self.root.join("metrics/synbackup-c0-offsite.prom")).unwrap();
        assert!(
            prom.contains("synbackup_offsite_last_success{instance=\"c0\"} 0\n"),
            "{prom}"
        );
        // `status` names the part that failed.
        let st = self.run(&["status", "c0"]);
        assert_eq!(st.status.code(), Some(9));
        assert!(
            String::from_utf8_lossy(&st.stdout).contains("last offsite copy failed"),
            "{}",
            String::from_utf8_lossy(&st.stdout)
        );
    }

    /// A run that succeeds, offsite too; returns the snapshot ID.
    fn run_ok(&self) -> String {
        self.ok(&["run", "c0"]);
        let st = self.status("offsite");
        assert_eq!(st["result"], "success", "{st}");
        st["details"]["snapshot_id"].as_str().unwrap().to_string()
    }
}

/// Wait until the wall clock is in a later second than `t` (backup names and
/// snapshot times have second resolution).
fn next_second() {
    let now = chrono::Utc::now().timestamp();
    assert!(
        wait_for(3, || chrono::Utc::now().timestamp() > now),
        "timed out waiting for the next second"
    );
}

/// The real `rclone serve restic` on loopback, serving `dir`; killed on drop.
struct RestServer {
    child: Child,
    url: String,
}

impl RestServer {
    fn start(dir: &Path, port: u16) -> RestServer {
        fs::create_dir_all(dir).unwrap();
        let child = command("rclone")
            .args(["serve", "restic", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(dir)
            .env("RCLONE_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rclone (Debian's rclone package) installed");
        assert!(
            wait_for(30, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "timed out waiting for rclone serve restic to listen"
        );
        RestServer {
            child,
            url: format!("rest:http://127.0.0.1:{port}/"),
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Real restic on the setup's repository (for what the test does behind
/// synbackup's back).
fn restic(s: &Setup, repo: &str) -> Command {
    let mut c = command("restic");
    c.env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD_FILE", &s.password)
        .env("XDG_CACHE_HOME", s.root.join("cache"));
    c
}

crate::on_both_lines!(
    a_nightly_run_uploads_over_rest_and_the_snapshot_restores_into_a_cortex_that_starts
);

fn a_nightly_run_uploads_over_rest_and_the_snapshot_restores_into_a_cortex_that_starts(line: Line) {
    let t = tempfile::tempdir().unwrap();
    let server = RestServer::start(&t.path().join("rest"), free_port());
    let src = t.path().join("data/cortex00");
    fs::create_dir_all(src.parent().unwrap()).unwrap();
    let mut core = Cortex::start(line, &src);
    assert_eq!(core.add(150, 0), 150);
    // The service's certificate directory travels in the backup, and so offsite.
    let certdir = t.path().join("home/.syn/certs");
    crate::util::certs::easycert(&certdir, &["--ca", "testca"]);
    let ca_cert = fs::read(certdir.join("cas/testca.crt")).unwrap();
    // The CA's key lives where certificates are signed, not on the service host
    // (the guide; `check` fails a host that holds one).
    fs::remove_file(certdir.join("cas/testca.key")).unwrap();
    let s = Setup::new(
        Some(&src),
        &server.url,
        &format!("SYNBACKUP_CERT_DIR={}\n", certdir.display()),
    );
    // `check` proves every precondition first: the repository does not exist yet.
    let o = s.run(&["check", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(9), "{out}");
    assert!(out.contains("c0: FAIL offsite"), "{out}");
    // Nothing is created implicitly: the first run says how.
    s.run_fails_offsite("synbackup offsite init c0");
    s.ok(&["offsite", "init", "c0"]);
    // Now every check passes: config, the live service, the root, the repository,
    // the carried certificates (no unit: skipped, saying why; a warning passes).
    let o = s.run(&["check", "c0"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{out}");
    let service = format!(
        "c0: ok   service      a cortex (Synapse {}) answers on",
        line.version()
    );
    for want in [
        "c0: ok   config",
        "c0: skip unit",
        &service,
        "c0: ok   backup root",
        "c0: ok   offsite      the repository",
        // The test's Cortex serves the self-signed HTTPS certificate Synapse made:
        // a warning, which does not fail the check.
        "c0: WARN certificates self-signed",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let t_run = Instant::now();
    let id = s.run_ok();
    let run_secs = t_run.elapsed().as_secs_f64();
    let st = s.status("offsite");
    let upload_secs = st["details"]["upload_seconds"].as_f64().unwrap();
    let first_added = st["details"]["added_bytes"].as_u64().unwrap();
    eprintln!(
        "MEASURE rest: run {run_secs:.2} s, of it upload {upload_secs:.2} s, local backup {:.2} s; added {first_added} bytes",
        s.status("backup")["duration_seconds"].as_f64().unwrap()
    );
    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 1);
    assert!(id.starts_with(snaps[0]["short_id"].as_str().unwrap()));
    let tags: Vec<&str> = snaps[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let guid = fs::read_to_string(src.join("cell.guid")).unwrap();
    assert!(tags.contains(&"synbackup") && tags.contains(&"instance=c0"));
    assert!(
        tags.contains(&format!("cell={}", guid.trim()).as_str()),
        "{tags:?}"
    );
    // The snapshot time is the backup's own time (its name).
    let local = s.local_backups();
    let name = local.last().unwrap();
    assert_eq!(snaps[0]["backup"], name.as_str());
    let stamp = &name["c0_".len()..];
    let want = format!(
        "{}-{}-{}T{}:{}:{}",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    assert!(
        snaps[0]["time"].as_str().unwrap().starts_with(&want),
        "{} vs {want}",
        snaps[0]["time"]
    );
    let prom = fs::read_to_string(s.root.join("metrics/synbackup-c0-offsite.prom")).unwrap();
    for m in [
        "synbackup_offsite_last_success_timestamp_seconds{instance=\"c0\"} 1",
        "synbackup_offsite_snapshot_bytes{instance=\"c0\"} ",
        "synbackup_offsite_added_bytes{instance=\"c0\"} ",
    ] {
        assert!(prom.contains(m), "{m} in\n{prom}");
    }

    // A small change, a second night: restic adds a fraction of the first upload.
    assert_eq!(core.add(5, 100_000), 155);
    next_second();
    let latest = s.run_ok();
    let second_added = s.status("offsite")["details"]["added_bytes"]
        .as_u64()
        .unwrap();
    eprintln!("MEASURE rest: second upload after 5 nodes added {second_added} bytes (first {first_added})");
    assert_eq!(s.snapshots().len(), 2);
    let want_count = core.count();
    core.stop();

    // The host loses the service: the newest snapshot comes back and starts.
    fs::remove_dir_all(&src).unwrap();
    fs::remove_dir_all(&certdir).unwrap();
    let o = s.run(&[
        "restore",
        "--instance",
        "c0",
        "--offsite",
        "latest",
        "--certs",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(certdir.join("cas/testca.crt")).unwrap(), ca_cert);
    assert!(
        !src.join("synbackup-certs").exists(),
        "the carried certificates stay out of the service directory"
    );
    assert!(
        stderr(&o).contains("where restic restored it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        names(src.parent().unwrap()),
        vec!["cortex00".to_string(), "cortex00.log".to_string()],
        "no staging directory left beside the service"
    );
    let core = Cortex::start(line, &src);
    assert_eq!(core.count(), want_count);
    let st = s.status("restore");
    assert_eq!(st["result"], "success");
    // `latest` is recorded as the snapshot it was (its full id).
    assert!(
        st["backup"]
            .as_str()
            .unwrap()
            .starts_with(&format!("offsite:{latest}")),
        "{st}"
    );
    assert!(
        stderr(&o).contains(&format!("(offsite snapshot {}, the latest)", &latest[..8])),
        "{}",
        stderr(&o)
    );
}

#[test]
fn retention_forgets_what_the_policy_drops_never_the_newest_and_prunes_on_schedule() {
    let t = tempfile::tempdir().unwrap();
    let s = Setup::new(
        None,
        &t.path().join("repo").to_string_lossy(),
        "SYNBACKUP_OFFSITE_KEEP_LAST=2\nSYNBACKUP_OFFSITE_KEEP_DAILY=0\nSYNBACKUP_OFFSITE_KEEP_WEEKLY=0\nSYNBACKUP_OFFSITE_KEEP_MONTHLY=0\n",
    );
    s.ok(&["offsite", "init", "c0"]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        next_second();
        ids.push(s.run_ok());
        // The first run prunes (never pruned), the next not (within 7d).
        assert_eq!(
            s.status("offsite")["details"]["pruned"],
            ids.len() == 1,
            "run {}",
            ids.len()
        );
    }
    let kept: Vec<String> = s
        .snapshots()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let short = |id: &str| id[..8].to_string();
    assert_eq!(
        kept.iter().map(|k| short(k)).collect::<Vec<_>>(),
        vec![short(&ids[1]), short(&ids[2])],
        "the oldest is forgotten, the newest two kept"
    );
    // Locally, the local policy (3 by default) keeps all three.
    assert_eq!(s.local_backups().len(), 3);
}

/// `list` names the restic snapshot of each backup's offsite copy (issue 34): the
/// short id in the table, the full one in `--json`, each what `restic snapshots`
/// reports for that backup; a backup never uploaded, and one the offsite policy
/// forgot, show none. `restore --offsite latest --dry-run` names the snapshot it
/// would fetch and changes nothing.
#[test]
fn list_names_each_backups_offsite_snapshot_and_a_dry_run_names_the_one_it_would_fetch() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo").to_string_lossy().into_owned();
    let s = Setup::new(
        None,
        &repo,
        "SYNBACKUP_KEEP_LAST=9\nSYNBACKUP_OFFSITE_KEEP_LAST=2\nSYNBACKUP_OFFSITE_KEEP_DAILY=0\nSYNBACKUP_OFFSITE_KEEP_WEEKLY=0\nSYNBACKUP_OFFSITE_KEEP_MONTHLY=0\n",
    );
    // Never uploaded: the repository does not exist yet.
    s.run_fails_offsite("synbackup offsite init c0");
    s.ok(&["offsite", "init", "c0"]);
    for _ in 0..3 {
        next_second();
        s.run_ok();
    }
    let o = restic(&s, &repo)
        .args(["snapshots", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let by_backup: BTreeMap<String, (String, String)> = snaps
        .iter()
        .map(|v| {
            (
                v["paths"][0]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["short_id"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    let backups = s.local_backups();
    assert_eq!((backups.len(), by_backup.len()), (4, 2), "{by_backup:?}");

    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["list", "c0", "--json"])).unwrap();
    assert_eq!(rows.len(), 4);
    let table = s.ok(&["list", "c0"]);
    assert!(
        table.lines().next().unwrap().contains(" OFFSITE "),
        "{table}"
    );
    for (i, row) in rows.iter().enumerate() {
        let name = row["name"].as_str().unwrap();
        let line = table.lines().find(|l| l.starts_with(name)).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        // BACKUP, TIME, AGE, SIZE (number, unit), STATE, OFFSITE, TESTED
        let offsite_col = cols[6];
        match by_backup.get(name) {
            Some((id, short)) => {
                assert!(i >= 2, "{name} is offsite");
                assert_eq!(
                    row["offsite"]["snapshot_id"].as_str(),
                    Some(id.as_str()),
                    "{row}"
                );
                assert_eq!(
                    row["offsite"]["short_id"].as_str(),
                    Some(short.as_str()),
                    "{row}"
                );
                assert_eq!(offsite_col, short, "{table}");
            }
            None => {
                // The first (never uploaded) and the second (forgotten offsite).
                assert!(i < 2, "{name} should be offsite: {by_backup:?}");
                assert!(row["offsite"].is_null(), "{row}");
                assert_eq!(offsite_col, "-", "{table}");
            }
        }
    }

    // The dry run of a restore from offsite: the snapshot `latest` means, by its
    // ids and backup, nothing fetched or changed.
    let newest = backups.last().unwrap();
    let (id, short) = &by_backup[newest];
    let watched = [s.src.clone(), s.backups.clone(), s.root.join("state")];
    let listing = || full_listings(&watched);
    let before = listing();
    let out = s.ok(&[
        "restore",
        "--instance",
        "c0",
        "--offsite",
        "latest",
        "--dry-run",
    ]);
    for want in [
        format!("c0: would fetch offsite snapshot {short} ({id}, backup {newest} of "),
        "c0: would then check the fetched copy".to_string(),
        format!("c0: would move {} aside to ", s.src.display()),
        "c0: dry run: nothing was changed\n".to_string(),
    ] {
        assert!(out.contains(&want), "{want}: {out}");
    }
    assert_eq!(before, listing(), "a dry run changed something");
}

#[test]
fn a_wrong_password_an_unreachable_server_and_a_full_backend_fail_offsite_only() {
    // Wrong password.
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    fs::write(&s.password, "wrong\n").unwrap();
    s.run_fails_offsite("wrong password");
    fs::write(&s.password, "correct horse battery staple\n").unwrap();
    s.run_ok();

    // Unreachable: nothing listens yet; then the server comes up.
    let port = free_port();
    s.write_config(&format!("rest:http://127.0.0.1:{port}/"), "");
    s.run_fails_offsite("connection refused");
    let _server = RestServer::start(&t.path().join("rest"), port);
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();

    // A backend that fills up: the repository on a small tmpfs, grown afterwards
    // (with 2 MiB that no compression shrinks in the backup).
    let mut rng = Rng::new(7);
    let noise: Vec<u8> = (0..2 << 20).map(|_| rng.next() as u8).collect();
    fs::write(s.src.join("noise.bin"), noise).unwrap();
    let full = t.path().join("small");
    let _fs = Tmpfs::mount(&full, "size=600k");
    s.write_config(&full.join("repo").to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    s.run_fails_offsite("no space left on device");
    let st = command("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(st.success());
    s.run_ok();
    // A local repository the unit cannot write (a config edited without
    // `systemctl daemon-reload`: the generator's ReadWritePaths= predate it):
    // restic's "unable to create lock" comes with what to do.
    let remount = |opt: &str| {
        let st = command("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&full)
            .status()
            .unwrap();
        assert!(st.success());
    };
    remount("ro");
    let o = s
        .cmd()
        .env("INVOCATION_ID", "0123456789abcdef")
        .args(["run", "c0"])
        .output()
        .unwrap();
    remount("rw");
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("outside this unit's writable paths")
            && stderr(&o).contains("systemctl daemon-reload"),
        "{}",
        stderr(&o)
    );
    s.run_ok();
    // A credentials file that restic reads, and that never shows in the output.
    fs::write(t.path().join("env"), "AWS_SECRET_ACCESS_KEY=s3cr3t-value\n").unwrap();
    fs::set_permissions(t.path().join("env"), fs::Permissions::from_mode(0o600)).unwrap();
    s.write_config(
        &full.join("repo").to_string_lossy(),
        &format!(
            "SYNBACKUP_OFFSITE_ENV_FILE={}\n",
            t.path().join("env").display()
        ),
    );
    let o = s.cmd().args(["-vv", "run", "c0"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("s3cr3t"), "{}", stderr(&o));
}

#[test]
fn a_lock_of_a_killed_restic_and_a_restic_killed_mid_upload() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();

    // A restic that holds the exclusive lock (a check slowed to 1 KiB/s) is
    // killed once it reads data, long after it took the lock.
    let mut check = restic(&s, &repo.to_string_lossy())
        .args(["check", "--read-data", "--limit-download", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(check.stdout.take().unwrap()).lines();
        let reading = lines.any(|l| l.is_ok_and(|l| l.starts_with("read all data")));
        assert!(reading, "restic check ended before it read data");
    }
    assert!(held_locks(&repo) > 0);
    check.kill().unwrap();
    check.wait().unwrap();
    s.run_fails_offsite("which no longer runs: run `synbackup offsite unlock c0`");
    assert!(s.ok(&["offsite", "unlock", "c0"]).contains("removed"));
    assert_eq!(held_locks(&repo), 0);
    next_second();
    s.run_ok();

    // restic killed (SIGKILL) while it uploads: a real restic, slowed by its own
    // --limit-upload through a launcher, so the kill lands mid-upload.
    let launcher = t.path().join("slow-restic");
    fs::write(
        &launcher,
        "#!/bin/sh\nexec restic --limit-upload 8 \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&launcher, fs::Permissions::from_mode(0o755)).unwrap();
    s.write_config(
        &repo.to_string_lossy(),
        &format!("SYNBACKUP_RESTIC={}\n", launcher.display()),
    );
    // Fresh data, so the upload has something to send.
    make_env(&s.src.join("layers/new/layer_v2.lmdb"), 99, 3000);
    next_second();
    let before = s.local_backups().last().cloned();
    let child = s
        .cmd()
        .args(["run", "c0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let parent = child.id();
    let mut restic_pid = None;
    assert!(
        wait_for(60, || {
            restic_pid = restic_child(parent);
            restic_pid.is_some() && held_locks(&repo) > 0
        }),
        "timed out waiting for restic backup to start uploading"
    );
    nix_kill(restic_pid.unwrap() as i32, 9).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_fails(&o, 12, "restic backup was killed by signal 9");
    let after = s.local_backups().last().cloned();
    assert!(after > before, "a new local backup is published");
    let v = run(&[&"verify", &s.backups.join(after.unwrap())]);
    assert!(v.status.success(), "local backup intact: {}", stderr(&v));
    assert_eq!(held_locks(&repo), 0, "the killed restic's lock is removed");
    s.write_config(&repo.to_string_lossy(), "");
    next_second();
    s.run_ok();
    let c = s.run(&["offsite", "check", "c0"]);
    assert!(c.status.success(), "{}", stderr(&c));
}

/// Lock files in a local repository. restic's local backend writes
/// `ID-tmp-RANDOM` and renames it; a kill in between leaves a temporary that no
/// restic reads as a lock.
fn held_locks(repo: &Path) -> usize {
    fs::read_dir(repo.join("locks"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().contains("-tmp-"))
        .count()
}

/// The PID of the `restic backup` started (through the launcher) by `parent`.
fn restic_child(parent: u32) -> Option<u32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) state ppid ..."
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let ppid: u32 = rest
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if ppid == parent
            && args.first().is_some_and(|a| a.ends_with(b"restic"))
            && args.iter().any(|a| *a == b"backup")
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_corrupted_pack_is_found_by_check_and_by_the_restore() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(
        None,
        &repo.to_string_lossy(),
        "SYNBACKUP_OFFSITE_CHECK=100%\n",
    );
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();
    assert!(s.run(&["offsite", "check", "c0"]).status.success());
    // Damage the middle of every data pack (as a bad disk or a bad copy would).
    let mut damaged = 0;
    for sub in fs::read_dir(repo.join("data")).unwrap().flatten() {
        for pack in fs::read_dir(sub.path()).unwrap().flatten() {
            let p = pack.path();
            let mut bytes = fs::read(&p).unwrap();
            let mid = bytes.len() / 3;
            for b in &mut bytes[mid..mid + 64] {
                *b ^= 0x5a;
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(&p, &bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let o = s.run(&["offsite", "check", "c0"]);
    assert_fails(&o, 12, "is damaged");

    // The restore fails before it touches the service directory.
    let before = hash_tree(&s.src);
    // restic's own authentication finds it first (synbackup's verify of the
    // restored copy would be next).
    let o = s.run(&["restore", "--instance", "c0", "--offsite", "latest"]);
    assert_fails(&o, 12, "ciphertext verification failed");
    assert_untouched(&s, &before);
}

/// A refused offsite restore left the service directory as it was (`before`,
/// its tree hash) and no staging copy beside it.
fn assert_untouched(s: &Setup, before: &BTreeMap<String, String>) {
    assert_eq!(
        &hash_tree(&s.src),
        before,
        "the service directory is untouched"
    );
    assert!(
        !names(s.src.parent().unwrap())
            .iter()
            .any(|n| n.contains("synbackup-offsite")),
        "the staging copy is removed"
    );
}

#[test]
fn a_snapshot_that_differs_from_its_manifest_is_refused_by_the_restores_verify() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();
    // A backup changed after it was verified, then uploaded as the newest snapshot
    // (restic's checks pass: it holds what it was given).
    let name = s.local_backups().pop().unwrap();
    let file = s.backups.join(&name).join("cookie.secret");
    fs::write(&file, "not what the manifest says").unwrap();
    next_second();
    let o = restic(&s, &repo.to_string_lossy())
        .current_dir(&s.backups)
        .args([
            "backup",
            "--tag",
            "synbackup",
            "--tag",
            "instance=c0",
            "--tag",
            "cell=0123456789abcdef0123456789abcdef",
            &name,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let before = hash_tree(&s.src);
    let o = s.run(&["restore", "--instance", "c0", "--offsite", "latest"]);
    assert_fails(&o, 6, "failed verification, not restored");
    assert!(
        error_lines(&o)[0].contains("cookie.secret"),
        "{}",
        stderr(&o)
    );
    assert_untouched(&s, &before);
}

/// Secrets files others can read are refused (issue 32): a 0644 password file, a
/// 0644 env file with backend credentials, a password file the service's user
/// owns; exit 2 with the file, its owner and mode, and the fix. restic never runs.
#[test]
fn secrets_files_others_can_read_or_write_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    let pw = s.password.display().to_string();
    fs::set_permissions(&s.password, fs::Permissions::from_mode(0o644)).unwrap();
    let o = s.run(&["offsite", "list", "c0"]);
    assert_fails(
        &o,
        2,
        &format!("the offsite password file {pw} is owned by 0:0 with mode 0644; it must be root's and 0600 at most: run `chmod 600 {pw}; chown root: {pw}`"),
    );
    fs::set_permissions(&s.password, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&s.password, Some(65534), Some(65534)).unwrap();
    let o = s.run(&["offsite", "list", "c0"]);
    assert_fails(
        &o,
        2,
        &format!("{pw} is owned by 65534:65534 with mode 0600"),
    );
    std::os::unix::fs::chown(&s.password, Some(0), Some(0)).unwrap();

    let env = t.path().join("env");
    fs::write(&env, "AWS_SECRET_ACCESS_KEY=s3cr3t-value\n").unwrap();
    fs::set_permissions(&env, fs::Permissions::from_mode(0o644)).unwrap();
    s.write_config(
        &repo.to_string_lossy(),
        &format!("SYNBACKUP_OFFSITE_ENV_FILE={}\n", env.display()),
    );
    let o = s.run(&["offsite", "list", "c0"]);
    assert_fails(
        &o,
        2,
        &format!(
            "the offsite env file {} is owned by 0:0 with mode 0644",
            env.display()
        ),
    );
    assert!(!stderr(&o).contains("s3cr3t"));
}

/// restic prints the repository string as it is, and an rclone connection string
/// carries its backend's credentials (issue 32): the error line, the journal text
/// and the `offsite` status show it with its parameter values as `***`, and the
/// status files are root's only (0600).
#[test]
fn credentials_in_the_repository_string_never_reach_the_status_or_the_error_line() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let repo = "rclone::sftp,host=127.0.0.1,port=1,user=x,key_file_pass=SUPERSECRETVALUE:/path";
    let s = Setup::new(None, repo, "");
    let o = s
        .cmd()
        .env("RCLONE_CONFIG", t.path().join("none"))
        .env_remove("SSH_AUTH_SOCK")
        .args(["run", "c0"])
        .output()
        .unwrap();
    assert_fails(
        &o,
        12,
        "rclone::sftp,host=***,port=***,user=***,key_file_pass=***:/path",
    );
    assert!(!stderr(&o).contains("SUPERSECRET"), "{}", stderr(&o));
    for f in ["c0.offsite.json", "c0.json"] {
        let p = s.root.join("state").join(f);
        let text = fs::read_to_string(&p).unwrap();
        assert!(!text.contains("SUPERSECRET"), "{f}: {text}");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600, "{f}");
    }
    assert!(s.status("offsite")["error"]
        .as_str()
        .unwrap()
        .contains("key_file_pass=***"));
}

/// `restore --offsite latest` takes the newest snapshot of the service's own cell,
/// not of whatever host last uploaded under the instance's name (issue 32): a
/// newer snapshot of another cell `c0` from another host is passed over while the
/// service directory says which cell it is; on a new host (no directory) the two
/// cells make `latest` ambiguous: refused (exit 2) naming both, with how to pick;
/// `--offsite ID` then restores the one picked.
#[test]
fn restore_offsite_latest_takes_its_own_cell_and_refuses_to_guess_between_two() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    let ours = s.run_ok();
    // Another host's `c0`, another cell, uploaded later to the same repository.
    let other = t.path().join("other");
    fake_service(&other.join("svc"), 20);
    fs::write(
        other.join("svc/cell.guid"),
        "ffffffffffffffffffffffffffffffff",
    )
    .unwrap();
    fs::write(other.join("svc/only-the-other-cell"), "x").unwrap();
    let name = "c0_20991231T000000Z";
    let o = run(&[&"backup", &other.join("svc"), &other.join(name)]);
    assert!(o.status.success(), "{}", stderr(&o));
    next_second();
    let o = restic(&s, &repo.to_string_lossy())
        .current_dir(&other)
        .args([
            "backup",
            "--host",
            "other-host",
            "--tag",
            "synbackup",
            "--tag",
            "instance=c0",
            "--tag",
            "cell=ffffffffffffffffffffffffffffffff",
            name,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // The service directory is cell 0123...: its own newest snapshot.
    let o = s.run(&["restore", "--instance", "c0", "--offsite", "latest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!s.src.join("only-the-other-cell").exists());
    assert_eq!(
        fs::read_to_string(s.src.join("cell.guid")).unwrap(),
        "0123456789abcdef0123456789abcdef"
    );

    // A new host: no service directory to say which cell.
    for e in fs::read_dir(s.src.parent().unwrap()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("svc") {
            fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let o = s.run(&["restore", "--instance", "c0", "--offsite", "latest"]);
    assert_fails(&o, 2, "restore --offsite latest of c0 is ambiguous: the repository has snapshots of 2 cells under that name");
    let line = &error_lines(&o)[0];
    for want in [
        "cell 0123456789abcdef0123456789abcdef from ",
        "cell ffffffffffffffffffffffffffffffff from other-host",
        "pick one with --offsite ID",
    ] {
        assert!(line.contains(want), "{want}: {line}");
    }
    assert!(!s.src.exists(), "nothing restored");
    let o = s.run(&["restore", "--instance", "c0", "--offsite", &ours]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read_to_string(s.src.join("cell.guid")).unwrap(),
        "0123456789abcdef0123456789abcdef"
    );
}

/// Run `cmd` under the real strace (every process and thread, one file each,
/// timestamped); returns the files and directories created under a staging
/// directory (a name with `.synbackup-`) that were not made durable afterwards:
/// neither fsynced (a file and its directory) nor followed by a syncfs.
fn unsynced_writes(cmd: Command, dir: &Path) -> (Output, Vec<String>) {
    let out = dir.join("strace");
    fs::create_dir_all(&out).unwrap();
    let prog = cmd.get_program().to_owned();
    let mut traced = command("strace");
    traced
        .args(["-ff", "-ttt", "-y", "-qq", "-e"])
        .arg("trace=openat,open,mkdir,mkdirat,fsync,fdatasync,syncfs")
        .arg("-o")
        .arg(out.join("t"))
        .arg(prog)
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => traced.env(k, v),
            None => traced.env_remove(k),
        };
    }
    let o = traced
        .output()
        .expect("strace (Debian's strace package) installed");
    let mut lines: Vec<(f64, String)> = Vec::new();
    for f in fs::read_dir(&out).unwrap().flatten() {
        for l in fs::read_to_string(f.path()).unwrap().lines() {
            if let Some((ts, rest)) = l.split_once(' ') {
                if let Ok(ts) = ts.parse::<f64>() {
                    lines.push((ts, rest.to_string()));
                }
            }
        }
    }
    lines.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    // The path in `<...>` after `= N` (what a call returned), or of its first fd.
    let returned = |l: &str| {
        let r = &l[l.rfind(") = ")? + 4..];
        let a = r.find('<')?;
        Some(r[a + 1..r.rfind('>')?].to_string())
    };
    let first_fd = |l: &str| {
        let a = l.find('<')?;
        Some(l[a + 1..a + l[a..].find('>')?].to_string())
    };
    let quoted = |l: &str| {
        let a = l.find('"')?;
        Some(l[a + 1..a + 1 + l[a + 1..].find('"')?].to_string())
    };
    let mut pending = std::collections::BTreeSet::new();
    for (_, l) in &lines {
        let ok = !l.contains(" = -1 ");
        if !ok {
            continue;
        }
        let created =
            if (l.starts_with("openat(") || l.starts_with("open(")) && l.contains("O_CREAT") {
                returned(l)
            } else if l.starts_with("mkdir(") {
                quoted(l)
            } else if l.starts_with("mkdirat(") {
                quoted(l).map(|p| {
                    if p.starts_with('/') {
                        p
                    } else {
                        format!("{}/{p}", first_fd(l).unwrap_or_default())
                    }
                })
            } else {
                None
            };
        if let Some(p) = created.filter(|p| p.contains(".synbackup-")) {
            let parent = Path::new(&p).parent().unwrap().display().to_string();
            pending.insert(p);
            pending.insert(parent);
        } else if l.starts_with("fsync(") || l.starts_with("fdatasync(") {
            if let Some(p) = first_fd(l) {
                pending.remove(&p);
            }
        } else if l.starts_with("syncfs(") {
            pending.clear();
        }
    }
    (o, pending.into_iter().collect())
}

/// A restored tree is durable before it is swapped in (issue 32): every file and
/// directory a restore creates, from a local backup and from an offsite snapshot
/// (which restic writes and fsyncs nothing of), is fsynced or covered by a syncfs
/// of its filesystem afterwards, as seen by the real strace.
#[test]
fn restored_trees_are_durable_from_a_local_backup_and_from_offsite() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();
    let name = s.local_backups().pop().unwrap();
    let mut local = s.cmd();
    local.args(["restore", "--instance", "c0", &name]);
    let (o, left) = unsynced_writes(local, &t.path().join("local"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(left.is_empty(), "local restore left unsynced: {left:#?}");
    let mut offsite = s.cmd();
    offsite.args(["restore", "--instance", "c0", "--offsite", "latest"]);
    let (o, left) = unsynced_writes(offsite, &t.path().join("offsite"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(left.is_empty(), "offsite restore left unsynced: {left:#?}");
}

/// An offsite restore (issue 36) checks restic's restored copy where restic wrote
/// it, on the directory's filesystem, and moves it into place: every byte read
/// once, from the page cache restic left it in, not again from the device (a
/// verify with O_DIRECT did), and not copied again.
#[test]
fn an_offsite_restore_checks_restics_copy_in_place_without_reading_it_again() {
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = t.path().join("svc");
    fake_service(&src, 4000);
    let repo = t.path().join("repo");
    let s = Setup::new(Some(&src), &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();
    let name = s.local_backups().pop().unwrap();
    let data: u64 = data_files(&s.backups.join(&name))
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(data > 8 << 20, "a backup too small to count: {data}");
    let release = s.root.join("release");
    let mut child = s
        .cmd()
        .args(["restore", "--instance", "c0", "--offsite", "latest"])
        .env("SYNBACKUP_FAULT", "hold:restore-before-swap")
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_until(&mut child, "holding at restore-before-swap");
    let read = read_bytes(child.id());
    fs::write(&release, "").unwrap();
    assert!(child.wait().unwrap().success());
    eprintln!(
        "the snapshot holds {data} bytes of environments; the restore read {read} from the device"
    );
    assert!(
        lines.iter().any(|l| l.contains("where restic restored it")),
        "{lines:#?}"
    );
    assert!(
        read < data / 2,
        "read {read} bytes from the device for {data} bytes of environments: restic's copy was read again"
    );
    assert_eq!(s.status("restore")["result"], "success");
}

/// A byte flipped in restic's restored copy (after restic's own checks, before
/// ours) fails the offsite restore with exit 6: nothing swapped, the staging copy
/// removed.
#[test]
fn a_byte_flipped_in_restics_copy_fails_the_offsite_restore_and_swaps_nothing() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();
    let before = hash_tree(&s.src);
    let release = s.root.join("release");
    let mut child = s
        .cmd()
        .args(["restore", "--instance", "c0", "--offsite", "latest"])
        .env("SYNBACKUP_FAULT", "hold:restore-offsite-fetched")
        .env("SYNBACKUP_FAULT_RELEASE", &release)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut child, "holding at restore-offsite-fetched");
    let staging: Vec<String> = names(s.src.parent().unwrap())
        .into_iter()
        .filter(|n| n.contains("synbackup-offsite"))
        .collect();
    assert_eq!(staging.len(), 1, "{staging:?}");
    let victim = data_files(&s.src.parent().unwrap().join(&staging[0]))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("layer_v2.lmdb"))
        .expect("restic restored the layer");
    flip_byte(&victim);
    fs::write(&release, "").unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(6), "{st:?}");
    let status = s.status("restore");
    assert_eq!(status["exit_code"], 6, "{status}");
    assert!(
        status
            .to_string()
            .contains("layer_v2.lmdb/data.mdb: BLAKE3 mismatch"),
        "{status}"
    );
    assert_untouched(&s, &before);
}

/// An offsite restore interrupted while it checks restic's copy (a failure, then
/// SIGTERM) leaves the directory as it was and no staging copy.
#[test]
fn an_offsite_restore_interrupted_mid_check_leaves_the_directory_and_no_staging_copy() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let s = Setup::new(None, &repo.to_string_lossy(), "");
    s.ok(&["offsite", "init", "c0"]);
    s.run_ok();
    fs::write(s.src.join("marker"), "the directory as it was").unwrap();
    let before = hash_tree(&s.src);
    let mut c = s.cmd();
    c.args(["restore", "--instance", "c0", "--offsite", "latest"]);
    let o = c
        .env("SYNBACKUP_FAULT", "restore-mid-check")
        .output()
        .unwrap();
    assert_fails(&o, 1, "injected fault at restore-mid-check");
    assert_untouched(&s, &before);
    let mut child = s
        .cmd()
        .args(["restore", "--instance", "c0", "--offsite", "latest"])
        .env("SYNBACKUP_FAULT", "hold:restore-mid-check")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut child, "holding at restore-mid-check");
    assert!(
        names(s.src.parent().unwrap())
            .iter()
            .any(|n| n.contains("synbackup-offsite")),
        "the check is under way in the staging copy"
    );
    nix_kill(child.id() as i32, libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_untouched(&s, &before);
}

/// The nexus archive's closed segments go offsite with each backup (a snapshot
/// of their own, tagged synbackup-nexus, never in `offsite list`), the open
/// segment and the record of checked segments do not, and `offsite fetch-archive` brings back byte-identical files
/// that verify as a chain.
#[test]
fn the_nexus_archive_goes_offsite_and_fetch_archive_brings_it_back() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo").to_string_lossy().into_owned();
    let s = Setup::new(None, &repo, "");
    s.ok(&["offsite", "init", "c0"]);
    let archive = s.backups.join("nexus-archive");
    crate::pitr::chain::write_archive(&archive, &[(0, 99), (100, 199)], Some((200, 210)));
    s.run_ok();
    let o = restic(&s, &repo)
        .args([
            "snapshots",
            "--json",
            "--tag",
            "synbackup-nexus,instance=c0",
        ])
        .output()
        .unwrap();
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(s.snapshots().len(), 1, "offsite list shows the backup only");
    assert!(
        s.status("offsite")["details"]["nexus_archive_snapshot"].is_string(),
        "{}",
        s.status("offsite")
    );

    // A second night with one more closed segment: a second archive snapshot.
    crate::pitr::chain::write_archive(&archive, &[(200, 299)], None);
    fs::remove_file(archive.join(format!("open-{:016x}.seg", 200))).unwrap();
    next_second();
    s.run_ok();

    let target = t.path().join("fetched");
    let out = s.ok(&["offsite", "fetch-archive", "c0", &target.to_string_lossy()]);
    assert!(out.contains("fetched 2 nexus archive snapshots"), "{out}");
    let fetched = target.join("nexus-archive");
    let mut want = names(&archive);
    // The record of checked segments (a cache of this host's files) stays here.
    assert!(want.iter().any(|n| n == ".checked.json"), "{want:?}");
    want.retain(|n| !n.starts_with("open-") && n != ".checked.json");
    assert_eq!(names(&fetched), want);
    for n in &want {
        assert_eq!(
            fs::read(fetched.join(n)).unwrap(),
            fs::read(archive.join(n)).unwrap(),
            "{n}"
        );
    }
    // A second fetch into the same place is refused, nothing merged.
    let o = s.run(&["offsite", "fetch-archive", "c0", &target.to_string_lossy()]);
    assert_fails(&o, 3, "exists");
    // In place of the local archive, it verifies as a chain.
    fs::rename(&archive, t.path().join("aside")).unwrap();
    fs::rename(&fetched, &archive).unwrap();
    let out = s.ok(&["verify", "--instance", "c0"]);
    assert!(out.contains("offsets 0-299 in 3 segments"), "{out}");
}
