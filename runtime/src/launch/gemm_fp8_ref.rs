//! The naive GPU reference for `gemm_fp8` (`templates/gemm_fp8_ref.cu`, no template variables):
//! Y = block-scaled X . W^T with e4m3 decoded bit by bit, fp32 sums per 128-wide K block times
//! both scales, written as fp32 (unrounded) and/or BF16. It serves any M (the tuned kernels and
//! the cuBLASLt baselines are validated against it on shapes too large for the f64 CPU
//! reference), with two helpers in the same module: the norm-wise error of a BF16 output against
//! an fp32 reference, summed on the device, and a NaN fill that poisons an output.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use half::bf16;
use kiln_codegen::families::gemm_fp8::{GemmFp8Problem, SCALE_BLOCK};

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::gemm_fp8::Fp8Operands;
use super::need;

/// The reference source: plain CUDA, compiled through the same NVRTC path as the families.
pub const REFERENCE_SOURCE: &str = include_str!("../../../templates/gemm_fp8_ref.cu");
/// `(X, SX, W, SW, Yf, Yb, M, N, K)`; `Yf` (fp32) and `Yb` (BF16) may be null.
pub const REFERENCE_ENTRY: &str = "kiln_gemm_fp8_ref";
/// `(Y bf16, R f32, n, out f64[3])`: adds sum (Y-R)^2 over finite Y, sum R^2, non-finite count.
pub const ERROR_ENTRY: &str = "kiln_gemm_fp8_ref_err";
/// `(Y u16, n)`: every element set to the BF16 NaN 0x7fc0.
pub const FILL_ENTRY: &str = "kiln_gemm_fp8_ref_fill";

/// Output tile of one reference CTA (tokens x weight rows) and its threads.
const TILE: u32 = 128;
const THREADS: u32 = 256;
/// CTAs of the grid-stride helpers (a few waves over 132 SMs).
const HELPER_CTAS: u64 = 132 * 8;

/// Why the reference cannot run `p` (it does not share the tuned kernels' M limit).
pub fn check_reference_problem(p: &GemmFp8Problem) -> std::result::Result<(), String> {
    if p.m == 0 || p.n == 0 || p.k == 0 {
        return Err("m, n and k must be at least 1".into());
    }
    if !p.k.is_multiple_of(SCALE_BLOCK) {
        return Err(format!(
            "k = {} is not a multiple of 128 (block FP8 scales cover whole 128-channel groups)",
            p.k
        ));
    }
    if p.m.div_ceil(TILE) > 65535 {
        return Err(format!(
            "m = {} needs more than 65535 row tiles of 128",
            p.m
        ));
    }
    if p.n > (1 << 30) || p.k > (1 << 30) {
        return Err("n and k must be at most 2^30".into());
    }
    Ok(())
}

/// Norm-wise error of an output against the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefError {
    /// ||Y - R|| / ||R|| over the finite elements of Y.
    pub rel_err: f64,
    /// Elements of Y that are NaN or infinite.
    pub non_finite: u64,
}

impl RefError {
    /// Finite everywhere and within `tol` (a NaN error fails).
    pub fn passes(&self, tol: f64) -> bool {
        self.non_finite == 0 && self.rel_err <= tol
    }
}

/// The loaded reference module.
pub struct GemmFp8Reference {
    pub kernel: LoadedKernel,
    err: CudaFunction,
    fill: CudaFunction,
}

