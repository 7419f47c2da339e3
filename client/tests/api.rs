//! The API client against a real server (in-process, SQLite, 127.0.0.1:0), plus a few
//! canned-answer servers for the failures a real server does not produce on demand.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use fsync_client::api::{ApiClient, ClientError};
use fsync_common::limits::{MAX_BATCH_BODY, MAX_EVENTS_PER_BATCH, MAX_IDS_PER_REQUEST};
use fsync_common::wire::{
    ChunkRef, CommitOutcome, CommitRequest, DeleteRequest, PushMessage, RenameRequest, SyncEvent,
    SyncEventResult,
};
use fsync_common::{
    batch, ChunkId, ContentHash, ErrorCode, NamespaceId, Seq, SyncPath, VersionNo, VersionVector,
};
use fsync_server::AppState;
use fsync_store::BlobCodec;
use fsync_testkit::keys::{derive, NewAccount};
use fsync_testkit::server::{Database, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const SECRET: &str = "client-api-test-secret-0123456789abcdef";
/// How long any awaited event may take before the test fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- harness

/// The kit's in-process server, on SQLite in a temp dir.
struct Server {
    inner: TestServer,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut AppState)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inner = TestServer::start(dir.path(), SECRET, Database::Sqlite, &[], tweak)
            .await
            .unwrap();
        Self { inner, _dir: dir }
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(&self.inner.url, None).unwrap()
    }
}

/// An account registered the way a real client does it.
struct Account {
    username: String,
    auth_key: String,
    namespace: NamespaceId,
    codec: BlobCodec,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 4]>()))
}

async fn register(client: &ApiClient, username: &str) -> Account {
    // A new account: the client picks the parameters (a fresh salt).
    let new = NewAccount::new(username, &format!("pw of {username}")).await;
    let r = client.register(&new.request).await.unwrap();
    Account {
        username: username.to_owned(),
        auth_key: new.request.password.clone(),
        namespace: r.namespace_id,
        codec: new.codec(),
    }
}

/// A registered account and a client logged in as it.
async fn logged_in(srv: &Server, prefix: &str) -> (ApiClient, Account) {
    let client = srv.client();
    let acct = register(&client, &unique(prefix)).await;
    client
        .login(&acct.username, &acct.auth_key, "laptop", None)
        .await
        .unwrap();
    (client, acct)
}

impl Account {
    fn blob(&self, data: &[u8]) -> (ChunkId, Vec<u8>) {
        let id = self.codec.chunk_id(data);
        (id, self.codec.encode(&id, data).unwrap())
    }

    fn commit_req(&self, path: &str, data: &[u8], base: &VersionVector) -> CommitRequest {
        CommitRequest {
            pages: Vec::new(),
            namespace: self.namespace,
            path: SyncPath::new(path).unwrap(),
            base: base.clone(),
            chunks: vec![ChunkRef(self.codec.chunk_id(data), data.len() as u32)],
            size: data.len() as u64,
            mtime: 1_700_000_000_000_000_000,
            mode: 0o644,
            content_hash: ContentHash::from_bytes(*self.codec.chunk_id(data).as_bytes()),
            idempotency_key: hex::encode(rand::random::<[u8; 12]>()),
        }
    }

