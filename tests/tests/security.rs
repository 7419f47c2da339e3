//! The security suite (ARCHITECTURE §3 and invariant I8; issue #7 item 5, issue #4):
//! real server and client processes, attacked from every side a test can reach.
//!
//! - The server's storage (SQLite file and WAL, blobs, its log; on PostgreSQL every
//!   row) never holds a canary plaintext, the file contents, the password, the auth
//!   key, an unkeyed hash of a file, or an access or refresh token (after they went
//!   through headers, a query string, refresh, logout and refused reuse, with the
//!   server logging at debug). Paths are visible to the server by design
//!   (§3), so they are not checked (the scan does find them: proof that it reads the
//!   database at all).
//! - The same file in two accounts gets different chunk ids and content hashes.
//! - A blob swapped, truncated or bit-flipped on the server is refused by the
//!   downloading client: no file, no temp file, an error line; the other files sync.
//! - Login of an unknown user and a wrong password: same status, headers and body,
//!   and the same time (medians within 10 %, interleaved attempts).
//! - Brute force meets 429 + `Retry-After`, per username and per source address.
//! - Hostile server answers: a path with `..` or an absolute path (staged by a proxy
//!   that rewrites the real server's answers: the server itself refuses to store or
//!   serve such a path), a symlink in the root pointing outside (real server; and a
//!   conflict copy named into it, by the proxy), an oversized chunk and a chunk that
//!   decompresses past the bound (blob files replaced on the server's store). Nothing
//!   outside the root changes.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fsync_common::limits::{MAX_BLOB_SIZE, MAX_CHUNK_PLAINTEXT};
use fsync_common::wire::{KdfParams, LoginResponse, TokenResponse};
use fsync_common::ChunkId;
use fsync_store::{BlobCodec, MasterKey, BLOB_OVERHEAD};
use fsync_tests::{assert_same_tree, random_bytes, temp_files, Backend, Client, Server, PASSWORD};
use serde_json::json;
use sha2::Digest as _;

// ------------------------------------------------------------------ test isolation

/// The timing test runs alone (write lock); the others share the machine (read lock).
static MACHINE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------------ plain HTTP

