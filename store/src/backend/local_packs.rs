//! Packs on the local disk: `root/packs/<ns hex>/<id hex>`.
//!
//! A put is one temp file written and fsynced, renamed into place, and one fsync of
//! its directory (plus, the first time, of the directories made for it). No fan-out
//! directories: packs are megabytes each, so even a 10 TB namespace is a few hundred
//! thousand entries, which ext4 and XFS index; and each new fan-out directory would
//! cost an fsync of its parent, as many per GiB as the packs themselves. Loose blobs of
//! a store written before packs (`root/<ns hex>/…`, [`crate::LocalStore`]) live beside
//! them and are never listed here.

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use fsync_common::{NamespaceId, PackId};

use super::local::{blocking, ensure_dir, io_err, stale_temps_in, write_synced};
use super::packs::{PackInfo, PackStore};
use super::StoreError;

/// A [`PackStore`] on a local directory.
#[derive(Debug, Clone)]
pub struct LocalPacks {
    root: Arc<PathBuf>,
    /// fsyncs made by puts (files and directories).
    syncs: Arc<AtomicU64>,
}

impl LocalPacks {
    /// Opens (creating if needed) the packs below `store_root` (the `FILES_DIRECTORY`).
    pub fn open(store_root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = store_root.as_ref().join("packs");
        fs::create_dir_all(&root).map_err(io_err("create pack root", &root))?;
        Ok(Self {
            root: Arc::new(root),
            syncs: Arc::default(),
        })
    }

    fn ns_dir(&self, ns: &NamespaceId) -> PathBuf {
        self.root.join(ns.to_hex())
    }

    /// Where the pack `id` of `ns` lives.
    pub fn pack_path(&self, ns: &NamespaceId, id: &PackId) -> PathBuf {
        self.ns_dir(ns).join(id.to_hex())
    }
}

fn not_found(ns: &NamespaceId, id: &PackId) -> StoreError {
    StoreError::PackNotFound { ns: *ns, id: *id }
}

fn read_range(path: &Path, range: Range<u64>) -> Result<Option<Vec<u8>>, StoreError> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open pack", path)(e)),
    };
    let len = usize::try_from(range.end.saturating_sub(range.start))
        .map_err(|_| StoreError::Backend("range too large".into()))?;
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(range.start))
        .map_err(io_err("read pack", path))?;
    let mut got = 0;
    while got < len {
        match file.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(StoreError::ShortRead {
                    wanted: range,
                    got: got as u64,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read pack", path)(e)),
        }
    }
    Ok(Some(buf))
}

/// Packs in a namespace's directory with ids greater than `after`, sorted.
fn leaf_packs(dir: &Path, after: Option<&PackId>) -> Result<Vec<PackInfo>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        // Temp files and strays are not packs.
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| PackId::from_hex(n).ok())
        else {
            continue;
        };
        if after.is_some_and(|a| id <= *a) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat pack", &entry.path())(e)),
        };
        let modified = meta
            .modified()
            .map_err(io_err("stat pack", &entry.path()))?;
        out.push(PackInfo {
            id,
            size: meta.len(),
            modified,
        });
    }
    out.sort_unstable_by_key(|p| p.id);
    Ok(out)
}

#[async_trait]
impl PackStore for LocalPacks {
    async fn put(&self, ns: &NamespaceId, id: &PackId, pack: Vec<u8>) -> Result<(), StoreError> {
        let root = Arc::clone(&self.root);
        let syncs = Arc::clone(&self.syncs);
        let path = self.pack_path(ns, id);
        blocking(move || {
            let dir = path.parent().expect("a pack path has a parent");
            syncs.fetch_add(ensure_dir(&root, dir)?, Ordering::Relaxed);
            let temp = write_synced(dir, &pack)?;
            syncs.fetch_add(1, Ordering::Relaxed);
            fsync_common::failpoint::hit("store.packs.put")
                .map_err(io_err("write temp file", temp.path()))?;
            // persist: rename into place, then fsync the directory.
            temp.persist(&path).map_err(io_err("store pack", &path))?;
            syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    async fn read(
        &self,
        ns: &NamespaceId,
        id: &PackId,
        range: Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.pack_path(ns, id);
        let (ns, id) = (*ns, *id);
        blocking(move || read_range(&path, range)?.ok_or_else(|| not_found(&ns, &id))).await
    }

    async fn read_all(&self, ns: &NamespaceId, id: &PackId) -> Result<Vec<u8>, StoreError> {
        let path = self.pack_path(ns, id);
        let (ns, id) = (*ns, *id);
        blocking(move || match fs::read(&path) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(not_found(&ns, &id)),
            Err(e) => Err(io_err("read pack", &path)(e)),
        })
        .await
    }

    async fn delete(&self, ns: &NamespaceId, id: &PackId) -> Result<bool, StoreError> {
        let path = self.pack_path(ns, id);
        // No directory fsync: an unlink lost in a crash brings back a pack that no row
        // names, which the collector's orphan pass removes again.
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("delete pack", &path)(e)),
        })
        .await
    }

    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<PackId>,
        limit: usize,
    ) -> Result<Vec<PackInfo>, StoreError> {
        let ns_dir = self.ns_dir(ns);
        blocking(move || {
            let mut packs = leaf_packs(&ns_dir, after.as_ref())?;
            packs.truncate(limit);
            Ok(packs)
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        let root = Arc::clone(&self.root);
        blocking(move || write_synced(&root, b"fsync health check").map(drop)).await
    }

    fn durable_writes(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    async fn remove_stale_temp_files(
        &self,
        ns: &NamespaceId,
        older_than: SystemTime,
        dry_run: bool,
    ) -> Result<(u64, u64), StoreError> {
        let ns_dir = self.ns_dir(ns);
        blocking(move || stale_temps_in(&ns_dir, older_than, dry_run)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_shared_pack_suite_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPacks::open(dir.path()).unwrap();
        crate::testsuite::packs::run_all(&store).await;
    }

    #[tokio::test]
    async fn a_put_leaves_no_temp_file_and_loose_blobs_are_not_packs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPacks::open(dir.path()).unwrap();
        let ns = NamespaceId::from_bytes([1; 16]);
        let id = PackId::from_bytes([2; 16]);
        store.put(&ns, &id, b"pack bytes".to_vec()).await.unwrap();
        let path = store.pack_path(&ns, &id);
        assert_eq!(fs::read(&path).unwrap(), b"pack bytes");
        // The namespace's directory made, synced in its parent; the file and its
        // directory: three. A second pack: two.
        assert_eq!(store.durable_writes(), 3);
        let next = PackId::from_bytes([3; 16]);
        store.put(&ns, &next, vec![1]).await.unwrap();
        assert_eq!(store.durable_writes(), 5);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A loose blob store in the same root is invisible to the pack listing.
        let loose = crate::LocalStore::open(dir.path()).unwrap();
        crate::BlobStore::put(
            &loose,
            &ns,
            &fsync_common::ChunkId::from_bytes([3; 32]),
            vec![1],
        )
        .await
        .unwrap();
        assert_eq!(store.list(&ns, None, 10).await.unwrap().len(), 2);
    }
}
