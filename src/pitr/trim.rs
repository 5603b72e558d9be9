// SPDX-License-Identifier: Apache-2.0
//! `nexus-trim`: trim the cell's nexus log as Synapse's `trimNexsLog` does, with
//! the nexus archive as one more consumer, so a trim never cuts an entry the
//! archive (or a mirror) has not got.
//!
//! Synapse's calls (the same on 2.256.0 and 3.7.0, `synapse/lib/cell.py`):
//! `rotateNexsLog()` starts a new log slab at the current index and returns its
//! first offset R (the rotation is itself a nexus entry, at R - 1);
//! `cullNexsLog(offs)` removes the entries up to and including `offs` (whole
//! slabs from disk; the cell keeps at least its last entry), itself a nexus
//! entry. `trimNexsLog(consumers)` rotates, waits for each consumer (a telepath
//! URL) to have written R - 1, and culls R - 1; the archive is not a telepath
//! consumer, so the steps are run here: refuse first what would break the chain
//! (a damaged segment or a gap a kept backup needs, a mirror of
//! `SYNBACKUP_MIRRORS` that does not answer, unless `--force-mirror` names it); rotate;
//! wait (bounded) until the archive holds every entry before R and every
//! reachable mirror has applied them; cull R - 1. When the archiver or a mirror
//! does not get there in time, nothing is culled (the rotation alone removes
//! nothing) and the trim is refused.
//!
//! "Holds" means the cell's own entries: the archive's newest entries before R
//! are compared with the cell's, byte for byte (`compare`). A cell restored or
//! killed before its log was written comes back behind its archive, which then
//! holds other entries at the offsets the cell reuses until the archiver
//! connects and sets them aside; counting those would cull entries of the
//! cell's that nothing has archived.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rmpv::Value;

use crate::base::exit::{fail, Code};
use crate::engine::telepath::Client;
use crate::instance::config::Instance;
use crate::pitr::archive::{self, Seg};
use crate::pitr::compare::{self, Comparison};
use crate::pitr::{chain, live};

/// How `nexus-trim` runs.
pub(crate) struct Options {
    /// How long the archive and the mirrors get to reach the rotation.
    pub(crate) wait: Duration,
    /// Mirrors that may be unreachable (their directories).
    pub(crate) force: Vec<PathBuf>,
    pub(crate) dry_run: bool,
}

fn refuse(why: String) -> anyhow::Error {
    fail(Code::TrimRefused, format!("nexus-trim refused: {why}"))
}

/// One past the newest entry on disk in the archive `dir` (None: empty): the
/// newest segment's name, or its records when it is open.
pub(crate) fn archived_next(dir: &Path) -> Result<Option<u64>> {
    archive::read_listed(dir, |mut segs| {
        let Some(last) = segs.pop() else {
            return Ok(None);
        };
        match last {
            Seg::Closed { last, .. } => Ok(Some(last + 1)),
            Seg::Open { path, first } => {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let (_, entries) = archive::parse_records(&bytes);
                Ok(Some(entries.last().map_or(first, |e| e.offset + 1)))
            }
        }
    })
}

/// The nexus index of each mirror that answers; unreachable ones are refused
/// unless forced (then left out, with a warning).
fn mirror_indexes(inst: &Instance, force: &[PathBuf]) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for m in &inst.sources.mirrors {
        // A mirror named by URL is forced by its text as printed (masked).
        let shown = m.to_string();
        let forced = force.iter().any(|f| match m.dir() {
            Some(d) => f == d,
            None => f.as_os_str() == shown.as_str(),
        });
        match Client::open(m, Duration::from_secs(10)).and_then(|mut c| c.cell_state()) {
            Ok(s) => out.push((shown, s.nexus_index)),
            Err(e) if forced => {
                log::warn!(
                    "the mirror {shown} does not answer ({e:#}); trimming without it (--force-mirror): it will have to be re-seeded if it was behind"
                );
            }
            Err(e) => {
                return Err(refuse(format!(
                    "the mirror {shown} (SYNBACKUP_MIRRORS) does not answer ({e:#}), so what it has applied is unknown: start it, or pass --force-mirror {shown} to trim without it"
                )))
            }
        }
    }
    Ok(out)
}

