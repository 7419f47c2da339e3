//! The sync root as the engine sees it: the [`LocalFs`] trait and [`DiskFs`], its
//! implementation on a real folder. Every write is durable (temp file → fsync → rename
//! → fsync the directory, via [`fsync_common::durable`]); no path outside the root is
//! touched and nothing is written through a symlink.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fsync_common::durable::{self, TempFile};
use fsync_common::SyncPath;

use super::SyncError;
use crate::scan::{self, LocalFile, Scan, STATE_DIR, TEMP_PREFIX};

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Nothing,
    /// A regular file, with its stat.
    File(LocalFile),
    /// Something else (a folder, a symlink, a device).
    Other,
}

/// An open local file.
pub trait LocalReader: Read + Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

/// A file being written next to its destination, invisible until installed; dropped
/// without [`TempWriter::install`], it is removed. Downloads install in batches: every
/// temp file of the batch finished, made durable together ([`LocalFs::sync_temps`]),
/// installed, then the folders they went to made durable ([`LocalFs::sync_folders`]).
pub trait TempWriter: Send {
    /// Appends bytes.
    fn write_all(&mut self, data: &[u8]) -> Result<(), SyncError>;
    /// Sets the permission bits and mtime (ns since the epoch) and returns the stat the
    /// file keeps once installed. The content is not yet durable.
    fn finish(&mut self, mode: u32, mtime: i64) -> Result<LocalFile, SyncError>;
    /// Makes the content durable (the file's own fsync).
    fn sync(&mut self) -> Result<(), SyncError>;
    /// The temp file on disk behind it, so that [`DiskFs`] can make many durable at
    /// once; `None` for other folders.
    fn disk_temp(&mut self) -> Option<&mut TempFile> {
        None
    }
    /// Renames the file into place (replacing what is there); the content is made
    /// durable first if [`TempWriter::sync`] was not called. The rename itself is
    /// durable once [`LocalFs::sync_folders`] covered its folder.
    fn install(self: Box<Self>) -> Result<(), SyncError>;
}

/// The folder a round syncs. Paths are relative to its root; an implementation
/// refuses paths that would leave the root.
pub trait LocalFs: Send + Sync + 'static {
    /// The root (for messages).
    fn root(&self) -> &Path;
    /// True when the root and its marker are there (else an unmounted disk, perhaps).
    fn is_present(&self) -> bool;
    /// Removes temp files an interrupted run left behind.
    fn remove_stale_temp_files(&self);
    /// Lists the files to sync.
    fn scan(&self) -> Result<Scan, SyncError>;
    /// What is at `path` now.
    fn stat(&self, path: &SyncPath) -> Result<Found, SyncError>;
    /// Opens a file for reading.
    fn open(&self, path: &SyncPath) -> Result<Box<dyn LocalReader>, SyncError>;
    /// A temp file in the folder of `dst` (created if needed).
    fn create_temp(&self, dst: &SyncPath) -> Result<Box<dyn TempWriter>, SyncError>;
    /// Creates the empty folder `path` (with its parents), or finds a folder there;
    /// returns its stat as an entry.
    fn make_folder(&self, path: &SyncPath, mode: u32, mtime: i64) -> Result<LocalFile, SyncError> {
        let _ = (mode, mtime);
        Err(SyncError::Verify {
            path: path.to_string(),
            reason: "this folder cannot hold empty-folder entries".into(),
        })
    }
    /// Makes the content of finished temp files durable, all at once where the system
    /// allows it; one result per temp file, in order (a failure is that file's only).
    fn sync_temps(&self, temps: &mut [Box<dyn TempWriter>]) -> Vec<Result<(), SyncError>> {
        temps.iter_mut().map(|t| t.sync()).collect()
    }
    /// Makes the entries of the folders holding `paths` durable (the renames of
    /// [`TempWriter::install`]), each folder once.
    fn sync_folders(&self, paths: &[SyncPath]) -> Result<(), SyncError>;
    /// Deletes a file durably, and the folders it leaves empty.
    fn remove(&self, path: &SyncPath) -> Result<(), SyncError>;
    /// Moves a file durably (creating the destination's folder), removing the folders
    /// it leaves empty.
    fn rename(&self, from: &SyncPath, to: &SyncPath) -> Result<(), SyncError>;
}

pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SyncError + 'a {
    move |source| SyncError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A sync root on disk.
#[derive(Debug, Clone)]
pub struct DiskFs {
    root: PathBuf,
    marker: PathBuf,
}

impl DiskFs {
    /// The folder `root`; `marker` is the directory whose presence proves it is the
    /// folder that was synced (normally `<root>/.fsync`).
    pub fn new(root: PathBuf, marker: PathBuf) -> Self {
        Self { root, marker }
    }

