//! Garbage collection (`fsync-gc`) on SQLite and PostgreSQL: retention, the sweep,
//! packs (dropped when empty, repacked when mostly dead), orphan packs and blobs, the
//! loose blobs of a store written before packs, dry runs, verify, one collection at a
//! time, and the race between a held upload's commit and a running sweep.
//!
//! PostgreSQL runs when `FSYNC_TEST_DATABASE_URL` is set (and must when `CI` is set).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fsync_common::wire::{ChunkRef, CommitRequest, DeleteRequest};
use fsync_common::PackId;
use fsync_common::{
    ChunkId, ContentHash, DeviceId, FileId, NamespaceId, SyncPath, UserId, VersionVector,
};
use fsync_server::BlobLocation;
use fsync_server::{
    open_repo, put_blobs, record_stored, store_chunks, Actor, Collector, Damage, DbError, GcError,
    GcEvent, GcHook, GcStage, MetaRepo, NewUser, NoProgress, Retention, RunOptions, RunReport,
    Stats, VerifyReport,
};
use fsync_store::{BlobStore, LocalPacks, LocalStore, PackInfo, PackStore, StoreError};
use fsync_testkit::packs::{s3_packs, HookedPacks, Hooks};
use fsync_testkit::postgres::{test_database_url, ScratchDatabase};
use futures_util::FutureExt as _;

const DAY: i64 = 86_400;
const GRACE: Duration = Duration::from_secs(DAY as u64);
/// How long an awaited event may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `f`'s output, failing the test when it takes longer than [`TIMEOUT`].
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f).await.expect("timed out")
}

// ------------------------------------------------------------------ harness

/// One database with its stores (packs, on the disk or on S3, and the loose blobs of an
/// older store) and a user with one namespace.
struct Env {
    /// `database/packs`, e.g. `postgres/s3`.
    name: String,
    url: String,
    repo: Arc<dyn MetaRepo>,
    blobs: Arc<LocalStore>,
    packs: Arc<dyn PackStore>,
    /// The packs when they are on the disk (tests that age pack files).
    local: Option<Arc<LocalPacks>>,
    /// The `fsync-gc` flags naming these stores.
    store_flags: Vec<String>,
    ns: NamespaceId,
    actor: Actor,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn collector_over(&self, packs: Arc<dyn PackStore>) -> Collector {
        Collector::open(&self.url, self.blobs.clone(), packs)
            .await
            .unwrap()
    }

    async fn collector(&self) -> Collector {
        self.collector_over(self.packs.clone()).await
    }

    /// Uploads blobs `ids` (content derived from the id) at time `now`: one pack.
    async fn upload(&self, ids: &[ChunkId], now: i64) {
        self.upload_to(self.ns, ids, now).await;
    }

    async fn upload_to(&self, ns: NamespaceId, ids: &[ChunkId], now: i64) {
        store_chunks(&*self.repo, &*self.packs, ns, blobs_of(ids), now)
            .await
            .unwrap();
    }

    /// Stores `ids` as the release before packs did: a loose blob each, recorded.
    async fn upload_loose(&self, ids: &[ChunkId], now: i64) {
        self.put_orphans(ids).await;
        let rows: Vec<_> = ids.iter().map(|id| (*id, blob_len(*id))).collect();
        self.repo.record_chunks(self.ns, &rows, now).await.unwrap();
    }

    /// Puts loose blobs of `ids` without recording them: orphans.
    async fn put_orphans(&self, ids: &[ChunkId]) {
        for id in ids {
            self.blobs.put(&self.ns, id, blob_of(*id)).await.unwrap();
        }
    }

    /// Rewrites pack `id` of the namespace as `f` changes it (a torn or flipped pack).
    async fn tamper(&self, id: PackId, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = self.packs.read_all(&self.ns, &id).await.unwrap();
        f(&mut bytes);
        self.packs.put(&self.ns, &id, bytes).await.unwrap();
    }

    /// The pack files of the namespace.
    async fn pack_files(&self) -> Vec<PackInfo> {
        self.packs.list(&self.ns, None, 10_000).await.unwrap()
    }

    /// Where the blob of `id` is recorded.
    async fn location(&self, id: ChunkId) -> Option<BlobLocation> {
        let found = self.repo.locate_chunks(self.ns, &[id]).await.unwrap();
        found.get(&id).copied()
    }

    /// Commits `ids` as the content of `path` (a new version on top of `base`).
    async fn commit(
        &self,
        path: &str,
        base: &VersionVector,
        ids: &[ChunkId],
        now: i64,
    ) -> Result<fsync_common::wire::CommitResponse, DbError> {
        let req = commit_req(self.ns, path, base, ids);
        self.repo.commit(self.actor, &req, now).await
    }

    /// Uploads and commits a new version of `path`; returns the new head's vector.
    async fn write(
        &self,
        path: &str,
        base: &VersionVector,
        ids: &[ChunkId],
        now: i64,
    ) -> (FileId, VersionVector) {
        self.upload(ids, now).await;
        let r = self.commit(path, base, ids, now).await.unwrap();
        (r.head.file_id, r.head.vv)
    }

    /// [`Env::write`] of a new file.
    async fn create(&self, path: &str, ids: &[ChunkId], now: i64) -> (FileId, VersionVector) {
        self.write(path, &VersionVector::new(), ids, now).await
    }

    async fn delete(&self, path: &str, base: &VersionVector, now: i64) {
        let req = DeleteRequest {
            namespace: self.ns,
            path: SyncPath::new(path).unwrap(),
            base: base.clone(),
            idempotency_key: key(),
        };
        self.repo.delete(self.actor, &req, now).await.unwrap();
    }

    async fn has_row(&self, id: ChunkId) -> bool {
        self.repo.has_chunk(self.ns, id).await.unwrap()
    }

    /// A loose blob of `id` is in the store.
    async fn has_blob(&self, id: ChunkId) -> bool {
        self.blobs.contains_many(&self.ns, &[id]).await.unwrap()[0]
    }

    /// The blob of `id` in `ns` can be read: where its row says, or (no row) as a
    /// loose blob. A packed blob whose row went is unreachable, whatever bytes of its
    /// pack are still on disk (those the pack passes account for).
    async fn readable_in(&self, ns: NamespaceId, id: ChunkId) -> bool {
        let found = self.repo.locate_chunks(ns, &[id]).await.unwrap();
        match found.get(&id) {
            Some(BlobLocation::Packed { pack, offset, len }) => {
                let range = *offset..offset + u64::from(*len);
                match self.packs.read(&ns, pack, range).await {
                    Ok(b) => fsync_store::check_blob_header(&b).is_ok(),
                    Err(_) => false,
                }
            }
            _ => self.blobs.contains_many(&ns, &[id]).await.unwrap()[0],
        }
    }

    /// Row and blob of `id` in `ns` both present (`Some(true)`), both absent
    /// (`Some(false)`), or not in step (`None`).
    async fn stored_in(&self, ns: NamespaceId, id: ChunkId) -> Option<bool> {
        let row = self.repo.has_chunk(ns, id).await.unwrap();
        let blob = self.readable_in(ns, id).await;
        (row == blob).then_some(row)
    }

    async fn stored(&self, id: ChunkId) -> Option<bool> {
        self.stored_in(self.ns, id).await
    }

    /// Asserts that the rows and blobs of `ids` are all present (`true`) or all gone.
    async fn assert_stored(&self, ids: &[ChunkId], present: bool) {
        for id in ids {
            assert_eq!(self.stored(*id).await, Some(present), "{}: {id}", self.name);
        }
    }