/// An HTTP answer.
#[derive(Debug, Clone)]
struct Response {
    status_line: String,
    status: u16,
    /// Lowercase names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut rest = hay;
    while let Some(i) = find(rest, from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").expect("a chunk-size line");
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
            .expect("a hex chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Parses a whole HTTP/1.x answer (read to EOF).
fn parse_response(raw: &[u8]) -> Response {
    let split = find(raw, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Response {
        status_line,
        status,
        headers,
        body,
    }
}

/// A tiny HTTP/1.1 client that can choose its source address in 127.0.0.0/8, so that
/// each request may come from a fresh address (the server rate-limits per address).
struct Http {
    rt: tokio::runtime::Runtime,
    server: SocketAddr,
    next_ip: AtomicU32,
}

impl Http {
    fn new(server: &Server) -> Self {
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            server: SocketAddr::from((Ipv4Addr::LOCALHOST, server.port())),
            next_ip: AtomicU32::new(0),
        }
    }

    /// A loopback address not used before by this client (never 127.0.0.1).
    fn fresh_ip(&self) -> Ipv4Addr {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        Ipv4Addr::new(127, 10 + (n / 250) as u8, 0, 2 + (n % 250) as u8)
    }

    /// One request from `from`, with `Authorization: Bearer <bearer>` when given; the
    /// answer and how long it took (connect to EOF).
    fn send(
        &self,
        from: Ipv4Addr,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> (Response, Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.map(ToString::to_string).unwrap_or_default();
        let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.rt.block_on(async {
            let start = Instant::now();
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::from((from, 0)))
                .unwrap_or_else(|e| panic!("bind the source address {from}: {e}"));
            let mut s = socket.connect(self.server).await.expect("connect");
            s.write_all(request.as_bytes()).await.expect("send");
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.expect("read the answer");
            (parse_response(&raw), start.elapsed())
        })
    }

    fn get(&self, path: &str) -> Response {
        self.get_from(self.fresh_ip(), path)
    }

    fn get_from(&self, from: Ipv4Addr, path: &str) -> Response {
        self.send(from, "GET", path, None, None).0
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> Response {
        self.send(self.fresh_ip(), "POST", path, None, Some(body)).0
    }

    /// A request with a bearer token.
    fn authed(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> Response {
        self.send(self.fresh_ip(), method, path, Some(token), body)
            .0
    }

    fn login(&self, from: Ipv4Addr, username: &str, key_hex: &str) -> (Response, Duration) {
        let body = json!({ "username": username, "password": key_hex });
        self.send(from, "POST", "/api/v1/auth/login", None, Some(&body))
    }

    /// The KDF parameters of `username` (what a client asks before it logs in).
    fn kdf_params(&self, username: &str) -> KdfParams {
        let params = self
            .get(&format!("/api/v1/auth/params?username={username}"))
            .json();
        serde_json::from_value(params).expect("KDF params")
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    hex::encode(b)
}

/// Registers `username` straight through the API with an arbitrary auth key (no key
/// derivation: the server only ever sees the derived key, whatever it is).
fn register_direct(http: &Http, username: &str, key_hex: &str) {
    let r = http.post(
        "/api/v1/auth/register",
        &json!({
            "username": username,
            "email": format!("{username}@example.org"),
            "password": key_hex,
            "kdf": { "kdf": "argon2id", "m_kib": 65536, "t": 3, "p": 1, "salt": random_hex(16) },
            "wrapped_account_key": random_hex(73),
            "wrapped_namespace_key": random_hex(73),
        }),
    );
    assert_eq!(r.status, 201, "register {username}: {}", r.text());
}

// ------------------------------------------------------------------ hostile proxy

type Rewrite = dyn Fn(&str, Vec<u8>) -> Vec<u8> + Send + Sync;

/// An HTTP proxy in front of the real server that rewrites answer bodies: the server
/// itself never stores nor serves a hostile path, so this is how a test plays a
/// malicious (or compromised) server. One request per connection.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// `rewrite(request path, answer body)` gives the body the client receives.
    fn start(
        server: &Server,
        rewrite: impl Fn(&str, Vec<u8>) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = server.port();
        let stop = Arc::new(AtomicBool::new(false));
        let rewrite: Arc<Rewrite> = Arc::new(rewrite);
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let rewrite = Arc::clone(&rewrite);
                    std::thread::spawn(move || {
                        if let Err(e) = relay(conn, upstream, &*rewrite) {
                            eprintln!("proxy: {e}");
                        }
                    });
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(conn: TcpStream, upstream: u16, rewrite: &Rewrite) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // closed before a request
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
    }
    let request_line = head.first().cloned().unwrap_or_default();
    let target = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut forward = format!(
        "{} HTTP/1.1\r\n",
        request_line.rsplit_once(' ').map_or("", |(l, _)| l)
    );
    let mut len = 0usize;
    for h in &head[1..] {
        let Some((k, v)) = h.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "transfer-encoding" => {
                return Err(std::io::Error::other("chunked requests are not relayed"))
            }
            "connection" | "keep-alive" | "upgrade" => {}
            _ => {
                forward.push_str(h);
                forward.push_str("\r\n");
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let _ = write!(
        forward,
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let mut up = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream))?;
    up.write_all(forward.as_bytes())?;
    up.write_all(&body)?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    let answer = parse_response(&raw);
    let path = target.split('?').next().unwrap_or_default();
    let body = rewrite(path, answer.body);
    let mut out = format!("{}\r\n", answer.status_line);
    for (k, v) in &answer.headers {
        if !matches!(
            k.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "keep-alive"
        ) {
            let _ = write!(out, "{k}: {v}\r\n");
        }
    }
    let _ = write!(
        out,
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut conn = conn;
    conn.write_all(out.as_bytes())?;
    conn.write_all(&body)?;
    conn.flush()
}

// ------------------------------------------------------------------ server storage

/// Runs `sql` on the server's database (read-only for SQLite); every column as text.
fn rows(db_url: &str, sql: &str) -> Vec<Vec<String>> {
    let url = if db_url.starts_with("sqlite:") {
        format!("{db_url}?mode=ro")
    } else {
        db_url.to_owned()
    };
    fsync_testkit::postgres::rows_blocking(&url, sql).unwrap_or_else(|e| panic!("{sql}: {e:#}"))
}

/// Every row of every table of a PostgreSQL database, as text (`pg_dump`'s content).
fn postgres_dump(db_url: &str) -> String {
    let tables = rows(
        db_url,
        "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
         WHERE table_schema = 'public'",
    );
    assert!(tables.len() >= 8, "too few tables: {tables:?}");
    let mut dump = String::new();
    for t in tables {
        let name = &t[0];
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        for r in rows(
            db_url,
            &format!("SELECT CAST(t AS TEXT) FROM public.\"{name}\" t"),
        ) {
            dump.push_str(name);
            dump.push(' ');
            dump.push_str(&r[0]);
            dump.push('\n');
        }
    }
    dump
}

/// Everything under `dir` (a folder that vanished meanwhile aside), symlinks not
/// followed: every path with its metadata.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let (mut out, mut stack) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            entries => entries.unwrap_or_else(|e| panic!("{}: {e}", d.display())),
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let md = std::fs::symlink_metadata(&path).expect("stat");
            if md.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, md));
        }
    }
    out
}

/// Every file under `dir`, with its bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = walk(dir).into_iter().filter(|(_, md)| md.is_file());
    // A file may vanish meanwhile (a temp file, the SQLite journal).
    files
        .filter_map(|(p, _)| Some((p.clone(), std::fs::read(&p).ok()?)))
        .collect()
}

/// Where the blob of a chunk lies: its pack file, offset and length.
struct StoredBlob {
    id: ChunkId,
    pack: PathBuf,
    offset: u64,
    len: usize,
}

impl StoredBlob {
    /// The bytes the server serves for the chunk.
    fn read(&self) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.pack).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(self.offset)).unwrap();
        let mut out = vec![0; self.len];
        f.read_exact(&mut out).unwrap();
        out
    }

    /// Makes the server serve `bytes` for the chunk, as a tampered disk would: the
    /// bytes appended to its pack, and its row pointed at them.
    fn replace(&self, server: &Server, bytes: &[u8]) {
        let at = std::fs::metadata(&self.pack).unwrap().len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.pack)
            .unwrap();
        f.write_all(bytes).unwrap();
        let sql = format!(
            "UPDATE chunks SET pack_offset = {at}, stored_size = {} WHERE id = '{}'",
            bytes.len(),
            self.id
        );
        fsync_testkit::postgres::execute_blocking(&server.sqlite_url(), &sql).unwrap();
    }
}

