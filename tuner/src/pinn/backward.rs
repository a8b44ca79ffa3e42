//! `mlp_jet_backward` on the GPU: random inputs of one training step, their device buffers,
//! and the timing of configs (one call = the fused kernel + the ordered reduction).

use std::collections::HashMap;

use kiln_codegen::families::mlp_jet::{init_params, layer_offsets};
use kiln_codegen::families::mlp_jet_backward::reference::{loss_grads_and_scale, Head, LossGrads};
use kiln_codegen::families::mlp_jet_backward::{
    Loss, MlpJetBackward, MlpJetBackwardConfig, MlpJetBackwardProblem,
};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::artifact::OutputError;
use kiln_runtime::error::DriverContext;
use kiln_runtime::launch::mlp_jet_backward::{
    CudaSlice, HeadInputs, MlpJetBackwardKernel, MlpJetBackwardOutputs,
};
use kiln_runtime::measure::{Bench, MeasureOptions, Measurement};
use kiln_runtime::{Device, Result};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::{max_rel, max_rel_scaled, prepare_each, Timed, TimingError};
use crate::search::{prepared_mut, time_candidate, Evaluator, Failure, Prepared};

/// Host inputs of one training-step call. `a, b, c` are `f, target, weight` (residual head)
/// or `cot_u, cot_grad, cot_lap` (given cotangents).
pub struct TrainInputs {
    pub problem: MlpJetBackwardProblem,
    /// Residual: the data term `(target, weight)` is present. Cotangents: the gradient
    /// cotangent is (else None).
    pub full: bool,
    pub x: Vec<f32>,
    pub params: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
}

impl TrainInputs {
    /// An Xavier net of `gain`, then points, then the head's inputs, all from one uniform
    /// stream of `rng` over (-1, 1) (weights of the data term: its absolute values).
    pub fn random(
        rng: &mut impl Rng,
        problem: MlpJetBackwardProblem,
        full: bool,
        gain: f64,
    ) -> TrainInputs {
        let mut uniform = || rng.random_range(-1.0f64..1.0);
        let params = init_params(&problem.jet_problem(), gain, &mut uniform);
        let p = &problem;
        let (n, d, np) = (p.points as usize, p.d as usize, p.p as usize);
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| uniform() as f32).collect() };
        let x = draw(n * d);
        let (a, b, c) = match p.loss {
            Loss::LaplacianResidual => {
                let (f, g) = (draw(n), draw(n));
                (f, g, draw(n).iter().map(|w| w.abs()).collect())
            }
            Loss::Cotangents => (draw(n * np), draw(n * d * np), draw(n * np)),
        };
        TrainInputs {
            problem,
            full,
            x,
            params,
            a,
            b,
            c,
        }
    }

    /// The CPU reference's view of the head.
    pub fn head(&self) -> Head<'_> {
        match self.problem.loss {
            Loss::LaplacianResidual => Head::Residual {
                f: &self.a,
                data: self.full.then_some((&self.b[..], &self.c[..])),
            },
            Loss::Cotangents => Head::Cotangents {
                u: &self.a,
                grad: if self.full { &self.b } else { &[] },
                lap: &self.c,
            },
        }
    }
}

/// Device buffers of one call: inputs, the gradient and the loss.
pub struct TrainBuffers {
    pub x: CudaSlice<f32>,
    pub params: CudaSlice<f32>,
    pub a: CudaSlice<f32>,
    pub b: CudaSlice<f32>,
    pub c: CudaSlice<f32>,
    pub grads: CudaSlice<f32>,
    pub loss: CudaSlice<f32>,
}

impl TrainBuffers {
    /// Uploads the inputs; the gradient and the loss start as NaN.
    pub fn new(device: &Device, inputs: &TrainInputs) -> Result<TrainBuffers> {
        let up = |v: &[f32], what: &str| device.upload(v, what);
        Ok(TrainBuffers {
            x: up(&inputs.x, "mlp_jet_backward x")?,
            params: up(&inputs.params, "mlp_jet_backward params")?,
            a: up(&inputs.a, "mlp_jet_backward head a")?,
            b: up(&inputs.b, "mlp_jet_backward head b")?,
            c: up(&inputs.c, "mlp_jet_backward head c")?,
            grads: up(
                &vec![f32::NAN; inputs.params.len()],
                "mlp_jet_backward grads",
            )?,
            loss: up(&[f32::NAN], "mlp_jet_backward loss")?,
        })
    }

