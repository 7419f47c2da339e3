#!/usr/bin/env bash
# Starts the machine's PostgreSQL (installing it if missing), makes sure the test role
# and database exist, and prints the URL the tests use. Idempotent.
set -euo pipefail

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "postgres.sh: installing PostgreSQL" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  echo "postgres.sh: no PostgreSQL cluster found" >&2
  exit 1
fi
# shellcheck disable=SC2086
if ! pg_lsclusters --no-header | awk 'NR==1 {print $4}' | grep -q online; then
  pg_ctlcluster $cluster start >&2
fi
port=$(pg_lsclusters --no-header | awk 'NR==1 {print $3}')
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$port" || { echo "postgres.sh: PostgreSQL did not become ready" >&2; exit 1; }

su postgres -c "psql -q -p $port -v ON_ERROR_STOP=1" >&2 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fsync') THEN
    CREATE ROLE fsync LOGIN PASSWORD 'fsync' CREATEDB;
  END IF;
END $$;
SELECT 'CREATE DATABASE fsync_test OWNER fsync'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'fsync_test')\gexec
SQL
# Drop the per-test databases of earlier runs.
su postgres -c "psql -qAt -p $port -c \"SELECT datname FROM pg_database WHERE datname ~ '^fsync_t_[0-9a-f]+$'\"" |
  while read -r db; do su postgres -c "dropdb -p $port --if-exists $db" >&2; done

echo "postgres://fsync:fsync@127.0.0.1:$port/fsync_test"
