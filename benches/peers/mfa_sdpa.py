"""The PyTorch baseline for kiln's mfa_decode: Step-3 MFA decode attention (64 query heads
sharing one K/V head, head_dim 256, scale 1/16) through
torch.nn.functional.scaled_dot_product_attention, packed the way a serving engine would call
it: q as [B, 1 head, 64 rows, 256], k and v [B, 1, L, 256], BF16, non-causal.

Backends: FlashAttention-2 (SDPBackend.FLASH_ATTENTION), cuDNN (SDPBackend.CUDNN_ATTENTION)
and, for reference, the memory-efficient kernel. Each (shape, backend): median of 20
CUDA-event-timed calls after 3 warm-up calls, with the L2 flushed before each call
(timing.py: a read of a 2x-L2 buffer) so K and V
come from HBM. Effective bandwidth = K + V bytes / time.

Usage: mfa_sdpa.py OUT.json [--quick]   (--quick: only B=1 L=4K and B=128 L=4K)
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from timing import L2Flush, median_us

HEADS, HEAD_DIM, SCALE = 64, 256, 1.0 / 16.0
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def main():
    out_path = sys.argv[1]
    quick = "--quick" in sys.argv[2:]
    shapes = [(b, l) for b in (1, 8, 32, 128) for l in (1024, 4096, 8192, 32768, 65536)]
    if quick:
        shapes = [(1, 4096), (128, 4096)]
    flush = L2Flush()
    rows = []
    for batch, context in shapes:
        g = torch.Generator(device="cuda").manual_seed(batch * 100003 + context)
        q = torch.randn(batch, 1, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(batch, 1, context, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(batch, 1, context, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        kv_bytes = 2 * batch * context * HEAD_DIM * 2
        for name, backend in BACKENDS.items():
            row = {"batch": batch, "context": context, "heads": HEADS, "head_dim": HEAD_DIM,
                   "kv_dtype": "bf16", "backend": name, "kv_mb": kv_bytes / 1e6}
            try:
                def call():
                    return F.scaled_dot_product_attention(q, k, v, is_causal=False, scale=SCALE)
                # The backend choice stays in force for the whole timed loop (no host overhead
                # per call); a backend that cannot serve the shape raises on the first call.
                with sdpa_kernel([backend]):
                    call()
                    torch.cuda.synchronize()
                    med, p20, p80 = median_us(call, flush)
                row.update({"us": med, "p20_us": p20, "p80_us": p80,
                            "kv_tb_s": kv_bytes / (med * 1e-6) / 1e12})
            except RuntimeError as e:  # backend not available for this shape / build
                torch.cuda.synchronize()
                row["error"] = str(e).splitlines()[0][:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    result = {
        "what": "torch SDPA baseline for mfa_decode (q [B,1,64,256], k/v [B,1,L,256] bf16, scale 1/16)",
        "how": "median of 20 CUDA-event-timed calls, 3 warm-up, L2 flushed by a read of a 2x-L2 buffer and a ~50 us spin kernel before each call (timing.py)",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(),
        "rows": rows,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


main()
