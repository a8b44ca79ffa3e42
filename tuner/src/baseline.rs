//! Peer baselines measured in the same run as kiln's kernels: cuBLAS for `gemm_bf16`, and
//! cuBLASLt FP8 (block-scaled and row-wise) for `gemm_fp8` ([`cublaslt_fp8`]).

pub mod cublaslt_fp8;

pub use cublaslt_fp8::{
    CublasLtFp8, Fp8Plan, Fp8Scaling, LtFailure, CUBLASLT_FP8_BLOCK, CUBLASLT_FP8_ROWWISE,
    CUBLASLT_FP8_ROWWISE_BLOCK_FAILED, CUBLASLT_FP8_ROWWISE_FALLBACK,
};

use cudarc::cublas::sys::cublasOperation_t as Op;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;
use half::bf16;
use kiln_runtime::{Device, Result, RuntimeError};

/// cuBLAS (cublasGemmEx, BF16 in/out, fp32 compute, default heuristics),
/// computing the same row-major C[M,N] = A[M,K] . B[N,K]^T.
pub struct CublasBf16 {
    blas: CudaBlas,
}

pub const CUBLAS_BF16: &str = "cublas-gemmex-bf16-fp32acc";

impl CublasBf16 {
    pub fn new(device: &Device) -> Result<Self> {
        kiln_runtime::cudalib::preload("cublasLt", 13);
        kiln_runtime::cudalib::preload("cublas", 13);
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(RuntimeError::Baseline {
                name: CUBLAS_BF16.into(),
                reason: "libcublas.so.13 was not found: install the CUDA 13 toolkit or set KILN_CUDA_ROOT".into(),
            });
        }
        let blas = CudaBlas::new(device.stream.clone()).map_err(|e| RuntimeError::Baseline {
            name: CUBLAS_BF16.into(),
            reason: format!("cublasCreate failed: {e:?}"),
        })?;
        Ok(CublasBf16 { blas })
    }

    pub fn gemm(
        &self,
        m: u32,
        n: u32,
        k: u32,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        // Row-major C[M,N] = A . B^T is column-major C^T[N,M] = B[N,K]-as-(K x N)^T . A-as-(K x M).
        let cfg = GemmConfig {
            transa: Op::CUBLAS_OP_T,
            transb: Op::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        let (mu, nu, ku) = (m as usize, n as usize, k as usize);
        for (name, got, need) in [
            ("A", a.len(), mu * ku),
            ("B", b.len(), nu * ku),
            ("C", c.len(), mu * nu),
        ] {
            if got < need {
                return Err(RuntimeError::BufferTooSmall { name, got, need });
            }
        }
        // SAFETY: the buffers hold A[M*K], B[N*K], C[M*N] (checked above),
        // matching the dimensions and leading dimensions in `cfg`.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| RuntimeError::Baseline {
            name: CUBLAS_BF16.into(),
            reason: format!("cublasGemmEx failed: {e:?}"),
        })
    }
}
