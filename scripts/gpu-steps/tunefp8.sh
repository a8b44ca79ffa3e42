#!/usr/bin/env bash
# Tune the step3-fp8 preset (decode and FFN shapes) from scratch into its own folder, timing
# cuBLASLt FP8 side by side (block-scaled; row-wise where cuBLASLt has no block-scaled kernel for
# a shape); the artifact comes back as $OUT/gemm_fp8.json. The 5-minute budget keeps the whole
# GPU call within its limit: problems not started by then are reported out_of_budget.
exec "$(dirname "$0")/_tune_preset.sh" /tmp/kiln-tuned-fp8 gemm_fp8 tune_fp8 tune_fp8_wall \
  --family gemm_fp8 --preset step3-fp8 --budget 5m
