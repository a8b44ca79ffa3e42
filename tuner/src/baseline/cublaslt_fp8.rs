//! cuBLASLt FP8 (e4m3 x e4m3, fp32 compute, BF16 out) through cudarc's raw cuBLASLt API: the
//! `gemm_fp8` baseline, with the same block scaling as kiln (1x128 activation scales, 128x128
//! weight scales) and, for shapes where cuBLASLt has no block-scaled kernel (M = 1 among them),
//! with row-wise scales.
//!
//! Row-major Y[M,N] = X[M,K] . W[N,K]^T is computed as the column-major Y^T[N,M] =
//! op(A)[N,K] . op(B)[K,M] with A = W (K x N column-major, ld K, op T) and B = X (K x M
//! column-major, ld K, op N): the "TN" layout, the only one Hopper's FP8 kernels take.
//!
//! Scale layouts (cuBLAS docs, "Scaling factors layouts"; spelled out in PyTorch PR #166752,
//! "Fix DeepSeek scaling tensor handling", whose `_scaled_mm` hands cuBLASLt these buffers
//! as they are):
//!
//! * B = X with `VEC128_32F`: one scale per column of B (token) and 128-wide K block, **token
//!   index fastest**: `[K/128][M]`. kiln's SX is `[M][K/128]`, so it is transposed once per
//!   problem, on the host, before anything is timed.
//! * A = W with `BLK128x128_32F`: one scale per 128 x 128 block, **K-block index fastest**, rows
//!   of `L4 = round_up(K/128, 4)` floats: `[ceil(N/128)][L4]`. kiln's SW is `[ceil(N/128)][K/128]`:
//!   the same when K/128 % 4 == 0 (every Step-3 shape), else copied with padded rows.
//! * Row-wise, `OUTER_VEC_32F` on both: one scale per row of op(A) (N floats, per weight row) and
//!   per column of op(B) (M floats, per token).
//!
//! A wrong layout does not fail a call, it gives a wrong answer; the tuner therefore validates
//! every baseline's output against the reference before it is timed (see `gemm_fp8.rs`).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;
use kiln_codegen::families::gemm_fp8::{GemmFp8Problem, SCALE_BLOCK};
use kiln_runtime::{Device, Result, RuntimeError};

use sys::cublasLtMatmulDescAttributes_t as Desc;
use sys::cublasLtMatmulMatrixScale_t as ScaleMode;

/// Block-scaled: `VEC128_32F` activation scales, `BLK128x128_32F` weight scales.
pub const CUBLASLT_FP8_BLOCK: &str = "cublaslt-fp8-block128";
/// Row-wise: `OUTER_VEC_32F` scales per token and per weight row.
pub const CUBLASLT_FP8_ROWWISE: &str = "cublaslt-fp8-rowwise";
/// The row-wise baseline standing in where cuBLASLt has no block-scaled kernel for the shape.
pub const CUBLASLT_FP8_ROWWISE_FALLBACK: &str = "cublaslt-fp8-rowwise (block NOT_SUPPORTED)";
/// The row-wise baseline standing in where the block-scaled one failed otherwise.
pub const CUBLASLT_FP8_ROWWISE_BLOCK_FAILED: &str = "cublaslt-fp8-rowwise (block failed)";
/// cuBLASLt workspace (NVIDIA's recommendation for Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// The scaling a plan is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Scaling {
    /// 1x128 activation scales, 128x128 weight scales (kiln's own).
    Block128,
    /// One scale per token and one per weight row.
    RowWise,
}

impl Fp8Scaling {
    pub fn name(self) -> &'static str {
        match self {
            Fp8Scaling::Block128 => CUBLASLT_FP8_BLOCK,
            Fp8Scaling::RowWise => CUBLASLT_FP8_ROWWISE,
        }
    }
}

/// Why a baseline could not be built or run.
#[derive(Clone, Debug, PartialEq)]
pub struct LtFailure {
    /// cuBLASLt answered NOT_SUPPORTED (no kernel for this shape and scaling).
    pub not_supported: bool,
    pub reason: String,
}

impl From<LtFailure> for RuntimeError {
    fn from(f: LtFailure) -> Self {
        RuntimeError::Baseline {
            name: "cublaslt-fp8".into(),
            reason: f.reason,
        }
    }
}

