#!/usr/bin/env bash
# `make bench`: time from URL to verified raw image in the cache, against the sequential baseline
# `curl -o f.xz URL && sha256sum f.xz && xz -dc f.xz > f.img`, on a generated image served on
# loopback. Prints both times, their ratio and pi-image's peak RSS. Not a test: numbers only.
#
# SIZE_MB (default 1024) is the raw image size, DATA_MB (default 600) how much of it is non-zero
# (files from /usr, so it compresses like real binaries; the rest is zeros, like free space).
# XZ_LEVEL (default -0, what Ubuntu's raspi images use) and XZ_THREADS (default 2) set `xz`.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
DATA_MB=${DATA_MB:-600}
XZ_LEVEL=${XZ_LEVEL:--0}
XZ_THREADS=${XZ_THREADS:-2}

cargo build --release --locked --quiet
bin="${CARGO_TARGET_DIR:-target}/release/pi-image"

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
  | head -c "$((DATA_MB << 20))" > "$work/data" || true
truncate -s "${SIZE_MB}M" "$work/data"
echo "bench: xz $XZ_LEVEL -T$XZ_THREADS"
xz "$XZ_LEVEL" -T"$XZ_THREADS" -c "$work/data" > "$work/srv/bench.img.xz"
sha=$(sha256sum "$work/srv/bench.img.xz" | cut -d' ' -f1)
raw_sha=$(sha256sum "$work/data" | cut -d' ' -f1)
rm "$work/data"
ls -l "$work/srv/bench.img.xz"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/srv" "$port" >/dev/null 2>&1 &
server=$!
url="http://127.0.0.1:$port/bench.img.xz"
for _ in $(seq 50); do curl -sfI "$url" >/dev/null && break; sleep 0.1; done

printf '[cluster]\nname = "bench"\nbase = "%s"\nbase_sha256 = "%s"\n[[nodes]]\nname = "n1"\n' \
  "$url" "$sha" > "$work/profiles/p.toml"

sync
start=$(date +%s.%N)
( cd "$work" && curl -s -o f.xz "$url" && sha256sum f.xz >/dev/null && xz -dc f.xz > f.img )
base_s=$(echo "$(date +%s.%N) - $start" | bc)
rm -f "$work/f.xz" "$work/f.img"

sync
start=$(date +%s.%N)
/usr/bin/time -v -o "$work/time.txt" "$bin" --profile "$work/profiles/p.toml" \
  --cache-dir "$work/cache" fetch >/dev/null 2>"$work/fetch.err"
ours_s=$(echo "$(date +%s.%N) - $start" | bc)
got=$(sha256sum "$work/cache/$sha.img" | cut -d' ' -f1)
[ "$got" = "$raw_sha" ] || { echo "bench: cached image has the wrong sha256" >&2; exit 1; }
rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")

printf 'baseline (curl; sha256sum; xz -dc): %6.2f s\n' "$base_s"
printf 'pi-image fetch:                      %6.2f s  (%.2fx the baseline, target <= 0.7x)\n' \
  "$ours_s" "$(echo "$ours_s / $base_s" | bc -l)"
printf 'pi-image peak RSS:                   %6.1f MiB (target <= 64 MiB)\n' "$(echo "$rss_kb / 1024" | bc -l)"
printf 'throughput (compressed):             %6.1f MiB/s\n' \
  "$(echo "$(stat -c %s "$work/srv/bench.img.xz") / 1048576 / $ours_s" | bc -l)"
