//! The sync engine: one round = pull remote changes → scan and hash local changes →
//! plan (pure, `planner.rs`) → execute: uploads, remote deletes and renames, then
//! downloads and local deletes/moves. The journal cursor advances only when every
//! remote change of the round was applied, so a failed round is simply repeated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fsync_chunker::{Chunker, FileDigest, HashOptions};
use fsync_common::wire::{
    ChunkRef, CommitOutcome, CommitRequest, CommitResponse, DeleteOutcome, DeleteRequest, FileMeta,
    Manifest, RenameRequest, SyncEvent, SyncEventResult,
};
use fsync_common::{
    ChunkId, DeviceId, ErrorCode, FileId, NamespaceId, Seq, SyncPath, VersionNo, VersionVector,
};
use fsync_store::BlobCodec;

use crate::api::{ApiClient, ClientError};
use crate::planner::{plan, LocalEntry, Op, PlanInput};
use crate::scan::{self, LocalFile, TEMP_PREFIX};
use crate::state::{BaseEntry, State, StateError};

/// Chunks fetched per download window (bounds memory for large files).
const DOWNLOAD_WINDOW: usize = 128;
/// Most bytes of small files whose chunks are fetched in one request.
const PREFETCH_GROUP_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes of blobs gathered before one batch upload.
const UPLOAD_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Upload batch requests running at once while the next batch is encoded.
const UPLOAD_IN_FLIGHT: usize = 2;
/// Files at least this large are hashed with the chunker's parallel path.
const PARALLEL_HASH_BYTES: u64 = 16 * 1024 * 1024;
/// Chunks read, then encoded in parallel, at a time.
const ENCODE_GROUP: usize = 32;

