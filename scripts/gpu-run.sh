#!/usr/bin/env bash
# Runs ON the GPU machine (from .gpu/, laid out by scripts/gpu-bundle.sh):
# GPU tests, then tuning and benchmarks when asked for. Everything lands in
# $OUT as summary.json (one JSON object) and log.txt.
#   KILN_STEPS="tests tune bench export ceilings"   (default) which steps to run
#   KILN_STEP_TIMEOUT=seconds (default 900): a step still running then is killed and fails,
#   so a hung kernel costs one step, not the whole call
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-/tmp/kiln-out}"
mkdir -p "$OUT/report"
export KILN_CACHE=/tmp/kiln-cache KILN_GPU_REPORT="$OUT/report"
steps="${KILN_STEPS:-tests tune bench export ceilings}"
# cuBLAS (the baseline) may live outside the loader's path: add its folder.
cublas=$(ls /usr/local/cuda/lib64/libcublas.so.13 2>/dev/null || find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
[ -n "$cublas" ] && export LD_LIBRARY_PATH="$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
log="$OUT/log.txt"
: >"$log"
status=0
step() { echo "=== $*" | tee -a "$log"; }

step "gpu state"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv 2>&1 | tee -a "$log"
"$here/kiln" info --json >"$OUT/report/info.json" 2>>"$log" || status=1
"$here/kiln" info 2>&1 | tee -a "$log"

for s in $steps; do
  case "$s" in
    tests)
      step "gpu tests"
      # KILN_TEST_FILTER: run only the GPU tests whose name contains it.
      ( cd "$here" && timeout "${KILN_STEP_TIMEOUT:-900}" ./gpu-tests --ignored --test-threads=1 ${KILN_TEST_FILTER:-} 2>&1 ) | tee -a "$log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      ;;
    *)
      if [ -x "$here/steps/$s.sh" ]; then
        step "$s"
        ( cd "$here" && timeout "${KILN_STEP_TIMEOUT:-900}" "./steps/$s.sh" 2>&1 ) | tee -a "$log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      else
        echo "unknown step $s" | tee -a "$log"; status=1
      fi
      ;;
  esac
done

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rep = os.path.join(out, "report")
summary = {}
for name in sorted(os.listdir(rep)):
    if name.endswith(".json"):
        with open(os.path.join(rep, name)) as f:
            try: summary[name[:-5]] = json.load(f)
            except ValueError as e: summary[name[:-5]] = {"unreadable": str(e)}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
PY
rm -rf "$OUT/report"
echo "gpu-run: exit $status"
exit $status
