//! Writes the seed inputs of every target into `fuzz/seeds/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//! Seeds are small valid (and a few nearly valid) inputs the fuzzer mutates from.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use fsync_common::batch;
use fsync_common::wire::{
    Change, ChangesQuery, ChangesResponse, ChunkIdsRequest, ClientMessage, CommitRequest,
    CommitResponse, DeleteRequest, DeviceInfo, FileMeta, HealthResponse, KdfParams, ListQuery,
    ListResponse, LoginRequest, LoginResponse, Manifest, ManifestsRequest, MissingResponse,
    NamespaceGrant, OpResponse, PushMessage, RefreshRequest, RegisterRequest, RegisterResponse,
    RenameRequest, RestoreRequest, StoredResponse, SyncEvent, SyncEventBatch, SyncEventResponse,
    TokenResponse, VersionInfo,
};
use fsync_common::{ChunkId, DeviceId, ErrorBody, UserId};
use fsync_server::TokenService;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sha2::Sha256;

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&d).expect("create seed dir");
    d
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(dir(target).join(name), bytes).expect("write seed");
}

fn text(len: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog. "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn blobs() {
    let codec = fsync_fuzz::codec();
    let cases: [(&str, Vec<u8>); 5] = [
        ("empty", Vec::new()),
        ("hello", b"hello, world".to_vec()),
        ("text-compressed", text(1000)),
        ("random-raw", fsync_fuzz::noise(7, 20_000)),
        ("text-probed", text(40_000)),
    ];
    for (name, plain) in &cases {
        let id = codec.chunk_id(plain);
        let blob = codec.encode(&id, plain).expect("encode");
        assert_eq!(&codec.decode(&id, &blob).expect("decode"), plain);
        write(
            "blob_decode",
            name,
            &[id.as_bytes().as_slice(), &blob].concat(),
        );
    }
    write(
        "blob_decode",
        "bad-magic",
        &[[0u8; 32].as_slice(), b"FSB2\x01\x00", &[0; 40]].concat(),
    );

    let sealed = |name: &str, flags: u8, max: u16, payload: &[u8]| {
        write(
            "blob_sealed",
            name,
            &[&[flags][..], &max.to_be_bytes(), payload].concat(),
        );
    };
    let t = text(3000);
    sealed("raw", 0, 4096, &t);
    sealed("raw-too-large", 0, 100, &t);
    sealed(
        "zstd-declared",
        1,
        4096,
        &zstd::bulk::compress(&t, 3).expect("zstd"),
    );
    sealed(
        "zstd-over-bound",
        1,
        1000,
        &zstd::bulk::compress(&t, 3).expect("zstd"),
    );
    let mut streamed = Vec::new();
    let mut enc = zstd::stream::write::Encoder::new(&mut streamed, 1).expect("zstd");
    enc.include_contentsize(false).expect("zstd");
    std::io::Write::write_all(&mut enc, &t).expect("zstd");
    enc.finish().expect("zstd");
    sealed("zstd-streamed", 1, 4096, &streamed);
    let two = [
        zstd::bulk::compress(b"abc", 1).expect("zstd"),
        zstd::bulk::compress(b"def", 1).expect("zstd"),
    ]
    .concat();
    sealed("zstd-two-frames", 1, 4096, &two);
    // A skippable frame (magic 0x184D2A50, 4-byte length) before a real one.
    let skippable = [
        &[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3][..],
        &zstd::bulk::compress(b"x", 1).expect("zstd"),
    ]
    .concat();
    sealed("zstd-skippable", 1, 4096, &skippable);
    sealed("unknown-flags", 2, 4096, b"payload");

    for (name, shape, level, data) in [
        ("plain", 0u8, 3u8, text(500)),
        ("repeated-probed", 3, 3, text(500)),
        ("noise-raw", 0b0111, 3, text(400)),
        ("noise-head", 0b1011, 1, text(300)),
        ("noise-alternating", 0b1111, 5, text(300)),
    ] {
        write(
            "blob_round_trip",
            name,
            &[&[shape, level][..], &data].concat(),
        );
    }
}

fn parses<T: DeserializeOwned>(v: &Value) -> bool {
    serde_json::from_value::<T>(v.clone()).is_ok()
}

