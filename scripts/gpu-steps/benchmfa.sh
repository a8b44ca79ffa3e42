#!/usr/bin/env bash
# kiln bench for mfa_decode: every problem of the committed artifact
# (tuned/nvidia-h200/mfa_decode.json, or the folder KILN_MFA_TUNED names, e.g.
# /tmp/kiln-tuned-mfa after the tunemfa step) with its tuned config, KV TB/s and % of the copy ceiling,
# against PyTorch SDPA (benches/peers/mfa_sdpa.py: flash, cuDNN and memory-efficient, the
# fastest as the baseline), run first unless the sdpa step already wrote mfa_sdpa.json in this
# call. mfa_sdpa.py times its fixed grid (B in {1, 8, 32, 128} x L in {1K, 4K, 8K, 32K, 64K},
# BF16 contiguous), which holds the artifact's BF16 contiguous problems; its FP8 and paged
# problems are compared with SDPA on the BF16 contiguous cache of the same B and L.
set -uo pipefail
peers="$KILN_GPU_REPORT/mfa_sdpa.json"
if [ ! -s "$peers" ]; then
  PYTHONUNBUFFERED=1 python3 peers/mfa_sdpa.py "$peers" || exit 1
fi
./kiln bench --family mfa_decode --tuned-dir "${KILN_MFA_TUNED:-tuned}" --peers "$peers" \
  --json "$KILN_GPU_REPORT/bench_mfa_decode.json"
