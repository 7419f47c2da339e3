//! End-to-end tests of the HTTP and WebSocket API: a real server on 127.0.0.1:0 per
//! test, spoken to with reqwest and tokio-tungstenite exactly as a client would. Every
//! scenario runs on SQLite, and also on PostgreSQL when `FSYNC_TEST_DATABASE_URL` is set.

#![allow(
    missing_docs,
    clippy::too_many_lines,
    clippy::similar_names,
    clippy::many_single_char_names
)]

// The shared harness; this file uses most of it.
#[allow(dead_code)]
#[macro_use]
mod common;

use std::collections::{BTreeSet, HashMap, HashSet};

use common::{
    account, admin_sql, b64url, backends, chunk_path, empty, hs, next_frame, next_push, now_secs,
    random_key, register, username, ws_auth, ws_connect, ws_open, Backend, Claims, Device, Resp,
    Server, User, Ws, EVENT_TIMEOUT, SECRET, T0,
};
use fsync_common::batch;
use fsync_common::limits::{MAX_BLOB_SIZE, MAX_CHUNK_PLAINTEXT};
use fsync_common::wire::{
    ChangesResponse, ChunkRef, CommitOutcome, CommitRequest, CommitResponse, DeleteOutcome,
    DeviceInfo, FileMeta, KdfParams, ListResponse, LoginResponse, Manifest, MissingResponse,
    OpResponse, PushMessage, RenameInfo, StoredResponse, SyncEvent, SyncEventResponse,
    SyncEventResult, TokenResponse, UsageResponse, VersionInfo,
};
use fsync_common::{ChunkId, ContentHash, DeviceId, FileId, NamespaceId, Seq, UserId, VersionNo};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SEC: i64 = 1_000_000_000;

const DEVICES: &str = "/api/v1/devices";
const DELETE: &str = "/api/v1/files/delete";
const UPLOAD: &str = "/api/v1/files/upload";
const LOGIN: &str = "/api/v1/auth/login";
const MANIFESTS: &str = "/api/v1/files/manifests";
const EVENT: &str = "/api/v1/sync/event";
const CHANGES_0: &str = "/api/v1/sync/changes?since=0";
const JSON: &str = "application/json";
/// The listing query that includes tombstones.
const ALL: &[(&str, &str)] = &[("include_deleted", "true")];

async fn params(srv: &Server, name: &str) -> KdfParams {
    let path = format!("/api/v1/auth/params?username={name}");
    srv.get_json(&path, None).await
}

async fn list_all(srv: &Server, dev: &Device, query: &[(&str, &str)]) -> Vec<FileMeta> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q: Vec<(&str, &str)> = query.to_vec();
        if let Some(a) = &after {
            q.push(("after", a));
        }
        let page: ListResponse = srv
            .send(
                srv.request(Method::GET, "/api/v1/files/list", Some(&dev.token))
                    .query(&q),
            )
            .await
            .expect(200)
            .json();
        out.extend(page.files);
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

async fn download(srv: &Server, dev: &Device, file: FileId) -> Manifest {
    let path = format!("/api/v1/files/download/{file}");
    srv.get_json(&path, Some(&dev.token)).await
}

async fn versions(srv: &Server, dev: &Device, file: FileId) -> Vec<VersionInfo> {
    let path = format!("/api/v1/files/{file}/versions");
    srv.get_json(&path, Some(&dev.token)).await
}

/// Fetches and decrypts a file's content through its manifest, as a client would.
async fn read_file(srv: &Server, user: &User, dev: &Device, file: FileId) -> Vec<u8> {
    let m = download(srv, dev, file).await;
    let mut out = Vec::new();
    for ChunkRef(id, len) in m.chunks {
        let path = chunk_path(&id, user.namespace);
        let blob = srv.get(&path, Some(&dev.token)).await.expect(200).body;
        let plain = user.codec.decode(&id, &blob).expect("blob decrypts");
        assert_eq!(plain.len(), len as usize);
        out.extend(plain);
    }
    out
}

/// True when `name` is `{stem}.sync-conflict-YYYYMMDD-HHMMSS-<7 hex>{ext}`.
fn is_conflict_name(name: &str, stem: &str, ext: &str) -> bool {
    let Some(mid) = name
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix(".sync-conflict-"))
        .and_then(|r| r.strip_suffix(ext))
    else {
        return false;
    };
    let parts: Vec<&str> = mid.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 8
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1].len() == 6
        && parts[1].bytes().all(|b| b.is_ascii_digit())
        && parts[2].len() == 7
        && parts[2]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ================================================================= 1. auth

async fn auth_scenario(srv: &Server) {
    let name = username("alice");

    // Unknown users get stable fake parameters, different per name, shaped like real ones.
    let (fake1, fake2) = (params(srv, &name).await, params(srv, &name).await);
    assert_eq!(fake1, fake2, "fake params must be stable across calls");
    let other = params(srv, &username("bob")).await;
    assert_ne!(
        fake1.salt, other.salt,
        "two unknown names must not share a salt"
    );
    fsync_store::validate_kdf_params(&fake1).expect("fake params look real");

    let alice = register(srv, &name).await;
    let known = params(srv, &name).await;
    assert_eq!(
        known, alice.kdf,
        "params of a known user are the registered ones"
    );

    // Regression: usernames are case-sensitive, but the fake parameters once folded
    // case, so "x" and "X" got the same fake salt only while "x" did not exist: asking
    // for both spellings told whether an account existed. Whatever the account state,
    // two spellings must now answer alike: different parameters.
    for (n, who) in [
        (username("dave"), "unknown user"),
        (name.clone(), "known user"),
    ] {
        let (lower, upper) = (params(srv, &n).await, params(srv, &n.to_uppercase()).await);
        assert_ne!(lower, upper, "{who}: other spelling, other parameters");
    }

    // The same username again.
    let dup = json!({"username": name, "email": "other@example.org", "password": "11".repeat(32),
        "kdf": alice.kdf, "wrapped_account_key": alice.wrapped_account_key,
        "wrapped_namespace_key": alice.wrapped_namespace_key});
    let dup = srv.post("/api/v1/auth/register", None, &dup).await;
    let dup = dup.expect_error(409, "conflict");
    assert!(dup.value()["error"]["message"].is_string());

    // Login.
    let laptop = alice.login(srv, "laptop").await;
    let l = &laptop.login;
    assert_eq!(l.token_type, "bearer");
    assert!(l.expires_in > 0);
    assert!(!l.access_token.is_empty() && !l.refresh_token.is_empty());
    assert_eq!(l.user_id, alice.id);
    assert_eq!(l.wrapped_account_key, alice.wrapped_account_key);
    assert_eq!(l.namespaces.len(), 1);
    assert_eq!(l.namespaces[0].id, alice.namespace);
    assert_eq!(l.namespaces[0].role, "owner");
    assert_eq!(l.namespaces[0].wrapped_key, alice.wrapped_namespace_key);

    // A new device recovers the namespace keys from password + what login returned.
    let master = fsync_testkit::keys::derive(&alice.password, &known).await;
    let wrapped = hex::decode(&l.wrapped_account_key).unwrap();
    let account_key = master.kek().unwrap(&wrapped).expect("account key unwraps");
    let wrapped = hex::decode(&l.namespaces[0].wrapped_key).unwrap();
    let keys = account_key.unwrap_namespace_key(&wrapped);
    let recovered = fsync_store::BlobCodec::new(&keys.expect("namespace key unwraps").derive());
    assert_eq!(recovered.chunk_id(b"probe"), alice.codec.chunk_id(b"probe"));

    // Wrong password and unknown user are indistinguishable.
    let login = |username: String| {
        let body = json!({"username": username, "password": "ab".repeat(32), "device_name": "x"});
        async move { srv.post("/api/v1/auth/login", None, &body).await }
    };
    let wrong = login(name.clone()).await.unauthorized();
    let unknown = login(username("nobody")).await.unauthorized();
    assert_eq!(
        wrong.body, unknown.body,
        "wrong password and unknown user must look the same"
    );

    // Refresh rotates: the new token works (reuse of the old one: see the reuse tests).
    let t1: TokenResponse = srv.refresh(&laptop.refresh).await.expect(200).json();
    assert_ne!(t1.refresh_token, laptop.refresh);
    srv.get(DEVICES, Some(&t1.access_token)).await.expect(200);
    let t2: TokenResponse = srv.refresh(&t1.refresh_token).await.expect(200).json();

    // Logout forgets the refresh token.
    let body = json!({"refresh_token": t2.refresh_token});
    let logout = srv.post("/api/v1/auth/logout", Some(&t2.access_token), &body);
    logout.await.expect(204);
    srv.refresh(&t2.refresh_token).await.unauthorized();

    // Devices: a second login is a second device; logging in with a device id keeps it.
    let phone = alice.login(srv, "phone").await;
    assert_ne!(phone.id, laptop.id);
    let mut body = alice.login_body("laptop again");
    body["device_id"] = json!(laptop.id);
    let laptop2: LoginResponse = srv.post_json("/api/v1/auth/login", None, &body).await;
    assert_eq!(
        laptop2.device_id, laptop.id,
        "login with a device id keeps the device"
    );
    let devices: Vec<DeviceInfo> = srv.get_json(DEVICES, Some(&phone.token)).await;
    let by_id: HashMap<DeviceId, &DeviceInfo> = devices.iter().map(|d| (d.id, d)).collect();
    assert_eq!(by_id.len(), 2, "{devices:?}");
    assert_eq!(
        by_id[&laptop.id].name, "laptop again",
        "a login with a device id renames it"
    );
    assert_eq!(by_id[&phone.id].name, "phone");
    assert!(devices.iter().all(|d| !d.revoked));

    // Revoking the laptop (from the phone) kills its access and refresh tokens.
    srv.revoke(Some(&phone.token), laptop.id).await.expect(204);
    for t in [&laptop.token, &t1.access_token] {
        srv.get(DEVICES, Some(t)).await.unauthorized();
    }
    srv.refresh(&laptop2.refresh_token).await.unauthorized();
    let devices: Vec<DeviceInfo> = srv.get_json(DEVICES, Some(&phone.token)).await;
    assert!(
        devices.iter().all(|d| d.id != laptop.id || d.revoked),
        "revoked device must be listed as revoked or not at all: {devices:?}"
    );
    // A revoked device id cannot be reclaimed at login; unknown devices are 404.
    let mut body = alice.login_body("laptop zombie");
    body["device_id"] = json!(laptop.id);
    let zombie: LoginResponse = srv.post_json("/api/v1/auth/login", None, &body).await;
    assert_ne!(zombie.device_id, laptop.id);
    let unknown = DeviceId::from_bytes([9; 8]);
    srv.revoke(Some(&phone.token), unknown).await.not_found();
    srv.get(DEVICES, Some(&phone.token)).await.expect(200);
}

