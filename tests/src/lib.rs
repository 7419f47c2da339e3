//! Harness of the end-to-end tests: the real `fsync-server` and `fsync-client`
//! binaries, built once per test process, run as child processes on temp dirs.
//!
//! The binaries are built with `cargo build -p fsync-server -p fsync-client --bins` the
//! first time a test needs them; `FSYNC_E2E_BIN_DIR=DIR` runs the ones in `DIR`
//! instead (e.g. release builds, or a snapshot while the tree does not compile).
//!
//! - [`Server`]: one server process per test on a free port, SQLite in a temp data
//!   dir, or a fresh PostgreSQL database when `FSYNC_TEST_DATABASE_URL` is set
//!   ([`Server::start_on`]); killed on drop, its log printed if the test failed.
//! - [`Client`]: one watch dir per device; `--once` rounds ([`Client::sync_once`]) for
//!   deterministic tests, a daemon ([`Client::spawn_daemon`]) for real-time ones.
//! - [`tree`] and [`assert_trees_eq`] compare folders with a readable diff;
//!   [`wait_until`] polls a condition with a deadline (never a bare sleep).
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fsync_testkit::postgres::ScratchDatabase;
use fsync_testkit::{poll, POLL};
use rand::{RngCore, SeedableRng};

pub mod sim;

/// How long an asynchronous, cross-process effect may take before a test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// The password of every test account (passed as `FSYNC_PASSWORD`).
pub const PASSWORD: &str = "correct horse battery staple";
/// The token-signing secret of every test server.
const SECRET: &str = "e2e-test-secret-0123456789abcdef0123456789";
/// How long a server may take to answer `/health` after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables the binaries read: cleared so the caller's environment
/// cannot change what a test runs against.
const CLEARED_ENV: &str = "FSYNC_WATCH_DIR FSYNC_SERVER_URL FSYNC_USERNAME FSYNC_PASSWORD \
    FSYNC_CA_CERT FSYNC_TIMEOUT FSYNC_STATE_DIR FSYNC_DEVICE_NAME FSYNC_ROOTS_FILE XDG_STATE_HOME \
    SYNC_INTERVAL CHUNK_SIZE RUST_LOG DATABASE_URL POSTGRES_URL SECRET_KEY SERVER_HOST \
    SERVER_PORT FILES_DIRECTORY FSYNC_DATA_DIR LOG_LEVEL LOG_FORMAT TLS_CERT TLS_KEY \
    FSYNC_FAILPOINTS FSYNC_FAILPOINT_DIR FSYNC_SERVER_FINGERPRINT TLS_SELF_SIGNED TLS_NAMES \
    SSL_CERT_FILE SSL_CERT_DIR";

/// `exe` without the [`CLEARED_ENV`] variables, on a null stdin.
fn command(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    for var in CLEARED_ENV.split_whitespace() {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// `fsync-server` (built once) without the caller's environment, for a test that
/// starts a server of its own kind (TLS).
pub fn server_command() -> Command {
    command(&binaries().server)
}

/// `fsync-client` (built once) without the caller's environment.
pub fn client_command() -> Command {
    command(&binaries().client)
}

/// SIGKILL, then reap (no-op when it already exited).
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Prints the last lines of `log` if the test is failing.
fn print_tail_if_panicking(what: &str, log: &Path) {
    if std::thread::panicking() {
        eprintln!(
            "--- {what} log (last lines, {}) ---\n{}",
            log.display(),
            tail(log, 60)
        );
    }
}

// ------------------------------------------------------------------ binaries

struct Binaries {
    server: PathBuf,
    client: PathBuf,
}

/// Builds `fsync-server` and `fsync-client` once per test process (cargo is quick
/// when they are up to date) and returns where cargo put them.
fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let args = ["-p", "fsync-server", "-p", "fsync-client", "--bins"];
        let [server, client] = built(&args, ["fsync-server", "fsync-client"]);
        Binaries { server, client }
    })
}

