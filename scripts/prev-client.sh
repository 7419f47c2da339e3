#!/usr/bin/env bash
# Builds the fsync-client of the previous release into target/prev/fsync-client, for
# tests/tests/compat.rs (a client of the previous release keeps syncing with this
# server). The release is the commit PREV_RELEASE below: main before manifest pages.
#
# It is built from `git archive` of that commit in the same target directory, so the
# dependencies compiled for this tree are reused (about a minute on 2 cores). Cargo
# links this tree's own binaries again at its next build, so run this before the
# tests, never during them. Idempotent: nothing is done when the stamp matches.
set -euo pipefail

PREV_RELEASE=${FSYNC_PREV_RELEASE:-378f03fc505cf39b232a297b2a106013f8b38a39}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
prev=$target/prev
if [ -x "$prev/fsync-client" ] && [ "$(cat "$prev/commit" 2>/dev/null)" = "$PREV_RELEASE" ]; then
    echo "prev-client: $prev/fsync-client is the release $PREV_RELEASE"
    exit 0
fi
if ! git -C "$root" cat-file -e "$PREV_RELEASE^{commit}" 2>/dev/null; then
    echo "prev-client: commit $PREV_RELEASE is not in this clone (a shallow clone?);" \
        "fetch it with: git fetch --unshallow" >&2
    exit 1
fi
rm -rf "$prev"
mkdir -p "$prev/src"
git -C "$root" archive "$PREV_RELEASE" | tar -x -C "$prev/src"
exe=$(cd "$prev/src" && CARGO_TARGET_DIR=$target cargo build -p fsync-client --bin fsync-client \
    --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*fsync-client\)".*/\1/p' | tail -1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "prev-client: cargo built no fsync-client for $PREV_RELEASE" >&2
    exit 1
fi
cp "$exe" "$prev/fsync-client"
echo "$PREV_RELEASE" >"$prev/commit"
rm -rf "$prev/src"
echo "prev-client: built $prev/fsync-client from $PREV_RELEASE"
