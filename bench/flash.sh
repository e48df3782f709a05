#!/usr/bin/env bash
# `make bench`: flash speed and memory, side by side in one run. Images: a ~3 GB image with
# ~2 GB used (tests/fixtures/make-base.sh with ROOT_MB/FILL_MB) and the small test image (the
# fixture's raw image, 353 MiB, a few MiB used).
#   To a loop device (if losetup works here): `dd bs=4M oflag=direct conv=fsync` (no verify),
#   `bmaptool copy` with and without its checksums (a bmap from `bmaptool create`),
#   `pi-image flash --no-verify` and `pi-image flash` (read back and compared); the large image
#   also to two loop devices at once (one reader for both: at the speed of one device, not two).
#   To a new file: `dd bs=4M conv=fsync` and `pi-image flash --to-file --no-verify`.
# Prints times, ratios and pi-image's peak RSS; records them in bench/RESULTS.md. Not a test:
# numbers only. ROOT_MB (default 2816) and FILL_MB (default 2048) size the large image. Each
# command runs ROUNDS times (default 3), interleaved, and its best time counts (worst RSS): the
# machine is shared and noisy.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ROOT_MB=${ROOT_MB:-2816}
FILL_MB=${FILL_MB:-2048}
ROUNDS=${ROUNDS:-3}

work=$(mktemp -d)
loops=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench: making a $((ROOT_MB + 257)) MiB image with ${FILL_MB} MiB of files"
ROOT_MB=$ROOT_MB FILL_MB=$FILL_MB tests/fixtures/make-base.sh "$work/large.img"
xz -dc tests/fixtures/ubuntu-20.04.5-replica.img.xz > "$work/small.img"
size=$(stat -c %s "$work/large.img")
bmaptool create -o "$work/large.img.tool-bmap" "$work/large.img" 2>/dev/null
# pi-image maps the image itself (timed, part of each flash); these maps are only for the counts.
for n in large small; do
  "$bin" bmap "$work/$n.img" -o "$work/$n.count.bmap" | sed 's/^/bench: /'
done
mapped() { python3 -c 'import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); print(int(r.find("MappedBlocksCount").text)*4096>>20)' "$1"; }
cat "$work/large.img" "$work/small.img" > /dev/null  # every run starts with the images in the page cache

# pi NAME ARGS...: pi-image ARGS, its peak RSS in $work/NAME.time; then `worst NAME` keeps the
# worst of the rounds in $rss_NAME (secs runs pi in a subshell).
pi() {
  local name=$1
  shift
  /usr/bin/time -v -o "$work/$name.time" "$bin" "$@"
}
worst() {
  local r
  r=$(rss_mib "$work/$1.time")
  eval "rss_$1=\$(max \"\${rss_$1:-}\" $r)"
}

