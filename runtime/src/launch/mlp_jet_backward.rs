//! Launching `mlp_jet_backward`: the gradient of a loss on a tanh MLP's value, gradient and
//! Laplacian streams with respect to every parameter (forward jets, head and reverse pass in
//! one kernel, then an ordered reduction). See the family module for the math and layouts.

pub use cudarc::driver::CudaSlice;
use cudarc::driver::{CudaFunction, CudaStream, PushKernelArg};
use kiln_codegen::families::mlp_jet_backward::{
    self as fam, Loss, MlpJetBackward, MlpJetBackwardConfig, MlpJetBackwardProblem,
};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// What closes the chain at the outputs (device buffers, kiln's layouts).
#[derive(Clone, Copy)]
pub enum HeadInputs<'a> {
    /// `L = (1/N) sum (r^2 + w (u - g)^2)`, `r = -Lap u - f`: `f [points]`, and the data term's
    /// `(target, weight)`, both `[points]`, when there is one.
    Residual {
        f: &'a CudaSlice<f32>,
        data: Option<(&'a CudaSlice<f32>, &'a CudaSlice<f32>)>,
    },
    /// Output cotangents `dL/du [points, p]`, `dL/dgrad [points, d, p]`, `dL/dLap [points, p]`;
    /// `None` is zero.
    Cotangents {
        u: Option<&'a CudaSlice<f32>>,
        grad: Option<&'a CudaSlice<f32>>,
        lap: Option<&'a CudaSlice<f32>>,
    },
}

/// Where a call writes: the gradient `[param_count]` (the arena's layout) and, for the
/// residual head, the loss `[1]` when wanted.
pub struct MlpJetBackwardOutputs<'a> {
    pub grads: &'a mut CudaSlice<f32>,
    pub loss: Option<&'a mut CudaSlice<f32>>,
}

/// A loaded `mlp_jet_backward` variant (both entries of its module).
pub struct MlpJetBackwardKernel {
    pub config: MlpJetBackwardConfig,
    /// The problem it was built for (the point count may differ at launch).
    pub built_for: MlpJetBackwardProblem,
    pub kernel: LoadedKernel,
    /// `<entry>_reduce`: the ordered sum of the CTA arenas.
    pub reduce: CudaFunction,
    /// `<entry>_pack`, for configs with packed weights: splits them before the main entry.
    pub pack: Option<CudaFunction>,
}

fn illegal(p: &MlpJetBackwardProblem, entry: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: entry.to_string(),
        problem: format!("{p:?}"),
        reason: reason.into(),
    }
}

