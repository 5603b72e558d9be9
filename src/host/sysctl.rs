// SPDX-License-Identifier: Apache-2.0
//! Host tuning: the kernel's dirty-page thresholds computed from the host's RAM, as a
//! `sysctl.d` drop-in, applied now, or checked against the running kernel.
//!
//! Synapse's devops guide gives `vm.dirty_background_ratio=2` and `vm.dirty_ratio=4`
//! for a 128 GiB host and says smaller hosts need larger ratios. What matters is the
//! absolute amount of dirty memory the kernel lets pile up before it writes back (and
//! before writers stall), so we keep the 128 GiB host's amounts on every host, capped
//! at the kernel's defaults (10 / 20) on small hosts. With M = MemTotal, R = 128 GiB
//! and x = 2R / M: ratios `min(round(x), 10)` and `min(round(2x), 20)` while x >= 1;
//! above 256 GiB a ratio would have to go below 1 %, so the same amounts are set as
//! `*_bytes` instead.
//!
//! The three fixed settings ship in the static `sysctl.d/60-synbackup.conf`; the
//! drop-in rendered here holds only the RAM-dependent part. `--check` and `--apply`
//! cover all five. The kernel treats a ratio and its `*_bytes` as alternatives
//! (writing one zeroes the other, and a non-zero `*_bytes` wins), which is why a
//! [`Target`] knows its alternative.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::base::fsutil;
use crate::host::procfs;

/// The RAM the guide's ratios were written for.
const REFERENCE: u64 = 128 << 30;
/// 2 % of [`REFERENCE`], rounded down: `vm.dirty_background_bytes` above 256 GiB.
pub(crate) const BACKGROUND_BYTES: u64 = REFERENCE * 2 / 100;
/// 4 % of [`REFERENCE`], rounded down: `vm.dirty_bytes` above 256 GiB.
pub(crate) const DIRTY_BYTES: u64 = REFERENCE * 4 / 100;
/// The kernel's default ratios, never exceeded.
const MAX_BACKGROUND_RATIO: u64 = 10;
const MAX_DIRTY_RATIO: u64 = 20;

/// The settings of the static `sysctl.d/60-synbackup.conf` (keep the two in step).
pub(crate) const FIXED: [(&str, u64); 3] = [
    ("vm.swappiness", 10),
    ("vm.dirty_expire_centisecs", 20),
    ("vm.dirty_writeback_centisecs", 20),
];

/// Where the static settings are installed (named in the drop-in's header).
const STATIC_FILE: &str = "/usr/lib/sysctl.d/60-synbackup.conf";

/// The RAM-dependent dirty-page thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settings {
    /// Percent of RAM (hosts up to 256 GiB).
    Ratio { background: u64, dirty: u64 },
    /// Bytes (hosts over 256 GiB).
    Bytes { background: u64, dirty: u64 },
}

/// One setting as `--check` and `--apply` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) key: &'static str,
    pub(crate) value: u64,
    /// The kernel's alternative to `key` (ratio <-> bytes): writing `key` zeroes it.
    pub(crate) alternative: Option<&'static str>,
    /// The alternative must read 0 for `key` to be in force: true for a ratio (a
    /// non-zero `*_bytes` overrides it), false for bytes (they win whatever the ratio).
    pub(crate) alternative_zero: bool,
}

/// A running value that is not the computed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    pub(crate) key: &'static str,
    pub(crate) running: u64,
    pub(crate) wanted: u64,
    /// Why the value matters, when it is not obvious (an alternative that must be 0).
    pub(crate) note: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: running {}, computed {}",
            self.key, self.running, self.wanted
        )?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

/// `round(a / b)`, halves up, for b > 0.
fn round_div(a: u128, b: u128) -> u128 {
    (2 * a + b) / (2 * b)
}

