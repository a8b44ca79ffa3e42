//! `gemm_fp8`: Y[M,N] = (X[M,K] · W[N,K]^T) in DeepSeek-V3 block FP8: X and W are e4m3 codes,
//! X has one fp32 scale per token and 128-channel group (SX [M, K/128]), W one per 128 x 128
//! block (SW [ceil(N/128), K/128]), both row-major; products of each 128-wide K block are
//! summed in fp32 and multiplied by SX[m, kb] · SW[n/128, kb] ("fp32 promotion"); Y is BF16
//! (round to nearest even), row-major [M, N].
//!
//! One kernel so far, **stream** (`templates/gemm_fp8.cu.tera`, the FP8 twin of `gemm_bf16`'s
//! weight-streaming kernel): decode, M <= 32. Swap-AB `mma.sync` with weight rows as the m16
//! dimension and tokens as n8 tiles; the weight streams from global memory straight into
//! registers through a K permutation (one 16-byte load per lane and row feeds four whole
//! mma's). sm_90 has no native e4m3 `mma.sync` (ptxas lowers m16n8k32.e4m3 to f16 unpacks of
//! every operand of every mma), so each loaded register is widened to f16 once
//! (`cvt.rn.f16x2.e4m3x2`, exact) and fed to m16n8k16 f16 mma's. Two register buffers keep a
//! warp's next chunk in flight, warps split K and reduce
//! through shared memory, CTAs split K (grid.z) and reduce deterministically (last CTA sums).
//! The template's header comment derives the fragment mapping. Configs are tagged with their
//! kernel (`{"kernel": "stream", ...}`) so a prefill kernel can join the family later.
//!
//! The activation quantiser (BF16 [M,K] -> e4m3 [M,K] + fp32 [M, K/128]) is a fixed kernel,
//! [`QUANT_SOURCE`], compiled through the same path; [`fp8`] holds the CPU codec it matches bit
//! for bit, the weight quantiser and the f64 reference.
//!
//! # Launch contract
//!
//! Arguments, in order (see [`GemmFp8::args`]): `X, SX, W, SW, Y, workspace, counters, M, N, K,
//! tmap_x, tmap_w`.
//!
//! * `tmap_x`, `tmap_w`: `CUtensorMap`s passed by value (128 bytes, 64-byte aligned), read by
//!   the wgmma kernel's TMA variants and ignored by the others. [`tensor_map_box`] gives the
//!   box each variant needs: X as a 2-D u8 tensor {K, M} (row stride K bytes), W as {K, N},
//!   box {128, rows}, SWIZZLE_128B, no interleave, zero fill (`cuTensorMapEncodeTiled`).
//!
//! * Grid: `[ceil(N / (16 * rows)), 1, split_k]`, block `32 * warps`, dynamic shared memory
//!   `warps * rows * tokens8 * 4 * 32 * 4` bytes.
//! * `workspace` (fp32): `split_k` partial tiles of `16 * rows * 8 * tokens8` floats per row
//!   tile ([`GemmFp8::workspace_bytes`]); no initialisation; unused (any pointer, even null)
//!   without split-K.
//! * `counters` (u32): [`counters_len`] entries, zeroed once by the caller; every launch leaves
//!   them zero again. Two concurrent launches must not share workspace or counters.
//! * Alignment: X and W rows are read 16 bytes at a time, so X and W must be 16-byte aligned
//!   (K % 128 == 0 keeps every row aligned); SX, SW 4-byte aligned.
//! * The generated source does not depend on the problem: one cubin per config serves all.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

pub mod fp8;
pub mod wgmma;

pub use wgmma::WgmmaConfig;

/// The family.
pub struct GemmFp8;

/// One GEMM: Y[m,n] = sum_k X[m,k] W[n,k], block-scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GemmFp8Problem {
    pub m: u32,
    pub n: u32,
    pub k: u32,
}

/// A point of the search space, tagged with its kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum GemmFp8Config {
    Stream(StreamConfig),
    Wgmma(WgmmaConfig),
}

