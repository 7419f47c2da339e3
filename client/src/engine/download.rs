//! Downloads: manifests in one request, chunks read back from unchanged local files
//! where possible, else fetched (one request per group of small files, or window by
//! window), every chunk and the whole content verified before an atomic install that
//! never overwrites a local edit.

use std::collections::{BTreeMap, HashMap};

use fsync_common::pages;
use fsync_common::wire::{ChunkRef, FileMeta, Manifest};
use fsync_common::{ChunkId, FileId, IdKey, PageId, SyncPath, VersionNo};

use super::lanes::{LaneState, LANE_BYTES};
use super::{
    deferrable, Engine, Found, LocalFs, RoundReport, SyncError, TempWriter, Transfer,
    CHANGED_MEANWHILE, DOWNLOAD_WINDOW, PREFETCH_GROUP_BYTES,
};
use crate::planner::LocalEntry;
use crate::scan::LocalFile;
use crate::state::BaseEntry;

/// Downloads installed together (open temp files at once, bounded well below the usual
/// descriptor limit of 1024).
const INSTALL_BATCH: usize = 256;

/// Where chunks can be read locally instead of downloaded: file, offset, length.
pub(super) type ReuseMap = HashMap<ChunkId, (SyncPath, u64, u32)>;

/// The chunks of local files still as synced.
pub(super) fn reuse_map(
    base: &BTreeMap<SyncPath, BaseEntry>,
    local: &BTreeMap<SyncPath, LocalEntry>,
) -> ReuseMap {
    let mut map = HashMap::new();
    for (path, b) in base {
        let Some(l) = local.get(path) else { continue };
        if l.hash != b.content_hash {
            continue;
        }
        add_to_reuse(&mut map, path, &b.chunks);
    }
    map
}

/// Adds the chunks of the file at `path` (first come, first kept).
pub(super) fn add_to_reuse(map: &mut ReuseMap, path: &SyncPath, chunks: &[ChunkRef]) {
    let mut offset = 0u64;
    for c in chunks {
        map.entry(c.id())
            .or_insert_with(|| (path.clone(), offset, c.len()));
        offset += u64::from(c.len());
    }
}

impl Engine {
    /// The manifests of `wanted`, in order, each with its whole chunk list. A version
    /// of more than one page comes as page ids; the pages of the version synced at the
    /// same path are cut again here (pages are a function of the chunk list), and only
    /// the others are fetched: a small edit of a large file costs about one page.
    async fn fetch_manifests(
        &self,
        wanted: &[(FileId, VersionNo)],
    ) -> Result<Vec<Manifest>, SyncError> {
        let mut manifests = self.remote.manifests(self.keys.ns, wanted, true).await?;
        let mut known: HashMap<PageId, Vec<ChunkRef>> = HashMap::new();
        let mut need: Vec<PageId> = Vec::new();
        for m in &manifests {
            let Some(ids) = &m.pages else { continue };
            if let Some(b) = self.state.get(&m.meta.path)? {
                let local = pages::paginate(&b.chunks);
                if local.len() > 1 {
                    for p in local {
                        known.entry(p.id()).or_insert_with(|| p.chunks().to_vec());
                    }
                }
            }
            need.extend(ids.iter().filter(|id| !known.contains_key(id)));
        }
        need.sort_unstable();
        need.dedup();
        if !need.is_empty() {
            for p in self.remote.fetch_pages(self.keys.ns, &need).await? {
                known.insert(p.id(), p.chunks().to_vec());
            }
        }
        let mut whole = Vec::new();
        for (i, m) in manifests.iter_mut().enumerate() {
            let Some(ids) = m.pages.take() else { continue };
            if ids.iter().all(|id| known.contains_key(id)) {
                m.chunks = ids
                    .iter()
                    .flat_map(|id| known[id].iter().copied())
                    .collect();
            } else {
                // A page went since the server named it (a version pruned meanwhile):
                // ask for this one's whole list, which says whether it is still there.
                whole.push(i);
            }
        }
        if !whole.is_empty() {
            let asked: Vec<(FileId, VersionNo)> = whole.iter().map(|&i| wanted[i]).collect();
            let lists = self.remote.manifests(self.keys.ns, &asked, false).await?;
            for (i, m) in whole.into_iter().zip(lists) {
                manifests[i] = m;
            }
        }
        Ok(manifests)
    }

    /// Downloads a remote head to its path: temp file → fsync → the local file is
    /// still as last synced → rename → fsync the directory.
    pub(super) async fn download(
        &mut self,
        meta: &FileMeta,
        reuse: &ReuseMap,
        report: &mut RoundReport,
    ) -> Result<bool, SyncError> {
        let manifest = self
            .fetch_manifests(&[(meta.file_id, meta.version)])
            .await?
            .pop()
            .ok_or_else(|| SyncError::Verify {
                path: meta.path.to_string(),
                reason: "the server answered no manifest".into(),
            })?;
        let fetched = match self
            .write_download(meta, manifest, reuse, &HashMap::new(), report)
            .await?
        {
            Written::File(f) => *f,
            Written::Folder(applied) => return Ok(applied),
        };
        match self.install_batch(vec![fetched], report).await?.pop() {
            Some((_, applied)) => applied,
            None => Ok(false),
        }
    }

