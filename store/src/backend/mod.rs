//! The `BlobStore` trait: where encoded blobs live. One file per adapter.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use fsync_common::{ChunkId, NamespaceId};

pub(crate) mod encrypted;
pub(crate) mod local;
pub(crate) mod local_packs;
pub(crate) mod packs;
pub(crate) mod s3;

/// Error of a blob store. Never carries blob content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"write blob"`, `"list"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The blob does not exist (for operations that require it to).
    #[error("blob {id} not found in namespace {ns}")]
    NotFound {
        /// Namespace searched.
        ns: NamespaceId,
        /// Blob missing.
        id: ChunkId,
    },
    /// The pack does not exist (for operations that require it to).
    #[error("pack {id} not found in namespace {ns}")]
    PackNotFound {
        /// Namespace searched.
        ns: NamespaceId,
        /// Pack missing.
        id: fsync_common::PackId,
    },
    /// A stored object ended before the range asked for: truncated.
    #[error("short read: wanted bytes {wanted:?}, the object ended after {got}")]
    ShortRead {
        /// The range asked for.
        wanted: std::ops::Range<u64>,
        /// Bytes there were from its start.
        got: u64,
    },
    /// A stored blob failed to decode (see [`crate::EncryptedStore`]).
    #[error("blob {id} is corrupt or not readable with this key: {source}")]
    Corrupt {
        /// The blob concerned.
        id: ChunkId,
        /// Why decoding failed.
        #[source]
        source: crate::CodecError,
    },
    /// A plaintext could not be encoded (too large for the codec).
    #[error("cannot encode chunk: {0}")]
    Encode(#[source] crate::CodecError),
    /// A remote backend (e.g. S3) reported an error.
    #[error("storage backend: {0}")]
    Backend(String),
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Result of [`BlobStore::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The blob was written.
    Stored,
    /// A blob with this id was already there; nothing was written.
    AlreadyPresent,
}

/// One entry of [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's chunk id.
    pub id: ChunkId,
    /// Stored size in bytes.
    pub size: u64,
    /// When the blob was last written.
    pub modified: SystemTime,
}

/// Storage of opaque blobs by namespace and chunk id.
///
/// Backends store bytes as given: encoding and verification are the job of the
/// [`crate::EncryptedStore`] decorator (client side) and
/// [`crate::check_blob_header`] (server side). Every backend must pass
/// `fsync_store::testsuite::run_all` (cargo feature `testsuite`).
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores a blob. Idempotent: a second put of the same id leaves one intact blob.
    async fn put(
        &self,
        ns: &NamespaceId,
        id: &ChunkId,
        blob: Vec<u8>,
    ) -> Result<PutOutcome, StoreError>;

    /// The blob, or `None` if absent.
    async fn get(&self, ns: &NamespaceId, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError>;

    /// For each id, in order, whether a blob is stored.
    async fn contains_many(
        &self,
        ns: &NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, StoreError>;

    /// Removes a blob; `true` if it existed.
    async fn delete(&self, ns: &NamespaceId, id: &ChunkId) -> Result<bool, StoreError>;

    /// Up to `limit` blobs with ids strictly greater than `after`, sorted by id.
    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, StoreError>;

    /// Health check: the store is reachable and writable.
    async fn check(&self) -> Result<(), StoreError>;

    /// Partial writes of `ns` that a crashed put left behind (temp files last written
    /// before `older_than`): removed unless `dry_run`. Returns their count and bytes.
    /// Backends that never expose partial writes keep this default.
    async fn remove_stale_temp_files(
        &self,
        ns: &NamespaceId,
        older_than: SystemTime,
        dry_run: bool,
    ) -> Result<(u64, u64), StoreError> {
        let _ = (ns, older_than, dry_run);
        Ok((0, 0))
    }
}

#[async_trait]
impl<T: BlobStore + ?Sized> BlobStore for Arc<T> {
    async fn put(
        &self,
        ns: &NamespaceId,
        id: &ChunkId,
        blob: Vec<u8>,
    ) -> Result<PutOutcome, StoreError> {
        (**self).put(ns, id, blob).await
    }

    async fn get(&self, ns: &NamespaceId, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(ns, id).await
    }

    async fn contains_many(
        &self,
        ns: &NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, StoreError> {
        (**self).contains_many(ns, ids).await
    }

    async fn delete(&self, ns: &NamespaceId, id: &ChunkId) -> Result<bool, StoreError> {
        (**self).delete(ns, id).await
    }

    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, StoreError> {
        (**self).list(ns, after, limit).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        (**self).check().await
    }

    async fn remove_stale_temp_files(
        &self,
        ns: &NamespaceId,
        older_than: SystemTime,
        dry_run: bool,
    ) -> Result<(u64, u64), StoreError> {
        (**self)
            .remove_stale_temp_files(ns, older_than, dry_run)
            .await
    }
}
