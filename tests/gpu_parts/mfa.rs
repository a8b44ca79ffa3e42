//! GPU tier for `mfa_decode` (included by `tests/gpu.rs`; run by `scripts/gpu-run.sh` with
//! `--ignored`). Fresh random inputs per run (KILN_SEED reproduces), output poisoned with NaN
//! before every launch, each launch done twice (the second proves the split counters were
//! left at zero), compared per sequence with the f64 CPU reference on the dequantised cache.
//! With KILN_GPU_REPORT set, each test writes a JSON summary there.
//!
//! * `mfa_decode_every_config_small`: every legal config (each distinct split count) of every
//!   branch (BF16 / FP8 x contiguous / paged) on B = 3 with lengths {1, 17, 1000}, on B = 1
//!   with a 4096-token sequence and on B = 64 with ragged lengths up to 600; a batch with an
//!   empty sequence; page sizes 16 and 7 (last pages partly filled).
//! * `mfa_decode_large_ragged`: a few configs on B = 64 (L <= 4096, ragged), B = 256
//!   (L <= 4096, ragged), B = 1 (L = 65536), sampled sequences checked.
//! * `mfa_decode_bench`: default and a few alternative configs on the [mfa] issue's grid (B in
//!   {1, 8, 32, 128} x L in {1K, 4K, 8K, 32K, 64K} BF16, FP8 and paged at B = 128, L = 4K),
//!   L2 flushed, effective KV bandwidth per shape.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, report, seed};
use std::collections::HashMap;

use half::bf16;
use kiln_codegen::families::mfa_decode::{
    self as fam, KvDtype, KvLayout, MfaDecode, MfaDecodeConfig, MfaDecodeProblem, HEADS, HEAD_DIM,
};
use kiln_codegen::{CompileOptions, Compiler, Family};
use kiln_runtime::launch::mfa_decode::{
    CudaSlice, MfaDecodeKernel, MfaKvCache, MfaKvLayout, MfaWorkspace,
};
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::{Device, LoadedKernel};
use kiln_tuner::mfa_decode::{fill_pools, seq_rel_err, DevPools, HostPools, PATTERN_ROWS};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

/// `fused_norm_rope`'s GPU tests live next to these (they share the helpers below).
#[path = "norm_rope.rs"]
mod norm_rope;

/// Norm-wise relative error allowed per sequence (fp32 accumulation, P rounded to bf16 / f16,
/// one bf16 rounding of O). FP8 caches are compared with the exactly dequantised cache, so
/// the same bound holds.
const TOL: f64 = 1e-2;
const PER_SEQ: usize = (HEADS * HEAD_DIM) as usize;
const D: usize = HEAD_DIM as usize;

/// Host copy of the layout.
enum HostLayout {
    Contiguous { max_len: usize },
    Paged { table: Vec<i32>, max_pages: usize },
}

/// One validation case: inputs, the sequences checked and their f64 reference.
struct Case {
    name: String,
    problem: MfaDecodeProblem,
    lens: Vec<i32>,
    q: Vec<bf16>,
    pools: HostPools,
    layout: HostLayout,
    checked: Vec<usize>,
    reference: Vec<Vec<f64>>,
}

impl Case {
    /// Random q (head magnitudes 0.5..8, so some softmax rows are peaked), a cache holding
    /// `lens` tokens per sequence, contiguous (`max_len = context + 5`) or paged (pages of
    /// `page_size` in random order, the last page of a sequence partly filled).
    fn new(
        name: &str,
        problem: MfaDecodeProblem,
        lens: Vec<i32>,
        check: Option<usize>,
        rng: &mut impl Rng,
    ) -> Case {
        let batch = problem.batch as usize;
        assert_eq!(lens.len(), batch);
        let mut q = vec![bf16::ZERO; batch * PER_SEQ];
        for (i, x) in q.iter_mut().enumerate() {
            let head = (i / D) % HEADS as usize;
            let amp = 0.5 + 7.5 * (head as f32 / 63.0);
            *x = bf16::from_f32(rng.random_range(-1.0f32..1.0) * amp);
        }
        let clamp = |l: i32| (l.max(0) as usize).min(problem.context as usize);
        let (rows, layout) = if problem.paged() {
            let p = problem.page_size as usize;
            let max_pages = (problem.context as usize).div_ceil(p);
            let used: usize = lens.iter().map(|&l| clamp(l).div_ceil(p)).sum();
            let pages = used + 3;
            let mut order: Vec<i32> = (0..pages as i32).collect();
            for i in (1..pages).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let mut table = vec![-1i32; batch * max_pages];
            let mut next = 0;
            for (b, &l) in lens.iter().enumerate() {
                for i in 0..clamp(l).div_ceil(p) {
                    table[b * max_pages + i] = order[next];
                    next += 1;
                }
            }
            (pages * p, HostLayout::Paged { table, max_pages })
        } else {
            let max_len = problem.context as usize + 5;
            (batch * max_len, HostLayout::Contiguous { max_len })
        };
        let pools = fill_pools(problem.kv_dtype, rows, rng.random());
        // Sequences checked: all of a small batch, else the shortest, the longest, the first,
        // the last and four more at random.
        let checked: Vec<usize> = match check {
            None => (0..batch).collect(),
            Some(n) => {
                let mut s = vec![0, batch - 1];
                let by_len = |f: fn(usize, usize) -> bool| {
                    (0..batch).fold(0, |best, b| {
                        if f(clamp(lens[b]), clamp(lens[best])) {
                            b
                        } else {
                            best
                        }
                    })
                };
                s.push(by_len(|a, b| a < b));
                s.push(by_len(|a, b| a > b));
                while s.len() < n.max(4) {
                    s.push(rng.random_range(0..batch));
                }
                s.sort_unstable();
                s.dedup();
                s
            }
        };
        let mut case = Case {
            name: name.to_string(),
            problem,
            lens,
            q,
            pools,
            layout,
            checked,
            reference: Vec::new(),
        };
        case.reference = case.compute_reference();
        case
    }

