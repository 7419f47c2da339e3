//! Garbage collection of the chunk store (`fsync-gc`, ARCHITECTURE §8): retention
//! prunes old versions, the sweep deletes chunks that no version references, the
//! orphan pass deletes blobs that no row names. It runs while servers serve.
//!
//! # Why a committed version never points at a deleted chunk
//!
//! Four kinds of step touch a chunk `X` of namespace `N`. Each of the starred ones runs
//! in a database transaction that *first* takes `N`'s lock (`UPDATE namespaces … WHERE
//! id = N`: a row lock on PostgreSQL, the database write lock on SQLite):
//!
//! - **commit\*** checks that `X` has a row, then inserts the version's reference to `X`
//!   (a `sync/event` batch checks the chunks of all its commits, then inserts all their
//!   references, in one transaction).
//! - **record\*** (the upload path, [`store_chunks`]): after putting the blob, inserts or
//!   touches `X`'s row, and — still inside the lock — confirms that the blob is stored,
//!   putting it again if it is not
//!   ([`MetaRepo::record_chunks_confirmed`](crate::MetaRepo::record_chunks_confirmed)).
//! - **row delete\*** (sweep, phase 1): deletes `X`'s row only if, re-checked under the
//!   lock, no version references `X` and the row was not touched since the grace
//!   cutoff. The row goes before the blob.
//! - **blob delete\*** (sweep phase 2 and the orphan pass): under the lock, checks that
//!   `X` has no row, deletes the blob, then releases the lock.
//!
//! Because the steps are serialized by the lock, consider the order of any two:
//!
//! 1. *commit, then row delete*: the reference exists, the re-check sees it, `X` stays.
//! 2. *row delete, then commit*: the commit finds no row and fails with
//!    `MissingChunks([X])` (HTTP 409); the client uploads `X` again.
//! 3. *blob delete, then record*: the confirmation inside record finds the blob gone
//!    (an upload whose put saw the old blob as "already present" lost it) and puts it
//!    again before the row becomes visible.
//! 4. *record, then blob delete*: the blob delete sees the row and leaves the blob.
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

mod upload;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fsync_common::{ChunkId, NamespaceId};
use fsync_store::{BlobStore, StoreError};
use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use serde::Serialize;

use crate::db::gc::{GcLockHandle, GcRepo, LockFailure, RetentionSql};
use crate::db::DbError;

pub use upload::{put_blobs, record_stored, store_chunks, PutBlobs, UploadError};

/// Rows handled per transaction, and blobs per store listing page.
pub const DEFAULT_BATCH: usize = 1000;
/// Blob deletions in flight at once.
const DELETE_CONCURRENCY: usize = 16;
/// Most damaged chunks `verify` lists (it still counts them all).
const MAX_LISTED_DAMAGE: usize = 10_000;

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
    /// Blob deletions that failed; the orphan pass of a later run retries them.
    pub blob_delete_failures: u64,
    /// Wall time, in milliseconds.
    pub elapsed_ms: u64,
}

/// Totals of [`Collector::stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Files (live and tombstoned).
    pub files: u64,
    /// Versions in history.
    pub versions: u64,
    /// Chunk rows.
    pub chunks: u64,
    /// Their stored (compressed, encrypted) bytes.
    pub stored_bytes: u64,
    /// Chunks some version references.
    pub referenced_chunks: u64,
    /// Their stored bytes.
    pub referenced_stored_bytes: u64,
    /// Plaintext bytes of every version in history (what storing each version whole
    /// would take).
    pub referenced_logical_bytes: u64,
    /// Plaintext bytes of the live files' heads.
    pub head_logical_bytes: u64,
    /// `referenced_logical_bytes / referenced_stored_bytes` (compression included).
    pub dedup_ratio: f64,
    /// Chunks no version references.
    pub unreferenced_chunks: u64,
    /// Their stored bytes.
    pub unreferenced_bytes: u64,
    /// Unreferenced chunks past the grace period: a sweep now would delete them.
    pub reclaimable_chunks: u64,
    /// Their stored bytes.
    pub reclaimable_bytes: u64,
}

/// One damaged chunk found by [`Collector::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Damage {
    /// A version references a chunk that has no row.
    Unrecorded {
        /// Namespace.
        namespace: NamespaceId,
        /// Chunk.
        chunk: ChunkId,
    },
    /// A chunk row has no blob.
    MissingBlob {
        /// Namespace.
        namespace: NamespaceId,
        /// Chunk.
        chunk: ChunkId,
        /// Whether a version references it (else a client may still be told it is
        /// present and commit it).
        referenced: bool,
    },
    /// The blob's size differs from the recorded stored size.
    SizeMismatch {
        /// Namespace.
        namespace: NamespaceId,
        /// Chunk.
        chunk: ChunkId,
        /// Recorded size.
        recorded: u64,
        /// Size in the store.
        stored: u64,
    },
}

