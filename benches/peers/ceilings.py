"""Measured ceilings on this GPU: device-to-device copy bandwidth (bytes read
+ written) and a large BF16 matmul (cuBLAS through torch), on random data,
median of CUDA-event-timed runs. Usage: ceilings.py OUT.json"""
import json
import sys

import torch


def median_ms(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def main():
    out = {}
    n = 2 * 1024**3  # 4 GiB of bf16 each way
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    out["copy_tb_s"] = 2 * src.numel() * 2 / (ms * 1e-3) / 1e12
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = median_ms(lambda: a @ b)
    out["bf16_matmul_8192_tflops"] = 2 * 8192**3 / (ms * 1e-3) / 1e12
    out["torch"] = torch.__version__
    out["device"] = torch.cuda.get_device_name()
    print(json.dumps(out))
    json.dump(out, open(sys.argv[1], "w"))


main()
