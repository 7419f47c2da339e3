//! `fsync-bench versions`: storage growth of a disk-image-like file edited in place,
//! version after version (issue item 7).
//!
//! A file of `--size-mib` MiB made of 1 MiB regions (30 % zeros, 30 % source-like
//! text, 40 % random; kinds and bytes from a fixed seed) is synced from device A to
//! the server and to device B. Then `--versions` times, 1 % of its 4 KiB pages (page
//! offsets drawn from a fixed seed, distinct within a version) are overwritten in place
//! with new random bytes, and A syncs (then B). Per version: the new blob bytes the
//! server stored — the growth of `SUM(chunks.stored_size)` in the server's database,
//! i.e. encoded (compressed, encrypted) blob bytes —, the new chunk rows, the new
//! chunks' plaintext bytes (the client's chunker, against every chunk seen so far),
//! bytes on the wire, round times, `version_chunks` rows and the manifest the server
//! stored; cumulatively, the dedup ratio = logical bytes of all versions so far /
//! stored bytes so far.
//!
//! The workload ([`run_versions`]) is shared with `chunk-sweep`.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use fsync_chunker::HashOptions;
use fsync_common::ChunkId;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rayon::prelude::*;
use serde_json::{json, Value};

use super::sync::{self, DATA_SEED};
use super::{newest_manifest, DbCounts};
use crate::data::{self, DataKind};
use crate::harness::{self, Db, Device, Round, Server};
use crate::report::{Record, Report};

/// Seed of the image and of the edits.
const SEED: u64 = DATA_SEED + 7;
/// Regions of the image are of one kind each.
const REGION: usize = 1 << 20;
/// Page size of the edits.
pub(crate) const PAGE: u64 = 4096;
/// Name of the image in the sync root.
pub(crate) const IMAGE: &str = "disk.img";

/// Arguments of `fsync-bench versions`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Metadata backend of the server (repeatable: each is measured).
    #[arg(long = "db", value_enum)]
    db: Vec<Db>,
    /// Size of the disk-image-like file, MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    size_mib: u32,
    /// Versions made after the initial one, each rewriting 1 % of the 4 KiB pages.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    versions: u32,
    /// Where the folders and server data go [default: the temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// One version: its rounds and what the server stored for it.
pub(crate) struct Step {
    /// A's round (upload and commit).
    pub a: Round,
    /// B's round (download).
    pub b: Round,
    /// Growth of the server's tables during the step.
    pub db: DbCounts,
    /// Plaintext bytes of the file's chunks that the client's chunker had not seen in
    /// earlier versions.
    pub new_plain_bytes: u64,
    /// JSON bytes of the manifest the server stored for this version.
    pub manifest_bytes: u64,
    /// Chunk entries of that manifest.
    pub manifest_entries: u64,
}

/// The versions workload's outcome: `steps[0]` is the initial sync, then one step per
/// version.
pub(crate) struct Outcome {
    /// Size of the file (every version has this size).
    pub file_bytes: u64,
    /// Pages rewritten per version.
    pub pages_per_version: usize,
    /// The steps.
    pub steps: Vec<Step>,
}

impl Outcome {
    /// Logical bytes of all versions (the initial one included).
    pub(crate) fn logical_bytes(&self) -> u64 {
        self.file_bytes * self.steps.len() as u64
    }

    /// Stored blob bytes of all versions (chunk table).
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.db.stored_bytes as u64).sum()
    }

    /// Unique chunk plaintext bytes of all versions.
    pub(crate) fn plain_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.new_plain_bytes).sum()
    }

    /// The steps after the initial sync.
    pub(crate) fn versions(&self) -> &[Step] {
        &self.steps[1..]
    }
}

/// Writes the disk-image-like file: `mib` regions of 1 MiB, each zeros (30 %),
/// source-like text (30 %) or random (40 %), from `seed`.
fn write_image(path: &Path, mib: u32, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds: Vec<Option<DataKind>> = (0..mib)
        .map(|_| match rng.gen_range(0..10) {
            0..=2 => None,
            3..=5 => Some(DataKind::Text),
            _ => Some(DataKind::Random),
        })
        .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (k, batch) in kinds.chunks(16).enumerate() {
        let regions: Vec<Vec<u8>> = batch
            .par_iter()
            .enumerate()
            .map(|(i, kind)| {
                let r = (k * 16 + i) as u64;
                match kind {
                    None => vec![0u8; REGION],
                    Some(kind) => {
                        data::generate(*kind, REGION, seed.wrapping_mul(1_000_003).wrapping_add(r))
                    }
                }
            })
            .collect();
        for r in regions {
            f.write_all(&r)?;
        }
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

/// Version `version`: overwrites 1 % of the file's pages (at least one) in place with
/// new random bytes. Returns the number of pages written.
fn rewrite_pages(path: &Path, version: u32, seed: u64) -> anyhow::Result<usize> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let pages = (f.metadata()?.len() / PAGE) as usize;
    ensure!(pages > 0, "{} is smaller than a page", path.display());
    let count = (pages / 100).max(1);
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(version) << 32));
    let mut chosen = rand::seq::index::sample(&mut rng, pages, count).into_vec();
    chosen.sort_unstable();
    let fresh = data::generate(
        DataKind::Random,
        count * PAGE as usize,
        seed.wrapping_add(0x5eed_0000 + u64::from(version)),
    );
    for (page, bytes) in chosen.iter().zip(fresh.chunks(PAGE as usize)) {
        f.write_all_at(bytes, *page as u64 * PAGE)?;
    }
    f.sync_all()?;
    Ok(count)
}

