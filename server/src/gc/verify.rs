//! Read-only checks: `verify` (every row has its blob with the recorded size, every
//! referenced chunk has a row) and `stats`.

use std::collections::HashSet;
use std::time::Duration;

use fsync_common::{ChunkId, NamespaceId, PackId};
use serde::Serialize;

use super::{add, grace_secs, now_secs, Collector, GcError, Progress};

/// Most damaged chunks `verify` lists (it still counts them all).
const MAX_LISTED_DAMAGE: usize = 10_000;

/// Totals of [`Collector::stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Files (live and tombstoned).
    pub files: u64,
    /// Versions in history.
    pub versions: u64,
    /// Chunk rows.
    pub chunks: u64,
    /// Their stored (compressed, encrypted) bytes.
    pub stored_bytes: u64,
    /// Chunks some version references.
    pub referenced_chunks: u64,
    /// Their stored bytes.
    pub referenced_stored_bytes: u64,
    /// Plaintext bytes of every version in history (what storing each version whole
    /// would take).
    pub referenced_logical_bytes: u64,
    /// Plaintext bytes of the live files' heads.
    pub head_logical_bytes: u64,
    /// `referenced_logical_bytes / referenced_stored_bytes` (compression included).
    pub dedup_ratio: f64,
    /// Chunks no version references.
    pub unreferenced_chunks: u64,
    /// Their stored bytes.
    pub unreferenced_bytes: u64,
    /// Unreferenced chunks past the grace period: a sweep now would delete them.
    pub reclaimable_chunks: u64,
    /// Their stored bytes.
    pub reclaimable_bytes: u64,
    /// Pack files (live or retired, not yet deleted).
    pub packs: u64,
    /// Their bytes.
    pub pack_bytes: u64,
    /// Bytes of the packs that chunk rows point into (the rest: dead copies, retired
    /// packs and framing, which runs and repacks reclaim).
    pub pack_live_bytes: u64,
    /// `pack_live_bytes / pack_bytes` (0 without packs).
    pub pack_fill: f64,
    /// Chunks still stored as loose blobs of a store written before packs.
    pub loose_chunks: u64,
    /// Usage per account (stored bytes of the namespaces it owns, its quota, files and
    /// devices), by username; with `--namespace`, only its owner.
    pub users: Vec<crate::db::UserSummary>,
}

/// One damaged chunk found by [`Collector::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Damage {
    /// A version names a manifest page that is not stored.
    MissingPage {
        /// Namespace.
        namespace: NamespaceId,
        /// Page.
        page: fsync_common::PageId,
    },
    /// A version or a manifest page references a chunk that has no row.
    Unrecorded {
        /// Namespace.
        namespace: NamespaceId,
        /// Chunk.
        chunk: ChunkId,
    },
    /// A pack that chunk rows point into is not in the pack store.
    MissingPack {
        /// Namespace.
        namespace: NamespaceId,
        /// The pack.
        pack: PackId,
        /// Chunk rows pointing into it.
        chunks: u64,
    },
    /// A pack is not intact: torn, corrupted, or not the size recorded.
    CorruptPack {
        /// Namespace.
        namespace: NamespaceId,
        /// The pack.
        pack: PackId,
        /// What is wrong with it.
        reason: String,
    },
    /// A chunk row points into a pack whose trailer does not list it there.
    NotInPack {
        /// Namespace.
        namespace: NamespaceId,
        /// Chunk.
        chunk: ChunkId,
        /// The pack its row names.
        pack: PackId,
        /// Whether a version references it.
        referenced: bool,
    },
    /// A chunk row has no blob.
    MissingBlob {
        /// Namespace.
        namespace: NamespaceId,
        /// Chunk.
        chunk: ChunkId,
        /// Whether a version references it (else a client may still be told it is
        /// present and commit it).
        referenced: bool,
    },
    /// The blob's size differs from the recorded stored size.
    SizeMismatch {
        /// Namespace.
        namespace: NamespaceId,
        /// Chunk.
        chunk: ChunkId,
        /// Recorded size.
        recorded: u64,
        /// Size in the store.
        stored: u64,
    },
}

/// What [`Collector::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Chunk rows checked.
    pub chunks_checked: u64,
    /// Blobs listed in the store.
    pub blobs_checked: u64,
    /// Damage found (at most 10,000 listed; see `damage_count`).
    pub damage: Vec<Damage>,
    /// All damage found.
    pub damage_count: u64,
    /// Blobs no row names (harmless; the next run removes them after the grace period).
    pub orphan_blobs: u64,
    /// Packs read whole and checked.
    pub packs_checked: u64,
    /// Pack files no row names (harmless, like orphan blobs).
    pub orphan_packs: u64,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damage_count == 0
    }

    pub(super) fn push(&mut self, d: Damage) {
        self.damage_count += 1;
        if self.damage.len() < MAX_LISTED_DAMAGE {
            self.damage.push(d);
        }
    }
}

