// SPDX-License-Identifier: Apache-2.0
//! TLS material for the `certs` tests, made by Synapse's own easycert (a CA, host
//! and user certificates, a CRL); certificates with chosen dates (expiring in 10
//! days, expired) are signed with the easycert CA's key through the openssl crate,
//! as `openssl x509 -req -CA cas/testca.crt -CAkey cas/testca.key` would, because
//! easycert always issues ten-year certificates.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};

use super::{command, python};

/// Run `python -m synapse.tools.utils.easycert --certdir DIR ARGS`.
pub fn easycert(certdir: &Path, args: &[&str]) {
    let out = command(python())
        .args(["-m", "synapse.tools.utils.easycert", "--certdir"])
        .arg(certdir)
        .args(args)
        .output()
        .expect("run easycert");
    assert!(
        out.status.success(),
        "easycert {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A service directory and its certificate directory in a temporary tree.
pub struct Material {
    pub _t: tempfile::TempDir,
    pub root: PathBuf,
    pub svc: PathBuf,
    pub certdir: PathBuf,
}

impl Material {
    /// The HTTPS pair Synapse writes when it starts without one (self-signed,
    /// CN=cortex: the fixture's, made so) in place of the material's.
    pub fn use_synapses_default_pair(&self) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cortex00");
        fs::copy(fixture.join("sslcert.pem"), self.svc.join("sslcert.pem")).unwrap();
        write_key(
            &self.svc.join("sslkey.pem"),
            &fs::read(fixture.join("sslkey.pem")).unwrap(),
        );
    }

    /// `ROOT/etc/c0.conf`: instance `c0` on the service directory, backups under
    /// `ROOT/backups`, this certificate directory.
    pub fn write_instance_config(&self) {
        std::fs::create_dir_all(self.root.join("etc")).unwrap();
        std::fs::write(
            self.root.join("etc/c0.conf"),
            format!(
                "SYNBACKUP_SERVICE_DIR={}\nSYNBACKUP_BACKUP_ROOT={}\nSYNBACKUP_CERT_DIR={}\n",
                self.svc.display(),
                self.root.join("backups").display(),
                self.certdir.display()
            ),
        )
        .unwrap();
    }
}

/// The good case: CA `testca` (its key moved off the host, as the guide says), host
/// `cortex.local` (SANs cortex.local, localhost), user `root@testca`; the service's
/// HTTPS pair a testca certificate for `localhost` (0600 key); `dmon:listen` an
/// `ssl://` listener as `cortex.local` checking clients against testca.
pub fn good_material() -> Material {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    // Open the tree to others, so only the modes of the files decide who reads a key.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let certdir = root.join("home/.syn/certs");
    easycert(&certdir, &["--ca", "testca"]);
    easycert(
        &certdir,
        &[
            "--server",
            "--server-sans",
            "DNS:cortex.local,DNS:localhost",
            "--signas",
            "testca",
            "cortex.local",
        ],
    );
    easycert(&certdir, &["--signas", "testca", "root@testca"]);
    easycert(&certdir, &["--crl", "testca"]);
    fs::rename(certdir.join("cas/testca.key"), root.join("testca.key")).unwrap();
    let svc = root.join("svc");
    fs::create_dir_all(&svc).unwrap();
    fs::write(
        svc.join("cell.yaml"),
        "dmon:listen: ssl://0.0.0.0:0?hostname=cortex.local&ca=testca\n",
    )
    .unwrap();
    let https = sign(&certdir, &root.join("testca.key"), "localhost", -1, 365);
    fs::write(svc.join("sslcert.pem"), https.0).unwrap();
    write_key(&svc.join("sslkey.pem"), &https.1);
    Material {
        _t: t,
        root,
        svc,
        certdir,
    }
}

/// Write a private key with mode 0600.
pub fn write_key(path: &Path, pem: &[u8]) {
    fs::write(path, pem).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// A certificate for `cn` (also its DNS SAN) signed by `certdir/cas/testca.crt` with
/// `ca_key`, valid from `from_days` to `to_days` days from now: (cert PEM, key PEM).
pub fn sign(
    certdir: &Path,
    ca_key: &Path,
    cn: &str,
    from_days: i64,
    to_days: i64,
) -> (Vec<u8>, Vec<u8>) {
    sign_bits(certdir, ca_key, cn, from_days, to_days, 2048)
}

/// As [`sign`], with an RSA key of `bits` (1024: a key OpenSSL parses and verifies
/// but a TLS server at the default security level refuses to load).
pub fn sign_bits(
    certdir: &Path,
    ca_key: &Path,
    cn: &str,
    from_days: i64,
    to_days: i64,
    bits: u32,
) -> (Vec<u8>, Vec<u8>) {
    let ca = X509::from_pem(&fs::read(certdir.join("cas/testca.crt")).unwrap()).unwrap();
    let ca_key = PKey::private_key_from_pem(&fs::read(ca_key).unwrap()).unwrap();
    let key = PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now + from_days * 86_400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + to_days * 86_400).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns(cn)
        .build(&b.x509v3_context(Some(&ca), None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

/// Put a `hosts/CN.crt` + `.key` valid from `from_days` to `to_days` into the
/// certificate directory; returns the certificate's path.
pub fn add_host(m: &Material, cn: &str, from_days: i64, to_days: i64) -> PathBuf {
    let (crt, key) = sign(
        &m.certdir,
        &m.root.join("testca.key"),
        cn,
        from_days,
        to_days,
    );
    let path = m.certdir.join(format!("hosts/{cn}.crt"));
    fs::write(&path, crt).unwrap();
    write_key(&path.with_extension("key"), &key);
    path
}