/// Why a sync round failed. The daemon retries with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The sync root or its marker is missing (an unmounted disk?): nothing is sent.
    #[error("sync root {0} is missing or lost its .fsync marker (unmounted?); not syncing, no deletes sent")]
    RootMissing(PathBuf),
    /// The server could not be reached or refused.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// Local state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// Local file system.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Data from the server failed verification; nothing was written.
    #[error("refused data from the server for {path}: {reason}")]
    Verify {
        /// File.
        path: String,
        /// What failed.
        reason: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SyncError + 'a {
    move |source| SyncError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Keys and identity of a logged-in session.
#[derive(Clone)]
pub struct Session {
    /// API client.
    pub api: ApiClient,
    /// Namespace synced.
    pub ns: NamespaceId,
    /// This device.
    pub device: DeviceId,
    /// Blob codec (namespace keys).
    pub codec: Arc<BlobCodec>,
    /// Chunker (namespace id key).
    pub chunker: Arc<Chunker>,
    /// The namespace's id key (to check chunks read back from local files).
    pub id_key: fsync_common::IdKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("ns", &self.ns)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// What a round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Files committed.
    pub uploaded: usize,
    /// Files written locally.
    pub downloaded: usize,
    /// Local files deleted because the server deleted them.
    pub deleted_local: usize,
    /// Deletes sent.
    pub deleted_remote: usize,
    /// Renames (either side).
    pub renamed: usize,
    /// Conflicts resolved by the server (a copy was made).
    pub conflicts: usize,
    /// Files left for a later round (still being written, changed during transfer, failed).
    pub deferred: Vec<(String, String)>,
}

impl RoundReport {
    /// True when the round changed nothing.
    pub fn is_idle(&self) -> bool {
        self.uploaded + self.downloaded + self.deleted_local + self.deleted_remote + self.renamed
            == 0
    }
}

/// The engine of one sync root.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    marker: PathBuf,
    state: State,
    session: Session,
    /// Temp files of an earlier, interrupted run were removed.
    cleaned: bool,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Engine {
    /// An engine syncing `root`; `marker` is the directory whose presence proves the
    /// root is the one that was synced (normally `<root>/.fsync`).
    pub fn new(root: PathBuf, marker: PathBuf, state: State, session: Session) -> Self {
        // Test builds arm fault injection by environment: say so loudly at start.
        fsync_common::failpoint::init();
        Self {
            root,
            marker,
            state,
            session,
            cleaned: false,
        }
    }

    /// The local state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// One full sync round.
    pub async fn sync_once(&mut self) -> Result<RoundReport, SyncError> {
        if !self.root.is_dir() || !self.marker.is_dir() {
            return Err(SyncError::RootMissing(self.root.clone()));
        }
        if !self.cleaned {
            remove_stale_temp_files(&self.root);
            self.cleaned = true;
        }
        let mut report = RoundReport::default();
        // 1. Remote changes since the cursor, latest state per file.
        let since = self.state.cursor()?;
        let (remote, cursor) = self.pull(since).await?;
        // 2. Local tree, hashing only what changed since the base.
        let base = self.state.all()?;
        let (local, digests) = self.scan_local(&base, &mut report).await?;
        // 3. Plan.
        let ops = plan(PlanInput {
            base: &base,
            local: &local,
            remote: &remote,
        });
        if !ops.is_empty() {
            tracing::debug!(ops = ops.len(), "planned");
        }
        // 4. Execute.
        let mut remote_ok = true;
        let mut uploads = Vec::new();
        let mut remote_ops = Vec::new();
        let mut local_ops = Vec::new();
        for op in ops {
            match op {
                Op::Upload { .. } => uploads.push(op),
                Op::DeleteRemote { .. } | Op::RenameRemote { .. } => remote_ops.push(op),
                _ => local_ops.push(op),
            }
        }
        for op in local_ops.iter().filter(|o| matches!(o, Op::Forget { .. })) {
            if let Op::Forget { path } = op {
                self.state.remove(path)?;
            }
        }
        self.run_remote_ops(
            remote_ops,
            &base,
            &local,
            &digests,
            &mut uploads,
            &mut report,
        )
        .await?;
        let upload_items: Vec<(SyncPath, VersionVector)> = uploads
            .into_iter()
            .filter_map(|op| match op {
                Op::Upload { path, base } => Some((path, base)),
                _ => None,
            })
            .collect();
        self.upload(upload_items, &base, &local, &digests, &mut report)
            .await?;
        let reuse = self.reuse_map(&base, &local);
        let (downloads, local_ops): (Vec<Op>, Vec<Op>) = local_ops
            .into_iter()
            .partition(|op| matches!(op, Op::Download { .. }));
        let metas = downloads
            .into_iter()
            .filter_map(|op| match op {
                Op::Download { meta } => Some(meta),
                _ => None,
            })
            .collect();
        for (path, why) in self.download_many(metas, &reuse, &mut report).await? {
            remote_ok = false;
            if let Some(why) = why {
                report.deferred.push((path, why));
            }
        }
        for op in local_ops {
            let path_for_log = op_path(&op);
            match self
                .apply_local(op, &base, &local, &digests, &reuse, &mut report)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    remote_ok = false;
                    report
                        .deferred
                        .push((path_for_log, CHANGED_MEANWHILE.into()));
                }
                Err(e) => {
                    remote_ok = false;
                    report.deferred.push((path_for_log, deferrable(e)?));
                }
            }
        }
        if remote_ok && cursor > since {
            self.state.set_cursor(cursor)?;
        }
        self.state.set_last_sync(now_secs())?;
        Ok(report)
    }

    /// Reads the journal from `since` to its end.
    async fn pull(&self, since: Seq) -> Result<(Vec<FileMeta>, Seq), SyncError> {
        let mut latest: BTreeMap<FileId, FileMeta> = BTreeMap::new();
        let mut cursor = since;
        loop {
            let page = self
                .session
                .api
                .changes(self.session.ns, cursor, 1000)
                .await?;
            for c in page.changes {
                latest.insert(c.file.file_id, c.file);
            }
            cursor = page.cursor.max(cursor);
            if !page.has_more {
                break;
            }
        }
        let mut remote: Vec<FileMeta> = latest.into_values().collect();
        remote.sort_by_key(|m| m.seq);
        Ok((remote, cursor))
    }

    /// Scans the root; hashes (in parallel) files whose stat differs from their base.
    /// A file that changes while being hashed is left for the next round.
    async fn scan_local(
        &self,
        base: &BTreeMap<SyncPath, BaseEntry>,
        report: &mut RoundReport,
    ) -> Result<
        (
            BTreeMap<SyncPath, LocalEntry>,
            HashMap<SyncPath, FileDigest>,
        ),
        SyncError,
    > {
        let root = self.root.clone();
        let scan = tokio::task::spawn_blocking(move || scan::scan(&root))
            .await
            .expect("scan task")
            .map_err(io_err("scanning", &self.root))?;
        for (p, why) in &scan.skipped {
            tracing::debug!(path = %p.display(), reason = %why, "not synced");
        }
        let mut local = BTreeMap::new();
        let mut to_hash = Vec::new();
        for (path, f) in scan.files {
            match base.get(&path) {
                Some(b) if b.same_stat(&f) => {
                    local.insert(
                        path,
                        LocalEntry {
                            file: f,
                            hash: b.content_hash,
                        },
                    );
                }
                _ => to_hash.push(f),
            }
        }
        let chunker = self.session.chunker.clone();
        let root = self.root.clone();
        let bar = crate::progress::bytes(
            "hashing changed files",
            to_hash.iter().map(|f| f.size).sum(),
        );
        let hashed = tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            let out = to_hash
                .into_par_iter()
                .map(|f| {
                    bar.inc(f.size);
                    let full = f.path.to_local(&root);
                    let digest = std::fs::File::open(&full)
                        .map_err(|e| e.to_string())
                        .and_then(|file| {
                            // A large file alone would leave the other cores idle.
                            if f.size >= PARALLEL_HASH_BYTES {
                                chunker.digest_reader_parallel(file, HashOptions::default())
                            } else {
                                chunker.digest_reader(file, HashOptions::default())
                            }
                            .map_err(|e| e.to_string())
                        });
                    // Stable only if the stat did not move while we read it.
                    let after =
                        std::fs::symlink_metadata(&full).map(|md| scan::stat(f.path.clone(), &md));
                    (f, digest, after)
                })
                .collect::<Vec<_>>();
            bar.finish_and_clear();
            out
        })
        .await
        .expect("hash task");
        let mut digests = HashMap::new();
        for (f, digest, after) in hashed {
            match (digest, after) {
                (Ok(d), Ok(after)) if after == f && d.size == f.size => {
                    local.insert(
                        f.path.clone(),
                        LocalEntry {
                            file: f.clone(),
                            hash: d.content_hash,
                        },
                    );
                    digests.insert(f.path, d);
                }
                (Ok(_), Ok(_)) => report
                    .deferred
                    .push((f.path.to_string(), "still being written".into())),
                (Err(e), _) => report
                    .deferred
                    .push((f.path.to_string(), format!("cannot read: {e}"))),
                (_, Err(_)) => {} // vanished while hashing: the next round sees it gone
            }
        }
        Ok((local, digests))
    }

    /// Deletes and renames go to the server in one batch of events.
    async fn run_remote_ops(
        &mut self,
        ops: Vec<Op>,
        base: &BTreeMap<SyncPath, BaseEntry>,
        local: &BTreeMap<SyncPath, LocalEntry>,
        digests: &HashMap<SyncPath, FileDigest>,
        uploads: &mut Vec<Op>,
        report: &mut RoundReport,
    ) -> Result<(), SyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        let ns = self.session.ns;
        let events: Vec<SyncEvent> = ops
            .iter()
            .map(|op| match op {
                Op::DeleteRemote { path, base } => SyncEvent::Delete(DeleteRequest {
                    namespace: ns,
                    path: path.clone(),
                    base: base.clone(),
                    idempotency_key: idem(),
                }),
                Op::RenameRemote { from, to, .. } => SyncEvent::Rename(RenameRequest {
                    namespace: ns,
                    from: from.clone(),
                    to: to.clone(),
                    idempotency_key: idem(),
                }),
                _ => unreachable!("only remote ops here"),
            })
            .collect();
        let results = self.session.api.events(events).await?;
        for (op, result) in ops.into_iter().zip(results) {
            match (op, result) {
                (Op::DeleteRemote { path, .. }, SyncEventResult::Applied(r)) => {
                    self.state.remove(&path)?;
                    if r.outcome == Some(DeleteOutcome::Deleted) {
                        report.deleted_remote += 1;
                    }
                }
                (Op::DeleteRemote { path, .. }, SyncEventResult::Failed(e))
                    if e.error.code == ErrorCode::NotFound =>
                {
                    self.state.remove(&path)?;
                }
                (Op::RenameRemote { from, to, changed }, SyncEventResult::Applied(r)) => {
                    report.renamed += 1;
                    if let (Some(b), Some(_)) = (base.get(&from), r.files.first()) {
                        let l = &local[&to].file;
                        let mut moved = b.clone();
                        moved.path = to.clone();
                        // The base keeps the vector and version this device saw: a rename
                        // does not change them, so a differing answer means an edit landed
                        // since the pull, which the next pull brings (as a download or a
                        // conflict) instead of it being taken as seen.
                        moved.mtime = l.mtime;
                        moved.inode = l.inode;
                        moved.born = l.born;
                        moved.mode = l.mode;
                        if changed {
                            // The content changed too: the base keeps the old hash so
                            // the upload below commits on top of it.
                            uploads.push(Op::Upload {
                                path: to.clone(),
                                base: b.vv.clone(),
                            });
                        }
                        self.state.batch(|s| {
                            s.remove(&from)?;
                            s.put(&moved)
                        })?;
                    }
                }
                (Op::RenameRemote { from, to, .. }, SyncEventResult::Failed(e)) => {
                    // Could not rename (the target exists there): send it as a new file
                    // and a delete, which the server resolves like any other change.
                    tracing::info!(from = %from, to = %to, reason = %e.error.message, "rename refused; uploading instead");
                    if let Some(b) = base.get(&from) {
                        let _ = digests;
                        uploads.push(Op::Upload {
                            path: to,
                            base: VersionVector::new(),
                        });
                        let del = DeleteRequest {
                            namespace: ns,
                            path: from.clone(),
                            base: b.vv.clone(),
                            idempotency_key: idem(),
                        };
                        self.session.api.delete(&del).await?;
                        self.state.remove(&from)?;
                    }
                }
                (op, SyncEventResult::Failed(e)) => {
                    report.deferred.push((op_path(&op), e.error.message));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Uploads the chunks the server lacks, then commits every file in one batch.
    async fn upload(
        &mut self,
        items: Vec<(SyncPath, VersionVector)>,
        base: &BTreeMap<SyncPath, BaseEntry>,
        local: &BTreeMap<SyncPath, LocalEntry>,
        digests: &HashMap<SyncPath, FileDigest>,
        report: &mut RoundReport,
    ) -> Result<(), SyncError> {
        let items: Vec<(SyncPath, VersionVector, &LocalEntry, FileDigest)> = items
            .into_iter()
            .filter_map(|(path, base)| {
                let l = local.get(&path)?;
                let d = digests.get(&path).cloned()?;
                Some((path, base, l, d))
            })
            .collect();
        if items.is_empty() {
            return Ok(());
        }
        // Chunks of synced versions are on the server already: ask only about the
        // others, so a small edit of a large file asks about its new chunks, not about
        // every chunk. (If GC removed an old version's chunk since, the commit is
        // answered with the missing ids, sent below.)
        let known: HashSet<ChunkId> = base
            .values()
            .flat_map(|b| b.chunks.iter().map(ChunkRef::id))
            .collect();
        let mut ask: Vec<ChunkId> = items
            .iter()
            .flat_map(|(_, _, _, d)| d.chunks.iter().map(|c| c.id))
            .filter(|id| !known.contains(id))
            .collect();
        ask.sort_unstable();
        ask.dedup();
        let missing: HashSet<ChunkId> = if ask.is_empty() {
            HashSet::new()
        } else {
            self.session
                .api
                .missing(self.session.ns, &ask)
                .await?
                .into_iter()
                .collect()
        };
        let mut failed: HashSet<SyncPath> = HashSet::new();
        if !missing.is_empty() {
            let files = items
                .iter()
                .map(|(path, _, l, d)| (path.clone(), l.file.clone(), d.clone()))
                .collect();
            for (path, why) in self.send_chunks(files, &missing).await? {
                tracing::warn!(path = %path, reason = %why, "upload deferred");
                report.deferred.push((path.to_string(), why));
                failed.insert(path);
            }
        }
        let mut requests = Vec::new();
        for (path, base, l, d) in &items {
            if failed.contains(path) {
                continue;
            }
            requests.push((
                path.clone(),
                (*l).clone(),
                d.clone(),
                CommitRequest {
                    namespace: self.session.ns,
                    path: path.clone(),
                    base: base.clone(),
                    chunks: d.chunk_refs(),
                    size: d.size,
                    mtime: l.file.mtime,
                    mode: l.file.mode,
                    content_hash: d.content_hash,
                    idempotency_key: idem(),
                },
            ));
        }
        let events = requests
            .iter()
            .map(|(_, _, _, c)| {
                if c.base.is_empty() {
                    SyncEvent::Create(c.clone())
                } else {
                    SyncEvent::Modify(c.clone())
                }
            })
            .collect();
        // Chunks are stored; nothing is committed yet.
        fsync_common::failpoint::hit("client.upload.before_commit")
            .map_err(io_err("committing", &self.root))?;
        let results = self.session.api.events(events).await?;
        for ((path, l, d, req), result) in requests.into_iter().zip(results) {
            let response = match result {
                SyncEventResult::Committed(r) => *r,
                SyncEventResult::Failed(e) if e.error.code == ErrorCode::MissingChunks => {
                    // Collected since we asked (GC), or chunks of a synced version we
                    // did not ask about that are gone: send them and retry once.
                    let again: HashSet<ChunkId> = e.error.missing.iter().copied().collect();
                    let files = vec![(path.clone(), l.file.clone(), d.clone())];
                    if let Some((_, why)) = self.send_chunks(files, &again).await?.pop() {
                        report.deferred.push((path.to_string(), why));
                        continue;
                    }
                    match self.session.api.commit(&req).await {
                        Ok(r) => r,
                        Err(e) => {
                            report.deferred.push((path.to_string(), e.to_string()));
                            continue;
                        }
                    }
                }
                SyncEventResult::Failed(e) => {
                    tracing::warn!(path = %path, code = ?e.error.code, message = %e.error.message, "commit refused");
                    report.deferred.push((path.to_string(), e.error.message));
                    continue;
                }
                SyncEventResult::Applied(_) => continue,
            };
            report.uploaded += 1;
            self.after_commit(&path, &l.file, &d, response, report)
                .await?;
        }
        Ok(())
    }

    /// Records a commit's outcome locally.
    async fn after_commit(
        &mut self,
        path: &SyncPath,
        file: &LocalFile,
        d: &FileDigest,
        r: CommitResponse,
        report: &mut RoundReport,
    ) -> Result<(), SyncError> {
        let chunks = d.chunk_refs();
        if r.outcome == CommitOutcome::ConflictLost {
            report.conflicts += 1;
            // Our content lives on as the conflict copy: move the local file there
            // (same bytes), then fetch the winner to the original path.
            let Some(copy) = r.conflict_copy else {
                return Ok(());
            };
            let from = path.to_local(&self.root);
            let to = copy.path.to_local(&self.root);
            check_inside_root(&self.root, &copy.path, &to)?;
            if !to.exists() {
                make_parent(&to)?;
                // Stat before the rename (which keeps inode and mtime): once moved,
                // the copy is the user's and may vanish at any moment.
                let md = std::fs::symlink_metadata(&from).map_err(io_err("reading", &from))?;
                std::fs::rename(&from, &to).map_err(io_err("renaming", &from))?;
                fsync_parent(&to);
                let st = scan::stat(copy.path.clone(), &md);
                if let Some(e) = BaseEntry::from_meta(&copy, chunks, &st) {
                    self.state.put(&e)?;
                }
            }
            self.state.remove(path)?;
            let reuse = HashMap::new();
            self.download(&r.head, &reuse, report).await?;
        } else {
            if r.outcome == CommitOutcome::ConflictWon {
                report.conflicts += 1;
            }
            let mut e =
                BaseEntry::from_meta(&r.head, chunks, file).ok_or_else(|| SyncError::Verify {
                    path: path.to_string(),
                    reason: "the server answered a commit with a tombstone".into(),
                })?;
            e.mode = file.mode;
            if e.content_hash != d.content_hash || e.path != *path {
                // The head is not what we sent (e.g. unchanged after a merge):
                // keep our stat only if the content matches.
                e.mtime = 0;
            }
            self.state.put(&e)?;
        }
        Ok(())
    }

    /// Encodes and sends the chunks in `wanted` of many files. Only those chunks are
    /// read, at the offsets the digest recorded; each must still have its id (else the
    /// file changed since it was hashed) and the file its stat. Chunks are encoded on
    /// the rayon pool, and up to `UPLOAD_IN_FLIGHT` batch requests run while the next
    /// batch is encoded; blobs of all files share batches (many small files cost few
    /// requests). Returns the files that changed or could not be read, with the
    /// reason; an API error stops everything.
    async fn send_chunks(
        &self,
        files: Vec<(SyncPath, LocalFile, FileDigest)>,
        wanted: &HashSet<ChunkId>,
    ) -> Result<Vec<(SyncPath, String)>, SyncError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(ChunkId, Vec<u8>)>(ENCODE_GROUP * 2);
        let root = self.root.clone();
        let id_key = self.session.id_key.clone();
        let codec = self.session.codec.clone();
        let mut todo: Vec<(SyncPath, LocalFile, Vec<ChunkSpan>)> = Vec::new();
        let mut chosen: HashSet<ChunkId> = HashSet::new();
        for (path, stat, d) in files {
            let mut offset = 0u64;
            let mut chunks = Vec::new();
            for c in &d.chunks {
                if wanted.contains(&c.id) && chosen.insert(c.id) {
                    chunks.push((offset, c.len, c.id));
                }
                offset += u64::from(c.len);
            }
            if !chunks.is_empty() {
                todo.push((path, stat, chunks));
            }
        }
        let total: u64 = todo
            .iter()
            .flat_map(|(_, _, c)| c.iter().map(|(_, len, _)| u64::from(*len)))
            .sum();
        let producer = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for (path, expect_stat, chunks) in todo {
                let full = path.to_local(&root);
                let result =
                    encode_file_chunks(&full, &chunks, &id_key, &codec, &tx).and_then(|()| {
                        let md = std::fs::symlink_metadata(&full).map_err(|e| e.to_string())?;
                        if scan::stat(path.clone(), &md) == expect_stat {
                            Ok(())
                        } else {
                            Err(UPLOAD_CHANGED.to_owned())
                        }
                    });
                match result {
                    Ok(()) => {}
                    Err(why) if why == UPLOAD_STOPPED => break,
                    Err(why) => failed.push((path, why)),
                }
            }
            failed
        });
        let mut batch: Vec<(ChunkId, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        let mut in_flight = tokio::task::JoinSet::new();
        let bar = crate::progress::bytes("uploading", total);
        let ns = self.session.ns;
        loop {
            let next = rx.recv().await;
            let flush = match &next {
                Some(_) => bytes >= UPLOAD_BATCH_BYTES,
                None => !batch.is_empty(),
            };
            if flush {
                while in_flight.len() >= UPLOAD_IN_FLIGHT {
                    if let Some(done) = in_flight.join_next().await {
                        done.expect("upload task")?;
                    }
                }
                let api = self.session.api.clone();
                let part = std::mem::take(&mut batch);
                bytes = 0;
                let bar = bar.clone();
                in_flight.spawn(async move {
                    let sent: u64 = part.iter().map(|(_, b)| b.len() as u64).sum();
                    api.put_batch(ns, &part).await?;
                    bar.inc(sent);
                    Ok::<(), ClientError>(())
                });
            }
            let Some((id, blob)) = next else { break };
            bytes += blob.len();
            batch.push((id, blob));
        }
        while let Some(done) = in_flight.join_next().await {
            done.expect("upload task")?;
        }
        bar.finish_and_clear();
        Ok(producer.await.expect("chunk task"))
    }

    /// Where chunks of unchanged local files can be read instead of downloaded.
    fn reuse_map(
        &self,
        base: &BTreeMap<SyncPath, BaseEntry>,
        local: &BTreeMap<SyncPath, LocalEntry>,
    ) -> HashMap<ChunkId, (PathBuf, u64, u32)> {
        let mut map = HashMap::new();
        for (path, b) in base {
            let Some(l) = local.get(path) else { continue };
            if l.hash != b.content_hash {
                continue;
            }
            let full = path.to_local(&self.root);
            let mut offset = 0u64;
            for c in &b.chunks {
                map.entry(c.id())
                    .or_insert_with(|| (full.clone(), offset, c.len()));
                offset += u64::from(c.len());
            }
        }
        map
    }

    /// True when the file at `full` is still what `b` recorded: the same stat, or —
    /// when only its stat changed (a `touch`, a copy back) — the same content and mode.
    /// A file whose stat moved but not its content must not block a remote change for
    /// ever.
    async fn still_as_synced(&self, full: &Path, b: &BaseEntry) -> bool {
        let Ok(md) = std::fs::symlink_metadata(full) else {
            return false;
        };
        let st = scan::stat(b.path.clone(), &md);
        if !md.is_file() || st.size != b.size || st.mode != b.mode {
            return false;
        }
        if b.same_stat(&st) {
            return true;
        }
        let chunker = self.session.chunker.clone();
        let path = full.to_owned();
        let digest = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path).ok()?;
            chunker.digest_reader(f, HashOptions::default()).ok()
        })
        .await
        .ok()
        .flatten();
        digest.is_some_and(|d| d.content_hash == b.content_hash)
    }

    /// Applies one local operation. `Ok(false)`: not applied this round (retry later).
    async fn apply_local(
        &mut self,
        op: Op,
        base: &BTreeMap<SyncPath, BaseEntry>,
        local: &BTreeMap<SyncPath, LocalEntry>,
        digests: &HashMap<SyncPath, FileDigest>,
        reuse: &HashMap<ChunkId, (PathBuf, u64, u32)>,
        report: &mut RoundReport,
    ) -> Result<bool, SyncError> {
        match op {
            Op::Download { meta } => self.download(&meta, reuse, report).await,
            Op::DeleteLocal { path } => {
                let Some(b) = base.get(&path) else {
                    return Ok(true);
                };
                let full = path.to_local(&self.root);
                check_inside_root(&self.root, &path, &full)?;
                if !self.still_as_synced(&full, b).await {
                    return Ok(false); // edited meanwhile: the next round uploads it
                }
                std::fs::remove_file(&full).map_err(io_err("deleting", &full))?;
                fsync_parent(&full);
                remove_empty_parents(&self.root, &full);
                self.state.remove(&path)?;
                report.deleted_local += 1;
                Ok(true)
            }
            Op::MoveLocal { from, meta } => {
                let Some(b) = base.get(&from) else {
                    return Ok(true);
                };
                let src = from.to_local(&self.root);
                let dst = meta.path.to_local(&self.root);
                check_inside_root(&self.root, &from, &src)?;
                check_inside_root(&self.root, &meta.path, &dst)?;
                if dst.exists() || !self.still_as_synced(&src, b).await {
                    return Ok(false);
                }
                make_parent(&dst)?;
                std::fs::rename(&src, &dst).map_err(io_err("moving", &src))?;
                fsync_parent(&dst);
                fsync_parent(&src);
                remove_empty_parents(&self.root, &src);
                let mut moved = b.clone();
                moved.path = meta.path.clone();
                self.state.batch(|s| {
                    s.remove(&from)?;
                    s.put(&moved)
                })?;
                report.renamed += 1;
                if meta.content_hash != Some(b.content_hash) || meta.vv != b.vv {
                    let mut reuse2 = reuse.clone();
                    let mut off = 0u64;
                    for c in &b.chunks {
                        reuse2.insert(c.id(), (dst.clone(), off, c.len()));
                        off += u64::from(c.len());
                    }
                    return self.download(&meta, &reuse2, report).await;
                }
                Ok(true)
            }
            Op::Adopt { meta } => {
                let Some(l) = local.get(&meta.path) else {
                    return Ok(true);
                };
                let chunks = digests
                    .get(&meta.path)
                    .map(FileDigest::chunk_refs)
                    .or_else(|| base.get(&meta.path).map(|b| b.chunks.clone()))
                    .unwrap_or_default();
                if let Some(mut e) = BaseEntry::from_meta(&meta, chunks, &l.file) {
                    e.mode = l.file.mode;
                    self.state.put(&e)?;
                }
                Ok(true)
            }
            Op::Restat { path } => {
                if let (Some(b), Some(l)) = (base.get(&path), local.get(&path)) {
                    let mut e = b.clone();
                    e.restat(&l.file);
                    if e.mode == l.file.mode {
                        self.state.put(&e)?;
                    }
                }
                Ok(true)
            }
            Op::Forget { .. }
            | Op::Upload { .. }
            | Op::DeleteRemote { .. }
            | Op::RenameRemote { .. } => Ok(true),
        }
    }

    /// Downloads a remote head to its path: temp file → fsync → the local file is
    /// still as last synced → rename → fsync the directory.
    async fn download(
        &mut self,
        meta: &FileMeta,
        reuse: &HashMap<ChunkId, (PathBuf, u64, u32)>,
        report: &mut RoundReport,
    ) -> Result<bool, SyncError> {
        let manifest: Manifest = self
            .session
            .api
            .manifest(meta.file_id, Some(meta.version))
            .await?;
        self.write_download(meta, manifest, reuse, &HashMap::new(), report)
            .await
    }

    /// Downloads many files with few requests: one for all manifests, then one chunk
    /// fetch per group of small files. Returns the files not applied, with the reason.
    async fn download_many(
        &mut self,
        metas: Vec<FileMeta>,
        reuse: &HashMap<ChunkId, (PathBuf, u64, u32)>,
        report: &mut RoundReport,
    ) -> Result<Vec<(String, Option<String>)>, SyncError> {
        let mut failed = Vec::new();
        if metas.is_empty() {
            return Ok(failed);
        }
        let wanted: Vec<(FileId, VersionNo)> =
            metas.iter().map(|m| (m.file_id, m.version)).collect();
        let manifests = self.session.api.manifests(self.session.ns, &wanted).await?;
        let mut pending: Vec<(FileMeta, Manifest)> = metas.into_iter().zip(manifests).collect();
        // Small files first, grouped so one fetch carries the chunks of many.
        pending.sort_by_key(|(m, _)| m.size);
        let mut i = 0;
        while i < pending.len() {
            let mut group_bytes = 0u64;
            let mut j = i;
            while j < pending.len()
                && (j == i || group_bytes + pending[j].0.size <= PREFETCH_GROUP_BYTES)
            {
                group_bytes += pending[j].0.size;
                j += 1;
            }
            let mut prefetched: HashMap<ChunkId, Vec<u8>> = HashMap::new();
            if group_bytes <= PREFETCH_GROUP_BYTES {
                let mut ids: Vec<ChunkId> = pending[i..j]
                    .iter()
                    .flat_map(|(_, m)| m.chunks.iter().map(ChunkRef::id))
                    .filter(|id| !reuse.contains_key(id))
                    .collect();
                ids.sort();
                ids.dedup();
                if !ids.is_empty() {
                    for (id, blob) in self.session.api.fetch_batch(self.session.ns, &ids).await? {
                        match self.session.codec.decode(&id, &blob) {
                            Ok(data) => {
                                prefetched.insert(id, data);
                            }
                            Err(e) => {
                                tracing::warn!(chunk = %id, error = %e, "refused a chunk from the server");
                            }
                        }
                    }
                }
            }
            for (meta, manifest) in pending[i..j].iter().cloned() {
                let path = meta.path.to_string();
                match self
                    .write_download(&meta, manifest, reuse, &prefetched, report)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => failed.push((path, Some(CHANGED_MEANWHILE.into()))),
                    Err(e) => failed.push((path, Some(deferrable(e)?))),
                }
            }
            i = j;
        }
        Ok(failed)
    }

    /// Writes one downloaded file: chunks from `prefetched`, else from local files,
    /// else fetched window by window.
    async fn write_download(
        &mut self,
        meta: &FileMeta,
        manifest: Manifest,
        reuse: &HashMap<ChunkId, (PathBuf, u64, u32)>,
        prefetched: &HashMap<ChunkId, Vec<u8>>,
        report: &mut RoundReport,
    ) -> Result<bool, SyncError> {
        let verify = |reason: String| SyncError::Verify {
            path: meta.path.to_string(),
            reason,
        };
        if manifest.meta.content_hash != meta.content_hash
            || manifest.meta.path != meta.path
            || manifest.meta.deleted
        {
            return Err(verify("the manifest does not match the change".into()));
        }
        let expect_hash = meta
            .content_hash
            .ok_or_else(|| verify("no content hash".into()))?;
        let total: u64 = manifest.chunks.iter().map(|c| u64::from(c.len())).sum();
        if total != meta.size {
            return Err(verify(format!(
                "chunks add up to {total} bytes, not {}",
                meta.size
            )));
        }
        let dst = meta.path.to_local(&self.root);
        check_inside_root(&self.root, &meta.path, &dst)?;
        make_parent(&dst)?;
        let dir = dst.parent().expect("a file has a parent").to_owned();
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let guard = TempGuard::new(tmp.clone());
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        let bar = crate::progress::bytes(&format!("downloading {}", meta.path), meta.size);
        // Every chunk below is checked against its id before it is written, so hashing
        // what is written, in order, gives the file's content hash without reading the
        // temp file back.
        let mut hasher = fsync_chunker::ContentHasher::new(&self.session.id_key);
        for window in manifest.chunks.chunks(DOWNLOAD_WINDOW) {
            let mut have: HashMap<ChunkId, Vec<u8>> = HashMap::new();
            let mut fetch = Vec::new();
            for c in window {
                if have.contains_key(&c.id()) {
                    continue;
                }
                if let Some(data) = prefetched.get(&c.id()) {
                    have.insert(c.id(), data.clone());
                    continue;
                }
                match reuse
                    .get(&c.id())
                    .and_then(|src| read_local_chunk(src, c, &self.session.id_key))
                {
                    Some(data) => {
                        have.insert(c.id(), data);
                    }
                    None => fetch.push(c.id()),
                }
            }
            fetch.sort();
            fetch.dedup();
            if !fetch.is_empty() {
                let blobs = self
                    .session
                    .api
                    .fetch_batch(self.session.ns, &fetch)
                    .await?;
                for (id, blob) in blobs {
                    let data = self
                        .session
                        .codec
                        .decode(&id, &blob)
                        .map_err(|e| verify(format!("chunk {id}: {e}")))?;
                    have.insert(id, data);
                }
            }
            for c in window {
                let data = have
                    .get(&c.id())
                    .ok_or_else(|| verify(format!("chunk {} is missing on the server", c.id())))?;
                if data.len() != c.len() as usize {
                    return Err(verify(format!("chunk {} has the wrong length", c.id())));
                }
                out.write_all(data).map_err(io_err("writing", &tmp))?;
                hasher.update(data);
                fsync_common::failpoint::hit("client.download.chunk_written")
                    .map_err(io_err("writing", &tmp))?;
                bar.inc(u64::from(c.len()));
            }
        }
        bar.finish_and_clear();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = out.set_permissions(std::fs::Permissions::from_mode(meta.mode & 0o777));
        }
        let mtime =
            SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(meta.mtime).unwrap_or(0));
        out.set_modified(mtime)
            .map_err(io_err("setting the mtime of", &tmp))?;
        out.sync_all().map_err(io_err("syncing", &tmp))?;
        // Stat the temp file now: a rename keeps inode and mtime, and the user may
        // move or delete the file the moment it becomes visible.
        let installed = out.metadata().map_err(io_err("reading", &tmp))?;
        drop(out);
        // Verify the whole content before it becomes visible.
        if hasher.finalize() != expect_hash {
            return Err(verify("the content hash does not match".into()));
        }
        // The local file must still be what we last synced (or absent): never
        // overwrite an edit made meanwhile.
        let base = self.state.get(&meta.path)?;
        let safe = match (&base, std::fs::symlink_metadata(&dst)) {
            (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => true,
            (Some(b), Ok(_)) => self.still_as_synced(&dst, b).await,
            (None, Ok(_)) => false,
            (_, Err(e)) => {
                return Err(SyncError::Io {
                    what: "reading",
                    path: dst,
                    source: e,
                })
            }
        };
        if !safe {
            return Ok(false);
        }
        fsync_common::failpoint::hit("client.download.before_rename")
            .map_err(io_err("renaming into place", &dst))?;
        std::fs::rename(&tmp, &dst).map_err(io_err("renaming into place", &dst))?;
        guard.disarm();
        fsync_dir(&dir);
        let st = scan::stat(meta.path.clone(), &installed);
        if let Some(mut e) = BaseEntry::from_meta(meta, manifest.chunks, &st) {
            e.mode = st.mode;
            self.state.put(&e)?;
        }
        report.downloaded += 1;
        Ok(true)
    }
}

