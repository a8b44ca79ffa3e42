#!/usr/bin/env bash
# Tune the step3-bf16 preset from scratch; the artifact comes back as $OUT/gemm_bf16.json.
set -uo pipefail
rm -rf /tmp/kiln-tuned && mkdir -p /tmp/kiln-tuned
start=$(date +%s.%N)
./kiln tune --preset step3-bf16 --tuned-dir /tmp/kiln-tuned --json "$KILN_GPU_REPORT/tune_report.json"
rc=$?
end=$(date +%s.%N)
python3 -c "import json,sys; json.dump({'wall_s': $end - $start, 'exit': $rc}, open('$KILN_GPU_REPORT/tune_wall.json','w'))"
cp /tmp/kiln-tuned/*/gemm_bf16.json "$OUT/gemm_bf16.json" 2>/dev/null
exit $rc