fn wire() {
    let ns = "01".repeat(16);
    let file = "02".repeat(16);
    let dev = "03".repeat(8);
    let user = "04".repeat(16);
    let chunk = "05".repeat(32);
    let hash = "06".repeat(32);
    let vv = json!({ dev.clone(): 2, "0a".repeat(8): 1 });
    let kdf = json!({"kdf": "argon2id", "m_kib": 65536, "t": 3, "p": 1, "salt": "07".repeat(16)});
    let meta = json!({
        "file_id": file, "namespace": ns, "path": "docs/report.txt", "version": 3, "vv": vv,
        "size": 10, "mtime": 1_700_000_000_000_000_000i64, "mode": 420,
        "content_hash": hash, "deleted": false, "device": dev, "seq": 9
    });
    let commit = json!({
        "namespace": ns, "path": "docs/report.txt", "base": vv, "chunks": [[chunk, 10]],
        "size": 10, "mtime": 5, "mode": 420, "content_hash": hash, "idempotency_key": "k1"
    });
    let delete = json!({"namespace": ns, "path": "a/b", "base": vv, "idempotency_key": "k2"});
    let rename = json!({"namespace": ns, "from": "a", "to": "b/c", "idempotency_key": "k3"});
    let mut create = commit.clone();
    create["type"] = "create".into();
    let mut del_ev = delete.clone();
    del_ev["type"] = "delete".into();
    let commit_resp = json!({"outcome": "conflict_won", "head": meta, "conflict_copy": meta});
    let error =
        json!({"error": {"code": "missing_chunks", "message": "upload first", "missing": [chunk]}});
    let op = json!({"files": [meta], "outcome": "kept_modified"});
    let samples: Vec<(u8, &str, Value)> = vec![
        (0, "kdf_params", kdf.clone()),
        (
            1,
            "register",
            json!({"username": "alice", "email": "a@example.com", "password": "08".repeat(32), "kdf": kdf, "wrapped_account_key": "09".repeat(73), "wrapped_namespace_key": "0a".repeat(73)}),
        ),
        (
            2,
            "login",
            json!({"username": "alice", "password": "08".repeat(32), "device_name": "laptop", "device_id": dev}),
        ),
        (3, "refresh", json!({"refresh_token": "0b".repeat(32)})),
        (4, "chunk_ids", json!({"namespace": ns, "ids": [chunk]})),
        (5, "commit", commit),
        (6, "file_meta", meta.clone()),
        (
            7,
            "manifest",
            json!({"meta": meta, "chunks": [[chunk, 10]]}),
        ),
        (
            8,
            "manifests",
            json!({"namespace": ns, "files": [[file, 3]]}),
        ),
        (9, "restore", json!({"version": 2})),
        (10, "delete", delete),
        (11, "rename", rename.clone()),
        (12, "sync_event", create.clone()),
        (
            13,
            "sync_event_batch",
            json!({"events": [create, del_ev, {"type": "rename", "namespace": ns, "from": "a", "to": "b", "idempotency_key": "k"}]}),
        ),
        (
            14,
            "list_query",
            json!({"namespace": ns, "prefix": "docs", "include_deleted": true, "after": "a", "limit": 10}),
        ),
        (
            15,
            "changes_query",
            json!({"namespace": ns, "since": 4, "limit": 100}),
        ),
        (
            16,
            "change",
            json!({"seq": 9, "file": meta, "old_path": "old/name.txt"}),
        ),
        (17, "commit_response", commit_resp.clone()),
        (
            18,
            "sync_event_response",
            json!({"results": [{"status": "committed", "outcome": "fast_forward", "head": meta, "conflict_copy": null}, {"status": "failed", "error": error["error"]}, {"status": "applied", "files": [], "outcome": null}]}),
        ),
        (
            19,
            "changes_response",
            json!({"changes": [{"seq": 9, "file": meta, "old_path": null}], "cursor": 9, "has_more": false}),
        ),
        (
            20,
            "list_response",
            json!({"files": [meta], "next": "docs/report.txt"}),
        ),
        (
            21,
            "login_response",
            json!({"access_token": "a.b.c", "token_type": "bearer", "expires_in": 900, "refresh_token": "r", "device_id": dev, "user_id": user, "wrapped_account_key": "09", "namespaces": [{"id": ns, "role": "owner", "wrapped_key": "0a"}]}),
        ),
        (22, "op_response", op),
        (
            23,
            "version_info",
            json!({"version": 1, "vv": vv, "path": "a", "size": 0, "mtime": 0, "device": dev, "created_at": 1, "deleted": true, "content_hash": null}),
        ),
        (
            24,
            "push_message",
            json!({"type": "changed", "namespace": ns, "seq": 3}),
        ),
        (
            25,
            "client_message",
            json!({"type": "auth", "token": "a.b.c"}),
        ),
        (26, "error_body", error),
        (27, "missing_response", json!({"missing": [chunk]})),
        (
            28,
            "token_response",
            json!({"access_token": "a", "token_type": "bearer", "expires_in": 900, "refresh_token": "r"}),
        ),
        (
            29,
            "device_info",
            json!({"id": dev, "name": "laptop", "created_at": 1, "last_seen": 2, "revoked": false}),
        ),
        (
            30,
            "namespace_grant",
            json!({"id": ns, "role": "viewer", "wrapped_key": "0a"}),
        ),
        (
            31,
            "health",
            json!({"status": "ok", "database": "ok", "blob_store": "ok", "version": "0.1.0"}),
        ),
        (32, "stored", json!({"stored": 1, "existing": 2})),
        (
            33,
            "register_response",
            json!({"user_id": user, "namespace_id": ns}),
        ),
    ];
    for (selector, name, value) in samples {
        let ok = match selector {
            0 => parses::<KdfParams>(&value),
            1 => parses::<RegisterRequest>(&value),
            2 => parses::<LoginRequest>(&value),
            3 => parses::<RefreshRequest>(&value),
            4 => parses::<ChunkIdsRequest>(&value),
            5 => parses::<CommitRequest>(&value),
            6 => parses::<FileMeta>(&value),
            7 => parses::<Manifest>(&value),
            8 => parses::<ManifestsRequest>(&value),
            9 => parses::<RestoreRequest>(&value),
            10 => parses::<DeleteRequest>(&value),
            11 => parses::<RenameRequest>(&value),
            12 => parses::<SyncEvent>(&value),
            13 => parses::<SyncEventBatch>(&value),
            14 => parses::<ListQuery>(&value),
            15 => parses::<ChangesQuery>(&value),
            16 => parses::<Change>(&value),
            17 => parses::<CommitResponse>(&value),
            18 => parses::<SyncEventResponse>(&value),
            19 => parses::<ChangesResponse>(&value),
            20 => parses::<ListResponse>(&value),
            21 => parses::<LoginResponse>(&value),
            22 => parses::<OpResponse>(&value),
            23 => parses::<VersionInfo>(&value),
            24 => parses::<PushMessage>(&value),
            25 => parses::<ClientMessage>(&value),
            26 => parses::<ErrorBody>(&value),
            27 => parses::<MissingResponse>(&value),
            28 => parses::<TokenResponse>(&value),
            29 => parses::<DeviceInfo>(&value),
            30 => parses::<NamespaceGrant>(&value),
            31 => parses::<HealthResponse>(&value),
            32 => parses::<StoredResponse>(&value),
            _ => parses::<RegisterResponse>(&value),
        };
        assert!(ok, "seed {name} does not parse");
        let json = serde_json::to_vec(&value).expect("json");
        write(
            "wire_json",
            &format!("{selector:02}-{name}"),
            &[&[selector][..], &json].concat(),
        );
    }
}

