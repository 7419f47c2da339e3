//! Harness of the HTTP integration tests: a real server per test on 127.0.0.1:0 (SQLite
//! in a temp dir; also PostgreSQL on a fresh database when `FSYNC_TEST_DATABASE_URL` is
//! set), a small HTTP client, and a user who registers and logs in the way a client does.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use fsync_common::wire::PushMessage;
use fsync_common::wire::{
    ChunkRef, CommitRequest, CommitResponse, KdfParams, LoginResponse, OpResponse, RegisterResponse,
};
use fsync_common::{ChunkId, ContentHash, DeviceId, NamespaceId, UserId, VersionVector};
use fsync_server::AppState;
use fsync_store::BlobCodec;
use fsync_testkit::keys::NewAccount;
use fsync_testkit::postgres::{test_database_url, ScratchDatabase};
use fsync_testkit::server::{Database, TestServer};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Runs `$scenario(&Server)` on a fresh server for every configured backend, after
/// `$tweak(&mut AppState)` when given (see [`Server::start_with`]).
#[allow(unused_macros)]
macro_rules! on_every_backend {
    ($name:ident => $scenario:path) => {
        on_every_backend!($name, |_| {} => $scenario);
    };
    ($name:ident, $tweak:expr => $scenario:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            for backend in backends() {
                eprintln!("--- {} on {backend}", stringify!($name));
                let srv = Server::start_with(&backend, $tweak).await;
                $scenario(&srv).await;
            }
        }
    };
}

/// 2026-11-25 15:34:47 UTC, in nanoseconds: the mtime of the tests' commits.
pub const T0: i64 = 1_795_620_887 * 1_000_000_000;

/// The empty version vector: the base of a file's first commit.
pub fn empty() -> VersionVector {
    VersionVector::new()
}

/// The claims of an access token, for tests that forge tokens.
#[derive(serde::Serialize)]
pub struct Claims {
    pub sub: String,
    pub device: String,
    pub iat: u64,
    pub exp: u64,
}

impl Claims {
    /// The claims of `user` on `dev`, issued at `iat`, expiring at `exp` (Unix seconds).
    pub fn of(user: &User, dev: &Device, iat: u64, exp: u64) -> Self {
        let (sub, device) = (user.id.to_hex(), dev.id.to_hex());
        Self {
            sub,
            device,
            iat,
            exp,
        }
    }
}

/// A token with `claims`, signed with `alg` and `secret`.
pub fn hs(alg: jsonwebtoken::Algorithm, claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The handshake request of `/api/v1/ws`, with a bearer header when given.
pub fn ws_request(
    srv: &Server,
    token: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://{}/api/v1/ws", srv.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

/// Opens `/api/v1/ws`, with a bearer header when given; a refused handshake is
/// returned as the HTTP response it was.
pub async fn ws_connect(srv: &Server, token: Option<&str>) -> Result<Ws, Resp> {
    match tokio_tungstenite::connect_async(ws_request(srv, token)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Resp {
            status: StatusCode::from_u16(resp.status().as_u16()).unwrap(),
            headers: HeaderMap::new(),
            body: resp.body().clone().unwrap_or_default(),
        }),
        Err(e) => panic!("WebSocket handshake failed below HTTP: {e}"),
    }
}

/// Opens `/api/v1/ws` (see [`ws_connect`]); panics when it is refused.
pub async fn ws_open(srv: &Server, token: Option<&str>) -> Ws {
    ws_connect(srv, token).await.expect("a WebSocket upgrade")
}

/// Sends the first-message authentication with `token`.
pub async fn ws_auth(ws: &mut Ws, token: &str) {
    let auth = serde_json::json!({"type": "auth", "token": token});
    ws.send(Message::text(auth.to_string())).await.unwrap();
}

/// The next frame that is not a heartbeat (or ping/pong), within [`EVENT_TIMEOUT`];
/// `None` when the stream ends.
pub async fn next_frame(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(t)))
                    if serde_json::from_str::<PushMessage>(t.as_str()).ok()
                        == Some(PushMessage::Heartbeat) => {}
                Some(Ok(m)) => return Some(m),
            }
        }
    })
    .await
    .expect("a frame within the timeout")
}

/// The next push of the namespace journal.
pub async fn next_push(ws: &mut Ws) -> PushMessage {
    match next_frame(ws).await {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).expect("a push message"),
        other => panic!("expected a push, got {other:?}"),
    }
}

/// The secret every test server signs its tokens with (tests forge tokens with it).
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// How long any awaited event may take before the test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A metadata database the tests run against.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A fresh SQLite file per server.
    Sqlite,
    /// A fresh database per server, created next to the one this URL names.
    Postgres(String),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        })
    }
}