impl Collector {
    /// Checks that every chunk row has its blob with the recorded size, and that every
    /// chunk a version references has a row. Reads only.
    pub async fn verify(
        &self,
        namespace: Option<NamespaceId>,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, GcError> {
        let batch = batch.max(1);
        let mut report = VerifyReport::default();
        progress.stage("verifying", None);
        for ns in self.namespaces(namespace).await? {
            for page in self.repo.unrecorded_pages(ns, MAX_LISTED_DAMAGE).await? {
                report.push(Damage::MissingPage {
                    namespace: ns,
                    page,
                });
            }
            for chunk in self
                .repo
                .unrecorded_references(ns, MAX_LISTED_DAMAGE)
                .await?
            {
                report.push(Damage::Unrecorded {
                    namespace: ns,
                    chunk,
                });
            }
            self.verify_packs(ns, batch, &mut report).await?;
            // Every loose chunk's row has its blob.
            let mut after = None;
            loop {
                let rows = self.repo.chunk_page(ns, after, batch).await?;
                let Some(&(last, _, _)) = rows.last() else {
                    break;
                };
                after = Some(last);
                let ids: Vec<ChunkId> = rows.iter().map(|r| r.0).collect();
                let present = self.blobs.contains_many(&ns, &ids).await?;
                let missing: Vec<ChunkId> = ids
                    .iter()
                    .zip(&present)
                    .filter(|(_, p)| !**p)
                    .map(|(id, _)| *id)
                    .collect();
                if !missing.is_empty() {
                    // A collection running meanwhile may have deleted row and blob.
                    let still: HashSet<ChunkId> = self
                        .repo
                        .rows_of(ns, &missing)
                        .await?
                        .into_iter()
                        .map(|r| r.0)
                        .collect();
                    for (id, _, referenced) in rows.iter().filter(|r| still.contains(&r.0)) {
                        report.push(Damage::MissingBlob {
                            namespace: ns,
                            chunk: *id,
                            referenced: *referenced,
                        });
                    }
                }
                add(&mut report.chunks_checked, rows.len() as u64);
                progress.advance(rows.len() as u64);
            }
            // Every blob has its recorded size (and which blobs are orphans).
            let mut after = None;
            loop {
                let page = self.blobs.list(&ns, after, batch).await?;
                let Some(last) = page.last() else {
                    break;
                };
                after = Some(last.id);
                let ids: Vec<ChunkId> = page.iter().map(|b| b.id).collect();
                let rows: std::collections::HashMap<ChunkId, u64> =
                    self.repo.rows_of(ns, &ids).await?.into_iter().collect();
                for b in &page {
                    match rows.get(&b.id) {
                        None => report.orphan_blobs += 1,
                        Some(&recorded) if recorded != b.size => {
                            report.push(Damage::SizeMismatch {
                                namespace: ns,
                                chunk: b.id,
                                recorded,
                                stored: b.size,
                            });
                        }
                        Some(_) => {}
                    }
                }
                add(&mut report.blobs_checked, page.len() as u64);
            }
        }
        progress.finish();
        Ok(report)
    }

    /// Totals over one namespace or all; `grace` decides what counts as reclaimable.
    pub async fn stats(
        &self,
        namespace: Option<NamespaceId>,
        grace: Duration,
        now: Option<i64>,
    ) -> Result<Stats, GcError> {
        if let Some(ns) = namespace {
            self.namespaces(Some(ns)).await?;
        }
        let now = now.unwrap_or_else(now_secs);
        let r = self
            .repo
            .stats(namespace, now.saturating_sub(grace_secs(grace)))
            .await?;
        Ok(Stats {
            files: r.files,
            versions: r.versions,
            chunks: r.chunks,
            stored_bytes: r.stored_bytes,
            referenced_chunks: r.referenced_chunks,
            referenced_stored_bytes: r.referenced_stored_bytes,
            referenced_logical_bytes: r.logical_bytes,
            head_logical_bytes: r.head_logical_bytes,
            dedup_ratio: if r.referenced_stored_bytes == 0 {
                0.0
            } else {
                r.logical_bytes as f64 / r.referenced_stored_bytes as f64
            },
            unreferenced_chunks: r.unreferenced_chunks,
            unreferenced_bytes: r.unreferenced_bytes,
            reclaimable_chunks: r.reclaimable_chunks,
            reclaimable_bytes: r.reclaimable_bytes,
            packs: r.packs,
            pack_bytes: r.pack_bytes,
            pack_live_bytes: r.packed_live_bytes,
            pack_fill: if r.pack_bytes == 0 {
                0.0
            } else {
                r.packed_live_bytes as f64 / r.pack_bytes as f64
            },
            loose_chunks: r.loose_chunks,
            users: self.repo.users_owning(namespace).await?,
        })
    }
}
