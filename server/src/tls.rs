//! TLS by rustls: a listener that hands axum only completed handshakes, so a slow or
//! broken client never blocks the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("TLS certificate {path}: {reason}")]
    Cert {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("TLS private key {path}: {reason}")]
    Key {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (key does not match, unsupported algorithm…).
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads a PEM certificate chain and private key into a rustls server config.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_owned(),
            reason: "no certificate in the file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SHA-256 fingerprint of the first (the server's own) certificate of a PEM chain,
/// as uppercase hex pairs joined by `:` (what `openssl x509 -fingerprint -sha256`
/// prints, and what `fsync-client --server-fingerprint` takes).
pub fn cert_fingerprint(cert: &Path) -> Result<String, TlsError> {
    use sha2::Digest as _;
    let first = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| TlsError::Cert {
            path: cert.to_owned(),
            reason: "no certificate in the file".into(),
        })?
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let digest = sha2::Sha256::digest(first.as_ref());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// How long a generated self-signed certificate is valid. Clients trust it by its
/// fingerprint, which ignores dates; a long life avoids a surprise renewal that would
/// change the fingerprint every client pinned.
const SELF_SIGNED_DAYS: u64 = 3650;

/// The certificate and key of `--tls-self-signed` under `dir`, made on first use
/// (ECDSA P-256, for `localhost`, the host name, `127.0.0.1`, `::1` and `extra_names`)
/// and kept: the same fingerprint across restarts. The key is written mode 0600.
pub fn self_signed(dir: &Path, extra_names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("self-signed-cert.pem");
    let key = dir.join("self-signed-key.pem");
    if cert.exists() && key.exists() {
        if !extra_names.is_empty() {
            tracing::info!(cert = %cert.display(), "--tls-names: the self-signed certificate made earlier is kept (the pins of its clients stay valid); remove it and its key to make one for other names");
        }
        return Ok((cert, key));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| TlsError::Cert {
            path,
            reason: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    names.extend(
        extra_names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty()),
    );
    let generate = || -> Result<(String, String), rcgen::Error> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(names.clone())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fsync-server (self-signed)");
        let start = std::time::SystemTime::now() - Duration::from_secs(86_400);
        params.not_before = start.into();
        params.not_after = (start + Duration::from_secs(86_400 * SELF_SIGNED_DAYS)).into();
        let made = params.self_signed(&pair)?;
        Ok((made.pem(), pair.serialize_pem()))
    };
    let (cert_pem, key_pem) = generate().map_err(|e| TlsError::Cert {
        path: cert.clone(),
        reason: format!("making a self-signed certificate: {e}"),
    })?;
    // The key first: a certificate without its key would be reused and fail to load.
    fsync_common::durable::write_atomic(&key, key_pem.as_bytes(), Some(0o600)).map_err(io(&key))?;
    fsync_common::durable::write_atomic(&cert, cert_pem.as_bytes(), Some(0o644))
        .map_err(io(&cert))?;
    tracing::info!(cert = %cert.display(), "made a self-signed TLS certificate");
    Ok((cert, key))
}

/// The peer address of a TLS connection (axum's `ConnectInfo` for [`TlsListener`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A TCP listener that yields TLS streams.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and performs handshakes in the background.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // One deadline for the first byte and the whole handshake.
                    let handshake = async {
                        match first_byte(&stream).await {
                            None => Err("closed before the handshake".to_owned()),
                            // A plain HTTP request (a method name), not a handshake (22).
                            Some(b) if b.is_ascii_uppercase() => {
                                refuse_plain_http(stream, addr).await;
                                Ok(None)
                            }
                            Some(_) => acceptor
                                .accept(stream)
                                .await
                                .map(Some)
                                .map_err(|e| e.to_string()),
                        }
                    };
                    let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
                    match done {
                        Ok(Ok(Some(tls))) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

/// The first byte a new connection sends (without taking it); `None` if it closes.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) => Some(first[0]),
        _ => None,
    }
}

/// Answers a plain HTTP request on the TLS port in plain HTTP, with a message that says
/// to use `https://` (instead of a TLS alert the client would call "invalid HTTP
/// version"), then closes. Bounded: 64 KiB and 2 s for the request head, 1 s and
/// 1 MiB of draining after the answer.
async fn refuse_plain_http(mut stream: TcpStream, addr: SocketAddr) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tracing::debug!(peer = %addr, "plain HTTP on the TLS port");
    // Read the request head first: closing with unread data would reset the
    // connection before the client reads the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Only the new bytes (and 3 before them) can complete the blank line.
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&buf[..n]);
            if head[from..].windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let body = serde_json::json!({"error": {
        "code": "bad_request",
        "message": "this port serves HTTPS: write https:// instead of http:// in the server URL",
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Drain what the client still sends (a request body), so that closing does not
    // reset the connection before the answer is read.
    let drain = async {
        let mut left = 1024 * 1024usize;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
