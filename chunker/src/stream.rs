//! Streaming chunking over any `Read`: the [`Chunks`] iterator.

use std::io::{self, Read};
use std::iter::FusedIterator;

use fastcdc::v2020::{Normalization, StreamCDC};
use fsync_common::{ChunkId, IdKey};

use crate::config::ChunkerConfig;
use crate::digest::ChunkInfo;
use crate::error::ChunkerError;
use crate::keys::chunk_id;

/// One chunk of an input, with its plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the chunk in the input.
    pub offset: u64,
    /// The chunk's plaintext (at most the configured `max` bytes).
    pub data: Vec<u8>,
    /// Keyed BLAKE3 of `data` under the namespace's `id_key`.
    pub id: ChunkId,
}

impl Chunk {
    /// Length of the chunk in bytes (a chunk never exceeds `MAX_CHUNK_PLAINTEXT`).
    pub fn len(&self) -> u32 {
        self.data.len() as u32
    }

    /// Always false: the chunker never yields an empty chunk.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Offset, length and id, without the data.
    pub fn info(&self) -> ChunkInfo {
        ChunkInfo {
            offset: self.offset,
            len: self.len(),
            id: self.id,
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Plaintext stays out of logs.
        f.debug_struct("Chunk")
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .field("id", &self.id)
            .finish()
    }
}

/// A reader that retries `ErrorKind::Interrupted`, which fastcdc's `StreamCDC`
/// would otherwise report as a failure.
struct RetryInterrupted<R>(R);

impl<R: Read> Read for RetryInterrupted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

/// Chunk boundaries and data without ids: fastcdc's `StreamCDC`, fused after the
/// first error. Holds one buffer of `max` bytes.
pub(crate) struct RawChunks<R: Read> {
    inner: StreamCDC<RetryInterrupted<R>>,
    done: bool,
}

impl<R: Read> RawChunks<R> {
    pub(crate) fn new(reader: R, config: ChunkerConfig, seed: u64) -> Self {
        Self {
            inner: StreamCDC::with_level_and_seed(
                RetryInterrupted(reader),
                config.min,
                config.avg,
                config.max,
                Normalization::Level1,
                seed,
            ),
            done: false,
        }
    }
}

impl<R: Read> Iterator for RawChunks<R> {
    /// `(offset, data)`.
    type Item = Result<(u64, Vec<u8>), ChunkerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.inner.next() {
            None => {
                self.done = true;
                None
            }
            Some(Ok(c)) => Some(Ok((c.offset, c.data))),
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e.into()))
            }
        }
    }
}

impl<R: Read> FusedIterator for RawChunks<R> {}

/// Iterator over the chunks of a reader, from [`Chunker::chunks`](crate::Chunker::chunks).
///
/// Memory is bounded by about twice the configured `max` chunk size (fastcdc's read
/// buffer plus the chunk being yielded), whatever the input size. After an error the
/// iterator ends.
pub struct Chunks<R: Read> {
    raw: RawChunks<R>,
    id_key: IdKey,
}

impl<R: Read> Chunks<R> {
    pub(crate) fn new(reader: R, config: ChunkerConfig, seed: u64, id_key: IdKey) -> Self {
        Self {
            raw: RawChunks::new(reader, config, seed),
            id_key,
        }
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = Result<Chunk, ChunkerError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.raw.next()?.map(|(offset, data)| Chunk {
            offset,
            id: chunk_id(&self.id_key, &data),
            data,
        }))
    }
}

impl<R: Read> FusedIterator for Chunks<R> {}

impl<R: Read> std::fmt::Debug for Chunks<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunks")
            .field("done", &self.raw.done)
            .finish_non_exhaustive()
    }
}
