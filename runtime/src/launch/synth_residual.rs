//! Launching `synth_residual`: the fused PDE-residual loss of a basis synthesis and its
//! gradients w.r.t. the coefficients and the basis streams (two entries: the fused kernel,
//! then the ordered reduction of its partials). See the family module for the loss, the
//! layouts and the launch contract.

pub use cudarc::driver::CudaSlice;
use cudarc::driver::{CudaFunction, CudaStream, PushKernelArg};
use kiln_codegen::families::synth_residual::{
    self as fam, Forcing, Residual, SynthResidual, SynthResidualConfig, SynthResidualProblem,
};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// The inputs of one call (device buffers, kiln's layouts).
#[derive(Clone, Copy)]
pub struct SynthResidualInputs<'a> {
    /// `[B, p]`.
    pub c_u: &'a CudaSlice<f32>,
    /// `[B, p]`; elliptic only (`None` for poisson).
    pub c_k: Option<&'a CudaSlice<f32>>,
    /// `[n_x, S, p]`.
    pub basis: &'a CudaSlice<f32>,
    /// `[B, n_x]` or `[n_x]`, as the problem's forcing says.
    pub f: &'a CudaSlice<f32>,
}

/// Where a call writes: the loss `[1]`, and the gradients the problem asks for.
pub struct SynthResidualOutputs<'a> {
    pub loss: &'a mut CudaSlice<f32>,
    /// `[B, p]` when `dcoef`.
    pub dc_u: Option<&'a mut CudaSlice<f32>>,
    /// `[B, p]` when `dcoef` and elliptic.
    pub dc_k: Option<&'a mut CudaSlice<f32>>,
    /// `[n_x, S, p]` when `dbasis`.
    pub dbasis: Option<&'a mut CudaSlice<f32>>,
}

/// A loaded `synth_residual` variant (both entries of its module).
pub struct SynthResidualKernel {
    pub config: SynthResidualConfig,
    /// The problem it was built for (samples and points may differ at launch).
    pub built_for: SynthResidualProblem,
    pub kernel: LoadedKernel,
    /// `<entry>_reduce`: the ordered sum of the partials.
    pub reduce: CudaFunction,
}

fn illegal(p: &SynthResidualProblem, entry: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: entry.to_string(),
        problem: format!("{p:?}"),
        reason: reason.into(),
    }
}

