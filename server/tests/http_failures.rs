//! The failure half of issue #3's "HTTP tests cover each endpoint's success and its
//! failures", endpoint by endpoint: bad tokens on every authenticated route, malformed
//! JSON on every JSON route, every size limit, bad paths in every path field, per-IP
//! rate limits of the auth routes, and the regressions of two security bugs (logout of
//! someone else's refresh token; WebSockets of a revoked device left open). Like
//! `http_api.rs`: a real server per scenario on 127.0.0.1:0, on SQLite, and also on
//! PostgreSQL when `FSYNC_TEST_DATABASE_URL` is set.
//!
//! The tables are the point: a route added to one of them is checked for every failure
//! at once, and `the_auth_table_lists_every_route` fails when the router gains a route
//! that no table classifies.

#![allow(missing_docs, clippy::too_many_lines)]

// The shared harness; this file uses part of it.
#[allow(dead_code)]
#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use common::{
    b64url, backends, empty, hs, next_frame, next_push, now_secs, random_key, register, username,
    ws_request, Claims, Device, Resp, Server, User, Ws, SECRET, T0,
};
use fsync_common::batch;
use fsync_common::limits::{MAX_BATCH_BODY, MAX_EVENTS_PER_BATCH, MAX_IDS_PER_REQUEST};
use fsync_common::wire::{
    CommitResponse, ListResponse, PushMessage, SyncEventResponse, SyncEventResult, TokenResponse,
};
use fsync_common::{ChunkId, DeviceId, FileId, VersionNo};
use fsync_server::{hash_refresh_token, MetaRepo, TokenOwner};
use futures_util::SinkExt;
use jsonwebtoken::Algorithm::{HS256, HS512};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ================================================================= tokens

/// Bad tokens, by name: none, and tokens that are expired, signed with another key,
/// unsigned (`alg: none`), signed with another algorithm, of a device that never
/// existed, and of a revoked device.
type BadTokens = Vec<(&'static str, Option<String>)>;

/// The access tokens every authenticated route must refuse, and a control: a token
/// with the same claims as the forged ones, signed the way the server signs (HS256,
/// its secret), which must be accepted, so that each refusal is about what that token
/// gets wrong.
fn bad_tokens(user: &User, dev: &Device, revoked: &Device) -> (String, BadTokens) {
    let now = now_secs();
    let claims = |iat: u64, exp: u64| Claims {
        sub: user.id.to_hex(),
        device: dev.id.to_hex(),
        iat,
        exp,
    };
    let live = claims(now, now + 600);
    let control = hs(HS256, &live, SECRET);
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(serde_json::to_string(&live).unwrap().as_bytes())
    );
    let ghost = Claims {
        device: DeviceId::from_bytes([3; 8]).to_hex(),
        ..claims(now, now + 600)
    };
    let bad = vec![
        ("no token", None),
        (
            "expired token",
            Some(hs(HS256, &claims(now - 7200, now - 3600), SECRET)),
        ),
        (
            "token signed with another key",
            Some(hs(
                HS256,
                &live,
                "another secret, just as long as the real one",
            )),
        ),
        ("alg none token", Some(unsigned)),
        ("HS512 token", Some(hs(HS512, &live, SECRET))),
        (
            "token of an unknown device",
            Some(hs(HS256, &ghost, SECRET)),
        ),
        ("token of a revoked device", Some(revoked.token.clone())),
    ];
    (control, bad)
}

// ================================================================= 1. every route's auth

/// How a route is spoken to.
#[derive(Clone)]
enum Body {
    None,
    Json(Value),
    Bytes(Vec<u8>),
    /// A WebSocket handshake (bearer header, or a first `auth` message).
    WebSocket,
}

/// One authenticated route: as the router declares it, and a request to it that the
/// right token gets a 2xx (or 101) for.
struct Route {
    method: Method,
    template: &'static str,
    path: String,
    body: Body,
}

fn route(method: Method, template: &'static str, path: String, body: Body) -> Route {
    Route {
        method,
        template,
        path,
        body,
    }
}

/// Routes that need no access token (everything else must be in the auth table).
const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/auth/params"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("GET", "/health"),
    ("GET", "/metrics"),
];