    /// Overwrite the gradient, the loss and the kernel's partial arenas with NaN.
    pub fn poison(&mut self, device: &Device, partial: &mut CudaSlice<f32>) -> Result<()> {
        for buf in [&mut self.grads, &mut self.loss, partial] {
            let nan = vec![f32::NAN; buf.len()];
            device
                .stream
                .memcpy_htod(&nan, buf)
                .during("poisoning the mlp_jet_backward outputs")?;
        }
        Ok(())
    }

    /// Enqueue `kernel` (both launches) on the problem of `inputs`, with `partial` from
    /// `kernel.workspace`.
    pub fn launch(
        &mut self,
        device: &Device,
        kernel: &MlpJetBackwardKernel,
        inputs: &TrainInputs,
        partial: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let p = &inputs.problem;
        let head = match p.loss {
            Loss::LaplacianResidual => HeadInputs::Residual {
                f: &self.a,
                data: inputs.full.then_some((&self.b, &self.c)),
            },
            Loss::Cotangents => HeadInputs::Cotangents {
                u: Some(&self.a),
                grad: inputs.full.then_some(&self.b),
                lap: Some(&self.c),
            },
        };
        let mut out = MlpJetBackwardOutputs {
            grads: &mut self.grads,
            loss: (p.loss == Loss::LaplacianResidual).then_some(&mut self.loss),
        };
        kernel.launch(
            &device.stream,
            p,
            &self.x,
            &self.params,
            &head,
            partial,
            &mut out,
        )
    }

    /// The gradient and the loss (NaN unless the residual head wrote it).
    pub fn download(&self, device: &Device) -> Result<(Vec<f32>, f32)> {
        let g = device.download(&self.grads)?;
        let l = device.download(&self.loss)?[0];
        Ok((g, l))
    }
}

/// Time each of `configs` on `problem` with inputs drawn from `seed` (the residual loss
/// without a data term, as `benches/peers/pinn_torch.py`'s training step; one set of buffers
/// for all), compiled through the cache, measured per `opts`; in the order given.
pub fn time_configs(
    device: &Device,
    compiler: &Compiler,
    bench: &mut Bench,
    problem: &MlpJetBackwardProblem,
    configs: &[MlpJetBackwardConfig],
    opts: &MeasureOptions,
    seed: u64,
) -> std::result::Result<Vec<Timed<MlpJetBackwardConfig>>, TimingError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let inputs = TrainInputs::random(&mut rng, *problem, false, 1.0);
    let mut buffers = TrainBuffers::new(device, &inputs)
        .map_err(|e| TimingError::inputs::<MlpJetBackward>(problem, e))?;
    let fail = |c: &MlpJetBackwardConfig, e| TimingError::config::<MlpJetBackward>(problem, c, e);
    let mut out = Vec::with_capacity(configs.len());
    for c in configs {
        let kernel =
            MlpJetBackwardKernel::compile(device, compiler, problem, c).map_err(|e| fail(c, e))?;
        let mut partial = kernel.workspace(device, problem).map_err(|e| fail(c, e))?;
        let measurement = bench
            .measure(opts, || {
                buffers.launch(device, &kernel, &inputs, &mut partial)
            })
            .map_err(|e| fail(c, e))?;
        out.push(Timed {
            config: *c,
            measurement,
        });
    }
    Ok(out)
}

/// Gradients and loss (built on the Laplacian): the second-derivative tolerance.
pub const TOL: f64 = 1e-4;

