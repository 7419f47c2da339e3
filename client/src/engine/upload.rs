//! Uploads: the chunks the server lacks (read at the offsets the digest recorded,
//! checked, encoded in parallel, sent in batches), then one batch of commits and each
//! answer recorded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsync_chunker::FileDigest;
use fsync_common::batch::BatchBuilder;
use fsync_common::limits::{MAX_BATCH_BODY, MAX_BLOB_SIZE, MAX_IDS_PER_REQUEST};
use fsync_common::pages::{self, Page};
use fsync_common::wire::{
    ChunkRef, CommitOutcome, CommitRequest, CommitResponse, SyncEvent, SyncEventResult,
};
use fsync_common::{ChunkId, ErrorCode, IdKey, PageId, SyncPath};
use fsync_store::BlobCodec;

use super::lanes::{LaneState, LANE_BYTES};
use super::local_fs::io_err;
use super::{
    idem, Context, Engine, Found, LocalFs, RoundReport, SyncError, Transfer, ENCODE_GROUP,
    UPLOAD_BATCH_BYTES, UPLOAD_IN_FLIGHT,
};
use crate::api::ClientError;
use crate::planner::{LocalEntry, Upload};
use crate::scan::LocalFile;
use crate::state::BaseEntry;

/// A chunk of a local file: offset, length, id.
type ChunkSpan = (u64, u32, ChunkId);

/// Why an upload left a file for the next round.
const UPLOAD_CHANGED: &str = "the file changed while it was being uploaded";
/// The receiving side went away (an API error ended the upload).
const UPLOAD_STOPPED: &str = "upload stopped";