/// `(METHOD, path)` of every `.route(...)` in the router's source.
fn router_routes() -> BTreeSet<(String, String)> {
    const SOURCE: &str = include_str!("../src/http/mod.rs");
    let mut out = BTreeSet::new();
    for decl in SOURCE.split(".route(").skip(1) {
        // The declaration runs to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = decl
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("a closed .route(");
        let decl = &decl[..end];
        let path = decl.split('"').nth(1).expect("a route path literal");
        for method in ["get", "post", "put", "delete", "patch"] {
            let call = format!("{method}(");
            let called = decl.match_indices(&call).any(|(i, _)| {
                !decl[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if called {
                out.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

/// Everything the auth table needs: a user with a file, a chunk and three devices.
struct Fixture {
    user: User,
    dev: Device,
    file: FileId,
    chunk: ChunkId,
    blob: Vec<u8>,
}

async fn fixture(srv: &Server, prefix: &str) -> Fixture {
    let user = register(srv, &username(prefix)).await;
    let dev = user.login(srv, "main").await;
    let committed = user
        .commit(srv, &dev, "fixture.txt", b"fixture", &empty(), T0)
        .await;
    let (chunk, blob) = user.blob(b"fixture");
    Fixture {
        user,
        dev,
        file: committed.head.file_id,
        chunk,
        blob,
    }
}

/// Every authenticated route, with a request the right token succeeds with.
async fn auth_table(srv: &Server, f: &Fixture) -> Vec<Route> {
    let (user, dev) = (&f.user, &f.dev);
    let ns = user.namespace;
    let spare = user.login(srv, "to be revoked by the control").await;
    for p in ["ren.txt", "ev.txt"] {
        user.commit(srv, dev, p, p.as_bytes(), &empty(), T0).await;
    }
    let del_base = user
        .commit(srv, dev, "del.txt", b"del", &empty(), T0)
        .await
        .head
        .vv;
    let upload = user
        .commit_req(srv, dev, "uploaded.txt", b"uploaded", &empty(), T0)
        .await;
    let ids = json!({"namespace": ns, "ids": [f.chunk]});
    let file = f.file;
    vec![
        route(
            Method::GET,
            "/api/v1/devices",
            "/api/v1/devices".into(),
            Body::None,
        ),
        route(
            Method::DELETE,
            "/api/v1/devices/{id}",
            format!("/api/v1/devices/{}", spare.id),
            Body::None,
        ),
        route(
            Method::POST,
            "/api/v1/auth/logout",
            "/api/v1/auth/logout".into(),
            Body::Json(json!({"refresh_token": dev.refresh})),
        ),
        route(
            Method::POST,
            "/api/v1/chunks/missing",
            "/api/v1/chunks/missing".into(),
            Body::Json(ids.clone()),
        ),
        route(
            Method::PUT,
            "/api/v1/chunks/{id}",
            format!("/api/v1/chunks/{}?namespace={ns}", f.chunk),
            Body::Bytes(f.blob.clone()),
        ),
        route(
            Method::POST,
            "/api/v1/chunks/batch",
            format!("/api/v1/chunks/batch?namespace={ns}"),
            Body::Bytes(batch::encode([(&f.chunk, f.blob.as_slice())])),
        ),
        route(
            Method::GET,
            "/api/v1/chunks/{id}",
            format!("/api/v1/chunks/{}?namespace={ns}", f.chunk),
            Body::None,
        ),
        route(
            Method::POST,
            "/api/v1/chunks/fetch",
            "/api/v1/chunks/fetch".into(),
            Body::Json(ids),
        ),
        route(
            Method::POST,
            "/api/v1/files/upload",
            "/api/v1/files/upload".into(),
            Body::Json(serde_json::to_value(&upload).unwrap()),
        ),
        route(
            Method::GET,
            "/api/v1/files/list",
            "/api/v1/files/list".into(),
            Body::None,
        ),
        route(
            Method::GET,
            "/api/v1/files/download/{file_id}",
            format!("/api/v1/files/download/{file}"),
            Body::None,
        ),
        route(
            Method::GET,
            "/api/v1/files/{file_id}/versions",
            format!("/api/v1/files/{file}/versions"),
            Body::None,
        ),
        route(
            Method::POST,
            "/api/v1/files/{file_id}/restore",
            format!("/api/v1/files/{file}/restore"),
            Body::Json(json!({"version": 1})),
        ),
        route(
            Method::POST,
            "/api/v1/files/delete",
            "/api/v1/files/delete".into(),
            Body::Json(
                json!({"namespace": ns, "path": "del.txt", "base": del_base, "idempotency_key": random_key()}),
            ),
        ),
        route(
            Method::POST,
            "/api/v1/files/rename",
            "/api/v1/files/rename".into(),
            Body::Json(
                json!({"namespace": ns, "from": "ren.txt", "to": "ren2.txt", "idempotency_key": random_key()}),
            ),
        ),
        route(
            Method::POST,
            "/api/v1/files/manifests",
            "/api/v1/files/manifests".into(),
            Body::Json(json!({"namespace": ns, "files": [[file, VersionNo(1)]]})),
        ),
        route(
            Method::POST,
            "/api/v1/sync/event",
            "/api/v1/sync/event".into(),
            Body::Json(json!({"events": [
                {"type": "rename", "namespace": ns, "from": "ev.txt", "to": "ev2.txt", "idempotency_key": random_key()},
            ]})),
        ),
        route(
            Method::GET,
            "/api/v1/sync/changes",
            "/api/v1/sync/changes?since=0".into(),
            Body::None,
        ),
        route(
            Method::GET,
            "/api/v1/ws",
            "/api/v1/ws".into(),
            Body::WebSocket,
        ),
    ]
}

/// Opens `/api/v1/ws`, with a bearer header when given; a refused handshake is
/// returned as the HTTP response it was.
async fn ws_connect(srv: &Server, token: Option<&str>) -> Result<Ws, Resp> {
    match tokio_tungstenite::connect_async(ws_request(srv, token)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Resp {
            status: reqwest::StatusCode::from_u16(resp.status().as_u16()).unwrap(),
            headers: reqwest::header::HeaderMap::new(),
            body: resp.body().clone().unwrap_or_default(),
        }),
        Err(e) => panic!("WebSocket handshake failed below HTTP: {e}"),
    }
}

/// Asserts the server closes the socket with 1008 and `reason`, with nothing before.
async fn expect_close(ws: &mut Ws, reason: &str, what: &str) {
    match next_frame(ws).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1008, "{what}: {frame:?}");
            assert_eq!(frame.reason.as_str(), reason, "{what}");
        }
        other => panic!("{what}: expected a close frame (1008 {reason}), got {other:?}"),
    }
}

async fn send_route(srv: &Server, r: &Route, token: Option<&str>) -> Resp {
    let rb = srv.request(r.method.clone(), &r.path, token);
    let rb = match &r.body {
        Body::None => rb,
        Body::Json(v) => rb.json(v),
        Body::Bytes(b) => rb
            .header("content-type", "application/octet-stream")
            .body(b.clone()),
        Body::WebSocket => unreachable!("WebSocket routes are handshaken"),
    };
    srv.send(rb).await
}

/// The router declares exactly the routes the tables classify, so that a new route
/// cannot be added without saying whether it needs a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_table_lists_every_route() {
    let srv = Server::start(&common::Backend::Sqlite).await;
    let f = fixture(&srv, "routes").await;
    let table: BTreeSet<(String, String)> = auth_table(&srv, &f)
        .await
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_owned()))
        .collect();
    let public: BTreeSet<(String, String)> = PUBLIC_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert!(table.is_disjoint(&public));
    let classified: BTreeSet<_> = table.union(&public).cloned().collect();
    let declared = router_routes();
    assert!(
        declared.contains(&("GET".into(), "/api/v1/ws".into()))
            && declared.contains(&("PUT".into(), "/api/v1/chunks/{id}".into()))
            && declared.contains(&("DELETE".into(), "/api/v1/devices/{id}".into())),
        "the router source no longer parses: {declared:?}"
    );
    let unlisted: Vec<_> = declared.difference(&classified).collect();
    let stale: Vec<_> = classified.difference(&declared).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "routes of server/src/http/mod.rs missing from this file's auth table or \
         PUBLIC_ROUTES: {unlisted:?}; listed here but not in the router: {stale:?}"
    );
}