impl SynthResidualKernel {
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &SynthResidualProblem,
        config: &SynthResidualConfig,
    ) -> Result<Self> {
        super::check_serves::<SynthResidual>(problem, config)?;
        let entry = SynthResidual::entry(problem, config);
        let smem = SynthResidual::geometry(problem, config).dynamic_smem_bytes;
        let kernel = LoadedKernel::load(device, cubin, &entry, smem)?;
        let reduce = kernel.sibling(&format!("{entry}_reduce"))?;
        Ok(SynthResidualKernel {
            config: *config,
            built_for: *problem,
            kernel,
            reduce,
        })
    }

    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &SynthResidualProblem,
        config: &SynthResidualConfig,
    ) -> Result<Self> {
        super::check_serves::<SynthResidual>(problem, config)?;
        let cubin = super::compile_cubin::<SynthResidual>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// The scratch a launch of `problem` needs (no initialisation needed).
    pub fn workspace(
        &self,
        device: &Device,
        problem: &SynthResidualProblem,
    ) -> Result<CudaSlice<f32>> {
        let floats = fam::workspace_floats(problem, &self.config).max(1);
        device.zeros::<f32>(floats, "synth_residual partials")
    }

    /// Enqueue the loss and the asked-for gradients of `problem` on `stream`: the fused
    /// kernel, then the reduction into `out`.
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &SynthResidualProblem,
        inp: &SynthResidualInputs<'_>,
        workspace: &mut CudaSlice<f32>,
        out: &mut SynthResidualOutputs<'_>,
    ) -> Result<()> {
        super::check_serves::<SynthResidual>(problem, &self.config)?;
        let entry = &self.kernel.entry;
        if SynthResidual::entry(problem, &self.config) != *entry {
            return Err(illegal(
                problem,
                entry,
                "the variant was built for another residual, forcing, gradient set or p",
            ));
        }
        let (nb, nx, p) = (
            problem.samples as usize,
            problem.points as usize,
            problem.p as usize,
        );
        let elliptic = problem.residual == Residual::Elliptic1d;
        need("c_u", inp.c_u.len(), nb * p)?;
        if elliptic {
            let c_k = inp
                .c_k
                .ok_or_else(|| illegal(problem, entry, "elliptic_1d needs c_k"))?;
            need("c_k", c_k.len(), nb * p)?;
        }
        need("basis", inp.basis.len(), nx * problem.streams() * p)?;
        need(
            "f",
            inp.f.len(),
            match problem.forcing {
                Forcing::PerSample => nb * nx,
                Forcing::Shared => nx,
            },
        )?;
        need(
            "workspace",
            workspace.len(),
            fam::workspace_floats(problem, &self.config),
        )?;
        need("loss", out.loss.len(), 1)?;
        // Every gradient the problem asks for has a buffer, and no other is given.
        let given = |b: &Option<&mut CudaSlice<f32>>| b.is_some();
        if given(&out.dc_u) != problem.dcoef
            || given(&out.dc_k) != (problem.dcoef && elliptic)
            || given(&out.dbasis) != problem.dbasis
        {
            return Err(illegal(
                problem,
                entry,
                "dc_u (dc_k for elliptic) must be given exactly when dcoef, dbasis when dbasis",
            ));
        }
        if let Some(b) = out.dc_u.as_ref() {
            need("dc_u", b.len(), nb * p)?;
        }
        if let Some(b) = out.dc_k.as_ref() {
            need("dc_k", b.len(), nb * p)?;
        }
        if let Some(b) = out.dbasis.as_ref() {
            need("dbasis", b.len(), nx * problem.streams() * p)?;
        }

        let geometry = SynthResidual::geometry(problem, &self.config);
        let cfg = self.kernel.config(&geometry)?;
        let null = 0u64;
        let (nbi, nxi, splits) = (nb as i32, nx as i32, geometry.grid[1] as i32);
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(inp.c_u);
        match inp.c_k {
            Some(k) if elliptic => launch.arg(k),
            _ => launch.arg(&null),
        };
        launch
            .arg(inp.basis)
            .arg(inp.f)
            .arg(&nbi)
            .arg(&nxi)
            .arg(&splits)
            .arg(&mut *workspace);
        // SAFETY: the argument list matches the template's main signature (c_u, c_k, basis,
        // f, nb, nx, splits, workspace) listed by `SynthResidual::args()`: four input
        // pointers, three ints and the workspace. Every input was size-checked above; c_k
        // is null only for poisson, whose kernel never reads it; `splits` is grid.y of `cfg`
        // (the family's geometry for the rendered (problem, config)), and the workspace
        // holds `workspace_floats` for exactly that grid.
        unsafe { launch.launch(cfg) }.during(format!("launching {entry}"))?;

        let rcfg = super::sibling_config(&fam::reduce_geometry(problem));
        let mut reduce = stream.launch_builder(&self.reduce);
        reduce.arg(&*workspace);
        for b in [&mut out.dc_u, &mut out.dc_k, &mut out.dbasis] {
            match b.as_deref_mut() {
                Some(b) => reduce.arg(b),
                None => reduce.arg(&null),
            };
        }
        reduce.arg(&mut *out.loss).arg(&nbi).arg(&nxi).arg(&splits);
        // SAFETY: the reduce entry's signature is (workspace, dc_u, dc_k, dbasis, loss, nb,
        // nx, splits) as `fam::reduce_args()` lists. It reads the partials the main launch
        // just wrote on this stream (same nb, nx and splits, so the same offsets), writes
        // B x p floats of dc_u / dc_k only when the variant computes dC (buffers given and
        // checked exactly then; dc_k only for elliptic), n_x x S x p floats of dbasis only
        // when it computes dbasis, and one float of loss.
        unsafe { reduce.launch(rcfg) }.during(format!("launching {entry}_reduce"))?;
        Ok(())
    }
}