    /// Downloads many files with few requests: one for all manifests, then one chunk
    /// fetch per group of small files. Returns the files not applied, with the reason.
    pub(super) async fn download_many(
        &mut self,
        metas: Vec<FileMeta>,
        reuse: &ReuseMap,
        report: &mut RoundReport,
    ) -> Result<Vec<(String, Option<String>)>, SyncError> {
        let mut failed = Vec::new();
        if metas.is_empty() {
            return Ok(failed);
        }
        let wanted: Vec<(FileId, VersionNo)> =
            metas.iter().map(|m| (m.file_id, m.version)).collect();
        let manifests = self.fetch_manifests(&wanted).await?;
        let mut pending: Vec<(FileMeta, Manifest)> = metas.into_iter().zip(manifests).collect();
        if self.lanes.enabled {
            let ready = self
                .downloads_to_lanes(&mut pending, reuse, &mut failed)
                .await;
            self.install_all(ready, report, &mut failed).await?;
        }
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
                    for (id, blob) in self.remote.fetch_batch(self.keys.ns, &ids).await? {
                        match self.keys.codec.decode(&id, &blob) {
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
            let mut ready = Vec::new();
            for (k, (meta, manifest)) in pending[i..j].iter().cloned().enumerate() {
                let path = meta.path.to_string();
                match self
                    .write_download(&meta, manifest, reuse, &prefetched, report)
                    .await
                {
                    Ok(Written::File(f)) => ready.push(*f),
                    Ok(Written::Folder(true)) => {}
                    Ok(Written::Folder(false)) => {
                        failed.push((path, Some(CHANGED_MEANWHILE.into())));
                    }
                    Err(e) => failed.push((path, Some(deferrable(e)?))),
                }
                if ready.len() == INSTALL_BATCH || i + k + 1 == j {
                    let batch = std::mem::take(&mut ready);
                    self.install_all(batch, report, &mut failed).await?;
                }
            }
            i = j;
        }
        Ok(failed)
    }

    /// Takes out of `pending` the big files that go by lane: a file whose lane runs
    /// waits (in `failed` without a reason, so the cursor stays); a file of
    /// [`LANE_BYTES`] or more to fetch (not found locally) starts one. Returns the
    /// files whose lane finished, to install.
    async fn downloads_to_lanes(
        &mut self,
        pending: &mut Vec<(FileMeta, Manifest)>,
        reuse: &ReuseMap,
        failed: &mut Vec<(String, Option<String>)>,
    ) -> Vec<Fetched> {
        let mut ready = Vec::new();
        let mut rest = Vec::with_capacity(pending.len());
        for (meta, manifest) in pending.drain(..) {
            let path = meta.path.to_string();
            match self
                .lanes
                .download(&meta.path, (meta.file_id, meta.version))
                .await
            {
                LaneState::Running => {
                    failed.push((path, None));
                    continue;
                }
                LaneState::Done(Ok(f)) => {
                    ready.push(f);
                    continue;
                }
                LaneState::Done(Err(why)) => {
                    tracing::warn!(path = %meta.path, reason = %why, "background download failed; retrying");
                    failed.push((path, Some(why)));
                    continue;
                }
                LaneState::None => {}
            }
            let fetch: u64 = manifest
                .chunks
                .iter()
                .filter(|c| !reuse.contains_key(&c.id()))
                .map(|c| u64::from(c.len()))
                .sum();
            if fetch < LANE_BYTES || fsync_common::wire::is_folder_mode(meta.mode) {
                rest.push((meta, manifest));
                continue;
            }
            if let Err(e) = check_manifest(&meta, &manifest) {
                failed.push((path, Some(e.to_string())));
                continue;
            }
            // The local chunks this file can use, owned by the lane.
            let own: ReuseMap = manifest
                .chunks
                .iter()
                .filter_map(|c| Some((c.id(), reuse.get(&c.id())?.clone())))
                .collect();
            let t = self.transfer();
            let key = (meta.file_id, meta.version);
            self.lanes
                .start_download(meta.path.clone(), key, async move {
                    write_file(&t, &meta, manifest, &own, &HashMap::new())
                        .await
                        .map_err(|e| e.to_string())
                });
            failed.push((path, None));
        }
        *pending = rest;
        ready
    }

    /// [`Engine::install_batch`], with what was not applied added to `failed`.
    async fn install_all(
        &mut self,
        batch: Vec<Fetched>,
        report: &mut RoundReport,
        failed: &mut Vec<(String, Option<String>)>,
    ) -> Result<(), SyncError> {
        if batch.is_empty() {
            return Ok(());
        }
        let paths: Vec<String> = batch.iter().map(|f| f.meta.path.to_string()).collect();
        match self.install_batch(batch, report).await {
            Ok(results) => {
                for (path, applied) in results {
                    match applied {
                        Ok(true) => {}
                        Ok(false) => {
                            failed.push((path.to_string(), Some(CHANGED_MEANWHILE.into())));
                        }
                        Err(e) => failed.push((path.to_string(), Some(deferrable(e)?))),
                    }
                }
            }
            Err(e) => {
                let why = deferrable(e)?;
                failed.extend(paths.into_iter().map(|p| (p, Some(why.clone()))));
            }
        }
        Ok(())
    }

    /// Makes a batch of verified downloads visible: their content durable together,
    /// then each one renamed into place if the local file is still as last synced (an
    /// edit made meanwhile is never overwritten), then their folders durable, and only
    /// then their bases recorded, in one transaction. A crash before the end leaves
    /// each file either as it was or complete with no base, which the next round
    /// adopts (same content) or downloads again. Per file: `Ok(true)` installed,
    /// `Ok(false)` changed meanwhile, `Err` not installed (its content could not be made
    /// durable, or the rename failed). An `Err` of the whole batch (the folders' fsync,
    /// the state) may come after some renames: those files are whole and visible but
    /// unrecorded, as after a crash there.
    async fn install_batch(
        &mut self,
        batch: Vec<Fetched>,
        report: &mut RoundReport,
    ) -> Result<Vec<(SyncPath, Result<bool, SyncError>)>, SyncError> {
        let (metas, mut outs): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|f| ((f.meta, f.chunks, f.installed), f.out))
            .unzip();
        let durable = self.fs.sync_temps(&mut outs);
        let mut results = Vec::with_capacity(metas.len());
        let mut done = Vec::new();
        for (((meta, chunks, installed), out), synced) in metas.into_iter().zip(outs).zip(durable) {
            let applied = match synced {
                Ok(()) => self.install_one(&meta, out).await,
                Err(e) => Err(e),
            };
            if let Ok(true) = applied {
                if let Some(mut e) = BaseEntry::from_meta(&meta, chunks, &installed) {
                    e.mode = installed.mode;
                    done.push(e);
                }
            }
            results.push((meta.path, applied));
        }
        let paths: Vec<SyncPath> = done.iter().map(|e| e.path.clone()).collect();
        self.fs.sync_folders(&paths)?;
        fsync_common::failpoint::hit("client.download.before_recording")
            .map_err(super::local_fs::io_err("recording", self.fs.root()))?;
        self.state
            .batch(|s| done.iter().try_for_each(|e| s.put(e)))?;
        for e in &done {
            tracing::info!(path = %e.path, size = e.size, "downloaded");
            report.downloaded += 1;
        }
        Ok(results)
    }

