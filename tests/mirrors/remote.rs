// SPDX-License-Identifier: Apache-2.0
//! A leader on "another host": it listens on `tcp://127.0.0.1:PORT` with a root
//! password (`auth:passwd`), and the backup host names it only by that URL; its
//! mirror here (made as `pair.rs` makes it) follows it over the same URL. On
//! 2.256.0 and 3.7.0:
//!
//! 1. A config holding the password readable by others is refused (exit 2, the
//!    password masked).
//! 2. A nightly run from the mirror with `SYNBACKUP_LEADER` the URL: the manifest
//!    records the leader as the masked URL, the indexes; the leader is not paused;
//!    the password appears nowhere (output, status, manifest). With
//!    `SYNBACKUP_LEADER` unset, the leader is read from the mirror's `cell.yaml`.
//! 3. A wrong password: exit 13, one line naming the masked URL and the refusal.
//! 4. Restoring the leader (an instance naming the mirror and an unreachable URL)
//!    to that backup once the mirror is past it: `--dry-run` shows the mirror's
//!    index and the warning; the restore warns with both numbers and names the
//!    unreachable one; `status` reports it until `--acknowledge restore`.
//!
//! On main, `SYNBACKUP_LEADER=tcp://...` was refused ("expected an absolute
//! path", exit 2) and restore said nothing about mirrors.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use super::source::{backups_in, status};
use crate::util::*;

const PASSWD: &str = "Pw-s3cret-1";