/// The f64 reference of `inputs` over every point (chunks of 16 points in parallel, summed in
/// chunk order), and per parameter the sum over the points of |each point's contribution| (the
/// scale [`TrainCase::compare`] measures the gradient's error against).
pub fn reference(inputs: &TrainInputs) -> (LossGrads, Vec<f64>) {
    let n = inputs.problem.points as usize;
    let chunks: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(16)
        .map(|c| c.to_vec())
        .collect();
    let head = inputs.head();
    let parts: Vec<(LossGrads, Vec<f64>)> = chunks
        .par_iter()
        .map(|w| loss_grads_and_scale(&inputs.problem, &inputs.x, &inputs.params, &head, w))
        .collect();
    let mut out = LossGrads {
        loss: 0.0,
        grads: vec![0.0; inputs.params.len()],
    };
    let mut scale = vec![0.0; inputs.params.len()];
    for (part, part_scale) in parts {
        out.loss += part.loss;
        for (o, g) in out.grads.iter_mut().zip(&part.grads) {
            *o += g;
        }
        for (o, s) in scale.iter_mut().zip(&part_scale) {
            *o += s;
        }
    }
    (out, scale)
}

/// Host inputs of one case and, when checked, the f64 reference's loss and gradient, and the
/// scale of each gradient entry's terms (empty when not checked).
pub struct TrainCase {
    pub inputs: TrainInputs,
    pub want: LossGrads,
    pub scale: Vec<f64>,
}

impl TrainCase {
    /// [`TrainInputs::random`], and its reference when `check`.
    pub fn new(
        rng: &mut impl Rng,
        p: MlpJetBackwardProblem,
        full: bool,
        gain: f64,
        check: bool,
    ) -> TrainCase {
        let inputs = TrainInputs::random(rng, p, full, gain);
        let (want, scale) = if check {
            reference(&inputs)
        } else {
            (LossGrads::default(), Vec::new())
        };
        TrainCase {
            inputs,
            want,
            scale,
        }
    }

    /// Relative error of each tensor (W_0, b_0, W_1, ...): against the larger of the
    /// tensor's values and the scale of the per-point terms they sum ([`max_rel_scaled`]);
    /// and of the loss (residual head, a sum of squares: plain relative error; 0 for
    /// cotangents). Only for a checked case.
    pub fn compare(&self, grads: &[f32], loss: f32) -> (Vec<f64>, f64) {
        let p = &self.inputs.problem;
        assert_eq!(
            self.scale.len(),
            self.want.grads.len(),
            "compare needs a checked case"
        );
        let offsets = layer_offsets(p.d, p.width, p.depth, p.p);
        let mut errs = Vec::new();
        let rel = |r: std::ops::Range<usize>| {
            max_rel_scaled(
                &grads[r.clone()],
                &self.want.grads[r.clone()],
                &self.scale[r],
            )
        };
        for (l, &(w_at, b_at)) in offsets.iter().enumerate() {
            let fan_out = if l == p.depth as usize { p.p } else { p.width } as usize;
            errs.push(rel(w_at..b_at));
            errs.push(rel(b_at..b_at + fan_out));
        }
        let loss_err = match p.loss {
            Loss::LaplacianResidual => max_rel(&[loss], &[self.want.loss]),
            Loss::Cotangents => 0.0,
        };
        (errs, loss_err)
    }
}

/// The worst of `errs` (infinite when any is NaN).
pub fn worst(errs: &[f64]) -> f64 {
    errs.iter().fold(
        0f64,
        |m, &e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
    )
}

/// Points of the reduced problem a tuned config is checked on against the f64 reference:
/// about 2^28 multiply-adds of hidden products (streams x width^2 per point), odd (so the last
/// tile is partial for every even tile size), at least 257, at most the problem's own count
/// (then the problem itself).
pub fn checked_points(p: &MlpJetBackwardProblem) -> u32 {
    let per_point = p.streams() as u64 * (p.width as u64).pow(2);
    let n = ((1u64 << 28) / per_point.max(1))
        .max(257)
        .min(p.points as u64) as u32;
    if n == p.points {
        n
    } else {
        n | 1
    }
}

