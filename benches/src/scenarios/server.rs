//! `fsync-bench server`: the server's metadata paths under load, through the client
//! crate's typed API client against a real server on loopback.
//!
//! - **Lookups**: `POST /api/v1/chunks/missing` with `--ids` chunk ids (10,000 by
//!   default, one request), half of them stored in the namespace and half absent, in a
//!   fixed shuffled order; repeated `--repeat` times after one warm-up. Reported: ids/s
//!   and requests/s at the median time.
//! - **Commits**: `--files` small files (10,000; 1–4 KiB of random bytes, one chunk
//!   each). Their blobs are uploaded first (`chunks/batch`, reported as blobs/s), then
//!   the files are committed through `POST /api/v1/sync/event` in batches of
//!   `--batch` (1,000) events, as new files under a fresh folder each repetition.
//!   Reported: files/s at the median time of `--repeat-commits` repetitions.

use std::time::Instant;

use anyhow::{ensure, Context as _};
use fsync_client::api::ApiClient;
use fsync_client::session;
use fsync_common::wire::{CommitRequest, SyncEvent, SyncEventResult};
use fsync_common::{ChunkId, SyncPath, VersionVector};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

use crate::harness::{self, Db, Server};
use crate::report::{Record, Report};
use crate::timing::median;

/// The `scenario` of this module's records.
const SCENARIO: &str = "server";
/// Seed of the generated chunks and files.
const DATA_SEED: u64 = 3;

/// Arguments of `fsync-bench server`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Metadata backend of the server (repeatable: each is measured).
    #[arg(long = "db", value_enum)]
    db: Vec<Db>,
    /// Chunk ids per lookup (half stored, half absent).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    ids: u32,
    /// Lookups timed; the median is reported.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    repeat: u32,
    /// Small files committed per repetition.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    files: u32,
    /// Events per `sync/event` request.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    batch: u32,
    /// Commit repetitions (each commits `--files` new files); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat_commits: u32,
}

impl Args {
    /// Runs the scenario on every chosen backend.
    pub(crate) fn run(&self, progress: bool) -> anyhow::Result<Report> {
        let work = tempfile::Builder::new()
            .prefix("fsync-bench-server-")
            .tempdir()?;
        let outcomes =
            harness::on_each_db(&harness::dbs(&self.db), work.path(), async |server, db| {
                self.measure(server, db, progress).await
            })?;
        let records = outcomes.into_iter().flat_map(|(_, r)| r).collect();
        Ok(Report {
            row_label: "db",
            notes: vec![
                format!(
                    "Lookups: chunks/missing with {} ids ({} stored, {} absent), median of {}; \
                     commits: {} new files of 1-4 KiB in sync/event batches of {}, median of {}.",
                    self.ids,
                    self.ids / 2,
                    self.ids - self.ids / 2,
                    self.repeat,
                    self.files,
                    self.batch,
                    self.repeat_commits
                ),
                "Server in this process on 127.0.0.1, one client, requests sent one at a time; \
                 per-user rate limits lifted."
                    .into(),
            ],
            records,
        })
    }

