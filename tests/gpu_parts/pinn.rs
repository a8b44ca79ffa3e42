//! GPU tier for `mlp_jet` (included by `tests/gpu.rs`; run by `scripts/gpu-run.sh` with
//! `--ignored`). Fresh random points and Xavier-initialised weights per run (KILN_SEED
//! reproduces), every output poisoned with NaN before every launch, each stream compared with
//! the f64 CPU reference: relative error = max |got - ref| / max |ref| over the stream, value
//! and gradient within 1e-5, second derivatives within 1e-4; a NaN fails. Some random nets
//! (a scalar output of a 1-D net in particular) are ill-conditioned for this metric: exact
//! fp32 evaluation itself misses 1e-5 on about 1 net in 40 (the output is far smaller than
//! the terms summed into it). So each stream's bound is the larger of the tolerance and
//! FLOOR_FACTOR x the error of the same jets evaluated in f32 on the CPU (the fp32 floor of
//! that net), and both numbers are reported.
//!
//! * `mlp_jet_every_config_small`: every legal config (fp32 FMA and tf32x3) of nets covering
//!   every stream set, widths 32..256, d up to 32, one and several output passes, point counts
//!   that are not a multiple of any tile, one net with more tiles than resident CTAs (the
//!   persistent loop); all points checked; every config of the space runs at least once.
//! * `mlp_jet_targets`: the three PINN target nets at their full point counts minus one (a
//!   partial last tile; each CTA walks many tiles), the default config and the next three by
//!   the family's estimate, 600 sampled points (first and last included) checked, every output
//!   checked for NaN.
//! * `mlp_jet_bench`: the target nets, every legal config, median of 20 launches with L2
//!   flushed, TFLOP/s (products only, as `MlpJet::flops` counts them). Inputs and timing are
//!   `kiln_tuner::pinn::jet`, which `kiln bench --family mlp_jet` times with too.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, report, seed};

use kiln_codegen::families::mlp_jet::{self as fam, MlpJet, MlpJetConfig, MlpJetProblem, Streams};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::launch::mlp_jet::MlpJetKernel;
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use kiln_tuner::pinn::jet::{time_configs, JetBuffers, JetCase as Case, TOL_FIRST, TOL_SECOND};
use kiln_tuner::pinn::{fastest, precompile};
use rand::SeedableRng;
use serde_json::{json, Value};

