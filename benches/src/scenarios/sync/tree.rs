//! The `initial-sync` and `noop-rescan` parts on the generated tree: its file sizes,
//! its files, A's and B's rounds, and the records of a transfer.

use std::path::Path;

use anyhow::{ensure, Context as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rayon::prelude::*;

use super::{pair, Ctx, Part, DATA_SEED, MB};
use crate::data::{self, DataKind};
use crate::harness::{Round, Server};
use crate::timing::median;

/// Smallest and largest generated file of the tree.
const MIN_FILE: u64 = 1024;
const MAX_FILE: u64 = 4 << 20;
/// σ of the log-normal file sizes (of ln(size)).
const SIZE_SIGMA: f64 = 1.5;

/// Initial sync of the generated tree, then no-op rescans.
pub(super) async fn tree_parts(
    ctx: &mut Ctx<'_>,
    server: &Server,
    dir: &Path,
) -> anyhow::Result<()> {
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
    let writes_before = server.durable_writes();
    let up = a.round().await?;
    let writes = server.durable_writes() - writes_before;
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
        durability_record(ctx, &case, total, writes);
        if ctx.args.compare {
            let rounds = (up.secs, down.secs);
            super::compare::compare_restic(ctx, dir, &a.root, &case, total, rounds).await?;
        }
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
/// The server's fsyncs (or PUTs) per GiB of A's upload round (counted by its pack
/// store, not estimated).
pub(super) fn durability_record(ctx: &mut Ctx<'_>, case: &str, bytes: u64, writes: u64) {
    let per_gib = writes as f64 * f64::from(1u32 << 30) / bytes.max(1) as f64;
    ctx.push(
        Part::InitialSync,
        "server durability",
        "fsyncs or PUTs per GiB",
        &format!("{case}: A upload round"),
        per_gib,
    );
}

pub(super) fn transfer_records(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