    async fn versions(&self, file: FileId) -> Vec<u64> {
        match self.repo.versions(file).await {
            Ok(v) => v.iter().map(|v| v.version.0).collect(),
            Err(DbError::NotFound(_)) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    async fn run(&self, opts: RunOptions) -> RunReport {
        let gc = self.collector().await;
        gc.run(&opts, &NoProgress).await.unwrap()
    }

    async fn stats(&self, ns: Option<NamespaceId>, now: Option<i64>) -> Stats {
        let gc = self.collector().await;
        gc.stats(ns, GRACE, now).await.unwrap()
    }

    async fn verify(&self, batch: usize) -> VerifyReport {
        let gc = self.collector().await;
        gc.verify(None, batch, &NoProgress).await.unwrap()
    }

    async fn assert_verify_clean(&self) {
        let r = self.verify(7).await;
        assert!(r.is_clean(), "{}: verify found {:?}", self.name, r.damage);
    }
}

fn key() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

fn chunk(n: u32) -> ChunkId {
    let mut b = rand::random::<[u8; 32]>();
    b[..4].copy_from_slice(&n.to_be_bytes());
    ChunkId::from_bytes(b)
}

fn chunks(n: usize) -> Vec<ChunkId> {
    (0..n as u32).map(chunk).collect()
}

/// A blob for `id`: a real one (the pack checks read blob headers), of a length that
/// depends on the id only.
fn blob_of(id: ChunkId) -> Vec<u8> {
    static CODEC: std::sync::OnceLock<fsync_store::BlobCodec> = std::sync::OnceLock::new();
    let codec = CODEC.get_or_init(|| {
        fsync_store::BlobCodec::new(&fsync_store::NamespaceKey::generate().derive())
    });
    let mut plain = id.to_hex().into_bytes();
    plain.truncate(16 + (id.as_bytes()[31] as usize % 48));
    // Hex digits would compress; these bytes do not, so the length is fixed.
    let plain: Vec<u8> = plain
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ (i as u8).wrapping_mul(97))
        .collect();
    codec.encode(&id, &plain).unwrap()
}

fn blob_len(id: ChunkId) -> u64 {
    blob_of(id).len() as u64
}

fn blobs_of(ids: &[ChunkId]) -> Vec<(ChunkId, Vec<u8>)> {
    ids.iter().map(|id| (*id, blob_of(*id))).collect()
}

fn commit_req(ns: NamespaceId, path: &str, base: &VersionVector, ids: &[ChunkId]) -> CommitRequest {
    CommitRequest {
        pages: Vec::new(),
        namespace: ns,
        path: SyncPath::new(path).unwrap(),
        base: base.clone(),
        chunks: ids.iter().map(|id| ChunkRef(*id, 100)).collect(),
        size: 100 * ids.len() as u64,
        mtime: 1_700_000_000_000_000_000,
        mode: 0o644,
        content_hash: ContentHash::from_bytes(rand::random()),
        idempotency_key: key(),
    }
}

/// SQLite always; PostgreSQL when `FSYNC_TEST_DATABASE_URL` is set.
/// Every database (SQLite; PostgreSQL when configured) with every pack store (the
/// disk; S3 when configured, as CI requires).
async fn envs() -> Vec<Env> {
    let mut out = local_envs().await;
    if let Some(endpoint) = fsync_testkit::s3::test_s3_endpoint() {
        for mut env in local_envs().await {
            let url = fsync_testkit::s3::scratch_url("gc");
            env.packs = Arc::new(s3_packs(&endpoint, &url));
            env.local = None;
            env.store_flags
                .extend(fsync_testkit::s3::server_flags(&endpoint, &url));
            env.name = env.name.replace("/local", "/s3");
            out.push(env);
        }
    }
    out
}

/// Every database, with the packs on the disk.
async fn local_envs() -> Vec<Env> {
    let mut urls = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("fsync.db").display());
    urls.push(("sqlite", sqlite, dir));
    if let Some(base) = test_database_url() {
        let db = ScratchDatabase::create(&base)
            .await
            .expect("a test database on FSYNC_TEST_DATABASE_URL");
        urls.push((
            "postgres",
            db.url().to_owned(),
            tempfile::tempdir().unwrap(),
        ));
    }
    let mut out = Vec::new();
    for (name, url, dir) in urls {
        let repo = open_repo(&url).await.unwrap();
        let ns = NamespaceId::from_bytes(rand::random());
        let user = create_user(&*repo, ns).await;
        let actor = new_device(&*repo, user, "d", 0).await;
        let files = dir.path().join("files");
        let dir_flag = files.display().to_string();
        let blobs = Arc::new(LocalStore::open(&files).unwrap());
        let packs = Arc::new(LocalPacks::open(&files).unwrap());
        out.push(Env {
            name: format!("{name}/local"),
            url,
            repo,
            blobs,
            packs: packs.clone(),
            local: Some(packs),
            store_flags: vec!["--files-directory".into(), dir_flag],
            ns,
            actor,
            _dir: dir,
        });
    }
    out
}

/// A user with namespace `ns`, created long ago.
async fn create_user(repo: &dyn MetaRepo, ns: NamespaceId) -> UserId {
    let user = UserId::from_bytes(rand::random());
    let at = wall_now() - 400 * DAY;
    repo.create_user(new_user(user, ns), at).await.unwrap();
    user
}

/// A new device of `user`, registered at `now`.
async fn new_device(repo: &dyn MetaRepo, user: UserId, name: &str, now: i64) -> Actor {
    let id = DeviceId::from_bytes(rand::random());
    let device = repo.register_device(user, None, id, name, now).await;
    let device = device.unwrap();
    Actor { user, device }
}

fn new_user(id: UserId, ns: NamespaceId) -> NewUser {
    NewUser {
        id,
        username: format!("u{}", hex::encode(rand::random::<[u8; 4]>())),
        email: Some("u@example.org".into()),
        auth_hash: "hash".into(),
        kdf: fsync_common::wire::KdfParams {
            kdf: "argon2id".into(),
            m_kib: 8192,
            t: 1,
            p: 1,
            salt: "00".repeat(16),
        },
        wrapped_account_key: "aa".repeat(40),
        namespace: ns,
        wrapped_namespace_key: "bb".repeat(40),
    }
}

fn opts(now: i64) -> RunOptions {
    RunOptions {
        now: Some(now),
        grace: GRACE,
        batch: 5,
        ..RunOptions::default()
    }
}

/// `o` as a dry run.
fn dry(mut o: RunOptions) -> RunOptions {
    o.dry_run = true;
    o
}

// ------------------------------------------------------------------ retention

#[tokio::test]
async fn retention_prunes_old_versions_never_heads() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        // Five versions of one file, a day apart, each with its own chunk plus a
        // chunk shared by all.
        let shared = chunk(1000);
        let own = chunks(5);
        let mut vv = VersionVector::new();
        let mut file = None;
        for (i, c) in own.iter().enumerate() {
            let (f, v) = env
                .write("doc.txt", &vv, &[shared, *c], t0 + i as i64 * DAY)
                .await;
            file = Some(f);
            vv = v;
        }
        let file = file.unwrap();
        let now = t0 + 10 * DAY;

        // Nothing set: nothing pruned, nothing referenced swept.
        let r = env.run(opts(now)).await;
        assert_eq!(r.versions_pruned, 0, "{}", env.name);
        assert_eq!(env.versions(file).await, [5, 4, 3, 2, 1]);

        // Keep the 3 newest, and whatever was replaced in the last 8 days (kept when
        // either rule keeps it): v1, replaced 9 days ago and not among the 3 newest,
        // goes; v2, replaced exactly 8 days ago, is kept by age.
        let mut o = opts(now);
        o.retention = Retention {
            keep_versions: Some(3),
            keep_days: Some(8),
        };
        let r = env.run(o).await;
        assert_eq!(r.versions_pruned, 1, "{}", env.name);
        assert_eq!(env.versions(file).await, [5, 4, 3, 2], "{}", env.name);
        assert_eq!(r.chunks_deleted, 1, "{}: v1's own chunk", env.name);
        env.assert_stored(&own[..1], false).await;

        // Keep only the newest: the head stays whatever its age.
        let mut o = opts(now + 1000 * DAY);
        o.retention.keep_versions = Some(1);
        let r = env.run(o).await;
        assert_eq!(r.versions_pruned, 3, "{}", env.name);
        assert_eq!(env.versions(file).await, [5], "{}", env.name);
        assert_eq!(r.chunks_deleted, 3, "{}", env.name);
        env.assert_stored(&own[..4], false).await;
        // The head's own chunk and the shared one stay.
        env.assert_stored(&[own[4], shared], true).await;
        // --keep-days alone: the head stays even when older than the policy.
        let mut o = opts(now + 1000 * DAY);
        o.retention.keep_days = Some(0);
        assert_eq!(env.run(o).await.versions_pruned, 0);
        assert_eq!(env.versions(file).await, [5], "{}", env.name);
        let m = env.repo.manifest(file, None).await.unwrap();
        assert_eq!(m.chunks.len(), 2);
        env.assert_verify_clean().await;
    }
}