/// Launch `c` on `case` with outputs poisoned, compare; failures are pushed as JSON.
fn validate(
    dev: &Device,
    compiler: &Compiler,
    case: &Case,
    dc: &mut JetBuffers,
    c: &MlpJetConfig,
    failures: &mut Vec<Value>,
) -> [f64; 3] {
    let p = &case.inputs.problem;
    let k = MlpJetKernel::compile(dev, compiler, p, c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    dc.poison(dev).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    dc.launch(dev, &k, p)
        .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
    let got = dc.download(dev, p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    let (errs, bad) = case.compare(&got);
    if bad || !case.within(&errs) {
        failures.push(
            json!({"problem": p, "config": c, "rel_err": errs, "bound": case.bound,
                             "fp32_floor": case.floor, "non_finite": bad}),
        );
    }
    errs
}

fn worst(a: &mut [f64; 3], b: [f64; 3]) {
    for s in 0..3 {
        a[s] = a[s].max(b[s]);
    }
}

fn small_problems() -> Vec<MlpJetProblem> {
    let prob = |d, width, depth, p, points, streams| MlpJetProblem {
        d,
        width,
        depth,
        p,
        points,
        streams,
    };
    vec![
        // The three targets' nets at small point counts.
        MlpJetProblem::laplacian(1, 64, 4, fam::TARGET_P, 1001),
        MlpJetProblem::laplacian(2, 128, 4, fam::TARGET_P, 777),
        MlpJetProblem::laplacian(20, 128, 4, fam::TARGET_P, 301),
        // Every stream set; several output passes (p > width), a partial last pass.
        prob(3, 32, 2, 40, 999, Streams::Value),
        prob(2, 64, 3, 5, 513, Streams::ValueGrad),
        prob(1, 32, 5, 3, 1000, Streams::ValueD2),
        prob(6, 256, 2, 128, 257, Streams::ValueGradHessdiag),
        prob(4, 256, 3, 100, 333, Streams::ValueGradLaplacian),
        prob(5, 32, 8, 77, 131, Streams::ValueGradLaplacian),
        // The most streams (65) and the widest input.
        prob(32, 64, 2, 7, 65, Streams::ValueGradHessdiag),
        // One point per tile and more tiles than resident CTAs: the persistent loop.
        prob(32, 256, 2, 1, 301, Streams::ValueGradHessdiag),
        // One point.
        prob(2, 64, 2, 1, 1, Streams::ValueGradLaplacian),
        // wgmma at width 128 (two streams) and at width 64 deep, both over several 32-output
        // chunks with a partial last one.
        prob(1, 128, 2, 40, 1500, Streams::ValueGrad),
        prob(1, 64, 6, 100, 2000, Streams::ValueD2),
    ]
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mlp_jet_every_config_small() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("mlp_jet small: seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let limits = dev.info.limits();
    let t0 = std::time::Instant::now();
    let cases: Vec<Case> = small_problems()
        .into_iter()
        .map(|p| Case::new(&mut rng, p, None))
        .collect();
    let work: Vec<_> = cases
        .iter()
        .flat_map(|c| {
            let p = c.inputs.problem;
            MlpJet::candidates(&p, &limits)
                .into_iter()
                .map(move |cfg| (p, cfg))
        })
        .collect();
    precompile::<MlpJet>(&compiler, &work).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut configs_seen = std::collections::HashSet::new();
    let mut all_worst = [0.0f64; 3];
    for case in &cases {
        let p = case.inputs.problem;
        let mut dc = JetBuffers::new(&dev, &case.inputs).unwrap_or_else(|e| panic!("{e}"));
        let mut w = [0.0f64; 3];
        let candidates = MlpJet::candidates(&p, &limits);
        assert!(!candidates.is_empty(), "{p:?}");
        for c in &candidates {
            worst(
                &mut w,
                validate(&dev, &compiler, case, &mut dc, c, &mut failures),
            );
            configs_seen.insert(*c);
        }
        worst(&mut all_worst, w);
        eprintln!(
            "  {p:?}: {} configs, worst rel err u {:.2e} grad {:.2e} second {:.2e}",
            candidates.len(),
            w[0],
            w[1],
            w[2]
        );
        rows.push(
            json!({"problem": p, "configs": candidates.len(), "worst_rel_err": w,
                         "fp32_floor": case.floor, "bound": case.bound}),
        );
    }
    let space = MlpJet::legal_space(&limits);
    let missed: Vec<_> = space.iter().filter(|c| !configs_seen.contains(c)).collect();
    if !missed.is_empty() {
        failures.push(json!({"configs_never_run": missed}));
    }
    report(
        "mlp_jet_validation_small",
        &json!({"test": "mlp_jet_every_config_small", "seed": seed, "launches": work.len(),
                "worst_rel_err": all_worst, "tolerance": [TOL_FIRST, TOL_FIRST, TOL_SECOND],
                "wall_s": t0.elapsed().as_secs_f64(), "rows": rows, "failures": failures}),
    );
    assert_no_failures(&failures);
}

/// The default config and the next best by the family's estimate.
fn target_configs(p: &MlpJetProblem, dev: &Device, n: usize) -> Vec<MlpJetConfig> {
    let limits = dev.info.limits();
    let mut all = MlpJet::candidates(p, &limits);
    all.sort_by(|a, b| {
        MlpJet::estimate_us(p, a, &limits).total_cmp(&MlpJet::estimate_us(p, b, &limits))
    });
    let d = MlpJet::default_config(p);
    let mut out = vec![d];
    out.extend(all.into_iter().filter(|c| *c != d).take(n - 1));
    out
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mlp_jet_targets() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("mlp_jet targets: seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for p in fam::pinn_targets() {
        // One point short of the round count: the last tile is partial.
        let p = MlpJetProblem {
            points: p.points - 1,
            ..p
        };
        let case = Case::new(&mut rng, p, Some(600));
        let configs = target_configs(&p, &dev, 4);
        let work: Vec<_> = configs.iter().map(|c| (p, *c)).collect();
        precompile::<MlpJet>(&compiler, &work).unwrap_or_else(|e| panic!("{e}"));
        let mut dc = JetBuffers::new(&dev, &case.inputs).unwrap_or_else(|e| panic!("{e}"));
        for c in &configs {
            let e = validate(&dev, &compiler, &case, &mut dc, c, &mut failures);
            eprintln!(
                "  {p:?} {c:?}: rel err {:.2e} {:.2e} {:.2e}",
                e[0], e[1], e[2]
            );
            rows.push(
                json!({"problem": p, "config": c, "rel_err": e, "fp32_floor": case.floor,
                             "bound": case.bound, "checked_points": case.checked.len()}),
            );
        }
    }
    report(
        "mlp_jet_validation_targets",
        &json!({"test": "mlp_jet_targets", "seed": seed, "tolerance": [TOL_FIRST, TOL_FIRST, TOL_SECOND],
                "rows": rows, "failures": failures}),
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mlp_jet_bench() {
    let (dev, compiler) = open();
    let limits = dev.info.limits();
    let t0 = std::time::Instant::now();
    let targets = fam::pinn_targets();
    let work: Vec<_> = targets
        .iter()
        .flat_map(|p| {
            MlpJet::candidates(p, &limits)
                .into_iter()
                .map(move |c| (*p, c))
        })
        .collect();
    precompile::<MlpJet>(&compiler, &work).unwrap_or_else(|e| panic!("{e}"));
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 3,
        reps: 20,
        flush_l2: true,
    };
    let mut rows = Vec::new();
    for (i, p) in targets.iter().enumerate() {
        // Inputs only (no reference): the validation tests check these kernels.
        let default = MlpJet::default_config(p);
        let candidates = MlpJet::candidates(p, &limits);
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
        let tflops = |us: f64| MlpJet::flops(p) / (us * 1e-6) / 1e12;
        eprintln!(
            "  d={} width={} depth={} p={} N={}: best {:.1} us ({:.1} TFLOP/s) {best_c:?}, default {:?} us",
            p.d,
            p.width,
            p.depth,
            p.p,
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
                       "p80_us": m.p80_us, "estimate_us": MlpJet::estimate_us(p, &t.config, &limits),
                       "tflops": tflops(m.median_us)})
            }).collect::<Vec<_>>(),
        }));
    }
    report(
        "mlp_jet_bench",
        &json!({
            "test": "mlp_jet_bench",
            "device": dev.info,
            "clock_and_temperature": kiln_runtime::measure::gpu_clock_and_temperature(0),
            "how": "median of 20 CUDA-event-timed launches after 3 warm-up, L2 flushed (a read of a 2x-L2 buffer) before each; u + grad + Laplacian, fp32; tflops = products only (MlpJet::flops) / time; compare with pinn_torch.json (PyTorch autograd, same nets)",
            "wall_s": t0.elapsed().as_secs_f64(),
            "rows": rows,
        }),
    );
}
