#!/usr/bin/env bash
# Store-size benchmark (issue #18): every command's cost should not depend on the store's size.
# For generated stores (scripts/gen-store.ts) of 0, 1,000 and 10,000 images of 2 layers each, on a reader root:
# median of ROUNDS (default 5) of the wall time (and CPU, user+sys) of each command's whole process:
#   image ls, layer ls, image inspect, status, mount + umount --rm (kernel overlay), the first index build
#   (fresh root: `layerfs scan`, whose open builds the index), a no-change scan, a scan after +10 images,
#   `layerfs --help` and `node -e 0`.
# Prints a table with each figure's ratio against the empty store.
# Usage: scripts/bench-store.sh [ROUNDS] [SIZES]     e.g. scripts/bench-store.sh 5 "0 1000 10000"   (npm run build first)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SIZES=${2:-"0 1000 10000"}
T=$(mktemp -d /tmp/layerfs-bench-store.XXXXXX)
MNT=$T/mnt
mkdir -p "$MNT"
cleanup() { mountpoint -q "$MNT" && umount -l "$MNT"; rm -rf "$T"; }
trap cleanup EXIT
L=(node dist/src/cli/main.js)
R=$T/results
: >"$R"

# one timed run: appends "<size> <label> <wall ms> <cpu ms>"
timed() { # size label cmd...
  local size=$1 label=$2
  shift 2
  /usr/bin/time -f '%e %U %S' -o "$T/time" "$@" >/dev/null 2>"$T/err" || { echo "failed: $* ($(cat "$T/err"))" >&2; return 1; }
  awk -v s="$size" -v l="$label" '{ printf "%s %s %d %d\n", s, l, $1 * 1000, ($2 + $3) * 1000 }' "$T/time" >>"$R"
}

for N in $SIZES; do
  S=$T/s$N
  export LAYERFS_SHARED=$S/nfs LAYERFS_ROLE=reader LAYERFS_ROOT=$S/host
  echo "store of $N images ($((2 * N)) layers): generating ..." >&2
  node dist/scripts/gen-store.js "$S/nfs" $((2 * N)) "$N" 2 bench >/dev/null
  LAYERFS_ROOT=$S/writer LAYERFS_ROLE=writer "${L[@]}" status >/dev/null # the store marker
  for i in $(seq "$ROUNDS"); do
    rm -rf "$S/host"
    timed "$N" first-index-build "${L[@]}" scan
  done
  for i in $(seq "$ROUNDS"); do "${L[@]}" scan >/dev/null; timed "$N" no-change-scan "${L[@]}" scan; done
  for i in $(seq "$ROUNDS"); do
    node dist/scripts/gen-store.js "$S/nfs" 20 10 2 "added$i" >/dev/null
    timed "$N" scan-after-+10-images "${L[@]}" scan
    "${L[@]}" scan >/dev/null # the confirming listing
  done
  # a small image to inspect and mount, on every store alike
  node dist/scripts/gen-store.js "$S/nfs" 2 1 2 probe >/dev/null
  "${L[@]}" scan >/dev/null
  "${L[@]}" scan >/dev/null
  for i in $(seq "$ROUNDS"); do
    timed "$N" "image-ls" "${L[@]}" image ls
    timed "$N" "layer-ls" "${L[@]}" layer ls
    timed "$N" "image-inspect" "${L[@]}" image inspect probe/img0:latest
    timed "$N" "status" "${L[@]}" status
    timed "$N" "mount" "${L[@]}" mount probe/img0:latest "$MNT" --driver overlay
    timed "$N" "umount-rm" "${L[@]}" umount "$MNT" --rm
    timed "$N" "layerfs-help" "${L[@]}" --help
    timed "$N" "node-e-0" node -e 0
  done
done

node - "$R" "$ROUNDS" $SIZES <<'JS'
const fs = require('fs');
const [file, rounds, ...sizes] = process.argv.slice(2);
const rows = new Map();
for (const line of fs.readFileSync(file, 'utf8').trim().split('\n')) {
  const [size, label, wall, cpu] = line.split(' ');
  const k = `${label}`;
  if (!rows.has(k)) rows.set(k, new Map());
  const m = rows.get(k);
  if (!m.has(size)) m.set(size, { wall: [], cpu: [] });
  m.get(size).wall.push(Number(wall));
  m.get(size).cpu.push(Number(cpu));
}
const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const spread = (a) => `${Math.min(...a)}-${Math.max(...a)}`;
const base = sizes[0];
console.log(`median of ${rounds} (ms, wall; [min-max]; cpu = user+sys median); ratio = against the ${base}-image store`);
const head = ['command', ...sizes.flatMap((s) => [`${s} images wall`, 'cpu']), ...sizes.slice(1).map((s) => `ratio ${s}`)];
console.log('| ' + head.join(' | ') + ' |');
console.log('|' + head.map(() => '---').join('|') + '|');
for (const [label, m] of rows) {
  const cells = [label];
  for (const s of sizes) {
    const v = m.get(s);
    cells.push(v ? `${med(v.wall)} [${spread(v.wall)}]` : '-', v ? String(med(v.cpu)) : '-');
  }
  for (const s of sizes.slice(1)) {
    const a = m.get(base), b = m.get(s);
    cells.push(a && b && med(a.wall) > 0 ? `${(med(b.wall) / med(a.wall)).toFixed(2)}x` : '-');
  }
  console.log('| ' + cells.join(' | ') + ' |');
}
const help = rows.get('layerfs-help'), node0 = rows.get('node-e-0');
if (help && node0) {
  const h = sizes.map((s) => med(help.get(s).wall)), n = sizes.map((s) => med(node0.get(s).wall));
  console.log(`layerfs --help / node -e 0: ${(h.reduce((a, b) => a + b) / n.reduce((a, b) => a + b)).toFixed(2)}x`);
}
JS
