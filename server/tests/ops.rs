//! Operations and the API's error shape, against a real server on 127.0.0.1:0:
//!
//! - `/health` answers 503 naming the part that is down (the metadata database, the
//!   blob store), without the cause, and 200 again once it is back;
//! - `/metrics` moves with the traffic: requests and latency by route template, body
//!   bytes actually read and sent (chunked uploads included), blob bytes, chunks
//!   stored, dedup hits, open WebSockets;
//! - a wrong method on any route and an unknown route answer the JSON error body;
//! - every kind of path validation error comes back as `invalid_path` with the field
//!   and the reason.

#![allow(missing_docs, clippy::too_many_lines)]

#[allow(dead_code)]
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{
    account, admin_sql, backends, chunk_path, fresh_postgres, random_key, ws_open, Backend, Server,
    EVENT_TIMEOUT,
};
use fsync_common::wire::{RenameRequest, SyncEvent};
use fsync_common::{
    ChunkId, PathError, SyncPath, VersionVector, MAX_COMPONENT_BYTES, MAX_PATH_BYTES,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

// ------------------------------------------------------------------ helpers

const UPLOAD: &str = "/api/v1/files/upload";
const EVENT: &str = "/api/v1/sync/event";

/// Polls `cond` until it holds; fails after [`EVENT_TIMEOUT`].
async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, cond: impl FnMut() -> F) {
    fsync_testkit::wait_until_async(EVENT_TIMEOUT, what, cond).await;
}

/// Fields a health answer may have: the states, never the cause.
fn assert_health_body(body: &Value, database: &str, blob_store: &str) {
    let keys: Vec<&str> = body
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["blob_store", "database", "status", "version"],
        "{body}"
    );
    assert_eq!(body["database"], database, "{body}");
    assert_eq!(body["blob_store"], blob_store, "{body}");
    let healthy = database == "ok" && blob_store == "ok";
    assert_eq!(
        body["status"],
        if healthy { "ok" } else { "degraded" },
        "{body}"
    );
}

// ------------------------------------------------------------------ 1. /health

/// PostgreSQL refuses the server's connections (the database stops accepting them and
/// its sessions are terminated, waiting up to 10 s for each to end): 503 naming the
/// database; 200 once it accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_database_when_postgres_is_down() {
    let Some(Backend::Postgres(base)) = backends().pop() else {
        eprintln!("FSYNC_TEST_DATABASE_URL is not set: PostgreSQL health test skipped");
        return;
    };
    let db = fresh_postgres(&base).await;
    let name = db.name().to_owned();
    let repo = fsync_server::open_postgres(db.url())
        .await
        .expect("open the fresh database");
    let srv = Server::start_with(&Backend::Sqlite, move |s| s.repo = repo).await;
    let r = srv.get("/health", None).await.expect(200);
    assert_health_body(&r.value(), "ok", "ok");

    admin_sql(
        &base,
        format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = '{name}'"
        ),
    )
    .await;
    let r = srv.get("/health", None).await.expect(503);
    assert_health_body(&r.value(), "unavailable", "ok");
    let text = String::from_utf8_lossy(&r.body).to_lowercase();
    for leak in [
        "accept",
        "terminat",
        "connection",
        &name,
        "sqlx",
        "postgres",
    ] {
        assert!(!text.contains(leak), "the cause leaked ({leak}): {text}");
    }

    admin_sql(
        &base,
        format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
    )
    .await;
    let r = srv.get("/health", None).await.expect(200);
    assert_health_body(&r.value(), "ok", "ok");

    drop(srv);
    db.drop_database().await.expect("drop the test database");
}