/// Sorts the error of one file's operation: `Ok(reason)` leaves that file for a later
/// round (the server refused it, or its data or local I/O failed); anything else
/// (network, local state) ends the round.
fn deferrable(e: SyncError) -> Result<String, SyncError> {
    match e {
        SyncError::Api(e) if !e.is_retryable() || matches!(e, ClientError::Api { .. }) => {
            Ok(e.to_string())
        }
        e @ (SyncError::Verify { .. } | SyncError::Io { .. }) => {
            tracing::warn!(error = %e, "not applied");
            Ok(e.to_string())
        }
        e => Err(e),
    }
}

fn op_path(op: &Op) -> String {
    match op {
        Op::Upload { path, .. }
        | Op::DeleteRemote { path, .. }
        | Op::DeleteLocal { path }
        | Op::Restat { path }
        | Op::Forget { path } => path.to_string(),
        Op::RenameRemote { from, .. } | Op::MoveLocal { from, .. } => from.to_string(),
        Op::Download { meta } | Op::Adopt { meta } => meta.path.to_string(),
    }
}

fn idem() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A chunk of a local file: offset, length, id.
type ChunkSpan = (u64, u32, ChunkId);

/// Why an upload left a file for the next round.
const UPLOAD_CHANGED: &str = "the file changed while it was being uploaded";
/// The receiving side went away (an API error ended the upload).
const UPLOAD_STOPPED: &str = "upload stopped";

