//! The planner: a pure function from (synced base, local tree, remote changes) to the
//! operations that reconcile them. No I/O, so it can be tested with random trees.
//!
//! Rules (ARCHITECTURE §5–6, invariants I1–I4):
//! - a local edit is never overwritten: a path changed on both sides is uploaded with its
//!   base, and the server resolves the conflict (keeping the loser as a copy);
//! - a remote delete removes the local file only if it is unchanged since the base;
//!   a local delete is sent with the base it saw, so the server keeps a newer edit;
//! - a file that vanished locally while a new one with the same inode or content
//!   appeared is a rename (no data sent).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use fsync_common::wire::FileMeta;
use fsync_common::{ContentHash, FileId, SyncPath, VersionVector};

use crate::scan::LocalFile;
use crate::state::BaseEntry;

/// A local file with its content hash (from the base when its stat is unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// Stat.
    pub file: LocalFile,
    /// Keyed content hash.
    pub hash: ContentHash,
}

/// A commit of the local file at `path` on top of `base` (empty for a new file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Path.
    pub path: SyncPath,
    /// Version vector the edit was based on.
    pub base: VersionVector,
}

/// A change the server is told about (sent as one batch of events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOp {
    /// The file at `path` was deleted here, as of `base`.
    Delete {
        /// Path.
        path: SyncPath,
        /// What this device saw.
        base: VersionVector,
    },
    /// A file moved here; `changed`: its content or mode changed too (uploaded after).
    Rename {
        /// Old path.
        from: SyncPath,
        /// New path.
        to: SyncPath,
        /// The content changed as well.
        changed: bool,
    },
}

/// A local change other than a download, applied after the downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOp {
    /// Move the local file (unchanged since base) to the remote file's new path; then
    /// download if the content differs.
    Move {
        /// Old local path.
        from: SyncPath,
        /// Remote head (its path is the destination).
        meta: FileMeta,
    },
    /// Delete the local file at `path` (only if still as in base).
    Delete {
        /// Path.
        path: SyncPath,
    },
    /// Local and remote hold the same content: record the remote head as the base.
    Adopt {
        /// Remote head.
        meta: FileMeta,
    },
    /// The local file's stat changed but not its content: refresh the base's stat.
    Restat {
        /// Path.
        path: SyncPath,
    },
}

/// What one sync round does, phase by phase, in the order the executor runs them.
/// Operations inside a phase are independent of each other's order (the property test
/// shuffles them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Bases to drop (the file is gone on both sides).
    pub forget: Vec<SyncPath>,
    /// Deletes and renames for the server.
    pub remote: Vec<RemoteOp>,
    /// Local files to commit.
    pub uploads: Vec<Upload>,
    /// Remote heads to write locally (if the local file is still as in base).
    pub downloads: Vec<FileMeta>,
    /// The other local operations.
    pub local: Vec<LocalOp>,
}

impl Plan {
    /// Number of operations in all phases.
    pub fn len(&self) -> usize {
        self.forget.len()
            + self.remote.len()
            + self.uploads.len()
            + self.downloads.len()
            + self.local.len()
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn upload(&mut self, path: &SyncPath, base: VersionVector) {
        self.uploads.push(Upload {
            path: path.clone(),
            base,
        });
    }
}

/// What the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Last synced state, by path.
    pub base: &'a BTreeMap<SyncPath, BaseEntry>,
    /// Local tree, by path.
    pub local: &'a BTreeMap<SyncPath, LocalEntry>,
    /// Latest remote state of every file changed since the cursor (one per file id).
    pub remote: &'a [FileMeta],
}

