//! Repacking, online: the live blobs of packs that are mostly dead (or too small to be
//! worth their own file), and the loose blobs of a store written before packs, are
//! copied into new packs of about [`Repack::target_size`]; the new pack is written and
//! made durable first, then its chunk rows switch to it in one transaction under the
//! namespace lock (only rows that still point where their blob was read from), and
//! only then is the source retired. A retired pack stays for the grace period, so a
//! download that looked up the old location still reads it; a loose blob goes at
//! once, and a download that misses it looks its chunk up again (`domain/downloads`).
//!
//! # Why 80 %
//!
//! A pack is repacked when less than [`Repack::min_live`] = 0.8 of it is live. Copying
//! a pack costs its live bytes and reclaims its dead ones, so at 0.8 a repack writes at
//! most 4 bytes per byte it frees, and no pack keeps more than 20 % dead space past a
//! run. restic's default (`--max-unused 5%`) bounds the waste of the whole repository
//! tighter, at up to 19 bytes written per byte freed; our packs are per upload and
//! most die whole (a deleted file's chunks were uploaded together), which the sweep
//! removes without copying, so the looser bound costs little space.

use std::collections::HashSet;
use std::time::Instant;

use fsync_common::{ChunkId, NamespaceId, PackId};
use fsync_store::pack::{self, PackBuilder};

use super::{add, now_secs, Collector, GcError, RunReport};
use crate::db::gc::RetentionSql;
use crate::db::NewPack;

/// How a run repacks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Repack {
    /// Repack a pack whose live bytes are under this fraction of its size.
    pub min_live: f64,
    /// Size of the packs a repack writes; packs under a quarter of it are combined.
    pub target_size: u64,
    /// Move the loose blobs of an older store into packs.
    pub pack_loose: bool,
}

impl Default for Repack {
    fn default() -> Self {
        Self {
            min_live: 0.8,
            target_size: 32 * 1024 * 1024,
            pack_loose: true,
        }
    }
}

/// Blobs read for a new pack: where each was read from, and the packs it empties.
struct Pending {
    builder: PackBuilder,
    from: Vec<Option<PackId>>,
    retire: Vec<PackId>,
    loose: Vec<ChunkId>,
}

impl Pending {
    fn new(target: u64) -> Self {
        Self {
            builder: PackBuilder::with_capacity(usize::try_from(target).unwrap_or(0)),
            from: Vec::new(),
            retire: Vec::new(),
            loose: Vec::new(),
        }
    }
}

