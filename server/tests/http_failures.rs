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
    account, b64url, backends, chunk_path, empty, hs, next_frame, next_push, now_secs, random_key,
    username, ws_auth, ws_connect, ws_open, Claims, Device, Resp, Server, User, Ws, SECRET, T0,
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

const EVENT: &str = "/api/v1/sync/event";
const WS: &str = "/api/v1/ws";
const REGISTER: &str = "/api/v1/auth/register";
const UPLOAD: &str = "/api/v1/files/upload";
const DELETE: &str = "/api/v1/files/delete";
const RENAME: &str = "/api/v1/files/rename";
const JSON: &str = "application/json";
const MANIFESTS: &str = "/api/v1/files/manifests";
/// The listing of every file, tombstones included.
const LIST_ALL: &str = "/api/v1/files/list?include_deleted=true";

/// A valid registration body for `username`.
fn registration(username: &str, email: &str) -> Value {
    json!({"username": username, "email": email, "password": "ab".repeat(32),
        "kdf": fsync_store::test_kdf_params(), "wrapped_account_key": "cd".repeat(60),
        "wrapped_namespace_key": "ef".repeat(60)})
}

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
    let live = Claims::of(user, dev, now, now + 600);
    let control = hs(HS256, &live, SECRET);
    let none = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!(
        "{none}.{}.",
        b64url(serde_json::to_string(&live).unwrap().as_bytes())
    );
    let mut ghost = Claims::of(user, dev, now, now + 600);
    ghost.device = DeviceId::from_bytes([3; 8]).to_hex();
    let expired = hs(
        HS256,
        &Claims::of(user, dev, now - 7200, now - 3600),
        SECRET,
    );
    let other_key = hs(HS256, &live, "another secret, just as long as the real one");
    let bad = vec![
        ("no token", None),
        ("expired token", Some(expired)),
        ("token signed with another key", Some(other_key)),
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

const NONE: Body = Body::None;

/// The route `spec` (`"METHOD template"`), requested at `path`.
fn route(spec: &'static str, path: &str, body: Body) -> Route {
    let (method, template) = spec.split_once(' ').expect("METHOD template");
    let (method, path) = (method.parse().unwrap(), path.to_owned());
    Route {
        method,
        template,
        path,
        body,
    }
}

/// The route `spec`, requested at its template (a path without parameters).
fn fixed(spec: &'static str, body: Body) -> Route {
    route(spec, spec.split_once(' ').expect("METHOD template").1, body)
}

/// `(METHOD, path)` of every route the router serves.
fn router_routes() -> BTreeSet<(String, String)> {
    fsync_server::ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect()
}

/// True for a route that needs no access token (the router's table says so).
fn is_public(method: &str, path: &str) -> bool {
    fsync_server::ROUTES
        .iter()
        .any(|r| (r.method, r.path) == (method, path) && r.access == fsync_server::Access::Public)
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
    let (user, dev) = account(srv, prefix, "main").await;
    let committed = user.create(srv, &dev, "fixture.txt", b"fixture").await;
    let (file, (chunk, blob)) = (committed.head.file_id, user.blob(b"fixture"));
    Fixture {
        user,
        dev,
        file,
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
        user.create(srv, dev, p, p.as_bytes()).await;
    }
    let del_base = user.create(srv, dev, "del.txt", b"del").await.head.vv;
    let upload = user
        .commit_req(srv, dev, "uploaded.txt", b"uploaded", &empty(), T0)
        .await;
    let upload = serde_json::to_value(&upload).unwrap();
    let ids = json!({"namespace": ns, "ids": [f.chunk]});
    let spare = format!("/api/v1/devices/{}", spare.id);
    let chunk = chunk_path(&f.chunk, ns);
    let batch_path = format!("/api/v1/chunks/batch?namespace={ns}");
    let batch = batch::encode([(&f.chunk, f.blob.as_slice())]);
    let file = f.file;
    let download = format!("/api/v1/files/download/{file}");
    let versions = format!("/api/v1/files/{file}/versions");
    let renames = format!("/api/v1/files/{file}/renames");
    let restore = format!("/api/v1/files/{file}/restore");
    let logout = json!({"refresh_token": dev.refresh});
    let v1 = Body::Json(json!({"version": 1}));
    let mut event = user.rename_body("ev.txt", "ev2.txt");
    event["type"] = json!("rename");
    let events = Body::Json(json!({"events": [event]}));
    let (blob, changes) = (Body::Bytes(f.blob.clone()), "/api/v1/sync/changes?since=0");
    let manifests = json!({"namespace": ns, "files": [[file, VersionNo(1)]]});
    let delete = user.delete_body("del.txt", &del_base);
    let rename = user.rename_body("ren.txt", "ren2.txt");
    let page = fsync_common::pages::Page::new(&[fsync_common::wire::ChunkRef(f.chunk, 7)]);
    let page_ids = json!({"namespace": ns, "ids": [page.id()]});
    let page_batch = batch::encode([(&ChunkId::from_bytes(*page.id().as_bytes()), page.body())]);
    let page_batch_path = format!("/api/v1/pages/batch?namespace={ns}");
    vec![
        fixed("GET /api/v1/devices", Body::None),
        fixed("GET /api/v1/usage", Body::None),
        route("DELETE /api/v1/devices/{id}", &spare, Body::None),
        fixed("POST /api/v1/auth/logout", Body::Json(logout)),
        fixed("POST /api/v1/chunks/missing", Body::Json(ids.clone())),
        route("PUT /api/v1/chunks/{id}", &chunk, blob),
        route("POST /api/v1/chunks/batch", &batch_path, Body::Bytes(batch)),
        route("GET /api/v1/chunks/{id}", &chunk, Body::None),
        fixed("POST /api/v1/chunks/fetch", Body::Json(ids)),
        fixed("POST /api/v1/pages/missing", Body::Json(page_ids.clone())),
        route(
            "POST /api/v1/pages/batch",
            &page_batch_path,
            Body::Bytes(page_batch),
        ),
        fixed("POST /api/v1/pages/fetch", Body::Json(page_ids)),
        fixed("POST /api/v1/files/upload", Body::Json(upload)),
        fixed("GET /api/v1/files/list", Body::None),
        route("GET /api/v1/files/download/{file_id}", &download, NONE),
        route("GET /api/v1/files/{file_id}/versions", &versions, NONE),
        route("GET /api/v1/files/{file_id}/renames", &renames, NONE),
        route("POST /api/v1/files/{file_id}/restore", &restore, v1),
        fixed("POST /api/v1/files/delete", Body::Json(delete)),
        fixed("POST /api/v1/files/rename", Body::Json(rename)),
        fixed("POST /api/v1/files/manifests", Body::Json(manifests)),
        fixed("POST /api/v1/sync/event", events),
        route("GET /api/v1/sync/changes", changes, NONE),
        fixed("GET /api/v1/ws", Body::WebSocket),
    ]
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
    let table = auth_table(&srv, &f).await;
    let table: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_owned()))
        .collect();
    let public: BTreeSet<(String, String)> = router_routes()
        .into_iter()
        .filter(|(m, p)| is_public(m, p))
        .collect();
    assert!(table.is_disjoint(&public));
    let classified: BTreeSet<_> = table.union(&public).cloned().collect();
    let declared = router_routes();
    let unlisted: Vec<_> = declared.difference(&classified).collect();
    let stale: Vec<_> = classified.difference(&declared).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "authenticated routes of fsync_server::ROUTES missing from this file's auth \
         table: {unlisted:?}; listed here but not in the router: {stale:?}"
    );
}