/// Plans the operations for one sync round.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let PlanInput {
        base,
        local,
        remote,
    } = input;
    // A file can have base entries at two paths for a round or two: its new one's and
    // an old one's, when the local side of a move has not happened (the old copy was
    // touched, an upload at the new path met the moved file there and won, a download
    // was refused because the file had moved). A remote change acts on an old one,
    // preferably one whose file is here; the others are retired with it.
    let mut by_id: HashMap<FileId, Vec<&BaseEntry>> = HashMap::new();
    for b in base.values() {
        by_id.entry(b.file_id).or_default().push(b);
    }
    let mut handled: BTreeSet<&SyncPath> = BTreeSet::new();
    let mut ops = Plan::default();
    // The file the server now has at each path, as far as these changes tell.
    let live: HashMap<&SyncPath, FileId> = remote
        .iter()
        .filter(|r| !r.deleted)
        .map(|r| (&r.path, r.file_id))
        .collect();
    // The permission bits are part of a version (the executable bit travels).
    let changed = |b: &BaseEntry, l: &LocalEntry| l.hash != b.content_hash || l.file.mode != b.mode;
    // Retires a base whose file the server no longer has at that path (deleted, or
    // moved on): the base is forgotten, the unchanged local copy deleted, and a changed
    // one uploaded — on top of the base when `edit_wins` (an edit beats a delete), else
    // as a new file. When another remote file lives at the path now, that file decides
    // what happens to the local one (adopt, download or conflict) and its operation
    // replaces this base: deleting the local file here as well would delete the other
    // file's content, and forgetting the base would leave the download nothing to
    // check the local file against.
    let retire = |ops: &mut Plan, b: &BaseEntry, edit_wins: bool| {
        if live.get(&b.path).is_some_and(|id| *id != b.file_id) {
            return;
        }
        match local.get(&b.path) {
            None => ops.forget.push(b.path.clone()),
            Some(l) if !changed(b, l) => ops.local.push(LocalOp::Delete {
                path: b.path.clone(),
            }),
            Some(_) if edit_wins => push_upload(ops, &live, &b.path, Some(b)),
            Some(_) => {
                ops.forget.push(b.path.clone());
                push_upload(ops, &live, &b.path, None);
            }
        }
    };

    for r in remote {
        let bases = by_id.get(&r.file_id).map_or(&[][..], Vec::as_slice);
        let b = bases
            .iter()
            .filter(|b| b.path != r.path)
            .min_by_key(|b| !local.contains_key(&b.path))
            .or(bases.first())
            .copied();
        if let Some(b) = b {
            if b.vv == r.vv && b.path == r.path && !r.deleted {
                continue; // our own change coming back, or already applied
            }
        }
        if r.deleted {
            for b in bases {
                handled.insert(&b.path);
                // Modified here, deleted there: the modification wins.
                retire(&mut ops, b, true);
            }
            continue;
        }
        handled.insert(&r.path);
        if let Some(b) = b.filter(|b| b.path != r.path) {
            // Moved remotely.
            handled.insert(&b.path);
            for stale in bases
                .iter()
                .filter(|o| o.path != r.path && o.path != b.path)
            {
                handled.insert(&stale.path);
                // An old copy of the moved file: changed here, it stays as a new file.
                retire(&mut ops, stale, false);
            }
            // Another file now lives at the old path: the local file there is reconciled
            // against that one (when its change comes) and the moved file is fetched at
            // its new path. Moving or deleting the local file as well would act on it
            // twice (adopt it as the newcomer, then move it away).
            if live.get(&b.path).is_some_and(|id| *id != b.file_id) {
                push_remote_at_path(&mut ops, base, local, &live, r);
                continue;
            }
            let dest_free = !local.contains_key(&r.path);
            match local.get(&b.path) {
                Some(l) if !changed(b, l) && dest_free => {
                    ops.local.push(LocalOp::Move {
                        from: b.path.clone(),
                        meta: r.clone(),
                    });
                }
                Some(l) if !changed(b, l) => {
                    // Unchanged here, but another local file holds the destination (e.g.
                    // one deleted remotely in the same batch): the old copy goes — it
                    // moved away — and the destination is reconciled like any remote
                    // file. Re-uploading the old copy as new would resurrect content.
                    ops.local.push(LocalOp::Delete {
                        path: b.path.clone(),
                    });
                    push_remote_at_path(&mut ops, base, local, &live, r);
                }
                Some(_) => {
                    // Changed here: keep the local file as a new file at its path, and
                    // fetch the moved one.
                    ops.forget.push(b.path.clone());
                    push_upload(&mut ops, &live, &b.path, None);
                    push_remote_at_path(&mut ops, base, local, &live, r);
                }
                None => {
                    ops.forget.push(b.path.clone());
                    push_remote_at_path(&mut ops, base, local, &live, r);
                }
            }
            continue;
        }
        push_remote_at_path(&mut ops, base, local, &live, r);
    }

    // Local changes the remote side did not touch.
    let mut fresh: Vec<(&SyncPath, &LocalEntry)> = Vec::new();
    for (path, l) in local {
        if handled.contains(path) {
            continue;
        }
        match base.get(path) {
            None => fresh.push((path, l)),
            Some(b) if changed(b, l) => ops.upload(path, b.vv.clone()),
            Some(b) if !b.records_stat(&l.file) => {
                ops.local.push(LocalOp::Restat { path: path.clone() });
            }
            Some(_) => {}
        }
    }
    for (path, b) in base {
        if handled.contains(path) || local.contains_key(path) {
            continue;
        }
        // Gone locally: a rename if a new file is the same file (inode and birth
        // time) or has its content (an empty folder only for an empty folder).
        let by_inode = fresh.iter().position(|(_, l)| b.same_file(&l.file));
        let folder = fsync_common::wire::is_folder_mode;
        let by_content = || {
            fresh.iter().position(|(_, l)| {
                l.hash == b.content_hash && folder(l.file.mode) == folder(b.mode)
            })
        };
        if let Some(i) = by_inode.or_else(by_content) {
            let (to, l) = fresh.swap_remove(i);
            ops.remote.push(RemoteOp::Rename {
                from: path.clone(),
                to: to.clone(),
                // The mode is part of a version: a chmod must be committed too.
                changed: changed(b, l),
            });
        } else {
            ops.remote.push(RemoteOp::Delete {
                path: path.clone(),
                base: b.vv.clone(),
            });
        }
    }
    // One upload per path: a path is reached twice when a file moved away from it and
    // another one arrived.
    let mut uploading = HashSet::new();
    ops.uploads.retain(|u| uploading.insert(u.path.clone()));
    fresh.sort_by(|a, b| a.0.cmp(b.0));
    for (path, _) in fresh {
        ops.upload(path, VersionVector::new());
    }
    ops
}