#[tokio::test]
async fn old_tombstones_go_with_their_versions_recent_ones_stay() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let (old_ids, new_ids) = (chunks(2), chunks(2));
        let (old_file, vv) = env.create("old.txt", &old_ids, t0).await;
        env.delete("old.txt", &vv, t0 + DAY).await;
        let (new_file, vv) = env.create("new.txt", &new_ids, t0).await;
        env.delete("new.txt", &vv, t0 + 50 * DAY).await;
        // A conflict copy is an ordinary file: its head is kept like any other.
        let (live, _) = env.create("c.txt", &chunks(1), t0).await;
        let other = new_device(&*env.repo, env.actor.user, "e", t0).await;
        let theirs = chunks(1);
        env.upload(&theirs, t0).await;
        let mut req = commit_req(env.ns, "c.txt", &VersionVector::new(), &theirs);
        req.mtime = 1;
        let r = env.repo.commit(other, &req, t0 + DAY).await.unwrap();
        let copy = r.conflict_copy.expect("concurrent edit → conflict copy");
        assert_ne!(copy.file_id, live);

        let mut o = opts(t0 + 60 * DAY);
        o.retention.keep_days = Some(30);
        let r = env.run(o).await;
        assert_eq!(r.files_removed, 1, "{}", env.name);
        let why = "the old file's version and tombstone";
        assert_eq!(r.versions_pruned, 2, "{}: {why}", env.name);
        assert!(env.versions(old_file).await.is_empty(), "{}", env.name);
        let row = env.repo.file_namespace(old_file).await.unwrap();
        assert_eq!(row, None, "{}: the file row is gone", env.name);
        env.assert_stored(&old_ids, false).await;
        // The recent tombstone keeps its history: its content was replaced (by the
        // delete) 10 days ago, within the 30 days, although written 60 days ago.
        assert_eq!(env.versions(new_file).await, [2, 1], "{}", env.name);
        env.assert_stored(&new_ids, true).await;
        let v1 = fsync_common::VersionNo(1);
        let restored = env.repo.restore(env.actor, new_file, v1, t0 + 61 * DAY);
        restored.await.unwrap();
        // Conflict copy and original both kept (heads).
        assert_eq!(env.versions(copy.file_id).await, [1], "{}", env.name);
        assert!(!env.versions(live).await.is_empty());
        env.assert_verify_clean().await;
    }
}

// ------------------------------------------------------------------ sweep

#[tokio::test]
async fn a_chunk_shared_by_two_files_survives_deleting_one() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let (shared, only_a, only_b) = (chunk(1), chunk(2), chunk(3));
        let (_, vv_a) = env.create("a", &[shared, only_a], t0).await;
        env.create("b", &[only_b, shared], t0).await;
        env.delete("a", &vv_a, t0 + DAY).await;
        let mut o = opts(t0 + 10 * DAY);
        o.retention.keep_days = Some(1);
        let r = env.run(o).await;
        assert_eq!((r.files_removed, r.chunks_deleted), (1, 1), "{}", env.name);
        env.assert_stored(&[only_a], false).await;
        env.assert_stored(&[shared, only_b], true).await;
        env.assert_verify_clean().await;
    }
}

#[tokio::test]
async fn the_grace_period_keeps_new_and_touched_chunks() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let (a, b) = (chunk(1), chunk(2));
        env.upload(&[a, b], t0).await;
        // Within the grace period: kept.
        let r = env.run(opts(t0 + DAY - 1)).await;
        assert_eq!(r.chunks_deleted, 0, "{}", env.name);
        // `chunks/missing` answers `b` present: touched, so kept a grace period more.
        let missing = env.repo.missing_chunks(env.ns, &[b], t0 + 2 * DAY).await;
        assert!(missing.unwrap().is_empty());
        let r = env.run(opts(t0 + 2 * DAY + 10)).await;
        let reclaimed = (r.chunks_deleted, r.bytes_reclaimed);
        assert_eq!(reclaimed, (1, blob_of(a).len() as u64), "{}", env.name);
        env.assert_stored(&[a], false).await;
        env.assert_stored(&[b], true).await;
        env.assert_verify_clean().await;
    }
}

#[tokio::test]
async fn manifest_pages_keep_their_chunks_and_go_when_no_version_names_them() {
    use fsync_common::pages::{self, Page};
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        // Over 1,024 chunks: at least three pages (a page holds at most 512).
        let ids = chunks(1100);
        let (file, vv) = env.create("big.bin", &ids, t0).await;
        let refs = |ids: &[ChunkId]| -> Vec<ChunkRef> {
            ids.iter().map(|id| ChunkRef(*id, 100)).collect()
        };
        let v1_pages: HashSet<_> = pages::paginate(&refs(&ids)).iter().map(Page::id).collect();
        assert!(v1_pages.len() > 2, "{}", env.name);
        // v2: one chunk replaced; most pages are v1's.
        let mut ids2 = ids.clone();
        ids2[350] = chunk(5000);
        env.write("big.bin", &vv, &ids2, t0 + DAY).await;
        let v2_pages: HashSet<_> = pages::paginate(&refs(&ids2)).iter().map(Page::id).collect();
        let only_v1 = v1_pages.difference(&v2_pages).count() as u64;
        assert!(only_v1 >= 1, "{}", env.name);

        // A page stored long ago that no commit named, and one stored just now.
        let stale = Page::new(&refs(&ids[..40]));
        let fresh = Page::new(&refs(&ids[40..80]));
        env.repo
            .store_pages(env.ns, std::slice::from_ref(&stale), t0)
            .await
            .unwrap();
        let now = wall_now() + 10 * DAY;
        env.repo
            .store_pages(env.ns, std::slice::from_ref(&fresh), now)
            .await
            .unwrap();

        // Every version kept: only the stale page goes, and no chunk (all listed by
        // pages that versions name).
        let r = env.run(opts(now)).await;
        assert_eq!((r.pages_deleted, r.chunks_deleted), (1, 0), "{}", env.name);
        let mut o = opts(now);
        o.retention.keep_versions = Some(1);
        let predicted = env.run(dry(o.clone())).await;
        let r = env.run(o).await;
        assert_eq!(r.versions_pruned, 1, "{}", env.name);
        assert_eq!(r.pages_deleted, only_v1, "{}: v1's own pages", env.name);
        assert_eq!(r.chunks_deleted, 1, "{}: the replaced chunk", env.name);
        assert_eq!(predicted.chunks_deleted, r.chunks_deleted, "{}", env.name);
        env.assert_stored(&[ids[350]], false).await;
        env.assert_stored(&ids2, true).await;
        let m = env.repo.manifest(file, None).await.unwrap();
        assert_eq!(m.chunks, refs(&ids2), "{}", env.name);
        // A commit naming the swept page is told it is missing; one naming the page
        // stored within the grace period commits.
        let head = env.repo.manifest(file, None).await.unwrap().meta;
        let named = |p: &Page| CommitRequest {
            chunks: Vec::new(),
            pages: vec![p.id()],
            size: 4000,
            ..commit_req(env.ns, "big.bin", &head.vv, &[])
        };
        match env.repo.commit(env.actor, &named(&stale), now).await {
            Err(DbError::MissingPages(m)) => assert_eq!(m, [stale.id()], "{}", env.name),
            other => panic!("{}: {other:?}", env.name),
        }
        let r = env
            .repo
            .commit(env.actor, &named(&fresh), now)
            .await
            .unwrap();
        assert_eq!(
            env.repo.manifest(file, None).await.unwrap().chunks,
            refs(&ids[40..80])
        );
        assert_eq!(r.head.size, 4000);
        env.assert_verify_clean().await;

        // Deleted, and the tombstone expired: the file goes with every version, and
        // then every page and chunk it had.
        env.delete("big.bin", &r.head.vv, now).await;
        let mut o = opts(now + 1000 * DAY);
        o.retention.keep_days = Some(1);
        let r = env.run(o).await;
        assert_eq!(r.files_removed, 1, "{}", env.name);
        let every: Vec<_> = v1_pages
            .union(&v2_pages)
            .copied()
            .chain([fresh.id()])
            .collect();
        let left = env.repo.page_bodies(env.ns, &every).await.unwrap();
        assert!(left.is_empty(), "{}: {} pages left", env.name, left.len());
        env.assert_stored(&ids2, false).await;
        env.assert_stored(&ids, false).await;
        env.assert_verify_clean().await;
    }
}

