//! One typed, safe launch per family. Each module holds the family's only
//! `unsafe` launch, with a `SAFETY:` note tying the argument list to the kernel.

pub mod adam;
pub mod fused_norm_rope;
pub mod gemm_bf16;
pub mod gemm_fp8;
pub mod gemm_fp8_ref;
pub mod mfa_decode;
pub mod mlp_jet;
pub mod mlp_jet_backward;
pub mod small_mlp;
pub mod synth_residual;

use cudarc::driver::CudaSlice;

use crate::device::Device;
use crate::error::{Result, RuntimeError};

/// Scratch of a split reduction (split-K GEMM, split-KV attention): fp32
/// partials and per-output arrival counters. Counters start at zero and
/// every launch leaves them at zero again.
pub struct SplitWorkspace {
    pub partials: CudaSlice<f32>,
    pub counters: CudaSlice<u32>,
}

impl SplitWorkspace {
    /// Zeroed buffers of `floats` partials and `counters` counters (at least one each).
    pub fn new(device: &Device, floats: usize, counters: usize, family: &str) -> Result<Self> {
        Ok(SplitWorkspace {
            partials: device.zeros::<f32>(floats, &format!("{family} split partials"))?,
            counters: device.zeros::<u32>(counters, &format!("{family} split counters"))?,
        })
    }
}

/// Render `F`'s template for (problem, config) and compile it through the cache.
#[cfg(feature = "jit")]
pub fn compile_cubin<F: kiln_codegen::Family>(
    compiler: &kiln_codegen::Compiler,
    problem: &F::Problem,
    config: &F::Config,
) -> Result<Vec<u8>> {
    let src = kiln_codegen::render::render::<F>(problem, config)?;
    Ok(compiler
        .compile(&src, &kiln_codegen::CompileOptions::default())?
        .cubin)
}

/// The family can solve `p`, and `c` can serve it.
pub(crate) fn check_serves<F: kiln_codegen::Family>(p: &F::Problem, c: &F::Config) -> Result<()> {
    F::supports(p)?;
    F::check_problem(p, c).map_err(|e| RuntimeError::IllegalConfig {
        config: format!("{c:?}"),
        problem: format!("{p:?}"),
        reason: e.0,
    })
}

/// The launch configuration of a sibling entry (`LoadedKernel::sibling`: default dynamic
/// shared memory only) for `g`.
pub(crate) fn sibling_config(g: &kiln_codegen::LaunchGeometry) -> cudarc::driver::LaunchConfig {
    debug_assert!(g.dynamic_smem_bytes <= crate::kernel::DEFAULT_SMEM_LIMIT);
    cudarc::driver::LaunchConfig {
        grid_dim: (g.grid[0], g.grid[1], g.grid[2]),
        block_dim: (g.block[0], g.block[1], g.block[2]),
        shared_mem_bytes: g.dynamic_smem_bytes,
    }
}

/// A buffer holds at least `need` elements.
pub(crate) fn need(name: &'static str, got: usize, need: usize) -> Result<()> {
    if got < need {
        Err(RuntimeError::BufferTooSmall { name, got, need })
    } else {
        Ok(())
    }
}
