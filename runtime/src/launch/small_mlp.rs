//! Launching `small_mlp`: the forward pass, input VJP, parameter backward and WGAN-GP penalty
//! double backward of a small fused MLP. See the family module for the math and layouts.

pub use cudarc::driver::CudaSlice;
use cudarc::driver::{CudaStream, LaunchArgs, LaunchConfig, PushKernelArg};
use kiln_codegen::families::small_mlp::{
    workspace_floats, Pass, SmallMlp, SmallMlpConfig, SmallMlpProblem,
};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// Scratch of the gradient passes: per-row adjoints and the grid-barrier word (zeroed once;
/// every launch leaves it valid for the next).
pub struct SmallMlpWorkspace {
    pub scratch: CudaSlice<f32>,
    pub barrier: CudaSlice<u32>,
}

/// A loaded `small_mlp` variant: one pass of one net under one config (any row count).
pub struct SmallMlpKernel {
    pub config: SmallMlpConfig,
    /// The problem it was built for (the row count may differ at launch).
    pub built_for: SmallMlpProblem,
    pub kernel: LoadedKernel,
    /// CTAs that are resident at once on this device (the cooperative grid's ceiling).
    pub resident_ctas: u32,
}

fn illegal(p: &SmallMlpProblem, entry: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: entry.to_string(),
        problem: format!("{p:?}"),
        reason: reason.into(),
    }
}

