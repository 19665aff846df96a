//! Mutual TLS between hosts: each host has a certificate and key, and every
//! host trusts the same certificate authority. The peer listener asks each
//! peer for a certificate signed by that authority; a peer checks the
//! listener's certificate against it too, for the name (or address) the
//! topology gives the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Largest certificate, key or authority file read.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The environment variables through which a `peer` replica finds the files.
pub const CERT_ENV: &str = "ORCH_PEER_TLS_CERT";
pub const KEY_ENV: &str = "ORCH_PEER_TLS_KEY";
pub const CA_ENV: &str = "ORCH_PEER_TLS_CA";

/// The three files (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The provider: ring, and TLS 1.2 and 1.3 as rustls offers them.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file, held to the rules of [`plugin_api::files`]: a key is a
/// secret (readable by its owner only), certificates are not.
fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use plugin_api::files::{self, FileError, Trust};
    let trust = if what == "key" { Trust::Secret } else { Trust::Shared };
    files::read(path, MAX_PEM_FILE, trust).map_err(|e| match e {
        FileError::Io { source, .. } => format!("cannot read the {what} {}: {source}", path.display()),
        FileError::TooLarge { .. } => format!("the {what} {} is larger than {MAX_PEM_FILE} bytes", path.display()),
        e => format!("the {what}: {e}"),
    })
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path, what)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the {what} {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("the {what} {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The host's certificate chain and key, and the authority's certificates.
struct Loaded {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn load(files: &Files) -> Result<Loaded, String> {
    let chain = certificates(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key, "key")?)
        .map_err(|e| format!("the key {} is not a PEM private key: {e}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(&files.ca, "certificate authority")? {
        roots.add(cert).map_err(|e| format!("the certificate authority {}: {e}", files.ca.display()))?;
    }
    Ok(Loaded { chain, key, roots: Arc::new(roots) })
}

/// The peer listener's configuration: its certificate, and a certificate
/// signed by the authority asked of every peer.
pub fn server_config(files: &Files) -> Result<rustls::ServerConfig, String> {
    let Loaded { chain, key, roots } = load(files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("the certificate authority {}: {e}", files.ca.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate {} and key {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A peer's configuration: its certificate presented, the listener's
/// checked against the authority.
pub fn client_config(files: &Files) -> Result<rustls::ClientConfig, String> {
    let Loaded { chain, key, roots } = load(files)?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the certificate {} and key {}: {e}", files.cert.display(), files.key.display()))
}

/// A configuration for plain connections, never used for TLS (a connector
/// needs one).
pub fn plain_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(RootCertStore::empty()).with_no_client_auth())
        .unwrap_or_else(|_| unreachable!("ring offers the default protocol versions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_up_to_the_limit_and_refused_past_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("peer-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (at, past) = (dir.join("at.pem"), dir.join("past.pem"));
        std::fs::write(&at, vec![b'\n'; MAX_PEM_FILE as usize]).unwrap();
        std::fs::write(&past, vec![b'\n'; MAX_PEM_FILE as usize + 1]).unwrap();
        for f in [&at, &past] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(read(&at, "key").map(|b| b.len() as u64), Ok(MAX_PEM_FILE));
        let refused = read(&past, "key").unwrap_err();
        assert!(refused.contains("is larger than 1048576 bytes"), "{refused}");
        // Read, but no certificate in it.
        let empty = certificates(&at, "certificate").unwrap_err();
        assert!(empty.contains("holds no certificate"), "{empty}");
        // A key others can read is refused; a certificate they can is not.
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o644)).unwrap();
        let readable = read(&at, "key").unwrap_err();
        assert!(readable.contains("chmod 600"), "{readable}");
        assert!(read(&at, "certificate").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