on_every_backend!(auth_register_login_refresh_logout_devices => auth_scenario);

/// A rotated-out refresh token presented again (a stolen copy, used first by one side)
/// is refused with its own code, and every token of that login goes with it.
async fn refresh_reuse_scenario(srv: &Server) {
    let (alice, laptop) = account(srv, "reuse", "laptop").await;
    let phone = alice.login(srv, "phone").await;
    let t1: TokenResponse = srv.refresh(&laptop.refresh).await.expect(200).json();
    let r = srv.refresh(&laptop.refresh).await;
    let r = r.expect_error(401, "refresh_token_reused");
    assert!(r.message().contains("log in again"), "{}", r.message());
    srv.refresh(&t1.refresh_token)
        .await
        .expect_error(401, "unauthorized");
    assert_eq!(srv.metric("fsync_refresh_token_reuse_total").await, 1);
    // The user's other logins are untouched, and a new login works.
    srv.refresh(&phone.refresh).await.expect(200);
    let again = alice.login(srv, "laptop").await;
    srv.refresh(&again.refresh).await.expect(200);
}

on_every_backend!(a_reused_refresh_token_revokes_its_login, |s| s.limits.refresh_retry_grace = std::time::Duration::ZERO => refresh_reuse_scenario);

/// The same rotation retried at once (its answer lost in flight) is not a reuse: the
/// client gets a new pair and goes on; the pair it never received is dead.
async fn refresh_retry_scenario(srv: &Server) {
    let (_, laptop) = account(srv, "retry", "laptop").await;
    let lost: TokenResponse = srv.refresh(&laptop.refresh).await.expect(200).json();
    let retried: TokenResponse = srv.refresh(&laptop.refresh).await.expect(200).json();
    assert_ne!(lost.refresh_token, retried.refresh_token);
    let next: TokenResponse = srv.refresh(&retried.refresh_token).await.expect(200).json();
    srv.get(DEVICES, Some(&next.access_token)).await.expect(200);
    assert_eq!(srv.metric("fsync_refresh_token_reuse_total").await, 0);
    // The lost answer's token, presented now that its successor was used: a reuse.
    srv.refresh(&lost.refresh_token)
        .await
        .expect_error(401, "refresh_token_reused");
    srv.refresh(&next.refresh_token).await.unauthorized();
}

on_every_backend!(a_retried_rotation_is_not_a_reuse => refresh_retry_scenario);

// ================================================================= 2. JWT

use jsonwebtoken::Algorithm::{HS256, HS512};

async fn jwt_scenario(srv: &Server) {
    let (user, dev) = account(srv, "jwt", "d").await;
    let now = now_secs();
    let claims = Claims::of(&user, &dev, now, now + 600);
    let refused = |t: String| async move { srv.get(DEVICES, Some(&t)).await.unauthorized() };

    // Controls: the real token and one forged with the server's own secret both work,
    // so the refusals below are about what each token gets wrong.
    srv.get(DEVICES, Some(&dev.token)).await.expect(200);
    let good = hs(HS256, &claims, SECRET);
    srv.get(DEVICES, Some(&good)).await.expect(200);

    srv.get(DEVICES, None).await.unauthorized();
    let scheme = srv.request(Method::GET, DEVICES, None);
    let scheme = scheme.header("authorization", format!("Token {good}"));
    srv.send(scheme).await.unauthorized();

    let forged = hs(
        HS256,
        &claims,
        "another secret, just as long as the real one",
    );
    refused(forged.clone()).await;

    let payload = b64url(serde_json::to_string(&claims).unwrap().as_bytes());
    refused(format!(
        "{}.{payload}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#)
    ))
    .await;

    refused(hs(
        HS256,
        &Claims::of(&user, &dev, now - 7200, now - 3600),
        SECRET,
    ))
    .await;
    // The claims of the expired token, expiring later.
    let mut claims2 = Claims::of(&user, &dev, now - 7200, now + 600);

    // The algorithm is pinned: HS512 under the right secret is refused.
    refused(hs(HS512, &claims2, SECRET)).await;

    // The real header and claims with a signature made by another key.
    let (signed, _) = good.rsplit_once('.').unwrap();
    let (_, foreign_sig) = forged.rsplit_once('.').unwrap();
    refused(format!("{signed}.{foreign_sig}")).await;
    // Claims swapped under a valid signature (privilege change: another user).
    let (header, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    claims2.sub = UserId::from_bytes([7; 16]).to_hex();
    let swapped = b64url(serde_json::to_string(&claims2).unwrap().as_bytes());
    refused(format!("{header}.{swapped}.{sig}")).await;
    // Correctly signed, but for a device that does not exist.
    let mut ghost = Claims::of(&user, &dev, now - 7200, now + 600);
    ghost.device = DeviceId::from_bytes([3; 8]).to_hex();
    refused(hs(HS256, &ghost, SECRET)).await;
}

on_every_backend!(jwt_tokens_are_verified => jwt_scenario);

// ================================================================= 3. chunks

async fn chunks_scenario(srv: &Server) {
    let (user, dev) = account(srv, "chunks", "d").await;
    let tok = Some(dev.token.as_str());
    let ns = user.namespace;
    let datas: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("chunk number {i}; ").repeat(50 + i).into_bytes())
        .collect();
    let blobs: Vec<(ChunkId, Vec<u8>)> = datas.iter().map(|d| user.blob(d)).collect();
    let ids: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();
    let missing = |ids: Vec<ChunkId>| async move {
        let body = json!({"namespace": ns, "ids": ids});
        let r: MissingResponse = srv.post_json("/api/v1/chunks/missing", tok, &body).await;
        r.missing.into_iter().collect::<BTreeSet<_>>()
    };

    assert_eq!(missing(ids.clone()).await, ids.iter().copied().collect());

    // Single upload: 201, then 200 (idempotent).
    let put = |id: ChunkId, body: Vec<u8>| async move {
        srv.put_bytes(&chunk_path(&id, ns), tok, body).await
    };
    let r: StoredResponse = put(ids[0], blobs[0].1.clone()).await.expect(201).json();
    assert_eq!((r.stored, r.existing), (1, 0));
    let r: StoredResponse = put(ids[0], blobs[0].1.clone()).await.expect(200).json();
    assert_eq!((r.stored, r.existing), (0, 1));
    let rest: BTreeSet<ChunkId> = ids[1..].iter().copied().collect();
    assert_eq!(missing(ids.clone()).await, rest);

    // Not a blob.
    let nope = b"NOPE, this is not a blob at all, just some bytes".to_vec();
    put(ids[1], nope).await.expect_error(422, "invalid_blob");
    assert!(
        missing(vec![ids[1]]).await.contains(&ids[1]),
        "a refused blob is not recorded"
    );

    // Too large (with a valid header, so the size is what is refused).
    let mut huge = blobs[1].1[..fsync_store::BLOB_HEADER_LEN].to_vec();
    huge.resize(MAX_BLOB_SIZE + 1, 0);
    put(ids[1], huge)
        .await
        .expect_error(413, "payload_too_large");

    // Batch upload.
    let batch_path = format!("/api/v1/chunks/batch?namespace={ns}");
    let post_batch = |body: Vec<u8>| srv.post_bytes(&batch_path, tok, body);
    let body = batch::encode(blobs[1..].iter().map(|(id, b)| (id, b.as_slice())));
    let r: StoredResponse = post_batch(body).await.expect(200).json();
    assert_eq!((r.stored, r.existing), (3, 0));
    assert!(missing(ids.clone()).await.is_empty());
    // Malformed batches.
    post_batch(b"XXXX\x01".to_vec()).await.bad_request();
    let bogus = batch::encode([(&ids[0], &b"not a blob, not at all"[..])]);
    post_batch(bogus).await.expect_error(422, "invalid_blob");

    // Download: the exact bytes, which decrypt to the plaintext.
    for ((id, blob), data) in blobs.iter().zip(&datas) {
        let r = srv.get(&chunk_path(id, ns), tok).await.expect(200);
        assert_eq!(&r.body, blob);
        assert_eq!(&user.codec.decode(id, &r.body).unwrap(), data);
    }
    // Without ?namespace= the user's first namespace is used.
    let r = srv.get(&format!("/api/v1/chunks/{}", ids[2]), tok).await;
    assert_eq!(r.expect(200).body, blobs[2].1);

    // Batch download leaves out what is not there.
    let absent = ChunkId::from_bytes([0xaa; 32]);
    let body = json!({"namespace": ns, "ids": [ids[0], absent, ids[2]]});
    let r = srv
        .post("/api/v1/chunks/fetch", tok, &body)
        .await
        .expect(200);
    let got = batch::decode(&r.body, MAX_BLOB_SIZE).expect("a batch body");
    let got: Vec<(ChunkId, Vec<u8>)> = got.into_iter().map(|(id, b)| (id, b.to_vec())).collect();
    assert_eq!(got, vec![blobs[0].clone(), blobs[2].clone()]);

    // Bad ids.
    srv.get("/api/v1/chunks/not-hex", tok).await.bad_request();
    let short = format!("/api/v1/chunks/{}", "ab".repeat(31));
    srv.get(&short, tok).await.bad_request();
    let r = srv.put_bytes("/api/v1/chunks/zzzz", tok, blobs[0].1.clone());
    r.await.bad_request();
    let absent = format!("/api/v1/chunks/{absent}");
    srv.get(&absent, tok).await.not_found();
}

