//! Downloads: find where each recorded chunk's blob lies and read it, one ranged read
//! per chunk, or per run of neighbouring chunks of one pack in a batch. A pack that
//! vanished between the lookup and the read (a repack moved its blobs and the grace
//! period ran out) is looked up once more, so a reader never sees the move.

use std::collections::{HashMap, HashSet};

use fsync_common::{ChunkId, NamespaceId, PackId};
use fsync_store::StoreError;

use crate::db::{BlobLocation, DbError};
use crate::state::AppState;

/// Two blobs of one pack at most this far apart are read with one request (the bytes
/// between are read and dropped): on a disk or an object store one larger read costs
/// less than two small ones.
const COALESCE_GAP: u64 = 256 * 1024;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A chunk is recorded but its blob is not where its row says: damage for
    /// `fsync-gc verify` to report.
    #[error("chunk {0} is recorded but its blob is missing")]
    BlobMissing(ChunkId),
}

/// The blob of chunk `id` of `ns`; `None` if the chunk is not recorded.
pub(crate) async fn read_one(
    state: &AppState,
    ns: NamespaceId,
    id: ChunkId,
) -> Result<Option<Vec<u8>>, DownloadError> {
    Ok(read_many(state, ns, &[id], usize::MAX, 0)
        .await?
        .pop()
        .map(|(_, b)| b))
}

/// The blobs of the recorded chunks among `ids`, in the order asked, each once; stops
/// before the one that would take the total past `budget` bytes, counting `per_blob`
/// more for each (a response's framing); at least one is always given. Ids that are
/// not recorded are left out.
pub(crate) async fn read_many(
    state: &AppState,
    ns: NamespaceId,
    ids: &[ChunkId],
    budget: usize,
    per_blob: usize,
) -> Result<Vec<(ChunkId, Vec<u8>)>, DownloadError> {
    let mut out = Vec::new();
    for attempt in 0..2 {
        let located = state.repo.locate_chunks(ns, ids).await?;
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        let mut total = 0usize;
        for id in ids {
            let Some(loc) = located.get(id) else { continue };
            if !seen.insert(*id) {
                continue;
            }
            let len = per_blob.saturating_add(match *loc {
                BlobLocation::Packed { len, .. } => len as usize,
                BlobLocation::Loose { size } => usize::try_from(size).unwrap_or(usize::MAX),
            });
            if !wanted.is_empty() && total.saturating_add(len) > budget {
                break;
            }
            total = total.saturating_add(len);
            wanted.push((*id, *loc));
        }
        match read_located(state, ns, &wanted).await {
            Ok(blobs) => {
                out = blobs;
                break;
            }
            // Moved by a repack or the packing of loose blobs after the lookup: look
            // up again, once; a second miss is damage.
            Err(Moved(_)) if attempt == 0 => {}
            Err(Moved(id)) => return Err(DownloadError::BlobMissing(id)),
            Err(Failed(e)) => return Err(e),
        }
    }
    Ok(out)
}

/// Why [`read_located`] gave no answer.
enum ReadFailure {
    /// A blob is not where its row said (it may have moved meanwhile).
    Moved(ChunkId),
    /// Anything else.
    Failed(DownloadError),
}
use ReadFailure::{Failed, Moved};

/// Reads `wanted` (in its order), coalescing neighbouring blobs of one pack.
async fn read_located(
    state: &AppState,
    ns: NamespaceId,
    wanted: &[(ChunkId, BlobLocation)],
) -> Result<Vec<(ChunkId, Vec<u8>)>, ReadFailure> {
    let mut by_pack: HashMap<PackId, Vec<(u64, u32)>> = HashMap::new();
    for (_, loc) in wanted {
        if let BlobLocation::Packed { pack, offset, len } = *loc {
            by_pack.entry(pack).or_default().push((offset, len));
        }
    }
    // (pack, offset) → blob bytes.
    let mut got: HashMap<(PackId, u64), Vec<u8>> = HashMap::new();
    for (pack, mut spans) in by_pack {
        spans.sort_unstable_by_key(|s| s.0);
        for run in runs(&spans) {
            let start = run[0].0;
            let end = run
                .iter()
                .map(|(o, l)| o + u64::from(*l))
                .max()
                .unwrap_or(start);
            let bytes = match state.packs.read(&ns, &pack, start..end).await {
                Ok(b) => b,
                Err(StoreError::PackNotFound { .. }) => {
                    let first = wanted.iter().find(
                        |(_, l)| matches!(l, BlobLocation::Packed { pack: p, .. } if *p == pack),
                    );
                    return Err(Moved(first.map_or(ChunkId::from_bytes([0; 32]), |w| w.0)));
                }
                Err(e) => return Err(Failed(e.into())),
            };
            for (offset, len) in run {
                let at = (offset - start) as usize;
                got.insert((pack, *offset), bytes[at..at + *len as usize].to_vec());
            }
        }
    }
    let mut out = Vec::with_capacity(wanted.len());
    for (id, loc) in wanted {
        let blob = match *loc {
            BlobLocation::Packed { pack, offset, .. } => got.remove(&(pack, offset)),
            BlobLocation::Loose { .. } => state
                .blobs
                .get(&ns, id)
                .await
                .map_err(|e| Failed(e.into()))?,
        };
        out.push((*id, blob.ok_or(Moved(*id))?));
    }
    Ok(out)
}

/// `spans` (sorted by offset) cut into runs whose gaps are at most [`COALESCE_GAP`].
fn runs(spans: &[(u64, u32)]) -> Vec<&[(u64, u32)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=spans.len() {
        let split = i == spans.len() || {
            let (o, l) = spans[i - 1];
            spans[i].0 > o + u64::from(l) + COALESCE_GAP
        };
        if split {
            out.push(&spans[start..i]);
            start = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_read_together_and_far_ones_apart() {
        let far = 8 + 100 + COALESCE_GAP + 1;
        let spans = [(8, 100), (108, 50), (400, 10), (far + 400, 10)];
        let r = runs(&spans);
        assert_eq!(r, vec![&spans[..3], &spans[3..]]);
        assert!(runs(&[]).is_empty());
    }
}
