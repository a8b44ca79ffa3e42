#!/usr/bin/env bash
# Tune the step3-bf16 preset from scratch; the artifact comes back as $OUT/gemm_bf16.json.
exec "$(dirname "$0")/_tune_preset.sh" /tmp/kiln-tuned gemm_bf16 tune_report tune_wall \
  --preset step3-bf16
