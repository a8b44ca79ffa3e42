// kiln: the bf16 store of a wgmma GEMM tile, shared by gemm_bf16's and gemm_fp8's wgmma kernels
// (prepended to each template's text by its family).
//
// A warp holds 16 rows x 8 NI columns of fp32 accumulators in the wgmma D-fragment layout: for
// n8 block j, lane (g = lane / 4, t = lane % 4) has rows g and g + 8, columns 8j + 2t and
// 8j + 2t + 1 (acc[j][0..1] and acc[j][2..3]). Stored one element pair at a time, a warp writes
// 16-byte pieces of 8 rows per instruction: half-used 32-byte sectors, and each store waits on
// the previous one's address registers. Staged, the warp writes its rows, 64 columns at a time,
// into its own buffer in shared memory in fragment order and reads them back as 16-byte pieces,
// so each row of a chunk leaves as one contiguous 128-byte segment. Buffer rows are
// KILN_EPI_ROW = 144 bytes apart: lane (g, t)'s 4-byte writes of a row-g element fall in bank
// 4g + t (+ a constant), 32 distinct banks; eight lanes reading one row read 128 contiguous
// bytes.

#include <cuda_bf16.h>

constexpr int KILN_EPI_BLOCKS = 8;                          // n8 blocks per chunk (64 columns)
constexpr int KILN_EPI_ROW = 144;                           // bytes per buffer row (the families' EPI_ROW)
static_assert(KILN_EPI_ROW == KILN_EPI_BLOCKS * 16 + 16, "64 bf16 and 16 bytes of padding");
constexpr int KILN_EPI_WARP_BYTES = 16 * KILN_EPI_ROW;      // one warp's buffer

// Whether the staged store serves this output: whole 16-byte pieces per row (N % 8 == 0) at
// 16-byte-aligned addresses.
__device__ __forceinline__ bool kiln_epi_staged_ok(const __nv_bfloat16* y, int n) {
    return (n & 7) == 0 && (reinterpret_cast<unsigned long long>(y) & 15) == 0;
}

// Stores the warp's rows row0 .. row0 + 15 (those below m), columns col0 .. col0 + 8 NI - 1
// (those below n) of the row-major [m, n] bf16 matrix y, rounding to nearest even, through the
// warp's buffer `ebuf` (KILN_EPI_WARP_BYTES of shared memory). Needs kiln_epi_staged_ok.
template <int NI>
__device__ __forceinline__ void kiln_epi_store_staged(const float (&acc)[NI][4], char* ebuf, __nv_bfloat16* y,
                                                      int row0, int col0, int m, int n, int lane) {
    const int g = lane >> 2;
    const int t = lane & 3;
#pragma unroll
    for (int c0 = 0; c0 < NI; c0 += KILN_EPI_BLOCKS) {
        const int cb = NI - c0 < KILN_EPI_BLOCKS ? NI - c0 : KILN_EPI_BLOCKS;  // n8 blocks in the chunk
        __syncwarp();  // the previous chunk has been read back
#pragma unroll
        for (int jj = 0; jj < KILN_EPI_BLOCKS; ++jj) {
            if (jj < cb) {
                const __nv_bfloat162 lo = __floats2bfloat162_rn(acc[c0 + jj][0], acc[c0 + jj][1]);
                const __nv_bfloat162 hi = __floats2bfloat162_rn(acc[c0 + jj][2], acc[c0 + jj][3]);
                *reinterpret_cast<__nv_bfloat162*>(ebuf + g * KILN_EPI_ROW + (8 * jj + 2 * t) * 2) = lo;
                *reinterpret_cast<__nv_bfloat162*>(ebuf + (g + 8) * KILN_EPI_ROW + (8 * jj + 2 * t) * 2) = hi;
            }
        }
        __syncwarp();
        // 16 rows x cb pieces of 8 columns; with n % 8 == 0 a piece is wholly inside or past n.
#pragma unroll
        for (int i = 0; i < (16 * KILN_EPI_BLOCKS) / 32; ++i) {
            const int idx = lane + 32 * i;
            if (idx < 16 * cb) {
                const int r = idx / cb, piece = idx % cb;
                const int row = row0 + r;
                const int col = col0 + (c0 + piece) * 8;
                if (row < m && col < n) {
                    const uint4 v = *reinterpret_cast<const uint4*>(ebuf + r * KILN_EPI_ROW + piece * 16);
                    *reinterpret_cast<uint4*>(y + static_cast<long long>(row) * n + col) = v;
                }
            }
        }
    }
}