impl MlpJetBackwardKernel {
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &MlpJetBackwardProblem,
        config: &MlpJetBackwardConfig,
    ) -> Result<Self> {
        super::check_serves::<MlpJetBackward>(problem, config)?;
        let entry = MlpJetBackward::entry(problem, config);
        let smem = MlpJetBackward::geometry(problem, config).dynamic_smem_bytes;
        let kernel = LoadedKernel::load(device, cubin, &entry, smem)?;
        let reduce = kernel.sibling(&format!("{entry}_reduce"))?;
        let pack = if fam::packs_weights(config) {
            Some(kernel.sibling(&format!("{entry}_pack"))?)
        } else {
            None
        };
        Ok(MlpJetBackwardKernel {
            config: *config,
            built_for: *problem,
            kernel,
            reduce,
            pack,
        })
    }

    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &MlpJetBackwardProblem,
        config: &MlpJetBackwardConfig,
    ) -> Result<Self> {
        super::check_serves::<MlpJetBackward>(problem, config)?;
        let cubin = super::compile_cubin::<MlpJetBackward>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// The `partial` scratch a launch of `problem` needs (no initialisation needed).
    pub fn workspace(
        &self,
        device: &Device,
        problem: &MlpJetBackwardProblem,
    ) -> Result<CudaSlice<f32>> {
        let floats = fam::partial_floats(problem, &self.config).max(1);
        device.zeros::<f32>(floats, "mlp_jet_backward partial gradients")
    }

    /// Enqueue the gradient (and loss) of `problem.points` points of `x [points, d]` through
    /// the net in `params` on `stream`: the weight packing (configs with packed weights), the
    /// fused kernel, then the reduction into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &MlpJetBackwardProblem,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        head: &HeadInputs<'_>,
        partial: &mut CudaSlice<f32>,
        out: &mut MlpJetBackwardOutputs<'_>,
    ) -> Result<()> {
        super::check_serves::<MlpJetBackward>(problem, &self.config)?;
        let entry = &self.kernel.entry;
        if MlpJetBackward::entry(problem, &self.config) != *entry {
            return Err(illegal(
                problem,
                entry,
                "the variant was built for another net or loss",
            ));
        }
        let (n, d, p) = (
            problem.points as usize,
            problem.d as usize,
            problem.p as usize,
        );
        need("x", x.len(), n * d)?;
        need("params", params.len(), problem.params())?;
        need("grads", out.grads.len(), problem.params())?;
        need(
            "partial",
            partial.len(),
            fam::partial_floats(problem, &self.config),
        )?;
        if let Some(l) = out.loss.as_ref() {
            need("loss", l.len(), 1)?;
        }
        // The head's buffers, in the argument order f, target, weight, cot_u, cot_grad, cot_lap.
        let bufs: [Option<&CudaSlice<f32>>; 6] = match (*head, problem.loss) {
            (HeadInputs::Residual { f, data }, Loss::LaplacianResidual) => {
                need("f", f.len(), n)?;
                if let Some((g, w)) = data {
                    need("target", g.len(), n)?;
                    need("weight", w.len(), n)?;
                }
                [
                    Some(f),
                    data.map(|(g, _)| g),
                    data.map(|(_, w)| w),
                    None,
                    None,
                    None,
                ]
            }
            (HeadInputs::Cotangents { u, grad, lap }, Loss::Cotangents) => {
                for (name, b, len) in [
                    ("cot_u", u, n * p),
                    ("cot_grad", grad, n * d * p),
                    ("cot_lap", lap, n * p),
                ] {
                    if let Some(b) = b {
                        need(name, b.len(), len)?;
                    }
                }
                [None, None, None, u, grad, lap]
            }
            _ => {
                return Err(illegal(
                    problem,
                    entry,
                    format!("the head's inputs do not match the loss {:?}", problem.loss),
                ))
            }
        };
        if out.loss.is_some() && problem.loss == Loss::Cotangents {
            return Err(illegal(
                problem,
                entry,
                "given cotangents have no loss to write: pass None",
            ));
        }
        let geometry = MlpJetBackward::geometry(problem, &self.config);
        let cfg = self.kernel.config(&geometry)?;
        let (null, ni) = (0u64, problem.points as i32);
        let ctas = geometry.grid[0] as i32;
        if let Some(pack) = &self.pack {
            let pcfg = super::sibling_config(&fam::pack_geometry(problem));
            let mut launch = stream.launch_builder(pack);
            launch.arg(params).arg(&mut *partial).arg(&ctas);
            // SAFETY: the pack entry's signature is (params, partial, ctas) as
            // `fam::PACK_ARGS` lists. It reads the hidden weights of `params` (size-checked
            // above) and writes `partial` from `packed_offset` (= ctas arenas) to
            // `partial_floats`, which `partial` holds (checked above); `ctas` is the grid of the
            // main launch below, which reads that region.
            unsafe { launch.launch(pcfg) }.during(format!("launching {entry}_pack"))?;
        }
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(x).arg(params);
        for b in &bufs {
            match b {
                Some(b) => launch.arg(*b),
                None => launch.arg(&null),
            };
        }
        launch.arg(&mut *partial).arg(&ni);
        // SAFETY: the argument list matches the template's main signature (x, params, f,
        // target, weight, cot_u, cot_grad, cot_lap, partial, n) listed by
        // `MlpJetBackward::args()`: nine device pointers and an int. Every buffer the kernel
        // reads was size-checked above against the problem; pointers the head does not read
        // are null (the residual head reads target and weight only when both are given;
        // a null cotangent reads as zero); `partial` holds `partial_floats` floats, one arena
        // per CTA of `geometry`; the parameter arena comes from cudaMalloc (16-byte aligned, as
        // its cp.async needs), and `cfg` is the family's geometry for the (problem, config) the
        // kernel was rendered for.
        unsafe { launch.launch(cfg) }.during(format!("launching {entry}"))?;

        let rcfg = super::sibling_config(&fam::reduce_geometry(problem));
        let scale = fam::scale(problem);
        let mut reduce = stream.launch_builder(&self.reduce);
        reduce.arg(&*partial).arg(&mut *out.grads);
        match out.loss.as_deref_mut() {
            Some(l) => reduce.arg(l),
            None => reduce.arg(&null),
        };
        reduce.arg(&ctas).arg(&scale);
        // SAFETY: the reduce entry's signature is (partial, grads, loss, ctas, scale) as
        // `fam::REDUCE_ARGS` lists: three device pointers, an int and a double. It reads
        // `ctas` arenas of `partial` (the grid the main launch just used, so all of them are
        // written before it runs on this stream), writes `param_count` floats of `grads`
        // (checked above) and one float of `loss` unless null.
        unsafe { reduce.launch(rcfg) }.during(format!("launching {entry}_reduce"))?;
        Ok(())
    }
}
