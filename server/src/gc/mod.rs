//! Garbage collection of the chunk store (`fsync-gc`, ARCHITECTURE §8): retention
//! prunes old versions, the sweep deletes the rows of chunks that no version
//! references, the pack passes delete packs no row points into (and pack files no row
//! names), the repack copies the live blobs of mostly dead or small packs (and the
//! loose blobs of a store written before packs) into new packs, and the orphan pass
//! deletes loose blobs that no row names. It runs while servers serve.
//!
//! # Why a committed version never points at a deleted chunk
//!
//! Five kinds of step touch a chunk `X` of namespace `N`. Each of the starred ones runs
//! in a database transaction that *first* takes `N`'s lock (`UPDATE namespaces … WHERE
//! id = N`: a row lock on PostgreSQL, the database write lock on SQLite):
//!
//! - **commit\*** checks that `X` has a row, then inserts the version's reference to `X`
//!   (a `sync/event` batch checks the chunks of all its commits, then inserts all their
//!   references, in one transaction).
//! - **record\*** (the upload path, [`crate::store_chunks`]): after writing the pack
//!   that holds `X` (durably), inserts the pack's row and `X`'s row pointing into it,
//!   or touches `X`'s row if it has one — after confirming, inside the lock, that the
//!   pack is still stored, putting it again if it is not
//!   ([`MetaRepo::record_pack`](crate::MetaRepo::record_pack)).
//! - **row delete\*** (the sweep): deletes `X`'s row only if, re-checked under the
//!   lock, no version references `X` and the row was not touched since the grace
//!   cutoff. The row goes before the blob.
//! - **blob delete\*** (a pack no row points into, marked dead under the lock; a pack
//!   file with no pack row, checked under the lock; a loose blob with no row, checked
//!   under the lock): the file goes only once nothing can name it.
//! - **move\*** (the repack): copies `X`'s blob into a new pack, written durably, then
//!   under the lock points `X`'s row there if it still points where the blob was read;
//!   the old pack is retired and deleted only after the grace period (a reader that
//!   looked up the old place still finds it; one that misses looks up again).
//!
//! Because the steps are serialized by the lock, consider the order of any two:
//!
//! 1. *commit, then row delete*: the reference exists, the re-check sees it, `X` stays.
//! 2. *row delete, then commit*: the commit finds no row and fails with
//!    `MissingChunks([X])` (HTTP 409); the client uploads `X` again.
//! 3. *blob delete, then record*: the confirmation inside record finds the pack gone
//!    (an upload stalled past the grace period, whose unrecorded pack a run removed)
//!    and puts it again before the rows become visible.
//! 4. *record, then blob delete*: the pack has its row and a chunk row points into
//!    it; neither pack pass touches it.
//!
//! Hence *a row is visible only while its blob exists* (3, 4; a failed confirmation
//! rolls the row back), and *a referenced row is never deleted* (1; references are
//! only removed by retention, which also runs under the lock). A committed version's
//! chunks are therefore recorded and stored (invariant I6). The grace period is not
//! needed for safety: it spares clients the re-uploads of case 2 for chunks they
//! were told are present (`chunks/missing` touches them, or leaves them when touched
//! within the last hour, so they stay for at least the grace period less an hour) or
//! just uploaded.
//!
//! Restores copy an old version's chunk list; they re-read it under the lock, so a
//! version pruned meanwhile makes the restore fail with "not found" instead of
//! referencing swept chunks.
//!
//! A blob delete that fails after its row went leaves an orphan blob; the orphan pass
//! of the next run (after the grace period, by the blob's modification time) retries.
//! One collection runs at a time: a PostgreSQL advisory lock, or an exclusive lock on
//! the file `<database>.gc.lock` for SQLite.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fsync_common::{ChunkId, NamespaceId};
use fsync_store::{BlobStore, PackStore, StoreError};
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::db::gc::{GcLockHandle, GcRepo, LockFailure};
use crate::db::DbError;

mod packs;
mod rebuild;
mod repack;
mod sweep;
mod verify;

pub use rebuild::RebuildReport;
pub use repack::Repack;
pub use verify::{Damage, Stats, VerifyReport};

/// Rows handled per transaction, and blobs per store listing page.
pub const DEFAULT_BATCH: usize = 1000;

