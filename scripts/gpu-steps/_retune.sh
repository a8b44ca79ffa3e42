#!/usr/bin/env bash
# Shared by the re-tune steps (retunefp8big.sh, retunefp8all.sh, retunemfafp8.sh), not a step
# of its own:
#   _retune.sh DIR FROM FAMILY REPORT [kiln tune arguments...] < problems.json
# seeds DIR with the tuned folder FROM (its other entries are kept), re-tunes the problems on
# stdin over every legal config (--force --shortlist 1000, past the size of any space), writes
# the tune report to $KILN_GPU_REPORT/REPORT.json and the wall time and exit code to
# $KILN_GPU_REPORT/REPORT_wall.json, and copies the artifact back as $OUT/FAMILY.json.
set -uo pipefail
dir="$1" from="$2" family="$3" report="$4"
shift 4
rm -rf "$dir" && mkdir -p "$dir" && cp -r "$from/." "$dir/"
cat >"$dir/problems.json"
start=$(date +%s.%N)
./kiln tune --family "$family" --problems "$dir/problems.json" --force --shortlist 1000 "$@" \
  --tuned-dir "$dir" --json "$KILN_GPU_REPORT/$report.json"
rc=$?
end=$(date +%s.%N)
python3 -c "import json; json.dump({'wall_s': $end - $start, 'exit': $rc}, open('$KILN_GPU_REPORT/${report}_wall.json','w'))"
cp "$dir"/*/"$family.json" "$OUT/$family.json" 2>/dev/null
exit $rc
