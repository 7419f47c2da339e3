//! Local filesystem backend: `root/<ns hex>/<id hex[0..2]>/<id hex[2..4]>/<id hex>`.
//!
//! Writes are durable and atomic: a uniquely named temp file in the target directory,
//! `sync_all`, a no-clobber hard link (or, where links are unsupported, a rename) into
//! place, then an fsync of the directory. A guard removes the temp file on every path,
//! so no temp file outlives a put, failed or not. `list` ignores anything that is not
//! a blob.

use std::fs;
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use fsync_common::durable::{self, TempFile};
use fsync_common::{ChunkId, NamespaceId};

use super::{BlobInfo, BlobStore, PutOutcome, StoreError};

pub(super) const TEMP_PREFIX: &str = ".tmp-";

/// A [`BlobStore`] on a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
}

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

pub(super) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Whether `path` is a regular file; `false` if it does not exist.
pub(super) fn is_file(path: &Path, op: &'static str) -> Result<bool, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(meta.is_file()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(op, path)(e)),
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    durable::sync_dir(dir).map_err(io_err("sync directory", dir))
}

/// Creates `dir` (below `base`, which exists) level by level, syncing each parent that
/// gained an entry.
/// Returns how many directories it synced.
pub(super) fn ensure_dir(base: &Path, dir: &Path) -> Result<u64, StoreError> {
    if dir.is_dir() {
        return Ok(0);
    }
    let rel = dir
        .strip_prefix(base)
        .expect("blob directories live below the root");
    let mut current = base.to_path_buf();
    let mut synced = 0;
    for part in rel {
        let parent = current.clone();
        current.push(part);
        match fs::create_dir(&current) {
            Ok(()) => {
                sync_dir(&parent)?;
                synced += 1;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", &current)(e)),
        }
    }
    Ok(synced)
}

/// A uniquely named file in `dir` holding `data`, synced to disk; removed when
/// dropped unless installed.
pub(super) fn write_synced(dir: &Path, data: &[u8]) -> Result<TempFile, StoreError> {
    let mut temp =
        TempFile::create_in(dir, TEMP_PREFIX, None).map_err(io_err("create temp file", dir))?;
    temp.file()
        .write_all(data)
        .and_then(|()| temp.sync())
        .map_err(|e| io_err("write temp file", temp.path())(e))?;
    Ok(temp)
}

fn is_hex_pair(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Sorted names of the fan-out subdirectories of `dir` (two lowercase hex digits).
pub(super) fn fanout_dirs(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            if is_hex_pair(name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Temp files in one leaf directory last written before `older_than`: removed (and the
/// directory synced) unless `dry_run`. A put in flight keeps its temp file fresh.
pub(super) fn stale_temps_in(
    dir: &Path,
    older_than: SystemTime,
    dry_run: bool,
) -> Result<(u64, u64), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let (mut count, mut bytes) = (0u64, 0u64);
    // A file that cannot be examined or removed does not stop the others; the first
    // such error is returned at the end.
    let mut first_error = None;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let meta = match entry.metadata().and_then(|m| Ok((m.modified()?, m))) {
            Ok(m) => m,
            // Its put finished (linked and cleaned up) meanwhile.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                first_error.get_or_insert_with(|| io_err("stat temp file", &path)(e));
                continue;
            }
        };
        let (modified, meta) = meta;
        if !meta.is_file() || modified >= older_than {
            continue;
        }
        if !dry_run {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    first_error.get_or_insert_with(|| io_err("delete temp file", &path)(e));
                    continue;
                }
            }
        }
        count += 1;
        bytes += meta.len();
    }
    if count > 0 && !dry_run {
        sync_dir(dir)?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((count, bytes)),
    }
}

