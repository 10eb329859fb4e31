#!/usr/bin/env bash
# Benchmark of the FUSE overlay driver: kernel overlay vs fuse-overlayfs vs layerfs (one column per layerfs
# transport), same dataset, same run.
#
# usage: scripts/bench-fuse.sh [reps]           (default 3; medians of the reps are printed)
# env:   LAYERFS_TRANSPORTS="fuse-native direct direct-pt"  (the default) one layerfs column per transport
#                                                 (`layerfs fuse --transport T`; direct-pt: the direct transport with
#                                                 `-o passthrough`, FUSE passthrough of opened files, kernel 6.9+;
#                                                 while the CLI lacks --transport only fuse-native runs)
#        BENCH_FLOOR=1                            add a column "floor": a minimal fuse-native passthrough (no overlay
#                                                 logic; scripts/fuse-native-floor.ts, same libfuse options as the
#                                                 fuse-native transport) over a kernel overlay mount of the same layers:
#                                                 what libfuse 2.9 and fuse-native's thread handoff cost by themselves
#        BENCH_ONLY="kernel fuse-overlayfs layerfs-fuse-native"  restrict the columns
#        BENCH_ROWS="walk readall ..."            restrict the rows (names as printed)
#        BENCH_KEEP=1                             keep the dataset in /var/tmp/layerfs-bench-fuse for the next run
#        LAYERFS_CLI=path/to/main.js              another build of the CLI (default dist/src/cli/main.js)
# Needs root, a prior `npm run build`, fuse-overlayfs; uses fio for random reads when installed.
#
# Dataset (/var/tmp/layerfs-bench-fuse): a copy of /usr capped at 40k entries (files up to 2 MB) as the base
# layer; a layer of changes (whiteouts, modified files, opaque dirs); a layer of 10k small files; a 1 GiB file
# layer; a 100-layer stack for deep lookups; a tar of 20k small files to extract into the mount.
# "cold" = caches dropped and a fresh mount; "warm" = the same step again on that mount.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
reps=${1:-3}
D=/var/tmp/layerfs-bench-fuse
cli=${LAYERFS_CLI:-$repo/dist/src/cli/main.js}
helper=$repo/dist/scripts/bench-fuse-ops.js
[ "$(id -u)" = 0 ] || { echo "bench-fuse: run as root" >&2; exit 1; }
[ -f "$cli" ] && [ -f "$helper" ] || { echo "bench-fuse: run npm run build first" >&2; exit 1; }
command -v fuse-overlayfs >/dev/null || { echo "bench-fuse: fuse-overlayfs missing (apt-get install fuse-overlayfs)" >&2; exit 1; }
have_fio=0; command -v fio >/dev/null && have_fio=1

# ---- columns ------------------------------------------------------------------------------------------------
transports=${LAYERFS_TRANSPORTS:-fuse-native direct direct-pt}
has_transport_flag=0
node "$cli" fuse --help 2>/dev/null | grep -q -- '--transport' && has_transport_flag=1
cols="kernel fuse-overlayfs"
[ -n "${BENCH_FLOOR:-}" ] && cols="$cols floor"
floor=$repo/dist/scripts/fuse-native-floor.js
for t in $transports; do
  if [ "$t" != fuse-native ] && [ $has_transport_flag = 0 ]; then
    echo "note: layerfs fuse has no --transport yet: skipping transport $t" >&2
    continue
  fi
  cols="$cols layerfs-$t"
done
[ -n "${BENCH_ONLY:-}" ] && cols=$BENCH_ONLY
rows_wanted=${BENCH_ROWS:-}
want() { [ -z "$rows_wanted" ] || [[ " $rows_wanted " == *" $1 "* ]]; }

mnt=$D/mnt
cleanup() {
  set +e
  for m in "$mnt" "$D"/mnt* "$D/floorbase" "$D/run"; do mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }; done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$D"
  rm -rf "$D/run" "$D/upper.img"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# ---- dataset ------------------------------------------------------------------------------------------------
