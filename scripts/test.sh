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
cargo test --workspace --locked