fn paths() {
    for (i, p) in [
        "a",
        "docs/report.txt",
        "cafe\u{301}/r\u{e9}sum\u{e9}.txt",
        "\u{dc}n\u{ef}c\u{f6}d\u{e9}/\u{30d5}\u{30a1}\u{30a4}\u{30eb}",
        ".hidden/..x/x..",
        "../etc/passwd",
        "/abs/olute",
        "C:/Windows",
        "a//b/",
        "a\\b",
        "tab\there",
        "CON/nul.txt/com1 /a:b",
        "x".repeat(255).as_str(),
        vec!["y".repeat(200); 20].join("/").as_str(),
    ]
    .iter()
    .enumerate()
    {
        write("sync_path", &format!("{i:02}"), p.as_bytes());
    }
}

fn version_vectors() {
    let d = |n: u8| DeviceId::from_bytes([n; 8]).to_hex();
    let json = json!([{d(1): 3, d(2): 1}, {d(1): 2, d(3): 5}, {d(2): 0, d(4): u64::MAX}]);
    write(
        "version_vector",
        "json",
        &[&[0u8][..], &serde_json::to_vec(&json).expect("json")].concat(),
    );
    write("version_vector", "json-bad-id", b"\x00[{\"XYZ\":1}]");
    let mut bin = vec![1u8];
    for (v, dev, c) in [
        (0u8, 1u8, 3u64),
        (0, 2, 1),
        (1, 1, 2),
        (1, 3, 5),
        (2, 2, 0),
        (2, 4, u64::MAX),
        (2, 4, 7),
    ] {
        bin.extend_from_slice(&[v, dev]);
        bin.extend_from_slice(&c.to_be_bytes());
    }
    write("version_vector", "binary", &bin);
}

