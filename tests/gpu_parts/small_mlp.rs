//! GPU tier for `small_mlp` (included by `tests/gpu.rs`; run by `.gpu/gpu-run.sh` with
//! `--ignored`). Fresh random inputs and Xavier-initialised weights per run (KILN_SEED
//! reproduces); every output poisoned with NaN before every launch; each output compared with
//! the f64 CPU reference: relative error = max |got - ref| / max |ref| <= 1e-5 (a NaN fails).
//!
//! * `small_mlp_every_pass_matches_the_reference`: every legal config of every pass on the
//!   WGAN-GP critic (64 -> 128 x 3 leaky ReLU -> 1, B = 1000) and generator (32 -> 128 x 3
//!   tanh -> 64, B = 1000) and on nets with odd dimensions and row counts (B = 1, 77, 129,
//!   333, 513; widths 32 .. 256; depth 1 .. 6; tanh, ReLU, leaky ReLU). Forward: y and the
//!   stash. VJP: dx. Parameter backward: every weight and bias gradient. Penalty: dP/dW,
//!   dP/db, u = grad_x D and the per-row terms. The backward passes read the GPU forward's
//!   stash. The gradient passes run twice: the second launch must be bit-identical (the
//!   reduction is deterministic and the barrier word left reusable). (Leaky) ReLU inputs are
//!   kept 1e-4 off the kinks (rows resampled), so fp32 and f64 take the same branch.
//! * `small_mlp_bench`: the critic and generator passes at B = 1000 and 4096, every config,
//!   median of 20 launches with L2 flushed; kiln's side of `benches/peers/wgan_torch.py`.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, report, seed};

use kiln_codegen::families::small_mlp::reference::{self as reference, init_params, Net};
use kiln_codegen::families::small_mlp::{
    wgan_critic, wgan_generator, Activation, Pass, SmallMlp, SmallMlpConfig, SmallMlpProblem,
};
use kiln_codegen::{CompileOptions, Compiler, Family};
use kiln_runtime::launch::small_mlp::{CudaSlice, SmallMlpKernel};
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

const TOL: f64 = 1e-5;
/// Distance (in z) kept from the kink of a (leaky) ReLU.
const KINK_GAP: f64 = 1e-4;

/// max |got - want| / max |want|; infinite for a non-finite value.
fn rel(got: &[f32], want: &[f64]) -> f64 {
    rel_floor(got, want, 0.0)
}

/// `rel` with a floor under the scale (the forward output: the size of the terms summed into
/// it, so a cancelled output is judged on the rounding error of its sum).
fn rel_floor(got: &[f32], want: &[f64], floor: f64) -> f64 {
    let (mut err, mut scale) = (0.0f64, floor);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        err = err.max((g as f64 - w).abs());
        scale = scale.max(w.abs());
    }
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    err / scale.max(1e-300)
}

fn net(
    d_in: u32,
    width: u32,
    depth: u32,
    d_out: u32,
    activation: Activation,
    rows: u32,
) -> SmallMlpProblem {
    SmallMlpProblem {
        pass: Pass::Forward,
        d_in,
        width,
        depth,
        d_out,
        activation,
        rows,
    }
}

/// One net with its inputs and every reference.
struct Case {
    p: SmallMlpProblem,
    params: Vec<f32>,
    x: Vec<f32>,
    gy: Vec<f32>,
    y: Vec<f64>,
    /// `reference::output_term_sizes`: the scale of y's error.
    y_terms: Vec<f64>,
    stash: Vec<f64>,
    dx: Vec<f64>,
    pgrad: Vec<f64>,
    /// Penalty references (scalar critics): dP/dtheta, u, per-row terms.
    gp: Option<(Vec<f64>, Vec<f64>, Vec<f64>)>,
}

