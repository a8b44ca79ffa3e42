#!/usr/bin/env bash
# PyTorch autograd (u, grad u, Laplacian; fp32 with TF32 off and on) on the mlp_jet target
# nets: the PINN baseline. kiln's side of the comparison is the GPU test mlp_jet_bench
# (KILN_TEST_FILTER=mlp_jet_bench), which writes mlp_jet_bench.json next to this one, or the
# benchpinn step (kiln bench --peers this file).
set -uo pipefail
PYTHONUNBUFFERED=1 python3 peers/pinn_torch.py "$KILN_GPU_REPORT/pinn_torch.json"