/// The stored blobs of the chunks of `path`'s versions.
fn blobs_of(server: &Server, path: &str) -> Vec<StoredBlob> {
    let found: Vec<StoredBlob> = rows(
        &server.sqlite_url(),
        "SELECT fv.path, c.namespace_id, c.id, c.pack_id, CAST(c.pack_offset AS TEXT), \
         CAST(c.stored_size AS TEXT) FROM version_chunks vc \
         JOIN file_versions fv ON fv.id = vc.version_id \
         JOIN chunks c ON c.namespace_id = vc.namespace_id AND c.id = vc.chunk_id",
    )
    .into_iter()
    .filter(|r| r[0] == path)
    .map(|r| {
        let (ns, id, pack) = (&r[1], &r[2], &r[3]);
        let file = server.data_dir().join(format!("blobs/packs/{ns}/{pack}"));
        assert!(file.is_file(), "no pack file at {}", file.display());
        StoredBlob {
            id: ChunkId::from_hex(id).expect("a chunk id"),
            pack: file,
            offset: r[4].parse().expect("an offset"),
            len: r[5].parse().expect("a size"),
        }
    })
    .collect();
    assert!(!found.is_empty(), "no chunks recorded for {path}");
    found
}

/// The single blob of a small (one-chunk) file.
fn blob_of(server: &Server, path: &str) -> StoredBlob {
    let mut all = blobs_of(server, path);
    assert_eq!(all.len(), 1, "{path} has more than one chunk");
    all.pop().unwrap()
}

/// What a key holder can do: derive the account's keys from the password through the
/// real API (params, login, unwrap) and get its namespace's blob codec.
fn account_codec(http: &Http, username: &str) -> BlobCodec {
    let master = MasterKey::derive(PASSWORD, &http.kdf_params(username)).expect("derive");
    let (r, _) = http.login(http.fresh_ip(), username, &master.auth_key().to_hex());
    assert_eq!(r.status, 200, "login: {}", r.text());
    let login: LoginResponse = serde_json::from_slice(&r.body).expect("a login answer");
    let account = master
        .kek()
        .unwrap(&hex::decode(&login.wrapped_account_key).expect("hex"))
        .expect("unwrap the account key");
    let ns = account
        .unwrap_namespace_key(&hex::decode(&login.namespaces[0].wrapped_key).expect("hex"))
        .expect("unwrap the namespace key");
    BlobCodec::new(&ns.derive())
}

// ------------------------------------------------------------------ client checks

/// `--once`; its exit success and stdout + stderr.
fn once(c: &Client) -> (bool, String) {
    let out = c.run(&["--once"]);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.into_owned())
}

/// Asserts that a `--once` output has a `not synced yet: PATH — WHY` line for `path`
/// whose reason names each of `why`.
fn assert_deferred(out: &str, path: &str, why: &[&str]) {
    let prefix = format!("not synced yet: {path} — ");
    let line = out.lines().find(|l| l.starts_with(&prefix));
    let line = line.unwrap_or_else(|| panic!("no `{prefix}…` line in:\n{out}"));
    for w in why {
        assert!(
            line.contains(w),
            "{path}: not deferred for {w:?}: {line}\n{out}"
        );
    }
}

/// Everything under `dir`, symlinks not followed: relative path → what it is.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    let what = |path: &Path, md: &std::fs::Metadata| {
        if md.is_dir() {
            "dir".to_owned()
        } else if md.file_type().is_symlink() {
            format!("symlink → {}", std::fs::read_link(path).unwrap().display())
        } else {
            fsync_tests::describe(&std::fs::read(path).unwrap_or_default())
        }
    };
    let mut out = BTreeMap::new();
    for (path, md) in walk(dir) {
        let rel = path.strip_prefix(dir).expect("under dir");
        out.insert(rel.to_string_lossy().into_owned(), what(&path, &md));
    }
    out
}

/// Asserts that nothing changed beside the client's root (see [`beside_root`]).
fn assert_untouched(what: &str, before: &BTreeMap<String, String>, c: &Client) {
    let now = beside_root(c);
    assert_eq!(&now, before, "{what}: something changed beside the root");
}

