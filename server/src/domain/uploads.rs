//! Uploads: check each blob's header, write the blobs of one request as one pack, then
//! record the pack and its chunk rows in one transaction under the namespace lock,
//! confirming inside that lock that the pack is still stored (the upload half of the
//! collection protocol, see the module documentation of `gc`).

use fsync_common::wire::StoredResponse;
use std::collections::HashSet;

use fsync_common::{ChunkId, NamespaceId, PackId};
use fsync_store::pack::{PackBuilder, PACK_HEADER_LEN};
use fsync_store::{PackStore, StoreError};

use super::group_commit::GroupCommit;
use crate::db::{BlobConfirm, DbError, MetaRepo, NewPack};
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
    /// The group this upload was committed with failed (the cause, shared by every
    /// upload of the group; see [`super::group_commit`]).
    #[error(transparent)]
    Group(std::sync::Arc<UploadError>),
    /// The upload would take the namespace's owner past its quota (507); nothing of it
    /// was stored.
    #[error(
        "storage quota exceeded: {} of {} used, and this upload needs {} more; delete \
         files or old versions (space is freed when the operator's fsync-gc runs) or ask \
         the server's operator for a larger quota",
        fsync_common::size::format(*used),
        fsync_common::size::format(*quota),
        fsync_common::size::format(*incoming)
    )]
    Quota {
        /// Stored bytes of the owner's namespaces.
        used: u64,
        /// The owner's quota.
        quota: u64,
        /// Bytes of the refused upload.
        incoming: u64,
    },
}

/// Refuses an upload of `incoming` blob bytes into `ns` that would take its owner past
/// its quota. Without a quota this is one indexed look-up. The check runs before the
/// blobs are stored, not under a lock: uploads racing each other may together pass the
/// quota by what they carry (at most a batch each).
async fn check_quota(state: &AppState, ns: NamespaceId, incoming: u64) -> Result<(), UploadError> {
    let Some(usage) = state.repo.quota_of(ns).await? else {
        return Ok(());
    };
    match usage.quota_bytes {
        Some(quota) if usage.used_bytes.saturating_add(incoming) > quota => {
            state
                .metrics
                .quota_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(UploadError::Quota {
                used: usage.used_bytes,
                quota,
                incoming,
            })
        }
        _ => Ok(()),
    }
}

