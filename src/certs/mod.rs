// SPDX-License-Identifier: Apache-2.0
//! TLS material, one capability: check every certificate and key a service uses
//! (`check`, with OpenSSL), record the result for an instance (metrics, expiry
//! events, the state `status` shows: `record`), and put a renewed HTTPS pair into
//! the running cell (`pair` for the files, `deploy` for the reload and the
//! confirmation). The backup engine carries the certificate directory
//! (`engine::certdir`); `restore --certs` puts it back (`restore::certs`).
//! Imports the shared layers only, never another capability.

/// The checks: dates, keys, chains, names, modes; a [`Report`].
pub(crate) mod check;
/// `certs deploy`: the new pair into the running cell, reloaded, confirmed.
pub(crate) mod deploy;
/// Finding the certificates and keys, and who can read a key.
pub(crate) mod files;
/// The `ssl://` listener of the cell's config and the names it needs.
pub(crate) mod listeners;
/// `certs deploy`'s files: check a new HTTPS pair, keep the old one, write, put back.
pub(crate) mod pair;
/// An instance's check: metrics, expiry events, the state `status` shows.
pub(crate) mod record;
/// The certificate a TLS server serves (its fingerprint).
pub(crate) mod served;
/// OpenSSL: chains, keys, dates, names, verification.
pub(crate) mod x509;

pub(crate) use check::{check_material, CertInfo, Options, Report, Severity};
