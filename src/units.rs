// SPDX-License-Identifier: Apache-2.0
//! Sizes and durations as operators write them in config files and options.
//!
//! Sizes: a number of bytes, or with a unit: binary `KiB MiB GiB TiB` (also `K M G
//! T`), decimal `kB MB GB TB`. Durations: seconds, or a number with `s m h d w`
//! (`26h`, `90m`, `7d`), several parts allowed (`1d12h`).

use std::time::Duration;

/// Parse a size. Errors say what is accepted.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use bytes, KiB, MiB, GiB, TiB, kB, MB, GB or TB)")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 4096, 512MiB, 128GiB)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a size"));
    }
    let bytes = value * mult as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes.round() as u64)
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
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h, d or w)")),
        };
        total = total.saturating_add(n.saturating_mul(unit));
    }
    if !num.is_empty() {
        return Err(format!("{text:?}: a number without a unit at the end (use s, m, h, d or w)"));
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
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("128GiB"), Ok(128 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("-1").is_err());
    }

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
