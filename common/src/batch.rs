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
