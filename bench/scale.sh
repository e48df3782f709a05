#!/usr/bin/env bash
# `make bench`, part 4: a large cluster from one node set (SCALE_NODES, default 1000) against 5
# nodes of the same set, side by side in one run, on the bench image (bench/make-image.sh,
# SCALE_SIZE_GB, default 1). Prints and writes to its section of bench/RESULTS.md:
#  - `build --all --chunked` (shared-chunk release, xz -6): time per further node, i.e. (wall
#    time of the N-node run - its first node) / (N - 1), target <= 0.2 s; release size per further
#    node, (size of the N-node release - one node's .img.xz) / (N - 1), target <= 2 MiB; peak RSS
#    of the N-node run / the 5-node run, target <= 1.2;
#  - per-node `build --all --compress` of the 5 nodes (xz -6, and zstd -3 for reference): each
#    further node's time / the first node's, target <= 0.05.
# Each run starts with an empty output directory and chunk cache. SCALE_BASE=IMG uses an existing
# image instead of making one. Not a test: numbers only.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_GB=${SCALE_SIZE_GB:-1}
NODES=${SCALE_NODES:-1000}
FEW=5

work=$(mktemp -d "${TMPDIR:-/tmp}/scale.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -n "${SCALE_BASE:-}" ]; then
  base=$SCALE_BASE
else
  bench/make-image.sh "$SIZE_GB" "$work/bench.img"
  base="$work/bench.img"
fi
base_mb=$(($(stat -c %s "$base") >> 20))

# One node set of `count` workers, as a large cluster would declare it.
profile() {
  local count=$1 width=${#NODES}
  cat > "$work/set$count.toml" <<EOF
[cluster]
name = "bench"
base = "$base"
overlays_dir = "$PWD/overlays"

[defaults]
domain = "cluster.lan"
gateway = "10.1.0.1"
ssh_keys = ["$PWD/profiles/keys/demo.pub"]
target = "ssd"
kubernetes = true
overlays = ["k8s-prep"]

[[node_sets]]
names = "w{$(printf "%0${width}d" 1)..$(printf "%0${width}d" "$count")}"
address = "10.1.0.11/16"
EOF
  echo "$work/set$count.toml"
}

# run LABEL PROFILE ARGS...: build --all into $work/LABEL; sets wall, rss_mb, first, size.
run() {
  local label=$1 prof=$2
  shift 2
  echo "bench: $label"
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$work/$label.time" "$bin" --profile "$prof" build --all --out "$work/$label" \
    --cache-dir "$work/$label.cache" "$@" > "$work/$label.out"
  t1=$(date +%s.%N)
  wall=$(echo "$t1 - $t0" | bc)
  rss_mb=$(($(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/$label.time") / 1024))
  # Each summary line ends in "<seconds> s".
  awk '/ s$/{print $(NF-1)}' "$work/$label.out" > "$work/$label.secs"
  first=$(head -1 "$work/$label.secs")
  # The release as published: without the build record (.pi-image/, hidden, not uploaded).
  size=$(du -sb --exclude=.pi-image "$work/$label" | cut -f1)
  head -3 "$work/$label.out"
}
mean_rest() { tail -n +2 "$1" | awk '{s+=$1} END {printf "%.3f", s/NR}'; }
max_rest() { tail -n +2 "$1" | sort -g | tail -1; }
mib() { printf '%.1f' "$(echo "$1 / 1048576" | bc -l)"; }

few=$(profile "$FEW")
many=$(profile "$NODES")

run chunked-few "$few" --chunked
few_wall=$wall few_rss=$rss_mb few_size=$size
run chunked-many "$many" --chunked
many_wall=$wall many_rss=$rss_mb many_first=$first many_size=$size
many_mean=$(mean_rest "$work/chunked-many.secs")
(cd "$work/chunked-many" && sha256sum -c --quiet SHA256SUMS)
# The last node read back and compared with a plain build of it.
last=$(awk '/\.chunks\.json /{n=$1} END {print n}' "$work/chunked-many.out")
"$bin" extract --release "$work/chunked-many" --node "$last" -o "$work/last.img" > /dev/null
"$bin" --profile "$many" build --node "$last" --out "$work/plain" > /dev/null
cmp "$work/last.img" "$work/plain/$last.img"
rm -rf "$work/last.img" "$work/plain"

run xz-few "$few" --compress xz
xz_first=$first xz_mean=$(mean_rest "$work/xz-few.secs") xz_max=$(max_rest "$work/xz-few.secs")
one_image=$(stat -c %s "$work/xz-few/$(head -1 "$work/xz-few.out" | awk '{print $1}').img.xz")
rm -rf "$work/xz-few"
run zstd3-few "$few" --compress zstd --level 3
zs_first=$first zs_mean=$(mean_rest "$work/zstd3-few.secs") zs_max=$(max_rest "$work/zstd3-few.secs")
rm -rf "$work/zstd3-few"
# Every node's artifact needs its raw image's sha256 (os_list.json's extract_sha256): one sha256
# of the raw image is about the least a further node can cost.
raw_hash=$(secs openssl dgst -sha256 "$base")

per_node=$(echo "($many_wall - $many_first) / ($NODES - 1)" | bc -l)
size_per_node=$(echo "($many_size - $one_image) / ($NODES - 1)" | bc -l)
size_per_node_few=$(echo "($many_size - $few_size) / ($NODES - $FEW)" | bc -l)
table=$(cat <<EOF
| measure | value | target |
|---|---|---|
| image | ${base_mb} MiB raw | |
| \`build --all --chunked\`, $FEW nodes: wall time, release size, peak RSS | $(printf '%.1f' "$few_wall") s, $(mib "$few_size") MiB, $few_rss MiB | |
| \`build --all --chunked\`, $NODES nodes: wall time, release size, peak RSS | $(printf '%.1f' "$many_wall") s, $(mib "$many_size") MiB, $many_rss MiB | |
| $NODES nodes: first node | $many_first s | |
| $NODES nodes: per further node, (wall - first) / $((NODES - 1)) | $(printf '%.3f' "$per_node") s | ≤ 0.2 s |
| $NODES nodes: per further node, mean of the summary lines | $many_mean s | |
| one node's \`.img.xz\` (xz -6) | $(mib "$one_image") MiB | |
| release size per further node, ($NODES-node release - one .img.xz) / $((NODES - 1)) | $(printf '%.1f' "$(echo "$size_per_node / 1024" | bc -l)") KiB | ≤ 2048 KiB |
| release size per further node, ($NODES-node - $FEW-node release) / $((NODES - FEW)) | $(printf '%.1f' "$(echo "$size_per_node_few / 1024" | bc -l)") KiB | |
| peak RSS, $NODES nodes / $FEW nodes | $(ratio "$many_rss" "$few_rss") | ≤ 1.2 |
| per-node \`--compress xz\`, $FEW nodes: first, further (mean, max) | $xz_first s, $xz_mean s, $xz_max s | |
| per-node \`--compress xz\`: further node / first (mean, max) | $(ratio "$xz_mean" "$xz_first"), $(ratio "$xz_max" "$xz_first") | ≤ 0.05 |
| per-node \`--compress zstd --level 3\`, $FEW nodes: first, further (mean, max) | $zs_first s, $zs_mean s, $zs_max s | |
| per-node \`--compress zstd --level 3\`: further node / first (mean, max) | $(ratio "$zs_mean" "$zs_first"), $(ratio "$zs_max" "$zs_first") | ≤ 0.05 |
| one sha256 of the raw image (\`openssl dgst -sha256\`), about the least a further node costs | $(printf '%.3f' "$raw_hash") s: $(ratio "$raw_hash" "$zs_first") of the first zstd node, $(ratio "$raw_hash" "$xz_first") of the first xz node | |
EOF
)
echo
echo "$table"
record bench/scale.sh "SCALE_SIZE_GB=$SIZE_GB SCALE_NODES=$NODES (\`SCALE_SIZE_GB=$SIZE_GB SCALE_NODES=$NODES bench/scale.sh\`).

$table"
