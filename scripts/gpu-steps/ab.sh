#!/usr/bin/env bash
# A/B of kiln builds in one call: for each of KILN_AB_ROUNDS rounds (default 3), for each kiln
# binary named in KILN_AB_BINS (files beside this script's parent, default "kiln"), re-tune the
# problems of KILN_AB_PROBLEMS (a file beside this script, default the FP8 problems of
# retunemfafp8.sh, _mfa_fp8_problems.json) of family KILN_AB_FAMILY (default mfa_decode) over
# every legal config, writing the tune report to $KILN_GPU_REPORT/ab_<binary>_r<round>.json. Interleaving the builds round
# by round keeps a drift of the GPU's clocks from reading as a difference between them. Every
# build tunes from an empty folder and compiles into its own cache (the templates differ).
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${KILN_AB_ROUNDS:-3}"
status=0
for r in $(seq 1 "$rounds"); do
  for bin in ${KILN_AB_BINS:-kiln}; do
    dir="/tmp/kiln-ab-$bin"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$(dirname "$0")/${KILN_AB_PROBLEMS:-_mfa_fp8_problems.json}" "$dir/problems.json"
    echo "--- round $r: $bin"
    KILN_CACHE="/tmp/kiln-cache-ab-$bin" "$here/$bin" tune --family "${KILN_AB_FAMILY:-mfa_decode}" \
      --problems "$dir/problems.json" --force --shortlist 1000 --tuned-dir "$dir" \
      --json "$KILN_GPU_REPORT/ab_${bin//-/_}_r$r.json" >/dev/null || status=1
  done
done
exit $status
