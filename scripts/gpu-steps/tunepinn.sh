#!/usr/bin/env bash
# Tune the PINN presets from scratch into one folder, /tmp/kiln-tuned-pinn: pinn-jets (mlp_jet:
# u + grad u + Laplacian of the three target nets) and pinn-train (mlp_jet_backward: one
# training step), every legal config timed. The artifacts come back as $OUT/mlp_jet.json and
# $OUT/mlp_jet_backward.json, the tune reports as tune_pinn_<family>.json in the summary. No
# baseline is timed in-process (the PyTorch peer is benches/peers/pinn_torch.py, which the
# benchpinn step runs); KILN_PINN_TUNED=/tmp/kiln-tuned-pinn makes benchpinn serve these
# artifacts in the same call.
set -uo pipefail
dir=/tmp/kiln-tuned-pinn
rm -rf "$dir" && mkdir -p "$dir"
rc=0
for pair in mlp_jet:pinn-jets mlp_jet_backward:pinn-train; do
  family=${pair%%:*} preset=${pair#*:}
  start=$(date +%s.%N)
  ./kiln tune --family "$family" --preset "$preset" --budget 4m --tuned-dir "$dir" \
    --json "$KILN_GPU_REPORT/tune_pinn_$family.json"
  code=$?
  end=$(date +%s.%N)
  python3 -c "import json; json.dump({'wall_s': $end - $start, 'exit': $code}, open('$KILN_GPU_REPORT/tune_pinn_${family}_wall.json','w'))"
  cp "$dir"/*/"$family.json" "$OUT/$family.json" 2>/dev/null
  [ $code -eq 0 ] || rc=1
done
exit $rc
