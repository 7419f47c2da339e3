//! `fsync-bench sync`: end-to-end sync between two client devices through a real
//! server on loopback. The server and both engines run in this process (the client
//! crate's `Engine`, `session` and `daemon`), each device with its own API client,
//! whose counters give the requests and body bytes of every round.
//!
//! Parts (`--only`, all by default), each on its own account so they do not mix:
//!
//! - `initial-sync`: a generated tree (`--files`, `--total-mib`; log-normal sizes
//!   between 1 KiB and 4 MiB, every other file compressible text, the rest random) is
//!   synced from A to the server (A's round), then to B (B's round); then one large
//!   random file (`--large-mib`) the same way. B's copy is checked byte for byte.
//! - `noop-rescan`: A's and B's rounds when nothing changed (`--repeat`, median).
//! - `small-edit`: on the large file synced to B, 1-byte overwrites and 1-byte inserts
//!   at the start, middle and end (each `--edit-repeat` times, median): bytes on the
//!   wire of A's round (edit → committed) and of B's round (committed → visible),
//!   their times, and the chunks that were new.
//! - `latency`: two daemons (`fsync_client::daemon::run`, file watcher and push
//!   socket), each on its own thread and runtime; a 4 KiB file is rewritten on A
//!   `--edits` times and B's copy polled every 2 ms until it matches.
//! - `busy`: two daemons while a new large file (`--large-mib`) travels: a small file
//!   saved on A 1.5 s after the large one appeared (during A's upload) and another
//!   0.5 s after it was committed (during B's download), each timed until visible on
//!   B (`--edit-repeat` large files); then 1-byte overwrites of the large file in the
//!   running daemon, timed until committed and until on B.
//! - `--compare`: rsync's local delta transfer (`rsync -I --no-whole-file --stats`)
//!   of every small edit; `restic backup` then `restore` of the tree and of the large
//!   file with a local repository; `fsync-client --once` uploading the large file as
//!   a process (time and peak RSS from `/usr/bin/time -v`).

use std::path::{Path, PathBuf};

use fsync_client::session;
use serde_json::{json, Value};

use crate::harness::{self, Db, Device, Server};
use crate::report::{Record, Report};

mod busy;
mod compare;
mod large_file;
mod latency;
mod tree;

pub(crate) use large_file::{small_edits, write_large};
pub(crate) use tree::{same_file, write_tree};

/// Seed of the generated tree and files.
pub(crate) const DATA_SEED: u64 = 2026;
/// 1 MB, as in MB/s.
const MB: f64 = 1e6;

/// A part of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Tree and large file, A → server → B.
    InitialSync,
    /// A round when nothing changed.
    NoopRescan,
    /// 1-byte edits of the large file.
    SmallEdit,
    /// Edit-to-visible latency between two daemons.
    Latency,
    /// Two daemons while a large file travels: small files meanwhile, and 1-byte edits
    /// of the large file in the running daemon.
    Busy,
}

impl Part {
    /// The `scenario` of the part's records.
    fn label(self) -> &'static str {
        match self {
            Self::InitialSync => "initial-sync",
            Self::NoopRescan => "noop-rescan",
            Self::SmallEdit => "small-edit",
            Self::Latency => "latency",
            Self::Busy => "busy",
        }
    }
}

/// Arguments of `fsync-bench sync`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Metadata backend of the server (repeatable: each is measured).
    #[arg(long = "db", value_enum)]
    db: Vec<Db>,
    /// Run only these parts (repeatable) [default: all].
    #[arg(long = "only", value_enum)]
    only: Vec<Part>,
    /// Files of the generated tree.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    files: u32,
    /// Total size of the generated tree, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    total_mib: u32,
    /// Size of the large random file, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    large_mib: u32,
    /// No-op rounds timed; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// Times each small edit is made (cumulatively); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    edit_repeat: u32,
    /// Edits of the latency test.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    edits: u32,
    /// Also run rsync (small edits) and restic (backup and restore of the tree and the
    /// large file), when installed.
    #[arg(long)]
    compare: bool,
    /// Where the folders, server data and peer repositories go [default: the temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// What the parts of one backend share.
pub(crate) struct Ctx<'a> {
    pub(crate) args: &'a Args,
    pub(crate) db: Db,
    pub(crate) work: &'a Path,
    pub(crate) progress: bool,
    pub(crate) records: Vec<Record>,
    pub(crate) notes: Vec<String>,
}