/// Every authenticated route refuses every bad token with 401 and the JSON error body;
/// the right token then gets its 2xx, so the refusals are about the token.
async fn every_route_auth_scenario(srv: &Server) {
    let f = fixture(srv, "authtable").await;
    let revoked = f.user.login(srv, "revoked").await;
    srv.send(srv.request(
        Method::DELETE,
        &format!("/api/v1/devices/{}", revoked.id),
        Some(&f.dev.token),
    ))
    .await
    .expect(204);
    let (control, bad) = bad_tokens(&f.user, &f.dev, &revoked);
    let table = auth_table(srv, &f).await;
    for r in &table {
        let what = |token: &str| format!("{} {} with {token}", r.method, r.template);
        if let Body::WebSocket = r.body {
            for (name, token) in &bad {
                // In the header: refused before the upgrade.
                if let Some(t) = token {
                    match ws_connect(srv, Some(t)).await {
                        Ok(_) => panic!("{}: upgraded", what(name)),
                        Err(resp) => {
                            let resp = resp.expect_error(401, "unauthorized");
                            assert!(!resp.body.is_empty(), "{}", what(name));
                        }
                    }
                }
                // As the first message (or no auth message at all): closed, no push.
                let mut ws = ws_connect(srv, None)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:?}", what(name)));
                let first = match token {
                    Some(t) => json!({"type": "auth", "token": t}).to_string(),
                    None => json!({"type": "hello"}).to_string(),
                };
                ws.send(Message::text(first)).await.unwrap();
                expect_close(&mut ws, "authentication required", &what(name)).await;
            }
            // Control: the right token gets a socket and the journal position.
            let mut ws = ws_connect(srv, Some(&control))
                .await
                .unwrap_or_else(|e| panic!("{}: {e:?}", what("the right token")));
            assert!(matches!(
                next_push(&mut ws).await,
                PushMessage::Changed { namespace, .. } if namespace == f.user.namespace
            ));
            continue;
        }
        for (name, token) in &bad {
            let resp = send_route(srv, r, token.as_deref()).await;
            assert_eq!(resp.status.as_u16(), 401, "{}: {resp:?}", what(name));
            assert_eq!(resp.code(), "unauthorized", "{}: {resp:?}", what(name));
            assert!(
                resp.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{}: {resp:?}",
                what(name)
            );
        }
        let resp = send_route(srv, r, Some(&control)).await;
        assert!(
            resp.status.is_success(),
            "{}: {resp:?}",
            what("the right token")
        );
    }
    // None of the refused requests changed anything: the control requests did, once.
    let files: ListResponse = srv
        .get(
            "/api/v1/files/list?include_deleted=true",
            Some(&f.dev.token),
        )
        .await
        .expect(200)
        .json();
    let paths: BTreeSet<&str> = files.files.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "del.txt",
            "ev2.txt",
            "fixture.txt",
            "ren2.txt",
            "uploaded.txt"
        ])
    );
}

on_every_backend!(every_authenticated_route_refuses_bad_tokens => every_route_auth_scenario);

// ================================================================= 2. malformed JSON

