//! `fsync-bench gc`: an online sweep of many unreferenced chunk rows (issue #5: "time
//! to sweep 1M chunk rows on PostgreSQL"), while a client keeps committing.
//!
//! Set-up, on a real server (in this process, on loopback):
//! - one account; device A syncs a `--file-mib` MiB random file, so its chunks (about
//!   16 per MiB) are stored and referenced and must survive the sweep;
//! - `--rows` further chunk rows in the same namespace, uploaded long ago and never
//!   referenced or touched since, inserted in one SQL statement (PostgreSQL
//!   `generate_series`, an SQLite recursive query), then `ANALYZE`, and an empty blob
//!   file for each in the server's blob store (`--no-blobs`: none, so each of the
//!   sweep's blob deletes is a `remove_file` that finds nothing).
//!
//! Measured: one `Collector::run` (what `fsync-gc run` does, default grace of 24 h, no
//! retention flags, `--batch` rows per transaction) while A writes and commits one new
//! small file per round, round after round, until the sweep ends. Reported: the
//! sweep's wall time and rows/s, and A's round times during the sweep (median and
//! maximum) against the same rounds just before it. Afterwards `Collector::verify`
//! must find nothing damaged and every one of A's chunks must still be stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context as _};
use fsync_common::{ChunkId, NamespaceId};
use fsync_server::{Collector, NoProgress, RunOptions};
use serde_json::json;
use sqlx::{Connection as _, Row as _};

use super::sync::DATA_SEED;
use crate::data::{self, DataKind};
use crate::harness::{self, Db, Device, Server};
use crate::report::{Record, Report};
use crate::timing::median;

/// The `scenario` of this module's records.
const SCENARIO: &str = "gc";
/// A's small files written before the sweep, for the baseline round time.
pub(crate) const BASELINE_ROUNDS: usize = 10;

/// Arguments of `fsync-bench gc`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Metadata backend of the server (repeatable: each is measured)
    /// [default: postgres].
    #[arg(long = "db", value_enum)]
    db: Vec<Db>,
    /// Unreferenced chunk rows to sweep.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    rows: u32,
    /// Rows per sweep transaction (`fsync-gc`'s default is the default here).
    #[arg(long, default_value_t = fsync_server::GC_BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,
    /// Size of the file A keeps referenced, MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    file_mib: u32,
    /// Do not write a blob file per seeded row (the sweep's deletes then find nothing:
    /// the database side alone).
    #[arg(long)]
    no_blobs: bool,
    /// Where the folders and server data go [default: the temp dir].
    #[arg(long)]
    work_dir: Option<std::path::PathBuf>,
}

/// What one backend's run measured.
struct Outcome {
    seed_secs: f64,
    sweep_secs: f64,
    rows_deleted: u64,
    kept_chunks: u64,
    rounds: Rounds,
}

impl Args {
    /// Runs the scenario on every chosen backend.
    pub(crate) fn run(&self, progress: bool) -> anyhow::Result<Report> {
        let work = harness::work_dir(self.work_dir.as_deref(), "fsync-bench-gc-")?;
        let dbs = if self.db.is_empty() {
            vec![Db::Postgres]
        } else {
            harness::dbs(&self.db)
        };
        let outcomes = harness::on_each_db(&dbs, work.path(), async |server, _| {
            self.measure(server, work.path(), progress).await
        })?;
        let records = outcomes
            .iter()
            .flat_map(|(db, outcome)| self.records(*db, outcome))
            .collect();
        Ok(Report {
            row_label: "rows",
            notes: vec![
                format!(
                    "One Collector::run (fsync-gc run, grace 24 h, no retention) over {} \
                     unreferenced chunk rows in batches of {}, while device A commits one \
                     small file per round; A's {} MiB file (its chunks referenced) must survive.",
                    self.rows, self.batch, self.file_mib
                ),
                if self.no_blobs {
                    "Swept rows have no blob files (--no-blobs): each blob delete finds nothing, \
                     so the figure is the database side plus per-blob call overhead."
                        .to_owned()
                } else {
                    "Each swept row has an (empty) blob file in the local blob store, unlinked \
                     by the sweep; seed_time includes writing them."
                        .to_owned()
                },
                format!(
                    "A's round: write one 1 KiB file, sync_once (scan, upload, commit); 'before' \
                     is the median of {BASELINE_ROUNDS} rounds just before the sweep."
                ),
            ],
            records,
        })
    }

