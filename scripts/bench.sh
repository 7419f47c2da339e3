#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: runs every fsync-bench scenario at the issue's sizes on
# SQLite and PostgreSQL (started here), with rsync and restic alongside, and writes the
# machine description, the targets table (scripts/bench_summary.py), every scenario's
# tables, and the analysis kept by hand in benches/NOTES.md. Raw records (the JSON
# shape of `fsync-bench --json`) go to benches/results/.
#
# Usage: bash scripts/bench.sh            (about an hour on the 2-core VM)
# Knobs (environment): QUICK=1 (small sizes: a smoke run of a few minutes, written to
# BENCHMARKS.quick.md instead), DBS ("sqlite postgres"), SWEEP_DB (sqlite),
# ONLY="NAME ..." (re-run only these runs, keep the others' results, regenerate; names:
# pipeline pipeline-blake3 server initial-sync small-edit latency small-files versions chunk-sweep gc repack).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
DBS=${DBS:-sqlite postgres}
SWEEP_DB=${SWEEP_DB:-sqlite}
results=benches/results
target=BENCHMARKS.md
if [ "$QUICK" = 1 ]; then
  results=$(mktemp -d)
  target=BENCHMARKS.quick.md
fi
ONLY=${ONLY:-}
mkdir -p "$results"
if [ -z "$ONLY" ]; then rm -f "$results"/*.json "$results"/*.txt "$results"/*.cmd; fi

# Peers for --compare: installed when missing and we may (root with apt-get).
if ! command -v restic >/dev/null || ! command -v rsync >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y restic rsync >&2
  else
    echo "bench.sh: restic or rsync missing; their comparisons are skipped" >&2
  fi
fi
FSYNC_BENCH_DATABASE_URL=$(bash scripts/postgres.sh)
export FSYNC_BENCH_DATABASE_URL
cargo build --release --locked -p fsync-bench -p fsync-client >&2
bench=${CARGO_TARGET_DIR:-target}/release/fsync-bench

db_args=()
for db in $DBS; do db_args+=(--db "$db"); done

commit_desc() {
  git rev-parse --short HEAD | tr -d '\n'
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then echo -n " (plus uncommitted changes)"; fi
}

# run NAME ARGS...: one scenario run; the table to $results/NAME.txt, records to .json.
run() {
  local name=$1
  shift
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local start=$SECONDS
  echo "bench.sh: $name: fsync-bench $*" >&2
  local load_before when
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  when=$(date -u '+%Y-%m-%d %H:%M UTC')
  "$bench" "$@" -q --json-out "$results/$name.json" >"$results/$name.txt"
  {
    echo "fsync-bench $*"
    echo "# $when, commit $(commit_desc), $((SECONDS - start)) s;"
    echo "# load average (1, 5, 15 min) before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$results/$name.cmd"
  echo "bench.sh: $name took $((SECONDS - start)) s" >&2
}

if [ "$QUICK" = 1 ]; then
  run pipeline pipeline --size-mib 16 --repeat 1 --rounds 1
  run pipeline-blake3 pipeline --size-mib 16 --repeat 1 --rounds 1 --stage blake3 --stage blake3-64k
  run server server "${db_args[@]}" --ids 1000 --repeat 2 --files 1000 --repeat-commits 1
  small=(--files 300 --total-mib 20 --large-mib 32 --repeat 2 --edit-repeat 1 --edits 10)
  run initial-sync sync --only initial-sync --only noop-rescan --compare "${db_args[@]}" "${small[@]}"
  run small-edit sync --only small-edit --compare "${db_args[@]}" "${small[@]}"
  run latency sync --only latency "${db_args[@]}" "${small[@]}"
  run small-files small-files "${db_args[@]}" --files 1000
  run versions versions "${db_args[@]}" --size-mib 16 --versions 3
  run chunk-sweep chunk-sweep --db "$SWEEP_DB" --large-mib 16 --size-mib 16 --versions 2
  run gc gc "${db_args[@]}" --rows 20000 --file-mib 4
  run repack repack "${db_args[@]}" --files 12 --file-mib 4
else
  run pipeline pipeline
  # BLAKE3 over the chunks and over fixed 64 KiB pieces of the same bytes, alternately.
  run pipeline-blake3 pipeline --stage blake3 --stage blake3-64k --repeat 9
  run server server "${db_args[@]}"
  # The issue's sizes (the defaults): a 20,000-file 1 GiB tree, a 1 GiB random file,
  # 6 small edits of it 3 times each, 200 latency edits.
  run initial-sync sync --only initial-sync --only noop-rescan --compare "${db_args[@]}"
  run small-edit sync --only small-edit --compare "${db_args[@]}"
  run latency sync --only latency "${db_args[@]}"
  run small-files small-files "${db_args[@]}"
  run versions versions "${db_args[@]}"
  run chunk-sweep chunk-sweep --db "$SWEEP_DB"
  # Issue #5: an online sweep of 1,000,000 chunk rows.
  run gc gc "${db_args[@]}"
  # Issue 13: an online repack of packs left a third dead, while a client commits.
  run repack repack "${db_args[@]}"
fi

first_line() { # COMMAND ARGS...: its first line of output, or "COMMAND missing"
  local out
  if out=$("$@" 2>/dev/null); then sed -n 1p <<<"$out" | tr -s ' '; else echo "$1 missing"; fi
}

section() { # NAME TITLE
  if [ ! -f "$results/$1.txt" ]; then return; fi
  echo "### $2"
  echo
  echo '```sh'
  echo "$(cat "$results/$1.cmd")"
  echo '```'
  echo
  echo '```text'
  cat "$results/$1.txt"
  echo '```'
  echo
}

{
  echo "# Benchmarks"
  echo
  echo "Generated by \`bash scripts/bench.sh\` (raw records: \`benches/results/*.json\`), except"
  echo "the analysis at the end, kept by hand in \`benches/NOTES.md\`. Each scenario is one"
  echo "\`fsync-bench\` command, shown above its tables; \`fsync-bench <scenario> --help\` lists"
  echo "its options, \`--json\` prints the records instead of tables."
  echo
  echo "## Machine and run"
  echo
  echo "- Written $(date -u '+%Y-%m-%d %H:%M UTC') at commit $(commit_desc); each run's own commit,"
  echo "  time and load average are under its command below."
  echo "- CPU: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1); $(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1) guest."
  echo "- Memory: $(free -g | awk '/^Mem:/ {print $2}') GiB. Kernel $(uname -r). $(rustc --version)."
  echo "- Disk under the work dir: $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}') (\`${TMPDIR:-/tmp}\`)."
  echo "- PostgreSQL: $(first_line psql --version) (default settings, same VM)."
  echo "- Peers: $(first_line rsync --version); $(first_line restic version)."
  echo "- Server, clients and peers share the cores; single runs unless a table says"
  echo "  otherwise. The load average counts other work on the VM too."
  echo
  echo "## Targets (issue #2): the pipeline against the reference figures"
  echo
  echo "Reference: the same crates on this 2-core machine, in memory; target ≥ 85 % of each."
  echo "Median over the runs below that measured the figure; per core = the 2-thread figure / 2."
  echo
  python3 scripts/bench_summary.py "$results" --pipeline
  echo
  echo "## Targets (issue #6)"
  echo
  python3 scripts/bench_summary.py "$results"
  echo
  echo "## Scenarios"
  echo
  section pipeline "pipeline: client-side stages in memory"
  section pipeline-blake3 "pipeline: keyed BLAKE3 over the chunks and over fixed 64 KiB pieces"
  section server "server: chunks/missing lookups and small-file commits"
  section initial-sync "initial-sync and noop-rescan (with restic)"
  section small-edit "small-edit: 1-byte edits of the large file (with rsync)"
  section latency "latency: edit to visible between two daemons"
  section small-files "small-files: a burst of 1 KiB files"
  section versions "versions: a disk image, 1 % of its pages rewritten per version"
  section chunk-sweep "chunk-sweep: average chunk size"
  section gc "gc: an online sweep of 1,000,000 chunk rows"
  section repack "repack: packs a third dead, copied while a client commits"
  cat benches/NOTES.md
} >"$target"
echo "bench.sh: wrote $target" >&2
