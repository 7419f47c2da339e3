//! `fsync-bench chunk-sweep`: the small-edit and versions workloads at several average
//! chunk sizes, to pick the default (issue item 8).
//!
//! For each `--avg-kib` (16, 64, 256, 1024 by default), the engines of a fresh pair of
//! devices chunk with min = avg/4, avg, max = avg×4 (`fsync_client::session::
//! chunk_config`, as `CHUNK_SIZE` sets it), and run, on one server:
//!
//! - `sync`'s small-edit part: a `--large-mib` random file synced A → B, then the
//!   1-byte overwrite and 1-byte insert at its start, middle and end, each
//!   `--edit-repeat` times (the median of each of the six edits is taken, then the six
//!   are summed);
//! - the `versions` workload: a `--size-mib` disk-image-like file and `--versions`
//!   versions rewriting 1 % of its 4 KiB pages.
//!
//! Per average size: bytes on the wire up (A) and down (B), new chunks, the dedup
//! ratio, manifest sizes (the JSON the server stores, and its entries), and the rows the
//! workloads added to the server's `chunks` and `version_chunks` tables.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use fsync_client::session;
use serde_json::{json, Value};

use super::sync::{self, DATA_SEED};
use super::versions::{self, chunker_text};
use super::{newest_manifest, DbCounts};
use crate::harness::{self, Db, Server};
use crate::report::{Record, Report};

/// Name of the small-edit file in the sync root (as in `sync`).
const LARGE: &str = "large.bin";

/// Arguments of `fsync-bench chunk-sweep`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Metadata backend of the server (repeatable: each is measured).
    #[arg(long = "db", value_enum)]
    db: Vec<Db>,
    /// Average chunk sizes to measure, KiB (repeatable) [default: 16 64 256 1024].
    #[arg(long = "avg-kib", value_parser = clap::value_parser!(u32).range(1..=1024))]
    avg_kib: Vec<u32>,
    /// Size of the random file of the small edits, MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    large_mib: u32,
    /// Times each small edit is made (cumulatively); the median is taken.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    edit_repeat: u32,
    /// Size of the disk-image-like file of the versions workload, MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    size_mib: u32,
    /// Versions of the image after the initial one.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    versions: u32,
    /// Where the folders and server data go [default: the temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// The small-edit metrics of `sync` that are summed over the six edits, with the
/// sweep's name for each.
const EDIT_SUMS: [(&str, &str, &str); 4] = [
    ("A bytes up (edit → committed)", "edits: A up", "bytes"),
    (
        "B bytes down (committed → visible)",
        "edits: B down",
        "bytes",
    ),
    ("new chunks", "edits: new chunks", "count"),
    ("new chunk bytes", "edits: new chunk bytes", "bytes"),
];

impl Args {
    /// The average sizes, in KiB.
    fn averages(&self) -> Vec<u32> {
        if self.avg_kib.is_empty() {
            vec![16, 64, 256, 1024]
        } else {
            self.avg_kib.clone()
        }
    }

