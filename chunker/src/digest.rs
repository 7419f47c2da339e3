//! Whole-file results: [`FileDigest`], [`ChunkInfo`], [`HashOptions`], and the
//! accumulator that computes them in the same pass as chunking.

use fsync_common::wire::ChunkRef;
use fsync_common::{ChunkId, ContentHash};
use sha2::{Digest, Sha256};

/// Which optional whole-file hashes to compute alongside the keyed content hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashOptions {
    /// Also compute the plain SHA-256 of the whole input. It is an unkeyed hash of
    /// plaintext: for local use only, never to be sent to the server.
    pub sha256: bool,
}

impl HashOptions {
    /// Options with SHA-256 enabled.
    pub const fn with_sha256() -> Self {
        Self { sha256: true }
    }
}

/// Position, length and id of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkInfo {
    /// Byte offset of the chunk in the input.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Keyed BLAKE3 of the chunk's plaintext.
    pub id: ChunkId,
}

impl From<ChunkInfo> for ChunkRef {
    fn from(c: ChunkInfo) -> Self {
        ChunkRef(c.id, c.len)
    }
}

/// Everything learned about an input in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Total size in bytes (the sum of the chunk lengths).
    pub size: u64,
    /// Keyed whole-file hash (see [`content_hash`](crate::content_hash)).
    pub content_hash: ContentHash,
    /// Plain SHA-256 of the input, if [`HashOptions::sha256`] was set.
    pub sha256: Option<[u8; 32]>,
    /// The chunks, in order.
    pub chunks: Vec<ChunkInfo>,
}

impl FileDigest {
    /// The manifest entries (`[id, len]`) of the chunks, in order.
    pub fn chunk_refs(&self) -> Vec<ChunkRef> {
        self.chunks.iter().map(|&c| c.into()).collect()
    }
}

/// Whole-file hashes, fed chunk by chunk in order.
pub(crate) struct WholeFileHasher {
    pub(crate) content: blake3::Hasher,
    pub(crate) sha256: Option<Sha256>,
}

impl WholeFileHasher {
    pub(crate) fn new(content_key: &[u8; 32], opts: HashOptions) -> Self {
        Self {
            content: blake3::Hasher::new_keyed(content_key),
            sha256: opts.sha256.then(Sha256::new),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.content.update(data);
        if let Some(sha) = &mut self.sha256 {
            sha.update(data);
        }
    }

    pub(crate) fn finish(self, chunks: Vec<ChunkInfo>) -> FileDigest {
        FileDigest {
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            content_hash: ContentHash::from_bytes(*self.content.finalize().as_bytes()),
            sha256: self.sha256.map(|s| s.finalize().into()),
            chunks,
        }
    }
}
