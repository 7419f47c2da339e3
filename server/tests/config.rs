//! The `fsync-server` binary's configuration, run as a real process in a temporary
//! working directory with an empty environment: the `POSTGRES_URL` alias, `.env`,
//! `SERVER_HOST`/`SERVER_PORT`, JSON logs, the generated-secret warning (and the secret
//! kept out of the log), refused options (a log level that names no level, a TLS
//! certificate without its key, a `.env` that does not parse), HTTPS from the flags,
//! and `.env.example` listing every variable the server reads.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::CommandFactory;

/// How long any awaited event may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

const SECRET: &str = "config-test-secret-0123456789abcdef0123";

#[path = "common/tls.rs"]
mod tls_fixtures;

/// A TLS fixture's path, as a command-line argument.
fn fixture(name: &str) -> String {
    tls_fixtures::fixture(name).display().to_string()
}

// ------------------------------------------------------------------ the process

enum Event {
    Line(String),
    Eof,
}

/// A running `fsync-server`: its stdout and stderr lines as they come; killed on drop.
struct Proc {
    child: Child,
    rx: mpsc::Receiver<Event>,
    /// Every line so far, both streams.
    log: Vec<String>,
    open_streams: usize,
}

impl Proc {
    /// Starts the binary in `cwd` with exactly `env` as its environment.
    fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fsync-server"))
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fsync-server");
        let (tx, rx) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Event::Line(line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Event::Eof);
            });
        }
        Self {
            child,
            rx,
            log: Vec::new(),
            open_streams: 2,
        }
    }

    fn log_text(&self) -> String {
        self.log.join("\n")
    }

    /// Waits for a line matching `pred`; fails when the process ends first or after
    /// [`TIMEOUT`].
    fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Event::Line(line)) => {
                    self.log.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(Event::Eof) => {
                    self.open_streams -= 1;
                    assert!(
                        self.open_streams > 0,
                        "fsync-server ended before {what}:\n{}",
                        self.log_text()
                    );
                }
                Err(e) => panic!("no {what} within {TIMEOUT:?} ({e}):\n{}", self.log_text()),
            }
        }
    }

    /// Waits for the "listening" line and returns the address it names.
    fn listening(&mut self) -> SocketAddr {
        let line = self.wait_line("the listening line", |l| {
            l.contains("fsync-server listening")
        });
        let addr = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v["fields"]["addr"].as_str().unwrap_or_default().to_owned(),
            Err(_) => line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap_or_default()
                .to_owned(),
        };
        addr.parse()
            .unwrap_or_else(|_| panic!("no address in {line:?}"))
    }

    /// Waits for the process to end by itself; its exit status and whole output.
    fn exit(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + TIMEOUT;
        while self.open_streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Event::Line(line)) => self.log.push(line),
                Ok(Event::Eof) => self.open_streams -= 1,
                Err(e) => panic!("fsync-server did not exit ({e}):\n{}", self.log_text()),
            }
        }
        let status = self.child.wait().expect("wait for fsync-server");
        (status, self.log_text())
    }

    /// Kills the process and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        self.exit().1
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over plain HTTP: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect to fsync-server");
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).expect("read the answer");
    parse_response(&raw)
}

