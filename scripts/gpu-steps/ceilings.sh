#!/usr/bin/env bash
# The two ceilings every figure is measured against, through PyTorch.
set -uo pipefail
PYTHONUNBUFFERED=1 python3 peers/ceilings.py "$KILN_GPU_REPORT/ceilings.json"