/// One JSON route: a valid body, and a field to give the wrong type.
struct JsonRoute {
    path: String,
    token: Option<String>,
    valid: Value,
    field: &'static str,
    wrong: Value,
}

/// Every JSON route refuses a body that is not JSON, a body without the JSON content
/// type, and a body with a field of the wrong type, all with 400 and the JSON error
/// body; the last one names the field. The valid body is then accepted.
async fn malformed_json_scenario(srv: &Server) {
    let f = fixture(srv, "malformed").await;
    let (user, dev) = (&f.user, &f.dev);
    let ns = user.namespace;
    let tok = Some(dev.token.clone());
    let second = user.login(srv, "second").await;
    let del = user.commit(srv, dev, "del.txt", b"d", &empty(), T0).await;
    user.commit(srv, dev, "ren.txt", b"r", &empty(), T0).await;
    let upload = user
        .commit_req(srv, dev, "up.txt", b"up", &empty(), T0)
        .await;
    let event = user
        .commit_req(srv, dev, "ev.txt", b"ev", &empty(), T0)
        .await;
    let reg = json!({
        "username": username("newbie"),
        "email": "newbie@example.org",
        "password": "ab".repeat(32),
        "kdf": fsync_store::test_kdf_params(),
        "wrapped_account_key": "cd".repeat(60),
        "wrapped_namespace_key": "ef".repeat(60),
    });
    let table = vec![
        JsonRoute {
            path: "/api/v1/auth/register".into(),
            token: None,
            valid: reg,
            field: "username",
            wrong: json!(42),
        },
        JsonRoute {
            path: "/api/v1/auth/login".into(),
            token: None,
            valid: user.login_body("json"),
            field: "password",
            wrong: json!(["not", "a", "string"]),
        },
        JsonRoute {
            path: "/api/v1/auth/refresh".into(),
            token: None,
            valid: json!({"refresh_token": second.refresh}),
            field: "refresh_token",
            wrong: json!(7),
        },
        JsonRoute {
            path: "/api/v1/auth/logout".into(),
            token: tok.clone(),
            valid: json!({"refresh_token": dev.refresh}),
            field: "refresh_token",
            wrong: json!({"nested": true}),
        },
        JsonRoute {
            path: "/api/v1/chunks/missing".into(),
            token: tok.clone(),
            valid: json!({"namespace": ns, "ids": [f.chunk]}),
            field: "ids",
            wrong: json!("not a list"),
        },
        JsonRoute {
            path: "/api/v1/chunks/fetch".into(),
            token: tok.clone(),
            valid: json!({"namespace": ns, "ids": [f.chunk]}),
            field: "ids",
            wrong: json!(12),
        },
        JsonRoute {
            path: "/api/v1/files/upload".into(),
            token: tok.clone(),
            valid: serde_json::to_value(&upload).unwrap(),
            field: "size",
            wrong: json!("big"),
        },
        JsonRoute {
            path: "/api/v1/files/delete".into(),
            token: tok.clone(),
            valid: json!({"namespace": ns, "path": "del.txt", "base": del.head.vv, "idempotency_key": random_key()}),
            field: "base",
            wrong: json!(3),
        },
        JsonRoute {
            path: "/api/v1/files/rename".into(),
            token: tok.clone(),
            valid: json!({"namespace": ns, "from": "ren.txt", "to": "ren2.txt", "idempotency_key": random_key()}),
            field: "idempotency_key",
            wrong: json!(false),
        },
        JsonRoute {
            path: format!("/api/v1/files/{}/restore", f.file),
            token: tok.clone(),
            valid: json!({"version": 1}),
            field: "version",
            wrong: json!("one"),
        },
        JsonRoute {
            path: "/api/v1/files/manifests".into(),
            token: tok.clone(),
            valid: json!({"namespace": ns, "files": [[f.file, 1]]}),
            field: "files",
            wrong: json!({"a": 1}),
        },
        JsonRoute {
            path: "/api/v1/sync/event".into(),
            token: tok.clone(),
            valid: json!({"events": [
                serde_json::to_value(fsync_common::wire::SyncEvent::Create(event)).unwrap()
            ]}),
            field: "events",
            wrong: json!({"type": "create"}),
        },
    ];
    for r in &table {
        let token = r.token.as_deref();
        let json_error = |resp: Resp, what: &str| {
            let resp = resp.expect_error(400, "bad_request");
            assert!(
                resp.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{} {what}: {resp:?}",
                r.path
            );
            resp
        };
        for garbage in ["{\"oops", "not json at all", "", "[1, 2,]"] {
            json_error(
                srv.send(
                    srv.request(Method::POST, &r.path, token)
                        .header("content-type", "application/json")
                        .body(garbage),
                )
                .await,
                garbage,
            );
        }
        json_error(
            srv.send(
                srv.request(Method::POST, &r.path, token)
                    .header("content-type", "text/plain")
                    .body(r.valid.to_string()),
            )
            .await,
            "as text/plain",
        );
        let mut wrong = r.valid.clone();
        wrong[r.field] = r.wrong.clone();
        let resp = json_error(srv.post(&r.path, token, &wrong).await, "wrong type");
        let message = resp.value()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(r.field),
            "{}: the message should name `{}`: {message}",
            r.path,
            r.field
        );
        let resp = srv.post(&r.path, token, &r.valid).await;
        assert!(resp.status.is_success(), "{} valid body: {resp:?}", r.path);
    }
}

