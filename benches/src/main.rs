//! `fsync-bench`: fsync's performance scenarios, one subcommand each.
//!
//! Every scenario prints a table by default, or with `--json` a JSON array of records
//! `{"scenario", "metric", "unit", "value", "labels"}` (see [`report::Record`]).
//!
//! ```text
//! cargo run --release -p fsync-bench -- pipeline [--size-mib 256] [--repeat 5] [--threads N] [--json]
//! target/release/fsync-bench small-files [--files 10000] [--db sqlite|postgres]
//! target/release/fsync-bench versions [--size-mib 256] [--versions 10]
//! target/release/fsync-bench chunk-sweep [--avg-kib 16 ...] [--large-mib 256] [--size-mib 256]
//! ```

mod data;
mod harness;
mod report;
mod scenarios;
mod timing;

use std::io::Write;

use clap::{Parser, Subcommand};

/// fsync performance scenarios.
#[derive(Debug, Parser)]
#[command(name = "fsync-bench", version, about)]
struct Cli {
    /// Print the records as a JSON array instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Do not print progress on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Also write the records as JSON to this file (the table still goes to stdout):
    /// one run gives both, as `scripts/bench.sh` needs.
    #[arg(long, global = true, value_name = "FILE")]
    json_out: Option<std::path::PathBuf>,
    /// Where the servers keep their packs: the local disk, or S3 (SeaweedFS from
    /// `scripts/s3.sh`, or `FSYNC_TEST_S3_ENDPOINT`); the records of S3 runs get a
    /// `store` label.
    #[arg(long, global = true, value_enum, default_value = "local")]
    blob_store: harness::BlobBackend,
    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// In-memory throughput (MB/s) of each client stage (chunking, keyed BLAKE3, zstd-1,
    /// zstd-3, encryption, blob decoding) and of the whole chunk → id → encode
    /// pipeline, on 1 thread and on all cores, for random and source-like data.
    Pipeline(scenarios::pipeline::Args),
    /// Server metadata paths on a real server (SQLite and/or PostgreSQL):
    /// `chunks/missing` lookups (ids/s) and small-file commits through `sync/event`
    /// (files/s).
    Server(scenarios::server::Args),
    /// End-to-end sync between two client engines through a real server: initial sync
    /// of a generated tree and of a large file, no-op rescan, small edits, and
    /// edit-to-visible latency between two daemons; `--compare` with rsync and restic.
    Sync(scenarios::sync::Args),
    /// A burst of small files (10,000 × 1 KiB) uploaded by one round on A and
    /// downloaded by one on B: files/s, HTTP requests and body bytes per file.
    SmallFiles(scenarios::small_files::Args),
    /// A disk-image-like file (256 MiB) and 10 versions each rewriting 1 % of its 4 KiB
    /// pages in place: stored bytes per version and cumulatively, dedup ratio.
    Versions(scenarios::versions::Args),
    /// The small-edit and versions workloads at average chunk sizes of 16, 64, 256 and
    /// 1024 KiB: bytes on the wire, new chunks, dedup ratio, manifest size, metadata
    /// rows; one row per average size.
    ChunkSweep(scenarios::sweep::Args),
    /// Garbage collection: one online `fsync-gc run` sweeping 1,000,000 unreferenced
    /// chunk rows (PostgreSQL by default) while a client keeps committing: sweep time,
    /// rows/s, and the client's round times before and during the sweep.
    Gc(scenarios::gc::Args),
    /// Online repack: packs left partly dead by deleted files are copied while a client
    /// keeps committing: live MB/s, and the client's round times before and during.
    Repack(scenarios::repack::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    run(&cli, &mut out)
}

/// Runs the chosen scenario and writes its report to `out`.
fn run(cli: &Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let progress = !cli.quiet;
    harness::use_blob_backend(cli.blob_store);
    let mut report = match &cli.scenario {
        Scenario::Pipeline(args) => scenarios::pipeline::run(&args.options(progress)?)?,
        Scenario::Server(args) => args.run(progress)?,
        Scenario::Sync(args) => args.run(progress)?,
        Scenario::SmallFiles(args) => args.run(progress)?,
        Scenario::Versions(args) => args.run(progress)?,
        Scenario::ChunkSweep(args) => args.run(progress)?,
        Scenario::Gc(args) => args.run(progress)?,
        Scenario::Repack(args) => args.run(progress)?,
    };
    // Records of S3 runs say so (local runs keep the columns they always had).
    if cli.blob_store == harness::BlobBackend::S3 {
        for r in &mut report.records {
            r.labels
                .insert("store".into(), cli.blob_store.label().into());
        }
    }
    // The new end-to-end scenarios print one table (a row per case or average size, a
    // column per metric); the others a table per metric.
    let wide = match &cli.scenario {
        Scenario::SmallFiles(_) => Some("small-files"),
        Scenario::Versions(_) => Some("versions"),
        Scenario::ChunkSweep(_) => Some("chunk-sweep"),
        Scenario::Gc(_) => Some("gc"),
        Scenario::Repack(_) => Some("repack"),
        _ => None,
    };
    if let Some(path) = &cli.json_out {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        );
        report::write_json(&report.records, &mut file)?;
        file.flush()?;
    }
    if cli.json {
        report::write_json(&report.records, out)?;
    } else if let Some(title) = wide {
        scenarios::write_wide_table(title, &report, out)?;
    } else {
        report::write_table(&report, out)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::report::Record;

    fn run_args(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).unwrap();
        let mut out = Vec::new();
        run(&cli, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn pipeline_json_has_one_record_per_stage_thread_count_and_data_kind() {
        let out = run_args(&[
            "fsync-bench",
            "pipeline",
            "--size-mib",
            "4",
            "--repeat",
            "1",
            "--threads",
            "2",
            "--json",
            "--quiet",
        ]);
        let records: Vec<Record> = serde_json::from_str(&out).unwrap();
        let stages = [
            "fastcdc", "blake3", "zstd-1", "zstd-3", "encrypt", "decode", "pipeline",
        ];
        assert_eq!(records.len(), stages.len() * 2 * 2);
        let mut seen = BTreeSet::new();
        for r in &records {
            assert_eq!(
                (r.scenario.as_str(), r.metric.as_str(), r.unit.as_str()),
                ("pipeline", "throughput", "MB/s")
            );
            assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
            let keys: Vec<&str> = r.labels.keys().map(String::as_str).collect();
            assert_eq!(keys, ["data", "stage", "threads"], "{r:?}");
            let stage = r.labels["stage"].as_str().unwrap();
            let data = r.labels["data"].as_str().unwrap();
            let threads = r.labels["threads"].as_u64().unwrap();
            assert!(stages.contains(&stage), "{r:?}");
            assert!(["random", "text"].contains(&data), "{r:?}");
            assert!([1, 2].contains(&threads), "{r:?}");
            assert!(seen.insert((stage, data, threads)), "duplicate {r:?}");
        }
    }

    #[test]
    fn json_out_writes_the_records_beside_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.json");
        let out = run_args(&[
            "fsync-bench",
            "pipeline",
            "--size-mib",
            "1",
            "--repeat",
            "1",
            "--threads",
            "1",
            "--stage",
            "blake3",
            "-q",
            "--json-out",
            path.to_str().unwrap(),
        ]);
        assert!(out.starts_with("pipeline: throughput (MB/s)\n"), "{out}");
        let records: Vec<Record> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        assert!(records.iter().all(|r| r.labels["stage"] == "blake3"));
    }

    #[test]
    fn pipeline_table_lists_every_stage() {
        let out = run_args(&[
            "fsync-bench",
            "pipeline",
            "--size-mib",
            "2",
            "--repeat",
            "1",
            "--threads",
            "1",
            "-q",
        ]);
        assert!(out.starts_with("pipeline: throughput (MB/s)\n"), "{out}");
        for stage in [
            "fastcdc", "blake3", "zstd-1", "zstd-3", "encrypt", "decode", "pipeline",
        ] {
            assert!(
                out.lines().any(|l| l.starts_with(stage)),
                "{stage} missing:\n{out}"
            );
        }
        assert!(out.contains("data=random threads=1"), "{out}");
        assert!(out.contains("1 MB = 10^6 bytes"), "{out}");
    }

    #[test]
    fn zero_repeat_is_rejected() {
        assert!(Cli::try_parse_from(["fsync-bench", "pipeline", "--repeat", "0"]).is_err());
        assert!(Cli::try_parse_from(["fsync-bench", "pipeline", "--threads", "0"]).is_err());
    }
}
