//! Writes to a namespace's files (commit, delete, rename, restore, and `sync/event`
//! batches of them), each followed by the push to the namespace's sockets once it is
//! committed.

use fsync_common::wire::{CommitRequest, CommitResponse, DeleteRequest, OpResponse, RenameRequest};
use fsync_common::{FileId, NamespaceId, Seq, VersionNo};

use crate::db::{Actor, BatchAnswer, BatchOp, DbError};
use crate::state::{now_secs, AppState};

/// Why a write failed; nothing of it was applied unless it says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The repository refused or failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// An injected fault fired after the commit (tests): the change is committed, and
    /// others see it at the next push or pull.
    #[error("{0}")]
    Fault(String),
}

/// The journal position a committed answer is pushed at. Committed, not yet pushed: a
/// crash here must not hide the change from others (the fail point tests that).
fn committed(r: &CommitResponse) -> Result<Seq, WriteError> {
    fsync_common::failpoint::hit("server.commit.before_push")
        .map_err(|e| WriteError::Fault(e.to_string()))?;
    Ok(r.head
        .seq
        .max(r.conflict_copy.as_ref().map_or(Seq(0), |c| c.seq)))
}

/// The latest journal position of a delete's or rename's answer.
fn applied(r: &OpResponse) -> Option<Seq> {
    r.files.iter().map(|f| f.seq).max()
}

/// Commits a manifest and pushes the change.
pub(crate) async fn commit(
    state: &AppState,
    actor: Actor,
    req: &CommitRequest,
) -> Result<CommitResponse, WriteError> {
    let r = state.repo.commit(actor, req, now_secs()).await?;
    state.notify(req.namespace, committed(&r)?);
    Ok(r)
}

/// Deletes a path and pushes the change.
pub(crate) async fn delete(
    state: &AppState,
    actor: Actor,
    req: &DeleteRequest,
) -> Result<OpResponse, WriteError> {
    let r = state.repo.delete(actor, req, now_secs()).await?;
    notify_at(state, req.namespace, applied(&r));
    Ok(r)
}

/// Renames a file or folder and pushes the change.
pub(crate) async fn rename(
    state: &AppState,
    actor: Actor,
    req: &RenameRequest,
) -> Result<OpResponse, WriteError> {
    let r = state.repo.rename(actor, req, now_secs()).await?;
    notify_at(state, req.namespace, applied(&r));
    Ok(r)
}

/// Makes an old version the head again and pushes the change.
pub(crate) async fn restore(
    state: &AppState,
    actor: Actor,
    file: FileId,
    version: VersionNo,
) -> Result<CommitResponse, WriteError> {
    let r = state.repo.restore(actor, file, version, now_secs()).await?;
    state.notify(r.head.namespace, r.head.seq);
    Ok(r)
}

/// Applies a batch (consecutive ops of one namespace in one transaction, see
/// [`crate::WriteRepo::apply_batch`]); one answer per op, in order. One push per
/// namespace, at its latest position, once everything is committed.
pub(crate) async fn apply_batch(
    state: &AppState,
    actor: Actor,
    ops: &[BatchOp<'_>],
) -> Vec<Result<BatchAnswer, WriteError>> {
    let answers = state.repo.apply_batch(actor, ops, now_secs()).await;
    let mut pushed: Vec<(NamespaceId, Seq)> = Vec::new();
    let out = ops
        .iter()
        .zip(answers)
        .map(|(op, answer)| {
            let answer = answer?;
            let seq = match &answer {
                BatchAnswer::Committed(r) => Some(committed(r)?),
                BatchAnswer::Applied(r) => applied(r),
            };
            if let Some(seq) = seq {
                match pushed.iter_mut().find(|(ns, _)| *ns == op.namespace()) {
                    Some((_, top)) => *top = (*top).max(seq),
                    None => pushed.push((op.namespace(), seq)),
                }
            }
            Ok(answer)
        })
        .collect();
    for (ns, seq) in pushed {
        state.notify(ns, seq);
    }
    out
}

fn notify_at(state: &AppState, ns: NamespaceId, seq: Option<Seq>) {
    if let Some(seq) = seq {
        state.notify(ns, seq);
    }
}
