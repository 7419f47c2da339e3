//! Walks the sync root: regular files only, `.fsyncignore` (gitignore syntax, nested
//! files too) honoured, the state dir and temp files never listed, and every entry that
//! is not synced reported with a reason.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fsync_common::SyncPath;

/// Name of the state directory inside the sync root (also the sync-root marker).
pub const STATE_DIR: &str = ".fsync";
/// Prefix of the temp files the client writes before renaming into place.
pub const TEMP_PREFIX: &str = ".fsync-tmp-";
/// Name of the ignore file.
pub const IGNORE_FILE: &str = ".fsyncignore";

/// A regular file found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Path relative to the root.
    pub path: SyncPath,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime: i64,
    /// Inode (0 where the platform has none).
    pub inode: u64,
    /// Birth time, ns since the epoch (0 where the file system does not record it).
    /// With the inode it names one file: a file system hands a freed inode to the
    /// next file created, and only the birth time tells the two apart.
    pub born: i64,
    /// Permission bits.
    pub mode: u32,
}

/// Result of a scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files to sync, by path.
    pub files: BTreeMap<SyncPath, LocalFile>,
    /// Entries not synced, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Folders inside the root that are sync roots of their own (a `.fsync` marker).
    pub nested_roots: Vec<PathBuf>,
}

/// True for names the client itself writes and never syncs.
pub fn is_internal_name(name: &str) -> bool {
    name == STATE_DIR || name.starts_with(TEMP_PREFIX)
}

/// Whether the folder `dir` is empty, as far as syncing goes (nothing in it but the
/// client's own files): such a folder is an entry of its own ([`folder_stat`]).
pub fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| {
        entries.all(|e| e.is_ok_and(|e| e.file_name().to_str().is_some_and(is_internal_name)))
    })
}

/// The stat of an empty folder as an entry: size 0, its permissions plus
/// [`FOLDER_MODE`](fsync_common::wire::FOLDER_MODE).
pub fn folder_stat(path: SyncPath, md: &std::fs::Metadata) -> LocalFile {
    let mut f = stat(path, md);
    f.size = 0;
    f.mode |= fsync_common::wire::FOLDER_MODE;
    f
}

/// The stat part of a [`LocalFile`].
pub fn stat(path: SyncPath, md: &std::fs::Metadata) -> LocalFile {
    #[cfg(unix)]
    let (inode, mode) = {
        use std::os::unix::fs::MetadataExt;
        (md.ino(), md.mode() & 0o7777)
    };
    #[cfg(not(unix))]
    let (inode, mode) = (
        0,
        if md.permissions().readonly() {
            0o444
        } else {
            0o644
        },
    );
    LocalFile {
        path,
        size: md.len(),
        mtime: mtime_ns(md),
        inode,
        born: epoch_ns(md.created()),
        mode,
    }
}

/// mtime in ns since the epoch (0 if unavailable).
pub fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    epoch_ns(md.modified())
}

fn epoch_ns(t: std::io::Result<std::time::SystemTime>) -> i64 {
    t.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Scans `root`.
pub fn scan(root: &Path) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .filter_entry(|e| !e.file_name().to_str().is_some_and(is_internal_name))
        .build();
    let mut folded: HashMap<String, SyncPath> = HashMap::new();
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.skipped.push((root.to_owned(), e.to_string()));
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let Some(ft) = entry.file_type() else {
            continue;
        };
        let full = entry.path().to_owned();
        if ft.is_dir() {
            if crate::root::is_marked(entry.path()) {
                out.nested_roots.push(full);
            } else if is_empty_dir(&full) {
                // An empty folder is synced as an entry (one with files is implied).
                let rel = full.strip_prefix(root).expect("walk stays under the root");
                match (SyncPath::from_relative(rel), entry.metadata()) {
                    (Ok(path), Ok(md)) => {
                        out.files.insert(path.clone(), folder_stat(path, &md));
                    }
                    (Err(e), _) => out
                        .skipped
                        .push((full, format!("name cannot be synced: {e}"))),
                    (_, Err(e)) => out.skipped.push((full, e.to_string())),
                }
            }
            continue;
        }
        if ft.is_symlink() {
            out.skipped
                .push((full, "symbolic links are not synced".into()));
            continue;
        }
        if !ft.is_file() {
            out.skipped.push((full, "not a regular file".into()));
            continue;
        }
        let rel = full.strip_prefix(root).expect("walk stays under the root");
        let path = match SyncPath::from_relative(rel) {
            Ok(p) => p,
            Err(e) => {
                out.skipped
                    .push((full, format!("name cannot be synced: {e}")));
                continue;
            }
        };
        let md = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                out.skipped.push((full, e.to_string()));
                continue;
            }
        };
        if let Some(other) = folded.insert(path.case_fold_key(), path.clone()) {
            // Both are synced; other devices on case-insensitive systems would collide.
            out.skipped.push((
                full.clone(),
                format!(
                    "warning: differs from {other} only by case; they collide on Windows and macOS"
                ),
            ));
        }
        out.files.insert(path.clone(), stat(path, &md));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_regular_files_and_honours_ignores() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(r.join(STATE_DIR)).unwrap();
        std::fs::create_dir_all(r.join("build")).unwrap();
        std::fs::write(r.join("a/b/c.txt"), b"c").unwrap();
        std::fs::write(r.join("top.txt"), b"t").unwrap();
        std::fs::write(r.join("x.log"), b"l").unwrap();
        std::fs::write(r.join("build/out.o"), b"o").unwrap();
        std::fs::write(r.join(STATE_DIR).join("state.db"), b"s").unwrap();
        std::fs::write(r.join(format!("{TEMP_PREFIX}123")), b"tmp").unwrap();
        std::fs::write(r.join(IGNORE_FILE), b"*.log\nbuild/\n").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", r.join("link")).unwrap();
        let s = scan(r).unwrap();
        let paths: Vec<&str> = s.files.keys().map(SyncPath::as_str).collect();
        assert_eq!(paths, vec![IGNORE_FILE, "a/b/c.txt", "top.txt"]);
        #[cfg(unix)]
        assert!(s
            .skipped
            .iter()
            .any(|(p, why)| p.ends_with("link") && why.contains("symbolic")));
        let f = &s.files[&SyncPath::new("top.txt").unwrap()];
        assert_eq!(f.size, 1);
        assert!(f.mtime > 0);
        // The birth time is recorded wherever the file system keeps one (ext4 here).
        if std::fs::metadata(r.join("top.txt"))
            .unwrap()
            .created()
            .is_ok()
        {
            assert!(f.born > 0, "{f:?}");
        }
    }
}