impl Ctx<'_> {
    fn push(&mut self, part: Part, metric: &str, unit: &str, case: &str, value: f64) {
        let Value::Object(labels) = json!({"case": case, "db": self.db.label()}) else {
            unreachable!()
        };
        self.records.push(Record {
            scenario: part.label().into(),
            metric: metric.into(),
            unit: unit.into(),
            value,
            labels,
        });
    }

    fn say(&self, msg: &str) {
        if self.progress {
            eprintln!("sync {}: {msg}", self.db.label());
        }
    }

    fn wants(&self, part: Part) -> bool {
        self.args.only.is_empty() || self.args.only.contains(&part)
    }
}

impl Args {
    /// Runs the chosen parts on every chosen backend.
    pub(crate) fn run(&self, progress: bool) -> anyhow::Result<Report> {
        let rt = harness::runtime()?;
        let work = harness::work_dir(self.work_dir.as_deref(), "fsync-bench-sync-")?;
        let mut records = Vec::new();
        let mut notes = vec![
            "MB/s = file bytes / wall time of the round(s); 1 MB = 10^6 bytes. Server and engines \
             in this process on 127.0.0.1 (files in the page cache); per-user rate limits lifted."
                .to_owned(),
            "wire/file = request + response body bytes of the round / file bytes (HTTP headers \
             not counted)."
                .to_owned(),
        ];
        for db in harness::dbs(&self.db) {
            let mut ctx = Ctx {
                args: self,
                db,
                work: work.path(),
                progress,
                records: Vec::new(),
                notes: Vec::new(),
            };
            rt.block_on(run_db(&mut ctx))?;
            records.append(&mut ctx.records);
            for n in ctx.notes {
                if !notes.contains(&n) {
                    notes.push(n);
                }
            }
        }
        Ok(Report {
            row_label: "case",
            notes,
            records,
        })
    }
}

async fn run_db(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix(ctx.db.label())
        .tempdir_in(ctx.work)?;
    let server = Server::start(ctx.db, dir.path()).await?;
    let result = async {
        if ctx.wants(Part::InitialSync) || ctx.wants(Part::NoopRescan) {
            tree::tree_parts(ctx, &server, dir.path()).await?;
        }
        if ctx.wants(Part::InitialSync) || ctx.wants(Part::SmallEdit) {
            large_file::large_parts(ctx, &server, dir.path()).await?;
        }
        if ctx.wants(Part::Latency) {
            latency::latency(ctx, &server, dir.path()).await?;
        }
        if ctx.wants(Part::Busy) {
            busy::busy(ctx, &server, dir.path()).await?;
        }
        anyhow::Ok(())
    }
    .await;
    server.stop().await;
    result
}

/// Two devices of a fresh account, `<dir>/<prefix>-a` and `-b`.
pub(crate) async fn pair(
    server: &Server,
    dir: &Path,
    prefix: &str,
) -> anyhow::Result<(Device, Device)> {
    pair_with_chunks(server, dir, prefix, session::chunk_config(None)?).await
}

/// [`pair`] with both engines' chunkers set to `chunks`.
pub(crate) async fn pair_with_chunks(
    server: &Server,
    dir: &Path,
    prefix: &str,
    chunks: fsync_chunker::ChunkerConfig,
) -> anyhow::Result<(Device, Device)> {
    let account = harness::register(server, &harness::username(prefix)).await?;
    let a = Device::with_chunks(&server.url, &account, dir, &format!("{prefix}-a"), chunks).await?;
    let b = Device::with_chunks(&server.url, &account, dir, &format!("{prefix}-b"), chunks).await?;
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::scenarios::parse_args;

    #[test]
    fn every_sync_part_runs_on_a_small_input() {
        let args: Args = parse_args([
            "sync",
            "--files",
            "12",
            "--total-mib",
            "1",
            "--large-mib",
            "2",
            "--repeat",
            "1",
            "--edit-repeat",
            "1",
            "--edits",
            "2",
        ])
        .unwrap();
        let report = args.run(false).unwrap();
        let scenarios: BTreeSet<&str> =
            report.records.iter().map(|r| r.scenario.as_str()).collect();
        assert_eq!(
            scenarios,
            BTreeSet::from([
                "busy",
                "initial-sync",
                "latency",
                "noop-rescan",
                "small-edit"
            ])
        );
        for r in &report.records {
            assert!(r.value.is_finite() && r.value >= 0.0, "{r:?}");
            let keys: Vec<&str> = r.labels.keys().map(String::as_str).collect();
            assert_eq!(keys, ["case", "db"], "{r:?}");
        }
        let noop_up = report
            .records
            .iter()
            .find(|r| r.scenario == "noop-rescan" && r.metric == "bytes up")
            .unwrap();
        assert!(noop_up.value < 1.0, "a no-op round sent {}", noop_up.value);
        let mut out = Vec::new();
        crate::report::write_table(&report, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("small-edit: new chunks"));
    }
}