/// SQLite always; PostgreSQL too when `FSYNC_TEST_DATABASE_URL` is set (required when
/// `CI` is set, so CI never skips it silently).
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    out.extend(test_database_url().map(Backend::Postgres));
    out
}

/// Runs `sql` on the database `url` names (e.g. refusing connections to a test
/// database); panics naming the statement when it fails.
pub async fn admin_sql(url: &str, sql: String) {
    fsync_testkit::postgres::execute(url, &sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
}

/// A fresh database next to the one `base` names.
pub async fn fresh_postgres(base: &str) -> ScratchDatabase {
    ScratchDatabase::create(base)
        .await
        .unwrap_or_else(|e| panic!("a test database on FSYNC_TEST_DATABASE_URL: {e:#}"))
}

/// A running server (the kit's [`TestServer`], with an HTTP client); stopped, and its
/// PostgreSQL database dropped, on drop.
pub struct Server {
    /// The listening address.
    pub addr: SocketAddr,
    http: reqwest::Client,
    inner: TestServer,
    data_dir: std::path::PathBuf,
    /// `None` for a second node, whose first node owns the directory.
    dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with default limits.
    pub async fn start(backend: &Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server after letting `tweak` adjust its state (e.g. lower the limits).
    pub async fn start_with(backend: &Backend, tweak: impl FnOnce(&mut AppState)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = match backend {
            Backend::Sqlite => Database::Sqlite,
            Backend::Postgres(base) => Database::Scratch(fresh_postgres(base).await),
        };
        let mut srv = Self::launch(database, dir.path().to_owned(), tweak).await;
        srv.dir = Some(dir);
        srv
    }

    /// The metadata database's URL.
    pub fn database_url(&self) -> &str {
        &self.inner.database_url
    }

    /// Another node of the same deployment: a second server process's state on the
    /// same database and blob directory, with its own in-process broadcasts (so only
    /// the cross-node fan-out links their WebSockets).
    pub async fn start_node(&self) -> Self {
        let database = Database::Url(self.database_url().to_owned());
        Self::launch(database, self.data_dir.clone(), |_| {}).await
    }

    async fn launch(
        database: Database,
        data_dir: std::path::PathBuf,
        tweak: impl FnOnce(&mut AppState),
    ) -> Self {
        let inner = TestServer::start(&data_dir, SECRET, database, &[], tweak)
            .await
            .expect("start the server");
        Self {
            addr: inner.addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
            inner,
            data_dir,
            dir: None,
        }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.url)
    }

    /// A request, with a bearer token when given.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("request reaches the server");
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("response body").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// The value of the unlabelled metric `name` in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = String::from_utf8(self.get("/metrics", None).await.expect(200).body)
            .expect("metrics are text");
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(self.request(Method::GET, path, token)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &T,
    ) -> Resp {
        self.send(self.request(Method::POST, path, token).json(body))
            .await
    }

    /// `GET path`, answered 200 with a `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, token: Option<&str>) -> T {
        self.get(path, token).await.expect(200).json()
    }

    /// `POST path` with a JSON body, answered 200 with a `T`.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &(impl Serialize + ?Sized),
    ) -> T {
        self.post(path, token, body).await.expect(200).json()
    }

    /// `POST path` with `body` sent as `content_type`, whatever it holds.
    pub async fn post_raw(&self, path: &str, tok: Option<&str>, ty: &str, body: &str) -> Resp {
        let rb = self
            .request(Method::POST, path, tok)
            .header("content-type", ty);
        self.send(rb.body(body.to_owned())).await
    }

    /// `DELETE /api/v1/devices/{id}`: revokes a device.
    pub async fn revoke(&self, token: Option<&str>, id: impl fmt::Display) -> Resp {
        let path = format!("/api/v1/devices/{id}");
        self.send(self.request(Method::DELETE, &path, token)).await
    }

    /// `POST /api/v1/auth/refresh` with the refresh token `refresh`.
    pub async fn refresh(&self, refresh: &str) -> Resp {
        let body = serde_json::json!({ "refresh_token": refresh });
        self.post("/api/v1/auth/refresh", None, &body).await
    }

    /// `POST path` with raw bytes.
    pub async fn post_bytes(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        self.send_bytes(Method::POST, path, token, body).await
    }

    /// `PUT path` with raw bytes.
    pub async fn put_bytes(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        self.send_bytes(Method::PUT, path, token, body).await
    }

    async fn send_bytes(&self, m: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        let octets = "application/octet-stream";
        let rb = self.request(m, path, token);
        self.send(rb.header("content-type", octets).body(body))
            .await
    }
}