fn parse_response(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Runs `sql` on the database `url` names; the first column of its rows.
fn sql(url: &str, statement: &str) -> Vec<String> {
    let rows = fsync_testkit::postgres::rows_blocking(url, statement);
    let rows = rows.unwrap_or_else(|e| panic!("{statement}: {e:#}"));
    rows.into_iter()
        .map(|r| r.into_iter().next().unwrap_or_default())
        .collect()
}

/// `["users"]` once the migrations ran in the database `url` names.
fn users_table(url: &str) -> Vec<String> {
    sql(
        url,
        "SELECT table_name::text FROM information_schema.tables WHERE table_name = 'users'",
    )
}

// ------------------------------------------------------------------ the tests

/// With only `POSTGRES_URL` set, the server runs its migrations on PostgreSQL and
/// serves from it: no SQLite file appears.
#[test]
fn postgres_url_alone_selects_postgresql() {
    let Some(base) = fsync_testkit::postgres::test_database_url() else {
        eprintln!("FSYNC_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let db = fsync_testkit::postgres::ScratchDatabase::create_blocking(&base)
        .expect("a test database on FSYNC_TEST_DATABASE_URL");
    let url = db.url().to_owned();
    let cwd = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        cwd.path(),
        &["--port", "0"],
        &[("POSTGRES_URL", &url), ("SECRET_KEY", SECRET)],
    );
    let addr = server.listening();
    let (status, body) = http_get(addr, "/health");
    assert_eq!(status, 200, "{body}");
    let tables = users_table(&url);
    assert_eq!(tables, ["users"], "no migrations ran on PostgreSQL");
    assert!(
        !cwd.path().join("data/fsync.db").exists(),
        "an SQLite database was created although POSTGRES_URL was set"
    );
    let log = server.stop();
    assert!(
        log.contains("postgres://fsync:***@"),
        "the start line does not name PostgreSQL (password hidden):\n{log}"
    );
    db.drop_database_blocking().expect("drop the test database");
}

/// The README's PostgreSQL start without its set-up steps: a database that does not
/// exist is created when the role may (the test role has `CREATEDB`); a refused role and
/// nothing listening stop the server with one line saying what to do, each cause once,
/// and no password in it.
#[test]
fn a_postgres_database_is_created_when_the_role_may_and_refusals_say_what_to_do() {
    let Some(base) = fsync_testkit::postgres::test_database_url() else {
        eprintln!("FSYNC_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let name = fsync_testkit::postgres::scratch_name(fsync_testkit::postgres::SCRATCH_PREFIX);
    let url = fsync_testkit::postgres::with_database(&base, &name).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        cwd.path(),
        &["--port", "0"],
        &[("DATABASE_URL", &url), ("SECRET_KEY", SECRET)],
    );
    let addr = server.listening();
    assert_eq!(http_get(addr, "/health").0, 200);
    let log = server.stop();
    assert!(
        log.contains("created the PostgreSQL database"),
        "the new database is not said:\n{log}"
    );
    let tables = users_table(&url);
    assert_eq!(
        tables,
        ["users"],
        "no migrations ran in the created database"
    );
    fsync_testkit::postgres::execute_blocking(&base, &format!("DROP DATABASE {name}"))
        .expect("drop the created database");

    let (scheme, rest) = base.split_once("://").unwrap();
    let (creds, place) = rest
        .rsplit_once('@')
        .expect("a role in FSYNC_TEST_DATABASE_URL");
    let role = creds.split(':').next().unwrap();
    let wrong = format!("{scheme}://{role}:not-the-password@{place}");
    let refused = [
        (wrong, format!("refused the role \"{role}\"")),
        (
            "postgres://fsync:secret-pw@127.0.0.1:1/fsync".to_owned(),
            "cannot connect to PostgreSQL at 127.0.0.1:1".to_owned(),
        ),
    ];
    for (url, says) in refused {
        let cwd = tempfile::tempdir().unwrap();
        let server = Proc::spawn(cwd.path(), &["--port", "0"], &[("DATABASE_URL", &url)]);
        let (status, log) = server.exit();
        assert!(!status.success(), "started on {url}:\n{log}");
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("fsync-server:"))
            .collect();
        assert_eq!(said.len(), 1, "not one line:\n{log}");
        assert_eq!(
            said[0].matches(&says).count(),
            1,
            "{says:?} not once:\n{log}"
        );
        assert!(
            !log.contains("not-the-password") && !log.contains("secret-pw"),
            "a password in the output:\n{log}"
        );
        assert!(
            !log.contains("Caused by") && !log.contains("backtrace"),
            "{log}"
        );
    }
}

/// `.env` in the working directory is read: its data dir and log format are used.
#[test]
fn dotenv_in_the_working_directory_is_read() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join(".env"),
        format!(
            "# from .env\nSERVER_PORT=0\nFSYNC_DATA_DIR=from-dotenv\nSECRET_KEY={SECRET}\n\
             LOG_FORMAT=json\n"
        ),
    )
    .unwrap();
    let mut server = Proc::spawn(cwd.path(), &[], &[]);
    let addr = server.listening();
    assert_eq!(http_get(addr, "/health").0, 200);
    assert!(cwd.path().join("from-dotenv/fsync.db").is_file());
    assert!(cwd.path().join("from-dotenv/blobs").is_dir());
    assert!(!cwd.path().join("data").exists());
    let log = server.stop();
    assert!(
        log.lines().all(|l| l.starts_with('{')),
        "LOG_FORMAT=json from .env was not applied:\n{log}"
    );
}

/// A `.env` that does not parse stops the server with an error naming it.
#[test]
fn a_malformed_dotenv_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join(".env"),
        "SERVER_PORT=0\nthis is not a line\n",
    )
    .unwrap();
    let (status, out) = Proc::spawn(cwd.path(), &[], &[]).exit();
    assert!(!status.success(), "{out}");
    // The line to fix, not a character index.
    assert!(out.contains(".env"), "{out}");
    assert!(
        out.contains("cannot parse the line \"this is not a line\""),
        "{out}"
    );
}

/// `SERVER_HOST` and `SERVER_PORT` choose the listening address.
#[test]
fn server_host_and_port_come_from_the_environment() {
    // A loopback address other than the default, and a port that was free a moment ago.
    let host = "127.0.0.2";
    let port = std::net::TcpListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let cwd = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        cwd.path(),
        &[],
        &[
            ("SERVER_HOST", host),
            ("SERVER_PORT", &port),
            ("SECRET_KEY", SECRET),
        ],
    );
    let addr = server.listening();
    assert_eq!(addr.to_string(), format!("{host}:{port}"));
    assert_eq!(http_get(addr, "/health").0, 200);
}

