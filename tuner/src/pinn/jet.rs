//! `mlp_jet` on the GPU: random inputs, their device buffers, and the timing of configs.

use kiln_codegen::families::mlp_jet::{init_params, MlpJet, MlpJetConfig, MlpJetProblem};
use kiln_codegen::Compiler;
use kiln_runtime::error::DriverContext;
use kiln_runtime::launch::mlp_jet::{CudaSlice, MlpJetKernel, MlpJetOutputs};
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::{Device, Result};
use rand::{Rng, SeedableRng};

use super::{Timed, TimingError};

/// Host inputs of one call: points uniform in (-1, 1)^d and an Xavier-initialised net
/// (gain 1, biases from the same uniform draw; `init_params`).
pub struct JetInputs {
    pub problem: MlpJetProblem,
    /// `[points, d]`.
    pub x: Vec<f32>,
    /// The family's parameter arena.
    pub params: Vec<f32>,
}

impl JetInputs {
    /// The parameters are drawn first, then the points, from one uniform stream of `rng`
    /// (so a seed reproduces the same net and points).
    pub fn random(rng: &mut impl Rng, problem: MlpJetProblem) -> JetInputs {
        let mut uniform = || rng.random_range(-1.0f64..1.0);
        let params = init_params(&problem, 1.0, &mut uniform);
        let x = (0..problem.points as usize * problem.d as usize)
            .map(|_| uniform() as f32)
            .collect();
        JetInputs { problem, x, params }
    }
}

/// Device buffers of one call: inputs, and the three outputs (u, grad, second; a stream the
/// problem does not compute keeps a one-element placeholder that is never passed).
pub struct JetBuffers {
    pub x: CudaSlice<f32>,
    pub params: CudaSlice<f32>,
    pub outs: [CudaSlice<f32>; 3],
}

impl JetBuffers {
    /// Uploads the inputs; the outputs start as NaN.
    pub fn new(device: &Device, inputs: &JetInputs) -> Result<JetBuffers> {
        let [u, g, s] = inputs
            .problem
            .output_lens()
            .map(|l| device.upload(&vec![f32::NAN; l.max(1)], "mlp_jet output"));
        Ok(JetBuffers {
            x: device.upload(&inputs.x, "mlp_jet x")?,
            params: device.upload(&inputs.params, "mlp_jet params")?,
            outs: [u?, g?, s?],
        })
    }

    /// Overwrite every output with NaN, so an element the kernel leaves unwritten shows.
    pub fn poison(&mut self, device: &Device) -> Result<()> {
        for o in &mut self.outs {
            let nan = vec![f32::NAN; o.len()];
            device
                .stream
                .memcpy_htod(&nan, o)
                .during("poisoning the mlp_jet outputs")?;
        }
        Ok(())
    }

    /// Enqueue `kernel` on `p` (the problem these buffers were made for).
    pub fn launch(
        &mut self,
        device: &Device,
        kernel: &MlpJetKernel,
        p: &MlpJetProblem,
    ) -> Result<()> {
        let [_, g, s] = p.output_lens();
        let [u, grad, second] = &mut self.outs;
        let mut out = MlpJetOutputs {
            u,
            grad: (g > 0).then_some(grad),
            second: (s > 0).then_some(second),
        };
        kernel.launch(&device.stream, p, &self.x, &self.params, &mut out)
    }

    /// The outputs, each cut to its length for `p` (empty for a stream not computed).
    pub fn download(&self, device: &Device, p: &MlpJetProblem) -> Result<[Vec<f32>; 3]> {
        let lens = p.output_lens();
        let mut out: [Vec<f32>; 3] = Default::default();
        for i in 0..3 {
            let mut v = device.download(&self.outs[i])?;
            v.truncate(lens[i]);
            out[i] = v;
        }
        Ok(out)
    }
}

/// Time each of `configs` on `problem` with inputs drawn from `seed` (one set of buffers for
/// all), compiled through the cache, measured per `opts`; in the order given.
pub fn time_configs(
    device: &Device,
    compiler: &Compiler,
    bench: &mut Bench,
    problem: &MlpJetProblem,
    configs: &[MlpJetConfig],
    opts: &MeasureOptions,
    seed: u64,
) -> std::result::Result<Vec<Timed<MlpJetConfig>>, TimingError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let inputs = JetInputs::random(&mut rng, *problem);
    let mut buffers =
        JetBuffers::new(device, &inputs).map_err(|e| TimingError::inputs::<MlpJet>(problem, e))?;
    let fail = |c: &MlpJetConfig, e| TimingError::config::<MlpJet>(problem, c, e);
    let mut out = Vec::with_capacity(configs.len());
    for c in configs {
        let kernel = MlpJetKernel::compile(device, compiler, problem, c).map_err(|e| fail(c, e))?;
        let measurement = bench
            .measure(opts, || buffers.launch(device, &kernel, problem))
            .map_err(|e| fail(c, e))?;
        out.push(Timed {
            config: *c,
            measurement,
        });
    }
    Ok(out)
}
