// kiln activation quantiser for gemm_fp8: X [M,K] bf16 -> XQ [M,K] e4m3 codes and SX [M, K/128]
// fp32 scales, one scale per token and 128-channel group (K % 128 == 0):
//   amax = max(max |x| over the group, KILN_AMAX_FLOOR); scale = amax / 448;
//   code = e4m3(x / scale), round to nearest even, saturating to +-448.
// Every step is exactly rounded fp32 (IEEE division, no fast math), so the codes and scales
// equal the Rust encoder's (`gemm_fp8::fp8::quantize_blockwise`) bit for bit.
// One warp per group: lane l holds elements 4l .. 4l+3 (8 bytes in, 4 bytes out).
#include <cuda_bf16.h>

#define KILN_AMAX_FLOOR 1e-4f

// Two floats to two e4m3 codes (lo in the low byte).
__device__ __forceinline__ unsigned short kiln_e4m3x2(float lo, float hi) {
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}

extern "C" __global__ void __launch_bounds__(256)
kiln_quant_fp8(const __nv_bfloat16* __restrict__ X, unsigned char* __restrict__ XQ,
               float* __restrict__ SX, int M, int K)
{
    const int lane = threadIdx.x & 31;
    const long long groups_per_row = K >> 7;
    const long long groups = static_cast<long long>(M) * groups_per_row;
    const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x >> 5);
    for (long long grp = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); grp < groups;
         grp += warps) {
        const long long row = grp / groups_per_row;
        const long long col = (grp % groups_per_row) * 128 + lane * 4;
        const long long at = row * K + col;
        const uint2 raw = *reinterpret_cast<const uint2*>(X + at);
        float v[4];
        v[0] = __uint_as_float(raw.x << 16);
        v[1] = __uint_as_float(raw.x & 0xffff0000u);
        v[2] = __uint_as_float(raw.y << 16);
        v[3] = __uint_as_float(raw.y & 0xffff0000u);
        float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
        const float scale = fmaxf(amax, KILN_AMAX_FLOOR) / 448.0f;
        const unsigned lo = kiln_e4m3x2(v[0] / scale, v[1] / scale);
        const unsigned hi = kiln_e4m3x2(v[2] / scale, v[3] / scale);
        *reinterpret_cast<unsigned*>(XQ + at) = lo | (hi << 16);
        if (lane == 0) SX[grp] = scale;
    }
}
