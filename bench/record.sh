#!/usr/bin/env bash
# Put stdin into bench/RESULTS.md as the section NAME (between its begin/end markers), replacing
# that section if it is there and leaving the other benches' sections as they are.
#
#   ... | bench/record.sh NAME
set -euo pipefail
name=${1:?usage: record.sh NAME < text}
file="$(cd "$(dirname "$0")" && pwd)/RESULTS.md"
begin="<!-- begin $name -->"
end="<!-- end $name -->"
section=$(mktemp)
trap 'rm -f "$section" "$file.new"' EXIT
{ echo "$begin"; cat; echo "$end"; } > "$section"
touch "$file"
if grep -qF "$begin" "$file"; then
  awk -v b="$begin" -v e="$end" -v f="$section" '
    $0 == b { while ((getline l < f) > 0) print l; skip = 1; next }
    $0 == e { skip = 0; next }
    !skip' "$file" > "$file.new"
else
  { cat "$file"; [ -s "$file" ] && echo; cat "$section"; } > "$file.new"
fi
mv "$file.new" "$file"
