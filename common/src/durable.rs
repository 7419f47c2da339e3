//! Durable local writes, one way for the whole workspace: a temp file in the target's
//! directory → write → `sync_all` → rename over the target → fsync the directory. A
//! [`TempFile`] that is dropped before [`TempFile::persist`] removes itself, so a failed
//! write leaves no partial file and no temp file behind.
//!
//! ```
//! let dir = tempfile_dir();
//! let path = dir.join("secret.key");
//! fsync_common::durable::write_atomic(&path, b"hello", Some(0o600)).unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"hello");
//! # fn tempfile_dir() -> std::path::PathBuf {
//! #     let d = std::env::temp_dir().join(format!("fsync-durable-doc-{}", std::process::id()));
//! #     std::fs::create_dir_all(&d).unwrap();
//! #     d
//! # }
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes a directory's entries (creations, renames, removals) durable. A no-op where
/// directories cannot be opened for syncing (not Unix).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Syncs the directory holding `path`, if it has one.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => sync_dir(Path::new(".")),
    }
}

/// A file being written under a temporary name; removed on drop unless persisted.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
    /// Synced since the last access to the file (a second fsync is skipped).
    synced: bool,
}

impl TempFile {
    /// Creates a new, uniquely named, empty file in `dir` whose name starts with
    /// `prefix` (so scanners and sweepers can recognise it), with permission bits
    /// `mode` on Unix (else the process's default).
    pub fn create_in(dir: &Path, prefix: &str, mode: Option<u32>) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                "{prefix}{:08x}{:08x}{n:x}",
                std::process::id(),
                nanos
            ));
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            if let Some(mode) = mode {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(mode);
            }
            #[cfg(not(unix))]
            let _ = mode;
            match opts.open(&path) {
                Ok(file) => {
                    return Ok(Self {
                        path,
                        file: Some(file),
                        synced: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Where the temp file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for writing and setting metadata.
    pub fn file(&mut self) -> &mut File {
        self.synced = false;
        self.file.as_mut().expect("open until persisted")
    }

    /// Syncs the content to disk (call before checks that decide whether to persist).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file().sync_all()?;
        self.synced = true;
        Ok(())
    }

    /// Syncs the file, renames it to `dst` (replacing what was there) and syncs the
    /// directory of `dst`. On error the temp file is removed.
    pub fn persist(mut self, dst: &Path) -> io::Result<()> {
        let file = self.file.take().expect("open until persisted");
        if !self.synced {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&self.path, dst)?;
        self.path = PathBuf::new();
        sync_parent(dst)
    }
}

impl TempFile {
    /// Syncs the file (unless synced already) and renames it to `dst`, replacing what
    /// was there, **without** syncing the directory: the caller makes the renames of a
    /// batch durable together ([`sync_dir`] once per directory). Until then a crash may
    /// undo the rename (never tear the file). On error the temp file is removed.
    pub fn rename_into(mut self, dst: &Path) -> io::Result<()> {
        let file = self.file.take().expect("open until persisted");
        if !self.synced {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&self.path, dst)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

/// Flushes everything written to the file system holding `path` (Linux `syncfs`), so
/// that the fsyncs of many files written just before find little left to do: one
/// journal commit instead of one per file (`fsync-bench small-files`, BENCHMARKS.md).
/// It does not replace their fsyncs, which still report each file's own errors. A
/// no-op elsewhere.
pub fn flush_file_system(path: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::fs::syncfs(File::open(path)?)?;
    #[cfg(not(target_os = "linux"))]
    let _ = path;
    Ok(())
}

impl TempFile {
    /// Syncs the file and installs it at `dst` only if nothing is there (a hard link
    /// never replaces a file, so of several concurrent installs exactly one wins), then
    /// syncs the directory. `Ok(false)`: something already was at `dst`. Where hard
    /// links are unsupported, an atomic rename, which may replace what a concurrent
    /// install just put there.
    pub fn persist_noclobber(mut self, dst: &Path) -> io::Result<bool> {
        self.sync()?;
        let installed = match std::fs::hard_link(&self.path, dst) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(_) => {
                drop(self.file.take());
                std::fs::rename(&self.path, dst)?;
                self.path = PathBuf::new();
                true
            }
        };
        drop(self);
        sync_parent(dst)?;
        Ok(installed)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `contents` to `path` durably and atomically: readers see the old content or
/// the new, never a part. `mode`: permission bits of the new file on Unix (`0o600` for
/// secrets).
pub fn write_atomic(path: &Path, contents: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut tmp = TempFile::create_in(dir, &format!(".{}.tmp-", name.to_string_lossy()), mode)?;
    tmp.file().write_all(contents)?;
    tmp.persist(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fsync-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_file() {
        let d = dir("replace");
        let p = d.join("f");
        write_atomic(&p, b"one", None).unwrap();
        write_atomic(&p, b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(&d), vec!["f".to_owned()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_dropped_temp_file_is_removed() {
        let d = dir("drop");
        {
            let mut t = TempFile::create_in(&d, ".tmp-", None).unwrap();
            t.file().write_all(b"partial").unwrap();
            assert_eq!(names(&d).len(), 1);
        }
        assert!(names(&d).is_empty());
    }

    #[test]
    fn a_failed_rename_removes_the_temp_file() {
        let d = dir("fail");
        let t = TempFile::create_in(&d, ".tmp-", None).unwrap();
        // A rename into a directory that does not exist fails.
        assert!(t.persist(&d.join("missing/f")).is_err());
        assert!(names(&d).is_empty());
    }

    #[test]
    fn persist_noclobber_never_replaces() {
        let d = dir("noclobber");
        let p = d.join("blob");
        let mut a = TempFile::create_in(&d, ".tmp-", None).unwrap();
        a.file().write_all(b"first").unwrap();
        assert!(a.persist_noclobber(&p).unwrap());
        let mut b = TempFile::create_in(&d, ".tmp-", None).unwrap();
        b.file().write_all(b"second").unwrap();
        assert!(!b.persist_noclobber(&p).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(names(&d), vec!["blob".to_owned()]);
    }

    #[test]
    fn temp_names_are_unique_and_keep_the_prefix() {
        let d = dir("unique");
        let a = TempFile::create_in(&d, ".p-", None).unwrap();
        let b = TempFile::create_in(&d, ".p-", None).unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".p-"));
    }
}
