//! GPU tier for `synth_residual` (included by `tests/gpu.rs`; run with `--ignored`). Fresh
//! random inputs per run (KILN_SEED reproduces).
//!
//! * `synth_residual_every_variant_matches_the_reference`: every legal config (both sample
//!   splits) x every branch problem (both residuals, both forcings, every gradient set) on
//!   odd sizes (B = 37, n_x = 29; the branch problem's p: 128, 64, 37, 33), outputs poisoned
//!   with NaN first; loss, dc_u, dc_k and dbasis compared with the f64 reference (norm-wise
//!   relative error <= 1e-4; a NaN fails). Each variant runs twice and must be bitwise equal.
//! * `synth_residual_bench`: the default config and every legal one on the elliptic
//!   benchmark shape (B = 1000 samples, n_x = 401, p = 128) and poisson d = 20 (B = 1000,
//!   n_x = 4096, p = 128): median of 20 launches with L2 flushed, with the achieved FMA rate.

use crate::common::{assert_no_failures, open, report, seed};

use kiln_codegen::families::synth_residual::{
    reference, Forcing, Residual, SynthResidual, SynthResidualProblem,
};
use kiln_codegen::Family;
use kiln_runtime::launch::synth_residual::{
    CudaSlice, SynthResidualInputs, SynthResidualKernel, SynthResidualOutputs,
};
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const TOL: f64 = 1e-4;

struct Host {
    c_u: Vec<f32>,
    c_k: Vec<f32>,
    basis: Vec<f32>,
    f: Vec<f32>,
}

fn host(rng: &mut impl Rng, p: &SynthResidualProblem) -> Host {
    let (nb, nx, pp) = (p.samples as usize, p.points as usize, p.p as usize);
    let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    Host {
        c_u: r(nb * pp),
        c_k: r(nb * pp),
        basis: r(nx * p.streams() * pp),
        f: r(match p.forcing {
            Forcing::PerSample => nb * nx,
            Forcing::Shared => nx,
        }),
    }
}

/// Loss and gradients of one launch (with fresh NaN-poisoned outputs).
struct Got {
    loss: f32,
    dc_u: Vec<f32>,
    dc_k: Vec<f32>,
    dbasis: Vec<f32>,
}

