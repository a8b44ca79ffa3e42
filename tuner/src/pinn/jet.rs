//! `mlp_jet` on the GPU: random inputs, their device buffers, and the timing of configs.

use std::collections::HashMap;

use kiln_codegen::families::mlp_jet::{
    init_params, packed_floats_max, reference_points, reference_points_f32, Jets, MlpJet,
    MlpJetConfig, MlpJetProblem,
};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::artifact::OutputError;
use kiln_runtime::error::DriverContext;
use kiln_runtime::launch::mlp_jet::{CudaSlice, MlpJetKernel, MlpJetOutputs};
use kiln_runtime::measure::{Bench, MeasureOptions, Measurement};
use kiln_runtime::{Device, Result};
use rand::{Rng, SeedableRng};

use super::{max_rel, prepare_each, Timed, TimingError};
use crate::search::{prepared_mut, time_candidate, Evaluator, Failure, Prepared};

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
    /// Scratch for configs with packed weights, sized for any config of the net.
    pub packed: CudaSlice<f32>,
}

impl JetBuffers {
    /// Uploads the inputs; the outputs start as NaN.
    pub fn new(device: &Device, inputs: &JetInputs) -> Result<JetBuffers> {
        let [u, g, s] = inputs
            .problem
            .output_lens()
            .map(|l| device.upload(&vec![f32::NAN; l.max(1)], "mlp_jet output"));
        let packed = packed_floats_max(&inputs.problem).max(1);
        Ok(JetBuffers {
            x: device.upload(&inputs.x, "mlp_jet x")?,
            params: device.upload(&inputs.params, "mlp_jet params")?,
            outs: [u?, g?, s?],
            packed: device.upload(&vec![f32::NAN; packed], "mlp_jet packed weights")?,
        })
    }

