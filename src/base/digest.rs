// SPDX-License-Identifier: Apache-2.0
//! The digest every copied byte goes through, and which one a manifest uses.
//!
//! BLAKE3 by default, SHA-256 on request (`backup --hash sha256`) and for manifests
//! written before format 3. Measured on the benchmark's 2-vCPU guest (SHA-NI,
//! AVX-512; bench/RESULTS.md): SHA-256 (OpenSSL, SHA instructions) 0.6–0.9 GB/s per
//! core under load and about 60 % of a backup's CPU, BLAKE3 3.6 GB/s on one core
//! (4.3–5.0 GB/s on both, not used: one core is already about four times faster
//! than the device, and `--jobs` keeps the other busy), so hashing no longer sets
//! the pace. Both
//! print what the standard tools print for the same bytes (`b3sum`, `sha256sum`),
//! so an operator can check a backup without synbackup (`verify --print-sums`).

use std::fmt;

/// A digest algorithm, as a manifest names it (`"hash": "blake3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Algo {
    /// BLAKE3-256: the default.
    Blake3,
    /// SHA-256: for operators who require it; every manifest before format 3.
    Sha256,
}

impl Algo {
    /// The name written in the manifest and in its file entries.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Algo::Blake3 => "blake3",
            Algo::Sha256 => "sha256",
        }
    }

    /// The algorithm a manifest names; None for one this synbackup does not know.
    pub(crate) fn from_name(name: &str) -> Option<Algo> {
        match name {
            "blake3" => Some(Algo::Blake3),
            "sha256" => Some(Algo::Sha256),
            _ => None,
        }
    }

    /// How people write it ("BLAKE3", "SHA-256").
    pub(crate) fn label(self) -> &'static str {
        match self {
            Algo::Blake3 => "BLAKE3",
            Algo::Sha256 => "SHA-256",
        }
    }

    /// The standard tool that checks a list of these digests (`TOOL -c LIST`).
    pub(crate) fn tool(self) -> &'static str {
        match self {
            Algo::Blake3 => "b3sum",
            Algo::Sha256 => "sha256sum",
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running digest of either algorithm.
pub(crate) enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(openssl::sha::Sha256),
}

impl Hasher {
    pub(crate) fn new(algo: Algo) -> Hasher {
        match algo {
            Algo::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            Algo::Sha256 => Hasher::Sha256(openssl::sha::Sha256::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    /// The digest in lower-case hex, as `b3sum` and `sha256sum` print it.
    pub(crate) fn finish_hex(self) -> String {
        match self {
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
            Hasher::Sha256(h) => hex(&h.finish()),
        }
    }
}

/// Lower-case hex of a digest (or any bytes).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest of `bytes` in hex.
#[cfg(test)]
pub(crate) fn hex_digest(algo: Algo, bytes: &[u8]) -> String {
    let mut h = Hasher::new(algo);
    h.update(bytes);
    h.finish_hex()
}

/// One line of a `b3sum`/`sha256sum` checksum list for `path` (bytes of a file
/// name, relative to the directory the list is checked in). Names holding a
/// backslash or a newline are written escaped, the way both tools write and read
/// them: a leading `\`, then `\\` and `\n`.
pub(crate) fn sums_line(digest: &str, path: &[u8]) -> Vec<u8> {
    let escape = path.iter().any(|&b| b == b'\\' || b == b'\n');
    let mut line = Vec::with_capacity(digest.len() + path.len() + 4);
    if escape {
        line.push(b'\\');
    }
    line.extend_from_slice(digest.as_bytes());
    line.extend_from_slice(b"  ");
    for &b in path {
        match b {
            b'\\' if escape => line.extend_from_slice(b"\\\\"),
            b'\n' if escape => line.extend_from_slice(b"\\n"),
            _ => line.push(b),
        }
    }
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_the_standard_ones() {
        // b3sum and sha256sum of "abc".
        assert_eq!(
            hex_digest(Algo::Blake3, b"abc"),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(
            hex_digest(Algo::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for a in [Algo::Blake3, Algo::Sha256] {
            assert_eq!(Algo::from_name(a.name()), Some(a));
        }
        assert_eq!(Algo::from_name("md5"), None);
    }

    #[test]
    fn sums_lines_escape_like_the_tools() {
        assert_eq!(sums_line("ab", b"x/y"), b"ab  x/y\n");
        assert_eq!(sums_line("ab", b"a\\b\nc"), b"\\ab  a\\\\b\\nc\n");
    }
}
