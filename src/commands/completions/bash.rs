// SPDX-License-Identifier: Apache-2.0
//! The bash part clap cannot write: a function registered after clap's
//! `_synbackup` that completes instance names (`CONFIG_DIR/*.conf`) and, once the
//! instance is known, backup names (directories `INSTANCE_*` in the instance's
//! `SYNBACKUP_BACKUP_ROOT`), and hands every other word to clap's function.

use super::slots::Slots;

const SCRIPT: &str = r#"
_synbackup_names() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local paths=" @PATHS@ " inst_pos=" @INSTANCE_POSITIONAL@ "
    local inst_opt=" @INSTANCE_OPTION@ " backup_pos=" @BACKUP_POSITIONAL@ "
    local value_opts=" @VALUE_OPTIONS@ "
    local confdir=${SYNBACKUP_CONFIG_DIR:-/etc/synbackup} path="" inst="" i w
    local -a pos=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
            -*)
                if [[ $value_opts == *" $w "* ]]; then
                    case $w in
                        --config-dir) confdir=${COMP_WORDS[i+1]} ;;
                        --instance) inst=${COMP_WORDS[i+1]} ;;
                    esac
                    i=$((i + 1))
                fi ;;
            *)
                if [[ ${#pos[@]} -eq 0 && $paths == *" ${path:+$path/}$w "* ]]; then
                    path=${path:+$path/}$w
                else
                    pos+=("$w")
                fi ;;
        esac
    done
    local -a names=()
    if [[ $cur != -* && -n $path ]]; then
        if [[ $prev == --instance ]]; then
            [[ $inst_opt == *" $path "* ]] && _synbackup_instances "$confdir"
        elif [[ $value_opts != *" $prev "* ]]; then
            if [[ ${#pos[@]} -eq 0 && $inst_pos == *" $path "* ]]; then
                _synbackup_instances "$confdir"
            elif [[ $backup_pos == *" $path:${#pos[@]} "* ]]; then
                [[ -z $inst && $inst_pos == *" $path "* ]] && inst=${pos[0]}
                [[ -n $inst ]] && _synbackup_backups "$confdir" "$inst"
            fi
        fi
    fi
    if [[ ${#names[@]} -gt 0 ]]; then
        COMPREPLY=($(compgen -W "${names[*]}" -- "$cur"))
        [[ ${#COMPREPLY[@]} -gt 0 ]] && return 0
    fi
    _synbackup "$@"
}
_synbackup_instances() {
    local f
    for f in "$1"/*.conf; do [[ -e $f ]] && { f=${f##*/}; names+=("${f%.conf}"); }; done
}
_synbackup_backups() {
    local root b
    root=$(sed -n 's/^[[:space:]]*SYNBACKUP_BACKUP_ROOT[[:space:]]*=[[:space:]]*//p' "$1/$2.conf" 2>/dev/null | tail -n1)
    root=${root%\"}; root=${root#\"}
    [[ -n $root ]] || return 0
    for b in "$root/$2"_*; do [[ -d $b ]] && names+=("${b##*/}"); done
}
complete -F _synbackup_names -o bashdefault -o default synbackup
"#;

/// The script, with the slots filled in.
pub(crate) fn names_script(slots: &Slots) -> String {
    super::fill(SCRIPT, slots)
}
