//! Launching `mlp_jet`: a tanh MLP with its gradient and Laplacian (or Hessian diagonal)
//! streams at a batch of points. See the family module for the layouts.

pub use cudarc::driver::CudaSlice;
use cudarc::driver::{CudaFunction, CudaStream, PushKernelArg};
use kiln_codegen::families::mlp_jet::{
    self as fam, param_count, MlpJet, MlpJetConfig, MlpJetProblem,
};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// The output buffers of one call: `u [points, p]`, and `grad [points, d, p]` and
/// `second [points, p]` (Laplacian, d2) or `[points, d, p]` (Hessian diagonal) exactly when
/// the problem's streams include them.
pub struct MlpJetOutputs<'a> {
    pub u: &'a mut CudaSlice<f32>,
    pub grad: Option<&'a mut CudaSlice<f32>>,
    pub second: Option<&'a mut CudaSlice<f32>>,
}

/// A loaded `mlp_jet` variant: one config for one net and stream set (any point count).
pub struct MlpJetKernel {
    pub config: MlpJetConfig,
    /// The problem it was built for (the point count may differ at launch).
    pub built_for: MlpJetProblem,
    pub kernel: LoadedKernel,
    /// `<entry>_pack`, for configs with packed weights: splits them before the main entry.
    pub pack: Option<CudaFunction>,
}

fn illegal(p: &MlpJetProblem, entry: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: entry.to_string(),
        problem: format!("{p:?}"),
        reason: reason.into(),
    }
}

/// The largest dynamic shared memory any point count of `p` needs under `c` (the tile, and
/// so the shared memory, does not depend on the point count).
fn smem(p: &MlpJetProblem, c: &MlpJetConfig) -> u32 {
    MlpJet::geometry(p, c).dynamic_smem_bytes
}

impl MlpJetKernel {
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &MlpJetProblem,
        config: &MlpJetConfig,
    ) -> Result<Self> {
        super::check_serves::<MlpJet>(problem, config)?;
        let entry = MlpJet::entry(problem, config);
        let kernel = LoadedKernel::load(device, cubin, &entry, smem(problem, config))?;
        let pack = if fam::packs_weights(config) {
            Some(kernel.sibling(&format!("{entry}_pack"))?)
        } else {
            None
        };
        Ok(MlpJetKernel {
            config: *config,
            built_for: *problem,
            kernel,
            pack,
        })
    }

    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &MlpJetProblem,
        config: &MlpJetConfig,
    ) -> Result<Self> {
        super::check_serves::<MlpJet>(problem, config)?;
        let cubin = super::compile_cubin::<MlpJet>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// Floats of the `packed` scratch a launch of `problem` needs: 0 unless the config packs
    /// its weights ([`MlpJetConfig::packed_weights`]).
    pub fn workspace_floats(&self, problem: &MlpJetProblem) -> usize {
        fam::packed_floats(problem, &self.config)
    }

    /// Enqueue the jets of `problem.points` points of `x [points, d]` through the net in
    /// `params` (the family's arena layout) on `stream`. A config with packed weights first
    /// splits them into `packed` (at least [`Self::workspace_floats`] floats, no
    /// initialisation needed; `None` is fine for the other configs). The pack and the main
    /// kernel run on `stream` after this returns: a `packed` buffer must not serve a launch
    /// on another stream before they are done.
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &MlpJetProblem,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        packed: Option<&mut CudaSlice<f32>>,
        out: &mut MlpJetOutputs<'_>,
    ) -> Result<()> {
        super::check_serves::<MlpJet>(problem, &self.config)?;
        let entry = &self.kernel.entry;
        if MlpJet::entry(problem, &self.config) != *entry {
            return Err(illegal(
                problem,
                entry,
                "the variant was built for another net or stream set",
            ));
        }
        let (n, d) = (problem.points as usize, problem.d as usize);
        need("x", x.len(), n * d)?;
        let arena = param_count(problem.d, problem.width, problem.depth, problem.p);
        need("params", params.len(), arena)?;
        let [u_len, grad_len, second_len] = problem.output_lens();
        need("u", out.u.len(), u_len)?;
        for (name, buf, len) in [
            ("grad", out.grad.as_ref().map(|b| b.len()), grad_len),
            ("second", out.second.as_ref().map(|b| b.len()), second_len),
        ] {
            match (buf, len) {
                (None, 0) => {}
                (Some(got), len) if len > 0 => need(name, got, len)?,
                (Some(_), _) => {
                    return Err(illegal(
                        problem,
                        entry,
                        format!(
                            "{name} is not computed for {:?}: pass None",
                            problem.streams
                        ),
                    ))
                }
                (None, _) => {
                    return Err(illegal(
                        problem,
                        entry,
                        format!("{:?} writes {name}: a buffer is needed", problem.streams),
                    ))
                }
            }
        }
        let cfg = self
            .kernel
            .config(&MlpJet::geometry(problem, &self.config))?;
        let (null, ni) = (0u64, problem.points as i32);
        let packed = match (&self.pack, packed) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(illegal(
                    problem,
                    entry,
                    format!(
                        "this config packs its weights: pass a `packed` scratch of {} floats \
                         (MlpJetKernel::workspace_floats)",
                        self.workspace_floats(problem)
                    ),
                ))
            }
            (Some(pack), Some(buf)) => {
                need("packed", buf.len(), self.workspace_floats(problem))?;
                let pcfg = super::sibling_config(&fam::pack_geometry(problem, &self.config));
                let mut launch = stream.launch_builder(pack);
                launch.arg(params).arg(&mut *buf);
                // SAFETY: the pack entry's signature is (params, packed) as `fam::PACK_ARGS`
                // lists. It reads the weights of `params` past layer 0 (the hidden ones; wgmma
                // also the output layer's), inside the arena size-checked above, and
                // writes `packed_floats` floats of `buf` (checked just now), which the main
                // launch below reads on the same stream.
                unsafe { launch.launch(pcfg) }.during(format!("launching {entry}_pack"))?;
                Some(buf)
            }
        };
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(x).arg(params);
        match packed {
            Some(b) => launch.arg(&*b),
            None => launch.arg(&null),
        };
        launch.arg(&mut *out.u);
        match out.grad.as_deref_mut() {
            Some(g) => launch.arg(g),
            None => launch.arg(&null),
        };
        match out.second.as_deref_mut() {
            Some(s) => launch.arg(s),
            None => launch.arg(&null),
        };
        launch.arg(&ni);
        // SAFETY: the argument list matches the template's main signature (x, params, packed,
        // u, grad, second, n) listed by `MlpJet::args()`: six device pointers and an int;
        // `packed` is null unless the config packs (then the pack entry above filled it). Every
        // buffer the kernel reads or writes was size-checked above against the problem (the
        // kernel never writes an output its streams do not include, so those are null), the
        // parameter arena comes from cudaMalloc (16-byte aligned, as its cp.async needs), and
        // `cfg` is the family's geometry for the (problem, config) the kernel was rendered for.
        unsafe { launch.launch(cfg) }.during(format!("launching {entry}"))?;
        Ok(())
    }
}