/// The thresholds for a host with `mem_total` bytes of RAM.
pub(crate) fn compute(mem_total: u64) -> Settings {
    let m = u128::from(mem_total.max(1));
    let two_r = 2 * u128::from(REFERENCE);
    if two_r >= m {
        // x = 2R/M >= 1; integer arithmetic, so the table never depends on floats.
        Settings::Ratio {
            background: round_div(two_r, m).min(u128::from(MAX_BACKGROUND_RATIO)) as u64,
            dirty: round_div(2 * two_r, m).min(u128::from(MAX_DIRTY_RATIO)) as u64,
        }
    } else {
        Settings::Bytes {
            background: BACKGROUND_BYTES,
            dirty: DIRTY_BYTES,
        }
    }
}

impl Settings {
    /// The drop-in's lines: the two RAM-dependent keys and their values.
    pub(crate) fn scaled(&self) -> [(&'static str, u64); 2] {
        match *self {
            Settings::Ratio { background, dirty } => [
                ("vm.dirty_background_ratio", background),
                ("vm.dirty_ratio", dirty),
            ],
            Settings::Bytes { background, dirty } => [
                ("vm.dirty_background_bytes", background),
                ("vm.dirty_bytes", dirty),
            ],
        }
    }

    /// All five settings, fixed ones first, in the order `--apply` writes them.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let mut out: Vec<Target> = FIXED
            .iter()
            .map(|&(key, value)| Target {
                key,
                value,
                alternative: None,
                alternative_zero: false,
            })
            .collect();
        let ratio = matches!(self, Settings::Ratio { .. });
        for (key, value) in self.scaled() {
            out.push(Target {
                key,
                value,
                alternative: Some(alternative_of(key)),
                alternative_zero: ratio,
            });
        }
        out
    }
}

/// `vm.dirty_ratio` <-> `vm.dirty_bytes`, `vm.dirty_background_ratio` <-> `..._bytes`.
fn alternative_of(key: &'static str) -> &'static str {
    match key {
        "vm.dirty_background_ratio" => "vm.dirty_background_bytes",
        "vm.dirty_background_bytes" => "vm.dirty_background_ratio",
        "vm.dirty_ratio" => "vm.dirty_bytes",
        _ => "vm.dirty_ratio",
    }
}

/// Every key `targets` reads: the targets, then their alternatives.
fn keys_of(targets: &[Target]) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = targets.iter().map(|t| t.key).collect();
    keys.extend(targets.iter().filter_map(|t| t.alternative));
    keys
}

/// The drop-in for a host with `mem_total` bytes of RAM.
pub(crate) fn render_dropin(settings: &Settings, mem_total: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by `synbackup sysctl` for MemTotal = {mem_total} bytes ({}).",
        fsutil::human(mem_total)
    );
    s.push_str(
        "#\n\
         # Dirty-page thresholds scaled from the RAM, with x = 2 * 128 GiB / MemTotal:\n\
         # vm.dirty_background_ratio = min(round(x), 10), vm.dirty_ratio = min(round(2x), 20),\n\
         # i.e. the amounts a 128 GiB host gets from 2 % and 4 % (about 2.56 and 5.12 GiB),\n\
         # never above the kernel's defaults; over 256 GiB (x < 1) the same amounts as\n\
         # vm.dirty_background_bytes and vm.dirty_bytes.\n",
    );
    let _ = writeln!(
        s,
        "# The fixed settings (vm.swappiness, vm.dirty_*_centisecs) are in\n# {STATIC_FILE}."
    );
    s.push_str(
        "#\n\
         # synbackup-sysctl.service writes this file to /run/sysctl.d/ at every boot. To\n\
         # override it, create /etc/sysctl.d/61-synbackup-memory.conf (a file of the same\n\
         # name in /etc wins), or `systemctl mask synbackup-sysctl.service`.\n\
         # See synbackup(8).\n",
    );
    for (key, value) in settings.scaled() {
        let _ = writeln!(s, "{key} = {value}");
    }
    s
}