on_every_backend!(chunks_upload_download_dedup => chunks_scenario);

// ================================================================= 4. files

/// Manifest pages over HTTP: a plain chunk list (the seed's form) is stored as pages
/// and read back whole by `files/download`; `files/manifests` names the pages when
/// asked; an edit committed as pages sends only the pages that changed.
async fn pages_scenario(srv: &Server) {
    use fsync_common::pages::{self, Page};
    use fsync_common::wire::MissingPagesResponse;
    let (alice, a) = account(srv, "pages", "laptop").await;
    let tok = Some(a.token.as_str());
    let ns = alice.namespace;
    let datas: Vec<Vec<u8>> = (0..1100)
        .map(|i| format!("page test chunk {i}").into_bytes())
        .collect();
    let put = |datas: Vec<Vec<u8>>| {
        let blobs: Vec<(ChunkId, Vec<u8>)> = datas.iter().map(|d| alice.blob(d)).collect();
        let body = batch::encode(blobs.iter().map(|(id, b)| (id, b.as_slice())));
        let refs: Vec<ChunkRef> = blobs
            .iter()
            .zip(&datas)
            .map(|((id, _), d)| ChunkRef(*id, d.len() as u32))
            .collect();
        (body, refs)
    };
    let (body, refs) = put(datas.clone());
    srv.post_bytes(&format!("/api/v1/chunks/batch?namespace={ns}"), tok, body)
        .await
        .expect(200);
    let size: u64 = refs.iter().map(|c| u64::from(c.len())).sum();
    let cut = pages::paginate(&refs);
    assert!(cut.len() > 2, "{} pages", cut.len());
    let ids: Vec<_> = cut.iter().map(Page::id).collect();

    // The seed's commit: a plain chunk list.
    let plain = CommitRequest {
        namespace: ns,
        path: "big.bin".parse().unwrap(),
        base: empty(),
        chunks: refs.clone(),
        pages: Vec::new(),
        size,
        mtime: T0,
        mode: 0o644,
        content_hash: alice.content_hash(b"v1"),
        idempotency_key: random_key(),
    };
    let v1: CommitResponse = srv.post_json(UPLOAD, tok, &plain).await;
    let file = v1.head.file_id;
    assert_eq!(
        download(srv, &a, file).await.chunks,
        refs,
        "files/download is whole"
    );
    let asked = |paged: bool| json!({"namespace": ns, "files": [[file, 1]], "pages": paged});
    let m: Vec<Manifest> = srv
        .post_json("/api/v1/files/manifests", tok, &asked(true))
        .await;
    assert_eq!(m[0].pages.as_deref(), Some(ids.as_slice()));
    assert!(m[0].chunks.is_empty());
    let m: Vec<Manifest> = srv
        .post_json("/api/v1/files/manifests", tok, &asked(false))
        .await;
    assert_eq!(
        (m[0].chunks.clone(), m[0].pages.clone()),
        (refs.clone(), None)
    );
    // The server cut the same pages: fetched, each matches its id.
    let fetched = srv
        .post(
            "/api/v1/pages/fetch",
            tok,
            &json!({"namespace": ns, "ids": ids}),
        )
        .await
        .expect(200)
        .body;
    let entries = batch::decode(&fetched, pages::MAX_PAGE_BYTES).unwrap();
    let back: Vec<ChunkRef> = entries
        .iter()
        .flat_map(|(id, b)| {
            let page =
                Page::from_body(fsync_common::PageId::from_bytes(*id.as_bytes()), b).unwrap();
            page.chunks().to_vec()
        })
        .collect();
    assert_eq!(back, refs);

    // An edit: one chunk replaced. Only its page is new.
    let mut edited = datas.clone();
    edited[350] = b"the edited chunk".to_vec();
    let (body, new_refs) = put(vec![edited[350].clone()]);
    srv.post_bytes(&format!("/api/v1/chunks/batch?namespace={ns}"), tok, body)
        .await
        .expect(200);
    let mut refs2 = refs.clone();
    refs2[350] = new_refs[0];
    let cut2 = pages::paginate(&refs2);
    let ids2: Vec<_> = cut2.iter().map(Page::id).collect();
    let missing: MissingPagesResponse = srv
        .post_json(
            "/api/v1/pages/missing",
            tok,
            &json!({"namespace": ns, "ids": ids2}),
        )
        .await;
    let fresh: Vec<&Page> = cut2.iter().filter(|p| !ids.contains(&p.id())).collect();
    assert_eq!(
        missing.missing,
        fresh.iter().map(|p| p.id()).collect::<Vec<_>>()
    );
    assert!(
        (1..=3).contains(&fresh.len()),
        "{} pages changed",
        fresh.len()
    );
    let paged = CommitRequest {
        base: v1.head.vv.clone(),
        chunks: Vec::new(),
        pages: ids2.clone(),
        size: size + 16 - u64::from(refs[350].len()),
        content_hash: alice.content_hash(b"v2"),
        idempotency_key: random_key(),
        ..plain.clone()
    };
    // Before its page is stored, the commit names what it lacks.
    let r = srv
        .post(UPLOAD, tok, &paged)
        .await
        .expect_error(409, "missing_pages");
    assert_eq!(r.value()["error"]["missing_pages"], json!(missing.missing));
    let page_batch = |pages: &[&Page]| {
        let keyed: Vec<(ChunkId, &[u8])> = pages
            .iter()
            .map(|p| (ChunkId::from_bytes(*p.id().as_bytes()), p.body()))
            .collect();
        batch::encode(keyed.iter().map(|(id, b)| (id, *b)))
    };
    let batch_path = format!("/api/v1/pages/batch?namespace={ns}");
    // A page under another page's id, and a page of a chunk not stored, are refused.
    let liar = Page::new(&refs[..3]);
    let mut forged = Vec::new();
    batch::encode_header(&mut forged);
    batch::encode_entry(
        &mut forged,
        &ChunkId::from_bytes(*ids[0].as_bytes()),
        liar.body(),
    );
    srv.post_bytes(&batch_path, tok, forged)
        .await
        .expect_error(400, "bad_request");
    let ghost = Page::new(&[ChunkRef(ChunkId::from_bytes([9; 32]), 10)]);
    srv.post_bytes(&batch_path, tok, page_batch(&[&ghost]))
        .await
        .expect_error(409, "missing_chunks");
    let stored: fsync_common::wire::StoredResponse = srv
        .post_bytes(&batch_path, tok, page_batch(&fresh))
        .await
        .expect(200)
        .json();
    assert_eq!((stored.stored, stored.existing), (fresh.len() as u32, 0));
    // A size that does not match the pages is refused like a chunk list's.
    let wrong = CommitRequest {
        size: paged.size + 1,
        idempotency_key: random_key(),
        ..paged.clone()
    };
    srv.post(UPLOAD, tok, &wrong)
        .await
        .expect_error(400, "bad_request");
    let both = CommitRequest {
        chunks: refs2.clone(),
        idempotency_key: random_key(),
        ..paged.clone()
    };
    srv.post(UPLOAD, tok, &both)
        .await
        .expect_error(400, "bad_request");
    // One full page named over and over: refused by its entry count before any list
    // is built.
    let full = Page::new(&refs[..pages::PAGE_MAX]);
    srv.post_bytes(&batch_path, tok, page_batch(&[&full]))
        .await
        .expect(200);
    let repeats = (1 << 20) / pages::PAGE_MAX + 1;
    let huge = CommitRequest {
        pages: vec![full.id(); repeats],
        size: 1,
        idempotency_key: random_key(),
        ..paged.clone()
    };
    let r = srv
        .post(UPLOAD, tok, &huge)
        .await
        .expect_error(400, "bad_request");
    assert!(r.message().contains("limit"), "{}", r.message());
    let v2: CommitResponse = srv.post_json(UPLOAD, tok, &paged).await;
    assert_eq!(v2.outcome, CommitOutcome::FastForward);
    assert_eq!(download(srv, &a, file).await.chunks, refs2);
    // The old version still reads whole, and a restore of it needs no upload.
    let old = srv
        .get(&format!("/api/v1/files/download/{file}?version=1"), tok)
        .await
        .expect(200)
        .json::<Manifest>();
    assert_eq!(old.chunks, refs);
    let restored: CommitResponse = srv
        .post_json(
            &format!("/api/v1/files/{file}/restore"),
            tok,
            &json!({"version": 1}),
        )
        .await;
    assert_eq!(download(srv, &a, file).await.chunks, refs);
    assert_eq!(restored.head.version, VersionNo(3));
}

on_every_backend!(manifest_pages_store_once_and_read_whole => pages_scenario);

