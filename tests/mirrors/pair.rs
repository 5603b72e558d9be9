// SPDX-License-Identifier: Apache-2.0
//! A real leader and a real mirror, on Synapse 2.256.0 and on 3.7.0: the leader
//! (`nexslog:en: true`) is backed up, the mirror made from that backup
//! (`synbackup restore` into a new directory, then `mirror: cell:///LEADER` on 2.x,
//! `parent: cell:///LEADER` on 3.x: it follows over the leader's unix socket). One
//! pair per line, its boots shared by the phases:
//!
//! 1. the backup records the frozen cell's iden, nexus index and role (manifest
//!    `cell`), on the leader and on the mirror (on main: no such record);
//! 2. freeze ownership: the leader frozen by Synapse's own
//!    `synapse.tools.service.snapshot freeze` is left frozen by `backup`, which
//!    exits 5 naming the resume command (on main: it resumed the operator's
//!    freeze); a stale freeze record of a synbackup killed with its guardian does
//!    not make the next run resume a freeze an operator made after resuming that
//!    one (on main: resumed);
//! 3. the drill checks the booted cell's nexus index against the manifest's (the
//!    same on 2.x in safemode; one more on 3.7.0, which pushes `model:set` at
//!    every boot);
//! 4. restore knows roles: the leader's backup into the (stopped) mirror's
//!    directory and the mirror's backup into the leader's are refused, exit 3,
//!    naming both roles (on main: both exit 0, the first boots a second leader);
//!    with `--force` the mirror's directory keeps its `mirror:`/`parent:` and,
//!    started again, follows the leader and catches up with its writes;
//! 5. restore compares nexus indexes: the leader's older backup restored into the
//!    leader's directory warns with both indexes and what its mirrors must do, and
//!    the instance's restore status records them (on main: nothing).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::util::syn3;
use crate::util::*;

/// A Synapse release line and how its tools are run.
enum Line {
    V2,
    /// 3.7.0 in its sid tree.
    V3(PathBuf),
}

/// A running Cortex of either line.
enum Cell {
    V2(Cortex),
    V3(Cortex),
}

impl Line {
    fn start(&self, dir: &Path) -> Cell {
        match self {
            Line::V2 => Cell::V2(Cortex::start(crate::util::Line::V2, dir)),
            Line::V3(_) => Cell::V3(Cortex::start(crate::util::Line::V3, dir)),
        }
    }

    /// The `cell.yaml` key that makes a cell follow another.
    fn mirror_key(&self) -> &'static str {
        match self {
            Line::V2 => "mirror",
            Line::V3(_) => "parent",
        }
    }

    /// The Python a drill boots the line's backups with.
    fn python(&self) -> PathBuf {
        match self {
            Line::V2 => python(),
            Line::V3(_) => syn3::python(),
        }
    }

    /// `python -m synapse.tools.service.snapshot VERB` on the cell in `dir`: the
    /// operator's volume-snapshot freeze and resume (its URL option is `--svcurl`
    /// on 2.x, `--url` on 3.x).
    fn snapshot(&self, dir: &Path, verb: &str) {
        let url = format!("cell://{}", dir.display());
        let mut cmd: Command = match self {
            Line::V2 => {
                let mut c = command(python());
                c.args(["-m", "synapse.tools.service.snapshot", verb, "--svcurl"]);
                c
            }
            Line::V3(root) => {
                let mut c = syn3::in_root(root);
                c.args([
                    "/opt/syn3/bin/python",
                    "-m",
                    "synapse.tools.service.snapshot",
                ]);
                c.args([verb, "--url"]);
                c
            }
        };
        let o = cmd.arg(&url).output().unwrap();
        assert!(
            o.status.success(),
            "snapshot {verb}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn name(&self) -> &'static str {
        match self {
            Line::V2 => "2.256.0",
            Line::V3(_) => syn3::VERSION,
        }
    }
}

impl Cell {
    fn info(&self) -> Value {
        match self {
            Cell::V2(c) => c.info(),
            Cell::V3(c) => c.info(),
        }
    }

    fn nexus_index(&self) -> u64 {
        self.info()["nexus_index"].as_u64().unwrap()
    }

    fn paused(&self) -> bool {
        match self {
            Cell::V2(c) => c.paused(),
            Cell::V3(c) => c.paused(),
        }
    }

    /// Add `n` nodes from the `start`-th on.
    fn add(&self, start: u32, n: u32) {
        match self {
            Cell::V2(c) | Cell::V3(c) => {
                c.add(n, start);
            }
        }
    }

    /// The nodes `add` made.
    fn count(&self) -> u64 {
        match self {
            Cell::V2(c) => c.count_of("inet:ipv4"),
            Cell::V3(c) => c.count_of("inet:ip"),
        }
    }

    fn stop(&mut self) {
        match self {
            Cell::V2(c) => c.stop(),
            Cell::V3(c) => c.stop(),
        }
    }
}

