//! Commits, deletes and renames: one op or a `sync/event` batch, each namespace's ops
//! in one transaction under its lock.

use async_trait::async_trait;
use std::collections::HashSet;

use fsync_common::wire::{
    ChunkRef, CommitOutcome, CommitRequest, CommitResponse, DeleteOutcome, DeleteRequest, FileMeta,
    OpResponse, RenameRequest,
};
use fsync_common::{ChunkId, FileId, NamespaceId};
use sqlx::AssertSqlSafe;

use super::chunks::{absent_chunks, unique_ids};
use super::files::{conflict_copy, live_at, live_below, manifest_of, write_version, VersionData};
use super::rows::{file_meta, head_state, i64_of, prefix_range, FILE_COLS};
use super::tx::NsTx;
use super::{pages, SqlRepo};
use crate::db::{Actor, BatchAnswer, BatchOp, DbError, WriteRepo};
use crate::domain::manifest::{self, RequestError};
use crate::domain::resolve::{plan_commit, plan_delete, CommitPlan, DeletePlan, Incoming};

/// The checks of an op that need no database; they run before its transaction.
fn precheck(op: &BatchOp<'_>) -> Result<(), DbError> {
    Ok(manifest::check_op(op)?)
}

fn idempotency_key<'a>(op: &BatchOp<'a>) -> &'a str {
    match op {
        BatchOp::Commit(r) => &r.idempotency_key,
        BatchOp::Delete(r) => &r.idempotency_key,
        BatchOp::Rename(r) => &r.idempotency_key,
    }
}

/// Errors after which the transaction cannot go on (on PostgreSQL a failed statement
/// aborts it).
fn is_fatal(e: &DbError) -> bool {
    matches!(e, DbError::Backend(_) | DbError::Blob(_))
}

/// Commits a manifest (ARCHITECTURE §5). `absent`: the chunks of the transaction's
/// commits that are not recorded, read under the lock. Every check that can refuse the
/// commit runs before its first write.
async fn commit_in(
    w: &mut NsTx,
    actor: Actor,
    req: &CommitRequest,
    absent: &HashSet<ChunkId>,
) -> Result<CommitResponse, DbError> {
    if let Some(mut answer) = w.answer::<CommitResponse>(&req.idempotency_key).await? {
        answer.outcome = CommitOutcome::AlreadyApplied;
        return Ok(answer);
    }
    // A commit naming pages: its chunk list is theirs, read under the lock (a stored
    // page's chunks are recorded and referenced by it, so none can be missing).
    let resolved;
    let req = if req.pages.is_empty() {
        req
    } else {
        // Counted before the list is built: a few pages named many times must not
        // build a list past the limit.
        let total = pages::entries_of(&mut w.tx, w.ns, &req.pages).await?;
        if total > manifest::MAX_MANIFEST_CHUNKS as u64 {
            return Err(RequestError::TooManyChunks(total as usize).into());
        }
        let chunks = pages::resolve(&mut w.tx, w.ns, &[&req.pages])
            .await?
            .pop()
            .expect("one list");
        resolved = CommitRequest {
            chunks,
            pages: Vec::new(),
            ..req.clone()
        };
        manifest::check_manifest(&resolved)?;
        &resolved
    };
    let ids: Vec<ChunkId> = req.chunks.iter().map(ChunkRef::id).collect();
    let missing: Vec<ChunkId> = unique_ids(&ids)
        .into_iter()
        .filter(|id| absent.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(DbError::MissingChunks(missing));
    }
    let head = w.head(req.path.as_str()).await?;
    let incoming = Incoming {
        base: &req.base,
        device: actor.device,
        mtime: req.mtime,
        content_hash: req.content_hash,
        size: req.size,
        mode: req.mode,
    };
    let plan = plan_commit(head.as_ref().map(head_state).as_ref(), &incoming);
    let data = |vv| VersionData {
        path: &req.path,
        vv,
        size: req.size,
        mtime: req.mtime,
        mode: req.mode,
        checksum: Some(req.content_hash),
        deleted: false,
        device: actor.device,
        chunks: &req.chunks,
    };
    let answer = match (plan, head) {
        (CommitPlan::FastForward { vv }, head) => {
            let file = head
                .as_ref()
                .map_or_else(|| FileId::from_bytes(rand::random()), |h| h.file_id);
            let new = write_version(w, file, head.as_ref(), &data(&vv)).await?;
            CommitResponse {
                outcome: CommitOutcome::FastForward,
                head: new,
                conflict_copy: None,
            }
        }
        (CommitPlan::Unchanged, Some(head)) => CommitResponse {
            outcome: CommitOutcome::Unchanged,
            head,
            conflict_copy: None,
        },
        (CommitPlan::Merge { vv }, Some(head)) => {
            let chunks = manifest_of(&mut w.tx, w.ns, head.file_id, head.version).await?;
            let v = VersionData {
                chunks: &chunks,
                mtime: head.mtime,
                device: actor.device,
                ..data(&vv)
            };
            let new = write_version(w, head.file_id, Some(&head), &v).await?;
            CommitResponse {
                outcome: CommitOutcome::Unchanged,
                head: new,
                conflict_copy: None,
            }
        }
        (
            CommitPlan::ConflictWon {
                vv,
                copy_mtime,
                copy_device,
            },
            Some(head),
        ) => {
            let old_chunks = manifest_of(&mut w.tx, w.ns, head.file_id, head.version).await?;
            let copy = conflict_copy(
                w,
                &req.path,
                copy_mtime,
                copy_device,
                (head.size, head.mode, head.content_hash),
                &old_chunks,
            )
            .await?;
            let new = write_version(w, head.file_id, Some(&head), &data(&vv)).await?;
            CommitResponse {
                outcome: CommitOutcome::ConflictWon,
                head: new,
                conflict_copy: Some(copy),
            }
        }
        (CommitPlan::ConflictLost, Some(head)) => {
            let copy = conflict_copy(
                w,
                &req.path,
                req.mtime,
                actor.device,
                (req.size, req.mode, Some(req.content_hash)),
                &req.chunks,
            )
            .await?;
            CommitResponse {
                outcome: CommitOutcome::ConflictLost,
                head,
                conflict_copy: Some(copy),
            }
        }
        (_, None) => unreachable!("only a fast-forward is planned without a head"),
    };
    w.remember(&req.idempotency_key, &answer);
    Ok(answer)
}

