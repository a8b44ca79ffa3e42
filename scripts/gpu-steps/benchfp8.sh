#!/usr/bin/env bash
# Bench the artifact tunefp8 wrote side by side with cuBLASLt (isolated and steady state), then
# re-measure it against itself through the regression gate (its exit is recorded, not fatal:
# the gate's logic is tested on the CPU, and bench.sh plants a slowdown for gemm_bf16).
set -uo pipefail
T=/tmp/kiln-tuned-fp8
./kiln bench --family gemm_fp8 --tuned-dir $T --steady --json "$KILN_GPU_REPORT/bench_fp8.json" || exit 1
./kiln bench --family gemm_fp8 --tuned-dir $T --json /tmp/bench_fp8_2.json --compare "$KILN_GPU_REPORT/bench_fp8.json" --threshold 5%
fresh=$?
python3 -c "import json; json.dump({'fresh_remeasure_exit': $fresh}, open('$KILN_GPU_REPORT/bench_fp8_gate.json','w'))"
echo "gemm_fp8 regression gate: fresh re-measure exit $fresh"
exit 0