impl Case {
    fn new(rng: &mut impl Rng, p: SmallMlpProblem) -> Case {
        let mut uniform = || rng.random_range(-1.0f64..1.0);
        let params = init_params(&p, &mut uniform);
        let nt = Net::of(&p, &params);
        let (b, d_in) = (p.rows as usize, p.d_in as usize);
        let mut x: Vec<f32> = (0..b * d_in).map(|_| uniform() as f32).collect();
        if p.activation != Activation::Tanh {
            // Resample rows with a pre-activation near a kink.
            for r in 0..b {
                for _ in 0..1000 {
                    let row = &x[r * d_in..(r + 1) * d_in];
                    let z = reference::hidden_preactivations(&nt, row);
                    if z.iter().all(|v| v.abs() > KINK_GAP) {
                        break;
                    }
                    for v in &mut x[r * d_in..(r + 1) * d_in] {
                        *v = uniform() as f32;
                    }
                }
            }
        }
        let gy: Vec<f32> = (0..b * p.d_out as usize)
            .map(|_| uniform() as f32)
            .collect();
        let (y, stash) = reference::forward(&nt, &x);
        let y_terms = reference::output_term_sizes(&nt, &x);
        let dx = reference::input_vjp(&nt, &x, &gy);
        let pgrad = reference::param_grad(&nt, &x, &gy);
        let gp = (p.d_out == 1).then(|| {
            let (_, u) = reference::penalty(&nt, &x);
            let terms: Vec<f64> = u
                .chunks(d_in)
                .map(|r| (r.iter().map(|v| v * v).sum::<f64>().sqrt() - 1.0).powi(2))
                .collect();
            (reference::penalty_grad(&nt, &x), u, terms)
        });
        Case {
            p,
            params,
            x,
            gy,
            y,
            y_terms,
            stash,
            dx,
            pgrad,
            gp,
        }
    }

    fn passes(&self) -> Vec<Pass> {
        let mut v = vec![Pass::Forward, Pass::InputVjp, Pass::ParamGrad];
        if self.gp.is_some() {
            v.push(Pass::PenaltyGrad);
        }
        v
    }

    fn describe(&self) -> Value {
        json!({"d_in": self.p.d_in, "width": self.p.width, "depth": self.p.depth, "d_out": self.p.d_out,
               "activation": self.p.activation, "rows": self.p.rows})
    }
}

fn cases(rng: &mut impl Rng) -> Vec<Case> {
    let shapes = [
        wgan_critic(Pass::Forward, 1000),
        wgan_generator(Pass::Forward, 1000),
        net(3, 256, 2, 5, Activation::Relu, 77),
        net(5, 64, 2, 3, Activation::Tanh, 333),
        net(7, 32, 1, 1, Activation::Tanh, 1),
        net(200, 64, 6, 1, Activation::LeakyRelu, 129),
        net(17, 256, 4, 1, Activation::Tanh, 513),
    ];
    shapes.iter().map(|p| Case::new(rng, *p)).collect()
}

