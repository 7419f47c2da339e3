//! Collecting and verifying packs: a pack no chunk row points into goes after the
//! grace period (its row under the namespace lock, then its file); a pack file with no
//! row (an upload that crashed before recording it) goes once it is older than the
//! grace period, judged under the lock; `verify` reads every pack whole.

use std::collections::HashMap;
use std::time::SystemTime;

use fsync_common::{NamespaceId, PackId};
use fsync_store::pack;

use super::{add, Collector, Damage, GcError, RunReport, VerifyReport};
use crate::db::gc::RetentionSql;

impl Collector {
    /// Deletes the packs of `ns` that no chunk row points into any more (after the
    /// sweep deleted their rows), and refreshes the packs' live bytes.
    /// With `predict` (a dry run with that policy), only counts what a run would do.
    pub(super) async fn drop_packs(
        &self,
        ns: NamespaceId,
        cutoff: i64,
        predict: Option<RetentionSql>,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        let dead = self.repo.drop_dead_packs(ns, cutoff, predict).await?;
        let mut gone = Vec::with_capacity(dead.len());
        for (id, size) in dead {
            if predict.is_none() {
                if let Err(e) = self.packs.delete(&ns, &id).await {
                    // Its row stays, marked dead: the next run retries.
                    tracing::warn!(namespace = %ns, pack = %id, error = %e, "deleting a pack failed; the next run retries it");
                    add(&mut report.blob_delete_failures, 1);
                    continue;
                }
                gone.push(id);
            }
            add(&mut report.packs_deleted, 1);
            add(&mut report.pack_bytes_reclaimed, size);
        }
        self.repo.forget_packs(ns, &gone).await?;
        Ok(())
    }

    /// Deletes pack files of `ns` that have no row and were written before `before`,
    /// and partial pack writes older than `temps_before`.
    pub(super) async fn orphan_packs(
        &self,
        ns: NamespaceId,
        (before, temps_before): (SystemTime, SystemTime),
        batch: usize,
        dry_run: bool,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        match self
            .packs
            .remove_stale_temp_files(&ns, temps_before, dry_run)
            .await
        {
            Ok((n, bytes)) => {
                add(&mut report.temp_files_deleted, n);
                add(&mut report.temp_bytes_reclaimed, bytes);
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "could not remove partial pack writes; the next run retries");
                add(&mut report.blob_delete_failures, 1);
            }
        }
        let mut after = None;
        loop {
            let page = self.packs.list(&ns, after, batch).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            let old: HashMap<PackId, u64> = page
                .iter()
                .filter(|p| p.modified < before)
                .map(|p| (p.id, p.size))
                .collect();
            let ids: Vec<PackId> = old.keys().copied().collect();
            if dry_run {
                let recorded = self.repo.recorded_packs(ns, &ids).await?;
                for (_, size) in old.iter().filter(|(id, _)| !recorded.contains(*id)) {
                    add(&mut report.orphan_packs_deleted, 1);
                    add(&mut report.orphan_bytes_reclaimed, *size);
                }
                continue;
            }
            if ids.is_empty() {
                continue;
            }
            let (lock, unrecorded) = self.repo.lock_unrecorded_packs(ns, &ids).await?;
            for id in unrecorded {
                match self.packs.delete(&ns, &id).await {
                    Ok(true) => {
                        add(&mut report.orphan_packs_deleted, 1);
                        add(&mut report.orphan_bytes_reclaimed, old[&id]);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(namespace = %ns, pack = %id, error = %e, "deleting an orphan pack failed; a later run retries it");
                        add(&mut report.blob_delete_failures, 1);
                    }
                }
            }
            lock.release().await?;
        }
    }

    /// Reads every pack of `ns` whole: each must be intact (checksum, trailer, blob
    /// headers) and hold every chunk whose row points into it, where the row says.
    pub(super) async fn verify_packs(
        &self,
        ns: NamespaceId,
        batch: usize,
        report: &mut VerifyReport,
    ) -> Result<(), GcError> {
        for (chunk, referenced) in self.repo.chunks_in_unrecorded_packs(ns, 10_000).await? {
            report.push(Damage::MissingBlob {
                namespace: ns,
                chunk,
                referenced,
            });
        }
        let mut after = None;
        loop {
            let rows = self.repo.pack_page(ns, after, batch).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            for row in rows {
                let chunks = self.repo.chunks_in_pack(ns, row.id).await?;
                add(&mut report.chunks_checked, chunks.len() as u64);
                add(&mut report.packs_checked, 1);
                let bytes = match self.packs.read_all(&ns, &row.id).await {
                    Ok(b) => b,
                    Err(fsync_store::StoreError::PackNotFound { .. }) => {
                        if !chunks.is_empty() || !row.going {
                            report.push(Damage::MissingPack {
                                namespace: ns,
                                pack: row.id,
                                chunks: chunks.len() as u64,
                            });
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let entries = match pack::verify(&bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        report.push(Damage::CorruptPack {
                            namespace: ns,
                            pack: row.id,
                            reason: e.to_string(),
                        });
                        continue;
                    }
                };
                if bytes.len() as u64 != row.size {
                    report.push(Damage::CorruptPack {
                        namespace: ns,
                        pack: row.id,
                        reason: format!("{} bytes, {} recorded", bytes.len(), row.size),
                    });
                }
                let at: HashMap<_, _> = entries.iter().map(|e| (e.id, e)).collect();
                for (chunk, offset, len, referenced) in chunks {
                    let placed = at
                        .get(&chunk)
                        .is_some_and(|e| e.offset == offset && u64::from(e.len) == len);
                    if !placed {
                        report.push(Damage::NotInPack {
                            namespace: ns,
                            chunk,
                            pack: row.id,
                            referenced,
                        });
                    }
                }
            }
        }
        // Pack files with no row (harmless; the next run removes them).
        let mut after = None;
        loop {
            let page = self.packs.list(&ns, after, batch).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let ids: Vec<PackId> = page.iter().map(|p| p.id).collect();
            let recorded = self.repo.recorded_packs(ns, &ids).await?;
            add(
                &mut report.orphan_packs,
                ids.iter().filter(|id| !recorded.contains(id)).count() as u64,
            );
        }
        Ok(())
    }
}