/// Accepts uploaded blobs into `ns`: every header is checked before anything is put
/// (blobs are opaque; the server never sees the content), then [`store_chunks`].
pub(crate) async fn accept(
    state: &AppState,
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
) -> Result<StoredResponse, UploadError> {
    for (id, blob) in &items {
        check_header(*id, blob)?;
    }
    check_quota(state, ns, items.iter().map(|(_, b)| b.len() as u64).sum()).await?;
    let r = store_chunks(
        state.repo.as_ref(),
        state.packs.as_ref(),
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

/// Accepts one uploaded blob into `ns`, written with whatever other single blobs of
/// `ns` arrive meanwhile ([`GroupCommit`]); returns whether it was already recorded.
pub(crate) async fn accept_one(
    state: &AppState,
    ns: NamespaceId,
    id: ChunkId,
    blob: Vec<u8>,
) -> Result<bool, UploadError> {
    check_header(id, &blob)?;
    check_quota(state, ns, blob.len() as u64).await?;
    let existed = GroupCommit::submit(state, ns, id, blob).await?;
    if !existed {
        state
            .metrics
            .chunks_stored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(existed)
}

fn check_header(id: ChunkId, blob: &[u8]) -> Result<(), UploadError> {
    fsync_store::check_blob_header(blob).map_err(|e| UploadError::InvalidBlob {
        id,
        reason: e.to_string(),
    })
}

/// Blobs written as one pack but not yet recorded; [`record_stored`] records them.
#[derive(Debug)]
pub struct PutBlobs {
    ns: NamespaceId,
    pack: NewPack,
    /// The pack's bytes, kept until recorded in case they must be put again.
    bytes: Vec<u8>,
}

/// Writes the blobs as one pack, durably (the first half of [`store_chunks`]): one
/// write and one fsync of the file and its directory, or one PUT. Ids repeated within
/// `items` are stored once.
pub async fn put_blobs(
    packs: &dyn PackStore,
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
) -> Result<PutBlobs, UploadError> {
    let mut seen = HashSet::with_capacity(items.len());
    let total = items.iter().map(|(_, b)| b.len()).sum();
    let mut builder = PackBuilder::with_capacity(total);
    for (id, blob) in &items {
        if seen.insert(*id) {
            builder.push(*id, blob);
        }
    }
    drop(items);
    let (bytes, entries) = builder.finish();
    let pack = NewPack {
        id: PackId::from_bytes(rand::random()),
        size: bytes.len() as u64,
        entries,
    };
    if !pack.entries.is_empty() {
        packs.put(&ns, &pack.id, bytes.clone()).await?;
    }
    Ok(PutBlobs { ns, pack, bytes })
}

/// Records a written pack (the second half of [`store_chunks`]): its rows become
/// visible in one transaction, under the namespace lock, once the pack is confirmed
/// still stored.
pub async fn record_stored(
    repo: &dyn MetaRepo,
    packs: &dyn PackStore,
    put: PutBlobs,
    now: i64,
) -> Result<StoredResponse, UploadError> {
    let total = put.pack.entries.len();
    let existing = record(repo, packs, &put, now).await?.len();
    Ok(StoredResponse {
        stored: (total - existing) as u32,
        existing: existing as u32,
    })
}

/// Records a written pack; returns the ids that were already recorded.
async fn record(
    repo: &dyn MetaRepo,
    packs: &dyn PackStore,
    put: &PutBlobs,
    now: i64,
) -> Result<Vec<ChunkId>, UploadError> {
    if put.pack.entries.is_empty() {
        return Ok(Vec::new());
    }
    let confirm = Confirm { packs, put };
    Ok(repo.record_pack(put.ns, &put.pack, now, &confirm).await?)
}

/// Stores uploaded blobs and records them, safely against a concurrent collection:
/// when this returns, every blob is stored and recorded, and stays so for the grace
/// period or while a version references it.
pub async fn store_chunks(
    repo: &dyn MetaRepo,
    packs: &dyn PackStore,
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
    now: i64,
) -> Result<StoredResponse, UploadError> {
    let total = items.iter().map(|(id, _)| id).collect::<HashSet<_>>().len();
    let existing = store_chunks_existing(repo, packs, ns, items, now).await?;
    Ok(StoredResponse {
        stored: (total - existing.len()) as u32,
        existing: existing.len() as u32,
    })
}

/// [`store_chunks`], returning the ids that were already recorded.
pub(super) async fn store_chunks_existing(
    repo: &dyn MetaRepo,
    packs: &dyn PackStore,
    ns: NamespaceId,
    items: Vec<(ChunkId, Vec<u8>)>,
    now: i64,
) -> Result<Vec<ChunkId>, UploadError> {
    let put = put_blobs(packs, ns, items).await?;
    // The pack written, its rows not yet: a crash here leaves an unrecorded pack, which
    // the collector removes after the grace period; nothing else.
    fsync_common::failpoint::hit("server.chunks.before_record")
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    record(repo, packs, &put, now).await
}

/// Puts the pack back, under the namespace lock, if a collection removed it as
/// unrecorded after it was written (an upload stalled past the grace period).
struct Confirm<'a> {
    packs: &'a dyn PackStore,
    put: &'a PutBlobs,
}

#[async_trait::async_trait]
impl BlobConfirm for Confirm<'_> {
    async fn confirm(&self, _ids: &[ChunkId]) -> Result<(), StoreError> {
        let (ns, id) = (&self.put.ns, &self.put.pack.id);
        match self.packs.read(ns, id, 0..PACK_HEADER_LEN as u64).await {
            Ok(_) => Ok(()),
            Err(StoreError::PackNotFound { .. }) => {
                tracing::info!(namespace = %ns, pack = %id, "pack removed by a collection before it was recorded; storing it again");
                self.packs.put(ns, id, self.put.bytes.clone()).await
            }
            Err(e) => Err(e),
        }
    }
}