table="| what | time | ratio (target) | peak RSS (target ≤ 64 MiB) |
|---|---|---|---|"
row() { table+="
| $1 | $(printf '%.2f' "$2") s | $3 | $4 |"; }

for f in a b; do truncate -s $((size + (64 << 20))) "$work/disk-$f"; done
if la=$(losetup -f --show "$work/disk-a" 2>/dev/null); then
  loops+=("$la")
  lb=$(losetup -f --show "$work/disk-b")
  loops+=("$lb")
  dd_s= bt_s= btn_s= nv_s= v_s= two_s= sdd_s= sv_s=
  for _ in $(seq "$ROUNDS"); do
    dd_s=$(min "$dd_s" "$(secs dd if="$work/large.img" of="$la" bs=4M oflag=direct conv=fsync)")
    bt_s=$(min "$bt_s" "$(secs bmaptool copy --bmap "$work/large.img.tool-bmap" "$work/large.img" "$la")")
    btn_s=$(min "$btn_s" "$(secs bmaptool copy --no-verify --bmap "$work/large.img.tool-bmap" "$work/large.img" "$la")")
    nv_s=$(min "$nv_s" "$(secs pi nv flash "$work/large.img" "$la" --yes --no-verify)")
    v_s=$(min "$v_s" "$(secs pi v flash "$work/large.img" "$la" --yes)")
    two_s=$(min "$two_s" "$(secs pi two flash "$work/large.img" "$la" "$lb" --yes)")
    sdd_s=$(min "$sdd_s" "$(secs dd if="$work/small.img" of="$la" bs=4M oflag=direct conv=fsync)")
    sv_s=$(min "$sv_s" "$(secs pi sv flash "$work/small.img" "$la" --yes)")
    for n in nv v two sv; do worst $n; done
  done
  printf 'large image, %s MiB, %s MiB mapped, to loop device %s:\n' "$((size >> 20))" "$(mapped "$work/large.count.bmap")" "$la"
  printf '  dd bs=4M oflag=direct conv=fsync:    %6.2f s\n' "$dd_s"
  printf '  bmaptool copy (checks its sha256s):  %6.2f s\n' "$bt_s"
  printf '  bmaptool copy --no-verify:           %6.2f s\n' "$btn_s"
  printf '  pi-image flash --no-verify:          %6.2f s  %sx dd (target <= 0.7), %sx bmaptool --no-verify (target <= 1.0), peak RSS %s MiB\n' \
    "$nv_s" "$(ratio "$nv_s" "$dd_s")" "$(ratio "$nv_s" "$btn_s")" "$rss_nv"
  printf '  pi-image flash (read back, compared): %6.2f s  %sx dd (target <= 1.3), %sx bmaptool, peak RSS %s MiB\n' \
    "$v_s" "$(ratio "$v_s" "$dd_s")" "$(ratio "$v_s" "$bt_s")" "$rss_v"
  printf '  pi-image flash to two loop devices:  %6.2f s  %sx one device, %sx dd to one, peak RSS %s MiB\n' \
    "$two_s" "$(ratio "$two_s" "$v_s")" "$(ratio "$two_s" "$dd_s")" "$rss_two"
  printf 'small image, %s MiB, %s MiB mapped, to loop device %s:\n' "$(( $(stat -c %s "$work/small.img") >> 20 ))" "$(mapped "$work/small.count.bmap")" "$la"
  printf '  dd bs=4M oflag=direct conv=fsync:    %6.2f s\n' "$sdd_s"
  printf '  pi-image flash (read back, compared): %6.2f s  %sx dd (target <= 1.3), peak RSS %s MiB\n' \
    "$sv_s" "$(ratio "$sv_s" "$sdd_s")" "$rss_sv"
  r=$(ratio "$v_s" "$dd_s")
  sr=$(ratio "$sv_s" "$sdd_s")
  row "large: \`dd bs=4M oflag=direct conv=fsync\` to a loop device" "$dd_s" "" ""
  row "large: \`bmaptool copy\` (checks its sha256s)" "$bt_s" "" ""
  row "large: \`bmaptool copy --no-verify\`" "$btn_s" "" ""
  row "large: \`pi-image flash --no-verify\`" "$nv_s" "$(ratio "$nv_s" "$dd_s") × dd (≤ 0.7, $(met "$(ratio "$nv_s" "$dd_s")" 0.7))" "$rss_nv MiB ($(met "$rss_nv" 64))"
  row "**large: \`pi-image flash\` (read back, compared)**" "$v_s" "**$r × dd (≤ 1.3, $(met "$r" 1.3))**" "$rss_v MiB ($(met "$rss_v" 64))"
  row "large: \`pi-image flash\` to two loop devices at once" "$two_s" "$(ratio "$two_s" "$v_s") × one device (1.0 = the slowest device's speed, 2.0 = the sum)" "$rss_two MiB ($(met "$rss_two" 64))"
  row "small: \`dd bs=4M oflag=direct conv=fsync\` to a loop device" "$sdd_s" "" ""
  row "**small: \`pi-image flash\` (read back, compared)**" "$sv_s" "**$sr × dd (≤ 1.3, $(met "$sr" 1.3))**" "$rss_sv MiB ($(met "$rss_sv" 64))"
else
  echo "loop device: skipped (losetup cannot attach one here)"
  table+="
| loop devices | skipped: losetup cannot attach one here | | |"
fi
for l in "${loops[@]}"; do losetup -d "$l"; done
loops=()
rm -f "$work/disk-a" "$work/disk-b"

fdd_s= fpi_s=
for _ in $(seq "$ROUNDS"); do
  fdd_s=$(min "$fdd_s" "$(secs dd if="$work/large.img" of="$work/dd.img" bs=4M conv=fsync)")
  rm -f "$work/dd.img"
  fpi_s=$(min "$fpi_s" "$(secs pi file flash "$work/large.img" "$work/pi.img" --to-file --no-verify)")
  worst file
  rm -f "$work/pi.img"
done
printf 'large image to a new file:\n'
printf '  dd bs=4M conv=fsync:                 %6.2f s\n' "$fdd_s"
printf '  pi-image flash --to-file --no-verify: %6.2f s  %sx dd, peak RSS %s MiB\n' \
  "$fpi_s" "$(ratio "$fpi_s" "$fdd_s")" "$rss_file"
row "large: \`dd bs=4M conv=fsync\` to a new file" "$fdd_s" "" ""
row "large: \`pi-image flash --to-file --no-verify\`" "$fpi_s" "$(ratio "$fpi_s" "$fdd_s") × dd" "$rss_file MiB ($(met "$rss_file" 64))"

record bench/flash.sh "Best of $ROUNDS rounds, interleaved; images in the page cache; loop devices backed by sparse files.

$table"
