// SPDX-License-Identifier: Apache-2.0
//! The fish part clap cannot write: functions that read the command line
//! (`commandline -opc`) for the subcommand, the instance and the config
//! directory, and completions that offer instance names (`CONFIG_DIR/*.conf`) and,
//! once the instance is known, backup names (directories `INSTANCE_*` in the
//! instance's `SYNBACKUP_BACKUP_ROOT`).

use super::slots::Slots;

const SCRIPT: &str = r#"
function __synbackup_parse --description 'Read the subcommand, positionals, instance and config dir typed so far'
    set -g __synbackup_path ''
    set -g __synbackup_pos
    set -g __synbackup_inst ''
    set -g __synbackup_want ''
    set -g __synbackup_confdir /etc/synbackup
    set -q SYNBACKUP_CONFIG_DIR; and set __synbackup_confdir $SYNBACKUP_CONFIG_DIR
    set -l paths @PATHS@
    set -l value_opts @VALUE_OPTIONS@
    set -l toks (commandline -opc)
    for w in $toks[2..-1]
        if test -n "$__synbackup_want"
            switch $__synbackup_want
                case --config-dir
                    set __synbackup_confdir $w
                case --instance
                    set __synbackup_inst $w
            end
            set __synbackup_want ''
            continue
        end
        switch $w
            case '--config-dir=*'
                set __synbackup_confdir (string replace -- --config-dir= '' $w)
            case '--instance=*'
                set __synbackup_inst (string replace -- --instance= '' $w)
            case '-*'
                contains -- $w $value_opts; and set __synbackup_want $w
            case '*'
                set -l next $w
                test -n "$__synbackup_path"; and set next "$__synbackup_path/$w"
                if test (count $__synbackup_pos) -eq 0; and contains -- $next $paths
                    set __synbackup_path $next
                else
                    set -a __synbackup_pos $w
                end
        end
    end
end

function __synbackup_instances --description 'Configured instance names'
    for f in $__synbackup_confdir/*.conf
        string replace -r '^.*/(.*)\.conf$' '$1' -- $f
    end
end

function __synbackup_backups --description 'Backup names in an instance backup root' -a inst
    set -l conf $__synbackup_confdir/$inst.conf
    test -r $conf; or return 0
    set -l root (string replace -rf '^\s*SYNBACKUP_BACKUP_ROOT\s*=\s*"?([^"]*)"?\s*$' '$1' < $conf)
    test -n "$root[-1]"; or return 0
    for b in $root[-1]/$inst"_"*
        test -d $b; and string replace -r '^.*/' '' -- $b
    end
end

function __synbackup_names --description 'Instance or backup names where the command line takes one'
    __synbackup_parse
    test -z "$__synbackup_want"; or return 0
    set -l inst_pos @INSTANCE_POSITIONAL@
    set -l backup_pos @BACKUP_POSITIONAL@
    set -l n (count $__synbackup_pos)
    if test $n -eq 0; and contains -- $__synbackup_path $inst_pos
        __synbackup_instances
    else if contains -- "$__synbackup_path:$n" $backup_pos
        set -l inst $__synbackup_inst
        test -z "$inst"; and contains -- $__synbackup_path $inst_pos; and set inst $__synbackup_pos[1]
        test -n "$inst"; and __synbackup_backups $inst
    end
end

function __synbackup_takes_instance_option --description 'The subcommand typed so far takes --instance'
    __synbackup_parse
    set -l inst_opt @INSTANCE_OPTION@
    contains -- $__synbackup_path $inst_opt
end

complete -c synbackup -f -n '__synbackup_names | string length -q' -a '(__synbackup_names)'
complete -c synbackup -n '__synbackup_takes_instance_option' -l instance -x -a '(__synbackup_parse; __synbackup_instances)'
"#;

/// The script, with the slots filled in.
pub(crate) fn names_script(slots: &Slots) -> String {
    super::fill(SCRIPT, slots)
}
