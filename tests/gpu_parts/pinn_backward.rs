//! GPU tier for `mlp_jet_backward` (included by `tests/gpu.rs`; run with `--ignored`). Fresh
//! random nets (Xavier, gain 1 or 2), points, sources, data terms and cotangents per run
//! (KILN_SEED reproduces); the gradient, the loss and the kernel's partial arenas are
//! poisoned with NaN before every launch. Each parameter tensor (every W_l and b_l) is compared
//! with the f64 CPU reference over all points: relative error = max |got - ref| over the larger
//! of max |ref| and the largest sum over points of |a point's term| in the tensor (a gradient
//! entry is a sum over points, and fp32 cannot resolve it more finely than its terms' scale,
//! however much they cancel: `TrainCase::compare`), within TOL (the gradient of a loss built on
//! second derivatives: the second-derivative tolerance); the loss (a sum of squares) by plain
//! relative error; a NaN fails.
//!
//! * `mlp_jet_backward_every_config_small`: every legal config of nets covering both heads
//!   (with and without the data term, a missing cotangent), widths 32..128, depths 2..8, d up
//!   to 32, p up to 8, point counts that are not a multiple of any tile, one point, and more
//!   tiles than CTAs (each CTA walks several); every config of the space with 32-deep weight
//!   slabs and unshared slots runs at least once, and the memory savers (16-deep slabs, a
//!   shared slot: legal only where the tile does not fit without them) in every combination
//!   with each math and rows value.
//! * `mlp_jet_backward_targets`: the three PINN target nets at 1/16 to 1/40 of their point
//!   counts (odd; every CTA walks several tiles), every candidate config, against the
//!   reference; then at their full point counts minus one (default config): finite, and two
//!   launches bitwise equal (the reduction is ordered).
//! * `mlp_jet_backward_bench`: one training step's gradient (forward jets, residual loss,
//!   backward, reduction: both launches) on the target nets, every candidate config, median
//!   of 20 with L2 flushed; compare with `pinn_torch.py`'s train rows. Inputs and timing are
//!   `kiln_tuner::pinn::backward`, which `kiln bench --family mlp_jet_backward` times with too.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, report, seed};

use kiln_codegen::families::mlp_jet_backward::{
    self as fam, Loss, MlpJetBackward, MlpJetBackwardConfig, MlpJetBackwardProblem,
};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::launch::mlp_jet_backward::MlpJetBackwardKernel;
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use kiln_tuner::pinn::backward::{time_configs, worst, TrainBuffers, TrainCase as Case, TOL};
use kiln_tuner::pinn::{fastest, precompile};
use rand::SeedableRng;
use serde_json::{json, Value};

