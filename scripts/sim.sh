#!/usr/bin/env bash
# Many seeds of the randomized end-to-end sync test (tests/src/sim.rs), in release.
# Usage: bash scripts/sim.sh [--seeds A..B] [--steps N] [--db sqlite|postgres] [--jobs J]
#        bash scripts/sim.sh --seed N          (replay one seed, with its steps)
# Prints one line per seed and a final `summary: …` line (scripts/reliability.sh reads
# it); exits non-zero if any seed failed. `--db postgres` starts PostgreSQL first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ " $* " == *" postgres "* || " $* " == *"--db=postgres"* ]]; then
  FSYNC_TEST_DATABASE_URL=$(bash scripts/postgres.sh)
  export FSYNC_TEST_DATABASE_URL
fi
cargo build --release --locked -p fsync-tests --bin fsync-sim >&2
exec target/release/fsync-sim "$@"
