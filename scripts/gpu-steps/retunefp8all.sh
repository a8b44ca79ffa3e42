#!/usr/bin/env bash
# Re-tune every gemm_fp8 shape of the step3-fp8 preset timing every legal config
# (--shortlist 1000, past the size of the space), FFN shapes first, into /tmp/kiln-tuned-fp8
# (what benchfp8 benches), starting from the committed artifact so that a problem the budget
# (KILN_RETUNE_BUDGET, default 5m) leaves out keeps its committed entry. The artifact comes back
# as $OUT/gemm_fp8.json, the tune report as $KILN_GPU_REPORT/retune_fp8_all.json.
# KILN_RETUNE_FFN_ONLY=1: the 12 FFN shapes only.
set -uo pipefail
dir=/tmp/kiln-tuned-fp8
rm -rf "$dir" && mkdir -p "$dir" && cp -r tuned/. "$dir/"
python3 - "$dir/problems.json" <<'PY'
import json, os, sys
ffn = [(7168, 36864), (18432, 7168), (7168, 10240), (5120, 7168)]
dec = [(7168, 2560), (2048, 16384), (16384, 7168)]
probs = [{"m": m, "n": n, "k": k} for m in (512, 2048, 4096) for (k, n) in ffn]
if os.environ.get("KILN_RETUNE_FFN_ONLY") != "1":
    probs += [{"m": m, "n": n, "k": k} for m in (256, 128, 64, 32, 16, 1) for (k, n) in dec]
json.dump(probs, open(sys.argv[1], "w"))
PY
start=$(date +%s.%N)
./kiln tune --family gemm_fp8 --problems "$dir/problems.json" --force --shortlist 1000 \
  --budget "${KILN_RETUNE_BUDGET:-5m}" --tuned-dir "$dir" --json "$KILN_GPU_REPORT/retune_fp8_all.json"
rc=$?
end=$(date +%s.%N)
python3 -c "import json; json.dump({'wall_s': $end - $start, 'exit': $rc}, open('$KILN_GPU_REPORT/retune_fp8_all_wall.json','w'))"
cp "$dir"/*/gemm_fp8.json "$OUT/gemm_fp8.json" 2>/dev/null
exit $rc
