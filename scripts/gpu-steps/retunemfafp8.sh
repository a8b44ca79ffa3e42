#!/usr/bin/env bash
# Re-tune the FP8 problems of step3-mfa (B=128 L=4K contiguous and paged 16, B=1 L=4K) timing
# every legal config (--shortlist 1000, past the size of the space) instead of the estimate's
# 32, starting from the committed artifact, or from the tuned folder KILN_MFA_RETUNE_FROM
# names (e.g. /tmp/kiln-tuned-mfa after tunemfa); the BF16 entries are kept. The artifact
# comes back as $OUT/mfa_decode.json, the tune report as $KILN_GPU_REPORT/retune_mfa_fp8.json;
# run benchmfa after it with KILN_MFA_TUNED=/tmp/kiln-retune-mfa-fp8 to time what it wrote.
# The problems: _mfa_fp8_problems.json (shared with ab.sh).
exec "$(dirname "$0")/_retune.sh" /tmp/kiln-retune-mfa-fp8 "${KILN_MFA_RETUNE_FROM:-tuned}" \
  mfa_decode retune_mfa_fp8 <"$(dirname "$0")/_mfa_fp8_problems.json"
