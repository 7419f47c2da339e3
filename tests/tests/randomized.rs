//! Randomized end-to-end sync (I1–I7): a bounded number of seeds on SQLite and on
//! PostgreSQL; see `fsync_tests::sim` for what a seed does and checks, and
//! `scripts/sim.sh` for runs of thousands of seeds.
//!
//! `FSYNC_SIM_SEED=N` runs only seed N (a failing seed prints itself);
//! `FSYNC_SIM_SEEDS=K` runs K seeds per backend instead of the default.
#![allow(missing_docs)]

use fsync_tests::sim::{run_seed, SimConfig};
use fsync_tests::{postgres_url, Backend};

/// Seeds per backend in a normal test run.
const SEEDS: u64 = 12;
/// User operations and rounds per seed.
const STEPS: usize = 60;

fn seeds() -> Vec<u64> {
    let var = |name| std::env::var(name).ok().and_then(|s| s.parse().ok());
    if let Some(seed) = var("FSYNC_SIM_SEED") {
        return vec![seed];
    }
    let n = var("FSYNC_SIM_SEEDS").unwrap_or(SEEDS);
    // A different window of seeds every run (printed), so CI explores over time.
    let start: u64 = rand::random::<u32>().into();
    println!("seeds {start}..{}", start + n);
    (start..start + n).collect()
}

fn run(backend: Backend, postgres: Option<&str>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for seed in seeds() {
        let cfg = SimConfig {
            seed,
            steps: STEPS,
            backend,
            postgres: postgres.map(str::to_owned),
        };
        match rt.block_on(run_seed(&cfg)) {
            Ok(r) => println!(
                "seed {seed}: {} ops, {} rounds, {} conflicts, {} files",
                r.ops, r.rounds, r.conflicts, r.files
            ),
            Err(f) => panic!("{f}"),
        }
    }
}

#[test]
fn random_seeds_keep_the_invariants() {
    run(Backend::Sqlite, None);
}

#[test]
fn random_seeds_keep_the_invariants_on_postgres() {
    let Some(url) = postgres_url() else {
        return;
    };
    run(Backend::Postgres, Some(&url));
}