/// Compare the running values (read through `read`) with `targets`.
pub(crate) fn differences(
    targets: &[Target],
    mut read: impl FnMut(&str) -> Result<u64>,
) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    for t in targets {
        let running = read(t.key)?;
        if running != t.value {
            out.push(Difference {
                key: t.key,
                running,
                wanted: t.value,
                note: None,
            });
        }
        if let (Some(alt), true) = (t.alternative, t.alternative_zero) {
            let running = read(alt)?;
            if running != 0 {
                out.push(Difference {
                    key: alt,
                    running,
                    wanted: 0,
                    note: Some(format!("a non-zero value overrides {}", t.key)),
                });
            }
        }
    }
    Ok(out)
}

/// What `--apply` did to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) key: &'static str,
    pub(crate) old: u64,
    pub(crate) new: u64,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.old == self.new {
            write!(f, "{}: {} (unchanged)", self.key, self.new)
        } else {
            write!(f, "{}: {} -> {}", self.key, self.old, self.new)
        }
    }
}

/// Set every target under `root` that is not yet in force, then read everything back.
///
/// Returns old -> new for every key read (targets and their alternatives) and the
/// differences that remain afterwards (none on a kernel that took the values).
pub(crate) fn apply(root: &Path, targets: &[Target]) -> Result<(Vec<Change>, Vec<Difference>)> {
    let keys = keys_of(targets);
    let before = keys
        .iter()
        .map(|k| procfs::read_sysctl(root, k))
        .collect::<Result<Vec<u64>>>()?;
    let old = |key: &str| keys.iter().position(|k| *k == key).map_or(0, |i| before[i]);
    for t in targets {
        // Writing a ratio is also what zeroes its *_bytes (vm.dirty_bytes refuses 0).
        let alt_in_the_way = t.alternative_zero && t.alternative.is_some_and(|a| old(a) != 0);
        if old(t.key) != t.value || alt_in_the_way {
            procfs::write_sysctl(root, t.key, t.value)?;
        }
    }
    let mut changes = Vec::with_capacity(keys.len());
    for (key, old) in keys.iter().zip(before) {
        changes.push(Change {
            key,
            old,
            new: procfs::read_sysctl(root, key)?,
        });
    }
    let now = |key: &str| {
        changes
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.new)
            .ok_or_else(|| anyhow!("{key} was not read"))
    };
    let left = differences(targets, now)?;
    Ok((changes, left))
}