/// `synbackup --lock-dir LOCK ARGS`.
fn sb(lock: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = bin();
    c.arg("--lock-dir").arg(lock);
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A `backup` of `dir` held inside its freeze, then killed with its guardian
/// (what `systemctl kill -s KILL` does): the cell stays frozen by the dead run,
/// whose freeze record stays.
fn freeze_and_die(lock: &Path, dir: &Path, dst: &Path) {
    let mut cmd = bin();
    cmd.arg("--lock-dir")
        .arg(lock)
        .args(["backup", "-v"])
        .arg(dir)
        .arg(dst)
        .env("SYNBACKUP_FAULT", "hold:after-freeze")
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child: Child = cmd.spawn().unwrap();
    let lines = stderr_until(&mut child, "fault injection: holding at after-freeze");
    let guardian: i32 = lines
        .iter()
        .find_map(|l| l.split("freeze guardian pid ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the guardian's pid is logged at debug level")
        .parse()
        .unwrap();
    nix_kill(guardian, 9).unwrap();
    assert!(wait_for(10, || !pid_alive(guardian)), "guardian gone");
    nix_kill(child.id() as i32, 9).unwrap();
    let _ = child.wait();
}

fn leader_and_mirror(line: Line) {
    let v = line.name();
    let t = tempfile::tempdir().unwrap();
    let lock = t.path().join("run");
    let ldir = t.path().join("leader");
    let mdir = t.path().join("mirror");
    std::fs::create_dir_all(&ldir).unwrap();
    std::fs::write(ldir.join("cell.yaml"), "nexslog:en: true\n").unwrap();
    let mut leader = line.start(&ldir);
    leader.add(0, 20);
    let iden = std::fs::read_to_string(ldir.join("cell.guid")).unwrap();

    // 1. The leader's backup records the frozen cell: iden, index, role.
    let b_leader = t.path().join("b-leader");
    let o = sb(&lock, &[&"backup", &ldir, &b_leader, &"--verify"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let cell = manifest(&b_leader)["cell"].clone();
    assert_eq!(cell["iden"], iden.trim(), "{v}: manifest cell: {cell}");
    assert_eq!(cell["role"], "leader", "{v}: {cell}");
    let y = cell["nexus_index"].as_u64().expect("nexus_index recorded");
    assert_eq!(y, leader.nexus_index(), "{v}: the idle leader's index");

    // The mirror: the leader's backup, restored into a new directory, set to follow.
    let o = run(&[&"restore", &b_leader, &mdir]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let follow = format!("{}: cell://{}\n", line.mirror_key(), ldir.display());
    std::fs::write(
        mdir.join("cell.yaml"),
        format!("nexslog:en: true\n{follow}"),
    )
    .unwrap();
    let mut mirror = line.start(&mdir);
    leader.add(100, 5);
    let caught_up = |m: &Cell, l: &Cell| wait_for(60, || m.nexus_index() == l.nexus_index());
    assert!(caught_up(&mirror, &leader), "{v}: the mirror follows");
    assert_eq!(mirror.count(), 25, "{v}: the mirror has the leader's nodes");
    let minfo = mirror.info();
    assert_eq!(minfo["active"], false, "{v}: {minfo}");

    // 2a. An operator's freeze is theirs: exit 5, one line, left frozen.
    line.snapshot(&ldir, "freeze");
    let o = sb(&lock, &[&"backup", &ldir, &t.path().join("b-x")]);
    assert_fails(&o, 5, "was already frozen, not by this synbackup");
    let err = &error_lines(&o)[0];
    let opt = if matches!(line, Line::V2) {
        "--svcurl"
    } else {
        "--url"
    };
    assert!(
        err.contains(&format!("snapshot resume {opt} cell://{}", ldir.display())),
        "{v}: names the resume command: {err}"
    );
    assert!(
        leader.paused(),
        "{v}: synbackup resumed the operator's freeze"
    );
    assert!(!t.path().join("b-x").exists());
    line.snapshot(&ldir, "resume");

    // 2b. A stale record does not resume a freeze made after it.
    freeze_and_die(&lock, &ldir, &t.path().join("b-killed"));
    assert!(leader.paused(), "{v}: frozen by the killed run");
    line.snapshot(&ldir, "resume");
    leader.add(200, 1);
    line.snapshot(&ldir, "freeze");
    let o = sb(&lock, &[&"backup", &ldir, &t.path().join("b-y")]);
    assert_fails(&o, 5, "was already frozen, not by this synbackup");
    assert!(
        stderr(&o).contains("is not that one"),
        "{v}: says why the record was not acted on: {}",
        stderr(&o)
    );
    assert!(
        leader.paused(),
        "{v}: the stale record resumed the operator's freeze"
    );
    line.snapshot(&ldir, "resume");
    assert!(caught_up(&mirror, &leader), "{v}: the mirror follows");

    // 1'. The mirror's backup: role mirror, its upstream, its own index.
    let b_mirror = t.path().join("b-mirror");
    let o = sb(&lock, &[&"backup", &mdir, &b_mirror, &"--verify"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let mcell = manifest(&b_mirror)["cell"].clone();
    assert_eq!(mcell["role"], "mirror", "{v}: {mcell}");
    assert_eq!(mcell["iden"], iden.trim());
    assert!(
        mcell["upstream"]
            .as_str()
            .is_some_and(|u| u.contains(ldir.to_str().unwrap())),
        "{v}: {mcell}"
    );
    let x = mcell["nexus_index"].as_u64().unwrap();
    assert!(x > y, "{v}: the mirror is ahead of the first backup");
    assert!(!leader.paused() && !mirror.paused());

    // 3. The drill: the booted copy's nexus index is the manifest's.
    let drilled = if matches!(line, Line::V2) {
        &b_mirror
    } else {
        &b_leader
    };
    let o = bin()
        .arg("drill")
        .arg("--dir")
        .arg(drilled)
        .arg("--python")
        .arg(line.python())
        .args(["--timeout", "5m", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{v}: drill: {}", stderr(&o));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = manifest(drilled)["cell"]["nexus_index"].as_u64().unwrap();
    assert_eq!(d["backup_nexus_index"], want, "{v}: {d}");
    let booted = d["nexus_index"].as_u64().unwrap();
    if matches!(line, Line::V2) {
        assert_eq!(
            booted, want,
            "{v}: a 2.x safemode boot changes nothing: {d}"
        );
    } else {
        // 3.7.0 pushes model:set at every boot, safemode included.
        assert_eq!(booted, want + 1, "{v}: {d}");
    }
    assert_eq!(d["backup_nexus_from"], "manifest", "{v}: {d}");
    assert!(
        stderr(&o).contains("as the backup's manifest records"),
        "{v}: {}",
        stderr(&o)
    );

    // 4. Roles on restore. The leader's backup into the mirror's directory.
    mirror.stop();
    let o = run(&[&"restore", &b_leader, &mdir]);
    assert_fails(&o, 3, "changes the cell's role");
    let err = &error_lines(&o)[0];
    assert!(
        err.contains("is the mirror of cell://") && err.contains("a backup of the leader"),
        "{v}: names both roles: {err}"
    );
    let o = run(&[&"restore", &b_leader, &mdir, &"--force"]);
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let yaml = std::fs::read_to_string(mdir.join("cell.yaml")).unwrap();
    assert!(
        yaml.contains(follow.trim()),
        "{v}: kept {follow:?}: {yaml:?}"
    );
    let mirror = line.start(&mdir);
    assert_eq!(mirror.info()["active"], false, "{v}: still a mirror");
    assert!(
        caught_up(&mirror, &leader),
        "{v}: the restored mirror catches up"
    );
    assert_eq!(
        mirror.count(),
        leader.count(),
        "{v}: with the leader's nodes"
    );
    leader.add(300, 3);
    assert!(caught_up(&mirror, &leader), "{v}: and follows new writes");
    assert_eq!(mirror.count(), 29);

    // The mirror's backup into the leader's directory.
    let x_leader = leader.nexus_index();
    leader.stop();
    let o = run(&[&"restore", &b_mirror, &ldir]);
    assert_fails(&o, 3, "changes the cell's role");
    let err = &error_lines(&o)[0];
    assert!(
        err.contains("is the leader") && err.contains("a backup of the mirror of cell://"),
        "{v}: {err}"
    );

    // 5. The leader's older backup into its directory: a warning, in its status.
    let root = t.path().join("host");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(t.path().join("backups")).unwrap();
    std::fs::write(
        root.join("etc/l0.conf"),
        format!(
            "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\n",
            ldir.display(),
            t.path().join("backups").display()
        ),
    )
    .unwrap();
    let o = run_at(
        &root,
        &[
            "restore".as_ref(),
            "--instance".as_ref(),
            "l0".as_ref(),
            b_leader.as_os_str(),
        ],
    );
    assert!(o.status.success(), "{v}: {}", stderr(&o));
    let warn = stderr(&o)
        .lines()
        .find(|l| l.starts_with("synbackup: warning:") && l.contains("nexus index"))
        .map(String::from)
        .unwrap_or_else(|| panic!("{v}: no warning:\n{}", stderr(&o)));
    assert!(
        warn.contains(&format!("at nexus index {x_leader}, the backup at {y}"))
            && warn.contains("must be re-seeded from the restored leader"),
        "{v}: {warn}"
    );
    let st: Value =
        serde_json::from_slice(&std::fs::read(root.join("state/l0.restore.json")).unwrap())
            .unwrap();
    let n = &st["details"]["nexus"];
    assert_eq!(n["directory_index"], x_leader, "{v}: {st}");
    assert_eq!(n["backup_index"], y, "{v}: {st}");
    assert_eq!(
        st["details"]["roles"]["directory"]["role"], "leader",
        "{v}: {st}"
    );
    drop(mirror);
}

#[test]
fn leader_and_mirror_2_256() {
    leader_and_mirror(Line::V2);
}

#[test]
fn leader_and_mirror_3x() {
    let Some(root) = syn3::require("leader_and_mirror_3x") else {
        return;
    };
    leader_and_mirror(Line::V3(root));
}
