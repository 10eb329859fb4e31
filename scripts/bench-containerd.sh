#!/usr/bin/env bash
# Benchmark (not a test): `ctr images import` + `ctr run --rm` of the same image through
# containerd's built-in overlayfs snapshotter and through `layerfs snapshotter`, in one run, on one
# private containerd. Also times layerfs with LAYERFS_SNAPSHOT_COMMIT=copy (commit = exportDiff +
# apply instead of renaming the upper dir into the store), the alternative the design weighed.
# Usage: bash scripts/bench-containerd.sh [ROUNDS]   (root; needs containerd, runc, busybox-static; npm run build first)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
T=$(mktemp -d /tmp/layerfs-bench-ctd-XXXXXX)
CLI="node $PWD/dist/src/cli/main.js"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  grep " $T" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$T" || { sleep 1; rm -rf "$T"; }
}
trap cleanup EXIT

# an image: busybox + symlinks, a layer of 2,000 small files, a layer with one 64 MiB file
node --input-type=module -e "
import { readFile, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { makeImage, ociArchive } from '$PWD/dist/test/lib/images.js';
const bb = await readFile('/bin/busybox');
const base = [{ name: 'bin/' }, { name: 'bin/busybox', content: bb, mode: 0o755 }, ...['sh', 'cat', 'ls', 'find', 'wc'].map((n) => ({ name: 'bin/' + n, type: 'symlink', linkname: 'busybox' })), { name: 'proc/' }, { name: 'dev/' }, { name: 'sys/' }, { name: 'tmp/', mode: 0o1777 }, { name: 'etc/' }];
const small = [{ name: 'usr/' }, { name: 'usr/share/' }];
for (let d = 0; d < 20; d++) { small.push({ name: 'usr/share/d' + d + '/' }); for (let f = 0; f < 100; f++) small.push({ name: 'usr/share/d' + d + '/f' + f, content: randomBytes(2048) }); }
const big = [{ name: 'data/' }, { name: 'data/blob', content: randomBytes(64 << 20) }];
const img = await makeImage([base, small, big]);
await writeFile('$T/image.tar', await ociArchive(img, 'latest'));
"

cat > "$T/config.toml" <<EOF
version = 2
root = "$T/containerd/root"
state = "$T/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$T/containerd.sock"
[ttrpc]
  address = "$T/containerd.sock.ttrpc"
[proxy_plugins.layerfs]
  type = "snapshot"
  address = "$T/layerfs.sock"
[proxy_plugins.layerfscopy]
  type = "snapshot"
  address = "$T/layerfs-copy.sock"
EOF

$CLI --root "$T/lfs" snapshotter --address "$T/layerfs.sock" 2>"$T/sn.log" & PIDS+=($!)
LAYERFS_SNAPSHOT_COMMIT=copy $CLI --root "$T/lfs-copy" snapshotter --address "$T/layerfs-copy.sock" 2>"$T/sn-copy.log" & PIDS+=($!)
containerd --config "$T/config.toml" >"$T/containerd.log" 2>&1 & PIDS+=($!)
C="ctr -a $T/containerd.sock"
for _ in $(seq 50); do $C version >/dev/null 2>&1 && [ -S "$T/layerfs.sock" ] && [ -S "$T/layerfs-copy.sock" ] && break; sleep 0.2; done

now() { date +%s%N; }
declare -A IMP RUN
for s in overlayfs layerfs layerfscopy; do IMP[$s]=0; RUN[$s]=0; done
echo "rounds: $ROUNDS (image: busybox + 2,000 x 2 KiB files + one 64 MiB file)"
for r in $(seq "$ROUNDS"); do
  for s in overlayfs layerfs layerfscopy; do
    t0=$(now)
    $C images import --base-name "bench/$s" --snapshotter "$s" "$T/image.tar" >/dev/null
    t1=$(now)
    out=$($C run --rm --snapshotter "$s" "bench/$s:latest" "b-$s-$r" /bin/sh -c 'ls /usr/share/d7 | wc -l; echo x > /tmp/w')
    t2=$(now)
    [ "$(echo "$out" | tr -d ' ')" = "100" ] || { echo "wrong output from $s: $out" >&2; exit 1; }
    IMP[$s]=$(( ${IMP[$s]} + t1 - t0 )); RUN[$s]=$(( ${RUN[$s]} + t2 - t1 ))
    $C images rm --sync "bench/$s:latest" >/dev/null
  done
done
ms() { echo $(( $1 / 1000000 / ROUNDS )); }
printf '%-12s %10s %10s %10s\n' snapshotter import_ms run_ms total_ms
for s in overlayfs layerfs layerfscopy; do
  printf '%-12s %10s %10s %10s\n' "$s" "$(ms ${IMP[$s]})" "$(ms ${RUN[$s]})" "$(ms $(( ${IMP[$s]} + ${RUN[$s]} )))"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
o=$(( ${IMP[overlayfs]} + ${RUN[overlayfs]} )); l=$(( ${IMP[layerfs]} + ${RUN[layerfs]} )); c=$(( ${IMP[layerfscopy]} + ${RUN[layerfscopy]} ))
echo "layerfs / overlayfs: import $(ratio ${IMP[layerfs]} ${IMP[overlayfs]})x, run $(ratio ${RUN[layerfs]} ${RUN[overlayfs]})x, total $(ratio $l $o)x (aim: <= 1.2x)"
echo "commit by copy / by rename (layerfs import): $(ratio ${IMP[layerfscopy]} ${IMP[layerfs]})x"