#[tokio::test]
async fn a_dry_run_deletes_nothing_and_predicts_the_run() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let mut vv = VersionVector::new();
        for i in 0..4 {
            vv = env.write("f", &vv, &chunks(3), t0 + i).await.1;
        }
        env.upload(&chunks(7), t0).await; // never committed
        let orphans = chunks(2);
        env.put_orphans(&orphans).await;
        let before = env.stats(None, Some(t0)).await;
        let mut o = opts(wall_now() + 10 * DAY);
        o.retention.keep_versions = Some(1);
        let dry = env.run(dry(o.clone())).await;
        let after = env.stats(None, Some(t0)).await;
        assert_eq!(before, after, "{}: a dry run changes nothing", env.name);
        for id in &orphans {
            assert!(env.has_blob(*id).await);
        }
        assert_eq!(dry.versions_pruned, 3, "{}", env.name);
        assert_eq!(dry.chunks_deleted, 9 + 7, "{}", env.name);
        assert_eq!(dry.orphan_blobs_deleted, 2, "{}", env.name);
        // Equal to the run but for the time taken and the dry-run flag.
        let mut real = env.run(o).await;
        (real.elapsed_ms, real.repack_ms, real.dry_run) = (dry.elapsed_ms, dry.repack_ms, true);
        assert_eq!(real, dry, "{}: the dry run predicted the run", env.name);
        env.assert_verify_clean().await;
    }
}

#[tokio::test]
async fn orphan_blobs_and_packs_are_removed_after_the_grace_period() {
    // Local packs only: the test ages the orphan's file (an object's time on S3 cannot
    // be set); the collector reads both stores' times through `PackStore::list`.
    for env in local_envs().await {
        let local = env.local.clone().unwrap();
        let ids = chunks(12);
        env.put_orphans(&ids).await;
        let recorded = chunks(1);
        env.create("kept", &recorded, wall_now()).await;
        // An upload that crashed between writing its pack and recording it.
        let before = env.pack_files().await;
        put_blobs(&*env.packs, env.ns, blobs_of(&chunks(2)))
            .await
            .unwrap();
        let after = env.pack_files().await;
        let orphan = after.iter().find(|p| !before.contains(p)).unwrap().clone();
        // A put that crashed between writing its temp file and linking it left a
        // partial write next to the blobs.
        let leaf = env.blobs.blob_path(&env.ns, &ids[0]);
        let partial = leaf.parent().unwrap().join(".tmp-00c0ffee00c0ffee");
        std::fs::write(&partial, b"half a blob").unwrap();
        // Written just now: kept.
        let r = env.run(opts(wall_now())).await;
        assert_eq!(r.orphan_blobs_deleted, 0, "{}", env.name);
        assert_eq!(r.temp_files_deleted, 0, "{}", env.name);
        assert!(partial.exists(), "{}", env.name);
        assert_eq!(r.orphan_packs_deleted, 0, "{}: written just now", env.name);
        let v = env.verify(5).await;
        assert_eq!((v.orphan_blobs, v.damage_count), (12, 0), "{}", env.name);
        assert_eq!(v.orphan_packs, 1, "{}", env.name);
        // Older than the grace period: removed; the recorded blob stays.
        // Partial writes and unrecorded packs are judged by the real clock (an upload
        // in flight must keep them even when a test moves "now" ahead): make these old.
        for file in [partial.clone(), local.pack_path(&env.ns, &orphan.id)] {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(3 * DAY as u64))
                .unwrap();
        }
        let temp = |r: &RunReport| (r.temp_files_deleted, r.temp_bytes_reclaimed);
        let dry = env.run(dry(opts(wall_now() + 2 * DAY))).await;
        assert_eq!(temp(&dry), (1, 11), "{}", env.name);
        assert!(partial.exists(), "a dry run removes nothing: {}", env.name);
        assert_eq!(dry.orphan_packs_deleted, 1, "{}", env.name);
        let r = env.run(opts(wall_now() + 2 * DAY)).await;
        assert_eq!(r.orphan_blobs_deleted, 12, "{}", env.name);
        assert_eq!(r.orphan_packs_deleted, 1, "{}", env.name);
        assert_eq!(temp(&r), (1, 11), "{}", env.name);
        assert!(!partial.exists(), "{}", env.name);
        let total: u64 = ids.iter().map(|i| blob_len(*i)).sum::<u64>() + orphan.size;
        assert_eq!(r.orphan_bytes_reclaimed, total);
        let left: Vec<PackId> = env.pack_files().await.iter().map(|p| p.id).collect();
        assert!(!left.contains(&orphan.id), "{}", env.name);
        for id in &ids {
            assert!(!env.has_blob(*id).await, "{}", env.name);
        }
        env.assert_stored(&recorded, true).await;
    }
}

/// Pack deletes fail while set.
#[derive(Debug)]
struct FailDeletes(AtomicBool);