async fn files_scenario(srv: &Server) {
    let (user, dev) = account(srv, "files", "d").await;
    let tok = Some(dev.token.as_str());
    let (up, a) = ("/api/v1/files/upload", "docs/a.txt");

    let req1 = user
        .commit_req(srv, &dev, a, b"version one", &empty(), T0)
        .await;
    let r1: CommitResponse = srv.post_json(up, tok, &req1).await;
    assert_eq!(r1.outcome, CommitOutcome::FastForward);
    assert!(r1.conflict_copy.is_none());
    let h1 = &r1.head;
    assert_eq!(h1.version, VersionNo(1));
    assert_eq!(h1.vv, empty().incremented(dev.id));
    assert_eq!(h1.path.as_str(), "docs/a.txt");
    assert_eq!((h1.size, h1.mtime, h1.mode), (11, T0, 0o644));
    assert_eq!(h1.content_hash, Some(req1.content_hash));
    let whose = (h1.deleted, h1.device, h1.namespace);
    assert_eq!(whose, (false, dev.id, user.namespace));

    // A retry with the same idempotency key gets the same answer.
    let again: CommitResponse = srv.post_json(up, tok, &req1).await;
    assert_eq!(again.outcome, CommitOutcome::AlreadyApplied);
    assert_eq!(again.head, r1.head);

    // A chunk never uploaded.
    let ghost = user.blob(b"never uploaded").0;
    let bad = CommitRequest {
        pages: Vec::new(),
        path: "docs/ghost.txt".parse().unwrap(),
        chunks: vec![ChunkRef(ghost, 14)],
        size: 14,
        idempotency_key: random_key(),
        ..req1.clone()
    };
    let r = srv.post(up, tok, &bad).await;
    let r = r.expect_error(409, "missing_chunks");
    assert_eq!(r.value()["error"]["missing"], json!([ghost]));

    // Sizes that do not add up.
    let mut wrong = req1.clone();
    (wrong.size, wrong.idempotency_key) = (req1.size + 1, random_key());
    srv.post(up, tok, &wrong).await.bad_request();

    // Modes beyond the permission bits: a folder with content, or another file type
    // (an empty folder is accepted: `folder_entries_scenario`).
    for mode in [
        fsync_common::wire::FOLDER_MODE | 0o755,
        0o100_644,
        0o120_777,
    ] {
        let bad = CommitRequest {
            pages: Vec::new(),
            mode,
            idempotency_key: random_key(),
            ..req1.clone()
        };
        srv.post(up, tok, &bad).await.bad_request();
    }

    // Bad paths (a client cannot even build a SyncPath for them: send raw JSON).
    for path in ["../../etc/passwd", "/etc/passwd", "a/./b", "a//b"] {
        let mut v = serde_json::to_value(&req1).unwrap();
        v["path"] = json!(path);
        v["idempotency_key"] = json!(random_key());
        srv.post(up, tok, &v)
            .await
            .expect_error(400, "invalid_path");
    }
    // Malformed JSON and unknown fields.
    let r = srv.post_raw(up, tok, JSON, "{\"namespace\": oops").await;
    assert!(r.bad_request().is_json());
    let mut v = serde_json::to_value(&req1).unwrap();
    v["surprise"] = json!(1);
    srv.post(up, tok, &v).await.bad_request();
    // None of the refused commits left a trace.
    assert_eq!(list_all(srv, &dev, ALL).await, vec![r1.head.clone()]);

    // Download returns the manifest.
    let file = r1.head.file_id;
    let m = download(srv, &dev, file).await;
    assert_eq!(m.meta, r1.head);
    assert_eq!(m.chunks, req1.chunks);
    assert_eq!(read_file(srv, &user, &dev, file).await, b"version one");

    // Version 2 on top of the head.
    let r2 = user
        .commit(srv, &dev, a, b"version two!", &r1.head.vv, T0 + SEC)
        .await;
    assert_eq!(r2.outcome, CommitOutcome::FastForward);
    assert_eq!((r2.head.file_id, r2.head.version), (file, VersionNo(2)));
    assert!(r1.head.vv.le(&r2.head.vv) && r1.head.vv != r2.head.vv);
    let vs = versions(srv, &dev, file).await;
    let numbers: Vec<_> = vs.iter().map(|v| v.version.0).collect();
    assert_eq!(numbers, [2, 1], "newest first");
    assert_eq!(vs[1].content_hash, Some(req1.content_hash));
    assert_eq!(vs[0].content_hash, r2.head.content_hash);

    // Restore version 1: a new version 3 with v1's manifest.
    let restore = format!("/api/v1/files/{file}/restore");
    let r3: CommitResponse = srv.post_json(&restore, tok, &json!({"version": 1})).await;
    assert_eq!(r3.head.version, VersionNo(3));
    assert_eq!(r3.head.content_hash, Some(req1.content_hash));
    assert!(r2.head.vv.le(&r3.head.vv) && r2.head.vv != r3.head.vv);
    assert_eq!(download(srv, &dev, file).await.chunks, req1.chunks);
    assert_eq!(read_file(srv, &user, &dev, file).await, b"version one");
    let dl = format!("/api/v1/files/download/{file}");
    let v2: Manifest = srv.get_json(&format!("{dl}?version=2"), tok).await;
    assert_eq!(v2.meta.content_hash, r2.head.content_hash);
    srv.get(&format!("{dl}?version=99"), tok).await.not_found();
    let r = srv.post(&restore, tok, &json!({"version": 99})).await;
    r.not_found();

    // Delete: a tombstone, hidden unless asked for.
    let del = user.delete(srv, &dev, a, &r3.head.vv).await;
    assert_eq!(del.outcome, Some(DeleteOutcome::Deleted));
    assert_eq!(del.files.len(), 1);
    let d = &del.files[0];
    assert!(d.deleted);
    assert_eq!((d.file_id, d.version), (file, VersionNo(4)));
    assert!(list_all(srv, &dev, &[]).await.is_empty());
    assert_eq!(list_all(srv, &dev, ALL).await, del.files);
    let tomb = download(srv, &dev, file).await;
    assert!(tomb.meta.deleted && tomb.chunks.is_empty());
    let vs = versions(srv, &dev, file).await;
    let vs: Vec<_> = vs.iter().map(|v| (v.version.0, v.deleted)).collect();
    assert_eq!(vs, [(4, true), (3, false), (2, false), (1, false)]);
    // Deleting again is reported, not an error; a path that never existed is 404.
    let again = user.delete(srv, &dev, a, &del.files[0].vv).await;
    assert_eq!(again.outcome, Some(DeleteOutcome::AlreadyDeleted));
    let body = user.delete_body("nope.txt", &empty());
    srv.post(DELETE, tok, &body).await.not_found();

    // A tombstone is restorable: the file comes back with the old content.
    let back: CommitResponse = srv.post_json(&restore, tok, &json!({"version": 2})).await;
    assert_eq!(back.head.version, VersionNo(5));
    assert!(!back.head.deleted);
    assert_eq!(back.head.content_hash, r2.head.content_hash);
    assert_eq!(list_all(srv, &dev, &[]).await, vec![back.head.clone()]);
    assert_eq!(read_file(srv, &user, &dev, file).await, b"version two!");
    // Delete it again; a retry of that delete gets the first answer.
    let body = user.delete_body(a, &back.head.vv);
    let d1: OpResponse = srv.post_json(DELETE, tok, &body).await;
    let d2: OpResponse = srv.post_json(DELETE, tok, &body).await;
    assert_eq!(d1.outcome, Some(DeleteOutcome::Deleted));
    assert_eq!(d2, d1);
    assert_eq!(versions(srv, &dev, file).await.len(), 6);

    // Rename a file: same id, same chunks, no upload.
    let n = user.create(srv, &dev, "notes/n.txt", b"a note").await;
    let before_rename = download(srv, &dev, n.head.file_id).await;
    let stored_before = srv.metric("fsync_chunks_stored_total").await;
    let rn = user
        .rename(srv, &dev, "notes/n.txt", "notes/renamed.txt")
        .await;
    assert_eq!(rn.files.len(), 1);
    assert_eq!(rn.files[0].file_id, n.head.file_id);
    assert_eq!(rn.files[0].path.as_str(), "notes/renamed.txt");
    let after_rename = download(srv, &dev, n.head.file_id).await;
    assert_eq!(after_rename.chunks, before_rename.chunks);
    assert_eq!(after_rename.meta.path.as_str(), "notes/renamed.txt");
    assert_eq!(after_rename.meta.version, before_rename.meta.version);

    // Rename a folder: every file below moves, ids kept.
    let mut dir_ids = HashMap::new();
    for (p, data) in [
        ("dir/x.txt", "x"),
        ("dir/y.txt", "y"),
        ("dir/sub/z.txt", "z"),
    ] {
        let r = user.create(srv, &dev, p, data.as_bytes()).await;
        let moved = (p.replacen("dir/", "moved/", 1), r.head.content_hash);
        dir_ids.insert(r.head.file_id, moved);
    }
    let stored_mid = srv.metric("fsync_chunks_stored_total").await;
    let rn = user.rename(srv, &dev, "dir", "moved").await;
    assert_eq!(rn.files.len(), 3);
    let moved = list_all(srv, &dev, &[("prefix", "moved")]).await;
    assert_eq!(moved.len(), 3);
    for f in &moved {
        let (path, hash) = &dir_ids[&f.file_id];
        assert_eq!((f.path.as_str(), &f.content_hash), (path.as_str(), hash));
    }
    assert!(list_all(srv, &dev, &[("prefix", "dir")]).await.is_empty());
    // Each file's history names the folder rename: from, to, after which version, by
    // whom; a second rename continues the chain.
    let (&x, _) = dir_ids
        .iter()
        .find(|(_, (p, _))| p == "moved/x.txt")
        .unwrap();
    user.rename(srv, &dev, "moved/x.txt", "moved/x2.txt").await;
    let renames: Vec<RenameInfo> = srv
        .get_json(&format!("/api/v1/files/{x}/renames"), tok)
        .await;
    let chain: Vec<(&str, &str, u64)> = renames
        .iter()
        .map(|r| (r.from.as_str(), r.to.as_str(), r.after_version.0))
        .collect();
    assert_eq!(
        chain,
        [
            ("dir/x.txt", "moved/x.txt", 1),
            ("moved/x.txt", "moved/x2.txt", 1)
        ]
    );
    assert!(renames
        .iter()
        .all(|r| r.device == Some(dev.id) && r.created_at.is_some()));
    user.rename(srv, &dev, "moved/x2.txt", "moved/x.txt").await;
    let stored_now = srv.metric("fsync_chunks_stored_total").await;
    assert_eq!(stored_now, stored_mid, "a folder rename stores no chunk");
    assert_eq!(
        stored_mid,
        stored_before + 3,
        "only the three new files stored chunks"
    );
    // Onto an existing path: refused.
    let body = user.rename_body("moved/x.txt", "moved/y.txt");
    let r = srv.post("/api/v1/files/rename", tok, &body).await;
    r.expect_error(409, "conflict");

    // Pagination: every live file exactly once across pages of 2.
    for i in 0..3 {
        let (path, data) = (format!("page/{i}.txt"), format!("p{i}"));
        user.create(srv, &dev, &path, data.as_bytes()).await;
    }
    let all = list_all(srv, &dev, &[]).await;
    assert_eq!(all.len(), 7, "{all:?}");
    let paged = list_all(srv, &dev, &[("limit", "2")]).await;
    assert_eq!(paged, all);
    let ids: HashSet<FileId> = paged.iter().map(|f| f.file_id).collect();
    assert_eq!(ids.len(), paged.len(), "no file twice");
    let mut paths: Vec<&str> = paged.iter().map(|f| f.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "path order");
    paths.dedup();
    assert_eq!(paths.len(), 7);
    // A bad prefix is a path error.
    let rb = srv.request(Method::GET, "/api/v1/files/list", tok);
    let r = srv.send(rb.query(&[("prefix", "../x")])).await;
    r.expect_error(400, "invalid_path");
}

