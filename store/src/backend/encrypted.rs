//! The codec as a decorator over any [`BlobStore`]: plaintext in, plaintext out.

use std::sync::Arc;

use fsync_common::{ChunkId, NamespaceId};

use super::{BlobStore, PutOutcome, StoreError};
use crate::codec::BlobCodec;

/// Wraps a [`BlobStore`] with a namespace's [`BlobCodec`]: `put_plain` chunk-ids,
/// compresses and encrypts; `get_plain` fetches, authenticates, decompresses (bounded)
/// and checks the id. The codec work runs on `spawn_blocking`.
///
/// The codec is per namespace (its keys are), so use one `EncryptedStore` per
/// namespace key; the inner store may be shared (`Arc<dyn BlobStore>` is a store).
#[derive(Debug, Clone)]
pub struct EncryptedStore<S> {
    inner: S,
    codec: Arc<BlobCodec>,
}

impl<S: BlobStore> EncryptedStore<S> {
    /// Decorates `inner` with `codec`.
    pub fn new(inner: S, codec: BlobCodec) -> Self {
        Self {
            inner,
            codec: Arc::new(codec),
        }
    }

    /// The undecorated store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The codec.
    pub fn codec(&self) -> &BlobCodec {
        &self.codec
    }

    /// Encodes and stores a chunk; returns its id and whether it was new.
    pub async fn put_plain(
        &self,
        ns: &NamespaceId,
        plaintext: Vec<u8>,
    ) -> Result<(ChunkId, PutOutcome), StoreError> {
        let codec = Arc::clone(&self.codec);
        let (id, blob) = tokio::task::spawn_blocking(move || {
            let id = codec.chunk_id(&plaintext);
            codec.encode(&id, &plaintext).map(|blob| (id, blob))
        })
        .await?
        .map_err(StoreError::Encode)?;
        let outcome = self.inner.put(ns, &id, blob).await?;
        Ok((id, outcome))
    }

    /// Fetches and decodes a chunk. Errors with [`StoreError::NotFound`] if absent and
    /// [`StoreError::Corrupt`] if it does not decode to plaintext hashing to `id`.
    pub async fn get_plain(&self, ns: &NamespaceId, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let blob = self
            .inner
            .get(ns, id)
            .await?
            .ok_or(StoreError::NotFound { ns: *ns, id: *id })?;
        let codec = Arc::clone(&self.codec);
        let id = *id;
        tokio::task::spawn_blocking(move || codec.decode(&id, &blob))
            .await?
            .map_err(|source| StoreError::Corrupt { id, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalStore;
    use crate::codec::CodecError;
    use crate::keys::NamespaceKey;

    fn setup() -> (tempfile::TempDir, EncryptedStore<Arc<dyn BlobStore>>) {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn BlobStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let codec = BlobCodec::new(&NamespaceKey::generate().derive());
        (dir, EncryptedStore::new(inner, codec))
    }

    #[tokio::test]
    async fn plaintext_round_trips_and_is_stored_encrypted() {
        let (_dir, store) = setup();
        let ns = NamespaceId::from_bytes([1; 16]);
        let data = b"attack at dawn ".repeat(1000);
        let (id, outcome) = store.put_plain(&ns, data.clone()).await.unwrap();
        assert_eq!(outcome, PutOutcome::Stored);
        assert_eq!(id, store.codec().chunk_id(&data));
        assert_eq!(
            store.put_plain(&ns, data.clone()).await.unwrap(),
            (id, PutOutcome::AlreadyPresent)
        );
        assert_eq!(store.get_plain(&ns, &id).await.unwrap(), data);

        let raw = store.inner().get(&ns, &id).await.unwrap().unwrap();
        assert!(crate::check_blob_header(&raw).is_ok());
        assert!(!raw.windows(6).any(|w| w == b"attack"));
    }

    #[tokio::test]
    async fn missing_and_tampered_blobs_are_errors() {
        let (_dir, store) = setup();
        let ns = NamespaceId::from_bytes([1; 16]);
        let absent = store.codec().chunk_id(b"absent");
        assert!(matches!(
            store.get_plain(&ns, &absent).await,
            Err(StoreError::NotFound { .. })
        ));

        let (id, _) = store.put_plain(&ns, b"payload".to_vec()).await.unwrap();
        let mut raw = store.inner().get(&ns, &id).await.unwrap().unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        store.inner().delete(&ns, &id).await.unwrap();
        store.inner().put(&ns, &id, raw).await.unwrap();
        assert!(matches!(
            store.get_plain(&ns, &id).await,
            Err(StoreError::Corrupt {
                source: CodecError::Decrypt,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn oversized_plaintext_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let codec = BlobCodec::new(&NamespaceKey::generate().derive()).with_max_plaintext(10);
        let store = EncryptedStore::new(LocalStore::open(dir.path()).unwrap(), codec);
        let ns = NamespaceId::from_bytes([1; 16]);
        assert!(matches!(
            store.put_plain(&ns, vec![0; 11]).await,
            Err(StoreError::Encode(CodecError::TooLarge { limit: 10 }))
        ));
    }
}
