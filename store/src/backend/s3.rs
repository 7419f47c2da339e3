//! Packs on S3-compatible object storage (`object_store`): one object per pack at
//! `<prefix>/packs/<ns hex>/<pack hex>`. A put is one PUT (atomic on S3: a reader
//! sees the whole object or none), a read is one ranged GET, a listing pages with
//! S3's `start-after` in key order.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use fsync_common::{NamespaceId, PackId};
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use super::packs::{PackInfo, PackStore};
use super::StoreError;

/// Where and how to reach a bucket (`BLOB_STORE=s3://bucket/prefix` and the `S3_*` and
/// `AWS_*` variables).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix below which the packs live (may be empty).
    pub prefix: String,
    /// Endpoint URL for S3-compatible servers (`SeaweedFS`, `MinIO`, Garage); `None`: AWS.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when unset).
    pub region: String,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Parses `s3://bucket[/prefix]`; the rest of the fields are left at their defaults.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Backend(format!("BLOB_STORE {url:?}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(bad(
                "a bucket name is 3 to 63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(bad("the prefix may not contain . or .. segments"));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
        })
    }
}

/// A [`PackStore`] on an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Packs {
    store: Arc<AmazonS3>,
    root: String,
    puts: Arc<std::sync::atomic::AtomicU64>,
}

fn backend(op: &str, e: &object_store::Error) -> StoreError {
    StoreError::Backend(format!("S3 {op}: {e}"))
}

impl S3Packs {
    /// Connects to the bucket of `config` (no request is made until the first call).
    pub fn open(config: &S3Config) -> Result<Self, StoreError> {
        // reqwest's rustls needs a process-wide provider; ring is the one this
        // workspace's rustls is built with. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region);
        if let Some(endpoint) = &config.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let store = b.build().map_err(|e| backend("configuration", &e))?;
        let root = if config.prefix.is_empty() {
            "packs".to_owned()
        } else {
            format!("{}/packs", config.prefix)
        };
        Ok(Self {
            store: Arc::new(store),
            root,
            puts: Arc::default(),
        })
    }

    fn ns_prefix(&self, ns: &NamespaceId) -> Path {
        Path::from(format!("{}/{}", self.root, ns.to_hex()))
    }

    fn key(&self, ns: &NamespaceId, id: &PackId) -> Path {
        Path::from(format!("{}/{}/{}", self.root, ns.to_hex(), id.to_hex()))
    }
}