/// Write the drop-in atomically, creating its directory.
pub(crate) fn write_dropin(path: &Path, dropin: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    fsutil::write_atomic(path, dropin.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn ratio(background: u64, dirty: u64) -> Settings {
        Settings::Ratio { background, dirty }
    }

    #[test]
    fn the_table() {
        let bytes = Settings::Bytes {
            background: 2748779069,
            dirty: 5497558138,
        };
        for (mem, want) in [
            (GIB / 2, ratio(10, 20)),
            (8 * GIB, ratio(10, 20)),
            (16 * GIB, ratio(10, 20)),
            (32 * GIB, ratio(8, 16)),
            (64 * GIB, ratio(4, 8)),
            (128 * GIB, ratio(2, 4)),
            (131910244 * 1024, ratio(2, 4)), // a 128 GiB host's MemTotal
            (192 * GIB, ratio(1, 3)),
            (256 * GIB, ratio(1, 2)),
            (256 * GIB + 1, bytes),
            (384 * GIB, bytes),
            (1024 * GIB, bytes),
            (u64::MAX, bytes),
        ] {
            assert_eq!(compute(mem), want, "{mem} bytes");
        }
    }

    #[test]
    fn rounding_is_to_nearest() {
        // 95.4 GiB: x = 2.68, 2x = 5.37 (truncation would give 2 / 5).
        assert_eq!(compute(99999999 * 1024), ratio(3, 5));
        // x = 1.49 / 2.98 and x = 1.51 / 3.02.
        assert_eq!(compute(256 * GIB * 100 / 149), ratio(1, 3));
        assert_eq!(compute(256 * GIB * 100 / 151), ratio(2, 3));
        assert_eq!(compute(0), ratio(10, 20));
    }

    #[test]
    fn byte_values_are_two_and_four_percent_of_128_gib() {
        assert_eq!(BACKGROUND_BYTES, 2748779069);
        assert_eq!(DIRTY_BYTES, 5497558138);
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("1", 1),
            ("137438953472", 128 * GIB),
            ("128GiB", 128 * GIB),
            ("128 GiB", 128 * GIB),
            ("128g", 128 * GIB),
            ("128GB", 128 * GIB),
            ("512MiB", 512 << 20),
            ("512M", 512 << 20),
            ("131910244kB", 131910244 * 1024),
            ("131910244 KiB", 131910244 * 1024),
            ("4K", 4096),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            ("1.5G", 3 * GIB / 2),
            ("0.5 GiB", GIB / 2),
            (".5G", GIB / 2),
            ("2.0T", 2 << 40),
            ("100B", 100),
            ("  64 gib ", 64 * GIB),
        ] {
            assert_eq!(
                crate::base::units::parse_size(text).unwrap(),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn bad_sizes() {
        for text in [
            "",
            " ",
            "GiB",
            "0",
            "0GiB",
            "0.0001B",
            "-1G",
            "1.2.3G",
            "1e9",
            "12XB",
            "128 GiB RAM",
            "1PiB",
            "16777216T",
            "99999999999999999999999999999999999999999",
            "1.0000000000001G",
            "1,5G",
            ".",
            "5.G.",
        ] {
            assert!(
                crate::base::units::parse_size(text)
                    .map(|b| b == 0)
                    .unwrap_or(true),
                "{text:?} was accepted"
            );
        }
    }

    #[test]
    fn dropin_holds_only_the_scaled_part() {
        let s = render_dropin(&compute(131910244 * 1024), 131910244 * 1024);
        let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            ["vm.dirty_background_ratio = 2", "vm.dirty_ratio = 4"]
        );
        assert!(s.contains("MemTotal = 135076089856 bytes (125.8 GiB)"));
        assert!(s.contains(STATIC_FILE));
        let s = render_dropin(&compute(1 << 40), 1 << 40);
        assert!(
            s.contains("\nvm.dirty_background_bytes = 2748779069\nvm.dirty_bytes = 5497558138\n")
        );
        assert!(!s.contains("\nvm.dirty_ratio"));
    }

    #[test]
    fn static_file_matches_fixed() {
        let text = include_str!("../../sysctl.d/60-synbackup.conf");
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let want: Vec<String> = FIXED.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        assert_eq!(lines, want);
    }

    fn reader<'a>(values: &'a [(&'a str, u64)]) -> impl FnMut(&str) -> Result<u64> + 'a {
        move |k| {
            values
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| *v)
                .ok_or_else(|| anyhow!("no {k}"))
        }
    }

    #[test]
    fn ratio_needs_zero_bytes() {
        let t = ratio(2, 4).targets();
        let mut v = vec![
            ("vm.swappiness", 10),
            ("vm.dirty_expire_centisecs", 20),
            ("vm.dirty_writeback_centisecs", 20),
            ("vm.dirty_background_ratio", 2),
            ("vm.dirty_ratio", 4),
            ("vm.dirty_background_bytes", 0),
            ("vm.dirty_bytes", 0),
        ];
        assert!(differences(&t, reader(&v)).unwrap().is_empty());
        v[6].1 = 5497558138;
        let d = differences(&t, reader(&v)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].to_string(),
            "vm.dirty_bytes: running 5497558138, computed 0 (a non-zero value overrides vm.dirty_ratio)"
        );
    }

    #[test]
    fn bytes_ignore_the_ratio() {
        let t = compute(1 << 40).targets();
        let v = [
            ("vm.swappiness", 60),
            ("vm.dirty_expire_centisecs", 20),
            ("vm.dirty_writeback_centisecs", 20),
            ("vm.dirty_background_bytes", 2748779069),
            ("vm.dirty_bytes", 5497558138),
            ("vm.dirty_background_ratio", 10),
            ("vm.dirty_ratio", 20),
        ];
        let d = differences(&t, reader(&v)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_string(), "vm.swappiness: running 60, computed 10");
    }
}