    /// Overwrite every output (and the packed-weight scratch) with NaN, so an element the
    /// kernel leaves unwritten, or reads before its pack entry writes it, shows.
    pub fn poison(&mut self, device: &Device) -> Result<()> {
        for o in self.outs.iter_mut().chain([&mut self.packed]) {
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
        kernel.launch(
            &device.stream,
            p,
            &self.x,
            &self.params,
            Some(&mut self.packed),
            &mut out,
        )
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

/// Value and gradient: fp32 products accumulated in k order, tanhf.
pub const TOL_FIRST: f64 = 1e-5;
/// Laplacian, d2 and Hessian diagonal.
pub const TOL_SECOND: f64 = 1e-4;
/// A kernel may be this many times less accurate than straightforward fp32 on the CPU (other
/// tanh, tf32x3's 2^-21 per product) on nets where the fp32 floor exceeds the tolerance.
pub const FLOOR_FACTOR: f64 = 8.0;

/// Host inputs of one case and the f64 reference at its checked points.
///
/// Each stream's error is max |got - ref| / max |ref| over the checked points. Some random nets
/// (a scalar output of a 1-D net in particular) are ill-conditioned for this metric: exact fp32
/// evaluation itself misses 1e-5 on about 1 net in 40 (the output is far smaller than the terms
/// summed into it). So each stream's bound is the larger of the tolerance and FLOOR_FACTOR x the
/// error of the same jets evaluated in f32 on the CPU (the fp32 floor of that net).
pub struct JetCase {
    pub inputs: JetInputs,
    /// Points checked against the reference.
    pub checked: Vec<usize>,
    pub want: Jets,
    /// Bound per stream (u, grad, second).
    pub bound: [f64; 3],
    /// Relative error of exact fp32 evaluation (the CPU's) per stream.
    pub floor: [f64; 3],
}

impl JetCase {
    /// Random inputs of `p` (as [`JetInputs::random`]); `sample` points checked, evenly spread
    /// with the first and the last among them, or every point.
    pub fn new(rng: &mut impl Rng, p: MlpJetProblem, sample: Option<usize>) -> JetCase {
        let inputs = JetInputs::random(rng, p);
        let n = p.points as usize;
        let checked: Vec<usize> = match sample {
            Some(m) if m < n => {
                let mut v: Vec<usize> = (0..m).map(|i| i * (n - 1) / (m - 1).max(1)).collect();
                v.dedup();
                v
            }
            _ => (0..n).collect(),
        };
        let want = reference_points(&p, &inputs.x, &inputs.params, &checked);
        let f32_jets = reference_points_f32(&p, &inputs.x, &inputs.params, &checked);
        let floor = [
            max_rel(&f32_jets.u, &want.u),
            max_rel(&f32_jets.grad, &want.grad),
            max_rel(&f32_jets.second, &want.second),
        ];
        let tols = [TOL_FIRST, TOL_FIRST, TOL_SECOND];
        let bound = [0, 1, 2].map(|s| tols[s].max(FLOOR_FACTOR * floor[s]));
        JetCase {
            inputs,
            checked,
            want,
            bound,
            floor,
        }
    }

    /// Relative error of each stream (u, grad, second) at the checked points, and whether any
    /// output anywhere is not finite.
    pub fn compare(&self, got: &[Vec<f32>; 3]) -> ([f64; 3], bool) {
        let p = &self.inputs.problem;
        let np = p.p as usize;
        let nt = p.streams.tangents(p.d) as usize;
        let ns = p.streams.seconds(p.d) as usize;
        let bad = got.iter().any(|o| o.iter().any(|v| !v.is_finite()));
        let per_point = [np, nt * np, ns * np];
        let wants = [&self.want.u, &self.want.grad, &self.want.second];
        let mut errs = [0.0f64; 3];
        for s in 0..3 {
            let w = per_point[s];
            let at_checked: Vec<f64> = self
                .checked
                .iter()
                .flat_map(|&pt| got[s][pt * w..(pt + 1) * w].iter().map(|&v| v as f64))
                .collect();
            errs[s] = max_rel(&at_checked, wants[s]);
        }
        (errs, bad)
    }

    /// `errs` (from [`JetCase::compare`]) per computed output (`u`, then `grad` and `second`
    /// where the problem's streams have them), with each one's bound and fp32 floor.
    pub fn outputs(&self, errs: &[f64; 3]) -> Vec<OutputError> {
        let present = self.inputs.problem.output_lens().map(|n| n > 0);
        ["u", "grad", "second"]
            .into_iter()
            .enumerate()
            .filter(|&(s, _)| present[s])
            .map(|(s, name)| OutputError {
                name: name.into(),
                max_rel_err: errs[s],
                bound: self.bound[s],
                fp32_floor: Some(self.floor[s]),
            })
            .collect()
    }

    /// Whether `errs` (from [`JetCase::compare`]) are within the bounds; a NaN fails.
    pub fn within(&self, errs: &[f64; 3]) -> bool {
        (0..3).all(|s| errs[s] <= self.bound[s])
    }
}

/// Points of a tuned problem checked against the f64 reference (first and last included).
pub const TUNE_CHECKED_POINTS: usize = 600;

/// One `mlp_jet` problem's inputs on the device and the reference at its checked points, and
/// the kernels prepared for it: the tuner's [`Evaluator`] (and `kiln bench`'s validation).
/// A config is validated at the problem's full point count, outputs poisoned with NaN first:
/// [`TUNE_CHECKED_POINTS`] points against the f64 reference within the case's bounds, and every
/// output finite. Its `max_rel_err` is the worst of the three streams' errors.
pub struct JetBench<'a> {
    pub device: &'a Device,
    pub compiler: &'a Compiler,
    pub bench: &'a mut Bench,
    pub case: JetCase,
    buffers: JetBuffers,
    kernels: HashMap<String, MlpJetKernel>,
}

impl<'a> JetBench<'a> {
    pub fn new(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        problem: MlpJetProblem,
        seed: u64,
    ) -> Result<Self> {
        MlpJet::supports(&problem)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let case = JetCase::new(&mut rng, problem, Some(TUNE_CHECKED_POINTS));
        let buffers = JetBuffers::new(device, &case.inputs)?;
        Ok(JetBench {
            device,
            compiler,
            bench,
            case,
            buffers,
            kernels: HashMap::new(),
        })
    }

    /// Launch `kernel` into poisoned outputs and compare: each computed output's error, or why
    /// not.
    fn validate(
        &mut self,
        kernel: &MlpJetKernel,
    ) -> std::result::Result<Vec<OutputError>, Failure> {
        let (device, p) = (self.device, self.case.inputs.problem);
        self.buffers
            .poison(device)
            .map_err(Failure::launch_failed)?;
        self.buffers
            .launch(device, kernel, &p)
            .map_err(Failure::launch_failed)?;
        let got = self
            .buffers
            .download(device, &p)
            .map_err(Failure::launch_failed)?;
        let (errs, bad) = self.case.compare(&got);
        if bad || !self.case.within(&errs) {
            return Err(Failure {
                outcome: "invalid",
                reason: format!(
                    "relative error u {:.2e} grad {:.2e} second {:.2e} (bounds {:.0e} {:.0e} \
                     {:.0e}){}",
                    errs[0],
                    errs[1],
                    errs[2],
                    self.case.bound[0],
                    self.case.bound[1],
                    self.case.bound[2],
                    if bad { ", non-finite outputs" } else { "" }
                ),
            });
        }
        Ok(self.case.outputs(&errs))
    }
}

impl Evaluator<MlpJetConfig> for JetBench<'_> {
    fn prepare(&mut self, configs: &[MlpJetConfig]) -> Vec<std::result::Result<Prepared, Failure>> {
        let p = self.case.inputs.problem;
        let (device, compiler) = (self.device, self.compiler);
        // The loaded kernels go to a map of their own while `self` validates.
        let mut kernels = std::mem::take(&mut self.kernels);
        let out = prepare_each::<MlpJet, _>(compiler, &p, configs, &mut kernels, |c, compiled| {
            let kernel = MlpJetKernel::from_cubin(device, &compiled.cubin, &p, c)
                .map_err(Failure::launch_failed)?;
            Ok((self.validate(&kernel)?, kernel))
        });
        self.kernels = kernels;
        out
    }

    fn time(
        &mut self,
        config: &MlpJetConfig,
        reps: usize,
    ) -> std::result::Result<Measurement, Failure> {
        let p = self.case.inputs.problem;
        let kernel = prepared_mut(&mut self.kernels, config)?;
        let (device, buffers) = (self.device, &mut self.buffers);
        time_candidate(self.bench, reps, || buffers.launch(device, kernel, &p))
    }
}