/// A response, read completely.
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl fmt::Debug for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

impl Resp {
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; response: {self:?}"
        );
        self
    }

    /// The body as `T`.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body does not parse ({e}): {self:?}"))
    }

    /// The body as JSON.
    #[track_caller]
    pub fn value(&self) -> Value {
        self.json()
    }

    /// `error.code` of an error body (asserting the `{"error":{"code","message"}}` shape).
    #[track_caller]
    pub fn code(&self) -> String {
        let v = self.value();
        assert!(
            v["error"]["message"].is_string(),
            "error body without a message: {self:?}"
        );
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {self:?}"))
            .to_owned()
    }

    /// Asserts 401 `unauthorized`.
    #[track_caller]
    pub fn unauthorized(self) -> Self {
        self.expect_error(401, "unauthorized")
    }

    /// Asserts 404 `not_found`.
    #[track_caller]
    pub fn not_found(self) -> Self {
        self.expect_error(404, "not_found")
    }

    /// Asserts 429 `rate_limited`.
    #[track_caller]
    pub fn rate_limited(self) -> Self {
        self.expect_error(429, "rate_limited")
    }

    /// Asserts 400 `bad_request`.
    #[track_caller]
    pub fn bad_request(self) -> Self {
        self.expect_error(400, "bad_request")
    }

    /// `error.message` of an error body.
    #[track_caller]
    pub fn message(&self) -> String {
        let m = self.value()["error"]["message"].as_str().map(str::to_owned);
        m.unwrap_or_else(|| panic!("no error message: {self:?}"))
    }

    /// Whether the body is declared JSON.
    pub fn is_json(&self) -> bool {
        let ty = self.headers["content-type"].to_str().unwrap();
        ty.starts_with("application/json")
    }

    /// Asserts status and error code together.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        let s = self.expect(status);
        assert_eq!(s.code(), code, "unexpected error code; response: {s:?}");
        s
    }
}

/// A registered account, with the keys a client holds.
pub struct User {
    /// Username.
    pub username: String,
    /// The password the master key is derived from.
    pub password: String,
    /// KDF parameters chosen at registration.
    pub kdf: KdfParams,
    /// `auth_key` hex: what is sent as `password`.
    pub auth_key: String,
    /// Account key wrapped with `kek`, hex.
    pub wrapped_account_key: String,
    /// Namespace key wrapped with the account key, hex.
    pub wrapped_namespace_key: String,
    /// The user.
    pub id: UserId,
    /// The first namespace.
    pub namespace: NamespaceId,
    /// Codec of the first namespace.
    pub codec: BlobCodec,
}

/// A logged-in device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Access token.
    pub token: String,
    /// Refresh token.
    pub refresh: String,
    /// Device id.
    pub id: DeviceId,
    /// The whole login answer.
    pub login: LoginResponse,
}

/// `/api/v1/chunks/{id}?namespace={ns}`.
pub fn chunk_path(id: &ChunkId, ns: NamespaceId) -> String {
    format!("/api/v1/chunks/{id}?namespace={ns}")
}

/// A user named after `prefix`, registered, and its first device logged in as `device`.
pub async fn account(srv: &Server, prefix: &str, device: &str) -> (User, Device) {
    let user = register(srv, &username(prefix)).await;
    let dev = user.login(srv, device).await;
    (user, dev)
}

/// Registers `username` the way a client does and returns the account.
pub async fn register(srv: &Server, username: &str) -> User {
    // A client asks first; for a new account it then picks its own parameters.
    srv.get(&format!("/api/v1/auth/params?username={username}"), None)
        .await
        .expect(200);
    let password = format!("pw of {username}");
    let new = NewAccount::new(username, &password).await;
    let r = srv
        .post("/api/v1/auth/register", None, &new.request)
        .await
        .expect(201);
    let reg: RegisterResponse = r.json();
    let codec = new.codec();
    let req = new.request;
    User {
        username: username.to_owned(),
        password,
        kdf: req.kdf,
        auth_key: req.password,
        wrapped_account_key: req.wrapped_account_key,
        wrapped_namespace_key: req.wrapped_namespace_key,
        id: reg.user_id,
        namespace: reg.namespace_id,
        codec,
    }
}

impl User {
    /// The login request body.
    pub fn login_body(&self, device_name: &str) -> Value {
        serde_json::json!({"username": self.username, "password": self.auth_key, "device_name": device_name})
    }

