#!/usr/bin/env bash
# Tune the step3-fp8 preset (decode and FFN shapes) from scratch into its own folder, timing
# cuBLASLt FP8 side by side (block-scaled; row-wise where cuBLASLt has no block-scaled kernel for
# a shape); the artifact comes back as $OUT/gemm_fp8.json. The 5-minute budget keeps the whole
# GPU call within its limit: problems not started by then are reported out_of_budget.
set -uo pipefail
T=/tmp/kiln-tuned-fp8
rm -rf $T && mkdir -p $T
start=$(date +%s.%N)
./kiln tune --family gemm_fp8 --preset step3-fp8 --tuned-dir $T --budget 5m --json "$KILN_GPU_REPORT/tune_fp8.json"
rc=$?
end=$(date +%s.%N)
python3 -c "import json; json.dump({'wall_s': $end - $start, 'exit': $rc}, open('$KILN_GPU_REPORT/tune_fp8_wall.json','w'))"
cp $T/*/gemm_fp8.json "$OUT/gemm_fp8.json" 2>/dev/null
exit $rc