build_dataset() {
  rm -rf "$D"; mkdir -p "$D"/{base,changes,small,big,deep,src20k}
  echo "dataset: base = /usr, at most 40000 entries, files <= 2 MB" >&2
  (cd / && find usr -xdev \( -type d -o -size -2049k \) 2>/dev/null | head -n 40000 >"$D/base.list") || true
  tar -C / --no-recursion --xattrs -cf - -T "$D/base.list" 2>/dev/null | tar -C "$D/base" --xattrs -xpf - || true # files that vanish or are unreadable are left out
  # changes: every 23rd file whited out, every 29th rewritten, 5 opaque dirs with 2 new files, 50 new files
  local i=0
  (cd "$D/base" && find usr -type f | sort) >"$D/base.files"
  while IFS= read -r f; do
    i=$((i + 1))
    if ((i % 23 == 0)); then
      mkdir -p "$D/changes/$(dirname "$f")"; mknod "$D/changes/$f" c 0 0
    elif ((i % 29 == 0)); then
      mkdir -p "$D/changes/$(dirname "$f")"; echo "changed $i" >"$D/changes/$f"
    fi
  done <"$D/base.files"
  (cd "$D/base" && find usr -mindepth 2 -maxdepth 3 -type d | sort | awk 'NR % 37 == 0' | head -n 5) | while IFS= read -r d; do
    mkdir -p "$D/changes/$d"; setfattr -n trusted.overlay.opaque -v y "$D/changes/$d"
    echo one >"$D/changes/$d/opq-1"; echo two >"$D/changes/$d/opq-2"
  done
  mkdir -p "$D/changes/usr/new"; for i in $(seq 1 50); do echo "new $i" >"$D/changes/usr/new/n$i"; done
  # small: 100 dirs x 100 files, 1-4 KiB
  node -e '
    const fs = require("fs"), path = require("path"); const root = process.argv[1]; const n = Number(process.argv[2]);
    for (let d = 0; d < 100; d++) { const dir = path.join(root, "d" + d); fs.mkdirSync(dir, { recursive: true });
      for (let i = 0; i < n / 100; i++) fs.writeFileSync(path.join(dir, "f" + i), Buffer.alloc(1024 + ((d * 131 + i * 17) % 3072), 97 + (i % 26))); }
  ' "$D/small/smallfiles" 10000
  node -e '
    const fs = require("fs"), path = require("path"); const root = process.argv[1];
    for (let d = 0; d < 200; d++) { const dir = path.join(root, "t" + d); fs.mkdirSync(dir, { recursive: true });
      for (let i = 0; i < 100; i++) fs.writeFileSync(path.join(dir, "x" + i), Buffer.alloc(512 + ((d * 7 + i * 13) % 1536), 65 + (i % 26))); }
  ' "$D/src20k/tree"
  tar -C "$D/src20k" -cf "$D/20k.tar" tree; rm -rf "$D/src20k"
  head -c 1G /dev/urandom >"$D/big/big"
  # deep: 100 layers (l00 = top); every layer adds a/b/c/f<L> and a/x<L>; the bottom one holds 2000 files in a/b/c
  for l in $(seq -w 0 99); do
    mkdir -p "$D/deep/l$l/a/b/c"; echo "$l" >"$D/deep/l$l/a/b/c/f$l"; echo "$l" >"$D/deep/l$l/a/x$l"
  done
  node -e '
    const fs = require("fs"); const d = process.argv[1]; const out = [];
    for (let i = 0; i < 2000; i++) { fs.writeFileSync(`${d}/l99/a/b/c/bottom${i}`, String(i)); out.push(`a/b/c/bottom${i}`); }
    fs.writeFileSync(process.argv[2], out.join("\n") + "\n");
  ' "$D/deep" "$D/deep.list"
  echo "ok" >"$D/.complete"
}
if [ -n "${BENCH_KEEP:-}" ] && [ -f "$D/.complete" ]; then echo "dataset: reusing $D" >&2; else build_dataset; fi
base_entries=$(wc -l <"$D/base.list"); base_mb=$(du -sm "$D/base" | cut -f1)
echo "dataset: base $base_entries entries ${base_mb} MB; changes $(find "$D/changes" | wc -l) entries; small 10000 files; big 1 GiB; deep 100 layers" >&2
deep_lowers=$(for l in $(seq -w 0 99); do printf 'l%s:' "$l"; done); deep_lowers=${deep_lowers%:}