fn compile_all(compiler: &Compiler, work: &[(SmallMlpProblem, SmallMlpConfig)]) {
    let opts = CompileOptions::default();
    let errors: Vec<String> = work
        .par_iter()
        .filter_map(|(p, c)| {
            let src = kiln_codegen::render::render::<SmallMlp>(p, c).unwrap();
            compiler.compile(&src, &opts).err().map(|e| e.to_string())
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

fn nan(dev: &Device, n: usize, what: &str) -> CudaSlice<f32> {
    dev.upload(&vec![f32::NAN; n.max(1)], what).unwrap()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn small_mlp_every_pass_matches_the_reference() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = std::time::Instant::now();
    let cases = cases(&mut rng);
    let limits = dev.info.limits();
    let work: Vec<(SmallMlpProblem, SmallMlpConfig)> = cases
        .iter()
        .flat_map(|cs| cs.passes().into_iter().map(|pass| cs.p.with_pass(pass)))
        .flat_map(|p| {
            SmallMlp::candidates(&p, &limits)
                .into_iter()
                .map(move |c| (p, c))
        })
        .collect();
    compile_all(&compiler, &work);
    let mut failures: Vec<Value> = Vec::new();
    let mut rows_out: Vec<Value> = Vec::new();
    let mut launches = 0usize;
    let mut worst = 0.0f64;
    for cs in &cases {
        let b = cs.p.rows as usize;
        let dx_ = dev.upload(&cs.x, "x").unwrap();
        let dparams = dev.upload(&cs.params, "params").unwrap();
        let dgy = dev.upload(&cs.gy, "gy").unwrap();
        // The stash every backward pass reads: the GPU forward of the default config.
        let fwd = cs.p.with_pass(Pass::Forward);
        let mut stash = nan(&dev, fwd.stash_len(), "stash");
        {
            let k = SmallMlpKernel::compile(&dev, &compiler, &fwd, &SmallMlp::default_config(&fwd))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut y = nan(&dev, b * cs.p.d_out as usize, "y");
            k.forward(&dev.stream, &fwd, &dx_, &dparams, &mut y, Some(&mut stash))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for pass in cs.passes() {
            let p = cs.p.with_pass(pass);
            let mut pass_worst = 0.0f64;
            for c in SmallMlp::candidates(&p, &limits) {
                let k = SmallMlpKernel::compile(&dev, &compiler, &p, &c)
                    .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                let mut errs: Vec<(&str, f64)> = Vec::new();
                let mut same = true;
                match pass {
                    Pass::Forward => {
                        let mut y = nan(&dev, b * p.d_out as usize, "y");
                        let mut st = nan(&dev, p.stash_len(), "stash");
                        k.forward(&dev.stream, &p, &dx_, &dparams, &mut y, Some(&mut st))
                            .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                        errs.push((
                            "y",
                            rel_floor(
                                &dev.download(&y).unwrap(),
                                &cs.y,
                                cs.y_terms.iter().fold(0.0, |m: f64, v| m.max(*v)),
                            ),
                        ));
                        errs.push(("stash", rel(&dev.download(&st).unwrap(), &cs.stash)));
                        launches += 1;
                    }
                    Pass::InputVjp => {
                        let mut dx = nan(&dev, b * p.d_in as usize, "dx");
                        k.input_vjp(&dev.stream, &p, &dparams, &stash, &dgy, &mut dx)
                            .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                        errs.push(("dx", rel(&dev.download(&dx).unwrap(), &cs.dx)));
                        launches += 1;
                    }
                    Pass::ParamGrad | Pass::PenaltyGrad => {
                        let mut ws = k.workspace(&dev, &p).unwrap();
                        let mut first: Option<Vec<f32>> = None;
                        for rep in 0..2 {
                            let mut g = nan(&dev, p.params(), "grads");
                            if pass == Pass::ParamGrad {
                                k.param_grad(
                                    &dev.stream,
                                    &p,
                                    &dx_,
                                    &dparams,
                                    &stash,
                                    &dgy,
                                    &mut g,
                                    &mut ws,
                                )
                                .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                            } else {
                                let mut u = nan(&dev, b * p.d_in as usize, "u");
                                let mut terms = nan(&dev, b, "penalty terms");
                                k.penalty_grad(
                                    &dev.stream,
                                    &p,
                                    &dx_,
                                    &dparams,
                                    &stash,
                                    &mut g,
                                    &mut ws,
                                    Some(&mut u),
                                    Some(&mut terms),
                                )
                                .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                                if rep == 0 {
                                    let (_, want_u, want_t) = cs.gp.as_ref().unwrap();
                                    errs.push(("u", rel(&dev.download(&u).unwrap(), want_u)));
                                    errs.push((
                                        "terms",
                                        rel(&dev.download(&terms).unwrap(), want_t),
                                    ));
                                }
                            }
                            launches += 1;
                            let got = dev.download(&g).unwrap();
                            match &first {
                                None => {
                                    let want = if pass == Pass::ParamGrad {
                                        &cs.pgrad
                                    } else {
                                        &cs.gp.as_ref().unwrap().0
                                    };
                                    errs.push(("grads", rel(&got, want)));
                                    first = Some(got);
                                }
                                Some(f) => {
                                    same =
                                        f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits())
                                }
                            }
                        }
                    }
                }
                for (_, e) in &errs {
                    pass_worst = pass_worst.max(*e);
                }
                if !errs.iter().all(|(_, e)| *e <= TOL) || !same {
                    failures.push(json!({"net": cs.describe(), "pass": pass, "config": c,
                        "rel_err": errs.iter().map(|(n, e)| json!({*n: e})).collect::<Vec<_>>(),
                        "second_launch_bit_identical": same}));
                }
            }
            worst = worst.max(pass_worst);
            rows_out.push(
                json!({"net": cs.describe(), "pass": pass, "worst_rel_err": pass_worst,
                                 "configs": SmallMlp::candidates(&p, &limits).len()}),
            );
        }
    }
    report(
        "small_mlp_validation",
        &json!({"test": "small_mlp_every_pass_matches_the_reference", "seed": seed,
                "launches": launches, "worst_rel_err": worst, "tolerance": TOL,
                "wall_s": t0.elapsed().as_secs_f64(), "rows": rows_out, "failures": failures}),
    );
    eprintln!(
        "small_mlp: {} nets, {launches} launches, worst rel err {worst:.3e}, {} failures",
        cases.len(),
        failures.len()
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn small_mlp_bench() {
    let (dev, compiler) = open();
    let t0 = std::time::Instant::now();
    let limits = dev.info.limits();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 3,
        reps: 20,
        flush_l2: true,
    };
    let mut rows_out = Vec::new();
    let mut work = Vec::new();
    let nets: Vec<(&str, SmallMlpProblem)> = [1000u32, 4096]
        .iter()
        .flat_map(|&b| {
            [
                ("critic", wgan_critic(Pass::Forward, b)),
                ("generator", wgan_generator(Pass::Forward, b)),
            ]
        })
        .collect();
    for (_, n) in &nets {
        for pass in [
            Pass::Forward,
            Pass::InputVjp,
            Pass::ParamGrad,
            Pass::PenaltyGrad,
        ] {
            let p = n.with_pass(pass);
            if SmallMlp::supports(&p).is_ok() {
                work.extend(
                    SmallMlp::candidates(&p, &limits)
                        .into_iter()
                        .map(|c| (p, c)),
                );
            }
        }
    }
    compile_all(&compiler, &work);
    for (name, n) in &nets {
        let b = n.rows as usize;
        let mut uniform = || rng.random_range(-1.0f64..1.0);
        let params = init_params(n, &mut uniform);
        let x: Vec<f32> = (0..b * n.d_in as usize).map(|_| uniform() as f32).collect();
        let gy: Vec<f32> = (0..b * n.d_out as usize)
            .map(|_| uniform() as f32)
            .collect();
        let dxin = dev.upload(&x, "x").unwrap();
        let dparams = dev.upload(&params, "params").unwrap();
        let dgy = dev.upload(&gy, "gy").unwrap();
        let mut y = dev.zeros::<f32>(b * n.d_out as usize, "y").unwrap();
        let mut stash = dev.zeros::<f32>(n.stash_len(), "stash").unwrap();
        let mut dx = dev.zeros::<f32>(b * n.d_in as usize, "dx").unwrap();
        let mut grads = dev.zeros::<f32>(n.params(), "grads").unwrap();
        for pass in [
            Pass::Forward,
            Pass::InputVjp,
            Pass::ParamGrad,
            Pass::PenaltyGrad,
        ] {
            let p = n.with_pass(pass);
            if SmallMlp::supports(&p).is_err() {
                continue;
            }
            let default = SmallMlp::default_config(&p);
            let mut cands = vec![default];
            cands.extend(
                SmallMlp::candidates(&p, &limits)
                    .into_iter()
                    .filter(|c| *c != default),
            );
            let mut results = Vec::new();
            for c in cands {
                let k = SmallMlpKernel::compile(&dev, &compiler, &p, &c)
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut ws = k.workspace(&dev, &p).unwrap();
                let m = bench
                    .measure(&opts, || match pass {
                        Pass::Forward => {
                            k.forward(&dev.stream, &p, &dxin, &dparams, &mut y, Some(&mut stash))
                        }
                        Pass::InputVjp => {
                            k.input_vjp(&dev.stream, &p, &dparams, &stash, &dgy, &mut dx)
                        }
                        Pass::ParamGrad => k.param_grad(
                            &dev.stream,
                            &p,
                            &dxin,
                            &dparams,
                            &stash,
                            &dgy,
                            &mut grads,
                            &mut ws,
                        ),
                        Pass::PenaltyGrad => k.penalty_grad(
                            &dev.stream,
                            &p,
                            &dxin,
                            &dparams,
                            &stash,
                            &mut grads,
                            &mut ws,
                            None,
                            None,
                        ),
                    })
                    .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
                results.push((c, m));
            }
            let (best_c, best_m) = results
                .iter()
                .min_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us))
                .unwrap();
            let tflops = |us: f64| SmallMlp::flops(&p) / (us * 1e-6) / 1e12;
            eprintln!(
                "  {name:<9} B={b:<5} {pass:?}: best {:.2} us ({:.2} TFLOP/s), default {:.2} us",
                best_m.median_us,
                tflops(best_m.median_us),
                results[0].1.median_us
            );
            rows_out.push(json!({
                "net": name, "problem": p,
                "best": {"config": best_c, "measurement": best_m, "tflops": tflops(best_m.median_us)},
                "default": {"config": results[0].0, "median_us": results[0].1.median_us},
                "candidates": results.iter().map(|(c, m)| json!({"config": c, "median_us": m.median_us,
                    "p20_us": m.p20_us, "p80_us": m.p80_us})).collect::<Vec<_>>(),
            }));
        }
    }
    report(
        "small_mlp_bench",
        &json!({
            "test": "small_mlp_bench",
            "device": dev.info,
            "clock_and_temperature": kiln_runtime::measure::gpu_clock_and_temperature(0),
            "how": "median of 20 CUDA-event-timed launches, L2 flushed (a read of a 2x-L2 buffer) before each; \
                    one launch per pass (forward with the stash; VJP and parameter backward from \
                    the stash; the penalty pass computes u itself); tflops counts products only \
                    (SmallMlp::flops). Peer: benches/peers/wgan_torch.py (PyTorch autograd).",
            "wall_s": t0.elapsed().as_secs_f64(),
            "rows": rows_out,
        }),
    );
}
