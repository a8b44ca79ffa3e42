/*
 * gemm_bf16 EXPORT_DIR [M N K]: run a kiln-exported gemm_bf16 kernel from C.
 *
 * C[M,N] = A[M,K] . B[N,K]^T in bf16 (default M=1 N=2560 K=7168), through kiln.h on a stream
 * this program creates with the CUDA runtime. Checks that every output is finite, compares
 * with a double-precision CPU reference (norm-wise relative error; all of C when M*N*K <= 2e9,
 * else a sample of rows), and times 20 launches with CUDA events. Exits non-zero on any kiln
 * or CUDA error, or when the error is over 1e-2.
 *
 * Build: examples/c/build.sh [OUT]. bf16 values are handled as uint16_t bit patterns, so the
 * program needs no cuda_bf16.h. Link with -lkiln_runtime -lcudart.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h> /* the CUDA runtime's C API (cuda_runtime.h adds C++ only) */

#include "kiln.h"

#define MAX_REL_ERR 1e-2
#define TIMED_LAUNCHES 20
/* Beyond this many multiply-adds the reference checks a sample of rows only. */
#define FULL_CHECK_MACS 2e9
#define SAMPLE_ROWS 16

static void cuda_check(cudaError_t e, const char* what, int line) {
    if (e != cudaSuccess) {
        fprintf(stderr, "gemm_bf16: %s failed (line %d): %s: %s\n", what, line, cudaGetErrorName(e),
                cudaGetErrorString(e));
        exit(1);
    }
}
#define CUDA_CHECK(call) cuda_check((call), #call, __LINE__)

static void kiln_check(kiln_status s, const char* what) {
    if (s != KILN_OK) {
        fprintf(stderr, "gemm_bf16: %s failed (status %d): %s\n", what, (int)s, kiln_last_error());
        exit(1);
    }
}