    /// Uploads `data` as one chunk and commits it at `path` from an empty base.
    async fn put_file(
        &self,
        client: &ApiClient,
        path: &str,
        data: &[u8],
    ) -> fsync_common::wire::CommitResponse {
        let (id, blob) = self.blob(data);
        client.put_chunk(self.namespace, id, blob).await.unwrap();
        client
            .commit(&self.commit_req(path, data, &VersionVector::new()))
            .await
            .unwrap()
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for chunk in v.chunks_mut(32) {
        let r: [u8; 32] = rand::random();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    v
}

/// The next push that is not a heartbeat.
async fn next_change(rx: &mut mpsc::Receiver<PushMessage>) -> (NamespaceId, Seq) {
    loop {
        let m = tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
            .await
            .expect("a push within the timeout")
            .expect("the push socket stays open");
        if let PushMessage::Changed { namespace, seq } = m {
            return (namespace, seq);
        }
    }
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../server/tests/fixtures")
        .join(name)
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn register_login_and_unwrap_the_keys_from_the_login_answer() {
    let srv = Server::start().await;
    let client = srv.client();
    let name = unique("alice");
    let acct = register(&client, &name).await;

    // A new device knows only the username and password.
    let params = client.auth_params(&name).await.unwrap();
    let master = derive(&format!("pw of {name}"), &params).await;
    let login = client
        .login(&name, &master.auth_key().to_hex(), "phone", None)
        .await
        .unwrap();
    let account_key = master
        .kek()
        .unwrap(&hex::decode(&login.wrapped_account_key).unwrap())
        .unwrap();
    assert_eq!(login.namespaces.len(), 1);
    assert_eq!(login.namespaces[0].id, acct.namespace);
    let keys = account_key
        .unwrap_namespace_key(&hex::decode(&login.namespaces[0].wrapped_key).unwrap())
        .unwrap()
        .derive();
    let codec = BlobCodec::new(&keys);

    // The unwrapped key decodes what the registering device encoded.
    let (id, blob) = acct.blob(b"a secret note");
    assert_eq!(codec.chunk_id(b"a secret note"), id);
    assert_eq!(codec.decode(&id, &blob).unwrap(), b"a secret note");

    let devices = client.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].id, login.device_id);
    assert_eq!(devices[0].name, "phone");
}

#[tokio::test]
async fn a_wrong_auth_key_is_unauthorized_and_not_retryable() {
    let srv = Server::start().await;
    let client = srv.client();
    let acct = register(&client, &unique("bob")).await;
    let err = client
        .login(&acct.username, &"00".repeat(32), "laptop", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    assert!(!err.is_retryable());
    // Nothing remembered: authenticated calls are refused without a request.
    let err = client.devices().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn an_invalid_access_token_is_renewed_with_the_refresh_token_which_is_persisted() {
    let srv = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("state/refresh.token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    let client = srv.client().with_token_file(token_file.clone());
    let acct = register(&client, &unique("carol")).await;
    let login = client
        .login(&acct.username, &acct.auth_key, "laptop", None)
        .await
        .unwrap();
    let first = ApiClient::read_token_file(&token_file).unwrap().unwrap();
    assert_eq!(first, login.refresh_token);
    #[cfg(unix)]
    assert_eq!(mode_of(&token_file), 0o600);

    client.set_access_token_for_test("not-a-jwt").await;
    let devices = client.devices().await.unwrap();
    assert_eq!(devices.len(), 1);

    let second = ApiClient::read_token_file(&token_file).unwrap().unwrap();
    assert_ne!(second, first, "the refresh token rotated and was persisted");
    #[cfg(unix)]
    assert_eq!(mode_of(&token_file), 0o600);
    // No temp files are left behind.
    let names: Vec<_> = std::fs::read_dir(token_file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("refresh.token")]);

    // The persisted token opens a session without the password; the old one is spent
    // (presented now, it is a reuse).
    let other = srv.client();
    other.resume(&second).await.unwrap();
    assert_eq!(other.devices().await.unwrap().len(), 1);
    let err = srv.client().resume(&first).await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn a_refused_refresh_token_falls_back_to_logging_in_again_as_the_same_device() {
    let srv = Server::start().await;
    let (client, _acct) = logged_in(&srv, "dave").await;
    let device = client.devices().await.unwrap()[0].id;

    client.set_access_token_for_test("expired").await;
    client.set_refresh_token_for_test("revoked").await;
    let devices = client.devices().await.unwrap();
    assert_eq!(devices.len(), 1, "no new device was registered");
    assert_eq!(devices[0].id, device);
}

/// A stolen copy of the refresh token is used first: when the legitimate client then
/// renews with its own (now rotated-out) copy, the server revokes the whole login, the
/// thief's session with it, and the client recovers by logging in again.
#[tokio::test]
async fn a_reused_refresh_token_revokes_the_login_and_the_client_logs_in_again() {
    let srv = Server::start_with(|s| s.limits.refresh_retry_grace = Duration::ZERO).await;
    let client = srv.client();
    let acct = register(&client, &unique("gina")).await;
    let login = client
        .login(&acct.username, &acct.auth_key, "laptop", None)
        .await
        .unwrap();
    let thief = srv.client();
    thief.resume(&login.refresh_token).await.unwrap();
    assert_eq!(thief.devices().await.unwrap().len(), 1);

    client.set_access_token_for_test("expired").await;
    let devices = client.devices().await.unwrap();
    assert_eq!(devices.len(), 1, "the same device logged in again");
    assert_eq!(devices[0].id, login.device_id);
    thief.set_access_token_for_test("expired").await;
    let err = thief.devices().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn without_credentials_a_refused_session_is_unauthorized() {
    let srv = Server::start().await;
    let helper = srv.client();
    let acct = register(&helper, &unique("erin")).await;
    let login = helper
        .login(&acct.username, &acct.auth_key, "laptop", None)
        .await
        .unwrap();
    // A restarted daemon resumes by refresh token: it has no password to fall back on.
    let client = srv.client();
    client.resume(&login.refresh_token).await.unwrap();
    assert_eq!(client.devices().await.unwrap().len(), 1);
    client.set_access_token_for_test("expired").await;
    client.set_refresh_token_for_test("revoked").await;
    let err = client.devices().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn concurrent_refusals_renew_the_session_once() {
    let srv = Server::start().await;
    let (client, _acct) = logged_in(&srv, "frank").await;
    client.set_access_token_for_test("stale").await;
    let before = client.stats().requests;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.devices().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // At most: 8 refused + 1 refresh + 8 retries. A second refresh (or a login) would
    // need more.
    let sent = client.stats().requests - before;
    assert!(sent <= 17, "{sent} requests");
}

#[tokio::test]
async fn logout_ends_the_session_and_deletes_the_token_file() {
    let srv = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("refresh.token");
    let client = srv.client().with_token_file(token_file.clone());
    let acct = register(&client, &unique("gina")).await;
    client
        .login(&acct.username, &acct.auth_key, "laptop", None)
        .await
        .unwrap();
    // Logout after a renewal sends the current (rotated) refresh token.
    client.set_access_token_for_test("stale").await;
    let refresh = ApiClient::read_token_file(&token_file).unwrap().unwrap();
    client.logout().await.unwrap();
    assert!(!token_file.exists());
    assert!(!client.has_session().await);
    let other = srv.client();
    let err = other.resume(&refresh).await;
    // `refresh` was rotated by the renewal inside logout or revoked by logout: either
    // way it is dead, and so is the rotated one.
    assert!(matches!(err, Err(ClientError::Unauthorized(_))), "{err:?}");
    let err = client.devices().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
}

// ---------------------------------------------------------------- chunks

#[tokio::test]
async fn chunks_round_trip_single_and_batched() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "hank").await;
    let ns = acct.namespace;
    let datas: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("chunk number {i} ").repeat(100 + i).into_bytes())
        .collect();
    let blobs: Vec<(ChunkId, Vec<u8>)> = datas.iter().map(|d| acct.blob(d)).collect();
    let ids: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();

    assert_eq!(client.missing(ns, &ids).await.unwrap(), ids);
    client
        .put_chunk(ns, blobs[0].0, blobs[0].1.clone())
        .await
        .unwrap();
    client.put_batch(ns, &blobs[1..]).await.unwrap();
    // Idempotent.
    client.put_batch(ns, &blobs[1..3]).await.unwrap();
    assert!(client.missing(ns, &ids).await.unwrap().is_empty());

    let got = client.get_chunk(ns, ids[2]).await.unwrap();
    assert_eq!(acct.codec.decode(&ids[2], &got).unwrap(), datas[2]);

    // Absent ids are left out; duplicates are asked once; order follows the request.
    let absent = ChunkId::from_bytes([9; 32]);
    let ask = vec![ids[4], absent, ids[0], ids[4], ids[3]];
    let fetched = client.fetch_batch(ns, &ask).await.unwrap();
    let order: Vec<ChunkId> = fetched.iter().map(|(id, _)| *id).collect();
    assert_eq!(order, vec![ids[4], ids[0], ids[3]]);
    for (id, blob) in &fetched {
        let i = ids.iter().position(|x| x == id).unwrap();
        assert_eq!(acct.codec.decode(id, blob).unwrap(), datas[i]);
    }

    let err = client.get_chunk(ns, absent).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn missing_splits_requests_over_the_id_limit() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "ivan").await;
    let ids: Vec<ChunkId> = (0..12_000u32)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            ChunkId::from_bytes(b)
        })
        .collect();
    assert!(ids.len() > MAX_IDS_PER_REQUEST);
    let before = client.stats().requests;
    let missing = client.missing(acct.namespace, &ids).await.unwrap();
    assert_eq!(missing.len(), ids.len());
    assert_eq!(client.stats().requests - before, 2);
}