/// `--log-format json`: every line the server writes is a JSON object with a level
/// and fields (a request's line included).
#[test]
fn log_format_json_writes_json_lines() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        cwd.path(),
        &[
            "--port",
            "0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
        &[("SECRET_KEY", SECRET)],
    );
    let addr = server.listening();
    assert_eq!(http_get(addr, "/health").0, 200);
    server.wait_line("the request's line", |l| l.contains("/health"));
    let log = server.stop();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "{log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
    }
}

/// Without `SECRET_KEY` the server generates one, says so in a warning, and never
/// writes it to the log (debug level, a request served); a restart reuses it quietly.
#[test]
fn a_generated_secret_is_warned_about_and_never_logged() {
    let cwd = tempfile::tempdir().unwrap();
    let args = ["--port", "0", "--log-level", "trace"];
    let mut server = Proc::spawn(cwd.path(), &args, &[]);
    let addr = server.listening();
    assert_eq!(http_get(addr, "/health").0, 200);
    server.wait_line("the request's line", |l| l.contains("/health"));
    let log = server.stop();
    let secret = std::fs::read_to_string(cwd.path().join("data/secret.key")).unwrap();
    assert_eq!(secret.trim().len(), 64, "{secret:?}");
    let warning = log
        .lines()
        .find(|l| l.contains("SECRET_KEY not set"))
        .unwrap_or_else(|| panic!("no warning about the generated secret:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        !log.contains(secret.trim()),
        "the secret is in the log:\n{log}"
    );

    let mut again = Proc::spawn(cwd.path(), &args, &[]);
    again.listening();
    let log = again.stop();
    assert!(!log.contains("SECRET_KEY not set"), "{log}");
    assert!(
        !log.contains(secret.trim()),
        "the secret is in the log:\n{log}"
    );
}

/// A log level that names no level is refused, from the flag or the environment,
/// with a message saying what is accepted and a non-zero exit.
#[test]
fn an_invalid_log_level_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    for (args, env) in [
        (vec!["--log-level", "verbose"], vec![]),
        (vec![], vec![("LOG_LEVEL", "verbose")]),
        (vec!["--log-level", "info,fsync_server=loud"], vec![]),
    ] {
        let mut env = env;
        env.push(("SECRET_KEY", SECRET));
        let mut args = args;
        args.extend(["--port", "0"]);
        let (status, out) = Proc::spawn(cwd.path(), &args, &env).exit();
        assert!(!status.success(), "{args:?} {env:?} was accepted:\n{out}");
        assert!(
            out.contains("--log-level") && out.contains("names no log level"),
            "{out}"
        );
        assert!(!out.contains("listening"), "{out}");
    }
}

/// A certificate without its key (or a key without its certificate) is refused.
#[test]
fn tls_cert_without_key_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    for (given, file, missing) in [
        ("--tls-cert", "test-cert.pem", "--tls-key"),
        ("--tls-key", "test-key.pem", "--tls-cert"),
    ] {
        let file = fixture(file);
        let args = [given, &file, "--port", "0"];
        let (status, out) = Proc::spawn(cwd.path(), &args, &[("SECRET_KEY", SECRET)]).exit();
        assert!(!status.success(), "{given} alone was accepted:\n{out}");
        assert!(out.contains(missing), "{out}");
    }
}

/// `--tls-cert`/`--tls-key`: `/health` over HTTPS, verified against the test CA.
#[test]
fn tls_flags_serve_health_over_https() {
    let cwd = tempfile::tempdir().unwrap();
    let (cert, key) = (fixture("test-cert.pem"), fixture("test-key.pem"));
    let mut server = Proc::spawn(
        cwd.path(),
        &["--port", "0", "--tls-cert", &cert, "--tls-key", &key],
        &[("SECRET_KEY", SECRET)],
    );
    let addr = server.listening();

    let conn = rustls::ClientConnection::new(
        tls_fixtures::client_config(),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // The server may close without close_notify once the answer is out.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => panic!("reading the HTTPS answer: {e}"),
        }
    }
    let (status, body) = parse_response(&String::from_utf8_lossy(&raw));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let log = server.stop();
    assert!(log.contains("tls=true"), "{log}");
}

// ------------------------------------------------------------------ .env.example

/// `NAME=value` lines of `.env.example`, commented out or not.
fn env_example() -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.env.example");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#').trim();
            let (name, value) = l.split_once('=')?;
            let is_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then(|| (name.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Every variable the server's options read is in `.env.example`, with its default
/// when it has one; and the `POSTGRES_URL` alias, which clap does not know about.
#[test]
fn env_example_lists_every_server_variable_with_its_default() {
    let listed = env_example();
    let cmd = fsync_server::Config::command();
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let name = env.to_str().unwrap();
        let value = listed
            .get(name)
            .unwrap_or_else(|| panic!("{name} (--{}) is not in .env.example", arg.get_id()));
        if let [default] = arg.get_default_values() {
            assert_eq!(
                value,
                default.to_str().unwrap(),
                "{name}'s default in .env.example"
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} variables found in the options"
    );
    assert!(listed.contains_key("POSTGRES_URL"));
}