/// One `mlp_jet_backward` problem's inputs on the device, a reduced case with its f64
/// reference, and the kernels prepared for it: the tuner's [`Evaluator`] (and `kiln bench`'s
/// validation). A config is validated, gradient, loss and partial arenas poisoned with NaN
/// before every launch, on (1) the same net at [`checked_points`] points against the f64
/// reference, every tensor and the loss within [`TOL`], and (2) the problem itself, twice:
/// finite, and bitwise equal (the reduction is ordered). The loss is the residual without a data
/// term, as `time_configs` and `benches/peers/pinn_torch.py` time it.
pub struct TrainBench<'a> {
    pub device: &'a Device,
    pub compiler: &'a Compiler,
    pub bench: &'a mut Bench,
    pub problem: MlpJetBackwardProblem,
    pub check: TrainCase,
    check_buffers: TrainBuffers,
    inputs: TrainInputs,
    buffers: TrainBuffers,
    kernels: HashMap<String, (MlpJetBackwardKernel, CudaSlice<f32>)>,
}

impl<'a> TrainBench<'a> {
    pub fn new(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        problem: MlpJetBackwardProblem,
        seed: u64,
    ) -> Result<Self> {
        MlpJetBackward::supports(&problem)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let small = MlpJetBackwardProblem {
            points: checked_points(&problem),
            ..problem
        };
        let check = TrainCase::new(&mut rng, small, false, 1.0, true);
        let check_buffers = TrainBuffers::new(device, &check.inputs)?;
        let inputs = TrainInputs::random(&mut rng, problem, false, 1.0);
        let buffers = TrainBuffers::new(device, &inputs)?;
        Ok(TrainBench {
            device,
            compiler,
            bench,
            problem,
            check,
            check_buffers,
            inputs,
            buffers,
            kernels: HashMap::new(),
        })
    }

    /// Both checks of the type's doc: the relative errors of the tensors (the worst of them) and
    /// of the loss, or why not.
    fn validate(
        &mut self,
        kernel: &MlpJetBackwardKernel,
    ) -> std::result::Result<(Vec<OutputError>, CudaSlice<f32>), Failure> {
        let dev = self.device;
        let fail = Failure::launch_failed;
        let small = &self.check.inputs.problem;
        let mut partial = kernel.workspace(dev, small).map_err(fail)?;
        let b = &mut self.check_buffers;
        b.poison(dev, &mut partial).map_err(fail)?;
        b.launch(dev, kernel, &self.check.inputs, &mut partial)
            .map_err(fail)?;
        let (grads, loss) = b.download(dev).map_err(fail)?;
        let (errs, loss_err) = self.check.compare(&grads, loss);
        let err = worst(&errs).max(worst(&[loss_err]));
        // `!(err <= TOL)` on purpose: a NaN error fails.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(err <= TOL) {
            return Err(Failure {
                outcome: "invalid",
                reason: format!(
                    "{} points: relative error {err:.2e} (tolerance {TOL:.0e}; worst tensor \
                     {:.1e}, loss {loss_err:.1e})",
                    small.points,
                    worst(&errs)
                ),
            });
        }
        let mut partial = kernel.workspace(dev, &self.problem).map_err(fail)?;
        let mut runs = Vec::with_capacity(2);
        for _ in 0..2 {
            let b = &mut self.buffers;
            b.poison(dev, &mut partial).map_err(fail)?;
            b.launch(dev, kernel, &self.inputs, &mut partial)
                .map_err(fail)?;
            runs.push(b.download(dev).map_err(fail)?);
        }
        // Only the residual head writes a loss (the cotangent head leaves it poisoned).
        let has_loss = self.problem.loss == Loss::LaplacianResidual;
        let finite =
            runs[0].0.iter().all(|v| v.is_finite()) && (!has_loss || runs[0].1.is_finite());
        let bits = |r: &(Vec<f32>, f32)| -> Vec<u32> {
            let loss = has_loss.then_some(&r.1);
            r.0.iter().chain(loss).map(|v| v.to_bits()).collect()
        };
        if !finite || bits(&runs[0]) != bits(&runs[1]) {
            return Err(Failure {
                outcome: "invalid",
                reason: format!(
                    "{} points: {}",
                    self.problem.points,
                    if finite {
                        "two launches differ (the reduction must be ordered)"
                    } else {
                        "non-finite gradient or loss"
                    }
                ),
            });
        }
        let outputs = vec![
            OutputError {
                name: "gradients".into(),
                max_rel_err: worst(&errs),
                bound: TOL,
                fp32_floor: None,
            },
            OutputError {
                name: "loss".into(),
                max_rel_err: loss_err,
                bound: TOL,
                fp32_floor: None,
            },
        ];
        Ok((outputs, partial))
    }
}