#[tokio::test]
async fn large_batches_are_split_on_upload_and_resumed_on_download() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "judy").await;
    let ns = acct.namespace;
    // Incompressible chunks of 4 MiB, one more than one batch body holds.
    let n = MAX_BATCH_BODY / (4 << 20) + 1;
    let datas: Vec<Vec<u8>> = (0..n).map(|_| random_bytes(4 * 1024 * 1024)).collect();
    let blobs: Vec<(ChunkId, Vec<u8>)> = datas.iter().map(|d| acct.blob(d)).collect();
    let ids: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();

    let before = client.stats();
    client.put_batch(ns, &blobs).await.unwrap();
    let after = client.stats();
    assert_eq!(after.requests - before.requests, 2);
    let total: usize = blobs.iter().map(|(_, b)| b.len()).sum();
    assert!(after.bytes_up - before.bytes_up >= total as u64);
    assert!(client.missing(ns, &ids).await.unwrap().is_empty());

    let before = client.stats();
    let fetched = client.fetch_batch(ns, &ids).await.unwrap();
    let after = client.stats();
    assert_eq!(fetched.len(), n);
    assert!(
        after.requests - before.requests >= 2,
        "the server cut the answer"
    );
    assert!(after.bytes_down - before.bytes_down >= total as u64);
    for ((id, blob), data) in fetched.iter().zip(&datas) {
        assert_eq!(&acct.codec.decode(id, blob).unwrap(), data);
    }
}

