//! Tuning `mfa_decode` on the GPU: fresh random Q and K/V caches per problem (every length =
//! context), each candidate compiled (in parallel, one cubin per kernel: split choices share
//! it), launched twice into a NaN-poisoned output (the second launch proves the split counters
//! were left at zero) and compared on a few sampled sequences with the f64 CPU reference of
//! the dequantised cache, then timed with the shared measurement module (L2 flushed).
//!
//! Large caches (B = 128, L = 64K: 8.6 GB) are not built on the host: a pattern of at most
//! [`PATTERN_ROWS`] random rows is uploaded and replicated on the device, so pool row `r` holds
//! pattern row `r % PATTERN_ROWS`, and the reference reads the pattern the same way.
//!
//! There is no in-process baseline: the peer, PyTorch SDPA, is timed by
//! `benches/peers/mfa_sdpa.py` in the same GPU call ([`PEER_NOTE`]).

use std::collections::HashMap;

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use kiln_codegen::families::mfa_decode::{
    self as fam, KvDtype, KvLayout, KvPool, MfaDecode, MfaDecodeConfig, MfaDecodeProblem, HEADS,
    HEAD_DIM,
};
use kiln_codegen::{CompileOptions, Compiler, Family};
use kiln_runtime::artifact::Entry;
use kiln_runtime::error::DriverContext;
use kiln_runtime::launch::mfa_decode::{MfaDecodeKernel, MfaKvCache, MfaKvLayout, MfaWorkspace};
use kiln_runtime::measure::{Bench, Measurement};
use kiln_runtime::{Device, LoadedKernel, Result, RuntimeError};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::roofline;
use crate::search::{config_key, prepared_mut, time_candidate, Evaluator, Failure, Prepared};
use crate::tune::{entry_of, search_family, ProblemTuner, TuneOptions, Tuned};

/// Norm-wise relative error allowed per checked sequence (fp32 accumulation, P rounded to
/// bf16 / f16, one bf16 rounding of O; FP8 caches are compared with the exactly dequantised
/// cache, so the same bound holds).
pub const TOLERANCE: f64 = 1e-2;
/// Rows of the random pattern replicated over a pool (64 MiB of BF16 per pool).
pub const PATTERN_ROWS: usize = 1 << 17;
/// Why an entry has no baseline.
pub const PEER_NOTE: &str = "no in-process baseline: the peer (PyTorch SDPA) is timed by \
    benches/peers/mfa_sdpa.py in the same GPU call";

const PER_SEQ: usize = (HEADS * HEAD_DIM) as usize;
const D: usize = HEAD_DIM as usize;

/// Host copy of one pool pair (K and V rows of `HEAD_DIM` values).
pub enum HostPools {
    Bf16 {
        k: Vec<bf16>,
        v: Vec<bf16>,
    },
    Fp8 {
        k: Vec<u8>,
        v: Vec<u8>,
        ks: Vec<f32>,
        vs: Vec<f32>,
    },
}

/// BF16 pools widened to f32 for the f64 reference (empty for FP8, which it reads as codes);
/// hand them to [`HostPools::reference_pools`].
pub struct Widened(Vec<f32>, Vec<f32>);

impl HostPools {
    pub fn widen(&self) -> Widened {
        let widen = |x: &Vec<bf16>| x.par_iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
        match self {
            HostPools::Bf16 { k, v } => Widened(widen(k), widen(v)),
            HostPools::Fp8 { .. } => Widened(Vec::new(), Vec::new()),
        }
    }

    /// The reference's view of the K and V pools (`wide` from [`HostPools::widen`]).
    pub fn reference_pools<'a>(&'a self, wide: &'a Widened) -> (KvPool<'a>, KvPool<'a>) {
        match self {
            HostPools::Bf16 { .. } => (KvPool::Bf16(&wide.0), KvPool::Bf16(&wide.1)),
            HostPools::Fp8 { k, v, ks, vs } => (
                KvPool::Fp8 {
                    codes: k,
                    scales: ks,
                },
                KvPool::Fp8 {
                    codes: v,
                    scales: vs,
                },
            ),
        }
    }

    /// Rows (tokens) the pools hold.
    pub fn rows(&self) -> usize {
        match self {
            HostPools::Bf16 { k, .. } => k.len() / D,
            HostPools::Fp8 { ks, .. } => ks.len(),
        }
    }
}