/// Every authenticated route refuses every bad token with 401 and the JSON error body;
/// the right token then gets its 2xx, so the refusals are about the token.
async fn every_route_auth_scenario(srv: &Server) {
    let f = fixture(srv, "authtable").await;
    let revoked = f.user.login(srv, "revoked").await;
    srv.revoke(Some(&f.dev.token), revoked.id).await.expect(204);
    let (control, bad) = bad_tokens(&f.user, &f.dev, &revoked);
    let table = auth_table(srv, &f).await;
    for r in &table {
        let what = |token: &str| format!("{} {} with {token}", r.method, r.template);
        if let Body::WebSocket = r.body {
            for (name, token) in &bad {
                // In the header: refused before the upgrade.
                if let Some(t) = token {
                    let Err(resp) = ws_connect(srv, Some(t)).await else {
                        panic!("{}: upgraded", what(name));
                    };
                    assert!(!resp.unauthorized().body.is_empty(), "{}", what(name));
                }
                // As the first message (or no auth message at all): closed, no push.
                let mut ws = ws_open(srv, None).await;
                if let Some(t) = token {
                    ws_auth(&mut ws, t).await;
                } else {
                    let hello = json!({"type": "hello"}).to_string();
                    ws.send(Message::text(hello)).await.unwrap();
                }
                expect_close(&mut ws, "authentication required", &what(name)).await;
            }
            // Control: the right token gets a socket and the journal position.
            let mut ws = ws_open(srv, Some(&control)).await;
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
            assert!(resp.is_json(), "{}: {resp:?}", what(name));
        }
        let resp = send_route(srv, r, Some(&control)).await;
        let right = what("the right token");
        assert!(resp.status.is_success(), "{right}: {resp:?}");
    }
    // None of the refused requests changed anything: the control requests did, once.
    let files: ListResponse = srv.get_json(LIST_ALL, Some(&f.dev.token)).await;
    let paths: BTreeSet<&str> = files.files.iter().map(|m| m.path.as_str()).collect();
    let expected = [
        "del.txt",
        "ev2.txt",
        "fixture.txt",
        "ren2.txt",
        "uploaded.txt",
    ];
    assert_eq!(paths, BTreeSet::from(expected));
}

