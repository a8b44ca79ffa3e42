//! GPU tier for what tuning `gemm_fp8` relies on (included by `tests/gpu.rs`; run by
//! `.gpu/gpu-run.sh` with `--ignored`). Fresh random inputs per run (KILN_SEED reproduces); with
//! KILN_GPU_REPORT set, each test writes a JSON summary there.
//!
//! * `gemm_fp8_reference_matches_the_cpu`: the naive GPU reference (fp32 and BF16 outputs)
//!   against the f64 CPU reference on odd shapes, M in {1, 3, 77, 200} x N in {48, 200, 2563}
//!   x K in {128, 1024}; the BF16 output is the fp32 one rounded, the device-side error sum
//!   agrees with the host's, and a poisoned output counts as all non-finite.
//! * `gemm_fp8_cublaslt_baselines_match_the_reference`: cuBLASLt block-scaled (VEC128 / BLK128x128)
//!   and row-wise (OUTER_VEC) outputs against the reference on Step-3 and odd shapes (K/128 not
//!   a multiple of 4 among them): each either answers NOT_SUPPORTED or is within 1e-2.
//! * `gemm_fp8_tune_end_to_end`: `tune_gemm_fp8` on two decode shapes into a fresh folder, with
//!   a short search: entries written, validated, with a baseline named for its scaling.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, quick_tune_options, report, seed};

use half::bf16;
use kiln_codegen::families::gemm_fp8::{fp8, GemmFp8Problem};
use kiln_runtime::launch::gemm_fp8::Fp8Operands;
use kiln_runtime::launch::gemm_fp8_ref::GemmFp8Reference;
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_tuner::baseline::{
    CublasLtFp8, CUBLASLT_FP8_BLOCK, CUBLASLT_FP8_ROWWISE, CUBLASLT_FP8_ROWWISE_FALLBACK,
};
use kiln_tuner::gemm_fp8::{Fp8Inputs, GemmFp8Bench, TimedBaseline, TOLERANCE};
use kiln_tuner::tune::tune_gemm_fp8;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

/// Values in (-1, 1) times a magnitude per 128-wide group spread over ~e^3 (as `fp8.rs`'s tests).
fn random_rows(rng: &mut impl Rng, rows: usize, k: usize, rows_per_amp: usize) -> Vec<f32> {
    let groups = k / 128;
    let amps: Vec<f32> = (0..rows.div_ceil(rows_per_amp) * groups)
        .map(|_| rng.random_range(-1.5f32..1.5).exp())
        .collect();
    let mut out = vec![0f32; rows * k];
    for r in 0..rows {
        for c in 0..k {
            out[r * k + c] =
                rng.random_range(-1.0f32..1.0) * amps[(r / rows_per_amp) * groups + c / 128];
        }
    }
    out
}

/// Operands quantised on the CPU the way a model's are.
fn quantised(rng: &mut impl Rng, m: usize, n: usize, k: usize) -> Fp8Inputs {
    let (x, sx) = fp8::quantize_blockwise(&random_rows(rng, m, k, 1), m, k);
    let (w, sw) = fp8::quantize_weights_128x128(&random_rows(rng, n, k, 128), n, k);
    Fp8Inputs { x, sx, w, sw }
}

/// The f64 CPU reference, one token row at a time in parallel.
fn cpu_reference(inp: &Fp8Inputs, m: usize, n: usize, k: usize) -> Vec<f64> {
    let kb = k / 128;
    (0..m)
        .into_par_iter()
        .flat_map_iter(|i| {
            fp8::reference_cpu(
                &inp.x[i * k..(i + 1) * k],
                &inp.sx[i * kb..(i + 1) * kb],
                &inp.w,
                &inp.sw,
                1,
                n,
                k,
            )
        })
        .collect()
}

