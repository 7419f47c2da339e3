//! `fsync-bench pipeline`: throughput of each client-side stage, alone and chained,
//! in memory, on 1 thread and on N.
//!
//! Stages, each over the same buffer and its chunks:
//!
//! | stage      | work per input                                                      |
//! |------------|---------------------------------------------------------------------|
//! | `fastcdc`  | chunk boundaries (`FastCDC` v2020, the chunker's config and seed)    |
//! | `blake3`   | keyed BLAKE3 chunk id of every chunk                                |
//! | `blake3-64k` | keyed BLAKE3 of fixed 64 KiB pieces (only with `--stage`)         |
//! | `zstd-1`   | zstd level 1 of every chunk (one reused context per thread)         |
//! | `zstd-3`   | zstd level 3 of every chunk                                         |
//! | `encrypt`  | XChaCha20-Poly1305 of every chunk, in place in a reused buffer       |
//! | `decode`   | `BlobCodec::decode` of every blob: decrypt, decompress, verify id   |
//! | `pipeline` | cut → id → `BlobCodec::encode` (zstd-3 if it saves ≥ 3 %, encrypt)  |
//!
//! With N threads the per-chunk stages run as a rayon parallel iterator over the
//! chunks (boundaries are computed beforehand, untimed); `fastcdc` cuts N equal
//! segments independently; `pipeline` cuts on one thread and hands batches of chunks
//! to the pool as it goes, as `Chunker::chunk_file_parallel` overlaps cutting with
//! hashing.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{ensure, Context as _};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use fastcdc::v2020::{FastCDC, Normalization};
use fsync_chunker::{chunk_id, Chunker, ChunkerConfig};
use fsync_common::{ChunkId, IdKey};
use fsync_store::{BlobCodec, CodecError, NamespaceKey, BLOB_HEADER_LEN, DEFAULT_ZSTD_LEVEL};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::data::{self, DataKind};
use crate::report::{Record, Report};
use crate::timing::{median, median_secs};

/// The `scenario` of this module's records.
const SCENARIO: &str = "pipeline";
/// Seed of the generated inputs.
const DATA_SEED: u64 = 2026;
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
/// 1 MB, as in MB/s.
const MB: f64 = 1e6;

/// Arguments of `fsync-bench pipeline`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Size of each generated input (random and text), in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=16_384))]
    size_mib: u32,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// Rounds over every stage and thread count (interleaved, so a burst of other work
    /// on the machine hits different figures in different rounds); each figure is the
    /// median of its rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Threads of the multi-threaded runs [default: all cores]. Single-threaded
    /// figures are always measured too.
    #[arg(long)]
    threads: Option<NonZeroUsize>,
    /// Measure only these stages (repeatable) [default: all but `blake3-64k`].
    #[arg(long = "stage", value_enum)]
    stages: Vec<Stage>,
    /// Measure only these data kinds (repeatable) [default: all].
    #[arg(long = "data", value_enum)]
    data: Vec<DataKind>,
}

/// Validated options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Bytes of each generated input.
    size: usize,
    /// Runs per measurement.
    repeat: usize,
    /// Interleaved rounds; the median of the rounds is reported.
    rounds: usize,
    /// Thread counts to measure, ascending, without duplicates.
    thread_counts: Vec<usize>,
    /// Stages to measure, in report order.
    stages: Vec<Stage>,
    /// Data kinds to measure, in report order.
    data: Vec<DataKind>,
    /// Print each figure on stderr as soon as it is measured.
    progress: bool,
}

impl Args {
    /// Validates the arguments into options; `progress` reports on stderr as it goes.
    pub(crate) fn options(&self, progress: bool) -> anyhow::Result<Options> {
        let all = match self.threads {
            Some(n) => n.get(),
            None => std::thread::available_parallelism()
                .context("cannot count the cores; pass --threads")?
                .get(),
        };
        let mut thread_counts = vec![1, all];
        thread_counts.dedup();
        Ok(Options {
            size: self.size_mib as usize * (1 << 20),
            repeat: self.repeat as usize,
            rounds: self.rounds as usize,
            thread_counts,
            stages: if self.stages.is_empty() {
                Stage::ALL.to_vec()
            } else {
                Stage::EVERY
                    .into_iter()
                    .filter(|s| self.stages.contains(s))
                    .collect()
            },
            data: DataKind::ALL
                .into_iter()
                .filter(|d| self.data.is_empty() || self.data.contains(d))
                .collect(),
            progress,
        })
    }
}

/// A measured stage (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stage {
    /// Chunk boundaries.
    #[value(name = "fastcdc")]
    FastCdc,
    /// Keyed BLAKE3 chunk ids.
    Blake3,
    /// Keyed BLAKE3 over fixed 64 KiB pieces instead of the chunks (a baseline: what
    /// the variable chunk lengths cost BLAKE3's SIMD tree).
    #[value(name = "blake3-64k")]
    Blake3Fixed,
    /// zstd level 1.
    #[value(name = "zstd-1")]
    Zstd1,
    /// zstd level 3.
    #[value(name = "zstd-3")]
    Zstd3,
    /// XChaCha20-Poly1305.
    Encrypt,
    /// Blob decoding: decrypt, decompress, check the id.
    Decode,
    /// Cut, id and encode.
    Pipeline,
}

impl Stage {
    /// Every stage, in report order.
    const EVERY: [Self; 8] = [
        Self::FastCdc,
        Self::Blake3,
        Self::Blake3Fixed,
        Self::Zstd1,
        Self::Zstd3,
        Self::Encrypt,
        Self::Decode,
        Self::Pipeline,
    ];