on_every_backend!(files_commit_history_restore_delete_rename_list => files_scenario);

/// An empty folder is an entry with mode `FOLDER_MODE | permissions`, size 0 and no
/// chunks, listed and kept like a file.
async fn folder_entries_scenario(srv: &Server) {
    let (user, dev) = account(srv, "folders", "d").await;
    let tok = Some(dev.token.as_str());
    let up = "/api/v1/files/upload";
    let req = user
        .commit_req(srv, &dev, "docs/a.txt", b"a", &empty(), T0)
        .await;
    let mode = fsync_common::wire::FOLDER_MODE | 0o755;
    let folder = CommitRequest {
        pages: Vec::new(),
        path: "docs/empty".parse().unwrap(),
        chunks: vec![],
        size: 0,
        mode,
        content_hash: user.content_hash(b""),
        ..req
    };
    let r: CommitResponse = srv.post_json(up, tok, &folder).await;
    assert_eq!((r.head.mode, r.head.size), (mode, 0));
    assert_eq!(list_all(srv, &dev, &[]).await, vec![r.head.clone()]);
    let m = download(srv, &dev, r.head.file_id).await;
    assert!(m.chunks.is_empty());
}

on_every_backend!(an_empty_folder_is_an_entry => folder_entries_scenario);

// ================================================================= 5. conflicts

async fn conflicts_scenario(srv: &Server) {
    let (user, a) = account(srv, "conflicts", "A").await;
    let b = user.login(srv, "B").await;
    assert_ne!(a.id, b.id);

    // Both create report.txt from nothing; B's later mtime wins.
    let ra = user.create(srv, &a, "docs/report.txt", b"from A").await;
    assert_eq!(ra.outcome, CommitOutcome::FastForward);
    let rb = user
        .commit(srv, &b, "docs/report.txt", b"from B", &empty(), T0 + SEC)
        .await;
    assert_eq!(rb.outcome, CommitOutcome::ConflictWon);
    let copy = rb.conflict_copy.clone().expect("a conflict copy");
    let name = copy.path.file_name();
    assert!(is_conflict_name(name, "report", ".txt"), "{name}");
    let named = format!(
        "docs/report.sync-conflict-20261125-153447-{}.txt",
        a.id.short()
    );
    assert_eq!(
        copy.path.as_str(),
        named,
        "named after the loser's mtime and device"
    );
    assert_eq!(copy.content_hash, Some(user.content_hash(b"from A")));
    assert_eq!(rb.head.file_id, ra.head.file_id);
    assert_eq!(rb.head.content_hash, Some(user.content_hash(b"from B")));
    assert!(ra.head.vv.le(&rb.head.vv) && empty().incremented(b.id).le(&rb.head.vv));
    // Both contents are reachable.
    assert_eq!(read_file(srv, &user, &a, rb.head.file_id).await, b"from B");
    assert_eq!(read_file(srv, &user, &a, copy.file_id).await, b"from A");
    assert_eq!(list_all(srv, &a, &[]).await.len(), 2);

    // The other way round: the later commit has the older mtime and loses.
    let ra = user
        .commit(srv, &a, "plan.md", b"A's plan", &empty(), T0 + 10 * SEC)
        .await;
    let req = user
        .commit_req(srv, &b, "plan.md", b"B's plan", &empty(), T0 + 5 * SEC)
        .await;
    let rb: CommitResponse = srv.post_json(UPLOAD, Some(&b.token), &req).await;
    assert_eq!(rb.outcome, CommitOutcome::ConflictLost);
    // A retry gets the same answer and makes no second copy.
    let retry: CommitResponse = srv.post_json(UPLOAD, Some(&b.token), &req).await;
    assert_eq!(retry.outcome, CommitOutcome::AlreadyApplied);
    let answer = (&retry.head, &retry.conflict_copy);
    assert_eq!(answer, (&rb.head, &rb.conflict_copy));
    let listed = list_all(srv, &a, &[("prefix", "")]).await;
    let plans = listed
        .iter()
        .filter(|f| f.path.as_str().starts_with("plan"));
    assert_eq!(plans.count(), 2);
    assert_eq!(rb.head, ra.head, "the head stays");
    let copy = rb.conflict_copy.expect("a conflict copy");
    let named = format!("plan.sync-conflict-20261125-153452-{}.md", b.id.short());
    assert_eq!(copy.path.as_str(), named);
    assert_eq!(read_file(srv, &user, &b, copy.file_id).await, b"B's plan");
    let head = read_file(srv, &user, &b, ra.head.file_id).await;
    assert_eq!(head, b"A's plan");

    // Same mtime: the larger device id wins, whoever commits second.
    let first = user.create(srv, &a, "tie", b"tie A").await;
    let second = user.create(srv, &b, "tie", b"tie B").await;
    let (won, lost) = (CommitOutcome::ConflictWon, CommitOutcome::ConflictLost);
    assert_eq!(second.outcome, if b.id > a.id { won } else { lost });
    let copy = second.conflict_copy.expect("a conflict copy").path;
    assert!(is_conflict_name(copy.as_str(), "tie", ""), "{copy}");
    assert_eq!(first.head.file_id, second.head.file_id);

    // Modify vs delete: A deletes the version it saw, B had modified it: B's change stays.
    let v1 = user.create(srv, &a, "shared.txt", b"v1").await;
    let v2 = user
        .commit(srv, &b, "shared.txt", b"v2 by B", &v1.head.vv, T0 + SEC)
        .await;
    assert_eq!(v2.outcome, CommitOutcome::FastForward);
    let del = user.delete(srv, &a, "shared.txt", &v1.head.vv).await;
    assert_eq!(del.outcome, Some(DeleteOutcome::KeptModified));
    assert_eq!(del.files, vec![v2.head.clone()]);
    let live = list_all(srv, &a, &[("prefix", "shared.txt")]).await;
    assert_eq!(live, vec![v2.head.clone()]);
    assert_eq!(read_file(srv, &user, &a, v2.head.file_id).await, b"v2 by B");

    // And a modification beats a delete it did not see: A deletes the head, then B
    // commits from the older base: the file is live again with B's content.
    let del = user.delete(srv, &a, "shared.txt", &v2.head.vv).await;
    assert_eq!(del.outcome, Some(DeleteOutcome::Deleted));
    let v4 = user
        .commit(srv, &b, "shared.txt", b"v3 by B", &v2.head.vv, T0 + 2 * SEC)
        .await;
    assert_eq!(v4.outcome, CommitOutcome::FastForward);
    assert!(!v4.head.deleted);
    assert!(del.files[0].vv.le(&v4.head.vv));
    assert_eq!(read_file(srv, &user, &b, v4.head.file_id).await, b"v3 by B");
}

on_every_backend!(concurrent_commits_make_conflict_copies => conflicts_scenario);

// ================================================================= 6. concurrency

const ROUNDS: i64 = 20;

/// One device committing `ROUNDS` versions, each from the base it last saw.
async fn racer(
    srv: &Server,
    user: &User,
    dev: &Device,
    tag: &str,
    offset: i64,
) -> Vec<(ContentHash, CommitOutcome)> {
    use CommitOutcome::{ConflictLost, ConflictWon, FastForward};
    let mut base = empty();
    let mut out = Vec::new();
    for i in 0..ROUNDS {
        let (data, mtime) = (format!("{tag} round {i}"), T0 + i * 2 * SEC + offset);
        let r = user
            .commit(srv, dev, "race/file.txt", data.as_bytes(), &base, mtime)
            .await;
        let o = r.outcome;
        assert!(
            matches!(o, FastForward | ConflictWon | ConflictLost),
            "{o:?}"
        );
        let conflict = o != FastForward;
        let msg = "a conflict copy exactly when there was a conflict";
        assert_eq!(r.conflict_copy.is_some(), conflict, "{msg}");
        base = r.head.vv.clone();
        out.push((user.content_hash(data.as_bytes()), r.outcome));
    }
    out
}