fn run_once(dev: &Device, k: &SynthResidualKernel, p: &SynthResidualProblem, h: &Host) -> Got {
    let up = |v: &[f32], what: &str| dev.upload(v, what).unwrap();
    let (c_u, c_k, basis, f) = (
        up(&h.c_u, "c_u"),
        up(&h.c_k, "c_k"),
        up(&h.basis, "basis"),
        up(&h.f, "f"),
    );
    let elliptic = p.residual == Residual::Elliptic1d;
    let nan = |n: usize, what: &str| dev.upload(&vec![f32::NAN; n], what).unwrap();
    let ncoef = (p.samples * p.p) as usize;
    let mut loss = nan(1, "loss");
    let mut dc_u = p.dcoef.then(|| nan(ncoef, "dc_u"));
    let mut dc_k = (p.dcoef && elliptic).then(|| nan(ncoef, "dc_k"));
    let mut dbasis = p
        .dbasis
        .then(|| nan(p.points as usize * p.streams() * p.p as usize, "dbasis"));
    let mut ws = k.workspace(dev, p).unwrap();
    // Poison the partials too: every one the reduce reads must have been written.
    let wlen = ws.len();
    ws = dev.upload(&vec![f32::NAN; wlen], "workspace").unwrap();
    let inp = SynthResidualInputs {
        c_u: &c_u,
        c_k: elliptic.then_some(&c_k),
        basis: &basis,
        f: &f,
    };
    {
        let mut out = SynthResidualOutputs {
            loss: &mut loss,
            dc_u: dc_u.as_mut(),
            dc_k: dc_k.as_mut(),
            dbasis: dbasis.as_mut(),
        };
        k.launch(&dev.stream, p, &inp, &mut ws, &mut out)
            .unwrap_or_else(|e| panic!("{p:?}: {e}"));
    }
    let down = |b: &Option<CudaSlice<f32>>| {
        b.as_ref()
            .map(|b| dev.download(b).unwrap())
            .unwrap_or_default()
    };
    Got {
        loss: dev.download(&loss).unwrap()[0],
        dc_u: down(&dc_u),
        dc_k: down(&dc_k),
        dbasis: down(&dbasis),
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Norm-wise relative error (|got - want|_2 / |want|_2); infinite when `got` holds a
/// non-finite value.
fn err(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn synth_residual_every_variant_matches_the_reference() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let configs = SynthResidual::legal_space(&dev.info.limits());
    let mut failures: Vec<Value> = Vec::new();
    let (mut worst, mut runs) = (0.0f64, 0usize);
    for bp in SynthResidual::branch_problems() {
        let p = SynthResidualProblem {
            samples: 37,
            points: 29,
            ..bp
        };
        let h = host(&mut rng, &p);
        let want = reference(
            &p,
            &f64s(&h.c_u),
            &f64s(&h.c_k),
            &f64s(&h.basis),
            &f64s(&h.f),
        );
        for c in &configs {
            if SynthResidual::check_problem(&p, c).is_err() {
                continue;
            }
            let k = SynthResidualKernel::compile(&dev, &compiler, &p, c)
                .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
            let got = run_once(&dev, &k, &p, &h);
            let again = run_once(&dev, &k, &p, &h);
            runs += 2;
            let mut errs = vec![("loss", err(&[got.loss], &[want.loss]))];
            if p.dcoef {
                errs.push(("dc_u", err(&got.dc_u, &want.dc_u)));
                if p.residual == Residual::Elliptic1d {
                    errs.push(("dc_k", err(&got.dc_k, &want.dc_k)));
                }
            }
            if p.dbasis {
                errs.push(("dbasis", err(&got.dbasis, &want.dbasis)));
            }
            let bitwise = got.loss.to_bits() == again.loss.to_bits()
                && [
                    (&got.dc_u, &again.dc_u),
                    (&got.dc_k, &again.dc_k),
                    (&got.dbasis, &again.dbasis),
                ]
                .iter()
                .all(|(a, b)| {
                    a.iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits())
                });
            for (_, e) in &errs {
                worst = worst.max(*e);
            }
            if !errs.iter().all(|(_, e)| *e <= TOL) || !bitwise {
                failures.push(json!({"problem": p, "config": c, "rel_err": errs
                    .iter().map(|(n, e)| json!({n.to_string(): e})).collect::<Vec<_>>(),
                    "bitwise_repeatable": bitwise}));
            }
        }
    }
    report(
        "synth_residual_validation",
        &json!({"test": "synth_residual_every_variant_matches_the_reference", "seed": seed,
                "configs": configs.len(), "runs": runs, "worst_rel_err": worst,
                "tolerance": TOL, "failures": failures}),
    );
    eprintln!(
        "synth_residual: {runs} runs, worst rel err {worst:.3e}, {} failures",
        failures.len()
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn synth_residual_bench() {
    let (dev, compiler) = open();
    let t0 = std::time::Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 3,
        reps: 20,
        flush_l2: true,
    };
    let configs = SynthResidual::legal_space(&dev.info.limits());
    let elliptic = SynthResidual::branch_problems()[0];
    let problems = [
        elliptic,
        SynthResidualProblem {
            residual: Residual::Poisson,
            d: 20,
            points: 4096,
            forcing: Forcing::Shared,
            ..elliptic
        },
    ];
    let mut rows = Vec::new();
    for p in problems {
        let h = host(&mut rng, &p);
        let up = |v: &[f32], what: &str| dev.upload(v, what).unwrap();
        let (c_u, c_k, basis, f) = (
            up(&h.c_u, "c_u"),
            up(&h.c_k, "c_k"),
            up(&h.basis, "basis"),
            up(&h.f, "f"),
        );
        let ncoef = (p.samples * p.p) as usize;
        let is_elliptic = p.residual == Residual::Elliptic1d;
        let mut loss = dev.zeros::<f32>(1, "loss").unwrap();
        let mut dc_u = dev.zeros::<f32>(ncoef, "dc_u").unwrap();
        let mut dc_k = dev.zeros::<f32>(ncoef, "dc_k").unwrap();
        let mut dbasis = dev
            .zeros::<f32>(p.points as usize * p.streams() * p.p as usize, "dbasis")
            .unwrap();
        let default = SynthResidual::default_config(&p);
        let mut cands = vec![default];
        cands.extend(
            configs
                .iter()
                .filter(|c| **c != default && SynthResidual::check_problem(&p, c).is_ok()),
        );
        let mut results = Vec::new();
        for c in &cands {
            let k = SynthResidualKernel::compile(&dev, &compiler, &p, c)
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            let mut ws = k.workspace(&dev, &p).unwrap();
            let inp = SynthResidualInputs {
                c_u: &c_u,
                c_k: is_elliptic.then_some(&c_k),
                basis: &basis,
                f: &f,
            };
            let m = bench
                .measure(&opts, || {
                    let mut out = SynthResidualOutputs {
                        loss: &mut loss,
                        dc_u: Some(&mut dc_u),
                        dc_k: if is_elliptic { Some(&mut dc_k) } else { None },
                        dbasis: Some(&mut dbasis),
                    };
                    k.launch(&dev.stream, &p, &inp, &mut ws, &mut out)
                })
                .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
            results.push((*c, m));
        }
        let tflops = |us: f64| SynthResidual::flops(&p) / (us * 1e-6) / 1e12;
        let (best_c, best_m) = results
            .iter()
            .min_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us))
            .unwrap();
        eprintln!(
            "  synth_residual {:?} B={} n_x={} p={}: best {:.2} us ({:.2} TFLOP/s fp32), default {:.2} us",
            p.residual, p.samples, p.points, p.p, best_m.median_us, tflops(best_m.median_us),
            results[0].1.median_us
        );
        rows.push(json!({
            "problem": p,
            "best": {"config": best_c, "measurement": best_m, "tflops": tflops(best_m.median_us)},
            "default": {"config": results[0].0, "median_us": results[0].1.median_us},
            "candidates": results.iter().map(|(c, m)| json!({"config": c, "median_us": m.median_us,
                "p20_us": m.p20_us, "p80_us": m.p80_us, "tflops": tflops(m.median_us)})).collect::<Vec<_>>(),
        }));
    }
    report(
        "synth_residual_bench",
        &json!({
            "test": "synth_residual_bench",
            "device": dev.info,
            "how": "median of 20 CUDA-event-timed launches (fused kernel + reduce), L2 flushed \
                    before each; tflops = family flops (2 x B x n_x x streams read x p per \
                    product: fields, dC, dbasis) / time",
            "wall_s": t0.elapsed().as_secs_f64(),
            "rows": rows,
        }),
    );
}
