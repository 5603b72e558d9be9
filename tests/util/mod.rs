// SPDX-License-Identifier: Apache-2.0
//! Shared helpers for the integration tests: run the real binary, build real LMDB
//! environments and service directories, start real Synapse Cortex processes of
//! either release line (`line`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod certs;
pub mod line;
pub mod syn3;

pub use line::Line;

use lmdb::{Cursor, DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags};

/// A command for `program` whose process keeps none of this process's descriptors
/// but the standard three. Every test starts its programs through this. The tests
/// run as threads of one process, and LMDB opens data.mdb without O_CLOEXEC: a
/// program started while another test had an environment open kept that test's
/// data.mdb open for as long as it ran (a Cortex, a synbackup run and the programs
/// it starts), and that test's restore was refused as "in use by python".
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: close_range is async-signal-safe; it only sets close-on-exec, on the
    // descriptors above the standard ones the child has been given.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The binary under test.
pub fn bin() -> Command {
    let mut c = command(env!("CARGO_BIN_EXE_synbackup"));
    c.env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("SYNBACKUP_FAULT");
    c
}

/// Run the binary with `args`, capturing output.
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = bin();
    for a in args {
        c.arg(a);
    }
    c.output().expect("run synbackup")
}

/// The binary pointed at a test host's instance directories under `root`:
/// `etc/` (the instance configs), `state/`, `lock/` and `metrics/`.
pub fn bin_at(root: &Path) -> Command {
    let mut c = bin();
    for (flag, dir) in [
        ("--config-dir", "etc"),
        ("--state-dir", "state"),
        ("--lock-dir", "lock"),
        ("--metrics-dir", "metrics"),
    ] {
        c.arg(flag).arg(root.join(dir));
    }
    c
}

/// Run [`bin_at`]`(root)` with `args`, capturing output.
pub fn run_at(root: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Output {
    bin_at(root).args(args).output().expect("run synbackup")
}

/// The manifest of the backup at `backup`.
pub fn manifest(backup: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(backup.join("synbackup-manifest.json")).unwrap()).unwrap()
}

/// Poll `cond` every 20 ms until it holds (true) or `secs` have passed (false).
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error lines synbackup printed (`synbackup: error: ...`).
pub fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("synbackup: error:"))
        .map(String::from)
        .collect()
}

/// Assert a run failed with `code` and exactly one error line containing `needle`.
pub fn assert_fails(o: &Output, code: i32, needle: &str) {
    let errs = error_lines(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code; stderr:\n{}",
        stderr(o)
    );
    assert_eq!(errs.len(), 1, "want one error line, got:\n{}", stderr(o));
    assert!(
        errs[0].contains(needle),
        "error line {:?} should contain {needle:?}",
        errs[0]
    );
}