/// Blobs in one leaf directory whose ids are greater than `after`, sorted.
fn leaf_blobs(
    dir: &Path,
    prefix: &str,
    after: Option<&ChunkId>,
) -> Result<Vec<BlobInfo>, StoreError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        // Temp files, strays and misplaced names are not blobs.
        let Some(id) = name
            .to_str()
            .filter(|n| n.starts_with(prefix))
            .and_then(|n| ChunkId::from_hex(n).ok())
        else {
            continue;
        };
        if after.is_some_and(|a| id <= *a) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Deleted between read_dir and stat.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat blob", &entry.path())(e)),
        };
        if !meta.is_file() {
            continue;
        }
        let modified = meta
            .modified()
            .map_err(io_err("stat blob", &entry.path()))?;
        out.push(BlobInfo {
            id,
            size: meta.len(),
            modified,
        });
    }
    out.sort_unstable_by_key(|b| b.id);
    Ok(out)
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("create store root", &root))?;
        Ok(Self {
            root: Arc::new(root),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ns_dir(&self, ns: &NamespaceId) -> PathBuf {
        self.root.join(ns.to_hex())
    }

    /// Where the blob `id` of `ns` lives.
    pub fn blob_path(&self, ns: &NamespaceId, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        let mut path = self.ns_dir(ns);
        path.push(&hex[0..2]);
        path.push(&hex[2..4]);
        path.push(hex);
        path
    }
}

fn put_blocking(root: &Path, path: &Path, blob: &[u8]) -> Result<PutOutcome, StoreError> {
    if is_file(path, "stat blob")? {
        return Ok(PutOutcome::AlreadyPresent);
    }
    let dir = path.parent().expect("a blob path has a parent");
    ensure_dir(root, dir)?;
    let temp = write_synced(dir, blob)?;
    // A failed write (injected by the fault tests) must leave no temp file.
    fsync_common::failpoint::hit("store.local.put")
        .map_err(io_err("write temp file", temp.path()))?;
    // A no-clobber install: exactly one of several concurrent puts stores; the others
    // see AlreadyPresent.
    let stored = temp
        .persist_noclobber(path)
        .map_err(io_err("store blob", path))?;
    let outcome = if stored {
        PutOutcome::Stored
    } else if is_file(path, "stat blob")? {
        PutOutcome::AlreadyPresent
    } else {
        return Err(io_err("store blob", path)(io::Error::new(
            ErrorKind::AlreadyExists,
            "something other than a blob is in the way",
        )));
    };
    Ok(outcome)
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn put(
        &self,
        ns: &NamespaceId,
        id: &ChunkId,
        blob: Vec<u8>,
    ) -> Result<PutOutcome, StoreError> {
        let root = Arc::clone(&self.root);
        let path = self.blob_path(ns, id);
        blocking(move || put_blocking(&root, &path, &blob)).await
    }

    async fn get(&self, ns: &NamespaceId, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(ns, id);
        blocking(move || match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read blob", &path)(e)),
        })
        .await
    }

    async fn contains_many(
        &self,
        ns: &NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, StoreError> {
        let paths: Vec<PathBuf> = ids.iter().map(|id| self.blob_path(ns, id)).collect();
        blocking(move || paths.iter().map(|p| is_file(p, "stat blob")).collect()).await
    }

    async fn delete(&self, ns: &NamespaceId, id: &ChunkId) -> Result<bool, StoreError> {
        let path = self.blob_path(ns, id);
        // No directory fsync: an unlink lost in a crash only brings back a blob that no
        // row names, which the collector's orphan pass removes again (the row, already
        // gone, is what decides). The fsync per blob held the collector's namespace lock
        // for milliseconds each, stalling commits.
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("delete blob", &path)(e)),
        })
        .await
    }

    async fn list(
        &self,
        ns: &NamespaceId,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ns_dir = self.ns_dir(ns);
        blocking(move || {
            let after_hex = after.map(|a| a.to_hex());
            let (after1, after2) = match &after_hex {
                Some(h) => (&h[0..2], &h[2..4]),
                None => ("", ""),
            };
            let mut out = Vec::new();
            for l1 in fanout_dirs(&ns_dir)? {
                if l1.as_str() < after1 {
                    continue;
                }
                let l1_dir = ns_dir.join(&l1);
                for l2 in fanout_dirs(&l1_dir)? {
                    if l1 == after1 && l2.as_str() < after2 {
                        continue;
                    }
                    let prefix = format!("{l1}{l2}");
                    let blobs = leaf_blobs(&l1_dir.join(&l2), &prefix, after.as_ref())?;
                    out.extend(blobs.into_iter().take(limit - out.len()));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn remove_stale_temp_files(
        &self,
        ns: &NamespaceId,
        older_than: SystemTime,
        dry_run: bool,
    ) -> Result<(u64, u64), StoreError> {
        let ns_dir = self.ns_dir(ns);
        blocking(move || {
            let (mut count, mut bytes) = (0u64, 0u64);
            for l1 in fanout_dirs(&ns_dir)? {
                let l1_dir = ns_dir.join(&l1);
                for l2 in fanout_dirs(&l1_dir)? {
                    let (c, b) = stale_temps_in(&l1_dir.join(&l2), older_than, dry_run)?;
                    count += c;
                    bytes += b;
                }
            }
            Ok((count, bytes))
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        let root = Arc::clone(&self.root);
        blocking(move || {
            if !root.is_dir() {
                return Err(io_err("check store root", &root)(io::Error::new(
                    ErrorKind::NotFound,
                    "store root is not a directory",
                )));
            }
            // Written, synced, and removed by the guard.
            write_synced(&root, b"fsync health check").map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testsuite;

    fn ns(n: u8) -> NamespaceId {
        NamespaceId::from_bytes([n; 16])
    }

    fn id(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    /// Every temp file below `dir`.
    fn temp_files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    found.push(entry.path());
                }
            }
        }
        found
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn passes_the_shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("blobs")).unwrap();
        testsuite::run_all(&store).await;
        assert_eq!(temp_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn works_behind_an_arc_dyn() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
        testsuite::put_get_round_trip(&store).await;
    }

    #[tokio::test]
    async fn layout_fans_out_by_id_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let id = ChunkId::from_hex(&format!("abcd{}", "0".repeat(60))).unwrap();
        store.put(&ns(1), &id, b"blob".to_vec()).await.unwrap();
        let expected = dir
            .path()
            .join(ns(1).to_hex())
            .join("ab")
            .join("cd")
            .join(id.to_hex());
        assert_eq!(store.blob_path(&ns(1), &id), expected);
        assert_eq!(fs::read(expected).unwrap(), b"blob");
        assert!(temp_files(dir.path()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_store_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store.put(&ns(1), &id(9), vec![i; 100_000]).await.unwrap()
            }));
        }
        let mut stored = 0;
        for t in tasks {
            if t.await.unwrap() == PutOutcome::Stored {
                stored += 1;
            }
        }
        assert_eq!(stored, 1);
        let blob = store.get(&ns(1), &id(9)).await.unwrap().unwrap();
        assert_eq!(blob.len(), 100_000);
        assert!(blob.iter().all(|b| *b == blob[0]));
        assert!(temp_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn failed_put_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        // A directory squats the blob's final path: the temp file is written, then
        // cannot be moved into place.
        fs::create_dir_all(store.blob_path(&ns(1), &id(1))).unwrap();
        let err = store.put(&ns(1), &id(1), vec![1; 1000]).await.unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(
            temp_files(dir.path()).is_empty(),
            "{:?}",
            temp_files(dir.path())
        );
        assert!(store.get(&ns(1), &id(1)).await.is_err());

        // A file squats a fan-out directory.
        let fanout = store
            .blob_path(&ns(2), &id(2))
            .parent()
            .unwrap()
            .to_path_buf();
        fs::create_dir_all(fanout.parent().unwrap()).unwrap();
        fs::write(&fanout, b"not a directory").unwrap();
        assert!(store.put(&ns(2), &id(2), vec![2; 10]).await.is_err());
        assert!(temp_files(dir.path()).is_empty());
        assert_eq!(
            store.contains_many(&ns(2), &[id(3)]).await.unwrap(),
            [false]
        );
    }

    #[tokio::test]
    async fn stale_temp_files_are_removed_fresh_ones_and_blobs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store.put(&ns(1), &id(7), vec![1; 10]).await.unwrap();
        let blob = store.blob_path(&ns(1), &id(7));
        let leaf = blob.parent().unwrap();
        let stale = leaf.join(".tmp-00000000000000aa");
        let fresh = leaf.join(".tmp-00000000000000bb");
        fs::write(&stale, b"partial write").unwrap();
        fs::write(&fresh, b"in flight").unwrap();
        let day_ago = SystemTime::now() - std::time::Duration::from_secs(86_400);
        fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        // Dry run: counted, nothing removed.
        let r = store
            .remove_stale_temp_files(&ns(1), hour_ago, true)
            .await
            .unwrap();
        assert_eq!(r, (1, 13));
        assert!(stale.exists());
        let r = store
            .remove_stale_temp_files(&ns(1), hour_ago, false)
            .await
            .unwrap();
        assert_eq!(r, (1, 13));
        assert!(!stale.exists(), "the stale temp file is gone");
        assert!(fresh.exists(), "a fresh temp file (a put in flight) stays");
        assert_eq!(store.get(&ns(1), &id(7)).await.unwrap(), Some(vec![1; 10]));
        // A namespace with no directory is fine.
        let r = store
            .remove_stale_temp_files(&ns(2), SystemTime::now(), false)
            .await
            .unwrap();
        assert_eq!(r, (0, 0));
    }

    #[tokio::test]
    async fn list_ignores_temp_files_and_strays() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store.put(&ns(1), &id(1), b"one".to_vec()).await.unwrap();
        let leaf = store
            .blob_path(&ns(1), &id(1))
            .parent()
            .unwrap()
            .to_path_buf();
        fs::write(leaf.join(".tmp-0123456789abcdef"), b"partial").unwrap();
        fs::write(leaf.join(id(2).to_hex()), b"misplaced").unwrap();
        fs::write(leaf.join("README"), b"stray").unwrap();
        let ns_dir = dir.path().join(ns(1).to_hex());
        fs::write(ns_dir.join("zz"), b"stray").unwrap();
        fs::create_dir_all(ns_dir.join("ZZ").join("00")).unwrap();
        let listed = store.list(&ns(1), None, 100).await.unwrap();
        assert_eq!(listed.iter().map(|b| b.id).collect::<Vec<_>>(), [id(1)]);
        assert_eq!(listed[0].size, 3);
    }

    #[tokio::test]
    async fn check_fails_when_root_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("root")).unwrap();
        store.check().await.unwrap();
        fs::remove_dir(store.root()).unwrap();
        assert!(store.check().await.is_err());
    }
}
