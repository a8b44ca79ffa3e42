#!/usr/bin/env bash
# Bench the fresh artifact side by side with cuBLAS, then the regression gate:
# a fresh re-measurement against the first must pass, a planted 10% slowdown must fail.
set -uo pipefail
T=/tmp/kiln-tuned
./kiln bench --tuned-dir $T --steady --json "$OUT/bench.json" || exit 1
./kiln bench --tuned-dir $T --json /tmp/bench2.json --compare "$OUT/bench.json" --threshold 5%
fresh=$?
python3 - <<'PY'
import json
b = json.load(open("/tmp/bench2.json"))
for r in b["rows"]:
    r["kiln_us"] *= 1.10
json.dump(b, open("/tmp/planted.json", "w"))
PY
./kiln bench --from /tmp/planted.json --compare "$OUT/bench.json" --threshold 5% >/dev/null 2>&1
planted=$?
./kiln bench --from "$OUT/bench.json" --compare "$OUT/bench.json" --threshold 5% >/dev/null 2>&1
same=$?
python3 -c "import json; json.dump({'fresh_remeasure_exit': $fresh, 'planted_10pct_exit': $planted, 'same_file_exit': $same}, open('$KILN_GPU_REPORT/bench_gate.json','w'))"
echo "regression gate: fresh re-measure exit $fresh, planted 10% slowdown exit $planted (must be 1), same file exit $same (must be 0)"
[ $planted -ne 0 ] && [ $same -eq 0 ]
