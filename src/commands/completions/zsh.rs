// SPDX-License-Identifier: Apache-2.0
//! The zsh part clap cannot write. clap's `_synbackup` completes an instance or a
//! backup argument with `_default` or `_files`; those actions are replaced here by
//! `_synbackup_instances` (the names of `CONFIG_DIR/*.conf`) and
//! `_synbackup_backups` (the directories `INSTANCE_*` in the instance's
//! `SYNBACKUP_BACKUP_ROOT`, else files), defined before clap's closing `compdef`.

use anyhow::{bail, Result};

use super::slots::Slots;

const FUNCTIONS: &str = r#"
_synbackup_scan() {
    local -a value_opts=(@VALUE_OPTIONS@)
    local i w want=
    _synbackup_confdir=${SYNBACKUP_CONFIG_DIR:-/etc/synbackup} _synbackup_inst= _synbackup_pos=()
    for ((i = 2; i < CURRENT; i++)); do
        w=$words[i]
        if [[ -n $want ]]; then
            case $want in
                --config-dir) _synbackup_confdir=$w ;;
                --instance) _synbackup_inst=$w ;;
            esac
            want=
            continue
        fi
        case $w in
            --config-dir=*) _synbackup_confdir=${w#--config-dir=} ;;
            --instance=*) _synbackup_inst=${w#--instance=} ;;
            -*) (( ${value_opts[(Ie)$w]} )) && want=$w ;;
            *) _synbackup_pos+=($w) ;;
        esac
    done
}

(( $+functions[_synbackup_instances] )) ||
_synbackup_instances() {
    local _synbackup_confdir _synbackup_inst
    local -a _synbackup_pos names
    _synbackup_scan
    names=($_synbackup_confdir/*.conf(N:t:r))
    compadd "$@" -a names
}

(( $+functions[_synbackup_backups] )) ||
_synbackup_backups() {
    local _synbackup_confdir _synbackup_inst root
    local -a _synbackup_pos backups
    _synbackup_scan
    [[ -z $_synbackup_inst && $#_synbackup_pos -gt 0 ]] && _synbackup_inst=$_synbackup_pos[1]
    if [[ -n $_synbackup_inst && -r $_synbackup_confdir/$_synbackup_inst.conf ]]; then
        root=$(sed -n 's/^[[:space:]]*SYNBACKUP_BACKUP_ROOT[[:space:]]*=[[:space:]]*//p' \
            "$_synbackup_confdir/$_synbackup_inst.conf" | tail -n1)
        root=${${root%\"}#\"}
        backups=($root/${_synbackup_inst}_*(N/:t))
        if (( $#backups )); then
            compadd "$@" -a backups
            return
        fi
    fi
    _files "$@"
}
"#;

/// The line clap closes its script with; our functions go before it.
const CLOSING: &str = "if [ \"$funcstack[1]\" = \"_synbackup\" ]; then";

/// clap's script with the name actions replaced and the functions added. Fails
/// when clap's output no longer has the shape this expects (a test runs it).
pub(crate) fn rewrite(clap_script: &str, slots: &Slots) -> Result<String> {
    let mut out = String::with_capacity(clap_script.len() + FUNCTIONS.len());
    let (mut instances, mut backups) = (0, 0);
    for line in clap_script.lines() {
        let spec = line.trim_start();
        let rewritten = if is_instance_positional(spec) || spec.contains("--instance=[") {
            replace_action(line, ":_default'", ":_synbackup_instances'", &mut instances)
        } else if spec.starts_with("':backup -- ") || spec.starts_with("'::backup -- ") {
            replace_action(line, ":_files'", ":_synbackup_backups'", &mut backups)
        } else {
            line.to_string()
        };
        if line.starts_with(CLOSING) {
            out.push_str(&super::fill(FUNCTIONS, slots));
            out.push('\n');
        }
        out.push_str(&rewritten);
        out.push('\n');
    }
    let wanted = slots.instance_positional.len() + slots.instance_option.len();
    if instances < wanted
        || backups < slots.backup_positional.len()
        || !out.contains("_synbackup_scan()")
    {
        bail!(
            "clap's zsh script changed shape: replaced {instances} of {wanted} instance and \
             {backups} of {} backup actions",
            slots.backup_positional.len()
        );
    }
    Ok(out)
}

fn is_instance_positional(spec: &str) -> bool {
    spec.starts_with("':instance -- ") || spec.starts_with("'::instance -- ")
}

fn replace_action(line: &str, from: &str, to: &str, count: &mut usize) -> String {
    match line.rfind(from) {
        Some(at) => {
            *count += 1;
            format!("{}{to}{}", &line[..at], &line[at + from.len()..])
        }
        None => line.to_string(),
    }
}