/// `rows` rows of `HEAD_DIM` values, filled in parallel with one RNG per row (deterministic per
/// seed): BF16 in (-1, 1), or FP8 with per-token magnitudes spread over ~e^4 quantised with
/// scale = amax / 448.
pub fn fill_pools(dtype: KvDtype, rows: usize, seed: u64) -> HostPools {
    let row_rng = |r: usize, which: u64| {
        rand::rngs::StdRng::seed_from_u64(
            seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ which,
        )
    };
    match dtype {
        KvDtype::Bf16 => {
            let gen = |which: u64| -> Vec<bf16> {
                let mut out = vec![bf16::ZERO; rows * D];
                out.par_chunks_mut(D).enumerate().for_each(|(r, row)| {
                    let mut rng = row_rng(r, which);
                    for x in row {
                        *x = bf16::from_f32(rng.random_range(-1.0f32..1.0));
                    }
                });
                out
            };
            HostPools::Bf16 {
                k: gen(1),
                v: gen(2),
            }
        }
        KvDtype::Fp8e4m3 => {
            let gen = |which: u64| -> (Vec<u8>, Vec<f32>) {
                let mut codes = vec![0u8; rows * D];
                let mut scales = vec![0f32; rows];
                codes
                    .par_chunks_mut(D)
                    .zip(scales.par_iter_mut())
                    .enumerate()
                    .for_each(|(r, (row, scale))| {
                        let mut rng = row_rng(r, which);
                        let amp = rng.random_range(-2.0f32..2.0).exp();
                        let x: Vec<f32> = (0..D)
                            .map(|_| rng.random_range(-1.0f32..1.0) * amp)
                            .collect();
                        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
                        *scale = amax / 448.0;
                        for (c, v) in row.iter_mut().zip(&x) {
                            *c = fam::e4m3_encode(v / *scale);
                        }
                    });
                (codes, scales)
            };
            let (k, ks) = gen(1);
            let (v, vs) = gen(2);
            HostPools::Fp8 { k, v, ks, vs }
        }
    }
}

/// A device buffer of `len` elements holding copies of `pat` back to back.
fn replicate<T: DeviceRepr + ValidAsZeroBits>(
    dev: &Device,
    pat: &CudaSlice<T>,
    len: usize,
) -> Result<CudaSlice<T>> {
    let mut dst = dev.zeros::<T>(len, "mfa_decode KV pool")?;
    let mut off = 0;
    while off < len {
        let n = pat.len().min(len - off);
        let mut view = dst.slice_mut(off..off + n);
        dev.stream
            .memcpy_dtod(&pat.slice(0..n), &mut view)
            .during("replicating the KV pattern")?;
        off += n;
    }
    Ok(dst)
}

/// K and V pools on the device.
pub enum DevPools {
    Bf16(CudaSlice<bf16>, CudaSlice<bf16>),
    Fp8(CudaSlice<u8>, CudaSlice<u8>, CudaSlice<f32>, CudaSlice<f32>),
}

impl DevPools {
    /// `rows` rows whose row `r` is row `r % pattern rows` of `pattern` (scales too).
    pub fn replicated(dev: &Device, pattern: &HostPools, rows: usize) -> Result<DevPools> {
        let elems = rows * D;
        Ok(match pattern {
            HostPools::Bf16 { k, v } => DevPools::Bf16(
                replicate(dev, &dev.upload(k, "K pattern")?, elems)?,
                replicate(dev, &dev.upload(v, "V pattern")?, elems)?,
            ),
            HostPools::Fp8 { k, v, ks, vs } => DevPools::Fp8(
                replicate(dev, &dev.upload(k, "K pattern")?, elems)?,
                replicate(dev, &dev.upload(v, "V pattern")?, elems)?,
                replicate(dev, &dev.upload(ks, "K scale pattern")?, rows)?,
                replicate(dev, &dev.upload(vs, "V scale pattern")?, rows)?,
            ),
        })
    }

