#!/usr/bin/env bash
# Benchmark: layerfs applyLayer vs GNU tar -x on the same large layer tar built from /usr.
# usage: scripts/bench-apply.sh [rounds]      (env BENCH_PATHS="usr/share usr/bin usr/include" to change the input)
# env BENCH_OTHER=<path to another build's bench-apply-entry.js> adds it as contender "other" in the
# same run (e.g. a copy of dist/ from before a change, outside the repo: not something to commit).
# env BENCH_DIR=<dir> puts the scratch (the tar and all extraction targets) in <dir>/layerfs-bench
# instead of /var/tmp/layerfs-bench, e.g. BENCH_DIR=/dev/shm for tmpfs (removed on exit).
# Needs root (ownership, devices) and a prior `npm run build`.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
paths=${BENCH_PATHS:-usr/share usr/bin usr/include}
scratch=${BENCH_DIR:-/var/tmp}/layerfs-bench
entry=dist/scripts/bench-apply-entry.js
[ -f "$entry" ] || { echo "bench: $entry missing; run npm run build" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench: run as root (GNU tar --same-owner and layerfs both chown)" >&2; exit 1; }

cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT
rm -rf "$scratch"
mkdir -p "$scratch"

echo "building layer tar from / : $paths"
# --xattrs so both extractors get the same PAX xattr records; GNU format output (PAX where needed)
tar -C / --xattrs --format=pax -cf "$scratch/layer.tar" $paths 2>/dev/null || true
tar_bytes=$(stat -c %s "$scratch/layer.tar")
entries=$(tar -tf "$scratch/layer.tar" | wc -l)
printf 'layer tar: %d MB, %d entries; scratch %s on %s\n' $((tar_bytes / 1000000)) "$entries" "$scratch" "$(stat -f -c %T "$scratch")"
cat "$scratch/layer.tar" >/dev/null # warm the page cache for both readers

now() { date +%s.%N; }
# CPU split per run (user/sys seconds) when GNU time is there; load from other processes shows as wall >> user+sys
timer=""; [ -x /usr/bin/time ] && timer="/usr/bin/time -f %Uu+%Ss -o $scratch/cpu"
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }

contenders="tar layerfs"
if [ -n "${BENCH_OTHER:-}" ]; then
  [ -f "$BENCH_OTHER" ] || { echo "bench: BENCH_OTHER=$BENCH_OTHER missing" >&2; exit 1; }
  contenders="tar layerfs other"
fi
declare -A best best_sync
for who in $contenders; do best[$who]=999999; best_sync[$who]=999999; done
for r in $(seq 1 "$rounds"); do
  for who in $contenders; do
    out="$scratch/out-$who"
    rm -rf "$out"; mkdir -p "$out"; sync
    t0=$(now)
    if [ "$who" = tar ]; then
      $timer tar -C "$out" --same-owner -p --xattrs --xattrs-include='*' -xf "$scratch/layer.tar"
    elif [ "$who" = other ]; then
      $timer node "$BENCH_OTHER" "$scratch/layer.tar" "$out" >"$scratch/other.json"
    else
      $timer node "$entry" "$scratch/layer.tar" "$out" >"$scratch/lfs.json"
    fi
    t1=$(now)
    sync
    t2=$(now)
    el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    els=$(awk -v a="$t0" -v b="$t2" 'BEGIN { print b - a }')
    cpu=""; [ -n "$timer" ] && cpu="  cpu $(cat "$scratch/cpu")"
    printf 'round %d %-8s %6.2fs  %7s MB/s   (incl. sync %6.2fs  %7s MB/s)%s\n' "$r" "$who" "$el" "$(mbps "$tar_bytes" "$el")" "$els" "$(mbps "$tar_bytes" "$els")" "$cpu"
    best[$who]=$(awk -v a="${best[$who]}" -v b="$el" 'BEGIN { print (b < a) ? b : a }')
    best_sync[$who]=$(awk -v a="${best_sync[$who]}" -v b="$els" 'BEGIN { print (b < a) ? b : a }')
  done
  # sanity: both trees hold the same files (names, types, sizes except of dirs (fs-specific), modes, owners)
  if [ "$r" = 1 ]; then
    (cd "$scratch/out-tar" && find . \( -type d -printf '%P %y - %m %U %G\n' \) -o -printf '%P %y %s %m %U %G\n' | sort) >"$scratch/tar.lst"
    (cd "$scratch/out-layerfs" && find . \( -type d -printf '%P %y - %m %U %G\n' \) -o -printf '%P %y %s %m %U %G\n' | sort) >"$scratch/lfs.lst"
    if ! cmp -s "$scratch/tar.lst" "$scratch/lfs.lst"; then
      echo "bench: WARNING: trees differ:"; { diff "$scratch/tar.lst" "$scratch/lfs.lst" || true; } | head -20
    fi
    if [ -n "${BENCH_OTHER:-}" ]; then
      (cd "$scratch/out-other" && find . \( -type d -printf '%P %y - %m %U %G\n' \) -o -printf '%P %y %s %m %U %G\n' | sort) >"$scratch/other.lst"
      cmp -s "$scratch/tar.lst" "$scratch/other.lst" || echo "bench: WARNING: tar and other trees differ"
      [ "$(grep -o '"diffDigest":"[^"]*"' "$scratch/lfs.json")" = "$(grep -o '"diffDigest":"[^"]*"' "$scratch/other.json")" ] ||
        echo "bench: WARNING: layerfs and other report different diff digests"
    fi
  fi
done
rm -rf "$scratch"/out-*

echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
for kind in "extraction only" "including sync "; do
  line="best of $rounds, $kind :"
  for who in $contenders; do
    if [ "$kind" = "extraction only" ]; then t=${best[$who]}; else t=${best_sync[$who]}; fi
    line+=" $who $(mbps "$tar_bytes" "$t") MB/s"
    [ "$who" = tar ] || line+=" (x$(ratio "$( [ "$kind" = "extraction only" ] && echo "${best[tar]}" || echo "${best_sync[tar]}")" "$t") of tar),"
  done
  echo "${line%,}"
done