/// Errors of garbage collection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// Another collection holds the GC lock.
    #[error("another fsync-gc is running ({0}); try again when it has finished")]
    Busy(String),
    /// `--namespace` names no namespace.
    #[error("namespace {0} does not exist")]
    NoSuchNamespace(NamespaceId),
    /// The GC lock file could not be opened.
    #[error("GC lock file {path}: {source}")]
    LockFile {
        /// The lock file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database or blob directory named is not a server's (missing, or without
    /// fsync's tables): nothing is created or changed.
    #[error("{0}")]
    NotAServerStore(String),
}

/// Which versions to keep. Unset fields keep everything they govern; see
/// [`RunOptions::retention`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// Keep the N newest versions of every file (the head counts; at least 1).
    pub keep_versions: Option<u64>,
    /// Keep versions replaced (by an edit or a delete) in the last D days; tombstones
    /// older than that are removed with all their versions.
    pub keep_days: Option<u64>,
}

/// Where a run is, reported to a [`GcHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcStage {
    /// Sweep candidates are chosen; their rows are about to be deleted.
    BeforeRowDelete,
    /// Rows are deleted (committed); their blobs are about to be deleted.
    AfterRowDelete,
    /// The blobs of a batch are deleted and the namespace lock released.
    AfterBlobDelete,
}

/// What a [`GcHook`] is told.
#[derive(Debug, Clone)]
pub struct GcEvent {
    /// The stage.
    pub stage: GcStage,
    /// The namespace.
    pub namespace: NamespaceId,
    /// The chunks of the batch (candidates, or deleted rows).
    pub chunks: Vec<ChunkId>,
}

/// Called at each [`GcStage`], outside any lock; the run waits for the future. Tests
/// use it to line up races deterministically.
pub type GcHook = Arc<dyn Fn(GcEvent) -> BoxFuture<'static, ()> + Send + Sync>;

/// Options of [`Collector::run`].
#[derive(Clone)]
pub struct RunOptions {
    /// Report what would be removed; remove nothing.
    pub dry_run: bool,
    /// Chunks uploaded or touched within this long are kept, referenced or not; so are
    /// orphan blobs written within it.
    pub grace: Duration,
    /// Version retention: a version is kept when it is its file's head, or among the
    /// `keep_versions` newest, or was replaced within `keep_days`. With neither set,
    /// no version is pruned.
    pub retention: Retention,
    /// Only this namespace (default: all).
    pub namespace: Option<NamespaceId>,
    /// "Now" in Unix seconds (default: the clock).
    pub now: Option<i64>,
    /// Rows per transaction.
    pub batch: usize,
    /// Repacking after the sweep (`None`: no repack).
    pub repack: Option<Repack>,
    /// Test hook.
    pub hook: Option<GcHook>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            grace: Duration::from_secs(24 * 3600),
            retention: Retention::default(),
            namespace: None,
            now: None,
            batch: DEFAULT_BATCH,
            repack: Some(Repack::default()),
            hook: None,
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("dry_run", &self.dry_run)
            .field("grace", &self.grace)
            .field("retention", &self.retention)
            .field("namespace", &self.namespace)
            .field("now", &self.now)
            .field("batch", &self.batch)
            .field("repack", &self.repack)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

/// What a run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Versions pruned by retention.
    pub versions_pruned: u64,
    /// Files removed whole (tombstones older than the policy).
    pub files_removed: u64,
    /// Manifest pages no version named any more, deleted by the sweep (not counted in a
    /// dry run, whose chunk count includes what they held).
    pub pages_deleted: u64,
    /// Chunk rows deleted by the sweep.
    pub chunks_deleted: u64,
    /// Stored bytes of those chunks.
    pub bytes_reclaimed: u64,
    /// Blobs with no row (crashed uploads, earlier failed deletes) removed.
    pub orphan_blobs_deleted: u64,
    /// Their bytes.
    pub orphan_bytes_reclaimed: u64,
    /// Partial writes left by crashed puts (temp files older than the grace period)
    /// removed.
    pub temp_files_deleted: u64,
    /// Their bytes.
    pub temp_bytes_reclaimed: u64,
    /// Packs deleted because no chunk row pointed into them any more.
    pub packs_deleted: u64,
    /// Their bytes.
    pub pack_bytes_reclaimed: u64,
    /// Pack files with no row (uploads that crashed before recording them) removed;
    /// their bytes count in `orphan_bytes_reclaimed`.
    pub orphan_packs_deleted: u64,
    /// Packs whose live blobs were copied into new packs (retired; deleted after the
    /// grace period). Their dead bytes count in `pack_bytes_reclaimed`.
    pub packs_repacked: u64,
    /// Live bytes copied by the repack.
    pub repacked_bytes: u64,
    /// Loose blobs of an older store moved into packs.
    pub loose_blobs_packed: u64,
    /// Wall time of the repack, in milliseconds.
    pub repack_ms: u64,
    /// Blob and pack deletions that failed; the orphan pass of a later run retries.
    pub blob_delete_failures: u64,
    /// Wall time, in milliseconds.
    pub elapsed_ms: u64,
}

