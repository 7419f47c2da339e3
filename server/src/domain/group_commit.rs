//! Group commit of single-blob uploads (`PUT /chunks/{id}`): blobs that arrive for one
//! namespace while a pack of that namespace is being written wait, then go together as
//! the next pack, with one fsync (or one PUT) and one transaction for all of them.
//!
//! No upload waits for a timer: the first blob of an idle namespace is written at once,
//! alone; only the blobs that arrive during that write are grouped (the leader/follower
//! scheme of database group commit). A writer task per busy namespace drains its queue
//! and exits when it is empty; it is a spawned task, so an upload whose client goes
//! away does not abandon the others of its group. Each upload is answered only after
//! its group's rows are committed, exactly as a batch upload is.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use fsync_common::{ChunkId, NamespaceId};
use tokio::sync::oneshot;

use super::uploads::{store_chunks_existing, UploadError};
use crate::state::{now_secs, AppState};

/// The most blob bytes one group packs together (a group is one request's worth).
pub const GROUP_MAX_BYTES: usize = 16 << 20;

/// The answer to one upload of a group: whether its chunk was already recorded.
type Reply = Result<bool, Arc<UploadError>>;

struct Waiting {
    id: ChunkId,
    blob: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
}

/// The uploads waiting for a group, per namespace with a writer task (one per
/// `AppState`).
#[derive(Default)]
pub struct GroupCommit {
    queues: Mutex<HashMap<NamespaceId, Queue>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// How many uploads wait for a pack to be written (not counting those being
    /// written).
    pub fn waiting(&self) -> usize {
        let queues = self.queues.lock().expect("group commit lock");
        queues.values().map(|q| q.waiting.len()).sum()
    }

    /// Stores one blob (its header already checked) in `ns` with whatever else is
    /// waiting; returns once it is durable and recorded, `true` if the chunk was
    /// already recorded.
    pub async fn submit(
        state: &AppState,
        ns: NamespaceId,
        id: ChunkId,
        blob: Vec<u8>,
    ) -> Result<bool, UploadError> {
        let (reply, answer) = oneshot::channel();
        let start_writer = {
            let mut queues = state.group_commit.queues.lock().expect("group commit lock");
            let start = !queues.contains_key(&ns);
            queues
                .entry(ns)
                .or_default()
                .waiting
                .push(Waiting { id, blob, reply });
            start
        };
        if start_writer {
            tokio::spawn(Self::write_groups(state.clone(), ns));
        }
        match answer.await {
            Ok(r) => r.map_err(UploadError::Group),
            // The writer task panicked (its reply dropped unanswered).
            Err(_) => Err(UploadError::Store(fsync_store::StoreError::Backend(
                "the pack writer stopped before answering".into(),
            ))),
        }
    }

    /// The writer task of `ns`: writes what waits as one pack, answers, repeats until
    /// nothing waits, then removes the namespace's queue (under the lock, so a blob
    /// pushed meanwhile starts a new writer).
    async fn write_groups(state: AppState, ns: NamespaceId) {
        let owner = &state.group_commit;
        let _guard = WriterGuard { owner, ns };
        loop {
            let group = {
                let mut queues = owner.queues.lock().expect("group commit lock");
                let Some(queue) = queues.get_mut(&ns) else {
                    return;
                };
                if queue.waiting.is_empty() {
                    queues.remove(&ns);
                    return;
                }
                take_group(&mut queue.waiting)
            };
            state.metrics.upload_groups.fetch_add(1, Relaxed);
            state
                .metrics
                .grouped_blobs
                .fetch_add(group.len() as u64, Relaxed);
            let (items, replies): (Vec<_>, Vec<_>) = group
                .into_iter()
                .map(|w| ((w.id, w.blob), (w.id, w.reply)))
                .unzip();
            let result = store_chunks_existing(
                state.repo.as_ref(),
                state.packs.as_ref(),
                ns,
                items,
                now_secs(),
            )
            .await;
            match result {
                Ok(existing) => {
                    for (id, reply) in replies {
                        // A dropped receiver is an upload whose client went away.
                        let _ = reply.send(Ok(existing.contains(&id)));
                    }
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, blobs = replies.len(), "group commit failed");
                    let e = Arc::new(e);
                    for (_, reply) in replies {
                        let _ = reply.send(Err(Arc::clone(&e)));
                    }
                }
            }
        }
    }
}

/// Removes the namespace's queue if its writer task ends by a panic: the uploads still
/// waiting get an error (their replies drop) instead of waiting for ever, and the next
/// upload starts a new writer.
struct WriterGuard<'a> {
    owner: &'a GroupCommit,
    ns: NamespaceId,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut queues) = self.owner.queues.lock() {
                queues.remove(&self.ns);
            }
        }
    }
}

/// Takes the oldest waiting uploads, at least one, up to [`GROUP_MAX_BYTES`].
fn take_group(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut bytes = 0;
    let n = waiting
        .iter()
        .take_while(|w| {
            bytes += w.blob.len();
            bytes <= GROUP_MAX_BYTES
        })
        .count()
        .max(1);
    let rest = waiting.split_off(n);
    std::mem::replace(waiting, rest)
}
