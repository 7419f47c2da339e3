//! TLS as a user meets it, with the real binaries: a certificate from a public-style
//! chain (root → intermediate → server) trusted through the system's roots, a private
//! CA given with `--ca-cert`, a self-signed certificate (`fsync-server
//! --tls-self-signed`, and the usual one-line `openssl req -x509`) trusted by its pinned
//! fingerprint, and each refusal (unknown CA, wrong pin, expired, wrong name, plain
//! HTTP to the TLS port and the reverse) said in words a user can act on.
#![allow(missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fsync_tests::{
    assert_same_tree, check, client_command, free_port, server_command, stderr, wait_until,
    Account, Client, Server, EVENT_TIMEOUT, PASSWORD,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A server of the test's own, serving TLS; killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
    /// The fingerprint line it printed (`None` if it printed none).
    fingerprint: Option<String>,
    data: PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    /// `fsync-server` with `args` on a free port, data in `data`; returns once it
    /// printed its fingerprint and accepts connections.
    fn start(data: &Path, args: &[&str]) -> Self {
        let port = free_port();
        let mut child = server_command()
            .arg("--data-dir")
            .arg(data)
            .args(["--port", &port.to_string(), "--secret-key", &"s".repeat(40)])
            .args(["--log-level", "warn"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fsync-server");
        // The fingerprint comes before the listener binds; read until it.
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let fingerprint = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(fp) = l.strip_prefix("TLS certificate SHA-256 fingerprint: ") {
                        break Some(fp.trim().to_owned());
                    }
                }
                _ => panic!("fsync-server exited before printing its TLS fingerprint"),
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        wait_until(Duration::from_secs(20), "the TLS server to accept", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            port,
            fingerprint,
            data: data.to_owned(),
        }
    }
}

impl TlsServer {
    /// `fsync-server --tls-cert CERT --tls-key KEY`.
    fn with_cert(data: &Path, cert: &Path, key: &Path) -> Self {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        Self::start(data, &["--tls-cert", cert, "--tls-key", key])
    }

    /// Serves `leaf` (its PEM and key's PEM) with `intermediate` after it, as a public
    /// CA's chain is served; the files are `<stem>.pem` and `<stem>-key.pem` in `dir`.
    fn with_chain(
        dir: &Path,
        stem: &str,
        (cert, key): (String, String),
        intermediate: &CertifiedIssuer<'_, KeyPair>,
    ) -> Self {
        let chain = write(
            dir,
            &format!("{stem}.pem"),
            &format!("{cert}{}", intermediate.pem()),
        );
        let key = write(dir, &format!("{stem}-key.pem"), &key);
        Self::with_cert(&dir.join("data"), &chain, &key)
    }
}