/// The `fsync-client` of the previous release, which `scripts/prev-client.sh` builds
/// into `target/prev/` (or the executable `FSYNC_PREV_CLIENT` names). Missing, the
/// test fails and says how to build it.
pub fn prev_client() -> PathBuf {
    let exe = match std::env::var_os("FSYNC_PREV_CLIENT") {
        Some(p) => PathBuf::from(p),
        None => binaries()
            .client
            .parent()
            .and_then(Path::parent)
            .expect("the client lives in target/<profile>/")
            .join("prev/fsync-client"),
    };
    assert!(
        exe.is_file(),
        "the previous release's client {} is missing: build it with scripts/prev-client.sh \
         (scripts/test.sh does)",
        exe.display()
    );
    exe
}

/// The `fsync-gc` binary, built once per test process (or from `FSYNC_E2E_BIN_DIR`).
fn gc_binary() -> &'static Path {
    static GC: OnceLock<PathBuf> = OnceLock::new();
    GC.get_or_init(|| {
        let [gc] = built(&["-p", "fsync-server", "--bin", "fsync-gc"], ["fsync-gc"]);
        gc
    })
}

/// The executables `names`: those in `FSYNC_E2E_BIN_DIR` when it is set, else where
/// `cargo build ARGS` put them.
fn built<const N: usize>(args: &[&str], names: [&str; N]) -> [PathBuf; N] {
    if let Some(dir) = std::env::var_os("FSYNC_E2E_BIN_DIR") {
        return names.map(|name| {
            let exe = Path::new(&dir).join(name);
            assert!(
                exe.is_file(),
                "FSYNC_E2E_BIN_DIR: {} is missing",
                exe.display()
            );
            exe
        });
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    let out = command(Path::new(env!("CARGO")))
        .arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "cargo build {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    // Cargo's JSON messages name every executable it built (wherever the target dir
    // is: `CARGO_TARGET_DIR`, `build.target-dir`, …).
    let messages = String::from_utf8_lossy(&out.stdout);
    let mut exes = BTreeMap::new();
    for m in messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if let (Some(name), Some(exe)) = (m["target"]["name"].as_str(), m["executable"].as_str()) {
            exes.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    names.map(|name| {
        exes.remove(name)
            .unwrap_or_else(|| panic!("cargo build did not report the {name} binary"))
    })
}

// ------------------------------------------------------------------ waiting

/// Polls a condition until it holds; panics naming what it awaited after the timeout.
pub use fsync_testkit::wait_until;

// ------------------------------------------------------------------ server

/// Two tests that run `body(Backend)`: `sqlite` on SQLite, `postgres` on PostgreSQL
/// (`body` returns early where PostgreSQL is not configured).
#[macro_export]
macro_rules! backend_tests {
    ($body:ident: $sqlite:ident, $postgres:ident) => {
        #[test]
        fn $sqlite() {
            $body($crate::Backend::Sqlite);
        }

        #[test]
        fn $postgres() {
            $body($crate::Backend::Postgres);
        }
    };
}

/// Where the server keeps its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL URL of `FSYNC_TEST_DATABASE_URL`; `None` when unset, which is an
/// error when `CI` is set (CI must never skip the PostgreSQL tests silently).
pub use fsync_testkit::postgres::test_database_url as postgres_url;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (no client library needed for two routes):
/// the status and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {raw:?}")))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

fn tail(path: &Path, max_lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// Waits until the server answers `/health` with 200, or exited, or took too long.
fn wait_healthy(child: &mut Child, port: u16) -> Result<(), String> {
    let healthy = || match child.try_wait() {
        Err(e) => Some(Err(e.to_string())),
        Ok(Some(status)) => Some(Err(format!("it exited with {status}"))),
        Ok(None) => matches!(http_get(port, "/health"), Ok((200, _))).then_some(Ok(())),
    };
    poll(START_TIMEOUT, POLL, "a healthy /health", healthy).map_err(|e| e.to_string())?
}

/// `FSYNC_FAILPOINTS`, which arms the named failpoints of `fsync_common::failpoint`.
pub const FAILPOINTS: &str = "FSYNC_FAILPOINTS";
/// `FSYNC_FAILPOINT_DIR`, where `pause` failpoints meet the test (see [`PauseDir`]).
pub const FAILPOINT_DIR: &str = "FSYNC_FAILPOINT_DIR";

/// How [`Server::start_with`] starts, and [`Server::restart`] restarts, a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `--database-url`; SQLite in the data dir when `None`.
    pub database_url: Option<String>,
    /// `--files-directory`; `<data dir>/blobs` when `None`.
    pub files_directory: Option<PathBuf>,
    /// More storage flags (the S3 blob store), given to the server and `fsync-gc`.
    pub storage: Vec<String>,
    /// Extra environment variables (e.g. [`FAILPOINTS`]).
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    /// These options plus `FSYNC_FAILPOINTS=spec`.
    #[must_use]
    pub fn failpoints(mut self, spec: &str) -> Self {
        self.env.push((FAILPOINTS.to_owned(), spec.to_owned()));
        self
    }

    /// The same storage, without the extra environment (no failpoints).
    #[must_use]
    pub fn plain(&self) -> Self {
        Self {
            env: Vec::new(),
            ..self.clone()
        }
    }

    /// `--data-dir DIR` and the storage options, for the server and `fsync-gc`.
    fn storage_args(&self, cmd: &mut Command, data_dir: &Path) {
        cmd.arg("--data-dir").arg(data_dir);
        if let Some(url) = &self.database_url {
            cmd.args(["--database-url", url]);
        }
        if let Some(files) = &self.files_directory {
            cmd.arg("--files-directory").arg(files);
        }
        cmd.args(&self.storage);
    }
}

/// Spawns `fsync-server` on `port` with its data in `dir/data`, appending to `log`, and
/// waits until it is healthy; on failure it is killed and the log's tail returned.
fn spawn_server_process(
    dir: &Path,
    port: u16,
    log: &Path,
    opts: &ServerOptions,
) -> Result<Child, String> {
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("server log");
    let _ = writeln!(log_file, "--- fsync-server starts on port {port} ---");
    let mut cmd = command(&binaries().server);
    opts.storage_args(&mut cmd, &dir.join("data"));
    let mut child = cmd
        .args(["--port", &port.to_string(), "--secret-key", SECRET])
        .args(["--log-level", "info,fsync_server=debug"])
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdout(log_file.try_clone().expect("server log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn fsync-server");
    if let Err(e) = wait_healthy(&mut child, port) {
        reap(&mut child);
        return Err(format!("{e}\n--- server log ---\n{}", tail(log, 40)));
    }
    Ok(child)
}

/// A running `fsync-server` process with its own data dir; killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    data: tempfile::TempDir,
    backend: Backend,
    /// How it was last started (its storage, for `fsync-server admin`).
    opts: ServerOptions,
}

impl Server {
    /// A server on SQLite.
    pub fn start() -> Self {
        Self::start_with(&ServerOptions::default())
    }

    /// A server on `backend` (PostgreSQL: `None` when not configured).
    pub fn start_on(backend: Backend) -> Option<Self> {
        Self::start_on_with_db_url(backend).map(|(server, _)| server)
    }

    /// Like [`Server::start_on`], with the URL of the metadata database the server
    /// uses (its default SQLite file, or the fresh PostgreSQL database), so a test can
    /// read every row the server stored.
    pub fn start_on_with_db_url(backend: Backend) -> Option<(Self, String)> {
        if backend == Backend::Sqlite {
            let server = Self::start();
            let url = server.sqlite_url();
            return Some((server, url));
        }
        // An empty database next to the one `FSYNC_TEST_DATABASE_URL` names.
        let url = ScratchDatabase::create_blocking(&postgres_url()?)
            .unwrap_or_else(|e| panic!("a test database on FSYNC_TEST_DATABASE_URL: {e:#}"))
            .url()
            .to_owned();
        let opts = ServerOptions {
            database_url: Some(url.clone()),
            ..ServerOptions::default()
        };
        Some((Self::start_with(&opts), url))
    }

    /// A server started with `opts` (its storage, its extra environment).
    pub fn start_with(opts: &ServerOptions) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let log = data.path().join("server.log");
        let backend = if opts.database_url.is_some() {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        // The port is free when we look and taken by the server a moment later; in
        // between another process may grab it, so a start that fails is retried.
        for attempt in 0..5 {
            let port = free_port();
            match spawn_server_process(data.path(), port, &log, opts) {
                Ok(child) => {
                    return Self {
                        child,
                        port,
                        log,
                        data,
                        backend,
                        opts: opts.plain(),
                    }
                }
                Err(e) => assert!(
                    e.contains("cannot listen") && attempt < 4,
                    "fsync-server did not start: {e}"
                ),
            }
        }
        unreachable!("the loop either returns or panics")
    }

    /// Registers `alice`; the server and two devices of hers.
    pub fn pair(self) -> (Self, Client, Client) {
        let alice = self.register("alice");
        (self, alice.device(), alice.device())
    }

    /// The server's data dir (`blobs/`, the SQLite file, …).
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    /// The URL of the server's default SQLite database.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.data_dir().join("fsync.db").display())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn metrics(&self) -> String {
        let (status, body) = http_get(self.port, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// A counter or gauge from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let body = self.metrics();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("/metrics has no {name}:\n{body}"))
    }

    /// Requests answered on `route` (as axum matched it, e.g. `/api/v1/chunks/batch`)
    /// with `method`, any status, since the server (re)started.
    pub fn requests(&self, method: &str, route: &str) -> u64 {
        let prefix =
            format!("fsync_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"");
        self.metrics()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Blobs newly stored so far (`fsync_chunks_stored_total`).
    pub fn chunks_stored(&self) -> u64 {
        self.metric("fsync_chunks_stored_total")
    }

    /// Blob bytes sent to clients so far (`fsync_blob_bytes_out_total`; the
    /// `fsync_bytes_out_total` of every response also counts listings and `/metrics`).
    pub fn bytes_out(&self) -> u64 {
        self.metric("fsync_blob_bytes_out_total")
    }

    /// Request body bytes received so far (`fsync_bytes_in_total`).
    pub fn bytes_in(&self) -> u64 {
        self.metric("fsync_bytes_in_total")
    }

    /// [`Server::chunks_stored`], [`Server::bytes_in`] and [`Server::bytes_out`].
    pub fn traffic(&self) -> (u64, u64, u64) {
        (self.chunks_stored(), self.bytes_in(), self.bytes_out())
    }

    /// Registers `username` through `fsync-client register --email …`.
    pub fn register(&self, username: &str) -> Account {
        let email = format!("{username}@example.org");
        let out = self.run_register(username, PASSWORD, &["--email", &email]);
        check(&out, "fsync-client register");
        Account {
            server_url: self.url(),
            username: username.to_owned(),
        }
    }

    /// Runs `fsync-client register` (no email: it is optional) for `username` with
    /// `FSYNC_PASSWORD=password`.
    pub fn register_with_password(&self, username: &str, password: &str) -> Output {
        self.run_register(username, password, &[])
    }

    fn run_register(&self, username: &str, password: &str, args: &[&str]) -> Output {
        let dir = tempfile::tempdir().expect("temp dir");
        command(&binaries().client)
            .args(["--server-url", &self.url(), "--username", username])
            .arg("register")
            .args(args)
            .env("FSYNC_PASSWORD", password)
            .current_dir(dir.path())
            .output()
            .expect("run fsync-client register")
    }

    /// Kills the server (if it still runs) and starts it again on the same port, data
    /// dir and log, with `opts` (which must name the same storage).
    pub fn restart(&mut self, opts: &ServerOptions) {
        self.kill();
        self.child = spawn_server_process(self.data.path(), self.port, &self.log, opts)
            .unwrap_or_else(|e| panic!("fsync-server did not restart: {e}"));
        self.opts = opts.plain();
    }

    /// The options the server was last started with (without their extra environment).
    pub fn options(&self) -> ServerOptions {
        self.opts.clone()
    }

    /// Runs `fsync-server admin ARGS` on this server's storage, beside it.
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut cmd = command(&binaries().server);
        self.opts.storage_args(&mut cmd, &self.data_dir());
        cmd.arg("admin")
            .args(args)
            .current_dir(self.data.path())
            .output()
            .expect("run fsync-server admin")
    }

    /// `fsync-server admin ARGS`, which must succeed; its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        check(&out, &format!("fsync-server admin {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `fsync-server admin ARGS`, which must fail; its stderr.
    pub fn admin_fails(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            !out.status.success(),
            "fsync-server admin {} succeeded:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        stderr(&out)
    }

    pub fn kill(&mut self) {
        reap(&mut self.child);
    }

    /// Sends SIGTERM, what `systemctl stop` sends (it does not wait).
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM fsync-server");
    }

    /// Waits until the server process exits (e.g. at an `abort` failpoint).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        exit_within(&mut self.child, timeout, "fsync-server to exit")
    }

    /// The server's log so far (every start of it).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `fsync-gc ARGS` on this server's storage (`opts`: as the server was started).
    pub fn gc(&self, opts: &ServerOptions, args: &[&str]) -> Output {
        let mut cmd = command(gc_binary());
        opts.storage_args(&mut cmd, &self.data_dir());
        cmd.args(args)
            .current_dir(self.data.path())
            .output()
            .expect("run fsync-gc")
    }

    /// `fsync-gc verify`; panics with its report unless nothing is damaged.
    pub fn assert_gc_verify_clean(&self, opts: &ServerOptions) {
        check(&self.gc(opts, &["verify"]), "fsync-gc verify");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        reap(&mut self.child);
        print_tail_if_panicking(&format!("fsync-server ({:?})", self.backend), &self.log);
    }
}

/// A registered account.
#[derive(Debug, Clone)]
pub struct Account {
    server_url: String,
    username: String,
}

impl Account {
    /// A new device of this account, with an empty watch dir.
    pub fn device(&self) -> Client {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("create the watch dir");
        Client {
            account: self.clone(),
            root,
            dir,
            binary: None,
        }
    }

    /// A new device of this account syncing `root` (made if missing; e.g. a folder
    /// inside another device's watch dir), its state and logs in a temp dir of its own.
    pub fn device_at(&self, root: PathBuf) -> Client {
        std::fs::create_dir_all(&root).expect("create the watch dir");
        Client {
            account: self.clone(),
            root,
            dir: tempfile::tempdir().expect("temp dir"),
            binary: None,
        }
    }

    /// An account registered on a server the test started itself, as `username`
    /// with [`PASSWORD`].
    pub fn at(server_url: &str, username: &str) -> Account {
        Account {
            server_url: server_url.to_owned(),
            username: username.to_owned(),
        }
    }

    /// The same account reached at another URL (e.g. a proxy in front of the server).
    #[must_use]
    pub fn via(&self, server_url: &str) -> Account {
        Account {
            server_url: server_url.to_owned(),
            username: self.username.clone(),
        }
    }
}

/// Asserts that the process `what` succeeded; shows its output if not.
pub fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ------------------------------------------------------------------ client

/// One device: a watch dir and the `fsync-client` commands run on it.
#[derive(Debug)]
pub struct Client {
    account: Account,
    root: PathBuf,
    dir: tempfile::TempDir,
    /// Another `fsync-client` executable than this tree's (a previous release).
    binary: Option<PathBuf>,
}

impl Client {
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This device, run by the executable `exe` instead of this tree's client.
    #[must_use]
    pub fn using(mut self, exe: PathBuf) -> Self {
        self.binary = Some(exe);
        self
    }

    fn exe(&self) -> &Path {
        self.binary.as_deref().unwrap_or(&binaries().client)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes a file (creating its folders).
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("a file has a parent")).unwrap();
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        let p = self.path(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    pub fn try_read(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(rel)).ok()
    }

    pub fn remove(&self, rel: &str) {
        let p = self.path(rel);
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }

    pub fn rename(&self, from: &str, to: &str) {
        let (f, t) = (self.path(from), self.path(to));
        if let Some(parent) = t.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::rename(&f, &t)
            .unwrap_or_else(|e| panic!("rename {} → {}: {e}", f.display(), t.display()));
    }

    pub fn set_mtime(&self, rel: &str, mtime: std::time::SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(self.path(rel))
            .and_then(|f| f.set_modified(mtime))
            .unwrap_or_else(|e| panic!("set the mtime of {rel}: {e}"));
    }

    pub fn write_at(&self, rel: &str, data: impl AsRef<[u8]>, mtime: std::time::SystemTime) {
        self.write(rel, data);
        self.set_mtime(rel, mtime);
    }

    /// The folder's files (see [`tree`]).
    pub fn tree(&self) -> Tree {
        tree(&self.root)
    }

    pub fn paths(&self) -> Vec<String> {
        self.tree().into_keys().collect()
    }

    /// `fsync-client` with this device's watch dir and password, and `server_url` and
    /// `username` as given (`None`: this device's), for tests of how bad ones are
    /// reported.
    pub fn command_with(&self, server_url: Option<&str>, username: Option<&str>) -> Command {
        let mut cmd = command(self.exe());
        cmd.arg("--watch-dir")
            .arg(&self.root)
            .args([
                "--server-url",
                server_url.unwrap_or(&self.account.server_url),
            ])
            .args(["--username", username.unwrap_or(&self.account.username)])
            .env("FSYNC_PASSWORD", PASSWORD)
            .current_dir(self.dir.path());
        cmd
    }

    /// `fsync-client` with this device's watch dir, server, account and password.
    pub fn command(&self) -> Command {
        let mut cmd = command(self.exe());
        cmd.arg("--watch-dir")
            .arg(&self.root)
            .args(["--server-url", &self.account.server_url])
            .args(["--username", &self.account.username])
            .env("FSYNC_PASSWORD", PASSWORD)
            .env("SYNC_INTERVAL", "1")
            // The device's list of synced roots, kept out of the real home dir.
            .env("FSYNC_ROOTS_FILE", self.dir.path().join("roots"))
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `fsync-client … ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    /// Runs `fsync-client … ARGS` to completion with extra environment variables.
    pub fn run_with_env(&self, args: &[&str], env: &[(String, String)]) -> Output {
        let env = env.iter().map(|(k, v)| (k, v));
        self.command()
            .args(args)
            .envs(env)
            .output()
            .expect("run fsync-client")
    }

    /// Runs `fsync-client … ARGS`, asserts it succeeded, returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        check(&out, &format!("fsync-client {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `fsync-client … ARGS`, asserts it failed (else panics with `what`), returns
    /// its stderr.
    pub fn run_fails(&self, args: &[&str], what: &str) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{what}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr(&out)
    }

    /// One sync round (`--once`); asserts success and returns its parsed summary.
    pub fn sync(&self) -> Summary {
        Summary::parse(&self.run_ok(&["--once"]))
    }

    /// Starts a `--once` round without waiting for it (to kill it mid-way).
    pub fn spawn_once(&self) -> Run {
        self.spawn_once_with_env(&[])
    }

    /// [`Client::spawn_once`] with extra environment variables.
    pub fn spawn_once_with_env(&self, env: &[(String, String)]) -> Run {
        self.spawn_logged("once", "--once", env)
    }

    /// Starts a `--once` round that stops at the `pause` failpoint `point`; returns
    /// once it got there ([`PauseDir::resume`] lets it go on).
    pub fn spawn_paused(&self, point: &str) -> (PauseDir, Run) {
        let pause = PauseDir::default();
        let mut run = self.spawn_once_with_env(&pause.env(&format!("{point}=pause")));
        pause.wait_paused(point, || run.exited());
        (pause, run)
    }

    /// Starts the daemon (`SYNC_INTERVAL=1`); it is killed when the handle drops.
    pub fn spawn_daemon(&self) -> Run {
        self.spawn_daemon_with_env(&[])
    }

    /// [`Client::spawn_daemon`] with extra environment variables (they override the
    /// defaults, e.g. `SYNC_INTERVAL`).
    pub fn spawn_daemon_with_env(&self, env: &[(String, String)]) -> Run {
        self.spawn_logged("daemon", "--verbose", env)
    }

    /// Spawns the client with `arg` and `env`, its output going to a fresh
    /// `<what>-<hex>.log` in the client's dir.
    fn spawn_logged(&self, what: &str, arg: &str, env: &[(String, String)]) -> Run {
        let name = format!("{what}-{}.log", hex::encode(rand::random::<[u8; 4]>()));
        let log = self.dir.path().join(name);
        let file = std::fs::File::create(&log).expect("client log");
        let child = self
            .command()
            .arg(arg)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone().expect("client log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn fsync-client ({what}): {e}"));
        Run { child, log }
    }
}

/// A client process started by [`Client::spawn_once`] or [`Client::spawn_daemon`];
/// killed on drop, its log printed if the test failed.
#[derive(Debug)]
pub struct Run {
    pub child: Child,
    log: PathBuf,
}

impl Run {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// SIGKILL (no chance to clean up), then reap.
    pub fn kill(&mut self) {
        reap(&mut self.child);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        exit_within(&mut self.child, timeout, "fsync-client to exit")
    }

    /// Waits until the `--once` round ends, asserts it succeeded; its summary.
    pub fn summary(&mut self, timeout: Duration) -> Summary {
        let status = self.wait_exit(timeout);
        assert!(status.success(), "the round failed:\n{}", self.log());
        Summary::parse(&self.log())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        reap(&mut self.child);
        print_tail_if_panicking("fsync-client", &self.log);
    }
}

/// Waits until `child` exits; its status. Panics naming `what` after `timeout`.
fn exit_within(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    poll(timeout, POLL, what, || child.try_wait().expect("try_wait"))
        .unwrap_or_else(|e| panic!("{e}"))
}

// ------------------------------------------------------------------ trees

/// A folder's files: relative path (with `/`) → size and content hash. The state dir
/// `.fsync/` at the root is left out; temp files are listed (none may remain).
pub type Tree = BTreeMap<String, String>;

/// The files under `root` (see [`Tree`]).
pub fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            let ft = entry.file_type().expect("file type");
            if ft.is_dir() {
                if rel != ".fsync" {
                    walk(root, &path, out);
                }
            } else if ft.is_file() {
                match std::fs::read(&path) {
                    Ok(data) => {
                        out.insert(rel, describe(&data));
                    }
                    // Removed between the listing and the read (a client cleaning up
                    // its temp files while a test watches the folder): not there.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("read {}: {e}", path.display()),
                }
            } else {
                out.insert(rel, "(not a regular file)".into());
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// `"N bytes, blake3 PREFIX"`: how trees name contents.
pub fn describe(data: &[u8]) -> String {
    format!(
        "{} bytes, blake3 {}",
        data.len(),
        &blake3::hash(data).to_hex()[..16]
    )
}

/// Panics with a readable diff unless the two trees are equal.
pub fn assert_trees_eq(left_name: &str, left: &Tree, right_name: &str, right: &Tree) {
    if left == right {
        return;
    }
    let mut diff = String::new();
    for (path, l) in left {
        let _ = match right.get(path) {
            None => writeln!(diff, "  only in {left_name}: {path} ({l})"),
            Some(r) if r != l => {
                writeln!(
                    diff,
                    "  differs: {path}\n    {left_name}: {l}\n    {right_name}: {r}"
                )
            }
            Some(_) => Ok(()),
        };
    }
    for (path, r) in right.iter().filter(|(p, _)| !left.contains_key(*p)) {
        let _ = writeln!(diff, "  only in {right_name}: {path} ({r})");
    }
    panic!("the trees of {left_name} and {right_name} differ:\n{diff}");
}

/// One `--once` round on each client, in order.
pub fn rounds(clients: &[&Client]) {
    for c in clients {
        c.sync();
    }
}

/// Asserts two devices hold the same files.
pub fn assert_same_tree(a: &Client, b: &Client) {
    assert_trees_eq("A", &a.tree(), "B", &b.tree());
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Paths of the files under `root` whose name starts with `.fsync-tmp-`.
pub fn temp_files(root: &Path) -> Vec<String> {
    let is_temp = |p: &String| {
        p.rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with(".fsync-tmp-"))
    };
    tree(root).into_keys().filter(is_temp).collect()
}

/// Paths in `tree` that are conflict copies.
pub fn conflict_copies(tree: &Tree) -> Vec<String> {
    tree.keys()
        .filter(|p| p.contains(".sync-conflict-"))
        .cloned()
        .collect()
}

// ------------------------------------------------------------------ summaries

/// What `fsync-client --once` printed about its round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub uploaded: u64,
    pub downloaded: u64,
    pub deleted_here: u64,
    pub deleted_there: u64,
    pub renamed: u64,
    pub conflicts: u64,
}

impl Summary {
    /// Parses the `synced: …` line of a `--once` run.
    pub fn parse(stdout: &str) -> Self {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("synced: "))
            .unwrap_or_else(|| panic!("no `synced:` line in:\n{stdout}"));
        let mut s = Self::default();
        for part in line.split(", ") {
            let (n, what) = part
                .split_once(' ')
                .unwrap_or_else(|| panic!("unexpected summary {line:?}"));
            let n: u64 = n
                .parse()
                .unwrap_or_else(|_| panic!("unexpected summary {line:?}"));
            match what {
                "uploaded" => s.uploaded = n,
                "downloaded" => s.downloaded = n,
                "deleted here" => s.deleted_here = n,
                "deleted there" => s.deleted_there = n,
                "renamed" => s.renamed = n,
                "conflicts" => s.conflicts = n,
                _ => panic!("unexpected summary {line:?}"),
            }
        }
        s
    }
}

// ------------------------------------------------------------------ fault injection

/// True when `status` is a death by `abort()` (SIGABRT), i.e. an `abort` failpoint.
pub fn aborted(status: std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(6)
    }
    #[cfg(not(unix))]
    {
        !status.success()
    }
}

/// The meeting place of `pause` failpoints and a test: a process paused at `NAME`
/// created `NAME.hit` here and waits for `NAME.resume`.
#[derive(Debug)]
pub struct PauseDir {
    dir: tempfile::TempDir,
}

impl Default for PauseDir {
    fn default() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl PauseDir {
    /// The environment that arms `spec` (`name=action,…`) with this directory.
    pub fn env(&self, spec: &str) -> Vec<(String, String)> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        vec![
            (FAILPOINTS.to_owned(), spec.to_owned()),
            (FAILPOINT_DIR.to_owned(), dir),
        ]
    }

    /// Waits until a process pauses at `name`; panics if `gone()` first turns true
    /// (the process exited without reaching the point).
    pub fn wait_paused(&self, name: &str, mut gone: impl FnMut() -> bool) {
        let hit = self.dir.path().join(format!("{name}.hit"));
        wait_until(EVENT_TIMEOUT, &format!("a pause at {name}"), || {
            if hit.exists() {
                return true;
            }
            assert!(!gone(), "the process ended before it reached {name}");
            false
        });
    }

    /// Lets the process paused at `name` go on; disarms `name` for good, whatever its
    /// action.
    pub fn resume(&self, name: &str) {
        std::fs::write(self.dir.path().join(format!("{name}.resume")), b"").expect("resume file");
    }
}
