//! `fsync-bench repack`: an online repack of partly dead packs (issue 13: "≥ 200 MB/s
//! of live data on local disk, while a client keeps committing; its round p50 stays
//! within 2× of the idle figure").
//!
//! Set-up, on a real server (in this process, on loopback, `--blob-store` as chosen):
//! - device A syncs `--files` random files of `--file-mib` MiB in one round, so each of
//!   the server's packs (one per 40 MiB upload batch) holds the blobs of several files;
//! - A deletes every `--delete-every`th file and syncs; a first collection (its "now"
//!   two days ahead, deleted files' history kept one day) sweeps their chunks, leaving
//!   the packs partly dead. It repacks nothing (`repack: None`).
//!
//! Measured: a second collection at the real time, with the default repack (packs
//! under 80 % live), while A writes and commits one small file per round until the
//! collection ends. Reported: live bytes copied, the repack's time and MB/s, packs
//! repacked, and A's round times during the repack against the same rounds just before
//! it. Afterwards `Collector::verify` must find nothing damaged and device B, new,
//! must download every kept file byte for byte.

use std::sync::Arc;

use anyhow::{ensure, Context as _};
use fsync_server::{Collector, NoProgress, Retention, RunOptions};
use serde_json::json;

use super::gc::{run_while_committing, Rounds, BASELINE_ROUNDS};
use super::sync::DATA_SEED;
use crate::data::{self, DataKind};
use crate::harness::{self, Db, Device, Server};
use crate::report::{Record, Report};

/// The `scenario` of this module's records.
const SCENARIO: &str = "repack";
const DAY: i64 = 86_400;

/// Arguments of `fsync-bench repack`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Metadata backend of the server (repeatable: each is measured) [default: sqlite].
    #[arg(long = "db", value_enum)]
    db: Vec<Db>,
    /// Files A uploads.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    files: u32,
    /// Size of each file, MiB.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    file_mib: u32,
    /// A deletes every Nth file (3: a third of the bytes die, every pack falls to about
    /// 67 % live, under the 80 % threshold).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=100))]
    delete_every: u32,
    /// Where the folders and server data go [default: the temp dir].
    #[arg(long)]
    work_dir: Option<std::path::PathBuf>,
}

/// What one backend's run measured.
struct Outcome {
    live_bytes: u64,
    repack_secs: f64,
    run_secs: f64,
    packs_repacked: u64,
    rounds: Rounds,
}

impl Args {
    /// Runs the scenario on every chosen backend.
    pub(crate) fn run(&self, progress: bool) -> anyhow::Result<Report> {
        let work = harness::work_dir(self.work_dir.as_deref(), "fsync-bench-repack-")?;
        let dbs = if self.db.is_empty() {
            vec![Db::Sqlite]
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
            row_label: "files",
            notes: vec![
                format!(
                    "{} random files of {} MiB synced by A in one round; every {}th deleted and \
                     swept (a first collection, no repack); then one Collector::run with the \
                     default repack (packs under 80 % live) while A commits one small file per \
                     round.",
                    self.files, self.file_mib, self.delete_every
                ),
                "repack_rate: live blob bytes copied over the repack step's time (read the old \
                 packs, write the new ones durably, switch the rows)."
                    .to_owned(),
                format!(
                    "A's round: write one 1 KiB file, sync_once; 'before' is the median of \
                     {BASELINE_ROUNDS} rounds just before the repack."
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
        let account = harness::register(server, &harness::username("repack")).await?;
        let dir = tempfile::Builder::new()
            .prefix("repack-")
            .tempdir_in(work)?;
        let mut a = Device::new(&server.url, &account, dir.path(), "a").await?;
        let name = |i: u32| format!("file-{i:04}.bin");
        let content = |i: u32| {
            data::generate(
                DataKind::Random,
                (self.file_mib as usize) << 20,
                DATA_SEED + 500 + u64::from(i),
            )
        };
        if progress {
            eprintln!("repack: A uploads {} × {} MiB", self.files, self.file_mib);
        }
        for i in 0..self.files {
            std::fs::write(a.root.join(name(i)), content(i)).context("writing A's files")?;
        }
        a.round().await?;
        let deleted: Vec<u32> = (0..self.files)
            .filter(|i| i % self.delete_every == 0)
            .collect();
        for i in &deleted {
            std::fs::remove_file(a.root.join(name(*i)))?;
        }
        a.round().await?;

        let collector = Collector::open(
            &server.database_url,
            Arc::new(fsync_store::LocalStore::open(server.blob_dir())?),
            server.packs(),
        )
        .await
        .context("opening the collector")?;
        let ahead = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64
            + 2 * DAY;
        let sweep = RunOptions {
            now: Some(ahead),
            retention: Retention {
                keep_versions: None,
                keep_days: Some(1),
            },
            repack: None,
            ..RunOptions::default()
        };
        let swept = collector.run(&sweep, &NoProgress).await?;
        ensure!(
            swept.chunks_deleted > 0,
            "the first collection swept no chunk of the deleted files: {swept:?}"
        );
        let stats = collector.stats(None, sweep.grace, None).await?;
        if progress {
            eprintln!(
                "repack: {} packs, {:.0} % live; A's baseline rounds",
                stats.packs,
                100.0 * stats.pack_live_bytes as f64 / stats.pack_bytes.max(1) as f64
            );
        }

        let collector = Arc::new(collector);
        let (report, run_secs, rounds) =
            run_while_committing(&mut a, &collector, RunOptions::default())
                .await
                .context("the repack")?;
        ensure!(
            report.packs_repacked > 0,
            "nothing was repacked: {report:?}"
        );
        let verify = collector.verify(None, 1000, &NoProgress).await?;
        ensure!(
            verify.is_clean(),
            "verify found damage after the repack: {:?}",
            verify.damage.first()
        );
        let mut b = Device::new(&server.url, &account, dir.path(), "b").await?;
        b.round().await?;
        for i in (0..self.files).filter(|i| !deleted.contains(i)) {
            let got = std::fs::read(b.root.join(name(i)))?;
            ensure!(
                got == content(i),
                "B's {} differs after the repack",
                name(i)
            );
        }
        Ok(Outcome {
            live_bytes: report.repacked_bytes,
            repack_secs: report.repack_ms as f64 / 1000.0,
            run_secs,
            packs_repacked: report.packs_repacked,
            rounds,
        })
    }

    fn records(&self, db: Db, o: &Outcome) -> Vec<Record> {
        let rec = |metric: &str, unit: &str, value: f64| Record {
            scenario: SCENARIO.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            value,
            labels: json!({"db": db.label(), "files": self.files, "file_mib": self.file_mib})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let mut out = vec![
            rec("repacked", "MB", o.live_bytes as f64 / 1e6),
            rec("repack_time", "s", o.repack_secs),
            rec(
                "repack_rate",
                "MB/s",
                o.live_bytes as f64 / 1e6 / o.repack_secs.max(1e-3),
            ),
            rec("run_time", "s", o.run_secs),
            rec("packs_repacked", "packs", o.packs_repacked as f64),
        ];
        out.extend(o.rounds.records(rec));
        out
    }
}