/// A cuBLASLt handle and its workspace on one device's stream.
pub struct CublasLtFp8 {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    device: Device,
}

impl CublasLtFp8 {
    pub fn new(device: &Device) -> Result<Self> {
        let err = |reason: String| RuntimeError::Baseline {
            name: CUBLASLT_FP8_BLOCK.into(),
            reason,
        };
        kiln_runtime::cudalib::preload("cublasLt", 13);
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err(err(
                "libcublasLt.so.13 was not found: install the CUDA 13 toolkit or set KILN_CUDA_ROOT"
                    .into(),
            ));
        }
        device
            .ctx
            .bind_to_thread()
            .map_err(|e| err(format!("binding the CUDA context failed: {e:?}")))?;
        let handle = lt::create_handle().map_err(|e| err(format!("cublasLtCreate failed: {e}")))?;
        let workspace = device.zeros::<u8>(WORKSPACE_BYTES, "the cuBLASLt workspace")?;
        Ok(CublasLtFp8 {
            handle,
            workspace,
            stream: device.stream.clone(),
            device: device.clone(),
        })
    }

    /// Build the call for `problem` with `scaling`: the scales are given in kiln's layouts (block:
    /// SX `[M][K/128]`, SW `[ceil(N/128)][K/128]`; row-wise: SX `[M]`, SW `[N]`) and copied to
    /// the device in cuBLASLt's, once; then the heuristic picks an algorithm. Nothing is launched.
    pub fn plan(
        &self,
        problem: &GemmFp8Problem,
        scaling: Fp8Scaling,
        sx: &[f32],
        sw: &[f32],
    ) -> std::result::Result<Fp8Plan, LtFailure> {
        let p = *problem;
        let fail = |reason: String| LtFailure {
            not_supported: false,
            reason,
        };
        if p.m == 0 || p.n == 0 || p.k == 0 || !p.k.is_multiple_of(SCALE_BLOCK) {
            return Err(fail(format!(
                "{p:?}: m, n, k must be positive and k a multiple of 128"
            )));
        }
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let (sa_host, sb_host) = match scaling {
            Fp8Scaling::Block128 => {
                let kb = k / SCALE_BLOCK as usize;
                let nb = n.div_ceil(SCALE_BLOCK as usize);
                if sx.len() != m * kb || sw.len() != nb * kb {
                    return Err(fail(format!(
                        "block scales: SX has {} floats (want {}), SW {} (want {})",
                        sx.len(),
                        m * kb,
                        sw.len(),
                        nb * kb
                    )));
                }
                (
                    pad_weight_scales(sw, nb, kb),
                    transpose_activation_scales(sx, m, kb),
                )
            }
            Fp8Scaling::RowWise => {
                if sx.len() != m || sw.len() != n {
                    return Err(fail(format!(
                        "row-wise scales: SX has {} floats (want {m}), SW {} (want {n})",
                        sx.len(),
                        sw.len()
                    )));
                }
                (sw.to_vec(), sx.to_vec())
            }
        };
        let upload = |h: &[f32], what: &str| {
            self.device
                .upload(h, what)
                .map_err(|e| fail(format!("uploading {what}: {e}")))
        };
        let sa = upload(&sa_host, "the cuBLASLt weight scales")?;
        let sb = upload(&sb_host, "the cuBLASLt activation scales")?;

        let mut plan = Fp8Plan {
            problem: p,
            scaling,
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: None,
            sa,
            sb,
        };
        let call = |what: &str, r: std::result::Result<(), lt::CublasError>| {
            r.map_err(|e| LtFailure {
                not_supported: e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
                reason: format!("{what} failed for {p:?} ({}): {e}", scaling.name()),
            })
        };
        let ty = sys::cudaDataType::CUDA_R_8F_E4M3;
        plan.a = lt::create_matrix_layout(ty, p.k as u64, p.n as u64, p.k as i64)
            .map_err(|e| fail(format!("cublasLtMatrixLayoutCreate(A): {e}")))?;
        plan.b = lt::create_matrix_layout(ty, p.k as u64, p.m as u64, p.k as i64)
            .map_err(|e| fail(format!("cublasLtMatrixLayoutCreate(B): {e}")))?;
        plan.d = lt::create_matrix_layout(
            sys::cudaDataType::CUDA_R_16BF,
            p.n as u64,
            p.m as u64,
            p.n as i64,
        )
        .map_err(|e| fail(format!("cublasLtMatrixLayoutCreate(D): {e}")))?;
        plan.desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| fail(format!("cublasLtMatmulDescCreate: {e}")))?;

        // cublasOperation_t: N = 0, T = 1 (int32 attributes).
        let (op_t, op_n) = (1i32, 0i32);
        let (mode_a, mode_b) = match scaling {
            Fp8Scaling::Block128 => (
                ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
                ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
            ),
            Fp8Scaling::RowWise => (
                ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
                ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
            ),
        };
        let (mode_a, mode_b) = (mode_a as i32, mode_b as i32);
        let stream = &self.stream;
        let sa_ptr = {
            let (ptr, _sync) = plan.sa.device_ptr(stream);
            ptr
        };
        let sb_ptr = {
            let (ptr, _sync) = plan.sb.device_ptr(stream);
            ptr
        };
        // SAFETY: the descriptor was created above and is alive; every buffer passed is a value
        // of the attribute's documented type (int32 for TRANSA/B and the scale modes, a device
        // pointer for the scale pointers) and its exact size. The scale buffers are owned by the
        // plan, so the pointers stay valid as long as the descriptor that holds them.
        unsafe {
            let set = |attr: Desc, v: *const c_void, size: usize| {
                lt::set_matmul_desc_attribute(plan.desc, attr, v, size)
            };
            call(
                "TRANSA",
                set(Desc::CUBLASLT_MATMUL_DESC_TRANSA, ptr_of(&op_t), 4),
            )?;
            call(
                "TRANSB",
                set(Desc::CUBLASLT_MATMUL_DESC_TRANSB, ptr_of(&op_n), 4),
            )?;
            call(
                "A_SCALE_MODE",
                set(Desc::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, ptr_of(&mode_a), 4),
            )?;
            call(
                "B_SCALE_MODE",
                set(Desc::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, ptr_of(&mode_b), 4),
            )?;
            call(
                "A_SCALE_POINTER",
                set(
                    Desc::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                    ptr_of(&sa_ptr),
                    8,
                ),
            )?;
            call(
                "B_SCALE_POINTER",
                set(
                    Desc::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                    ptr_of(&sb_ptr),
                    8,
                ),
            )?;
        }

        let pref = lt::create_matmul_pref()
            .map_err(|e| fail(format!("cublasLtMatmulPreferenceCreate: {e}")))?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: `pref` is alive until destroyed below; the attribute is a u64 of 8 bytes; the
        // heuristic query reads the descriptors created above, all alive.
        let heuristic = unsafe {
            let r = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                ptr_of(&ws),
                8,
            )
            .and_then(|_| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.d,
                    plan.d,
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            r
        };
        let heuristic = heuristic.map_err(|e| LtFailure {
            not_supported: e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            reason: format!(
                "cublasLtMatmulAlgoGetHeuristic answered {e} for m={} n={} k={} with {} scales",
                p.m,
                p.n,
                p.k,
                match scaling {
                    Fp8Scaling::Block128 => "VEC128 activation / BLK128x128 weight",
                    Fp8Scaling::RowWise => "OUTER_VEC (row-wise)",
                }
            ),
        })?;
        if heuristic.workspaceSize > WORKSPACE_BYTES {
            return Err(fail(format!(
                "the chosen algorithm needs {} B of workspace, more than {WORKSPACE_BYTES}",
                heuristic.workspaceSize
            )));
        }
        plan.algo = Some(heuristic.algo);
        Ok(plan)
    }
}

