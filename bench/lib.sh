# Shared by the bench scripts (sourced, not run). Not a test: numbers only.
#
# PI_IMAGE=/path/to/pi-image benches another binary (e.g. one built from main, for before/after
# figures); by default the release build of this tree is built and used.

cd "$(dirname "$0")/.."
if [ -n "${PI_IMAGE:-}" ]; then
  bin=$PI_IMAGE
else
  cargo build --release --locked --quiet
  bin="$PWD/${CARGO_TARGET_DIR:-target}/release/pi-image"
fi

# secs CMD...: run CMD (stdout discarded, stderr kept in $work/last.err), print its wall time in
# seconds; exit with CMD's stderr if it fails. `sync` first, so earlier writes don't count.
secs() {
  local start
  sync
  start=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
  echo "$(date +%s.%N) - $start" | bc
}
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
max() { if [ -z "$1" ] || [ "$(echo "$2 > $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
# rss_mib FILE: the peak RSS in MiB from a `/usr/bin/time -v -o FILE` report.
rss_mib() { printf '%.1f' "$(echo "$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$1") / 1024" | bc -l)"; }
# met VALUE LIMIT: "met" or "NOT met" for VALUE <= LIMIT.
met() { if [ "$(echo "$1 <= $2" | bc)" = 1 ]; then echo met; else echo "NOT met"; fi; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# record NAME TABLE: put TABLE, with the date, the machine and the load averages before ($load0)
# and after the run, into bench/RESULTS.md as the section of script NAME (replacing the
# section an earlier run wrote; the other scripts' sections stay). Not with PI_IMAGE.
record() {
  local name=$1 table=$2 cpu
  if [ -n "${PI_IMAGE:-}" ]; then
    echo "bench: PI_IMAGE is set: not written to bench/RESULTS.md"
    return
  fi
  cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
  BODY="<!-- $name begin -->
## \`$name\`

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($cpu), $(free -g | awk '/^Mem:/{print $2}') GB RAM;
load average (1, 5, 15 min) ${load0:-?} before the run, $(load) after (the machine is shared).
Regenerate with \`$name\`.

$table
<!-- $name end -->" NAME=$name python3 - bench/RESULTS.md <<'PY'
import os, re, sys
path, name, body = sys.argv[1], os.environ["NAME"], os.environ["BODY"]
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# make bench results\n\nEach script of `make bench` replaces its own section.\n"
pat = re.compile(r"<!-- %s begin -->.*?<!-- %s end -->" % (re.escape(name), re.escape(name)), re.S)
if pat.search(text):
    text = pat.sub(lambda _: body, text)
else:
    text = text.rstrip("\n") + "\n\n" + body + "\n"
open(path, "w").write(text)
PY
  echo "bench: written to bench/RESULTS.md"
}
load0=$(load)
