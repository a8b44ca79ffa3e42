#!/usr/bin/env bash
# Re-tune every gemm_fp8 shape of the step3-fp8 preset timing every legal config
# (--shortlist 1000, past the size of the space), FFN shapes first, into /tmp/kiln-tuned-fp8
# (what benchfp8 benches), starting from the committed artifact so that a problem the budget
# (KILN_RETUNE_BUDGET, default 5m) leaves out keeps its committed entry. The artifact comes back
# as $OUT/gemm_fp8.json, the tune report as $KILN_GPU_REPORT/retune_fp8_all.json.
# KILN_RETUNE_FFN_ONLY=1: the 12 FFN shapes only.
set -uo pipefail
python3 - <<'PY' | "$(dirname "$0")/_retune.sh" /tmp/kiln-tuned-fp8 tuned gemm_fp8 retune_fp8_all \
  --budget "${KILN_RETUNE_BUDGET:-5m}"
import json, os, sys
ffn = [(7168, 36864), (18432, 7168), (7168, 10240), (5120, 7168)]
dec = [(7168, 2560), (2048, 16384), (16384, 7168)]
probs = [{"m": m, "n": n, "k": k} for m in (512, 2048, 4096) for (k, n) in ffn]
if os.environ.get("KILN_RETUNE_FFN_ONLY") != "1":
    probs += [{"m": m, "n": n, "k": k} for m in (256, 128, 64, 32, 16, 1) for (k, n) in dec]
json.dump(probs, sys.stdout)
PY
exit "${PIPESTATUS[1]}"