/// The versions workload on A and B (a fresh pair, alone on `server` while it runs):
/// the image's initial sync, then `versions` versions. B's copy is compared with A's
/// after the last one (untimed).
pub(crate) async fn run_versions(
    server: &Server,
    a: &mut Device,
    b: &mut Device,
    size_mib: u32,
    versions: u32,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Outcome> {
    let path_a = a.root.join(IMAGE);
    {
        let p = path_a.clone();
        tokio::task::spawn_blocking(move || write_image(&p, size_mib, SEED))
            .await
            .expect("image task")?;
    }
    say(&format!("image of {size_mib} MiB written"));
    let chunker = a.engine.keys().chunker.clone();
    let mut known: HashSet<ChunkId> = HashSet::new();
    let mut steps = Vec::new();
    let mut pages_per_version = 0;
    for v in 0..=versions {
        if v > 0 {
            let p = path_a.clone();
            pages_per_version = tokio::task::spawn_blocking(move || rewrite_pages(&p, v, SEED))
                .await
                .expect("edit task")?;
        }
        let (ck, file) = (chunker.clone(), path_a.clone());
        let chunks = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(ChunkId, u32)>> {
            let digest = ck.digest_reader(std::fs::File::open(&file)?, HashOptions::default())?;
            Ok(digest.chunks.iter().map(|c| (c.id, c.len)).collect())
        })
        .await
        .expect("digest task")?;
        let mut new_plain_bytes = 0;
        for (id, len) in chunks {
            if known.insert(id) {
                new_plain_bytes += u64::from(len);
            }
        }
        let before = DbCounts::read(&server.database_url).await?;
        let up = a.round().await?;
        ensure!(
            up.report.uploaded == 1,
            "A did not commit version {v}: {:?}",
            up.report
        );
        let down = b.round().await?;
        ensure!(
            down.report.downloaded == 1,
            "B did not get version {v}: {:?}",
            down.report
        );
        let db = DbCounts::read(&server.database_url).await?.since(before);
        let (manifest_bytes, manifest_entries) =
            newest_manifest(&server.database_url, IMAGE).await?;
        say(&format!(
            "version {v}: A {:.2} s, {} B up; {} new chunk rows, {} stored bytes",
            up.secs, up.traffic.bytes_up, db.chunk_rows, db.stored_bytes
        ));
        steps.push(Step {
            a: up,
            b: down,
            db,
            new_plain_bytes,
            manifest_bytes,
            manifest_entries,
        });
    }
    sync::same_file(&path_a, &b.root.join(IMAGE)).context("B's copy of the last version")?;
    Ok(Outcome {
        file_bytes: u64::from(size_mib) << 20,
        pages_per_version,
        steps,
    })
}

impl Args {
    /// Runs the workload on every chosen backend.
    pub(crate) fn run(&self, progress: bool) -> anyhow::Result<Report> {
        let rt = harness::runtime()?;
        let work = harness::work_dir(self.work_dir.as_deref(), "fsync-bench-versions-")?;
        let mut records = Vec::new();
        let mut pages = 0;
        for db in harness::dbs(&self.db) {
            let dir = tempfile::Builder::new()
                .prefix(db.label())
                .tempdir_in(work.path())?;
            let say = |msg: &str| {
                if progress {
                    eprintln!("versions {}: {msg}", db.label());
                }
            };
            let outcome = rt.block_on(async {
                let server = Server::start(db, dir.path()).await?;
                let result = async {
                    let (mut a, mut b) = sync::pair(&server, dir.path(), "versions").await?;
                    run_versions(&server, &mut a, &mut b, self.size_mib, self.versions, &say).await
                }
                .await;
                server.stop().await;
                result
            })?;
            pages = outcome.pages_per_version;
            version_records(&outcome, db, &mut records);
        }
        let notes = vec![
            format!(
                "File: {} MiB of 1 MiB regions (30 % zeros, 30 % source-like text, 40 % random), seed {SEED}; \
                 each version overwrites {pages} distinct 4 KiB pages (1 %) in place with random bytes; \
                 v0 is the initial sync. Default chunker ({}).",
                self.size_mib,
                chunker_text(fsync_chunker::ChunkerConfig::DEFAULT)
            ),
            "stored = new encoded (zstd + AEAD) blob bytes the server recorded: growth of SUM(chunks.stored_size) \
             in its database; new chunks = growth of its chunk rows. plaintext new = bytes of the chunks the \
             client's chunker had not seen in an earlier version."
                .to_owned(),
            "dedup = logical bytes of v0..vN (file size x versions) / stored bytes so far; dedup (plaintext) = \
             the same over the new chunks' plaintext bytes. Wire bytes: HTTP request (up) and response (down) \
             bodies of the round, headers not counted. manifest = JSON bytes of the version's manifest as the \
             server stores it."
                .to_owned(),
        ];
        Ok(Report {
            row_label: "case",
            notes,
            records,
        })
    }
}