    async fn measure(
        &self,
        server: &Server,
        work: &std::path::Path,
        progress: bool,
    ) -> anyhow::Result<Outcome> {
        let account = harness::register(server, &harness::username("gc")).await?;
        let dir = tempfile::Builder::new().prefix("gc-").tempdir_in(work)?;
        let mut a = Device::new(&server.url, &account, dir.path(), "a").await?;
        let file = data::generate(
            DataKind::Random,
            (self.file_mib as usize) << 20,
            DATA_SEED + 11,
        );
        std::fs::write(a.root.join("kept.bin"), &file).context("writing A's file")?;
        drop(file);
        a.round().await?;
        let kept = kept_chunk_ids(&server.database_url).await?;
        ensure!(!kept.is_empty(), "A's file left no chunk rows");

        if progress {
            eprintln!("gc: seeding {} chunk rows", self.rows);
        }
        let seeded = Instant::now();
        let ns = seed_rows(&server.database_url, self.rows).await?;
        if !self.no_blobs {
            let dir = server.blob_dir();
            let rows = self.rows;
            tokio::task::spawn_blocking(move || seed_blobs(&dir, ns, rows)).await??;
        }
        let seed_secs = seeded.elapsed().as_secs_f64();

        if progress {
            eprintln!("gc: sweeping ({seed_secs:.1} s to seed)");
        }
        let collector = Collector::open_local(&server.database_url, &server.blob_dir())
            .await
            .context("opening the collector")?;
        let opts = RunOptions {
            batch: self.batch as usize,
            ..RunOptions::default()
        };
        let collector = Arc::new(collector);
        let (report, sweep_secs, rounds) = run_while_committing(&mut a, &collector, opts)
            .await
            .context("the sweep")?;

        ensure!(
            report.chunks_deleted == u64::from(self.rows),
            "the sweep deleted {} rows, expected {}",
            report.chunks_deleted,
            self.rows
        );
        let verify = collector
            .verify(None, self.batch as usize, &NoProgress)
            .await
            .context("verifying after the sweep")?;
        ensure!(
            verify.is_clean(),
            "verify found damage after the sweep: {:?}",
            verify.damage.first()
        );
        if !self.no_blobs {
            use fsync_store::BlobStore as _;
            let store = fsync_store::LocalStore::open(server.blob_dir())?;
            let sample: Vec<ChunkId> = [1, self.rows / 2 + 1, self.rows]
                .iter()
                .map(|&n| seeded_id(n).parse())
                .collect::<Result<_, _>>()?;
            ensure!(
                !store.contains_many(&ns, &sample).await?.contains(&true),
                "a swept row's blob is still stored"
            );
        }
        let after = kept_chunk_ids(&server.database_url).await?;
        ensure!(
            kept.iter().all(|id| after.contains(id)),
            "the sweep removed a chunk of A's referenced file"
        );
        Ok(Outcome {
            seed_secs,
            sweep_secs,
            rows_deleted: report.chunks_deleted,
            kept_chunks: kept.len() as u64,
            rounds,
        })
    }

    fn records(&self, db: Db, o: &Outcome) -> Vec<Record> {
        let rec = |metric: &str, unit: &str, value: f64| Record {
            scenario: SCENARIO.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            value,
            labels: json!({"db": db.label(), "rows": self.rows, "batch": self.batch})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let mut out = vec![
            rec("sweep_time", "s", o.sweep_secs),
            rec("sweep_rate", "rows/s", o.rows_deleted as f64 / o.sweep_secs),
            rec("seed_time", "s", o.seed_secs),
            rec("kept_chunks", "chunks", o.kept_chunks as f64),
        ];
        out.extend(o.rounds.records(rec));
        out
    }
}

/// Writes one new 1 KiB file in A's root and syncs it; returns the round's seconds.
pub(crate) async fn small_file_round(a: &mut Device, n: &mut usize) -> anyhow::Result<f64> {
    *n += 1;
    let body = data::generate(DataKind::Text, 1024, DATA_SEED + 100 + *n as u64);
    std::fs::write(a.root.join(format!("during-{n:05}.txt")), body)?;
    let round = a.round().await?;
    ensure!(
        round.report.uploaded >= 1,
        "A's round uploaded nothing for its new file"
    );
    Ok(round.secs)
}

/// A's round times just before and during a background collection.
pub(crate) struct Rounds {
    /// [`BASELINE_ROUNDS`] rounds before it started.
    pub before: Vec<f64>,
    /// Rounds while it ran (at least one).
    pub during: Vec<f64>,
}

impl Rounds {
    /// The records of the round times: median and maximum, before and during, and how
    /// many rounds ran during.
    pub(crate) fn records(&self, rec: impl Fn(&str, &str, f64) -> Record) -> Vec<Record> {
        let ms = |v: &[f64]| {
            let max = v.iter().copied().fold(0.0, f64::max);
            (median(&mut v.to_vec()) * 1000.0, max * 1000.0)
        };
        let (before_p50, before_max) = ms(&self.before);
        let (during_p50, during_max) = ms(&self.during);
        vec![
            rec("round_p50_before", "ms", before_p50),
            rec("round_max_before", "ms", before_max),
            rec("round_p50_during", "ms", during_p50),
            rec("round_max_during", "ms", during_max),
            rec("rounds_during", "rounds", self.during.len() as f64),
        ]
    }
}

/// Times [`BASELINE_ROUNDS`] of A's small-file rounds, then runs `collector` with
/// `opts` as its own task (on another runtime thread than A's rounds, so neither's
/// CPU work stretches the other's timings) while A keeps committing, until it ends.
/// Returns its report, its seconds and A's round times.
pub(crate) async fn run_while_committing(
    a: &mut Device,
    collector: &Arc<Collector>,
    opts: RunOptions,
) -> anyhow::Result<(fsync_server::RunReport, f64, Rounds)> {
    let mut small = 0usize;
    let mut before = Vec::new();
    for _ in 0..BASELINE_ROUNDS {
        before.push(small_file_round(a, &mut small).await?);
    }
    let done = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn({
        let (collector, done) = (Arc::clone(collector), Arc::clone(&done));
        async move {
            let started = Instant::now();
            let r = collector.run(&opts, &NoProgress).await;
            let secs = started.elapsed().as_secs_f64();
            done.store(true, Ordering::SeqCst);
            r.map(|r| (r, secs))
        }
    });
    // At least one round (a tiny collection may end before the first one does).
    let mut during = Vec::new();
    loop {
        during.push(small_file_round(a, &mut small).await?);
        if done.load(Ordering::SeqCst) {
            break;
        }
    }
    let (report, secs) = run.await.context("the collection task")??;
    Ok((report, secs, Rounds { before, during }))
}

/// Ids of every chunk row in the database (A's, before the seeded rows exist or after
/// they are swept).
async fn kept_chunk_ids(url: &str) -> anyhow::Result<std::collections::HashSet<String>> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    let rows = sqlx::query("SELECT id FROM chunks")
        .fetch_all(&mut conn)
        .await?;
    let _ = conn.close().await;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(Into::into))
        .collect()
}

