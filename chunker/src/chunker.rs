//! [`Chunker`]: one namespace's chunking configuration and keys, and the sequential
//! entry points.

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization};
use fsync_common::IdKey;

use crate::config::ChunkerConfig;
use crate::digest::{ChunkInfo, FileDigest, HashOptions, WholeFileHasher};
use crate::error::ChunkerError;
use crate::keys::{chunk_id, content_key, gear_seed};
use crate::stream::{Chunk, Chunks};

/// Splits inputs into content-defined chunks for one namespace (`FastCDC` v2020,
/// normalization level 1, gear table seeded from the namespace's `id_key`) and hashes
/// them with keyed BLAKE3.
///
/// All entry points give the same boundaries and ids for the same bytes: streaming
/// ([`chunks`](Self::chunks), [`chunk_file`](Self::chunk_file),
/// [`digest_reader`](Self::digest_reader)), in memory ([`chunk_slice`](Self::chunk_slice))
/// and parallel (see the methods taking `_parallel` and
/// [`digest_files`](Self::digest_files)).
#[derive(Clone)]
pub struct Chunker {
    pub(crate) config: ChunkerConfig,
    pub(crate) id_key: IdKey,
    /// Gear seed derived from `id_key` (see the `keys` module).
    pub(crate) seed: u64,
    /// Key of the whole-file content hash, derived from `id_key`.
    pub(crate) content_key: [u8; 32],
}

impl Chunker {
    /// A chunker for the namespace whose id key is `id_key`. Fails if `config` is invalid.
    pub fn new(id_key: &IdKey, config: ChunkerConfig) -> Result<Self, ChunkerError> {
        config.validate()?;
        Ok(Self {
            config,
            id_key: id_key.clone(),
            seed: gear_seed(id_key),
            content_key: content_key(id_key),
        })
    }

    /// The chunk-size configuration.
    pub fn config(&self) -> ChunkerConfig {
        self.config
    }

    /// Streams the chunks of `reader`, with their data and ids. Memory stays bounded
    /// by about twice the `max` chunk size whatever the input size.
    pub fn chunks<R: Read>(&self, reader: R) -> Chunks<R> {
        Chunks::new(reader, self.config, self.seed, self.id_key.clone())
    }

    /// Streams the chunks of `reader` to `on_chunk`, in order, and returns the file's
    /// digest, computed in the same pass. Stops at the first error, from reading
    /// (converted into `E`) or from `on_chunk`.
    pub fn chunk_file<R, E, F>(
        &self,
        reader: R,
        opts: HashOptions,
        mut on_chunk: F,
    ) -> Result<FileDigest, E>
    where
        R: Read,
        E: From<ChunkerError>,
        F: FnMut(Chunk) -> Result<(), E>,
    {
        let mut whole = WholeFileHasher::new(&self.content_key, opts);
        let mut infos = Vec::new();
        for chunk in self.chunks(reader) {
            let chunk = chunk?;
            whole.update(&chunk.data);
            infos.push(chunk.info());
            on_chunk(chunk)?;
        }
        Ok(whole.finish(infos))
    }

    /// The digest of `reader`, keeping no chunk data.
    pub fn digest_reader<R: Read>(
        &self,
        reader: R,
        opts: HashOptions,
    ) -> Result<FileDigest, ChunkerError> {
        self.chunk_file(reader, opts, |_| Ok::<(), ChunkerError>(()))
    }

    /// The chunks of an in-memory buffer: the same boundaries and ids as streaming it.
    pub fn chunk_slice(&self, data: &[u8]) -> Vec<ChunkInfo> {
        self.boundaries(data)
            .map(|(offset, len)| self.info(data, offset, len))
            .collect()
    }

    /// `(offset, len)` of each chunk of `data`, from fastcdc's in-memory iterator.
    pub(crate) fn boundaries<'a>(
        &self,
        data: &'a [u8],
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        FastCDC::with_level_and_seed(
            data,
            self.config.min,
            self.config.avg,
            self.config.max,
            Normalization::Level1,
            self.seed,
        )
        .map(|c| (c.offset, c.length))
    }

    pub(crate) fn info(&self, data: &[u8], offset: usize, len: usize) -> ChunkInfo {
        ChunkInfo {
            offset: offset as u64,
            len: len as u32,
            id: chunk_id(&self.id_key, &data[offset..offset + len]),
        }
    }
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key, the derived content key and the seed stay out of logs.
        f.debug_struct("Chunker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