// ---------------------------------------------------------------- files and sync

#[tokio::test]
async fn commit_names_the_missing_chunks_then_succeeds() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "kim").await;
    let data = b"first version of the file".to_vec();
    let req = acct.commit_req("docs/a.txt", &data, &VersionVector::new());
    let err = client.commit(&req).await.unwrap_err();
    let (id, blob) = acct.blob(&data);
    match &err {
        ClientError::MissingChunks(ids) => assert_eq!(ids, &vec![id]),
        other => panic!("expected MissingChunks, got {other:?}"),
    }
    assert!(!err.is_retryable());

    client.put_chunk(acct.namespace, id, blob).await.unwrap();
    let r = client.commit(&req).await.unwrap();
    assert_eq!(r.outcome, CommitOutcome::FastForward);
    assert_eq!(r.head.path.as_str(), "docs/a.txt");
    // A retry with the same idempotency key gets the first answer again.
    let again = client.commit(&req).await.unwrap();
    assert_eq!(again.head.file_id, r.head.file_id);
}

#[tokio::test]
async fn events_are_answered_in_order_and_split_into_batches() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "leo").await;
    let ns = acct.namespace;
    let data = b"event data".to_vec();
    let (id, blob) = acct.blob(&data);
    client.put_chunk(ns, id, blob).await.unwrap();
    let key = || hex::encode(rand::random::<[u8; 12]>());

    let mut events = vec![
        SyncEvent::Create(acct.commit_req("a.txt", &data, &VersionVector::new())),
        SyncEvent::Create(acct.commit_req("b.txt", b"never uploaded", &VersionVector::new())),
        SyncEvent::Rename(RenameRequest {
            namespace: ns,
            from: SyncPath::new("a.txt").unwrap(),
            to: SyncPath::new("c.txt").unwrap(),
            idempotency_key: key(),
        }),
    ];
    // Enough failing renames to need a second batch.
    for i in 0..MAX_EVENTS_PER_BATCH {
        events.push(SyncEvent::Rename(RenameRequest {
            namespace: ns,
            from: SyncPath::new(&format!("nowhere/{i}")).unwrap(),
            to: SyncPath::new(&format!("elsewhere/{i}")).unwrap(),
            idempotency_key: key(),
        }));
    }
    let n = events.len();
    let before = client.stats().requests;
    let results = client.events(events).await.unwrap();
    assert_eq!(client.stats().requests - before, 2);
    assert_eq!(results.len(), n);
    assert!(
        matches!(&results[0], SyncEventResult::Committed(c) if c.head.path.as_str() == "a.txt")
    );
    assert!(
        matches!(&results[1], SyncEventResult::Failed(e) if e.error.code == ErrorCode::MissingChunks)
    );
    assert!(
        matches!(&results[2], SyncEventResult::Applied(op) if op.files[0].path.as_str() == "c.txt")
    );
    assert!(results[3..]
        .iter()
        .all(|r| matches!(r, SyncEventResult::Failed(_))));
}

