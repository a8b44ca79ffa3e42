#!/usr/bin/env bash
# PyTorch autograd (WGAN-GP critic and generator: forward, input VJP, parameter backward,
# penalty double backward; fp32, TF32 off and on) and torch.optim fused Adam / AdamW: the
# baselines of small_mlp and adam. kiln's side of the comparison is the GPU tests
# small_mlp_bench and adam_bench (KILN_TEST_FILTER="small_mlp_bench adam_bench": libtest takes
# several filters), which write small_mlp_bench.json and adam_bench.json next to this one.
set -uo pipefail
PYTHONUNBUFFERED=1 python3 peers/wgan_torch.py "$KILN_GPU_REPORT/wgan_torch.json"
