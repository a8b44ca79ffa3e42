"""The PyTorch baseline for kiln's gemm_fp8 decode kernel: Step-3 linear layers in DeepSeek-V3
block FP8 through torch._scaled_mm (cuBLASLt), y = (a . b^T) with a [M, K] e4m3 activations,
b [N, K] e4m3 weights, BF16 out.

Two scalings per shape:
* "block": scale_a [M, K/128] fp32, column-major (1x128 groups per token), and scale_b
  [N/128, K/128] fp32 (128x128 weight blocks), called as
  torch._scaled_mm(a, b.t(), scale_a, scale_b.t(), out_dtype=torch.bfloat16).
  cuBLASLt answers NOT_SUPPORTED for some decode shapes (M = 1 in particular); the row then
  falls back to row-wise scales and says so ("fallback": "rowwise", with the error).
* "rowwise": scale_a [M, 1] and scale_b [1, N] fp32, for reference on every shape.

Each (shape, scaling): median of 50 CUDA-event-timed calls after 5 warm-up calls, with the L2
flushed (timing.py: a read of a 2x-L2 buffer) before each call so the weight comes from HBM.
Weight bandwidth = N * K bytes / time.

The FFN shapes (M in 512, 2048, 4096) report TFLOP/s = 2 M N K / time as well.

Usage: fp8_scaled_mm.py OUT.json [--quick] [--decode-only]
  --quick: decode M = 1 and 32 only, no FFN shapes; --decode-only: no FFN shapes
"""
import json
import sys

import torch

from timing import L2Flush, median_us

LAYERS = [("qkv", 2560, 7168), ("wq", 16384, 2048), ("o_proj", 7168, 16384)]
# The MoE/FFN-side shapes of the [fp8-gemm] targets (prefill-sized M).
FFN = [("ffn_up", 36864, 7168), ("ffn_down", 7168, 18432), ("moe_up", 10240, 7168),
       ("moe_down", 7168, 5120)]
FFN_MS = (512, 2048, 4096)
FP8 = torch.float8_e4m3fn


def quantize_rows(x, group=128):
    """Per row and 128-column group: scale = max(amax, 1e-4) / 448, codes e4m3(x / scale)."""
    m, k = x.shape
    g = x.float().view(m, k // group, group)
    scale = g.abs().amax(dim=-1).clamp(min=1e-4) / 448.0
    codes = (g / scale.unsqueeze(-1)).clamp(-448.0, 448.0).to(FP8).view(m, k)
    return codes, scale


def quantize_blocks(w, block=128):
    """Per 128 x 128 block (N % 128 == 0 here): scale = max(amax, 1e-4) / 448."""
    n, k = w.shape
    b = w.float().view(n // block, block, k // block, block)
    scale = b.abs().amax(dim=(1, 3)).clamp(min=1e-4) / 448.0
    codes = (b / scale[:, None, :, None]).clamp(-448.0, 448.0).to(FP8).view(n, k)
    return codes, scale


def call_rowwise(a, b, m, n):
    sa = torch.ones(m, 1, device="cuda", dtype=torch.float32)
    sb = torch.ones(1, n, device="cuda", dtype=torch.float32)
    return lambda: torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.bfloat16)


def main():
    out_path = sys.argv[1]
    quick = "--quick" in sys.argv[2:]
    ms = (1, 32) if quick else (1, 16, 32, 64, 128, 256)
    shapes = [(name, n, k, ms) for name, n, k in LAYERS]
    if not quick and "--decode-only" not in sys.argv[2:]:
        shapes += [(name, n, k, FFN_MS) for name, n, k in FFN]
    flush = L2Flush()
    rows = []
    for name, n, k, shape_ms in shapes:
        g = torch.Generator(device="cuda").manual_seed(n * 31 + k)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g)
        b, sw = quantize_blocks(w)  # b [N, K] e4m3, sw [N/128, K/128]
        del w
        weight_bytes = n * k
        for m in shape_ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
            a, sx = quantize_rows(x)  # a [M, K] e4m3, sx [M, K/128]
            # scale_a column-major: an [K/128, M] buffer seen transposed.
            sa = torch.empty(k // 128, m, device="cuda", dtype=torch.float32).t()
            sa.copy_(sx)
            base = {"layer": name, "m": m, "n": n, "k": k, "weight_mb": weight_bytes / 1e6}
            for scaling in ("block", "rowwise"):
                row = dict(base, scaling=scaling)
                if scaling == "block":
                    fn = lambda: torch._scaled_mm(a, b.t(), sa, sw.t(), out_dtype=torch.bfloat16)
                else:
                    fn = call_rowwise(a, b, m, n)
                try:
                    fn()
                    torch.cuda.synchronize()
                except RuntimeError as e:
                    torch.cuda.synchronize()
                    if scaling != "block":
                        row["error"] = str(e).splitlines()[0][:300]
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        continue
                    # Block-scaled cuBLASLt refuses this shape: time row-wise scales instead.
                    row["fallback"] = "rowwise"
                    row["block_error"] = str(e).splitlines()[0][:300]
                    fn = call_rowwise(a, b, m, n)
                    fn()
                    torch.cuda.synchronize()
                med, p20, p80 = median_us(fn, flush, reps=50, warmup=5)
                row.update({"us": med, "p20_us": p20, "p80_us": p80,
                            "weight_tb_s": weight_bytes / (med * 1e-6) / 1e12,
                            "tflop_s": 2.0 * m * n * k / (med * 1e-6) / 1e12})
                rows.append(row)
                print(json.dumps(row), flush=True)
            del x, a, sx, sa
        del b, sw
        torch.cuda.empty_cache()
    result = {
        "what": "torch._scaled_mm baseline for gemm_fp8 (e4m3 a [M,K], b [N,K], bf16 out): "
                "block scales (1x128 activations, 128x128 weights) and row-wise scales",
        "how": "median of 50 CUDA-event-timed calls, 5 warm-up, L2 flushed by a read of a 2x-L2 buffer and a ~50 us spin kernel before each call (timing.py); "
               "weight_tb_s = N*K bytes / time",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(),
        "rows": rows,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


main()
