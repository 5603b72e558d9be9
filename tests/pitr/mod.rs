// SPDX-License-Identifier: Apache-2.0
//! What the point-in-time recovery tests share: a Cortex with its nexus log on,
//! an instance configured for it, and the archive read back.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::util::*;

/// A Cortex of `line` with `nexslog:en: true` in `DIR/cell.yaml`, and instance
/// `c0` (SYNBACKUP_SERVICE_DIR=DIR, backups in ROOT/backups) under `root`.
pub struct Pitr {
    pub root: PathBuf,
    pub dir: PathBuf,
    pub backups: PathBuf,
    pub core: Cortex,
}

impl Pitr {
    pub fn start(line: Line, base: &Path, nexslog: bool) -> Pitr {
        let root = base.join("host");
        let dir = base.join("cortex");
        let backups = base.join("backups");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&backups).unwrap();
        fs::write(dir.join("cell.yaml"), format!("nexslog:en: {nexslog}\n")).unwrap();
        fs::write(
            root.join("etc/c0.conf"),
            format!(
                "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\n",
                dir.display(),
                backups.display()
            ),
        )
        .unwrap();
        let core = Cortex::start(line, &dir);
        Pitr {
            root,
            dir,
            backups,
            core,
        }
    }

    /// `synbackup nexus-archive c0` started, its stderr appended to ROOT/archiver.log.
    pub fn archiver(&self, segment_bytes: u64) -> Child {
        self.archiver_with(segment_bytes, &[])
    }

    /// [`Pitr::archiver`] with `env` in its environment (`SYNBACKUP_FAULT`, ...).
    pub fn archiver_with(&self, segment_bytes: u64, env: &[(&str, &str)]) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("archiver.log"))
            .unwrap();
        bin_at(&self.root)
            .args(["-v", "nexus-archive", "c0", "--segment-bytes"])
            .arg(segment_bytes.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// The cell's nexus index (the offset its next change gets).
    pub fn index(&self) -> u64 {
        self.core.info()["nexus_index"].as_u64().unwrap()
    }

    /// The service directory copied to `to` as it is (`cp -a`; the cell stopped).
    pub fn copy_dir(&self, to: &Path) {
        let st = command("cp")
            .arg("-a")
            .arg(&self.dir)
            .arg(to)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "cp -a {} {}",
            self.dir.display(),
            to.display()
        );
    }

    /// The cell stopped, its directory replaced by `from` (a copy made earlier)
    /// and started again: it comes back as it was then.
    pub fn put_back(&mut self, from: &Path) {
        let line = self.core.line;
        self.core.stop();
        fs::remove_dir_all(&self.dir).unwrap();
        fs::rename(from, &self.dir).unwrap();
        self.core = Cortex::start(line, &self.dir);
    }

    /// What the archivers logged.
    pub fn archiver_log(&self) -> String {
        fs::read_to_string(self.root.join("archiver.log")).unwrap_or_default()
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.backups.join("nexus-archive")
    }

    /// Wait until the archive holds every entry before the cell's index now.
    pub fn wait_archived(&self, secs: u64) -> u64 {
        let want = self.index();
        assert!(
            wait_for(secs, || archived(&self.archive_dir())
                .last()
                .is_some_and(|r| r.offset + 1 >= want)),
            "the archive did not reach offset {want} in {secs} s (it has {:?})",
            archived(&self.archive_dir()).last().map(|r| r.offset)
        );
        want
    }
}

/// One archived record: `[offset, received_us, ENTRY]`.
#[derive(Debug)]
pub struct Record {
    pub offset: u64,
    pub received_us: u64,
    /// ENTRY's bytes.
    pub entry: Vec<u8>,
}

/// Every record in the archive's segments (`*.seg`, closed ones by name, then the
/// open one), read with an independent msgpack decoder; read again when a running
/// archiver closed a segment while it was read.
pub fn archived(dir: &Path) -> Vec<Record> {
    loop {
        if let Some(recs) = try_archived(dir) {
            return recs;
        }
    }
}

fn try_archived(dir: &Path) -> Option<Vec<Record>> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    // `open-...` sorts after the hex names of closed segments.
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("{}: {e}", p.display()),
        };
        let mut cur = bytes.as_slice();
        while !cur.is_empty() {
            let mut c = cur;
            let (Ok(3), Ok(offset), Ok(received_us)) = (
                rmp::decode::read_array_len(&mut c),
                rmp::decode::read_int::<u64, _>(&mut c),
                rmp::decode::read_int::<u64, _>(&mut c),
            ) else {
                break; // a record being written
            };
            let rest = c;
            if rmpv::decode::read_value(&mut c).is_err() {
                break;
            }
            out.push(Record {
                offset,
                received_us,
                entry: rest[..rest.len() - c.len()].to_vec(),
            });
            cur = c;
        }
    }
    Some(out)
}

/// The offsets of `recs`, checked to run from `from` with no gap or duplicate.
pub fn assert_contiguous(recs: &[Record], from: u64, to: u64) {
    let offs: Vec<u64> = recs.iter().map(|r| r.offset).collect();
    let want: Vec<u64> = (from..to).collect();
    if offs != want {
        let dup = offs.windows(2).find(|w| w[1] <= w[0]);
        let gap = offs.windows(2).find(|w| w[1] > w[0] + 1);
        panic!(
            "archived offsets are not {from}..{to}: {} records, first {:?}, last {:?}, duplicate {dup:?}, gap {gap:?}",
            offs.len(),
            offs.first(),
            offs.last()
        );
    }
}

/// The cell's own log from offset 0, each entry as Synapse encodes it
/// (`getNexusChanges(0, wait=False)` through Synapse's client; hex per line).
pub fn cell_log(line: Line, dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let script = r#"
import sys, asyncio
import synapse.telepath as s_telepath
import synapse.lib.msgpack as s_msgpack
async def main():
    async with await s_telepath.openurl('cell://' + sys.argv[1]) as cell:
        async for offs, item in cell.getNexusChanges(0, wait=False):
            print(offs, s_msgpack.en(item).hex())
asyncio.run(main())
"#;
    let out = line.py(&[]).args(["-c", script]).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (o, h) = l.split_once(' ').unwrap();
            let bytes = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            (o.parse().unwrap(), bytes)
        })
        .collect()
}

/// The archiver's tests.
mod archiver;
/// The chain check and the archive's retention, from the files (quick tier).
pub mod chain;
/// `restore --to` end to end.
mod restore;
/// `nexus-trim` against a lagging and a caught-up archive.
mod trim;
