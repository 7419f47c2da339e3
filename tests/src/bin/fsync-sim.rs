//! Runs many seeds of the randomized end-to-end sync (`fsync_tests::sim`) and prints one
//! line per seed and a summary; exits non-zero if any seed failed (each failure prints
//! its steps and the command that replays it).
//!
//! `fsync-sim --seeds 0..10000 [--steps 60] [--db sqlite|postgres] [--jobs 2]`
//! `fsync-sim --seed 1234` replays one seed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use fsync_tests::sim::{run_seed, SimConfig};
use fsync_tests::Backend;

#[derive(Parser)]
#[command(
    name = "fsync-sim",
    about = "Randomized multi-client sync against the invariants"
)]
struct Cli {
    /// One seed (replay).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long, default_value = "0..100")]
    seeds: String,
    /// User operations and rounds per seed.
    #[arg(long, default_value_t = 60)]
    steps: usize,
    /// Server metadata backend: sqlite or postgres (needs `FSYNC_TEST_DATABASE_URL`).
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// Seeds run at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s.split_once("..").context("--seeds is A..B")?;
    let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
    if a >= b {
        bail!("--seeds {s} is empty");
    }
    Ok((a, b))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (backend, postgres) = match cli.db.as_str() {
        "sqlite" => (Backend::Sqlite, None),
        "postgres" => (
            Backend::Postgres,
            Some(std::env::var("FSYNC_TEST_DATABASE_URL").context(
                "--db postgres needs FSYNC_TEST_DATABASE_URL (scripts/postgres.sh prints it)",
            )?),
        ),
        other => bail!("--db {other}: expected sqlite or postgres"),
    };
    let (start, end) = match cli.seed {
        Some(s) => (s, s + 1),
        None => parse_range(&cli.seeds)?,
    };
    let next = AtomicU64::new(start);
    let failed = AtomicUsize::new(0);
    let ops = AtomicUsize::new(0);
    let rounds = AtomicUsize::new(0);
    let conflicts = AtomicUsize::new(0);
    let began = Instant::now();
    // One thread per job, each with its own runtime: an engine's future holds its
    // SQLite state and is not `Send`, so it runs on `block_on` (the server's tasks run
    // on the runtime's workers).
    std::thread::scope(|scope| {
        for _ in 0..cli.jobs.max(1) {
            let (next, failed, ops, rounds, conflicts) =
                (&next, &failed, &ops, &rounds, &conflicts);
            let postgres = postgres.clone();
            let steps = cli.steps;
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let cfg = SimConfig {
                        seed,
                        steps,
                        backend,
                        postgres: postgres.clone(),
                    };
                    match rt.block_on(run_seed(&cfg)) {
                        Ok(r) => {
                            ops.fetch_add(r.ops, Ordering::Relaxed);
                            rounds.fetch_add(r.rounds, Ordering::Relaxed);
                            conflicts.fetch_add(r.conflicts, Ordering::Relaxed);
                            println!(
                                "seed {seed}: ok ({} ops, {} rounds, {} conflicts, {} files)",
                                r.ops, r.rounds, r.conflicts, r.files
                            );
                        }
                        Err(f) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            println!("seed {seed}: FAILED\n{f}");
                        }
                    }
                }
            });
        }
    });
    let n = end - start;
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "summary: db={} seeds={n} failed={failed} steps={} ops={} rounds={} conflicts={} seconds={:.0}",
        cli.db,
        cli.steps,
        ops.load(Ordering::Relaxed),
        rounds.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
        began.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} of {n} seeds failed");
    }
    Ok(())
}
