//! The measured stages: the keys, codec and chunk boundaries they share ([`Bench`]),
//! one generated input with its chunks, ids and blobs, and each stage's work.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::ensure;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use fastcdc::v2020::{FastCDC, Normalization};
use fsync_chunker::{chunk_id, Chunker, ChunkerConfig};
use fsync_common::{ChunkId, IdKey};
use fsync_store::{BlobCodec, CodecError, NamespaceKey, BLOB_HEADER_LEN, DEFAULT_ZSTD_LEVEL};
use rayon::prelude::*;

use super::{Stage, DATA_SEED};
use crate::data::{self, DataKind};
use crate::timing::median_secs;

/// The namespace id key: fixed, so that boundaries and ids are the same every run.
const ID_KEY: [u8; 32] = [0x5a; 32];
/// Key of the `encrypt` stage's cipher.
const ENC_KEY: [u8; 32] = [0xa5; 32];
/// The chunker's BLAKE3 `derive_key` context for its `FastCDC` gear seed (documented in
/// `fsync_chunker`); the boundaries computed here are checked against
/// `Chunker::chunk_slice`.
const GEAR_SEED_CONTEXT: &str = "fsync 2026-01 chunker fastcdc gear seed v1";
/// The `pipeline` stage hands chunks to the pool in batches of about this many bytes.
const BATCH_BYTES: usize = 1 << 20;

/// Keys, codec and chunking parameters shared by all measurements.
pub(super) struct Bench {
    id_key: IdKey,
    pub(super) config: ChunkerConfig,
    gear_seed: u64,
    chunker: Chunker,
    codec: BlobCodec,
    cipher: XChaCha20Poly1305,
}

/// The result of measuring one stage.
pub(super) struct Measured {
    /// Median wall time in seconds.
    pub(super) secs: f64,
    /// For the zstd stages, the total compressed size in bytes.
    pub(super) compressed: Option<usize>,
}

/// One generated input, with what the per-chunk stages need.
pub(super) struct Input {
    pub(super) data: Vec<u8>,
    pub(super) bounds: Vec<Range<usize>>,
    ids: Vec<ChunkId>,
    blobs: Vec<Vec<u8>>,
}