/// A deterministic pseudo-random sequence (xorshift), so tests need no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Create an LMDB environment like Synapse's: writemap (a sparse file as large as the
/// map), several named databases (one dupsort), values of mixed sizes (some on
/// overflow pages), and about a third of the keys deleted again (free pages).
pub fn make_env(dir: &Path, seed: u64, entries: usize) {
    fs::create_dir_all(dir).unwrap();
    let env = Environment::new()
        .set_flags(EnvironmentFlags::WRITE_MAP | EnvironmentFlags::NO_SYNC)
        .set_max_dbs(64)
        .set_map_size(256 << 20)
        .open(dir)
        .unwrap();
    let mut rng = Rng::new(seed);
    let names = ["nodes", "props", "tags", "edges", "meta"];
    for (i, name) in names.iter().enumerate() {
        let flags = if *name == "tags" {
            DatabaseFlags::DUP_SORT
        } else {
            DatabaseFlags::empty()
        };
        let db = env.create_db(Some(name), flags).unwrap();
        let mut txn = env.begin_rw_txn().unwrap();
        for k in 0..entries {
            let key = format!("{name}:{k:08}:{}", rng.below(1000));
            // dupsort values are limited to LMDB's key size (511 bytes).
            let size = match rng.below(20) {
                _ if *name == "tags" => 8 + (k % 40),
                0 => 5000 + rng.below(3000) as usize, // overflow pages
                1..=5 => 300,
                _ => 20 + (k % 50),
            };
            let val: Vec<u8> = (0..size)
                .map(|j| ((j as u64 + seed + i as u64) % 251) as u8)
                .collect();
            txn.put(db, &key, &val, WriteFlags::empty()).unwrap();
            if *name == "tags" {
                txn.put(db, &key, b"second-dup", WriteFlags::empty())
                    .unwrap();
            }
            if k % 3 == 0 {
                txn.del(db, &key, None).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    env.sync(true).unwrap();
}

/// Every record of every named database: db name -> [(key, value)].
/// Every record of one database, in order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

pub fn dump_env(dir: &Path) -> BTreeMap<String, Records> {
    let size = fs::metadata(dir.join("data.mdb")).unwrap().len() as usize;
    let env = Environment::new()
        .set_flags(EnvironmentFlags::READ_ONLY | EnvironmentFlags::NO_LOCK)
        .set_max_dbs(16384)
        .set_map_size(size.max(1 << 20))
        .open(dir)
        .unwrap();
    let main = env.open_db(None).unwrap();
    let mut names = Vec::new();
    {
        let txn = env.begin_ro_txn().unwrap();
        let mut cur = txn.open_ro_cursor(main).unwrap();
        for item in cur.iter_start() {
            let (k, _) = item.unwrap();
            names.push(String::from_utf8(k.to_vec()).unwrap());
        }
    }
    // Database handles first: a handle opened later is not valid in an older txn.
    let dbs: Vec<_> = names
        .iter()
        .map(|n| (n.clone(), env.open_db(Some(n)).unwrap()))
        .collect();
    let txn = env.begin_ro_txn().unwrap();
    let mut out = BTreeMap::new();
    for (name, db) in dbs {
        let mut cur = txn.open_ro_cursor(db).unwrap();
        let recs: Vec<_> = cur
            .iter_start()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        out.insert(name, recs);
    }
    out
}

/// A Synapse-shaped service directory with real LMDB environments and the runtime
/// files a backup must leave out.
pub fn fake_service(dir: &Path, entries: usize) {
    fs::create_dir_all(dir.join("certs/users")).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(dir.join("cell.guid"), "0123456789abcdef0123456789abcdef").unwrap();
    for (f, mode) in [
        ("sslkey.pem", 0o600),
        ("cookie.secret", 0o600),
        ("sslcert.pem", 0o644),
        ("certs/users/u.key", 0o600),
    ] {
        fs::write(dir.join(f), format!("secret {f}")).unwrap();
        fs::set_permissions(dir.join(f), fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::set_permissions(dir.join("certs"), fs::Permissions::from_mode(0o700)).unwrap();
    make_env(&dir.join("slabs/cell.lmdb"), 1, entries);
    make_env(&dir.join("layers/abc/layer_v2.lmdb"), 2, entries * 2);
    make_env(&dir.join("axon/blob.lmdb"), 3, entries / 2);
    fs::write(dir.join("slabs/cell.opts.yaml"), "map_size: 268435456\n").unwrap();
    // A sparse plain file: must stay sparse.
    let f = fs::File::create(dir.join("layers/abc/sparse.bin")).unwrap();
    f.set_len(32 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"data in the middle", 8 << 20).unwrap();
    for d in ["tmp/x.lmdb", "backups/old", "sockets", "axon/tmp"] {
        fs::create_dir_all(dir.join(d)).unwrap();
        fs::write(dir.join(d).join("junk"), "never copied").unwrap();
    }
    std::os::unix::fs::symlink("cell.guid", dir.join("guid-link")).unwrap();
}

/// BLAKE3 of every regular file under `dir` except `lock.mdb` (readers register
/// there, so it changes whenever anything reads an environment).
pub fn hash_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &r, out);
            } else if ft.is_file() && e.file_name() != "lock.mdb" {
                let bytes = fs::read(root.join(&r)).unwrap();
                out.insert(
                    r.to_string_lossy().into_owned(),
                    blake3::hash(&bytes).to_hex().to_string(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// Entry counts per named database as the real `mdb_stat -a` prints them.
pub fn mdb_stat_counts(env_dir: &Path) -> BTreeMap<String, u64> {
    let out = command("mdb_stat")
        .arg("-a")
        .arg(env_dir)
        .output()
        .expect("mdb_stat (lmdb-utils) installed");
    assert!(
        out.status.success(),
        "mdb_stat {}: {}",
        env_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("Status of ") {
            current = Some(name.to_string());
        } else if let Some(n) = line.trim().strip_prefix("Entries: ") {
            if let Some(name) = current.take() {
                counts.insert(name, n.parse().unwrap());
            }
        }
    }
    counts
}

/// The venv with the real Synapse (made by `.ci/setup`).
pub fn venv() -> PathBuf {
    venv_from(
        "SYNBACKUP_TEST_VENV",
        "venv-synapse-2.256.0",
        "Synapse venv",
    )
}

pub fn python() -> PathBuf {
    venv().join("bin/python")
}

/// The venv with the older Synapse of the upgrade rehearsal (`.ci/setup`).
pub fn python_old() -> PathBuf {
    venv_from(
        "SYNBACKUP_TEST_VENV_OLD",
        "venv-synapse-2.230.0",
        "older Synapse venv",
    )
    .join("bin/python")
}

/// The venv `var` names, else `.ci/setup`'s `default` under its cache; it must exist.
fn venv_from(var: &str, default: &str, what: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/var/cache/synbackup-ci").join(default));
    assert!(
        p.join("bin/python").exists(),
        "no {what} at {} (set {var} or run .ci/setup)",
        p.display()
    );
    p
}

/// A real Cortex process of a release line on a directory; stopped (SIGTERM, then
/// waited, then what is left of its process group ended) on drop.
pub struct Cortex {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub line: Line,
    child: Option<Child>,
}

/// The plain server or the patched one (`tests/util/patched_cortex.py`).
enum Server<'a> {
    Plain,
    Patched(&'a [(&'a str, &'a str)]),
}

impl Cortex {
    /// Start a Cortex of `line` on `dir` (created if needed) and wait until it
    /// answers `getCellInfo`.
    pub fn start(line: Line, dir: &Path) -> Cortex {
        Cortex::launch(line, line.py(&[]), Server::Plain, dir, "tcp://127.0.0.1:0")
    }

    /// Start a Cortex with the Python of another 2.x install (the upgrade rehearsal).
    pub fn start_with_python(dir: &Path, python: &Path) -> Cortex {
        Cortex::launch(
            Line::V2,
            command(python),
            Server::Plain,
            dir,
            "tcp://127.0.0.1:0",
        )
    }

    /// Start a real Cortex through `tests/util/patched_cortex.py`, which patches
    /// the functions the `SYNTEST_*` variables in `env` select (or, with
    /// `SYNTEST_CONTROL`, the lines of that file at each call).
    pub fn start_patched(line: Line, dir: &Path, env: &[(&str, &str)]) -> Cortex {
        Cortex::launch(
            line,
            line.py(env),
            Server::Patched(env),
            dir,
            "tcp://127.0.0.1:0",
        )
    }

    /// Start a real Cortex listening on the telepath URL `telepath` (besides its
    /// unix socket), with `env` in its environment (`SYN_CERT_DIR`, ...).
    pub fn start_with(line: Line, dir: &Path, telepath: &str, env: &[(&str, &str)]) -> Cortex {
        Cortex::launch(line, line.py(env), Server::Plain, dir, telepath)
    }

    /// Start a real Cortex through `tests/util/patched_cortex.py` and return at
    /// once, without waiting for it to answer (`SYNTEST_DELAY_LISTEN`: a booting cell).
    pub fn spawn_patched(line: Line, dir: &Path, env: &[(&str, &str)]) -> Cortex {
        Cortex::spawn(
            line,
            line.py(env),
            Server::Patched(env),
            dir,
            "tcp://127.0.0.1:0",
        )
    }

    fn launch(line: Line, cmd: Command, server: Server, dir: &Path, telepath: &str) -> Cortex {
        let mut c = Cortex::spawn(line, cmd, server, dir, telepath);
        let d = c.url_dir().to_string();
        if !line.storm_status(&["wait", &d, "--timeout", "120"]) {
            c.stop();
            panic!(
                "Cortex {} on {d} did not come up; its log:\n{}",
                line.version(),
                c.log_text()
            );
        }
        c
    }

    fn spawn(line: Line, mut cmd: Command, server: Server, dir: &Path, telepath: &str) -> Cortex {
        // A 3.x server sees only some host directories (`syn3::in_root`).
        assert!(
            line == Line::V2 || syn3::bound_dirs().iter().any(|b| dir.starts_with(b)),
            "a 3.x Cortex's directory must be under one of {:?}",
            syn3::bound_dirs()
        );
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let log = dir.with_extension("log");
        let logf = fs::File::create(&log).unwrap();
        match server {
            Server::Patched(env) => {
                cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/util/patched_cortex.py"));
                cmd.envs(env.iter().copied());
            }
            Server::Plain => {
                cmd.args(["-m", "synapse.servers.cortex"]);
            }
        }
        // Its own process group, ended after it: a worker it forked (both lines
        // run multiprocessing helpers) cannot outlive the test.
        let child = cmd
            .args(["--telepath", telepath, "--https", "0"])
            .arg(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        Cortex {
            dir: dir.to_path_buf(),
            log,
            line,
            child: Some(child),
        }
    }

    /// storm.py's `info`: the cell's iden, run, paused, active, nexus index and
    /// upstream, as JSON.
    pub fn info(&self) -> serde_json::Value {
        serde_json::from_str(&self.storm("info", &[])).unwrap()
    }

    /// storm.py VERB DIR REST... against this Cortex; its stdout (panics on failure).
    pub fn storm(&self, verb: &str, rest: &[&str]) -> String {
        let mut args = vec![verb, self.url_dir()];
        args.extend_from_slice(rest);
        self.line.storm(&args)
    }

    /// Add `n` IPv4 nodes (the line's form) from the `start`-th address, tagged
    /// `#synbackup.test`; the number of nodes so tagged now.
    pub fn add(&self, n: u32, start: u32) -> u64 {
        self.storm("add", &[&n.to_string(), "--start", &start.to_string()])
            .parse()
            .unwrap()
    }

    /// IPv4 nodes (`inet:ipv4` or `inet:ip`) in the Cortex.
    pub fn count(&self) -> u64 {
        self.count_of(self.line.ip_form())
    }

    /// How many nodes `query` yields (Synapse's own `count`).
    pub fn count_of(&self, query: &str) -> u64 {
        self.storm("count", &[query]).parse().unwrap()
    }

    /// storm.py's writer: one edit at a time from the `start`-th address until killed.
    pub fn writer(&self, start: u32) -> Child {
        self.line
            .storm_spawn(&["writer", self.url_dir(), "--start", &start.to_string()])
    }

    /// The server's process id (the chain of execs of `in-root` keeps it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn url_dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// SIGTERM and wait (SIGKILL after 60 s), then end what is left of its group.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix_kill(child.id() as i32, 15);
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: kill(2) on the group the child led; ESRCH when none is left.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `getCellInfo()['cell']['paused']`, through Synapse's own client.
    pub fn paused(&self) -> bool {
        match self.storm("paused", &[]).as_str() {
            "True" => true,
            "False" => false,
            other => panic!("storm.py paused printed {other:?}"),
        }
    }

    /// True when the Cortex answers `getCellInfo` within `secs` seconds.
    pub fn answers(&self, secs: u32) -> bool {
        self.line
            .storm_status(&["wait", self.url_dir(), "--timeout", &secs.to_string()])
    }

    /// True when an edit adding the address `addr` (dotted) completes within `secs`.
    pub fn takes_edit(&self, addr: &str, secs: u32) -> bool {
        self.line.storm_status(&[
            "storm",
            self.url_dir(),
            &format!("[{}={addr}]", self.line.ip_form()),
            "--timeout",
            &secs.to_string(),
        ])
    }
}

impl Drop for Cortex {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn nix_kill(pid: i32, sig: i32) -> std::io::Result<()> {
    let st = command("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// Read `reader` until a line contains `needle` (panics if it ends first),
/// appending every line read to `seen`.
pub fn read_until(reader: &mut impl std::io::BufRead, needle: &str, seen: &mut Vec<String>) {
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "ended before a line with {needle:?}:\n{}",
            seen.join("")
        );
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return;
        }
    }
}

/// Read `child`'s piped stderr until a line contains `needle` (panics if it ends
/// first); the rest is drained in the background (echoed to the test's stderr) so
/// the child never blocks on it.
/// Returns the lines read.
pub fn stderr_until(child: &mut Child, needle: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut lines = Vec::new();
    read_until(&mut reader, needle, &mut lines);
    // Echoed: the test harness shows them when the test fails.
    std::thread::spawn(move || {
        for l in reader.lines().map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    lines
}

/// Names in a directory (sorted).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A tmpfs mounted on `dir` for the life of the guard (tests run as root).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs with mount options `opts` (e.g. `size=1m`) on a new `dir`.
    pub fn mount(dir: &Path, opts: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test mounts a tmpfs: run the suite as root (CI does)"
        );
        fs::create_dir_all(dir).unwrap();
        let st = command("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = command("umount").arg(&self.0).status();
    }
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `full_listing` of each of `dirs`, one after the other.
pub fn full_listings(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter().flat_map(|d| full_listing(d)).collect()
}

/// Every entry under `dir` (itself included) with its type, size, mtime (ns),
/// owner and mode, one line each, sorted: what a run that must change nothing
/// (a `--dry-run`) is compared by. A missing `dir` lists as one line saying so.
pub fn full_listing(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        let Ok(m) = fs::symlink_metadata(p) else {
            out.push(format!("{} missing", p.display()));
            return;
        };
        let rel = p.strip_prefix(root).unwrap_or(p).display().to_string();
        out.push(format!(
            "{rel} {:o} {} {}.{} {}:{}",
            m.mode(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.uid(),
            m.gid()
        ));
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `chown -R uid:gid dir` (links themselves, not what they point to).
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in fs::read_dir(dir).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// `read_bytes` of /proc/PID/io: what the process, its threads and its reaped
/// children had the block layer read for them.
pub fn read_bytes(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every `data.mdb` under `dir`.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(data_files(&p));
        } else if p.file_name().is_some_and(|n| n == "data.mdb") {
            out.push(p);
        }
    }
    out
}

/// Flip one byte inside `file`'s data (at 3 pages + 100), its size unchanged.
pub fn flip_byte(file: &Path) {
    flip_byte_at(file, 3 * 4096 + 100);
}

/// XOR the byte of `file` at `at` (a second call puts it back), synced.
pub fn flip_byte_at(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}