/// The blob directory is replaced by a file (tests run as root: permissions would not
/// stop it): 503 naming the blob store; 200 once the directory is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_blob_store_when_its_directory_is_gone() {
    for backend in backends() {
        eprintln!("--- on {backend}");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        let store = Arc::new(fsync_store::LocalStore::open(&root).unwrap());
        let srv = Server::start_with(&backend, move |s| s.blobs = store).await;
        let r = srv.get("/health", None).await.expect(200);
        assert_health_body(&r.value(), "ok", "ok");

        std::fs::remove_dir_all(&root).unwrap();
        std::fs::write(&root, b"not a directory").unwrap();
        let r = srv.get("/health", None).await.expect(503);
        assert_health_body(&r.value(), "ok", "unavailable");
        let text = String::from_utf8_lossy(&r.body).to_lowercase();
        for leak in [
            "directory",
            "store root",
            "error",
            &dir.path().display().to_string(),
        ] {
            assert!(!text.contains(leak), "the cause leaked ({leak}): {text}");
        }

        std::fs::remove_file(&root).unwrap();
        std::fs::create_dir(&root).unwrap();
        let r = srv.get("/health", None).await.expect(200);
        assert_health_body(&r.value(), "ok", "ok");
    }
}

// ------------------------------------------------------------------ 2. /metrics

/// `/metrics` parsed: series (name with labels) → value.
struct Scrape {
    text: String,
    series: BTreeMap<String, String>,
}

impl Scrape {
    async fn take(srv: &Server) -> Self {
        let r = srv.get("/metrics", None).await.expect(200);
        let text = String::from_utf8(r.body).expect("UTF-8 metrics");
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("`series value`");
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Self { text, series }
    }

    /// A counter's or gauge's value; 0 when absent.
    fn get(&self, series: &str) -> u64 {
        self.series.get(series).map_or(0, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{series} is not a count: {v}"))
        })
    }

    /// How much `series` grew since `before`.
    fn since(&self, before: &Self, series: &str) -> u64 {
        self.get(series) - before.get(series)
    }

    /// The body size of this scrape, as sent.
    fn len(&self) -> u64 {
        self.text.len() as u64
    }

    /// Checks every latency histogram: buckets cumulative, `+Inf` = count, sum ≥ 0.
    fn assert_histograms_consistent(&self) {
        let mut by_labels: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for k in self.series.keys() {
            if let Some(rest) = k.strip_prefix("fsync_http_request_duration_seconds_bucket{") {
                let (labels, le) = rest.rsplit_once(",le=").expect("an le label");
                by_labels.entry(labels.to_owned()).or_default().push((
                    le.trim_end_matches('}').trim_matches('"').to_owned(),
                    self.get(k),
                ));
            }
        }
        assert!(
            !by_labels.is_empty(),
            "no latency histogram:\n{}",
            self.text
        );
        for (labels, mut buckets) in by_labels {
            let bound = |le: &str| {
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                }
            };
            buckets.sort_by(|a, b| bound(&a.0).total_cmp(&bound(&b.0)));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "buckets not cumulative for {{{labels}}}: {buckets:?}"
            );
            let count = self.get(&format!(
                "fsync_http_request_duration_seconds_count{{{labels}}}"
            ));
            assert_eq!(buckets.last().unwrap().1, count, "{{{labels}}}");
            let sum = &self.series[&format!("fsync_http_request_duration_seconds_sum{{{labels}}}")];
            assert!(
                sum.parse::<f64>().unwrap() >= 0.0,
                "sum {sum} of {{{labels}}}"
            );
        }
    }
}

fn latency_count(method: &str, route: &str) -> String {
    format!("fsync_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\"}}")
}

/// `PUT` of one blob with a chunked body (no `Content-Length`), over a raw socket.
async fn put_chunked(srv: &Server, token: &str, path: &str, blob: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        srv.addr
    )
    .into_bytes();
    for piece in blob.chunks(1000) {
        req.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend(piece);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    tcp.write_all(&req).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, tcp.read_to_end(&mut resp))
        .await
        .expect("an answer within the timeout")
        .unwrap();
    String::from_utf8_lossy(&resp).into_owned()
}