    /// The stages run by default (`blake3-64k` runs only when asked for).
    const ALL: [Self; 7] = [
        Self::FastCdc,
        Self::Blake3,
        Self::Zstd1,
        Self::Zstd3,
        Self::Encrypt,
        Self::Decode,
        Self::Pipeline,
    ];

    /// The value of the `stage` label.
    fn label(self) -> &'static str {
        match self {
            Self::FastCdc => "fastcdc",
            Self::Blake3 => "blake3",
            Self::Blake3Fixed => "blake3-64k",
            Self::Zstd1 => "zstd-1",
            Self::Zstd3 => "zstd-3",
            Self::Encrypt => "encrypt",
            Self::Decode => "decode",
            Self::Pipeline => "pipeline",
        }
    }
}

/// Runs the scenario: every stage, for both data kinds and every thread count.
pub(crate) fn run(opts: &Options) -> anyhow::Result<Report> {
    let bench = Bench::new()?;
    let pools = opts
        .thread_counts
        .iter()
        .map(|&n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(move |i| format!("bench-{n}-{i}"))
                .build()
                .with_context(|| format!("cannot start {n} threads"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let widest = pools.last().expect("at least one thread count");

    let mut records = Vec::new();
    let mut notes = vec![
        format!(
            "MB/s = plaintext bytes / wall time: the median of {} interleaved round(s), each \
             the median of {} run(s); 1 MB = 10^6 bytes.",
            opts.rounds, opts.repeat
        ),
        format!(
            "Input: {} MiB per data kind, generated in memory; chunks: FastCDC v2020 {}/{}/{} KiB.",
            opts.size >> 20,
            bench.config.min >> 10,
            bench.config.avg >> 10,
            bench.config.max >> 10,
        ),
    ];
    if let Some(load) = load_average() {
        notes.push(format!("Load average before the run (1/5/15 min): {load}."));
    }
    for &kind in &opts.data {
        let input = widest
            .install(|| bench.prepare(kind, opts.size, opts.stages.contains(&Stage::Decode)))?;
        let mut ratios = Vec::new();
        // secs[pool][stage]: one median per round.
        let mut secs = vec![vec![Vec::with_capacity(opts.rounds); opts.stages.len()]; pools.len()];
        for _ in 0..opts.rounds {
            for (p, pool) in pools.iter().enumerate() {
                for (s, &stage) in opts.stages.iter().enumerate() {
                    let measured = pool.install(|| bench.measure(stage, &input, opts.repeat))?;
                    let first = secs[p][s].is_empty();
                    if let (true, 1, Some(compressed)) =
                        (first, pool.current_num_threads(), measured.compressed)
                    {
                        ratios.push(format!(
                            "{} {:.2}x",
                            stage.label(),
                            input.data.len() as f64 / compressed as f64
                        ));
                    }
                    secs[p][s].push(measured.secs);
                }
            }
        }
        for (p, pool) in pools.iter().enumerate() {
            let threads = pool.current_num_threads();
            for (s, &stage) in opts.stages.iter().enumerate() {
                let mb_per_sec = input.data.len() as f64 / median(&mut secs[p][s]) / MB;
                let record = throughput(stage, threads, kind, mb_per_sec);
                if opts.progress {
                    eprintln!(
                        "{SCENARIO}: data={} threads={threads} {}: {:.0} MB/s",
                        kind.label(),
                        stage.label(),
                        record.value
                    );
                }
                records.push(record);
            }
        }
        notes.push(format!(
            "{}: {} chunks{}.",
            kind.label(),
            input.bounds.len(),
            if ratios.is_empty() {
                String::new()
            } else {
                format!("; size ratio (plaintext / output): {}", ratios.join(", "))
            }
        ));
    }
    notes.push(
        "fastcdc on N threads cuts N equal segments; pipeline = cut, keyed BLAKE3 id, \
         BlobCodec::encode, blob handed on and freed; cutting overlaps encoding."
            .to_string(),
    );
    Ok(Report {
        row_label: "stage",
        notes,
        records,
    })
}

/// `/proc/loadavg`'s three load averages, where there is one: other work on the
/// machine skews the figures.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn throughput(stage: Stage, threads: usize, kind: DataKind, mb_per_sec: f64) -> Record {
    let Value::Object(labels) = json!({
        "stage": stage.label(),
        "threads": threads,
        "data": kind.label(),
    }) else {
        unreachable!("a json object literal is an object")
    };
    Record {
        scenario: SCENARIO.to_string(),
        metric: "throughput".to_string(),
        unit: "MB/s".to_string(),
        value: mb_per_sec,
        labels,
    }
}

/// Keys, codec and chunking parameters shared by all measurements.
struct Bench {
    id_key: IdKey,
    config: ChunkerConfig,
    gear_seed: u64,
    chunker: Chunker,
    codec: BlobCodec,
    cipher: XChaCha20Poly1305,
}

/// The result of measuring one stage.
struct Measured {
    /// Median wall time in seconds.
    secs: f64,
    /// For the zstd stages, the total compressed size in bytes.
    compressed: Option<usize>,
}

/// One generated input, with what the per-chunk stages need.
struct Input {
    data: Vec<u8>,
    bounds: Vec<Range<usize>>,
    ids: Vec<ChunkId>,
    blobs: Vec<Vec<u8>>,
}

impl Bench {
    fn new() -> anyhow::Result<Self> {
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
    fn prepare(&self, kind: DataKind, size: usize, with_blobs: bool) -> anyhow::Result<Input> {
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
    fn measure(&self, stage: Stage, input: &Input, repeat: usize) -> Result<Measured, CodecError> {
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
