//! TLS roots: only the certificates of the given CA file are trusted.

use super::ClientError;
use std::path::Path;
use std::sync::Arc;

/// Loads every certificate of a PEM file into a root store.
pub(super) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;

    let pem = std::fs::read(path).map_err(|source| ClientError::Io {
        what: format!("reading the CA file {}", path.display()),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| ClientError::Config(format!("CA file {}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            ClientError::Config(format!(
                "CA file {}: unusable certificate: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(ClientError::Config(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(roots)
}

pub(super) fn tls_config(
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, ClientError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Config(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
