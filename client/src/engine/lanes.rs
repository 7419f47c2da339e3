//! Background lanes for big transfers (the daemon only): a file whose chunks to send,
//! or to fetch, add up to [`LANE_BYTES`] or more moves them on a task of its own, so
//! that the rounds meanwhile sync everything else at once (a small file saved during a
//! 1 GiB upload does not wait behind it).
//!
//! A lane only moves data: an upload lane stores the file's missing chunks (stored
//! chunks commit nothing), a download lane writes and verifies the temp file. The
//! commit and the install stay in a round, with every check a round makes: the round
//! after the lane finished (the lane wakes the daemon) finds the chunks stored and
//! commits, or installs the temp file if the local file is still as last synced. A
//! lane whose file changed meanwhile (another content, another remote version) is
//! abandoned and its temp file removed. While a download lane runs, the journal cursor
//! stays where it is, as for any change not yet applied.
//!
//! Rounds meanwhile hash the file again only if its stat moved: digests of big files
//! not yet synced are kept with the stat they were taken at.

use std::collections::HashMap;
use std::sync::Arc;

use fsync_chunker::FileDigest;
use fsync_common::{ContentHash, FileId, SyncPath, VersionNo};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::download::Fetched;
use crate::scan::LocalFile;

/// Bytes to move (chunks the server lacks, or chunks not found locally) from which a
/// file's transfer runs in a lane: at loopback speed about 0.1 s of transfer, below
/// which a round is quick anyway.
pub(super) const LANE_BYTES: u64 = 16 * 1024 * 1024;

/// One transfer running (or finished, not yet collected) in the background. Dropping
/// it abandons the transfer at its next wait (a temp file written so far is removed).
struct Lane<K, T> {
    /// What it transfers: a content hash (upload) or a remote version (download).
    key: K,
    task: JoinHandle<Result<T, String>>,
    /// Dropped with the lane, which stops the transfer.
    #[allow(dead_code)]
    cancel: oneshot::Sender<()>,
}

/// Where a file's lane stands, as a round sees it.
pub(super) enum LaneState<T> {
    /// No lane for this file (or one for another content, now abandoned).
    None,
    /// Still transferring: leave the file for a later round.
    Running,
    /// Finished: its result.
    Done(Result<T, String>),
}

/// The lanes of one engine, and the digests of big files kept between rounds.
#[derive(Default)]
pub(super) struct Lanes {
    /// Off unless the daemon turned it on: a one-shot run transfers everything itself.
    pub(super) enabled: bool,
    /// Notified whenever a lane finishes.
    pub(super) finished: Arc<Notify>,
    uploads: HashMap<SyncPath, Lane<ContentHash, ()>>,
    downloads: HashMap<SyncPath, Lane<(FileId, VersionNo), Fetched>>,
    /// Digests of big files not in the base, with the stat they were taken at.
    digests: HashMap<SyncPath, (LocalFile, FileDigest)>,
}

impl Lanes {
    /// The upload lane of `path` for content `hash`.
    pub(super) async fn upload(&mut self, path: &SyncPath, hash: ContentHash) -> LaneState<()> {
        state(&mut self.uploads, path, &hash).await
    }

    /// The download lane of `path` for version `key`.
    pub(super) async fn download(
        &mut self,
        path: &SyncPath,
        key: (FileId, VersionNo),
    ) -> LaneState<Fetched> {
        state(&mut self.downloads, path, &key).await
    }

    /// Starts an upload lane.
    pub(super) fn start_upload<F>(&mut self, path: SyncPath, hash: ContentHash, work: F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        tracing::info!(path = %path, "uploading in the background");
        let (task, cancel) = spawn("client.lane.upload", work, self.finished.clone());
        self.uploads.insert(
            path,
            Lane {
                key: hash,
                task,
                cancel,
            },
        );
    }

    /// Starts a download lane.
    pub(super) fn start_download<F>(&mut self, path: SyncPath, key: (FileId, VersionNo), work: F)
    where
        F: std::future::Future<Output = Result<Fetched, String>> + Send + 'static,
    {
        tracing::info!(path = %path, "downloading in the background");
        let (task, cancel) = spawn("client.lane.download", work, self.finished.clone());
        self.downloads.insert(path, Lane { key, task, cancel });
    }

    /// Abandons the lanes of files this round does not transfer (deleted, renamed, or
    /// synced another way meanwhile).
    pub(super) fn retain<'a>(
        &mut self,
        uploads: impl Iterator<Item = &'a SyncPath>,
        downloads: impl Iterator<Item = &'a SyncPath>,
    ) {
        let up: std::collections::HashSet<&SyncPath> = uploads.collect();
        let down: std::collections::HashSet<&SyncPath> = downloads.collect();
        self.uploads.retain(|p, _| up.contains(p));
        self.downloads.retain(|p, _| down.contains(p));
    }

    /// The digest kept for `path` if the file still has stat `now`.
    pub(super) fn digest(&self, path: &SyncPath, now: &LocalFile) -> Option<FileDigest> {
        let (stat, d) = self.digests.get(path)?;
        (stat == now).then(|| d.clone())
    }

    /// Keeps the digests of this round's big files not in the base (`hashed`), and
    /// forgets the others'.
    pub(super) fn keep_digests(&mut self, hashed: HashMap<SyncPath, (LocalFile, FileDigest)>) {
        self.digests = hashed;
    }
}

/// Runs `work` on a thread of the blocking pool (a lane reads, hashes and writes
/// large files, which must not hold up the rounds' runtime), after the failpoint
/// `point` (where a test holds a lane); then wakes the daemon. The transfer stops at
/// its next wait once the returned sender is dropped.
fn spawn<T, F>(
    point: &'static str,
    work: F,
    finished: Arc<Notify>,
) -> (JoinHandle<Result<T, String>>, oneshot::Sender<()>)
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let (cancel, cancelled) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let out = fsync_common::failpoint::hit(point)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                runtime.block_on(async {
                    tokio::select! {
                        out = work => out,
                        _ = cancelled => Err("abandoned".to_owned()),
                    }
                })
            });
        finished.notify_one();
        out
    });
    (task, cancel)
}

async fn state<K: PartialEq, T>(
    lanes: &mut HashMap<SyncPath, Lane<K, T>>,
    path: &SyncPath,
    key: &K,
) -> LaneState<T> {
    let Some(lane) = lanes.get(path) else {
        return LaneState::None;
    };
    if lane.key != *key {
        // The file moved on: what this lane transfers is no longer wanted.
        lanes.remove(path);
        return LaneState::None;
    }
    if !lane.task.is_finished() {
        return LaneState::Running;
    }
    let lane = lanes.remove(path).expect("lane present");
    LaneState::Done(lane.task.await.unwrap_or_else(|e| Err(e.to_string())))
}