fn helper_config(n: usize) -> LaunchConfig {
    let ctas = (n as u64).div_ceil(THREADS as u64).clamp(1, HELPER_CTAS) as u32;
    LaunchConfig {
        grid_dim: (ctas, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl GemmFp8Reference {
    pub fn from_cubin(device: &Device, cubin: &[u8]) -> Result<Self> {
        let kernel = LoadedKernel::load(device, cubin, REFERENCE_ENTRY, 0)?;
        let err = kernel.sibling(ERROR_ENTRY)?;
        let fill = kernel.sibling(FILL_ENTRY)?;
        Ok(GemmFp8Reference { kernel, err, fill })
    }

    #[cfg(feature = "jit")]
    pub fn compile(device: &Device, compiler: &kiln_codegen::Compiler) -> Result<Self> {
        let src = kiln_codegen::KernelSource {
            family: "gemm_fp8_ref".into(),
            entry: REFERENCE_ENTRY.into(),
            source: REFERENCE_SOURCE.into(),
        };
        let compiled = compiler.compile(&src, &kiln_codegen::CompileOptions::default())?;
        Self::from_cubin(device, &compiled.cubin)
    }

    /// Enqueue the reference product into `yf` (fp32) and/or `yb` (BF16); at least one.
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &GemmFp8Problem,
        ops: &Fp8Operands<'_>,
        yf: Option<&mut CudaSlice<f32>>,
        yb: Option<&mut CudaSlice<bf16>>,
    ) -> Result<()> {
        let p = problem;
        check_reference_problem(p).map_err(|reason| RuntimeError::IllegalConfig {
            config: REFERENCE_ENTRY.into(),
            problem: format!("{p:?}"),
            reason,
        })?;
        if yf.is_none() && yb.is_none() {
            return Err(RuntimeError::IllegalConfig {
                config: REFERENCE_ENTRY.into(),
                problem: format!("{p:?}"),
                reason: "give an fp32 or a BF16 output (or both)".into(),
            });
        }
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let kb = k / SCALE_BLOCK as usize;
        need("X", ops.x.len(), m * k)?;
        need("SX", ops.sx.len(), m * kb)?;
        need("W", ops.w.len(), n * k)?;
        need("SW", ops.sw.len(), n.div_ceil(SCALE_BLOCK as usize) * kb)?;
        if let Some(y) = &yf {
            need("Yf", y.len(), m * n)?;
        }
        if let Some(y) = &yb {
            need("Yb", y.len(), m * n)?;
        }
        let cfg = LaunchConfig {
            grid_dim: (p.n.div_ceil(TILE), p.m.div_ceil(TILE), 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (mi, ni, ki) = (p.m as i32, p.n as i32, p.k as i32);
        let null: u64 = 0;
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(ops.x).arg(ops.sx).arg(ops.w).arg(ops.sw);
        match yf {
            Some(y) => launch.arg(y),
            None => launch.arg(&null),
        };
        match yb {
            Some(y) => launch.arg(y),
            None => launch.arg(&null),
        };
        launch.arg(&mi).arg(&ni).arg(&ki);
        // SAFETY: matches the reference's signature (X, SX, W, SW, Yf, Yb, M, N, K); a missing
        // output is a null pointer, which the kernel checks before writing; sizes were checked
        // above, and K % 128 == 0 keeps the kernel's 16-byte row loads aligned (cudaMalloc
        // pointers are 256-byte aligned).
        unsafe { launch.launch(cfg) }.during("launching the gemm_fp8 reference")?;
        Ok(())
    }

    /// Set every element of `y` to NaN.
    pub fn poison(&self, stream: &CudaStream, y: &mut CudaSlice<bf16>) -> Result<()> {
        let n = y.len() as i64;
        let mut launch = stream.launch_builder(&self.fill);
        launch.arg(y).arg(&n);
        // SAFETY: (Y, n) with Y holding n two-byte elements; the kernel writes Y[0..n) only.
        unsafe { launch.launch(helper_config(n as usize)) }
            .during("poisoning an output with NaN")?;
        Ok(())
    }

    /// ||y - r|| / ||r|| and the non-finite count, summed on the device (waits for the result).
    pub fn rel_err(
        &self,
        stream: &Arc<CudaStream>,
        y: &CudaSlice<bf16>,
        r: &CudaSlice<f32>,
    ) -> Result<RefError> {
        if y.len() != r.len() {
            return Err(RuntimeError::BufferTooSmall {
                name: "Y (against the reference)",
                got: y.len(),
                need: r.len(),
            });
        }
        let n = y.len() as i64;
        let mut sums = stream
            .alloc_zeros::<f64>(3)
            .during("allocating the error sums")?;
        let mut launch = stream.launch_builder(&self.err);
        launch.arg(y).arg(r).arg(&n).arg(&mut sums);
        // SAFETY: (Y, R, n, out) with Y and R holding n elements (checked above) and out three
        // zeroed doubles; the kernel reads Y[0..n), R[0..n) and atomically adds to out[0..3).
        unsafe { launch.launch(helper_config(n as usize)) }
            .during("launching the gemm_fp8 error reduction")?;
        let s = stream
            .clone_dtoh(&sums)
            .during("reading the error sums (a kernel may have faulted)")?;
        Ok(RefError {
            rel_err: (s[0] / s[1].max(1e-300)).sqrt(),
            non_finite: s[2] as u64,
        })
    }
}
