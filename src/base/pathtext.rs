// SPDX-License-Identifier: Apache-2.0
//! Paths as text, without losing a byte. A Linux path is bytes; a name that is not
//! UTF-8 (`svc\xff`) must neither become U+FFFD in a status file (it would then name
//! a directory that does not exist) nor be printed as something an operator cannot
//! paste.
//!
//! - [`key`] / [`path`]: the form records use (status files, JSON on stdout, the
//!   manifest): the path as it is when it is UTF-8 (and does not begin with `hex:`),
//!   else `hex:` and the lower-case hex of its bytes. Lossless both ways.
//! - [`shell_word`]: the form printed for an operator: as it is when it has only
//!   safe characters, else one shell word in `$'...'` with every other byte as
//!   `\xNN`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::base::digest::hex;

/// A name or path as records write it (see the module's preamble).
pub(crate) fn key_of(name: &OsStr) -> String {
    match name.to_str() {
        Some(s) if !s.starts_with("hex:") => s.to_string(),
        _ => format!("hex:{}", hex(name.as_bytes())),
    }
}

/// A path as records write it.
pub(crate) fn key(p: &Path) -> String {
    key_of(p.as_os_str())
}

/// The bytes of a name written by [`key_of`] (text that is not such a key, as it is).
pub(crate) fn name(key: &str) -> OsString {
    key.strip_prefix("hex:")
        .and_then(unhex)
        .map(OsString::from_vec)
        .unwrap_or_else(|| OsString::from(key))
}

/// The path written by [`key`].
pub(crate) fn path(key: &str) -> PathBuf {
    PathBuf::from(name(key))
}

/// Bytes of lower-case or upper-case hex; None if it is not hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A path as one shell word an operator can paste (see the module's preamble).
pub(crate) fn shell_word(p: &Path) -> String {
    let bytes = p.as_os_str().as_bytes();
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_./+,:@%=-".contains(&b);
    if !bytes.is_empty() && bytes.iter().all(|&b| safe(b)) {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut out = String::from("$'");
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('\'');
    out
}

/// [`shell_word`] as a method: `path.escaped()` where `path.display()` would
/// print U+FFFD for a byte that is not UTF-8.
pub(crate) trait Escaped {
    fn escaped(&self) -> String;
}

impl Escaped for Path {
    fn escaped(&self) -> String {
        shell_word(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_every_byte_and_words_escape_them() {
        let odd = Path::new(OsStr::from_bytes(b"/srv/svc\xff\xfe.pre-restore-1"));
        assert_eq!(
            key(odd),
            "hex:2f7372762f737663fffe2e7072652d726573746f72652d31"
        );
        assert_eq!(path(&key(odd)), odd);
        assert_eq!(key(Path::new("/srv/c0")), "/srv/c0");
        assert_eq!(path("/srv/c0"), Path::new("/srv/c0"));
        let tricky = Path::new("hex:ab");
        assert_eq!(path(&key(tricky)), tricky);
        assert_eq!(shell_word(odd), "$'/srv/svc\\xff\\xfe.pre-restore-1'");
        assert_eq!(shell_word(Path::new("/srv/c0")), "/srv/c0");
        assert_eq!(shell_word(Path::new("/a b/it's")), "$'/a b/it\\x27s'");
    }
}