    pub fn cache(&self) -> MfaKvCache<'_> {
        match self {
            DevPools::Bf16(k, v) => MfaKvCache::Bf16 { k, v },
            DevPools::Fp8(k, v, ks, vs) => MfaKvCache::Fp8 {
                k,
                v,
                k_scale: ks,
                v_scale: vs,
            },
        }
    }
}

/// Norm-wise relative error of one sequence's output against its reference, and whether an
/// output was non-finite (or an all-zero reference was not matched exactly).
pub fn seq_rel_err(got: &[bf16], want: &[f64]) -> (f64, bool) {
    let (mut num, mut den, mut bad) = (0.0f64, 0.0f64, false);
    for (g, w) in got.iter().zip(want) {
        let g = g.to_f64();
        bad |= !g.is_finite();
        num += (g - w) * (g - w);
        den += w * w;
    }
    if den == 0.0 {
        (0.0, bad || num != 0.0)
    } else {
        ((num / den).sqrt(), bad)
    }
}

/// Sequences checked against the CPU reference: the first, the last and one in the middle. A
/// sequence's f64 reference costs ~34 kFLOP per token (~2.2 GFLOP at L = 64K), so from
/// L = 32K on only the first and the last are checked (at B = 128 L = 64K the middle one reads
/// the same pattern rows as the first anyway).
pub fn checked_sequences(p: &MfaDecodeProblem) -> Vec<usize> {
    let last = p.batch.max(1) as usize - 1;
    let mut s = vec![0, last];
    if p.context < 32768 {
        s.push(last / 2);
    }
    s.sort_unstable();
    s.dedup();
    s
}

/// Pages per sequence and the block table of a paged problem: pages scattered over the pool
/// (`i * 7919 mod pages`, as `mfa_decode_bench` does).
pub fn scattered_table(p: &MfaDecodeProblem) -> (usize, Vec<i32>) {
    let max_pages = (p.context as usize).div_ceil(p.page_size.max(1) as usize);
    let total = p.batch as usize * max_pages;
    let table = (0..total).map(|i| ((i * 7919) % total) as i32).collect();
    (max_pages, table)
}

/// The f64 reference of sequences `checked` (every length = context) on pools replicating
/// `pattern`: pool row `r` is pattern row `r % pattern rows`, given to the reference as a
/// one-token-per-page table per sequence. `table` is (max_pages, block table) when paged.
pub fn replicated_reference(
    p: &MfaDecodeProblem,
    q: &[bf16],
    pattern: &HostPools,
    table: Option<(usize, &[i32])>,
    checked: &[usize],
) -> Vec<Vec<f64>> {
    let context = p.context as usize;
    let qf: Vec<f32> = q.iter().map(|x| x.to_f32()).collect();
    let wide = pattern.widen();
    let (k, v) = pattern.reference_pools(&wide);
    let pattern_rows = pattern.rows();
    let layout = match table {
        Some((max_pages, block_table)) => KvLayout::Paged {
            page_size: p.page_size as usize,
            block_table,
            max_pages,
        },
        None => KvLayout::Contiguous { max_len: context },
    };
    checked
        .par_iter()
        .map(|&b| {
            let rows: Vec<i32> = (0..context)
                .map(|t| (layout.row(b, t) % pattern_rows) as i32)
                .collect();
            let one = KvLayout::Paged {
                page_size: 1,
                block_table: &rows,
                max_pages: context,
            };
            let qb = &qf[b * PER_SEQ..(b + 1) * PER_SEQ];
            fam::reference_cpu_sequence(context, qb, k, v, one, 0, p.context as i32)
        })
        .collect()
}

fn illegal(p: &MfaDecodeProblem, reason: String) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: "mfa_decode bench".into(),
        problem: format!("{p:?}"),
        reason,
    }
}

/// The launch's view of a block table (paged) or of the contiguous pools.
fn layout_of(table: &Option<(CudaSlice<i32>, u32)>, context: u32) -> MfaKvLayout<'_> {
    match table {
        Some((block_table, max_pages)) => MfaKvLayout::Paged {
            block_table,
            max_pages: *max_pages,
        },
        None => MfaKvLayout::Contiguous { max_len: context },
    }
}