    /// Renames one durable download into place unless the local file changed since it
    /// was last synced.
    async fn install_one(
        &mut self,
        meta: &FileMeta,
        out: Box<dyn TempWriter>,
    ) -> Result<bool, SyncError> {
        let base = self.state.get(&meta.path)?;
        let safe = match (&base, self.fs.stat(&meta.path)?) {
            (_, Found::Nothing) => true,
            (Some(b), Found::File(_)) => self.still_as_synced(b).await,
            (_, Found::File(_) | Found::Other) => false,
        };
        if !safe {
            return Ok(false);
        }
        fsync_common::failpoint::hit("client.download.before_rename").map_err(|e| {
            SyncError::Io {
                what: "renaming into place",
                path: meta.path.to_local(self.fs.root()),
                source: e,
            }
        })?;
        out.install()?;
        Ok(true)
    }

    /// Writes one downloaded file to a temp file and verifies it (see [`write_file`]).
    /// An empty folder entry is applied at once.
    async fn write_download(
        &mut self,
        meta: &FileMeta,
        manifest: Manifest,
        reuse: &ReuseMap,
        prefetched: &HashMap<ChunkId, Vec<u8>>,
        report: &mut RoundReport,
    ) -> Result<Written, SyncError> {
        check_manifest(meta, &manifest)?;
        if fsync_common::wire::is_folder_mode(meta.mode) {
            return Ok(Written::Folder(
                self.write_folder(meta, &manifest, report).await?,
            ));
        }
        let f = write_file(&self.transfer(), meta, manifest, reuse, prefetched).await?;
        Ok(Written::File(Box::new(f)))
    }
}

