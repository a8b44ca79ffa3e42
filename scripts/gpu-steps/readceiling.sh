#!/usr/bin/env bash
# Read-only DRAM bandwidth against buffer size (isolated and steady state): the ceiling a
# weight-streaming decode GEMM is held to at its weight size.
set -uo pipefail
PYTHONUNBUFFERED=1 python3 peers/read_ceiling.py "$KILN_GPU_REPORT/read_ceiling.json"