on_every_backend!(every_authenticated_route_refuses_bad_tokens => every_route_auth_scenario);

// ================================================================= 2. malformed JSON

/// Every JSON route refuses a body that is not JSON, a body without the JSON content
/// type, and a body with a field of the wrong type, all with 400 and the JSON error
/// body; the last one names the field. The valid body is then accepted.
async fn malformed_json_scenario(srv: &Server) {
    let f = fixture(srv, "malformed").await;
    let (user, dev) = (&f.user, &f.dev);
    let ns = user.namespace;
    let second = user.login(srv, "second").await;
    let del = user.create(srv, dev, "del.txt", b"d").await;
    user.create(srv, dev, "ren.txt", b"r").await;
    let upload = user
        .commit_req(srv, dev, "up.txt", b"up", &empty(), T0)
        .await;
    let event = user
        .commit_req(srv, dev, "ev.txt", b"ev", &empty(), T0)
        .await;
    let event = serde_json::to_value(fsync_common::wire::SyncEvent::Create(event)).unwrap();
    let reg = registration(&username("newbie"), "newbie@example.org");
    let (login, refresh) = (user.login_body("json"), second.refresh);
    let delete = user.delete_body("del.txt", &del.head.vv);
    let rename = user.rename_body("ren.txt", "ren2.txt");
    let restore = format!("files/{}/restore", f.file);
    // [route below /api/v1/, a valid body, {a field: a value of the wrong type}]; the
    // public routes are sent without a token.
    let table = [
        json!(["auth/register", reg, {"username": 42}]),
        json!(["auth/login", login, {"password": ["not", "a", "string"]}]),
        json!(["auth/refresh", {"refresh_token": refresh}, {"refresh_token": 7}]),
        json!(["auth/logout", {"refresh_token": dev.refresh}, {"refresh_token": {"nested": true}}]),
        json!(["chunks/missing", {"namespace": ns, "ids": [f.chunk]}, {"ids": "not a list"}]),
        json!(["chunks/fetch", {"namespace": ns, "ids": [f.chunk]}, {"ids": 12}]),
        json!(["files/upload", upload, {"size": "big"}]),
        json!(["files/delete", delete, {"base": 3}]),
        json!(["files/rename", rename, {"idempotency_key": false}]),
        json!([restore, {"version": 1}, {"version": "one"}]),
        json!(["files/manifests", {"namespace": ns, "files": [[f.file, 1]]}, {"files": {"a": 1}}]),
        json!(["sync/event", {"events": [event]}, {"events": {"type": "create"}}]),
    ];
    for row in &table {
        let path = format!("/api/v1/{}", row[0].as_str().unwrap());
        let public = is_public("POST", path.as_str());
        let token = (!public).then_some(dev.token.as_str());
        let (valid, (field, wrong_value)) =
            (&row[1], row[2].as_object().unwrap().iter().next().unwrap());
        let json_error = |resp: Resp, what: &str| {
            let resp = resp.bad_request();
            assert!(resp.is_json(), "{path} {what}: {resp:?}");
            resp
        };
        for garbage in ["{\"oops", "not json at all", "", "[1, 2,]"] {
            json_error(srv.post_raw(&path, token, JSON, garbage).await, garbage);
        }
        let text = valid.to_string();
        let resp = srv.post_raw(&path, token, "text/plain", &text).await;
        json_error(resp, "as text/plain");
        let mut wrong = valid.clone();
        wrong[field] = wrong_value.clone();
        let message = json_error(srv.post(&path, token, &wrong).await, "wrong type").message();
        let named = format!("{path}: the message should name `{field}`: {message}");
        assert!(message.contains(field.as_str()), "{named}");
        let resp = srv.post(&path, token, valid).await;
        assert!(resp.status.is_success(), "{path} valid body: {resp:?}");
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
    let post_batch = |body: Vec<u8>| srv.post_bytes(&batch_path, tok, body);

    // Batch upload, bytes: one byte past the body limit (a valid header, then zeros).
    let mut body = batch::encode(std::iter::empty());
    body.resize(MAX_BATCH_BODY + 1, 0);
    too_large(post_batch(body).await, "batch body bytes");
    // Batch upload, blobs: one blob past the count limit (empty blobs: a tiny body).
    let blob_ids = ids(MAX_IDS_PER_REQUEST + 1);
    let body = batch::encode(blob_ids.iter().map(|id| (id, &[][..])));
    too_large(post_batch(body).await, "batch blob count");
    // At the count limit the blobs are looked at, and these are no blobs.
    let body = batch::encode(blob_ids[1..].iter().map(|id| (id, &[][..])));
    post_batch(body).await.expect_error(422, "invalid_blob");

    // chunks/missing and chunks/fetch: one id past the limit, then at it.
    let many = ids(MAX_IDS_PER_REQUEST + 1);
    for path in ["/api/v1/chunks/missing", "/api/v1/chunks/fetch"] {
        let past = json!({"namespace": ns, "ids": many});
        let resp = srv.post(path, tok, &past).await;
        let message = resp.value()["error"]["message"].as_str().map(str::to_owned);
        too_large(resp, path);
        let names = message.unwrap().contains(&MAX_IDS_PER_REQUEST.to_string());
        assert!(names, "{path}: the message names the limit");
        let at = json!({"namespace": ns, "ids": many[1..]});
        srv.post(path, tok, &at).await.expect(200);
    }

    // sync/event: one event past the limit, then at it (deletes of absent paths: each
    // fails on its own, the batch is answered).
    let event = |i: usize| json!({"type": "delete", "namespace": ns, "path": format!("absent/{i}"), "base": {}, "idempotency_key": random_key()});
    let events: Vec<Value> = (0..=MAX_EVENTS_PER_BATCH).map(event).collect();
    let past = json!({"events": events});
    too_large(srv.post(EVENT, tok, &past).await, "sync/event");
    let at = json!({"events": events[1..]});
    let answered: SyncEventResponse = srv.post_json(EVENT, tok, &at).await;
    assert_eq!(answered.results.len(), MAX_EVENTS_PER_BATCH);
    assert!(answered
        .results
        .iter()
        .all(|r| matches!(r, SyncEventResult::Failed(e) if e.error.code == fsync_common::ErrorCode::NotFound)));

    // files/manifests: one file past the limit, then at it.
    let files = vec![json!([f.file, 1]); MAX_EVENTS_PER_BATCH + 1];
    let past = json!({"namespace": ns, "files": files});
    too_large(srv.post(MANIFESTS, tok, &past).await, "files/manifests");
    let at = json!({"namespace": ns, "files": files[1..]});
    let got: Vec<Value> = srv.post_json(MANIFESTS, tok, &at).await;
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
    let tok = Some(dev.token.as_str());
    let good_create = user
        .commit_req(srv, dev, "batch/ok.txt", b"ok", &empty(), T0)
        .await;
    let commit = serde_json::to_value(&good_create).unwrap();
    let before: ListResponse = srv.get_json(LIST_ALL, tok).await;

    for &(bad, reason) in BAD_PATHS {
        // (endpoint, body) for every field a path goes in.
        let delete = user.delete_body(bad, &empty());
        let rename_from = user.rename_body(bad, "x.txt");
        let rename_to = user.rename_body("fixture.txt", bad);
        let mut create = commit.clone();
        create["path"] = json!(bad);
        create["idempotency_key"] = json!(random_key());
        let tagged = |kind: &str, v: &Value| {
            let mut v = v.clone();
            v["type"] = json!(kind);
            v
        };
        let mut cases = vec![
            ("files/upload path".to_owned(), UPLOAD, create.clone()),
            ("files/delete path".to_owned(), DELETE, delete.clone()),
            ("files/rename from".to_owned(), RENAME, rename_from.clone()),
            ("files/rename to".to_owned(), RENAME, rename_to.clone()),
        ];
        let events = [
            ("create", &create, "path"),
            ("modify", &create, "path"),
            ("delete", &delete, "path"),
            ("rename", &rename_from, "from"),
            ("rename", &rename_to, "to"),
        ];
        for (kind, body, field) in events {
            let batch = json!({"events": [tagged("create", &commit), tagged(kind, body)]});
            cases.push((format!("sync/event {kind} {field}"), EVENT, batch));
        }
        for (what, path, body) in cases {
            let resp = srv.post(path, tok, &body).await;
            let message = resp.expect_error(400, "invalid_path").message();
            let should = format!("{what} with {bad:?}: the message should say {reason}");
            assert!(message.contains(reason), "{should}: {message}");
        }
    }
    // Nothing was applied, not even the good event batched with a bad one.
    let after: ListResponse = srv.get_json(LIST_ALL, tok).await;
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

/// `POST path` from 127.0.0.`ip`.
async fn send_from(ip: u8, srv: &Server, path: &str, body: &Value) -> Resp {
    let client = client_from([127, 0, 0, ip]);
    srv.send(client.post(srv.url(path)).json(body)).await
}

#[track_caller]
fn expect_rate_limited(resp: Resp) {
    let retry = resp.rate_limited().headers.get("retry-after").cloned();
    let retry = retry.expect("a Retry-After header");
    let retry = retry.to_str().unwrap().parse::<u64>();
    let retry = retry.expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

const PER_IP: u32 = 3;

/// Register and refresh are limited per client IP: past the limit 429 with Retry-After
/// (before any work: a refused refresh does not consume the token), while another IP
/// is still served.
async fn per_ip_scenario(srv: &Server) {
    // Setup from 127.0.0.1 (params, register, login: its whole budget).
    let (_, dev) = account(srv, "limited", "d").await;

    // Refresh from 127.0.0.2: PER_IP rotations, then 429.
    let refresh_from = |ip: u8, token: String| async move {
        let body = json!({"refresh_token": token});
        send_from(ip, srv, "/api/v1/auth/refresh", &body).await
    };
    let mut refresh = dev.refresh.clone();
    for _ in 0..PER_IP {
        let t: TokenResponse = refresh_from(2, refresh).await.expect(200).json();
        refresh = t.refresh_token;
    }
    expect_rate_limited(refresh_from(2, refresh.clone()).await);
    // The limit is per IP, and the refused refresh left the token valid.
    refresh_from(3, refresh).await.expect(200);

    // Register from 127.0.0.4: PER_IP attempts (refused for their username), then 429
    // even for a valid request; the same request from 127.0.0.5 succeeds.
    let register_from =
        |ip: u8, body: Value| async move { send_from(ip, srv, REGISTER, &body).await };
    for _ in 0..PER_IP {
        let invalid = registration("no", "someone@example.org");
        register_from(4, invalid).await.bad_request();
    }
    let valid = registration(&username("late"), "someone@example.org");
    expect_rate_limited(register_from(4, valid.clone()).await);
    // A forwarded-for header does not make it another client: the limit is by the
    // connection's address (no proxy is trusted).
    let client = client_from([127, 0, 0, 4]);
    let spoofed = client
        .post(srv.url(REGISTER))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .json(&valid);
    expect_rate_limited(srv.send(spoofed).await);
    register_from(5, valid).await.expect(201);
}

on_every_backend!(register_and_refresh_are_rate_limited_per_ip,
    |s| s.limits.auth_per_ip.max = PER_IP => per_ip_scenario);

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

        for path in ["/api/v1/auth/params", "/api/v1/auth/params?user=bob"] {
            srv.get(path, None).await.bad_request();
        }

        // Register: each field invalid in turn; the valid body then registers the name,
        // so none of the refusals created it.
        let valid = registration(&username("valid"), "valid@example.org");
        let kdf = |k: &str, v: Value| {
            let mut p = serde_json::to_value(fsync_store::test_kdf_params()).unwrap();
            p[k] = v;
            p
        };
        // (field, an invalid value): the message must name the field.
        let mut cases: Vec<(&str, Value, &str)> = [
            ("username", json!("ab")),
            ("username", json!("x".repeat(65))),
            ("username", json!("has space")),
            ("username", json!("semi;colon")),
            ("username", json!("ünïcode")),
            ("email", json!("no-at-sign.example.org")),
            ("email", json!(format!("{}@example.org", "x".repeat(250)))),
            ("email", json!("a@b\nX-Injected: 1")),
            ("password", json!("zz".repeat(32))),
            ("password", json!("ab".repeat(31))),
            ("password", json!("ab".repeat(33))),
            ("password", json!("abc")),
            ("wrapped_account_key", json!("cd".repeat(39))),
            ("wrapped_account_key", json!("not hex!")),
            ("wrapped_namespace_key", json!("ef".repeat(257))),
        ]
        .into_iter()
        .map(|(field, value)| (field, value, field))
        .collect();
        // The KDF parameters: the message names the parameter.
        cases.extend([
            ("kdf", kdf("kdf", json!("scrypt")), "kdf"),
            ("kdf", kdf("m_kib", json!(1024)), "m_kib"),
            ("kdf", kdf("t", json!(0)), "kdf parameter t"),
            ("kdf", kdf("p", json!(17)), "kdf parameter p"),
            ("kdf", kdf("salt", json!("ab".repeat(15))), "salt"),
        ]);
        for (field, value, named) in cases {
            let mut body = valid.clone();
            body[field] = value.clone();
            let resp = srv.post(REGISTER, None, &body).await;
            let message = resp.bad_request().message();
            let should = format!("{field} = {value}: the message should name {named}");
            assert!(message.contains(named), "{should}: {message}");
        }
        srv.post(REGISTER, None, &valid).await.expect(201);
        // Email is optional, as in the seed's schema: absent, null or empty registers.
        for (n, email) in [(0, None), (1, Some(Value::Null)), (2, Some(json!("")))] {
            let mut body = registration(&username(&format!("noemail{n}")), "");
            match email {
                None => drop(body.as_object_mut().unwrap().remove("email")),
                Some(v) => body["email"] = v,
            }
            srv.post(REGISTER, None, &body).await.expect(201);
        }

        // Refresh tokens: made up, expired (a rotated one presented again: the reuse
        // tests of http_api.rs).
        let (user, dev) = account(srv, "refresh", "d").await;
        srv.refresh(&"ab".repeat(32)).await.unauthorized();
        let rotated: TokenResponse = srv.refresh(&dev.refresh).await.expect(200).json();
        let expired = "0e".repeat(32);
        let now = now_secs() as i64;
        let owner = TokenOwner {
            user: user.id,
            device: dev.id,
        };
        let hash = hash_refresh_token(&expired);
        let inserted = repo.insert_refresh(&hash, owner, now - 1, now - 3600);
        inserted.await.unwrap();
        srv.refresh(&expired).await.unauthorized();
        // The successor of the rotated one still works: the refusals were about each token.
        srv.refresh(&rotated.refresh_token).await.expect(200);

        // Revoking a device id that is not one.
        for id in ["not-hex", "abc", &"ab".repeat(7), &"ab".repeat(9)] {
            srv.revoke(Some(&dev.token), id).await.bad_request();
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
    let (alice, laptop) = account(srv, "alice", "laptop").await;
    let (_, b) = account(srv, "bob", "b").await;
    let phone = alice.login(srv, "phone").await;
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
    let t: TokenResponse = srv.refresh(&laptop.refresh).await.expect(200).json();
    // Its owner can log it out.
    logout(&laptop, &t.refresh_token).await.expect(204);
    srv.refresh(&t.refresh_token).await.unauthorized();
}

on_every_backend!(logout_revokes_only_the_callers_own_token => logout_scenario);

// ================================================================= 8, 9. WebSocket

/// Regression: a WebSocket of a revoked device stayed open, receiving pushes, until its
/// access token expired (up to 15 minutes). Revoking a device now closes its sockets
/// (bearer header and first-message auth alike) at once; other devices' stay open.
async fn ws_revoke_scenario(srv: &Server) {
    let (user, a) = account(srv, "wsrevoke", "A").await;
    let b = user.login(srv, "B").await;
    let mut by_header = ws_open(srv, Some(&a.token)).await;
    let mut by_message = ws_open(srv, None).await;
    ws_auth(&mut by_message, &a.token).await;
    let mut other = ws_open(srv, Some(&b.token)).await;
    // Each socket is serving once it sent the journal position.
    for ws in [&mut by_header, &mut by_message, &mut other] {
        assert!(matches!(
            next_push(ws).await,
            PushMessage::Changed { namespace, .. } if namespace == user.namespace
        ));
    }

    srv.revoke(Some(&b.token), a.id).await.expect(204);
    expect_close(&mut by_header, "device revoked", "bearer-header socket").await;
    expect_close(&mut by_message, "device revoked", "first-message socket").await;

    // B's socket is still served.
    let r: CommitResponse = user.create(srv, &b, "after.txt", b"after").await;
    let changed = PushMessage::Changed {
        namespace: user.namespace,
        seq: r.head.seq,
    };
    assert_eq!(next_push(&mut other).await, changed);
    // And A cannot open a new one.
    let refused = ws_connect(srv, Some(&a.token)).await.map(|_| ());
    let resp = refused.expect_err("a revoked device gets no socket");
    resp.unauthorized();
}

on_every_backend!(revoking_a_device_closes_its_websockets => ws_revoke_scenario);

/// `GET /api/v1/ws` that is not a WebSocket handshake is refused with 400 and the JSON
/// error body naming what is missing (it was axum's plain-text rejection); a bad token
/// is refused first, with 401.
async fn ws_not_upgrade_scenario(srv: &Server) {
    let (_, dev) = account(srv, "plainws", "d").await;
    for token in [None, Some(dev.token.as_str())] {
        let resp = srv.get(WS, token).await.bad_request();
        assert!(resp.is_json());
        let message = resp.message();
        assert!(message.contains("WebSocket"), "{message}");
        // Half a handshake: the message names the header that is missing.
        let half = srv
            .request(Method::GET, WS, token)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13");
        let message = srv.send(half).await.bad_request().message();
        let names = message.to_lowercase().contains("sec-websocket-key");
        assert!(names, "{message}");
    }
    srv.get(WS, Some("not.a.token")).await.unauthorized();
}

on_every_backend!(websocket_route_refuses_plain_requests_with_json => ws_not_upgrade_scenario);

// ------------------------------------------------------------------ connections

/// Sends a whole `GET /health` on `conn` and reads the answer to its end: the status
/// line, or `None` when the server closed the connection without answering.
async fn health_on(mut conn: tokio::net::TcpStream) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = b"GET /health HTTP/1.1\r\nHost: fsync\r\nConnection: close\r\n\r\n";
    if conn.write_all(request).await.is_err() {
        return None;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(common::EVENT_TIMEOUT, conn.read_to_end(&mut answer));
    match read.await.expect("the server answers or closes in time") {
        Ok(_) if !answer.is_empty() => {
            let text = String::from_utf8_lossy(&answer);
            text.lines().next().map(str::to_owned)
        }
        _ => None,
    }
}

/// A connection to `srv` from the loopback address `from`.
async fn connect_from(srv: &Server, from: Ipv4Addr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(IpAddr::V4(from), 0))
        .unwrap();
    socket.connect(srv.addr).await.unwrap()
}

/// A handful of half-open connections (half a request head each, then nothing) from
/// one address: the next connection from it is closed unanswered, other addresses are
/// served, and the stalled ones are closed at the header deadline, which frees their
/// places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_capped_per_address_and_timed_out() {
    let srv = Server::start_with(&common::Backend::Sqlite, |s| {
        s.limits.connections_per_ip = 4;
        s.limits.header_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let (slow, other) = (Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2));
    let mut stalled = Vec::new();
    for _ in 0..4 {
        use tokio::io::AsyncWriteExt as _;
        let mut conn = connect_from(&srv, slow).await;
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: fsync\r\n")
            .await
            .unwrap();
        stalled.push(conn);
    }
    // Accepted in order: the fifth from the same address is over the cap.
    assert_eq!(health_on(connect_from(&srv, slow).await).await, None);
    let served = health_on(connect_from(&srv, other).await).await;
    assert_eq!(
        served.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "another address"
    );
    // The stalled ones are closed by the server at the deadline.
    for mut conn in stalled {
        use tokio::io::AsyncReadExt as _;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(common::EVENT_TIMEOUT, conn.read_to_end(&mut rest));
        let _ = closed
            .await
            .expect("a stalled connection is closed at the deadline");
    }
    fsync_testkit::wait_until_async(
        common::EVENT_TIMEOUT,
        "the address to be served again",
        || async {
            health_on(connect_from(&srv, slow).await).await.as_deref() == Some("HTTP/1.1 200 OK")
        },
    )
    .await;
}

/// A client that sends a request head and a tenth of its body, then stalls: the
/// request fails at the body deadline and the connection is closed, instead of being
/// held for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_cut_at_the_deadline() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let srv = Server::start_with(&common::Backend::Sqlite, |s| {
        s.limits.body_idle_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let mut conn = connect_from(&srv, Ipv4Addr::LOCALHOST).await;
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: fsync\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"username\":";
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(common::EVENT_TIMEOUT, conn.read_to_end(&mut answer));
    let _ = read
        .await
        .expect("the server ends the stalled request in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "a refusal or a closed connection, not {text}"
    );
}
