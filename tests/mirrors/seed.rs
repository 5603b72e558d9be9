// SPDX-License-Identifier: Apache-2.0
//! `seed-mirror`: a new mirror made from the leader's newest backup, with a real
//! leader on 2.256.0 and on 3.7.0 (on main there was no such command: exit 2).
//!
//! The leader (an instance, `nexslog:en: true`) is backed up by `run`, then takes
//! more writes. `--dry-run` names the backup, its index and the entries the mirror
//! will apply, and creates nothing; a non-empty NEWDIR is refused (exit 3). The
//! seed writes the line's follower key (`mirror:` on 2.x, `parent:` on 3.x),
//! keeps `cell.guid` and gives every file to `--owner`; the Cortex started on it is a mirror, catches up with the
//! writes made after the backup and follows new ones: at the same nexus index its
//! node count is the leader's. Then the leader's log is culled past the backup's
//! index (Synapse's own `rotateNexsLog` + `cullNexsLog`): a second seed from that
//! backup is refused with exit 14, naming the missing entry, and leaves nothing.

use std::path::{Path, PathBuf};

use crate::on_both_lines;
use crate::util::*;

/// The instance `l0`: the leader's directory, its backup root.
fn configure(root: &Path, ldir: &Path, backups: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/l0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\n",
            ldir.display(),
            backups.display()
        ),
    )
    .unwrap();
}

fn only_backup(backups: &Path) -> PathBuf {
    let v: Vec<PathBuf> = std::fs::read_dir(backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("synbackup-manifest.json").exists())
        .collect();
    assert_eq!(v.len(), 1, "{v:?}");
    v[0].clone()
}

fn index(c: &Cortex) -> u64 {
    c.info()["nexus_index"].as_u64().unwrap()
}

fn seed(root: &Path, newdir: &Path, more: &[&str]) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "seed-mirror".as_ref(),
        "--instance".as_ref(),
        "l0".as_ref(),
        newdir.as_os_str(),
    ];
    args.extend(more.iter().map(|a| std::ffi::OsStr::new(*a)));
    run_at(root, &args)
}

fn seeds_a_mirror(line: Line) {
    let v = line.version();
    let t = tempfile::tempdir().unwrap();
    let (root, ldir, backups) = (
        t.path().join("host"),
        t.path().join("leader"),
        t.path().join("backups"),
    );
    std::fs::create_dir_all(&ldir).unwrap();
    std::fs::write(ldir.join("cell.yaml"), "nexslog:en: true\n").unwrap();
    configure(&root, &ldir, &backups);
    let leader = Cortex::start(line, &ldir);
    leader.add(20, 0);
    let o = run_at(&root, &["run", "l0"]);
    assert!(o.status.success(), "{v}: run: {}", stderr(&o));
    let backup = only_backup(&backups);
    let n = manifest(&backup)["cell"]["nexus_index"].as_u64().unwrap();
    // Writes the backup does not have.
    leader.add(10, 100);
    let at = index(&leader);
    assert!(at > n + 1, "{v}: the leader moved on: {n} -> {at}");

    // The dry run: the plan, nothing made.
    let mdir = t.path().join("mirror");
    let o = seed(&root, &mdir, &["--dry-run"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains(&format!(
            "(nexus index {n}): the leader still holds its entries"
        )) && out.contains(&format!("the mirror applies {} of them", at - n))
            && out.contains(&format!(
                "{}: 'cell://{}'",
                line.upstream_key(),
                ldir.display()
            )),
        "{v}: {out}"
    );
    assert!(!mdir.exists(), "{v}: the dry run made {}", mdir.display());

    // NEWDIR must be new or empty.
    let busy = t.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), "x").unwrap();
    let o = seed(&root, &busy, &[]);
    assert_fails(&o, 3, "is not empty (it holds keep)");
    assert_eq!(names(&busy), ["keep"], "{v}");

    // The seed (its files given to the mirror's user), then the mirror started on it.
    let o = seed(&root, &mdir, &["--owner", "nobody"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    for rel in ["", "cell.yaml", "cell.guid", "slabs/cell.lmdb/data.mdb"] {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::symlink_metadata(mdir.join(rel)).unwrap().uid();
        assert_eq!(uid, 65534, "{v}: the owner of {rel:?}");
    }
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("start it as the service's user"),
        "{v}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let yaml = std::fs::read_to_string(mdir.join("cell.yaml")).unwrap();
    assert!(
        yaml.contains(&format!(
            "{}: 'cell://{}'",
            line.upstream_key(),
            ldir.display()
        )) && yaml.contains("nexslog:en: true"),
        "{v}: {yaml}"
    );
    assert_eq!(
        std::fs::read(mdir.join("cell.guid")).unwrap(),
        std::fs::read(ldir.join("cell.guid")).unwrap()
    );
    let mirror = Cortex::start(line, &mdir);
    assert_eq!(mirror.info()["active"], false, "{v}: a mirror");
    let caught_up = || wait_for(90, || index(&mirror) == index(&leader));
    assert!(caught_up(), "{v}: the mirror catches up from {n} to {at}");
    assert_eq!(
        mirror.count(),
        30,
        "{v}: with the writes made after the backup"
    );
    leader.add(5, 200);
    assert!(caught_up(), "{v}: and follows new writes");
    let (li, mi) = (index(&leader), index(&mirror));
    assert_eq!((mirror.count(), mi), (leader.count(), li), "{v}");
    assert_eq!(leader.count(), 35, "{v}");

    // The leader's log culled past the backup's index: refused, nothing made.
    assert_eq!(
        line.storm(&["cull", ldir.to_str().unwrap(), &n.to_string()]),
        "True",
        "{v}: culled"
    );
    let m2 = t.path().join("mirror2");
    let o = seed(&root, &m2, &[]);
    assert_fails(&o, 14, &format!("no longer holds nexus entry {n}"));
    assert!(!m2.exists(), "{v}: left {}", m2.display());
    assert!(
        names(t.path())
            .iter()
            .all(|n| !n.contains("synbackup-seeding")),
        "{v}: a staging copy was left: {:?}",
        names(t.path())
    );
    drop(mirror);
}

on_both_lines!(seeds_a_mirror);