/// Reads the given chunks of one file (offset, length, id), checks each against its
/// id, encodes them on the rayon pool `ENCODE_GROUP` at a time and hands the blobs to
/// `tx` in order.
fn encode_file_chunks(
    full: &Path,
    chunks: &[ChunkSpan],
    id_key: &fsync_common::IdKey,
    codec: &BlobCodec,
    tx: &tokio::sync::mpsc::Sender<(ChunkId, Vec<u8>)>,
) -> Result<(), String> {
    use rayon::prelude::*;
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(full).map_err(|e| e.to_string())?;
    for group in chunks.chunks(ENCODE_GROUP) {
        let mut read = Vec::with_capacity(group.len());
        for &(offset, len, id) in group {
            let mut data = vec![0u8; len as usize];
            file.read_exact_at(&mut data, offset).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    UPLOAD_CHANGED.to_owned()
                } else {
                    e.to_string()
                }
            })?;
            read.push((id, data));
        }
        let blobs: Vec<(ChunkId, Vec<u8>)> = read
            .into_par_iter()
            .map(|(id, data)| {
                if fsync_chunker::chunk_id(id_key, &data) != id {
                    return Err(UPLOAD_CHANGED.to_owned());
                }
                codec
                    .encode(&id, &data)
                    .map(|blob| (id, blob))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        for blob in blobs {
            tx.blocking_send(blob)
                .map_err(|_| UPLOAD_STOPPED.to_owned())?;
        }
    }
    Ok(())
}

