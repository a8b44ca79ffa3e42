// kiln gemm_fp8 reference: Y[M,N] = sum over 128-wide K blocks kb of
//   (sum_{k in kb} dec(X[m,k]) * dec(W[n,k])) * SX[m,kb] * SW[n/128,kb]
// with X [M,K] and W [N,K] e4m3 codes, SX [M, K/128] and SW [ceil(N/128), K/128] fp32 row-major,
// K % 128 == 0. It validates the tuned gemm_fp8 kernels (and the cuBLASLt baselines) on shapes
// too large for the f64 CPU reference, so it is written to be obviously right first and fast
// enough second (a 4096 x 36864 x 7168 product in a fraction of a second on an H200):
//
// * e4m3 is decoded bit by bit (below), not through a conversion intrinsic: a code has at most 4
//   significant bits, so the product of two codes is exact in fp32, and the 128 products of one
//   scale block are summed in fp32 in a fixed order (K ascending within each 32-wide chunk).
// * Each block sum is multiplied by SX * SW (fp32) and added to an fp32 total.
// * Output: the fp32 total (Yf, the unrounded reference) and/or its BF16 rounding (Yb, round to
//   nearest even); either pointer may be null.
//
// Tiling: a CTA of 256 threads owns a 128 x 128 tile of Y (128 tokens x 128 weight rows, so one
// weight-scale row); 32-byte K chunks of X and W are decoded to fp32 in shared memory, and each
// thread accumulates an 8 x 8 sub-tile (rows ty + 16 i, columns tx + 16 j: conflict-free reads).
//
// Two helpers share the module: kiln_gemm_fp8_ref_err sums ||Y - R||^2, ||R||^2 and the count of
// non-finite Y on the device (no 300 MB download per validation), and kiln_gemm_fp8_ref_fill
// poisons a BF16 buffer with NaN.
#include <cuda_bf16.h>

#define KILN_TILE 128
#define KILN_KC 32
#define KILN_THREADS 256

// e4m3 (bias 7, no infinities; S.1111.111 is NaN): normal (8 + m) * 2^(e - 10), subnormal m * 2^-9.
__device__ __forceinline__ float kiln_e4m3_decode(unsigned int c)
{
    const unsigned int e = (c >> 3) & 15u;
    const unsigned int m = c & 7u;
    float v;
    if (e == 15u && m == 7u) {
        v = __int_as_float(0x7fc00000);
    } else if (e == 0u) {
        v = ldexpf(static_cast<float>(m), -9);
    } else {
        v = ldexpf(static_cast<float>(8u + m), static_cast<int>(e) - 10);
    }
    return (c & 0x80u) ? -v : v;
}

