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
for entry in ${KILN_NCU_PINN:-kiln_mlp_jet_backward_res_d20_w128_l4_p1_r4_t3_tf32x3 kiln_mlp_jet_backward_res_d1_w64_l4_p1_r4_t64_tf32x3}; do
  "$(dirname "$0")/_ncu_kernel.sh" "$NCU" "$base/$entry" "ncu_pinn_$entry" "^${entry}\$" \
    ./kiln bench --family mlp_jet_backward --candidates --reps 3
done
exit 0
