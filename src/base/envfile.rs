// SPDX-License-Identifier: Apache-2.0
//! systemd's EnvironmentFile= syntax, read the way systemd reads it (its
//! `parse_env_file_internal` in src/basic/env-file.c), for every file synbackup
//! reads in that syntax: an instance's config, the service unit's environment files
//! and the offsite credentials. One parser, so that `synbackup` from a shell sees
//! what the unit that loaded the same file sees.
//!
//! The rules: a line whose first non-blank character is `#` or `;` is a comment;
//! blanks before a key, around `=` and after a value are dropped; a value in single
//! quotes is taken as it is (newlines included), in double quotes `\"`, `\\`, `\$`
//! and `` \` `` stand for the character and a backslash before a newline joins the
//! lines, while other backslashes stay; unquoted, a backslash takes the next
//! character as it is and one at the end of a line continues the value on the
//! next. Quoted and unquoted parts next to each other make one value (`"a"b` is
//! `ab`). What systemd skips (a line with no `=`, a key that is not a variable
//! name) is returned as [`Rejected`] with its line, for the readers that refuse it.

/// One `KEY=VALUE` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: String,
    /// The line the key is on, from 1.
    pub(crate) line: usize,
    /// The value opened a quote the file never closes: systemd takes the rest of the
    /// file as the value.
    pub(crate) open_quote: bool,
}

/// A line systemd does not turn into a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// A line without `=` (systemd skips it silently); `text` without the blanks
    /// around it.
    NoAssignment { line: usize, text: String },
    /// An assignment whose key is not a variable name (systemd skips it with a
    /// warning).
    BadName(Entry),
}

impl Rejected {
    /// The line it is on, from 1.
    pub(crate) fn line(&self) -> usize {
        match self {
            Rejected::NoAssignment { line, .. } => *line,
            Rejected::BadName(e) => e.line,
        }
    }
}

/// The text of an environment file that systemd reads back as exactly `pairs`:
/// each value in double quotes, with `\\`, `"`, `$` and `` ` `` escaped (a newline
/// in a value stays a newline inside the quotes).
pub(crate) fn render(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(k);
        out.push_str("=\"");
        for ch in v.chars() {
            if matches!(ch, '\\' | '"' | '$' | '`') {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push_str("\"\n");
    }
    out
}

/// Where the reader is within a line (systemd's states, by the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    DoubleQuote,
    DoubleQuoteEscape,
    Comment,
    CommentEscape,
}

/// systemd's WHITESPACE.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// systemd's NEWLINE: a carriage return ends a line too.
fn is_newline(c: char) -> bool {
    matches!(c, '\n' | '\r')
}

