/*
 * kiln.h: the C ABI of kiln-runtime (libkiln_runtime.so).
 *
 * Load the tuned kernels of a `kiln export DIR` folder (manifest.json + one .cubin per kernel)
 * into your own CUDA context and launch them on your own streams and device pointers:
 *
 *     kiln_set* set;            kiln_open("export", &set);              // no GPU work
 *     cudaSetDevice(0);         cudaFree(0);                            // a current context
 *     const kiln_kernel* k;     kiln_find(set, "gemm_bf16", "{\"m\":1,\"n\":2560,\"k\":7168}", &k);
 *     kiln_gemm_bf16(k, stream, A, B, C, workspace, counters, 1, 2560, 7168);
 *     ...
 *     kiln_close(set);          // before the context is destroyed
 *
 * Every function returns a kiln_status; on failure kiln_last_error() says what went wrong and
 * what to do. No function aborts the process: internal panics become KILN_ERR_INTERNAL.
 *
 * Threads: kiln_find, the kiln_kernel_* queries and the launches may be called from several
 * threads at once on one set. kiln_close must not race with any other call on its set.
 *
 * Keep in step with runtime/src/capi.rs (its header_* tests check names and values).
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What every function returns. */
typedef enum kiln_status {
    KILN_OK = 0,
    /* A NULL or malformed argument, an index out of range, or a problem the kernel was not
     * exported for. */
    KILN_ERR_INVALID_ARGUMENT = 1,
    /* No CUDA driver (libcuda.so) could be loaded on this machine. */
    KILN_ERR_NO_DRIVER = 2,
    /* The calling thread has no current CUDA context. */
    KILN_ERR_NO_CONTEXT = 3,
    /* The manifest has no kernel for that family and problem. */
    KILN_ERR_NOT_FOUND = 4,
    /* manifest.json or a cubin is missing, unreadable, inconsistent or corrupt. */
    KILN_ERR_MANIFEST = 5,
    /* The driver refused the cubin, its entry point or its shared-memory size. */
    KILN_ERR_LOAD = 6,
    /* The driver refused the launch. */
    KILN_ERR_LAUNCH = 7,
    /* A bug in kiln; the message says where. */
    KILN_ERR_INTERNAL = 8,
} kiln_status;

/* An open export folder and the kernels loaded from it. */
typedef struct kiln_set kiln_set;

/* One exported kernel loaded into one CUDA context; owned by its set. */
typedef struct kiln_kernel kiln_kernel;

/* What kiln_kernel_info reports. Strings are owned by the set. */
typedef struct kiln_kernel_desc {
    const char* entry;            /* the kernel's entry point */
    const char* family;           /* e.g. "gemm_bf16" */
    uint32_t grid[3];             /* for the exact problem the kernel was found for */
    uint32_t block[3];
    uint32_t cluster[3];          /* thread-block cluster; {1, 1, 1}: none */
    uint32_t dynamic_smem_bytes;
    size_t num_args;              /* see kiln_kernel_arg */
    size_t num_scratch;           /* see kiln_kernel_scratch */
} kiln_kernel_desc;

/* Open an export folder: read and check DIR/manifest.json (and that each cubin exists). Does no
 * GPU work and needs no driver. On success *out is a set to free with kiln_close; on failure it
 * is NULL (KILN_ERR_MANIFEST: missing, unreadable or inconsistent manifest). */
kiln_status kiln_open(const char* export_dir, kiln_set** out);

/* Free a set: unload its kernels' modules (each from the context it was loaded into) and free
 * every kernel handle and string it gave out. Call it before destroying those contexts
 * (cudaDeviceReset, cuCtxDestroy). NULL is allowed. */
void kiln_close(kiln_set* set);

/* The kernel exported for exactly this family and problem. problem_json is a JSON object
 * compared with the manifest's as a value (key order and spacing do not matter, 1 and 1.0 do),
 * e.g. "{\"m\":1,\"n\":2560,\"k\":7168}" for gemm_bf16. The cubin is hash-checked and loaded
 * into the calling thread's current CUDA context (make one current first: cudaSetDevice +
 * cudaFree(0), or cuCtxSetCurrent); large dynamic shared memory is opted in. A kernel is loaded
 * once per context: later calls return the same handle, valid until kiln_close.
 * Errors: KILN_ERR_NOT_FOUND (the message lists the problems the manifest has),
 * KILN_ERR_NO_DRIVER, KILN_ERR_NO_CONTEXT, KILN_ERR_MANIFEST (cubin corrupt), KILN_ERR_LOAD. */
