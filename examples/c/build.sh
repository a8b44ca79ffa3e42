#!/usr/bin/env bash
# Build the C example against include/kiln.h and libkiln_runtime.so:
#   examples/c/build.sh [OUT]        (default: target/c-example/gemm_bf16)
# Build the library first: cargo build --release -p kiln-runtime.
#
# KILN_LIB_DIR   folder holding libkiln_runtime.so (default: target/release)
# CUDA headers and libcudart come from the first of $KILN_CUDA_ROOT, $CUDA_HOME, $CUDA_PATH,
# /usr/local/cuda and the project-local .kiln/toolchain/nvidia/cu13 (./setup.sh) that has
# include/cuda_runtime.h, as kiln itself looks for its toolkit.
#
# libkiln_runtime.so is copied beside OUT, and OUT's rpath is $ORIGIN then the libcudart folder
# used here, so the folder can be moved as one piece (copy libcudart.so.* beside it too when the
# target machine keeps its CUDA runtime elsewhere). No GPU or driver is needed to build.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/target/c-example/gemm_bf16}"
lib_dir="${KILN_LIB_DIR:-$root/target/release}"

die() { echo "examples/c/build.sh: $*" >&2; exit 1; }

[ -f "$lib_dir/libkiln_runtime.so" ] ||
  die "no libkiln_runtime.so in $lib_dir: run 'cargo build --release -p kiln-runtime' or set KILN_LIB_DIR"

cuda_root=""
for r in "${KILN_CUDA_ROOT:-}" "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda "$root/.kiln/toolchain/nvidia/cu13"; do
  if [ -n "$r" ] && [ -f "$r/include/cuda_runtime.h" ]; then cuda_root="$r"; break; fi
done
[ -n "$cuda_root" ] ||
  die "no CUDA headers (include/cuda_runtime.h) under \$KILN_CUDA_ROOT, \$CUDA_HOME, \$CUDA_PATH, /usr/local/cuda or .kiln/toolchain/nvidia/cu13: run ./setup.sh"

# libcudart: the unversioned name when the toolkit has it, else the versioned file itself
# (the pip wheel ships only libcudart.so.13).
cudart_dir="" cudart_flag=""
for d in lib64 lib targets/x86_64-linux/lib; do
  dir="$cuda_root/$d"
  if [ -e "$dir/libcudart.so" ]; then cudart_dir="$dir" cudart_flag="-lcudart"; break; fi
  so="$(cd "$dir" 2>/dev/null && ls libcudart.so.[0-9]* 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$so" ]; then cudart_dir="$dir" cudart_flag="-l:$so"; break; fi
done
[ -n "$cudart_dir" ] || die "no libcudart.so* under $cuda_root/{lib64,lib,targets/x86_64-linux/lib}"

# The CUDA runtime wheel that ./setup.sh installs has the runtime API headers but not the
# crt/host_defines.h they include (it ships in the compiler's packages). A host-only C build
# needs just its calling-convention and attribute macros, so supply those when it is missing.
shim=()
if [ ! -f "$cuda_root/include/crt/host_defines.h" ]; then
  shim_dir="$(mktemp -d)"
  trap 'rm -rf "$shim_dir"' EXIT
  mkdir -p "$shim_dir/crt"
  cat >"$shim_dir/crt/host_defines.h" <<'EOF'
/* Written by kiln's examples/c/build.sh: the macros of crt/host_defines.h that the CUDA
 * runtime API headers use, for host compilers (GCC, Clang). */
#pragma once
#define CUDARTAPI
#define CUDART_CB
#define __host__
#define __device__
#define __global__
#define __managed__
#define __device_builtin__
#define __cudart_builtin__
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(n) __attribute__((aligned(n)))
#ifdef __cplusplus
#define __dv(v) = v
#else
#define __dv(v)
#endif
EOF
  shim=(-I"$shim_dir")
fi

mkdir -p "$(dirname "$out")"
out_dir="$(cd "$(dirname "$out")" && pwd)"
# Linked by file name beside the binary: -l:libkiln_runtime.so from a copy in OUT's folder.
cp -f "$lib_dir/libkiln_runtime.so" "$out_dir/libkiln_runtime.so"

${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror \
  -I"$root/runtime/include" "${shim[@]}" -I"$cuda_root/include" \
  "$root/examples/c/gemm_bf16.c" -o "$out" \
  -L"$out_dir" -lkiln_runtime -L"$cudart_dir" "$cudart_flag" -lm \
  -Wl,-rpath,'$ORIGIN' -Wl,-rpath,"$cudart_dir"

echo "built $out (CUDA from $cuda_root, libkiln_runtime.so from $lib_dir, copied beside it)"
