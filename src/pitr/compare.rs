// SPDX-License-Identifier: Apache-2.0
//! Archived entries compared with the cell's own log, byte for byte: where the
//! archive and the cell part (the archiver, when it connects) and whether the
//! archive holds the cell's entries before a rotation (`nexus-trim`, before it
//! culls them from the cell).
//!
//! The cell's entries come from `getNexusChanges(FIRST, wait=False)`, the
//! archived ones from the archive's records; an entry the cell no longer holds
//! (its log culled before it) is skipped, not compared.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rmpv::Value;

use crate::engine::telepath::{Client, Next, Yielded};
use crate::pitr::archive::{self, Entry};

/// How many of the newest archived entries are compared with the cell's.
pub(crate) const WINDOW: u64 = 4096;

/// What comparing archived entries with the cell's log found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Comparison {
    /// None of the archived entries is in the cell's log (none given, or the
    /// cell's log begins after the last of them).
    NothingCompared,
    /// Every archived entry the cell still holds is the cell's, byte for byte
    /// (`compared` of them, from `first` on).
    Agree { first: u64, compared: u64 },
    /// The archived entry at `offset` is not the cell's (other bytes, or the
    /// cell's log ends before it); `first` when it is the first one compared.
    Parts { offset: u64, first: bool },
}

/// The offset and the entry's bytes of a `getNexusChanges` item `[offs, entry]`.
pub(crate) fn split_item(y: &Yielded) -> Result<(u64, Vec<u8>)> {
    let arr = y
        .value
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| anyhow!("getNexusChanges yielded {}, not [offset, entry]", y.value))?;
    let offs = arr[0]
        .as_u64()
        .ok_or_else(|| anyhow!("getNexusChanges yielded a bad offset {}", arr[0]))?;
    let mut cur = y.raw.as_slice();
    let bad = || anyhow!("getNexusChanges item of an unexpected encoding");
    rmp::decode::read_array_len(&mut cur).map_err(|_| bad())?;
    let _: u64 = rmp::decode::read_int(&mut cur).map_err(|_| bad())?;
    Ok((offs, cur.to_vec()))
}

/// The newest archived entries of the archive `dir` before `upto`, up to
/// [`WINDOW`] of them: what is compared with the cell's.
pub(crate) fn archived_before(dir: &Path, upto: u64) -> Result<Vec<Entry>> {
    Ok(archive::entries_from(dir, upto.saturating_sub(WINDOW))?
        .into_iter()
        .filter(|e| e.offset < upto)
        .collect())
}

/// Compare `archived` (in offset order) with the log of the cell on `sock`.
pub(crate) fn with_cell(sock: &Path, archived: &[Entry]) -> Result<Comparison> {
    let Some(start) = archived.first().map(|e| e.offset) else {
        return Ok(Comparison::NothingCompared);
    };
    let mut client = Client::connect(sock, Duration::from_secs(30))?;
    let mut stream = client.stream(
        "getNexusChanges",
        vec![Value::from(start)],
        vec![("wait", false.into())],
    )?;
    let mut first_compared = None;
    let mut compared = 0;
    let mut pending = None;
    for want in archived {
        let cells = match pending.take() {
            Some(c) => Some(c),
            None => match stream.next_within(Some(Duration::from_secs(30)))? {
                Next::Item(y) if !y.value.is_nil() => Some(split_item(&y)?),
                _ => None,
            },
        };
        let Some((offs, entry)) = cells else {
            // The cell's log ends before the archive's entry.
            if first_compared.is_none() {
                return Ok(Comparison::NothingCompared);
            }
            return Ok(Comparison::Parts {
                offset: want.offset,
                first: false,
            });
        };
        if offs > want.offset {
            // The cell's log begins later (culled): compare from there.
            pending = Some((offs, entry));
            continue;
        }
        if offs != want.offset || archive::entry_bytes(&want.record) != Some(&entry[..]) {
            return Ok(Comparison::Parts {
                offset: want.offset,
                first: first_compared.is_none(),
            });
        }
        first_compared.get_or_insert(want.offset);
        compared += 1;
    }
    Ok(match first_compared {
        Some(first) => Comparison::Agree { first, compared },
        None => Comparison::NothingCompared,
    })
}
