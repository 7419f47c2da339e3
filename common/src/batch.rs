//! Framing of many blobs in one body (batch upload and batch download):
//! `magic "FSBT" | version u8 | repeated (chunk id [32] | length u32 BE | blob)`.

use crate::ids::ChunkId;

const MAGIC: &[u8; 4] = b"FSBT";
const VERSION: u8 = 1;

/// Why a batch body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Missing magic or unknown version.
    #[error("not a chunk batch (bad magic or version)")]
    BadHeader,
    /// An entry is cut short.
    #[error("chunk batch is truncated at byte {0}")]
    Truncated(usize),
    /// An entry is larger than allowed.
    #[error("chunk batch entry of {len} bytes exceeds the limit of {limit}")]
    EntryTooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        limit: usize,
    },
}

/// Writes the batch header into `out`.
pub fn encode_header(out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
}

/// Appends one entry.
pub fn encode_entry(out: &mut Vec<u8>, id: &ChunkId, blob: &[u8]) {
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&u32::try_from(blob.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(blob);
}

/// Encodes a whole batch.
pub fn encode<'a>(entries: impl IntoIterator<Item = (&'a ChunkId, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(&mut out);
    for (id, blob) in entries {
        encode_entry(&mut out, id, blob);
    }
    out
}

/// Length of the header [`encode_header`] writes.
pub const HEADER_LEN: usize = 5;
/// Length of an entry's header (chunk id and blob length) before its blob.
pub const ENTRY_HEADER_LEN: usize = 36;

/// A batch body built one entry at a time, so that an upload holds each blob once (in
/// the body) instead of as a blob and again as its copy in the request.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    body: Vec<u8>,
    entries: usize,
    blob_bytes: u64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchBuilder {
    /// An empty batch whose body has room for `capacity` bytes (reserved, not touched:
    /// the memory is used as entries are written).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        let mut body = Vec::with_capacity(capacity.max(HEADER_LEN));
        encode_header(&mut body);
        Self {
            body,
            entries: 0,
            blob_bytes: 0,
        }
    }

    /// Appends one entry.
    pub fn push(&mut self, id: &ChunkId, blob: &[u8]) {
        encode_entry(&mut self.body, id, blob);
        self.entries += 1;
        self.blob_bytes += blob.len() as u64;
    }

    /// Whether an entry of `blob_len` bytes may join without the body passing
    /// `max_body` bytes or `max_entries` entries (an empty batch takes any one entry).
    #[must_use]
    pub fn fits(&self, blob_len: usize, max_body: usize, max_entries: usize) -> bool {
        self.entries == 0
            || (self.body.len() + ENTRY_HEADER_LEN + blob_len <= max_body
                && self.entries < max_entries)
    }

    /// Entries so far.
    #[must_use]
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Whether it has no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The blobs' bytes (without the framing).
    #[must_use]
    pub fn blob_bytes(&self) -> u64 {
        self.blob_bytes
    }

    /// The encoded body.
    #[must_use]
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The encoded body, borrowed.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Decodes a batch, refusing any entry larger than `max_entry`.
pub fn decode(body: &[u8], max_entry: usize) -> Result<Vec<(ChunkId, &[u8])>, BatchError> {
    if body.len() < 5 || &body[..4] != MAGIC || body[4] != VERSION {
        return Err(BatchError::BadHeader);
    }
    let mut pos = 5;
    let mut out = Vec::new();
    while pos < body.len() {
        if body.len() - pos < 36 {
            return Err(BatchError::Truncated(pos));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&body[pos..pos + 32]);
        let len =
            u32::from_be_bytes(body[pos + 32..pos + 36].try_into().expect("4 bytes")) as usize;
        if len > max_entry {
            return Err(BatchError::EntryTooLarge {
                len,
                limit: max_entry,
            });
        }
        pos += 36;
        if body.len() - pos < len {
            return Err(BatchError::Truncated(pos));
        }
        out.push((ChunkId::from_bytes(id), &body[pos..pos + len]));
        pos += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(entries in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8)) {
            let ids: Vec<ChunkId> = entries.iter().map(|(i, _)| ChunkId::from_bytes(*i)).collect();
            let body = encode(ids.iter().zip(entries.iter().map(|(_, b)| b.as_slice())));
            let back = decode(&body, 64).unwrap();
            prop_assert_eq!(back.len(), entries.len());
            for ((id, blob), (raw, data)) in back.iter().zip(&entries) {
                prop_assert_eq!(id.as_bytes(), raw);
                prop_assert_eq!(*blob, data.as_slice());
            }
        }

        #[test]
        fn the_builder_encodes_what_encode_does(entries in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8)) {
            let ids: Vec<ChunkId> = entries.iter().map(|(i, _)| ChunkId::from_bytes(*i)).collect();
            let whole = encode(ids.iter().zip(entries.iter().map(|(_, b)| b.as_slice())));
            let mut built = BatchBuilder::with_capacity(16);
            for (id, (_, blob)) in ids.iter().zip(&entries) {
                built.push(id, blob);
            }
            prop_assert_eq!(built.entries(), entries.len());
            prop_assert_eq!(built.blob_bytes(), entries.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
            prop_assert_eq!(built.body(), whole.as_slice());
            // The next entry fits exactly when the body stays within the limits.
            let size = whole.len();
            prop_assert!(built.fits(10, size + ENTRY_HEADER_LEN + 10, entries.len() + 1));
            prop_assert_eq!(
                built.fits(10, size + ENTRY_HEADER_LEN + 9, entries.len() + 1),
                entries.is_empty()
            );
            prop_assert_eq!(built.fits(10, usize::MAX, entries.len()), entries.is_empty());
        }

        #[test]
        fn never_panics_on_garbage(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&body, 100);
        }
    }

    #[test]
    fn refuses_truncation_and_oversize() {
        let id = ChunkId::from_bytes([1; 32]);
        let body = encode([(&id, &b"hello"[..])]);
        assert_eq!(
            decode(&body[..body.len() - 1], 10),
            Err(BatchError::Truncated(41))
        );
        assert!(matches!(
            decode(&body, 4),
            Err(BatchError::EntryTooLarge { len: 5, .. })
        ));
        assert_eq!(decode(b"nope!", 10), Err(BatchError::BadHeader));
    }
}
