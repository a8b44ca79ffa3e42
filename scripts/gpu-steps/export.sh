#!/usr/bin/env bash
# Export the tuned kernels and load them from C through kiln.h.
set -uo pipefail
rm -rf /tmp/kiln-export
./kiln export /tmp/kiln-export --tuned-dir /tmp/kiln-tuned || exit 1
cp /tmp/kiln-export/manifest.json "$KILN_GPU_REPORT/export_manifest.json"
rc=0
for shape in "1 2560 7168" "32 16384 2048" "128 7168 16384" "256 128815 7168" "1 48 7168"; do
  echo "c example: $shape"
  (cd c && LD_LIBRARY_PATH=".:${LD_LIBRARY_PATH:-}" ./gemm_bf16 /tmp/kiln-export $shape) || rc=1
done
exit $rc