/// Plans the upload of the local file at `path` on top of `b`. A base is the version
/// this device saw of *its* file: when the server now has another file at the path, the
/// local file is new to that one and the server resolves the two as concurrent. (The
/// vector of another file can pass for a newer version and overwrite content this
/// device never saw.)
fn push_upload(
    ops: &mut Plan,
    live: &HashMap<&SyncPath, FileId>,
    path: &SyncPath,
    b: Option<&BaseEntry>,
) {
    let base = match b {
        Some(b) if live.get(path).is_none_or(|id| *id == b.file_id) => b.vv.clone(),
        _ => VersionVector::new(),
    };
    ops.upload(path, base);
}

/// A live remote file at `r.path`, against whatever is local there.
fn push_remote_at_path(
    ops: &mut Plan,
    base: &BTreeMap<SyncPath, BaseEntry>,
    local: &BTreeMap<SyncPath, LocalEntry>,
    live: &HashMap<&SyncPath, FileId>,
    r: &FileMeta,
) {
    let lb = base.get(&r.path);
    match (local.get(&r.path), lb) {
        (None, _) => ops.downloads.push(r.clone()),
        (Some(l), _) if Some(l.hash) == r.content_hash && l.file.mode == r.mode => {
            ops.local.push(LocalOp::Adopt { meta: r.clone() });
        }
        (Some(l), Some(lb)) if l.hash == lb.content_hash && l.file.mode == lb.mode => {
            ops.downloads.push(r.clone());
        }
        // Changed on both sides: upload with what we saw; the server keeps both.
        (Some(_), lb) => push_upload(ops, live, &r.path, lb),
    }
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads best in these tables
mod tests {
    use super::*;
    use fsync_common::{DeviceId, NamespaceId, Seq, VersionNo};

    fn p(s: &str) -> SyncPath {
        SyncPath::new(s).unwrap()
    }
    fn h(n: u8) -> ContentHash {
        ContentHash::from_bytes([n; 32])
    }
    fn dev() -> DeviceId {
        DeviceId::from_bytes([1; 8])
    }
    fn base_entry(path: &str, id: u8, hash: u8, inode: u64) -> BaseEntry {
        BaseEntry {
            path: p(path),
            file_id: FileId::from_bytes([id; 16]),
            version: VersionNo(1),
            vv: VersionVector::new().incremented(dev()),
            content_hash: h(hash),
            size: 1,
            mtime: 1,
            mode: 0o644,
            inode,
            born: 5,
            chunks: vec![],
        }
    }
    fn local_entry(path: &str, hash: u8, inode: u64) -> LocalEntry {
        LocalEntry {
            file: LocalFile {
                path: p(path),
                size: 1,
                mtime: 1,
                inode,
                born: 5,
                mode: 0o644,
            },
            hash: h(hash),
        }
    }
    fn remote(path: &str, id: u8, hash: Option<u8>, vv: VersionVector) -> FileMeta {
        FileMeta {
            file_id: FileId::from_bytes([id; 16]),
            namespace: NamespaceId::from_bytes([0; 16]),
            path: p(path),
            version: VersionNo(2),
            vv,
            size: 1,
            mtime: 1,
            mode: 0o644,
            content_hash: hash.map(h),
            deleted: hash.is_none(),
            device: DeviceId::from_bytes([2; 8]),
            seq: Seq(1),
        }
    }
    fn newer() -> VersionVector {
        VersionVector::new()
            .incremented(dev())
            .incremented(DeviceId::from_bytes([2; 8]))
    }
    fn run(base: &[BaseEntry], local: &[LocalEntry], remote: &[FileMeta]) -> Plan {
        let base = base.iter().map(|b| (b.path.clone(), b.clone())).collect();
        let local = local
            .iter()
            .map(|l| (l.file.path.clone(), l.clone()))
            .collect();
        plan(PlanInput {
            base: &base,
            local: &local,
            remote,
        })
    }
    fn upload(path: &str, base: VersionVector) -> Upload {
        Upload {
            path: p(path),
            base,
        }
    }
    fn uploads(items: Vec<Upload>) -> Plan {
        Plan {
            uploads: items,
            ..Plan::default()
        }
    }
    fn remote_ops(items: Vec<RemoteOp>) -> Plan {
        Plan {
            remote: items,
            ..Plan::default()
        }
    }
    fn local_ops(items: Vec<LocalOp>) -> Plan {
        Plan {
            local: items,
            ..Plan::default()
        }
    }
    fn rename(from: &str, to: &str, changed: bool) -> RemoteOp {
        RemoteOp::Rename {
            from: p(from),
            to: p(to),
            changed,
        }
    }

    #[test]
    fn in_sync_means_nothing_to_do() {
        let b = base_entry("a", 1, 1, 10);
        let echo = remote("a", 1, Some(1), b.vv.clone());
        assert!(run(&[b], &[local_entry("a", 1, 10)], &[echo]).is_empty());
    }

    #[test]
    fn local_changes_upload_and_delete_with_their_base() {
        let b = base_entry("a", 1, 1, 10);
        let ops = run(
            &[b.clone()],
            &[local_entry("a", 2, 10), local_entry("new", 3, 11)],
            &[],
        );
        assert_eq!(
            ops,
            uploads(vec![
                upload("a", b.vv.clone()),
                upload("new", VersionVector::new())
            ])
        );
        assert_eq!(
            run(&[b.clone()], &[], &[]),
            remote_ops(vec![RemoteOp::Delete {
                path: p("a"),
                base: b.vv
            }])
        );
    }

    #[test]
    fn renames_are_detected_by_inode_or_content() {
        let b = base_entry("old", 1, 1, 10);
        assert_eq!(
            run(&[b.clone()], &[local_entry("new", 1, 10)], &[]),
            remote_ops(vec![rename("old", "new", false)])
        );
        assert_eq!(
            run(&[b.clone()], &[local_entry("new", 1, 99)], &[]),
            remote_ops(vec![rename("old", "new", false)])
        );
        assert_eq!(
            run(&[b], &[local_entry("new", 5, 10)], &[]),
            remote_ops(vec![rename("old", "new", true)])
        );
    }

    #[test]
    fn a_new_file_on_a_reused_inode_is_no_rename() {
        // The file system gave the deleted file's inode to a new, unrelated file: the
        // birth time tells them apart, so the old one is deleted (restorable from the
        // trash at its path) and the new one uploaded.
        let b = base_entry("old", 1, 1, 10);
        let mut reused = local_entry("new", 5, 10);
        reused.file.born = 6;
        let delete_and_upload = |vv: &VersionVector| Plan {
            remote: vec![RemoteOp::Delete {
                path: p("old"),
                base: vv.clone(),
            }],
            uploads: vec![upload("new", VersionVector::new())],
            ..Plan::default()
        };
        assert_eq!(run(&[b.clone()], &[reused], &[]), delete_and_upload(&b.vv));
        // Where no birth time is recorded, only an untouched mtime vouches for the
        // inode: a pure move is still a rename, an inode with new content and a new
        // mtime is not.
        let mut b0 = b.clone();
        b0.born = 0;
        let mut moved = local_entry("new", 1, 10);
        moved.file.born = 0;
        assert_eq!(
            run(&[b0.clone()], &[moved.clone()], &[]),
            remote_ops(vec![rename("old", "new", false)])
        );
        let mut other = local_entry("new", 5, 10);
        other.file.born = 0;
        other.file.mtime = 2;
        assert_eq!(run(&[b0.clone()], &[other], &[]), delete_and_upload(&b0.vv));
        // A base from before birth times were recorded takes the file's on the next
        // sync, without an upload.
        assert_eq!(
            run(&[b0], &[local_entry("old", 1, 10)], &[]),
            local_ops(vec![LocalOp::Restat { path: p("old") }])
        );
    }

    #[test]
    fn remote_changes_apply_only_over_unchanged_local_files() {
        let b = base_entry("a", 1, 1, 10);
        let r = remote("a", 1, Some(2), newer());
        let download = |m: &FileMeta| Plan {
            downloads: vec![m.clone()],
            ..Plan::default()
        };
        assert_eq!(
            run(&[b.clone()], &[local_entry("a", 1, 10)], &[r.clone()]),
            download(&r)
        );
        // Edited here too: upload with the old base, never overwrite.
        assert_eq!(
            run(&[b.clone()], &[local_entry("a", 3, 10)], &[r.clone()]),
            uploads(vec![upload("a", b.vv.clone())])
        );
        // Same content reached on both sides.
        assert_eq!(
            run(&[b.clone()], &[local_entry("a", 2, 10)], &[r.clone()]),
            local_ops(vec![LocalOp::Adopt { meta: r.clone() }])
        );
        // Deleted here, edited there: the edit comes back.
        assert_eq!(run(&[b], &[], &[r.clone()]), download(&r));
    }

    #[test]
    fn remote_deletes_spare_local_edits() {
        let b = base_entry("a", 1, 1, 10);
        let gone = remote("a", 1, None, newer());
        assert_eq!(
            run(&[b.clone()], &[local_entry("a", 1, 10)], &[gone.clone()]),
            local_ops(vec![LocalOp::Delete { path: p("a") }])
        );
        assert_eq!(
            run(&[b.clone()], &[local_entry("a", 4, 10)], &[gone.clone()]),
            uploads(vec![upload("a", b.vv)])
        );
        assert_eq!(
            run(&[base_entry("a", 1, 1, 10)], &[], &[gone]),
            Plan {
                forget: vec![p("a")],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn remote_moves_move_unchanged_local_files() {
        let b = base_entry("dir/a", 1, 1, 10);
        let moved = remote("other/a", 1, Some(1), b.vv.clone());
        assert_eq!(
            run(
                &[b.clone()],
                &[local_entry("dir/a", 1, 10)],
                &[moved.clone()]
            ),
            local_ops(vec![LocalOp::Move {
                from: p("dir/a"),
                meta: moved.clone()
            }])
        );
        // Changed here: kept as a new file at its path, and the moved one fetched.
        assert_eq!(
            run(&[b], &[local_entry("dir/a", 7, 10)], &[moved.clone()]),
            Plan {
                forget: vec![p("dir/a")],
                uploads: vec![upload("dir/a", VersionVector::new())],
                downloads: vec![moved],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn new_on_both_sides_goes_through_the_server() {
        let r = remote("a", 1, Some(2), newer());
        assert_eq!(
            run(&[], &[local_entry("a", 3, 10)], &[r.clone()]),
            uploads(vec![upload("a", VersionVector::new())])
        );
        assert_eq!(
            run(&[], &[local_entry("a", 2, 10)], &[r.clone()]),
            local_ops(vec![LocalOp::Adopt { meta: r }])
        );
    }
}