impl GemmFp8Config {
    pub fn threads(&self) -> u32 {
        match self {
            GemmFp8Config::Stream(c) => c.threads(),
            GemmFp8Config::Wgmma(c) => c.threads(),
        }
    }
    /// K slices reduced in-kernel (grid.z).
    pub fn split_k(&self) -> u32 {
        match self {
            GemmFp8Config::Stream(c) => c.split_k,
            GemmFp8Config::Wgmma(c) => c.split_k,
        }
    }
}

/// The stream kernel's parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Warps per CTA; they split the CTA's K range in chunks.
    pub warps: u32,
    /// m16 tiles of weight rows per CTA (16 * rows columns of Y).
    pub rows: u32,
    /// 64-wide K blocks per warp chunk (one 16-byte load per lane and row each); even, so a
    /// chunk is whole 128-wide scale blocks.
    pub unroll: u32,
    /// n8 tiles of tokens: serves M <= 8 * tokens8.
    pub tokens8: u32,
    /// K slices reduced in-kernel (grid.z).
    pub split_k: u32,
}

/// Most tokens the stream kernel serves (the wgmma kernel serves any M).
pub const MAX_M: u32 = 32;
/// K elements (= bytes of a row) per block: 4 lanes x 16 bytes.
pub const K_BLOCK: u32 = 64;
/// Channels per scale block (and weight rows per weight-scale row).
pub const SCALE_BLOCK: u32 = 128;
/// Largest split-K workspace a config may ask for.
pub const MAX_WORKSPACE_BYTES: usize = 256 << 20;
/// Largest value any dimension may take (keeps `int` index math in the kernel exact).
const MAX_DIM: u32 = 1 << 30;
/// Largest operand, in elements (bytes of e4m3).
const MAX_OPERAND: u64 = 1 << 36;

/// The activation quantiser (plain CUDA, no template variables).
pub const QUANT_SOURCE: &str = include_str!("../../../templates/quant_fp8.cu");
/// Its entry point: `(const bf16* X, uint8_t* XQ, float* SX, int M, int K)`.
pub const QUANT_ENTRY: &str = "kiln_quant_fp8";
const QUANT_THREADS: u32 = 256;

/// Launch geometry of [`QUANT_ENTRY`]: one warp per 128-channel group (grid-stride past
/// 2^31 - 1 blocks).
pub fn quant_geometry(m: u32, k: u32) -> LaunchGeometry {
    let groups = m as u64 * (k / SCALE_BLOCK) as u64;
    let blocks = groups
        .div_ceil((QUANT_THREADS / 32) as u64)
        .clamp(1, i32::MAX as u64) as u32;
    LaunchGeometry {
        grid: [blocks, 1, 1],
        block: [QUANT_THREADS, 1, 1],
        dynamic_smem_bytes: 0,
        cluster: [1, 1, 1],
    }
}

impl StreamConfig {
    pub fn threads(&self) -> u32 {
        32 * self.warps
    }
    /// Columns of Y (weight rows) per CTA.
    pub fn tile_n(&self) -> u32 {
        16 * self.rows
    }
    /// Rows of Y (tokens) per CTA.
    pub fn tile_m(&self) -> u32 {
        8 * self.tokens8
    }
    pub fn outputs(&self) -> u32 {
        self.tile_n() * self.tile_m()
    }
    /// fp32 accumulators per lane.
    pub fn frag(&self) -> u32 {
        self.rows * self.tokens8 * 4
    }
    /// 32-bit registers one chunk holds: per 64-wide block 2 * rows weight and tokens8 token
    /// uint4s; per scale block one weight scale and 2 * tokens8 token scales.
    pub fn chunk_registers(&self) -> u32 {
        self.unroll * (8 * self.rows + 4 * self.tokens8) + self.unroll / 2 * (1 + 2 * self.tokens8)
    }
    /// Both register buffers of the pipeline.
    pub fn buffer_registers(&self) -> u32 {
        2 * self.chunk_registers()
    }
    /// Registers per thread as ptxas allocates them (NVRTC 13.0, sm_90a: 148 to 255 over the
    /// legal space, about twice the buffers plus 40; the scheduler keeps more than the two
    /// chunk buffers live, e.g. by sinking a chunk's mma's below the next chunk's loads).
    pub fn register_estimate(&self) -> u32 {
        (2 * self.buffer_registers() + 40).min(255)
    }
    /// Dynamic shared memory: every warp's accumulators, for the cross-warp sum.
    pub fn smem_bytes(&self) -> u32 {
        self.warps * self.frag() * 32 * 4
    }
    /// Outputs whose split_k partials the last CTA loads together (<= 32 registers).
    pub fn reduce_batch(&self) -> u32 {
        (32 / self.split_k)
            .max(1)
            .min(self.outputs().div_ceil(self.threads()))
    }
}

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