    /// Runs the sweep on every chosen backend.
    pub(crate) fn run(&self, progress: bool) -> anyhow::Result<Report> {
        // Validate every configuration before any work.
        for avg in self.averages() {
            session::chunk_config(Some(avg << 10))
                .with_context(|| format!("average chunk size {avg} KiB"))?;
        }
        let rt = harness::runtime()?;
        let work = harness::work_dir(self.work_dir.as_deref(), "fsync-bench-sweep-")?;
        // `sync`'s arguments, to drive its small-edit part.
        let sync_args: sync::Args = super::parse_args([
            "sync".to_owned(),
            "--large-mib".to_owned(),
            self.large_mib.to_string(),
            "--edit-repeat".to_owned(),
            self.edit_repeat.to_string(),
        ])?;
        let mut records = Vec::new();
        let mut configs = Vec::new();
        for db in harness::dbs(&self.db) {
            let dir = tempfile::Builder::new()
                .prefix(db.label())
                .tempdir_in(work.path())?;
            rt.block_on(async {
                let server = Server::start(db, dir.path()).await?;
                let mut result = Ok(());
                for avg in self.averages() {
                    let config = session::chunk_config(Some(avg << 10))?;
                    if !configs.contains(&config) {
                        configs.push(config);
                    }
                    let mut ctx = sync::Ctx {
                        args: &sync_args,
                        db,
                        work: dir.path(),
                        progress,
                        records: Vec::new(),
                        notes: Vec::new(),
                    };
                    let avg_dir = dir.path().join(format!("avg-{avg}"));
                    std::fs::create_dir_all(&avg_dir)?;
                    result = self
                        .one_size(&mut ctx, &server, &avg_dir, avg, &mut records)
                        .await;
                    if result.is_err() {
                        break;
                    }
                }
                server.stop().await;
                result
            })?;
        }
        let mut notes = vec![
            format!(
                "Chunkers: {}.",
                configs
                    .iter()
                    .map(|c| chunker_text(*c))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            format!(
                "edits: a {} MiB random file (seed {}) synced A -> B, then 1-byte overwrite and insert at start, \
                 middle and end, each {} time(s) (median per edit), summed over the 6 edits: A up = request bodies \
                 of A's rounds, B down = response bodies of B's rounds, new chunks / bytes = chunks (plaintext) \
                 the client's chunker had not seen. large: initial upload of that file (A's round) and the \
                 manifest the server stores for it (JSON bytes, entries).",
                self.large_mib,
                DATA_SEED + 1,
                self.edit_repeat
            ),
            format!(
                "versions: a {} MiB disk-image-like file, then {} versions each rewriting 1 % of its 4 KiB pages \
                 (as `versions`); per version = mean over the versions (initial sync excluded); stored = new \
                 encoded blob bytes (growth of SUM(chunks.stored_size) in the server's database); dedup = \
                 logical bytes of all versions / stored bytes; manifest = the last version's.",
                self.size_mib, self.versions
            ),
            "rows: growth of the server's chunks and version_chunks tables over both workloads (large file, its \
             edits, the image and its versions)."
                .to_owned(),
        ];
        notes.dedup();
        Ok(Report {
            row_label: "avg KiB",
            notes,
            records,
        })
    }

    /// Both workloads at one average size, on fresh accounts.
    async fn one_size(
        &self,
        ctx: &mut sync::Ctx<'_>,
        server: &Server,
        dir: &Path,
        avg: u32,
        records: &mut Vec<Record>,
    ) -> anyhow::Result<()> {
        let db = ctx.db;
        let progress = ctx.progress;
        let say = move |msg: &str| {
            if progress {
                eprintln!("chunk-sweep {} {avg} KiB: {msg}", db.label());
            }
        };
        let Value::Object(labels) = json!({"avg KiB": avg, "db": db.label()}) else {
            unreachable!()
        };
        let mut push = |metric: &str, unit: &str, value: f64| {
            records.push(Record {
                scenario: "chunk-sweep".into(),
                metric: metric.into(),
                unit: unit.into(),
                value,
                labels: labels.clone(),
            });
        };
        let config = session::chunk_config(Some(avg << 10))?;
        let start = DbCounts::read(&server.database_url).await?;

        // Small edits.
        let (mut a, mut b) = sync::pair_with_chunks(server, dir, "edit", config).await?;
        let path_a = a.root.join(LARGE);
        {
            let (p, mib) = (path_a.clone(), self.large_mib);
            tokio::task::spawn_blocking(move || sync::write_large(&p, mib, DATA_SEED + 1))
                .await
                .expect("write task")?;
        }
        let up = a.round().await?;
        let down = b.round().await?;
        ensure!(
            up.report.uploaded == 1 && down.report.downloaded == 1,
            "the large file did not sync"
        );
        sync::same_file(&path_a, &b.root.join(LARGE))?;
        let (manifest_bytes, manifest_entries) =
            newest_manifest(&server.database_url, LARGE).await?;
        say(&format!(
            "large file: A {:.2} s, {manifest_entries} chunks",
            up.secs
        ));
        sync::small_edits(ctx, &mut a, &mut b, LARGE, dir, &server.database_url).await?;
        for (from, to, unit) in EDIT_SUMS {
            let of: Vec<f64> = ctx
                .records
                .iter()
                .filter(|r| r.scenario == "small-edit" && r.metric == from)
                .map(|r| r.value)
                .collect();
            ensure!(
                of.len() == 6,
                "sync's small edits reported {} {from:?} figures, not 6",
                of.len()
            );
            push(to, unit, of.iter().sum());
        }
        let a_ms: Vec<f64> = ctx
            .records
            .iter()
            .filter(|r| r.scenario == "small-edit" && r.metric == "edit → committed (A round)")
            .map(|r| r.value)
            .collect();
        ensure!(!a_ms.is_empty(), "sync's small edits reported no A round");
        push(
            "edits: A round, mean",
            "ms",
            a_ms.iter().sum::<f64>() / a_ms.len() as f64,
        );
        push(
            "large: A upload",
            "MB/s",
            f64::from(self.large_mib << 20) / 1e6 / up.secs,
        );
        push("large: manifest entries", "count", manifest_entries as f64);
        push("large: manifest", "bytes", manifest_bytes as f64);
        drop((a, b));

        // Versions.
        let (mut a, mut b) = sync::pair_with_chunks(server, dir, "versions", config).await?;
        let o = versions::run_versions(server, &mut a, &mut b, self.size_mib, self.versions, &say)
            .await?;
        let vs = o.versions();
        let n = vs.len() as f64;
        let mean = |f: &dyn Fn(&versions::Step) -> f64| vs.iter().map(f).sum::<f64>() / n;
        push(
            "versions: A up / version",
            "bytes",
            mean(&|s| s.a.traffic.bytes_up as f64),
        );
        push(
            "versions: B down / version",
            "bytes",
            mean(&|s| s.b.traffic.bytes_down as f64),
        );
        push(
            "versions: new chunks / version",
            "count",
            mean(&|s| s.db.chunk_rows as f64),
        );
        push(
            "versions: stored / version",
            "bytes",
            mean(&|s| s.db.stored_bytes as f64),
        );
        push("versions: A round, mean", "ms", mean(&|s| s.a.secs * 1e3));
        push(
            "versions: dedup",
            "ratio",
            o.logical_bytes() as f64 / o.stored_bytes() as f64,
        );
        push(
            "versions: dedup (plaintext)",
            "ratio",
            o.logical_bytes() as f64 / o.plain_bytes() as f64,
        );
        let last = o.steps.last().expect("at least the initial sync");
        push("versions: manifest", "bytes", last.manifest_bytes as f64);
        let rows = DbCounts::read(&server.database_url).await?.since(start);
        push("rows: chunks", "count", rows.chunk_rows as f64);
        push(
            "rows: version_chunks",
            "count",
            rows.version_chunk_rows as f64,
        );
        say("done");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::parse_args;

    #[test]
    fn a_small_sweep_has_one_row_per_average() {
        let args: Args = parse_args([
            "chunk-sweep",
            "--avg-kib",
            "16",
            "--avg-kib",
            "64",
            "--large-mib",
            "2",
            "--size-mib",
            "2",
            "--versions",
            "2",
        ])
        .unwrap();
        let report = args.run(false).unwrap();
        let entries = |avg: u64| {
            report
                .records
                .iter()
                .find(|r| r.labels["avg KiB"] == avg && r.metric == "large: manifest entries")
                .unwrap()
                .value
        };
        assert!(entries(16) > entries(64), "{report:?}");
        for r in &report.records {
            assert!(r.value.is_finite() && r.value >= 0.0, "{r:?}");
        }
        let mut out = Vec::new();
        super::super::write_wide_table("chunk-sweep", &report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("sqlite")).count(),
            2,
            "{text}"
        );
    }

    #[test]
    fn averages_beyond_1_mib_are_refused() {
        assert!(parse_args::<Args>(["chunk-sweep", "--avg-kib", "2048"]).is_err());
        assert!(parse_args::<Args>(["chunk-sweep", "--avg-kib", "0"]).is_err());
    }
}
