#!/usr/bin/env bash
# Nsight Compute profiles of gemm_fp8 at the FFN shape M=4096 N=7168 K=18432: three wgmma TMA
# configs (128x256 in two n128 passes, the same in multicast clusters of two, 128x128), each
# from a one-entry artifact timed by `kiln bench` (the 4th kiln launch is profiled, counters
# read with the clocks left alone), and the launch statistics of every kernel of one bench run
# (cuBLASLt's tile, cluster and shared memory). Text reports land in $OUT/ncu_fp8_*.txt.
# KILN_NCU_FP8 picks configs by name (default the first three; "tuned" = the committed one).
set -uo pipefail
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
[ -n "$NCU" ] || { echo "ncu not found"; exit 1; }
base=/tmp/ncu-fp8
rm -rf "$base" && mkdir -p "$base"
# KILN_NCU_FP8_PROB="M N K": another shape; its committed config is then also profiled as "tuned".
python3 - "$base" ${KILN_NCU_FP8_PROB:-4096 7168 18432} <<'PY'
import json, os, sys
base = sys.argv[1]
art = json.load(open("tuned/nvidia-h200/gemm_fp8.json"))
prob = {"m": int(sys.argv[2]), "n": int(sys.argv[3]), "k": int(sys.argv[4])}
entry = next(e for e in art["entries"] if e["problem"] == prob)
common = dict(kernel="wgmma", bm=128, producer=True, split_k=1, tma=True, double_tmp=False)
configs = {
    "c1_n256_s3": dict(common, bn=256, wn=128, stages=3, cluster_m=1),
    "c2_n256_s4": dict(common, bn=256, wn=128, stages=4, cluster_m=2),
    "c1_n128_s4": dict(common, bn=128, wn=128, stages=4, cluster_m=1),
    "c2_n128_s6": dict(common, bn=128, wn=128, stages=6, cluster_m=2),
    "c2_n256_s3": dict(common, bn=256, wn=128, stages=3, cluster_m=2),
    "c1_n128_s4_d": dict(common, bn=128, wn=128, stages=4, cluster_m=1, double_tmp=True),
    "tuned": entry["config"],
}
for name, cfg in configs.items():
    d = os.path.join(base, name, "nvidia-h200")
    os.makedirs(d)
    a = dict(art, entries=[dict(entry, config=cfg)])
    json.dump(a, open(os.path.join(d, "gemm_fp8.json"), "w"))
PY
# KILN_NCU_FP8: which of the three (default all); KILN_NCU_SASS=1 also keeps per-instruction
# counters and warp-stall samples (the source page as CSV, SASS only).
for name in ${KILN_NCU_FP8:-c1_n256_s3 c2_n256_s4 c1_n128_s4}; do
  "$(dirname "$0")/_ncu_kernel.sh" "$NCU" "$base/$name" "ncu_fp8_$name" kiln_gemm_fp8_wgmma \
    ./kiln bench --family gemm_fp8 --tuned-dir "$base/$name" --reps 5
done
# cuBLASLt's kernels of one bench run (every kernel not kiln's): name, grid, block, cluster.
if [ "${KILN_NCU_CUBLAS:-1}" = 1 ]; then
  "$NCU" --clock-control none --section LaunchStats --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy -k 'regex:^(?!kiln).*' --launch-count 6 \
    ./kiln bench --family gemm_fp8 --tuned-dir "$base/tuned" --reps 3 >"$OUT/ncu_fp8_cublas.txt" 2>&1
  echo "ncu cublas: exit $?"
  grep -E "^  [a-zA-Z_0-9]+.*\(|Duration|Cluster Size|Dynamic Shared|Registers Per" "$OUT/ncu_fp8_cublas.txt" | head -40
fi
exit 0