/// Launch `c` on `case` with every output poisoned, compare; a failure is pushed as JSON.
/// Returns the worst tensor error and the loss error.
fn validate(
    dev: &Device,
    compiler: &Compiler,
    case: &Case,
    dc: &mut TrainBuffers,
    c: &MlpJetBackwardConfig,
    failures: &mut Vec<Value>,
) -> (f64, f64) {
    let p = &case.inputs.problem;
    let k =
        MlpJetBackwardKernel::compile(dev, compiler, p, c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let mut partial = k.workspace(dev, p).unwrap();
    dc.poison(dev, &mut partial).unwrap();
    dc.launch(dev, &k, &case.inputs, &mut partial)
        .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
    let (grads, loss) = dc.download(dev).unwrap();
    let (errs, loss_err) = case.compare(&grads, loss);
    let worst = worst(&errs);
    if !(worst <= TOL) || !(loss_err <= TOL) {
        failures.push(json!({"problem": p, "full_head": case.inputs.full, "config": c,
            "tensor_rel_err": errs, "loss_rel_err": loss_err, "loss": loss, "want_loss": case.want.loss}));
    }
    (worst, loss_err)
}

fn small_cases() -> Vec<(MlpJetBackwardProblem, bool, f64)> {
    let prob = |d, width, depth, p, points, loss| MlpJetBackwardProblem {
        d,
        width,
        depth,
        p,
        points,
        loss,
    };
    let (res, cot) = (Loss::LaplacianResidual, Loss::Cotangents);
    vec![
        // The three targets' nets at small point counts.
        (prob(1, 64, 4, 1, 1001, res), true, 1.0),
        (prob(2, 128, 4, 1, 777, res), false, 1.0),
        (prob(20, 128, 4, 1, 301, res), true, 1.0),
        // Curved tanh layers (gain 2), width 32 (2-wide dW chunks), deep and shallow nets.
        (prob(1, 32, 2, 1, 1000, res), true, 2.0),
        (prob(3, 64, 3, 4, 513, cot), true, 2.0),
        (prob(5, 32, 8, 2, 131, cot), false, 1.0),
        (prob(7, 128, 2, 8, 99, cot), true, 1.0),
        // The most streams (34).
        (prob(32, 64, 2, 1, 65, res), true, 1.0),
        // One point; many tiles per CTA for small tiles.
        (prob(2, 64, 5, 1, 1, res), true, 2.0),
        (prob(4, 32, 3, 1, 3001, cot), true, 1.0),
        // Width 64, two layers: the only shape here where 48-point tiles at 8 rows per thread
        // fit shared memory (slots of every layer's streams), so that config runs too.
        (prob(1, 64, 2, 1, 500, res), true, 1.0),
    ]
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mlp_jet_backward_every_config_small() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("mlp_jet_backward small: seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let limits = dev.info.limits();
    let t0 = std::time::Instant::now();
    let cases: Vec<Case> = small_cases()
        .into_iter()
        .map(|(p, full, gain)| Case::new(&mut rng, p, full, gain, true))
        .collect();
    let work: Vec<_> = cases
        .iter()
        .flat_map(|c| {
            let p = c.inputs.problem;
            MlpJetBackward::candidates(&p, &limits)
                .into_iter()
                .map(move |cfg| (p, cfg))
        })
        .collect();
    precompile::<MlpJetBackward>(&compiler, &work).unwrap_or_else(|e| panic!("{e}"));
    let (mut failures, mut rows) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    let mut all_worst = (0f64, 0f64);
    for case in &cases {
        let (p, full) = (case.inputs.problem, case.inputs.full);
        let mut dc = TrainBuffers::new(&dev, &case.inputs).unwrap_or_else(|e| panic!("{e}"));
        let candidates = MlpJetBackward::candidates(&p, &limits);
        assert!(!candidates.is_empty(), "{p:?}");
        let mut w = (0f64, 0f64);
        for c in &candidates {
            let (g, l) = validate(&dev, &compiler, case, &mut dc, c, &mut failures);
            w = (w.0.max(g), w.1.max(l));
            seen.insert(*c);
        }
        all_worst = (all_worst.0.max(w.0), all_worst.1.max(w.1));
        eprintln!(
            "  {p:?} full head {full}: {} configs, worst rel err grads {:.2e} loss {:.2e}",
            candidates.len(),
            w.0,
            w.1
        );
        rows.push(
            json!({"problem": p, "full_head": full, "configs": candidates.len(),
            "worst_grad_rel_err": w.0, "worst_loss_rel_err": w.1}),
        );
    }
    // Every config without a memory saver runs; 16-deep slabs and shared slots are legal
    // only where the tile does not fit without them (large tiles of wide, many-stream nets:
    // the d = 1, 2 and 20 nets here), and run for each combination with math and rows.
    let missed: Vec<_> = MlpJetBackward::legal_space(&limits)
        .into_iter()
        .filter(|c| {
            if c.slab_k == fam::SLAB_K && !c.share_slot {
                !seen.contains(c)
            } else {
                let key = |s: &MlpJetBackwardConfig| (s.slab_k, s.share_slot, s.math, s.rows);
                !seen.iter().any(|s| key(s) == key(c))
            }
        })
        .collect();
    if !missed.is_empty() {
        failures.push(json!({"configs_never_run": missed}));
    }
    report(
        "mlp_jet_backward_validation_small",
        &json!({"test": "mlp_jet_backward_every_config_small", "seed": seed, "launches": work.len(),
                "worst_grad_rel_err": all_worst.0, "worst_loss_rel_err": all_worst.1, "tolerance": TOL,
                "wall_s": t0.elapsed().as_secs_f64(), "rows": rows, "failures": failures}),
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mlp_jet_backward_targets() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("mlp_jet_backward targets: seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let limits = dev.info.limits();
    let (mut failures, mut rows) = (Vec::new(), Vec::new());
    for (t, full_p) in fam::pinn_targets().into_iter().enumerate() {
        // Against the reference: 2^20 / 64, 2^18 / 32, 2^16 / 40 points, odd.
        let points = [16383, 8191, 1639][t];
        let p = MlpJetBackwardProblem { points, ..full_p };
        let case = Case::new(&mut rng, p, t != 1, 1.0, true);
        let configs = MlpJetBackward::candidates(&p, &limits);
        precompile::<MlpJetBackward>(
            &compiler,
            &configs.iter().map(|c| (p, *c)).collect::<Vec<_>>(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut dc = TrainBuffers::new(&dev, &case.inputs).unwrap_or_else(|e| panic!("{e}"));
        for c in &configs {
            let (g, l) = validate(&dev, &compiler, &case, &mut dc, c, &mut failures);
            eprintln!("  {p:?} {c:?}: rel err grads {g:.2e} loss {l:.2e}");
            rows.push(json!({"problem": p, "config": c, "grad_rel_err": g, "loss_rel_err": l}));
        }
        // Full size minus one: finite and deterministic.
        let p = MlpJetBackwardProblem {
            points: full_p.points - 1,
            ..full_p
        };
        let case = Case::new(&mut rng, p, true, 1.0, false);
        let c = MlpJetBackward::default_config(&p);
        let k = MlpJetBackwardKernel::compile(&dev, &compiler, &p, &c).unwrap();
        let mut dc = TrainBuffers::new(&dev, &case.inputs).unwrap_or_else(|e| panic!("{e}"));
        let mut partial = k.workspace(&dev, &p).unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            dc.poison(&dev, &mut partial).unwrap();
            dc.launch(&dev, &k, &case.inputs, &mut partial)
                .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
            runs.push(dc.download(&dev).unwrap());
        }
        let finite = runs[0].0.iter().all(|v| v.is_finite()) && runs[0].1.is_finite();
        let same = runs[0]
            .0
            .iter()
            .zip(&runs[1].0)
            .all(|(a, b)| a.to_bits() == b.to_bits())
            && runs[0].1.to_bits() == runs[1].1.to_bits();
        eprintln!(
            "  {p:?} {c:?}: finite {finite}, bitwise repeatable {same}, loss {}",
            runs[0].1
        );
        if !finite || !same {
            failures.push(json!({"problem": p, "config": c, "finite": finite, "repeatable": same}));
        }
        rows.push(json!({"problem": p, "config": c, "finite": finite, "repeatable": same, "loss": runs[0].1}));
    }
    report(
        "mlp_jet_backward_validation_targets",
        &json!({"test": "mlp_jet_backward_targets", "seed": seed, "tolerance": TOL,
                "rows": rows, "failures": failures}),
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mlp_jet_backward_bench() {
    let (dev, compiler) = open();
    let limits = dev.info.limits();
    let t0 = std::time::Instant::now();
    let targets = fam::pinn_targets();
    let work: Vec<_> = targets
        .iter()
        .flat_map(|p| {
            MlpJetBackward::candidates(p, &limits)
                .into_iter()
                .map(move |c| (*p, c))
        })
        .collect();
    precompile::<MlpJetBackward>(&compiler, &work).unwrap_or_else(|e| panic!("{e}"));
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 3,
        reps: 20,
        flush_l2: true,
    };
    let mut rows = Vec::new();
    for (i, p) in targets.iter().enumerate() {
        // Inputs only (no reference): the validation tests check these kernels.
        let default = MlpJetBackward::default_config(p);
        let candidates = MlpJetBackward::candidates(p, &limits);
        let timed = time_configs(
            &dev,
            &compiler,
            &mut bench,
            p,
            &candidates,
            &opts,
            7 + i as u64,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let best = fastest(&timed).expect("every target net has candidates");
        let (best_c, best_m) = (&best.config, &best.measurement);
        let default_us = timed
            .iter()
            .find(|t| t.config == default)
            .map(|t| t.measurement.median_us);
        let tflops = |us: f64| MlpJetBackward::flops(p) / (us * 1e-6) / 1e12;
        eprintln!(
            "  d={} width={} depth={} N={}: best {:.1} us ({:.1} TFLOP/s) {best_c:?}, default {:?} us",
            p.d,
            p.width,
            p.depth,
            p.points,
            best_m.median_us,
            tflops(best_m.median_us),
            default_us
        );
        rows.push(json!({
            "problem": p,
            "best": {"config": best_c, "measurement": best_m, "tflops": tflops(best_m.median_us)},
            "default": {"config": default, "median_us": default_us},
            "candidates": timed.iter().map(|t| {
                let m = &t.measurement;
                json!({"config": t.config, "median_us": m.median_us, "p20_us": m.p20_us,
                       "p80_us": m.p80_us, "estimate_us": MlpJetBackward::estimate_us(p, &t.config, &limits),
                       "tflops": tflops(m.median_us)})
            }).collect::<Vec<_>>(),
        }));
    }
    report(
        "mlp_jet_backward_bench",
        &json!({
            "test": "mlp_jet_backward_bench",
            "device": dev.info,
            "clock_and_temperature": kiln_runtime::measure::gpu_clock_and_temperature(0),
            "how": "median of 20 CUDA-event-timed calls after 3 warm-up, L2 flushed (a read of a 2x-L2 buffer) before each; one call = the fused kernel (forward jets u, grad u, Laplacian; residual loss -Lap u - f, mean square; backward to every weight and bias) + the ordered reduction, fp32; tflops = products only (MlpJetBackward::flops) / time; compare with pinn_torch.json's train rows (PyTorch autograd, same nets, loss.backward())",
            "wall_s": t0.elapsed().as_secs_f64(),
            "rows": rows,
        }),
    );
}