/// A valid environment variable name (systemd's `env_name_is_valid`): letters,
/// digits and `_`, not starting with a digit.
pub(crate) fn is_name(key: &str) -> bool {
    key.chars().next().is_some_and(|c| !c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The assignment being read: its key and value so far, and where trailing blanks
/// begin (dropped at the end of the key or of an unquoted value).
#[derive(Default)]
struct Pending {
    key: String,
    key_blank_from: Option<usize>,
    value: String,
    value_blank_from: Option<usize>,
    line: usize,
}

/// Add `c` to `text`, keeping `blank_from` at the start of its trailing blanks.
fn push_noting_blanks(text: &mut String, blank_from: &mut Option<usize>, c: char) {
    if !is_blank(c) {
        *blank_from = None;
    } else if blank_from.is_none() {
        *blank_from = Some(text.len());
    }
    text.push(c);
}

impl Pending {
    /// Add `c` to the key.
    fn push_key(&mut self, c: char) {
        push_noting_blanks(&mut self.key, &mut self.key_blank_from, c);
    }

    /// Add `c` to an unquoted value.
    fn push_unquoted(&mut self, c: char) {
        push_noting_blanks(&mut self.value, &mut self.value_blank_from, c);
    }

    /// The key without its trailing blanks.
    fn take_key(&mut self) -> String {
        if let Some(n) = self.key_blank_from.take() {
            self.key.truncate(n);
        }
        std::mem::take(&mut self.key)
    }

    /// The finished assignment; `unquoted_end`: the value ended unquoted, so its
    /// trailing blanks go.
    fn finish(&mut self, unquoted_end: bool, open_quote: bool) -> Result<Entry, Rejected> {
        if let Some(n) = self.value_blank_from.take().filter(|_| unquoted_end) {
            self.value.truncate(n);
        }
        let entry = Entry {
            key: self.take_key(),
            value: std::mem::take(&mut self.value),
            line: self.line,
            open_quote,
        };
        if is_name(&entry.key) {
            Ok(entry)
        } else {
            Err(Rejected::BadName(entry))
        }
    }
}

/// Every assignment of `text` in order, and the lines systemd would skip. A key set
/// twice is returned twice (the later one wins in systemd).
pub(crate) fn parse(text: &str) -> Vec<Result<Entry, Rejected>> {
    use State::*;
    let mut out = Vec::new();
    let mut state = PreKey;
    let mut p = Pending::default();
    let mut line = 1;
    for c in text.chars() {
        state = match state {
            PreKey if c == '#' || c == ';' => Comment,
            PreKey if is_blank(c) => PreKey,
            PreKey => {
                p = Pending {
                    line,
                    ..Pending::default()
                };
                p.push_key(c);
                Key
            }
            Key if is_newline(c) => {
                out.push(Err(Rejected::NoAssignment {
                    line: p.line,
                    text: p.take_key(),
                }));
                PreKey
            }
            Key if c == '=' => PreValue,
            Key => {
                p.push_key(c);
                Key
            }
            PreValue | Value if is_newline(c) => {
                out.push(p.finish(state == Value, false));
                PreKey
            }
            PreValue if c == '\'' => SingleQuote,
            PreValue if c == '"' => DoubleQuote,
            PreValue | Value if c == '\\' => {
                p.value_blank_from = None;
                ValueEscape
            }
            PreValue if is_blank(c) => PreValue,
            PreValue | Value => {
                p.push_unquoted(c);
                Value
            }
            ValueEscape => {
                // An escaped newline is dropped: the value goes on on the next line.
                if !is_newline(c) {
                    p.value.push(c);
                }
                Value
            }
            SingleQuote if c == '\'' => PreValue,
            DoubleQuote if c == '"' => PreValue,
            DoubleQuote if c == '\\' => DoubleQuoteEscape,
            SingleQuote | DoubleQuote => {
                p.value.push(c);
                state
            }
            DoubleQuoteEscape => {
                if "\"\\`$".contains(c) {
                    p.value.push(c);
                } else if c != '\n' {
                    p.value.push('\\');
                    p.value.push(c);
                }
                DoubleQuote
            }
            // A comment ends at its line, a backslash at its end or not (systemd 254).
            Comment if c == '\\' => CommentEscape,
            Comment | CommentEscape if is_newline(c) => PreKey,
            Comment | CommentEscape => Comment,
        };
        if c == '\n' {
            line += 1;
        }
    }
    match state {
        PreValue | Value | ValueEscape => out.push(p.finish(state == Value, false)),
        SingleQuote | DoubleQuote | DoubleQuoteEscape => out.push(p.finish(false, true)),
        Key => out.push(Err(Rejected::NoAssignment {
            line: p.line,
            text: p.take_key(),
        })),
        PreKey | Comment | CommentEscape => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `(key, value)` pairs `text` assigns, with their lines.
    fn entries(text: &str) -> Vec<(String, String, usize)> {
        parse(text)
            .into_iter()
            .map(|r| {
                let e = r.unwrap();
                (e.key, e.value, e.line)
            })
            .collect()
    }

    fn one(text: &str) -> String {
        let mut e = entries(text);
        assert_eq!(e.len(), 1, "{text:?}: {e:?}");
        e.remove(0).1
    }

    #[test]
    fn comments_start_with_a_hash_or_a_semicolon_at_the_start_of_a_line_only() {
        assert_eq!(
            entries("# a\n  ; b\n\tA=1 # not a comment\n"),
            vec![("A".into(), "1 # not a comment".into(), 3)]
        );
        // A backslash does not continue a comment (systemd 254 and later).
        assert_eq!(entries("# a \\\nB=2\n"), vec![("B".into(), "2".into(), 2)]);
    }

    #[test]
    fn blanks_around_keys_and_unquoted_values_are_dropped() {
        assert_eq!(
            entries("  A = 1 \n\t B\t=\tx y\t\nC=\n"),
            vec![
                ("A".into(), "1".into(), 1),
                ("B".into(), "x y".into(), 2),
                ("C".into(), "".into(), 3)
            ]
        );
    }

    #[test]
    fn single_quotes_keep_everything_up_to_the_next_quote() {
        assert_eq!(one("A='x \\\" $y '\n"), "x \\\" $y ");
        assert_eq!(one("A='one\ntwo'\n"), "one\ntwo");
    }

    #[test]
    fn double_quotes_unescape_the_shells_four_and_keep_other_backslashes() {
        assert_eq!(one(r#"A="q\" b\\ d\$ t\` n\n""#), "q\" b\\ d$ t` n\\n");
        assert_eq!(one("A=\"one \\\ntwo\"\n"), "one two");
        assert_eq!(one("A=\" spaced \"  \n"), " spaced ");
    }

    #[test]
    fn unquoted_a_backslash_takes_the_next_character_and_continues_a_line() {
        assert_eq!(one("A=a\\ b\\#c\\\\\n"), "a b#c\\");
        assert_eq!(one("A=one \\\n  two\n"), "one   two");
        assert_eq!(entries("A=x\\\ny\nB=3\n")[1], ("B".into(), "3".into(), 3));
        // An escaped trailing blank stays.
        assert_eq!(one("A=x\\ \n"), "x ");
    }

    #[test]
    fn quoted_and_unquoted_parts_make_one_value() {
        assert_eq!(one("A=\"a\"'b'c\n"), "abc");
        assert_eq!(one("A=\"a\" \"b\"\n"), "ab");
        assert_eq!(one("A=x \"y\"\n"), "x \"y\"");
    }

    #[test]
    fn lines_are_counted_across_blank_lines_and_continuations() {
        let e = entries("\n\nA=1\n# c\nB='x\ny'\nC=2\r\nD=3");
        let lines: Vec<usize> = e.iter().map(|e| e.2).collect();
        assert_eq!(lines, vec![3, 5, 7, 8]);
        assert_eq!(e[2].1, "2", "a carriage return ends the line");
    }

    #[test]
    fn a_line_without_an_assignment_and_a_bad_name_are_rejected_with_their_line() {
        let r = parse("A=1\n  just words \nB C=2\n1X=3\nexport D=4\nE");
        assert_eq!(
            r[1],
            Err(Rejected::NoAssignment {
                line: 2,
                text: "just words".into()
            })
        );
        for (i, key) in [(2, "B C"), (3, "1X"), (4, "export D")] {
            match &r[i] {
                Err(Rejected::BadName(e)) => assert_eq!(e.key, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        assert_eq!(r[5].as_ref().unwrap_err().line(), 6);
        assert!(is_name("_A1") && !is_name("") && !is_name("A-B"));
    }

    #[test]
    fn an_unclosed_quote_takes_the_rest_of_the_file_and_says_so() {
        let r = parse("A=\"x\nB=2\n");
        assert_eq!(r.len(), 1);
        let e = r[0].as_ref().unwrap();
        assert_eq!((e.value.as_str(), e.open_quote), ("x\nB=2\n", true));
        assert!(!parse("A=\"x\"\n")[0].as_ref().unwrap().open_quote);
    }

    #[test]
    fn a_key_set_twice_is_returned_twice_in_order() {
        assert_eq!(
            entries("A=1\nA=2"),
            vec![("A".into(), "1".into(), 1), ("A".into(), "2".into(), 2)]
        );
    }

    #[test]
    fn render_round_trips_through_the_parser() {
        let pairs: Vec<(String, String)> = [
            ("A", "plain"),
            ("B", "two words"),
            ("C", "q\"uote \\back $HOME `tick` 'single'"),
            ("D", "line one\nline two"),
            ("E", ""),
            ("F", "trailing \\"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let back: Vec<(String, String)> = parse(&render(&pairs))
            .into_iter()
            .map(|e| e.map(|e| (e.key, e.value)).unwrap())
            .collect();
        assert_eq!(back, pairs);
    }
}