/// One problem's inputs on the device, the reference of its checked sequences, and the
/// kernels prepared for it.
pub struct MfaDecodeBench<'a> {
    pub device: &'a Device,
    pub compiler: &'a Compiler,
    pub bench: &'a mut Bench,
    pub problem: MfaDecodeProblem,
    q: CudaSlice<bf16>,
    pools: DevPools,
    table: Option<(CudaSlice<i32>, u32)>,
    seq_lens: CudaSlice<i32>,
    out: CudaSlice<bf16>,
    poison: Vec<bf16>,
    checked: Vec<usize>,
    reference: Vec<Vec<f64>>,
    /// Loaded kernels by entry, with their registers per thread.
    loaded: HashMap<String, (LoadedKernel, u32)>,
    kernels: HashMap<String, (MfaDecodeKernel, MfaWorkspace)>,
}

impl<'a> MfaDecodeBench<'a> {
    /// Random Q (head magnitudes 0.5..8, so some softmax rows are peaked), caches holding
    /// `context` tokens per sequence (contiguous, or paged through a scattered block table),
    /// and the reference of [`checked_sequences`].
    pub fn new(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        problem: MfaDecodeProblem,
        seed: u64,
    ) -> Result<Self> {
        MfaDecode::supports(&problem)?;
        let p = problem;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let batch = p.batch as usize;
        let context = p.context as usize;
        let q: Vec<bf16> = (0..batch * PER_SEQ)
            .map(|i| {
                let head = (i / D) % HEADS as usize;
                let amp = 0.5 + 7.5 * (head as f32 / 63.0);
                bf16::from_f32(rng.random_range(-1.0f32..1.0) * amp)
            })
            .collect();
        let (rows, host_table) = if p.paged() {
            let (max_pages, table) = scattered_table(&p);
            (table.len() * p.page_size as usize, Some((max_pages, table)))
        } else {
            (batch * context, None)
        };
        let pattern_rows = rows.min(PATTERN_ROWS);
        let pattern = fill_pools(p.kv_dtype, pattern_rows, rng.random());
        let pools = DevPools::replicated(device, &pattern, rows)?;

        let checked = checked_sequences(&p);
        let table_ref = host_table.as_ref().map(|(m, t)| (*m, t.as_slice()));
        let reference = replicated_reference(&p, &q, &pattern, table_ref, &checked);

        let table = match host_table {
            Some((max_pages, t)) => Some((device.upload(&t, "block table")?, max_pages as u32)),
            None => None,
        };
        Ok(MfaDecodeBench {
            device,
            compiler,
            bench,
            problem,
            q: device.upload(&q, "Q")?,
            pools,
            table,
            seq_lens: device.upload(&vec![p.context as i32; batch], "seq_lens")?,
            out: device.zeros::<bf16>(batch * PER_SEQ, "O")?,
            poison: vec![bf16::NAN; batch * PER_SEQ],
            checked,
            reference,
            loaded: HashMap::new(),
            kernels: HashMap::new(),
        })
    }

    /// Launch into the poisoned output and compare the checked sequences; twice (the second
    /// launch finds the counters the first left behind).
    fn validate(
        &mut self,
        kernel: &MfaDecodeKernel,
        ws: &mut MfaWorkspace,
    ) -> std::result::Result<f64, Failure> {
        let mut worst = 0.0f64;
        for rep in 0..2 {
            self.device
                .stream
                .memcpy_htod(&self.poison, &mut self.out)
                .during("poisoning the output")
                .map_err(Failure::launch_failed)?;
            let cache = self.pools.cache();
            let layout = layout_of(&self.table, self.problem.context);
            kernel
                .launch(
                    &self.device.stream,
                    &self.problem,
                    &self.q,
                    &cache,
                    &layout,
                    &self.seq_lens,
                    &mut self.out,
                    ws,
                )
                .map_err(Failure::launch_failed)?;
            let host = self
                .device
                .download(&self.out)
                .map_err(Failure::launch_failed)?;
            for (b, want) in self.checked.iter().zip(&self.reference) {
                let (err, bad) = seq_rel_err(&host[b * PER_SEQ..(b + 1) * PER_SEQ], want);
                // `!(err <= tol)` on purpose: a NaN error fails.
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                if bad || !(err <= TOLERANCE) {
                    return Err(Failure {
                        outcome: "invalid",
                        reason: format!(
                            "launch {}: sequence {b}: relative error {err:.3e} (tolerance \
                             {TOLERANCE:.0e}){}",
                            rep + 1,
                            if bad { ", non-finite outputs" } else { "" }
                        ),
                    });
                }
                worst = worst.max(err);
            }
        }
        Ok(worst)
    }
}

