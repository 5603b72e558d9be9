// SPDX-License-Identifier: Apache-2.0
//! Synapse 2.x and 3.x: every difference between the two release lines that
//! synbackup meets, in one place. Nothing else compares version numbers.
//!
//! The line is decided from what the service says (`getCellInfo()['synapse']
//! ['version']`: a tuple on 2.x, the string "3.7.0" on 3.x) or what a directory
//! records (`cell:info/synapse:version` in `slabs/cell.lmdb`: a msgpack array on 2.x,
//! a string on 3.x), never guessed from a path or a Python version. What differs:
//!
//! - Storm opts: 2.x takes `mirror: false` (a mirror answers a query itself instead
//!   of asking its upstream, which a drill's isolated copy cannot reach); 3.x
//!   validates opts against a closed schema without `mirror` and refuses the call.
//! - The version's form: 2.x has `verstring` beside the tuple; 3.x only the string.
//! - `synapse.tools.service.snapshot` takes the service's URL as `--svcurl` on 2.x,
//!   `--url` on 3.x (`resume_command`).
//! - A cell's role: `mirror:` in `cell.yaml` on 2.x, `parent:` on 3.x, and in
//!   `getCellInfo()` `cell.mirror` or `cell.parent` (`cellstate`, `cellrole`).
//! - Booting across lines: 3.x refuses 2.x storage (`BadStorageVersion`, the
//!   directory left untouched) and there is no in-place migration; every release
//!   refuses a directory a newer one ran (a downgrade).
//!
//! - Config keys: a follower's upstream is `mirror` on 2.x and `parent` on 3.x, the
//!   AHA registry `aha:registry` and `aha:servers`. `drill::cellconf` removes both
//!   lines' keys from a drilled copy, which needs no version.
//!
//! Telepath itself is the same on both lines (`vers` [3, 0]); API arguments are
//! keyword-only on 3.x, which `engine::telepath` already sends as keywords. The
//! directory layout differs (3.x: no embedded `axon/`, `jsonstor/`, `backups/`, no
//! per-layer `nodeedits.lmdb`) but the scan finds environments by their `data.mdb`
//! and assumes none of those names, so it needs nothing here.

use rmpv::Value;

use crate::engine::telepath;

/// A Synapse release as a service or a directory reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(Vec<u64>);

impl Version {
    /// From the value a service or a directory holds: `[2, 256, 0]` (2.x) or
    /// `"3.7.0"` (3.x).
    pub(crate) fn from_value(v: &Value) -> Option<Version> {
        match v {
            Value::Array(parts) => parts
                .iter()
                .map(Value::as_u64)
                .collect::<Option<Vec<u64>>>()
                .filter(|p| !p.is_empty())
                .map(Version),
            Value::String(s) => s.as_str().and_then(Version::parse),
            _ => None,
        }
    }