async fn concurrency_scenario(srv: &Server) {
    let (user, a) = account(srv, "race", "A").await;
    let b = user.login(srv, "B").await;
    let (ra, rb) = (
        racer(srv, &user, &a, "A", 0),
        racer(srv, &user, &b, "B", SEC),
    );
    let (ha, hb) = tokio::join!(ra, rb);
    let committed: Vec<_> = ha.iter().chain(&hb).collect();
    let count = |p: fn(&CommitOutcome) -> bool| committed.iter().filter(|(_, o)| p(o)).count();
    let conflicts = count(|o| *o != CommitOutcome::FastForward);
    let won = count(|o| *o == CommitOutcome::ConflictWon);
    let n = committed.len();
    eprintln!("{n} commits: {conflicts} conflicts ({won} won)");

    // Every content ever committed is a head, a conflict copy or in some history.
    let files = list_all(srv, &a, ALL).await;
    let mut reachable = HashSet::new();
    let mut copies = 0;
    for f in &files {
        let path = &f.path;
        if path.as_str() != "race/file.txt" {
            let name = path.file_name();
            assert!(
                is_conflict_name(name, "file", ".txt"),
                "unexpected file {path}"
            );
            copies += 1;
        }
        reachable.extend(f.content_hash);
        let history = versions(srv, &a, f.file_id).await;
        reachable.extend(history.into_iter().filter_map(|v| v.content_hash));
    }
    for (hash, outcome) in &committed {
        let what = format!("content {hash} ({outcome:?}) was lost");
        assert!(reachable.contains(hash), "{what}");
    }
    assert_eq!(copies, conflicts, "one conflict copy per conflict");
    let main = files.iter().find(|f| f.path.as_str() == "race/file.txt");
    assert!(!main.expect("the head").deleted);

    // The journal stayed strictly ordered.
    let changes: ChangesResponse = srv.get_json(CHANGES_0, Some(&a.token)).await;
    assert!(changes.changes.windows(2).all(|w| w[0].seq < w[1].seq));
    // One entry per commit, plus one per conflict copy made of an old head.
    assert_eq!(changes.changes.len(), 2 * ROUNDS as usize + won);
}

on_every_backend!(concurrent_devices_lose_nothing => concurrency_scenario);

// ================================================================= 7. sync

async fn sync_scenario(srv: &Server) {
    let (user, dev) = account(srv, "sync", "d").await;
    let tok = Some(dev.token.as_str());

    let create = user
        .commit_req(srv, &dev, "s/one.txt", b"one", &empty(), T0)
        .await;
    let ghost = user.blob(b"never uploaded").0;
    let bad = CommitRequest {
        pages: Vec::new(),
        path: "s/bad.txt".parse().unwrap(),
        chunks: vec![ChunkRef(ghost, 14)],
        size: 14,
        idempotency_key: random_key(),
        ..create.clone()
    };
    let events = json!({"events": [
        serde_json::to_value(SyncEvent::Create(create.clone())).unwrap(),
        serde_json::to_value(SyncEvent::Modify(bad)).unwrap(),
        {"type": "rename", "namespace": user.namespace, "from": "s/one.txt", "to": "s/uno.txt", "idempotency_key": random_key()},
    ]});
    let resp: SyncEventResponse = srv.post_json(EVENT, tok, &events).await;
    assert_eq!(resp.results.len(), 3);
    let SyncEventResult::Committed(c) = &resp.results[0] else {
        panic!("create should commit: {:?}", resp.results[0]);
    };
    assert_eq!(c.outcome, CommitOutcome::FastForward);
    let SyncEventResult::Failed(e) = &resp.results[1] else {
        panic!("the bad event should fail: {:?}", resp.results[1]);
    };
    assert_eq!(e.error.code, fsync_common::ErrorCode::MissingChunks);
    assert_eq!(e.error.missing, vec![ghost]);
    let SyncEventResult::Applied(rn) = &resp.results[2] else {
        panic!("rename should apply: {:?}", resp.results[2]);
    };
    assert_eq!(rn.files.len(), 1);
    let renamed = (rn.files[0].file_id, rn.files[0].path.as_str());
    assert_eq!(renamed, (c.head.file_id, "s/uno.txt"));
    // The same batch again (a retry after a lost response): answered as before, the
    // refused event refused again, nothing new in the journal.
    let retry: SyncEventResponse = srv.post_json(EVENT, tok, &events).await;
    let r = &retry.results;
    assert!(
        matches!(&r[0], SyncEventResult::Committed(r)
            if r.outcome == CommitOutcome::AlreadyApplied && r.head == c.head),
        "{:?}",
        r[0]
    );
    let again = matches!(&r[1], SyncEventResult::Failed(e) if e.error.missing == vec![ghost]);
    assert!(again, "{:?}", r[1]);
    assert!(
        matches!(&r[2], SyncEventResult::Applied(r) if r == rn),
        "{:?}",
        r[2]
    );
    let listed = list_all(srv, &dev, ALL).await;
    let listed: Vec<String> = listed.into_iter().map(|f| f.path.to_string()).collect();
    assert_eq!(listed, ["s/uno.txt"]);

    // A few more changes.
    for i in 0..4 {
        let (path, data) = (format!("s/f{i}"), format!("f{i}"));
        user.create(srv, &dev, &path, data.as_bytes()).await;
    }

    let all: ChangesResponse = srv.get_json(CHANGES_0, tok).await;
    let n = all.changes.len();
    assert_eq!(n, 6, "create, rename, four commits: {all:?}");
    let increasing = all.changes.windows(2).all(|w| w[0].seq < w[1].seq);
    assert!(increasing, "increasing seq");
    assert!(!all.has_more);
    assert_eq!(all.cursor, all.changes.last().unwrap().seq);
    assert_eq!(all.changes[0].file.file_id, c.head.file_id);
    let old = all.changes[1].old_path.as_ref();
    assert_eq!(old.map(fsync_common::SyncPath::as_str), Some("s/one.txt"));
    assert_eq!(all.changes[1].file.path.as_str(), "s/uno.txt");

    let path = format!("/api/v1/sync/changes?since={}", all.cursor.0);
    let none: ChangesResponse = srv.get_json(&path, tok).await;
    assert!(none.changes.is_empty() && !none.has_more);
    assert_eq!(none.cursor, all.cursor, "an empty page keeps the cursor");

    // Pages of 4 cover the journal exactly once, has_more until the last page.
    let mut since = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let path = format!("/api/v1/sync/changes?since={since}&limit=4");
        let page: ChangesResponse = srv.get_json(&path, tok).await;
        pages += 1;
        assert!(page.changes.len() <= 4);
        seen.extend(page.changes.iter().map(|c| c.seq));
        since = page.cursor.0;
        if !page.has_more {
            break;
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 2);
    assert_eq!(seen, all.changes.iter().map(|c| c.seq).collect::<Vec<_>>());
    srv.get("/api/v1/sync/changes?since=abc", tok)
        .await
        .bad_request();
}

on_every_backend!(sync_events_and_change_journal => sync_scenario);

// ================================================================= 8. authorization

