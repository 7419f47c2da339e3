//! A pack store that runs a test's hooks before it forwards each call to a real one:
//! a failing delete, a put held until the test lets it go, a count of puts.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use fsync_common::{NamespaceId, PackId};
use fsync_store::{async_trait, PackInfo, PackStore, StoreError};

/// What a [`HookedPacks`] does before it forwards a call; each default does nothing.
#[async_trait]
pub trait Hooks: Send + Sync + std::fmt::Debug {
    /// Before a put: an error here is the put's answer.
    async fn before_put(&self, _ns: &NamespaceId, _id: &PackId) -> Result<(), StoreError> {
        Ok(())
    }
    /// Before a delete or a removal of temporary files: an error here is the answer.
    fn before_delete(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A real pack store behind a test's [`Hooks`].
#[derive(Debug)]
pub struct HookedPacks<H> {
    /// The store that does the work.
    pub inner: Arc<dyn PackStore>,
    /// What runs before each call.
    pub hooks: H,
}

impl<H: Hooks> HookedPacks<H> {
    /// `inner` behind `hooks`.
    pub fn new(inner: Arc<dyn PackStore>, hooks: H) -> Arc<Self> {
        Arc::new(Self { inner, hooks })
    }
}

#[async_trait]
impl<H: Hooks> PackStore for HookedPacks<H> {
    async fn put(&self, ns: &NamespaceId, id: &PackId, pack: Vec<u8>) -> Result<(), StoreError> {
        self.hooks.before_put(ns, id).await?;
        self.inner.put(ns, id, pack).await
    }
    async fn read(
        &self,
        ns: &NamespaceId,
        id: &PackId,
        range: Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner.read(ns, id, range).await
    }
    async fn read_all(&self, ns: &NamespaceId, id: &PackId) -> Result<Vec<u8>, StoreError> {
        self.inner.read_all(ns, id).await
    }
    async fn delete(&self, ns: &NamespaceId, id: &PackId) -> Result<bool, StoreError> {
        self.hooks.before_delete()?;
        self.inner.delete(ns, id).await
    }
    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<PackId>,
        limit: usize,
    ) -> Result<Vec<PackInfo>, StoreError> {
        self.inner.list(ns, after, limit).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
    fn durable_writes(&self) -> u64 {
        self.inner.durable_writes()
    }
    async fn remove_stale_temp_files(
        &self,
        ns: &NamespaceId,
        older_than: SystemTime,
        dry_run: bool,
    ) -> Result<(u64, u64), StoreError> {
        self.hooks.before_delete()?;
        let inner = &self.inner;
        inner.remove_stale_temp_files(ns, older_than, dry_run).await
    }
}

/// The pack store at `url` (`s3://bucket/prefix`) on the S3 server at `endpoint`, with
/// the credentials of [`crate::s3::server_flags`].
pub fn s3_packs(endpoint: &str, url: &str) -> fsync_store::S3Packs {
    let mut config = fsync_store::S3Config::from_url(url).expect("a valid bucket URL");
    config.endpoint = Some(endpoint.to_owned());
    config.access_key_id = Some("test".into());
    config.secret_access_key = Some("test".into());
    fsync_store::S3Packs::open(&config).expect("an S3 client")
}
