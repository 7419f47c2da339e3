#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, and every test on SQLite and
# on PostgreSQL (started here). Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FSYNC_TEST_DATABASE_URL=$(bash scripts/postgres.sh)
export FSYNC_TEST_DATABASE_URL
echo "test.sh: PostgreSQL at ${FSYNC_TEST_DATABASE_URL%%@*}@…"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Fuzz targets (fuzz/: its own workspace, lock file and target dir). CI only builds
# them (a plain build: no coverage instrumentation, so no cargo-fuzz or nightly) and
# replays their seeds and past crash inputs once; fuzzing is `bash scripts/fuzz.sh`.
# (--target-dir: where the replay below looks, whatever CARGO_TARGET_DIR says.)
cargo build --manifest-path fuzz/Cargo.toml --target-dir "$PWD/fuzz/target" --bins
for src in fuzz/fuzz_targets/*.rs; do
  t=$(basename "$src" .rs)
  dirs=("fuzz/seeds/$t")
  if [ -d "fuzz/regressions/$t" ]; then dirs+=("fuzz/regressions/$t"); fi
  mkdir -p "fuzz/artifacts/$t"
  if ! "fuzz/target/debug/$t" -runs=0 -artifact_prefix="fuzz/artifacts/$t/" "${dirs[@]}" \
    >"fuzz/artifacts/$t/replay.log" 2>&1; then
    cat "fuzz/artifacts/$t/replay.log"
    echo "test.sh: fuzz target $t fails on its seeds or regressions" >&2
    exit 1
  fi
done
cargo test --workspace --locked
