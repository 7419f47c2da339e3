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

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::data::DataKind;
use crate::report::{Record, Report};
use crate::timing::median;

mod stages;

use stages::Bench;

/// The `scenario` of this module's records.
const SCENARIO: &str = "pipeline";
/// Seed of the generated inputs.
const DATA_SEED: u64 = 2026;
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
