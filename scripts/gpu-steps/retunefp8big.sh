#!/usr/bin/env bash
# Re-tune the gemm_fp8 decode shapes with M = 128 and 256 (qkv, wq, o_proj) timing every legal
# config (--shortlist 1000, past the size of the space) instead of the estimate's 32, starting
# from the committed artifact (the other entries are kept). The artifact comes back as
# $OUT/gemm_fp8.json, the tune report as $KILN_GPU_REPORT/retune_fp8_big.json.
exec "$(dirname "$0")/_retune.sh" /tmp/kiln-retune-fp8 tuned gemm_fp8 retune_fp8_big <<'JSON'
[{"m":128,"n":2560,"k":7168},{"m":256,"n":2560,"k":7168},
 {"m":128,"n":16384,"k":2048},{"m":256,"n":16384,"k":2048},
 {"m":128,"n":7168,"k":16384},{"m":256,"n":7168,"k":16384}]
JSON