    /// The full path of `path`, refused unless it lies inside the root.
    fn inside(&self, path: &SyncPath) -> Result<PathBuf, SyncError> {
        let full = path.to_local(&self.root);
        check_inside_root(&self.root, path, &full)?;
        Ok(full)
    }
}

impl LocalFs for DiskFs {
    fn root(&self) -> &Path {
        &self.root
    }

    fn is_present(&self) -> bool {
        self.root.is_dir() && self.marker.is_dir()
    }

    fn remove_stale_temp_files(&self) {
        remove_stale_temp_files(&self.root);
    }

    fn scan(&self) -> Result<Scan, SyncError> {
        let found = scan::scan(&self.root).map_err(io_err("scanning", &self.root))?;
        // Another client's root inside this one: its files would be uploaded twice.
        if let Some(inner) = found.nested_roots.first() {
            return Err(crate::root::RootError::ContainsOther {
                root: self.root.clone(),
                other: inner.clone(),
            }
            .into());
        }
        Ok(found)
    }

    fn stat(&self, path: &SyncPath) -> Result<Found, SyncError> {
        let full = path.to_local(&self.root);
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.is_file() => Ok(Found::File(scan::stat(path.clone(), &md))),
            Ok(md) if md.is_dir() && scan::is_empty_dir(&full) => {
                Ok(Found::File(scan::folder_stat(path.clone(), &md)))
            }
            Ok(_) => Ok(Found::Other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Nothing),
            Err(e) => Err(io_err("reading", &full)(e)),
        }
    }

    fn open(&self, path: &SyncPath) -> Result<Box<dyn LocalReader>, SyncError> {
        let full = path.to_local(&self.root);
        if full.is_dir() {
            // An empty folder entry reads as empty content.
            return Ok(Box::new(std::io::empty()));
        }
        let f = std::fs::File::open(&full).map_err(io_err("opening", &full))?;
        Ok(Box::new(f))
    }

    fn make_folder(&self, path: &SyncPath, mode: u32, mtime: i64) -> Result<LocalFile, SyncError> {
        let full = self.inside(path)?;
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        match std::fs::create_dir(&full) {
            Ok(()) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(
                        &full,
                        std::fs::Permissions::from_mode(mode & 0o777),
                    );
                }
                let t = SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(u64::try_from(mtime).unwrap_or(0));
                let _ = std::fs::File::open(&full).and_then(|d| d.set_modified(t));
                let _ = durable::sync_parent(&full);
            }
            // A folder there already (empty, or with files of its own) is the folder.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating the folder", &full)(e)),
        }
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.is_dir() => Ok(scan::folder_stat(path.clone(), &md)),
            Ok(_) => Err(SyncError::Io {
                what: "creating the folder",
                path: full,
                source: std::io::Error::other("a file or link of the same name is in the way"),
            }),
            Err(e) => Err(io_err("reading", &full)(e)),
        }
    }

    fn create_temp(&self, dst: &SyncPath) -> Result<Box<dyn TempWriter>, SyncError> {
        let full = self.inside(dst)?;
        let dir = full.parent().expect("a file has a parent").to_owned();
        // The folder is there for most downloads: create it only when it is not (two
        // system calls fewer per file of a burst).
        let tmp = match TempFile::create_in(&dir, TEMP_PREFIX, None) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
                // The new folders' own entries, up to the root, are made durable now:
                // `sync_folders` covers only the folder a file goes to.
                for d in dir.ancestors().skip(1) {
                    durable::sync_dir(d).map_err(io_err("syncing", d))?;
                    if d == self.root {
                        break;
                    }
                }
                TempFile::create_in(&dir, TEMP_PREFIX, None)
            }
            other => other,
        }
        .map_err(io_err("creating", &dir))?;
        Ok(Box::new(DiskTemp {
            tmp,
            dst: full,
            rel: dst.clone(),
        }))
    }

    fn sync_temps(&self, temps: &mut [Box<dyn TempWriter>]) -> Vec<Result<(), SyncError>> {
        // Every temp file `create_temp` made is on disk; any other gets its own fsync.
        if temps.iter_mut().any(|t| t.disk_temp().is_none()) {
            return temps.iter_mut().map(|t| t.sync()).collect();
        }
        let mut disk: Vec<&mut TempFile> = temps.iter_mut().filter_map(|t| t.disk_temp()).collect();
        let paths: Vec<PathBuf> = disk.iter().map(|t| t.path().to_owned()).collect();
        durable::sync_together(&mut disk)
            .into_iter()
            .zip(paths)
            .map(|(r, path)| r.map_err(io_err("syncing", &path)))
            .collect()
    }

    fn sync_folders(&self, paths: &[SyncPath]) -> Result<(), SyncError> {
        let mut dirs = std::collections::BTreeSet::new();
        for p in paths {
            let full = self.inside(p)?;
            dirs.insert(full.parent().unwrap_or(&self.root).to_owned());
        }
        for dir in &dirs {
            durable::sync_dir(dir).map_err(io_err("syncing", dir))?;
        }
        Ok(())
    }

    fn remove(&self, path: &SyncPath) -> Result<(), SyncError> {
        let full = self.inside(path)?;
        if std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
            // An empty folder entry (a folder with files is never removed as one).
            std::fs::remove_dir(&full).map_err(io_err("deleting", &full))?;
        } else {
            std::fs::remove_file(&full).map_err(io_err("deleting", &full))?;
        }
        let _ = durable::sync_parent(&full);
        remove_empty_parents(&self.root, &full);
        Ok(())
    }

    fn rename(&self, from: &SyncPath, to: &SyncPath) -> Result<(), SyncError> {
        let src = self.inside(from)?;
        let dst = self.inside(to)?;
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        std::fs::rename(&src, &dst).map_err(io_err("moving", &src))?;
        let _ = durable::sync_parent(&dst);
        let _ = durable::sync_parent(&src);
        remove_empty_parents(&self.root, &src);
        Ok(())
    }
}

