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
//! - `--compare`: rsync's local delta transfer (`rsync -I --no-whole-file --stats`)
//!   of every small edit, and `restic backup` of the large file to a local
//!   repository, next to `fsync-client --once` uploading it as a process (time and
//!   peak RSS from `/usr/bin/time -v`).

use std::collections::HashSet;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use fsync_chunker::HashOptions;
use fsync_client::api::ApiStats;
use fsync_client::daemon::{self, DaemonOptions};
use fsync_client::session;
use fsync_common::wire::PushMessage;
use fsync_common::ChunkId;
use fsync_testkit::memory;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::data::{self, DataKind};
use crate::harness::{self, Account, Db, Device, Round, Server};
use crate::report::{Record, Report};
use crate::timing::median;

/// Seed of the generated tree and files.
pub(crate) const DATA_SEED: u64 = 2026;
/// Smallest and largest generated file of the tree.
const MIN_FILE: u64 = 1024;
const MAX_FILE: u64 = 4 << 20;
/// σ of the log-normal file sizes (of ln(size)).
const SIZE_SIGMA: f64 = 1.5;
/// The large file is written in pieces of this size.
const PIECE: usize = 16 << 20;
/// Size of the file edited in the latency test.
const LATENCY_FILE: usize = 4096;
/// Polling period of B's copy in the latency test.
const POLL: Duration = Duration::from_millis(2);
/// An edit not visible on B after this long fails the run.
const VISIBLE_DEADLINE: Duration = Duration::from_secs(20);
/// Pause after an edit became visible, so that both daemons finish the rounds it
/// caused (A sees its own commit pushed, B its own download) before the next edit.
const SETTLE: Duration = Duration::from_millis(300);
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
}

impl Part {
    /// The `scenario` of the part's records.
    fn label(self) -> &'static str {
        match self {
            Self::InitialSync => "initial-sync",
            Self::NoopRescan => "noop-rescan",
            Self::SmallEdit => "small-edit",
            Self::Latency => "latency",
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
    /// Also run rsync (small edits) and restic (large file), when installed.
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
            tree_parts(ctx, &server, dir.path()).await?;
        }
        if ctx.wants(Part::InitialSync) || ctx.wants(Part::SmallEdit) {
            large_parts(ctx, &server, dir.path()).await?;
        }
        if ctx.wants(Part::Latency) {
            latency(ctx, &server, dir.path()).await?;
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

// ------------------------------------------------------------------ tree

/// Initial sync of the generated tree, then no-op rescans.
async fn tree_parts(ctx: &mut Ctx<'_>, server: &Server, dir: &Path) -> anyhow::Result<()> {
    let (mut a, mut b) = pair(server, dir, "tree").await?;
    let n = ctx.args.files as usize;
    let sizes = file_sizes(n, u64::from(ctx.args.total_mib) << 20, DATA_SEED)?;
    let root = a.root.clone();
    let paths = tokio::task::spawn_blocking(move || write_tree(&root, &sizes, DATA_SEED))
        .await
        .expect("tree task")?;
    let total: u64 = paths.iter().map(|(_, s)| s).sum();
    // Even files are text (see `write_tree`).
    let text: u64 = paths.iter().step_by(2).map(|(_, s)| s).sum();
    ctx.notes.push(format!(
        "Tree: {n} files, {:.1} MiB ({:.0} % text by bytes), log-normal sizes {} KiB-{} MiB (sigma {SIZE_SIGMA}), seed {DATA_SEED}.",
        total as f64 / f64::from(1 << 20),
        text as f64 * 100.0 / total as f64,
        MIN_FILE >> 10,
        MAX_FILE >> 20
    ));
    ctx.say(&format!(
        "tree of {n} files, {:.1} MiB written",
        total as f64 / f64::from(1 << 20)
    ));
    let up = a.round().await?;
    ensure!(
        up.report.uploaded == n,
        "A uploaded {} of {n} files",
        up.report.uploaded
    );
    let down = b.round().await?;
    ensure!(
        down.report.downloaded == n,
        "B downloaded {} of {n} files",
        down.report.downloaded
    );
    ctx.say(&format!(
        "tree: A round {:.2} s ({} requests), B round {:.2} s ({} requests)",
        up.secs, up.traffic.requests, down.secs, down.traffic.requests
    ));
    let (ra, rb) = (a.root.clone(), b.root.clone());
    let rel: Vec<String> = paths.iter().map(|(p, _)| p.clone()).collect();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        rel.par_iter()
            .try_for_each(|p| same_file(&ra.join(p), &rb.join(p)))
    })
    .await
    .expect("compare task")?;
    if ctx.wants(Part::InitialSync) {
        let case = format!("tree ({n} files)");
        transfer_records(ctx, &case, total, n, &up, &down);
    }
    if ctx.wants(Part::NoopRescan) {
        for (side, dev) in [("A", &mut a), ("B", &mut b)] {
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..ctx.args.repeat {
                let r = dev.round().await?;
                ensure!(
                    r.report.is_idle(),
                    "a no-op round on {side} did something: {:?}",
                    r.report
                );
                times.push(r.secs);
                last = Some(r.traffic);
            }
            let t = last.expect("at least one round");
            let case = format!("{side}, {n} files unchanged");
            ctx.push(
                Part::NoopRescan,
                "round time",
                "ms",
                &case,
                median(&mut times) * 1e3,
            );
            ctx.push(
                Part::NoopRescan,
                "requests",
                "count",
                &case,
                t.requests as f64,
            );
            ctx.push(
                Part::NoopRescan,
                "bytes up",
                "bytes",
                &case,
                t.bytes_up as f64,
            );
            ctx.push(
                Part::NoopRescan,
                "bytes down",
                "bytes",
                &case,
                t.bytes_down as f64,
            );
        }
        ctx.say("no-op rescans done");
    }
    Ok(())
}

