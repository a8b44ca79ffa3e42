#!/usr/bin/env bash
# Re-measure the committed artifact (isolated and steady state) and compare
# it with the committed run-8 results.
set -uo pipefail
./kiln bench --tuned-dir tuned --steady --json "$OUT/bench_steady.json" \
  --compare ../benches/results/2026-11-29-gemm_bf16-run8.json --threshold 5%
