#!/usr/bin/env bash
# `make bench`: flash speed and memory. Makes a ~3 GB image with ~2 GB used
# (tests/fixtures/make-base.sh with ROOT_MB/FILL_MB), then writes it side by side in one run:
#   to a loop device (if losetup works here): `dd bs=4M oflag=direct conv=fsync`, `bmaptool copy`
#   (with a bmap from `bmaptool create`), `pi-image flash --no-verify` and `pi-image flash`;
#   to a new file: `dd bs=4M conv=fsync` and `pi-image flash --to-file`.
# Prints times, ratios and pi-image's peak RSS. Not a test: numbers only.
# ROOT_MB (default 2816) and FILL_MB (default 2048) size the image. Each command runs ROUNDS
# times (default 2), interleaved, and its best time counts: the machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_MB=${ROOT_MB:-2816}
FILL_MB=${FILL_MB:-2048}
ROUNDS=${ROUNDS:-2}

cargo build --release --locked --quiet
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/pi-image"

work=$(mktemp -d)
loopdev=
cleanup() {
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench: making a $((ROOT_MB + 257)) MiB image with ${FILL_MB} MiB of files"
ROOT_MB=$ROOT_MB FILL_MB=$FILL_MB tests/fixtures/make-base.sh "$work/big.img"
size=$(stat -c %s "$work/big.img")
bmaptool create -o "$work/big.img.tool-bmap" "$work/big.img" 2>/dev/null
# pi-image maps the image itself (timed, part of each flash); this copy is only for the count.
"$bin" bmap "$work/big.img" -o "$work/count.bmap" | sed 's/^/bench: /'
mapped=$(python3 -c 'import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); print(int(r.find("MappedBlocksCount").text)*4096>>20)' "$work/count.bmap")
echo "bench: image $((size >> 20)) MiB, $mapped MiB mapped"
cat "$work/big.img" > /dev/null  # every run starts with the image in the page cache

# secs CMD...: run CMD, print its wall time in seconds.
secs() {
  local start
  sync
  start=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
  echo "$(date +%s.%N) - $start" | bc
}
ratio() { echo "$1 / $2" | bc -l; }
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
rss_mib() { echo "$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$1") / 1024" | bc -l; }

truncate -s $((size + (64 << 20))) "$work/disk"
if loopdev=$(losetup -f --show "$work/disk" 2>/dev/null); then
  dd_s= bt_s= btn_s= nv_s= v_s=
  for _ in $(seq "$ROUNDS"); do
    dd_s=$(min "$dd_s" "$(secs dd if="$work/big.img" of="$loopdev" bs=4M oflag=direct conv=fsync)")
    bt_s=$(min "$bt_s" "$(secs bmaptool copy --bmap "$work/big.img.tool-bmap" "$work/big.img" "$loopdev")")
    btn_s=$(min "$btn_s" "$(secs bmaptool copy --no-verify --bmap "$work/big.img.tool-bmap" "$work/big.img" "$loopdev")")
    nv_s=$(min "$nv_s" "$(secs /usr/bin/time -v -o "$work/nv.time" "$bin" flash "$work/big.img" "$loopdev" --yes --no-verify)")
    v_s=$(min "$v_s" "$(secs /usr/bin/time -v -o "$work/v.time" "$bin" flash "$work/big.img" "$loopdev" --yes)")
  done
  printf 'loop device %s:\n' "$loopdev"
  printf '  dd bs=4M oflag=direct conv=fsync:  %6.2f s\n' "$dd_s"
  printf '  bmaptool copy (checks its sha256s): %6.2f s\n' "$bt_s"
  printf '  bmaptool copy --no-verify:         %6.2f s\n' "$btn_s"
  printf '  pi-image flash --no-verify:        %6.2f s  %.2fx dd (target <= 0.7), %.2fx bmaptool --no-verify (target <= 1.0), peak RSS %.1f MiB\n' \
    "$nv_s" "$(ratio "$nv_s" "$dd_s")" "$(ratio "$nv_s" "$btn_s")" "$(rss_mib "$work/nv.time")"
  printf '  pi-image flash (read back, sha256): %6.2f s  %.2fx dd (target <= 1.3), %.2fx bmaptool, peak RSS %.1f MiB\n' \
    "$v_s" "$(ratio "$v_s" "$dd_s")" "$(ratio "$v_s" "$bt_s")" "$(rss_mib "$work/v.time")"
  losetup -d "$loopdev"
  loopdev=
else
  echo "loop device: skipped (losetup cannot attach one here)"
fi
rm -f "$work/disk"

fdd_s= fpi_s=
for _ in $(seq "$ROUNDS"); do
  fdd_s=$(min "$fdd_s" "$(secs dd if="$work/big.img" of="$work/dd.img" bs=4M conv=fsync)")
  rm -f "$work/dd.img"
  fpi_s=$(min "$fpi_s" "$(secs /usr/bin/time -v -o "$work/f.time" "$bin" flash "$work/big.img" "$work/pi.img" --to-file --no-verify)")
  rm -f "$work/pi.img"
done
printf 'new file:\n'
printf '  dd bs=4M conv=fsync:               %6.2f s\n' "$fdd_s"
printf '  pi-image flash --to-file --no-verify: %6.2f s  %.2fx dd, peak RSS %.1f MiB\n' \
  "$fpi_s" "$(ratio "$fpi_s" "$fdd_s")" "$(rss_mib "$work/f.time")"
