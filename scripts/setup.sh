#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine (as root): system packages, npm deps, build, `layerfs` on PATH.
# (golang-go + golang-github-containerd-containerd-dev: test/containerd-suite.test.ts builds containerd's
# snapshotter suite from the packaged Go sources, offline.)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
pkgs=(libfuse2 fuse3 fuse-overlayfs runc btrfs-progs attr util-linux e2fsprogs kmod docker-registry skopeo apache2-utils umoci busybox-static containerd golang-go golang-github-containerd-containerd-dev zstd python3 tar)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe overlay 2>/dev/null || true
modprobe fuse 2>/dev/null || true
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
npm link --no-audit --no-fund --loglevel=error >/dev/null 2>&1 || true
