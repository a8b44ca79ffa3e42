#!/usr/bin/env bash
# The Rust example examples/pinn_train.rs (built by gpu-bundle.sh as .gpu/pinn_train): a PINN
# for -Lap u = f on [-1, 1]^2 trained with the tuned mlp_jet_backward config and the adam
# kernel, from the committed artifacts (tuned/, or the folder KILN_PINN_TUNED names). Its
# output (losses, time per step, error against the exact solution) lands in log.txt.
# KILN_PINN_STEPS (default 3000) and KILN_PINN_POINTS (default 65536) size the run.
set -uo pipefail
exec ./pinn_train "${KILN_PINN_STEPS:-3000}" "${KILN_PINN_POINTS:-65536}" "${KILN_PINN_TUNED:-tuned}"