fn norm_err(got: impl Iterator<Item = f64>, want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn gemm_fp8_reference_matches_the_cpu() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let refk = GemmFp8Reference::compile(&dev, &compiler).unwrap_or_else(|e| panic!("{e}"));
    // fp32 sums of exact products against f64: a few ulps of fp32 norm-wise.
    const F32_TOL: f64 = 1e-5;
    let mut failures = Vec::new();
    let mut shapes = Vec::new();
    let mut worst = 0.0f64;
    for m in [1usize, 3, 77, 200] {
        for n in [48usize, 200, 2563] {
            for k in [128usize, 1024] {
                let p = GemmFp8Problem {
                    m: m as u32,
                    n: n as u32,
                    k: k as u32,
                };
                let inp = quantised(&mut rng, m, n, k);
                let want = cpu_reference(&inp, m, n, k);
                let (x, sx) = (
                    dev.upload(&inp.x, "X").unwrap(),
                    dev.upload(&inp.sx, "SX").unwrap(),
                );
                let (w, sw) = (
                    dev.upload(&inp.w, "W").unwrap(),
                    dev.upload(&inp.sw, "SW").unwrap(),
                );
                let ops = Fp8Operands {
                    x: &x,
                    sx: &sx,
                    w: &w,
                    sw: &sw,
                };
                let mut yf = dev.zeros::<f32>(m * n, "Yf").unwrap();
                let mut yb = dev.zeros::<bf16>(m * n, "Yb").unwrap();
                refk.poison(&dev.stream, &mut yb).unwrap();
                let poisoned = refk.rel_err(&dev.stream, &yb, &yf).unwrap();
                refk.launch(&dev.stream, &p, &ops, Some(&mut yf), Some(&mut yb))
                    .unwrap_or_else(|e| panic!("{p:?}: {e}"));
                let got_f = dev.download(&yf).unwrap();
                let got_b = dev.download(&yb).unwrap();
                let err_f = norm_err(got_f.iter().map(|&v| v as f64), &want);
                let err_b = norm_err(got_b.iter().map(|v| v.to_f64()), &want);
                let rounded = got_f
                    .iter()
                    .zip(&got_b)
                    .filter(|(f, b)| bf16::from_f32(**f).to_bits() != b.to_bits())
                    .count();
                // The device's error sum against the host's, for the BF16 output vs the fp32 one.
                let dev_err = refk.rel_err(&dev.stream, &yb, &yf).unwrap();
                let f64s: Vec<f64> = got_f.iter().map(|&v| v as f64).collect();
                let host_err = norm_err(got_b.iter().map(|v| v.to_f64()), &f64s);
                worst = worst.max(err_f);
                let ok = err_f <= F32_TOL
                    && err_b <= TOLERANCE
                    && rounded == 0
                    && dev_err.non_finite == 0
                    && (dev_err.rel_err - host_err).abs() <= 1e-9 * host_err.max(1e-12)
                    && poisoned.non_finite == (m * n) as u64;
                let row = json!({"problem": p, "f32_rel_err": err_f, "bf16_rel_err": err_b,
                    "bf16_not_the_rounded_f32": rounded, "device_err": dev_err.rel_err,
                    "host_err": host_err, "poison_non_finite": poisoned.non_finite});
                if !ok {
                    failures.push(row.clone());
                }
                shapes.push(row);
            }
        }
    }
    let summary = json!({
        "test": "gemm_fp8_reference_matches_the_cpu",
        "device": dev.info,
        "seed": seed,
        "f32_tolerance": F32_TOL,
        "worst_f32_rel_err": worst,
        "shapes": shapes,
        "failures": failures,
    });
    report("gemm_fp8_reference", &summary);
    eprintln!(
        "gemm_fp8 reference: {} shapes, worst fp32 rel err {worst:.3e}, {} failures",
        summary["shapes"].as_array().unwrap().len(),
        failures.len()
    );
    assert_no_failures(&failures);
}