/// The records of one A → server → B transfer.
fn transfer_records(
    ctx: &mut Ctx<'_>,
    case: &str,
    bytes: u64,
    files: usize,
    up: &Round,
    down: &Round,
) {
    let p = Part::InitialSync;
    let mbs = |secs: f64| bytes as f64 / MB / secs;
    ctx.push(
        p,
        "throughput",
        "MB/s",
        &format!("{case}: A upload round"),
        mbs(up.secs),
    );
    ctx.push(
        p,
        "throughput",
        "MB/s",
        &format!("{case}: B download round"),
        mbs(down.secs),
    );
    ctx.push(
        p,
        "throughput",
        "MB/s",
        &format!("{case}: A then B"),
        mbs(up.secs + down.secs),
    );
    let fps = |secs: f64| files as f64 / secs;
    ctx.push(
        p,
        "files",
        "files/s",
        &format!("{case}: A upload round"),
        fps(up.secs),
    );
    ctx.push(
        p,
        "files",
        "files/s",
        &format!("{case}: B download round"),
        fps(down.secs),
    );
    for (side, r) in [("A upload round", up), ("B download round", down)] {
        let c = format!("{case}: {side}");
        ctx.push(
            p,
            "HTTP requests",
            "per file",
            &c,
            r.traffic.requests as f64 / files as f64,
        );
        ctx.push(
            p,
            "wire bytes",
            "wire/file",
            &c,
            (r.traffic.bytes_up + r.traffic.bytes_down) as f64 / bytes as f64,
        );
    }
}