/// Tombstones a path, if the head is the version the client saw.
async fn delete_in(w: &mut NsTx, actor: Actor, req: &DeleteRequest) -> Result<OpResponse, DbError> {
    if let Some(answer) = w.answer::<OpResponse>(&req.idempotency_key).await? {
        return Ok(answer);
    }
    let head = w
        .head(req.path.as_str())
        .await?
        .ok_or(DbError::NotFound("file"))?;
    let answer = match plan_delete(&head_state(&head), &req.base, actor.device) {
        DeletePlan::Delete { vv } => {
            let v = VersionData {
                path: &req.path,
                vv: &vv,
                size: 0,
                mtime: head.mtime,
                mode: head.mode,
                checksum: None,
                deleted: true,
                device: actor.device,
                chunks: &[],
            };
            let new = write_version(w, head.file_id, Some(&head), &v).await?;
            OpResponse {
                files: vec![new],
                outcome: Some(DeleteOutcome::Deleted),
            }
        }
        DeletePlan::KeptModified => OpResponse {
            files: vec![head],
            outcome: Some(DeleteOutcome::KeptModified),
        },
        DeletePlan::AlreadyDeleted => OpResponse {
            files: vec![head],
            outcome: Some(DeleteOutcome::AlreadyDeleted),
        },
    };
    w.remember(&req.idempotency_key, &answer);
    Ok(answer)
}