/// What [`Collector::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Chunk rows checked.
    pub chunks_checked: u64,
    /// Blobs listed in the store.
    pub blobs_checked: u64,
    /// Damage found (at most 10,000 listed; see `damage_count`).
    pub damage: Vec<Damage>,
    /// All damage found.
    pub damage_count: u64,
    /// Blobs no row names (harmless; the next run removes them after the grace period).
    pub orphan_blobs: u64,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damage_count == 0
    }

    fn push(&mut self, d: Damage) {
        self.damage_count += 1;
        if self.damage.len() < MAX_LISTED_DAMAGE {
            self.damage.push(d);
        }
    }
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
    blobs: Arc<dyn BlobStore>,
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
    /// collects over `blobs`.
    pub async fn open(database_url: &str, blobs: Arc<dyn BlobStore>) -> Result<Self, GcError> {
        Ok(Self {
            repo: GcRepo::open(database_url).await?,
            blobs,
        })
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

    /// Prunes versions by the retention policy, sweeps unreferenced chunks and removes
    /// orphan blobs; with `dry_run`, only counts. Takes the GC lock for a real run.
    pub async fn run(
        &self,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport, GcError> {
        let started = Instant::now();
        if opts.grace.as_secs() < crate::db::TOUCH_SLACK_SECS.unsigned_abs() {
            tracing::warn!(
                grace_secs = opts.grace.as_secs(),
                "the grace period is shorter than the {} s for which chunks/missing leaves a \
                 present chunk untouched: a client that asked about its chunks within that \
                 time may find them swept and has to upload them again (nothing is lost)",
                crate::db::TOUCH_SLACK_SECS
            );
        }
        let lock = if opts.dry_run {
            None
        } else {
            Some(self.lock().await?)
        };
        let result = self.run_locked(opts, progress).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let mut report = result?;
        report.elapsed_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        Ok(report)
    }

    async fn run_locked(
        &self,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport, GcError> {
        let now = opts.now.unwrap_or_else(now_secs);
        let cutoff = now.saturating_sub(grace_secs(opts.grace));
        let policy = RetentionSql {
            keep_versions: opts.retention.keep_versions.map(|n| n.max(1)),
            keep_after: opts.retention.keep_days.map(|d| {
                now.saturating_sub(i64::try_from(d.saturating_mul(86_400)).unwrap_or(i64::MAX))
            }),
        };
        let batch = opts.batch.max(1);
        let namespaces = self.namespaces(opts.namespace).await?;
        let mut report = RunReport {
            dry_run: opts.dry_run,
            ..RunReport::default()
        };

        // 1. Retention.
        progress.stage("pruning versions", None);
        for &ns in &namespaces {
            if opts.dry_run {
                let p = self.repo.count_prunable(ns, policy).await?;
                add(&mut report.versions_pruned, p.versions);
                add(&mut report.files_removed, p.files);
                progress.advance(p.versions);
                continue;
            }
            loop {
                let p = self.repo.prune_tombstones(ns, policy, batch).await?;
                if p.files == 0 {
                    break;
                }
                add(&mut report.versions_pruned, p.versions);
                add(&mut report.files_removed, p.files);
                progress.advance(p.versions);
            }
            loop {
                let n = self.repo.prune_versions(ns, policy, batch).await?;
                if n == 0 {
                    break;
                }
                add(&mut report.versions_pruned, n);
                progress.advance(n);
            }
        }
        progress.finish();

        // 2. Sweep.
        progress.stage("sweeping chunks", None);
        for &ns in &namespaces {
            self.sweep(ns, cutoff, policy, batch, opts, progress, &mut report)
                .await?;
        }
        progress.finish();

        // 3. Orphan blobs.
        progress.stage("removing orphan blobs", None);
        let old_before =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(cutoff).unwrap_or(0));
        // A partial write is judged by the real clock even when `opts.now` is moved
        // ahead (tests): removing the temp file of a put in flight fails that upload.
        let temps_before = old_before.min(
            SystemTime::now()
                .checked_sub(opts.grace)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        for &ns in &namespaces {
            let cutoffs = (old_before, temps_before);
            self.orphans(ns, cutoffs, batch, opts.dry_run, progress, &mut report)
                .await?;
        }
        progress.finish();
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn sweep(
        &self,
        ns: NamespaceId,
        cutoff: i64,
        policy: RetentionSql,
        batch: usize,
        opts: &RunOptions,
        progress: &dyn Progress,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        let hook = |stage, chunks: Vec<ChunkId>| async move {
            if let Some(h) = &opts.hook {
                h(GcEvent {
                    stage,
                    namespace: ns,
                    chunks,
                })
                .await;
            }
        };
        let mut after = None;
        loop {
            let ignoring = opts.dry_run.then_some(policy);
            let candidates = self
                .repo
                .sweep_candidates(ns, after, cutoff, batch, ignoring)
                .await?;
            let Some(&(last, _)) = candidates.last() else {
                return Ok(());
            };
            after = Some(last);
            if opts.dry_run {
                add(&mut report.chunks_deleted, candidates.len() as u64);
                add(
                    &mut report.bytes_reclaimed,
                    candidates.iter().map(|c| c.1).sum(),
                );
                progress.advance(candidates.len() as u64);
                continue;
            }
            let ids: Vec<ChunkId> = candidates.iter().map(|c| c.0).collect();
            hook(GcStage::BeforeRowDelete, ids.clone()).await;
            let deleted = self.repo.delete_chunk_rows(ns, &ids, cutoff).await?;
            add(&mut report.chunks_deleted, deleted.len() as u64);
            add(
                &mut report.bytes_reclaimed,
                deleted.iter().map(|c| c.1).sum(),
            );
            let gone: Vec<ChunkId> = deleted.iter().map(|c| c.0).collect();
            hook(GcStage::AfterRowDelete, gone.clone()).await;
            let (_, failed) = self.delete_unrecorded_blobs(ns, &gone).await?;
            add(&mut report.blob_delete_failures, failed);
            hook(GcStage::AfterBlobDelete, gone).await;
            progress.advance(candidates.len() as u64);
        }
    }

    async fn orphans(
        &self,
        ns: NamespaceId,
        (old_before, temps_before): (SystemTime, SystemTime),
        batch: usize,
        dry_run: bool,
        progress: &dyn Progress,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        // Partial writes of puts that crashed (never visible as blobs). One that cannot
        // be removed must not stop the collection: warned about, retried next run.
        match self
            .blobs
            .remove_stale_temp_files(&ns, temps_before, dry_run)
            .await
        {
            Ok((temps, temp_bytes)) => {
                add(&mut report.temp_files_deleted, temps);
                add(&mut report.temp_bytes_reclaimed, temp_bytes);
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "could not remove partial writes; the next run retries");
                add(&mut report.blob_delete_failures, 1);
            }
        }
        let mut after = None;
        loop {
            let page = self.blobs.list(&ns, after, batch).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            let old: Vec<_> = page.iter().filter(|b| b.modified < old_before).collect();
            let ids: Vec<ChunkId> = old.iter().map(|b| b.id).collect();
            let recorded: HashSet<ChunkId> = self
                .repo
                .rows_of(ns, &ids)
                .await?
                .into_iter()
                .map(|r| r.0)
                .collect();
            let orphans: Vec<_> = old
                .into_iter()
                .filter(|b| !recorded.contains(&b.id))
                .collect();
            if dry_run {
                add(&mut report.orphan_blobs_deleted, orphans.len() as u64);
                add(
                    &mut report.orphan_bytes_reclaimed,
                    orphans.iter().map(|b| b.size).sum(),
                );
            } else if !orphans.is_empty() {
                let ids: Vec<ChunkId> = orphans.iter().map(|b| b.id).collect();
                let (deleted, failed) = self.delete_unrecorded_blobs(ns, &ids).await?;
                let deleted: HashSet<ChunkId> = deleted.into_iter().collect();
                add(&mut report.orphan_blobs_deleted, deleted.len() as u64);
                add(
                    &mut report.orphan_bytes_reclaimed,
                    orphans
                        .iter()
                        .filter(|b| deleted.contains(&b.id))
                        .map(|b| b.size)
                        .sum(),
                );
                add(&mut report.blob_delete_failures, failed);
            }
            progress.advance(page.len() as u64);
        }
    }

    /// Deletes the blobs of those `ids` that have no row, holding the namespace lock
    /// (so no upload can record one meanwhile). Returns the ids whose blob was
    /// deleted and the number of failed deletions (logged; retried by a later run).
    async fn delete_unrecorded_blobs(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<(Vec<ChunkId>, u64), GcError> {
        if ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let (lock, unrecorded) = self.repo.lock_unrecorded(ns, ids).await?;
        let results: Vec<(ChunkId, Result<bool, StoreError>)> =
            futures_util::stream::iter(unrecorded)
                .map(|id| async move { (id, self.blobs.delete(&ns, &id).await) })
                .buffer_unordered(DELETE_CONCURRENCY)
                .collect()
                .await;
        lock.release().await?;
        let mut deleted = Vec::with_capacity(results.len());
        let mut failed = 0;
        for (id, r) in results {
            match r {
                Ok(true) => deleted.push(id),
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(namespace = %ns, chunk = %id, error = %e, "deleting a blob failed; a later run retries it");
                }
            }
        }
        Ok((deleted, failed))
    }

    /// Checks that every chunk row has its blob with the recorded size, and that every
    /// chunk a version references has a row. Reads only.
    pub async fn verify(
        &self,
        namespace: Option<NamespaceId>,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, GcError> {
        let batch = batch.max(1);
        let mut report = VerifyReport::default();
        progress.stage("verifying", None);
        for ns in self.namespaces(namespace).await? {
            for chunk in self
                .repo
                .unrecorded_references(ns, MAX_LISTED_DAMAGE)
                .await?
            {
                report.push(Damage::Unrecorded {
                    namespace: ns,
                    chunk,
                });
            }
            // Every row has its blob.
            let mut after = None;
            loop {
                let rows = self.repo.chunk_page(ns, after, batch).await?;
                let Some(&(last, _, _)) = rows.last() else {
                    break;
                };
                after = Some(last);
                let ids: Vec<ChunkId> = rows.iter().map(|r| r.0).collect();
                let present = self.blobs.contains_many(&ns, &ids).await?;
                let missing: Vec<ChunkId> = ids
                    .iter()
                    .zip(&present)
                    .filter(|(_, p)| !**p)
                    .map(|(id, _)| *id)
                    .collect();
                if !missing.is_empty() {
                    // A collection running meanwhile may have deleted row and blob.
                    let still: HashSet<ChunkId> = self
                        .repo
                        .rows_of(ns, &missing)
                        .await?
                        .into_iter()
                        .map(|r| r.0)
                        .collect();
                    for (id, _, referenced) in rows.iter().filter(|r| still.contains(&r.0)) {
                        report.push(Damage::MissingBlob {
                            namespace: ns,
                            chunk: *id,
                            referenced: *referenced,
                        });
                    }
                }
                add(&mut report.chunks_checked, rows.len() as u64);
                progress.advance(rows.len() as u64);
            }
            // Every blob has its recorded size (and which blobs are orphans).
            let mut after = None;
            loop {
                let page = self.blobs.list(&ns, after, batch).await?;
                let Some(last) = page.last() else {
                    break;
                };
                after = Some(last.id);
                let ids: Vec<ChunkId> = page.iter().map(|b| b.id).collect();
                let rows: std::collections::HashMap<ChunkId, u64> =
                    self.repo.rows_of(ns, &ids).await?.into_iter().collect();
                for b in &page {
                    match rows.get(&b.id) {
                        None => report.orphan_blobs += 1,
                        Some(&recorded) if recorded != b.size => {
                            report.push(Damage::SizeMismatch {
                                namespace: ns,
                                chunk: b.id,
                                recorded,
                                stored: b.size,
                            });
                        }
                        Some(_) => {}
                    }
                }
                add(&mut report.blobs_checked, page.len() as u64);
            }
        }
        progress.finish();
        Ok(report)
    }

    /// Totals over one namespace or all; `grace` decides what counts as reclaimable.
    pub async fn stats(
        &self,
        namespace: Option<NamespaceId>,
        grace: Duration,
        now: Option<i64>,
    ) -> Result<Stats, GcError> {
        if let Some(ns) = namespace {
            self.namespaces(Some(ns)).await?;
        }
        let now = now.unwrap_or_else(now_secs);
        let r = self
            .repo
            .stats(namespace, now.saturating_sub(grace_secs(grace)))
            .await?;
        Ok(Stats {
            files: r.files,
            versions: r.versions,
            chunks: r.chunks,
            stored_bytes: r.stored_bytes,
            referenced_chunks: r.referenced_chunks,
            referenced_stored_bytes: r.referenced_stored_bytes,
            referenced_logical_bytes: r.logical_bytes,
            head_logical_bytes: r.head_logical_bytes,
            dedup_ratio: if r.referenced_stored_bytes == 0 {
                0.0
            } else {
                r.logical_bytes as f64 / r.referenced_stored_bytes as f64
            },
            unreferenced_chunks: r.unreferenced_chunks,
            unreferenced_bytes: r.unreferenced_bytes,
            reclaimable_chunks: r.reclaimable_chunks,
            reclaimable_bytes: r.reclaimable_bytes,
        })
    }
}
