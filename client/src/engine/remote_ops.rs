//! Remote deletes and renames, sent to the server as one batch of events.

use fsync_common::wire::{DeleteOutcome, DeleteRequest, RenameRequest, SyncEvent, SyncEventResult};
use fsync_common::{ErrorCode, VersionVector};

use super::{idem, Context, Engine, RoundReport, SyncError};
use crate::planner::{RemoteOp, Upload};

impl Engine {
    /// Sends the round's deletes and renames; a rename whose content changed too, or
    /// one the server refused, adds an upload.
    pub(super) async fn run_remote_ops(
        &mut self,
        ops: Vec<RemoteOp>,
        cx: Context<'_>,
        uploads: &mut Vec<Upload>,
        report: &mut RoundReport,
    ) -> Result<(), SyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        let ns = self.keys.ns;
        let events: Vec<SyncEvent> = ops
            .iter()
            .map(|op| match op {
                RemoteOp::Delete { path, base } => SyncEvent::Delete(DeleteRequest {
                    namespace: ns,
                    path: path.clone(),
                    base: base.clone(),
                    idempotency_key: idem(),
                }),
                RemoteOp::Rename { from, to, .. } => SyncEvent::Rename(RenameRequest {
                    namespace: ns,
                    from: from.clone(),
                    to: to.clone(),
                    idempotency_key: idem(),
                }),
            })
            .collect();
        let results = self.remote.events(events).await?;
        for (op, result) in ops.into_iter().zip(results) {
            match (op, result) {
                (RemoteOp::Delete { path, .. }, SyncEventResult::Applied(r)) => {
                    self.state.remove(&path)?;
                    if r.outcome == Some(DeleteOutcome::Deleted) {
                        tracing::info!(path = %path, "deleted on the server (deleted here)");
                        report.deleted_remote += 1;
                    }
                }
                (RemoteOp::Delete { path, .. }, SyncEventResult::Failed(e))
                    if e.error.code == ErrorCode::NotFound =>
                {
                    self.state.remove(&path)?;
                }
                (RemoteOp::Delete { path, .. }, SyncEventResult::Failed(e)) => {
                    report.deferred.push((path.to_string(), e.error.message));
                }
                (RemoteOp::Rename { from, to, changed }, SyncEventResult::Applied(r)) => {
                    tracing::info!(from = %from, to = %to, "renamed on the server (renamed here)");
                    report.renamed += 1;
                    if let (Some(b), Some(_)) = (cx.base.get(&from), r.files.first()) {
                        let l = &cx.local[&to].file;
                        let mut moved = b.clone();
                        moved.path = to.clone();
                        // The base keeps the vector and version this device saw: a rename
                        // does not change them, so a differing answer means an edit landed
                        // since the pull, which the next pull brings (as a download or a
                        // conflict) instead of it being taken as seen.
                        moved.mtime = l.mtime;
                        moved.inode = l.inode;
                        moved.born = l.born;
                        moved.mode = l.mode;
                        if changed {
                            // The content changed too: the base keeps the old hash so
                            // the upload below commits on top of it.
                            uploads.push(Upload {
                                path: to.clone(),
                                base: b.vv.clone(),
                            });
                        }
                        self.state.batch(|s| {
                            s.remove(&from)?;
                            s.put(&moved)
                        })?;
                    }
                }
                (RemoteOp::Rename { from, to, .. }, SyncEventResult::Failed(e)) => {
                    // Could not rename (the target exists there): send it as a new file
                    // and a delete, which the server resolves like any other change.
                    tracing::info!(from = %from, to = %to, reason = %e.error.message, "rename refused; uploading instead");
                    if let Some(b) = cx.base.get(&from) {
                        uploads.push(Upload {
                            path: to,
                            base: VersionVector::new(),
                        });
                        let del = DeleteRequest {
                            namespace: ns,
                            path: from.clone(),
                            base: b.vv.clone(),
                            idempotency_key: idem(),
                        };
                        self.remote.delete(&del).await?;
                        self.state.remove(&from)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