/// Traffic moves every series as it should.
async fn metrics_scenario(srv: &Server) {
    let (user, dev) = account(srv, "metrics", "laptop").await;
    let (ns, tok) = (user.namespace, Some(dev.token.as_str()));

    // A chunked upload: bytes in are the body's bytes, not a Content-Length.
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (id, blob) = user.blob(&data);
    let chunk_path = chunk_path(&id, ns);
    let before = Scrape::take(srv).await;
    let resp = put_chunked(srv, &dev.token, &chunk_path, &blob).await;
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let after = Scrape::take(srv).await;
    let bytes_in = after.since(&before, "fsync_bytes_in_total");
    assert_eq!(bytes_in, blob.len() as u64, "bytes in of a chunked upload");
    assert_eq!(after.since(&before, "fsync_chunks_stored_total"), 1);
    let puts = after.since(&before, &latency_count("PUT", "/api/v1/chunks/{id}"));
    assert_eq!(puts, 1, "{}", after.text);

    // Dedup: one id present, one not.
    let unknown = ChunkId::from_bytes(rand::random());
    let before = Scrape::take(srv).await;
    let body = json!({"namespace": ns, "ids": [id, unknown]});
    let r: Value = srv.post_json("/api/v1/chunks/missing", tok, &body).await;
    assert_eq!(r["missing"], json!([unknown]));
    let after = Scrape::take(srv).await;
    assert_eq!(after.since(&before, "fsync_dedup_hits_total"), 1);

    // Bytes out: every response body (the scrape itself, a listing), and the blob
    // bytes of a download apart.
    let before = Scrape::take(srv).await;
    let listing = srv.get("/api/v1/files/list", tok).await.expect(200);
    let download = srv.get(&chunk_path, tok).await.expect(200);
    assert_eq!(download.body, blob);
    let after = Scrape::take(srv).await;
    assert_eq!(
        after.since(&before, "fsync_bytes_out_total"),
        before.len() + listing.body.len() as u64 + blob.len() as u64,
        "bytes out: the scrape, the listing and the blob"
    );
    let blob_out = after.since(&before, "fsync_blob_bytes_out_total");
    assert_eq!(blob_out, blob.len() as u64);
    for route in ["/api/v1/files/list", "/api/v1/chunks/{id}", "/metrics"] {
        let n = after.since(&before, &latency_count("GET", route));
        assert_eq!(n, 1, "latency count of GET {route}:\n{}", after.text);
    }

    // Unknown paths share one label; no raw path or id is ever a label.
    let raw = format!("/api/v1/nope/{}", hex::encode(rand::random::<[u8; 8]>()));
    srv.get(&raw, None).await.not_found();
    let now = Scrape::take(srv).await;
    assert_eq!(now.get(&latency_count("GET", "unmatched")), 1);
    let unmatched = r#"fsync_http_requests_total{method="GET",route="unmatched",status="404"}"#;
    assert!(now.get(unmatched) >= 1);
    for needle in [id.to_string(), ns.to_string(), raw] {
        assert!(
            !now.text.contains(&needle),
            "{needle} in /metrics:\n{}",
            now.text
        );
    }
    now.assert_histograms_consistent();

    // WebSocket connections: up while a socket is open, down once it closes.
    let sockets = |s: Scrape| s.get("fsync_websocket_connections");
    assert_eq!(sockets(now), 0);
    let mut ws = ws_open(srv, Some(&dev.token)).await;
    // The first push comes after the socket is counted.
    let first = tokio::time::timeout(EVENT_TIMEOUT, ws.next()).await;
    let first = first.expect("a first push").expect("socket open");
    let first = first.expect("socket healthy");
    assert!(matches!(first, Message::Text(_)), "{first:?}");
    assert_eq!(sockets(Scrape::take(srv).await), 1);
    ws.close(None).await.unwrap();
    wait_for("the WebSocket gauge to drop to 0", || async {
        sockets(Scrape::take(srv).await) == 0
    })
    .await;
    let last = Scrape::take(srv).await;
    let upgrades = r#"fsync_http_requests_total{method="GET",route="/api/v1/ws",status="101"}"#;
    assert!(last.get(upgrades) == 1, "{}", last.text);
}

