#!/usr/bin/env bash
# `make bench`: time from URL to verified raw image in the cache, against the sequential baseline
# `curl -o f.xz URL && sha256sum f.xz && xz -dc f.xz > f.img`, on generated images served on
# loopback: a SIZE_MB image and the small test image (the fixture's raw image), both compressed
# the same way. Prints both times, their ratio and pi-image's peak RSS; records them in
# bench/RESULTS.md. Not a test: numbers only.
#
# SIZE_MB (default 1024) is the large raw image's size, DATA_MB (default 600) how much of it is
# non-zero (files from /usr, so it compresses like real binaries; the rest is zeros, like free
# space). XZ_LEVEL (default -0, what Ubuntu's raspi images use), XZ_THREADS (default 2) and
# XZ_BLOCK (default 12MiB: many independent blocks, the shape of the 537 MB .xz of 267 blocks in
# issue 15, which the multi-threaded decoder decodes in parallel and buffers whole) set `xz`.
# Each command runs ROUNDS times (default 2), interleaved; the best time counts.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB=${SIZE_MB:-1024}
DATA_MB=${DATA_MB:-600}
XZ_LEVEL=${XZ_LEVEL:--0}
XZ_THREADS=${XZ_THREADS:-2}
XZ_BLOCK=${XZ_BLOCK:-12MiB}
ROUNDS=${ROUNDS:-2}

work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/srv" "$work/profiles"

echo "bench: making a ${SIZE_MB} MiB image with ${DATA_MB} MiB of data"
find /usr -xdev -type f -size +16k -print0 2>/dev/null | xargs -0 cat 2>/dev/null \
  | head -c "$((DATA_MB << 20))" > "$work/large.raw" || true
truncate -s "${SIZE_MB}M" "$work/large.raw"
xz -dc tests/fixtures/ubuntu-20.04.5-replica.img.xz > "$work/small.raw"
echo "bench: xz $XZ_LEVEL -T$XZ_THREADS --block-size=$XZ_BLOCK"
for n in large small; do
  xz "$XZ_LEVEL" -T"$XZ_THREADS" --block-size="$XZ_BLOCK" -c "$work/$n.raw" > "$work/srv/$n.img.xz"
  sha256sum "$work/$n.raw" | cut -d' ' -f1 > "$work/$n.raw.sha256"
  rm "$work/$n.raw"
  xz -l "$work/srv/$n.img.xz" | tail -1 | sed 's/^/bench: /'
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/srv" "$port" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do curl -sfI "http://127.0.0.1:$port/small.img.xz" >/dev/null && break; sleep 0.1; done

baseline() { (cd "$work" && curl -s -o f.xz "$1" && sha256sum f.xz >/dev/null && xz -dc f.xz > f.img); }

rows=
for n in large small; do
  url="http://127.0.0.1:$port/$n.img.xz"
  sha=$(sha256sum "$work/srv/$n.img.xz" | cut -d' ' -f1)
  printf '[cluster]\nname = "bench"\nbase = "%s"\nbase_sha256 = "%s"\n[[nodes]]\nname = "n1"\n' \
    "$url" "$sha" > "$work/profiles/$n.toml"
  base_s= ours_s= rss=
  for _ in $(seq "$ROUNDS"); do
    base_s=$(min "$base_s" "$(secs baseline "$url")")
    rm -f "$work/f.xz" "$work/f.img"
    rm -rf "$work/cache"
    ours_s=$(min "$ours_s" "$(secs /usr/bin/time -v -o "$work/time.txt" "$bin" \
      --profile "$work/profiles/$n.toml" --cache-dir "$work/cache" fetch)")
    rss=$(max "$rss" "$(rss_mib "$work/time.txt")")
    got=$(sha256sum "$work/cache/$sha.img" | cut -d' ' -f1)
    [ "$got" = "$(cat "$work/$n.raw.sha256")" ] || { echo "bench: cached image has the wrong sha256" >&2; exit 1; }
  done
  cat "$work/last.err" | grep -v '^fetching\|received' | sed 's/^/bench: pi-image says: /' || true
  blocks=$(xz -l "$work/srv/$n.img.xz" | awk 'NR==2{print $2}')
  xz_mib=$(( $(stat -c %s "$work/srv/$n.img.xz") >> 20 ))
  printf '%s image (%s MiB .xz, %s blocks):\n' "$n" "$xz_mib" "$blocks"
  printf '  baseline (curl; sha256sum; xz -dc): %6.2f s\n' "$base_s"
  printf '  pi-image fetch:                     %6.2f s  %sx the baseline (target <= 0.7), peak RSS %s MiB (target <= 64)\n' \
    "$ours_s" "$(ratio "$ours_s" "$base_s")" "$rss"
  rows+="| $n: $xz_mib MiB \`.xz\`, $blocks blocks | $(printf '%.2f' "$base_s") s | $(printf '%.2f' "$ours_s") s | $(ratio "$ours_s" "$base_s") (≤ 0.7, $(met "$(ratio "$ours_s" "$base_s")" 0.7)) | $rss MiB (≤ 64, $(met "$rss" 64)) |
"
done

record bench/fetch.sh "Best of $ROUNDS rounds; images compressed with \`xz $XZ_LEVEL -T$XZ_THREADS --block-size=$XZ_BLOCK\`, served on loopback.

| image | baseline \`curl; sha256sum; xz -dc\` | \`pi-image fetch\` | fetch / baseline | peak RSS (worst round) |
|---|---|---|---|---|
${rows%$'\n'}"