impl Evaluator<MlpJetBackwardConfig> for TrainBench<'_> {
    fn prepare(
        &mut self,
        configs: &[MlpJetBackwardConfig],
    ) -> Vec<std::result::Result<Prepared, Failure>> {
        let p = self.problem;
        let (device, compiler) = (self.device, self.compiler);
        // The loaded kernels go to a map of their own while `self` validates.
        let mut kernels = std::mem::take(&mut self.kernels);
        let out = prepare_each::<MlpJetBackward, _>(
            compiler,
            &p,
            configs,
            &mut kernels,
            |c, compiled| {
                let kernel = MlpJetBackwardKernel::from_cubin(device, &compiled.cubin, &p, c)
                    .map_err(Failure::launch_failed)?;
                let (outputs, partial) = self.validate(&kernel)?;
                Ok((outputs, (kernel, partial)))
            },
        );
        self.kernels = kernels;
        out
    }

    fn time(
        &mut self,
        config: &MlpJetBackwardConfig,
        reps: usize,
    ) -> std::result::Result<Measurement, Failure> {
        let (kernel, partial) = prepared_mut(&mut self.kernels, config)?;
        let (device, buffers, inputs) = (self.device, &mut self.buffers, &self.inputs);
        time_candidate(self.bench, reps, || {
            buffers.launch(device, kernel, inputs, partial)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `compare` on the CPU: the reference rounded to fp32 passes, an error of 1e-3 of an
    /// entry's term scale fails, and a cancelling entry is judged against its terms' scale.
    #[test]
    fn compare_judges_each_tensor_against_its_terms_scale() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = MlpJetBackwardProblem {
            d: 2,
            width: 32,
            depth: 2,
            p: 1,
            points: 65,
            loss: Loss::LaplacianResidual,
        };
        let case = TrainCase::new(&mut rng, p, true, 1.0, true);
        assert_eq!(case.scale.len(), case.want.grads.len());
        let rounded: Vec<f32> = case.want.grads.iter().map(|&g| g as f32).collect();
        let (errs, loss_err) = case.compare(&rounded, case.want.loss as f32);
        assert!(
            worst(&errs) <= 1e-6 && loss_err <= 1e-6,
            "{errs:?} {loss_err}"
        );
        // Some entry's terms cancel (random signs over points).
        let k = (0..case.scale.len())
            .max_by(|&a, &b| {
                let r = |i: usize| case.scale[i] / case.want.grads[i].abs().max(1e-300);
                r(a).total_cmp(&r(b))
            })
            .unwrap();
        assert!(case.scale[k] > 4.0 * case.want.grads[k].abs());
        // An error at fp32 rounding of the scale passes, however small the entry itself.
        let mut near = rounded.clone();
        near[k] = (case.want.grads[k] + 1e-6 * case.scale[k]) as f32;
        let (errs, _) = case.compare(&near, case.want.loss as f32);
        assert!(worst(&errs) <= 2e-6, "{errs:?}");
        // An error of 1e-3 of that entry's scale fails; it would fail a plain relative check
        // by more.
        let mut off = rounded.clone();
        off[k] += (1e-3 * case.scale[k]) as f32;
        let (errs, _) = case.compare(&off, case.want.loss as f32);
        assert!(worst(&errs) > TOL, "{errs:?}");
        // A NaN fails.
        let mut nan = rounded;
        nan[0] = f32::NAN;
        assert!(worst(&case.compare(&nan, case.want.loss as f32).0).is_infinite());
    }
}