on_every_backend!(every_json_route_refuses_malformed_json => malformed_json_scenario);

// ================================================================= 3. size limits

/// `n` distinct chunk ids.
fn ids(n: usize) -> Vec<ChunkId> {
    (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_be_bytes());
            b[31] = 0xee;
            ChunkId::from_bytes(b)
        })
        .collect()
}

/// Each request-size limit answers 413 `payload_too_large` one past it, and lets the
/// request through at it (refused, if at all, for something else).
async fn size_limits_scenario(srv: &Server) {
    let f = fixture(srv, "limits").await;
    let (user, dev) = (&f.user, &f.dev);
    let ns = user.namespace;
    let tok = Some(dev.token.as_str());
    let too_large = |resp: Resp, what: &str| {
        let resp = resp.expect_error(413, "payload_too_large");
        eprintln!("{what}: {}", resp.value()["error"]["message"]);
    };
    let batch_path = format!("/api/v1/chunks/batch?namespace={ns}");

    // Batch upload, bytes: one byte past the body limit (a valid header, then zeros).
    let mut body = batch::encode(std::iter::empty());
    body.resize(MAX_BATCH_BODY + 1, 0);
    too_large(
        srv.post_bytes(&batch_path, tok, body).await,
        "batch body bytes",
    );
    // Batch upload, blobs: one blob past the count limit (empty blobs: a tiny body).
    let blob_ids = ids(MAX_IDS_PER_REQUEST + 1);
    let body = batch::encode(blob_ids.iter().map(|id| (id, &[][..])));
    too_large(
        srv.post_bytes(&batch_path, tok, body).await,
        "batch blob count",
    );
    // At the count limit the blobs are looked at, and these are no blobs.
    let body = batch::encode(blob_ids[1..].iter().map(|id| (id, &[][..])));
    srv.post_bytes(&batch_path, tok, body)
        .await
        .expect_error(422, "invalid_blob");

    // chunks/missing and chunks/fetch: one id past the limit, then at it.
    let many = ids(MAX_IDS_PER_REQUEST + 1);
    for path in ["/api/v1/chunks/missing", "/api/v1/chunks/fetch"] {
        let resp = srv
            .post(path, tok, &json!({"namespace": ns, "ids": many}))
            .await;
        let message = resp.value()["error"]["message"].as_str().map(str::to_owned);
        too_large(resp, path);
        assert!(
            message.unwrap().contains(&MAX_IDS_PER_REQUEST.to_string()),
            "{path}: the message names the limit"
        );
        srv.post(path, tok, &json!({"namespace": ns, "ids": many[1..]}))
            .await
            .expect(200);
    }

    // sync/event: one event past the limit, then at it (deletes of absent paths: each
    // fails on its own, the batch is answered).
    let event = |i: usize| json!({"type": "delete", "namespace": ns, "path": format!("absent/{i}"), "base": {}, "idempotency_key": random_key()});
    let events: Vec<Value> = (0..=MAX_EVENTS_PER_BATCH).map(event).collect();
    too_large(
        srv.post("/api/v1/sync/event", tok, &json!({"events": events}))
            .await,
        "sync/event",
    );
    let answered: SyncEventResponse = srv
        .post("/api/v1/sync/event", tok, &json!({"events": events[1..]}))
        .await
        .expect(200)
        .json();
    assert_eq!(answered.results.len(), MAX_EVENTS_PER_BATCH);
    assert!(answered
        .results
        .iter()
        .all(|r| matches!(r, SyncEventResult::Failed(e) if e.error.code == fsync_common::ErrorCode::NotFound)));

    // files/manifests: one file past the limit, then at it.
    let files = vec![json!([f.file, 1]); MAX_EVENTS_PER_BATCH + 1];
    too_large(
        srv.post(
            "/api/v1/files/manifests",
            tok,
            &json!({"namespace": ns, "files": files}),
        )
        .await,
        "files/manifests",
    );
    let got: Vec<Value> = srv
        .post(
            "/api/v1/files/manifests",
            tok,
            &json!({"namespace": ns, "files": files[1..]}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(got.len(), MAX_EVENTS_PER_BATCH);
}

on_every_backend!(every_size_limit_answers_413 => size_limits_scenario);

// ================================================================= 4. bad paths

/// Bad paths and a word of the reason the server must give for each.
const BAD_PATHS: &[(&str, &str)] = &[
    ("../../etc/passwd", "'..'"),
    ("/etc/passwd", "absolute"),
    ("a\\b.txt", "backslash"),
    ("a\0b.txt", "NUL"),
];

/// Every path field refuses bad paths with 400 `invalid_path` naming the reason: delete's
/// `path`, rename's `from` and `to`, and every event kind of `sync/event` (where the
/// whole batch is refused when it does not parse: none of its events is applied). The
/// restore route takes a file id and a version, no path.
async fn bad_paths_scenario(srv: &Server) {
    let f = fixture(srv, "paths").await;
    let (user, dev) = (&f.user, &f.dev);
    let ns = user.namespace;
    let tok = Some(dev.token.as_str());
    let good_create = user
        .commit_req(srv, dev, "batch/ok.txt", b"ok", &empty(), T0)
        .await;
    let commit = serde_json::to_value(&good_create).unwrap();
    let before: ListResponse = srv
        .get("/api/v1/files/list?include_deleted=true", tok)
        .await
        .expect(200)
        .json();

    for &(bad, reason) in BAD_PATHS {
        // (endpoint, body) for every field a path goes in.
        let delete =
            json!({"namespace": ns, "path": bad, "base": {}, "idempotency_key": random_key()});
        let rename_from =
            json!({"namespace": ns, "from": bad, "to": "x.txt", "idempotency_key": random_key()});
        let rename_to = json!({"namespace": ns, "from": "fixture.txt", "to": bad, "idempotency_key": random_key()});
        let mut create = commit.clone();
        create["path"] = json!(bad);
        create["idempotency_key"] = json!(random_key());
        let tagged = |kind: &str, v: &Value| {
            let mut v = v.clone();
            v["type"] = json!(kind);
            v
        };
        let in_batch = |ev: Value| json!({"events": [tagged("create", &commit), ev]});
        let cases = [
            ("files/upload path", "/api/v1/files/upload", create.clone()),
            ("files/delete path", "/api/v1/files/delete", delete.clone()),
            (
                "files/rename from",
                "/api/v1/files/rename",
                rename_from.clone(),
            ),
            ("files/rename to", "/api/v1/files/rename", rename_to.clone()),
            (
                "sync/event create",
                "/api/v1/sync/event",
                in_batch(tagged("create", &create)),
            ),
            (
                "sync/event modify",
                "/api/v1/sync/event",
                in_batch(tagged("modify", &create)),
            ),
            (
                "sync/event delete",
                "/api/v1/sync/event",
                in_batch(tagged("delete", &delete)),
            ),
            (
                "sync/event rename from",
                "/api/v1/sync/event",
                in_batch(tagged("rename", &rename_from)),
            ),
            (
                "sync/event rename to",
                "/api/v1/sync/event",
                in_batch(tagged("rename", &rename_to)),
            ),
        ];
        for (what, path, body) in cases {
            let resp = srv.post(path, tok, &body).await;
            let resp = resp.expect_error(400, "invalid_path");
            let message = resp.value()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                message.contains(reason),
                "{what} with {bad:?}: the message should say {reason}: {message}"
            );
        }
    }
    // Nothing was applied, not even the good event batched with a bad one.
    let after: ListResponse = srv
        .get("/api/v1/files/list?include_deleted=true", tok)
        .await
        .expect(200)
        .json();
    assert_eq!(after.files, before.files);
}

on_every_backend!(every_path_field_refuses_bad_paths => bad_paths_scenario);

// ================================================================= 5. rate limits

/// An HTTP client whose requests come from `ip` (any 127.x.y.z reaches the server).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn send_from(client: &reqwest::Client, srv: &Server, path: &str, body: &Value) -> Resp {
    srv.send(client.post(srv.url(path)).json(body)).await
}