#[tokio::test]
async fn changes_are_paged_by_cursor() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "mia").await;
    for i in 0..5 {
        acct.put_file(
            &client,
            &format!("f{i}.txt"),
            format!("file {i}").as_bytes(),
        )
        .await;
    }
    let mut since = Seq(0);
    let mut paths = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.changes(acct.namespace, since, 2).await.unwrap();
        pages += 1;
        assert!(page.changes.len() <= 2);
        assert!(page.cursor > since || page.changes.is_empty());
        paths.extend(page.changes.iter().map(|c| c.file.path.to_string()));
        since = page.cursor;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paths, ["f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt"]);
    let tail = client.changes(acct.namespace, since, 2).await.unwrap();
    assert!(tail.changes.is_empty() && !tail.has_more);
    assert_eq!(tail.cursor, since);
}

#[tokio::test]
async fn list_all_follows_pages_and_filters() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "ned").await;
    let mut heads = Vec::new();
    for p in ["a/1.txt", "a/2.txt", "a/3.txt", "b/1.txt", "c.txt"] {
        heads.push(acct.put_file(&client, p, p.as_bytes()).await.head);
    }
    client
        .delete(&DeleteRequest {
            namespace: acct.namespace,
            path: SyncPath::new("c.txt").unwrap(),
            base: heads[4].vv.clone(),
            idempotency_key: "del-c".into(),
        })
        .await
        .unwrap();

    let client = client.with_page_size(2);
    let before = client.stats().requests;
    let all = client.list_all(acct.namespace, None, false).await.unwrap();
    let paths: Vec<&str> = all.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a/1.txt", "a/2.txt", "a/3.txt", "b/1.txt"]);
    assert!(client.stats().requests - before >= 2, "several pages");

    let with_deleted = client.list_all(acct.namespace, None, true).await.unwrap();
    assert_eq!(with_deleted.len(), 5);
    assert!(with_deleted.last().unwrap().deleted);

    let under_a = client
        .list_all(acct.namespace, Some("a"), false)
        .await
        .unwrap();
    assert_eq!(under_a.len(), 3);
}

