//! The `PackStore` trait: where the server's pack files live (see [`crate::pack`] for
//! their format). Narrow on purpose, so that an object store serves it as well as a
//! disk: whole-object put, ranged read, delete, sorted list, health check. One file per
//! adapter; every adapter passes `fsync_store::testsuite::packs::run_all`.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use fsync_common::{NamespaceId, PackId};

use super::StoreError;

/// One entry of [`PackStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackInfo {
    /// The pack.
    pub id: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written.
    pub modified: SystemTime,
}

/// Storage of whole pack files by namespace and pack id.
#[async_trait]
pub trait PackStore: Send + Sync + std::fmt::Debug {
    /// Stores a finished pack durably: when this returns, the pack survives a crash
    /// (one write and fsync of the file and its directory, or one PUT). Pack ids are
    /// random and never reused, so a put never replaces another pack; a repeated put of
    /// the same id with the same bytes is harmless.
    async fn put(&self, ns: &NamespaceId, id: &PackId, pack: Vec<u8>) -> Result<(), StoreError>;

    /// Bytes `range` of a pack; [`StoreError::PackNotFound`] if there is no such pack,
    /// [`StoreError::ShortRead`] if it ends before `range.end`.
    async fn read(
        &self,
        ns: &NamespaceId,
        id: &PackId,
        range: Range<u64>,
    ) -> Result<Vec<u8>, StoreError>;

    /// The whole pack; [`StoreError::PackNotFound`] if there is no such pack.
    async fn read_all(&self, ns: &NamespaceId, id: &PackId) -> Result<Vec<u8>, StoreError>;

    /// Removes a pack; `true` if it existed.
    async fn delete(&self, ns: &NamespaceId, id: &PackId) -> Result<bool, StoreError>;

    /// Up to `limit` packs of `ns` with ids strictly greater than `after`, sorted by id.
    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<PackId>,
        limit: usize,
    ) -> Result<Vec<PackInfo>, StoreError>;

    /// Health check: the store is reachable and writable.
    async fn check(&self) -> Result<(), StoreError>;

    /// What puts paid for durability so far: fsyncs of files and directories on a
    /// disk, PUT requests on an object store (`fsync_pack_store_durable_writes_total`).
    fn durable_writes(&self) -> u64 {
        0
    }

    /// Partial writes of `ns` that a crash left behind (temp files last written before
    /// `older_than`): removed unless `dry_run`. Returns their count and bytes. Stores
    /// whose puts are atomic (S3) keep this default.
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
impl<T: PackStore + ?Sized> PackStore for Arc<T> {
    async fn put(&self, ns: &NamespaceId, id: &PackId, pack: Vec<u8>) -> Result<(), StoreError> {
        (**self).put(ns, id, pack).await
    }

    async fn read(
        &self,
        ns: &NamespaceId,
        id: &PackId,
        range: Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        (**self).read(ns, id, range).await
    }

    async fn read_all(&self, ns: &NamespaceId, id: &PackId) -> Result<Vec<u8>, StoreError> {
        (**self).read_all(ns, id).await
    }

    async fn delete(&self, ns: &NamespaceId, id: &PackId) -> Result<bool, StoreError> {
        (**self).delete(ns, id).await
    }

    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<PackId>,
        limit: usize,
    ) -> Result<Vec<PackInfo>, StoreError> {
        (**self).list(ns, after, limit).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        (**self).check().await
    }

    fn durable_writes(&self) -> u64 {
        (**self).durable_writes()
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