on_every_backend!(metrics_follow_the_traffic => metrics_scenario);

// ------------------------------------------------------------------ 3. JSON errors

/// `GET /api/openapi.json` answers without a token, as JSON, and describes every route
/// the router serves with its method (and the token it needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route() {
    let srv = Server::start(&Backend::Sqlite).await;
    let r = srv.get("/api/openapi.json", None).await.expect(200);
    assert_eq!(r.headers["content-type"], "application/json");
    let doc: Value = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in fsync_server::ROUTES {
        let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
        let needs_token = op.get("security").is_some();
        assert_eq!(
            needs_token,
            route.access == fsync_server::Access::Token,
            "{} {}",
            route.method,
            route.path
        );
    }
}

/// A wrong method on every route is a JSON 405 with `Allow`; unknown routes a JSON 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_unknown_routes_answer_json_errors() {
    let srv = Server::start(&Backend::Sqlite).await;
    let id = ChunkId::from_bytes([7; 32]);
    let file = "00112233445566778899aabbccddeeff";
    let chunk = format!("/api/v1/chunks/{id}");
    let download = format!("/api/v1/files/download/{file}");
    let versions = format!("/api/v1/files/{file}/versions");
    // (wrong method, path, the methods the route has)
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("POST", "/api/v1/auth/params".into(), &["GET", "HEAD"]),
        ("GET", "/api/v1/auth/register".into(), &["POST"]),
        ("GET", "/api/v1/auth/login".into(), &["POST"]),
        ("PUT", "/api/v1/auth/refresh".into(), &["POST"]),
        ("GET", "/api/v1/auth/logout".into(), &["POST"]),
        ("POST", "/api/v1/devices".into(), &["GET", "HEAD"]),
        ("GET", format!("/api/v1/devices/{file}"), &["DELETE"]),
        ("GET", "/api/v1/chunks/missing".into(), &["POST"]),
        ("GET", "/api/v1/chunks/fetch".into(), &["POST"]),
        ("GET", "/api/v1/chunks/batch".into(), &["POST"]),
        ("DELETE", chunk, &["GET", "HEAD", "PUT"]),
        ("GET", "/api/v1/files/upload".into(), &["POST"]),
        ("DELETE", "/api/v1/files/list".into(), &["GET", "HEAD"]),
        ("POST", download, &["GET", "HEAD"]),
        ("GET", "/api/v1/files/manifests".into(), &["POST"]),
        ("POST", versions, &["GET", "HEAD"]),
        ("GET", format!("/api/v1/files/{file}/restore"), &["POST"]),
        ("GET", "/api/v1/files/delete".into(), &["POST"]),
        ("GET", "/api/v1/files/rename".into(), &["POST"]),
        ("GET", "/api/v1/sync/event".into(), &["POST"]),
        ("POST", "/api/v1/sync/changes".into(), &["GET", "HEAD"]),
        ("POST", "/api/v1/ws".into(), &["GET", "HEAD"]),
        ("DELETE", "/health".into(), &["GET", "HEAD"]),
        ("PATCH", "/metrics".into(), &["GET", "HEAD"]),
        ("POST", "/api/openapi.json".into(), &["GET", "HEAD"]),
        ("POST", "/api/v1/usage".into(), &["GET", "HEAD"]),
    ];
    for (method, path, allowed) in cases {
        let r = srv
            .send(srv.request(method.parse().unwrap(), &path, None))
            .await;
        let what = format!("{method} {path}: {r:?}");
        let r = r.expect_error(405, "bad_request");
        assert_eq!(r.headers["content-type"], "application/json", "{what}");
        assert!(r.message().contains(method), "{what}");
        let allow = r.headers["allow"].to_str().unwrap();
        let mut allow: Vec<&str> = allow.split(',').map(str::trim).collect();
        allow.sort_unstable();
        assert_eq!(allow, allowed, "{what}");
    }
    for path in ["/", "/api/v1/nope", "/api/v1/files", "/healthz"] {
        let r = srv.get(path, None).await.expect_error(404, "not_found");
        assert_eq!(r.headers["content-type"], "application/json", "{path}");
    }
}