impl Hooks for FailDeletes {
    fn before_delete(&self) -> Result<(), StoreError> {
        if self.0.load(SeqCst) {
            return Err(StoreError::Backend("injected failure".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_pack_delete_is_retried_by_the_next_run() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let ids = chunks(3);
        env.upload(&ids, t0).await;
        let flaky = HookedPacks::new(env.packs.clone(), FailDeletes(true.into()));
        let gc = env.collector_over(flaky.clone()).await;
        let later = wall_now() + 2 * DAY;
        let r = gc.run(&opts(later), &NoProgress).await.unwrap();
        assert_eq!(
            (r.chunks_deleted, r.packs_deleted, r.blob_delete_failures),
            (3, 0, 1 + 1),
            "{}: the pack's delete and the partial-write pass failed, and the run went on",
            env.name
        );
        env.assert_stored(&ids, false).await;
        assert_eq!(
            env.pack_files().await.len(),
            1,
            "{}: the pack is still there",
            env.name
        );
        // The rows are gone first, so nothing is damaged.
        env.assert_verify_clean().await;
        flaky.hooks.0.store(false, SeqCst);
        let r = gc.run(&opts(later), &NoProgress).await.unwrap();
        let deleted = (r.packs_deleted, r.blob_delete_failures);
        assert_eq!(
            deleted,
            (1, 0),
            "{}: the dead pack's delete is retried",
            env.name
        );
        assert!(env.pack_files().await.is_empty(), "{}", env.name);
    }
}

// ------------------------------------------------------------------ packs

/// The pack `id`'s blob lies in, and where.
async fn packed_at(env: &Env, id: ChunkId) -> (PackId, std::ops::Range<u64>) {
    match env.location(id).await {
        Some(BlobLocation::Packed { pack, offset, len }) => (pack, offset..offset + u64::from(len)),
        other => panic!("{}: {id} is not packed: {other:?}", env.name),
    }
}

#[tokio::test]
async fn a_mostly_dead_pack_is_repacked_and_its_old_location_read_until_the_grace_ends() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let ids = chunks(10);
        env.upload(&ids, t0).await;
        env.commit("f", &VersionVector::new(), &ids[..2], t0)
            .await
            .unwrap();
        let (old, range) = packed_at(&env, ids[0]).await;
        let old_size = env.pack_files().await[0].size;
        let r = env.run(opts(wall_now())).await;
        let name = &env.name;
        assert_eq!(r.chunks_deleted, 8, "{name}");
        let live: u64 = ids[..2].iter().map(|i| blob_len(*i)).sum();
        assert_eq!((r.packs_repacked, r.repacked_bytes), (1, live), "{name}");
        assert_eq!(r.pack_bytes_reclaimed, old_size - live, "{name}");
        let (new, _) = packed_at(&env, ids[0]).await;
        assert_ne!(new, old, "{name}: the row moved to the new pack");
        env.assert_stored(&ids[..2], true).await;
        // A download that looked the chunk up before the switch still reads it.
        let blob = env.packs.read(&env.ns, &old, range).await.unwrap();
        fsync_store::check_blob_header(&blob).unwrap();
        env.assert_verify_clean().await;
        // Past the grace period the retired pack goes; the new one stays.
        let r = env.run(opts(wall_now() + 3 * DAY)).await;
        assert_eq!((r.packs_deleted, r.packs_repacked), (1, 0), "{name}");
        let left: Vec<PackId> = env.pack_files().await.iter().map(|p| p.id).collect();
        assert_eq!(left, [new], "{name}");
        env.assert_stored(&ids[..2], true).await;
        env.assert_verify_clean().await;
    }
}

#[tokio::test]
async fn small_packs_are_combined_into_one() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let files: Vec<Vec<ChunkId>> = (0..3).map(|_| chunks(2)).collect();
        for (i, ids) in files.iter().enumerate() {
            env.create(&format!("f{i}"), ids, t0).await;
        }
        assert_eq!(env.pack_files().await.len(), 3);
        let dry = env.run(dry(opts(wall_now()))).await;
        let r = env.run(opts(wall_now())).await;
        let name = &env.name;
        assert_eq!((r.packs_repacked, dry.packs_repacked), (3, 3), "{name}");
        assert_eq!(r.repacked_bytes, dry.repacked_bytes, "{name}");
        let (one, _) = packed_at(&env, files[0][0]).await;
        for ids in &files {
            for id in ids {
                assert_eq!(packed_at(&env, *id).await.0, one, "{name}: all in one pack");
            }
            env.assert_stored(ids, true).await;
        }
        let r = env.run(opts(wall_now() + 3 * DAY)).await;
        assert_eq!((r.packs_deleted, r.packs_repacked), (3, 0), "{name}");
        assert_eq!(env.pack_files().await.len(), 1, "{name}");
        env.assert_verify_clean().await;
    }
}

/// A data directory of the release before packs (a loose blob per chunk) keeps
/// working, and a run moves its blobs into packs without losing one.
#[tokio::test]
async fn loose_blobs_of_an_older_store_are_read_then_moved_into_packs() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let (ids, dead) = (chunks(5), chunks(1));
        env.upload_loose(&ids, t0).await;
        env.upload_loose(&dead, t0).await;
        env.commit("old.txt", &VersionVector::new(), &ids, t0)
            .await
            .unwrap();
        for id in &ids {
            assert_eq!(
                env.location(*id).await,
                Some(BlobLocation::Loose {
                    size: blob_len(*id)
                })
            );
        }
        env.assert_stored(&ids, true).await;
        env.assert_verify_clean().await;
        let dry = env.run(dry(opts(wall_now()))).await;
        let r = env.run(opts(wall_now())).await;
        let name = &env.name;
        assert_eq!(
            (r.loose_blobs_packed, dry.loose_blobs_packed),
            (5, 5),
            "{name}"
        );
        assert_eq!(r.chunks_deleted, 1, "{name}");
        for id in ids.iter().chain(&dead) {
            assert!(
                !env.has_blob(*id).await,
                "{name}: {id}'s loose blob is gone"
            );
        }
        let (pack, _) = packed_at(&env, ids[0]).await;
        for id in &ids {
            assert_eq!(packed_at(&env, *id).await.0, pack, "{name}");
        }
        env.assert_stored(&ids, true).await;
        env.assert_verify_clean().await;
    }
}

/// The chunk index lost (its rows deleted, as a restored database backup older than
/// the packs would be): `rebuild_index` records every blob again from the packs'
/// trailers, and a torn pack is reported, not adopted.
#[tokio::test]
async fn the_index_is_rebuilt_from_the_packs_alone() {
    for env in envs().await {
        let files: Vec<Vec<ChunkId>> = (0..3).map(|_| chunks(4)).collect();
        for (i, ids) in files.iter().enumerate() {
            env.create(&format!("f{i}"), ids, wall_now()).await;
        }
        let torn = packed_at(&env, files[2][0]).await.0;
        env.tamper(torn, |b| b.truncate(b.len() - 1)).await;
        for sql in ["DELETE FROM chunks", "DELETE FROM packs"] {
            fsync_testkit::postgres::execute(&env.url, sql)
                .await
                .unwrap();
        }
        let v = env.verify(5).await;
        assert_eq!(
            v.damage_count, 12,
            "{}: every reference unrecorded",
            env.name
        );
        let gc = env.collector().await;
        let r = gc.rebuild_index(None, 2, &NoProgress).await.unwrap();
        let name = &env.name;
        assert_eq!((r.packs_read, r.chunks_recorded), (3, 8), "{name}");
        assert_eq!(r.damaged_packs.len(), 1, "{name}: {:?}", r.damaged_packs);
        assert_eq!((r.damaged_packs[0].1, r.chunks_moved), (torn, 0), "{name}");
        env.assert_stored(&files[0], true).await;
        env.assert_stored(&files[1], true).await;
        let v = env.verify(5).await;
        let unrecorded = v
            .damage
            .iter()
            .filter(|d| matches!(d, Damage::Unrecorded { chunk, .. } if files[2].contains(chunk)))
            .count();
        assert_eq!(
            (v.damage_count, unrecorded),
            (4, 4),
            "{name}: only the torn pack's"
        );
        // Again: nothing more to record.
        let r = gc.rebuild_index(None, 2, &NoProgress).await.unwrap();
        assert_eq!((r.chunks_recorded, r.chunks_moved), (0, 0), "{name}");
    }
}

// ------------------------------------------------------------------ verify, lock, stats

