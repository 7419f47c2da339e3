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
    pub fn persist(self, dst: &Path) -> io::Result<()> {
        self.rename_into(dst)?;
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

/// Makes the content of many temp files durable at once; one result per file, in
/// order. On Linux 5.8 or later, whose `syncfs` reports write-back errors, and on a
/// local file system known to flush what `syncfs` asks for (ext4, XFS, Btrfs, F2FS,
/// tmpfs; not FUSE or network mounts, where it may return before the data is stored),
/// with one flush of the file system holding them all: one journal commit and one
/// device cache flush instead of one per file (`fsync-bench small-files`,
/// BENCHMARKS.md). Otherwise, or when the flush fails, with one fsync each, so that a
/// failure names its file and leaves the others durable.
pub fn sync_together(files: &mut [&mut TempFile]) -> Vec<io::Result<()>> {
    if files.len() > 1 && flush_reports_errors() && flush_together(files).is_ok() {
        return files
            .iter_mut()
            .map(|f| {
                f.synced = true;
                Ok(())
            })
            .collect();
    }
    files.iter_mut().map(|f| f.sync()).collect()
}

/// One `syncfs` for files that all live on one local file system of a known kind.
#[cfg(target_os = "linux")]
fn flush_together(files: &mut [&mut TempFile]) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    /// `statfs` magic numbers (linux/magic.h) of file systems whose `syncfs` writes
    /// and flushes every dirty file.
    const FLUSHED_BY_SYNCFS: [i64; 5] =
        [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010, 0x0102_1994];
    let first = files[0].file().metadata()?.dev();
    for f in files.iter_mut() {
        if f.file().metadata()?.dev() != first {
            return Err(io::Error::other("the files span several file systems"));
        }
    }
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::useless_conversion)]
    let kind = i64::from(rustix::fs::fstatfs(files[0].file())?.f_type);
    if !FLUSHED_BY_SYNCFS.contains(&kind) {
        return Err(io::Error::other(format!(
            "file system {kind:#x}: one fsync per file"
        )));
    }
    rustix::fs::syncfs(files[0].file())?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn flush_together(_files: &mut [&mut TempFile]) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// True on Linux 5.8 or later: before it, `syncfs` returned 0 even when writing back
/// a file failed, so a flush could not stand in for the files' own fsyncs.
fn flush_reports_errors() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']).map(str::parse::<u32>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (5, 8),
            _ => false,
        }
    })
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
    fn files_synced_together_are_renamed_whole_and_leave_no_temp_file() {
        use std::io::Write as _;
        let d = dir("together");
        let mut temps: Vec<TempFile> = (0..5)
            .map(|_| TempFile::create_in(&d, ".tmp-", None).unwrap())
            .collect();
        for (i, t) in temps.iter_mut().enumerate() {
            t.file().write_all(format!("file {i}").as_bytes()).unwrap();
        }
        let mut refs: Vec<&mut TempFile> = temps.iter_mut().collect();
        assert!(sync_together(&mut refs).iter().all(Result::is_ok));
        assert!(temps.iter().all(|t| t.synced), "not marked synced");
        for (i, t) in temps.into_iter().enumerate() {
            t.rename_into(&d.join(format!("f{i}"))).unwrap();
        }
        sync_dir(&d).unwrap();
        let expect: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        assert_eq!(names(&d), expect);
        for i in 0..5 {
            let got = std::fs::read_to_string(d.join(format!("f{i}"))).unwrap();
            assert_eq!(got, format!("file {i}"));
        }
        // A rename that fails removes its temp file, as `persist` does.
        let t = TempFile::create_in(&d, ".tmp-", None).unwrap();
        assert!(t.rename_into(&d.join("missing/f")).is_err());
        assert_eq!(names(&d), expect);
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