/// Reads a chunk from a local file and checks its id.
fn read_local_chunk(
    src: &(PathBuf, u64, u32),
    c: &ChunkRef,
    id_key: &fsync_common::IdKey,
) -> Option<Vec<u8>> {
    let (path, offset, len) = src;
    if *len != c.len() {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(*offset)).ok()?;
    let mut buf = vec![0u8; *len as usize];
    f.read_exact(&mut buf).ok()?;
    (fsync_chunker::chunk_id(id_key, &buf) == c.id()).then_some(buf)
}

/// Why a local operation waits for the next round.
const CHANGED_MEANWHILE: &str =
    "the local file changed since it was last synced; retried next round";

/// Refuses a local path named by the server (a download, a move or delete, a
/// conflict copy) unless it lies inside the root, below it by plain components only
/// (defence in depth: the path type already excludes `..` and absolute paths), with
/// no symlink on the way: the client never writes through a symlink, which may point
/// anywhere.
fn check_inside_root(root: &Path, path: &SyncPath, full: &Path) -> Result<(), SyncError> {
    let plain = full.strip_prefix(root).is_ok_and(|rel| {
        rel.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    });
    if plain && !has_symlink_component(root, full) {
        Ok(())
    } else {
        Err(SyncError::Verify {
            path: path.to_string(),
            reason: "the path leaves the sync root".into(),
        })
    }
}

fn has_symlink_component(root: &Path, dst: &Path) -> bool {
    let Ok(rel) = dst.strip_prefix(root) else {
        return true;
    };
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// Removes temp files a killed client left behind (only this client writes them).
fn remove_stale_temp_files(root: &Path) {
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != crate::scan::STATE_DIR)
        .build();
    for entry in walker.flatten() {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if is_temp && entry.file_type().is_some_and(|t| t.is_file()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed an interrupted download");
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temp file");
                }
            }
        }
    }
}

fn make_parent(path: &Path) -> Result<(), SyncError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    Ok(())
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn fsync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        fsync_dir(dir);
    }
}

fn remove_empty_parents(root: &Path, path: &Path) {
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if dir == root || !dir.starts_with(root) || std::fs::remove_dir(dir).is_err() {
            break;
        }
        cur = dir.parent();
    }
}

/// Deletes a temp file unless disarmed (no temp file is left after an error).
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn new(path: PathBuf) -> Self {
        Self(Some(path))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