fn write_conf(root: &Path, name: &str, text: &str, mode: u32) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let p = root.join(format!("etc/{name}.conf"));
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn all_output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn backup_from_a_mirror_of_a_leader_named_by_url(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host");
    let ldir = t.path().join("leader");
    let mdir = t.path().join("mirror");
    let backups = t.path().join("backups");
    let port = free_port();
    std::fs::create_dir_all(&ldir).unwrap();
    std::fs::write(
        ldir.join("cell.yaml"),
        format!("nexslog:en: true\nauth:passwd: {PASSWD}\n"),
    )
    .unwrap();
    let listen = format!("tcp://127.0.0.1:{port}/");
    let leader = Cortex::start_with(line, &ldir, &listen, &[]);
    leader.add(20, 0);
    let url = format!("tcp://root:{PASSWD}@127.0.0.1:{port}/");
    let masked = format!("tcp://root:****@127.0.0.1:{port}");

    let seed = t.path().join("seed");
    let o = run(&[&"backup", &ldir, &seed]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let o = run(&[&"restore", &seed, &mdir]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    std::fs::write(
        mdir.join("cell.yaml"),
        format!("nexslog:en: true\n{}: {url}\n", line.upstream_key()),
    )
    .unwrap();
    let mirror = Cortex::start(line, &mdir);
    let index = |c: &Cortex| c.info()["nexus_index"].as_u64().unwrap();
    assert!(
        wait_for(60, || index(&mirror) == index(&leader)),
        "{v}: the mirror follows over {masked}"
    );

    // 1. The password in a config others can read: refused, masked.
    let base = format!(
        "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_SOURCE=mirror\nSYNBACKUP_MIRRORS={}\n",
        mdir.display(),
        backups.display(),
        mdir.display()
    );
    write_conf(
        &root,
        "m0",
        &format!("{base}SYNBACKUP_LEADER={url}\n"),
        0o644,
    );
    let o = run_at(&root, &["run", "m0"]);
    assert_fails(&o, 2, "SYNBACKUP_LEADER holds a telepath password");
    assert!(!all_output(&o).contains(PASSWD), "{v}: {}", all_output(&o));

    // 2. From the mirror, the leader by URL.
    write_conf(
        &root,
        "m0",
        &format!("{base}SYNBACKUP_LEADER={url}\n"),
        0o600,
    );
    let at_start = index(&leader);
    let o = run_at(&root, &["run", "m0"]);
    assert!(o.status.success(), "{v}: {}", all_output(&o));
    assert!(!all_output(&o).contains(PASSWD), "{v}: {}", all_output(&o));
    assert!(
        stderr(&o).contains(&format!("backing up the mirror {}", mdir.display()))
            && stderr(&o).contains(&format!("it applied the leader {masked}'s nexus index")),
        "{v}: {}",
        stderr(&o)
    );
    assert!(!leader.paused(), "{v}: the leader is not paused");
    let made = backups_in(&backups);
    assert_eq!(made.len(), 1, "{v}: {made:?}");
    let m = manifest(&made[0]);
    let fm = &m["from_mirror"];
    assert_eq!(fm["leader"], masked.as_str(), "{v}: {fm}");
    assert_eq!(fm["mirror"], mdir.to_str().unwrap(), "{v}: {fm}");
    assert!(
        fm["leader_nexus_index"].as_u64().unwrap() >= at_start,
        "{v}: {fm}"
    );
    let snapped = fm["nexus_index"].as_u64().unwrap();
    let st = std::fs::read_to_string(root.join("state/m0.json")).unwrap();
    let mf = std::fs::read_to_string(made[0].join("synbackup-manifest.json")).unwrap();
    assert!(
        !st.contains(PASSWD) && !mf.contains(PASSWD),
        "{v}: a password was written"
    );
    assert_eq!(
        status(&root)["details"]["source"]["leader"],
        masked.as_str()
    );

    // SYNBACKUP_LEADER unset: the URL the mirror follows (its cell.yaml).
    write_conf(&root, "m0", &base, 0o600);
    let o = run_at(&root, &["run", "m0", "--dry-run"]);
    assert!(o.status.success(), "{v}: {}", all_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains(&format!("applies the leader {masked}'s nexus index")),
        "{v}: {}",
        all_output(&o)
    );
    assert!(!all_output(&o).contains(PASSWD), "{v}: {}", all_output(&o));

    // 3. A wrong password: exit 13, the URL masked, the refusal said.
    let bad = format!("tcp://root:Wrong-pw-2@127.0.0.1:{port}");
    write_conf(
        &root,
        "m0",
        &format!("{base}SYNBACKUP_LEADER={bad}\n"),
        0o600,
    );
    let o = run_at(&root, &["run", "m0"]);
    assert_fails(&o, 13, "no mirror is ready");
    let e = &error_lines(&o)[0];
    assert!(
        e.contains(&format!("the leader at {masked} does not answer")) && e.contains("AuthDeny"),
        "{v}: {e}"
    );
    assert!(
        !all_output(&o).contains("Wrong-pw-2"),
        "{v}: {}",
        all_output(&o)
    );
    assert_eq!(backups_in(&backups).len(), 1, "{v}");

    // 4. The mirror moves past the backup; the leader is restored to it.
    leader.add(5, 100);
    assert!(
        wait_for(60, || index(&mirror) == index(&leader)),
        "{v}: the mirror follows"
    );
    let mirror_at = index(&mirror);
    assert!(mirror_at > snapped, "{v}: {mirror_at} > {snapped}");
    let gone = format!("tcp://127.0.0.1:{}", free_port());
    write_conf(
        &root,
        "l0",
        &format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_MIRRORS={} {gone}\n",
            ldir.display(),
            backups.display(),
            mdir.display()
        ),
        0o600,
    );
    let mut leader = leader;
    leader.stop();
    let warn = format!(
        "the mirror {} is at nexus index {mirror_at}, the backup at {snapped}: it applied {} changes",
        mdir.display(),
        mirror_at - snapped
    );
    let o = run_at(
        &root,
        &[
            "restore".as_ref(),
            "--dry-run".as_ref(),
            "--instance".as_ref(),
            "l0".as_ref(),
            made[0].as_os_str(),
        ],
    );
    assert!(o.status.success(), "{v}: {}", all_output(&o));
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        plan.contains(&format!(
            "asked the mirror {} before the stop: nexus index {mirror_at}, the backup's {snapped}",
            mdir.display()
        )) && plan.contains(&format!("would warn: {warn}"))
            && plan.contains(&format!("could not ask the mirrors {gone}")),
        "{v}: {plan}"
    );
    let o = run_at(
        &root,
        &[
            "restore".as_ref(),
            "--instance".as_ref(),
            "l0".as_ref(),
            made[0].as_os_str(),
        ],
    );
    assert!(o.status.success(), "{v}: {}", all_output(&o));
    let warned = stderr(&o).lines().filter(|l| l.contains(&warn)).count();
    assert_eq!(warned, 1, "{v}: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("could not ask the mirrors {gone}")),
        "{v}: {}",
        stderr(&o)
    );
    let rs: Value =
        serde_json::from_slice(&std::fs::read(root.join("state/l0.restore.json")).unwrap())
            .unwrap();
    assert_eq!(
        rs["details"]["mirrors"]["backup_index"], snapped,
        "{v}: {rs}"
    );
    assert_eq!(
        rs["details"]["mirrors"]["asked"][0]["nexus_index"], mirror_at,
        "{v}: {rs}"
    );
    let o = run_at(&root, &["status", "l0"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&warn),
        "{v}: {}",
        all_output(&o)
    );
    let o = run_at(&root, &["status", "l0", "--acknowledge", "restore"]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(&warn),
        "{v}: {}",
        all_output(&o)
    );
}

