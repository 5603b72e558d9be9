// SPDX-License-Identifier: Apache-2.0
//! Sizes and durations as operators write them in config files and options.
//!
//! Sizes: a number of bytes, or with a unit, all binary as systemd counts them
//! (`K`/`KB`/`KiB` = 1024, likewise M, G, T; case-insensitive). Durations: seconds, or a number with `s m h d w`
//! (`26h`, `90m`, `7d`), several parts allowed (`1d12h`).

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

/// A size: bytes, or a number (fraction allowed) with a unit.
///
/// Units are case-insensitive and all binary, as RAM is counted (and as
/// `/proc/meminfo`'s "kB" means KiB): `K`, `KB`, `KiB` = 1024; `M`, `MB`, `MiB` =
/// 1024²; `G`, `GB`, `GiB` = 1024³; `T`, `TB`, `TiB` = 1024⁴; `B` = 1. Spaces between
/// number and unit are allowed. The result must be at least 1 byte.
pub(crate) fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => bail!("unknown unit {unit:?} (use B, K, M, G, T, or KiB, MiB, GiB, TiB)"),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        bail!("expected a number of bytes, or a number with a unit such as 128GiB");
    }
    if frac.contains('.') {
        bail!("{number:?} is not a number");
    }
    let too_large = || anyhow!("{text:?} is too large");
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let frac_digits = frac.trim_end_matches('0');
    if frac_digits.len() > 12 {
        bail!("{number:?} has too many decimals");
    }
    let frac_value: u128 = if frac_digits.is_empty() {
        0
    } else {
        frac_digits.parse().map_err(|_| too_large())?
    };
    let unit_bytes = 1u128 << shift;
    let bytes = whole
        .checked_mul(unit_bytes)
        .and_then(|w| w.checked_add(frac_value * unit_bytes / 10u128.pow(frac_digits.len() as u32)))
        .ok_or_else(too_large)?;
    let bytes = u64::try_from(bytes).map_err(|_| too_large())?;
    Ok(bytes)
}

/// Parse a duration.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration (e.g. 26h, 90m, 7d, 3600)".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (e.g. 26h, 90m, 7d, 3600)"))?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {c:?} (use s, m, h, d or w)"
                ))
            }
        };
        total = total.saturating_add(n.saturating_mul(unit));
    }
    if !num.is_empty() {
        return Err(format!(
            "{text:?}: a number without a unit at the end (use s, m, h, d or w)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// A duration for people: `26h`, `3d4h`, `90s`.
pub(crate) fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("26h"), Ok(Duration::from_secs(26 * 3600)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("5h3").is_err());
        assert_eq!(format_duration(Duration::from_secs(30 * 3600)), "30h");
    }
}
