//! TLS for `https://` servers: which certificates are trusted, and what a refusal says.
//!
//! - **Roots.** The operating system's roots (`rustls-native-certs`: the distribution's
//!   bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), plus every certificate of
//!   `--ca-cert` (a private CA).
//! - **Pinning.** With `--server-fingerprint`, the server's own certificate must have
//!   that SHA-256 fingerprint; then neither its issuer nor its name nor its dates are
//!   checked (this covers self-signed certificates), but the handshake must still be
//!   signed by that certificate's key.
//! - **Refusals** carry a [`Refusal`] that says what is wrong in words a user can act
//!   on, with the certificate's fingerprint (so that the user can compare it with the
//!   one `fsync-server` printed, and pin it).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

use super::ClientError;

/// A certificate's SHA-256 fingerprint (of its DER encoding), as `openssl x509
/// -fingerprint -sha256` and `fsync-server --tls-self-signed` print it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    #[must_use]
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;

    /// 64 hex digits, with or without `:` between bytes, any case; an optional
    /// `sha256:` or `SHA256 Fingerprint=` prefix (as openssl prints it) is accepted.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.rsplit_once('=').map_or(t, |(_, v)| v);
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        match hex::decode_to_slice(&hex, &mut out) {
            Ok(()) => Ok(Self(out)),
            Err(_) => Err(format!(
                "{s:?} is not a SHA-256 fingerprint: give 64 hex digits, e.g. as \
                 fsync-server printed it (AB:CD:…)"
            )),
        }
    }
}

/// Where trust comes from.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of a private CA, trusted besides the system's roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// The server certificate's fingerprint: trusted alone when given.
    pub pin: Option<Fingerprint>,
}

