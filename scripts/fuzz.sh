#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/, one after the other, one process each.
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 60 seconds, every target)
#
# Builds the targets (release, debug assertions, no sanitizer: the crates forbid unsafe
# code, and stable Rust has no -Zsanitizer), installing cargo-fuzz if missing. Each
# target reads its seeds (fuzz/seeds/<target>) and past crash inputs
# (fuzz/regressions/<target>) and grows fuzz/corpus/<target>; crash inputs land in
# fuzz/artifacts/<target>/ and the libFuzzer log in fuzz/artifacts/<target>/run.log.
#
# Prints one line per target, for other scripts to parse:
#   fuzz-summary target=<name> seconds=<n> execs=<n> crashes=<n>
# and exits 1 if any target crashed (or failed to run).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
case $seconds in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi

# Stable toolchain: `-s none` (no -Zsanitizer) needs no nightly flags.
cargo fuzz build -s none -O -a --target-dir "$PWD/fuzz/target" >&2

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release

failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  inputs=("fuzz/corpus/$t")
  for d in "fuzz/seeds/$t" "fuzz/regressions/$t"; do
    if [ -d "$d" ]; then inputs+=("$d"); fi
  done
  before=$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | wc -l)
  log=fuzz/artifacts/$t/run.log
  status=0
  "$bin_dir/$t" "${inputs[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
  after=$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | wc -l)
  crashes=$((after - before))
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    # Died without writing an artifact (e.g. could not start): count it as a failure.
    crashes=1
    echo "fuzz.sh: $t exited with status $status; see $log" >&2
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz-summary target=$t seconds=$seconds execs=${execs:-0} crashes=$crashes"
  if [ "$crashes" -ne 0 ]; then
    failed=1
    grep -E '^(thread .* panicked|==[0-9]+== ERROR|SUMMARY|artifact_prefix|Test unit written)' "$log" >&2 || true
  fi
done
exit "$failed"
