// SPDX-License-Identifier: Apache-2.0
//! Which backups to keep: keep-last, -daily, -weekly and -monthly, as restic and borg
//! define them.
//!
//! The rule, exactly: list the instance's complete backups newest first. `last N`
//! keeps the N newest. `daily N` walks the list and keeps the newest backup of each
//! UTC day, until N days are covered (days without a backup do not count).
//! `weekly N` does the same per ISO week, `monthly N` per calendar month. A backup is
//! kept if any rule keeps it; the others are removed. The backup a run has just made
//! is always kept. Partial temporaries are not backups: they never fill a slot.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Utc};

use crate::instance::config::Keep;

/// Why a backup is kept (for `prune`'s report).
pub(crate) fn reasons(times: &[DateTime<Utc>], keep: Keep) -> Vec<Vec<&'static str>> {
    // Newest first, remembering original positions; among equal times the later
    // position (callers list oldest first, ties in name order) is the newer.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(b.cmp(&a)));
    let mut out = vec![Vec::new(); times.len()];
    for (rank, &i) in order.iter().enumerate() {
        if rank < keep.last as usize {
            out[i].push("last");
        }
    }
    let mut bucket = |name: &'static str, n: u32, key: &dyn Fn(&DateTime<Utc>) -> (i32, u32)| {
        let mut seen = BTreeSet::new();
        for &i in &order {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(key(&times[i])) {
                out[i].push(name);
            }
        }
    };
    bucket("daily", keep.daily, &|t| (t.year(), t.ordinal()));
    bucket("weekly", keep.weekly, &|t| {
        (t.iso_week().year(), t.iso_week().week())
    });
    bucket("monthly", keep.monthly, &|t| (t.year(), t.month()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn keep(last: u32, daily: u32, weekly: u32, monthly: u32) -> Keep {
        Keep {
            last,
            daily,
            weekly,
            monthly,
        }
    }

    fn survivors(times: &[DateTime<Utc>], k: Keep) -> Vec<String> {
        let r = reasons(times, k);
        let mut v: Vec<String> = times
            .iter()
            .zip(r)
            .filter(|(_, r)| !r.is_empty())
            .map(|(t, _)| t.format("%Y-%m-%d %H:%M").to_string())
            .collect();
        v.sort();
        v
    }

    /// A year of nightly backups at 02:30 UTC, plus a second one on some days.
    fn calendar() -> Vec<DateTime<Utc>> {
        let start = Utc.with_ymd_and_hms(2025, 11, 27, 2, 30, 0).unwrap();
        let mut v = Vec::new();
        for d in 0..365 {
            v.push(start + Duration::days(d));
            if d % 30 == 0 {
                v.push(start + Duration::days(d) + Duration::hours(12));
            }
        }
        v
    }

    #[test]
    fn a_year_of_nightly_backups_with_the_defaults() {
        // Defaults 3/7/4/6. Newest: 2026-11-26 02:30 (and 2026-11-22 14:30 extra).
        let got = survivors(&calendar(), keep(3, 7, 4, 6));
        let want = vec![
            // monthly: newest of each of the last 6 months
            "2026-06-30 02:30",
            "2026-07-31 02:30",
            "2026-08-31 02:30",
            "2026-09-30 02:30",
            "2026-10-31 02:30",
            // weekly: newest of the last 4 ISO weeks (Sundays), daily: last 7 days
            "2026-11-08 02:30",
            "2026-11-15 02:30",
            "2026-11-20 02:30",
            "2026-11-21 02:30",
            "2026-11-22 14:30",
            "2026-11-23 02:30",
            "2026-11-24 02:30",
            "2026-11-25 02:30",
            "2026-11-26 02:30",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn only_last() {
        let got = survivors(&calendar(), keep(2, 0, 0, 0));
        assert_eq!(got, vec!["2026-11-25 02:30", "2026-11-26 02:30"]);
    }

    #[test]
    fn days_without_backups_do_not_count() {
        let t = |m, d| Utc.with_ymd_and_hms(2026, m, d, 1, 0, 0).unwrap();
        let times = vec![t(1, 1), t(1, 5), t(1, 9), t(2, 1)];
        assert_eq!(
            survivors(&times, keep(0, 3, 0, 0)),
            vec!["2026-01-05 01:00", "2026-01-09 01:00", "2026-02-01 01:00"]
        );
        assert_eq!(
            survivors(&times, keep(0, 0, 0, 1)),
            vec!["2026-02-01 01:00"]
        );
        assert_eq!(survivors(&times, keep(0, 0, 0, 0)), Vec::<String>::new());
    }
}