/// Trim the nexus log of `inst`'s cell as far as the archive and the mirrors
/// allow; the line to print.
pub(crate) fn trim(inst: &Instance, opts: &Options) -> Result<String> {
    let c = chain::inspect(&inst.backup_root, &inst.name, chain::Depth::Changed)?;
    if !c.present {
        return Err(refuse(format!(
            "{} holds no nexus archive: a trim would cut entries nothing has archived (start synbackup-nexus@{}.service first)",
            c.archive, inst.name
        )));
    }
    if let Some(p) = c.damaged.first().cloned().or_else(|| {
        c.problems()
            .into_iter()
            .find(|p| p.contains("misses offsets"))
    }) {
        return Err(refuse(format!(
            "{p}; mend the archive before trimming the log (synbackup verify --instance {})",
            inst.name
        )));
    }
    let cell = live::ask(&inst.service_dir)?.ok_or_else(|| {
        refuse(format!(
            "no cell answers on {}",
            inst.service_dir.join("sock").display()
        ))
    })?;
    if !cell.nexslog {
        return Err(refuse(live::nexslog_off(&inst.service_dir)));
    }
    let mirrors = mirror_indexes(inst, &opts.force)?;
    let dir = archive::dir_of(&inst.backup_root);
    let next = archived_next(&dir)?.unwrap_or(0);
    let sock = inst.service_dir.join("sock");
    if opts.dry_run {
        let safe = mirrors
            .iter()
            .map(|(_, i)| *i)
            .fold(next.min(cell.nexus_index), u64::min);
        let parted = match safe {
            0 => None,
            _ => not_the_cells(&sock, &dir, safe)?,
        };
        return Ok(match safe.checked_sub(1) {
            Some(_) if parted.is_some() => format!(
                "would cull nothing now: the nexus archive {} does not hold the cell's own entries before {safe}: {} (the archiver sets them aside when it connects)",
                dir.display(),
                parted.unwrap_or_default()
            ),
            Some(upto) => format!(
                "would rotate the nexus log of {} at index {} and cull it up to offset {} once the archive (now at {next}) and the mirrors ({}) have every entry before the rotation; now {upto} would be safe",
                inst.service_dir.display(),
                cell.nexus_index,
                cell.nexus_index,
                describe(&mirrors),
            ),
            None => format!(
                "would cull nothing: the archive holds no entry of {} yet",
                inst.service_dir.display()
            ),
        });
    }
    let mut client = Client::connect(&sock, Duration::from_secs(30))?;
    let rotated = client
        .call("rotateNexsLog", vec![], vec![])?
        .as_u64()
        .ok_or_else(|| anyhow!("rotateNexsLog did not answer an offset"))?;
    log::info!(
        "rotated the nexus log of {} at {rotated}; waiting up to {} s for the archive and the mirrors",
        inst.service_dir.display(),
        opts.wait.as_secs()
    );
    let until = Instant::now() + opts.wait;
    loop {
        let next = archived_next(&dir)?.unwrap_or(0);
        let behind: Vec<(String, u64)> = mirror_indexes(inst, &opts.force)?
            .into_iter()
            .filter(|(_, i)| *i < rotated)
            .collect();
        // Far enough, and the cell's own entries: an archive the cell came back
        // behind holds other entries at the same offsets until the archiver
        // sets them aside.
        let parted = if next >= rotated && behind.is_empty() {
            match not_the_cells(&sock, &dir, rotated)? {
                None => break,
                why => why,
            }
        } else {
            None
        };
        // Each comparison streams up to 4096 entries from the cell: while the
        // archive holds another history, the archiver needs a reconnect (seconds)
        // to mend it, so ask less often.
        let pause = Duration::from_millis(if parted.is_some() { 2000 } else { 200 });
        if Instant::now() >= until {
            let who = if let Some(why) = parted {
                format!(
                    "the nexus archive {} does not hold the cell's own entries before the rotation at {rotated}: {why} (the cell came back behind its archive; synbackup-nexus@{}.service sets the archived ones aside when it connects, then archives the cell's)",
                    dir.display(),
                    inst.name
                )
            } else if next < rotated {
                format!(
                    "the nexus archiver is behind: the archive {} holds entries up to {} and the log was rotated at {rotated} (is synbackup-nexus@{}.service running?)",
                    dir.display(),
                    next.saturating_sub(1),
                    inst.name
                )
            } else {
                format!(
                    "mirrors behind the rotation at {rotated}: {}",
                    describe(&behind)
                )
            };
            return Err(refuse(format!(
                "{who}; nothing was culled (the rotation alone removes nothing)"
            )));
        }
        crate::base::interrupt::check()?;
        std::thread::sleep(pause);
    }
    let upto = rotated - 1;
    let culled = client.call("cullNexsLog", vec![Value::from(upto)], vec![])?;
    if culled.as_bool() != Some(true) {
        return Err(fail(
            Code::Other,
            format!(
                "the cell on {} did not cull its nexus log up to {upto} (cullNexsLog answered {culled}; it keeps at least its last entry)",
                inst.service_dir.display()
            ),
        ));
    }
    Ok(format!(
        "culled the nexus log of {} up to offset {upto} (the archive and {} have every entry up to it)",
        inst.service_dir.display(),
        if mirrors.is_empty() {
            "no mirrors".to_string()
        } else {
            describe(&mirrors)
        }
    ))
}

/// Why the archive in `dir` does not hold the cell's own entries before `upto`
/// (None: the newest of them, up to [`compare::WINDOW`], are the cell's byte for
/// byte, `upto - 1` included).
fn not_the_cells(sock: &Path, dir: &Path, upto: u64) -> Result<Option<String>> {
    let archived = compare::archived_before(dir, upto)?;
    let Some(last) = archived.last().map(|e| e.offset) else {
        return Ok(Some(format!("it holds no entry before {upto}")));
    };
    Ok(match compare::with_cell(sock, &archived)? {
        Comparison::Agree { .. } if last + 1 == upto => None,
        Comparison::Agree { .. } => Some(format!("its entry {} is missing", upto - 1)),
        Comparison::Parts { offset, .. } => Some(format!(
            "its entry {offset} is not the cell's, byte for byte"
        )),
        Comparison::NothingCompared => Some(format!(
            "the cell's log holds none of its entries {}-{last}",
            archived[0].offset
        )),
    })
}

fn describe(mirrors: &[(String, u64)]) -> String {
    if mirrors.is_empty() {
        return "none".to_string();
    }
    mirrors
        .iter()
        .map(|(m, i)| format!("{m} at {i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