    fn compute_reference(&self) -> Vec<Vec<f64>> {
        let qf: Vec<f32> = self.q.iter().map(|x| x.to_f32()).collect();
        let wide = self.pools.widen();
        let (k, v) = self.pools.reference_pools(&wide);
        let layout = match &self.layout {
            HostLayout::Contiguous { max_len } => KvLayout::Contiguous { max_len: *max_len },
            HostLayout::Paged { table, max_pages } => KvLayout::Paged {
                page_size: self.problem.page_size as usize,
                block_table: table,
                max_pages: *max_pages,
            },
        };
        self.checked
            .par_iter()
            .map(|&b| {
                fam::reference_cpu_sequence(
                    self.problem.context as usize,
                    &qf[b * PER_SEQ..(b + 1) * PER_SEQ],
                    k,
                    v,
                    layout,
                    b,
                    self.lens[b],
                )
            })
            .collect()
    }

    fn describe(&self) -> Value {
        json!({"name": self.name, "problem": self.problem, "lens_min": self.lens.iter().min(),
               "lens_max": self.lens.iter().max(), "sequences_checked": self.checked.len()})
    }
}

/// FP8 codes of K and V, then their scales.
type Fp8Pools = (CudaSlice<u8>, CudaSlice<u8>, CudaSlice<f32>, CudaSlice<f32>);

/// A case's buffers on the device.
struct DevCase {
    q: CudaSlice<bf16>,
    k16: Option<(CudaSlice<bf16>, CudaSlice<bf16>)>,
    k8: Option<Fp8Pools>,
    table: Option<(CudaSlice<i32>, u32)>,
    max_len: u32,
    seq_lens: CudaSlice<i32>,
}

impl DevCase {
    fn upload(dev: &Device, c: &Case) -> DevCase {
        let up16 = |x: &Vec<bf16>| dev.upload(x, "mfa test bf16").unwrap();
        let (k16, k8) = match &c.pools {
            HostPools::Bf16 { k, v } => (Some((up16(k), up16(v))), None),
            HostPools::Fp8 { k, v, ks, vs } => (
                None,
                Some((
                    dev.upload(k, "k codes").unwrap(),
                    dev.upload(v, "v codes").unwrap(),
                    dev.upload(ks, "k scales").unwrap(),
                    dev.upload(vs, "v scales").unwrap(),
                )),
            ),
        };
        let (table, max_len) = match &c.layout {
            HostLayout::Contiguous { max_len } => (None, *max_len as u32),
            HostLayout::Paged { table, max_pages } => (
                Some((dev.upload(table, "block table").unwrap(), *max_pages as u32)),
                0,
            ),
        };
        DevCase {
            q: up16(&c.q),
            k16,
            k8,
            table,
            max_len,
            seq_lens: dev.upload(&c.lens, "seq_lens").unwrap(),
        }
    }

    fn cache(&self) -> MfaKvCache<'_> {
        match (&self.k16, &self.k8) {
            (Some((k, v)), _) => MfaKvCache::Bf16 { k, v },
            (_, Some((k, v, ks, vs))) => MfaKvCache::Fp8 {
                k,
                v,
                k_scale: ks,
                v_scale: vs,
            },
            _ => unreachable!("one pool pair"),
        }
    }

    fn layout(&self) -> MfaKvLayout<'_> {
        match &self.table {
            Some((block_table, max_pages)) => MfaKvLayout::Paged {
                block_table,
                max_pages: *max_pages,
            },
            None => MfaKvLayout::Contiguous {
                max_len: self.max_len,
            },
        }
    }
}

/// Loaded kernels by entry: configs that differ only in split_tokens share one.
struct Kernels<'a> {
    dev: &'a Device,
    compiler: &'a Compiler,
    loaded: HashMap<String, LoadedKernel>,
}

impl<'a> Kernels<'a> {
    fn new(dev: &'a Device, compiler: &'a Compiler) -> Self {
        Kernels {
            dev,
            compiler,
            loaded: HashMap::new(),
        }
    }