impl Bench {
    pub(super) fn new() -> anyhow::Result<Self> {
        let id_key = IdKey::from_bytes(ID_KEY);
        let mut keys = NamespaceKey::generate().derive();
        keys.id_key = id_key.clone();
        let config = ChunkerConfig::DEFAULT;
        let derived = blake3::derive_key(GEAR_SEED_CONTEXT, id_key.as_bytes());
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&derived[..8]);
        Ok(Self {
            chunker: Chunker::new(&id_key, config)?,
            codec: BlobCodec::new(&keys).with_zstd_level(DEFAULT_ZSTD_LEVEL),
            cipher: XChaCha20Poly1305::new(&Key::from(ENC_KEY)),
            gear_seed: u64::from_le_bytes(seed),
            config,
            id_key,
        })
    }

    /// `FastCDC` over `data` with the chunker's parameters.
    fn cdc<'a>(&self, data: &'a [u8]) -> FastCDC<'a> {
        FastCDC::with_level_and_seed(
            data,
            self.config.min,
            self.config.avg,
            self.config.max,
            Normalization::Level1,
            self.gear_seed,
        )
    }

    fn boundaries(&self, data: &[u8]) -> Vec<Range<usize>> {
        self.cdc(data)
            .map(|c| c.offset..c.offset + c.length)
            .collect()
    }

    /// Generates the input, cuts it (checking the cuts against the chunker's) and, if
    /// `with_blobs`, encodes every chunk for the `decode` stage.
    pub(super) fn prepare(
        &self,
        kind: DataKind,
        size: usize,
        with_blobs: bool,
    ) -> anyhow::Result<Input> {
        let data = data::generate(kind, size, DATA_SEED);
        let bounds = self.boundaries(&data);
        let infos = self.chunker.chunk_slice_parallel(&data);
        ensure!(
            infos.len() == bounds.len()
                && infos
                    .iter()
                    .zip(&bounds)
                    .all(|(c, r)| c.offset as usize == r.start && c.len as usize == r.len()),
            "the benchmark's FastCDC boundaries differ from fsync_chunker's"
        );
        let ids: Vec<ChunkId> = infos.iter().map(|c| c.id).collect();
        let blobs = if with_blobs {
            bounds
                .par_iter()
                .zip(&ids)
                .map(|(r, id)| self.codec.encode(id, &data[r.clone()]))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(Input {
            data,
            bounds,
            ids,
            blobs,
        })
    }

    /// Median seconds of `stage` over `input` on the current rayon pool.
    pub(super) fn measure(
        &self,
        stage: Stage,
        input: &Input,
        repeat: usize,
    ) -> Result<Measured, CodecError> {
        let (secs, out) = match stage {
            Stage::FastCdc => median_secs(repeat, || Ok(self.fastcdc(&input.data))),
            Stage::Blake3 => {
                let (secs, ids) = median_secs(repeat, || self.blake3(input));
                (secs, Ok(ids.len()))
            }
            Stage::Blake3Fixed => median_secs(repeat, || Ok(self.blake3_fixed(&input.data))),
            Stage::Zstd1 => median_secs(repeat, || Ok(zstd_chunks(input, 1))),
            Stage::Zstd3 => median_secs(repeat, || Ok(zstd_chunks(input, 3))),
            Stage::Encrypt => median_secs(repeat, || Ok(self.encrypt(input))),
            Stage::Decode => median_secs(repeat, || self.decode(input)),
            Stage::Pipeline => median_secs(repeat, || {
                // The sink stands for the uploader: it takes each blob and frees it.
                let blob_bytes = AtomicUsize::new(0);
                self.pipeline(&input.data, |_, _, blob| {
                    blob_bytes.fetch_add(blob.len(), Ordering::Relaxed);
                })
                .map(|()| blob_bytes.into_inner())
            }),
        };
        let out = out?;
        Ok(Measured {
            secs,
            compressed: matches!(stage, Stage::Zstd1 | Stage::Zstd3).then_some(out),
        })
    }

    /// Number of chunks, cutting `rayon::current_num_threads()` equal segments.
    fn fastcdc(&self, data: &[u8]) -> usize {
        let segment = data.len().div_ceil(rayon::current_num_threads()).max(1);
        data.par_chunks(segment).map(|s| self.cdc(s).count()).sum()
    }

    fn blake3(&self, input: &Input) -> Vec<ChunkId> {
        input
            .bounds
            .par_iter()
            .map(|r| chunk_id(&self.id_key, &input.data[r.clone()]))
            .collect()
    }

    /// Keyed BLAKE3 of every 64 KiB piece of `data`; returns the number of pieces.
    fn blake3_fixed(&self, data: &[u8]) -> usize {
        data.par_chunks(64 << 10)
            .map(|piece| std::hint::black_box(chunk_id(&self.id_key, piece)))
            .count()
    }

    /// Encrypts every chunk (copied into a reused buffer, then in place), with
    /// associated data as long as the codec's. Returns a checksum of the tags.
    fn encrypt(&self, input: &Input) -> usize {
        let aad = [0u8; BLOB_HEADER_LEN + ChunkId::LEN];
        input
            .bounds
            .par_iter()
            .enumerate()
            .map_init(
                || Vec::with_capacity(self.config.max as usize),
                |buf, (i, r)| {
                    let mut nonce = XNonce::default();
                    nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    buf.clear();
                    buf.extend_from_slice(&input.data[r.clone()]);
                    let tag = self
                        .cipher
                        .encrypt_in_place_detached(&nonce, &aad, buf)
                        .expect("a chunk is far below the AEAD's message limit");
                    usize::from(tag[0])
                },
            )
            .sum()
    }

    /// Decodes every blob; returns the plaintext bytes.
    fn decode(&self, input: &Input) -> Result<usize, CodecError> {
        input
            .blobs
            .par_iter()
            .zip(&input.ids)
            .map(|(blob, id)| self.codec.decode(id, blob).map(|p| p.len()))
            .sum()
    }

    /// What the client does to a file in memory: cut, id, encode, then hand each
    /// blob to `sink` (with the chunk's index), as the client hands blobs to its
    /// uploader. Cutting runs on the calling thread and passes batches of chunks to the
    /// pool as it goes; `sink` is called from any pool thread, in no particular order.
    fn pipeline<F>(&self, data: &[u8], sink: F) -> Result<(), CodecError>
    where
        F: Fn(usize, ChunkId, Vec<u8>) + Sync,
    {
        let first_error = Mutex::new(None);
        rayon::scope(|scope| {
            let spawn = |first: usize, batch: Vec<Range<usize>>| {
                let (sink, first_error) = (&sink, &first_error);
                scope.spawn(move |_| {
                    for (i, r) in batch.into_iter().enumerate() {
                        let chunk = &data[r];
                        let id = chunk_id(&self.id_key, chunk);
                        match self.codec.encode(&id, chunk) {
                            Ok(blob) => sink(first + i, id, blob),
                            Err(e) => {
                                first_error
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            };
            let (mut batch, mut bytes, mut first) = (Vec::new(), 0, 0);
            for c in self.cdc(data) {
                batch.push(c.offset..c.offset + c.length);
                bytes += c.length;
                if bytes >= BATCH_BYTES {
                    let n = batch.len();
                    spawn(first, std::mem::take(&mut batch));
                    first += n;
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                spawn(first, batch);
            }
        });
        match first_error
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Compresses every chunk at `level` with one reused context per rayon job; returns
/// the compressed bytes.
fn zstd_chunks(input: &Input, level: i32) -> usize {
    input
        .bounds
        .par_iter()
        .map_init(
            || {
                let compressor =
                    zstd::bulk::Compressor::new(level).expect("zstd accepts levels 1 and 3");
                (compressor, Vec::new())
            },
            |(compressor, buf), r| {
                let chunk = &input.data[r.clone()];
                buf.clear();
                buf.reserve(zstd::zstd_safe::compress_bound(chunk.len()));
                compressor
                    .compress_to_buffer(chunk, buf)
                    .expect("the buffer holds zstd's bound")
            },
        )
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    #[test]
    fn every_stage_runs_on_one_and_two_threads() {
        let bench = Bench::new().unwrap();
        for kind in DataKind::ALL {
            let input = bench.prepare(kind, 3 << 20, true).unwrap();
            assert!(input.bounds.len() > 10);
            for n in [1, 2] {
                pool(n).install(|| {
                    assert!(bench.fastcdc(&input.data) >= input.bounds.len());
                    assert_eq!(bench.blake3(&input), input.ids);
                    assert_eq!(bench.blake3_fixed(&input.data), 3 * 16);
                    for stage in Stage::EVERY {
                        let measured = bench.measure(stage, &input, 1).unwrap();
                        assert!(measured.secs > 0.0, "{stage:?}");
                    }
                });
            }
        }
    }

    #[test]
    fn pipeline_output_decodes_to_the_input_in_order() {
        let bench = Bench::new().unwrap();
        let data = data::generate(DataKind::Text, 5 << 20, 3);
        let blobs = Mutex::new(Vec::new());
        pool(2)
            .install(|| {
                bench.pipeline(&data, |i, id, blob| {
                    blobs.lock().unwrap().push((i, id, blob));
                })
            })
            .unwrap();
        let mut blobs = blobs.into_inner().unwrap();
        blobs.sort_unstable_by_key(|(i, _, _)| *i);
        let infos = bench.chunker.chunk_slice(&data);
        assert_eq!(blobs.len(), infos.len());
        let mut rebuilt = Vec::new();
        for ((i, id, blob), (j, info)) in blobs.iter().zip(infos.iter().enumerate()) {
            assert_eq!((*i, *id), (j, info.id));
            rebuilt.extend(bench.codec.decode(id, blob).unwrap());
        }
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn compressed_sizes_are_reported_only_by_zstd() {
        let bench = Bench::new().unwrap();
        let input = bench.prepare(DataKind::Text, 2 << 20, true).unwrap();
        for stage in Stage::ALL {
            let measured = bench.measure(stage, &input, 1).unwrap();
            let compresses = matches!(stage, Stage::Zstd1 | Stage::Zstd3);
            assert_eq!(measured.compressed.is_some(), compresses, "{stage:?}");
            if let Some(out) = measured.compressed {
                assert!(out < input.data.len() / 2, "{stage:?}: {out}");
            }
        }
    }
}
