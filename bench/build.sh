#!/usr/bin/env bash
# `make bench`: a raw `pi-image build --node pi1` (demo profile) from a raw base (its sha256,
# which the build record needs, computed while the image is synced), against `cp --sparse=always`
# of the base followed by `sync FILE` (durable, as the build is), side by side in one run, on the flash bench's ~3 GB image (~2 GB used, tests/fixtures/make-base.sh
# with ROOT_MB/FILL_MB) and on the small test image (the fixture's raw image, 353 MiB, mostly
# free space). Both read the base from the page cache. Prints times, ratios and pi-image's peak
# RSS; records them in bench/RESULTS.md. Not a test: numbers only.
# Each command runs ROUNDS times (default 3), interleaved; the best time counts.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ROOT_MB=${ROOT_MB:-2816}
FILL_MB=${FILL_MB:-2048}
ROUNDS=${ROUNDS:-3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "bench: making a $((ROOT_MB + 257)) MiB image with ${FILL_MB} MiB of files"
ROOT_MB=$ROOT_MB FILL_MB=$FILL_MB tests/fixtures/make-base.sh "$work/large.img"
xz -dc tests/fixtures/ubuntu-20.04.5-replica.img.xz > "$work/small.img"

cp_sync() { cp --sparse=always "$1" "$2" && sync "$2"; }
# build_sync BASE OUT [ARGS...]: build pi1 from BASE into OUT, then sync the image.
build_sync() {
  local base=$1 out=$2
  shift 2
  "$bin" build --node pi1 --base "$base" --out "$out" "$@" && sync "$out/pi1.img"
}

rows=
for n in large small; do
  base="$work/$n.img"
  cat "$base" >/dev/null # both read the base from the page cache
  cp_s= b_s= rss=
  for _ in $(seq "$ROUNDS"); do
    cp_s=$(min "$cp_s" "$(secs cp_sync "$base" "$work/cp.img")")
    rm -f "$work/cp.img"
    b_s=$(min "$b_s" "$(secs build_sync "$base" "$work/out")")
    rm -rf "$work/out"
  done
  # Peak RSS from one more (untimed) run: /usr/bin/time's own start would count otherwise.
  /usr/bin/time -v -o "$work/time.txt" "$bin" build --node pi1 --base "$base" --out "$work/out" >/dev/null
  rss=$(rss_mib "$work/time.txt")
  # What recording the image's sha256 costs at least: one sha256 of the image (openssl, with
  # the CPU's SHA extensions like pi-image's; it also reads the holes, which pi-image skips).
  h_s=$(secs openssl dgst -sha256 "$base")
  rm -rf "$work/out"
  size_mib=$(( $(stat -c %s "$base") >> 20 ))
  data_mib=$(( $(stat -c %b "$base") * 512 >> 20 ))
  r=$(ratio "$b_s" "$cp_s")
  printf '%s image (%s MiB, %s MiB allocated):\n' "$n" "$size_mib" "$data_mib"
  printf '  cp --sparse=always + sync FILE:    %6.3f s\n' "$cp_s"
  printf '  pi-image build --node pi1 + sync:  %6.3f s  %sx cp (target <= 1.2), peak RSS %s MiB (target <= 64)\n' \
    "$b_s" "$r" "$rss"
  printf '  openssl dgst -sha256 of the image:  %6.3f s  %sx cp\n' "$h_s" "$(ratio "$h_s" "$cp_s")"
  rows+="| $n: $size_mib MiB, $data_mib MiB allocated | $(printf '%.3f' "$cp_s") s | $(printf '%.3f' "$b_s") s: $r × cp (≤ 1.2, $(met "$r" 1.2)) | $(printf '%.3f' "$h_s") s: $(ratio "$h_s" "$cp_s") × cp | $rss MiB (≤ 64, $(met "$rss" 64)) |
"
done

record bench/build.sh "Best of $ROUNDS rounds, interleaved; the base is raw and in the page cache for both.

The sha256 column is one \`openssl dgst -sha256\` of the image (SHA extensions, like pi-image's; it
reads holes as zeros where pi-image skips reading them): about what any build that records the
image's sha256 (the build record needs it) must spend on top of the copy's work.

| base image | \`cp --sparse=always\` + \`sync FILE\` | \`pi-image build --node pi1\` + \`sync FILE\` | one sha256 of the image | peak RSS |
|---|---|---|---|---|
${rows%$'\n'}"
