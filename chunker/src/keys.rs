//! Everything derived from the namespace `id_key`: chunk ids, the whole-file content
//! hash key and the gear seed.
//!
//! - chunk id = `blake3::keyed_hash(id_key, chunk)`;
//! - content hash = `blake3::keyed_hash(derive_key(CONTENT_HASH_CONTEXT, id_key), file)`,
//!   so a one-chunk file's content hash differs from its chunk id;
//! - gear seed = first 8 bytes (little-endian) of `derive_key(GEAR_SEED_CONTEXT, id_key)`.
//!
//! BLAKE3's `derive_key` is a one-way KDF: neither the content key nor the seed reveals
//! anything about `id_key`. That matters for the seed in particular: fastcdc XORs it
//! into every gear-table entry, and an observer who sees chunk sizes of chosen inputs
//! may be able to recover it; recovering it must not help against `id_key`.

use fsync_common::{ChunkId, ContentHash, IdKey};

/// BLAKE3 `derive_key` context for the whole-file content hash key. Changing it changes
/// every content hash.
pub(crate) const CONTENT_HASH_CONTEXT: &str = "fsync 2026-01 chunker file content hash key v1";
/// BLAKE3 `derive_key` context for the gear seed. Changing it changes every chunk
/// boundary, and so defeats dedup against existing data.
pub(crate) const GEAR_SEED_CONTEXT: &str = "fsync 2026-01 chunker fastcdc gear seed v1";

/// The keyed BLAKE3 chunk id of `data` under the namespace's `id_key`.
pub fn chunk_id(id_key: &IdKey, data: &[u8]) -> ChunkId {
    ChunkId::from_bytes(*blake3::keyed_hash(id_key.as_bytes(), data).as_bytes())
}

/// The keyed whole-file content hash of `data` under the namespace's `id_key`: what
/// [`Chunker::digest_reader`](crate::Chunker::digest_reader) computes while streaming.
pub fn content_hash(id_key: &IdKey, data: &[u8]) -> ContentHash {
    let mut hasher = blake3::Hasher::new_keyed(&content_key(id_key));
    hasher.update(data);
    ContentHash::from_bytes(*hasher.finalize().as_bytes())
}

/// [`content_hash`] over data that arrives in pieces (a file written chunk by chunk):
/// the pieces' concatenation hashes as [`content_hash`] of the whole would.
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    /// A hasher for the namespace's `id_key`.
    pub fn new(id_key: &IdKey) -> Self {
        Self(blake3::Hasher::new_keyed(&content_key(id_key)))
    }

    /// Absorbs the next piece.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The content hash of everything absorbed.
    pub fn finalize(&self) -> ContentHash {
        ContentHash::from_bytes(*self.0.finalize().as_bytes())
    }
}

/// The key of the whole-file content hash.
pub(crate) fn content_key(id_key: &IdKey) -> [u8; 32] {
    blake3::derive_key(CONTENT_HASH_CONTEXT, id_key.as_bytes())
}

/// The fastcdc gear seed. (A seed of 0 would mean "unseeded" to fastcdc; a derived
/// seed is 0 with probability 2^-64.)
pub(crate) fn gear_seed(id_key: &IdKey) -> u64 {
    let derived = blake3::derive_key(GEAR_SEED_CONTEXT, id_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&derived[..8]);
    u64::from_le_bytes(first)
}