/// The device dir holding the root: the client's log and roots files aside, what
/// lies next to the root (where `../x` would land).
fn beside_root(c: &Client) -> BTreeMap<String, String> {
    let parent = c.root().parent().expect("the root has a parent");
    let prefixes = ["root/", "roots.", ".roots"];
    let ours = |p: &str| p == "root" || p == "roots" || prefixes.iter().any(|s| p.starts_with(s));
    let mut all = listing(parent);
    all.retain(|p, _| !ours(p));
    all
}

// ------------------------------------------------------------------ 1. canary (I8)

fn canary(backend: Backend) {
    let _machine = shared();
    let Some((server, db_url)) = Server::start_on_with_db_url(backend) else {
        return;
    };
    let (server, a, b) = server.pair();
    let canary = format!("FSYNC-CANARY-{}", hex::encode(rand::random::<[u8; 16]>()));
    // One chunk (below the minimum chunk size), incompressible around the canary:
    // its whole-file hash is also the unkeyed hash of its only chunk.
    let mut small = canary.as_bytes().to_vec();
    small.extend(random_bytes(11, 6_000));
    small.extend(canary.as_bytes());
    // Several chunks that zstd shrinks a lot: a stored compressed-but-unencrypted
    // blob would still show the canary and long runs of the text.
    let letter = format!(
        "{canary}: the quick brown fox jumps over the lazy dog; \
         pack my box with five dozen liquor jugs.\n"
    )
    .repeat(5_000)
    .into_bytes();
    a.write("notes/small.bin", &small);
    a.write("notes/letter.txt", &letter);
    a.sync();
    let http = Http::new(&server);
    let master = MasterKey::derive(PASSWORD, &http.kdf_params("alice")).expect("derive");
    let auth_key = master.auth_key().to_hex();
    let mut secrets = Secrets {
        canary: &canary,
        auth_key: &auth_key,
        contents: [small.as_slice(), letter.as_slice()],
        tokens: Vec::new(),
    };
    // After the upload, and again after another device downloaded everything and
    // tokens went through every path a token takes.
    scan_server(&server, backend, &db_url, &secrets, "after the upload");
    b.sync();
    assert_same_tree(&a, &b);
    secrets.tokens = use_tokens(&http, "alice", &auth_key);
    scan_server(&server, backend, &db_url, &secrets, "after the download");
}

