//! Local deletes, moves, adopts and restats: each applied only while the local file is
//! still what was last synced.

use fsync_chunker::{FileDigest, HashOptions};

use super::download::{add_to_reuse, ReuseMap};
use super::{Context, Engine, Found, RoundReport, SyncError};
use crate::planner::LocalOp;
use crate::state::BaseEntry;

/// The path an operation is about (for the report).
pub(super) fn op_path(op: &LocalOp) -> String {
    match op {
        LocalOp::Delete { path } | LocalOp::Restat { path } => path.to_string(),
        LocalOp::Move { from, .. } => from.to_string(),
        LocalOp::Adopt { meta } => meta.path.to_string(),
    }
}

impl Engine {
    /// True when the file at `b.path` is still what `b` recorded: the same stat, or —
    /// when only its stat changed (a `touch`, a copy back) — the same content and mode.
    /// A file whose stat moved but not its content must not block a remote change for
    /// ever.
    pub(super) async fn still_as_synced(&self, b: &BaseEntry) -> bool {
        let Ok(Found::File(st)) = self.fs.stat(&b.path) else {
            return false;
        };
        if st.size != b.size || st.mode != b.mode {
            return false;
        }
        if b.same_stat(&st) {
            return true;
        }
        let chunker = self.keys.chunker.clone();
        let fs = self.fs.clone();
        let path = b.path.clone();
        let digest = tokio::task::spawn_blocking(move || {
            let f = fs.open(&path).ok()?;
            chunker.digest_reader(f, HashOptions::default()).ok()
        })
        .await
        .ok()
        .flatten();
        digest.is_some_and(|d| d.content_hash == b.content_hash)
    }

    /// Applies one local operation. `Ok(false)`: not applied this round (retry later).
    pub(super) async fn apply_local(
        &mut self,
        op: LocalOp,
        cx: Context<'_>,
        reuse: &ReuseMap,
        report: &mut RoundReport,
    ) -> Result<bool, SyncError> {
        match op {
            LocalOp::Delete { path } => {
                let Some(b) = cx.base.get(&path) else {
                    return Ok(true);
                };
                if !self.still_as_synced(b).await {
                    return Ok(false); // edited meanwhile: the next round uploads it
                }
                self.fs.remove(&path)?;
                self.state.remove(&path)?;
                tracing::info!(path = %path, "deleted here (deleted on another device)");
                report.deleted_local += 1;
                Ok(true)
            }
            LocalOp::Move { from, meta } => {
                let Some(b) = cx.base.get(&from) else {
                    return Ok(true);
                };
                if self.fs.stat(&meta.path)? != Found::Nothing || !self.still_as_synced(b).await {
                    return Ok(false);
                }
                self.fs.rename(&from, &meta.path)?;
                let mut moved = b.clone();
                moved.path = meta.path.clone();
                self.state.batch(|s| {
                    s.remove(&from)?;
                    s.put(&moved)
                })?;
                tracing::info!(from = %from, to = %meta.path, "renamed here (renamed on another device)");
                report.renamed += 1;
                if meta.content_hash != Some(b.content_hash) || meta.vv != b.vv {
                    let mut reuse2 = reuse.clone();
                    // The moved file's chunks are read at its new path.
                    for c in &b.chunks {
                        reuse2.remove(&c.id());
                    }
                    add_to_reuse(&mut reuse2, &meta.path, &b.chunks);
                    return self.download(&meta, &reuse2, report).await;
                }
                Ok(true)
            }
            LocalOp::Adopt { meta } => {
                let Some(l) = cx.local.get(&meta.path) else {
                    return Ok(true);
                };
                let chunks = cx
                    .digests
                    .get(&meta.path)
                    .map(FileDigest::chunk_refs)
                    .or_else(|| cx.base.get(&meta.path).map(|b| b.chunks.clone()))
                    .unwrap_or_default();
                if let Some(mut e) = BaseEntry::from_meta(&meta, chunks, &l.file) {
                    e.mode = l.file.mode;
                    self.state.put(&e)?;
                }
                Ok(true)
            }
            LocalOp::Restat { path } => {
                if let (Some(b), Some(l)) = (cx.base.get(&path), cx.local.get(&path)) {
                    let mut e = b.clone();
                    e.restat(&l.file);
                    if e.mode == l.file.mode {
                        self.state.put(&e)?;
                    }
                }
                Ok(true)
            }
        }
    }
}