fn absent(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait]
impl PackStore for S3Packs {
    async fn put(&self, ns: &NamespaceId, id: &PackId, pack: Vec<u8>) -> Result<(), StoreError> {
        let payload = PutPayload::from(bytes::Bytes::from(pack));
        // The same point as the disk's (there: synced, not yet renamed); here nothing
        // was sent, as an S3 PUT is whole or absent.
        fsync_common::failpoint::hit("store.packs.put")
            .map_err(|e| StoreError::Backend(format!("S3 PUT: {e}")))?;
        self.store
            .put(&self.key(ns, id), payload)
            .await
            .map_err(|e| backend("PUT", &e))?;
        self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn durable_writes(&self) -> u64 {
        self.puts.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn read(
        &self,
        ns: &NamespaceId,
        id: &PackId,
        range: Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        if range.is_empty() {
            // A zero-length range is not a valid HTTP range; the pack must exist.
            return match self.store.head(&self.key(ns, id)).await {
                Ok(meta) if meta.size >= range.end => Ok(Vec::new()),
                Ok(meta) => Err(StoreError::ShortRead {
                    wanted: range,
                    got: meta.size,
                }),
                Err(e) if absent(&e) => Err(StoreError::PackNotFound { ns: *ns, id: *id }),
                Err(e) => Err(backend("HEAD", &e)),
            };
        }
        match self.store.get_range(&self.key(ns, id), range.clone()).await {
            Ok(b) if b.len() as u64 == range.end - range.start => Ok(b.to_vec()),
            Ok(b) => Err(StoreError::ShortRead {
                got: range.start + b.len() as u64,
                wanted: range,
            }),
            Err(e) if absent(&e) => Err(StoreError::PackNotFound { ns: *ns, id: *id }),
            // A range past the end is refused by the server (416) or by the client.
            Err(object_store::Error::Generic { source, .. })
                if source.to_string().contains("range") =>
            {
                Err(StoreError::ShortRead {
                    wanted: range,
                    got: 0,
                })
            }
            Err(e) => Err(backend("GET", &e)),
        }
    }

    async fn read_all(&self, ns: &NamespaceId, id: &PackId) -> Result<Vec<u8>, StoreError> {
        let got = match self.store.get(&self.key(ns, id)).await {
            Ok(g) => g,
            Err(e) if absent(&e) => return Err(StoreError::PackNotFound { ns: *ns, id: *id }),
            Err(e) => return Err(backend("GET", &e)),
        };
        Ok(got.bytes().await.map_err(|e| backend("GET", &e))?.to_vec())
    }

    async fn delete(&self, ns: &NamespaceId, id: &PackId) -> Result<bool, StoreError> {
        let key = self.key(ns, id);
        // S3 deletes answer 204 whether or not the object was there: ask first.
        match self.store.head(&key).await {
            Ok(_) => {}
            Err(e) if absent(&e) => return Ok(false),
            Err(e) => return Err(backend("HEAD", &e)),
        }
        match self.store.delete(&key).await {
            Ok(()) => Ok(true),
            Err(e) if absent(&e) => Ok(false),
            Err(e) => Err(backend("DELETE", &e)),
        }
    }

    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<PackId>,
        limit: usize,
    ) -> Result<Vec<PackInfo>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = self.ns_prefix(ns);
        let mut stream = match after {
            Some(a) => self
                .store
                .list_with_offset(Some(&prefix), &self.key(ns, &a)),
            None => self.store.list(Some(&prefix)),
        };
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| backend("LIST", &e))?;
            // Anything that is not a pack (a stray key) is passed over.
            let Some(id) = meta
                .location
                .filename()
                .and_then(|n| PackId::from_hex(n).ok())
            else {
                continue;
            };
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            out.push(PackInfo {
                id,
                size: meta.size,
                modified: SystemTime::from(meta.last_modified),
            });
            // S3 lists keys in byte order, and pack keys differ only in their
            // fixed-length hex ids: the first `limit` are the page.
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn check(&self) -> Result<(), StoreError> {
        let key = Path::from(format!("{}/.health", self.root));
        self.store
            .put(&key, PutPayload::from_static(b"fsync health check"))
            .await
            .map_err(|e| backend("PUT", &e))?;
        self.store
            .delete(&key)
            .await
            .map_err(|e| backend("DELETE", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared suite against a real S3 server (SeaweedFS from `scripts/s3.sh`).
    #[tokio::test]
    async fn the_shared_pack_suite_passes_on_s3() {
        let Some(endpoint) = fsync_testkit::s3::test_s3_endpoint() else {
            eprintln!("FSYNC_TEST_S3_ENDPOINT is unset: S3 not tested (scripts/s3.sh)");
            return;
        };
        let url = format!(
            "s3://{}/{}/some/prefix",
            fsync_testkit::s3::TEST_BUCKET,
            fsync_testkit::s3::scratch_prefix()
        );
        let mut config = S3Config::from_url(&url).unwrap();
        config.endpoint = Some(endpoint);
        config.access_key_id = Some("any".into());
        config.secret_access_key = Some("any".into());
        let store = S3Packs::open(&config).unwrap();
        crate::testsuite::packs::run_all(&store).await;
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_that_names_s3() {
        let mut config = S3Config::from_url("s3://bucket").unwrap();
        config.endpoint = Some("http://127.0.0.1:9".into());
        let store = S3Packs::open(&config).unwrap();
        let e = store.check().await.unwrap_err().to_string();
        assert!(e.starts_with("storage backend: S3 PUT"), "{e}");
    }

    #[test]
    fn bucket_urls_are_checked() {
        let c = S3Config::from_url("s3://fsync-packs/prod/eu").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("fsync-packs", "prod/eu")
        );
        assert_eq!(S3Config::from_url("s3://abc").unwrap().prefix, "");
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "http://b/x",
            "s3://bkt/../x",
        ] {
            let e = S3Config::from_url(bad).unwrap_err().to_string();
            assert!(e.contains("BLOB_STORE"), "{bad}: {e}");
        }
        let mut c = S3Config::from_url("s3://bucket").unwrap();
        c.secret_access_key = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