impl SmallMlpKernel {
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &SmallMlpProblem,
        config: &SmallMlpConfig,
    ) -> Result<Self> {
        super::check_serves::<SmallMlp>(problem, config)?;
        let entry = SmallMlp::entry(problem, config);
        let g = SmallMlp::geometry(problem, config);
        let kernel = LoadedKernel::load(device, cubin, &entry, g.dynamic_smem_bytes)?;
        let per_sm = kernel
            .func
            .occupancy_max_active_blocks_per_multiprocessor(
                config.threads,
                g.dynamic_smem_bytes as usize,
                None,
            )
            .during(format!("reading the occupancy of {entry}"))?;
        if per_sm == 0 {
            return Err(illegal(
                problem,
                &entry,
                "no CTA of this config fits an SM (registers or shared memory)",
            ));
        }
        Ok(SmallMlpKernel {
            config: *config,
            built_for: *problem,
            kernel,
            resident_ctas: per_sm * device.info.sms,
        })
    }

    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &SmallMlpProblem,
        config: &SmallMlpConfig,
    ) -> Result<Self> {
        super::check_serves::<SmallMlp>(problem, config)?;
        let cubin = super::compile_cubin::<SmallMlp>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// Scratch for `problem`'s gradient pass (empty buffers for the others).
    pub fn workspace(
        &self,
        device: &Device,
        problem: &SmallMlpProblem,
    ) -> Result<SmallMlpWorkspace> {
        Ok(SmallMlpWorkspace {
            scratch: device.zeros::<f32>(workspace_floats(problem), "small_mlp workspace")?,
            barrier: device.zeros::<u32>(1, "small_mlp grid barrier")?,
        })
    }

    /// The same source serves `p`, of the pass `want`; the launch configuration.
    fn prepare(&self, p: &SmallMlpProblem, want: Pass) -> Result<LaunchConfig> {
        super::check_serves::<SmallMlp>(p, &self.config)?;
        let entry = &self.kernel.entry;
        if p.pass != want {
            return Err(illegal(p, entry, format!("this launch runs {want:?}")));
        }
        if SmallMlp::entry(p, &self.config) != *entry {
            return Err(illegal(
                p,
                entry,
                "the variant was built for another net, activation or pass",
            ));
        }
        let mut cfg = self.kernel.config(&SmallMlp::geometry(p, &self.config))?;
        // Every loop is grid-strided: any grid up to the resident CTAs is correct, and the
        // gradient passes' barrier needs them all resident.
        cfg.grid_dim.0 = cfg.grid_dim.0.min(self.resident_ctas).max(1);
        Ok(cfg)
    }

    fn check_net(p: &SmallMlpProblem, params: usize, stash: usize) -> Result<()> {
        need("params", params, p.params())?;
        need("stash", stash, p.stash_len())
    }

    /// `y = net(x)`; the pre-activations into `stash` when given (the backward passes need
    /// them).
    pub fn forward(
        &self,
        stream: &CudaStream,
        p: &SmallMlpProblem,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        stash: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let cfg = self.prepare(p, Pass::Forward)?;
        let b = p.rows as usize;
        need("x", x.len(), b * p.d_in as usize)?;
        need("y", y.len(), b * p.d_out as usize)?;
        Self::check_net(
            p,
            params.len(),
            stash.as_ref().map_or(usize::MAX, |s| s.len()),
        )?;
        let (null, rows) = (0u64, p.rows as i32);
        let mut l = stream.launch_builder(&self.kernel.func);
        l.arg(x).arg(params);
        match stash {
            Some(s) => l.arg(s),
            None => l.arg(&null),
        };
        l.arg(&null)
            .arg(y)
            .arg(&null)
            .arg(&null)
            .arg(&null)
            .arg(&null);
        l.arg(&rows);
        self.enqueue(l, cfg, false)
    }

    /// `dx = (dy/dx)^T gy` for every row, from the forward pass's stash.
    pub fn input_vjp(
        &self,
        stream: &CudaStream,
        p: &SmallMlpProblem,
        params: &CudaSlice<f32>,
        stash: &CudaSlice<f32>,
        gy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let cfg = self.prepare(p, Pass::InputVjp)?;
        let b = p.rows as usize;
        need("gy", gy.len(), b * p.d_out as usize)?;
        need("dx", dx.len(), b * p.d_in as usize)?;
        Self::check_net(p, params.len(), stash.len())?;
        let (null, rows) = (0u64, p.rows as i32);
        let mut l = stream.launch_builder(&self.kernel.func);
        l.arg(&null)
            .arg(params)
            .arg(stash)
            .arg(gy)
            .arg(&null)
            .arg(dx);
        l.arg(&null).arg(&null).arg(&null).arg(&rows);
        self.enqueue(l, cfg, false)
    }

    /// `grads = dL/d(params)` summed over rows, for `gy = dL/dy`, from the stash.
    #[allow(clippy::too_many_arguments)]
    pub fn param_grad(
        &self,
        stream: &CudaStream,
        p: &SmallMlpProblem,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        stash: &CudaSlice<f32>,
        gy: &CudaSlice<f32>,
        grads: &mut CudaSlice<f32>,
        ws: &mut SmallMlpWorkspace,
    ) -> Result<()> {
        let cfg = self.prepare(p, Pass::ParamGrad)?;
        let b = p.rows as usize;
        need("x", x.len(), b * p.d_in as usize)?;
        need("gy", gy.len(), b * p.d_out as usize)?;
        need("grads", grads.len(), p.params())?;
        need("workspace", ws.scratch.len(), workspace_floats(p))?;
        Self::check_net(p, params.len(), stash.len())?;
        let (null, rows) = (0u64, p.rows as i32);
        let mut l = stream.launch_builder(&self.kernel.func);
        l.arg(x)
            .arg(params)
            .arg(stash)
            .arg(gy)
            .arg(&null)
            .arg(&null);
        l.arg(grads)
            .arg(&mut ws.scratch)
            .arg(&mut ws.barrier)
            .arg(&rows);
        self.enqueue(l, cfg, true)
    }

    /// `grads = dP/d(params)` of the WGAN-GP penalty `P = mean_b (|grad_x D(x_b)| - 1)^2`
    /// (scalar critic), from the stash of a forward pass on the same `x`. On request, `u`
    /// receives `grad_x D [B, d_in]` and `penalty` the per-row terms `(|u_b| - 1)^2 [B]`.
    #[allow(clippy::too_many_arguments)]
    pub fn penalty_grad(
        &self,
        stream: &CudaStream,
        p: &SmallMlpProblem,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        stash: &CudaSlice<f32>,
        grads: &mut CudaSlice<f32>,
        ws: &mut SmallMlpWorkspace,
        u: Option<&mut CudaSlice<f32>>,
        penalty: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let cfg = self.prepare(p, Pass::PenaltyGrad)?;
        let b = p.rows as usize;
        need("x", x.len(), b * p.d_in as usize)?;
        need("grads", grads.len(), p.params())?;
        need("workspace", ws.scratch.len(), workspace_floats(p))?;
        if let Some(u) = &u {
            need("u", u.len(), b * p.d_in as usize)?;
        }
        if let Some(pen) = &penalty {
            need("penalty", pen.len(), b)?;
        }
        Self::check_net(p, params.len(), stash.len())?;
        let (null, rows) = (0u64, p.rows as i32);
        let mut l = stream.launch_builder(&self.kernel.func);
        l.arg(x).arg(params).arg(stash).arg(&null);
        match penalty {
            Some(s) => l.arg(s),
            None => l.arg(&null),
        };
        match u {
            Some(s) => l.arg(s),
            None => l.arg(&null),
        };
        l.arg(grads)
            .arg(&mut ws.scratch)
            .arg(&mut ws.barrier)
            .arg(&rows);
        self.enqueue(l, cfg, true)
    }

    /// The family's one launch.
    fn enqueue(&self, mut l: LaunchArgs<'_>, cfg: LaunchConfig, cooperative: bool) -> Result<()> {
        let entry = &self.kernel.entry;
        // SAFETY: every caller pushes the template's one signature (x, params, stash, gy, y,
        // dx, grads, workspace, barrier, rows) listed by `SmallMlp::args()`: nine device
        // pointers, null exactly where the pass's branch never reads or writes them, and the
        // row count as an int. Each buffer the pass touches was size-checked against the
        // problem (rows, arena, stash, scratch), the arena comes from cudaMalloc (16-byte
        // aligned), and `cfg` is the family's geometry for the (problem, config) the kernel
        // was rendered for, its grid clamped to the CTAs resident at once. The gradient
        // passes wait at a grid barrier: they are launched cooperatively, which the driver
        // refuses (an error, not a hang) when the grid cannot be resident.
        if cooperative {
            unsafe { l.launch_cooperative(cfg) }
        } else {
            unsafe { l.launch(cfg) }
        }
        .during(format!("launching {entry}"))?;
        Ok(())
    }
}
