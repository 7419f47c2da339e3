//! The sync-root rule: a folder that was synced before must still carry its `.fsync`
//! marker. A synced folder without it is most likely an unmounted disk (an empty mount
//! point), and syncing it would send a delete for every file; such a folder is refused
//! until the user says it is the right one (`--reset`).
//!
//! A folder is synced by one client at a time ([`RootLock`]: a second one on the same
//! folder is refused naming the first's process), and sync roots never nest: a folder
//! inside a synced one, or one holding a synced folder, is refused naming the other
//! (the outer client would upload the inner one's files again, a duplicate tree on
//! every device).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::scan::STATE_DIR;

/// Why a folder cannot be synced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// The folder was synced before but lost its marker.
    #[error(
        "{0} was synced before but its .fsync marker is gone (an unmounted disk?); \
         not syncing, nothing deleted. If the folder really is the right one, run again with --reset"
    )]
    MarkerGone(PathBuf),
    /// The folder lies inside another synced folder.
    #[error(
        "{root} is inside {other}, which is synced already (it has a .fsync marker); \
         sync {other} as a whole, or choose a folder outside it"
    )]
    InsideOther {
        /// The folder asked for.
        root: PathBuf,
        /// The synced folder around it.
        other: PathBuf,
    },
    /// The folder holds another synced folder.
    #[error(
        "{root} contains {other}, a synced folder of its own (it has a .fsync marker); \
         choose a folder that does not contain it, or stop syncing {other} and remove its .fsync"
    )]
    ContainsOther {
        /// The folder asked for.
        root: PathBuf,
        /// The synced folder inside it.
        other: PathBuf,
    },
    /// Another client syncs the folder now.
    #[error("{root} is being synced by another fsync-client ({holder}); stop that one first")]
    InUse {
        /// The folder.
        root: PathBuf,
        /// Who holds the lock, as its lock file says (`process 1234`).
        holder: String,
    },
    /// Reading or writing the marker or the list of synced roots failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootError + 'a {
    move |source| RootError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The folders this user synced before, remembered in one file.
#[derive(Debug, Clone)]
pub struct KnownRoots {
    file: Option<PathBuf>,
}

impl KnownRoots {
    /// The list in `file` (`None`: nothing is remembered).
    pub fn new(file: Option<PathBuf>) -> Self {
        Self { file }
    }

    /// The list at `$FSYNC_ROOTS_FILE`, else `$XDG_STATE_HOME/fsync/roots`, else
    /// `~/.local/state/fsync/roots`.
    pub fn from_env() -> Self {
        let file = std::env::var_os("FSYNC_ROOTS_FILE")
            .map(PathBuf::from)
            .or_else(|| {
                let base = std::env::var_os("XDG_STATE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"))
                    })?;
                Some(base.join("fsync").join("roots"))
            });
        Self { file }
    }

    /// The remembered roots.
    pub fn list(&self) -> Result<Vec<PathBuf>, RootError> {
        let Some(f) = &self.file else {
            return Ok(Vec::new());
        };
        match std::fs::read_to_string(f) {
            Ok(s) => Ok(s
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("reading", f)(e)),
        }
    }

    fn remember(&self, root: &Path) -> Result<(), RootError> {
        let Some(f) = &self.file else { return Ok(()) };
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
            .map_err(io_err("opening", f))?;
        writeln!(file, "{}", root.display()).map_err(io_err("writing", f))?;
        file.sync_all().map_err(io_err("syncing", f))
    }

    /// Checks the sync root `root` (canonical) before a session: a root never synced
    /// gets its marker and is remembered; a remembered root must still have its marker
    /// unless `reset`; a root inside another synced folder, or around a remembered one
    /// that still has its marker, is refused. Returns the marker's path.
    pub fn prepare(&self, root: &Path, reset: bool) -> Result<PathBuf, RootError> {
        let marker = root.join(STATE_DIR);
        if let Some(other) = root.ancestors().skip(1).find(|a| is_marked(a)) {
            return Err(RootError::InsideOther {
                root: root.to_owned(),
                other: other.to_owned(),
            });
        }
        let known = self.list()?;
        if let Some(other) = known
            .iter()
            .find(|r| r.as_path() != root && r.starts_with(root) && is_marked(r))
        {
            return Err(RootError::ContainsOther {
                root: root.to_owned(),
                other: other.clone(),
            });
        }
        let is_known = known.iter().any(|r| r == root);
        if !marker.exists() {
            // Only a root that was never synced may lack the marker.
            if is_known && !reset {
                return Err(RootError::MarkerGone(root.to_owned()));
            }
            std::fs::create_dir_all(&marker).map_err(io_err("creating", &marker))?;
        }
        if !is_known {
            self.remember(root)?;
        }
        Ok(marker)
    }
}

/// Whether `dir` is a sync root: it holds a `.fsync` marker directory.
pub fn is_marked(dir: &Path) -> bool {
    dir.join(STATE_DIR).is_dir()
}