// ------------------------------------------------------------------ 4. path errors

/// Whether a path error is of the kind a case stands for.
type IsKind = fn(&PathError) -> bool;

/// One input per kind of path error, and the kind it must produce.
fn bad_paths() -> Vec<(String, IsKind)> {
    vec![
        (String::new(), |e| matches!(e, PathError::Empty)),
        ("/etc/passwd".into(), |e| matches!(e, PathError::Absolute)),
        ("C:/x".into(), |e| matches!(e, PathError::DriveLetter(_))),
        ("a\\b".into(), |e| matches!(e, PathError::Backslash)),
        ("a//b".into(), |e| matches!(e, PathError::EmptyComponent)),
        ("a/./b".into(), |e| matches!(e, PathError::Dot)),
        ("a/../b".into(), |e| matches!(e, PathError::DotDot)),
        ("a\0b".into(), |e| matches!(e, PathError::Nul)),
        ("a\u{7}b".into(), |e| matches!(e, PathError::Control(7))),
        ("x".repeat(MAX_COMPONENT_BYTES + 1), |e| {
            matches!(e, PathError::ComponentTooLong(_))
        }),
        ("abc/".repeat(MAX_PATH_BYTES / 4 + 1), |e| {
            matches!(e, PathError::TooLong(_))
        }),
    ]
}

/// Every `SyncPath` validation error is `invalid_path`, naming the field and the reason:
/// in a commit, in a sync event (inside an internally tagged enum), in a rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_error_is_invalid_path_with_the_reason() {
    let srv = &Server::start(&Backend::Sqlite).await;
    let (user, dev) = account(srv, "paths", "laptop").await;
    let tok = Some(dev.token.as_str());
    let req = user
        .commit_req(srv, &dev, "ok.txt", b"content", &VersionVector::new(), 1)
        .await;
    let commit = serde_json::to_value(&req).unwrap();
    let event = serde_json::to_value(SyncEvent::Create(req.clone())).unwrap();
    let rename = serde_json::to_value(RenameRequest {
        namespace: user.namespace,
        from: SyncPath::new("ok.txt").unwrap(),
        to: SyncPath::new("ok2.txt").unwrap(),
        idempotency_key: random_key(),
    })
    .unwrap();

    let kinds = bad_paths();
    assert_eq!(kinds.len(), 11, "a PathError kind without a case here");
    for (bad, kind) in kinds {
        let err = SyncPath::new(&bad).expect_err("a bad path");
        assert!(
            kind(&err),
            "{bad:?} gave {err:?}, not the kind it stands for"
        );
        let reason = err.to_string();
        let shown: String = bad.chars().take(20).collect();

        let with = |v: &Value, field: &str| {
            let mut v = v.clone();
            v[field] = json!(bad);
            v
        };
        let cases = [
            (UPLOAD, with(&commit, "path"), "path"),
            (
                EVENT,
                json!({ "events": [with(&event, "path")] }),
                "events[0].path",
            ),
            ("/api/v1/files/rename", with(&rename, "to"), "to"),
        ];
        for (endpoint, body, field) in cases {
            let r = srv.post(endpoint, tok, &body).await;
            let what = format!("{shown:?} at {endpoint}: {r:?}");
            let message = r.expect_error(400, "invalid_path").message();
            assert_eq!(message, format!("{field}: {reason}"), "{what}");
        }
    }

    // A data error that is not about a path stays `bad_request`, even with a string
    // that would also be a bad path.
    for (field, value) in [("idempotency_key", json!(5)), ("namespace", json!(""))] {
        let mut body = commit.clone();
        body[field] = value;
        srv.post(UPLOAD, tok, &body).await.bad_request();
    }
}