/// The fewest token tiles of the space (1 or 4 n8 tiles) that hold `m` tokens.
pub fn tokens8_for(m: u32) -> u32 {
    if m <= 8 {
        1
    } else {
        4
    }
}

/// Whether the tuner should measure `c` for `p`: a wider token tile than M needs also serves
/// it, but only adds mma's on zeros.
pub fn worth_measuring(p: &GemmFp8Problem, c: &StreamConfig) -> bool {
    c.tokens8 == tokens8_for(p.m)
}

/// 128-wide scale blocks of K (the unit split-K divides).
pub fn scale_blocks(p: &GemmFp8Problem) -> u64 {
    (p.k / SCALE_BLOCK) as u64
}

/// 64-wide K blocks of the largest split.
pub fn blocks_per_split(p: &GemmFp8Problem, c: &StreamConfig) -> u64 {
    2 * scale_blocks(p).div_ceil(c.split_k as u64)
}

/// CTAs along N (grid.x).
pub fn tiles(p: &GemmFp8Problem, c: &StreamConfig) -> u64 {
    (p.n as u64).div_ceil(c.tile_n() as u64)
}

fn workspace_floats(p: &GemmFp8Problem, c: &StreamConfig) -> u64 {
    if c.split_k > 1 {
        c.split_k as u64 * tiles(p, c) * c.outputs() as u64
    } else {
        0
    }
}

/// Entries of the u32 `counters` array a launch needs (0 without split-K): one per row tile.
pub fn counters_len(p: &GemmFp8Problem, c: &GemmFp8Config) -> usize {
    match c {
        GemmFp8Config::Stream(s) if s.split_k > 1 => tiles(p, s) as usize,
        GemmFp8Config::Stream(_) => 0,
        GemmFp8Config::Wgmma(w) => wgmma::counters_len(p, w),
    }
}

/// The TMA boxes a config reads its operands through, `[X rows, W rows]` of 128 bytes each
/// (see the launch contract; a multicast config's CTAs load `bn / cluster_m` W rows each); `None` for the variants that ignore the tensor maps (any bytes,
/// e.g. zeros, serve them).
pub fn tensor_map_box(c: &GemmFp8Config) -> Option<[u32; 2]> {
    match c {
        GemmFp8Config::Wgmma(w) if w.tma => Some([w.bm, w.bn / w.cluster_m.max(1)]),
        _ => None,
    }
}

/// Weight bytes of a problem (what a decode step streams).
pub fn weight_bytes(p: &GemmFp8Problem) -> f64 {
    p.n as f64 * p.k as f64
}