/// Logs in and sends the tokens everywhere they go: bearer headers, a query string,
/// a refresh (rotation), a logout, and a reuse of a rotated and a logged-out refresh
/// token (refused: the refusal is logged at debug). Returns the tokens by name.
fn use_tokens(http: &Http, username: &str, auth_key: &str) -> Vec<(String, String)> {
    let r = http.post(
        "/api/v1/auth/login",
        &json!({"username": username, "password": auth_key, "device_name": "token scan"}),
    );
    assert_eq!(r.status, 200, "login: {}", r.text());
    let login: LoginResponse = serde_json::from_value(r.json()).expect("login answer");
    let (access, refresh) = (login.access_token, login.refresh_token);
    let r = http.authed("GET", "/api/v1/files/list", &access, None);
    assert_eq!(r.status, 200, "{}", r.text());
    // Whatever the answer, a token in a query string must not reach the log either.
    http.authed(
        "GET",
        &format!("/api/v1/files/list?access_token={access}&refresh_token={refresh}"),
        &access,
        None,
    );
    let r = http.post("/api/v1/auth/refresh", &json!({ "refresh_token": refresh }));
    assert_eq!(r.status, 200, "refresh: {}", r.text());
    let rotated: TokenResponse = serde_json::from_value(r.json()).expect("refresh answer");
    let r = http.authed("GET", "/api/v1/devices", &rotated.access_token, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http.authed(
        "POST",
        "/api/v1/auth/logout",
        &rotated.access_token,
        Some(&json!({ "refresh_token": rotated.refresh_token })),
    );
    assert!(r.status < 300, "logout: {} {}", r.status, r.text());
    for stale in [&refresh, &rotated.refresh_token] {
        let r = http.post("/api/v1/auth/refresh", &json!({ "refresh_token": stale }));
        assert_eq!(r.status, 401, "a stale refresh token: {}", r.text());
    }
    let mut tokens: Vec<(String, String)> = vec![
        ("the access token".into(), access),
        ("the refresh token".into(), refresh),
        ("the rotated access token".into(), rotated.access_token),
        ("the rotated refresh token".into(), rotated.refresh_token),
    ];
    // A JWT's signature alone is what makes it a credential.
    let signatures: Vec<(String, String)> = tokens
        .iter()
        .filter(|(name, _)| name.contains("access"))
        .map(|(name, t)| {
            let sig = t.rsplit('.').next().expect("a JWT").to_owned();
            assert!(sig.len() >= 40, "not a signed JWT: {t}");
            (format!("{name}'s signature"), sig)
        })
        .collect();
    tokens.extend(signatures);
    tokens
}

/// What must never reach the server (its storage and its log).
struct Secrets<'a> {
    canary: &'a str,
    auth_key: &'a str,
    contents: [&'a [u8]; 2],
    /// Access and refresh tokens, by name: the server keeps refresh tokens hashed and
    /// logs neither.
    tokens: Vec<(String, String)>,
}

/// Scans everything the server keeps for the secrets.
fn scan_server(server: &Server, backend: Backend, db_url: &str, s: &Secrets, when: &str) {
    // Everything the server keeps: its data dir (database file and WAL, blobs,
    // secret) and its log, next to it; on PostgreSQL every row of every table.
    let mut haystack = all_files(server.data_dir().parent().expect("data dir parent"));
    if backend == Backend::Postgres {
        haystack.push((
            PathBuf::from("<postgres rows>"),
            postgres_dump(db_url).into_bytes(),
        ));
    } else {
        assert!(
            haystack.iter().any(|(p, _)| p.ends_with("fsync.db")),
            "the SQLite file was not scanned"
        );
    }
    // The blobs are in packs (one per upload batch): at least one, and not empty.
    let packs: Vec<usize> = haystack
        .iter()
        .filter(|(p, _)| p.components().any(|c| c.as_os_str() == "packs"))
        .map(|(_, d)| d.len())
        .collect();
    assert!(
        !packs.is_empty() && packs.iter().all(|n| *n > 52),
        "no pack file scanned: {packs:?}"
    );
    // Paths are plaintext by design (§3): the scan must see them, or it read nothing.
    let path_seen = haystack
        .iter()
        .any(|(_, d)| find(d, b"notes/letter.txt").is_some());
    assert!(
        path_seen,
        "the scan did not find the (plaintext by design) path in the metadata"
    );

    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: &[u8]| needles.push((name.to_owned(), bytes.to_vec()));
    add("the canary", s.canary.as_bytes());
    add("the password", PASSWORD.as_bytes());
    add(
        "the auth key (a password equivalent)",
        s.auth_key.as_bytes(),
    );
    add("the auth key, raw", &hex::decode(s.auth_key).expect("hex"));
    for (name, token) in &s.tokens {
        add(name, token.as_bytes());
    }
    for (name, data) in ["small.bin", "letter.txt"].into_iter().zip(s.contents) {
        let (b3, sha) = (blake3::hash(data), sha2::Sha256::digest(data));
        add(&format!("{name}'s BLAKE3"), b3.as_bytes());
        add(&format!("{name}'s BLAKE3 hex"), b3.to_hex().as_bytes());
        add(&format!("{name}'s SHA-256"), &sha);
        add(
            &format!("{name}'s SHA-256 hex"),
            hex::encode(sha).as_bytes(),
        );
        add(
            &format!("{name}'s SHA-256 HEX"),
            hex::encode_upper(sha).as_bytes(),
        );
    }
    // Any 16 bytes in a row of either file's content, at any offset.
    let mut windows: HashSet<&[u8]> = HashSet::new();
    for data in s.contents {
        windows.extend(data.windows(16));
    }
    for (file, data) in &haystack {
        for (what, needle) in &needles {
            assert!(
                find(data, needle).is_none(),
                "{what} is in the server's {} ({backend:?}, {when})",
                file.display()
            );
        }
        if let Some(at) = data.windows(16).position(|w| windows.contains(w)) {
            panic!(
                "file content ({:?}) is in the server's {} at byte {at} ({backend:?}, {when})",
                String::from_utf8_lossy(&data[at..at + 16]),
                file.display()
            );
        }
    }
}

fsync_tests::backend_tests! {
    canary: the_server_stores_no_plaintext_password_key_or_unkeyed_hash,
    the_server_stores_no_plaintext_password_key_or_unkeyed_hash_on_postgres
}

// ------------------------------------------------------------------ 2. per-account ids

#[test]
fn the_same_file_in_two_accounts_gets_different_chunk_ids() {
    let _machine = shared();
    let server = Server::start();
    let a = server.register("alice").device();
    let b = server.register("bob").device();
    let data = random_bytes(77, 400_000);
    a.write("same.bin", &data);
    b.write("same.bin", &data);
    a.sync();
    b.sync();
    let url = server.sqlite_url();
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rows(&url, "SELECT namespace_id, id FROM chunks") {
        ids.entry(r[0].clone()).or_default().insert(r[1].clone());
    }
    assert_eq!(ids.len(), 2, "expected one namespace per account: {ids:?}");
    let sets: Vec<&BTreeSet<String>> = ids.values().collect();
    assert!(sets[0].len() >= 2 && sets[1].len() >= 2, "{ids:?}");
    let common: Vec<&String> = sets[0].intersection(sets[1]).collect();
    assert!(
        common.is_empty(),
        "the same file has the same chunk ids in two accounts: {common:?}"
    );
    let sums: Vec<String> = rows(&url, "SELECT path, checksum FROM files")
        .into_iter()
        .filter(|r| r[0] == "same.bin")
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(sums.len(), 2);
    assert_ne!(sums[0], sums[1], "the same content hash in two accounts");
    let plain = blake3::hash(&data).to_hex().to_string();
    assert!(!sums.contains(&plain), "an unkeyed content hash is stored");
}

// ------------------------------------------------------------------ 3. tampered blobs

#[test]
fn a_swapped_truncated_or_flipped_blob_is_refused_and_the_rest_syncs() {
    let _machine = shared();
    let (server, a, b) = Server::start().pair();
    let victims = ["swapped.bin", "truncated.bin", "flipped.bin"];
    for (i, v) in victims.iter().enumerate() {
        a.write(v, random_bytes(20 + i as u64, 5_000));
    }
    a.write("fine.txt", "fine");
    a.write("docs/fine.bin", random_bytes(30, 300_000));
    a.sync();

    // Another valid blob of the same account, under the victim's name.
    let donor = blob_of(&server, "fine.txt").read();
    blob_of(&server, "swapped.bin").replace(&server, &donor);
    let truncated = blob_of(&server, "truncated.bin");
    let data = truncated.read();
    truncated.replace(&server, &data[..data.len() / 2]);
    let flipped = blob_of(&server, "flipped.bin");
    let mut data = flipped.read();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    flipped.replace(&server, &data);

    let outside = beside_root(&b);
    for round in 0..2 {
        let (ok, out) = once(&b);
        assert!(ok, "round {round}: the client failed:\n{out}");
        for v in victims {
            println!("round {round}");
            assert_deferred(&out, v, &["refused data from the server", "chunk"]);
            assert!(!b.path(v).exists(), "round {round}: {v} was written");
        }
        assert!(temp_files(b.root()).is_empty(), "a temp file was left");
        assert_eq!(b.read("fine.txt"), b"fine");
        assert!(b.read("docs/fine.bin") == a.read("docs/fine.bin"));
        assert_eq!(b.tree().len(), 2, "{:?}", b.tree());
    }
    assert_untouched("tampered blobs", &outside, &b);
}

// ------------------------------------------------------------------ 4. login timing

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn an_unknown_user_and_a_wrong_password_are_indistinguishable() {
    // Alone on the machine: the other tests' processes would add noise.
    let _machine = exclusive();
    let server = Server::start();
    let http = Http::new(&server);

    // KDF params: an unknown name gets stable params of the same shape and costs.
    register_direct(&http, "member0", &random_hex(32));
    let known = http.get("/api/v1/auth/params?username=member0").json();
    let unknown = http.get("/api/v1/auth/params?username=nobody").json();
    let again = http.get("/api/v1/auth/params?username=nobody").json();
    assert_eq!(unknown, again);
    for k in ["kdf", "m_kib", "t", "p"] {
        assert_eq!(known[k], unknown[k], "{k}: {known} vs {unknown}");
    }
    let salt_len = |params: &serde_json::Value| params["salt"].as_str().map(str::len);
    assert_eq!(salt_len(&known), salt_len(&unknown));

    // Logins: same answer, same time. The time is measured up to three times (fresh
    // members each time): a loaded machine can skew one measurement, but a real
    // difference (an unknown user skipping the password hash) shows every time.
    let mut last = String::new();
    for attempt in 0..3 {
        match login_timing(&http, attempt) {
            Ok(report) => {
                eprintln!("{report}");
                return;
            }
            Err(report) => {
                eprintln!("attempt {attempt}: {report}");
                last = report;
            }
        }
    }
    panic!("login time tells unknown users from wrong passwords: {last}");
}

/// Interleaved logins of unknown users and of members with a wrong password: all
/// answers alike; `Ok` when the median times are within 10 %.
fn login_timing(http: &Http, attempt: usize) -> Result<String, String> {
    // The server allows 10 attempts per username and 60 per address a minute: every
    // attempt comes from a fresh loopback address, and the wrong passwords are spread
    // over several members.
    const MEMBERS: usize = 7;
    const PER_MEMBER: usize = 8;
    const WARM_UP: usize = 4;
    for i in 0..MEMBERS {
        register_direct(http, &format!("member{attempt}-{i}"), &random_hex(32));
    }
    let mut reference: Option<Response> = None;
    let mut check = |kind: &str, r: &Response| {
        assert_eq!(r.status, 401, "{kind}: {}", r.text());
        let without_date = |r: &Response| -> Vec<(String, String)> {
            r.headers
                .iter()
                // A fresh request id and the time differ for every answer.
                .filter(|(k, _)| k != "date" && k != "x-request-id")
                .cloned()
                .collect()
        };
        match &reference {
            None => reference = Some(r.clone()),
            Some(first) => {
                assert_eq!(r.body, first.body, "{kind}: another body");
                let (now, then) = (without_date(r), without_date(first));
                assert_eq!(now, then, "{kind}: other headers");
            }
        }
    };
    let (mut unknown_t, mut wrong_t) = (Vec::new(), Vec::new());
    for k in 0..MEMBERS * PER_MEMBER {
        let member = format!("member{attempt}-{}", k % MEMBERS);
        let stranger = format!("stranger{attempt}-{k}");
        let mut one = |user: &str, kind: &str| {
            let (r, t) = http.login(http.fresh_ip(), user, &random_hex(32));
            check(kind, &r);
            t
        };
        // Alternate which kind goes first, so that drift cancels out.
        let (tu, tw) = if k % 2 == 0 {
            let tu = one(&stranger, "unknown user");
            (tu, one(&member, "wrong password"))
        } else {
            let tw = one(&member, "wrong password");
            (one(&stranger, "unknown user"), tw)
        };
        if k >= WARM_UP {
            unknown_t.push(tu);
            wrong_t.push(tw);
        }
    }
    let (mu, mw) = (median(&mut unknown_t), median(&mut wrong_t));
    let ratio = mu.as_secs_f64() / mw.as_secs_f64();
    let report = format!(
        "login medians over {} attempts each: unknown user {mu:?}, wrong password {mw:?} \
         (ratio {ratio:.3})",
        unknown_t.len()
    );
    if (1.0 / 1.1..=1.1).contains(&ratio) {
        Ok(report)
    } else {
        Err(format!(
            "{report}\nunknown: {unknown_t:?}\nwrong: {wrong_t:?}"
        ))
    }
}

// ------------------------------------------------------------------ 5. brute force

#[test]
fn brute_force_gets_429_with_retry_after() {
    let _machine = shared();
    let server = Server::start();
    let http = Http::new(&server);
    let (victim_key, other_key) = (random_hex(32), random_hex(32));
    register_direct(&http, "victim", &victim_key);
    register_direct(&http, "bystander", &other_key);
    let assert_limited = |what: &str, r: &Response| {
        assert_eq!(r.status, 429, "{what}: {}", r.text());
        let wait: u64 = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("{what}: 429 without Retry-After"))
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&wait), "{what}: Retry-After {wait}");
        assert_eq!(r.json()["error"]["code"], "rate_limited", "{what}");
    };

    // Guessing one user's password, each guess from another address.
    for i in 0..10 {
        let (r, _) = http.login(http.fresh_ip(), "victim", &random_hex(32));
        assert_eq!(r.status, 401, "guess {i}: {}", r.text());
    }
    let (r, _) = http.login(http.fresh_ip(), "victim", &random_hex(32));
    assert_limited("11th guess", &r);
    // Even the right password is refused now: the guesser learns nothing more.
    let (r, _) = http.login(http.fresh_ip(), "victim", &victim_key);
    assert_limited("right password while limited", &r);
    // Other users are not locked out.
    let (r, _) = http.login(http.fresh_ip(), "bystander", &other_key);
    assert_eq!(r.status, 200, "bystander: {}", r.text());

    // One address trying many usernames.
    let ip = http.fresh_ip();
    for i in 0..60 {
        let r = http.get_from(ip, &format!("/api/v1/auth/params?username=guess{i}"));
        assert_eq!(r.status, 200, "params {i}: {}", r.text());
    }
    let r = http.get_from(ip, "/api/v1/auth/params?username=guess60");
    assert_limited("61st request of one address", &r);
    let (r, _) = http.login(ip, "bystander", &other_key);
    assert_limited("login from the limited address", &r);
}

