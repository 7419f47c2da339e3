//! Parallel entry points (rayon): many files at once, one buffer's chunks at once, and
//! one large stream hashed in batches.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use fsync_common::ChunkId;
use rayon::prelude::*;

use crate::chunker::Chunker;
use crate::digest::{ChunkInfo, FileDigest, HashOptions, WholeFileHasher};
use crate::error::ChunkerError;
use crate::keys::chunk_id;
use crate::stream::{Chunk, RawChunks};

/// Most chunks in one batch of the streaming parallel path.
const BATCH_CHUNKS: usize = 64;
/// A batch stops growing once it holds this many bytes (16 MiB).
const BATCH_BYTES: usize = 16 << 20;

type Batch = Vec<(u64, Vec<u8>)>;

impl Chunker {
    /// Digests of many files, files in parallel (each file streams sequentially).
    /// The result at index `i` belongs to `paths[i]`. Memory: one `max`-sized buffer
    /// per rayon worker.
    pub fn digest_files<P>(
        &self,
        paths: &[P],
        opts: HashOptions,
    ) -> Vec<Result<FileDigest, ChunkerError>>
    where
        P: AsRef<Path> + Sync,
    {
        paths
            .par_iter()
            .map(|path| {
                let file = File::open(path)?;
                self.digest_reader(file, opts)
            })
            .collect()
    }

    /// Same result as [`chunk_slice`](Self::chunk_slice): boundaries are found first
    /// (cheap, sequential), then the chunks are hashed in parallel.
    pub fn chunk_slice_parallel(&self, data: &[u8]) -> Vec<ChunkInfo> {
        let bounds: Vec<(usize, usize)> = self.boundaries(data).collect();
        bounds
            .into_par_iter()
            .map(|(offset, len)| self.info(data, offset, len))
            .collect()
    }

    /// Same result as [`chunk_file`](Self::chunk_file), faster on a large input:
    /// chunks are cut in batches (up to 64 chunks or 16 MiB), each batch's chunk ids
    /// and whole-file hashes are computed in parallel while the next batch is read and
    /// cut. `on_chunk` still sees every chunk in order, on the calling thread.
    ///
    /// Memory: two batches, at most about 2 × (16 MiB + `max`). On a read error,
    /// `on_chunk` has already received the chunks before the failing batch.
    pub fn chunk_file_parallel<R, E, F>(
        &self,
        reader: R,
        opts: HashOptions,
        mut on_chunk: F,
    ) -> Result<FileDigest, E>
    where
        R: Read + Send,
        E: From<ChunkerError>,
        F: FnMut(Chunk) -> Result<(), E>,
    {
        let mut raw = RawChunks::new(reader, self.config, self.seed);
        let mut whole = WholeFileHasher::new(&self.content_key, opts);
        let mut infos = Vec::new();
        let mut current = next_batch(&mut raw)?;
        while !current.is_empty() {
            let (next, ids) = rayon::join(
                || next_batch(&mut raw),
                || self.hash_batch(&current, &mut whole),
            );
            for ((offset, data), id) in current.into_iter().zip(ids) {
                let chunk = Chunk { offset, data, id };
                infos.push(chunk.info());
                on_chunk(chunk)?;
            }
            current = next?;
        }
        Ok(whole.finish(infos))
    }

    /// Same result as [`digest_reader`](Self::digest_reader), computed like
    /// [`chunk_file_parallel`](Self::chunk_file_parallel).
    pub fn digest_reader_parallel<R: Read + Send>(
        &self,
        reader: R,
        opts: HashOptions,
    ) -> Result<FileDigest, ChunkerError> {
        self.chunk_file_parallel(reader, opts, |_| Ok::<(), ChunkerError>(()))
    }

    /// Chunk ids of a batch (in parallel), while the whole-file hashes (keyed BLAKE3
    /// and, if enabled, SHA-256) absorb the batch in order on two other tasks.
    fn hash_batch(&self, batch: &[(u64, Vec<u8>)], whole: &mut WholeFileHasher) -> Vec<ChunkId> {
        let WholeFileHasher { content, sha256 } = whole;
        let (ids, ((), ())) = rayon::join(
            || {
                batch
                    .par_iter()
                    .map(|(_, data)| chunk_id(&self.id_key, data))
                    .collect()
            },
            || {
                rayon::join(
                    || {
                        for (_, data) in batch {
                            content.update(data);
                        }
                    },
                    || {
                        if let Some(sha) = sha256 {
                            for (_, data) in batch {
                                sha2::Digest::update(sha, data);
                            }
                        }
                    },
                )
            },
        );
        ids
    }
}

/// The next batch of raw chunks; empty at end of input.
fn next_batch<R: Read>(raw: &mut RawChunks<R>) -> Result<Batch, ChunkerError> {
    let mut batch = Vec::with_capacity(BATCH_CHUNKS);
    let mut bytes = 0;
    while batch.len() < BATCH_CHUNKS && bytes < BATCH_BYTES {
        let Some(chunk) = raw.next() else { break };
        let chunk = chunk?;
        bytes += chunk.1.len();
        batch.push(chunk);
    }
    Ok(batch)
}
