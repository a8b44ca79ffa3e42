//! GPU tier for `fused_norm_rope` (a submodule of `mfa.rs`): every legal config of both ops on
//! fresh random inputs, outputs poisoned first, compared with f64 references; the cache is
//! filled with a sentinel first so a write to any row but the appended one is caught.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use half::bf16;
use kiln_codegen::families::fused_norm_rope::{
    self as fam, FusedNormRope, FusedNormRopeConfig, FusedNormRopeProblem,
};
use kiln_codegen::families::mfa_decode::{e4m3_decode, KvDtype};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::launch::fused_norm_rope::{FusedNormRopeKernel, KvCacheMut};
use kiln_runtime::launch::mfa_decode::MfaKvLayout;
use kiln_runtime::Device;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::common::{assert_no_failures, report, seed};

const TOL: f64 = 1e-2;
/// FP8 rows: e4m3 keeps 3 mantissa bits (relative rounding error up to 2^-4 per value).
const FP8_TOL: f64 = 6e-2;
const D: usize = 256;

fn rel(got: &[f64], want: &[f64]) -> f64 {
    let (mut n, mut d) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        n += (g - w) * (g - w);
        d += w * w;
    }
    if d == 0.0 {
        n.sqrt()
    } else {
        (n / d).sqrt()
    }
}

fn rand_bf16(rng: &mut impl Rng, n: usize, amp: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.random_range(-amp..amp)))
        .collect()
}

