#!/usr/bin/env bash
# Tune the step3-mfa preset (MFA decode attention: B in {1, 8, 32, 128} x L in {1K..64K} BF16,
# FP8 / paged at B=128 L=4K, FP8 at B=1 L=4K) from scratch into its own folder; the artifact comes
# back as $OUT/mfa_decode.json. No baseline is timed in-process (the SDPA peer is the sdpa step,
# benches/peers/mfa_sdpa.py). The 5-minute budget keeps the whole GPU call within its limit:
# problems not started by then are reported out_of_budget.
exec "$(dirname "$0")/_tune_preset.sh" /tmp/kiln-tuned-mfa mfa_decode tune_mfa tune_mfa_wall \
  --family mfa_decode --preset step3-mfa --budget 5m
