//! Content-defined chunking for fsync: `FastCDC` v2020 over any [`Read`](std::io::Read),
//! keyed BLAKE3 chunk ids, and whole-file hashes computed in the same pass.
//!
//! A [`Chunker`] belongs to one namespace. Its namespace [`IdKey`](fsync_common::IdKey)
//! keys every hash and seeds fastcdc's gear table, so both chunk ids and chunk
//! boundaries (which the server sees as chunk sizes) differ between namespaces:
//!
//! - chunk id = `blake3::keyed_hash(id_key, chunk)` ([`chunk_id`]);
//! - content hash = keyed BLAKE3 of the whole input under
//!   `blake3::derive_key("fsync 2026-01 chunker file content hash key v1", id_key)`
//!   ([`content_hash`]), so a one-chunk file's content hash differs from its chunk id;
//! - gear seed = first 8 bytes, little-endian, of
//!   `blake3::derive_key("fsync 2026-01 chunker fastcdc gear seed v1", id_key)`.
//!   The derivation is one-way: the seed, which fastcdc merely XORs into the gear
//!   table and which chunk sizes may therefore reveal, says nothing about `id_key`.
//!
//! Streaming keeps memory bounded by a small multiple of the maximum chunk size,
//! whatever the input size. In-memory and parallel variants give identical results.
//!
//! ```
//! use fsync_chunker::{Chunker, ChunkerConfig, HashOptions};
//! use fsync_common::IdKey;
//!
//! let chunker = Chunker::new(&IdKey::from_bytes([7; 32]), ChunkerConfig::default())?;
//! let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
//!
//! // Stream from any reader: chunks come with their data and keyed ids.
//! let mut rebuilt = Vec::new();
//! let digest = chunker.chunk_file(&data[..], HashOptions::default(), |chunk| {
//!     rebuilt.extend_from_slice(&chunk.data);
//!     Ok::<_, fsync_chunker::ChunkerError>(())
//! })?;
//! assert_eq!(rebuilt, data);
//! assert_eq!(digest.size, data.len() as u64);
//!
//! // The in-memory and parallel paths agree with streaming.
//! assert_eq!(chunker.chunk_slice(&data), digest.chunks);
//! assert_eq!(chunker.chunk_slice_parallel(&data), digest.chunks);
//! # Ok::<(), fsync_chunker::ChunkerError>(())
//! ```

mod chunker;
mod config;
mod digest;
mod error;
mod incremental;
mod keys;
mod parallel;
mod stream;

pub use chunker::Chunker;
pub use config::ChunkerConfig;
pub use digest::{ChunkInfo, FileDigest, HashOptions};
pub use error::ChunkerError;
pub use incremental::ReadAt;
pub use keys::{chunk_id, content_hash, ContentHasher};
pub use stream::{Chunk, Chunks};
