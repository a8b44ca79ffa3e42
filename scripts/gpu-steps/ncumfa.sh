#!/usr/bin/env bash
# Nsight Compute profiles of mfa_decode at B=128 L=4K (BF16 and FP8 defaults, BF16 64-token
# tiles over 3 stages on mma.sync, FP8 64-token tiles on wgmma): the fourth launch of
# mfa_decode_one_shape, counters read with the clocks left alone. Text reports land in
# $OUT/ncu_*.txt. KILN_NCU_MFA="name=shape=config ..." profiles those instead (shape and config
# as KILN_MFA_SHAPE / KILN_MFA_CONFIG of mfa_decode_one_shape, e.g.
# "fp8w=128,4096,fp8=32,2,4,2048,1"), through _ncu_kernel.sh (KILN_NCU_SASS=1 adds the
# per-instruction stall samples as $OUT/ncu_NAME_sass.csv).
set -uo pipefail
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
[ -n "$NCU" ] || { echo "ncu not found"; exit 1; }
prof() {
  local name="$1"; shift
  env "$@" "$NCU" --clock-control none --set full -k regex:kiln_mfa --launch-skip 3 --launch-count 1 \
    ./gpu-tests --ignored --exact mfa::mfa_decode_one_shape >"$OUT/ncu_$name.txt" 2>&1
  echo "ncu $name: exit $?"
  grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible|Shared Memory|ALU|Tensor|Stall|Barrier" "$OUT/ncu_$name.txt" | head -20
}
if [ -n "${KILN_NCU_MFA:-}" ]; then
  for spec in $KILN_NCU_MFA; do
    IFS='=' read -r name shape config <<<"$spec"
    KILN_MFA_SHAPE="$shape" KILN_MFA_CONFIG="$config" "$(dirname "$0")/_ncu_kernel.sh" "$NCU" \
      "/tmp/ncu_mfa_$name" "ncu_$name" kiln_mfa ./gpu-tests --ignored --exact mfa::mfa_decode_one_shape
  done
  exit 0
fi
prof bf16_default KILN_MFA_SHAPE=128,4096,bf16
prof bf16_t64s3w4 KILN_MFA_SHAPE=128,4096,bf16 KILN_MFA_CONFIG=64,3,4,4096
prof fp8_default KILN_MFA_SHAPE=128,4096,fp8
prof fp8_wgmma_t64s2w8 KILN_MFA_SHAPE=128,4096,fp8 KILN_MFA_CONFIG=64,2,8,4096,1
exit 0
