//! The server as the engine sees it.

use fsync_common::pages::Page;
use fsync_common::wire::{
    ChangesResponse, CommitRequest, CommitResponse, DeleteRequest, Manifest, OpResponse, SyncEvent,
    SyncEventResult,
};
use fsync_common::{ChunkId, FileId, NamespaceId, PageId, Seq, VersionNo};

use crate::api::{ApiClient, ClientError};

/// The calls a sync round makes. [`ApiClient`] implements it over HTTP; a test can
/// implement it over the server's repository.
#[async_trait::async_trait]
pub trait Remote: Send + Sync + 'static {
    /// A page of the journal after `since`.
    async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, ClientError>;
    /// Which of `ids` the server lacks.
    async fn missing(&self, ns: NamespaceId, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ClientError>;
    /// Stores encoded blobs.
    async fn put_batch(
        &self,
        ns: NamespaceId,
        blobs: &[(ChunkId, Vec<u8>)],
    ) -> Result<(), ClientError>;
    /// Stores a batch already framed (one request's worth). By default its entries go
    /// through [`Remote::put_batch`].
    async fn put_batch_body(
        &self,
        ns: NamespaceId,
        built: fsync_common::batch::BatchBuilder,
    ) -> Result<(), ClientError> {
        let entries = fsync_common::batch::decode(built.body(), usize::MAX)
            .map_err(|e| ClientError::Protocol(format!("a batch built here: {e}")))?;
        let blobs: Vec<(ChunkId, Vec<u8>)> = entries
            .into_iter()
            .map(|(id, b)| (id, b.to_vec()))
            .collect();
        self.put_batch(ns, &blobs).await
    }
    /// Fetches encoded blobs (those the server has).
    async fn fetch_batch(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, ClientError>;
    /// Applies a batch of events, one result per event, in order.
    async fn events(&self, events: Vec<SyncEvent>) -> Result<Vec<SyncEventResult>, ClientError>;
    /// Commits one file.
    async fn commit(&self, req: &CommitRequest) -> Result<CommitResponse, ClientError>;
    /// Deletes one file.
    async fn delete(&self, req: &DeleteRequest) -> Result<OpResponse, ClientError>;
    /// The manifest of a version (the head when `None`).
    async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, ClientError>;
    /// Many manifests, in the order asked; with `as_pages`, a version of more than
    /// one page as its page ids.
    async fn manifests(
        &self,
        ns: NamespaceId,
        files: &[(FileId, VersionNo)],
        as_pages: bool,
    ) -> Result<Vec<Manifest>, ClientError>;
    /// Stores manifest pages (their chunks stored first).
    async fn put_pages(&self, ns: NamespaceId, pages: &[Page]) -> Result<(), ClientError>;
    /// Fetches manifest pages, checked against their ids, in the order asked.
    async fn fetch_pages(&self, ns: NamespaceId, ids: &[PageId]) -> Result<Vec<Page>, ClientError>;
}

#[async_trait::async_trait]
impl Remote for ApiClient {
    async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, ClientError> {
        ApiClient::changes(self, ns, since, limit).await
    }

    async fn missing(&self, ns: NamespaceId, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ClientError> {
        ApiClient::missing(self, ns, ids).await
    }

    async fn put_batch(
        &self,
        ns: NamespaceId,
        blobs: &[(ChunkId, Vec<u8>)],
    ) -> Result<(), ClientError> {
        ApiClient::put_batch(self, ns, blobs).await
    }

    async fn put_batch_body(
        &self,
        ns: NamespaceId,
        built: fsync_common::batch::BatchBuilder,
    ) -> Result<(), ClientError> {
        ApiClient::put_batch_body(self, ns, built).await
    }

    async fn fetch_batch(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, ClientError> {
        ApiClient::fetch_batch(self, ns, ids).await
    }

    async fn events(&self, events: Vec<SyncEvent>) -> Result<Vec<SyncEventResult>, ClientError> {
        ApiClient::events(self, events).await
    }

    async fn commit(&self, req: &CommitRequest) -> Result<CommitResponse, ClientError> {
        ApiClient::commit(self, req).await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<OpResponse, ClientError> {
        ApiClient::delete(self, req).await
    }

    async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, ClientError> {
        ApiClient::manifest(self, file, version).await
    }

    async fn manifests(
        &self,
        ns: NamespaceId,
        files: &[(FileId, VersionNo)],
        as_pages: bool,
    ) -> Result<Vec<Manifest>, ClientError> {
        ApiClient::manifests(self, ns, files, as_pages).await
    }

    async fn put_pages(&self, ns: NamespaceId, pages: &[Page]) -> Result<(), ClientError> {
        ApiClient::put_pages(self, ns, pages).await
    }

    async fn fetch_pages(&self, ns: NamespaceId, ids: &[PageId]) -> Result<Vec<Page>, ClientError> {
        ApiClient::fetch_pages(self, ns, ids).await
    }
}