fn stream_space() -> Vec<StreamConfig> {
    let mut out = Vec::new();
    for warps in [4, 8] {
        for rows in [1, 2] {
            for unroll in [2, 4] {
                for tokens8 in [1, 4] {
                    for split_k in [1, 2, 4, 8, 16] {
                        out.push(StreamConfig {
                            warps,
                            rows,
                            unroll,
                            tokens8,
                            split_k,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Register budget of the two chunk buffers plus the accumulators (see the rule below).
pub const REGISTER_BUDGET: u32 = 180;

fn stream_check_config(c: &StreamConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
    // 4 or 8 warps: enough loads in flight per CTA, at most 256 threads.
    illegal(![4, 8].contains(&c.warps), || {
        format!("{} warps is not 4 or 8", c.warps)
    })?;
    // The block fits the device.
    illegal(c.threads() > limits.max_threads_per_block, || {
        format!(
            "{} threads exceed {}",
            c.threads(),
            limits.max_threads_per_block
        )
    })?;
    // 16 or 32 weight rows per CTA: both divide 128, so a CTA has one weight-scale row.
    illegal(![1, 2].contains(&c.rows), || {
        format!("rows {} is not 1 or 2", c.rows)
    })?;
    // 2 or 4 K blocks per chunk: whole scale blocks, 2-4 KiB of weight per warp and row tile.
    illegal(![2, 4].contains(&c.unroll), || {
        format!("unroll {} is not 2 or 4", c.unroll)
    })?;
    // Token tiles: 8 or 32 tokens.
    illegal(![1, 4].contains(&c.tokens8), || {
        format!("tokens8 {} is not 1 or 4", c.tokens8)
    })?;
    // The split counts the reduction is written for.
    illegal(![1, 2, 4, 8, 16].contains(&c.split_k), || {
        format!("split_k {} is not a power of two up to 16", c.split_k)
    })?;
    // Registers: both chunk buffers are live across a chunk's mma's; with the accumulators at
    // most REGISTER_BUDGET (180) of them keeps a variant under 255 registers (NVRTC 13.0:
    // 143-252 over the legal space).
    illegal(c.buffer_registers() + c.frag() > REGISTER_BUDGET, || {
        format!(
            "{} buffer registers and {} accumulators exceed {REGISTER_BUDGET}",
            c.buffer_registers(),
            c.frag()
        )
    })?;
    // 32 rows x 32 tokens (178 by the count above) spills 4-32 bytes under NVRTC 13.0.
    illegal(c.rows == 2 && c.tokens8 == 4, || {
        "rows 2 with tokens8 4 spills registers".to_string()
    })?;
    // The cross-warp sum fits the opt-in shared memory.
    illegal(c.smem_bytes() > limits.max_dynamic_smem_per_block, || {
        format!(
            "{} B of shared memory exceed {}",
            c.smem_bytes(),
            limits.max_dynamic_smem_per_block
        )
    })?;
    // The last CTA of a tile reads at most 64 KiB of partials.
    let partials = c.split_k as u64 * c.outputs() as u64 * 4;
    illegal(c.split_k > 1 && partials > 64 << 10, || {
        format!(
            "split_k {} of {} outputs: {partials} B of partials per tile",
            c.split_k,
            c.outputs()
        )
    })?;
    Ok(())
}

fn stream_check_problem(p: &GemmFp8Problem, c: &StreamConfig) -> Result<(), Illegal> {
    // Every token has an n8 column.
    illegal(p.m > c.tile_m(), || {
        format!("m {} exceeds 8 * tokens8 = {}", p.m, c.tile_m())
    })?;
    // Every split gets at least one 128-wide scale block.
    illegal(scale_blocks(p) < c.split_k as u64, || {
        format!(
            "k {} has {} scale blocks for split_k {}",
            p.k,
            scale_blocks(p),
            c.split_k
        )
    })?;
    // grid.x holds every row tile.
    illegal(tiles(p, c) > i32::MAX as u64, || {
        format!("{} row tiles exceed grid.x", tiles(p, c))
    })?;
    // The fp32 partials stay a modest scratch buffer.
    let ws = workspace_floats(p, c) * 4;
    illegal(ws > MAX_WORKSPACE_BYTES as u64, || {
        format!("split-K workspace of {ws} B exceeds {MAX_WORKSPACE_BYTES}")
    })?;
    Ok(())
}

fn stream_entry(c: &StreamConfig) -> String {
    format!(
        "kiln_gemm_fp8_stream_w{}_r{}_u{}_t{}_sk{}",
        c.warps, c.rows, c.unroll, c.tokens8, c.split_k
    )
}

fn stream_render_vars(c: &StreamConfig) -> RenderVars {
    let vars = json!({
        "wgmma": false,
        "entry": stream_entry(c),
        "use_split_k": c.split_k > 1,
        "warps": c.warps,
        "threads": c.threads(),
        "rows": c.rows,
        "unroll": c.unroll,
        "tokens8": c.tokens8,
        "split_k": c.split_k,
        "tile_n": c.tile_n(),
        "tile_m": c.tile_m(),
        "outputs": c.outputs(),
        "frag": c.frag(),
        "outputs_per_thread": c.outputs().div_ceil(c.threads()),
        "reduce_batch": c.reduce_batch(),
    });
    match vars {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal"),
    }
}

fn stream_geometry(p: &GemmFp8Problem, c: &StreamConfig) -> LaunchGeometry {
    LaunchGeometry {
        grid: [tiles(p, c).min(i32::MAX as u64) as u32, 1, c.split_k],
        block: [c.threads(), 1, 1],
        dynamic_smem_bytes: c.smem_bytes(),
        cluster: [1, 1, 1],
    }
}

fn stream_default(p: &GemmFp8Problem) -> StreamConfig {
    const SMS: u64 = 132;
    // Fewest token tiles that hold M; 16 rows and two 64-wide blocks per chunk at 32 tokens
    // (the only row tile whose two buffers fit the registers there), 4 blocks at 8 tokens.
    let tokens8 = tokens8_for(p.m);
    let mut c = if tokens8 == 4 {
        StreamConfig {
            warps: 4,
            rows: 1,
            unroll: 2,
            tokens8,
            split_k: 1,
        }
    } else {
        StreamConfig {
            warps: 4,
            rows: 1,
            unroll: 4,
            tokens8,
            split_k: 1,
        }
    };
    // Split K until there are >= 4 CTAs per SM, while every split keeps a scale block.
    for split in [2, 4, 8, 16] {
        if tiles(p, &c) * c.split_k as u64 >= 4 * SMS {
            break;
        }
        let s = StreamConfig {
            split_k: split,
            ..c.clone()
        };
        if stream_check_config(&s, &DeviceLimits::HOPPER).is_err()
            || stream_check_problem(p, &s).is_err()
        {
            break;
        }
        c = s;
    }
    c
}

/// Analytical time in microseconds, the bf16 stream model with half the bytes per element:
/// weight bytes at up to 4 TB/s, limited by the bytes each SM has in flight (~1 us loaded DRAM
/// latency, two chunks per warp) and by the busiest SM, plus launch and reduction.
fn stream_estimate_us(p: &GemmFp8Problem, c: &StreamConfig, limits: &DeviceLimits) -> f64 {
    const DRAM_BPS: f64 = 4.0e12;
    const SM_BPS: f64 = 36e9;
    const LATENCY_S: f64 = 1.0e-6;
    const CLOCK_HZ: f64 = 1.75e9;
    let sms = limits.sms.max(1) as f64;
    let ctas = tiles(p, c) as f64 * c.split_k as f64;
    let kb_split = blocks_per_split(p, c) as f64;
    let threads = c.threads() as f64;
    let regs = (c.register_estimate() as f64).min(255.0);
    let per_sm = (2048.0 / threads)
        .floor()
        .min((65536.0 / (threads * regs)).floor())
        .min(((228.0 * 1024.0) / (c.smem_bytes() as f64 + 1024.0)).floor())
        .max(1.0);
    let ctas_per_sm = (ctas / sms).ceil();
    let waves = (ctas_per_sm / per_sm).ceil();
    let chunks = (kb_split / (c.warps * c.unroll) as f64).ceil();
    let rounds = (chunks / 2.0).ceil();
    let busy_warps = (kb_split / c.unroll as f64).ceil().min(c.warps as f64);
    let rows = (p.n as f64).min(c.tile_n() as f64);
    let cta_bytes = rows * (kb_split * K_BLOCK as f64).min(p.k as f64);
    let inflight = per_sm.min(ctas_per_sm) * busy_warps * (c.unroll * c.rows) as f64 * 1024.0 * 1.5;
    let sm_bps = (inflight / LATENCY_S).min(SM_BPS);
    let memory_s = (weight_bytes(p) / DRAM_BPS).max(ctas_per_sm * cta_bytes / sm_bps);
    let latency_s = waves * rounds * LATENCY_S;
    // Per 64-wide block and CTA: 2 * rows weight and tokens8 token loads (~8 L1 cycles each),
    // 2 * rows * tokens8 mma's (~2 cycles each per SM), the fold on the side.
    let token_loads = tokens8_for(p.m).min(c.tokens8);
    let sm_cycles = (2 * c.rows + token_loads) as f64 * 8.0 + (4 * c.rows * c.tokens8) as f64;
    let sm_s = ctas_per_sm * kb_split * sm_cycles / CLOCK_HZ;
    let stream_s = memory_s.max(latency_s).max(sm_s);
    let reduce_s = if c.split_k > 1 {
        let batches = (c.outputs() as f64 / (threads * c.reduce_batch() as f64)).ceil();
        1.0e-6 + batches * 0.3e-6
    } else {
        0.0
    };
    (2.0e-6 + stream_s + reduce_s) * 1e6
}

impl Family for GemmFp8 {
    type Problem = GemmFp8Problem;
    type Config = GemmFp8Config;

    const NAME: &'static str = "gemm_fp8";
    /// The kernels' templates in one text; the `wgmma` variable picks one.
    const TEMPLATE: &'static str = concat!(
        "{% if wgmma %}",
        include_str!("../../../templates/wgmma_epilogue.cuh"),
        include_str!("../../../templates/gemm_fp8_wgmma.cu.tera"),
        "{% else %}",
        include_str!("../../../templates/gemm_fp8.cu.tera"),
        "{% endif %}"
    );

    /// The stream and wgmma spaces, in that order.
    fn space() -> Vec<GemmFp8Config> {
        let stream = stream_space().into_iter().map(GemmFp8Config::Stream);
        let wgmma = wgmma::space().into_iter().map(GemmFp8Config::Wgmma);
        stream.chain(wgmma).collect()
    }

    fn check_config(c: &GemmFp8Config, limits: &DeviceLimits) -> Result<(), Illegal> {
        match c {
            GemmFp8Config::Stream(s) => stream_check_config(s, limits),
            GemmFp8Config::Wgmma(w) => wgmma::check_config(w, limits),
        }
    }

    fn check_problem(p: &GemmFp8Problem, c: &GemmFp8Config) -> Result<(), Illegal> {
        match c {
            GemmFp8Config::Stream(s) => stream_check_problem(p, s),
            GemmFp8Config::Wgmma(w) => wgmma::check_problem(p, w),
        }
    }

    fn supports(p: &GemmFp8Problem) -> Result<(), Unsupported> {
        let no = |reason: String| Unsupported {
            family: Self::NAME,
            problem: format!("{p:?}"),
            reason,
        };
        if p.m == 0 || p.n == 0 || p.k == 0 {
            return Err(no("m, n and k must be at least 1".into()));
        }
        if !p.k.is_multiple_of(SCALE_BLOCK) {
            return Err(no(format!(
                "k = {} is not a multiple of 128: block FP8 scales cover whole 128-channel groups",
                p.k
            )));
        }
        if p.m > MAX_DIM || p.n > MAX_DIM || p.k > MAX_DIM {
            return Err(no(
                "m, n and k must be at most 2^30 (the kernels index with int)".into(),
            ));
        }
        if p.n as u64 * p.k as u64 > MAX_OPERAND || p.m as u64 * p.k as u64 > MAX_OPERAND {
            return Err(no("an operand exceeds 2^36 elements".into()));
        }
        if p.m as u64 * p.n as u64 > MAX_OPERAND {
            return Err(no("the output exceeds 2^36 elements".into()));
        }
        Ok(())
    }

    fn render_vars(_p: &GemmFp8Problem, c: &GemmFp8Config) -> RenderVars {
        match c {
            GemmFp8Config::Stream(s) => stream_render_vars(s),
            GemmFp8Config::Wgmma(w) => wgmma::render_vars(w),
        }
    }

    fn entry(_p: &GemmFp8Problem, c: &GemmFp8Config) -> String {
        match c {
            GemmFp8Config::Stream(s) => stream_entry(s),
            GemmFp8Config::Wgmma(w) => wgmma::entry(w),
        }
    }

    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("X", "const uint8_t*"),
            arg("SX", "const float*"),
            arg("W", "const uint8_t*"),
            arg("SW", "const float*"),
            arg("Y", "__nv_bfloat16*"),
            arg("workspace", "float*"),
            arg("counters", "unsigned int*"),
            arg("M", "int"),
            arg("N", "int"),
            arg("K", "int"),
            arg("tmap_x", "const CUtensorMap"),
            arg("tmap_w", "const CUtensorMap"),
        ]
    }

    fn geometry(p: &GemmFp8Problem, c: &GemmFp8Config) -> LaunchGeometry {
        match c {
            GemmFp8Config::Stream(s) => stream_geometry(p, s),
            GemmFp8Config::Wgmma(w) => wgmma::geometry(p, w),
        }
    }

    /// The fp32 partials only; the u32 counters are a separate array of [`counters_len`].
    fn workspace_bytes(p: &GemmFp8Problem, c: &GemmFp8Config) -> usize {
        match c {
            GemmFp8Config::Stream(s) => (workspace_floats(p, s) * 4) as usize,
            GemmFp8Config::Wgmma(w) => (wgmma::workspace_floats(p, w) * 4) as usize,
        }
    }

    fn scratch(p: &GemmFp8Problem, c: &GemmFp8Config) -> Vec<Scratch> {
        vec![
            Scratch {
                arg: "workspace",
                bytes: Self::workspace_bytes(p, c),
                zero_init: false,
            },
            Scratch {
                arg: "counters",
                bytes: counters_len(p, c) * 4,
                zero_init: true,
            },
        ]
    }

    fn flops(p: &GemmFp8Problem) -> f64 {
        2.0 * p.m as f64 * p.n as f64 * p.k as f64
    }

    /// e4m3 weight and activations, their fp32 scales, bf16 output.
    fn min_bytes(p: &GemmFp8Problem) -> f64 {
        let (m, n, k) = (p.m as f64, p.n as f64, p.k as f64);
        let kb = (p.k / SCALE_BLOCK) as f64;
        let rb = p.n.div_ceil(SCALE_BLOCK) as f64;
        n * k + m * k + 4.0 * (m * kb + rb * kb) + 2.0 * m * n
    }

    /// The stream kernel up to 32 tokens, the wgmma kernel past them.
    fn default_config(p: &GemmFp8Problem) -> GemmFp8Config {
        if p.m <= MAX_M {
            GemmFp8Config::Stream(stream_default(p))
        } else {
            GemmFp8Config::Wgmma(wgmma::default_config(p))
        }
    }

    fn estimate_us(p: &GemmFp8Problem, c: &GemmFp8Config, limits: &DeviceLimits) -> f64 {
        match c {
            GemmFp8Config::Stream(s) => stream_estimate_us(p, s, limits),
            GemmFp8Config::Wgmma(w) => wgmma::estimate_us(p, w, limits),
        }
    }

    /// Legal configs that serve `problem`, less stream configs with a wider token tile than M
    /// needs and wgmma configs with 128-row tiles for at most 64 tokens (half their rows zero).
    fn candidates(problem: &GemmFp8Problem, limits: &DeviceLimits) -> Vec<GemmFp8Config> {
        Self::legal_space(limits)
            .into_iter()
            .filter(|c| Self::check_problem(problem, c).is_ok())
            .filter(|c| match c {
                GemmFp8Config::Stream(s) => worth_measuring(problem, s),
                GemmFp8Config::Wgmma(w) => w.bm == 64 || problem.m > 64,
            })
            .collect()
    }

    /// A config tuned for the same N and K serves any M it holds; the nearest M at or above
    /// the wanted one is preferred, then the nearest below.
    fn bucket_distance(tuned: &GemmFp8Problem, wanted: &GemmFp8Problem) -> Option<f64> {
        if tuned.n != wanted.n || tuned.k != wanted.k {
            return None;
        }
        let (t, w) = (tuned.m as f64, wanted.m as f64);
        Some(if t >= w {
            t / w - 1.0
        } else {
            1e6 * (w / t - 1.0)
        })
    }

    /// The source depends on the config only; one problem every legal config serves.
    fn branch_problems() -> Vec<GemmFp8Problem> {
        vec![GemmFp8Problem {
            m: 8,
            n: 136,
            k: 4096,
        }]
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // lane loops read as the hardware numbers lanes
mod tests;