impl Drop for CublasLtFp8 {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// One prepared call: descriptors, the chosen algorithm and the scales in cuBLASLt's layout.
pub struct Fp8Plan {
    pub problem: GemmFp8Problem,
    pub scaling: Fp8Scaling,
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: Option<sys::cublasLtMatmulAlgo_t>,
    /// Weight scales (cuBLASLt's A) and activation scales (its B), bound into `desc`.
    sa: CudaSlice<f32>,
    sb: CudaSlice<f32>,
}

impl Fp8Plan {
    /// Enqueue Y = X . W^T (with the plan's scales) on the handle's stream.
    pub fn run(
        &self,
        lt_: &CublasLtFp8,
        x: &CudaSlice<u8>,
        w: &CudaSlice<u8>,
        y: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        let p = self.problem;
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        for (name, got, need) in [
            ("X", x.len(), m * k),
            ("W", w.len(), n * k),
            ("Y", y.len(), m * n),
        ] {
            if got < need {
                return Err(RuntimeError::BufferTooSmall { name, got, need });
            }
        }
        let algo = self.algo.as_ref().ok_or_else(|| RuntimeError::Baseline {
            name: self.scaling.name().into(),
            reason: "the plan has no algorithm".into(),
        })?;
        let stream = &lt_.stream;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (xp, _rx) = x.device_ptr(stream);
        let (wp, _rw) = w.device_ptr(stream);
        let (_sa, _rsa) = self.sa.device_ptr(stream);
        let (_sb, _rsb) = self.sb.device_ptr(stream);
        let (ws, _rws) = lt_.workspace.device_ptr(stream);
        let (yp, _ry) = y.device_ptr_mut(stream);
        // SAFETY: the buffers hold X[M*K], W[N*K], Y[M*N] (checked above) matching the layouts
        // the plan was built with (A = W: K x N ld K; B = X: K x M ld K; C = D = Y: N x M ld N);
        // the scale buffers bound into the descriptor are owned by this plan; alpha and beta are
        // fp32 host scalars (the descriptor's scale type); the workspace holds WORKSPACE_BYTES,
        // at least what the chosen algorithm asked for (checked in `plan`).
        unsafe {
            lt::matmul(
                lt_.handle,
                self.desc,
                ptr_of(&alpha),
                ptr_of(&beta),
                wp as *const c_void,
                self.a,
                xp as *const c_void,
                self.b,
                yp as *const c_void,
                self.d,
                yp as *mut c_void,
                self.d,
                algo as *const _,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(|e| RuntimeError::Baseline {
            name: self.scaling.name().into(),
            reason: format!("cublasLtMatmul failed for {p:?}: {e}"),
        })
    }
}

impl Drop for Fp8Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created once in `plan` (or is still null) and is
        // destroyed once, here.
        unsafe {
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
        }
    }
}

fn ptr_of<T>(v: &T) -> *const c_void {
    v as *const T as *const c_void
}

/// kiln's SX `[M][KB]` as cuBLASLt's VEC128 layout, token index fastest: `[KB][M]`.
pub fn transpose_activation_scales(sx: &[f32], m: usize, kb: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * kb];
    for r in 0..m {
        for b in 0..kb {
            out[b * m + r] = sx[r * kb + b];
        }
    }
    out
}