/// Name of the lock file inside the marker.
const LOCK_FILE: &str = "lock";

/// The exclusive right to sync one folder, held until dropped (an advisory lock on
/// `.fsync/lock`, released by the system when the process ends, however it ends).
#[derive(Debug)]
pub struct RootLock {
    _file: std::fs::File,
}

impl RootLock {
    /// Takes the lock of the root whose marker is `marker`, or says who holds it.
    pub fn acquire(root: &Path, marker: &Path) -> Result<Self, RootError> {
        let path = marker.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "another process".to_owned(),
                    h => h.to_owned(),
                };
                return Err(RootError::InUse {
                    root: root.to_owned(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking", &path)(e)),
        }
        // Who holds it, for the message a second client prints.
        file.set_len(0).map_err(io_err("writing", &path))?;
        writeln!(file, "process {}", std::process::id()).map_err(io_err("writing", &path))?;
        Ok(Self { _file: file })
    }

    /// Whether some process holds the lock of the root whose marker is `marker`.
    pub fn is_held(marker: &Path) -> bool {
        let Ok(file) = std::fs::File::open(marker.join(LOCK_FILE)) else {
            return false;
        };
        matches!(
            file.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synced_root_that_lost_its_marker_is_refused_until_reset() {
        let dir = tempfile::tempdir().unwrap();
        let roots = KnownRoots::new(Some(dir.path().join("state/roots")));
        let root = dir.path().join("Sync");
        std::fs::create_dir(&root).unwrap();
        // First use: the marker is made and the root remembered.
        let marker = roots.prepare(&root, false).unwrap();
        assert!(marker.is_dir());
        assert_eq!(roots.list().unwrap(), vec![root.clone()]);
        // Again: fine, remembered once.
        roots.prepare(&root, false).unwrap();
        assert_eq!(roots.list().unwrap().len(), 1);
        // The marker is gone (an empty mount point): refused, nothing made.
        std::fs::remove_dir(&marker).unwrap();
        let err = roots.prepare(&root, false).unwrap_err();
        assert!(matches!(err, RootError::MarkerGone(_)), "{err}");
        assert!(err.to_string().contains("--reset"));
        assert!(!marker.exists());
        // The user says it is the right folder.
        roots.prepare(&root, true).unwrap();
        assert!(marker.is_dir());
    }

    #[test]
    fn nested_roots_are_refused_naming_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let roots = KnownRoots::new(Some(dir.path().join("roots")));
        let outer = dir.path().join("Sync");
        let inner = outer.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        roots.prepare(&outer, false).unwrap();
        let err = roots.prepare(&inner, false).unwrap_err();
        assert!(matches!(err, RootError::InsideOther { .. }), "{err}");
        assert!(
            err.to_string().contains(&outer.display().to_string()),
            "{err}"
        );
        assert!(
            !inner.join(STATE_DIR).exists(),
            "the refused root got a marker"
        );

        // The other way round: the inner folder was synced first.
        let (outer2, inner2) = (dir.path().join("Two"), dir.path().join("Two/in"));
        std::fs::create_dir_all(&inner2).unwrap();
        roots.prepare(&inner2, false).unwrap();
        let err = roots.prepare(&outer2, false).unwrap_err();
        assert!(matches!(err, RootError::ContainsOther { .. }), "{err}");
        assert!(
            err.to_string().contains(&inner2.display().to_string()),
            "{err}"
        );
        // Once the inner one stops being a root (its marker removed), the outer is fine.
        std::fs::remove_dir_all(inner2.join(STATE_DIR)).unwrap();
        roots.prepare(&outer2, false).unwrap();
        // A sibling whose name starts the same is not nested.
        let sibling = dir.path().join("Sync2");
        std::fs::create_dir(&sibling).unwrap();
        roots.prepare(&sibling, false).unwrap();
    }

    #[test]
    fn a_locked_root_is_refused_naming_the_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let marker = KnownRoots::new(None).prepare(dir.path(), false).unwrap();
        assert!(!RootLock::is_held(&marker));
        let lock = RootLock::acquire(dir.path(), &marker).unwrap();
        assert!(RootLock::is_held(&marker));
        let err = RootLock::acquire(dir.path(), &marker).unwrap_err();
        let pid = std::process::id().to_string();
        assert!(matches!(err, RootError::InUse { .. }), "{err}");
        assert!(err.to_string().contains(&pid), "{err}");
        drop(lock);
        assert!(!RootLock::is_held(&marker));
        RootLock::acquire(dir.path(), &marker).unwrap();
    }

    #[test]
    fn without_a_list_every_root_counts_as_new() {
        let dir = tempfile::tempdir().unwrap();
        let roots = KnownRoots::new(None);
        let marker = roots.prepare(dir.path(), false).unwrap();
        std::fs::remove_dir(&marker).unwrap();
        roots.prepare(dir.path(), false).unwrap();
        assert!(roots.list().unwrap().is_empty());
    }
}