crate::on_both_lines!(backup_from_a_mirror_of_a_leader_named_by_url);

/// A leader on `ssl://` that asks for client certificates (`ca=testca`), with
/// material from Synapse's easycert: the run's client verifies the leader's
/// certificate against `certdir=`'s CA and its common name against `hostname=`,
/// and presents the user certificate `certname=root`. Only the leader runs: its
/// answer is told apart by the error of the (absent) mirror that follows it.
fn a_leader_on_ssl_with_a_user_certificate(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host");
    let ldir = t.path().join("leader");
    let certdir = t.path().join("certs");
    crate::util::certs::easycert(&certdir, &["--ca", "testca"]);
    crate::util::certs::easycert(
        &certdir,
        &["--server", "--signas", "testca", "leader.local"],
    );
    crate::util::certs::easycert(&certdir, &["--signas", "testca", "root"]);
    let port = free_port();
    let listen = format!("ssl://127.0.0.1:{port}/?hostname=leader.local&ca=testca");
    std::fs::create_dir_all(&ldir).unwrap();
    let _leader = Cortex::start_with(
        line,
        &ldir,
        &listen,
        &[("SYN_CERT_DIR", certdir.to_str().unwrap())],
    );
    let nowhere = t.path().join("no-mirror");
    // The user's certificate and key, but not the CA that signed the leader's.
    let no_cas = t.path().join("no-cas");
    std::fs::create_dir_all(no_cas.join("users")).unwrap();
    for f in ["users/root.crt", "users/root.key"] {
        std::fs::copy(certdir.join(f), no_cas.join(f)).unwrap();
    }
    let run_with = |leader: &str| {
        write_conf(
            &root,
            "m0",
            &format!(
                "SYNBACKUP_SERVICE_DIR={m}\nSYNBACKUP_BACKUP_ROOT={b}\nSYNBACKUP_SOURCE=mirror\nSYNBACKUP_MIRRORS={m}\nSYNBACKUP_LEADER={leader}\n",
                m = nowhere.display(),
                b = t.path().join("backups").display()
            ),
            0o600,
        );
        let o = run_at(&root, &["run", "m0"]);
        assert_fails(&o, 13, "no mirror is ready");
        error_lines(&o)[0].clone()
    };
    let good = format!(
        "ssl://127.0.0.1:{port}?hostname=leader.local&certname=root&certdir={}",
        certdir.display()
    );
    let e = run_with(&good);
    assert!(
        e.contains(&format!(
            "the mirror at {}: does not answer",
            nowhere.display()
        )) && !e.contains("the leader at"),
        "{v}: the leader answered over TLS: {e}"
    );
    let wrong_name = good.replace("hostname=leader.local", "hostname=other.local");
    let e = run_with(&wrong_name);
    assert!(
        e.contains("the leader at ssl://127.0.0.1:")
            && e.contains("certificate is for leader.local, not other.local"),
        "{v}: {e}"
    );
    let e = run_with(&good.replace(certdir.to_str().unwrap(), no_cas.to_str().unwrap()));
    assert!(
        e.contains("the leader at ssl://127.0.0.1:") && e.contains("certificate verify failed"),
        "{v}: {e}"
    );
    // Without a user certificate the leader refuses the TLS session.
    let e = run_with(&good.replace("&certname=root", ""));
    assert!(e.contains("the leader at ssl://127.0.0.1:"), "{v}: {e}");
}

crate::on_both_lines!(a_leader_on_ssl_with_a_user_certificate);
