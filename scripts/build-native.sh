#!/usr/bin/env bash
# Builds native/layerfs_native.node: a tiny N-API addon (mknod, l*xattr, renameat2, fallocate, lseek, copy_file_range,
# the /dev/fuse watcher).
# Needs a C compiler and Node's headers (Debian: nodejs ships them in /usr/include/node).
set -euo pipefail
cd "$(dirname "$0")/.."
nodedir=$(npm config get nodedir 2>/dev/null || true)
inc=""
for d in "$nodedir/include/node" "$(dirname "$(dirname "$(command -v node)")")/include/node" /usr/include/node /usr/local/include/node; do
  if [ -f "$d/node_api.h" ]; then inc=$d; break; fi
done
[ -n "$inc" ] || { echo "build-native: node_api.h not found (install Node's headers)" >&2; exit 1; }
mkdir -p build
out=build/layerfs_native.node
if [ ! -f "$out" ] || [ native/layerfs_native.c -nt "$out" ]; then
  ${CC:-cc} -O2 -Wall -shared -fPIC -DNODE_GYP_MODULE_NAME=layerfs_native -I"$inc" native/layerfs_native.c -o "$out"
fi