impl Evaluator<MfaDecodeConfig> for MfaDecodeBench<'_> {
    fn prepare(
        &mut self,
        configs: &[MfaDecodeConfig],
    ) -> Vec<std::result::Result<Prepared, Failure>> {
        let p = self.problem;
        let compiler = self.compiler;
        // One compile per kernel: configs differing only in split_tokens share a cubin.
        let mut entries: Vec<(String, &MfaDecodeConfig)> = Vec::new();
        for c in configs {
            let e = MfaDecode::entry(&p, c);
            if !self.loaded.contains_key(&e) && entries.iter().all(|(x, _)| *x != e) {
                entries.push((e, c));
            }
        }
        let compiled: HashMap<String, std::result::Result<_, Failure>> = entries
            .par_iter()
            .map(|(e, c)| {
                let k = kiln_codegen::render::render::<MfaDecode>(&p, c)
                    .and_then(|src| compiler.compile(&src, &CompileOptions::default()))
                    .map_err(|e| Failure {
                        outcome: "compile_failed",
                        reason: e.to_string(),
                    });
                (e.clone(), k)
            })
            .collect();
        let mut out = Vec::with_capacity(configs.len());
        for c in configs {
            let entry = MfaDecode::entry(&p, c);
            let res = (|| {
                let kernel = match (self.loaded.get(&entry), compiled.get(&entry)) {
                    (Some((k, _)), _) => MfaDecodeKernel {
                        config: c.clone(),
                        kv_dtype: p.kv_dtype,
                        paged: p.paged(),
                        kernel: k.clone(),
                    },
                    (None, Some(Ok(k))) => {
                        let kernel = MfaDecodeKernel::from_cubin(self.device, &k.cubin, &p, c)
                            .map_err(Failure::launch_failed)?;
                        self.loaded.insert(
                            entry.clone(),
                            (kernel.kernel.clone(), k.resources.registers),
                        );
                        kernel
                    }
                    (None, Some(Err(f))) => return Err(f.clone()),
                    (None, None) => {
                        return Err(Failure {
                            outcome: "compile_failed",
                            reason: format!("{entry} was not compiled"),
                        })
                    }
                };
                let mut ws = kernel
                    .workspace(self.device, &p)
                    .map_err(Failure::launch_failed)?;
                let err = self.validate(&kernel, &mut ws)?;
                self.kernels.insert(config_key(c), (kernel, ws));
                Ok(Prepared {
                    max_rel_err: err,
                    registers: self.loaded.get(&entry).map(|(_, r)| *r),
                    ..Default::default()
                })
            })();
            out.push(res);
        }
        out
    }

    fn time(
        &mut self,
        config: &MfaDecodeConfig,
        reps: usize,
    ) -> std::result::Result<Measurement, Failure> {
        let (kernel, ws) = prepared_mut(&mut self.kernels, config)?;
        let stream = self.device.stream.clone();
        let layout = layout_of(&self.table, self.problem.context);
        let cache = self.pools.cache();
        let (p, q, lens, out) = (&self.problem, &self.q, &self.seq_lens, &mut self.out);
        time_candidate(self.bench, reps, || {
            kernel.launch(&stream, p, q, &cache, &layout, lens, out, ws)
        })
    }
}

/// How reports name a problem, e.g. `B=128 L=4096 fp8 paged16`.
pub fn describe(p: &MfaDecodeProblem) -> String {
    format!(
        "B={} L={} {} {}",
        p.batch,
        p.context,
        if p.kv_dtype.is_fp8() { "fp8" } else { "bf16" },
        if p.paged() {
            format!("paged{}", p.page_size)
        } else {
            "contig".into()
        }
    )
}

