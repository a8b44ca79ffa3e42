//! GPU tier for `gemm_fp8` and its activation quantiser (included by `tests/gpu.rs`; run by
//! `.gpu/gpu-run.sh` with `--ignored`). Fresh random inputs per run (KILN_SEED reproduces).
//! With KILN_GPU_REPORT set, each test writes a JSON summary there.
//!
//! * `gemm_fp8_every_config_matches_the_reference`: every legal config on M in {1, 3, 17, 32}
//!   (stream kernel) or {3, 77, 200} (wgmma kernel: partial 64- and 128-row tiles)
//!   x N in {48, 200, 2563} x K in {128, 1024, 7168} (where the config serves the shape),
//!   output poisoned with NaN before each of two launches (the second proves the split-K
//!   counters were left at zero), norm-wise relative error <= 1e-2 against the f64 product
//!   of the dequantised operands.
//! * `quant_fp8_matches_the_cpu_encoder_bit_exactly`: BF16 activations over a wide dynamic
//!   range (and all-zero, below-floor and saturating groups) quantised on the GPU; codes and
//!   scale bits equal `gemm_fp8::fp8::quantize_blockwise`'s.
//! * `gemm_fp8_bench`: the default and the configs worth measuring (up to 48 by estimate) on
//!   the Step-3 decode shapes qkv, wq, o_proj at M in {1, 16, 32, 64, 128, 256} and the FFN
//!   shapes at M in {512, 2048, 4096}; L2 flushed; weight TB/s (N * K bytes / time), TFLOP/s.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, rel_err, report, seed};
use std::collections::HashMap;

use half::bf16;
use kiln_codegen::families::gemm_fp8::{self as fam, fp8, GemmFp8, GemmFp8Config, GemmFp8Problem};
use kiln_codegen::{CompileOptions, Compiler, Family};
use kiln_runtime::launch::gemm_fp8::{Fp8Operands, GemmFp8Kernel, QuantFp8Kernel};
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

/// Norm-wise relative error allowed (fp32 accumulation and scale folding, one BF16 rounding).
const TOL: f64 = 1e-2;

/// Values in (-1, 1) times a magnitude per 128-wide group spread over ~e^3, so scales differ
/// from group to group (and token to token, weight block to weight block).
fn random_rows(rng: &mut impl Rng, rows: usize, k: usize, rows_per_amp: usize) -> Vec<f32> {
    let groups = k / 128;
    let amps: Vec<f32> = (0..rows.div_ceil(rows_per_amp) * groups)
        .map(|_| rng.random_range(-1.5f32..1.5).exp())
        .collect();
    let mut out = vec![0f32; rows * k];
    for r in 0..rows {
        for c in 0..k {
            let amp = amps[(r / rows_per_amp) * groups + c / 128];
            out[r * k + c] = rng.random_range(-1.0f32..1.0) * amp;
        }
    }
    out
}

/// One validation shape: quantised operands and their f64 reference.
struct Case {
    problem: GemmFp8Problem,
    xq: Vec<u8>,
    sx: Vec<f32>,
    wq: Vec<u8>,
    sw: Vec<f32>,
    reference: Vec<f64>,
}

fn case(rng: &mut impl Rng, m: u32, n: u32, k: u32) -> Case {
    let (mu, nu, ku) = (m as usize, n as usize, k as usize);
    let x = random_rows(rng, mu, ku, 1);
    let w = random_rows(rng, nu, ku, 128);
    let (xq, sx) = fp8::quantize_blockwise(&x, mu, ku);
    let (wq, sw) = fp8::quantize_weights_128x128(&w, nu, ku);
    let kb = ku / 128;
    // One token row at a time, in parallel.
    let reference: Vec<f64> = (0..mu)
        .into_par_iter()
        .flat_map_iter(|i| {
            fp8::reference_cpu(
                &xq[i * ku..(i + 1) * ku],
                &sx[i * kb..(i + 1) * kb],
                &wq,
                &sw,
                1,
                nu,
                ku,
            )
        })
        .collect();
    Case {
        problem: GemmFp8Problem { m, n, k },
        xq,
        sx,
        wq,
        sw,
        reference,
    }
}