/// `n` file sizes between [`MIN_FILE`] and [`MAX_FILE`], log-normal with σ
/// [`SIZE_SIGMA`], whose sum is as close to `total` as the bounds allow.
fn file_sizes(n: usize, total: u64, seed: u64) -> anyhow::Result<Vec<u64>> {
    ensure!(
        n as u64 * MIN_FILE <= total && total <= n as u64 * MAX_FILE,
        "{n} files of {MIN_FILE}-{MAX_FILE} bytes cannot add up to {total} bytes"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    // Box-Muller: standard normal deviates.
    let z: Vec<f64> = (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    let sizes = |mu: f64| -> Vec<u64> {
        z.iter()
            .map(|z| ((mu + SIZE_SIGMA * z).exp() as u64).clamp(MIN_FILE, MAX_FILE))
            .collect()
    };
    // The sum grows with µ: bisect.
    let (mut lo, mut hi) = ((MIN_FILE as f64).ln() - 10.0, (MAX_FILE as f64).ln() + 10.0);
    for _ in 0..100 {
        let mid = f64::midpoint(lo, hi);
        if sizes(mid).iter().sum::<u64>() < total {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(sizes(hi))
}

/// Writes the tree under `root`: file `i` is `d{i/100}/f{i}.txt` (text) for even `i`,
/// `.bin` (random) for odd. Returns the relative paths and sizes.
pub(crate) fn write_tree(
    root: &Path,
    sizes: &[u64],
    seed: u64,
) -> anyhow::Result<Vec<(String, u64)>> {
    sizes
        .par_iter()
        .enumerate()
        .map(|(i, &size)| {
            let (kind, ext) = if i % 2 == 0 {
                (DataKind::Text, "txt")
            } else {
                (DataKind::Random, "bin")
            };
            let rel = format!("d{:03}/f{i:06}.{ext}", i / 100);
            let path = root.join(&rel);
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            let data = data::generate(kind, size as usize, seed.wrapping_mul(1_000_003) + i as u64);
            std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
            Ok((rel, size))
        })
        .collect()
}

/// Fails unless the two files have the same bytes.
pub(crate) fn same_file(a: &Path, b: &Path) -> anyhow::Result<()> {
    let hash = |p: &Path| -> anyhow::Result<blake3::Hash> {
        let mut h = blake3::Hasher::new();
        h.update_reader(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )?;
        Ok(h.finalize())
    };
    ensure!(
        hash(a)? == hash(b)?,
        "{} and {} differ",
        a.display(),
        b.display()
    );
    Ok(())
}

// ------------------------------------------------------------------ large file

/// Writes `mib` MiB of random bytes to `path`.
pub(crate) fn write_large(path: &Path, mib: u32, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = (mib as usize) << 20;
    let mut k = 0u64;
    while left > 0 {
        let n = left.min(PIECE);
        f.write_all(&data::generate(DataKind::Random, n, seed.wrapping_add(k)))?;
        left -= n;
        k += 1;
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

/// Initial sync of the large file (and restic's and a client process's), then the
/// small edits.
async fn large_parts(ctx: &mut Ctx<'_>, server: &Server, dir: &Path) -> anyhow::Result<()> {
    let (mut a, mut b) = pair(server, dir, "large").await?;
    let mib = ctx.args.large_mib;
    let name = "large.bin";
    let path_a = a.root.join(name);
    let path_b = b.root.join(name);
    {
        let p = path_a.clone();
        tokio::task::spawn_blocking(move || write_large(&p, mib, DATA_SEED + 1))
            .await
            .expect("write task")?;
    }
    ctx.say(&format!("large file of {mib} MiB written"));
    let up = a.round().await?;
    let down = b.round().await?;
    ensure!(
        up.report.uploaded == 1 && down.report.downloaded == 1,
        "the large file did not sync"
    );
    same_file(&path_a, &path_b)?;
    ctx.say(&format!(
        "large file: A round {:.2} s, B round {:.2} s",
        up.secs, down.secs
    ));
    let bytes = u64::from(mib) << 20;
    let case = format!("large random file ({mib} MiB)");
    if ctx.wants(Part::InitialSync) {
        transfer_records(ctx, &case, bytes, 1, &up, &down);
        if ctx.args.compare {
            compare_large(ctx, server, dir, &path_a, &case, bytes, up.secs).await?;
        }
    }
    if ctx.wants(Part::SmallEdit) {
        small_edits(ctx, &mut a, &mut b, name, dir).await?;
    }
    Ok(())
}

/// Where an edit is made.
#[derive(Debug, Clone, Copy)]
enum Pos {
    Start,
    Middle,
    End,
}

impl Pos {
    fn offset(self, len: u64) -> u64 {
        match self {
            Self::Start => 0,
            Self::Middle => len / 2,
            Self::End => len.saturating_sub(1),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Middle => "middle",
            Self::End => "end",
        }
    }
}

/// Overwrites one byte in place (same inode, same size): it becomes its value + 1.
fn overwrite_byte(path: &Path, pos: Pos) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let off = pos.offset(f.metadata()?.len());
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off)?;
    b[0] = b[0].wrapping_add(1);
    f.write_all_at(&b, off)?;
    f.sync_all()?;
    Ok(())
}

/// Inserts one byte (a save that rewrites the file: temp file, then rename over it).
fn insert_byte(path: &Path, pos: Pos, tmp_dir: &Path, value: u8) -> anyhow::Result<()> {
    let mut data = std::fs::read(path)?;
    let off = match pos {
        Pos::End => data.len(),
        _ => pos.offset(data.len() as u64) as usize,
    };
    data.insert(off, value);
    let tmp = tmp_dir.join("edit.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The 1-byte edits, each made `edit_repeat` times, with rsync alongside.
pub(crate) async fn small_edits(
    ctx: &mut Ctx<'_>,
    a: &mut Device,
    b: &mut Device,
    name: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let path_a = a.root.join(name);
    let path_b = b.root.join(name);
    let scratch = dir.join("edit-scratch");
    std::fs::create_dir_all(&scratch)?;
    let rsync = ctx.args.compare && tool_available("rsync", &["--version"]);
    if ctx.args.compare && !rsync {
        ctx.notes
            .push("rsync is not installed: the small-edit comparison was skipped.".into());
    }
    let chunker = a.engine.keys().chunker.clone();
    let digest = |p: &Path| -> anyhow::Result<Vec<(ChunkId, u32)>> {
        let d = chunker.digest_reader(std::fs::File::open(p)?, HashOptions::default())?;
        Ok(d.chunks.iter().map(|c| (c.id, c.len)).collect())
    };
    let mut known: HashSet<ChunkId> = digest(&path_a)?.into_iter().map(|(id, _)| id).collect();
    let mut value = 0u8;
    for insert in [false, true] {
        for pos in [Pos::Start, Pos::Middle, Pos::End] {
            let case = format!(
                "{} 1 byte at {}",
                if insert { "insert" } else { "overwrite" },
                pos.label()
            );
            let mut cols: [Vec<f64>; 8] = Default::default();
            for _ in 0..ctx.args.edit_repeat {
                value = value.wrapping_add(1);
                if insert {
                    insert_byte(&path_a, pos, &scratch, value)?;
                } else {
                    overwrite_byte(&path_a, pos)?;
                }
                let chunks = digest(&path_a)?;
                let new: Vec<&(ChunkId, u32)> = chunks
                    .iter()
                    .filter(|(id, _)| !known.contains(id))
                    .collect();
                let new_bytes: u64 = new.iter().map(|(_, l)| u64::from(*l)).sum();
                let new_count = new.len();
                known.extend(chunks.iter().map(|(id, _)| *id));
                let up = a.round().await?;
                ensure!(
                    up.report.uploaded == 1,
                    "A did not commit the edit: {:?}",
                    up.report
                );
                let peer = if rsync {
                    Some(rsync_delta(&path_a, &path_b, &scratch)?)
                } else {
                    None
                };
                let down = b.round().await?;
                ensure!(
                    down.report.downloaded == 1,
                    "B did not get the edit: {:?}",
                    down.report
                );
                same_file(&path_a, &path_b)?;
                let wire = |t: ApiStats| (t.bytes_up + t.bytes_down) as f64;
                cols[0].push(up.traffic.bytes_up as f64);
                cols[1].push(down.traffic.bytes_down as f64);
                cols[2].push(wire(up.traffic) + wire(down.traffic));
                cols[3].push(new_count as f64);
                cols[4].push(new_bytes as f64);
                cols[5].push(up.secs * 1e3);
                cols[6].push(down.secs * 1e3);
                if let Some((sent, received)) = peer {
                    cols[7].push((sent + received) as f64);
                }
            }
            let p = Part::SmallEdit;
            let [up, down, total, new_n, new_b, t_up, t_down, rs] = &mut cols;
            ctx.push(
                p,
                "A bytes up (edit → committed)",
                "bytes",
                &case,
                median(up),
            );
            ctx.push(
                p,
                "B bytes down (committed → visible)",
                "bytes",
                &case,
                median(down),
            );
            ctx.push(
                p,
                "A + B bytes, both directions",
                "bytes",
                &case,
                median(total),
            );
            ctx.push(p, "new chunks", "count", &case, median(new_n));
            ctx.push(p, "new chunk bytes", "bytes", &case, median(new_b));
            ctx.push(p, "edit → committed (A round)", "ms", &case, median(t_up));
            ctx.push(
                p,
                "committed → visible (B round)",
                "ms",
                &case,
                median(t_down),
            );
            if !rs.is_empty() {
                let rsync_total = median(rs);
                ctx.push(
                    p,
                    "rsync bytes sent + received",
                    "bytes",
                    &case,
                    rsync_total,
                );
                let a_wire = median(up);
                ctx.push(
                    p,
                    "A bytes up / rsync bytes",
                    "ratio",
                    &case,
                    a_wire / rsync_total,
                );
            }
            ctx.say(&format!("small edit: {case} done"));
        }
    }
    Ok(())
}

/// rsync's delta transfer of `src` onto a copy of `old`: (bytes sent, bytes received).
fn rsync_delta(src: &Path, old: &Path, scratch: &Path) -> anyhow::Result<(u64, u64)> {
    let dst = scratch.join("rsync-dst");
    std::fs::copy(old, &dst)?;
    let out = Command::new("rsync")
        .args(["-I", "--no-whole-file", "--stats"])
        .arg(src)
        .arg(&dst)
        .output()
        .context("running rsync")?;
    ensure!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&dst);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("rsync --stats printed no {name:?}"))?;
        let digits: String = line[name.len()..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '.')
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse().with_context(|| format!("parsing {line:?}"))
    };
    Ok((field("Total bytes sent:")?, field("Total bytes received:")?))
}

fn tool_available(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What [`timed_process`] measured of one process.
struct ProcessRun {
    /// Wall time.
    secs: f64,
    /// Peak RSS (KiB), from `/usr/bin/time -v`.
    rss_kib: Option<u64>,
    /// User + system CPU seconds, from `/usr/bin/time -v`.
    cpu_secs: Option<f64>,
}

/// Runs `cmd` under `/usr/bin/time -v` when it exists: wall time, peak RSS and CPU time.
fn timed_process(mut cmd: Command, what: &str) -> anyhow::Result<ProcessRun> {
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut full = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    } else {
        std::mem::replace(&mut cmd, Command::new("true"))
    };
    let started = Instant::now();
    let out = full.output().with_context(|| format!("running {what}"))?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{what} failed ({}): {stderr}",
        out.status
    );
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let rss_kib = field("Maximum resident set size (kbytes):").and_then(|v| v.parse().ok());
    let cpu = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
    let cpu_secs = match (cpu("User time (seconds):"), cpu("System time (seconds):")) {
        (Some(u), Some(s)) => Some(u + s),
        _ => None,
    };
    Ok(ProcessRun {
        secs,
        rss_kib,
        cpu_secs,
    })
}

/// This process's user + system CPU seconds so far (`/proc/self/stat`, 100 ticks/s).
fn own_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `fsync-client --once` on `root` as a process, against `server` as `account`, with
/// the server's share measured alongside: the bench process hosts the server and is
/// otherwise idle meanwhile, so its CPU time during the run is the server's, and its
/// peak RSS above its RSS at the start is what the server took for the run (the
/// bench's own data and the idle server are in that baseline). Records throughput,
/// CPU time and peak RSS.
#[allow(clippy::too_many_arguments)]
async fn client_process(
    ctx: &mut Ctx<'_>,
    server: &Server,
    account: &Account,
    client_bin: &Path,
    root: &Path,
    roots_file: &Path,
    what: &str,
    bytes: u64,
) -> anyhow::Result<ProcessRun> {
    let p = Part::InitialSync;
    let mut cmd = Command::new(client_bin);
    cmd.arg("--watch-dir")
        .arg(root)
        .args(["--server-url", &server.url, "--username", &account.username])
        .arg("--once")
        .env("FSYNC_PASSWORD", &account.password)
        .env("FSYNC_ROOTS_FILE", roots_file)
        .env("RUST_LOG", "warn");
    let peak_reset = memory::reset_peak().is_ok();
    let rss_before = memory::status_bytes("VmRSS").ok();
    let cpu_before = own_cpu_secs();
    let run = tokio::task::spawn_blocking(move || timed_process(cmd, "fsync-client --once"))
        .await
        .expect("process task")?;
    let server_cpu = own_cpu_secs()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let server_growth = memory::status_bytes("VmHWM")
        .ok()
        .filter(|_| peak_reset)
        .zip(rss_before)
        .map(|(peak, before)| peak.saturating_sub(before));
    let case = format!("{what}: fsync-client --once process");
    ctx.push(p, "throughput", "MB/s", &case, bytes as f64 / MB / run.secs);
    if let Some(cpu) = run.cpu_secs {
        ctx.push(p, "CPU time", "s", &case, cpu);
    }
    if let Some(kib) = run.rss_kib {
        ctx.push(p, "peak RSS", "MiB", &case, kib as f64 / 1024.0);
    }
    let server_case = format!("{what}: server (bench process) meanwhile");
    if let Some(cpu) = server_cpu {
        ctx.push(p, "CPU time", "s", &server_case, cpu);
    }
    if let Some(bytes) = server_growth {
        ctx.push(
            p,
            "peak RSS",
            "MiB",
            &format!("{server_case} (growth above the bench's RSS)"),
            bytes as f64 / (1024.0 * 1024.0),
        );
    }
    Ok(run)
}

/// restic's backup of the large file, and `fsync-client --once` uploading it as a
/// separate process.
async fn compare_large(
    ctx: &mut Ctx<'_>,
    server: &Server,
    dir: &Path,
    file: &Path,
    case: &str,
    bytes: u64,
    fsync_secs: f64,
) -> anyhow::Result<()> {
    let p = Part::InitialSync;
    if !Path::new("/usr/bin/time").exists() {
        ctx.notes
            .push("/usr/bin/time is not installed: peak RSS was not measured.".into());
    }
    // fsync-client as a process, on a fresh account, with a hard link of the file:
    // one uploads it, a second (a new device, empty folder) downloads it.
    let client_bin = std::env::current_exe()?.with_file_name("fsync-client");
    let mut client_rss = None;
    if client_bin.exists() {
        let account = harness::register(server, &harness::username("proc")).await?;
        let roots_file = dir.join("fsync-roots");
        let up_root = dir.join("proc-root");
        std::fs::create_dir_all(&up_root)?;
        std::fs::hard_link(file, up_root.join("large.bin"))?;
        let up = client_process(
            ctx,
            server,
            &account,
            &client_bin,
            &up_root,
            &roots_file,
            &format!("{case}, upload"),
            bytes,
        )
        .await?;
        client_rss = up.rss_kib;
        let down_root = dir.join("proc-down");
        std::fs::create_dir_all(&down_root)?;
        client_process(
            ctx,
            server,
            &account,
            &client_bin,
            &down_root,
            &roots_file,
            &format!("{case}, download"),
            bytes,
        )
        .await?;
        same_file(file, &down_root.join("large.bin"))?;
    } else {
        ctx.notes.push(format!(
            "{} not found: build it (cargo build --release -p fsync-client) to measure the client as a process.",
            client_bin.display()
        ));
    }
    if !tool_available("restic", &["version"]) {
        ctx.notes
            .push("restic is not installed: the large-file comparison was skipped.".into());
        return Ok(());
    }
    let version = Command::new("restic").arg("version").output()?;
    ctx.notes.push(format!(
        "Peer: {} (local repository, RESTIC_PASSWORD set, default options).",
        String::from_utf8_lossy(&version.stdout).trim()
    ));
    let repo = dir.join("restic-repo");
    let env = [
        ("RESTIC_PASSWORD", "x".into()),
        ("RESTIC_REPOSITORY", repo.display().to_string()),
        (
            "RESTIC_CACHE_DIR",
            dir.join("restic-cache").display().to_string(),
        ),
    ];
    let init = Command::new("restic")
        .args(["init", "--quiet"])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()?;
    ensure!(
        init.status.success(),
        "restic init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut cmd = Command::new("restic");
    cmd.args(["backup", "--quiet"])
        .arg(file)
        .envs(env.iter().map(|(k, v)| (*k, v)));
    let restic = tokio::task::spawn_blocking(move || timed_process(cmd, "restic backup"))
        .await
        .expect("process task")?;
    let (secs, rss) = (restic.secs, restic.rss_kib);
    if let Some(cpu) = restic.cpu_secs {
        ctx.push(p, "CPU time", "s", &format!("{case}: restic backup"), cpu);
    }
    let restic_mbs = bytes as f64 / MB / secs;
    ctx.push(
        p,
        "throughput",
        "MB/s",
        &format!("{case}: restic backup"),
        restic_mbs,
    );
    ctx.push(
        p,
        "fsync / restic",
        "ratio",
        &format!("{case}: throughput, A upload round vs restic backup"),
        (bytes as f64 / MB / fsync_secs) / restic_mbs,
    );
    if let Some(kib) = rss {
        ctx.push(
            p,
            "peak RSS",
            "MiB",
            &format!("{case}: restic backup"),
            kib as f64 / 1024.0,
        );
        if let Some(c) = client_rss {
            ctx.push(
                p,
                "fsync / restic",
                "ratio",
                &format!("{case}: peak RSS, fsync-client process vs restic"),
                c as f64 / kib as f64,
            );
        }
    }
    ctx.say(&format!("restic backup {secs:.2} s"));
    Ok(())
}

// ------------------------------------------------------------------ latency

/// A daemon on its own thread and runtime (as a separate process would have).
struct DaemonThread {
    root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DaemonThread {
    fn start(url: &str, account: &Account, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<PathBuf>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (url, account, dir, name) = (
            url.to_owned(),
            account.clone(),
            dir.to_owned(),
            name.to_owned(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("daemon-{name}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let dev = match Device::new(&url, &account, &dir, &name).await {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let root = dev.root.clone();
                    let _ = ready_tx.send(Ok(root.clone()));
                    let opts = DaemonOptions {
                        interval: Duration::from_secs(30),
                    };
                    daemon::run(dev.engine, dev.api.clone(), &root, opts, async {
                        let _ = stopped.await;
                    })
                    .await;
                });
            })?;
        let root = ready_rx
            .recv()
            .context("the daemon thread ended before it was ready")??;
        Ok(Self {
            root,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for DaemonThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `q` quantile of sorted `values` (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1]
}

/// Content of the latency file for edit `i`.
fn latency_content(i: u32) -> Vec<u8> {
    let line = format!("edit {i:06} of the latency test\n");
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(LATENCY_FILE)
        .collect()
}

/// Waits until `path` holds `want`; the time it took from `since`. Polls the file's
/// stat and reads it only when the stat changed: reading it every time would feed
/// B's file watcher a stream of access events (see BENCHMARKS.md).
async fn visible(path: &Path, want: &[u8], since: Instant) -> anyhow::Result<Duration> {
    use std::os::unix::fs::MetadataExt as _;
    let stat = |md: &std::fs::Metadata| (md.ino(), md.size(), md.mtime_nsec(), md.mtime());
    let mut last = None;
    let mut buf = Vec::with_capacity(want.len());
    let mut check = || {
        let md = std::fs::symlink_metadata(path).ok()?;
        let now = Some(stat(&md));
        if now == last {
            return None;
        }
        last = now;
        buf.clear();
        let mut f = std::fs::File::open(path).ok()?;
        (f.read_to_end(&mut buf).is_ok() && buf == want).then(|| since.elapsed())
    };
    let left = VISIBLE_DEADLINE.saturating_sub(since.elapsed());
    fsync_testkit::poll_async(left, POLL, "an edit on B", || std::future::ready(check()))
        .await
        .map_err(|_| anyhow::anyhow!("an edit was not visible on B within {VISIBLE_DEADLINE:?}"))
}

async fn latency(ctx: &mut Ctx<'_>, server: &Server, dir: &Path) -> anyhow::Result<()> {
    let account = harness::register(server, &harness::username("latency")).await?;
    let a = DaemonThread::start(&server.url, &account, dir, "latency-a")?;
    let b = DaemonThread::start(&server.url, &account, dir, "latency-b")?;
    // A third device that only listens to the push socket, to time the commit.
    let observer = Device::new(&server.url, &account, dir, "latency-observer").await?;
    let mut pushes = observer.api.subscribe().await?;
    let mut cursor = fsync_common::Seq(0);
    let (pa, pb) = (a.root.join("note.txt"), b.root.join("note.txt"));
    // Warm-up: the file's creation.
    let first = latency_content(0);
    std::fs::write(&pa, &first)?;
    visible(&pb, &first, Instant::now()).await?;
    tokio::time::sleep(SETTLE).await;
    // The push socket reports the journal's position, then every commit.
    while let Ok(Some(m)) = tokio::time::timeout(SETTLE, pushes.recv()).await {
        if let PushMessage::Changed { seq, .. } = m {
            cursor = cursor.max(seq);
        }
    }
    let mut ms = Vec::new();
    let mut committed_ms = Vec::new();
    for i in 1..=ctx.args.edits {
        let content = latency_content(i);
        let t0 = Instant::now();
        std::fs::write(&pa, &content)?;
        // Committed: the server pushed a journal position past the last one.
        loop {
            let left = VISIBLE_DEADLINE.saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, pushes.recv()).await {
                Ok(Some(PushMessage::Changed { seq, .. })) if seq > cursor => {
                    cursor = seq;
                    committed_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("the observer's push socket closed"),
                Err(_) => bail!("an edit was not committed within {VISIBLE_DEADLINE:?}"),
            }
        }
        let d = visible(&pb, &content, t0).await?;
        ms.push(d.as_secs_f64() * 1e3);
        tokio::time::sleep(SETTLE).await;
    }
    committed_ms.sort_by(f64::total_cmp);
    let p = Part::Latency;
    let n = committed_ms.len();
    ctx.push(
        p,
        "edit → committed (push to a third device)",
        "ms",
        &format!("p50 of {n}"),
        median(&mut committed_ms.clone()),
    );
    ctx.push(
        p,
        "edit → committed (push to a third device)",
        "ms",
        &format!("p99 of {n}"),
        percentile(&committed_ms, 0.99),
    );
    drop((a, b));
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("p50 of {n}"),
        median(&mut ms.clone()),
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("p99 of {n}"),
        percentile(&ms, 0.99),
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("max of {n}"),
        ms[n - 1],
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("min of {n}"),
        ms[0],
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("mean of {n}"),
        mean,
    );
    ctx.notes.push(format!(
        "Latency: a {LATENCY_FILE}-byte file rewritten on A (std::fs::write) {n} times, {} ms apart \
         after each became visible; B's copy stat'ed every {} ms (read when its stat changed). Daemons: file watcher, \
         {} ms debounce, push socket.",
        SETTLE.as_millis(),
        POLL.as_millis(),
        60
    ));
    ctx.say("latency done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::scenarios::parse_args;

    #[test]
    fn file_sizes_are_bounded_and_add_up() {
        let sizes = file_sizes(2000, 100 << 20, 1).unwrap();
        assert_eq!(sizes.len(), 2000);
        assert!(sizes.iter().all(|s| (MIN_FILE..=MAX_FILE).contains(s)));
        let total: u64 = sizes.iter().sum();
        assert!(
            (total as f64 / f64::from(100 << 20) - 1.0).abs() < 0.01,
            "{total}"
        );
        assert_eq!(sizes, file_sizes(2000, 100 << 20, 1).unwrap());
        assert!(file_sizes(10, 1000, 1).is_err());
    }

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
            BTreeSet::from(["initial-sync", "latency", "noop-rescan", "small-edit"])
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
