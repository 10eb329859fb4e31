#!/usr/bin/env bash
# Benchmark (not a test): N stacked layers through a snapshotter as containerd unpacks an image (prepare on the last
# commit, mount with containerd's mount code, write a file, unmount, commit), for containerd's overlayfs snapshotter
# and `layerfs snapshotter` with each driver. Prints the total and per-step medians. Uses test/go/snapsuite_test.go
# (TestLayerCycle), built offline from Debian's packaged containerd sources as test/containerd-suite.test.ts does.
# Usage: bash scripts/bench-snapshotter-layers.sh [LAYERS=127]   (root; npm run build first; golang-go and
# golang-github-containerd-containerd-dev installed: scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-127}
T=$(mktemp -d /tmp/layerfs-bench-layers-XXXXXX)
trap 'grep " $T" /proc/self/mountinfo | awk "{print \$5}" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done; rm -rf "$T"' EXIT
mkdir -p "$T/gopath/src/layerfs/snapsuite"
cp test/go/snapsuite_test.go "$T/gopath/src/layerfs/snapsuite/"
(cd "$T/gopath/src/layerfs/snapsuite" && GO111MODULE=off GOPATH="$T/gopath:/usr/share/gocode" GOFLAGS= GOPROXY=off go test -c -o "$T/snapsuite.test" .)
for target in overlayfs layerfs:overlay layerfs:fuse; do
  TMPDIR="$T" SNAPSUITE_TARGET=${target%%:*} SNAPSUITE_DRIVER=${target#*:} SNAPSUITE_CLI="$PWD/dist/src/cli/main.js" SNAPSUITE_LAYER_CYCLE=$N \
    "$T/snapsuite.test" -test.run '^TestLayerCycle$' -test.timeout 60m 2>&1 | grep -E '^layer-cycle|\.go:[0-9]+: ' || echo "$target: failed"
done
