#!/usr/bin/env bash
# Benchmark (not a test): `layerfs image pull` against the two-step `skopeo copy docker://... oci:DIR`
# + `umoci raw unpack` (or, without umoci, skopeo + `tar -x` of each layer), from a local
# docker-registry holding a ~500 MB (uncompressed), 5-layer image. Prints the times and the ratio.
# Page cache is not dropped (shared machine): the registry's blobs are warm for every contender.
#   usage: scripts/bench-pull.sh [MB_PER_LAYER (default 100)] [RUNS (default 1)]
# Needs: docker-registry, skopeo, umoci (optional), a built tree (npm run build). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-100}
RUNS=${2:-1}
LAYERS=5
CLI="node $PWD/dist/src/cli/main.js"
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/layerfs-bench-pull.XXXXXX")
regpid=""
cleanup() {
  [ -n "$regpid" ] && kill "$regpid" 2>/dev/null && wait "$regpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
/usr/bin/docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

echo "== building a $LAYERS-layer image, ~$MB MB per layer (half random, half text; gzip -1) in an OCI layout"
node --input-type=module - "$work/oci" "$MB" "$LAYERS" <<'EOF'
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
const [dir, mbStr, layersStr] = process.argv.slice(2);
const mb = Number(mbStr), layers = Number(layersStr);
const sha = (b) => 'sha256:' + createHash('sha256').update(b).digest('hex');
mkdirSync(path.join(dir, 'blobs/sha256'), { recursive: true });
const put = (b) => { writeFileSync(path.join(dir, 'blobs/sha256', sha(b).slice(7)), b); return sha(b); };
const diffIds = [], descs = [];
for (let l = 0; l < layers; l++) {
  const src = path.join(dir, `src${l}`);
  mkdirSync(path.join(src, `layer${l}/big`), { recursive: true });
  mkdirSync(path.join(src, `layer${l}/small`), { recursive: true });
  for (let i = 0; i < mb / 2; i++) writeFileSync(path.join(src, `layer${l}/big/r${i}`), randomBytes(1 << 20));
  for (let i = 0; i < mb / 2; i++) writeFileSync(path.join(src, `layer${l}/big/t${i}`), randomBytes(3 << 18).toString('base64'));
  for (let i = 0; i < 2000; i++) writeFileSync(path.join(src, `layer${l}/small/s${i}`), `small file ${l}/${i}\n`.repeat(1 + (i % 50)));
  const tar = execFileSync('tar', ['-C', src, '--sort=name', '--owner=0', '--group=0', '-cf', '-', '.'], { maxBuffer: 2 ** 31 });
  diffIds.push(sha(tar));
  const gz = execFileSync('gzip', ['-1', '-c'], { input: tar, maxBuffer: 2 ** 31 });
  descs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: put(gz), size: gz.length });
  rmSync(src, { recursive: true });
}
const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } }));
const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
  config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: put(config), size: config.length }, layers: descs }));
const md = put(manifest);
writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: md, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }));
console.log(`layers (gzip): ${descs.map((d) => (d.size / 1e6).toFixed(0) + ' MB').join(', ')}`);
EOF
skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:v1" "docker://127.0.0.1:$port/bench/big:v1"
rm -rf "$work/oci"
ref="127.0.0.1:$port/bench/big:v1"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

best_layerfs=""; best_two=""
for run in $(seq "$RUNS"); do
  for mode in parallel ordered; do
    rm -rf "$work/lf"; sync
    t0=$(now)
    $CLI --root "$work/lf/root" --shared "$work/lf/nfs" --role writer image pull --insecure -q --mode "$mode" "$ref" >/dev/null
    t1=$(now)
    t=$(secs "$t0" "$t1")
    echo "run $run: layerfs image pull --mode $mode: ${t}s"
    if [ "$mode" = parallel ] && { [ -z "$best_layerfs" ] || lt "$t" "$best_layerfs"; }; then best_layerfs=$t; fi
  done

  rm -rf "$work/two"; mkdir -p "$work/two"; sync
  t0=$(now)
  skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/two/oci:v1"
  t1=$(now)
  if command -v umoci >/dev/null; then
    how="umoci raw unpack"
    umoci raw unpack --image "$work/two/oci:v1" "$work/two/rootfs" 2>/dev/null
  else
    how="tar -x of each layer (umoci not installed)"
    mkdir -p "$work/two/rootfs"
    node -e 'const m=JSON.parse(require("fs").readFileSync(process.argv[1]+"/index.json")).manifests[0].digest.slice(7);for(const l of JSON.parse(require("fs").readFileSync(process.argv[1]+"/blobs/sha256/"+m)).layers)console.log(l.digest.slice(7))' "$work/two/oci" |
      while read -r d; do tar -xzf "$work/two/oci/blobs/sha256/$d" -C "$work/two/rootfs"; done
  fi
  t2=$(now)
  t=$(secs "$t0" "$t2")
  echo "run $run: skopeo copy $(secs "$t0" "$t1")s + $how $(secs "$t1" "$t2")s = ${t}s"
  if [ -z "$best_two" ] || lt "$t" "$best_two"; then best_two=$t; fi
done
echo "== best of $RUNS: layerfs pull ${best_layerfs}s, skopeo + unpack ${best_two}s, ratio (two-step / layerfs) $(awk -v a="$best_two" -v b="$best_layerfs" 'BEGIN { printf "%.2f", a / b }')x"
