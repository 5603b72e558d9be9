// SPDX-License-Identifier: Apache-2.0
//! `synbackup completions SHELL`: the completion script clap generates. For bash,
//! clap's function is wrapped by one that completes what clap cannot know: the
//! instance names (`CONFIG_DIR/*.conf`) for `run`, `cold`, `status`, `list`,
//! `prune`, `retire`, `drill` and `restore --instance`, and for `restore --instance
//! NAME` and `drill NAME` the backup names in that instance's `SYNBACKUP_BACKUP_ROOT`.

use std::process::ExitCode;

use std::io::Write;

use anyhow::Result;
use clap::{Args, CommandFactory};

use crate::commands::Cli;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to print completions for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// Completes instance and backup names, else hands over to clap's `_synbackup`.
const BASH_NAMES: &str = r#"
_synbackup_names() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local confdir=${SYNBACKUP_CONFIG_DIR:-/etc/synbackup} sub="" inst="" i w
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
            --config-dir) confdir=${COMP_WORDS[i+1]}; i=$((i + 1)) ;;
            --instance) inst=${COMP_WORDS[i+1]}; i=$((i + 1)) ;;
            --state-dir|--lock-dir|--metrics-dir|--unit|--dir|--python|--module|--timeout|--check) i=$((i + 1)) ;;
            -*) ;;
            *) if [[ -z $sub ]]; then sub=$w; elif [[ $sub == drill && -z $inst ]]; then inst=$w; fi ;;
        esac
    done
    local names=() f
    for f in "$confdir"/*.conf; do [[ -e $f ]] && { f=${f##*/}; names+=("${f%.conf}"); }; done
    if [[ $cur != -* ]]; then
        if [[ $sub == restore && $prev == --instance ]]; then
            COMPREPLY=($(compgen -W "${names[*]}" -- "$cur")); return 0
        fi
        case $sub in
            run|cold|status|list|prune|retire)
                if [[ $prev != --* ]]; then
                    COMPREPLY=($(compgen -W "${names[*]}" -- "$cur")); return 0
                fi ;;
            drill|restore)
                if [[ $sub == drill && -z $inst && $prev != --* ]]; then
                    COMPREPLY=($(compgen -W "${names[*]}" -- "$cur")); return 0
                fi
                if [[ -n $inst && $prev != --* ]]; then
                    local root
                    root=$(sed -n 's/^[[:space:]]*SYNBACKUP_BACKUP_ROOT[[:space:]]*=[[:space:]]*//p' "$confdir/$inst.conf" 2>/dev/null | tail -n1)
                    root=${root%\"}; root=${root#\"}
                    if [[ -d $root ]]; then
                        local backups=() b
                        for b in "$root/$inst"_*; do [[ -d $b ]] && backups+=("${b##*/}"); done
                        COMPREPLY=($(compgen -W "${backups[*]}" -- "$cur"))
                        [[ ${#COMPREPLY[@]} -gt 0 ]] && return 0
                    fi
                fi ;;
        esac
    fi
    _synbackup "$@"
}
complete -F _synbackup_names -o bashdefault -o default synbackup
"#;

/// Print the script on stdout.
pub(crate) fn exec(a: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "synbackup", &mut out);
    if a.shell == clap_complete::Shell::Bash {
        // Registered last, so it replaces clap's `complete -F _synbackup`.
        out.write_all(BASH_NAMES.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
