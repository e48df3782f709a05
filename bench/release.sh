#!/usr/bin/env bash
# `make bench`, part 2: release artifacts for the five demo nodes on a large image, against the
# naive pipeline a user would script (per node: copy the base and patch it, i.e. our raw
# `pi-image build --node`, then `xz -T2 -6`), side by side in one run. Prints both times, their
# ratio, the cost of each node after the first, the size against one single-stream `xz -6` of
# the same image and pi-image's peak RSS; records the table in bench/RESULTS.md (the raw build
# against `cp --sparse=always` is bench/build.sh's). Not a test: numbers only.
#
# BENCH_SIZE_GB (default 3) is the image size (bench/make-image.sh); two thirds of it is data in
# the ext4 root, the rest boot partition and free space. The full size takes long on two cores
# (the naive pipeline compresses the whole image five times).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_GB=${BENCH_SIZE_GB:-3}
THREADS=${XZ_THREADS:-2}

nodes=(pi1 pi2 pi3 pi4 pi5)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# --- the bench image: the fixture's layout with a large root filesystem full of data ----------
size_mb=$(echo "$SIZE_GB * 1024 / 1" | bc)
data_mb=$((size_mb * 2 / 3))
bench/make-image.sh "$SIZE_GB" "$work/bench.img"
base="$work/bench.img"

# --- one raw node, for the size comparison ---------------------------------------------------
"$bin" build --node pi1 --base "$base" --out "$work/rawbuild" >/dev/null

# --- single-stream xz -6 of one node, for the size comparison --------------------------------
echo "bench: xz -6 -T1 of pi1 (single stream, for the size ratio)"
single_bytes=$(xz -6 -T1 -c "$work/rawbuild/pi1.img" | wc -c)
rm -rf "$work/rawbuild"

# --- naive: per node, raw build (copy + patch) then xz -T2 -6 ---------------------------------
echo "bench: naive pipeline"
sync
t=$(now)
for n in "${nodes[@]}"; do
  "$bin" build --node "$n" --base "$base" --out "$work/naive" >/dev/null
  xz -T"$THREADS" -6 "$work/naive/$n.img"
done
sync
naive_s=$(since "$t")
naive_bytes=$(stat -c %s "$work/naive/pi1.img.xz")
rm -rf "$work/naive"

# --- pi-image build --all --compress xz, empty chunk cache -----------------------------------
echo "bench: pi-image build --all --compress xz"
sync
t=$(now)
/usr/bin/time -v -o "$work/time.txt" "$bin" build --all --compress xz --base "$base" \
  --out "$work/dist" --cache-dir "$work/cache" > "$work/ours.txt"
sync
ours_s=$(since "$t")
cat "$work/ours.txt"
rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
ours_bytes=$(stat -c %s "$work/dist/pi1.img.xz")
# Each summary line ends in "<seconds> s".
node_s=($(awk '/ chunks /{print $(NF-1)}' "$work/ours.txt"))
first_s=${node_s[0]}
extra_s=$(printf '%s\n' "${node_s[@]:1}" | awk '{s+=$1} END {printf "%.2f", s/NR}')
(cd "$work/dist" && sha256sum -c --quiet SHA256SUMS)

ratio() { printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }
secs() { printf '%.1f' "$1"; }
table=$(cat <<EOF
| measure | value | target |
|---|---|---|
| image | ${size_mb} MiB raw, ${data_mb} MiB data | |
| naive total (5 × raw build + \`xz -T$THREADS -6\`) | $(secs "$naive_s") s | |
| pi-image \`build --all --compress xz\` total | $(secs "$ours_s") s | |
| total, pi-image / naive | $(ratio "$ours_s" "$naive_s") | ≤ 0.33 |
| first node | ${first_s} s | |
| each further node (mean) | $(secs "$extra_s") s | |
| further node / first node | $(ratio "$extra_s" "$first_s") | ≤ 0.10 |
| pi-image peak RSS | $((rss_kb / 1024)) MiB | ≤ 256 MiB |
| pi1.img.xz size: pi-image (32 MiB chunks) | ${ours_bytes} B | |
| pi1.img.xz size: single-stream \`xz -6 -T1\` | ${single_bytes} B | |
| size, pi-image / single stream | $(ratio "$ours_bytes" "$single_bytes") | < 1.02 |
| size, naive \`xz -T$THREADS -6\` / single stream | $(ratio "$naive_bytes" "$single_bytes") | |
EOF
)
echo
echo "$table"
record bench/release.sh "BENCH_SIZE_GB=$SIZE_GB.

$table"
