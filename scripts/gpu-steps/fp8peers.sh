#!/usr/bin/env bash
# torch._scaled_mm (cuBLASLt, block-scaled and row-wise) on the gemm_fp8 decode shapes.
set -uo pipefail
PYTHONUNBUFFERED=1 python3 peers/fp8_scaled_mm.py "$KILN_GPU_REPORT/fp8_scaled_mm.json"