# ---- mounting -----------------------------------------------------------------------------------------------
# Every mount gets its upper and work dirs on a fresh ext4 (a loop device, 4 GiB sparse): the same empty filesystem
# for every column. On a long-lived root fs, creating files costs 5 to 400 us depending on where ext4 places the new
# directory (seen here: 6 us in one dir, 350 us in its sibling made a second later), which swamps the differences
# the create/rename/tar rows are meant to show. BENCH_UPPER_LOOP=0: plain dirs under $D/run instead.
fresh_upper() {
  if mountpoint -q "$D/run"; then umount "$D/run" 2>/dev/null || umount -l "$D/run"; fi
  rm -rf "$D/run"; mkdir -p "$D/run"
  [ "${BENCH_UPPER_LOOP:-1}" = 1 ] || return 0
  rm -f "$D/upper.img"; truncate -s 4G "$D/upper.img"
  if mkfs.ext4 -q -F "$D/upper.img" && mount -o loop "$D/upper.img" "$D/run"; then return 0; fi
  echo "bench-fuse: no loop ext4 for the upper; using plain dirs (create rows get noisy)" >&2
}
# mount_fs WHO STACK [rw]: a fresh mount at $mnt of STACK (main|big|deep) with a fresh upper
srv_pid=""
srv_who=""
peak_rss=0
declare -A peak_by=()
# kmount CWD OPTS TARGET: a kernel overlay mount, run from CWD (the deep stack's lowers are relative)
kmount() { (cd "$1" && mount -t overlay overlay -o "$2,index=off,redirect_dir=off,metacopy=off" "$3"); }
mount_fs() {
  local who=$1 stack=$2 lowers cwd=$D
  case $stack in
    main) lowers=changes:small:base ;;
    big) lowers=big ;;
    deep) lowers=$deep_lowers; cwd=$D/deep ;;
  esac
  fresh_upper
  mkdir -p "$D/run/upper" "$D/run/work" "$mnt"
  local o="lowerdir=$lowers,upperdir=$D/run/upper,workdir=$D/run/work"
  srv_pid=""
  srv_who=$who
  case $who in
    kernel) kmount "$cwd" "$o" "$mnt" ;;
    fuse-overlayfs) (cd "$cwd" && fuse-overlayfs -o "$o" "$mnt") ;;
    floor)
      mkdir -p "$D/floorbase"
      kmount "$cwd" "$o" "$D/floorbase"
      node "$floor" "$D/floorbase" "$mnt" >"$D/run/floor.out" 2>&1 &
      for _ in $(seq 1 100); do grep -q ready "$D/run/floor.out" 2>/dev/null && break; sleep 0.05; done
      srv_pid=$(pgrep -f -- "fuse-native-floor.js .*$mnt\$" | head -n 1 || true)
      ;;
    layerfs-*)
      local t=${who#layerfs-} flag=()
      [ $has_transport_flag = 1 ] && flag=(--transport "$t")
      [ "$t" = direct-pt ] && flag=(--transport direct -o passthrough)
      (cd "$cwd" && LAYERFS_FUSE_STATS="$D/stats.jsonl" node "$cli" fuse "${flag[@]}" -o "$o" "$mnt")
      srv_pid=$(pgrep -f -- "server-main.js .*$mnt\$" | head -n 1 || true)
      ;;
  esac
}
# server_stats: the layerfs server's counters (SIGUSR2 appends a JSON line to $D/stats.jsonl): its CPU time, the
# part of it spent polling /dev/fuse (direct transport) and the requests it served, summed per column
declare -A cpu_by=() spin_by=() req_by=()
server_stats() {
  local n0 line
  n0=$(wc -l <"$D/stats.jsonl" 2>/dev/null || echo 0)
  kill -USR2 "$srv_pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do (($(wc -l <"$D/stats.jsonl" 2>/dev/null || echo 0) > n0)) && break; sleep 0.02; done
  line=$(tail -n 1 "$D/stats.jsonl" 2>/dev/null) || return 0
  read -r c sp rq < <(node -e 'const j = JSON.parse(process.argv[1]); console.log(Math.round(j.cpuServeUs ?? j.cpuUs), Math.round(j.spinUs ?? 0), j.requests)' "$line") || return 0
  cpu_by[$srv_who]=$((${cpu_by[$srv_who]:-0} + c)); spin_by[$srv_who]=$((${spin_by[$srv_who]:-0} + sp)); req_by[$srv_who]=$((${req_by[$srv_who]:-0} + rq))
}
unmount_fs() {
  if [ -n "$srv_pid" ] && [ -r "/proc/$srv_pid/status" ]; then
    local kb; kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$srv_pid/status")
    echo "$srv_who $(tail -n 1 "$results" | cut -d' ' -f1) $kb" >>"$D/rss.txt"
    [[ $srv_who == layerfs-* ]] && ((kb > peak_rss)) && peak_rss=$kb
    ((kb > ${peak_by[$srv_who]:-0})) && peak_by[$srv_who]=$kb
    [[ $srv_who == layerfs-* ]] && server_stats
  fi
  umount "$mnt" 2>/dev/null || umount -l "$mnt"
  if [ "$srv_who" = floor ]; then
    for _ in $(seq 1 100); do pgrep -f "fuse-native-floor.js .*$mnt\$" >/dev/null || break; sleep 0.05; done
    umount "$D/floorbase" 2>/dev/null || umount -l "$D/floorbase"
  fi
  if [ -n "$srv_pid" ]; then for _ in $(seq 1 100); do kill -0 "$srv_pid" 2>/dev/null || break; sleep 0.05; done; fi
  for _ in $(seq 1 100); do pgrep -f "fuse-overlayfs .*$mnt\$" >/dev/null || break; sleep 0.05; done
  if mountpoint -q "$D/run"; then umount "$D/run" 2>/dev/null || umount -l "$D/run"; fi
}