#[tokio::test]
async fn versions_manifests_and_restore() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "olga").await;
    let v1 = acct.put_file(&client, "notes.txt", b"version one").await;
    let (id2, blob2) = acct.blob(b"version two");
    client.put_chunk(acct.namespace, id2, blob2).await.unwrap();
    let v2 = client
        .commit(&acct.commit_req("notes.txt", b"version two", &v1.head.vv))
        .await
        .unwrap();
    assert_eq!(v2.outcome, CommitOutcome::FastForward);
    let file = v1.head.file_id;

    let history = client.versions(file).await.unwrap();
    assert_eq!(history.len(), 2);
    let first = client.manifest(file, Some(VersionNo(1))).await.unwrap();
    assert_eq!(
        first.chunks,
        vec![ChunkRef(acct.codec.chunk_id(b"version one"), 11)]
    );
    let head = client.manifest(file, None).await.unwrap();
    assert_eq!(head.meta.version, v2.head.version);

    let restored = client.restore(file, VersionNo(1)).await.unwrap();
    assert!(restored.head.version > v2.head.version);
    assert_eq!(restored.head.content_hash, v1.head.content_hash);
    let manifest = client.manifest(file, None).await.unwrap();
    let fetched = client
        .fetch_batch(
            acct.namespace,
            &manifest.chunks.iter().map(ChunkRef::id).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(
        acct.codec.decode(&fetched[0].0, &fetched[0].1).unwrap(),
        b"version one"
    );

    let err = client
        .versions(fsync_common::FileId::from_bytes([7; 16]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
}

// ---------------------------------------------------------------- push

#[tokio::test]
async fn subscribe_receives_a_change_committed_by_another_device() {
    let srv = Server::start().await;
    let (laptop, acct) = logged_in(&srv, "pam").await;
    let phone = srv.client();
    phone
        .login(&acct.username, &acct.auth_key, "phone", None)
        .await
        .unwrap();

    let mut rx = laptop.subscribe().await.unwrap();
    // First, where the journal stands.
    assert_eq!(next_change(&mut rx).await, (acct.namespace, Seq(0)));

    let r = acct.put_file(&phone, "from-phone.txt", b"hello").await;
    let (ns, seq) = next_change(&mut rx).await;
    assert_eq!(ns, acct.namespace);
    assert_eq!(seq, r.head.seq);
    assert!(laptop.stats().bytes_down > 0);
}

#[tokio::test]
async fn subscribe_renews_a_refused_token() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "quinn").await;
    client.set_access_token_for_test("stale").await;
    let mut rx = client.subscribe().await.unwrap();
    assert_eq!(next_change(&mut rx).await.0, acct.namespace);
}

#[tokio::test]
async fn the_push_socket_reports_only_the_users_own_namespaces() {
    let srv = Server::start().await;
    let (mine, me) = logged_in(&srv, "rita").await;
    let (theirs, them) = logged_in(&srv, "sam").await;
    let mut rx = mine.subscribe().await.unwrap();
    assert_eq!(next_change(&mut rx).await.0, me.namespace);

    // Their commit is pushed before mine: if it leaked, it would come first.
    them.put_file(&theirs, "private.txt", b"not yours").await;
    let r = me.put_file(&mine, "mine.txt", b"yours").await;
    assert_eq!(next_change(&mut rx).await, (me.namespace, r.head.seq));
}

// ---------------------------------------------------------------- transport