impl Collector {
    /// Repacks the packs of `ns` that [`Repack`] selects, then packs its loose blobs.
    /// With `predict` (a dry run with that policy), only counts what a run would do,
    /// as if its sweep (at `cutoff`) had run.
    pub(super) async fn repack(
        &self,
        ns: NamespaceId,
        opts: &Repack,
        (cutoff, predict): (i64, Option<RetentionSql>),
        batch: usize,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        let started = Instant::now();
        let small = opts.target_size / 4;
        let mut candidates = self
            .repo
            .repack_candidates(ns, opts.min_live, small, cutoff, predict)
            .await?;
        // A lone small pack that is live enough gains nothing from a copy.
        if let [c] = candidates[..] {
            if !c.mostly_dead {
                candidates.clear();
            }
        }
        if predict.is_some() {
            for c in &candidates {
                add(&mut report.packs_repacked, 1);
                add(&mut report.repacked_bytes, c.live);
                add(
                    &mut report.pack_bytes_reclaimed,
                    c.size.saturating_sub(c.live),
                );
            }
            if opts.pack_loose {
                let loose = self.repo.count_loose(ns, cutoff, predict).await?;
                add(&mut report.loose_blobs_packed, loose);
            }
            return Ok(());
        }
        let mut pending = Pending::new(opts.target_size);
        for c in candidates {
            let (id, size) = (c.id, c.size);
            let rows = self.repo.chunks_in_pack(ns, id).await?;
            let bytes = match self.packs.read_all(&ns, &id).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(namespace = %ns, pack = %id, error = %e, "cannot read a pack to repack it; skipped (fsync-gc verify reports it)");
                    continue;
                }
            };
            if let Err(e) = pack::verify(&bytes) {
                tracing::warn!(namespace = %ns, pack = %id, error = %e, "a pack to repack is damaged; skipped (fsync-gc verify reports it)");
                continue;
            }
            let live: u64 = rows.iter().map(|r| r.2).sum();
            if !pending.builder.is_empty() && pending.builder.len() as u64 + live > opts.target_size
            {
                self.flush(ns, &mut pending, opts.target_size, report)
                    .await?;
            }
            for (chunk, offset, len, _) in rows {
                let Some(blob) = usize::try_from(offset)
                    .ok()
                    .and_then(|o| bytes.get(o..o + len as usize))
                else {
                    continue;
                };
                pending.builder.push(chunk, blob);
                pending.from.push(Some(id));
            }
            pending.retire.push(id);
            add(&mut report.packs_repacked, 1);
            add(&mut report.pack_bytes_reclaimed, size.saturating_sub(live));
        }
        if opts.pack_loose {
            self.pack_loose(ns, &mut pending, opts.target_size, batch, report)
                .await?;
        }
        self.flush(ns, &mut pending, opts.target_size, report)
            .await?;
        report.repack_ms = report
            .repack_ms
            .saturating_add(started.elapsed().as_millis().try_into().unwrap_or(u64::MAX));
        Ok(())
    }

    /// Adds the loose blobs of `ns` to `pending`, flushing full packs.
    async fn pack_loose(
        &self,
        ns: NamespaceId,
        pending: &mut Pending,
        target: u64,
        batch: usize,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        let mut after = None;
        let mut seen = HashSet::new();
        loop {
            let rows = self.repo.chunk_page(ns, after, batch).await?;
            let Some(&(last, _, _)) = rows.last() else {
                return Ok(());
            };
            after = Some(last);
            for (id, _, _) in rows {
                if !seen.insert(id) {
                    continue;
                }
                let Some(blob) = self.blobs.get(&ns, &id).await? else {
                    // Damage `verify` reports; nothing to move.
                    continue;
                };
                if pending.builder.len() as u64 + blob.len() as u64 > target {
                    self.flush(ns, pending, target, report).await?;
                }
                pending.builder.push(id, &blob);
                pending.from.push(None);
                pending.loose.push(id);
                add(&mut report.loose_blobs_packed, 1);
            }
        }
    }

    /// Writes the pending pack, switches its rows, retires its sources, and deletes
    /// the loose blobs it took in.
    async fn flush(
        &self,
        ns: NamespaceId,
        pending: &mut Pending,
        target: u64,
        report: &mut RunReport,
    ) -> Result<(), GcError> {
        let done = std::mem::replace(pending, Pending::new(target));
        if done.builder.is_empty() {
            return Ok(());
        }
        let (bytes, entries) = done.builder.finish();
        let new = NewPack {
            id: PackId::from_bytes(rand::random()),
            size: bytes.len() as u64,
            entries,
        };
        add(
            &mut report.repacked_bytes,
            new.entries.iter().map(|e| u64::from(e.len)).sum(),
        );
        self.packs.put(&ns, &new.id, bytes).await?;
        fsync_common::failpoint::hit("gc.repack.before_switch")
            .map_err(|e| fsync_store::StoreError::Backend(e.to_string()))?;
        self.repo
            .switch_to_pack(ns, &new, &done.from, &done.retire, now_secs())
            .await?;
        for id in &done.loose {
            if let Err(e) = self.blobs.delete(&ns, id).await {
                tracing::warn!(namespace = %ns, chunk = %id, error = %e, "a packed loose blob could not be deleted; an orphan pass removes it");
            }
        }
        Ok(())
    }
}