    /// Compile every (problem, config) pair in parallel first; later loads hit the cache.
    fn precompile(&self, work: &[(MfaDecodeProblem, MfaDecodeConfig)]) {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<_> = work
            .iter()
            .filter(|(p, c)| seen.insert(MfaDecode::entry(p, c)))
            .collect();
        let errors: Vec<String> = unique
            .par_iter()
            .filter_map(|(p, c)| {
                let src = kiln_codegen::render::render::<MfaDecode>(p, c).unwrap();
                self.compiler
                    .compile(&src, &CompileOptions::default())
                    .err()
                    .map(|e| e.to_string())
            })
            .collect();
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }

    fn get(&mut self, p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> MfaDecodeKernel {
        let entry = MfaDecode::entry(p, c);
        if let Some(k) = self.loaded.get(&entry) {
            return MfaDecodeKernel {
                config: c.clone(),
                kv_dtype: p.kv_dtype,
                paged: p.paged(),
                kernel: k.clone(),
            };
        }
        let k = MfaDecodeKernel::compile(self.dev, self.compiler, p, c)
            .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
        self.loaded.insert(entry, k.kernel.clone());
        k
    }
}

/// Worst relative error over the checked sequences, and whether anything was non-finite (or
/// an empty sequence was not exactly zero).
fn compare(case: &Case, out: &[bf16]) -> (f64, bool) {
    let mut worst = 0.0f64;
    let mut bad = false;
    for (i, &b) in case.checked.iter().enumerate() {
        let (err, b_bad) = seq_rel_err(&out[b * PER_SEQ..(b + 1) * PER_SEQ], &case.reference[i]);
        bad |= b_bad;
        worst = worst.max(err);
    }
    (worst, bad)
}

/// Launch `config` on `case` twice with the output poisoned; failures are pushed as JSON.
fn validate(
    dev: &Device,
    kernels: &mut Kernels,
    case: &Case,
    dc: &DevCase,
    config: &MfaDecodeConfig,
    failures: &mut Vec<Value>,
) -> f64 {
    let p = &case.problem;
    let k = kernels.get(p, config);
    let mut ws: MfaWorkspace = k.workspace(dev, p).unwrap();
    let poison = vec![bf16::NAN; p.batch as usize * PER_SEQ];
    let mut out = dev.upload(&poison, "out").unwrap();
    let mut worst = 0.0f64;
    for rep in 0..2 {
        if rep == 1 {
            dev.stream.memcpy_htod(&poison, &mut out).unwrap();
        }
        k.launch(
            &dev.stream,
            p,
            &dc.q,
            &dc.cache(),
            &dc.layout(),
            &dc.seq_lens,
            &mut out,
            &mut ws,
        )
        .unwrap_or_else(|e| panic!("{config:?} on {}: {e}", case.name));
        let host = dev
            .download(&out)
            .unwrap_or_else(|e| panic!("{config:?} on {}: {e}", case.name));
        let (err, bad) = compare(case, &host);
        worst = worst.max(err);
        if bad || !(err <= TOL) {
            failures.push(
                json!({"case": case.name, "problem": p, "config": config, "rep": rep,
                                 "rel_err": err, "non_finite_or_nonzero_empty": bad}),
            );
        }
    }
    let counters = dev.download(&ws.counters).unwrap();
    if fam::counters_len(p, config) > 0 && counters.iter().any(|&c| c != 0) {
        failures.push(json!({"case": case.name, "config": config, "counters_left": counters}));
    }
    worst
}

/// Legal configs for `p`, one per (kernel, split count): other split choices launch the same grid.
fn distinct_configs(
    p: &MfaDecodeProblem,
    limits: &kiln_codegen::DeviceLimits,
) -> Vec<MfaDecodeConfig> {
    let mut seen = std::collections::HashSet::new();
    MfaDecode::candidates(p, limits)
        .into_iter()
        .filter(|c| seen.insert((MfaDecode::entry(p, c), fam::splits(p, c))))
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mfa_decode_every_config_small() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("mfa_decode small: seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let limits = dev.info.limits();
    let t0 = std::time::Instant::now();

    let mut cases = Vec::new();
    for kv in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
        for page in [0u32, 16] {
            let tag = format!(
                "{}_{}",
                if kv.is_fp8() { "fp8" } else { "bf16" },
                if page > 0 { "paged" } else { "contig" }
            );
            let p = MfaDecodeProblem::step3(3, 1000, kv, page);
            cases.push(Case::new(
                &format!("{tag}_b3_l1000"),
                p,
                vec![1, 17, 1000],
                None,
                &mut rng,
            ));
            let p = MfaDecodeProblem::step3(1, 4096, kv, page);
            cases.push(Case::new(
                &format!("{tag}_b1_l4096"),
                p,
                vec![4096],
                None,
                &mut rng,
            ));
            // 64 sequences of 1..=600 tokens (1, 17 and 600 among them): many CTAs per
            // launch, the combine of short and long sequences side by side.
            let p = MfaDecodeProblem::step3(64, 600, kv, page);
            let mut lens: Vec<i32> = (0..64).map(|_| rng.random_range(1..=600)).collect();
            lens[0] = 1;
            lens[1] = 17;
            lens[63] = 600;
            cases.push(Case::new(
                &format!("{tag}_b64_l600"),
                p,
                lens,
                None,
                &mut rng,
            ));
        }
    }
    // An empty sequence, a length past context (clamped), and pages of 7 tokens.
    for kv in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
        let p = MfaDecodeProblem::step3(4, 300, kv, 7);
        cases.push(Case::new(
            "ragged_page7",
            p,
            vec![0, 299, 5000, 64],
            None,
            &mut rng,
        ));
    }

