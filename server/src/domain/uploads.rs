//! Uploads: check each blob's header, put the blobs, then record their rows under the
//! namespace lock while confirming, inside that lock, that every blob is still stored
//! (the upload half of the collection protocol, see the module documentation of `gc`).

use fsync_common::wire::StoredResponse;
use fsync_common::{ChunkId, NamespaceId};
use fsync_store::{BlobStore, PutOutcome, StoreError};

use crate::db::{BlobConfirm, DbError, MetaRepo};
use crate::state::{now_secs, AppState};

/// Why [`store_chunks`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// A blob is not one (bad header or size; 422).
    #[error("chunk {id}: {reason}")]
    InvalidBlob {
        /// The chunk the blob was sent as.
        id: ChunkId,
        /// What is wrong with it.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Accepts uploaded blobs into `ns`: every header is checked before anything is put
/// (blobs are opaque; the server never sees the content), then [`store_chunks`].
pub(crate) async fn accept(
    state: &AppState,
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
) -> Result<StoredResponse, UploadError> {
    for (id, blob) in &items {
        fsync_store::check_blob_header(blob).map_err(|e| UploadError::InvalidBlob {
            id: *id,
            reason: e.to_string(),
        })?;
    }
    let r = store_chunks(
        state.repo.as_ref(),
        state.blobs.as_ref(),
        ns,
        items,
        now_secs(),
    )
    .await?;
    state
        .metrics
        .chunks_stored
        .fetch_add(u64::from(r.stored), std::sync::atomic::Ordering::Relaxed);
    Ok(r)
}

/// Blob puts in flight at once within one upload.
const PUT_CONCURRENCY: usize = 16;

/// Blobs that are put but not yet recorded; [`record_stored`] records them.
#[derive(Debug)]
pub struct PutBlobs {
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
    stored: u32,
    existing: u32,
}

/// Puts each blob (the first half of [`store_chunks`]). A blob reported "already
/// present" may be deleted by a collection before it is recorded: [`record_stored`]
/// puts such blobs back.
pub async fn put_blobs(
    blobs: &dyn BlobStore,
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
) -> Result<PutBlobs, UploadError> {
    let mut out = PutBlobs {
        ns,
        items: Vec::new(),
        stored: 0,
        existing: 0,
    };
    // Puts run concurrently: each one waits on its own fsyncs, so a batch of many
    // small blobs would otherwise pay their latency one after another.
    let mut outcomes = Vec::with_capacity(items.len());
    for group in items.chunks(PUT_CONCURRENCY) {
        // The bytes are kept until recorded, in case they must be put again.
        let puts: Vec<_> = group
            .iter()
            .map(|(id, blob)| blobs.put(&ns, id, blob.clone()))
            .collect();
        outcomes.extend(futures_util::future::try_join_all(puts).await?);
    }
    for o in outcomes {
        match o {
            PutOutcome::Stored => out.stored += 1,
            PutOutcome::AlreadyPresent => out.existing += 1,
        }
    }
    out.items = items;
    Ok(out)
}

/// Records put blobs (the second half of [`store_chunks`]): their rows become visible
/// only once every blob is confirmed stored under the namespace lock.
pub async fn record_stored(
    repo: &dyn MetaRepo,
    blobs: &dyn BlobStore,
    put: PutBlobs,
    now: i64,
) -> Result<StoredResponse, UploadError> {
    let rows: Vec<(ChunkId, u64)> = put
        .items
        .iter()
        .map(|(id, b)| (*id, b.len() as u64))
        .collect();
    let confirm = Confirm {
        blobs,
        ns: put.ns,
        items: &put.items,
    };
    repo.record_chunks_confirmed(put.ns, &rows, now, &confirm)
        .await?;
    Ok(StoredResponse {
        stored: put.stored,
        existing: put.existing,
    })
}

/// Stores uploaded blobs and records them, safely against a concurrent collection:
/// when this returns, every blob is stored and recorded, and stays so for the grace
/// period or while a version references it.
pub async fn store_chunks(
    repo: &dyn MetaRepo,
    blobs: &dyn BlobStore,
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
    now: i64,
) -> Result<StoredResponse, UploadError> {
    let put = put_blobs(blobs, ns, items).await?;
    // Blobs written, rows not yet: a crash here leaves orphan blobs, nothing else.
    fsync_common::failpoint::hit("server.chunks.before_record")
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    record_stored(repo, blobs, put, now).await
}

/// Re-puts, under the namespace lock, any blob a collection deleted after it was put.
struct Confirm<'a> {
    blobs: &'a dyn BlobStore,
    ns: NamespaceId,
    items: &'a [(ChunkId, Vec<u8>)],
}

#[async_trait::async_trait]
impl BlobConfirm for Confirm<'_> {
    async fn confirm(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        let present = self.blobs.contains_many(&self.ns, ids).await?;
        for (id, _) in ids.iter().zip(present).filter(|(_, p)| !p) {
            if let Some((_, blob)) = self.items.iter().find(|(i, _)| i == id) {
                tracing::info!(namespace = %self.ns, chunk = %id, "blob deleted by a collection before it was recorded; storing it again");
                self.blobs.put(&self.ns, id, blob.clone()).await?;
            }
        }
        Ok(())
    }
}
