//! GPU tier for `adam` (included by `tests/gpu.rs`; run by `.gpu/gpu-run.sh` with
//! `--ignored`). Fresh random parameters and gradients per run (KILN_SEED reproduces).
//!
//! * `adam_every_config_matches_the_reference`: every legal config x every decay mode, on
//!   lengths that are not multiples of 4 or of any block (1, 3, 4099, 1_000_003) and on views
//!   that start 1 and 2 floats into their buffers (vector path refused, float2 only); four
//!   steps with a fresh gradient each, `p`, `m`, `v` compared after every step with the f64
//!   reference (max |err| / max |ref| <= 1e-5 each, m's scale at least its update's terms;
//!   a NaN fails), and the float just past the view checked untouched.
//! * `adam_bench`: every config on arenas of 2^16 .. 2^26 parameters (decay none) and the
//!   default config on the other modes, median of 20 launches with L2 flushed; GB/s counts
//!   7 x 4 bytes per parameter, against the ~4.2 TB/s device-to-device copy ceiling.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, report, seed};

use kiln_codegen::families::adam::{
    reference_step, Adam, AdamConfig, AdamHyper, AdamProblem, AdamState, WeightDecay,
};
use kiln_codegen::{CompileOptions, Family};
use kiln_runtime::launch::adam::{AdamArena, AdamKernel};
use kiln_runtime::measure::{Bench, MeasureOptions};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

const TOL: f64 = 1e-5;
const STEPS: u64 = 4;
const MODES: [WeightDecay; 3] = [WeightDecay::None, WeightDecay::L2, WeightDecay::Decoupled];
/// The device-to-device copy ceiling measured on this H200 (DESIGN.md section 7).
const COPY_CEILING_GB_S: f64 = 4200.0;

/// max |got - want| / max(max |want|, floor); infinite when `got` holds a non-finite value.
/// `floor` is the size of the step's own terms: a moment that nearly cancels (m of a single
/// element whose gradient changed sign) is judged against the terms it was summed from, not
/// against its small result.
fn rel(got: &[f32], want: &[f64], floor: f64) -> f64 {
    let mut err = 0.0f64;
    let mut scale = floor;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        err = err.max((g as f64 - w).abs());
        scale = scale.max(w.abs());
    }
    err / scale.max(1e-300)
}

fn hyper() -> AdamHyper {
    // A large step and decay so every term of the update shows in p.
    AdamHyper {
        lr: 0.02,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
    }
    .rounded_to_f32()
}

/// One length and its inputs: initial p, m, v and a gradient per step.
struct Case {
    n: usize,
    /// Floats before the view in each buffer: (params, grads, m, v).
    offset: [usize; 4],
    p0: Vec<f32>,
    m0: Vec<f32>,
    v0: Vec<f32>,
    grads: Vec<Vec<f32>>,
    /// Reference state after each step, per mode.
    want: Vec<Vec<AdamState>>,
}