/// Progress of a long task (a progress bar on a terminal, nothing otherwise).
pub trait Progress: Send + Sync {
    /// A stage begins; `total` units if known.
    fn stage(&self, name: &str, total: Option<u64>);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The stage is over.
    fn finish(&self);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Proof that this process holds the one-GC-at-a-time lock; released on
/// [`GcLock::release`] (or when dropped / the process ends).
#[derive(Debug)]
pub struct GcLock(Option<GcLockHandle>);

impl GcLock {
    /// Releases the lock.
    pub async fn release(mut self) {
        if let Some(h) = self.0.take() {
            h.release().await;
        }
    }
}

/// The garbage collector over one metadata database and blob store.
#[derive(Debug, Clone)]
pub struct Collector {
    repo: GcRepo,
    /// Loose blobs of a store written before packs.
    blobs: Arc<dyn BlobStore>,
    packs: Arc<dyn PackStore>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn grace_secs(grace: Duration) -> i64 {
    i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
}

/// Sums a counter without overflow.
fn add(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

impl Collector {
    /// Opens the database named by `database_url` (migrating it if needed) and
    /// collects over `packs` and the loose `blobs` of an older store.
    pub async fn open(
        database_url: &str,
        blobs: Arc<dyn BlobStore>,
        packs: Arc<dyn PackStore>,
    ) -> Result<Self, GcError> {
        Ok(Self {
            repo: GcRepo::open(database_url).await?,
            blobs,
            packs,
        })
    }

    /// [`Collector::open`] over the local stores below `files` (a `FILES_DIRECTORY`):
    /// its packs and the loose blobs of an older store.
    pub async fn open_local(database_url: &str, files: &std::path::Path) -> Result<Self, GcError> {
        let blobs = Arc::new(fsync_store::LocalStore::open(files)?);
        let packs = Arc::new(fsync_store::LocalPacks::open(files)?);
        Self::open(database_url, blobs, packs).await
    }

    /// [`Collector::open_storage`], after checking that `storage` names a server's
    /// stores (what `fsync-gc` opens): the database exists and has fsync's tables, and
    /// the blob directory exists when the packs are on the local disk. A wrong
    /// `--data-dir` or `DATABASE_URL` is refused before anything is created.
    pub async fn open_existing(storage: &crate::StorageConfig) -> Result<Self, GcError> {
        if let Some(why) = crate::db::not_a_server_store(storage, "fsync-gc").await? {
            return Err(GcError::NotAServerStore(why));
        }
        Self::open_storage(storage).await
    }

    /// [`Collector::open`] over the stores a server with `storage` uses: its packs
    /// (on S3 or in `FILES_DIRECTORY`) and the loose blobs of an older local store.
    pub async fn open_storage(storage: &crate::StorageConfig) -> Result<Self, GcError> {
        let blobs = Arc::new(fsync_store::LocalStore::open(storage.files_directory())?);
        let packs = storage
            .open_packs()
            .map_err(|e| GcError::Store(fsync_store::StoreError::Backend(e.to_string())))?;
        Self::open(&storage.database_url(), blobs, packs).await
    }

    /// Takes the one-GC-at-a-time lock, or fails with [`GcError::Busy`].
    pub async fn lock(&self) -> Result<GcLock, GcError> {
        match self.repo.try_lock_gc().await {
            Ok(h) => Ok(GcLock(Some(h))),
            Err(LockFailure::Busy(holder)) => Err(GcError::Busy(holder)),
            Err(LockFailure::Io(path, source)) => Err(GcError::LockFile { path, source }),
            Err(LockFailure::Db(e)) => Err(e.into()),
        }
    }

    async fn namespaces(&self, only: Option<NamespaceId>) -> Result<Vec<NamespaceId>, GcError> {
        match only {
            Some(ns) if self.repo.namespace_exists(ns).await? => Ok(vec![ns]),
            Some(ns) => Err(GcError::NoSuchNamespace(ns)),
            None => Ok(self.repo.namespaces().await?),
        }
    }
}