/// Checks that a manifest is the change's and adds up to its size.
pub(super) fn check_manifest(meta: &FileMeta, manifest: &Manifest) -> Result<(), SyncError> {
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
    if meta.content_hash.is_none() {
        return Err(verify("no content hash".into()));
    }
    let total: u64 = manifest.chunks.iter().map(|c| u64::from(c.len())).sum();
    if total != meta.size {
        return Err(verify(format!(
            "chunks add up to {total} bytes, not {}",
            meta.size
        )));
    }
    Ok(())
}

/// Writes a file's content (its manifest checked by [`check_manifest`]) to a temp file
/// and verifies it: chunks from `prefetched`, else from local files, else fetched
/// window by window; each chunk checked against its id, the whole against the content
/// hash. Not yet durable, not visible.
pub(super) async fn write_file(
    t: &Transfer,
    meta: &FileMeta,
    manifest: Manifest,
    reuse: &ReuseMap,
    prefetched: &HashMap<ChunkId, Vec<u8>>,
) -> Result<Fetched, SyncError> {
    let verify = |reason: String| SyncError::Verify {
        path: meta.path.to_string(),
        reason,
    };
    let expect_hash = meta
        .content_hash
        .ok_or_else(|| verify("no content hash".into()))?;
    let mut out = t.fs.create_temp(&meta.path)?;
    let bar = crate::progress::bytes(&format!("downloading {}", meta.path), meta.size);
    // Every chunk below is checked against its id before it is written, so hashing
    // what is written, in order, gives the file's content hash without reading the
    // temp file back.
    let mut hasher = fsync_chunker::ContentHasher::new(&t.keys.id_key);
    let write_failed = |e: std::io::Error| SyncError::Io {
        what: "writing",
        path: meta.path.to_local(t.fs.root()),
        source: e,
    };
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
                .and_then(|src| read_local_chunk(&*t.fs, src, c, &t.keys.id_key))
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
            let blobs = t.remote.fetch_batch(t.keys.ns, &fetch).await?;
            for (id, blob) in blobs {
                let data = t
                    .keys
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
            out.write_all(data)?;
            hasher.update(data);
            fsync_common::failpoint::hit("client.download.chunk_written").map_err(write_failed)?;
            bar.inc(u64::from(c.len()));
        }
    }
    bar.finish_and_clear();
    let installed = out.finish(meta.mode, meta.mtime)?;
    // Verify the whole content before it can become visible.
    if hasher.finalize() != expect_hash {
        return Err(verify("the content hash does not match".into()));
    }
    Ok(Fetched {
        meta: meta.clone(),
        chunks: manifest.chunks,
        out,
        installed,
    })
}

/// What [`Engine::write_download`] did.
enum Written {
    /// A file, ready to install.
    File(Box<Fetched>),
    /// An empty folder entry: applied (`true`), or left for a local change.
    Folder(bool),
}

/// A download written and verified under a temp name: not yet durable, not visible.
pub(super) struct Fetched {
    meta: FileMeta,
    chunks: Vec<ChunkRef>,
    out: Box<dyn TempWriter>,
    installed: LocalFile,
}

impl Engine {
    /// Creates an empty folder entry (or finds the folder there). A file in its place is
    /// replaced only if it is unchanged since it was synced.
    async fn write_folder(
        &mut self,
        meta: &FileMeta,
        manifest: &Manifest,
        report: &mut RoundReport,
    ) -> Result<bool, SyncError> {
        if !manifest.chunks.is_empty() || meta.size != 0 {
            return Err(SyncError::Verify {
                path: meta.path.to_string(),
                reason: "a folder entry with content".into(),
            });
        }
        let base = self.state.get(&meta.path)?;
        if let Found::File(st) = self.fs.stat(&meta.path)? {
            if !fsync_common::wire::is_folder_mode(st.mode) {
                match &base {
                    Some(b) if self.still_as_synced(b).await => self.fs.remove(&meta.path)?,
                    _ => return Ok(false),
                }
            }
        }
        let installed = self.fs.make_folder(&meta.path, meta.mode, meta.mtime)?;
        if let Some(e) = BaseEntry::from_meta(meta, Vec::new(), &installed) {
            self.state.put(&e)?;
        }
        tracing::info!(path = %meta.path, "created folder");
        report.downloaded += 1;
        Ok(true)
    }
}

/// Reads a chunk from a local file and checks its id.
fn read_local_chunk(
    fs: &dyn LocalFs,
    src: &(SyncPath, u64, u32),
    c: &ChunkRef,
    id_key: &IdKey,
) -> Option<Vec<u8>> {
    let (path, offset, len) = src;
    if *len != c.len() {
        return None;
    }
    let f = fs.open(path).ok()?;
    let mut buf = vec![0u8; *len as usize];
    f.read_exact_at(&mut buf, *offset).ok()?;
    (fsync_chunker::chunk_id(id_key, &buf) == c.id()).then_some(buf)
}
