#!/usr/bin/env bash
# Benchmark: layerfs applyLayer vs GNU tar -x, on the same disk, for
#   - one large layer (a tar of /usr paths), uncompressed, gzip (-6) and zstd (-3);
#   - a 5-layer image: the same files split into 5 layer tars, each compressed the same ways;
#     layerfs applies the 5 as `image import` does (in parallel, LAYERFS_IMPORT_PARALLEL, default 3,
#     each into its own dir); GNU tar extracts them one after the other (-z / --zstd for compressed).
# MB/s are of the uncompressed tar bytes; the figures are medians over the rounds; ratio = layerfs MB/s / tar MB/s.
# usage: scripts/bench-apply.sh [rounds]      (env BENCH_PATHS="usr/share usr/bin usr/include" to change the input)
# env BENCH_DIR=<dir> puts the scratch in <dir>/layerfs-bench instead of /var/tmp/layerfs-bench
# (e.g. BENCH_DIR=/dev/shm for tmpfs; removed on exit). env BENCH_CASES to pick cases, e.g. "1:none 5:zstd".
# Needs root (ownership, devices), gzip and zstd, and a prior `npm run build`.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
paths=${BENCH_PATHS:-usr/share usr/bin usr/include}
scratch=${BENCH_DIR:-/var/tmp}/layerfs-bench
entry=dist/scripts/bench-apply-entry.js
cases=${BENCH_CASES:-"1:none 1:gzip 1:zstd 5:none 5:gzip 5:zstd"}
[ -f "$entry" ] || { echo "bench: $entry missing; run npm run build" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench: run as root (GNU tar --same-owner and layerfs both chown)" >&2; exit 1; }

cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT
rm -rf "$scratch"
mkdir -p "$scratch"

echo "building layer tars from / : $paths"
# --xattrs so both extractors get the same PAX xattr records
tar -C / --xattrs --format=pax -cf "$scratch/one-1.tar" $paths 2>/dev/null || true
tar_bytes=$(stat -c %s "$scratch/one-1.tar")
(cd / && find $paths -print 2>/dev/null) >"$scratch/list"
entries=$(wc -l <"$scratch/list")
split -n l/5 -d -a 1 "$scratch/list" "$scratch/part."
for i in 0 1 2 3 4; do tar -C / --xattrs --format=pax --no-recursion -cf "$scratch/five-$((i + 1)).tar" -T "$scratch/part.$i" 2>/dev/null || true; done
five_bytes=0; for i in 1 2 3 4 5; do five_bytes=$((five_bytes + $(stat -c %s "$scratch/five-$i.tar"))); done
need() { case " $cases " in *" $1:$2 "*) return 0;; esac; return 1; }
for f in "$scratch"/one-1.tar "$scratch"/five-*.tar; do
  shape=1; [[ $f == */five-* ]] && shape=5
  if need $shape gzip; then gzip -6 -k -c "$f" >"$f.gz"; fi
  if need $shape zstd; then zstd -q -3 -T0 -k "$f" -o "$f.zst"; fi
done
printf 'one layer: %d MB, %d entries; five layers: %d MB in all; scratch %s on %s\n' $((tar_bytes / 1000000)) "$entries" $((five_bytes / 1000000)) "$scratch" "$(stat -f -c %T "$scratch")"
cat "$scratch"/*.tar* >/dev/null # warm the page cache for both readers

now() { date +%s.%N; }
timer=""; [ -x /usr/bin/time ] && timer="/usr/bin/time -f %Uu+%Ss -o $scratch/cpu"
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A times
for r in $(seq 1 "$rounds"); do
  for c in $cases; do
    shape=${c%%:*}; comp=${c##*:}
    ext=""; [ "$comp" = gzip ] && ext=.gz; [ "$comp" = zstd ] && ext=.zst
    if [ "$shape" = 1 ]; then files=("$scratch/one-1.tar$ext"); bytes=$tar_bytes; else files=(); for i in 1 2 3 4 5; do files+=("$scratch/five-$i.tar$ext"); done; bytes=$five_bytes; fi
    for who in tar layerfs; do
      rm -rf "$scratch/out"; mkdir -p "$scratch/out"; sync
      t0=$(now)
      if [ "$who" = tar ]; then
        zflag=(); [ "$comp" = gzip ] && zflag=(-z); [ "$comp" = zstd ] && zflag=(--zstd)
        i=0
        for f in "${files[@]}"; do
          i=$((i + 1)); mkdir -p "$scratch/out/$i"
          $timer tar -C "$scratch/out/$i" --same-owner -p --xattrs --xattrs-include='*' "${zflag[@]}" -xf "$f"
        done
      else
        pairs=(); i=0
        for f in "${files[@]}"; do i=$((i + 1)); mkdir -p "$scratch/out/$i"; pairs+=("$f" "$scratch/out/$i"); done
        $timer node "$entry" "${pairs[@]}" >"$scratch/lfs.json"
      fi
      t1=$(now)
      el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
      cpu=""; [ -n "$timer" ] && cpu="  cpu(last process) $(cat "$scratch/cpu")"
      printf 'round %d  %d layer(s) %-5s %-8s %7.2fs  %7s MB/s%s\n' "$r" "$shape" "$comp" "$who" "$el" "$(mbps "$bytes" "$el")" "$cpu"
      times[$c:$who]="${times[$c:$who]:-} $el"
      if [ "$r" = 1 ] && [ "$who" = layerfs ] && [ "$comp" = none ]; then
        # sanity: both extractions hold the same files (names, types, sizes except of dirs, modes, owners)
        (cd "$scratch/out" && find . \( -type d -printf '%P %y - %m %U %G\n' \) -o -printf '%P %y %s %m %U %G\n' | sort) >"$scratch/lfs.lst"
        cmp -s "$scratch/tar.lst" "$scratch/lfs.lst" || { echo "bench: WARNING: trees differ:"; { diff "$scratch/tar.lst" "$scratch/lfs.lst" || true; } | head -20; }
      elif [ "$r" = 1 ] && [ "$who" = tar ] && [ "$comp" = none ]; then
        (cd "$scratch/out" && find . \( -type d -printf '%P %y - %m %U %G\n' \) -o -printf '%P %y %s %m %U %G\n' | sort) >"$scratch/tar.lst"
      fi
    done
  done
done
rm -rf "$scratch/out"

echo
echo "medians of $rounds rounds (MB/s of uncompressed tar bytes; ratio = layerfs / GNU tar; >= 1.00 means layerfs is as fast or faster)"
printf '%-10s %-6s %12s %12s %7s\n' layers comp "tar MB/s" "layerfs MB/s" ratio
for c in $cases; do
  shape=${c%%:*}; comp=${c##*:}
  bytes=$tar_bytes; [ "$shape" = 5 ] && bytes=$five_bytes
  tt=$(echo "${times[$c:tar]}" | median); tl=$(echo "${times[$c:layerfs]}" | median)
  printf '%-10s %-6s %12s %12s %7s\n' "$shape" "$comp" "$(mbps "$bytes" "$tt")" "$(mbps "$bytes" "$tl")" "$(awk -v a="$tt" -v b="$tl" 'BEGIN { printf "%.2f", a / b }')"
done
