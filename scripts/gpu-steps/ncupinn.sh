#!/usr/bin/env bash
# Nsight Compute profiles of mlp_jet_backward (one training step) on the PINN target nets:
# the kernels named in KILN_NCU_PINN (entry names, default: the fastest tf32x3 configs of
# d = 20 and d = 1 measured on 2026-11-29), each the 4th launch of its name while
# `kiln bench --family mlp_jet_backward --candidates` times every config (clocks left
# alone). Text reports, and with KILN_NCU_SASS=1 the per-instruction stall samples (source
# page as CSV, SASS only), land in $OUT/ncu_pinn_*.
set -uo pipefail
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
[ -n "$NCU" ] || { echo "ncu not found"; exit 1; }
base=/tmp/ncu-pinn
rm -rf "$base" && mkdir -p "$base"
for entry in ${KILN_NCU_PINN:-kiln_mlp_jet_backward_res_d20_w128_l4_p1_r4_t2_tf32x3 kiln_mlp_jet_backward_res_d1_w64_l4_p1_r4_t32_tf32x3}; do
  "$NCU" --clock-control none --set full --import-source no -k "regex:^${entry}\$" --launch-skip 3 --launch-count 1 \
    -o "$base/$entry" ./kiln bench --family mlp_jet_backward --candidates --reps 3 >"$OUT/ncu_pinn_${entry}_run.txt" 2>&1
  echo "ncu $entry: exit $?"
  "$NCU" -i "$base/$entry.ncu-rep" >"$OUT/ncu_pinn_$entry.txt" 2>&1
  if [ "${KILN_NCU_SASS:-0}" = 1 ]; then
    "$NCU" -i "$base/$entry.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu_pinn_${entry}_sass.csv" 2>&1
    echo "sass page $entry: exit $? ($(wc -l <"$OUT/ncu_pinn_${entry}_sass.csv") lines)"
  fi
  grep -E "Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Registers Per|Issue Slots Busy|No Eligible|Stall|Shared Memory" "$OUT/ncu_pinn_$entry.txt" | head -24
done
exit 0
