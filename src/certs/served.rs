// SPDX-License-Identifier: Apache-2.0
//! Which certificate a TLS server serves: one handshake, no verification (the
//! point is to see what is served, trusted or not), the leaf's SHA-256.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use super::pair::fingerprint;

/// The SHA-256 fingerprint of the leaf certificate `addr` serves now.
pub(crate) fn served_fingerprint(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    let connector = b.build();
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to the HTTPS port {addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut conf = connector.configure()?;
    conf.set_use_server_name_indication(false);
    conf.set_verify_hostname(false);
    let tls = conf
        .connect("localhost", tcp)
        .map_err(|e| anyhow!("TLS handshake with {addr} failed: {e}"))?;
    let leaf = tls
        .ssl()
        .peer_certificate()
        .ok_or_else(|| anyhow!("{addr} served no certificate"))?;
    fingerprint(&leaf)
}