impl Engine {
    /// Uploads the chunks the server lacks, then commits every file in one batch.
    pub(super) async fn upload(
        &mut self,
        items: Vec<Upload>,
        cx: Context<'_>,
        report: &mut RoundReport,
    ) -> Result<(), SyncError> {
        let items: Vec<(Upload, &LocalEntry, FileDigest)> = items
            .into_iter()
            .filter_map(|u| {
                let l = cx.local.get(&u.path)?;
                let d = cx.digests.get(&u.path).cloned()?;
                Some((u, l, d))
            })
            .collect();
        let items = if self.lanes.enabled {
            self.lane_states(items, report).await
        } else {
            items.into_iter().map(|i| (i, false)).collect()
        };
        if items.is_empty() {
            return Ok(());
        }
        // Chunks of synced versions are on the server already: ask only about the
        // others, so a small edit of a large file asks about its new chunks, not about
        // every chunk. (If GC removed an old version's chunk since, the commit is
        // answered with the missing ids, sent below.)
        let known: HashSet<ChunkId> = cx
            .base
            .values()
            .flat_map(|b| b.chunks.iter().map(ChunkRef::id))
            .collect();
        let mut ask: Vec<ChunkId> = items
            .iter()
            .flat_map(|((_, _, d), _)| d.chunks.iter().map(|c| c.id))
            .filter(|id| !known.contains(id))
            .collect();
        ask.sort_unstable();
        ask.dedup();
        let missing: HashSet<ChunkId> = if ask.is_empty() {
            HashSet::new()
        } else {
            self.remote
                .missing(self.keys.ns, &ask)
                .await?
                .into_iter()
                .collect()
        };
        let items = self.uploads_to_lanes(items, &missing);
        if items.is_empty() {
            return Ok(());
        }
        let mut failed: HashSet<SyncPath> = HashSet::new();
        if !missing.is_empty() {
            let files = items
                .iter()
                .map(|(u, l, d)| (u.path.clone(), l.file.clone(), d.clone()))
                .collect();
            for (path, why) in self.send_chunks(files, &missing).await? {
                tracing::warn!(path = %path, reason = %why, "upload deferred");
                report.deferred.push((path.to_string(), why));
                failed.insert(path);
            }
        }
        let page_ids = self.send_pages(&items, &failed, cx).await?;
        let mut requests = Vec::new();
        for (u, l, d) in &items {
            if failed.contains(&u.path) {
                continue;
            }
            // A file of more than one page commits its page ids, not its chunks.
            let (chunks, pages) = match page_ids.get(&u.path) {
                Some(ids) => (Vec::new(), ids.clone()),
                None => (d.chunk_refs(), Vec::new()),
            };
            requests.push((
                (*l).clone(),
                d.clone(),
                CommitRequest {
                    namespace: self.keys.ns,
                    path: u.path.clone(),
                    pages,
                    base: u.base.clone(),
                    chunks,
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
            .map(|(_, _, c)| {
                if c.base.is_empty() {
                    SyncEvent::Create(c.clone())
                } else {
                    SyncEvent::Modify(c.clone())
                }
            })
            .collect();
        // Chunks are stored; nothing is committed yet.
        fsync_common::failpoint::hit("client.upload.before_commit")
            .map_err(io_err("committing", self.fs.root()))?;
        let results = self.remote.events(events).await?;
        // The bases of the commits go into the state in one transaction, also when a
        // later file stops the round.
        let mut record = Vec::new();
        let applied = self
            .apply_results(requests, results, &mut record, report)
            .await;
        self.state
            .batch(|s| record.iter().try_for_each(|e| s.put(e)))?;
        applied
    }

    /// The files to upload this round, each with whether a lane may take it: a file
    /// whose lane still runs waits for a later round; one whose lane failed waits too,
    /// with the reason; one whose lane finished (its chunks stored) goes on as usual.
    async fn lane_states<'a>(
        &mut self,
        items: Vec<(Upload, &'a LocalEntry, FileDigest)>,
        report: &mut RoundReport,
    ) -> Vec<((Upload, &'a LocalEntry, FileDigest), bool)> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match self.lanes.upload(&item.0.path, item.2.content_hash).await {
                LaneState::None => out.push((item, true)),
                LaneState::Running => {}
                LaneState::Done(Ok(())) => out.push((item, false)),
                LaneState::Done(Err(why)) => {
                    tracing::warn!(path = %item.0.path, reason = %why, "background upload failed; retrying");
                    report.deferred.push((item.0.path.to_string(), why));
                }
            }
        }
        out
    }

    /// Starts a lane for each file that may take one and lacks [`LANE_BYTES`] or more
    /// of chunks on the server; returns the others.
    fn uploads_to_lanes<'a>(
        &mut self,
        items: Vec<((Upload, &'a LocalEntry, FileDigest), bool)>,
        missing: &HashSet<ChunkId>,
    ) -> Vec<(Upload, &'a LocalEntry, FileDigest)> {
        let mut out = Vec::with_capacity(items.len());
        for ((u, l, d), may) in items {
            let lacking: HashSet<ChunkId> = d
                .chunks
                .iter()
                .map(|c| c.id)
                .filter(|id| missing.contains(id))
                .collect();
            let bytes: u64 = d
                .chunks
                .iter()
                .filter(|c| lacking.contains(&c.id))
                .map(|c| u64::from(c.len))
                .sum();
            // Over quota, nothing starts: the file waits with the others.
            if !may || bytes < LANE_BYTES || self.quota.paused().is_some() {
                out.push((u, l, d));
                continue;
            }
            let t = self.transfer();
            let (path, file, hash) = (u.path.clone(), l.file.clone(), d.content_hash);
            self.lanes.start_upload(path.clone(), hash, async move {
                match send_chunks(&t, vec![(path, file, d)], &lacking).await {
                    Ok(failed) => failed
                        .into_iter()
                        .next()
                        .map_or(Ok(()), |(_, why)| Err(why)),
                    Err(e) => Err(e.to_string()),
                }
            });
        }
        out
    }

    /// Cuts the chunk lists of the files to commit into manifest pages and sends the
    /// pages the server may lack: all but those of the version synced at the same path
    /// (a small edit of a large file sends about one page). Returns the page ids of
    /// each file of more than one page; the others commit their chunk lists. If the
    /// server refuses the pages (a chunk collected meanwhile), every file commits its
    /// chunk list, whose answer names the chunks to send.
    async fn send_pages(
        &self,
        items: &[(Upload, &LocalEntry, FileDigest)],
        failed: &HashSet<SyncPath>,
        cx: Context<'_>,
    ) -> Result<HashMap<SyncPath, Vec<PageId>>, SyncError> {
        let mut paged = HashMap::new();
        let mut new: HashMap<PageId, Page> = HashMap::new();
        for (u, _, d) in items {
            if failed.contains(&u.path) || d.chunks.len() <= pages::PAGE_MIN {
                continue;
            }
            let cut = pages::paginate(&d.chunk_refs());
            if cut.len() < 2 {
                continue;
            }
            // A synced version of one page was stored inline: its page is not on the
            // server as a page.
            let known: HashSet<PageId> = cx
                .base
                .get(&u.path)
                .map(|b| pages::paginate(&b.chunks))
                .filter(|p| p.len() > 1)
                .into_iter()
                .flatten()
                .map(|p| p.id())
                .collect();
            paged.insert(u.path.clone(), cut.iter().map(Page::id).collect());
            for p in cut {
                if !known.contains(&p.id()) {
                    new.entry(p.id()).or_insert(p);
                }
            }
        }
        if new.is_empty() {
            return Ok(paged);
        }
        let new: Vec<Page> = new.into_values().collect();
        match self.remote.put_pages(self.keys.ns, &new).await {
            Ok(()) => Ok(paged),
            Err(ClientError::MissingChunks(ids)) => {
                tracing::debug!(missing = ids.len(), "pages refused; committing chunk lists");
                Ok(HashMap::new())
            }
            // A server before manifest pages: plain chunk lists, as it expects.
            Err(ClientError::Api { status: 404, .. }) => Ok(HashMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Commits `req` (with its chunk list) alone; a missing-chunks answer is served and
    /// retried once. `None`: deferred, with the reason in `report`.
    async fn commit_alone(
        &self,
        path: &SyncPath,
        l: &LocalEntry,
        d: &FileDigest,
        req: &CommitRequest,
        report: &mut RoundReport,
    ) -> Result<Option<CommitResponse>, SyncError> {
        let mut sent = false;
        loop {
            match self.remote.commit(req).await {
                Ok(r) => return Ok(Some(r)),
                Err(ClientError::MissingChunks(ids)) if !sent => {
                    sent = true;
                    let again: HashSet<ChunkId> = ids.into_iter().collect();
                    let files = vec![(path.clone(), l.file.clone(), d.clone())];
                    if let Some((_, why)) = self.send_chunks(files, &again).await?.pop() {
                        report.deferred.push((path.to_string(), why));
                        return Ok(None);
                    }
                }
                Err(e) => {
                    report.deferred.push((path.to_string(), e.to_string()));
                    return Ok(None);
                }
            }
        }
    }

    /// Handles the server's answer to each commit: a missing-chunks answer is served
    /// and retried once, a missing-pages answer retried with the chunk list, a refusal deferred, a commit recorded in `record` (a lost
    /// conflict is applied at once).
    async fn apply_results(
        &mut self,
        requests: Vec<(LocalEntry, FileDigest, CommitRequest)>,
        results: Vec<SyncEventResult>,
        record: &mut Vec<BaseEntry>,
        report: &mut RoundReport,
    ) -> Result<(), SyncError> {
        for ((l, d, req), result) in requests.into_iter().zip(results) {
            let path = req.path.clone();
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
                    match self.remote.commit(&req).await {
                        Ok(r) => r,
                        Err(e) => {
                            report.deferred.push((path.to_string(), e.to_string()));
                            continue;
                        }
                    }
                }
                SyncEventResult::Failed(e) if e.error.code == ErrorCode::MissingPages => {
                    // Pages taken for stored are not: the synced version was stored
                    // before pages, or pruned since. Send them and commit again; failing
                    // that, commit the chunk list (the server cuts the same pages).
                    let lacking: HashSet<PageId> = e.error.missing_pages.iter().copied().collect();
                    let send: Vec<Page> = pages::paginate(&d.chunk_refs())
                        .into_iter()
                        .filter(|p| lacking.contains(&p.id()))
                        .collect();
                    let again = match self.remote.put_pages(self.keys.ns, &send).await {
                        Ok(()) => self.remote.commit(&req).await.ok(),
                        Err(_) => None,
                    };
                    let r = if let Some(r) = again {
                        Some(r)
                    } else {
                        let plain = CommitRequest {
                            chunks: d.chunk_refs(),
                            pages: Vec::new(),
                            ..req.clone()
                        };
                        self.commit_alone(&path, &l, &d, &plain, report).await?
                    };
                    match r {
                        Some(r) => r,
                        None => continue,
                    }
                }
                SyncEventResult::Failed(e) => {
                    tracing::warn!(path = %path, code = ?e.error.code, message = %e.error.message, "commit refused");
                    report.deferred.push((path.to_string(), e.error.message));
                    continue;
                }
                SyncEventResult::Applied(_) => continue,
            };
            tracing::info!(path = %path, size = l.file.size, "uploaded");
            report.uploaded += 1;
            if let Some(e) = self
                .after_commit(&path, &l.file, &d, response, report)
                .await?
            {
                record.push(e);
            }
        }
        Ok(())
    }

    /// Applies a commit's outcome locally; the base to record, unless it was recorded
    /// already (a lost conflict).
    async fn after_commit(
        &mut self,
        path: &SyncPath,
        file: &LocalFile,
        d: &FileDigest,
        r: CommitResponse,
        report: &mut RoundReport,
    ) -> Result<Option<BaseEntry>, SyncError> {
        let chunks = d.chunk_refs();
        if r.outcome == CommitOutcome::ConflictLost {
            tracing::info!(path = %path, copy = ?r.conflict_copy.as_ref().map(|c| c.path.as_str()), "conflict: another device's edit won; this one is kept as the conflict copy");
            report.conflicts += 1;
            // Our content lives on as the conflict copy: move the local file there
            // (same bytes), then fetch the winner to the original path.
            let Some(copy) = r.conflict_copy else {
                return Ok(None);
            };
            if self.fs.stat(&copy.path)? == Found::Nothing {
                // Stat before the rename (which keeps inode and mtime): once moved,
                // the copy is the user's and may vanish at any moment.
                let Found::File(st) = self.fs.stat(path)? else {
                    return Err(SyncError::Io {
                        what: "reading",
                        path: path.to_local(self.fs.root()),
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                };
                self.fs.rename(path, &copy.path)?;
                let st = LocalFile {
                    path: copy.path.clone(),
                    ..st
                };
                if let Some(e) = BaseEntry::from_meta(&copy, chunks, &st) {
                    self.state.put(&e)?;
                }
            }
            self.state.remove(path)?;
            self.download(&r.head, &HashMap::new(), report).await?;
            Ok(None)
        } else {
            if r.outcome == CommitOutcome::ConflictWon {
                tracing::info!(path = %path, copy = ?r.conflict_copy.as_ref().map(|c| c.path.as_str()), "conflict: this edit won; the other device's is kept as the conflict copy");
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
            Ok(Some(e))
        }
    }

    /// Encodes and sends the chunks in `wanted` of many files. Only those chunks are
    /// read, at the offsets the digest recorded; each must still have its id (else the
    /// file changed since it was hashed) and the file its stat. Chunks are encoded on
    /// the rayon pool, and up to `UPLOAD_IN_FLIGHT` batch requests run while the next
    /// batch is encoded; blobs of all files share batches (many small files cost few
    /// requests). Returns the files that changed or could not be read, with the
    /// reason; an API error stops everything.
    ///
    /// While uploads are paused for the account's quota ([`QuotaGate`]), and when the
    /// server refuses these for it, every file is returned with the server's reason
    /// (the files wait; the round goes on with everything else).
    async fn send_chunks(
        &self,
        files: Vec<(SyncPath, LocalFile, FileDigest)>,
        wanted: &HashSet<ChunkId>,
    ) -> Result<Vec<(SyncPath, String)>, SyncError> {
        let over_quota = |files: &[SyncPath], why: String| {
            files.iter().map(|p| (p.clone(), why.clone())).collect()
        };
        // Only files with a chunk to send wait: the others need no space.
        let paths: Vec<SyncPath> = files
            .iter()
            .filter(|(_, _, d)| d.chunks.iter().any(|c| wanted.contains(&c.id)))
            .map(|(p, _, _)| p.clone())
            .collect();
        if let Some(why) = self.quota.paused() {
            return Ok(over_quota(&paths, why));
        }
        match send_chunks(&self.transfer(), files, wanted).await {
            Err(SyncError::Api(e)) if e.quota_refusal().is_some() => {
                let why = self.quota.paused().unwrap_or_else(|| e.to_string());
                Ok(over_quota(&paths, why))
            }
            other => other,
        }
    }
}

/// How long uploads pause after the server refused one for the account's quota: the
/// files wait without being sent again and again (the space comes back only when
/// files are deleted and collected, or the operator raises the quota). A refusal again
/// soon after a pause doubles it, up to [`QUOTA_PAUSE_MAX`].
pub const QUOTA_PAUSE: Duration = Duration::from_secs(60);
/// The longest pause after repeated quota refusals.
const QUOTA_PAUSE_MAX: Duration = Duration::from_secs(16 * 60);

/// Uploads paused until `until` after a refusal for the account's quota (`why`), for
/// `length`.
#[derive(Debug)]
struct Pause {
    until: Instant,
    length: Duration,
    why: String,
}

/// Pauses uploads after a refusal for the account's quota, shared by the rounds and
/// the background lanes.
#[derive(Debug, Default)]
pub(super) struct QuotaGate(std::sync::Mutex<Option<Pause>>);

impl QuotaGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pause>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a refusal with the server's message.
    fn refused(&self, why: &str) {
        self.refused_at(why, Instant::now());
    }

    fn refused_at(&self, why: &str, now: Instant) {
        let mut gate = self.lock();
        let length = match gate.as_ref() {
            // Refused again within a pause's length of the last one ending.
            Some(p) if now < p.until + p.length => (p.length * 2).min(QUOTA_PAUSE_MAX),
            _ => QUOTA_PAUSE,
        };
        *gate = Some(Pause {
            until: now + length,
            length,
            why: why.to_owned(),
        });
    }

    /// The server's message while uploads are paused.
    pub(super) fn paused(&self) -> Option<String> {
        self.paused_at(Instant::now())
    }

    fn paused_at(&self, now: Instant) -> Option<String> {
        self.lock()
            .as_ref()
            .filter(|p| now < p.until)
            .map(|p| p.why.clone())
    }
}

impl Transfer {
    /// Pauses uploads if `e` is a refusal for the account's quota.
    fn note_refusal(&self, e: &ClientError) {
        if let Some(why) = e.quota_refusal() {
            self.quota.refused(why);
        }
    }
}

/// [`Engine::send_chunks`], on its own parts (a background lane runs it too).
pub(super) async fn send_chunks(
    t: &Transfer,
    files: Vec<(SyncPath, LocalFile, FileDigest)>,
    wanted: &HashSet<ChunkId>,
) -> Result<Vec<(SyncPath, String)>, SyncError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ChunkId, Vec<u8>)>(ENCODE_GROUP * 2);
    let fs = t.fs.clone();
    let id_key = t.keys.id_key.clone();
    let codec = t.keys.codec.clone();
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
    let producer =
        tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for (path, expect_stat, chunks) in todo {
                let result = encode_file_chunks(&*fs, &path, &chunks, &id_key, &codec, &tx)
                    .and_then(|()| match fs.stat(&path).map_err(|e| e.to_string())? {
                        Found::File(st) if st == expect_stat => Ok(()),
                        _ => Err(UPLOAD_CHANGED.to_owned()),
                    });
                match result {
                    Ok(()) => {}
                    Err(why) if why == UPLOAD_STOPPED => break,
                    Err(why) => failed.push((path, why)),
                }
            }
            failed
        });
    // Each blob is written into the batch's request body as it comes (and dropped):
    // a batch in flight is held once, as its body.
    let new_batch = || BatchBuilder::with_capacity(UPLOAD_BATCH_BYTES + MAX_BLOB_SIZE + 64);
    let mut batch = new_batch();
    let mut in_flight = tokio::task::JoinSet::<Result<(), ClientError>>::new();
    let bar = crate::progress::bytes("uploading", total);
    let ns = t.keys.ns;
    loop {
        let next = rx.recv().await;
        let flush = match &next {
            Some((_, blob)) => {
                !batch.is_empty()
                    && (batch.blob_bytes() >= UPLOAD_BATCH_BYTES as u64
                        || !batch.fits(blob.len(), MAX_BATCH_BODY, MAX_IDS_PER_REQUEST))
            }
            None => !batch.is_empty(),
        };
        if flush {
            while in_flight.len() >= UPLOAD_IN_FLIGHT {
                if let Some(done) = in_flight.join_next().await {
                    done.expect("upload task")
                        .inspect_err(|e| t.note_refusal(e))?;
                }
            }
            let remote = Arc::clone(&t.remote);
            let part = std::mem::replace(&mut batch, new_batch());
            let bar = bar.clone();
            in_flight.spawn(async move {
                let sent = part.blob_bytes();
                remote.put_batch_body(ns, part).await?;
                bar.inc(sent);
                Ok::<(), ClientError>(())
            });
        }
        let Some((id, blob)) = next else { break };
        batch.push(&id, &blob);
    }
    while let Some(done) = in_flight.join_next().await {
        done.expect("upload task")
            .inspect_err(|e| t.note_refusal(e))?;
    }
    bar.finish_and_clear();
    Ok(producer.await.expect("chunk task"))
}

/// Reads the given chunks of one file (offset, length, id), checks each against its
/// id, encodes them on the rayon pool `ENCODE_GROUP` at a time and hands the blobs to
/// `tx` in order.
fn encode_file_chunks(
    fs: &dyn LocalFs,
    path: &SyncPath,
    chunks: &[ChunkSpan],
    id_key: &IdKey,
    codec: &BlobCodec,
    tx: &tokio::sync::mpsc::Sender<(ChunkId, Vec<u8>)>,
) -> Result<(), String> {
    use rayon::prelude::*;
    let file = fs.open(path).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod quota_tests {
    use super::*;

    /// A refusal pauses uploads for a minute; one again soon after doubles the pause,
    /// up to the cap; one long after starts over.
    #[test]
    fn repeated_refusals_pause_longer() {
        let gate = QuotaGate::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(gate.paused_at(start), None);
        gate.refused_at("full", start);
        assert_eq!(gate.paused_at(at(59)).as_deref(), Some("full"));
        assert_eq!(gate.paused_at(at(61)), None);
        gate.refused_at("full", at(61));
        assert!(gate.paused_at(at(61 + 119)).is_some(), "twice as long");
        assert!(gate.paused_at(at(61 + 121)).is_none());
        // Refused again and again (each time soon after the last): it doubles up to the
        // cap and stays there.
        let mut t = 61;
        for _ in 0..10 {
            t += 1;
            gate.refused_at("full", at(t));
        }
        let max = QUOTA_PAUSE_MAX.as_secs();
        assert!(gate.paused_at(at(t + max - 1)).is_some());
        assert!(gate.paused_at(at(t + max + 1)).is_none(), "capped");
        t += 3 * max;
        gate.refused_at("full", at(t));
        assert!(
            gate.paused_at(at(t + 61)).is_none(),
            "long after, it starts over"
        );
    }
}