/// The id of the `n`th seeded row: `n` as 64 hex digits.
fn seeded_id(n: u32) -> String {
    format!("{n:064x}")
}

/// An empty blob file for each seeded row, where the server's local store keeps it.
fn seed_blobs(dir: &std::path::Path, ns: NamespaceId, rows: u32) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let store = fsync_store::LocalStore::open(dir)?;
    (1..=rows).into_par_iter().try_for_each(|n| {
        let id: ChunkId = seeded_id(n).parse()?;
        let path = store.blob_path(&ns, &id);
        let parent = path.parent().context("a blob path has a parent")?;
        std::fs::create_dir_all(parent)?;
        std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        anyhow::Ok(())
    })
}

/// Inserts `rows` unreferenced chunk rows (ids [`seeded_id`] 1 upwards, 64 KiB stored,
/// created and last touched at the epoch) into the one namespace, then `ANALYZE`.
/// Returns the namespace.
async fn seed_rows(url: &str, rows: u32) -> anyhow::Result<NamespaceId> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    let ns: String = sqlx::query("SELECT id FROM namespaces")
        .fetch_one(&mut conn)
        .await
        .context("reading the namespace")?
        .try_get(0)?;
    let sql = if url.starts_with("postgres") {
        "INSERT INTO chunks (namespace_id, id, stored_size, created_at, last_touched) \
         SELECT $1, lpad(to_hex(g), 64, '0'), 65536, 0, 0 FROM generate_series(1, $2) g"
    } else {
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < $2) \
         INSERT INTO chunks (namespace_id, id, stored_size, created_at, last_touched) \
         SELECT $1, printf('%064x', x), 65536, 0, 0 FROM g"
    };
    sqlx::query(sql)
        .bind(ns.clone())
        .bind(i64::from(rows))
        .execute(&mut conn)
        .await
        .context("seeding chunk rows")?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    let _ = conn.close().await;
    Ok(ns.parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::parse_args;

    /// A small run on SQLite: every seeded row is swept, A's file survives (checked
    /// inside the run, with `verify`), and the records are complete.
    #[test]
    fn gc_scenario_sweeps_every_seeded_row_and_keeps_the_referenced_ones() {
        let args: Args = parse_args([
            "gc",
            "--db",
            "sqlite",
            "--rows",
            "2500",
            "--batch",
            "700",
            "--file-mib",
            "1",
        ])
        .unwrap();
        let report = args.run(false).unwrap();
        let get = |metric: &str| {
            report
                .records
                .iter()
                .find(|r| r.metric == metric)
                .unwrap_or_else(|| panic!("no {metric} record"))
        };
        let swept = get("sweep_rate").value * get("sweep_time").value;
        assert!((swept - 2500.0).abs() < 1e-6, "{swept} rows swept");
        assert!(get("kept_chunks").value >= 1.0);
        assert!(get("rounds_during").value >= 1.0);
        for r in &report.records {
            assert_eq!(r.scenario, "gc");
            assert_eq!(r.labels["db"], "sqlite");
            assert_eq!(r.labels["rows"], 2500);
            assert_eq!(r.labels["batch"], 700);
            assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
        }
    }
}