fn outcome(r: &Result<TimedBaseline, kiln_tuner::baseline::LtFailure>) -> Value {
    match r {
        Ok(t) => json!({"us": t.median_us, "rel_err": t.max_rel_err}),
        Err(f) => json!({"not_supported": f.not_supported, "reason": f.reason}),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn gemm_fp8_cublaslt_baselines_match_the_reference() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let refk = GemmFp8Reference::compile(&dev, &compiler).unwrap_or_else(|e| panic!("{e}"));
    let lt = CublasLtFp8::new(&dev).unwrap_or_else(|e| panic!("{e}"));
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 1,
        reps: 5,
        flush_l2: true,
    };
    // Step-3 decode and FFN shapes, K/128 = 5 (weight-scale rows padded to 8), N not a
    // multiple of 128, and M = 1 (block scaling expected NOT_SUPPORTED there).
    let shapes = [
        (1u32, 2560u32, 7168u32),
        (16, 2560, 7168),
        (64, 16384, 2048),
        (128, 7168, 16384),
        (512, 7168, 5120),
        (96, 256, 640),
        (77, 200, 1024),
    ];
    // Where block scaling must be supported (PyTorch's _scaled_mm ran it at M = 16 and 32).
    let must_support = (128u32, 7168u32, 16384u32);
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for (m, n, k) in shapes {
        let p = GemmFp8Problem { m, n, k };
        let inp = quantised(&mut rng, m as usize, n as usize, k as usize);
        let mut b = GemmFp8Bench::with_inputs(&dev, &compiler, &mut bench, &refk, p, &inp)
            .unwrap_or_else(|e| panic!("{p:?}: {e}"));
        let runs = b.run_baselines(&lt, &opts);
        // A failure other than NOT_SUPPORTED is a wrong result (or a broken call): never fine.
        for (name, r) in [
            (CUBLASLT_FP8_BLOCK, &runs.block),
            (CUBLASLT_FP8_ROWWISE, &runs.rowwise),
        ] {
            match r {
                Ok(t) if !(t.max_rel_err <= TOLERANCE) => {
                    failures.push(json!({"problem": p, "baseline": name, "rel_err": t.max_rel_err}))
                }
                Err(f) if !f.not_supported => {
                    failures.push(json!({"problem": p, "baseline": name, "error": f.reason}))
                }
                _ => {}
            }
        }
        if (m, n, k) == must_support && runs.block.is_err() {
            failures.push(
                json!({"problem": p, "error": "block scaling not supported on a Step-3 shape",
                "block": outcome(&runs.block)}),
            );
        }
        let row =
            json!({"problem": p, "block": outcome(&runs.block), "rowwise": outcome(&runs.rowwise)});
        eprintln!("{row}");
        rows.push(row);
    }
    let summary = json!({
        "test": "gemm_fp8_cublaslt_baselines_match_the_reference",
        "device": dev.info,
        "seed": seed,
        "tolerance": TOLERANCE,
        "layouts": "block: SX transposed to [K/128][M] (VEC128_32F), SW [ceil(N/128)][round_up(K/128,4)] (BLK128x128_32F); rowwise: OUTER_VEC_32F [M] and [N]",
        "rows": rows,
        "failures": failures,
    });
    report("gemm_fp8_cublaslt", &summary);
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn gemm_fp8_tune_end_to_end() {
    let (dev, compiler) = open();
    let dir = tempfile::tempdir().unwrap();
    let problems = [
        GemmFp8Problem {
            m: 1,
            n: 2560,
            k: 7168,
        },
        GemmFp8Problem {
            m: 16,
            n: 2560,
            k: 7168,
        },
    ];
    let opts = quick_tune_options(dir.path());
    let rep = tune_gemm_fp8(&dev, &compiler, &problems, &opts).unwrap_or_else(|e| panic!("{e}"));
    let again = tune_gemm_fp8(&dev, &compiler, &problems, &opts).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for (p, r) in problems.iter().zip(&rep.problems) {
        let Some(e) = r.entry.as_ref().filter(|_| r.status == "tuned") else {
            failures.push(json!({"problem": p, "status": r.status, "reason": r.reason}));
            continue;
        };
        let base = e.baseline.as_ref();
        let named = base.is_some_and(|b| {
            b.name == CUBLASLT_FP8_BLOCK || (p.m == 1 && b.name == CUBLASLT_FP8_ROWWISE_FALLBACK)
        });
        if !(e.max_rel_err <= TOLERANCE) || !named || e.speedup.is_none() {
            failures.push(json!({"problem": p, "entry": e}));
        }
    }
    if again.problems.iter().any(|r| r.status != "skipped") {
        failures.push(json!({"error": "a second run re-tuned", "report": again.problems.iter().map(|r| &r.status).collect::<Vec<_>>()}));
    }
    report(
        "gemm_fp8_tune_end_to_end",
        &json!({"report": rep, "failures": failures}),
    );
    assert_no_failures(&failures);
}
