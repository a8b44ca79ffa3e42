#!/usr/bin/env bash
# Shared by the tune steps (tune.sh, tunefp8.sh, tunemfa.sh), not a step of its own:
#   _tune_preset.sh DIR FAMILY REPORT WALL [kiln tune arguments...]
# tunes from scratch into DIR, writes the tune report to $KILN_GPU_REPORT/REPORT.json and the
# wall time and exit code to $KILN_GPU_REPORT/WALL.json, and copies the artifact back as
# $OUT/FAMILY.json.
set -uo pipefail
dir="$1" family="$2" report="$3" wall="$4"
shift 4
rm -rf "$dir" && mkdir -p "$dir"
start=$(date +%s.%N)
./kiln tune "$@" --tuned-dir "$dir" --json "$KILN_GPU_REPORT/$report.json"
rc=$?
end=$(date +%s.%N)
python3 -c "import json; json.dump({'wall_s': $end - $start, 'exit': $rc}, open('$KILN_GPU_REPORT/$wall.json','w'))"
cp "$dir"/*/"$family.json" "$OUT/$family.json" 2>/dev/null
exit $rc