results=$D/results.txt
: >"$results"
: >"$D/rss.txt"
: >"$D/stats.jsonl"
record() { echo "$1 $2 $3" >>"$results"; printf '  %-16s %-22s %8.3fs\n' "$1" "$2" "$3" >&2; }

# ---- steps --------------------------------------------------------------------------------------------------
step_walk() { local t; t=$(now); find "$mnt" -printf '%i %s\n' >/dev/null; elapsed "$t"; }
step_readall() { local t; t=$(now); (cd "$mnt" && tar cf - . | wc -c >/dev/null); elapsed "$t"; }
step_seqread() { local t; t=$(now); dd if="$mnt/big" of=/dev/null bs=1M status=none; elapsed "$t"; }
step_randread() {
  local t; t=$(now)
  if [ $have_fio = 1 ]; then
    fio --name=r --filename="$mnt/big" --rw=randread --bs=4k --io_size=80m --ioengine=psync --randseed=7 --invalidate=0 --output=/dev/null >/dev/null
  else
    node "$helper" randread "$mnt/big" 20480 >/dev/null
  fi
  elapsed "$t"
}
step_copyup() { local t; t=$(now); printf x >>"$mnt/big"; elapsed "$t"; }
step_tar20k() { local t; t=$(now); mkdir "$mnt/x20k"; tar -C "$mnt/x20k" -xf "$D/20k.tar"; elapsed "$t"; }

for r in $(seq 1 "$reps"); do
  for who in $cols; do
    echo "rep $r: $who" >&2
    if want walk; then
      drop; mount_fs "$who" main
      record walk-cold "$who" "$(step_walk)"; record walk-warm "$who" "$(step_walk)"
      unmount_fs
    fi
    if want readall; then
      drop; mount_fs "$who" main
      record readall-cold "$who" "$(step_readall)"; record readall-warm "$who" "$(step_readall)"
      unmount_fs
    fi
    if want ops; then
      mount_fs "$who" main
      json=$(node "$helper" ops "$mnt/bench-ops" 10000)
      for k in create stat rename delete; do
        record "ops10k-$k" "$who" "$(node -e 'console.log(JSON.parse(process.argv[1])[process.argv[2]])' "$json" "$k")"
      done
      record tar20k-extract "$who" "$(step_tar20k)"
      unmount_fs
    fi
    if want seqread; then
      drop; mount_fs "$who" big
      record seqread-cold "$who" "$(step_seqread)"; record seqread-warm "$who" "$(step_seqread)"
      unmount_fs
    fi
    if want randread; then
      drop; mount_fs "$who" big
      record rand4k-cold "$who" "$(step_randread)"; record rand4k-warm "$who" "$(step_randread)"
      unmount_fs
    fi
    if want copyup; then
      drop; mount_fs "$who" big
      record copyup-1g "$who" "$(step_copyup)"
      unmount_fs
    fi
    if want deep; then
      drop; mount_fs "$who" deep
      json=$(cd "$mnt" && node "$helper" lookups "$mnt" "$D/deep.list")
      record deep-cold "$who" "$(node -e 'console.log(JSON.parse(process.argv[1]).total)' "$json")"
      json=$(cd "$mnt" && node "$helper" lookups "$mnt" "$D/deep.list")
      record deep-warm "$who" "$(node -e 'console.log(JSON.parse(process.argv[1]).total)' "$json")"
      unmount_fs
    fi
  done