fn tokens() {
    let svc = TokenService::new(fsync_fuzz::TOKEN_SECRET);
    let user = UserId::from_bytes([1; 16]);
    let device = DeviceId::from_bytes([2; 8]);
    // Issued long ago: verification must refuse it as expired.
    let old = svc.issue(user, device, 1_000_000);
    write(
        "token",
        "issued-expired",
        &[&[0u8][..], old.as_bytes()].concat(),
    );
    write("token", "garbage", b"\x00a.b.c");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#)
    );
    write("token", "alg-none", &[&[0u8][..], none.as_bytes()].concat());
    let claims = format!(
        r#"{{"sub":"{}","device":"{}","iat":0,"exp":99999999999}}"#,
        user.to_hex(),
        device.to_hex()
    );
    for (name, header) in [
        ("signed-hs256", r#"{"alg":"HS256","typ":"JWT"}"#),
        ("signed-hs512", r#"{"alg":"HS512","typ":"JWT"}"#),
        ("signed-none", r#"{"alg":"none"}"#),
    ] {
        write(
            "token",
            name,
            &[&[1u8][..], header.as_bytes(), &[0xff], claims.as_bytes()].concat(),
        );
    }
    write(
        "token",
        "signed-expired",
        &[&[1u8][..], br#"{"sub":"01","device":"02","iat":0,"exp":1}"#].concat(),
    );
    // Keeps the HMAC crate in step with the target's (same key, same construction).
    let _ = Hmac::<Sha256>::new_from_slice(fsync_fuzz::TOKEN_SECRET).expect("any key");
}

fn batches() {
    let a = ChunkId::from_bytes([1; 32]);
    let b = ChunkId::from_bytes([2; 32]);
    let body = batch::encode([(&a, &b"hello"[..]), (&b, &b""[..])]);
    write(
        "batch_decode",
        "two-entries",
        &[&[0u8, 64][..], &body].concat(),
    );
    write(
        "batch_decode",
        "truncated",
        &[&[0u8, 64][..], &body[..body.len() - 3]].concat(),
    );
    write(
        "batch_decode",
        "too-large",
        &[&[0u8, 4][..], &body].concat(),
    );
    write("batch_decode", "header-only", b"\x00\x40FSBT\x01");
}

/// Packs of 0, 1 and 3 real blobs, and a torn one.
fn packs() {
    let codec = fsync_fuzz::codec();
    for (name, n) in [("empty", 0), ("one", 1), ("three", 3)] {
        let mut b = fsync_store::pack::PackBuilder::default();
        for i in 0..n {
            let plain = text(100 + 50 * i);
            let id = codec.chunk_id(&plain);
            b.push(id, &codec.encode(&id, &plain).expect("encode"));
        }
        let (pack, _) = b.finish();
        fsync_store::pack::verify(&pack).expect("a valid pack");
        if n == 3 {
            write("pack_parse", "torn", &pack[..pack.len() - 9]);
        }
        write("pack_parse", name, &pack);
    }
}

fn main() {
    blobs();
    packs();
    wire();
    paths();
    version_vectors();
    tokens();
    batches();
    println!(
        "seeds written to {}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .display()
    );
}
