//! Train a physics-informed network with kiln's tuned kernels, the way a server embeds them.
//!
//! The problem: -Lap u = f on [-1, 1]^2 with f = 2 pi^2 sin(pi x) sin(pi y), whose solution
//! is u* = sin(pi x) sin(pi y) (zero on the boundary). The net is the d = 2 PINN target net
//! (width 128, 4 tanh layers). Each step runs one `mlp_jet_backward` call (forward jets, the
//! loss mean((-Lap u - f)^2 + w (u - g)^2), reverse pass to every parameter, ordered reduction)
//! and one `adam` update (learning rate 2e-3 decaying to 1e-4), both on the GPU. The residual applies at every point; the data term
//! (weight 100, target 0) only at the boundary points. The config of each kernel is what the
//! tuned artifact serves (`Dispatch`), else the family default; the program prints which.
//! At the end the net is compared with u* on a grid, on the host from the downloaded
//! parameters (the f64 reference of `mlp_jet`).
//!
//!     cargo run --release --example pinn_train [-- STEPS [POINTS [TUNED_DIR]]]
//!
//! (defaults 3000 steps, 65536 points, `tuned`: the artifacts folder, as `kiln tune` writes it).
//! Needs an NVIDIA GPU (sm_90) and NVRTC (see README, "Finding NVRTC").

use std::error::Error;
use std::f64::consts::PI;
use std::path::Path;

