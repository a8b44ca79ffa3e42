//! `mlp_jet_backward` on the GPU: random inputs of one training step, their device buffers,
//! and the timing of configs (one call = the fused kernel + the ordered reduction).

use kiln_codegen::families::mlp_jet::init_params;
use kiln_codegen::families::mlp_jet_backward::reference::Head;
use kiln_codegen::families::mlp_jet_backward::{
    Loss, MlpJetBackward, MlpJetBackwardConfig, MlpJetBackwardProblem,
};
use kiln_codegen::Compiler;
use kiln_runtime::error::DriverContext;
use kiln_runtime::launch::mlp_jet_backward::{
    CudaSlice, HeadInputs, MlpJetBackwardKernel, MlpJetBackwardOutputs,
};
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::{Device, Result};
use rand::{Rng, SeedableRng};

use super::{Timed, TimingError};

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
