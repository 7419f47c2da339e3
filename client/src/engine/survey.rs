//! The first half of a round: the remote changes since the cursor, the local tree
//! (hashing only what changed since the base), and the plan.

use std::collections::{BTreeMap, HashMap};

use fsync_chunker::{FileDigest, HashOptions};
use fsync_common::wire::FileMeta;
use fsync_common::{ChunkId, FileId, Seq, SyncPath};

use super::lanes::LANE_BYTES;
use super::{Engine, Found, LocalReader, Round, RoundReport, SyncError, PARALLEL_HASH_BYTES};
use crate::planner::{plan, LocalEntry, PlanInput};
use crate::scan::LocalFile;
use crate::state::BaseEntry;

impl Engine {
    /// Pulls, scans and plans.
    pub(super) async fn survey(&mut self) -> Result<Round, SyncError> {
        let mut report = RoundReport::default();
        // 1. Remote changes since the cursor, latest state per file.
        let since = self.state.cursor()?;
        let (remote, cursor) = self.pull(since).await?;
        // 2. Local tree, hashing only what changed since the base.
        let base = self.state.all()?;
        let (local, digests) = self.scan_local(&base, &mut report).await?;
        // 3. Plan.
        let plan = plan(PlanInput {
            base: &base,
            local: &local,
            remote: &remote,
        });
        if !plan.is_empty() {
            tracing::debug!(ops = plan.len(), "planned");
        }
        Ok(Round {
            plan,
            since,
            cursor,
            base,
            local,
            remote,
            digests,
            report,
        })
    }

    /// Reads the journal from `since` to its end.
    async fn pull(&self, since: Seq) -> Result<(Vec<FileMeta>, Seq), SyncError> {
        let mut latest: BTreeMap<FileId, FileMeta> = BTreeMap::new();
        let mut cursor = since;
        loop {
            let page = self.remote.changes(self.keys.ns, cursor, 1000).await?;
            for c in page.changes {
                latest.insert(c.file.file_id, c.file);
            }
            cursor = page.cursor.max(cursor);
            if !page.has_more {
                break;
            }
        }
        let mut remote: Vec<FileMeta> = latest.into_values().collect();
        remote.sort_by_key(|m| m.seq);
        Ok((remote, cursor))
    }

    /// Scans the root; hashes (in parallel) files whose stat differs from their base.
    /// A file that changes while being hashed is left for the next round.
    async fn scan_local(
        &mut self,
        base: &BTreeMap<SyncPath, BaseEntry>,
        report: &mut RoundReport,
    ) -> Result<
        (
            BTreeMap<SyncPath, LocalEntry>,
            HashMap<SyncPath, FileDigest>,
        ),
        SyncError,
    > {
        let fs = self.fs.clone();
        let scan = tokio::task::spawn_blocking(move || fs.scan())
            .await
            .expect("scan task")?;
        // Each entry that cannot be synced is said once at INFO (again only after it
        // was fixed and came back), not every round.
        let skipped: std::collections::HashSet<_> =
            scan.skipped.iter().map(|(p, _)| p.clone()).collect();
        for (p, why) in &scan.skipped {
            if self.reported_skips.contains(p) {
                tracing::debug!(path = %p.display(), reason = %why, "not synced");
            } else {
                tracing::info!(path = %p.display(), reason = %why, "not synced");
            }
        }
        self.reported_skips = skipped;
        let mut local = BTreeMap::new();
        let mut to_hash = Vec::new();
        let mut digests = HashMap::new();
        // Big files not yet synced (in a background lane, say) keep their digest while
        // their stat stays.
        let mut kept = HashMap::new();
        for (path, f) in scan.files {
            let synced = base.get(&path).filter(|b| b.same_stat(&f));
            if synced.is_none() && self.lanes.enabled {
                if let Some(d) = self.lanes.digest(&path, &f) {
                    let hash = d.content_hash;
                    kept.insert(path.clone(), (f.clone(), d.clone()));
                    digests.insert(path.clone(), d);
                    local.insert(path, LocalEntry { file: f, hash });
                    continue;
                }
            }
            match base.get(&path) {
                Some(b) if b.same_stat(&f) => {
                    local.insert(
                        path,
                        LocalEntry {
                            file: f,
                            hash: b.content_hash,
                        },
                    );
                }
                // A file edited since it was synced is checked against its synced chunk
                // list, which leaves only the chunks around the edit to cut.
                Some(b) if b.chunks.len() > 1 => {
                    let chunks = b.chunks.iter().map(|c| (c.id(), c.len())).collect();
                    to_hash.push((f, Some(chunks)));
                }
                _ => to_hash.push((f, None)),
            }
        }
        let chunker = self.keys.chunker.clone();
        let fs = self.fs.clone();
        let bar = crate::progress::bytes(
            "hashing changed files",
            to_hash.iter().map(|(f, _)| f.size).sum(),
        );
        let hashed = tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            let out = to_hash
                .into_par_iter()
                .map(|(f, synced): (LocalFile, Option<Vec<(ChunkId, u32)>>)| {
                    bar.inc(f.size);
                    let opts = HashOptions::default();
                    let digest = fs
                        .open(&f.path)
                        .map_err(|e| e.to_string())
                        .and_then(|file| {
                            match &synced {
                                Some(base) => {
                                    chunker.digest_against(&Positional(&*file), f.size, base, opts)
                                }
                                // A large file alone would leave the other cores idle.
                                None if f.size >= PARALLEL_HASH_BYTES => {
                                    chunker.digest_reader_parallel(file, opts)
                                }
                                None => chunker.digest_reader(file, opts),
                            }
                            .map_err(|e| e.to_string())
                        });
                    // Stable only if the stat did not move while we read it.
                    let after = fs.stat(&f.path);
                    (f, digest, after)
                })
                .collect::<Vec<_>>();
            bar.finish_and_clear();
            out
        })
        .await
        .expect("hash task");
        for (f, digest, after) in hashed {
            match (digest, after) {
                (Ok(d), Ok(Found::File(after))) if after == f && d.size == f.size => {
                    if self.lanes.enabled && f.size >= LANE_BYTES {
                        kept.insert(f.path.clone(), (f.clone(), d.clone()));
                    }
                    local.insert(
                        f.path.clone(),
                        LocalEntry {
                            file: f.clone(),
                            hash: d.content_hash,
                        },
                    );
                    digests.insert(f.path, d);
                }
                (Ok(_), Ok(Found::File(_) | Found::Other)) => report
                    .deferred
                    .push((f.path.to_string(), "still being written".into())),
                (Err(e), _) => report
                    .deferred
                    .push((f.path.to_string(), format!("cannot read: {e}"))),
                (_, Ok(Found::Nothing) | Err(_)) => {} // vanished while hashing: the next round sees it gone
            }
        }
        if self.lanes.enabled {
            self.lanes.keep_digests(kept);
        }
        Ok((local, digests))
    }
}

/// A local file as the chunker's positional input.
struct Positional<'a>(&'a dyn LocalReader);

impl fsync_chunker::ReadAt for Positional<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}
