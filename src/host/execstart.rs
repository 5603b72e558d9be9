// SPDX-License-Identifier: Apache-2.0
//! What a service unit runs: the Python and the module of a Synapse server, read from
//! `systemctl show -p ExecStart UNIT`
//! (`{ path=/opt/venv/bin/python ; argv[]=/opt/venv/bin/python -m synapse.servers.cortex /data/c0 ; ... }`).

use anyhow::{bail, Result};

use crate::host::systemd;

/// The interpreter and module of a `python -m MODULE ...` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PythonModule {
    pub(crate) python: String,
    pub(crate) module: String,
}

/// Parse the `argv[]=` of `systemctl show -p ExecStart` output.
pub(crate) fn parse(show: &str) -> Option<PythonModule> {
    let argv = show.split("argv[]=").nth(1)?;
    let argv = argv.split(" ;").next()?;
    let words: Vec<&str> = argv.split_whitespace().collect();
    let python = words.first()?.to_string();
    let i = words.iter().position(|w| *w == "-m")?;
    let module = words.get(i + 1)?.to_string();
    Some(PythonModule { python, module })
}

/// The Python and module `unit` runs.
pub(crate) fn of_unit(unit: &str) -> Result<PythonModule> {
    let show = systemd::systemctl(&["show", "-p", "ExecStart", unit])?;
    match parse(&show) {
        Some(pm) => Ok(pm),
        None => bail!(
            "{unit}'s ExecStart is not `PYTHON -m MODULE ...` ({}); set SYNBACKUP_DRILL_PYTHON and SYNBACKUP_DRILL_MODULE",
            show.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show() {
        let s = "ExecStart={ path=/opt/v/bin/python ; argv[]=/opt/v/bin/python -m synapse.servers.cortex /data/c0 ; ignore_errors=no ; start_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n";
        assert_eq!(
            parse(s),
            Some(PythonModule {
                python: "/opt/v/bin/python".into(),
                module: "synapse.servers.cortex".into()
            })
        );
        assert_eq!(
            parse("ExecStart={ path=/bin/sh ; argv[]=/bin/sh -c x ; }"),
            None
        );
        assert_eq!(parse("ExecStart="), None);
    }
}