    /// Logs in as a new device.
    pub async fn login(&self, srv: &Server, device_name: &str) -> Device {
        let r = srv
            .post("/api/v1/auth/login", None, &self.login_body(device_name))
            .await
            .expect(200);
        let login: LoginResponse = r.json();
        Device {
            token: login.access_token.clone(),
            refresh: login.refresh_token.clone(),
            id: login.device_id,
            login,
        }
    }

    /// The keyed content hash a client would send for `data` (any keyed 32-byte hash
    /// will do for the server; this one is unique per content).
    pub fn content_hash(&self, data: &[u8]) -> ContentHash {
        ContentHash::from_bytes(*self.codec.chunk_id(data).as_bytes())
    }

    /// Encrypts `data` as one chunk: its id and blob.
    pub fn blob(&self, data: &[u8]) -> (ChunkId, Vec<u8>) {
        let id = self.codec.chunk_id(data);
        let blob = self.codec.encode(&id, data).expect("encode blob");
        (id, blob)
    }

    /// Uploads `data` as one chunk (201 new, 200 already there) and returns its ref.
    pub async fn upload(&self, srv: &Server, dev: &Device, data: &[u8]) -> ChunkRef {
        let (id, blob) = self.blob(data);
        let r = srv
            .put_bytes(&chunk_path(&id, self.namespace), Some(&dev.token), blob)
            .await;
        assert!(
            matches!(r.status.as_u16(), 200 | 201),
            "chunk upload failed: {r:?}"
        );
        ChunkRef(id, data.len() as u32)
    }

    /// A commit of `data` (uploaded first, as one chunk) to `path` from `base`.
    pub async fn commit_req(
        &self,
        srv: &Server,
        dev: &Device,
        path: &str,
        data: &[u8],
        base: &VersionVector,
        mtime: i64,
    ) -> CommitRequest {
        let chunk = self.upload(srv, dev, data).await;
        CommitRequest {
            pages: Vec::new(),
            namespace: self.namespace,
            path: path.parse().expect("valid test path"),
            base: base.clone(),
            chunks: vec![chunk],
            size: data.len() as u64,
            mtime,
            mode: 0o644,
            content_hash: self.content_hash(data),
            idempotency_key: random_key(),
        }
    }

    /// Uploads and commits `data` at `path` from `base`; asserts 200.
    pub async fn commit(
        &self,
        srv: &Server,
        dev: &Device,
        path: &str,
        data: &[u8],
        base: &VersionVector,
        mtime: i64,
    ) -> CommitResponse {
        let req = self.commit_req(srv, dev, path, data, base, mtime).await;
        srv.post_json("/api/v1/files/upload", Some(&dev.token), &req)
            .await
    }

    /// [`User::commit`] of a new file: from the empty base, at [`T0`].
    pub async fn create(
        &self,
        srv: &Server,
        dev: &Device,
        path: &str,
        data: &[u8],
    ) -> CommitResponse {
        self.commit(srv, dev, path, data, &empty(), T0).await
    }

    /// The body of a delete of `path` from `base`, with a fresh idempotency key.
    pub fn delete_body(&self, path: &str, base: &VersionVector) -> Value {
        let key = random_key();
        serde_json::json!({"namespace": self.namespace, "path": path, "base": base, "idempotency_key": key})
    }

    /// The body of a rename of `from` to `to`, with a fresh idempotency key.
    pub fn rename_body(&self, from: &str, to: &str) -> Value {
        let key = random_key();
        serde_json::json!({"namespace": self.namespace, "from": from, "to": to, "idempotency_key": key})
    }

    /// Deletes `path` from `base`; asserts 200.
    pub async fn delete(
        &self,
        srv: &Server,
        dev: &Device,
        path: &str,
        base: &VersionVector,
    ) -> OpResponse {
        let body = self.delete_body(path, base);
        srv.post_json("/api/v1/files/delete", Some(&dev.token), &body)
            .await
    }

    /// Renames `from` to `to`; asserts 200.
    pub async fn rename(&self, srv: &Server, dev: &Device, from: &str, to: &str) -> OpResponse {
        let body = self.rename_body(from, to);
        srv.post_json("/api/v1/files/rename", Some(&dev.token), &body)
            .await
    }
}

/// A fresh idempotency key.
pub fn random_key() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

/// A unique username for this test.
pub fn username(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 4]>()))
}

/// Base64url without padding (JWT segments).
pub fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=group.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn b64url_is_unpadded() {
    assert_eq!(b64url(b"{\"alg\":\"none\"}"), "eyJhbGciOiJub25lIn0");
    assert_eq!(b64url(b"ab"), "YWI");
}
