#!/usr/bin/env bash
# Scanner benchmark (issue #6): a synthetic shared store of 10,000 layers and 1,000 images, then
#   1. the first scan (index built from nothing),  2. a scan with no change,
#   3. a scan after 10 layers (and one image) were added.
# Prints wall time of each `layerfs scan --json` (process start included) and the scanner's own
# time and I/O counters; with strace, the syscalls of the no-change scan too.
# Usage: scripts/bench-scan.sh [layers] [images]      (run `npm run build` first)
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=${1:-10000}
IMAGES=${2:-1000}
T=$(mktemp -d /tmp/layerfs-bench-scan.XXXXXX)
trap 'rm -rf "$T"' EXIT
export LAYERFS_ROOT=$T/host LAYERFS_SHARED=$T/nfs LAYERFS_ROLE=reader
L="node dist/src/cli/main.js"

echo "generating $LAYERS layers, $IMAGES images in $T/nfs ..."
node dist/scripts/gen-store.js "$T/nfs" "$LAYERS" "$IMAGES" 10 bench
# a writer host's first command writes the store marker a reader's scan needs
LAYERFS_ROOT=$T/writer LAYERFS_ROLE=writer $L status >/dev/null

scan() { # label
  local t0 t1 out
  t0=$(date +%s%N)
  out=$($L scan --json)
  t1=$(date +%s%N)
  node -e '
    const r = JSON.parse(process.argv[1]);
    const [label, wall] = [process.argv[2], Number(process.argv[3])];
    console.log(`${label.padEnd(22)} wall ${String(wall).padStart(6)} ms  scanner ${r.io.ms.toFixed(1).padStart(7)} ms  listed=${r.listed}  readdirs=${r.io.readdirs} stats=${r.io.stats} filesRead=${r.io.filesRead}  +${r.added.layers.length}L +${r.added.images.length}I -${r.removed.layers.length}L -${r.removed.images.length}I`);
  ' "$out" "$1" $(( (t1 - t0) / 1000000 ))
}

# the first open of a new root builds the index (a full read of the store); time it separately
t0=$(date +%s%N); $L index rebuild >/dev/null; t1=$(date +%s%N)
echo "index build (first open, full read of the store): $(( (t1 - t0) / 1000000 )) ms"
scan "first scan"
scan "confirming scan"
scan "no-change scan"
scan "no-change scan"
node dist/scripts/gen-store.js "$T/nfs" 10 1 10 added >/dev/null
scan "after +10 layers"
scan "confirming scan"
scan "no-change scan"

if command -v strace >/dev/null; then
  echo
  echo "syscalls of one no-change 'layerfs scan' process (strace -c -f; node start-up included):"
  strace -f -c -o "$T/strace.txt" $L scan --json >/dev/null
  head -n 20 "$T/strace.txt"
  echo "file opens under the store during that scan:"
  strace -f -e trace=openat,open,statx,newfstatat,getdents64 -o "$T/strace2.txt" $L scan --json >/dev/null
  grep -c "$T/nfs" "$T/strace2.txt" || true
fi