/// Every (config) compiled in parallel first, then loaded once each.
fn load_all(
    dev: &Device,
    compiler: &Compiler,
    configs: &[GemmFp8Config],
) -> HashMap<GemmFp8Config, GemmFp8Kernel> {
    let p = GemmFp8::branch_problems()[0];
    let opts = CompileOptions::default();
    let errors: Vec<String> = configs
        .par_iter()
        .filter_map(|c| {
            let src = kiln_codegen::render::render::<GemmFp8>(&p, c).unwrap();
            compiler
                .compile(&src, &opts)
                .err()
                .map(|e| format!("{c:?}: {e}"))
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    configs
        .iter()
        .map(|c| {
            let k = GemmFp8Kernel::compile(dev, compiler, &p, c)
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            (c.clone(), k)
        })
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn gemm_fp8_every_config_matches_the_reference() {
    let (dev, compiler) = open();
    let t0 = std::time::Instant::now();
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let limits = dev.info.limits();
    let configs = GemmFp8::legal_space(&limits);
    let kernels = load_all(&dev, &compiler, &configs);

    let mut failures = Vec::new();
    let mut per_config: HashMap<GemmFp8Config, (usize, f64)> = HashMap::new();
    let mut launches = 0usize;
    let mut worst = 0.0f64;
    let mut shapes = Vec::new();
    // The odd-shape grid, then one shape with more tiles than a persistent grid has CTAs (each
    // persistent CTA takes 2-4 tiles; 5 K tiles, coprime with the stage counts, so the stage
    // ring's phases carry across tile boundaries), for the persistent configs only.
    let mut grid: Vec<(u32, u32, u32, bool)> = Vec::new();
    for m in [1u32, 3, 17, 32, 77, 200] {
        for n in [48u32, 200, 2563] {
            for k in [128u32, 1024, 7168] {
                grid.push((m, n, k, false));
            }
        }
    }
    grid.push((1000, 4000, 640, true));
    for (m, n, k, persistent_only) in grid {
        let c = case(&mut rng, m, n, k);
        let p = c.problem;
        let x = dev.upload(&c.xq, "X").unwrap();
        let sx = dev.upload(&c.sx, "SX").unwrap();
        let w = dev.upload(&c.wq, "W").unwrap();
        let sw = dev.upload(&c.sw, "SW").unwrap();
        let ops = Fp8Operands {
            x: &x,
            sx: &sx,
            w: &w,
            sw: &sw,
        };
        let poison = vec![bf16::NAN; (m * n) as usize];
        let mut y = dev.upload(&poison, "Y").unwrap();
        let mut served = 0;
        for cfg in &configs {
            if GemmFp8::check_problem(&p, cfg).is_err() {
                continue;
            }
            // The wgmma kernel on partial tiles of both heights (and a tiny M).
            let persistent = matches!(cfg, GemmFp8Config::Wgmma(w) if w.persistent);
            if persistent_only && !persistent {
                continue;
            }
            if !persistent_only
                && matches!(cfg, GemmFp8Config::Wgmma(_))
                && ![3, 77, 200].contains(&m)
            {
                continue;
            }
            served += 1;
            let kern = &kernels[cfg];
            let mut ws = kern.workspace(&dev, &p).unwrap();
            for rep in 0..2 {
                dev.stream.memcpy_htod(&poison, &mut y).unwrap();
                kern.launch(&dev.stream, &p, &ops, &mut y, &mut ws)
                    .unwrap_or_else(|e| panic!("{cfg:?} {p:?}: {e}"));
                let out = dev
                    .download(&y)
                    .unwrap_or_else(|e| panic!("{cfg:?} {p:?}: {e}"));
                launches += 1;
                let (err, bad) = rel_err(&out, &c.reference);
                worst = worst.max(err);
                let e = per_config.entry(cfg.clone()).or_insert((0, 0.0));
                e.1 = e.1.max(err);
                if rep == 0 {
                    e.0 += 1;
                }
                if bad || !(err <= TOL) {
                    failures.push(json!({"config": cfg, "problem": p, "rep": rep,
                        "rel_err": err, "non_finite": bad}));
                }
            }
        }
        shapes.push(json!({"problem": p, "configs": served}));
    }
    for c in &configs {
        if !per_config.contains_key(c) {
            failures.push(json!({"config": c, "error": "no shape exercised this config"}));
        }
    }
    let summary = json!({
        "test": "gemm_fp8_every_config_matches_the_reference",
        "device": dev.info,
        "seed": seed,
        "configs": configs.len(),
        "shapes": shapes,
        "launches": launches,
        "worst_rel_err": worst,
        "tolerance": TOL,
        "failures": failures,
        "per_config": configs.iter().map(|c| {
            let (n, e) = per_config.get(c).copied().unwrap_or((0, f64::NAN));
            json!({"config": c, "entry": GemmFp8::entry(&GemmFp8::branch_problems()[0], c),
                   "shapes": n, "max_rel_err": e})
        }).collect::<Vec<_>>(),
        "wall_s": t0.elapsed().as_secs_f64(),
    });
    report("gemm_fp8_validation", &summary);
    eprintln!(
        "gemm_fp8: {} configs, {} launches, worst rel err {:.3e}, {} failures, {:.1} s",
        configs.len(),
        launches,
        worst,
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn quant_fp8_matches_the_cpu_encoder_bit_exactly() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let quant = QuantFp8Kernel::compile(&dev, &compiler).unwrap_or_else(|e| panic!("{e}"));
    let mut rows = Vec::new();
    let mut mismatches = Vec::new();
    for (m, k) in [(1u32, 128u32), (17, 7168), (32, 2048), (1000, 1024)] {
        let (mu, ku) = (m as usize, k as usize);
        let groups = ku / 128;
        // Per group: magnitudes from 2^-20 to 2^12 (subnormal codes, the floor, large
        // values), every 7th group all zeros, every 11th below the amax floor.
        let mut x = vec![bf16::ZERO; mu * ku];
        for r in 0..mu {
            for g in 0..groups {
                let gi = r * groups + g;
                let amp = 2f32.powf(rng.random_range(-20.0f32..12.0));
                for c in 0..128 {
                    let v = match gi % 77 {
                        0 => 0.0,
                        11 | 22 => rng.random_range(-1.0f32..1.0) * 3e-5,
                        _ => rng.random_range(-1.0f32..1.0) * amp,
                    };
                    x[r * ku + g * 128 + c] = bf16::from_f32(v);
                }
            }
        }
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let (want_q, want_s) = fp8::quantize_blockwise(&xf, mu, ku);
        let dx = dev.upload(&x, "X").unwrap();
        let mut dq = dev.upload(&vec![0xffu8; mu * ku], "XQ").unwrap();
        let mut ds = dev.upload(&vec![f32::NAN; mu * groups], "SX").unwrap();
        quant
            .launch(&dev.stream, m, k, &dx, &mut dq, &mut ds)
            .unwrap_or_else(|e| panic!("{e}"));
        let got_q = dev.download(&dq).unwrap();
        let got_s = dev.download(&ds).unwrap();
        let code_diff = got_q.iter().zip(&want_q).filter(|(a, b)| a != b).count();
        let scale_diff = got_s
            .iter()
            .zip(&want_s)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        if code_diff + scale_diff > 0 {
            let first = got_q.iter().zip(&want_q).position(|(a, b)| a != b);
            mismatches.push(json!({"m": m, "k": k, "codes": code_diff, "scales": scale_diff,
                "first_code": first.map(|i| json!({"at": i, "x": xf[i], "gpu": got_q[i], "cpu": want_q[i],
                    "scale": want_s[(i / ku) * groups + (i % ku) / 128]}))}));
        }
        rows.push(
            json!({"m": m, "k": k, "code_mismatches": code_diff, "scale_mismatches": scale_diff}),
        );
    }
    let summary = json!({
        "test": "quant_fp8_matches_the_cpu_encoder_bit_exactly",
        "device": dev.info,
        "seed": seed,
        "shapes": rows,
        "mismatches": mismatches,
    });
    report("quant_fp8_validation", &summary);
    assert!(mismatches.is_empty(), "{}", Value::Array(mismatches));
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn gemm_fp8_bench() {
    let (dev, compiler) = open();
    let t0 = std::time::Instant::now();
    let limits = dev.info.limits();
    const DECODE_MS: &[u32] = &[1, 16, 32, 64, 128, 256];
    const FFN_MS: &[u32] = &[512, 2048, 4096];
    let layers: [(&str, u32, u32, &[u32]); 7] = [
        ("qkv", 2560u32, 7168u32, DECODE_MS),
        ("wq", 16384, 2048, DECODE_MS),
        ("o_proj", 7168, 16384, DECODE_MS),
        ("ffn_up", 36864, 7168, FFN_MS),
        ("ffn_down", 7168, 18432, FFN_MS),
        ("moe_up", 10240, 7168, FFN_MS),
        ("moe_down", 7168, 5120, FFN_MS),
    ];
    // Candidates: the default, then per kernel the configs worth measuring with the best
    // estimates (<= 24 stream, <= 40 wgmma; a few ms of GPU time each).
    let candidates = |p: &GemmFp8Problem| -> Vec<GemmFp8Config> {
        let d = GemmFp8::default_config(p);
        let mut rest = GemmFp8::candidates(p, &limits);
        rest.retain(|c| *c != d);
        rest.sort_by(|a, b| {
            GemmFp8::estimate_us(p, a, &limits).total_cmp(&GemmFp8::estimate_us(p, b, &limits))
        });
        let mut v = vec![d];
        let (mut streams, mut wgmmas) = (0, 0);
        for c in rest {
            let (count, cap) = match c {
                GemmFp8Config::Stream(_) => (&mut streams, 24),
                GemmFp8Config::Wgmma(_) => (&mut wgmmas, 40),
            };
            if *count < cap {
                *count += 1;
                v.push(c);
            }
        }
        v
    };
    let mut all: Vec<GemmFp8Config> = Vec::new();
    for &(_, n, k, ms) in &layers {
        for &m in ms {
            for c in candidates(&GemmFp8Problem { m, n, k }) {
                if !all.contains(&c) {
                    all.push(c);
                }
            }
        }
    }
    let kernels = load_all(&dev, &compiler, &all);
    let quant = QuantFp8Kernel::compile(&dev, &compiler).unwrap_or_else(|e| panic!("{e}"));

    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 5,
        reps: 30,
        flush_l2: true,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rows_out = Vec::new();
    for &(name, n, k, ms) in &layers {
        let (nu, ku) = (n as usize, k as usize);
        // Random finite codes (no NaN pattern) and positive scales: timing does not depend on
        // the values, only on their being read.
        // Random bytes with bit 3 cleared: never the NaN pattern S.1111.111.
        let mut wq = vec![0u8; nu * ku];
        rng.fill(&mut wq[..]);
        wq.iter_mut().for_each(|b| *b &= 0xf7);
        let sw = vec![1.0f32 / 448.0; nu.div_ceil(128) * (ku / 128)];
        let w = dev.upload(&wq, "W").unwrap();
        let dsw = dev.upload(&sw, "SW").unwrap();
        for &m in ms {
            let p = GemmFp8Problem { m, n, k };
            // Prefill-sized calls take milliseconds: fewer timed runs.
            let opts = if m > 256 {
                MeasureOptions {
                    warmup: 2,
                    reps: 10,
                    flush_l2: true,
                }
            } else {
                opts
            };
            let mu = m as usize;
            let x = dev.upload(&vec![0x38u8; mu * ku], "X").unwrap();
            let sx = dev.upload(&vec![1.0f32; mu * (ku / 128)], "SX").unwrap();
            let ops = Fp8Operands {
                x: &x,
                sx: &sx,
                w: &w,
                sw: &dsw,
            };
            let mut y = dev.zeros::<bf16>(mu * nu, "Y").unwrap();
            let mut results = Vec::new();
            for c in candidates(&p) {
                let kern = &kernels[&c];
                let mut ws = kern.workspace(&dev, &p).unwrap();
                let meas = bench
                    .measure(&opts, || {
                        kern.launch(&dev.stream, &p, &ops, &mut y, &mut ws)
                    })
                    .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
                results.push((c, meas));
            }
            let tb_s = |us: f64| fam::weight_bytes(&p) / (us * 1e-6) / 1e12;
            let tflop_s = |us: f64| GemmFp8::flops(&p) / (us * 1e-6) / 1e12;
            let default = results[0].1.clone();
            let (best_c, best_m) = results
                .iter()
                .min_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us))
                .unwrap();
            let target = if name == "qkv" { 2.5 } else { 3.5 };
            eprintln!(
                "  {name:<8} M={m:<4} best {:>8.2} us ({:.2} TB/s weight, {:.0} TFLOP/s), default {:>8.2} us ({:.2} TB/s)",
                best_m.median_us,
                tb_s(best_m.median_us),
                tflop_s(best_m.median_us),
                default.median_us,
                tb_s(default.median_us)
            );
            rows_out.push(json!({
                "layer": name,
                "problem": p,
                "weight_mb": fam::weight_bytes(&p) / 1e6,
                "best": {"config": best_c, "measurement": best_m, "weight_tb_s": tb_s(best_m.median_us),
                         "tflop_s": tflop_s(best_m.median_us),
                         "estimate_us": GemmFp8::estimate_us(&p, best_c, &limits)},
                "default": {"config": results[0].0, "measurement": default,
                            "weight_tb_s": tb_s(default.median_us),
                            "tflop_s": tflop_s(default.median_us)},
                "target": {"weight_tb_s": target, "met": tb_s(best_m.median_us) >= target},
                "candidates": results.iter().map(|(c, m)| json!({"config": c,
                    "median_us": m.median_us, "p20_us": m.p20_us, "p80_us": m.p80_us,
                    "weight_tb_s": tb_s(m.median_us), "tflop_s": tflop_s(m.median_us),
                    "estimate_us": GemmFp8::estimate_us(&p, c, &limits)})).collect::<Vec<_>>(),
            }));
        }
    }
    // The activation quantiser on the decode shapes it feeds (M = 32, K of each layer).
    let mut quant_rows = Vec::new();
    for &(name, _, k, _) in &layers[..3] {
        let m = 32u32;
        let x = dev
            .upload(&vec![bf16::from_f32(0.5); (m * k) as usize], "X")
            .unwrap();
        let mut xq = dev.zeros::<u8>((m * k) as usize, "XQ").unwrap();
        let mut sx = dev.zeros::<f32>((m * (k / 128)) as usize, "SX").unwrap();
        let meas = bench
            .measure(&opts, || {
                quant.launch(&dev.stream, m, k, &x, &mut xq, &mut sx)
            })
            .unwrap();
        quant_rows.push(json!({"layer": name, "m": m, "k": k, "measurement": meas}));
    }
    let summary = json!({
        "test": "gemm_fp8_bench",
        "device": dev.info,
        "clock_and_temperature": kiln_runtime::measure::gpu_clock_and_temperature(0),
        "how": "median of 30 CUDA-event-timed launches after 5 warm-ups, L2 flushed (a read of a 2x-L2 buffer) before each; weight_tb_s = N * K bytes (e4m3 weight) / time",
        "wall_s": t0.elapsed().as_secs_f64(),
        "rows": rows_out,
        "quant": quant_rows,
    });
    report("gemm_fp8_bench", &summary);
}