extern "C" __global__ void __launch_bounds__(KILN_THREADS)
kiln_gemm_fp8_ref(const unsigned char* __restrict__ X, const float* __restrict__ SX,
                  const unsigned char* __restrict__ W, const float* __restrict__ SW,
                  float* __restrict__ Yf, __nv_bfloat16* __restrict__ Yb, int M, int N, int K)
{
    __shared__ float xs[KILN_KC][KILN_TILE];
    __shared__ float ws[KILN_KC][KILN_TILE];
    __shared__ float lut[256];

    const int tid = threadIdx.x;
    const int tx = tid & 15;
    const int ty = tid >> 4;
    const long long row0 = static_cast<long long>(blockIdx.y) * KILN_TILE;
    const long long col0 = static_cast<long long>(blockIdx.x) * KILN_TILE;
    const int kblocks = K >> 7;
    // The tile's 128 weight rows start on a multiple of 128: one weight-scale row.
    const long long nb = col0 >> 7;

    lut[tid] = kiln_e4m3_decode(static_cast<unsigned int>(tid));

    // Loader: thread -> row lr of the tile, 16 bytes at K offset lk of each 32-byte chunk.
    const int lr = tid >> 1;
    const int lk = (tid & 1) * 16;
    const bool xin = row0 + lr < M;
    const bool win = col0 + lr < N;
    const unsigned char* xp = X + (xin ? row0 + lr : 0) * static_cast<long long>(K) + lk;
    const unsigned char* wp = W + (win ? col0 + lr : 0) * static_cast<long long>(K) + lk;

    float total[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) total[i][j] = 0.0f;

    __syncthreads();
    for (int kb = 0; kb < kblocks; ++kb) {
        float acc[8][8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

        for (int kc = 0; kc < 128; kc += KILN_KC) {
            const long long k0 = static_cast<long long>(kb) * 128 + kc;
            // Rows past M or N read as code 0 (= 0.0).
            const uint4 xv = xin ? *reinterpret_cast<const uint4*>(xp + k0) : make_uint4(0, 0, 0, 0);
            const uint4 wv = win ? *reinterpret_cast<const uint4*>(wp + k0) : make_uint4(0, 0, 0, 0);
            const unsigned int xw[4] = {xv.x, xv.y, xv.z, xv.w};
            const unsigned int ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
            for (int q = 0; q < 4; ++q)
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    xs[lk + 4 * q + b][lr] = lut[(xw[q] >> (8 * b)) & 0xffu];
                    ws[lk + 4 * q + b][lr] = lut[(ww[q] >> (8 * b)) & 0xffu];
                }
            __syncthreads();
#pragma unroll 4
            for (int kk = 0; kk < KILN_KC; ++kk) {
                float a[8], w[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
                for (int j = 0; j < 8; ++j) w[j] = ws[kk][tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
            }
            __syncthreads();
        }

        const float sw = (col0 < N) ? SW[nb * kblocks + kb] : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const long long r = row0 + ty + 16 * i;
            const float s = (r < M ? SX[r * kblocks + kb] : 0.0f) * sw;
#pragma unroll
            for (int j = 0; j < 8; ++j) total[i][j] = fmaf(acc[i][j], s, total[i][j]);
        }
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const long long r = row0 + ty + 16 * i;
        if (r >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const long long c = col0 + tx + 16 * j;
            if (c >= N) continue;
            const long long at = r * N + c;
            if (Yf) Yf[at] = total[i][j];
            if (Yb) Yb[at] = __float2bfloat16_rn(total[i][j]);
        }
    }
}

// out[0] += sum over finite Y of (Y - R)^2, out[1] += sum of R^2, out[2] += count of non-finite Y
// (out zeroed by the caller). Grid-stride; a warp-shuffle and shared-memory reduction per CTA,
// then one double atomicAdd per CTA and sum.
extern "C" __global__ void __launch_bounds__(KILN_THREADS)
kiln_gemm_fp8_ref_err(const __nv_bfloat16* __restrict__ Y, const float* __restrict__ R, long long n,
                      double* __restrict__ out)
{
    double d2 = 0.0, r2 = 0.0, bad = 0.0;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float y = __bfloat162float(Y[i]);
        const double r = R[i];
        if (isfinite(y)) {
            const double d = static_cast<double>(y) - r;
            d2 += d * d;
        } else {
            bad += 1.0;
        }
        r2 += r * r;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        d2 += __shfl_down_sync(0xffffffffu, d2, off);
        r2 += __shfl_down_sync(0xffffffffu, r2, off);
        bad += __shfl_down_sync(0xffffffffu, bad, off);
    }
    __shared__ double part[3][KILN_THREADS / 32];
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) {
        part[0][warp] = d2;
        part[1][warp] = r2;
        part[2][warp] = bad;
    }
    __syncthreads();
    if (threadIdx.x < 3) {
        double s = 0.0;
        for (int w = 0; w < KILN_THREADS / 32; ++w) s += part[threadIdx.x][w];
        atomicAdd(out + threadIdx.x, s);
    }
}

// Every element of Y (n BF16 values) set to NaN (0x7fc0).
extern "C" __global__ void __launch_bounds__(KILN_THREADS)
kiln_gemm_fp8_ref_fill(unsigned short* __restrict__ Y, long long n)
{
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
        Y[i] = 0x7fc0u;
}