use kiln_codegen::families::adam::{Adam, AdamHyper, AdamProblem, WeightDecay};
use kiln_codegen::families::mlp_jet::{init_params, reference_points, MlpJetProblem};
use kiln_codegen::families::mlp_jet_backward::{Loss, MlpJetBackward, MlpJetBackwardProblem};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::dispatch::Dispatch;
use kiln_runtime::launch::adam::{AdamArena, AdamKernel};
use kiln_runtime::launch::mlp_jet_backward::{
    HeadInputs, MlpJetBackwardKernel, MlpJetBackwardOutputs,
};
use kiln_runtime::Device;
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let steps: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3000);
    let points: u32 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1 << 16);

    let device = Device::open(0)?;
    let compiler = Compiler::new()?;
    let nvrtc = compiler.toolchain().version_string();
    let tuned = args.next().unwrap_or_else(|| "tuned".into());
    let tuned = Path::new(&tuned);

    // The training step: its config from the tuned artifact (nearest point count), else the
    // family default.
    let problem = MlpJetBackwardProblem {
        d: 2,
        width: 128,
        depth: 4,
        p: 1,
        points,
        loss: Loss::LaplacianResidual,
    };
    let dispatch = Dispatch::<MlpJetBackward>::load(tuned, &device.info, Some(&nvrtc));
    for n in &dispatch.notes {
        eprintln!("note: {n}");
    }
    let chosen = dispatch.select(&problem);
    println!(
        "{}: {} ({:?})",
        MlpJetBackward::NAME,
        serde_json::to_string(&chosen.config)?,
        chosen.source
    );
    let step_kernel = MlpJetBackwardKernel::compile(&device, &compiler, &problem, &chosen.config)?;

    let n_params = problem.params();
    let adam_problem = AdamProblem::fp32(n_params as u64, WeightDecay::None);
    let adam_config = Adam::default_config(&adam_problem);
    let adam = AdamKernel::compile(&device, &compiler, &adam_problem, &adam_config)?;
    // Learning rate 2e-3, decayed exponentially to 1e-4 at the last step.
    let lr = |step: u64| 2e-3 * (0.05f64).powf((step - 1) as f64 / steps.max(2) as f64);

    // Points: the first tenth on the boundary (data term), the rest inside.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n = points as usize;
    let boundary = n / 10;
    let mut x = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (a, b) = (
            rng.random_range(-1.0f64..1.0),
            rng.random_range(-1.0f64..1.0),
        );
        let p = if i < boundary {
            // One coordinate pinned to +-1.
            match i % 4 {
                0 => (-1.0, b),
                1 => (1.0, b),
                2 => (a, -1.0),
                _ => (a, 1.0),
            }
        } else {
            (a, b)
        };
        x.extend([p.0 as f32, p.1 as f32]);
    }
    let f: Vec<f32> = (0..n)
        .map(|i| {
            let (a, b) = (x[2 * i] as f64, x[2 * i + 1] as f64);
            (2.0 * PI * PI * (PI * a).sin() * (PI * b).sin()) as f32
        })
        .collect();
    let target = vec![0.0f32; n];
    // The boundary condition weighs 100x a residual point: with weight 1 the residual (f is
    // up to 2 pi^2) dominates and u drifts off u* by a harmonic function (H200, 3000 steps:
    // 12% L2 error with weight 1, 0.44% with 100).
    let weight: Vec<f32> = (0..n)
        .map(|i| if i < boundary { 100.0 } else { 0.0 })
        .collect();
    let jet_net = MlpJetProblem::laplacian(2, 128, 4, 1, 1);
    let params0 = init_params(&jet_net, 1.0, || rng.random_range(-1.0f64..1.0));

    let d_x = device.upload(&x, "x")?;
    let d_f = device.upload(&f, "f")?;
    let d_target = device.upload(&target, "target")?;
    let d_weight = device.upload(&weight, "weight")?;
    let mut d_params = device.upload(&params0, "params")?;
    let mut d_grads = device.zeros::<f32>(n_params, "grads")?;
    let mut d_loss = device.zeros::<f32>(1, "loss")?;
    let mut d_m = device.zeros::<f32>(n_params, "adam m")?;
    let mut d_v = device.zeros::<f32>(n_params, "adam v")?;
    let mut partial = step_kernel.workspace(&device, &problem)?;

    let t0 = std::time::Instant::now();
    let mut first_loss = None;
    for step in 1..=steps {
        let head = HeadInputs::Residual {
            f: &d_f,
            data: Some((&d_target, &d_weight)),
        };
        let mut out = MlpJetBackwardOutputs {
            grads: &mut d_grads,
            loss: Some(&mut d_loss),
        };
        step_kernel.launch(
            &device.stream,
            &problem,
            &d_x,
            &d_params,
            &head,
            &mut partial,
            &mut out,
        )?;
        let mut arena = AdamArena {
            params: d_params.slice_mut(..),
            grads: d_grads.slice(..),
            m: d_m.slice_mut(..),
            v: d_v.slice_mut(..),
        };
        let hyper = AdamHyper {
            lr: lr(step),
            ..AdamHyper::default()
        };
        adam.launch(&device.stream, &adam_problem, &mut arena, &hyper, step)?;
        if step == 1 || step % 100 == 0 || step == steps {
            // The loss of the parameters before this step's update.
            let loss = device.download(&d_loss)?[0];
            if !loss.is_finite() {
                return Err(format!("step {step}: the loss is {loss}").into());
            }
            first_loss.get_or_insert(loss);
            println!("step {step:>5}: loss {loss:.4e}");
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    println!(
        "{steps} steps on {points} points in {elapsed:.2} s ({:.2} ms per step, with the host \
         reading the loss every 100 steps)",
        1e3 * elapsed / steps as f64
    );

    // The trained net against u* on a 41 x 41 grid (f64 on the host).
    let params = device.download(&d_params)?;
    let g = 41;
    let grid: Vec<f32> = (0..g * g)
        .flat_map(|k| {
            let (i, j) = (k / g, k % g);
            [
                (-1.0 + 2.0 * i as f64 / (g - 1) as f64) as f32,
                (-1.0 + 2.0 * j as f64 / (g - 1) as f64) as f32,
            ]
        })
        .collect();
    let on_grid = MlpJetProblem {
        points: (g * g) as u32,
        ..jet_net
    };
    let all: Vec<usize> = (0..g * g).collect();
    let u = reference_points(&on_grid, &grid, &params, &all).u;
    let (mut err2, mut ref2) = (0.0, 0.0);
    for k in 0..g * g {
        let (a, b) = (grid[2 * k] as f64, grid[2 * k + 1] as f64);
        let want = (PI * a).sin() * (PI * b).sin();
        err2 += (u[k] - want).powi(2);
        ref2 += want * want;
    }
    println!(
        "relative L2 error against u* = sin(pi x) sin(pi y) on a {g} x {g} grid: {:.3e} \
         (first loss {:.3e})",
        (err2 / ref2).sqrt(),
        first_loss.unwrap_or(f32::NAN)
    );
    Ok(())
}