    let mut kernels = Kernels::new(&dev, &compiler);
    let work: Vec<_> = cases
        .iter()
        .flat_map(|c| {
            distinct_configs(&c.problem, &limits)
                .into_iter()
                .map(move |cfg| (c.problem, cfg))
        })
        .collect();
    kernels.precompile(&work);
    let compile_s = t0.elapsed().as_secs_f64();

    let mut failures = Vec::new();
    let mut per_case = Vec::new();
    let mut launches = 0;
    let mut worst = 0.0f64;
    for case in &cases {
        let dc = DevCase::upload(&dev, case);
        let configs = distinct_configs(&case.problem, &limits);
        let mut case_worst = 0.0f64;
        for c in &configs {
            case_worst = case_worst.max(validate(&dev, &mut kernels, case, &dc, c, &mut failures));
            launches += 2;
        }
        worst = worst.max(case_worst);
        per_case.push(
            json!({"case": case.describe(), "configs": configs.len(), "max_rel_err": case_worst}),
        );
        eprintln!(
            "  {}: {} configs, worst rel err {case_worst:.3e}",
            case.name,
            configs.len()
        );
    }
    let summary = json!({
        "test": "mfa_decode_every_config_small",
        "device": dev.info,
        "seed": seed,
        "legal_configs": MfaDecode::legal_space(&limits).len(),
        "launches": launches,
        "worst_rel_err": worst,
        "tolerance": TOL,
        "compile_s": compile_s,
        "wall_s": t0.elapsed().as_secs_f64(),
        "failures": failures,
        "per_case": per_case,
    });
    report("mfa_decode_validation_small", &summary);
    eprintln!(
        "mfa_decode small: {launches} launches, worst rel err {worst:.3e}, {} failures, {:.1} s",
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_no_failures(&failures);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mfa_decode_large_ragged() {
    let (dev, compiler) = open();
    let seed = seed();
    eprintln!("mfa_decode large: seed {seed} (KILN_SEED reproduces)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let limits = dev.info.limits();
    let t0 = std::time::Instant::now();

    let ragged = |rng: &mut rand::rngs::StdRng, batch: usize, context: i32| -> Vec<i32> {
        let mut l: Vec<i32> = (0..batch).map(|_| rng.random_range(1..=context)).collect();
        l[0] = 1;
        l[1] = 17;
        l[batch / 2] = context;
        l
    };
    let mut cases = Vec::new();
    for (kv, page) in [(KvDtype::Bf16, 16u32), (KvDtype::Fp8e4m3, 0)] {
        let p = MfaDecodeProblem::step3(64, 4096, kv, page);
        let lens = ragged(&mut rng, 64, 4096);
        cases.push(Case::new(
            &format!("b64_l4096_{kv:?}_p{page}"),
            p,
            lens,
            Some(8),
            &mut rng,
        ));
    }
    for (kv, page) in [(KvDtype::Bf16, 0u32), (KvDtype::Fp8e4m3, 64)] {
        let p = MfaDecodeProblem::step3(256, 4096, kv, page);
        let lens = ragged(&mut rng, 256, 4096);
        cases.push(Case::new(
            &format!("b256_l4096_{kv:?}_p{page}"),
            p,
            lens,
            Some(6),
            &mut rng,
        ));
    }
    for (kv, page) in [(KvDtype::Bf16, 0u32), (KvDtype::Fp8e4m3, 16)] {
        let p = MfaDecodeProblem::step3(1, 65536, kv, page);
        cases.push(Case::new(
            &format!("b1_l65536_{kv:?}_p{page}"),
            p,
            vec![65536],
            None,
            &mut rng,
        ));
    }
    let data_s = t0.elapsed().as_secs_f64();

    // The default plus 4-warp and 8-warp alternatives, each at a second split size.
    let configs_for = |p: &MfaDecodeProblem| -> Vec<MfaDecodeConfig> {
        let d = MfaDecode::default_config(p);
        let mut v = vec![d.clone()];
        for (tile_kv, stages, warps, wgmma, ws, consumer_widen) in [
            (16, 4, 4, false, false, false),
            (32, 4, 4, false, false, false),
            (64, 2, 4, false, false, false),
            (128, 2, 8, false, false, false),
            (32, 2, 4, true, false, false),
            (64, 3, 8, true, false, false),
            (32, 4, 8, true, true, false),
            (64, 2, 8, true, true, false),
            (32, 3, 4, true, true, false),
            (64, 4, 8, true, true, true),
            (64, 3, 8, true, true, true),
            (64, 2, 4, true, true, true),
        ] {
            for split_tokens in [d.split_tokens, (d.split_tokens * 4).min(1 << 24)] {
                let c = MfaDecodeConfig {
                    tile_kv,
                    stages,
                    warps,
                    split_tokens,
                    wgmma,
                    ws,
                    consumer_widen,
                };
                if MfaDecode::check_config(&c, &limits).is_ok()
                    && MfaDecode::check_problem(p, &c).is_ok()
                    && !v.contains(&c)
                {
                    v.push(c);
                }
            }
        }
        v
    };
    let mut kernels = Kernels::new(&dev, &compiler);
    let work: Vec<_> = cases
        .iter()
        .flat_map(|c| {
            configs_for(&c.problem)
                .into_iter()
                .map(move |cfg| (c.problem, cfg))
        })
        .collect();
    kernels.precompile(&work);

    let mut failures = Vec::new();
    let mut per_case = Vec::new();
    let mut worst = 0.0f64;
    for case in &cases {
        let dc = DevCase::upload(&dev, case);
        let mut rows = Vec::new();
        for c in configs_for(&case.problem) {
            let e = validate(&dev, &mut kernels, case, &dc, &c, &mut failures);
            worst = worst.max(e);
            rows.push(
                json!({"config": c, "splits": fam::splits(&case.problem, &c), "max_rel_err": e}),
            );
        }
        eprintln!("  {}: {} configs checked", case.name, rows.len());
        per_case.push(json!({"case": case.describe(), "configs": rows}));
    }
    let summary = json!({
        "test": "mfa_decode_large_ragged",
        "device": dev.info,
        "seed": seed,
        "worst_rel_err": worst,
        "tolerance": TOL,
        "data_and_reference_s": data_s,
        "wall_s": t0.elapsed().as_secs_f64(),
        "failures": failures,
        "per_case": per_case,
    });
    report("mfa_decode_validation_large", &summary);
    eprintln!(
        "mfa_decode large: worst rel err {worst:.3e}, {} failures, {:.1} s",
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_no_failures(&failures);
}

/// Device pools for timing: `rows` rows replicating a fixed random pattern (seed 7).
fn timing_pools(dev: &Device, dtype: KvDtype, rows: usize) -> DevPools {
    let pattern = fill_pools(dtype, rows.min(PATTERN_ROWS), 7);
    DevPools::replicated(dev, &pattern, rows).unwrap()
}

/// The timing tests' inputs for `p`: Q = 0.5 everywhere, a zeroed output, every length =
/// context.
fn uniform_inputs(
    dev: &Device,
    p: &MfaDecodeProblem,
) -> (CudaSlice<bf16>, CudaSlice<bf16>, CudaSlice<i32>) {
    let b = p.batch as usize;
    let q = dev
        .upload(&vec![bf16::from_f32(0.5); b * PER_SEQ], "q")
        .unwrap();
    let out = dev.zeros::<bf16>(b * PER_SEQ, "out").unwrap();
    let seq_lens = dev.upload(&vec![p.context as i32; b], "seq_lens").unwrap();
    (q, out, seq_lens)
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mfa_decode_bench() {
    let (dev, compiler) = open();
    let limits = dev.info.limits();
    let t0 = std::time::Instant::now();
    let mut shapes: Vec<MfaDecodeProblem> = Vec::new();
    for batch in [1u32, 8, 32, 128] {
        for context in [1024u32, 4096, 8192, 32768, 65536] {
            shapes.push(MfaDecodeProblem::step3(batch, context, KvDtype::Bf16, 0));
        }
    }
    shapes.push(MfaDecodeProblem::step3(128, 4096, KvDtype::Fp8e4m3, 0));
    shapes.push(MfaDecodeProblem::step3(128, 4096, KvDtype::Fp8e4m3, 16));
    shapes.push(MfaDecodeProblem::step3(128, 4096, KvDtype::Bf16, 16));
    shapes.push(MfaDecodeProblem::step3(1, 4096, KvDtype::Fp8e4m3, 0));

    // Candidates: the default, its neighbours in split size, and the other kernels at the
    // default split.
    let candidates = |p: &MfaDecodeProblem| -> Vec<MfaDecodeConfig> {
        let d = MfaDecode::default_config(p);
        let mut v = vec![d.clone()];
        let mut push = |c: MfaDecodeConfig| {
            if MfaDecode::check_config(&c, &limits).is_ok()
                && MfaDecode::check_problem(p, &c).is_ok()
                && !v.contains(&c)
            {
                v.push(c);
            }
        };
        for s in [d.split_tokens / 2, d.split_tokens * 2] {
            if s >= 16 && s <= d.split_tokens.max(p.context.next_power_of_two()) {
                push(MfaDecodeConfig {
                    split_tokens: s,
                    ..d.clone()
                });
            }
        }
        for (tile_kv, stages, warps) in [
            (64, 2, 4),
            (64, 3, 4),
            (32, 2, 4),
            (32, 4, 4),
            (16, 4, 4),
            (64, 2, 8),
            (64, 3, 8),
            (32, 3, 8),
            (32, 4, 8),
            (128, 2, 8),
            (128, 3, 8),
        ] {
            let split_tokens = d.split_tokens.max(tile_kv);
            for (wgmma, ws, consumer_widen) in [
                (false, false, false),
                (true, false, false),
                (true, true, false),
                (true, true, true),
            ] {
                push(MfaDecodeConfig {
                    tile_kv,
                    stages,
                    warps,
                    split_tokens,
                    wgmma,
                    ws,
                    consumer_widen,
                });
            }
        }
        // Short splits: the 16-token kernel at half the default split too, and two small
        // CTAs per SM (32-token tiles, 2 stages: 96 KB) at half the default split.
        push(MfaDecodeConfig {
            tile_kv: 16,
            stages: 4,
            warps: 4,
            split_tokens: (d.split_tokens / 2).max(16),
            wgmma: false,
            ws: false,
            consumer_widen: false,
        });
        for wgmma in [false, true] {
            push(MfaDecodeConfig {
                tile_kv: 32,
                stages: 2,
                warps: 4,
                split_tokens: (d.split_tokens / 2).max(32),
                wgmma,
                ws: false,
                consumer_widen: false,
            });
        }
        v
    };
    let mut kernels = Kernels::new(&dev, &compiler);
    let work: Vec<_> = shapes
        .iter()
        .flat_map(|p| candidates(p).into_iter().map(move |c| (*p, c)))
        .collect();
    kernels.precompile(&work);

    // One set of pools per (dtype, layout) sized for the largest shape of that kind.
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 3,
        reps: 20,
        flush_l2: true,
    };
    let mut rows_out = Vec::new();
    let mut pools: HashMap<(bool, bool), DevPools> = HashMap::new();
    for p in &shapes {
        let key = (p.kv_dtype.is_fp8(), p.paged());
        let need_rows = p.batch as usize * p.context as usize;
        let max_rows = shapes
            .iter()
            .filter(|s| (s.kv_dtype.is_fp8(), s.paged()) == key)
            .map(|s| s.batch as usize * s.context as usize)
            .max()
            .unwrap();
        let pl = pools
            .entry(key)
            .or_insert_with(|| timing_pools(&dev, p.kv_dtype, max_rows));
        let b = p.batch as usize;
        let (q, mut out, seq_lens) = uniform_inputs(&dev, p);
        // Paged: pages of each sequence scattered over the pool (sequence-major reversed).
        let table = if p.paged() {
            let ps = p.page_size as usize;
            let per = p.context as usize / ps;
            let total = need_rows / ps;
            let t: Vec<i32> = (0..b * per).map(|i| ((i * 7919) % total) as i32).collect();
            Some(dev.upload(&t, "block table").unwrap())
        } else {
            None
        };
        let layout = match &table {
            Some(t) => MfaKvLayout::Paged {
                block_table: t,
                max_pages: p.context / p.page_size,
            },
            None => MfaKvLayout::Contiguous { max_len: p.context },
        };
        let cache = pl.cache();
        let mut results = Vec::new();
        for c in candidates(p) {
            let k = kernels.get(p, &c);
            let mut ws = k.workspace(&dev, p).unwrap();
            let m = bench
                .measure(&opts, || {
                    k.launch(
                        &dev.stream,
                        p,
                        &q,
                        &cache,
                        &layout,
                        &seq_lens,
                        &mut out,
                        &mut ws,
                    )
                })
                .unwrap_or_else(|e| panic!("{c:?} on {p:?}: {e}"));
            results.push((c, m));
        }
        let default = results[0].1.median_us;
        let (best_c, best_m) = results
            .iter()
            .min_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us))
            .unwrap();
        let kv_mb = p.kv_bytes() / 1e6;
        let tb_s = |us: f64| p.kv_bytes() / (us * 1e-6) / 1e12;
        let target = if kv_mb >= 256.0 {
            json!({"kind": ">= 3.9 TB/s", "met": tb_s(best_m.median_us) >= 3.9})
        } else if kv_mb >= 32.0 {
            json!({"kind": ">= 3.0 TB/s", "met": tb_s(best_m.median_us) >= 3.0})
        } else {
            json!({"kind": "<= 6 us", "met": best_m.median_us <= 6.0})
        };
        eprintln!(
            "  B={:<4} L={:<6} {:?}{}: {:>8.2} us best ({:.2} TB/s KV), default {:.2} us",
            p.batch,
            p.context,
            p.kv_dtype,
            if p.paged() {
                format!(" page {}", p.page_size)
            } else {
                String::new()
            },
            best_m.median_us,
            tb_s(best_m.median_us),
            default
        );
        rows_out.push(json!({
            "problem": p,
            "kv_mb": kv_mb,
            "best": {"config": best_c, "splits": fam::splits(p, best_c), "measurement": best_m,
                     "kv_tb_s": tb_s(best_m.median_us)},
            "default": {"config": results[0].0, "median_us": default, "kv_tb_s": tb_s(default)},
            "target": target,
            "candidates": results.iter().map(|(c, m)| json!({"config": c, "splits": fam::splits(p, c),
                "median_us": m.median_us, "p20_us": m.p20_us, "p80_us": m.p80_us, "kv_tb_s": tb_s(m.median_us)})).collect::<Vec<_>>(),
        }));
    }
    let summary = json!({
        "test": "mfa_decode_bench",
        "device": dev.info,
        "clock_and_temperature": kiln_runtime::measure::gpu_clock_and_temperature(0),
        "how": "median of 20 CUDA-event-timed launches, L2 flushed (a read of a 2x-L2 buffer) before each; uniform lengths = context; kv_tb_s = K+V bytes (with FP8 scales) / time",
        "wall_s": t0.elapsed().as_secs_f64(),
        "rows": rows_out,
    });
    report("mfa_decode_bench", &summary);
}

/// Phase trace of single-sequence calls (diagnostics for the small-batch latency): the default
/// config compiled with `KILN_TRACE 1`, timed like the bench (median of 20, L2 flushed), then
/// one more flushed launch whose per-CTA stamps (%globaltimer ns, clock64) are read back.
/// Reports, per shape: the event time, the kernel's span (first CTA start to last CTA end,
/// globaltimer), the CTAs' start spread, and per phase the median and max over CTAs of
/// entry -> length known -> first tile landed -> loop done -> partial out -> combine claimed
/// -> end.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mfa_decode_trace() {
    const POINTS: usize = 8;
    let (dev, compiler) = open();
    let shapes = [
        MfaDecodeProblem::step3(1, 1024, KvDtype::Bf16, 0),
        MfaDecodeProblem::step3(1, 4096, KvDtype::Bf16, 0),
        MfaDecodeProblem::step3(1, 16384, KvDtype::Bf16, 0),
        MfaDecodeProblem::step3(1, 65536, KvDtype::Bf16, 0),
        MfaDecodeProblem::step3(8, 4096, KvDtype::Bf16, 0),
    ];
    let mut bench = Bench::new(&dev).unwrap();
    let opts = MeasureOptions {
        warmup: 3,
        reps: 20,
        flush_l2: true,
    };
    let pools = timing_pools(&dev, KvDtype::Bf16, 8 * 65536);
    let mut rows = Vec::new();
    for p in &shapes {
        let c = MfaDecode::default_config(p);
        let src = fam::render_traced(p, &c).unwrap();
        let cubin = compiler
            .compile(&src, &CompileOptions::default())
            .unwrap_or_else(|e| panic!("trace build of {c:?}: {e}"))
            .cubin;
        let k = MfaDecodeKernel::from_cubin(&dev, &cubin, p, &c).unwrap();
        let (q, mut out, seq_lens) = uniform_inputs(&dev, p);
        let layout = MfaKvLayout::Contiguous { max_len: p.context };
        let cache = pools.cache();
        let mut ws = k.workspace(&dev, p).unwrap();
        let launch = |out: &mut CudaSlice<bf16>, ws: &mut MfaWorkspace| {
            k.launch(&dev.stream, p, &q, &cache, &layout, &seq_lens, out, ws)
        };
        let m = bench.measure(&opts, || launch(&mut out, &mut ws)).unwrap();
        let module = k.kernel.module.clone();
        let read = |name: &str| -> Vec<u64> {
            let view = module.get_global(name, &dev.stream).unwrap();
            let bytes: Vec<u8> = dev.stream.clone_dtoh(&view).unwrap();
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        for name in ["kiln_mfa_trace_ns", "kiln_mfa_trace_clk"] {
            let mut view = module.get_global(name, &dev.stream).unwrap();
            dev.stream.memset_zeros(&mut view).unwrap();
        }
        bench.flush_l2().unwrap();
        launch(&mut out, &mut ws).unwrap();
        dev.stream.synchronize().unwrap();
        let ns = read("kiln_mfa_trace_ns");
        let clk = read("kiln_mfa_trace_clk");
        let splits = fam::splits(p, &c) as usize;
        let ctas: Vec<usize> = (0..splits.min(ns.len() / POINTS))
            .filter(|&i| ns[i * POINTS] != 0)
            .collect();
        let t0 = ctas.iter().map(|&i| ns[i * POINTS]).min().unwrap_or(0);
        let last = |i: usize| {
            (0..POINTS)
                .rev()
                .map(|j| ns[i * POINTS + j])
                .find(|&v| v != 0)
                .unwrap_or(0)
        };
        let t_end = ctas.iter().map(|&i| last(i)).max().unwrap_or(0);
        let start_spread = ctas.iter().map(|&i| ns[i * POINTS] - t0).max().unwrap_or(0);
        // Phase j -> j+1 where both stamps exist: ns (globaltimer) and clock cycles.
        let mut phases = Vec::new();
        for j in 0..POINTS - 1 {
            let mut d_ns: Vec<f64> = Vec::new();
            let mut d_clk: Vec<f64> = Vec::new();
            for &i in &ctas {
                let (a, z) = (i * POINTS + j, i * POINTS + j + 1);
                if ns[a] != 0 && ns[z] != 0 {
                    d_ns.push(ns[z] as f64 - ns[a] as f64);
                    d_clk.push(clk[z] as f64 - clk[a] as f64);
                }
            }
            if d_ns.is_empty() {
                continue;
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                (v[v.len() / 2], *v.last().unwrap())
            };
            let (ns_med, ns_max) = med(&mut d_ns);
            let (clk_med, clk_max) = med(&mut d_clk);
            phases.push(json!({"from": j, "to": j + 1, "ctas": d_ns.len(),
                "ns_median": ns_med, "ns_max": ns_max, "clk_median": clk_med, "clk_max": clk_max}));
        }
        let per_cta: Vec<Vec<i64>> = ctas
            .iter()
            .map(|&i| {
                (0..POINTS)
                    .map(|j| {
                        let v = ns[i * POINTS + j];
                        if v == 0 {
                            -1
                        } else {
                            (v - t0) as i64
                        }
                    })
                    .collect()
            })
            .collect();
        eprintln!(
            "  B={} L={}: event {:.2} us, kernel span {:.2} us, start spread {:.2} us, {} CTAs",
            p.batch,
            p.context,
            m.median_us,
            (t_end - t0) as f64 / 1e3,
            start_spread as f64 / 1e3,
            ctas.len()
        );
        for ph in &phases {
            eprintln!("    {ph}");
        }
        rows.push(json!({
            "problem": p, "config": c, "splits": splits, "event": m,
            "kernel_span_us": (t_end - t0) as f64 / 1e3,
            "start_spread_us": start_spread as f64 / 1e3,
            "phases": phases, "per_cta_ns_from_first_start": per_cta,
        }));
    }
    report(
        "mfa_decode_trace",
        &json!({
            "test": "mfa_decode_trace",
            "device": dev.info,
            "points": ["entry", "length known", "first tile landed", "loop done",
                       "partial out (or output, unsplit)", "combine claimed", "end"],
            "rows": rows,
        }),
    );
}

/// One shape, one config, a few launches: the target of an `ncu` profile (the GPU script runs
/// it under Nsight Compute). KILN_MFA_SHAPE = "batch,context,bf16|fp8[,page]" (default
/// "128,4096,bf16"); KILN_MFA_CONFIG = "tile,stages,warps,split_tokens[,wgmma 0/1[,ws 0/1]]" (default: the
/// family's default config).
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mfa_decode_one_shape() {
    let (dev, compiler) = open();
    let shape = std::env::var("KILN_MFA_SHAPE").unwrap_or_else(|_| "128,4096,bf16".into());
    let f: Vec<&str> = shape.split(',').collect();
    let dtype = if f[2] == "fp8" {
        KvDtype::Fp8e4m3
    } else {
        KvDtype::Bf16
    };
    let page = f.get(3).map(|x| x.parse().unwrap()).unwrap_or(0);
    let p = MfaDecodeProblem::step3(f[0].parse().unwrap(), f[1].parse().unwrap(), dtype, page);
    assert_eq!(page, 0, "contiguous caches only");
    let c = match std::env::var("KILN_MFA_CONFIG") {
        Ok(v) => {
            let n: Vec<u32> = v.split(',').map(|x| x.parse().unwrap()).collect();
            MfaDecodeConfig {
                tile_kv: n[0],
                stages: n[1],
                warps: n[2],
                split_tokens: n[3],
                wgmma: n.get(4).is_some_and(|&w| w != 0),
                ws: n.get(5).is_some_and(|&w| w != 0),
                consumer_widen: n.get(6).is_some_and(|&w| w != 0),
            }
        }
        Err(_) => MfaDecode::default_config(&p),
    };
    let mut kernels = Kernels::new(&dev, &compiler);
    let k = kernels.get(&p, &c);
    let b = p.batch as usize;
    let pools = timing_pools(&dev, dtype, b * p.context as usize);
    let (q, mut out, seq_lens) = uniform_inputs(&dev, &p);
    let layout = MfaKvLayout::Contiguous { max_len: p.context };
    let cache = pools.cache();
    let mut ws = k.workspace(&dev, &p).unwrap();
    for _ in 0..4 {
        k.launch(
            &dev.stream,
            &p,
            &q,
            &cache,
            &layout,
            &seq_lens,
            &mut out,
            &mut ws,
        )
        .unwrap();
    }
    dev.stream.synchronize().unwrap();
    eprintln!("mfa_decode_one_shape: {p:?} {c:?}: 4 launches");
}