/* float -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. */
static uint16_t bf16_from_float(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int bf16_is_finite(uint16_t h) { return (h & 0x7f80u) != 0x7f80u; }

/* xorshift64*: uniform in [-1, 1). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float uniform(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

static int parse_dim(const char* s, const char* name) {
    char* end = NULL;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0 || v > (1L << 30)) {
        fprintf(stderr, "gemm_bf16: %s must be a positive integer up to 2^30, got '%s'\n", name, s);
        exit(2);
    }
    return (int)v;
}

static void* device_alloc(size_t bytes) {
    void* p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
}

static int compare_floats(const void* a, const void* b) {
    float x = *(const float*)a, y = *(const float*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    if (argc != 2 && argc != 5) {
        fprintf(stderr, "usage: %s EXPORT_DIR [M N K]   (default M=1 N=2560 K=7168)\n", argv[0]);
        return 2;
    }
    const char* dir = argv[1];
    int M = 1, N = 2560, K = 7168;
    if (argc == 5) {
        M = parse_dim(argv[2], "M");
        N = parse_dim(argv[3], "N");
        K = parse_dim(argv[4], "K");
    }

    /* Reading the manifest needs no GPU. */
    kiln_set* set = NULL;
    kiln_check(kiln_open(dir, &set), "kiln_open");

    /* kiln loads kernels into the calling thread's current context: make the primary one current. */
    CUDA_CHECK(cudaSetDevice(0));
    CUDA_CHECK(cudaFree(0));
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);

    char problem[128];
    snprintf(problem, sizeof problem, "{\"m\":%d,\"n\":%d,\"k\":%d}", M, N, K);
    const kiln_kernel* kernel = NULL;
    kiln_check(kiln_find(set, "gemm_bf16", problem, &kernel), "kiln_find");
    kiln_kernel_desc desc;
    kiln_check(kiln_kernel_info(kernel, &desc), "kiln_kernel_info");
    printf("kernel: %s  grid [%u,%u,%u]  block [%u,%u,%u]  dynamic smem %u B\n", desc.entry, desc.grid[0],
           desc.grid[1], desc.grid[2], desc.block[0], desc.block[1], desc.block[2], desc.dynamic_smem_bytes);

    /* Scratch, by the argument each buffer is passed as. */
    void* workspace = NULL;
    void* counters = NULL;
    for (size_t i = 0; i < desc.num_scratch; i++) {
        const char* name = NULL;
        size_t bytes = 0;
        int zero_init = 0;
        kiln_check(kiln_kernel_scratch(kernel, i, &name, &bytes, &zero_init), "kiln_kernel_scratch");
        void** slot = strcmp(name, "workspace") == 0 ? &workspace : strcmp(name, "counters") == 0 ? &counters : NULL;
        if (slot == NULL) {
            fprintf(stderr, "gemm_bf16: unknown scratch buffer '%s' (this example knows workspace, counters)\n", name);
            return 1;
        }
        if (bytes > 0) {
            *slot = device_alloc(bytes);
            if (zero_init) CUDA_CHECK(cudaMemset(*slot, 0, bytes));
        }
        printf("scratch: %s %zu B%s\n", name, bytes, zero_init ? " (zeroed once)" : "");
    }

    /* Random inputs, rounded to bf16; the reference uses the rounded values. */
    size_t a_len = (size_t)M * K, b_len = (size_t)N * K, c_len = (size_t)M * N;
    uint16_t* hA = malloc(a_len * sizeof *hA);
    uint16_t* hB = malloc(b_len * sizeof *hB);
    uint16_t* hC = malloc(c_len * sizeof *hC);
    if (!hA || !hB || !hC) {
        fprintf(stderr, "gemm_bf16: out of host memory\n");
        return 1;
    }
    for (size_t i = 0; i < a_len; i++) hA[i] = bf16_from_float(uniform());
    for (size_t i = 0; i < b_len; i++) hB[i] = bf16_from_float(uniform());

    void* dA = device_alloc(a_len * 2);
    void* dB = device_alloc(b_len * 2);
    void* dC = device_alloc(c_len * 2);
    CUDA_CHECK(cudaMemcpy(dA, hA, a_len * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dB, hB, b_len * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(dC, 0xff, c_len * 2)); /* NaN bits: an unwritten output fails the check */

    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreate(&stream));
    kiln_check(kiln_gemm_bf16(kernel, stream, dA, dB, dC, workspace, counters, M, N, K), "kiln_gemm_bf16");
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpy(hC, dC, c_len * 2, cudaMemcpyDeviceToHost));

    size_t nonfinite = 0;
    for (size_t i = 0; i < c_len; i++) nonfinite += !bf16_is_finite(hC[i]);

    /* Reference in double: every row, or SAMPLE_ROWS rows spread over M. */
    double macs = (double)M * N * K;
    int rows = macs <= FULL_CHECK_MACS || M <= SAMPLE_ROWS ? M : SAMPLE_ROWS;
    double* arow = malloc((size_t)K * sizeof *arow);
    if (!arow) {
        fprintf(stderr, "gemm_bf16: out of host memory\n");
        return 1;
    }
    double err2 = 0.0, ref2 = 0.0;
    for (int r = 0; r < rows; r++) {
        int i = rows == M ? r : (int)((long long)r * (M - 1) / (SAMPLE_ROWS - 1));
        for (int k = 0; k < K; k++) arow[k] = bf16_to_float(hA[(size_t)i * K + k]);
        for (int j = 0; j < N; j++) {
            const uint16_t* b = hB + (size_t)j * K;
            double acc = 0.0;
            for (int k = 0; k < K; k++) acc += arow[k] * (double)bf16_to_float(b[k]);
            double d = (double)bf16_to_float(hC[(size_t)i * N + j]) - acc;
            err2 += d * d;
            ref2 += acc * acc;
        }
    }
    double rel = ref2 > 0.0 ? sqrt(err2 / ref2) : sqrt(err2);
    printf("check: %zu non-finite outputs; ||C - ref|| / ||ref|| = %.3e over %d of %d rows (double-precision CPU reference)\n",
           nonfinite, rel, rows, M);

    /* Timing: 20 launches, each between two events, after writing a buffer of twice the L2 size
     * so that no operand is served from L2. */
    size_t flush_bytes = 2 * (size_t)(prop.l2CacheSize > 0 ? prop.l2CacheSize : 64 << 20);
    void* flush = device_alloc(flush_bytes);
    cudaEvent_t ev[2 * TIMED_LAUNCHES];
    for (int i = 0; i < 2 * TIMED_LAUNCHES; i++) CUDA_CHECK(cudaEventCreate(&ev[i]));
    kiln_check(kiln_gemm_bf16(kernel, stream, dA, dB, dC, workspace, counters, M, N, K), "kiln_gemm_bf16 (warm-up)");
    for (int i = 0; i < TIMED_LAUNCHES; i++) {
        CUDA_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes, stream));
        CUDA_CHECK(cudaEventRecord(ev[2 * i], stream));
        kiln_check(kiln_gemm_bf16(kernel, stream, dA, dB, dC, workspace, counters, M, N, K), "kiln_gemm_bf16");
        CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
    float us[TIMED_LAUNCHES];
    for (int i = 0; i < TIMED_LAUNCHES; i++) {
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
        us[i] = ms * 1000.0f;
    }
    qsort(us, TIMED_LAUNCHES, sizeof us[0], compare_floats);
    float median = 0.5f * (us[TIMED_LAUNCHES / 2 - 1] + us[TIMED_LAUNCHES / 2]);
    printf("time: median %.2f us of %d launches (CUDA events, L2 flushed before each), %.1f GB/s of A+B+C\n", median,
           TIMED_LAUNCHES, 2.0 * ((double)a_len + b_len + c_len) / (median * 1e3));

    for (int i = 0; i < 2 * TIMED_LAUNCHES; i++) CUDA_CHECK(cudaEventDestroy(ev[i]));
    CUDA_CHECK(cudaStreamDestroy(stream));
    kiln_close(set);
    CUDA_CHECK(cudaFree(dA));
    CUDA_CHECK(cudaFree(dB));
    CUDA_CHECK(cudaFree(dC));
    CUDA_CHECK(cudaFree(workspace));
    CUDA_CHECK(cudaFree(counters));
    CUDA_CHECK(cudaFree(flush));
    free(hA);
    free(hB);
    free(hC);
    free(arow);

    if (nonfinite > 0 || !(rel <= MAX_REL_ERR)) {
        fprintf(stderr, "gemm_bf16: FAILED (%zu non-finite, relative error %.3e, limit %.0e)\n", nonfinite, rel,
                MAX_REL_ERR);
        return 1;
    }
    printf("gemm_bf16: OK\n");
    return 0;
}
