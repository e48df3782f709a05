#!/usr/bin/env bash
# The image the release benches (release.sh, scale.sh) work on: the fixture's layout with a large
# root filesystem, two thirds of SIZE_GB data (files from /usr, like binaries and text, plus a
# quarter random bytes, like already-compressed files).
#
#   bench/make-image.sh SIZE_GB OUT.img
set -euo pipefail
size_gb=${1:?usage: make-image.sh SIZE_GB OUT.img}
out=${2:?usage: make-image.sh SIZE_GB OUT.img}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "$(dirname "$out")/make-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

size_mb=$(echo "$size_gb * 1024 / 1" | bc)
root_mb=$((size_mb - 257))
data_mb=$((size_mb * 2 / 3))
echo "bench: making a ${size_mb} MiB image with ${data_mb} MiB of data in its root filesystem"
mkdir -p "$work/extra/opt/bench/usr" "$work/extra/opt/bench/random"
find /usr -xdev -type f -size +16k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null \
  | head -c "$((data_mb * 3 / 4 << 20))" | (cd "$work/extra/opt/bench/usr" && split -b 4M - f) || true
head -c "$((data_mb / 4 << 20))" /dev/urandom | (cd "$work/extra/opt/bench/random" && split -b 4M - f)
ROOT_MB=$root_mb EXTRA_TREE="$work/extra" TMPDIR="$work" "$repo/tests/fixtures/make-base.sh" "$out"
ls -ls "$out"