#[track_caller]
fn expect_rate_limited(resp: Resp) {
    let resp = resp.expect_error(429, "rate_limited");
    let retry: u64 = resp
        .headers
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

/// Register and refresh are limited per client IP: past the limit 429 with Retry-After
/// (before any work: a refused refresh does not consume the token), while another IP
/// is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_and_refresh_are_rate_limited_per_ip() {
    const MAX: u32 = 3;
    for backend in backends() {
        eprintln!("--- on {backend}");
        let srv = Server::start_with(&backend, |s| s.limits.auth_per_ip.max = MAX).await;
        // Setup from 127.0.0.1 (params, register, login: its whole budget).
        let user = register(&srv, &username("limited")).await;
        let dev = user.login(&srv, "d").await;

        // Refresh from 127.0.0.2: MAX rotations, then 429.
        let c2 = client_from([127, 0, 0, 2]);
        let mut refresh = dev.refresh.clone();
        for _ in 0..MAX {
            let t: TokenResponse = send_from(
                &c2,
                &srv,
                "/api/v1/auth/refresh",
                &json!({"refresh_token": refresh}),
            )
            .await
            .expect(200)
            .json();
            refresh = t.refresh_token;
        }
        expect_rate_limited(
            send_from(
                &c2,
                &srv,
                "/api/v1/auth/refresh",
                &json!({"refresh_token": refresh}),
            )
            .await,
        );
        // The limit is per IP, and the refused refresh left the token valid.
        let c3 = client_from([127, 0, 0, 3]);
        send_from(
            &c3,
            &srv,
            "/api/v1/auth/refresh",
            &json!({"refresh_token": refresh}),
        )
        .await
        .expect(200);

        // Register from 127.0.0.4: MAX attempts (refused for their username), then 429
        // even for a valid request; the same request from 127.0.0.5 succeeds.
        let c4 = client_from([127, 0, 0, 4]);
        let body = |name: &str| {
            json!({
                "username": name,
                "email": "someone@example.org",
                "password": "ab".repeat(32),
                "kdf": fsync_store::test_kdf_params(),
                "wrapped_account_key": "cd".repeat(60),
                "wrapped_namespace_key": "ef".repeat(60),
            })
        };
        for _ in 0..MAX {
            send_from(&c4, &srv, "/api/v1/auth/register", &body("no"))
                .await
                .expect_error(400, "bad_request");
        }
        let valid = body(&username("late"));
        expect_rate_limited(send_from(&c4, &srv, "/api/v1/auth/register", &valid).await);
        let c5 = client_from([127, 0, 0, 5]);
        send_from(&c5, &srv, "/api/v1/auth/register", &valid)
            .await
            .expect(201);
    }
}