/// The line printed when a problem is tuned: time, KV bandwidth, roofline, error, config.
pub fn line(p: &MfaDecodeProblem, entry: &Entry) -> String {
    let c = serde_json::from_value::<MfaDecodeConfig>(entry.config.clone())
        .map(|c| {
            format!(
                "t{} s{} w{} split {} ({} splits)",
                c.tile_kv,
                c.stages,
                c.warps,
                c.split_tokens,
                fam::splits(p, &c)
            )
        })
        .unwrap_or_else(|_| entry.config.to_string());
    format!(
        "{:<24} {:>9.2} us  {:>5.2} TB/s KV  {:>5.1}% roofline  err {:.1e}  {c}",
        describe(p),
        entry.median_us,
        p.kv_bytes() / (entry.median_us * 1e-6) / 1e12,
        entry.pct_of_roofline,
        entry.max_rel_err
    )
}

/// `mfa_decode`'s tuner: no reference kernel or baseline to set up.
pub struct MfaTuner<'d> {
    pub device: &'d Device,
    pub compiler: &'d Compiler,
    pub limits: kiln_codegen::DeviceLimits,
}

impl ProblemTuner for MfaTuner<'_> {
    type Problem = MfaDecodeProblem;

    fn describe(&self, p: &MfaDecodeProblem) -> String {
        describe(p)
    }

    fn tune(
        &mut self,
        bench: &mut Bench,
        problem: &MfaDecodeProblem,
        seed: u64,
        opts: &TuneOptions,
    ) -> Result<Tuned> {
        MfaDecode::supports(problem)?;
        if MfaDecode::candidates(problem, &self.limits).is_empty() {
            return Err(illegal(problem, "no legal config".into()));
        }
        // Decode attention is bound by the KV stream: the floor is K + V (with FP8 scales)
        // at HBM bandwidth (compute at 0 FLOP never dominates).
        let floor = roofline::floor_us(0.0, problem.kv_bytes(), roofline::BF16_FLOPS);
        let mut b = MfaDecodeBench::new(self.device, self.compiler, bench, *problem, seed)?;
        let result = search_family::<MfaDecode, _>(problem, &self.limits, floor, &mut b, opts)?;
        Ok(Tuned {
            entry: entry_of::<MfaDecode>(problem, result, floor, None, Vec::new()),
            notes: vec![PEER_NOTE.into()],
        })
    }

    fn line(&self, p: &MfaDecodeProblem, entry: &Entry) -> String {
        line(p, entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_sequences_shrink_for_long_contexts() {
        let p = |b, l| MfaDecodeProblem::step3(b, l, KvDtype::Bf16, 0);
        assert_eq!(checked_sequences(&p(1, 65536)), vec![0]);
        assert_eq!(checked_sequences(&p(3, 1000)), vec![0, 1, 2]);
        assert_eq!(checked_sequences(&p(128, 8192)), vec![0, 63, 127]);
        assert_eq!(checked_sequences(&p(128, 65536)), vec![0, 127]);
    }

    /// Through the replication map, the reference equals the plain one on the whole pool.
    #[test]
    fn the_replicated_reference_reads_the_pool_the_kernel_reads() {
        for (dtype, page) in [(KvDtype::Bf16, 0), (KvDtype::Fp8e4m3, 16)] {
            let p = MfaDecodeProblem::step3(3, 40, dtype, page);
            let (max_pages, table) = scattered_table(&p);
            let rows = if page > 0 { table.len() * 16 } else { 120 };
            // The pool rows written out in full, and a pattern of 7 rows they repeat.
            let pattern = fill_pools(dtype, 7, 3);
            let full = match &pattern {
                HostPools::Bf16 { k, v } => {
                    let rep = |x: &Vec<bf16>| (0..rows * D).map(|i| x[i % (7 * D)]).collect();
                    HostPools::Bf16 {
                        k: rep(k),
                        v: rep(v),
                    }
                }
                HostPools::Fp8 { k, v, ks, vs } => {
                    let rep = |x: &Vec<u8>| (0..rows * D).map(|i| x[i % (7 * D)]).collect();
                    let reps = |x: &Vec<f32>| (0..rows).map(|i| x[i % 7]).collect();
                    HostPools::Fp8 {
                        k: rep(k),
                        v: rep(v),
                        ks: reps(ks),
                        vs: reps(vs),
                    }
                }
            };
            let q: Vec<bf16> = (0..3 * PER_SEQ)
                .map(|i| bf16::from_f32(((i * 37) % 101) as f32 / 50.0 - 1.0))
                .collect();
            let t = (page > 0).then_some((max_pages, table.as_slice()));
            let got = replicated_reference(&p, &q, &pattern, t, &[0, 2]);
            let want = replicated_reference(&p, &q, &full, t, &[0, 2]);
            assert_eq!(got, want, "{dtype:?} page {page}");
            assert!(got[0] != got[1]);
        }
    }

    #[test]
    fn scattered_tables_cover_every_page_once() {
        let p = MfaDecodeProblem::step3(2, 700, KvDtype::Fp8e4m3, 16);
        let (max_pages, mut t) = scattered_table(&p);
        assert_eq!((max_pages, t.len()), (44, 88));
        t.sort_unstable();
        assert!(t.iter().enumerate().all(|(i, &x)| x == i as i32));
    }

    #[test]
    fn relative_error_fails_nan_and_nonzero_empty_outputs() {
        let want = [1.0, -2.0, 0.5];
        let got: Vec<bf16> = want.iter().map(|&x| bf16::from_f64(x)).collect();
        assert_eq!(seq_rel_err(&got, &want), (0.0, false));
        let mut nan = got.clone();
        nan[1] = bf16::NAN;
        let (e, bad) = seq_rel_err(&nan, &want);
        assert!(bad && e.is_nan());
        assert!(seq_rel_err(&got, &[0.0; 3]).1);
        let off: Vec<bf16> = want.iter().map(|&x| bf16::from_f64(x * 1.1)).collect();
        let (e, bad) = seq_rel_err(&off, &want);
        assert!(!bad && (e - 0.1).abs() < 1e-2, "{e}");
    }

    #[test]
    fn fp8_pools_decode_within_their_scale() {
        let HostPools::Fp8 { k, ks, .. } = fill_pools(KvDtype::Fp8e4m3, 4, 9) else {
            panic!("fp8 pools")
        };
        assert_eq!((k.len(), ks.len()), (4 * D, 4));
        for (row, s) in k.chunks(D).zip(&ks) {
            let amax = row
                .iter()
                .map(|&c| (fam::e4m3_decode(c) * s).abs())
                .fold(0f32, f32::max);
            assert!(amax > 0.0 && (amax / (448.0 * s) - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn lines_name_the_problem_and_config() {
        let p = MfaDecodeProblem::step3(128, 4096, KvDtype::Fp8e4m3, 16);
        assert_eq!(describe(&p), "B=128 L=4096 fp8 paged16");
        let q = MfaDecodeProblem::step3(1, 1024, KvDtype::Bf16, 0);
        assert_eq!(describe(&q), "B=1 L=1024 bf16 contig");
        let c = MfaDecode::default_config(&p);
        let entry = Entry {
            problem: serde_json::to_value(p).unwrap(),
            config: serde_json::to_value(&c).unwrap(),
            median_us: 100.0,
            p20_us: 99.0,
            p80_us: 101.0,
            pct_of_roofline: 50.0,
            baseline: None,
            speedup: None,
            extra_baselines: Vec::new(),
            max_rel_err: 2e-3,
            outputs: Vec::new(),
            candidates_tried: 4,
            tuned_at: "2026-01-01T00:00:00Z".into(),
            candidates: Vec::new(),
        };
        let l = line(&p, &entry);
        assert!(l.starts_with("B=128 L=4096 fp8 paged16"), "{l}");
        assert!(
            l.contains("100.00 us") && l.contains("50.0% roofline"),
            "{l}"
        );
        // 128 x 4096 x 520 B in 100 us.
        assert!(l.contains("2.73 TB/s"), "{l}");
        assert!(l.contains(&format!("split {}", c.split_tokens)), "{l}");
    }
}