    async fn measure(
        &self,
        server: &Server,
        db: Db,
        progress: bool,
    ) -> anyhow::Result<Vec<Record>> {
        let account = harness::register(server, &harness::username("server")).await?;
        let api = server.client()?;
        let state_dir = tempfile::tempdir()?;
        let state = session::open_state(state_dir.path())?;
        let session = session::login(
            &api,
            &state,
            &account.username,
            &account.password,
            "bench",
            session::chunk_config(None)?,
        )
        .await?;
        let ns = session.ns;
        let codec = &session.codec;
        let mut rng = StdRng::seed_from_u64(DATA_SEED);
        let mut records = Vec::new();
        let record = |metric: &str, unit: &str, value: f64, what: &str| Record {
            scenario: SCENARIO.into(),
            metric: metric.into(),
            unit: unit.into(),
            value,
            labels: labels(db, what),
        };

        // ---- lookups
        let n = self.ids as usize;
        let present_n = n / 2;
        let mut present = Vec::with_capacity(present_n);
        let mut blobs = Vec::with_capacity(present_n);
        for i in 0..present_n {
            let mut data = vec![0u8; 256];
            rng.fill(&mut data[..]);
            data[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let id = codec.chunk_id(&data);
            blobs.push((id, codec.encode(&id, &data)?));
            present.push(id);
        }
        api.put_batch(ns, &blobs).await.context("storing chunks")?;
        drop(blobs);
        let mut ids: Vec<ChunkId> = present.clone();
        ids.extend((0..n - present_n).map(|_| ChunkId::from_bytes(rng.gen())));
        ids.shuffle(&mut rng);
        let missing = api.missing(ns, &ids).await?; // warm-up
        ensure!(
            missing.len() == n - present_n,
            "chunks/missing answered {} missing ids, expected {}",
            missing.len(),
            n - present_n
        );
        let mut times = Vec::new();
        let mut requests = 0;
        for _ in 0..self.repeat {
            let before = api.stats().requests;
            let started = Instant::now();
            let missing = api.missing(ns, &ids).await?;
            times.push(started.elapsed().as_secs_f64());
            requests = api.stats().requests - before;
            ensure!(
                missing.len() == n - present_n,
                "lookups changed their answer"
            );
        }
        let secs = median(&mut times);
        let what = format!("{n} ids");
        records.push(record("chunks/missing", "ids/s", n as f64 / secs, &what));
        records.push(record(
            "chunks/missing",
            "requests/s",
            requests as f64 / secs,
            &what,
        ));
        records.push(record(
            "chunks/missing",
            "ms/request",
            secs * 1e3 / requests as f64,
            &what,
        ));
        if progress {
            eprintln!(
                "server {}: chunks/missing {n} ids in {:.1} ms ({requests} request(s))",
                db.label(),
                secs * 1e3
            );
        }

        // ---- commits
        let files = self.files as usize;
        let mut commits = Vec::with_capacity(files);
        let mut blobs = Vec::with_capacity(files);
        for i in 0..files {
            let len = rng.gen_range(1024..=4096);
            let mut data = vec![0u8; len];
            rng.fill(&mut data[..]);
            data[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let digest = session
                .chunker
                .digest_reader(&data[..], fsync_chunker::HashOptions::default())?;
            ensure!(digest.chunks.len() == 1, "a small file is one chunk");
            let id = digest.chunks[0].id;
            blobs.push((id, codec.encode(&id, &data)?));
            commits.push((data.len(), digest));
        }
        let started = Instant::now();
        let all: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();
        let wanted = api.missing(ns, &all).await?;
        ensure!(wanted.len() == files, "fresh chunks reported present");
        api.put_batch(ns, &blobs).await?;
        let upload_secs = started.elapsed().as_secs_f64();
        drop(blobs);
        records.push(record(
            "upload (missing + chunks/batch)",
            "blobs/s",
            files as f64 / upload_secs,
            &format!("{files} blobs of 1-4 KiB"),
        ));
        let mut times = Vec::new();
        for rep in 0..self.repeat_commits {
            let events: Vec<SyncEvent> = commits
                .iter()
                .enumerate()
                .map(|(i, (len, digest))| {
                    SyncEvent::Create(CommitRequest {
                        pages: Vec::new(),
                        namespace: ns,
                        path: SyncPath::new(&format!("r{rep}/d{:03}/f{i:06}.bin", i / 1000))
                            .expect("valid path"),
                        base: VersionVector::new(),
                        chunks: digest.chunk_refs(),
                        size: *len as u64,
                        mtime: 1_700_000_000_000_000_000 + i as i64,
                        mode: 0o644,
                        content_hash: digest.content_hash,
                        idempotency_key: hex::encode(rng.gen::<[u8; 16]>()),
                    })
                })
                .collect();
            let started = Instant::now();
            let mut committed = 0;
            let mut rest = events;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(self.batch as usize));
                let results = commit_batch(&api, rest).await?;
                committed += results;
                rest = tail;
            }
            times.push(started.elapsed().as_secs_f64());
            ensure!(committed == files, "{committed} of {files} files committed");
            if progress {
                eprintln!(
                    "server {}: committed {files} files in {:.2} s",
                    db.label(),
                    times.last().expect("pushed")
                );
            }
        }
        let secs = median(&mut times);
        records.push(record(
            "commit (sync/event)",
            "files/s",
            files as f64 / secs,
            &format!("{files} files, batches of {}", self.batch),
        ));
        Ok(records)
    }
}

/// Sends one `sync/event` batch; the number of files committed.
async fn commit_batch(api: &ApiClient, events: Vec<SyncEvent>) -> anyhow::Result<usize> {
    let results = api.events(events).await?;
    let mut ok = 0;
    for r in results {
        match r {
            SyncEventResult::Committed(_) => ok += 1,
            SyncEventResult::Failed(e) => anyhow::bail!("commit refused: {}", e.error.message),
            SyncEventResult::Applied(_) => {}
        }
    }
    Ok(ok)
}

fn labels(db: Db, what: &str) -> serde_json::Map<String, Value> {
    let Value::Object(m) = json!({"db": db.label(), "load": what}) else {
        unreachable!()
    };
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::parse_args;

    #[test]
    fn server_scenario_runs_on_a_small_input() {
        let args: Args = parse_args([
            "server",
            "--ids",
            "200",
            "--repeat",
            "2",
            "--files",
            "30",
            "--batch",
            "10",
            "--repeat-commits",
            "1",
        ])
        .unwrap();
        let report = args.run(false).unwrap();
        let metrics: Vec<(&str, &str)> = report
            .records
            .iter()
            .map(|r| (r.metric.as_str(), r.unit.as_str()))
            .collect();
        assert_eq!(
            metrics,
            [
                ("chunks/missing", "ids/s"),
                ("chunks/missing", "requests/s"),
                ("chunks/missing", "ms/request"),
                ("upload (missing + chunks/batch)", "blobs/s"),
                ("commit (sync/event)", "files/s"),
            ]
        );
        for r in &report.records {
            assert_eq!(r.scenario, "server");
            assert_eq!(r.labels["db"], "sqlite");
            assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
        }
    }
}