// ------------------------------------------------------------------ 6. hostile answers

#[test]
fn a_path_leaving_the_root_is_refused() {
    let _machine = shared();
    let server = Server::start();
    let alice = server.register("alice");
    let a = alice.device();
    a.write("victim.txt", "where will I land?");
    a.write("fine.txt", "fine");
    a.sync();
    let elsewhere = tempfile::tempdir().unwrap();
    let absolute = format!("{}/escape.txt", elsewhere.path().display());
    for (hostile, refusal) in [
        ("../escape.txt".to_owned(), "'..' component"),
        (absolute.clone(), "absolute"),
    ] {
        let to = format!("\"{hostile}\"").into_bytes();
        let proxy = Proxy::start(&server, move |_, body| {
            replace_all(&body, b"\"victim.txt\"", &to)
        });
        let b = alice.via(&proxy.url()).device();
        let before = beside_root(&b);
        let (ok, out) = once(&b);
        // Refused when the answer is parsed (the round fails), or at the latest
        // before anything is written (the file is left out).
        assert!(
            (!ok && out.contains(refusal)) || out.contains("leaves the sync root"),
            "{hostile}: the client did not refuse the path:\n{out}"
        );
        let escaped = b.root().parent().unwrap().join("escape.txt");
        assert!(!escaped.exists(), "{hostile}: written beside the root");
        assert!(!Path::new(&absolute).exists(), "{hostile}: written outside");
        assert!(b.tree().is_empty(), "{hostile}: {:?}", b.tree());
        assert_untouched(&hostile, &before, &b);
        assert!(listing(elsewhere.path()).is_empty());
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_in_the_root_is_never_written_through() {
    let _machine = shared();
    let server = Server::start();
    let alice = server.register("alice");
    let a = alice.device();
    // B goes through a proxy that names conflict copies into the symlinked folder;
    // everything else passes unchanged.
    let proxy = Proxy::start(&server, |_, body| {
        replace_all(
            &body,
            b"\"path\":\"conflict.sync-conflict-",
            b"\"path\":\"link/conflict.sync-conflict-",
        )
    });
    let b = alice.via(&proxy.url()).device();
    a.write("link/inner.txt", "inner");
    a.write("moved.txt", "move me");
    a.write("conflict.txt", "v1");
    a.sync();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), b.path("link")).unwrap();
    let beside = beside_root(&b);
    let check = |step: &str| {
        assert!(
            listing(outside.path()).is_empty(),
            "{step}: written through the symlink: {:?}",
            listing(outside.path())
        );
        let link = std::fs::symlink_metadata(b.path("link")).unwrap();
        assert!(
            link.file_type().is_symlink(),
            "{step}: the symlink was replaced"
        );
        assert!(temp_files(b.root()).is_empty(), "{step}: temp file left");
        assert_untouched(step, &beside, &b);
    };

    // A new file in the folder that is a symlink on B.
    let (ok, out) = once(&b);
    check("download");
    assert!(ok, "{out}");
    assert_deferred(&out, "link/inner.txt", &["leaves the sync root"]);
    assert_eq!(b.read("moved.txt"), b"move me");

    // A rename into that folder.
    a.rename("moved.txt", "link/moved.txt");
    a.sync();
    let (ok, out) = once(&b);
    check("move");
    assert!(ok, "{out}");
    assert_deferred(&out, "moved.txt", &["leaves the sync root"]);
    assert_eq!(b.read("moved.txt"), b"move me", "B's file is lost");

    // A conflict copy the (hostile) server names inside that folder.
    a.write("conflict.txt", "A's edit");
    a.sync();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    b.write_at("conflict.txt", "B's edit, older", old);
    let (ok, out) = once(&b);
    check("conflict copy");
    assert!(!ok, "the client accepted the conflict copy's path:\n{out}");
    assert!(out.contains("leaves the sync root"), "{out}");
    assert_eq!(b.read("conflict.txt"), b"B's edit, older", "B's edit moved");
}

