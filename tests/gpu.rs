//! GPU tier: run on the GPU machine by `scripts/gpu-run.sh` (`--ignored`); CI
//! has no GPU and skips these. Every kernel is validated on fresh random
//! inputs against an f64 CPU reference (small shapes) or the naive GPU
//! reference kernel (large shapes), with the output poisoned (NaN) first so
//! an unwritten element fails.
//!
//! Set KILN_GPU_REPORT to a folder to get a JSON summary of each test there.

use half::bf16;
use kiln_codegen::families::gemm_bf16::{self as fam, GemmBf16, GemmBf16Config, GemmBf16Problem};
use kiln_codegen::{CompileOptions, Compiler, DeviceLimits, Family};
use kiln_runtime::launch::gemm_bf16::{GemmBf16Kernel, GemmBf16Reference};
use kiln_runtime::Device;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::json;

#[path = "gpu_parts/adam.rs"]
mod adam;
#[path = "gpu_parts/common.rs"]
mod common;
#[path = "gpu_parts/fp8.rs"]
mod fp8;
#[path = "gpu_parts/fp8_tune.rs"]
mod fp8_tune;
#[path = "gpu_parts/mfa.rs"]
mod mfa;
#[path = "gpu_parts/mfa_tune.rs"]
mod mfa_tune;
#[path = "gpu_parts/pinn.rs"]
mod pinn;
#[path = "gpu_parts/pinn_backward.rs"]
mod pinn_backward;
#[path = "gpu_parts/pinn_tune.rs"]
mod pinn_tune;
#[path = "gpu_parts/small_mlp.rs"]
mod small_mlp;
#[path = "gpu_parts/synth_residual.rs"]
mod synth_residual;

use common::{rel_err, report, seed};

const GPU: &str = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh";
/// Norm-wise relative error allowed for BF16 outputs (fp32 accumulation, one BF16 rounding).
const BF16_TOL: f64 = 1e-2;

fn random_bf16(rng: &mut impl Rng, len: usize) -> Vec<bf16> {
    (0..len)
        .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect()
}

struct Case {
    problem: GemmBf16Problem,
    a: Vec<bf16>,
    b: Vec<bf16>,
    reference: Vec<f64>,
    by: &'static str,
}

fn cpu_case(rng: &mut impl Rng, m: u32, n: u32, k: u32) -> Case {
    let problem = GemmBf16Problem { m, n, k };
    let a = random_bf16(rng, (m * k) as usize);
    let b = random_bf16(rng, (n * k) as usize);
    let af: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
    let bf: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
    let reference = fam::reference_cpu(&af, &bf, m as usize, n as usize, k as usize);
    Case {
        problem,
        a,
        b,
        reference,
        by: "cpu-f64",
    }
}

