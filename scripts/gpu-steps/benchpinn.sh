#!/usr/bin/env bash
# kiln bench for the PINN families on the target nets (fam::pinn_targets): mlp_jet (u + grad u
# + Laplacian) and mlp_jet_backward (one training step: forward jets, Laplacian-residual loss,
# backward). Each row validates and times the config dispatch serves from the committed
# artifacts (tuned/nvidia-h200/mlp_jet*.json, or the folder KILN_PINN_TUNED names, e.g.
# /tmp/kiln-tuned-pinn after the tunepinn step; the family default where there is none);
# --candidates also times every legal config and reports the fastest beside it. The baseline is
# PyTorch autograd (benches/peers/pinn_torch.py, TF32 off and on: its jets rows for mlp_jet,
# its "train" rows for mlp_jet_backward), run first unless the pinn step already wrote
# pinn_torch.json in this call.
set -uo pipefail
peers="$KILN_GPU_REPORT/pinn_torch.json"
if [ ! -s "$peers" ]; then
  PYTHONUNBUFFERED=1 python3 peers/pinn_torch.py "$peers" || exit 1
fi
rc=0
for family in mlp_jet mlp_jet_backward; do
  ./kiln bench --family $family --candidates --tuned-dir "${KILN_PINN_TUNED:-tuned}" --peers "$peers" \
    --json "$KILN_GPU_REPORT/bench_$family.json" || rc=1
done
exit $rc