/// Why a server certificate was refused; found by [`refusal`] in an error's chain.
#[derive(Debug)]
pub struct Refusal {
    /// What is wrong, for the message.
    pub reason: String,
    /// The refused certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// Whether pinning the fingerprint would be the fix (a self-signed certificate, or a
    /// CA nobody gave this client); not when the pin itself failed or the name is wrong.
    pub pinnable: bool,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (the certificate's SHA-256 fingerprint is {})",
            self.reason, self.fingerprint
        )?;
        if self.pinnable {
            write!(
                f,
                "; if it is the fingerprint fsync-server printed at start (compare it on the \
                 server's console or with its operator, not through this connection), pass \
                 --server-fingerprint {}",
                self.fingerprint
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// Loads every certificate of a PEM file.
fn load_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    use rustls::pki_types::pem::PemObject as _;

    let pem = std::fs::read(path).map_err(|source| ClientError::Io {
        what: format!("reading the CA file {}", path.display()),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Config(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The system's roots plus those of `ca_cert`.
fn roots(ca_cert: Option<&Path>) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system TLS roots: {e}");
    }
    // Unparsable system certificates are skipped (distributions ship a few).
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_cert {
        for cert in load_pem(path)? {
            roots.add(cert).map_err(|e| {
                ClientError::Config(format!(
                    "CA file {}: unusable certificate: {e}",
                    path.display()
                ))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(ClientError::Config(
            "no TLS roots: the system has no CA bundle (install ca-certificates, or set \
             SSL_CERT_FILE), and no --ca-cert was given; --server-fingerprint pins a server \
             certificate without any"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// The rustls client configuration for `opts`.
pub(super) fn tls_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = match opts.pin {
        // A pin alone decides: no roots are needed (nor looked at).
        Some(_) => None,
        None => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(opts.ca_cert.as_deref())?),
                provider.clone(),
            )
            .build()
            .map_err(|e| ClientError::Config(format!("TLS set-up: {e}")))?,
        ),
    };
    if let (Some(_), Some(path)) = (opts.pin, &opts.ca_cert) {
        // Still read, so that a broken --ca-cert is reported rather than ignored.
        load_pem(path)?;
    }
    let verifier = Verifier {
        webpki,
        pin: opts.pin,
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Web PKI verification with a [`Refusal`] for its errors, or a pin.
#[derive(Debug)]
struct Verifier {
    /// Chain, name and dates; `None` when pinned.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<Fingerprint>,
    /// For the handshake's signatures, pinned or not.
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

fn refuse(reason: String, fingerprint: Fingerprint, pinnable: bool) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Refusal {
            reason,
            fingerprint,
            pinnable,
        },
    ))))
}

/// What a Web PKI refusal means, and whether a pin would be the fix.
fn explain(e: &rustls::Error, host: &ServerName<'_>) -> (String, bool) {
    let host = host.to_str();
    let cert = match e {
        rustls::Error::InvalidCertificate(c) => c,
        other => {
            return (
                format!("the server's certificate was refused: {other}"),
                false,
            )
        }
    };
    match cert {
        CertificateError::UnknownIssuer => (
            format!(
                "the certificate of {host} is not signed by a CA this client trusts (the \
                 system's roots, and --ca-cert if given): for a private CA pass --ca-cert \
                 with its PEM file"
            ),
            true,
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            format!(
                "the certificate of {host} has expired{}: the server's operator must renew \
                 it (or check this computer's clock)",
                match cert {
                    CertificateError::ExpiredContext { not_after, .. } =>
                        format!(" (valid until {})", utc(*not_after)),
                    _ => String::new(),
                }
            ),
            false,
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            format!(
                "the certificate of {host} is not valid yet: check this computer's clock \
                 (or the server's certificate)"
            ),
            false,
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let names = match cert {
                CertificateError::NotValidForNameContext { presented, .. } => {
                    format!(" (it names {})", presented.join(", "))
                }
                _ => String::new(),
            };
            (
                format!(
                    "the certificate is not for {host}{names}: use the server's name as the \
                     certificate has it in --server-url"
                ),
                false,
            )
        }
        CertificateError::Other(o) if format!("{:?}", o.0).contains("CaUsedAsEndEntity") => (
            format!(
                "the server {host} presents a CA certificate as its own (as the one-line \
                 `openssl req -x509` makes): a self-signed certificate is trusted by its \
                 fingerprint"
            ),
            true,
        ),
        other => (
            format!("the certificate of {host} was refused: {other:?}"),
            false,
        ),
    }
}

/// A time as UTC date and time.
fn utc(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || format!("{secs} s since the epoch"),
        |d| d.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        let Some(webpki) = &self.webpki else {
            if self.pin == Some(fingerprint) {
                return Ok(ServerCertVerified::assertion());
            }
            let pin = self.pin.map(|p| p.to_string()).unwrap_or_default();
            return Err(refuse(
                format!(
                    "the certificate of {} is not the pinned one (--server-fingerprint {pin}): \
                     the server has a new certificate, or this is not the server you pinned",
                    server_name.to_str()
                ),
                fingerprint,
                false,
            ));
        };
        webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                let (reason, pinnable) = explain(&e, server_name);
                refuse(reason, fingerprint, pinnable)
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS failure found in an error's chain.
pub(super) struct TlsFailure {
    /// In words a user can act on.
    pub message: String,
    /// The server's certificate was refused (as opposed to a broken handshake).
    pub certificate: bool,
}

/// The TLS failure in an error's chain; `None` when the chain holds none. (io errors
/// hide their inner error from `source()`, so each link that is one is opened too.)
pub(super) fn tls_failure(e: &(dyn std::error::Error + 'static), url: &str) -> Option<TlsFailure> {
    let mut link: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(l) = link {
        // An io error may wrap another (reqwest's connector wraps tokio-rustls's).
        let mut candidate = Some(l);
        while let Some(c) = candidate {
            if let Some(msg) = rustls_failure(c, url) {
                return Some(msg);
            }
            candidate = c
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|i| i as &(dyn std::error::Error + 'static));
        }
        link = l.source();
    }
    None
}

fn rustls_failure(e: &(dyn std::error::Error + 'static), url: &str) -> Option<TlsFailure> {
    let refused = |message: String| TlsFailure {
        message,
        certificate: true,
    };
    if let Some(r) = e.downcast_ref::<Refusal>() {
        return Some(refused(r.to_string()));
    }
    let e = e.downcast_ref::<rustls::Error>()?;
    if let rustls::Error::InvalidCertificate(c) = e {
        return Some(refused(match c {
            CertificateError::Other(o) => match o.0.downcast_ref::<Refusal>() {
                Some(r) => r.to_string(),
                None => format!("the server's certificate was refused: {e}"),
            },
            _ => format!("the server's certificate was refused: {e}"),
        }));
    }
    let message = match e {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "{url} does not speak TLS on that port (it answered something else): if the \
             server serves plain HTTP, write http:// instead of https://"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the TLS handshake ({alert:?})")
        }
        other => format!("TLS failed: {other}"),
    };
    Some(TlsFailure {
        message,
        certificate: false,
    })
}