done

# ---- table --------------------------------------------------------------------------------------------------
echo
echo "medians of $reps (seconds); ratio = layerfs / other (lower is better for layerfs); X-pt/X = passthrough / without"
node -e '
  const fs = require("fs"); const cols = process.argv[2].split(" ");
  const by = new Map();
  for (const line of fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)) {
    const [row, who, v] = line.split(" "); const k = row + " " + who;
    if (!by.has(k)) by.set(k, []); by.get(k).push(Number(v));
  }
  const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor((s.length - 1) / 2)]; };
  const rows = [...new Set([...by.keys()].map((k) => k.split(" ")[0]))];
  const lfs = cols.filter((c) => c.startsWith("layerfs"));
  const others = cols.filter((c) => !c.startsWith("layerfs"));
  // passthrough columns (layerfs-X-pt) also against the same transport without it (layerfs-X), when both ran
  const pt = lfs.filter((c) => c.endsWith("-pt") && cols.includes(c.slice(0, -3))).map((c) => [c, c.slice(0, -3)]);
  const short = (c) => c.replace("layerfs-", "");
  const hdr = ["row", ...cols, ...lfs.flatMap((l) => others.map((o) => `${short(l)}/${o === "fuse-overlayfs" ? "fovl" : o}`)), ...pt.map(([a, b]) => `${short(a)}/${short(b)}`)];
  const table = [hdr];
  for (const row of rows) {
    const m = Object.fromEntries(cols.map((c) => [c, by.has(row + " " + c) ? med(by.get(row + " " + c)) : NaN]));
    table.push([row, ...cols.map((c) => m[c].toFixed(3)), ...lfs.flatMap((l) => others.map((o) => (m[l] / m[o]).toFixed(2) + "x")), ...pt.map(([a, b]) => (m[a] / m[b]).toFixed(2) + "x")]);
  }
  const w = hdr.map((_, i) => Math.max(...table.map((r) => String(r[i]).length)));
  for (const r of table) console.log(r.map((c, i) => (i === 0 ? String(c).padEnd(w[i]) : String(c).padStart(w[i]))).join("  "));
' "$results" "$cols"
echo "layerfs server CPU per request (all rows and reps; CPU time after the mount was ready / requests served; the"
echo "direct transport's polling of /dev/fuse after wake-ups is counted apart: 'work' is CPU without it):"
for w in "${!req_by[@]}"; do
  r=${req_by[$w]}; ((r > 0)) || continue
  awk -v w="$w" -v c="${cpu_by[$w]}" -v s="${spin_by[$w]}" -v r="$r" 'BEGIN { printf "  %-22s %6.1f us CPU, %6.1f us work (%d requests, %.1f s CPU, %.1f s polling)\n", w, c / r, (c - s) / r, r, c / 1e6, s / 1e6 }'
done
echo "layerfs server peak RSS (VmHWM, max over all mounts): $((peak_rss / 1024)) MiB"
for w in "${!peak_by[@]}"; do echo "  $w: $((peak_by[$w] / 1024)) MiB"; done
# by mount (named by its last row), max over the reps
awk '{ k = $1 " " $2; if ($3 > m[k]) m[k] = $3 } END { for (k in m) { split(k, a, " "); printf "  %-22s %-18s %4d MiB\n", a[1], a[2], m[k] / 1024 } }' "$D/rss.txt" | sort