/// kiln's SW `[NB][KB]` as cuBLASLt's BLK128x128 layout: rows of `round_up(KB, 4)` floats (the
/// padding is never read; it holds 1.0).
pub fn pad_weight_scales(sw: &[f32], nb: usize, kb: usize) -> Vec<f32> {
    let ld = kb.next_multiple_of(4);
    let mut out = vec![1f32; nb * ld];
    for r in 0..nb {
        out[r * ld..r * ld + kb].copy_from_slice(&sw[r * kb..(r + 1) * kb]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_scales_are_token_fastest() {
        // SX[m][kb] = 10 m + kb, M = 3, KB = 2.
        let sx: Vec<f32> = (0..3)
            .flat_map(|m| (0..2).map(move |b| (10 * m + b) as f32))
            .collect();
        assert_eq!(
            transpose_activation_scales(&sx, 3, 2),
            vec![0.0, 10.0, 20.0, 1.0, 11.0, 21.0]
        );
    }

    #[test]
    fn weight_scale_rows_are_padded_to_four_blocks() {
        let sw = vec![1.5, 2.5, 3.5, 4.5, 5.5, 6.5]; // NB = 2, KB = 3
        assert_eq!(
            pad_weight_scales(&sw, 2, 3),
            vec![1.5, 2.5, 3.5, 1.0, 4.5, 5.5, 6.5, 1.0]
        );
        // KB % 4 == 0 (every Step-3 shape): unchanged.
        let sw: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(pad_weight_scales(&sw, 2, 4), sw);
    }
}