fn gpu_case(
    dev: &Device,
    refk: &GemmBf16Reference,
    rng: &mut impl Rng,
    m: u32,
    n: u32,
    k: u32,
) -> Case {
    let problem = GemmBf16Problem { m, n, k };
    let a = random_bf16(rng, (m * k) as usize);
    let b = random_bf16(rng, (n * k) as usize);
    let da = dev.upload(&a, "A").unwrap();
    let db = dev.upload(&b, "B").unwrap();
    let mut dc = dev.upload(&vec![bf16::NAN; (m * n) as usize], "C").unwrap();
    refk.launch(&dev.stream, &problem, &da, &db, &mut dc)
        .unwrap();
    let out = dev.download(&dc).unwrap();
    assert!(
        out.iter().all(|x| x.is_finite()),
        "reference kernel left NaN"
    );
    Case {
        problem,
        a,
        b,
        reference: out.iter().map(|x| x.to_f64()).collect(),
        by: "gpu-naive",
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn gemm_bf16_every_config_matches_the_references() {
    let _ = GPU;
    let dev = Device::open(0).unwrap_or_else(|e| panic!("{e}"));
    let compiler = Compiler::new().unwrap_or_else(|e| panic!("{e}"));
    let seed = seed();
    eprintln!("seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // The shapes: M in {1, 7, 128, 1000}, N and K not multiples of 64
    // (K both 8-aligned and not, to reach both template branches).
    let mut cases = Vec::new();
    for m in [1u32, 7, 128, 1000] {
        for (n, k) in [(75u32, 77u32), (200, 136), (130, 1000)] {
            cases.push(cpu_case(&mut rng, m, n, k));
        }
    }
    // A large shape checked against the naive GPU kernel.
    let refk = GemmBf16Reference::compile(&dev, &compiler).unwrap_or_else(|e| panic!("{e}"));
    cases.push(gpu_case(&dev, &refk, &mut rng, 1000, 2563, 2056));
    cases.push(gpu_case(&dev, &refk, &mut rng, 33, 4099, 2051));
    // Stream-kernel edges: unaligned K with 4 token tiles and splits, and
    // M in 9..16 with N not a multiple of 16 and deep splits.
    cases.push(gpu_case(&dev, &refk, &mut rng, 29, 4099, 2051));
    cases.push(gpu_case(&dev, &refk, &mut rng, 13, 200, 4096));
    cases.push(gpu_case(&dev, &refk, &mut rng, 1, 2563, 7168));
    // Ring-kernel edges: 32 tokens with K % 16 == 8 (a half k16 step) and N past a tile;
    // a wide N whose tiles fall whole to the CTAs and a router-like N below one tile.
    cases.push(gpu_case(&dev, &refk, &mut rng, 32, 4100, 2056));
    cases.push(gpu_case(&dev, &refk, &mut rng, 5, 16384, 1024));
    cases.push(gpu_case(&dev, &refk, &mut rng, 16, 48, 7168));

    let limits = dev.info.limits();
    let configs: Vec<GemmBf16Config> = GemmBf16::legal_space(&limits);
    // Compile every (config, case) pair in parallel first; the loads below
    // are then compile-cache hits.
    let opts = CompileOptions::default();
    let work: Vec<(GemmBf16Config, GemmBf16Problem)> = configs
        .iter()
        .flat_map(|c| cases.iter().map(move |k| (c.clone(), k.problem)))
        .filter(|(c, p)| GemmBf16::check_problem(p, c).is_ok())
        .collect();
    let compile_errors: Vec<String> = work
        .par_iter()
        .filter_map(|(c, p)| {
            let src = kiln_codegen::render::render::<GemmBf16>(p, c).unwrap();
            compiler.compile(&src, &opts).err().map(|e| e.to_string())
        })
        .collect();
    assert!(compile_errors.is_empty(), "{}", compile_errors.join("\n"));

    let mut failures = Vec::new();
    let mut per_config = Vec::new();
    let mut launches = 0usize;
    let mut worst = 0.0f64;
    for c in &configs {
        let mut max_err = 0.0f64;
        let mut tested = 0;
        for case in &cases {
            let p = &case.problem;
            if GemmBf16::check_problem(p, c).is_err() {
                continue;
            }
            let k = GemmBf16Kernel::compile(&dev, &compiler, p, c)
                .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
            let da = dev.upload(&case.a, "A").unwrap();
            let db = dev.upload(&case.b, "B").unwrap();
            let mut dc = dev
                .upload(&vec![bf16::NAN; (p.m * p.n) as usize], "C")
                .unwrap();
            let mut ws = k.workspace(&dev, p).unwrap();
            // Twice: the second launch proves split-K counters were left clean.
            for rep in 0..2 {
                if rep == 1 {
                    dev.stream
                        .memcpy_htod(&vec![bf16::NAN; (p.m * p.n) as usize], &mut dc)
                        .unwrap();
                }
                k.launch(&dev.stream, p, &da, &db, &mut dc, &mut ws)
                    .unwrap_or_else(|e| panic!("{e}"));
                let out = dev
                    .download(&dc)
                    .unwrap_or_else(|e| panic!("{:?} {:?}: {e}", c, p));
                launches += 1;
                let (err, bad) = rel_err(&out, &case.reference);
                max_err = max_err.max(err);
                if bad || err.is_nan() || err > BF16_TOL {
                    failures.push(json!({"config": c, "problem": p, "rep": rep, "rel_err": err, "non_finite": bad, "reference": case.by}));
                }
            }
            tested += 1;
        }
        if tested == 0 {
            failures.push(json!({"config": c, "error": "no case exercised this config"}));
        }
        worst = worst.max(max_err);
        per_config.push(json!({"config": c, "shapes": tested, "max_rel_err": max_err}));
    }
    let summary = json!({
        "test": "gemm_bf16_every_config_matches_the_references",
        "device": dev.info,
        "seed": seed,
        "configs": configs.len(),
        "shapes": cases.iter().map(|c| json!({"problem": c.problem, "reference": c.by})).collect::<Vec<_>>(),
        "launches": launches,
        "worst_rel_err": worst,
        "tolerance": BF16_TOL,
        "failures": failures,
        "per_config": per_config,
    });
    report("gemm_bf16_validation", &summary);
    eprintln!(
        "gemm_bf16: {} configs x {} shapes, {} launches, worst rel err {:.3e}, {} failures",
        configs.len(),
        cases.len(),
        launches,
        worst,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {}",
        failures.len(),
        failures[0]
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn device_info_is_read() {
    let dev = Device::open(0).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dev.info.sms > 0 && dev.info.l2_bytes > 0 && dev.info.cc[0] >= 7,
        "{:?}",
        dev.info
    );
    let limits: DeviceLimits = dev.info.limits();
    assert!(limits.max_dynamic_smem_per_block >= 48 * 1024);
    report("device", &json!(dev.info));
}