async fn authz_scenario(srv: &Server) {
    let (alice, a) = account(srv, "alice", "a").await;
    let (_, b) = account(srv, "bob", "b").await;
    let committed = alice.create(srv, &a, "secret.txt", b"alice's secret").await;
    let file = committed.head.file_id;
    let chunk = alice.blob(b"alice's secret").0;
    let ns = alice.namespace;
    let before = (list_all(srv, &a, ALL).await, versions(srv, &a, file).await);
    let bt = Some(b.token.as_str());
    let misses_before = not_found_counts(srv).await;

    let not_found = |r: Resp| {
        let r = r.not_found();
        assert!(
            !String::from_utf8_lossy(&r.body).contains("secret"),
            "{r:?}"
        );
        r
    };
    let get = |path: String| async move { not_found(srv.get(&path, bt).await) };
    let post =
        |path: &'static str, body: Value| async move { not_found(srv.post(path, bt, &body).await) };
    get(format!("/api/v1/files/list?namespace={ns}")).await;
    let foreign = get(format!("/api/v1/files/download/{file}")).await;
    let nowhere = FileId::from_bytes([5; 16]);
    let nonexistent = get(format!("/api/v1/files/download/{nowhere}")).await;
    assert_eq!(
        foreign.body, nonexistent.body,
        "another user's file looks like no file"
    );
    get(format!("/api/v1/files/{file}/versions")).await;
    get(format!("/api/v1/files/{file}/renames")).await;
    let restore = format!("/api/v1/files/{file}/restore");
    not_found(srv.post(&restore, bt, &json!({"version": 1})).await);
    let steal = CommitRequest {
        pages: Vec::new(),
        base: committed.head.vv.clone(),
        idempotency_key: random_key(),
        ..alice
            .commit_req(srv, &a, "secret.txt", b"alice's secret", &empty(), T0)
            .await
    };
    not_found(srv.post(UPLOAD, bt, &steal).await);
    post(DELETE, alice.delete_body("secret.txt", &committed.head.vv)).await;
    post(
        "/api/v1/files/rename",
        alice.rename_body("secret.txt", "mine.txt"),
    )
    .await;
    get(format!("/api/v1/sync/changes?namespace={ns}")).await;
    let ids = |ns: NamespaceId| json!({"namespace": ns, "ids": [chunk]});
    let foreign_ns = post("/api/v1/chunks/missing", ids(ns)).await;
    let no_ns = post(
        "/api/v1/chunks/missing",
        ids(NamespaceId::from_bytes([6; 16])),
    )
    .await;
    assert_eq!(
        foreign_ns.body, no_ns.body,
        "another user's namespace looks like no namespace"
    );
    post("/api/v1/chunks/fetch", ids(ns)).await;
    get(chunk_path(&chunk, ns)).await;
    // Bob's own namespace does not hold Alice's chunk.
    get(format!("/api/v1/chunks/{chunk}")).await;
    let (_, blob) = alice.blob(b"overwrite attempt");
    not_found(
        srv.put_bytes(&chunk_path(&chunk, ns), bt, blob.clone())
            .await,
    );
    let batch = batch::encode([(&chunk, blob.as_slice())]);
    let batch_path = format!("/api/v1/chunks/batch?namespace={ns}");
    not_found(srv.post_bytes(&batch_path, bt, batch).await);
    // Manifest pages: asking, fetching and storing in Alice's namespace.
    let page = fsync_common::pages::Page::new(&[ChunkRef(chunk, 100)]);
    let page_ids = json!({"namespace": ns, "ids": [page.id()]});
    post("/api/v1/pages/missing", page_ids.clone()).await;
    post("/api/v1/pages/fetch", page_ids).await;
    let page_batch = batch::encode([(&ChunkId::from_bytes(*page.id().as_bytes()), page.body())]);
    not_found(
        srv.post_bytes(
            &format!("/api/v1/pages/batch?namespace={ns}"),
            bt,
            page_batch,
        )
        .await,
    );
    let events = json!({"events": [serde_json::to_value(SyncEvent::Modify(steal)).unwrap()]});
    let r: SyncEventResponse = srv.post_json(EVENT, bt, &events).await;
    assert!(
        matches!(&r.results[..], [SyncEventResult::Failed(e)] if e.error.code == fsync_common::ErrorCode::NotFound),
        "{r:?}"
    );
    not_found(srv.revoke(bt, a.id).await);
    let manifests = |ns: NamespaceId| json!({"namespace": ns, "files": [[file, 1]]});
    post("/api/v1/files/manifests", manifests(ns)).await;
    post(
        "/api/v1/files/manifests",
        manifests(b.login.namespaces[0].id),
    )
    .await;
    // Bob's listing is his own (empty) namespace, his device list his own devices.
    assert!(list_all(srv, &b, ALL).await.is_empty());
    let devices: Vec<DeviceInfo> = srv.get_json(DEVICES, bt).await;
    assert_eq!(devices.iter().map(|d| d.id).collect::<Vec<_>>(), [b.id]);
    // His usage is his own: he stored nothing, Alice did.
    let usage: UsageResponse = srv.get_json("/api/v1/usage", bt).await;
    assert_eq!(usage.used_bytes, 0, "{usage:?}");
    let at = Some(a.token.as_str());
    let hers: UsageResponse = srv.get_json("/api/v1/usage", at).await;
    assert!(hers.used_bytes > 0, "{hers:?}");
    // Logging out with Alice's refresh token ends nothing of hers.
    let body = json!({"refresh_token": a.refresh});
    srv.post("/api/v1/auth/logout", bt, &body).await.expect(204);
    let renewed: TokenResponse = srv.refresh(&a.refresh).await.expect(200).json();

    // Every authenticated route was probed with Bob's token against Alice's ids and
    // answered 404 (counted by the server's own route templates), but those checked
    // above or elsewhere for what they are.
    let exempt = [
        (
            "POST",
            "/api/v1/auth/refresh",
            "the refresh token in the body is the credential",
        ),
        (
            "POST",
            "/api/v1/auth/logout",
            "answers 204 and leaves Alice's token working (above)",
        ),
        ("GET", "/api/v1/devices", "lists only Bob's devices (above)"),
        (
            "GET",
            "/api/v1/usage",
            "counts only Bob's namespaces (above)",
        ),
        (
            "POST",
            "/api/v1/sync/event",
            "answers 200, each event failed not_found (above)",
        ),
        (
            "GET",
            "/api/v1/ws",
            "pushes only the caller's namespaces (ws_scenario)",
        ),
    ];
    let misses_after = not_found_counts(srv).await;
    for route in fsync_server::ROUTES {
        if route.access != fsync_server::Access::Token
            || exempt
                .iter()
                .any(|(m, p, _)| (*m, *p) == (route.method, route.path))
        {
            continue;
        }
        let key = (route.method.to_owned(), route.path.to_owned());
        let probed = misses_after.get(&key) > misses_before.get(&key);
        assert!(
            probed,
            "{} {}: no probe with another user's ids answered 404",
            route.method, route.path
        );
    }

    // Alice's data is untouched.
    let after = (list_all(srv, &a, ALL).await, versions(srv, &a, file).await);
    assert_eq!(after, before);
    assert_eq!(read_file(srv, &alice, &a, file).await, b"alice's secret");
    srv.get(DEVICES, Some(&renewed.access_token))
        .await
        .expect(200);
}

on_every_backend!(users_cannot_see_each_other => authz_scenario);

/// 404 answers so far per (method, route template), from `/metrics`.
async fn not_found_counts(srv: &Server) -> HashMap<(String, String), u64> {
    let text = String::from_utf8(srv.get("/metrics", None).await.expect(200).body).unwrap();
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_owned())
    };
    text.lines()
        .filter(|l| l.starts_with("fsync_http_requests_total{") && l.contains("status=\"404\""))
        .filter_map(|l| {
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some(((label(l, "method")?, label(l, "route")?), n))
        })
        .collect()
}

// ================================================================= 9. rate limits

async fn login_limit_scenario(srv: &Server) {
    let user = register(srv, &username("limited")).await;
    let wrong = json!({"username": user.username, "password": "cd".repeat(32)});
    for _ in 0..3 {
        srv.post(LOGIN, None, &wrong).await.unauthorized();
    }
    let r = srv.post(LOGIN, None, &wrong).await.rate_limited();
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The right password is refused too while the window lasts: it is per username.
    srv.post(LOGIN, None, &user.login_body("d"))
        .await
        .rate_limited();
    // Another username is not affected.
    account(srv, "other", "d").await;
}

on_every_backend!(login_attempts_are_rate_limited,
    |s| s.limits.auth_per_user.max = 3 => login_limit_scenario);

async fn api_limit_scenario(srv: &Server) {
    let (_, dev) = account(srv, "busy", "d").await;
    for _ in 0..5 {
        srv.get(DEVICES, Some(&dev.token)).await.expect(200);
    }
    let r = srv.get("/api/v1/files/list", Some(&dev.token)).await;
    assert!(r.rate_limited().headers.contains_key("retry-after"));
    let (_, od) = account(srv, "idle", "d").await;
    srv.get(DEVICES, Some(&od.token)).await.expect(200);
}

on_every_backend!(api_requests_are_rate_limited_per_user,
    |s| s.limits.api_per_user.max = 5 => api_limit_scenario);

// ================================================================= 10. WebSocket

/// Waits for the server to end the socket: a close frame (1008) or the stream ending.
async fn expect_closed(ws: &mut Ws) {
    match next_frame(ws).await {
        None | Some(Message::Close(None)) => {}
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008, "{f:?}"),
        Some(other) => panic!("expected the socket to close, got {other:?}"),
    }
}

/// The push of a namespace's journal position.
fn changed(namespace: NamespaceId, seq: Seq) -> PushMessage {
    PushMessage::Changed { namespace, seq }
}

async fn ws_scenario(srv: &Server) {
    let (user, a) = account(srv, "ws", "A").await;
    let b = user.login(srv, "B").await;
    let ns = user.namespace;
    let first = user.create(srv, &b, "w/first.txt", b"first").await;

    let mut ws = ws_open(srv, Some(&a.token)).await;
    assert_eq!(next_push(&mut ws).await, changed(ns, first.head.seq));
    let second = user.create(srv, &b, "w/second.txt", b"second").await;
    assert_eq!(next_push(&mut ws).await, changed(ns, second.head.seq));
    let del = user.delete(srv, &b, "w/first.txt", &first.head.vv).await;
    assert_eq!(next_push(&mut ws).await, changed(ns, del.files[0].seq));

    // Authentication by a first message.
    let mut ws2 = ws_open(srv, None).await;
    ws_auth(&mut ws2, &a.token).await;
    assert_eq!(next_push(&mut ws2).await, changed(ns, del.files[0].seq));

    // A bad header token is refused before the upgrade.
    let refused = ws_connect(srv, Some("not.a.token")).await.map(|_| ());
    refused
        .expect_err("a bad token must not get a socket")
        .expect(401);
    // A bad token in the auth message: the socket is closed.
    let mut ws3 = ws_open(srv, None).await;
    ws_auth(&mut ws3, "not.a.token").await;
    expect_closed(&mut ws3).await;

    // Another user's socket gets only its own namespace's pushes: Alice's commit is
    // broadcast before Carol's, so if it leaked it would arrive first.
    let (carol, c) = account(srv, "carol", "C").await;
    let mut wsc = ws_open(srv, Some(&c.token)).await;
    assert_eq!(next_push(&mut wsc).await, changed(carol.namespace, Seq(0)));
    let third = user.create(srv, &b, "w/third.txt", b"third").await;
    let mine = carol.create(srv, &c, "c.txt", b"carol's").await;
    let pushed = next_push(&mut wsc).await;
    assert_eq!(pushed, changed(carol.namespace, mine.head.seq));
    // Both of A's sockets see the third commit.
    for s in [&mut ws, &mut ws2] {
        assert_eq!(next_push(s).await, changed(ns, third.head.seq));
    }
}

on_every_backend!(websocket_pushes_changes => ws_scenario);