#[tokio::test]
async fn a_server_that_is_down_is_a_retryable_network_error() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = ApiClient::new(&format!("http://{addr}"), None).unwrap();
    let err = client.auth_params("someone").await.unwrap_err();
    assert!(matches!(err, ClientError::Network(_)), "{err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(!text.contains("someone"), "no query in messages: {text}");
    let err = client.subscribe().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn stats_count_requests_and_body_bytes() {
    let srv = Server::start().await;
    let (client, acct) = logged_in(&srv, "tess").await;
    let data = random_bytes(100_000);
    let (id, blob) = acct.blob(&data);
    let len = blob.len() as u64;
    let s0 = client.stats();
    client.put_chunk(acct.namespace, id, blob).await.unwrap();
    let s1 = client.stats();
    assert_eq!(s1.requests - s0.requests, 1);
    assert_eq!(s1.bytes_up - s0.bytes_up, len);
    client.get_chunk(acct.namespace, id).await.unwrap();
    let s2 = client.stats();
    assert_eq!(s2.requests - s1.requests, 1);
    assert_eq!(s2.bytes_down - s1.bytes_down, len);
    assert_eq!(s2.bytes_up, s1.bytes_up);
}

#[tokio::test]
async fn rate_limited_calls_wait_for_retry_after() {
    let srv = Server::start_with(|s| {
        s.limits.api_per_user.max = 2;
        s.limits.api_per_user.window = Duration::from_secs(1);
    })
    .await;
    let (client, _acct) = logged_in(&srv, "uma").await;
    // The third call in the window is refused with Retry-After and succeeds after it.
    for _ in 0..3 {
        client.devices().await.unwrap();
    }
}

#[tokio::test]
async fn https_and_wss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = fsync_server::Config::parse_from([
        "fsync-server",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--secret-key",
        SECRET,
    ]);
    let state = fsync_server::build_state(&config).await.unwrap();
    let tls = fsync_server::load_server_config(&fixture("test-cert.pem"), &fixture("test-key.pem"))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fsync_server::run_tls(listener, tls, state, async {
        let _ = stopped.await;
    }));

    let url = format!("https://localhost:{port}");
    // Without --ca-cert only the system's roots are trusted: the test CA is not one,
    // and the refusal says what to do.
    let system_only = ApiClient::new(&url, None).unwrap();
    let err = system_only.auth_params("x").await.unwrap_err();
    assert!(matches!(err, ClientError::Certificate(_)), "{err:?}");
    assert!(!err.is_retryable(), "a refused certificate is not retried");
    assert!(err.to_string().contains("--ca-cert"), "{err}");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = ApiClient::new(&url, Some(&not_pem)).unwrap_err();
    assert!(matches!(err, ClientError::Config(_)), "{err:?}");
    let err = ApiClient::new(&url, Some(&dir.path().join("absent.pem"))).unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");

    let client = ApiClient::new(&url, Some(&fixture("ca-cert.pem"))).unwrap();
    let acct = register(&client, &unique("vera")).await;
    client
        .login(&acct.username, &acct.auth_key, "laptop", None)
        .await
        .unwrap();
    let mut rx = client.subscribe().await.unwrap();
    assert_eq!(next_change(&mut rx).await.0, acct.namespace);

    // A client that trusts another CA (here: the server's own leaf, which is no CA)
    // is refused, for good.
    let stranger = ApiClient::new(
        &format!("https://127.0.0.1:{port}"),
        Some(&fixture("test-cert.pem")),
    )
    .unwrap();
    let err = stranger.auth_params("x").await.unwrap_err();
    assert!(matches!(err, ClientError::Certificate(_)), "{err:?}");
    let _ = stop.send(());
}

#[test]
fn bad_server_urls_are_refused() {
    for url in [
        "ftp://example.org",
        "not a url",
        "http://example.org/?q=1",
        "http://user@example.org",
    ] {
        let err = ApiClient::new(url, None).unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{url}: {err:?}");
    }
    ApiClient::new("http://127.0.0.1:8000/", None).unwrap();
    ApiClient::new("http://[::1]:8000/prefix", None).unwrap();
}

