#!/usr/bin/env bash
# Shared by the Nsight Compute steps (ncufp8.sh, ncupinn.sh, ncumfa.sh), not a step of its own:
#   _ncu_kernel.sh NCU REPORT PREFIX REGEX command...
# runs the command with Nsight Compute profiling the 4th launch of the kernels REGEX matches
# (full set, clocks left alone) into REPORT.ncu-rep, and writes $OUT/PREFIX_run.txt (the
# command's output), $OUT/PREFIX.txt (the text report) and, with KILN_NCU_SASS=1,
# $OUT/PREFIX_sass.csv (the source page: per-instruction counters and warp-stall samples, SASS
# only); then prints the report's headline lines.
set -uo pipefail
ncu="$1" report="$2" prefix="$3" regex="$4"
shift 4
"$ncu" --clock-control none --set full --import-source no -k "regex:$regex" --launch-skip 3 --launch-count 1 \
  -o "$report" "$@" >"$OUT/${prefix}_run.txt" 2>&1
echo "ncu $prefix: exit $?"
"$ncu" -i "$report.ncu-rep" >"$OUT/$prefix.txt" 2>&1
if [ "${KILN_NCU_SASS:-0}" = 1 ]; then
  "$ncu" -i "$report.ncu-rep" --page source --csv --print-source sass >"$OUT/${prefix}_sass.csv" 2>&1
  echo "sass page $prefix: exit $? ($(wc -l <"$OUT/${prefix}_sass.csv") lines)"
fi
grep -E "Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Memory Throughput|Compute \(SM\) Throughput|Registers Per|Issue Slots Busy|No Eligible|Stall|Shared Memory" "$OUT/$prefix.txt" | head -24