#[tokio::test]
async fn verify_lists_missing_loose_blobs_wrong_sizes_and_unrecorded_chunks() {
    for env in envs().await {
        let ids = chunks(4);
        env.upload_loose(&ids, wall_now()).await;
        env.commit("f", &VersionVector::new(), &ids, wall_now())
            .await
            .unwrap();
        env.assert_verify_clean().await;
        // Damage three referenced chunks three ways.
        env.blobs.delete(&env.ns, &ids[0]).await.unwrap();
        std::fs::write(env.blobs.blob_path(&env.ns, &ids[1]), b"x").unwrap();
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&env.url).await.unwrap();
        let unrecord = sqlx::query("DELETE FROM chunks WHERE id = $1").bind(ids[2].to_hex());
        unrecord.execute(&pool).await.unwrap();
        pool.close().await;
        let r = env.verify(2).await;
        assert!(!r.is_clean());
        let mut found = r.damage.clone();
        found.sort_by_key(|d| format!("{d:?}"));
        let mut want = vec![
            Damage::MissingBlob {
                namespace: env.ns,
                chunk: ids[0],
                referenced: true,
            },
            Damage::SizeMismatch {
                namespace: env.ns,
                chunk: ids[1],
                recorded: blob_len(ids[1]),
                stored: 1,
            },
            Damage::Unrecorded {
                namespace: env.ns,
                chunk: ids[2],
            },
        ];
        want.sort_by_key(|d| format!("{d:?}"));
        assert_eq!(found, want, "{}", env.name);
        assert_eq!(r.damage_count, 3);
        let why = "the unrecorded chunk's blob";
        assert_eq!(r.orphan_blobs, 1, "{}: {why}", env.name);
    }
}

/// A pack torn, corrupted or gone is reported by name; the blobs of other packs stay
/// readable; a chunk row pointing where its pack does not list it is reported too.
#[tokio::test]
async fn verify_names_torn_corrupt_and_missing_packs() {
    for env in envs().await {
        let files: Vec<Vec<ChunkId>> = (0..4).map(|_| chunks(3)).collect();
        for (i, ids) in files.iter().enumerate() {
            env.create(&format!("f{i}"), ids, wall_now()).await;
        }
        env.assert_verify_clean().await;
        let pack_of = |i: usize| {
            let env = &env;
            let id = files[i][0];
            async move {
                match env.location(id).await {
                    Some(BlobLocation::Packed { pack, .. }) => pack,
                    other => panic!("{}: {id} is not packed: {other:?}", env.name),
                }
            }
        };
        let (torn, flipped, gone) = (pack_of(0).await, pack_of(1).await, pack_of(2).await);
        env.tamper(torn, |b| b.truncate(b.len() - 7)).await;
        env.tamper(flipped, |b| b[40] ^= 0x10).await;
        assert!(env.packs.delete(&env.ns, &gone).await.unwrap());
        let r = env.verify(2).await;
        let name = &env.name;
        assert_eq!(r.damage_count, 3, "{name}: {:?}", r.damage);
        for (pack, what) in [(torn, "torn"), (flipped, "flipped")] {
            let named = r.damage.iter().any(|d| {
                matches!(d, Damage::CorruptPack { pack: p, namespace, .. } if *p == pack && *namespace == env.ns)
            });
            assert!(
                named,
                "{name}: the {what} pack is not named: {:?}",
                r.damage
            );
        }
        let missing = Damage::MissingPack {
            namespace: env.ns,
            pack: gone,
            chunks: 3,
        };
        assert!(r.damage.contains(&missing), "{name}: {:?}", r.damage);
        assert_eq!(r.packs_checked, 4, "{name}");
        // The fourth file's blobs are still read.
        env.assert_stored(&files[3], true).await;
        for id in &files[2] {
            assert_eq!(
                env.stored(*id).await,
                None,
                "{name}: {id} unreadable, row kept"
            );
        }
    }
}

#[tokio::test]
async fn only_one_collection_runs_at_a_time() {
    for env in envs().await {
        let a = env.collector().await;
        let b = env.collector().await;
        let lock = a.lock().await.unwrap();
        let err = b.run(&opts(wall_now()), &NoProgress).await.unwrap_err();
        assert!(matches!(err, GcError::Busy(_)), "{}: {err}", env.name);
        assert!(err.to_string().contains("another fsync-gc is running"));
        // A dry run removes nothing and needs no lock.
        b.run(&dry(opts(wall_now())), &NoProgress).await.unwrap();
        lock.release().await;
        b.run(&opts(wall_now()), &NoProgress).await.unwrap();
    }
}

#[tokio::test]
async fn stats_count_chunks_bytes_and_dedup() {
    for env in envs().await {
        let t0 = wall_now() - 100 * DAY;
        let shared = chunks(2);
        env.create("a", &shared, t0).await;
        env.create("b", &shared, t0).await;
        let loose = chunks(1);
        env.upload(&loose, t0).await;
        let s = env.stats(None, Some(t0 + 2 * DAY)).await;
        let stored_shared: u64 = shared.iter().map(|i| blob_of(*i).len() as u64).sum();
        let stored_loose = blob_of(loose[0]).len() as u64;
        assert_eq!((s.files, s.versions, s.chunks), (2, 2, 3), "{}", env.name);
        assert_eq!(s.stored_bytes, stored_shared + stored_loose);
        assert_eq!(s.referenced_chunks, 2);
        assert_eq!(s.referenced_stored_bytes, stored_shared);
        assert_eq!(s.referenced_logical_bytes, 400);
        assert!((s.dedup_ratio - 400.0 / stored_shared as f64).abs() < 1e-9);
        assert_eq!(s.reclaimable_chunks, 1);
        assert_eq!(s.reclaimable_bytes, stored_loose);
        // Three uploads, three packs; "b" re-sent the shared chunks, whose rows point
        // into "a"'s pack: its copies are bytes no row uses.
        let files = env.pack_files().await;
        assert_eq!(s.packs, 3, "{}", env.name);
        assert_eq!(s.pack_bytes, files.iter().map(|p| p.size).sum::<u64>());
        assert_eq!(s.pack_live_bytes, stored_shared + stored_loose);
        assert!((s.pack_fill - s.pack_live_bytes as f64 / s.pack_bytes as f64).abs() < 1e-9);
        assert_eq!(s.loose_chunks, 0);
        let s = env.stats(Some(env.ns), Some(t0)).await;
        let why = "within the grace period";
        assert_eq!(s.reclaimable_chunks, 0, "{}: {why}", env.name);
        let missing = NamespaceId::from_bytes([7; 16]);
        assert!(matches!(
            env.collector().await.stats(Some(missing), GRACE, None).await,
            Err(GcError::NoSuchNamespace(n)) if n == missing
        ));
    }
}

#[tokio::test]
async fn a_run_limited_to_one_namespace_leaves_the_others_alone() {
    for env in envs().await {
        let other = NamespaceId::from_bytes(rand::random());
        create_user(&*env.repo, other).await;
        let (mine, theirs) = (chunks(3), chunks(4));
        let long_ago = wall_now() - 10 * DAY;
        env.upload(&mine, long_ago).await;
        env.upload_to(other, &theirs, long_ago).await;
        let mut o = opts(wall_now());
        o.namespace = Some(env.ns);
        let r = env.run(o).await;
        assert_eq!(r.chunks_deleted, 3, "{}", env.name);
        env.assert_stored(&mine, false).await;
        for id in &theirs {
            assert_eq!(env.stored_in(other, *id).await, Some(true), "{}", env.name);
        }
        // The binary: only the other namespace, then an unknown one.
        let out = fsync_gc(&env, &["run", "--json", "--namespace", &other.to_hex()]);
        assert!(out.status.success(), "{}: {out:?}", env.name);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["chunks_deleted"], 4, "{}", env.name);
        let missing = NamespaceId::from_bytes([7; 16]);
        let mut o = opts(wall_now());
        o.namespace = Some(missing);
        assert!(matches!(
            env.collector().await.run(&o, &NoProgress).await,
            Err(GcError::NoSuchNamespace(n)) if n == missing
        ));
        let out = fsync_gc(&env, &["run", "--namespace", &missing.to_hex()]);
        assert_eq!(out.status.code(), Some(2), "{}: {out:?}", env.name);
    }
}

// ------------------------------------------------------------------ the race

/// Pauses a run at the first event of `stage` that involves any of `ids`, until the
/// test resumes it.
struct Pause {
    paused: tokio::sync::oneshot::Receiver<()>,
    resume: tokio::sync::oneshot::Sender<()>,
}

