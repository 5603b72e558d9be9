// SPDX-License-Identifier: Apache-2.0
//! A drilled cell reaches nothing of the host and runs none of production's work,
//! on Synapse 2.256.0 and 3.7.0:
//! - a Cortex whose dmon writes a node every second is backed up; the default
//!   (safemode) drill's check sees no new node in 3 s, and the same drill with
//!   `--no-safemode` fails that check (the dmon runs): the test can fail;
//! - the check tries to reach, and write to, another live Cortex on the host over
//!   its unix socket outside `/tmp` and `/run` (a service synbackup knows nothing of)
//!   and the backup's own live source: neither answers, neither gets the write, and
//!   the report names what was hidden.

use std::path::Path;

use crate::util::{stderr, Cortex, Line};

/// A dmon that adds one `inet:fqdn` under `ticks.example` every second.
const DMON: &str = "$lib.dmon.add(${ while (true) { $lib.time.sleep(1) [ inet:fqdn=`t{$lib.time.now()}.ticks.example` ] } }, name=ticks)";

/// The drill's check: no tick in 3 s, and no `cell://` URL in `urls` answers (each
/// is also sent a write, which must never land).
fn check_query(urls: &[&str]) -> String {
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "$a = $lib.view.get().getFormCounts().\"inet:fqdn\" $lib.time.sleep(3) \
         $b = $lib.view.get().getFormCounts().\"inet:fqdn\" \
         if ($a != $b) {{ $lib.raise(DmonRan, `the dmon added {{($b - $a)}} nodes`) }} \
         $reached = ([]) \
         for $url in ({list},) {{ try {{ $p = $lib.telepath.open($url) \
           $p.callStorm(\"[ inet:fqdn=written-by-drill.example ]\") $reached.append($url) }} \
           catch * as err {{ }} }} \
         if $reached {{ $lib.raise(Leaked, `the drill reached {{$reached}}`) }}"
    )
}

fn drill(backup: &Path, python: &Path, check: &str, extra: &[&str]) -> std::process::Output {
    crate::util::bin()
        .args(["drill", "--dir"])
        .arg(backup)
        .arg("--python")
        .arg(python)
        .args(["--check", check, "--json"])
        .args(extra)
        .output()
        .unwrap()
}

/// The live service on the host the drill must not reach: a 2.256 Cortex whose
/// socket is outside the drill's private `/tmp` and `/run`.
fn other_service() -> (tempfile::TempDir, Cortex) {
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let core = Cortex::start(Line::V2, &t.path().join("other"));
    (t, core)
}

fn written(count: impl Fn(&str) -> u64) -> u64 {
    count("inet:fqdn=written-by-drill.example")
}

/// Back up `src` live, drill it sealed (must pass) and with a full boot (the dmon's
/// check must fail); the host services see no write.
fn case(
    src: &Path,
    python: &Path,
    other: &Cortex,
    src_count: &dyn Fn(&str) -> u64,
    ticks: &dyn Fn() -> u64,
) {
    let t0 = ticks();
    assert!(
        crate::util::wait_for(30, || ticks() > t0),
        "the source's dmon adds ticks"
    );
    let backup = src.parent().unwrap().join("b1");
    let o = crate::util::run(&[&"backup", &src, &backup]);
    assert!(o.status.success(), "{}", stderr(&o));

    let urls = [other.url_dir(), src.to_str().unwrap()];
    let urls: Vec<String> = urls.iter().map(|d| format!("cell://{d}")).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let check = check_query(&urls);
    let o = drill(&backup, python, &check, &[]);
    assert!(o.status.success(), "sealed drill: {}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["safemode"], true);
    let hidden_dirs = report["hidden"]["dirs"].to_string();
    assert!(
        hidden_dirs.contains(src.to_str().unwrap()),
        "the backup's source is hidden: {hidden_dirs}"
    );
    let sockets = report["hidden"]["sockets"].to_string();
    assert!(
        sockets.contains(&format!("{}/sock", other.url_dir())),
        "the other service's socket is covered: {sockets}"
    );
    assert!(
        stderr(&o).contains("sockets of the host hidden"),
        "{}",
        stderr(&o)
    );

    // A full boot runs the dmon: the same check fails, so it can.
    let o = drill(&backup, python, &check, &["--no-safemode"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    // (The error names Storm's class and the message: StormRaise: the dmon ...)
    assert!(stderr(&o).contains("the dmon added"), "{}", stderr(&o));

    assert_eq!(
        written(|q| other.count_of(q)),
        0,
        "the other service got no write"
    );
    assert_eq!(written(src_count), 0, "the live source got no write");
}

/// The case on `line`'s Synapse (the other service is always a 2.256 Cortex: the
/// seal is the host's, whatever runs there).
fn on(line: Line) {
    let (_o, other) = other_service();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("core00");
    let core = Cortex::start(line, &src);
    core.storm("storm", &[DMON]);
    let ticks = || core.count_of("inet:fqdn:domain=ticks.example");
    case(&src, &line.python(), &other, &|q| core.count_of(q), &ticks);
}

#[test]
fn a_drill_reaches_nothing_and_runs_no_dmon_2_256() {
    on(Line::V2);
}

#[test]
fn a_drill_reaches_nothing_and_runs_no_dmon_3_7_0() {
    if let Some(line) = Line::V3.require("a_drill_reaches_nothing_and_runs_no_dmon_3_7_0") {
        on(line);
    }
}

/// The drilled server may write its own `/proc/self` files (a user namespace's
/// `uid_map`: the 3.x tree's Python wrapper makes one as a non-root owner; it
/// failed on "Read-only file system" when the seal made all of `/proc` read-only),
/// never the kernel's tunables under `/proc/sys`. The "server" is a probe script
/// given as the drill's Python: it writes both, says which worked, and exits.
#[test]
fn a_sealed_server_writes_its_own_proc_files_not_the_kernels() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let backup = t.path().join("b");
    let o = crate::util::run(&[&"backup", &Line::V2.fixture(), &backup, &"-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Outside /tmp, which the seal replaces.
    let pt = tempfile::tempdir_in("/var/tmp").unwrap();
    let probe = pt.path().join("probe");
    std::fs::write(
        &probe,
        "#!/bin/sh\n\
         if echo 0 > /proc/self/oom_score_adj 2>/dev/null; then own=yes; else own=no; fi\n\
         v=$(cat /proc/sys/vm/swappiness)\n\
         if echo \"$v\" > /proc/sys/vm/swappiness 2>/dev/null; then sys=yes; else sys=no; fi\n\
         echo \"probe own=$own sys=$sys\"\n\
         exit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = crate::util::bin()
        .args(["drill", "--dir"])
        .arg(&backup)
        .arg("--python")
        .arg(&probe)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("probe own=yes sys=no"),
        "{}",
        stderr(&o)
    );
}
