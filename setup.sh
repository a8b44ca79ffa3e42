#!/usr/bin/env bash
# One command after cloning: make NVRTC + the CUDA headers available, build
# kiln, and compile every kernel variant of every family (no GPU needed).
#
# NVRTC: a system CUDA 13 toolkit is used when there is one ($KILN_CUDA_ROOT,
# $CUDA_HOME, $CUDA_PATH or /usr/local/cuda with lib64/libnvrtc.so.13 and
# include/cuda_bf16.h); otherwise the PyPI wheels are installed into
# .kiln/toolchain (git-ignored), where kiln finds them by itself.
#
#   ./setup.sh            set up, build, compile every variant
#   ./setup.sh --no-build only make NVRTC available
set -euo pipefail
cd "$(dirname "$0")"

NVRTC_WHEEL="nvidia-cuda-nvrtc==13.0.88"
RUNTIME_WHEEL="nvidia-cuda-runtime==13.0.96"
LOCAL=".kiln/toolchain"

has_toolkit() {
  local root="$1"
  [ -n "$root" ] || return 1
  { [ -f "$root/lib64/libnvrtc.so.13" ] || [ -f "$root/lib/libnvrtc.so.13" ]; } && [ -f "$root/include/cuda_bf16.h" ]
}

found=""
for root in "${KILN_CUDA_ROOT:-}" "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if has_toolkit "$root"; then found="$root"; break; fi
done

if [ -n "$found" ]; then
  echo "setup: using the CUDA toolkit at $found"
elif has_toolkit "$LOCAL/nvidia/cu13" && [ -f "$LOCAL/.installed-$NVRTC_WHEEL-$RUNTIME_WHEEL" ]; then
  echo "setup: NVRTC already installed in $LOCAL"
else
  echo "setup: no CUDA toolkit found; installing $NVRTC_WHEEL and $RUNTIME_WHEEL into $LOCAL"
  PY="$(command -v python3 || command -v python || true)"
  if [ -z "$PY" ]; then
    echo "setup: python3 with pip is needed to install NVRTC from PyPI (or set KILN_CUDA_ROOT to a CUDA 13 toolkit)" >&2
    exit 1
  fi
  rm -rf "$LOCAL"
  mkdir -p "$LOCAL"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$LOCAL" "$NVRTC_WHEEL" "$RUNTIME_WHEEL"
  has_toolkit "$LOCAL/nvidia/cu13" || { echo "setup: the wheels did not provide libnvrtc.so.13 + cuda_bf16.h" >&2; exit 1; }
  touch "$LOCAL/.installed-$NVRTC_WHEEL-$RUNTIME_WHEEL"
fi

if [ "${1:-}" = "--no-build" ]; then exit 0; fi

cargo build --release
./target/release/kiln info
./target/release/kiln list
./target/release/kiln compile --all