fn pause_at(stage: GcStage, ids: &[ChunkId]) -> (GcHook, Pause) {
    let (paused_tx, paused) = tokio::sync::oneshot::channel();
    let (resume, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let armed = Arc::new(Mutex::new(Some((paused_tx, resume_rx))));
    let ids: HashSet<ChunkId> = ids.iter().copied().collect();
    let hook: GcHook = Arc::new(move |e: GcEvent| {
        let hit = e.stage == stage && e.chunks.iter().any(|c| ids.contains(c));
        let taken = if hit {
            armed.lock().unwrap().take()
        } else {
            None
        };
        async move {
            if let Some((paused, resume)) = taken {
                let _ = paused.send(());
                let _ = resume.await;
            }
        }
        .boxed()
    });
    (hook, Pause { paused, resume })
}

/// What a client does with a commit refused for missing chunks: checks that they are
/// really missing, uploads them again and retries (at most `tries` times).
async fn commit_until_done(
    env: &Env,
    path: &str,
    ids: &[ChunkId],
    now: i64,
    tries: usize,
) -> (usize, Vec<ChunkId>) {
    let mut refused = 0;
    let mut told = Vec::new();
    for _ in 0..tries {
        match env.commit(path, &VersionVector::new(), ids, now).await {
            Ok(_) => return (refused, told),
            Err(DbError::MissingChunks(missing)) => {
                refused += 1;
                for id in &missing {
                    assert!(
                        ids.contains(id),
                        "{}: told about a chunk not in the manifest",
                        env.name
                    );
                    assert!(
                        !env.has_row(*id).await,
                        "{}: told {id} is missing, but it is recorded",
                        env.name
                    );
                }
                told.extend(&missing);
                env.upload(&missing, now).await;
            }
            Err(e) => panic!("{}: {e}", env.name),
        }
    }
    let name = &env.name;
    panic!("{name}: commit of {path} still refused after {tries} tries");
}

/// Starts `gc.run(o)` on a task of its own.
fn spawn_run(gc: &Collector, o: RunOptions) -> tokio::task::JoinHandle<Result<RunReport, GcError>> {
    let gc = gc.clone();
    tokio::spawn(async move { gc.run(&o, &NoProgress).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_racing_the_sweep_keep_their_chunks_or_are_told_to_reupload() {
    const ROUNDS: usize = 48;
    for env in envs().await {
        let gc = env.collector().await;
        let old = wall_now() - 100 * DAY;
        let gc_now = wall_now() + 10 * DAY; // everything uploaded at `old` is collectable
        let mut committed: Vec<ChunkId> = Vec::new();
        let mut refused_total = 0;
        for round in 0..ROUNDS {
            let ids = chunks(3 + round % 4);
            let path = format!("r{round}");
            // The upload is held between its chunk uploads and its commit.
            env.upload(&ids, old).await;
            let scenario = round % 4;
            match scenario {
                // The commit lands while the sweep has chosen the chunks but not yet
                // deleted them: the re-check under the lock sees the references.
                0 | 1 => {
                    let stage = [GcStage::BeforeRowDelete, GcStage::AfterRowDelete][scenario];
                    let (hook, pause) = pause_at(stage, &ids);
                    let mut o = opts(gc_now);
                    (o.hook, o.batch) = (Some(hook), 1000);
                    let run = spawn_run(&gc, o);
                    within(pause.paused).await.unwrap();
                    let (refused, told) = commit_until_done(&env, &path, &ids, gc_now, 3).await;
                    if scenario == 0 {
                        assert_eq!(refused, 0, "{}: committed before the rows went", env.name);
                    } else {
                        // Rows deleted, blobs not yet: 409 with exactly these ids; the
                        // re-upload finds the blobs "already present", records them, and
                        // the sweep's blob phase then sees the rows and keeps the blobs.
                        assert_eq!(refused, 1, "{}", env.name);
                        let told: HashSet<_> = told.into_iter().collect();
                        assert_eq!(told, ids.iter().copied().collect(), "{}", env.name);
                    }
                    refused_total += refused;
                    let _ = pause.resume.send(());
                    within(run).await.unwrap().unwrap();
                }
                // The held upload wrote its pack; then a whole run deletes the old
                // rows and packs, and (as a run would a day later) the new pack,
                // unrecorded; then the upload records: it must put its pack back.
                2 => {
                    let before = env.pack_files().await;
                    let put = put_blobs(&*env.packs, env.ns, blobs_of(&ids))
                        .await
                        .unwrap();
                    let after = env.pack_files().await;
                    let held = after.into_iter().find(|p| !before.contains(p)).unwrap();
                    let r = gc.run(&opts(gc_now), &NoProgress).await.unwrap();
                    assert!(r.chunks_deleted >= ids.len() as u64, "{}", env.name);
                    env.assert_stored(&ids, false).await;
                    env.packs.delete(&env.ns, &held.id).await.unwrap();
                    record_stored(&*env.repo, &*env.packs, put, gc_now)
                        .await
                        .unwrap();
                    let (refused, _) = commit_until_done(&env, &path, &ids, gc_now, 3).await;
                    assert_eq!(refused, 0, "{}", env.name);
                }
                // Free running: the run and the commit (with re-uploads) at once.
                _ => {
                    let run = spawn_run(&gc, opts(gc_now));
                    let (refused, _) = commit_until_done(&env, &path, &ids, gc_now, 3).await;
                    refused_total += refused;
                    within(run).await.unwrap().unwrap();
                }
            }
            committed.extend(&ids);
            // Every committed chunk is recorded and stored.
            for id in &committed {
                let (name, stored) = (&env.name, env.stored(*id).await);
                assert_eq!(stored, Some(true), "{name}: round {round}: {id}");
            }
        }
        let why = "the 409 path was exercised";
        assert!(refused_total >= ROUNDS / 4, "{}: {why}", env.name);
        // And one more run with nothing racing removes none of it.
        let later = opts(gc_now + 100 * DAY);
        let r = gc.run(&later, &NoProgress).await.unwrap();
        assert_eq!(r.chunks_deleted, 0, "{}", env.name);
        env.assert_verify_clean().await;
    }
}

// ------------------------------------------------------------------ the binary

fn fsync_gc(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fsync-gc"))
        .args(["--database-url", &env.url])
        .args(&env.store_flags)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("POSTGRES_URL")
        .output()
        .unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `fsync-gc` reads its options like the server: a log level naming no level and a
/// `.env` that does not parse are refused (exit 2), not silently replaced; `.env` is
/// read from the working directory.
/// A data directory the way a server leaves it: its SQLite database (migrated) and
/// its blob directory.
async fn server_data_dir(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    let url = format!("sqlite://{}", dir.join("fsync.db").display());
    drop(open_repo(&url).await.unwrap());
}

#[tokio::test]
async fn options_are_validated_like_the_servers() {
    let gc = env!("CARGO_BIN_EXE_fsync-gc");
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        std::process::Command::new(gc)
            .args(args)
            .current_dir(cwd.path())
            .env_remove("DATABASE_URL")
            .env_remove("POSTGRES_URL")
            .env_remove("LOG_LEVEL")
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };
    let data = cwd.path().join("data");
    server_data_dir(&data).await;
    let data = data.to_str().unwrap();
    let verbose = ["--data-dir", data, "--log-level", "verbose", "stats"];
    let out = run(&verbose, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("verbose"), "{out:?}");
    let out = run(&["--data-dir", data, "stats"], &[("LOG_LEVEL", "loud")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(&["--data-dir", data, "stats", "--json"], &[]);
    assert!(out.status.success(), "{out:?}");
    // Its help says what it is (it opened with the server's description).
    let help = run(&["--help"], &[]);
    let first = String::from_utf8_lossy(&help.stdout);
    assert!(
        first.starts_with("Garbage collection, verification and statistics"),
        "{first}"
    );

    // .env in the working directory supplies the data dir; a broken one is refused.
    let from_env = cwd.path().join("from-env");
    server_data_dir(&from_env).await;
    let dotenv = format!("FSYNC_DATA_DIR={}\n", from_env.display());
    std::fs::write(cwd.path().join(".env"), dotenv).unwrap();
    let out = run(&["stats", "--json"], &[]);
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_dir_all(from_env.join("blobs")).unwrap();
    let out = run(&["stats", "--json"], &[]);
    assert!(
        stderr(&out).contains("from-env/blobs does not exist"),
        "the .env data dir was not used: {out:?}"
    );
    std::fs::write(cwd.path().join(".env"), "NOT A VALID LINE\n").unwrap();
    let out = run(&["stats"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(".env") && err.contains("cannot parse the line \"NOT A VALID LINE\""),
        "{err}"
    );
}

/// `fsync-gc` pointed at what is not a server's stores refuses, naming what is wrong,
/// and creates nothing: a data directory that does not exist, a database without
/// fsync's tables (SQLite and PostgreSQL), a blob directory that is missing.
#[tokio::test]
async fn a_wrong_data_dir_or_database_is_refused_and_nothing_is_created() {
    let gc = env!("CARGO_BIN_EXE_fsync-gc");
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(gc)
            .args(args)
            .current_dir(cwd.path())
            .env_remove("DATABASE_URL")
            .env_remove("POSTGRES_URL")
            .env_remove("FSYNC_DATA_DIR")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} was not refused: {out:?}"
        );
        stderr(&out)
    };
    let nowhere = cwd.path().join("no-such-dir");
    let err = run(&["--data-dir", nowhere.to_str().unwrap(), "stats"]);
    assert!(
        err.contains("no fsync database at") && err.contains("no-such-dir"),
        "{err}"
    );
    assert!(!nowhere.exists(), "fsync-gc created {}", nowhere.display());
    // Without --data-dir: ./data is not made either.
    let err = run(&["run", "--dry-run"]);
    assert!(err.contains("no fsync database at data/fsync.db"), "{err}");
    assert!(!cwd.path().join("data").exists());
    // A SQLite file that is not a server's.
    let other = cwd.path().join("other.db");
    std::fs::write(&other, b"").unwrap();
    let url = format!("sqlite://{}", other.display());
    let err = run(&["--database-url", &url, "stats"]);
    assert!(err.contains("has no fsync tables"), "{err}");
    assert_eq!(
        std::fs::metadata(&other).unwrap().len(),
        0,
        "the file was written"
    );
    // The blob directory of a real database, missing.
    let data = cwd.path().join("data2");
    server_data_dir(&data).await;
    std::fs::remove_dir_all(data.join("blobs")).unwrap();
    let err = run(&["--data-dir", data.to_str().unwrap(), "verify"]);
    assert!(err.contains("data2/blobs does not exist"), "{err}");
    assert!(!data.join("blobs").exists());
    // A PostgreSQL database without fsync's tables stays without them.
    if let Some(base) = test_database_url() {
        let db = ScratchDatabase::create(&base).await.unwrap();
        let err = run(&[
            "--database-url",
            db.url(),
            "--data-dir",
            data.to_str().unwrap(),
            "stats",
        ]);
        assert!(err.contains("has no fsync tables"), "{err}");
        assert!(!err.contains("password"), "{err}");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            n, 0,
            "fsync-gc created tables in a database that is not the server's"
        );
    }
}

/// `fsync-gc run` under a pseudo-terminal (util-linux `script`): the progress bar
/// draws its stages on the terminal; with stderr a pipe, no terminal codes at all.
#[tokio::test]
async fn the_progress_bar_shows_on_a_terminal_and_only_there() {
    for env in envs().await {
        env.upload(&chunks(3), wall_now() - 10 * DAY).await;
        let gc = env!("CARGO_BIN_EXE_fsync-gc");
        let stores = env.store_flags.iter().map(|f| format!("'{f}'"));
        let stores = stores.collect::<Vec<_>>().join(" ");
        let command = format!("{gc} --database-url '{}' {stores} run --grace 1d", env.url);
        let out = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env_remove("DATABASE_URL")
            .env_remove("POSTGRES_URL")
            .output()
            .expect("util-linux `script` runs fsync-gc under a pseudo-terminal");
        assert!(out.status.success(), "{}: {out:?}", env.name);
        let tty = stdout(&out);
        for stage in [
            "pruning versions",
            "sweeping chunks",
            "removing orphan blobs",
        ] {
            assert!(tty.contains(stage), "{}: no {stage:?} in {tty:?}", env.name);
        }
        assert!(tty.contains("removed 0 versions"), "{}: {tty:?}", env.name);
        assert!(tty.contains('\x1b'), "{}: no terminal codes", env.name);

        let out = fsync_gc(&env, &["run", "--grace", "1d"]);
        assert!(out.status.success(), "{}: {out:?}", env.name);
        let piped = stderr(&out);
        let drawn = piped.contains('\x1b') || piped.contains("sweeping chunks");
        let name = &env.name;
        assert!(!drawn, "{name}: progress drawn into a pipe: {piped:?}");
    }
}

#[tokio::test]
async fn the_binary_reports_json_exits_on_damage_and_refuses_a_second_run() {
    for env in envs().await {
        let name = &env.name;
        let ids = chunks(3);
        env.create("f", &ids, wall_now()).await;
        env.upload(&chunks(2), wall_now() - 10 * DAY).await;

        let out = fsync_gc(&env, &["stats", "--json"]);
        assert!(out.status.success(), "{name}: {out:?}");
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stats["chunks"], 5, "{name}");
        assert_eq!(stats["reclaimable_chunks"], 2, "{name}");

        let out = fsync_gc(&env, &["run", "--dry-run", "--json"]);
        let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (dry["dry_run"].clone(), dry["chunks_deleted"].clone()),
            (true.into(), 2.into())
        );

        let gc = env.collector().await;
        let lock = gc.lock().await.unwrap();
        let out = fsync_gc(&env, &["run"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains("another fsync-gc is running"), "{name}: {err}");
        lock.release().await;

        let out = fsync_gc(&env, &["run", "--grace", "1d"]);
        assert!(out.status.success(), "{name}: {out:?}");
        let text = stdout(&out);
        let want = "removed 0 versions (0 files whole), 2 chunks";
        assert!(text.contains(want), "{name}: {text}");

        let out = fsync_gc(&env, &["verify"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
        let Some(BlobLocation::Packed { pack, .. }) = env.location(ids[1]).await else {
            panic!("{name}: not packed");
        };
        env.packs.delete(&env.ns, &pack).await.unwrap();
        let out = fsync_gc(&env, &["verify"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let text = stdout(&out);
        let want = format!("MISSING     {} pack {pack}: 3 chunk rows", env.ns);
        assert!(text.contains(&want), "{name}: {text}");
        let out = fsync_gc(&env, &["verify", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["damage_count"], 1, "{name}: {v}");
        assert_eq!(v["chunks_checked"], 3, "{name}: {v}");
        let damage = v["damage"].to_string();
        let named = damage.contains(&pack.to_hex()) && damage.contains(&env.ns.to_hex());
        assert!(named, "{name}: {damage}");

        // A grace period shorter than the lookup slack is allowed, with a warning.
        let out = fsync_gc(&env, &["run", "--grace", "10m"]);
        assert!(out.status.success(), "{name}: {out:?}");
        let err = stderr(&out);
        let warned = err.contains("grace period is shorter") && err.contains("upload them again");
        assert!(warned, "{name}: {err}");
        let out = fsync_gc(&env, &["run", "--grace", "2h"]);
        let warned = stderr(&out).contains("grace period is shorter");
        assert!(!warned, "{name}: {out:?}");
    }
}