/// Moves a file or every file below a folder, as one operation.
async fn rename_in(w: &mut NsTx, req: &RenameRequest) -> Result<OpResponse, DbError> {
    if let Some(answer) = w.answer::<OpResponse>(&req.idempotency_key).await? {
        return Ok(answer);
    }
    let ns = w.ns;
    // A file, or else every live file below the folder.
    let mut moving = Vec::new();
    if let Some(h) = w.head(req.from.as_str()).await?.filter(|h| !h.deleted) {
        moving.push(h);
    } else {
        let (lo, hi) = prefix_range(req.from.as_str());
        let sql = format!(
            "SELECT {FILE_COLS} FROM files WHERE namespace_id = $1 AND path >= $2 AND path < $3 AND is_deleted = 0 ORDER BY path"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut *w.tx)
            .await?;
        for r in &rows {
            moving.push(file_meta(r)?);
        }
    }
    if moving.is_empty() {
        return Err(DbError::NotFound("file or folder"));
    }
    if live_at(&mut w.tx, ns, req.to.as_str()).await?
        || live_below(&mut w.tx, ns, req.to.as_str()).await?
    {
        return Err(DbError::PathExists(req.to.clone()));
    }
    // Every new path is known before the first write.
    let moves = moving
        .into_iter()
        .map(|m| match m.path.rebase(&req.from, &req.to) {
            Some(new_path) => Ok((m, new_path)),
            None => Err(DbError::Invalid(RequestError::MoveOutside {
                path: m.path.clone(),
                to: req.to.clone(),
            })),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Paths change under the cached heads.
    w.heads.clear();
    let mut out = Vec::with_capacity(moves.len());
    for (m, new_path) in moves {
        let seq = w.next_seq();
        w.writes += 1;
        sqlx::query("UPDATE files SET path = $2, seq = $3 WHERE id = $1")
            .bind(m.file_id.to_hex())
            .bind(new_path.as_str())
            .bind(i64_of(seq.0))
            .execute(&mut *w.tx)
            .await?;
        w.journal(seq, m.file_id, m.version, Some(&m.path));
        out.push(FileMeta {
            path: new_path,
            seq,
            ..m
        });
    }
    let answer = OpResponse {
        files: out,
        outcome: None,
    };
    w.remember(&req.idempotency_key, &answer);
    Ok(answer)
}

impl SqlRepo {
    /// Applies ops of one namespace in one transaction under its lock (see
    /// [`WriteRepo::apply_batch`]). The chunks, idempotency answers and heads of all the
    /// ops are read with a few queries first. An op refused by a check gets its error
    /// and the others go on: every check runs before the op's first write. `Err` when
    /// the transaction failed (nothing of it is applied).
    async fn apply_group(
        &self,
        actor: Actor,
        ns: NamespaceId,
        ops: &[BatchOp<'_>],
        now: i64,
    ) -> Result<Vec<Result<BatchAnswer, DbError>>, DbError> {
        let mut out: Vec<Option<Result<BatchAnswer, DbError>>> =
            ops.iter().map(|op| precheck(op).err().map(Err)).collect();
        let live: Vec<&BatchOp<'_>> = ops
            .iter()
            .zip(&out)
            .filter(|(_, r)| r.is_none())
            .map(|(op, _)| op)
            .collect();
        if live.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let mut w = NsTx::begin(self, ns, actor.device, now).await?;
        let keys: Vec<&str> = live.iter().map(|op| idempotency_key(op)).collect();
        w.prefetch_answers(&keys).await?;
        let mut ids = Vec::new();
        let mut paths = Vec::new();
        for op in &live {
            match op {
                BatchOp::Commit(r) => {
                    ids.extend(r.chunks.iter().map(ChunkRef::id));
                    paths.push(r.path.as_str());
                }
                BatchOp::Delete(r) => paths.push(r.path.as_str()),
                BatchOp::Rename(r) => paths.push(r.from.as_str()),
            }
        }
        // Checked under the lock, so no sweep can delete these rows before the
        // references are inserted (at `finish`, in this same transaction).
        let absent: HashSet<ChunkId> = absent_chunks(&mut w.tx, ns, &ids)
            .await?
            .into_iter()
            .collect();
        w.prefetch_heads(&paths).await?;
        for (op, slot) in ops.iter().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let writes = w.writes;
            let r = match op {
                BatchOp::Commit(req) => commit_in(&mut w, actor, req, &absent)
                    .await
                    .map(|r| BatchAnswer::Committed(Box::new(r))),
                BatchOp::Delete(req) => delete_in(&mut w, actor, req)
                    .await
                    .map(BatchAnswer::Applied),
                BatchOp::Rename(req) => rename_in(&mut w, req).await.map(BatchAnswer::Applied),
            };
            match r {
                // A failure half-way through an op cannot be undone alone.
                Err(e) if is_fatal(&e) || w.writes != writes => return Err(e),
                r => *slot = Some(r),
            }
        }
        w.finish().await?;
        Ok(out.into_iter().flatten().collect())
    }

    /// [`SqlRepo::apply_group`] of one op.
    async fn apply_one(
        &self,
        actor: Actor,
        op: BatchOp<'_>,
        now: i64,
    ) -> Result<BatchAnswer, DbError> {
        self.apply_group(actor, op.namespace(), &[op], now)
            .await?
            .pop()
            .expect("one answer per op")
    }
}

#[async_trait]
impl WriteRepo for SqlRepo {
    /// [`WriteRepo::commit`].
    async fn commit(
        &self,
        actor: Actor,
        req: &CommitRequest,
        now: i64,
    ) -> Result<CommitResponse, DbError> {
        match self.apply_one(actor, BatchOp::Commit(req), now).await? {
            BatchAnswer::Committed(r) => Ok(*r),
            BatchAnswer::Applied(_) => unreachable!("a commit is answered as one"),
        }
    }

    /// [`WriteRepo::delete`].
    async fn delete(
        &self,
        actor: Actor,
        req: &DeleteRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        match self.apply_one(actor, BatchOp::Delete(req), now).await? {
            BatchAnswer::Applied(r) => Ok(r),
            BatchAnswer::Committed(_) => unreachable!("a delete is answered as an op"),
        }
    }

    /// [`WriteRepo::rename`].
    async fn rename(
        &self,
        actor: Actor,
        req: &RenameRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        match self.apply_one(actor, BatchOp::Rename(req), now).await? {
            BatchAnswer::Applied(r) => Ok(r),
            BatchAnswer::Committed(_) => unreachable!("a rename is answered as an op"),
        }
    }

    /// [`WriteRepo::apply_batch`]: consecutive ops of one namespace go in one transaction.
    async fn apply_batch(
        &self,
        actor: Actor,
        ops: &[BatchOp<'_>],
        now: i64,
    ) -> Vec<Result<BatchAnswer, DbError>> {
        let mut out = Vec::with_capacity(ops.len());
        for group in ops.chunk_by(|a, b| a.namespace() == b.namespace()) {
            match self
                .apply_group(actor, group[0].namespace(), group, now)
                .await
            {
                Ok(answers) => out.extend(answers),
                Err(e) if group.len() == 1 => out.push(Err(e)),
                Err(e) => {
                    // Nothing of the group was applied: apply its ops one by one, each in
                    // its own transaction, so that the failure stays with its op.
                    tracing::warn!(error = %e, ops = group.len(), "batch transaction failed; applying its events one by one");
                    for op in group {
                        out.push(self.apply_one(actor, *op, now).await);
                    }
                }
            }
        }
        out
    }
}