fn candidates(dev: &Device, p: &FusedNormRopeProblem) -> Vec<FusedNormRopeConfig> {
    FusedNormRope::candidates(p, &dev.info.limits())
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn fused_norm_rope_rms_norm_every_config() {
    let dev = Device::open(0).unwrap_or_else(|e| panic!("{e}"));
    let compiler = Compiler::new().unwrap_or_else(|e| panic!("{e}"));
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut failures: Vec<Value> = Vec::new();
    let mut worst = 0.0f64;
    let mut launches = 0;
    for batch in [1u32, 7, 300] {
        for hidden in [2048u32, 7168, 64] {
            let p = FusedNormRopeProblem::RmsNorm { batch, hidden };
            let (b, h) = (batch as usize, hidden as usize);
            let x = rand_bf16(&mut rng, b * h, 3.0);
            let w = rand_bf16(&mut rng, h, 2.0);
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let want: Vec<Vec<f64>> = (0..b)
                .map(|r| {
                    let xf: Vec<f32> = x[r * h..(r + 1) * h].iter().map(|v| v.to_f32()).collect();
                    fam::reference_rms_norm(&xf, &wf)
                })
                .collect();
            let dx = dev.upload(&x, "x").unwrap();
            let dw = dev.upload(&w, "weight").unwrap();
            for c in candidates(&dev, &p) {
                let k = FusedNormRopeKernel::compile(&dev, &compiler, &p, &c)
                    .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                let mut dy = dev.upload(&vec![bf16::NAN; b * h], "y").unwrap();
                k.launch_rms_norm(&dev.stream, &p, &dx, &dw, &mut dy)
                    .unwrap_or_else(|e| panic!("{c:?} {p:?}: {e}"));
                let y = dev.download(&dy).unwrap();
                launches += 1;
                for r in 0..b {
                    let got: Vec<f64> = y[r * h..(r + 1) * h].iter().map(|v| v.to_f64()).collect();
                    let e = rel(&got, &want[r]);
                    worst = worst.max(e);
                    if !(e <= TOL) {
                        failures.push(json!({"problem": p, "config": c, "row": r, "rel_err": e}));
                        break;
                    }
                }
            }
        }
    }
    report(
        "fused_norm_rope_rms_norm",
        &json!({"test": "fused_norm_rope_rms_norm_every_config", "seed": seed, "launches": launches,
                "worst_rel_err": worst, "tolerance": TOL, "failures": failures}),
    );
    eprintln!(
        "rms_norm: {launches} launches, worst rel err {worst:.3e}, {} failures",
        failures.len()
    );
    assert_no_failures(&failures);
}

/// One rope_append case on the host.
struct RopeCase {
    p: FusedNormRopeProblem,
    q: Vec<bf16>,
    k: Vec<bf16>,
    v: Vec<bf16>,
    pos: Vec<i32>,
    /// Contiguous: max_len; paged: (table, max_pages) with one page per sequence.
    max_len: u32,
    table: Option<(Vec<i32>, u32)>,
    rows: usize,
    /// f64 references: q per (sequence, head), rotated k per sequence.
    q_want: Vec<Vec<f64>>,
    k_want: Vec<Vec<f64>>,
}

impl RopeCase {
    fn new(rng: &mut impl Rng, batch: u32, kv: KvDtype, page: u32) -> RopeCase {
        let p = FusedNormRopeProblem::step3_rope(batch, kv, page);
        let b = batch as usize;
        let q = rand_bf16(rng, b * 64 * D, 2.0);
        let k = rand_bf16(rng, b * D, 2.0);
        let v = rand_bf16(rng, b * D, 2.0);
        // A short contiguous cache keeps the stray-write scan cheap; the paged one reaches
        // position 65535 with one page per sequence.
        let max_len = 512u32;
        let top = if page > 0 { 65536 } else { max_len as i32 };
        // Positions: 0, a padding token (-1), one past a contiguous cache, large ones.
        let mut pos: Vec<i32> = (0..b).map(|_| rng.random_range(0..top)).collect();
        pos[0] = 0;
        if b > 2 {
            pos[1] = -1;
            pos[2] = if page > 0 { 65535 } else { max_len as i32 };
        }
        let (table, rows) = if page > 0 {
            // Pages cover positions up to 65535; each sequence owns one page: the one holding
            // its position, at pool page (b * 7) % batch-ish order.
            let max_pages = 65536u32.div_ceil(page);
            let mut t = vec![-1i32; b * max_pages as usize];
            for (i, &ps) in pos.iter().enumerate() {
                if ps >= 0 {
                    t[i * max_pages as usize + ps as usize / page as usize] = ((i * 7) % b) as i32;
                }
            }
            (Some((t, max_pages)), b * page as usize)
        } else {
            (None, b * max_len as usize)
        };
        let f = |x: &[bf16]| -> Vec<f32> { x.iter().map(|v| v.to_f32()).collect() };
        let q_want = (0..b * 64)
            .map(|j| {
                let x = f(&q[j * D..(j + 1) * D]);
                let ps = pos[j / 64];
                if ps < 0 {
                    x.iter().map(|&v| v as f64).collect()
                } else {
                    fam::reference_rope(&x, ps as i64)
                }
            })
            .collect();
        let k_want = (0..b)
            .map(|i| fam::reference_rope(&f(&k[i * D..(i + 1) * D]), pos[i].max(0) as i64))
            .collect();
        RopeCase {
            p,
            q,
            k,
            v,
            pos,
            max_len,
            table,
            rows,
            q_want,
            k_want,
        }
    }

    /// Cache row of sequence `i`, if its position lands in the cache.
    fn row(&self, i: usize) -> Option<usize> {
        let ps = self.pos[i];
        if ps < 0 {
            return None;
        }
        match &self.table {
            None => ((ps as u32) < self.max_len).then(|| i * self.max_len as usize + ps as usize),
            Some((t, mp)) => {
                let FusedNormRopeProblem::RopeAppend { page_size, .. } = self.p else {
                    unreachable!()
                };
                let pi = ps as usize / page_size as usize;
                (pi < *mp as usize).then(|| {
                    t[i * *mp as usize + pi] as usize * page_size as usize
                        + ps as usize % page_size as usize
                })
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn fused_norm_rope_rope_append_every_config() {
    let dev = Device::open(0).unwrap_or_else(|e| panic!("{e}"));
    let compiler = Compiler::new().unwrap_or_else(|e| panic!("{e}"));
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut failures: Vec<Value> = Vec::new();
    let mut worst = 0.0f64;
    let mut launches = 0;
    for batch in [1u32, 5, 128] {
        for kv in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
            for page in [0u32, 16, 1] {
                let case = RopeCase::new(&mut rng, batch, kv, page);
                let b = batch as usize;
                let fail = |what: &str, c: &FusedNormRopeConfig, e: f64| json!({"problem": case.p, "config": c, "what": what, "err": e});
                for c in candidates(&dev, &case.p) {
                    let kern = FusedNormRopeKernel::compile(&dev, &compiler, &case.p, &c)
                        .unwrap_or_else(|e| panic!("{c:?} {:?}: {e}", case.p));
                    let mut dq = dev.upload(&case.q, "q").unwrap();
                    let dk = dev.upload(&case.k, "k_new").unwrap();
                    let dv = dev.upload(&case.v, "v_new").unwrap();
                    let dpos = dev.upload(&case.pos, "positions").unwrap();
                    let dtable = case
                        .table
                        .as_ref()
                        .map(|(t, _)| dev.upload(t, "block table").unwrap());
                    let layout = match (&dtable, &case.table) {
                        (Some(t), Some((_, mp))) => MfaKvLayout::Paged {
                            block_table: t,
                            max_pages: *mp,
                        },
                        _ => MfaKvLayout::Contiguous {
                            max_len: case.max_len,
                        },
                    };
                    // Sentinel-filled pools: 0x3f80 (bf16 1.0) / code 0x38 (1.0), scales -1.
                    let n = case.rows * D;
                    let (kvals, vvals, kscales, vscales): (Vec<f64>, Vec<f64>, Vec<f32>, Vec<f32>);
                    if kv.is_fp8() {
                        let mut k8 = dev.upload(&vec![0x38u8; n], "k pool").unwrap();
                        let mut v8 = dev.upload(&vec![0x38u8; n], "v pool").unwrap();
                        let mut ks = dev.upload(&vec![-1.0f32; case.rows], "k scales").unwrap();
                        let mut vs = dev.upload(&vec![-1.0f32; case.rows], "v scales").unwrap();
                        let mut cache = KvCacheMut::Fp8 {
                            k: &mut k8,
                            v: &mut v8,
                            k_scale: &mut ks,
                            v_scale: &mut vs,
                        };
                        kern.launch_rope_append(
                            &dev.stream,
                            &case.p,
                            &mut dq,
                            &dk,
                            &dv,
                            &dpos,
                            &mut cache,
                            &layout,
                        )
                        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
                        kscales = dev.download(&ks).unwrap();
                        vscales = dev.download(&vs).unwrap();
                        kvals = dev
                            .download(&k8)
                            .unwrap()
                            .iter()
                            .map(|&c| e4m3_decode(c) as f64)
                            .collect();
                        vvals = dev
                            .download(&v8)
                            .unwrap()
                            .iter()
                            .map(|&c| e4m3_decode(c) as f64)
                            .collect();
                    } else {
                        let one = bf16::from_f32(1.0);
                        let mut k16 = dev.upload(&vec![one; n], "k pool").unwrap();
                        let mut v16 = dev.upload(&vec![one; n], "v pool").unwrap();
                        let mut cache = KvCacheMut::Bf16 {
                            k: &mut k16,
                            v: &mut v16,
                        };
                        kern.launch_rope_append(
                            &dev.stream,
                            &case.p,
                            &mut dq,
                            &dk,
                            &dv,
                            &dpos,
                            &mut cache,
                            &layout,
                        )
                        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
                        kscales = vec![1.0; case.rows];
                        vscales = vec![1.0; case.rows];
                        kvals = dev
                            .download(&k16)
                            .unwrap()
                            .iter()
                            .map(|v| v.to_f64())
                            .collect();
                        vvals = dev
                            .download(&v16)
                            .unwrap()
                            .iter()
                            .map(|v| v.to_f64())
                            .collect();
                    }
                    launches += 1;
                    let q_out = dev.download(&dq).unwrap();
                    let mut written = std::collections::HashSet::new();
                    for i in 0..b {
                        let ps = case.pos[i];
                        // q: rotated (or untouched for a padding token).
                        for h in 0..64 {
                            let off = (i * 64 + h) * D;
                            let got: Vec<f64> =
                                q_out[off..off + D].iter().map(|v| v.to_f64()).collect();
                            let e = rel(&got, &case.q_want[i * 64 + h]);
                            worst = worst.max(e);
                            if !(e <= TOL) {
                                failures.push(fail(&format!("q seq {i} head {h} pos {ps}"), &c, e));
                            }
                        }
                        // The cache row: rotated k, v as given (dequantised for FP8).
                        if let Some(r) = case.row(i) {
                            written.insert(r);
                            let kw = &case.k_want[i];
                            let vw: Vec<f64> = case.v[i * D..(i + 1) * D]
                                .iter()
                                .map(|v| v.to_f64())
                                .collect();
                            let tol = if kv.is_fp8() { FP8_TOL } else { TOL };
                            for (name, vals, scales, want) in
                                [("k", &kvals, &kscales, kw), ("v", &vvals, &vscales, &vw)]
                            {
                                let got: Vec<f64> = vals[r * D..(r + 1) * D]
                                    .iter()
                                    .map(|x| x * scales[r] as f64)
                                    .collect();
                                let e = rel(&got, want);
                                worst = worst.max(e);
                                if !(e <= tol) {
                                    failures.push(fail(
                                        &format!("{name} row {r} seq {i} pos {ps}"),
                                        &c,
                                        e,
                                    ));
                                }
                                if kv.is_fp8() {
                                    let amax = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                                    let se = (scales[r] as f64 - amax / 448.0).abs()
                                        / (amax / 448.0).max(1e-30);
                                    if se > 1e-2 {
                                        failures.push(fail(
                                            &format!("{name} scale row {r}"),
                                            &c,
                                            se,
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    // Every other row still holds the sentinel.
                    let sentinel_scale = if kv.is_fp8() { -1.0 } else { 1.0 };
                    let stray = (0..case.rows)
                        .filter(|r| !written.contains(r))
                        .filter(|&r| {
                            kvals[r * D..(r + 1) * D]
                                .iter()
                                .chain(&vvals[r * D..(r + 1) * D])
                                .any(|&x| x != 1.0)
                                || kscales[r] != sentinel_scale
                                || vscales[r] != sentinel_scale
                        })
                        .count();
                    if stray > 0 {
                        failures.push(fail("rows written that should not be", &c, stray as f64));
                    }
                }
            }
        }
    }
    report(
        "fused_norm_rope_rope_append",
        &json!({"test": "fused_norm_rope_rope_append_every_config", "seed": seed, "launches": launches,
                "worst_rel_err": worst, "tolerance": TOL, "fp8_tolerance": FP8_TOL, "failures": failures}),
    );
    eprintln!(
        "rope_append: {launches} launches, worst rel err {worst:.3e}, {} failures",
        failures.len()
    );
    assert_no_failures(&failures);
}