/// Two server nodes on one PostgreSQL database, each with its own in-process
/// broadcast: a commit and a device revocation handled by one node reach the
/// WebSocket held by the other (LISTEN/NOTIFY, ARCHITECTURE §4), also after the
/// listening connections were cut. SQLite serves one process, so there is no second
/// node to reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_pushes_and_revocations_cross_server_nodes() {
    let nodes = backends()
        .into_iter()
        .filter(|b| matches!(b, Backend::Postgres(_)));
    for backend in nodes {
        let node_a = Server::start(&backend).await;
        let node_b = node_a.start_node().await;
        let (user, writer) = account(&node_a, "nodes", "writer").await;
        let reader = user.login(&node_b, "reader").await;
        let ns = user.namespace;
        let ws = ws_connect(&node_b, Some(&reader.token)).await;
        let mut ws = ws.expect("upgrade on node B");
        // Node A commits; node B's socket hears each commit, in order.
        for name in ["n/first.txt", "n/second.txt"] {
            let c = user.create(&node_a, &writer, name, name.as_bytes()).await;
            push_reaches(&mut ws, ns, c.head.seq, name).await;
        }
        // The database cuts both nodes' listening connections; they listen again, and
        // the next commit reaches node B's socket.
        let url = node_a.database_url();
        let cut = listening_sessions(url).await;
        assert_eq!(cut.len(), 2, "one listening connection per node: {cut:?}");
        let pids = cut.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN";
        admin_sql(url, format!("{terminate} ({pids})")).await;
        let again = format!("both nodes to listen again (cut: {cut:?})");
        fsync_testkit::wait_until_async(EVENT_TIMEOUT, &again, || async {
            let now = listening_sessions(url).await;
            now.len() == 2 && now.iter().all(|p| !cut.contains(p))
        })
        .await;
        let c = user.create(&node_a, &writer, "n/third.txt", b"3").await;
        push_reaches(&mut ws, ns, c.head.seq, "n/third.txt").await;
        // Node A revokes the reader: its socket on node B closes at once, long before
        // its token would expire.
        let revoked = node_a.revoke(Some(&writer.token), reader.id).await;
        revoked.expect(204);
        expect_closed(&mut ws).await;
    }
}

/// Waits for the push of `seq`: earlier positions may come first (the socket's
/// greeting races with the fan-out of a commit), a later one means it was skipped.
async fn push_reaches(ws: &mut Ws, ns: NamespaceId, seq: Seq, what: &str) {
    loop {
        match next_push(ws).await {
            PushMessage::Changed { namespace, seq: s } if namespace == ns && s < seq => {}
            PushMessage::Changed { namespace, seq: s } if namespace == ns && s == seq => return,
            other => panic!("node B's socket missed {what} (seq {seq:?}): got {other:?}"),
        }
    }
}

/// The PostgreSQL sessions of the database at `url` listening for cross-node events.
async fn listening_sessions(url: &str) -> Vec<i32> {
    let sql = "SELECT CAST(pid AS TEXT) FROM pg_stat_activity \
               WHERE datname = current_database() AND query LIKE 'LISTEN%' ORDER BY pid";
    let rows = fsync_testkit::postgres::rows(url, sql)
        .await
        .expect("pg_stat_activity");
    rows.iter().map(|r| r[0].parse().expect("a pid")).collect()
}

/// The server closes a socket when its access token expires (here: a token forged
/// with the server's secret that expires in two seconds).
async fn ws_expiry_scenario(srv: &Server) {
    let (user, dev) = account(srv, "expiry", "d").await;
    let now = now_secs();
    let short = hs(HS256, &Claims::of(&user, &dev, now, now + 2), SECRET);
    let mut ws = ws_open(srv, Some(&short)).await;
    assert_eq!(next_push(&mut ws).await, changed(user.namespace, Seq(0)));
    expect_closed(&mut ws).await;
}

on_every_backend!(websocket_closes_when_the_token_expires => ws_expiry_scenario);

/// The close frame a refused socket gets: 1008 and the reason.
async fn refused_reason(ws: &mut Ws) -> String {
    match next_frame(ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1008, "{f:?}");
            f.reason.to_string()
        }
        other => panic!("expected a close frame with a reason, got {other:?}"),
    }
}

/// At most 2 push sockets per device and 3 per user (lowered from the defaults): one
/// more is closed with 1008 and a reason that says which cap; a closed socket gives
/// its place back.
async fn ws_caps_scenario(srv: &Server) {
    let (user, a) = account(srv, "caps", "A").await;
    let b = user.login(srv, "B").await;
    let ns = user.namespace;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_open(srv, Some(&a.token)).await;
        assert_eq!(next_push(&mut ws).await, changed(ns, Seq(0)));
        open.push(ws);
    }
    let mut third = ws_open(srv, Some(&a.token)).await;
    let why = refused_reason(&mut third).await;
    assert!(
        why.contains("this device") && why.contains("at most 2"),
        "{why}"
    );
    // The other device has room, until the user's cap.
    let mut ws = ws_open(srv, Some(&b.token)).await;
    assert_eq!(next_push(&mut ws).await, changed(ns, Seq(0)));
    let mut over = ws_open(srv, None).await;
    ws_auth(&mut over, &b.token).await;
    let why = refused_reason(&mut over).await;
    assert!(
        why.contains("this account") && why.contains("at most 3"),
        "{why}"
    );
    // A socket that ends gives its place back.
    let mut gone = open.pop().unwrap();
    gone.close(None).await.unwrap();
    assert!(next_frame(&mut gone)
        .await
        .is_none_or(|m| matches!(m, Message::Close(_))));
    fsync_testkit::wait_until_async(
        EVENT_TIMEOUT,
        "the closed socket's place to be free",
        || async { srv.metric("fsync_websocket_connections").await == 2 },
    )
    .await;
    let mut again = ws_open(srv, Some(&a.token)).await;
    assert_eq!(next_push(&mut again).await, changed(ns, Seq(0)));
}

on_every_backend!(websockets_are_capped_per_device_and_per_user,
    |s| { s.limits.ws_per_device = 2; s.limits.ws_per_user = 3; } => ws_caps_scenario);

// ================================================================= 11, 12. ops and limits

async fn ops_scenario(srv: &Server) {
    let r = srv.get("/health", None).await.expect(200);
    let v = r.value();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["database"], "ok");
    assert_eq!(v["blob_store"], "ok");
    assert!(r.headers.contains_key("x-request-id"));
    let text = String::from_utf8(srv.get("/metrics", None).await.expect(200).body).unwrap();
    assert!(text.contains("fsync_http_requests_total"), "{text}");
    let health = r#"fsync_http_requests_total{method="GET",route="/health",status="200"} 1"#;
    assert!(text.contains(health), "{text}");
    srv.get("/api/v1/nope", None).await.not_found();
}

on_every_backend!(health_and_metrics => ops_scenario);

async fn oversized_json_scenario(srv: &Server) {
    let (user, dev) = account(srv, "big", "d").await;
    let tok = Some(dev.token.as_str());
    let filler = "a".repeat(16 * 1024 * 1024 + 1);
    let body = format!(r#"{{"namespace":"{}","path":"{filler}"}}"#, user.namespace);
    let r = srv.post_raw(UPLOAD, tok, JSON, &body).await;
    r.expect_error(413, "payload_too_large");
    // A large but legal manifest is parsed (and refused for its content, not its size).
    let max = MAX_CHUNK_PLAINTEXT as u32;
    let chunks: Vec<ChunkRef> = (0..1000u32)
        .map(|i| ChunkRef(ChunkId::from_bytes([(i % 251) as u8; 32]), max))
        .collect();
    let req = CommitRequest {
        pages: Vec::new(),
        chunks,
        size: 1000 * MAX_CHUNK_PLAINTEXT as u64,
        ..user
            .commit_req(srv, &dev, "big.bin", b"x", &empty(), T0)
            .await
    };
    let r = srv.post(UPLOAD, tok, &req).await;
    r.expect_error(409, "missing_chunks");
}

on_every_backend!(oversized_json_is_refused => oversized_json_scenario);

/// `POST /api/v1/files/manifests` returns many manifests in one request, in order, and
/// refuses files of another namespace like missing ones.
async fn manifests_scenario(srv: &Server) {
    let (alice, dev) = account(srv, "mani", "laptop").await;
    let mut wanted = Vec::new();
    for i in 0..3 {
        let (path, data) = (format!("m{i}.txt"), format!("content {i}"));
        let r = alice.create(srv, &dev, &path, data.as_bytes()).await;
        wanted.push((r.head.file_id, r.head.version));
    }
    let body = json!({"namespace": alice.namespace, "files": wanted});
    let got: Vec<Manifest> = srv.post_json(MANIFESTS, Some(&dev.token), &body).await;
    assert_eq!(got.len(), 3);
    for (m, (id, v)) in got.iter().zip(&wanted) {
        assert_eq!((m.meta.file_id, m.meta.version), (*id, *v));
        assert_eq!(m.chunks.len(), 1);
        assert_eq!(*m, download(srv, &dev, *id).await);
    }
    // An old version of a file that was since edited and renamed, asked twice and out
    // of order: its own content, the file's current path (as `files/download` says).
    let first = wanted[0];
    let r = alice
        .commit(srv, &dev, "m0.txt", b"edited", &got[0].meta.vv, T0 + 1)
        .await;
    alice.rename(srv, &dev, "m0.txt", "renamed.txt").await;
    let asked = [first, wanted[2], (r.head.file_id, r.head.version), first];
    let body = json!({"namespace": alice.namespace, "files": asked});
    let again: Vec<Manifest> = srv.post_json(MANIFESTS, Some(&dev.token), &body).await;
    let pairs: Vec<_> = again
        .iter()
        .map(|m| (m.meta.file_id, m.meta.version))
        .collect();
    assert_eq!(pairs, asked);
    assert_eq!(
        again[0].chunks, got[0].chunks,
        "the old version's own chunks"
    );
    assert_eq!(again[0].meta.content_hash, got[0].meta.content_hash);
    assert_ne!(again[2].chunks, got[0].chunks);
    assert_eq!(again[0].meta.path.as_str(), "renamed.txt");
    assert_eq!(again[0], again[3]);
    let (bob, bdev) = account(srv, "mani", "phone").await;
    for ns in [bob.namespace, alice.namespace] {
        let body = json!({"namespace": ns, "files": [wanted[0]]});
        srv.post(MANIFESTS, Some(&bdev.token), &body)
            .await
            .not_found();
    }
}

on_every_backend!(manifests_in_one_request => manifests_scenario);