// ================================================================= 6. other refusals

/// The repository of the server `start_with` builds, kept for the test to reach into.
async fn start_keeping_repo(backend: &common::Backend) -> (Server, Arc<dyn MetaRepo>) {
    let slot: Arc<Mutex<Option<Arc<dyn MetaRepo>>>> = Arc::default();
    let keep = Arc::clone(&slot);
    let srv = Server::start_with(backend, move |s| {
        *keep.lock().unwrap() = Some(Arc::clone(&s.repo));
    })
    .await;
    let repo = slot.lock().unwrap().take().expect("the state was built");
    (srv, repo)
}

/// `auth/params` without a username; register with each field invalid; refresh with
/// an expired, an already rotated and a made-up token; revoking a malformed device id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_inputs_are_validated() {
    for backend in backends() {
        eprintln!("--- on {backend}");
        let (server, repo) = start_keeping_repo(&backend).await;
        let srv = &server;

        srv.get("/api/v1/auth/params", None)
            .await
            .expect_error(400, "bad_request");
        srv.get("/api/v1/auth/params?user=bob", None)
            .await
            .expect_error(400, "bad_request");

        // Register: each field invalid in turn; the valid body then registers the name,
        // so none of the refusals created it.
        let name = username("valid");
        let valid = json!({
            "username": name,
            "email": "valid@example.org",
            "password": "ab".repeat(32),
            "kdf": fsync_store::test_kdf_params(),
            "wrapped_account_key": "cd".repeat(60),
            "wrapped_namespace_key": "ef".repeat(60),
        });
        let kdf = |k: &str, v: Value| {
            let mut p = serde_json::to_value(fsync_store::test_kdf_params()).unwrap();
            p[k] = v;
            p
        };
        let cases: Vec<(&str, Value, &str)> = vec![
            ("username", json!("ab"), "username"),
            ("username", json!("x".repeat(65)), "username"),
            ("username", json!("has space"), "username"),
            ("username", json!("semi;colon"), "username"),
            ("username", json!("ünïcode"), "username"),
            ("email", json!("no-at-sign.example.org"), "email"),
            (
                "email",
                json!(format!("{}@example.org", "x".repeat(250))),
                "email",
            ),
            ("password", json!("zz".repeat(32)), "password"),
            ("password", json!("ab".repeat(31)), "password"),
            ("password", json!("ab".repeat(33)), "password"),
            ("password", json!("abc"), "password"),
            (
                "wrapped_account_key",
                json!("cd".repeat(39)),
                "wrapped_account_key",
            ),
            (
                "wrapped_account_key",
                json!("not hex!"),
                "wrapped_account_key",
            ),
            (
                "wrapped_namespace_key",
                json!("ef".repeat(257)),
                "wrapped_namespace_key",
            ),
            ("kdf", kdf("kdf", json!("scrypt")), "kdf"),
            ("kdf", kdf("m_kib", json!(1024)), "m_kib"),
            ("kdf", kdf("t", json!(0)), "kdf parameter t"),
            ("kdf", kdf("p", json!(17)), "kdf parameter p"),
            ("kdf", kdf("salt", json!("ab".repeat(15))), "salt"),
        ];
        for (field, value, named) in cases {
            let mut body = valid.clone();
            body[field] = value.clone();
            let resp = srv
                .post("/api/v1/auth/register", None, &body)
                .await
                .expect_error(400, "bad_request");
            let message = resp.value()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                message.contains(named),
                "{field} = {value}: the message should name {named}: {message}"
            );
        }
        srv.post("/api/v1/auth/register", None, &valid)
            .await
            .expect(201);

        // Refresh tokens: made up, already rotated, expired.
        let user = register(srv, &username("refresh")).await;
        let dev = user.login(srv, "d").await;
        let refresh = |t: &str| {
            let body = json!({"refresh_token": t});
            async move { srv.post("/api/v1/auth/refresh", None, &body).await }
        };
        refresh(&"ab".repeat(32))
            .await
            .expect_error(401, "unauthorized");
        let rotated: TokenResponse = refresh(&dev.refresh).await.expect(200).json();
        refresh(&dev.refresh)
            .await
            .expect_error(401, "unauthorized");
        let expired = "0e".repeat(32);
        let now = now_secs() as i64;
        repo.insert_refresh(
            &hash_refresh_token(&expired),
            TokenOwner {
                user: user.id,
                device: dev.id,
            },
            now - 1,
            now - 3600,
        )
        .await
        .unwrap();
        refresh(&expired).await.expect_error(401, "unauthorized");
        // The successor of the rotated one still works: the refusals were about each token.
        refresh(&rotated.refresh_token).await.expect(200);

        // Revoking a device id that is not one.
        for id in ["not-hex", "abc", &"ab".repeat(7), &"ab".repeat(9)] {
            srv.send(srv.request(
                Method::DELETE,
                &format!("/api/v1/devices/{id}"),
                Some(&dev.token),
            ))
            .await
            .expect_error(400, "bad_request");
        }
        srv.get("/api/v1/devices", Some(&dev.token))
            .await
            .expect(200);
    }
}