/// `min/avg/max` in KiB.
pub(crate) fn chunker_text(c: fsync_chunker::ChunkerConfig) -> String {
    format!(
        "min/avg/max {}/{}/{} KiB",
        c.min >> 10,
        c.avg >> 10,
        c.max >> 10
    )
}

/// A row per version.
fn version_records(o: &Outcome, db: Db, records: &mut Vec<Record>) {
    let mut push = |case: &str, metric: &str, unit: &str, value: f64| {
        let Value::Object(labels) = json!({"case": case, "db": db.label()}) else {
            unreachable!()
        };
        records.push(Record {
            scenario: "versions".into(),
            metric: metric.into(),
            unit: unit.into(),
            value,
            labels,
        });
    };
    let (mut stored, mut plain) = (0u64, 0u64);
    for (v, s) in o.steps.iter().enumerate() {
        let case = if v == 0 {
            "v0 (initial)".to_owned()
        } else {
            format!("v{v}")
        };
        stored += s.db.stored_bytes as u64;
        plain += s.new_plain_bytes;
        let logical = o.file_bytes * (v as u64 + 1);
        push(&case, "stored", "bytes", s.db.stored_bytes as f64);
        push(&case, "stored, cumulative", "bytes", stored as f64);
        push(&case, "new chunks", "count", s.db.chunk_rows as f64);
        push(&case, "plaintext new", "bytes", s.new_plain_bytes as f64);
        push(&case, "A up", "bytes", s.a.traffic.bytes_up as f64);
        push(&case, "B down", "bytes", s.b.traffic.bytes_down as f64);
        push(&case, "A round", "ms", s.a.secs * 1e3);
        push(&case, "B round", "ms", s.b.secs * 1e3);
        push(
            &case,
            "version_chunks rows",
            "count",
            s.db.version_chunk_rows as f64,
        );
        push(&case, "manifest", "bytes", s.manifest_bytes as f64);
        push(
            &case,
            "manifest entries",
            "count",
            s.manifest_entries as f64,
        );
        push(&case, "logical, cumulative", "bytes", logical as f64);
        push(&case, "dedup", "ratio", logical as f64 / stored as f64);
        push(
            &case,
            "dedup (plaintext)",
            "ratio",
            logical as f64 / plain as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::parse_args;

    #[test]
    fn page_rewrites_are_deterministic_and_touch_one_percent() {
        let dir = tempfile::tempdir().unwrap();
        let (p, q) = (dir.path().join("a"), dir.path().join("b"));
        write_image(&p, 2, 1).unwrap();
        write_image(&q, 2, 1).unwrap();
        let original = std::fs::read(&p).unwrap();
        assert_eq!(original.len(), 2 << 20);
        assert_eq!(rewrite_pages(&p, 1, 1).unwrap(), 5);
        rewrite_pages(&q, 1, 1).unwrap();
        let (a, b) = (std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
        assert_eq!(a, b);
        let changed = a
            .chunks(PAGE as usize)
            .zip(original.chunks(PAGE as usize))
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(changed, 5);
    }

    #[test]
    fn versions_run_on_a_small_file() {
        let args: Args = parse_args(["versions", "--size-mib", "4", "--versions", "2"]).unwrap();
        let report = args.run(false).unwrap();
        let get = |case: &str, metric: &str| {
            report
                .records
                .iter()
                .find(|r| r.labels["case"] == case && r.metric == metric)
                .unwrap_or_else(|| panic!("{case} {metric}"))
                .value
        };
        assert!(get("v0 (initial)", "stored") > 0.0);
        assert!(get("v1", "new chunks") >= 1.0);
        // 1 % of the pages of a 4 MiB file touch far less than half of its chunks.
        assert!(get("v2", "stored") < f64::from(2 << 20), "{report:?}");
        assert!(get("v2", "stored, cumulative") > get("v1", "stored, cumulative"));
        assert!(get("v2", "dedup") > 1.0);
        assert!(get("v2", "manifest entries") >= 1.0);
        let mut out = Vec::new();
        super::super::write_wide_table("versions", &report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("v2"), "{text}");
    }
}