#[test]
fn an_oversized_or_exploding_chunk_is_refused() {
    let _machine = shared();
    let (server, a, b) = Server::start().pair();
    a.write("bomb.bin", random_bytes(41, 5_000));
    a.write("oversized.bin", random_bytes(42, 5_000));
    a.write("junk.bin", random_bytes(43, 5_000));
    a.write("fine.txt", "fine");
    a.sync();

    // A key holder's blobs under the real chunk ids, so that they authenticate: one
    // that decompresses to 8× the bound, one stored raw just past the bound.
    let codec = account_codec(&Http::new(&server), "alice").with_max_plaintext(usize::MAX);
    let blob = blob_of(&server, "bomb.bin");
    let bomb = codec
        .encode(&blob.id, &vec![b'z'; 8 * MAX_CHUNK_PLAINTEXT])
        .unwrap();
    assert!(bomb.len() < 64 * 1024, "not a bomb: {} bytes", bomb.len());
    blob.replace(&server, &bomb);
    let blob = blob_of(&server, "oversized.bin");
    let big = random_bytes(44, MAX_CHUNK_PLAINTEXT + 16 * 1024);
    let big = codec.encode(&blob.id, &big).unwrap();
    assert!(big.len() < MAX_BLOB_SIZE, "{} bytes", big.len());
    blob.replace(&server, &big);
    // What a server without keys can send: junk past the bound.
    let junk = |path: &str, seed: u64, len: usize| {
        let mut junk = b"FSB1\x01\x00".to_vec();
        junk.extend(random_bytes(seed, len));
        blob_of(&server, path).replace(&server, &junk);
    };
    junk("junk.bin", 45, MAX_CHUNK_PLAINTEXT + 1024);

    let beside = beside_root(&b);
    let (ok, out) = once(&b);
    assert!(ok, "{out}");
    // The bomb is stopped by the bound on its decompressed size, the others by the
    // bound on a blob's size (before any decryption or decompression).
    for (v, limit) in [
        ("bomb.bin", MAX_CHUNK_PLAINTEXT),
        ("oversized.bin", MAX_CHUNK_PLAINTEXT + BLOB_OVERHEAD),
        ("junk.bin", MAX_CHUNK_PLAINTEXT + BLOB_OVERHEAD),
    ] {
        assert_deferred(&out, v, &[&format!("exceeds the limit of {limit} bytes")]);
        assert!(!b.path(v).exists(), "{v} was written");
    }
    assert_eq!(b.read("fine.txt"), b"fine");
    assert!(temp_files(b.root()).is_empty(), "a temp file was left");

    // Past what a batch entry may carry: the whole answer is refused.
    a.write("huge.bin", random_bytes(46, 5_000));
    a.sync();
    junk("huge.bin", 47, MAX_BLOB_SIZE + 1024);
    let (_, out) = once(&b);
    assert!(out.contains("exceeds the limit"), "{out}");
    assert!(!b.path("huge.bin").exists(), "huge.bin was written");
    assert!(temp_files(b.root()).is_empty(), "a temp file was left");
    assert_untouched("oversized chunks", &beside, &b);
}