// ---------------------------------------------------------------- canned answers

/// A server that answers each connection's request with the next canned response.
async fn canned(responses: Vec<Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for response in responses {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Read the head and the body (Content-Length), then answer and close.
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            loop {
                let n = sock.read(&mut tmp).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            sock.write_all(&response).await.unwrap();
            sock.shutdown().await.unwrap();
        }
    });
    format!("http://{addr}")
}

fn response(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

const PARAMS: &str =
    r#"{"kdf":"argon2id","m_kib":8,"t":1,"p":1,"salt":"00000000000000000000000000000000"}"#;

#[tokio::test]
async fn too_many_requests_is_retried_three_times_then_reported() {
    let limited = || {
        response(
            "429 Too Many Requests",
            &["Retry-After: 0"],
            br#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        )
    };
    let ok = response(
        "200 OK",
        &["Content-Type: application/json"],
        PARAMS.as_bytes(),
    );
    let url = canned(vec![limited(), limited(), limited(), ok]).await;
    let client = ApiClient::new(&url, None).unwrap();
    client.auth_params("x").await.unwrap();
    assert_eq!(client.stats().requests, 4);

    let url = canned(vec![limited(), limited(), limited(), limited()]).await;
    let client = ApiClient::new(&url, None).unwrap();
    let err = client.auth_params("x").await.unwrap_err();
    assert!(
        matches!(err, ClientError::RateLimited { retry_after: 0 }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn server_errors_without_a_body_are_retryable_api_errors() {
    let url = canned(vec![response(
        "502 Bad Gateway",
        &[],
        b"<html>proxy</html>",
    )])
    .await;
    let client = ApiClient::new(&url, None).unwrap();
    let err = client.auth_params("x").await.unwrap_err();
    match &err {
        ClientError::Api { status, body } => {
            assert_eq!(*status, 502);
            assert_eq!(body.error.code, ErrorCode::Unavailable);
        }
        other => panic!("expected Api, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert!(err.to_string().contains("502"), "{err}");

    let url = canned(vec![response("200 OK", &[], b"{not json")]).await;
    let client = ApiClient::new(&url, None).unwrap();
    let err = client.auth_params("x").await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
}

/// A client holding a session against a canned server: logs in on the first answer.
async fn canned_session(mut answers: Vec<Vec<u8>>) -> ApiClient {
    let login = serde_json::json!({
        "access_token": "a", "token_type": "bearer", "expires_in": 900,
        "refresh_token": "r", "device_id": "0102030405060708",
        "user_id": "01".repeat(16), "wrapped_account_key": "00", "namespaces": []
    });
    answers.insert(0, response("200 OK", &[], login.to_string().as_bytes()));
    let client = ApiClient::new(&canned(answers).await, None).unwrap();
    client.login("u", "k", "d", None).await.unwrap();
    client
}

#[tokio::test]
async fn fetch_batch_refuses_entries_it_did_not_ask_for_or_too_large() {
    let ns = NamespaceId::from_bytes([1; 16]);
    let asked = ChunkId::from_bytes([2; 32]);
    let other = ChunkId::from_bytes([3; 32]);

    let body = batch::encode([(&other, &b"blob"[..])]);
    let client = canned_session(vec![response("200 OK", &[], &body)]).await;
    let err = client.fetch_batch(ns, &[asked]).await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");

    let mut body = Vec::new();
    batch::encode_header(&mut body);
    body.extend_from_slice(asked.as_bytes());
    body.extend_from_slice(&u32::MAX.to_be_bytes());
    let client = canned_session(vec![response("200 OK", &[], &body)]).await;
    let err = client.fetch_batch(ns, &[asked]).await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");

    let client = canned_session(vec![response("200 OK", &[], b"garbage")]).await;
    let err = client.fetch_batch(ns, &[asked]).await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
}

#[test]
fn the_client_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    shareable::<ApiClient>();
    error::<ClientError>();
}
