// SPDX-License-Identifier: Apache-2.0
//! What a `--dry-run` of `cold` and `restore` prints: one line per step it would
//! take, each after the instance's name, on stdout (to read or pipe), ending with the
//! line that says nothing was changed. A plan that ends in a refusal prints what
//! it found up to there, says which refusal the real command would give, and
//! returns that refusal, so the dry run exits with the real command's code.

use anyhow::Result;

use crate::base::exit::code_of;

/// The lines of a dry run, printed by [`Plan::finish`].
#[derive(Debug)]
pub(crate) struct Plan {
    /// `NAME: ` (or nothing, for a restore by path).
    prefix: String,
    /// `window`, `restore`: what the real command is called in the refusal line.
    what: &'static str,
    lines: Vec<String>,
}

impl Plan {
    pub(crate) fn new(name: Option<&str>, what: &'static str) -> Plan {
        Plan {
            prefix: name.map(|n| format!("{n}: ")).unwrap_or_default(),
            what,
            lines: Vec::new(),
        }
    }

    /// One step.
    pub(crate) fn say(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// Print the plan; `result` is how it ended: a refusal of the real command
    /// is named and returned (its exit code is the dry run's).
    pub(crate) fn finish(mut self, result: Result<()>) -> Result<()> {
        if let Err(e) = &result {
            self.lines.push(format!(
                "the real {} would refuse here (exit {}): {e:#}",
                self.what,
                code_of(e).as_i32()
            ));
        }
        self.lines.push("dry run: nothing was changed".into());
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(&self.prefix);
            out.push_str(l);
            out.push('\n');
        }
        print!("{out}");
        result
    }
}