kiln_status kiln_find(kiln_set* set, const char* family, const char* problem_json, const kiln_kernel** out);

/* Entry name, launch geometry and argument counts of a kernel. */
kiln_status kiln_kernel_info(const kiln_kernel* kernel, kiln_kernel_desc* out);

/* Name and C type (e.g. "const __nv_bfloat16*", "int") of argument i, in launch order.
 * Either out-pointer may be NULL. KILN_ERR_INVALID_ARGUMENT if i >= num_args. */
kiln_status kiln_kernel_arg(const kiln_kernel* kernel, size_t i, const char** name, const char** c_type);

/* Scratch buffer i: the argument it is passed as, its size in bytes, and whether it must be
 * zeroed once before the first launch (zero_init = 1; the kernel leaves it zeroed again, so later
 * launches and CUDA-graph replays need no memset). The caller allocates it; two launches that may
 * run concurrently must not share scratch. A 0-byte buffer may be NULL. Any out-pointer may be
 * NULL. KILN_ERR_INVALID_ARGUMENT if i >= num_scratch. */
kiln_status kiln_kernel_scratch(const kiln_kernel* kernel, size_t i, const char** arg_name, size_t* bytes, int* zero_init);

/* Enqueue a kernel on stream (a CUstream or cudaStream_t of the kernel's context; NULL: the
 * default stream) with the manifest's launch geometry. args[i] points at the value of argument
 * i, in the order kiln_kernel_arg gives, as cuLaunchKernel's kernelParams. Asynchronous: a fault
 * inside the kernel shows up at the next synchronisation. Checks that no args[i] is NULL and
 * that no non-empty scratch pointer is NULL; KILN_ERR_LAUNCH if the driver refuses. */
kiln_status kiln_launch(const kiln_kernel* kernel, void* stream, void** args);

/* C[M,N] = A[M,K] . B[N,K]^T, bf16, row-major, fp32 accumulation, with a "gemm_bf16" kernel.
 * The kernel must have been found for exactly this M, N, K (its grid is that problem's):
 * KILN_ERR_INVALID_ARGUMENT otherwise. workspace and counters are its scratch buffers (see
 * kiln_kernel_scratch; counters zeroed once after allocation); counters must not be NULL when
 * the kernel splits K (grid[2] > 1: one unsigned int per output tile, grid[0] of them). A and B must be 16-byte aligned
 * and C 4-byte aligned (any cudaMalloc pointer is). Forwards to kiln_launch. */
kiln_status kiln_gemm_bf16(const kiln_kernel* kernel, void* stream, const void* A, const void* B, void* C,
                           void* workspace, void* counters, int M, int N, int K);

/* Y[M,N] = X[M,K] . W[N,K]^T in DeepSeek-V3 block FP8 with a "gemm_fp8" kernel found for exactly
 * this M, N, K: X, W e4m3 codes (row-major, 16-byte aligned), SX [M, K/128] and
 * SW [ceil(N/128), K/128] fp32 scales, Y bf16 [M, N]. workspace and counters as for
 * kiln_gemm_bf16. gemm_fp8 kernels take two more arguments, CUtensorMaps of X and W passed by
 * value (TMA variants read their operands through them); this call encodes them
 * (cuTensorMapEncodeTiled) for the kernel's config and launches. KILN_ERR_INVALID_ARGUMENT for
 * another kernel, another problem, a NULL operand or an X/W address the tensor map cannot
 * take. Forwards to kiln_launch. */
kiln_status kiln_gemm_fp8(const kiln_kernel* kernel, void* stream, const void* X, const void* SX, const void* W,
                          const void* SW, void* Y, void* workspace, void* counters, int M, int N, int K);

/* What this thread's last failed kiln call went wrong on ("" after a success). Valid until the
 * thread's next kiln call; never NULL. */
const char* kiln_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* KILN_H */