fn case(rng: &mut impl Rng, n: usize, offset: [usize; 4]) -> Case {
    let h = hyper();
    let mut r =
        |lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
    let p0 = r(-1.0, 1.0);
    // A run in progress: nonzero moments (v >= 0).
    let m0 = r(-0.1, 0.1);
    let v0 = r(0.0, 0.01);
    let grads: Vec<Vec<f32>> = (0..STEPS).map(|_| r(-1.0, 1.0)).collect();
    let want = MODES
        .iter()
        .map(|&mode| {
            let mut s = AdamState::from_f32(&p0, &m0, &v0);
            grads
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    reference_step(&mut s, g, &h, 3 + i as u64, mode);
                    s.clone()
                })
                .collect()
        })
        .collect();
    Case {
        n,
        offset,
        p0,
        m0,
        v0,
        grads,
        want,
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn adam_every_config_matches_the_reference() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let h = hyper();
    let mut cases = Vec::new();
    for n in [1usize, 3, 4099, 1_000_003] {
        cases.push(case(&mut rng, n, [0; 4]));
    }
    // Views: params one float in (no vector path at all), everything two floats in (8-byte
    // aligned: float2 runs, float4 falls back to scalar).
    cases.push(case(&mut rng, 4099, [1, 0, 0, 0]));
    cases.push(case(&mut rng, 1031, [2, 2, 2, 2]));

    let configs = Adam::legal_space(&dev.info.limits());
    let work: Vec<(AdamProblem, AdamConfig)> = MODES
        .iter()
        .flat_map(|&m| configs.iter().map(move |c| (AdamProblem::fp32(1, m), *c)))
        .collect();
    let opts = CompileOptions::default();
    let errors: Vec<String> = work
        .par_iter()
        .filter_map(|(p, c)| {
            let src = kiln_codegen::render::render::<Adam>(p, c).unwrap();
            compiler.compile(&src, &opts).err().map(|e| e.to_string())
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let mut failures: Vec<Value> = Vec::new();
    let mut worst = 0.0f64;
    let mut launches = 0usize;
    for (mi, &mode) in MODES.iter().enumerate() {
        for c in &configs {
            let k = AdamKernel::compile(&dev, &compiler, &AdamProblem::fp32(1, mode), c)
                .unwrap_or_else(|e| panic!("{c:?} {mode:?}: {e}"));
            for cs in &cases {
                let p = AdamProblem::fp32(cs.n as u64, mode);
                let pad = |v: &[f32], off: usize| -> Vec<f32> {
                    // Sentinels before and after the view.
                    let mut out = vec![7.5f32; off];
                    out.extend_from_slice(v);
                    out.push(7.5);
                    out
                };
                let [op, og, om, ov] = cs.offset;
                let mut dp = dev.upload(&pad(&cs.p0, op), "params").unwrap();
                let mut dm = dev.upload(&pad(&cs.m0, om), "m").unwrap();
                let mut dv = dev.upload(&pad(&cs.v0, ov), "v").unwrap();
                for (s, g) in cs.grads.iter().enumerate() {
                    let dg = dev.upload(&pad(g, og), "grads").unwrap();
                    {
                        let mut arena = AdamArena {
                            params: dp.slice_mut(op..op + cs.n),
                            grads: dg.slice(og..og + cs.n),
                            m: dm.slice_mut(om..om + cs.n),
                            v: dv.slice_mut(ov..ov + cs.n),
                        };
                        k.launch(&dev.stream, &p, &mut arena, &h, 3 + s as u64)
                            .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                    }
                    launches += 1;
                    let got_p = dev.download(&dp).unwrap();
                    let got_m = dev.download(&dm).unwrap();
                    let got_v = dev.download(&dv).unwrap();
                    let want = &cs.want[mi][s];
                    // The terms of this step's m update: (1 - beta1) |g + l2 decay|.
                    let g_max = g.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
                    let p_max = cs.p0.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
                    let m_floor = (1.0 - h.beta1) * (g_max + h.weight_decay * p_max);
                    let errs = [
                        rel(&got_p[op..op + cs.n], &want.params, 0.0),
                        rel(&got_m[om..om + cs.n], &want.m, m_floor),
                        rel(&got_v[ov..ov + cs.n], &want.v, 0.0),
                    ];
                    let sentinels_ok =
                        [(&got_p, op), (&got_m, om), (&got_v, ov)]
                            .iter()
                            .all(|(b, off)| {
                                b[..*off].iter().chain(&b[off + cs.n..]).all(|&x| x == 7.5)
                            });
                    for e in errs {
                        worst = worst.max(e);
                    }
                    if !errs.iter().all(|&e| e <= TOL) || !sentinels_ok {
                        failures.push(json!({"mode": mode, "config": c, "n": cs.n, "offset": cs.offset,
                            "step": 3 + s, "rel_err": {"params": errs[0], "m": errs[1], "v": errs[2]},
                            "outside_view_untouched": sentinels_ok}));
                        break;
                    }
                }
            }
        }
    }
    report(
        "adam_validation",
        &json!({"test": "adam_every_config_matches_the_reference", "seed": seed,
                "configs": configs.len(), "modes": MODES, "hyper": h,
                "cases": cases.iter().map(|c| json!({"n": c.n, "offset": c.offset})).collect::<Vec<_>>(),
                "steps": STEPS, "launches": launches, "worst_rel_err": worst, "tolerance": TOL,
                "failures": failures}),
    );
    eprintln!(
        "adam: {} configs x 3 modes x {} cases x {STEPS} steps, worst rel err {worst:.3e}, {} failures",
        configs.len(),
        cases.len(),
        failures.len()
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn adam_bench() {
    let (dev, compiler) = open();
    let t0 = std::time::Instant::now();
    let h = hyper();
    let configs = Adam::legal_space(&dev.info.limits());
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 3,
        reps: 20,
        flush_l2: true,
    };
    let largest = 1usize << 26;
    let fill = |v: f32| dev.upload(&vec![v; largest], "arena").unwrap();
    let (mut dp, dg, mut dm, mut dv) = (fill(0.5), fill(0.25), fill(0.0), fill(0.0));
    let mut rows = Vec::new();
    for n in [1usize << 16, 1 << 20, 1 << 24, 1 << 26, 10_000_019] {
        for mode in MODES {
            let p = AdamProblem::fp32(n as u64, mode);
            let default = Adam::default_config(&p);
            // Every config on decay none; the default elsewhere.
            let mut cands = vec![default];
            if mode == WeightDecay::None {
                cands.extend(configs.iter().filter(|c| **c != default));
            }
            let mut results = Vec::new();
            for c in &cands {
                let k = AdamKernel::compile(&dev, &compiler, &p, c)
                    .unwrap_or_else(|e| panic!("{c:?}: {e}"));
                let mut step = 1u64;
                let m = bench
                    .measure(&opts, || {
                        let mut arena = AdamArena {
                            params: dp.slice_mut(0..n),
                            grads: dg.slice(0..n),
                            m: dm.slice_mut(0..n),
                            v: dv.slice_mut(0..n),
                        };
                        step += 1;
                        k.launch(&dev.stream, &p, &mut arena, &h, step)
                    })
                    .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
                results.push((*c, m));
            }
            let gb_s = |us: f64| Adam::min_bytes(&p) / (us * 1e-6) / 1e9;
            let (best_c, best_m) = results
                .iter()
                .min_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us))
                .unwrap();
            eprintln!(
                "  adam {mode:?} n={n:<9}: best {:>8.2} us ({:.0} GB/s, {:.0}% of copy), default {:.2} us",
                best_m.median_us,
                gb_s(best_m.median_us),
                100.0 * gb_s(best_m.median_us) / COPY_CEILING_GB_S,
                results[0].1.median_us
            );
            rows.push(json!({
                "problem": p,
                "best": {"config": best_c, "measurement": best_m, "gb_s": gb_s(best_m.median_us),
                         "pct_of_copy_ceiling": 100.0 * gb_s(best_m.median_us) / COPY_CEILING_GB_S},
                "default": {"config": results[0].0, "median_us": results[0].1.median_us,
                            "gb_s": gb_s(results[0].1.median_us)},
                "candidates": results.iter().map(|(c, m)| json!({"config": c, "median_us": m.median_us,
                    "p20_us": m.p20_us, "p80_us": m.p80_us, "gb_s": gb_s(m.median_us)})).collect::<Vec<_>>(),
            }));
        }
    }
    report(
        "adam_bench",
        &json!({
            "test": "adam_bench",
            "device": dev.info,
            "clock_and_temperature": kiln_runtime::measure::gpu_clock_and_temperature(0),
            "how": "median of 20 CUDA-event-timed launches, L2 flushed (a read of a 2x-L2 buffer) before each; \
                    gb_s = 28 bytes per parameter (p, g, m, v read; p, m, v written) / time; \
                    copy ceiling ~4.2 TB/s (device-to-device copy on this H200)",
            "copy_ceiling_gb_s": COPY_CEILING_GB_S,
            "wall_s": t0.elapsed().as_secs_f64(),
            "rows": rows,
        }),
    );
}
