//! A collection run: retention, the sweep of unreferenced chunks (rows first, then
//! blobs, under the namespace lock; see the module documentation of `gc`), and the
//! orphan pass.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use fsync_common::{ChunkId, NamespaceId};
use fsync_store::StoreError;
use futures_util::StreamExt as _;

use super::{
    add, grace_secs, now_secs, Collector, GcError, GcEvent, GcStage, Progress, RunOptions,
    RunReport,
};
use crate::db::gc::RetentionSql;

/// Blob deletions in flight at once.
const DELETE_CONCURRENCY: usize = 16;

impl Collector {
    /// Prunes versions by the retention policy, sweeps unreferenced chunks and removes
    /// orphan blobs; with `dry_run`, only counts. Takes the GC lock for a real run.
    pub async fn run(
        &self,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport, GcError> {
        let started = Instant::now();
        if opts.grace.as_secs() < crate::db::TOUCH_SLACK_SECS.unsigned_abs() {
            tracing::warn!(
                grace_secs = opts.grace.as_secs(),
                "the grace period is shorter than the {} s for which chunks/missing leaves a \
                 present chunk untouched: a client that asked about its chunks within that \
                 time may find them swept and has to upload them again (nothing is lost)",
                crate::db::TOUCH_SLACK_SECS
            );
        }
        let lock = if opts.dry_run {
            None
        } else {
            Some(self.lock().await?)
        };
        let result = self.run_locked(opts, progress).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let mut report = result?;
        report.elapsed_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        Ok(report)
    }

    async fn run_locked(
        &self,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport, GcError> {
        let now = opts.now.unwrap_or_else(now_secs);
        let cutoff = now.saturating_sub(grace_secs(opts.grace));
        let policy = RetentionSql {
            keep_versions: opts.retention.keep_versions.map(|n| n.max(1)),
            keep_after: opts.retention.keep_days.map(|d| {
                now.saturating_sub(i64::try_from(d.saturating_mul(86_400)).unwrap_or(i64::MAX))
            }),
        };
        let batch = opts.batch.max(1);
        let namespaces = self.namespaces(opts.namespace).await?;
        let mut report = RunReport {
            dry_run: opts.dry_run,
            ..RunReport::default()
        };

        // 1. Retention.
        progress.stage("pruning versions", None);
        for &ns in &namespaces {
            if opts.dry_run {
                let p = self.repo.count_prunable(ns, policy).await?;
                add(&mut report.versions_pruned, p.versions);
                add(&mut report.files_removed, p.files);
                progress.advance(p.versions);
                continue;
            }
            loop {
                let p = self.repo.prune_tombstones(ns, policy, batch).await?;
                if p.files == 0 {
                    break;
                }
                add(&mut report.versions_pruned, p.versions);
                add(&mut report.files_removed, p.files);
                progress.advance(p.versions);
            }
            loop {
                let n = self.repo.prune_versions(ns, policy, batch).await?;
                if n == 0 {
                    break;
                }
                add(&mut report.versions_pruned, n);
                progress.advance(n);
            }
        }
        progress.finish();

        // 2. Sweep.
        progress.stage("sweeping chunks", None);
        for &ns in &namespaces {
            // Pages first: a chunk that only a dead page listed is unreferenced after.
            if !opts.dry_run {
                let n = self.repo.sweep_pages(ns, cutoff).await?;
                add(&mut report.pages_deleted, n);
            }
            self.sweep(ns, cutoff, policy, batch, opts, progress, &mut report)
                .await?;
            let predict = opts.dry_run.then_some(policy);
            self.drop_packs(ns, cutoff, predict, &mut report).await?;
            if let Some(repack) = &opts.repack {
                self.repack(ns, repack, (cutoff, predict), batch, &mut report)
                    .await?;
            }
        }
        progress.finish();

        // 3. Orphan blobs.
        progress.stage("removing orphan blobs", None);
        let old_before =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(cutoff).unwrap_or(0));
        // A partial write is judged by the real clock even when `opts.now` is moved
        // ahead (tests): removing the temp file of a put in flight fails that upload.
        let temps_before = old_before.min(
            SystemTime::now()
                .checked_sub(opts.grace)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        for &ns in &namespaces {
            let cutoffs = (old_before, temps_before);
            self.orphans(ns, cutoffs, batch, opts.dry_run, progress, &mut report)
                .await?;
            // An unrecorded pack is judged by the real clock, like a partial write: it
            // may be an upload in flight (its recording puts it back if need be).
            self.orphan_packs(
                ns,
                (temps_before, temps_before),
                batch,
                opts.dry_run,
                &mut report,
            )
            .await?;
        }
        progress.finish();
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn sweep(
        &self,
        ns: NamespaceId,
        cutoff: i64,
        policy: RetentionSql,
        batch: usize,
        opts: &RunOptions,
        progress: &dyn Progress,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        let hook = |stage, chunks: Vec<ChunkId>| async move {
            if let Some(h) = &opts.hook {
                h(GcEvent {
                    stage,
                    namespace: ns,
                    chunks,
                })
                .await;
            }
        };
        let mut after = None;
        loop {
            let ignoring = opts.dry_run.then_some(policy);
            let candidates = self
                .repo
                .sweep_candidates(ns, after, cutoff, batch, ignoring)
                .await?;
            let Some(&(last, _)) = candidates.last() else {
                return Ok(());
            };
            after = Some(last);
            if opts.dry_run {
                add(&mut report.chunks_deleted, candidates.len() as u64);
                add(
                    &mut report.bytes_reclaimed,
                    candidates.iter().map(|c| c.1).sum(),
                );
                progress.advance(candidates.len() as u64);
                continue;
            }
            let ids: Vec<ChunkId> = candidates.iter().map(|c| c.0).collect();
            hook(GcStage::BeforeRowDelete, ids.clone()).await;
            let deleted = self.repo.delete_chunk_rows(ns, &ids, cutoff).await?;
            add(&mut report.chunks_deleted, deleted.len() as u64);
            add(
                &mut report.bytes_reclaimed,
                deleted.iter().map(|(c, _)| c.1).sum(),
            );
            let gone: Vec<ChunkId> = deleted.iter().map(|(c, _)| c.0).collect();
            hook(GcStage::AfterRowDelete, gone.clone()).await;
            // Packed blobs go with their packs (see `drop_packs`); loose ones now.
            let loose: Vec<ChunkId> = deleted.iter().filter(|d| d.1).map(|(c, _)| c.0).collect();
            let (_, failed) = self.delete_unrecorded_blobs(ns, &loose).await?;
            add(&mut report.blob_delete_failures, failed);
            hook(GcStage::AfterBlobDelete, gone).await;
            progress.advance(candidates.len() as u64);
        }
    }

    async fn orphans(
        &self,
        ns: NamespaceId,
        (old_before, temps_before): (SystemTime, SystemTime),
        batch: usize,
        dry_run: bool,
        progress: &dyn Progress,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        // Partial writes of puts that crashed (never visible as blobs). One that cannot
        // be removed must not stop the collection: warned about, retried next run.
        match self
            .blobs
            .remove_stale_temp_files(&ns, temps_before, dry_run)
            .await
        {
            Ok((temps, temp_bytes)) => {
                add(&mut report.temp_files_deleted, temps);
                add(&mut report.temp_bytes_reclaimed, temp_bytes);
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "could not remove partial writes; the next run retries");
                add(&mut report.blob_delete_failures, 1);
            }
        }
        let mut after = None;
        loop {
            let page = self.blobs.list(&ns, after, batch).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            let old: Vec<_> = page.iter().filter(|b| b.modified < old_before).collect();
            let ids: Vec<ChunkId> = old.iter().map(|b| b.id).collect();
            let recorded: HashSet<ChunkId> = self
                .repo
                .rows_of(ns, &ids)
                .await?
                .into_iter()
                .map(|r| r.0)
                .collect();
            let orphans: Vec<_> = old
                .into_iter()
                .filter(|b| !recorded.contains(&b.id))
                .collect();
            if dry_run {
                add(&mut report.orphan_blobs_deleted, orphans.len() as u64);
                add(
                    &mut report.orphan_bytes_reclaimed,
                    orphans.iter().map(|b| b.size).sum(),
                );
            } else if !orphans.is_empty() {
                let ids: Vec<ChunkId> = orphans.iter().map(|b| b.id).collect();
                let (deleted, failed) = self.delete_unrecorded_blobs(ns, &ids).await?;
                let deleted: HashSet<ChunkId> = deleted.into_iter().collect();
                add(&mut report.orphan_blobs_deleted, deleted.len() as u64);
                add(
                    &mut report.orphan_bytes_reclaimed,
                    orphans
                        .iter()
                        .filter(|b| deleted.contains(&b.id))
                        .map(|b| b.size)
                        .sum(),
                );
                add(&mut report.blob_delete_failures, failed);
            }
            progress.advance(page.len() as u64);
        }
    }

    /// Deletes the blobs of those `ids` that have no row, holding the namespace lock
    /// (so no upload can record one meanwhile). Returns the ids whose blob was
    /// deleted and the number of failed deletions (logged; retried by a later run).
    async fn delete_unrecorded_blobs(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<(Vec<ChunkId>, u64), GcError> {
        if ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let (lock, unrecorded) = self.repo.lock_unrecorded(ns, ids).await?;
        let results: Vec<(ChunkId, Result<bool, StoreError>)> =
            futures_util::stream::iter(unrecorded)
                .map(|id| async move { (id, self.blobs.delete(&ns, &id).await) })
                .buffer_unordered(DELETE_CONCURRENCY)
                .collect()
                .await;
        lock.release().await?;
        let mut deleted = Vec::with_capacity(results.len());
        let mut failed = 0;
        for (id, r) in results {
            match r {
                Ok(true) => deleted.push(id),
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(namespace = %ns, chunk = %id, error = %e, "deleting a blob failed; a later run retries it");
                }
            }
        }
        Ok((deleted, failed))
    }
}
