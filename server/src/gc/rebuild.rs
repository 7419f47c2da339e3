//! `fsync-gc verify --rebuild-index`: the chunk index rebuilt from the packs alone.
//! Every pack file of a namespace is read whole and checked; one that is intact is
//! adopted (see `GcRepo::adopt_pack`): rows recorded for its blobs that have none, and
//! rows that name a pack with no row pointed into it. A damaged pack is reported and
//! left alone; nothing is ever deleted here.

use std::time::UNIX_EPOCH;

use fsync_common::{NamespaceId, PackId};
use fsync_store::pack;
use serde::Serialize;

use super::{add, Collector, GcError, Progress};
use crate::db::NewPack;

/// What [`Collector::rebuild_index`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    /// Pack files read.
    pub packs_read: u64,
    /// Chunk rows recorded from pack trailers.
    pub chunks_recorded: u64,
    /// Rows that named a pack with no row, pointed into a pack that holds the blob.
    pub chunks_moved: u64,
    /// Packs that could not be read or are damaged, with why.
    pub damaged_packs: Vec<(NamespaceId, PackId, String)>,
}

impl Collector {
    /// Rebuilds the chunk index of one namespace or all from their pack files.
    pub async fn rebuild_index(
        &self,
        namespace: Option<NamespaceId>,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<RebuildReport, GcError> {
        let lock = self.lock().await?;
        let result = self.rebuild_locked(namespace, batch.max(1), progress).await;
        lock.release().await;
        result
    }

    async fn rebuild_locked(
        &self,
        namespace: Option<NamespaceId>,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<RebuildReport, GcError> {
        let mut report = RebuildReport::default();
        progress.stage("rebuilding the index from the packs", None);
        for ns in self.namespaces(namespace).await? {
            let mut after = None;
            loop {
                let page = self.packs.list(&ns, after, batch).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                for info in page {
                    add(&mut report.packs_read, 1);
                    progress.advance(1);
                    let checked = match self.packs.read_all(&ns, &info.id).await {
                        Ok(bytes) => pack::verify(&bytes).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let entries = match checked {
                        Ok(entries) => entries,
                        Err(why) => {
                            report.damaged_packs.push((ns, info.id, why));
                            continue;
                        }
                    };
                    let modified = info
                        .modified
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    let found = NewPack {
                        id: info.id,
                        size: info.size,
                        entries,
                    };
                    let (recorded, moved) = self.repo.adopt_pack(ns, &found, modified).await?;
                    add(&mut report.chunks_recorded, recorded);
                    add(&mut report.chunks_moved, moved);
                }
            }
        }
        progress.finish();
        Ok(report)
    }
}
