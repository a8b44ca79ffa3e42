// kiln gemm_bf16 reference: C[M,N] = A[M,K] * B[N,K]^T, one thread per output element,
// fp32 accumulation in K order, bf16 out (round to nearest even). Deliberately naive: it
// validates the tuned kernels on shapes too large for the CPU reference.
#include <cuda_bf16.h>

extern "C" __global__ void kiln_gemm_bf16_ref(const __nv_bfloat16* __restrict__ A,
                                              const __nv_bfloat16* __restrict__ B,
                                              __nv_bfloat16* __restrict__ C, int M, int N, int K)
{
    const long long total = static_cast<long long>(M) * N;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long row = idx / N;
        const long long col = idx % N;
        const __nv_bfloat16* a = A + row * K;
        const __nv_bfloat16* b = B + col * K;
        float sum = 0.0f;
        for (int k = 0; k < K; ++k) sum = fmaf(__bfloat162float(a[k]), __bfloat162float(b[k]), sum);
        C[idx] = __float2bfloat16_rn(sum);
    }
}
