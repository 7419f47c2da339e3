//! HTTPS: the server speaks TLS with `--tls-cert/--tls-key`, and refuses bad key files
//! with a message naming the file.
#![allow(missing_docs)]

use clap::Parser;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/tls.rs"]
mod tls_fixtures;

use tls_fixtures::{client_config, fixture};

#[tokio::test]
async fn serves_health_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let config = fsync_server::Config::parse_from([
        "fsync-server",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--secret-key",
        "a-test-secret-that-is-long-enough-0123",
    ]);
    let state = fsync_server::build_state(&config).await.unwrap();
    let tls = fsync_server::load_server_config(&fixture("test-cert.pem"), &fixture("test-key.pem"))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fsync_server::run_tls(listener, tls, state, async {
        let _ = stopped.await;
    }));

    // A plain-text client gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        plain.read_to_end(&mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // A client trusting the test CA gets a healthy answer.
    let connector = tokio_rustls::TlsConnector::from(client_config());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"status\":\"ok\""), "{text}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn bad_key_files_are_named_in_the_error() {
    let missing = fixture("nope.pem");
    let err = fsync_server::load_server_config(&fixture("test-cert.pem"), &missing).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let err = fsync_server::load_server_config(&fixture("test-key.pem"), &fixture("test-key.pem"))
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}