/// `fsync-client register` at `url` with `env`.
fn register(url: &str, user: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    client_command()
        .args(["--server-url", url, "--username", user, "register"])
        .env("FSYNC_PASSWORD", PASSWORD)
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .output()
        .expect("run fsync-client")
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Two devices of a new account at `url` sync a file both ways with `env`.
fn two_devices_sync(url: &str, user: &str, env: &[(&str, &str)]) {
    check(&register(url, user, env), "register over TLS");
    let account = Account::at(url, user);
    let (a, b) = (account.device(), account.device());
    a.write("over-tls.txt", "encrypted, then over TLS");
    let sync = |c: &Client| check(&c.run_with_env(&["--once"], &owned(env)), "--once over TLS");
    sync(&a);
    sync(&b);
    assert_same_tree(&a, &b);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A CA's parameters.
fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A server certificate for `names` signed by `issuer`, valid for `days` from
/// `start_days_ago` days ago: its PEM and its key's PEM.
fn leaf(
    names: &[&str],
    issuer: &CertifiedIssuer<'_, KeyPair>,
    start_days_ago: u64,
    days: u64,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    let day = Duration::from_secs(86_400);
    let start = std::time::SystemTime::now() - day * u32::try_from(start_days_ago).unwrap();
    p.not_before = start.into();
    p.not_after = (start + day * u32::try_from(days).unwrap()).into();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A certificate from a chain like a public CA's: the server sends its certificate and
/// the intermediate; the client trusts the root because the system does
/// (`SSL_CERT_FILE` names the system bundle to `rustls-native-certs`, as on a machine
/// whose distribution ships that root). Without the root: refused, saying how to fix
/// it; with `--ca-cert` instead: trusted. Then an expired certificate and a name the
/// certificate does not have.
#[test]
fn a_public_style_chain_is_trusted_through_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root =
        CertifiedIssuer::self_signed(ca_params("fsync test root"), KeyPair::generate().unwrap())
            .unwrap();
    let intermediate = CertifiedIssuer::signed_by(
        ca_params("fsync test intermediate"),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let root_pem = write(dir.path(), "root.pem", &root.pem());
    let server = TlsServer::with_chain(
        dir.path(),
        "chain",
        leaf(&["localhost"], &intermediate, 1, 90),
        &intermediate,
    );
    let url = format!("https://localhost:{}", server.port);
    let root_str = root_pem.to_str().unwrap();

    // The root among the system's: no flag needed.
    two_devices_sync(&url, "pubchain", &[("SSL_CERT_FILE", root_str)]);

    // The machine's real bundle does not hold the test root: refused, with the fix.
    let out = register(&url, "unknownca", &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "an unknown CA was trusted");
    assert!(
        err.contains("not signed by a CA this client trusts") && err.contains("--ca-cert"),
        "{err}"
    );
    assert!(
        !err.contains("OtherError") && !err.contains("UnknownIssuer"),
        "{err}"
    );

    // A private CA given by hand is trusted besides the system's roots.
    check(
        &register(&url, "privateca", &[("FSYNC_CA_CERT", root_str)]),
        "register with --ca-cert",
    );

    // The name in the URL is not the certificate's.
    let by_ip = format!("https://127.0.0.1:{}", server.port);
    let err = stderr(&register(
        &by_ip,
        "wrongname",
        &[("SSL_CERT_FILE", root_str)],
    ));
    assert!(
        err.contains("not for 127.0.0.1") && err.contains("localhost"),
        "{err}"
    );
    drop(server);

    // An expired certificate: the operator must renew it.
    let server = TlsServer::with_chain(
        dir.path(),
        "expired",
        leaf(&["localhost"], &intermediate, 100, 30),
        &intermediate,
    );
    let url = format!("https://localhost:{}", server.port);
    let err = stderr(&register(&url, "expired", &[("SSL_CERT_FILE", root_str)]));
    assert!(
        err.contains("has expired") && err.contains("renew"),
        "{err}"
    );
}

/// `fsync-server --tls-self-signed` makes a certificate, prints its fingerprint and
/// shows it in `/health`; a client refuses it until pinned, naming the fingerprint to
/// pin; pinned, it syncs; a wrong pin and plain HTTP to the TLS port are refused with
/// what to do. A restart keeps the certificate (the pin holds).
#[test]
fn a_self_signed_certificate_is_trusted_by_its_pinned_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TlsServer::start(&data, &["--tls-self-signed"]);
    let fp = server.fingerprint.clone().expect("a fingerprint");
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    let url = format!("https://localhost:{}", server.port);

    // Unpinned: refused, and the message names the fingerprint and the flag.
    let out = register(&url, "selfsigned", &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("--server-fingerprint {fp}")),
        "the refusal should say how to pin it: {err}"
    );

    // Pinned (with the server's own spelling, and lowercase without colons).
    let bare = fp.replace(':', "").to_lowercase();
    two_devices_sync(&url, "pinned", &[("FSYNC_SERVER_FINGERPRINT", &fp)]);
    check(
        &register(&url, "pinnedbare", &[("FSYNC_SERVER_FINGERPRINT", &bare)]),
        "a pin written as bare hex",
    );

    // /health over TLS shows the fingerprint (asked with openssl's client, no trust).
    let health = https_get(server.port, "/health");
    assert!(
        health.contains(&format!("\"tls_fingerprint\":\"{fp}\"")),
        "{health}"
    );

    // A wrong pin: refused, not trusted, and said so.
    let mut wrong = fp.clone();
    wrong.replace_range(0..2, if fp.starts_with("00") { "11" } else { "00" });
    let err = stderr(&register(
        &url,
        "wrongpin",
        &[("FSYNC_SERVER_FINGERPRINT", &wrong)],
    ));
    assert!(err.contains("not the pinned one"), "{err}");
    // A daemon with a wrong pin stops and says why (it does not wait for the server as
    // for one that is down: only the user can fix it).
    let device = Account::at(&url, "pinned").device();
    let mut daemon = device.spawn_daemon_with_env(&owned(&[("FSYNC_SERVER_FINGERPRINT", &wrong)]));
    let status = daemon.wait_exit(EVENT_TIMEOUT);
    assert!(!status.success());
    assert!(
        daemon.log().contains("not the pinned one"),
        "{}",
        daemon.log()
    );
    let err = stderr(&register(
        &url,
        "badpin",
        &[("FSYNC_SERVER_FINGERPRINT", "abc")],
    ));
    assert!(err.contains("not a SHA-256 fingerprint"), "{err}");

    // Plain HTTP to the TLS port: the server answers in HTTP, telling to use https.
    let plain = format!("http://localhost:{}", server.port);
    let err = stderr(&register(&plain, "plainhttp", &[]));
    assert!(err.contains("this port serves HTTPS"), "{err}");

    // A restart keeps the certificate: the same fingerprint.
    drop(server);
    let again = TlsServer::start(&data, &["--tls-self-signed"]);
    assert_eq!(again.fingerprint.as_deref(), Some(fp.as_str()));
    assert!(again.data.join("tls/self-signed-key.pem").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(again.data.join("tls/self-signed-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key must be private");
    }
}

/// The usual one-line self-signed certificate (`openssl req -x509 …`, which marks it a
/// CA) is explained, not reported as `CaUsedAsEndEntity`, and is trusted once pinned
/// with the fingerprint `openssl x509 -fingerprint -sha256` prints. And `https://` to a
/// plain HTTP port says the server does not speak TLS there.
#[test]
fn an_openssl_one_liner_certificate_and_https_to_a_plain_port() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is on this machine");
    check(&made, "openssl req -x509");
    let printed = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
    let server = TlsServer::with_cert(&dir.path().join("data"), &cert, &key);
    let fp = server.fingerprint.clone().unwrap();
    assert!(printed.ends_with(&fp), "openssl: {printed}, server: {fp}");
    let url = format!("https://localhost:{}", server.port);
    let err = stderr(&register(&url, "oneliner", &[]));
    assert!(
        err.contains("presents a CA certificate as its own") && err.contains(&fp),
        "{err}"
    );
    assert!(!err.contains("CaUsedAsEndEntity"), "{err}");
    // openssl's own line ("sha256 Fingerprint=AB:…") is accepted as the pin.
    two_devices_sync(
        &url,
        "onelinerpin",
        &[("FSYNC_SERVER_FINGERPRINT", &printed)],
    );

    // https:// to a server that serves plain HTTP.
    let plain = Server::start();
    let url = format!("https://127.0.0.1:{}", plain.port());
    let err = stderr(&register(&url, "tlstoplain", &[]));
    assert!(
        err.contains("does not speak TLS on that port") && err.contains("http://"),
        "{err}"
    );
}

/// GET over TLS without verifying (`openssl s_client`), the response's text.
fn https_get(port: u16, path: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    write!(
        child.stdin.take().unwrap(),
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
