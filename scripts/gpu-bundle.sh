#!/usr/bin/env bash
# Build here (no GPU needed) and lay out in .gpu/ (git-ignored) everything one
# call on the GPU machine needs: the kiln binary, the GPU test binary, the
# peer-baseline scripts and scripts/gpu-run.sh. Then, with the device tool:
#   run  command: "bash .gpu/gpu-run.sh"   carry: [".gpu"]
# gpu-run.sh writes summary.json and log.txt under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu
cargo build --release --bin kiln
cp target/release/kiln .gpu/kiln
tests_json=$(cargo test --release --no-run --test gpu --message-format=json 2>/dev/null)
exe=$(printf '%s\n' "$tests_json" | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$exe" ] || { echo "gpu-bundle: could not find the gpu test binary" >&2; exit 1; }
cp "$exe" .gpu/gpu-tests
cargo build --release --example pinn_train
cp target/release/examples/pinn_train .gpu/pinn_train
strip .gpu/kiln .gpu/gpu-tests .gpu/pinn_train
cp scripts/gpu-run.sh .gpu/gpu-run.sh
cp -r scripts/gpu-steps .gpu/steps
# The C example, with the runtime library and libcudart beside it.
cargo build --release -p kiln-runtime --lib
examples/c/build.sh .gpu/c/gemm_bf16
cudart=$(ls .kiln/toolchain/nvidia/cu13/lib/libcudart.so.13 2>/dev/null || true)
if [ -n "$cudart" ]; then cp "$cudart" .gpu/c/; fi
strip .gpu/c/libkiln_runtime.so 2>/dev/null || true
if [ -d benches/peers ]; then cp -r benches/peers .gpu/peers; fi
if [ -d tuned ]; then cp -r tuned .gpu/tuned; fi
# benches/results travels with the working tree (steps read it as ../benches/results).
du -sh .gpu
size=$(du -sm .gpu | cut -f1)
[ "$size" -lt 60 ] || { echo "gpu-bundle: .gpu is ${size} MiB, over the 64 MiB carry limit" >&2; exit 1; }