// ================================================================= 7. logout

/// Regression: logout deleted any refresh token it was given, so any user who learnt
/// another's refresh token could end that session. Now only the caller's own token (of
/// its user and device) is deleted; another's is answered like an unknown token.
async fn logout_scenario(srv: &Server) {
    let alice = register(srv, &username("alice")).await;
    let bob = register(srv, &username("bob")).await;
    let laptop = alice.login(srv, "laptop").await;
    let phone = alice.login(srv, "phone").await;
    let b = bob.login(srv, "b").await;
    let logout = |dev: &Device, refresh: &str| {
        let body = json!({"refresh_token": refresh});
        let token = dev.token.clone();
        async move { srv.post("/api/v1/auth/logout", Some(&token), &body).await }
    };
    let unknown = logout(&b, &"cd".repeat(32)).await.expect(204);
    // Bob with Alice's token, and Alice's phone with her laptop's: as if unknown.
    for (who, dev) in [("another user", &b), ("another device", &phone)] {
        let resp = logout(dev, &laptop.refresh).await.expect(204);
        assert_eq!(resp.body, unknown.body, "{who}");
    }
    // The laptop's token still works (and rotates).
    let t: TokenResponse = srv
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": laptop.refresh}),
        )
        .await
        .expect(200)
        .json();
    // Its owner can log it out.
    logout(&laptop, &t.refresh_token).await.expect(204);
    srv.post(
        "/api/v1/auth/refresh",
        None,
        &json!({"refresh_token": t.refresh_token}),
    )
    .await
    .expect_error(401, "unauthorized");
}

on_every_backend!(logout_revokes_only_the_callers_own_token => logout_scenario);

// ================================================================= 8, 9. WebSocket

/// Regression: a WebSocket of a revoked device stayed open, receiving pushes, until its
/// access token expired (up to 15 minutes). Revoking a device now closes its sockets
/// (bearer header and first-message auth alike) at once; other devices' stay open.
async fn ws_revoke_scenario(srv: &Server) {
    let user = register(srv, &username("wsrevoke")).await;
    let a = user.login(srv, "A").await;
    let b = user.login(srv, "B").await;
    let mut by_header = ws_connect(srv, Some(&a.token)).await.expect("upgrade");
    let mut by_message = ws_connect(srv, None).await.expect("upgrade");
    by_message
        .send(Message::text(
            json!({"type": "auth", "token": a.token}).to_string(),
        ))
        .await
        .unwrap();
    let mut other = ws_connect(srv, Some(&b.token)).await.expect("upgrade");
    // Each socket is serving once it sent the journal position.
    for ws in [&mut by_header, &mut by_message, &mut other] {
        assert!(matches!(
            next_push(ws).await,
            PushMessage::Changed { namespace, .. } if namespace == user.namespace
        ));
    }

    srv.send(srv.request(
        Method::DELETE,
        &format!("/api/v1/devices/{}", a.id),
        Some(&b.token),
    ))
    .await
    .expect(204);
    expect_close(&mut by_header, "device revoked", "bearer-header socket").await;
    expect_close(&mut by_message, "device revoked", "first-message socket").await;

    // B's socket is still served.
    let r: CommitResponse = user
        .commit(srv, &b, "after.txt", b"after", &empty(), T0)
        .await;
    assert_eq!(
        next_push(&mut other).await,
        PushMessage::Changed {
            namespace: user.namespace,
            seq: r.head.seq
        }
    );
    // And A cannot open a new one.
    ws_connect(srv, Some(&a.token))
        .await
        .map(|_| ())
        .expect_err("a revoked device gets no socket")
        .expect_error(401, "unauthorized");
}

on_every_backend!(revoking_a_device_closes_its_websockets => ws_revoke_scenario);

/// `GET /api/v1/ws` that is not a WebSocket handshake is refused with 400 and the JSON
/// error body naming what is missing (it was axum's plain-text rejection); a bad token
/// is refused first, with 401.
async fn ws_not_upgrade_scenario(srv: &Server) {
    let user = register(srv, &username("plainws")).await;
    let dev = user.login(srv, "d").await;
    for token in [None, Some(dev.token.as_str())] {
        let resp = srv
            .get("/api/v1/ws", token)
            .await
            .expect_error(400, "bad_request");
        assert!(resp.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let message = resp.value()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("WebSocket"), "{message}");
        // Half a handshake: the message names the header that is missing.
        let resp = srv
            .send(
                srv.request(Method::GET, "/api/v1/ws", token)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-version", "13"),
            )
            .await
            .expect_error(400, "bad_request");
        let message = resp.value()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.to_lowercase().contains("sec-websocket-key"),
            "{message}"
        );
    }
    srv.get("/api/v1/ws", Some("not.a.token"))
        .await
        .expect_error(401, "unauthorized");
}

on_every_backend!(websocket_route_refuses_plain_requests_with_json => ws_not_upgrade_scenario);