    /// From text such as "3.7.0" (the numeric leading parts; "3.7.0rc1" is 3.7.0).
    pub(crate) fn parse(text: &str) -> Option<Version> {
        let parts: Vec<u64> = text
            .trim()
            .split('.')
            .map_while(|p| {
                let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        (!parts.is_empty()).then_some(Version(parts))
    }

    /// The release line: 2 or 3.
    pub(crate) fn major(&self) -> u64 {
        self.0[0]
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// The release a running service reports: `getCellInfo()['synapse']['version']`.
pub(crate) fn of_cell_info(info: &Value) -> Option<Version> {
    let synapse = telepath::get(info, "synapse")?;
    telepath::get(synapse, "version")
        .and_then(Version::from_value)
        .or_else(|| {
            telepath::get(synapse, "verstring")
                .and_then(Value::as_str)
                .and_then(Version::parse)
        })
}

/// The command line that resumes the frozen service in `dir` by hand: Synapse's
/// snapshot tool, whose URL option is `--svcurl` on 2.x and `--url` on 3.x (both
/// when the line is not known).
pub(crate) fn resume_command(dir: &std::path::Path, version: Option<&Version>) -> String {
    let url = format!("cell://{}", dir.display());
    let tool = "python -m synapse.tools.service.snapshot resume";
    match version.map(Version::major) {
        Some(2) => format!("{tool} --svcurl {url}"),
        Some(_) => format!("{tool} --url {url}"),
        None => format!("{tool} --svcurl {url} (Synapse 3.x: --url)"),
    }
}

/// The `opts` of a `callStorm` on a service of `version`: `{mirror: false}` where
/// the line has that option (2.x), none on 3.x (its closed schema refuses it). An
/// unknown version gets none: every line accepts empty opts.
pub(crate) fn storm_opts(version: Option<&Version>) -> Value {
    let mut opts = Vec::new();
    if version.is_some_and(|v| v.major() == 2) {
        opts.push((Value::from("mirror"), Value::from(false)));
    }
    Value::Map(opts)
}

/// Why a server refused to boot a backup, when the release lines explain it: a
/// 2.x backup booted by 3.x (refused, no in-place migration) or a backup booted by
/// an older release than the one that last ran it (a downgrade). `backup` is the
/// release the backup records; `log` the server's output. `None` when neither case
/// applies (the caller reports the log's last line).
pub(crate) fn boot_refusal(backup: Option<&Version>, log: &str) -> Option<String> {
    let backup = backup?;
    let refused_storage = log.contains("BadStorageVersion");
    // 3.x's refusal names the range it accepts: ">=3.0.0,<4.0.0".
    if backup.major() == 2 && refused_storage && log.contains(">=3.") {
        return Some(format!(
            "Synapse 3.x refuses this backup's 2.x storage (last run by Synapse {backup}; BadStorageVersion, the backup is untouched): in-place migration from 2.x to 3.x does not exist; Vertex's 3.0.0 migration guide says to stand up a new 3.x Cortex beside the 2.x one and port Storm, config and integrations to it"
        ));
    }
    // A release older than the backup's: 2.x reports a "version regression"
    // (BadVersion), or fails comparing its tuple with 3.x's string; a 3.x release
    // older than the backup's reports the regression too.
    let downgrade = log.contains("version regression")
        || (backup.major() >= 3
            && (refused_storage || log.contains("not supported between instances")));
    if downgrade {
        return Some(format!(
            "Synapse refuses to boot a backup last run by a newer release (Synapse {backup}): a downgrade is not possible; boot it with Synapse {backup} or newer"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    #[test]
    fn versions_of_both_lines() {
        let two = Value::Array(vec![2.into(), 256.into(), 0.into()]);
        assert_eq!(Version::from_value(&two).unwrap().to_string(), "2.256.0");
        let three = Value::from("3.7.0");
        let v = Version::from_value(&three).unwrap();
        assert_eq!((v.to_string(), v.major()), ("3.7.0".into(), 3));
        assert_eq!(Version::parse("3.8.0rc1").unwrap().to_string(), "3.8.0");
        assert_eq!(Version::from_value(&Value::from("x")), None);
        assert_eq!(Version::from_value(&Value::Array(vec![])), None);
        assert!(Version::parse("2.256.0") < Version::parse("3.0.0"));
    }

    #[test]
    fn cell_info_of_both_lines() {
        let v2 = map(vec![(
            "synapse",
            map(vec![
                (
                    "version",
                    Value::Array(vec![2.into(), 256.into(), 0.into()]),
                ),
                ("verstring", "2.256.0".into()),
            ]),
        )]);
        let v3 = map(vec![("synapse", map(vec![("version", "3.7.0".into())]))]);
        assert_eq!(of_cell_info(&v2).unwrap().to_string(), "2.256.0");
        assert_eq!(of_cell_info(&v3).unwrap().to_string(), "3.7.0");
        assert_eq!(of_cell_info(&map(vec![])), None);
    }

    #[test]
    fn mirror_only_on_2x() {
        let opts = storm_opts(Version::parse("2.256.0").as_ref());
        assert_eq!(telepath::get(&opts, "mirror"), Some(&Value::from(false)));
        let opts = storm_opts(Version::parse("3.7.0").as_ref());
        assert_eq!(opts, Value::Map(vec![]));
        assert_eq!(storm_opts(None), Value::Map(vec![]));
    }

    #[test]
    fn refusals() {
        let v2 = Version::parse("2.256.0");
        let log3 = "synapse.exc.BadStorageVersion: ... (2, 256, 0) ... >=3.0.0,<4.0.0";
        let line = boot_refusal(v2.as_ref(), log3).unwrap();
        assert!(line.contains("in-place migration from 2.x to 3.x does not exist"));
        assert!(line.contains("2.256.0"));
        let regress = "BadVersion: Synapse version regression (cortex) is not allowed!";
        assert!(boot_refusal(v2.as_ref(), regress)
            .unwrap()
            .contains("downgrade"));
        assert_eq!(boot_refusal(v2.as_ref(), "OSError: no space"), None);
        assert_eq!(boot_refusal(None, log3), None);
    }
}
