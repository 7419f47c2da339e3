//! The sync-root rule: a folder that was synced before must still carry its `.fsync`
//! marker. A synced folder without it is most likely an unmounted disk (an empty mount
//! point), and syncing it would send a delete for every file; such a folder is refused
//! until the user says it is the right one (`--reset`).

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
    /// unless `reset`. Returns the marker's path.
    pub fn prepare(&self, root: &Path, reset: bool) -> Result<PathBuf, RootError> {
        let marker = root.join(STATE_DIR);
        let known = self.list()?;
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
    fn without_a_list_every_root_counts_as_new() {
        let dir = tempfile::tempdir().unwrap();
        let roots = KnownRoots::new(None);
        let marker = roots.prepare(dir.path(), false).unwrap();
        std::fs::remove_dir(&marker).unwrap();
        roots.prepare(dir.path(), false).unwrap();
        assert!(roots.list().unwrap().is_empty());
    }
}
