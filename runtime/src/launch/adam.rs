//! Launching `adam`: one fused Adam / AdamW step over fp32 arrays of equal length. See the
//! family module for the update and why bias corrections are passed from the host.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, PushKernelArg};
use kiln_codegen::families::adam::{Adam, AdamConfig, AdamHyper, AdamProblem, AdamScalars};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// The four arrays of one step: `params`, `m`, `v` updated in place, `grads` read. Views
/// (`slice.slice_mut(a..b)`) of any offset: the kernel picks the vector path by alignment.
pub struct AdamArena<'a> {
    pub params: CudaViewMut<'a, f32>,
    pub grads: CudaView<'a, f32>,
    pub m: CudaViewMut<'a, f32>,
    pub v: CudaViewMut<'a, f32>,
}

/// A loaded `adam` variant: one config and decay mode (any length).
pub struct AdamKernel {
    pub config: AdamConfig,
    pub built_for: AdamProblem,
    pub kernel: LoadedKernel,
}

impl AdamKernel {
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &AdamProblem,
        config: &AdamConfig,
    ) -> Result<Self> {
        super::check_serves::<Adam>(problem, config)?;
        let entry = Adam::entry(problem, config);
        let kernel = LoadedKernel::load(device, cubin, &entry, 0)?;
        Ok(AdamKernel {
            config: *config,
            built_for: *problem,
            kernel,
        })
    }

    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &AdamProblem,
        config: &AdamConfig,
    ) -> Result<Self> {
        super::check_serves::<Adam>(problem, config)?;
        let cubin = super::compile_cubin::<Adam>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// Enqueue step `step` (1-based; bias corrections from it) over the first
    /// `problem.params` elements of the arena.
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &AdamProblem,
        arena: &mut AdamArena<'_>,
        hyper: &AdamHyper,
        step: u64,
    ) -> Result<()> {
        super::check_serves::<Adam>(problem, &self.config)?;
        let entry = &self.kernel.entry;
        if Adam::entry(problem, &self.config) != *entry {
            return Err(RuntimeError::IllegalConfig {
                config: entry.clone(),
                problem: format!("{problem:?}"),
                reason: "the variant was built for another weight-decay mode".into(),
            });
        }
        let n = usize::try_from(problem.params).map_err(|_| RuntimeError::IllegalConfig {
            config: entry.clone(),
            problem: format!("{problem:?}"),
            reason: "params exceeds the host's address range".into(),
        })?;
        need("params", arena.params.len(), n)?;
        need("grads", arena.grads.len(), n)?;
        need("m", arena.m.len(), n)?;
        need("v", arena.v.len(), n)?;
        // params, m and v are written: they must be three distinct ranges (views of one
        // allocation are allowed, overlapping ones are not).
        let ranges = [
            range(&arena.params, stream),
            range(&arena.m, stream),
            range(&arena.v, stream),
        ];
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    return Err(RuntimeError::IllegalConfig {
                        config: entry.clone(),
                        problem: format!("{problem:?}"),
                        reason: "params, m and v overlap".into(),
                    });
                }
            }
        }
        let s = AdamScalars::new(hyper, step);
        let cfg = self.kernel.config(&Adam::geometry(problem, &self.config))?;
        let n_arg = problem.params as i64;
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch
            .arg(&mut arena.params)
            .arg(&arena.grads)
            .arg(&mut arena.m)
            .arg(&mut arena.v)
            .arg(&n_arg)
            .arg(&s.beta1)
            .arg(&s.beta2)
            .arg(&s.eps)
            .arg(&s.weight_decay)
            .arg(&s.decay)
            .arg(&s.step_size)
            .arg(&s.rsqrt_bc2);
        // SAFETY: the argument list matches the template's one signature (params, grads, m,
        // v, n, beta1, beta2, eps, weight_decay, decay, step_size, rsqrt_bc2) listed by
        // `Adam::args()`: four device pointers to fp32 buffers of at least n elements
        // (checked above; the three written ones do not overlap), a 64-bit n and seven
        // floats. The kernel checks the pointers' alignment itself before any vector access,
        // and `cfg` is the family's geometry for the (problem, config) it was rendered for.
        unsafe { launch.launch(cfg) }.during(format!("launching {entry}"))?;
        Ok(())
    }
}

/// The device address range of a view, in bytes.
fn range(v: &CudaViewMut<'_, f32>, stream: &CudaStream) -> (u64, u64) {
    let (ptr, _sync) = v.device_ptr(stream);
    (ptr, ptr + (v.len() * std::mem::size_of::<f32>()) as u64)
}
