#!/usr/bin/env bash
# PyTorch SDPA (flash, cuDNN) on the mfa_decode shapes: the attention baseline (the benchmfa
# step reads it: kiln bench --family mfa_decode --peers).
set -uo pipefail
PYTHONUNBUFFERED=1 python3 peers/mfa_sdpa.py "$KILN_GPU_REPORT/mfa_sdpa.json"