impl LocalReader for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// An empty folder entry's content.
impl LocalReader for std::io::Empty {
    fn read_exact_at(&self, buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
        if buf.is_empty() {
            Ok(())
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }
    }
}

/// A download on its way to `dst`.
struct DiskTemp {
    tmp: TempFile,
    dst: PathBuf,
    rel: SyncPath,
}

impl TempWriter for DiskTemp {
    fn write_all(&mut self, data: &[u8]) -> Result<(), SyncError> {
        use std::io::Write as _;
        let path = self.tmp.path().to_owned();
        self.tmp
            .file()
            .write_all(data)
            .map_err(io_err("writing", &path))
    }

    fn finish(&mut self, mode: u32, mtime: i64) -> Result<LocalFile, SyncError> {
        let path = self.tmp.path().to_owned();
        let out = self.tmp.file();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = out.set_permissions(std::fs::Permissions::from_mode(mode & 0o777));
        }
        let mtime =
            SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(mtime).unwrap_or(0));
        out.set_modified(mtime)
            .map_err(io_err("setting the mtime of", &path))?;
        // Stat the temp file now: a rename keeps inode and mtime, and the user may
        // move or delete the file the moment it becomes visible.
        let md = self
            .tmp
            .file()
            .metadata()
            .map_err(io_err("reading", &path))?;
        Ok(scan::stat(self.rel.clone(), &md))
    }

    fn sync(&mut self) -> Result<(), SyncError> {
        let path = self.tmp.path().to_owned();
        self.tmp.sync().map_err(io_err("syncing", &path))
    }

    fn disk_temp(&mut self) -> Option<&mut TempFile> {
        Some(&mut self.tmp)
    }

    fn install(self: Box<Self>) -> Result<(), SyncError> {
        let Self { tmp, dst, .. } = *self;
        tmp.rename_into(&dst)
            .map_err(io_err("renaming into place", &dst))
    }
}

/// Refuses a local path named by the server (a download, a move or delete, a
/// conflict copy) unless it lies inside the root, below it by plain components only
/// (defence in depth: the path type already excludes `..` and absolute paths), with
/// no symlink on the way: the client never writes through a symlink, which may point
/// anywhere.
fn check_inside_root(root: &Path, path: &SyncPath, full: &Path) -> Result<(), SyncError> {
    let plain = full.strip_prefix(root).is_ok_and(|rel| {
        rel.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    });
    if plain && !has_symlink_component(root, full) {
        Ok(())
    } else {
        Err(SyncError::Verify {
            path: path.to_string(),
            reason: "the path leaves the sync root".into(),
        })
    }
}

fn has_symlink_component(root: &Path, dst: &Path) -> bool {
    let Ok(rel) = dst.strip_prefix(root) else {
        return true;
    };
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// Removes temp files a killed client left behind (only this client writes them).
fn remove_stale_temp_files(root: &Path) {
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != STATE_DIR)
        .build();
    for entry in walker.flatten() {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if is_temp && entry.file_type().is_some_and(|t| t.is_file()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed an interrupted download");
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temp file");
                }
            }
        }
    }
}

fn remove_empty_parents(root: &Path, path: &Path) {
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if dir == root || !dir.starts_with(root) || std::fs::remove_dir(dir).is_err() {
            break;
        }
        cur = dir.parent();
    }
}
