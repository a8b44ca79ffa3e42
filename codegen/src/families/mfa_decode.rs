//! `mfa_decode`: Step-3 MFA attention for one decode token per sequence. The 64 query heads of
//! a sequence share one K head and one V head (head_dim 256, softmax scale 1/16):
//! `O[b] = softmax(Q[b] K[b]^T / 16) V[b]`, Q and O `[batch, 64, 256]` BF16, K and V read from a
//! contiguous or paged cache in BF16 or FP8 e4m3 (one fp32 scale per token and cache).
//!
//! The template (`templates/mfa_decode.cu.tera`) is split-KV flash-decoding with the 64 heads
//! as the M dimension of `mma.sync` m16n8k16 tiles, a `cp.async` pipeline of K/V tiles in
//! swizzled shared memory, and an in-kernel, deterministic combine of the splits. Its header
//! comment explains tiling, the FP8 fragment layouts, the pipeline and the combine protocol.
//!
//! # Launch contract
//!
//! Arguments, in order (see [`MfaDecode::args`]): `q, k_cache, v_cache, k_scale, v_scale,
//! seq_lens, block_table, out, workspace, counters, context, max_len, max_pages, page_size`.
//!
//! * `q`, `out`: `[batch, 64, 256]` bf16, row-major, 16-byte aligned.
//! * Contiguous cache (`page_size == 0`): `k_cache`, `v_cache` are `[batch, max_len, 256]`
//!   (bf16, or e4m3 bytes), `k_scale`, `v_scale` `[batch, max_len]` fp32 (FP8 only);
//!   `max_len >= context` and `batch * max_len < 2^31`. `block_table` and `max_pages` are unused.
//! * Paged cache (`page_size > 0`): pools `[num_pages, page_size, 256]`, scales
//!   `[num_pages, page_size]`, `block_table[batch, max_pages]` int32 with
//!   `max_pages >= ceil(context / page_size)` and `num_pages * page_size < 2^31`; every entry a
//!   sequence's length reaches must be a valid page id (the kernel trusts them). `max_len` is unused.
//! * `seq_lens[batch]` int32 on the device: the tokens of each sequence, clamped to
//!   `[0, context]`; a sequence of length 0 gets O = 0.
//! * Grid `[splits, batch, 1]` with `splits = ceil(context / split_tokens)`; the kernel derives
//!   its chunk from `context` and `gridDim.x`, so a CUDA graph captured for one `context`
//!   serves any `seq_lens` up to it.
//! * `workspace` (typed fp32, used as bytes): `batch * splits * 33280` bytes of split partials
//!   (bf16 O / l, then fp32 (m, l) per row), no initialisation; `counters` (u32): `3 * batch`
//!   entries, zeroed **once** at allocation, left zeroed by every launch. Both are only touched
//!   when `splits > 1` (pass any pointer otherwise). Two launches that run concurrently must
//!   not share them.
//!
//! The generated source depends on the problem only through the KV dtype and whether the
//! cache is paged, and on the config through everything but `split_tokens`, which
//! only shapes the grid, so all split choices share one cubin.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

/// The family.
pub struct MfaDecode;

/// KV cache element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    Bf16,
    /// FP8 e4m3 (OCP, finite max 448) with one fp32 scale per token, per K and V.
    Fp8e4m3,
}

/// One decode step of MFA attention over a batch of sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MfaDecodeProblem {
    pub batch: u32,
    /// Longest sequence the launch must handle (grid and splits derive from it; the real
    /// lengths come from `seq_lens` on the device).
    pub context: u32,
    /// Query heads sharing the K/V head (64 for Step-3).
    pub heads: u32,
    pub head_dim: u32,
    pub kv_dtype: KvDtype,
    /// Tokens per page of a paged cache; 0 = contiguous cache.
    #[serde(default)]
    pub page_size: u32,
}

/// A point of the search space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MfaDecodeConfig {
    /// KV positions per CTA tile (one pipeline stage).
    pub tile_kv: u32,
    /// cp.async pipeline stages of K/V tiles in shared memory.
    pub stages: u32,
    /// 4: one m16 row tile of the 64 heads per warp; 8: two groups of 4 warps take the two
    /// halves of every tile.
    pub warps: u32,
    /// Most KV positions one CTA handles; `splits = ceil(context / split_tokens)`.
    pub split_tokens: u32,
    /// Tensor cores through wgmma (sm_90a) instead of mma.sync: a warp group's QK^T and PV are
    /// wgmma's reading K and V from shared memory once per warp group (mma.sync reads them
    /// once per warp, 4x), P from registers. With an FP8 cache QK^T is e4m3 wgmma straight on
    /// the landed K tile (Q staged as an e4m3 hi + lo pair), and each V tile is widened to f16
    /// once per CTA into a shared-memory tile the PV wgmma's read.
    #[serde(default)]
    pub wgmma: bool,
    /// Warp specialisation (FP8 on wgmma only): a producer warp group (128 more threads) copies
    /// the tiles and widens V; the `warps` consumer warps only compute, a warp group taking
    /// whole tiles in turn.
    #[serde(default)]
    pub ws: bool,
    /// With `ws`: each consumer warp group widens its own tiles' V into its own f16 slot (one
    /// per group) after its QK^T, instead of the producer widening every tile into one of
    /// three slots. Frees the producer (a paged cache's copies keep it busy) and 32 KB of
    /// shared memory (4 stages fit), at the cost of the widening on the group's own chain.
    #[serde(default)]
    pub consumer_widen: bool,
}

/// Query heads the kernel is written for.
pub const HEADS: u32 = 64;
/// Head dimension the kernel is written for.
pub const HEAD_DIM: u32 = 256;
/// Split sizes of the search space (powers of two; a split must hold whole tiles). Any power
/// of two from 16 to [`MAX_CONTEXT`] is legal; the default config reaches past 65536 for very
/// long contexts of large batches, where no split (or a few) is the only workspace that fits.
/// 16 and 32 exist for one-sequence latency: more CTAs pull the few bytes of a short context.
pub const SPLIT_CHOICES: [u32; 13] = [
    16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];
/// Tile sizes (tokens per pipeline stage): 16 only with 4 warps (a warp group needs 16).
pub const TILE_CHOICES: [u32; 4] = [16, 32, 64, 128];
/// Most splits per sequence (the combine keeps one weight per split in shared memory).
pub const MAX_SPLITS: u32 = 1024;
/// Largest split workspace a config may ask for.
pub const MAX_WORKSPACE_BYTES: usize = 512 << 20;
/// Bytes of one (sequence, split) partial: O / l [64 x 256] in bf16, then (m, l) per row in
/// fp32. bf16 halves the combine's traffic; each partial is rounded once, so the combined
/// output is off by at most about one more bf16 rounding (well inside the 1e-2 tolerance).
pub const WS_SLOT_BYTES: u32 = HEADS * HEAD_DIM * 2 + HEADS * 8;
/// u32 counters per sequence: started (high 16 bits) | arrived (low 16), claimed shares, done.
pub const COUNTERS_PER_SEQUENCE: u32 = 3;
/// Combine shares per sequence, at most (then a share is one output row).
pub const MAX_SHARES: u32 = HEADS;
/// Largest context a launch may name.
pub const MAX_CONTEXT: u32 = 1 << 24;
/// Largest batch (grid.y).
pub const MAX_BATCH: u32 = 65535;

const Q_BYTES: u32 = HEADS * HEAD_DIM * 2;
/// FP8 on wgmma: one fp32 scale per query row (Q's e4m3 hi + lo pair is in its units).
const Q_SCALE_BYTES: u32 = HEADS * 4;
/// Pipeline stages a config may have (see `check_config`).
const MAX_STAGES: u32 = 4;
/// Warp specialisation: the mbarriers of one stage, 8 bytes each: full, kempty and vland.
const WS_BAR_BYTES_PER_STAGE: u32 = 8 * 3;
/// Warp specialisation with the producer widening: f16 V slots it widens into (each with a
/// vempty mbarrier). Three, so that tile kt's slot was last read by the other consumer group
/// (tile kt - 3), not by this group's previous tile: with two, widening a group's next tile
/// waited for its last PV (run 7 of 2026-11-30 session 10: 86.2 -> 82.0 us at B=128 L=4K).
/// With `consumer_widen` each group has one slot of its own and no vempty.
const WS_WIDE_SLOTS: u32 = 3;
/// Warp specialisation: registers a producer thread keeps (setmaxnreg.dec) and a consumer
/// thread gets (setmaxnreg.inc) with two consumer warp groups. They must fit the CTA's
/// allocation at launch, 384 x 168 = 64512 (168: the most 384 threads get, in steps of 8):
/// 128 x 56 + 256 x 224 = 64512, all of it. A larger ask blocks setmaxnreg.inc forever (run 3
/// of 2026-11-30 hung on 48 + 232: 1024 registers short). The producer spills below 56 (checked
/// at 48 in session 10); the consumers use 222 of their 224 (R0-R221).
const WS_PRODUCER_REGISTERS: u32 = 56;
const WS_CONSUMER_REGISTERS: u32 = 224;
// setmaxnreg takes multiples of 8.
#[allow(clippy::manual_is_multiple_of)]
const _: () = assert!(WS_PRODUCER_REGISTERS % 8 == 0 && WS_CONSUMER_REGISTERS % 8 == 0);
/// Group merge buffer (8 warps): 4 warps x 32 n8 tiles x 32 lanes x float4, then m/l per lane.
const MERGE_BYTES: u32 = 4 * 32 * 32 * 16 + 4 * 32 * 16;
/// The bf16 output tile staged for coalesced stores.
const O_TILE_BYTES: u32 = HEADS * HEAD_DIM * 2;
/// Combine: (m, l) entries of one share over all splits, at most (one row of MAX_SPLITS, or
/// < 128 when there are at most 64 splits).
const ML_CAP: u32 = MAX_SPLITS;
/// Combine layout: 16 bytes of control, the (m, l) entries, then the staged partials.
const COMBINE_DATA_OFFSET: u32 = 16 + ML_CAP * 8;
/// Combine: the staged partials must hold one split of the largest share (HEADS / 2 rows).
const COMBINE_MIN_BYTES: u32 = COMBINE_DATA_OFFSET + HEADS / 2 * HEAD_DIM * 2;

/// CPU reference and test helpers: e4m3 codes, caches, f64 attention.
pub mod reference;
pub use reference::{
    e4m3_decode, e4m3_encode, reference_cpu, reference_cpu_sequence, KvLayout, KvPool,
};

impl KvDtype {
    /// Bytes of one cache row (one token of K or of V).
    pub fn row_bytes(self) -> u32 {
        match self {
            KvDtype::Bf16 => 2 * HEAD_DIM,
            KvDtype::Fp8e4m3 => HEAD_DIM,
        }
    }
    /// Bytes of one token of K and V, scales included.
    pub fn bytes_per_token(self) -> u32 {
        match self {
            KvDtype::Bf16 => 2 * self.row_bytes(),
            KvDtype::Fp8e4m3 => 2 * self.row_bytes() + 8,
        }
    }
    pub fn is_fp8(self) -> bool {
        self == KvDtype::Fp8e4m3
    }
    fn tag(self) -> &'static str {
        match self {
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8e4m3 => "fp8",
        }
    }
}

impl MfaDecodeProblem {
    /// Step-3's attention shape: 64 heads of 256.
    pub fn step3(batch: u32, context: u32, kv_dtype: KvDtype, page_size: u32) -> Self {
        MfaDecodeProblem {
            batch,
            context,
            heads: HEADS,
            head_dim: HEAD_DIM,
            kv_dtype,
            page_size,
        }
    }
    pub fn paged(&self) -> bool {
        self.page_size > 0
    }
    /// K + V bytes (scales included) of `context` tokens for the whole batch.
    pub fn kv_bytes(&self) -> f64 {
        self.batch as f64 * self.context as f64 * self.kv_dtype.bytes_per_token() as f64
    }
}

impl MfaDecodeConfig {
    /// Threads of a CTA: the computing warps, plus a producer warp group with `ws`.
    pub fn threads(&self) -> u32 {
        32 * self.warps + if self.ws { 128 } else { 0 }
    }
    /// The computing (consumer) threads.
    pub fn compute_threads(&self) -> u32 {
        32 * self.warps
    }
    /// Warps that copy tiles: the producer warp group with `ws`, else every warp.
    pub fn loader_warps(&self) -> u32 {
        if self.ws {
            4
        } else {
            self.warps
        }
    }
    /// Warp groups; each takes its own slice of every tile (with `ws`, whole tiles in turn).
    pub fn groups(&self) -> u32 {
        self.warps / 4
    }
    /// Tokens of a tile one warp group computes.
    pub fn group_tokens(&self) -> u32 {
        if self.ws {
            self.tile_kv
        } else {
            self.tile_kv / self.groups().max(1)
        }
    }
    /// Bytes of one pipeline stage: a K and a V tile, plus their scales for FP8. The kernel
    /// keeps K tiles, V tiles and scales in three rings, so a tile (a multiple of 1024 bytes)
    /// stays aligned for wgmma without padding.
    pub fn stage_bytes(&self, dtype: KvDtype) -> u32 {
        let scales = if dtype.is_fp8() { self.tile_kv * 4 } else { 0 };
        2 * (self.tile_kv * dtype.row_bytes() + scales)
    }
    /// Bytes of the f16 V tiles an FP8 wgmma config widens into (one, or with `ws` one per
    /// slot; 0 otherwise).
    pub fn wide_bytes(&self, dtype: KvDtype) -> u32 {
        if self.wgmma && dtype.is_fp8() {
            self.wide_slots() * self.tile_kv * KvDtype::Bf16.row_bytes()
        } else {
            0
        }
    }
    /// f16 V tiles of an FP8 wgmma config: one without `ws`; with it one per consumer group
    /// when the groups widen, else the producer's three.
    fn wide_slots(&self) -> u32 {
        match (self.ws, self.consumer_widen) {
            (true, true) => self.groups(),
            (true, false) => WS_WIDE_SLOTS,
            (false, _) => 1,
        }
    }
    /// Dynamic shared memory: Q + the pipeline (+ for FP8 on wgmma Q's 64 row scales, with
    /// `ws` the mbarriers, then the widened V tiles, 1024-byte aligned), or the group-merge,
    /// output-staging or combine buffers (which reuse it) when those are larger.
    pub fn smem_bytes(&self, dtype: KvDtype) -> u32 {
        let stages = Q_BYTES + self.stages * self.stage_bytes(dtype);
        let pipeline = if self.wide_bytes(dtype) > 0 {
            // With `ws`: full, kempty and vland per stage, and vempty per slot when the
            // producer widens.
            let bars = match (self.ws, self.consumer_widen) {
                (true, true) => WS_BAR_BYTES_PER_STAGE * self.stages,
                (true, false) => WS_BAR_BYTES_PER_STAGE * self.stages + 8 * self.wide_slots(),
                (false, _) => 0,
            };
            (stages + Q_SCALE_BYTES + bars).next_multiple_of(1024) + self.wide_bytes(dtype)
        } else {
            stages
        };
        let merge = if self.groups() == 2 { MERGE_BYTES } else { 0 };
        pipeline.max(merge).max(O_TILE_BYTES).max(COMBINE_MIN_BYTES)
    }
}

/// The template's phase-trace switch (see its header): off in every rendered kernel.
pub const TRACE_OFF: &str = "#define KILN_TRACE 0";

/// `render` with the phase trace compiled in (diagnostics only: per-CTA `%globaltimer` and
/// `clock64` stamps in the module globals `kiln_mfa_trace_ns` / `kiln_mfa_trace_clk`).
#[cfg(feature = "jit")]
pub fn render_traced(
    p: &MfaDecodeProblem,
    c: &MfaDecodeConfig,
) -> crate::Result<crate::KernelSource> {
    let mut src = crate::render::render::<MfaDecode>(p, c)?;
    debug_assert!(src.source.contains(TRACE_OFF));
    src.source = src.source.replace(TRACE_OFF, "#define KILN_TRACE 1");
    Ok(src)
}

/// Splits of the launch (grid.x).
pub fn splits(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> u32 {
    p.context.div_ceil(c.split_tokens).max(1)
}

/// Tokens per split as the kernel computes them: ceil(context / splits), rounded up to a tile.
pub fn chunk_tokens(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> u32 {
    p.context.div_ceil(splits(p, c)).div_ceil(c.tile_kv) * c.tile_kv
}

fn workspace_bytes(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> u64 {
    let s = splits(p, c) as u64;
    if s > 1 {
        p.batch as u64 * s * WS_SLOT_BYTES as u64
    } else {
        0
    }
}

/// Entries of the u32 `counters` array a launch needs (0 without splitting).
pub fn counters_len(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> usize {
    if splits(p, c) > 1 {
        (p.batch * COUNTERS_PER_SEQUENCE) as usize
    } else {
        0
    }
}

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

/// Resident CTAs per SM (shared memory, threads, registers at ~232 per thread).
fn ctas_per_sm(c: &MfaDecodeConfig, dtype: KvDtype) -> u32 {
    let smem_fit = (228 * 1024) / (c.smem_bytes(dtype) + 1024);
    let thread_fit = 2048 / c.threads();
    let reg_fit = 65536 / (c.threads() * 232);
    smem_fit.min(thread_fit).min(reg_fit).max(1)
}

/// Where the latency model picked BF16 64-token tiles on 4 warps at one CTA per SM, run 17 on
/// the H200 measured 32-token tiles over 2 stages (96 KB, two CTAs per SM: two warps per
/// scheduler instead of one, which Nsight Compute showed issuing every 4 cycles) at half the
/// split faster whenever a CTA's chunk stays within 1K..32K tokens: B=8 L=64K 147 vs 162 us,
/// B=32 L=16K 149 vs 164, B=32 L=64K 520 vs 592, B=128 L=4K 153 vs 161, B=128 L=16K 527 vs
/// 587, paged B=128 L=4K 169 vs 186; slower with shorter chunks (B=128 L=1K: 56 vs 50, the
/// split's combine). At B=128 L=64K (32K-token chunks, 8.6 GB of cache) the unsplit kernel
/// varies from call to call: runs 17 / 18 / 19 measured 2474 / 2186 / 2299 us split against
/// 2314 / 2420 / 2641 unsplit, so the split wins two of three and the median.
fn two_ctas_per_sm(p: &MfaDecodeProblem, c: MfaDecodeConfig) -> MfaDecodeConfig {
    if p.kv_dtype != KvDtype::Bf16 || (c.tile_kv, c.stages, c.warps) != (64, 2, 4) {
        return c;
    }
    let alt = MfaDecodeConfig {
        tile_kv: 32,
        stages: 2,
        warps: 4,
        split_tokens: (c.split_tokens / 2).max(32),
        wgmma: false,
        ws: false,
        consumer_widen: false,
    };
    let ctas = p.batch as u64 * splits(p, &alt) as u64;
    let fits = ctas <= 2 * DeviceLimits::HOPPER.sms as u64
        && ctas_per_sm(&alt, p.kv_dtype) >= 2
        && (1024..=32768).contains(&chunk_tokens(p, &alt))
        && MfaDecode::check_config(&alt, &DeviceLimits::HOPPER).is_ok()
        && MfaDecode::check_problem(p, &alt).is_ok();
    if fits {
        alt
    } else {
        c
    }
}

/// The same kernel on wgmma where that is legal (32- and 64-token tiles): always for BF16, for
/// FP8 only when the launch is one wave of CTAs. (The FP8 default itself is the warp-
/// specialised wgmma kernel, first in [`default_kernels`]; this applies to the others.)
/// Run 27 on the H200 measured the wgmma build of
/// every BF16 default faster than its mma.sync build, 5-25%: B=1 L=4K 14.8 vs 17.8 us, B=8
/// L=64K 130 vs 147, B=32 L=4K 43.6 vs 54.0, B=128 L=4K 134 vs 151, B=128 L=64K 1875 vs 2141
/// (4.6 TB/s), paged B=128 L=4K 145 vs 170. FP8 must first widen each tile into f16 shared-
/// memory tiles for wgmma: that paid at B=1 L=4K (15.9 vs 17.9 us, latency-bound), but at
/// B=128 L=4K the 128-token mma.sync default stays ahead (run 36: 143 us against 151 for the
/// best wgmma config, with V widened while QK^T runs; paged, wgmma won 162 vs 169, which the
/// tuned artifact carries).
fn with_wgmma(p: &MfaDecodeProblem, c: MfaDecodeConfig) -> MfaDecodeConfig {
    let alt = MfaDecodeConfig {
        wgmma: true,
        ..c.clone()
    };
    let one_wave = p.batch as u64 * splits(p, &c) as u64 <= DeviceLimits::HOPPER.sms as u64;
    if (!p.kv_dtype.is_fp8() || one_wave)
        && MfaDecode::check_config(&alt, &DeviceLimits::HOPPER).is_ok()
        && MfaDecode::check_problem(p, &alt).is_ok()
    {
        alt
    } else {
        c
    }
}

/// The warp-specialised kernel on a paged FP8 cache, with the consumer groups widening their
/// own V and the fourth stage that frees (4 stages where legal): a paged cache keeps the
/// producer busy with page lookups. Measured on the H200 (2026-11-30, session 11, call 9):
/// paged B=128 L=4K 101 against 112 us; on a contiguous cache the other way, 95 against 82.
fn consumer_widen_when_paged(p: &MfaDecodeProblem, c: MfaDecodeConfig) -> MfaDecodeConfig {
    if !(c.ws && p.paged() && p.kv_dtype.is_fp8()) || c.consumer_widen {
        return c;
    }
    let legal = |alt: &MfaDecodeConfig| {
        MfaDecode::check_config(alt, &DeviceLimits::HOPPER).is_ok()
            && MfaDecode::check_problem(p, alt).is_ok()
    };
    let deeper = MfaDecodeConfig {
        consumer_widen: true,
        stages: MAX_STAGES,
        ..c.clone()
    };
    let same = MfaDecodeConfig {
        consumer_widen: true,
        ..c.clone()
    };
    if legal(&deeper) {
        deeper
    } else if legal(&same) {
        same
    } else {
        c
    }
}

/// Kernels the default config chooses from (its split size is then estimated): the measured
/// best of each regime first (run 3 on the H200: 64-token tiles, 2 stages, 4 warps for
/// unsplit BF16; for FP8 the warp-specialised wgmma kernel on 64-token tiles, 3 stages, two
/// consumer warp groups: fastest at B=128 L=4K, contiguous and paged, in every re-tune over all
/// legal configs since run 6 of 2026-11-30, 81-82 and 111 us in runs 7-8 of session 10 against
/// 144 and 166 for the 128-token mma.sync kernel), then
/// 8 warps on 64- and 32-token tiles (and for FP8 4 warps on 16-token tiles) for short chunks,
/// where a CTA's latency is its tile's compute. BF16 16-token tiles are out: the model picked
/// them for B=1 L=32K, B=8 L=4K and B=32 L=1K, where run 18 measured them 12-18% slower than
/// 64-token tiles.
fn default_kernels(dtype: KvDtype) -> Vec<MfaDecodeConfig> {
    let k = |tile_kv, stages, warps| MfaDecodeConfig {
        tile_kv,
        stages,
        warps,
        split_tokens: MAX_CONTEXT,
        wgmma: false,
        ws: false,
        consumer_widen: false,
    };
    let ws = |tile_kv, stages, warps| MfaDecodeConfig {
        wgmma: true,
        ws: true,
        ..k(tile_kv, stages, warps)
    };
    match dtype {
        KvDtype::Bf16 => vec![k(64, 2, 4), k(64, 3, 8), k(32, 3, 8)],
        KvDtype::Fp8e4m3 => vec![
            ws(64, 3, 8),
            k(128, 3, 8),
            k(64, 4, 8),
            k(32, 4, 8),
            k(16, 4, 4),
        ],
    }
}

impl Family for MfaDecode {
    type Problem = MfaDecodeProblem;
    type Config = MfaDecodeConfig;

    const NAME: &'static str = "mfa_decode";
    const TEMPLATE: &'static str = include_str!("../../../templates/mfa_decode.cu.tera");

    fn space() -> Vec<MfaDecodeConfig> {
        let mut out = Vec::new();
        for tile_kv in TILE_CHOICES {
            for stages in 2..=MAX_STAGES {
                for warps in [4, 8] {
                    for split_tokens in SPLIT_CHOICES {
                        for (wgmma, ws, consumer_widen) in [
                            (false, false, false),
                            (true, false, false),
                            (true, true, false),
                            (true, true, true),
                        ] {
                            out.push(MfaDecodeConfig {
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
                }
            }
        }
        out
    }

    // is_multiple_of is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn check_config(c: &MfaDecodeConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        // The tiles the template is written for: a multiple of 16 tokens (mma k-step).
        illegal(!TILE_CHOICES.contains(&c.tile_kv), || {
            format!("tile_kv {} is not one of {TILE_CHOICES:?}", c.tile_kv)
        })?;
        // 4 warps = one m16 tile of the 64 heads each; 8 = two groups splitting every tile.
        illegal(c.warps != 4 && c.warps != 8, || {
            format!("{} warps is not 4 or 8", c.warps)
        })?;
        // At least double buffering; deeper than 4 stages buys nothing at 16+ KB per tile.
        illegal(!(2..=MAX_STAGES).contains(&c.stages), || {
            format!("{} stages is not 2..={MAX_STAGES}", c.stages)
        })?;
        // A group's slice of a tile is 16..=64 tokens: a whole mma k-step for P V, and at most
        // 32 score registers next to the 128 of the O accumulator.
        let ng = c.group_tokens();
        illegal(!(16..=64).contains(&ng), || {
            format!("{ng} tokens per warp group is outside 16..=64")
        })?;
        // Loader: every warp copies the same number of rows, an even number (fp8 copies two
        // 256-byte rows per warp instruction), at most one per lane.
        let lw = c.loader_warps();
        let rows = c.tile_kv / lw;
        illegal(c.tile_kv % lw != 0 || rows % 2 != 0 || rows > 32, || {
            format!("{} rows over {lw} loader warps", c.tile_kv)
        })?;
        // Warp specialisation is written for the wgmma kernel (its FP8 path: checked per
        // problem).
        illegal(c.ws && !c.wgmma, || "ws needs wgmma".to_string())?;
        illegal(c.consumer_widen && !c.ws, || {
            "consumer_widen needs ws".to_string()
        })?;
        // 32-token tiles keep three QK^T accumulators; with the widening on the consumers too,
        // their 8-warp kernels spill (16-20 bytes, session 11).
        illegal(c.consumer_widen && c.tile_kv != 64, || {
            "consumer_widen is written for 64-token tiles".to_string()
        })?;
        // wgmma: a warp group's slice of a tile is the n of its QK^T wgmma (32 or 64 tokens
        // here: 16 would issue twice the wgmma's per byte; an FP8 cache's 128-token tiles
        // have no room for their 64 KB f16 V tile next to two stages).
        illegal(c.wgmma && c.tile_kv != 32 && c.tile_kv != 64, || {
            format!("wgmma needs 32- or 64-token tiles, not {}", c.tile_kv)
        })?;
        // Splits hold whole tiles (the kernel rounds its chunk up to a tile).
        illegal(c.split_tokens % c.tile_kv != 0, || {
            format!(
                "split_tokens {} is not a multiple of tile_kv {}",
                c.split_tokens, c.tile_kv
            )
        })?;
        // Split sizes are powers of two from 16 (the smallest tile) to MAX_CONTEXT.
        illegal(
            !c.split_tokens.is_power_of_two() || !(16..=MAX_CONTEXT).contains(&c.split_tokens),
            || {
                format!(
                    "split_tokens {} is not a power of two in 16..={MAX_CONTEXT}",
                    c.split_tokens
                )
            },
        )?;
        illegal(c.threads() > limits.max_threads_per_block, || {
            format!(
                "{} threads exceed the device's {}",
                c.threads(),
                limits.max_threads_per_block
            )
        })?;
        // Shared memory fits for at least the FP8 cache (BF16 is checked per problem).
        let smem = c.smem_bytes(KvDtype::Fp8e4m3);
        illegal(smem > limits.max_dynamic_smem_per_block, || {
            format!(
                "{smem} B of shared memory exceed {}",
                limits.max_dynamic_smem_per_block
            )
        })?;
        Ok(())
    }

    fn check_problem(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> Result<(), Illegal> {
        // The producer widens FP8 V tiles; a BF16 cache has nothing for it to do but copy.
        illegal(c.ws && !p.kv_dtype.is_fp8(), || {
            "ws (warp specialisation) is written for an FP8 cache".to_string()
        })?;
        // Shared memory for this problem's KV dtype fits a Hopper SM's opt-in limit.
        let smem = c.smem_bytes(p.kv_dtype);
        let limit = DeviceLimits::HOPPER.max_dynamic_smem_per_block;
        illegal(smem > limit, || {
            format!(
                "{smem} B of shared memory for a {:?} cache exceed {limit}",
                p.kv_dtype
            )
        })?;
        // The combine keeps one weight per split in shared memory.
        let s = splits(p, c);
        illegal(s > MAX_SPLITS, || format!("{s} splits exceed {MAX_SPLITS}"))?;
        // The partials stay a modest scratch buffer.
        let ws = workspace_bytes(p, c);
        illegal(ws > MAX_WORKSPACE_BYTES as u64, || {
            format!("split workspace of {ws} B exceeds {MAX_WORKSPACE_BYTES}")
        })?;
        Ok(())
    }

    fn supports(p: &MfaDecodeProblem) -> Result<(), Unsupported> {
        let no = |reason: String| Unsupported {
            family: Self::NAME,
            problem: format!("{p:?}"),
            reason,
        };
        if p.heads != HEADS || p.head_dim != HEAD_DIM {
            return Err(no(format!(
                "only {HEADS} query heads of head_dim {HEAD_DIM} sharing one K/V head (Step-3 MFA) are supported, got {} x {}",
                p.heads, p.head_dim
            )));
        }
        if p.batch == 0 || p.batch > MAX_BATCH {
            return Err(no(format!("batch must be 1..={MAX_BATCH} (grid.y)")));
        }
        if p.context == 0 || p.context > MAX_CONTEXT {
            return Err(no(format!("context must be 1..={MAX_CONTEXT}")));
        }
        if p.page_size > MAX_CONTEXT {
            return Err(no(format!("page_size must be at most {MAX_CONTEXT}")));
        }
        Ok(())
    }

    fn render_vars(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> RenderVars {
        let dtype = p.kv_dtype;
        let row_bytes = dtype.row_bytes();
        let scale_log2 = std::f64::consts::LOG2_E / (HEAD_DIM as f64).sqrt();
        // wgmma operand lists: S [64 x group tokens] and O [64 x 256] accumulators per thread.
        let qk_n = c.group_tokens() / 2;
        let pv_n = HEAD_DIM / 2;
        let (qk_list, qk_bind) = super::wgmma_accumulator_operands(qk_n);
        let (pv_list, pv_bind) = super::wgmma_accumulator_operands(pv_n);
        let vars = json!({
            "entry": Self::entry(p, c),
            "fp8": dtype.is_fp8(),
            "wgmma": c.wgmma,
            "wide_bytes": c.wide_bytes(dtype),
            "ab_type": if dtype.is_fp8() { "f16" } else { "bf16" },
            "qk_d_operands": qk_list,
            "qk_d_constraints": qk_bind,
            "qk_desc_operands": format!("%{}, %{}", qk_n, qk_n + 1),
            "pv_d_operands": pv_list,
            "pv_d_constraints": pv_bind,
            "pv_a_operands": format!("%{}, %{}, %{}, %{}", pv_n, pv_n + 1, pv_n + 2, pv_n + 3),
            "pv_desc_operand": format!("%{}", pv_n + 4),
            "paged": p.paged(),
            "heads": HEADS,
            "head_dim": HEAD_DIM,
            "k_steps": HEAD_DIM / 16,
            "warps": c.warps,
            "threads": c.compute_threads(),
            "groups": c.groups(),
            "tile_n": c.tile_kv,
            "group_n": c.group_tokens(),
            "stages": c.stages,
            "rows_per_warp": c.tile_kv / c.loader_warps(),
            "row_bytes": row_bytes,
            "chunks_per_row": row_bytes / 16,
            "q_bytes": Q_BYTES,
            "kv_tile_bytes": c.tile_kv * row_bytes,
            "scale_tile_bytes": if dtype.is_fp8() { c.tile_kv * 4 } else { 0 },
            "stage_bytes": c.stage_bytes(dtype),
            "smem_bytes": c.smem_bytes(dtype),
            "max_splits": MAX_SPLITS,
            "max_shares": MAX_SHARES,
            "counters_per_sequence": COUNTERS_PER_SEQUENCE,
            "ws_slot_bytes": WS_SLOT_BYTES,
            "ws_ml_offset": HEADS * HEAD_DIM * 2,
            "ml_cap": ML_CAP,
            "combine_data_offset": COMBINE_DATA_OFFSET,
            "scale_log2": format!("{scale_log2:.9e}f"),
        });
        // Warp specialisation (a second object: json! of one this size hits the macro
        // recursion limit).
        let ws_vars = json!({
            "ws": c.ws,
            // Three warp groups: the producer gives registers to the consumers.
            "ws_setmaxnreg": c.ws && c.warps == 8,
            "producer_registers": WS_PRODUCER_REGISTERS,
            "consumer_registers": WS_CONSUMER_REGISTERS,
            "launch_threads": c.threads(),
            "consumer_widen": c.consumer_widen,
        });
        match (vars, ws_vars) {
            (Value::Object(mut map), Value::Object(more)) => {
                map.extend(more);
                map
            }
            _ => unreachable!("json! of an object literal"),
        }
    }

    /// `split_tokens` is not in the name: it only shapes the grid, so every split choice of a
    /// (tile, stages, warps) shares one cubin.
    fn entry(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> String {
        format!(
            "kiln_mfa_decode_t{}_s{}_w{}_{}{}_{}",
            c.tile_kv,
            c.stages,
            c.warps,
            p.kv_dtype.tag(),
            if c.consumer_widen {
                "_wgmma_ws_cw"
            } else if c.ws {
                "_wgmma_ws"
            } else if c.wgmma {
                "_wgmma"
            } else {
                ""
            },
            if p.paged() { "paged" } else { "contig" }
        )
    }

    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("q", "const __nv_bfloat16*"),
            arg("k_cache", "const void*"),
            arg("v_cache", "const void*"),
            arg("k_scale", "const float*"),
            arg("v_scale", "const float*"),
            arg("seq_lens", "const int*"),
            arg("block_table", "const int*"),
            arg("out", "__nv_bfloat16*"),
            arg("workspace", "float*"),
            arg("counters", "unsigned int*"),
            arg("context", "int"),
            arg("max_len", "int"),
            arg("max_pages", "int"),
            arg("page_size", "int"),
        ]
    }

    fn geometry(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> LaunchGeometry {
        LaunchGeometry {
            grid: [splits(p, c), p.batch, 1],
            block: [c.threads(), 1, 1],
            dynamic_smem_bytes: c.smem_bytes(p.kv_dtype),
            cluster: [1, 1, 1],
        }
    }

    /// The split partials only; the u32 counters are a separate array of [`counters_len`].
    fn workspace_bytes(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> usize {
        workspace_bytes(p, c) as usize
    }

    /// Splitting needs both: partials (no init) and per-sequence counters (zeroed once;
    /// every launch leaves them zero).
    fn scratch(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> Vec<Scratch> {
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

    /// Same dtype, paging, page size and head shape; then the nearest batch and context
    /// (log ratios, so 2x off in either counts the same).
    fn bucket_distance(tuned: &MfaDecodeProblem, wanted: &MfaDecodeProblem) -> Option<f64> {
        if tuned.kv_dtype != wanted.kv_dtype
            || tuned.page_size != wanted.page_size
            || tuned.heads != wanted.heads
            || tuned.head_dim != wanted.head_dim
        {
            return None;
        }
        let ratio = |a: u32, b: u32| (a.max(1) as f64 / b.max(1) as f64).ln().abs();
        Some(ratio(tuned.batch, wanted.batch) + ratio(tuned.context, wanted.context))
    }

    /// Q K^T and P V: 2 x 2 x heads x head_dim per context token.
    fn flops(p: &MfaDecodeProblem) -> f64 {
        4.0 * p.batch as f64 * p.context as f64 * p.heads as f64 * p.head_dim as f64
    }

    /// K and V (with FP8 scales) for `context` tokens of every sequence, Q read and O written.
    fn min_bytes(p: &MfaDecodeProblem) -> f64 {
        let qo = 2.0 * p.batch as f64 * p.heads as f64 * p.head_dim as f64 * 2.0;
        p.kv_bytes() + qo
    }

    /// For each of [`default_kernels`] the split size with the lowest
    /// [`MfaDecode::estimate_us`] (powers of two up to [`MAX_CONTEXT`], so very long contexts
    /// of large batches still get a workspace that fits); a later kernel replaces an earlier
    /// one only if its estimate is more than 5% lower, since the model cannot rank kernels
    /// that stream at the same rate (there the measured best, listed first, stays).
    fn default_config(p: &MfaDecodeProblem) -> MfaDecodeConfig {
        let limits = DeviceLimits::HOPPER;
        let mut best: Option<(f64, MfaDecodeConfig)> = None;
        for base in default_kernels(p.kv_dtype) {
            let mut kernel_best: Option<(f64, MfaDecodeConfig)> = None;
            for e in 4..=MAX_CONTEXT.trailing_zeros() {
                let c = MfaDecodeConfig {
                    split_tokens: 1 << e,
                    ..base.clone()
                };
                if Self::check_config(&c, &limits).is_err() || Self::check_problem(p, &c).is_err() {
                    continue;
                }
                let t = Self::estimate_us(p, &c, &limits);
                // Ties go to the smaller split.
                if kernel_best.as_ref().is_none_or(|(b, _)| t < *b) {
                    kernel_best = Some((t, c));
                }
            }
            if let Some((t, c)) = kernel_best {
                if best.as_ref().is_none_or(|(b, _)| t < 0.95 * *b) {
                    best = Some((t, c));
                }
            }
        }
        // The unsplit config always passes check_problem (no workspace, one split).
        let chosen = best.map(|(_, c)| c).unwrap_or(MfaDecodeConfig {
            split_tokens: MAX_CONTEXT,
            ..default_kernels(p.kv_dtype)[0].clone()
        });
        consumer_widen_when_paged(p, with_wgmma(p, two_ctas_per_sm(p, chosen)))
    }

    /// A latency model of one call: launch, then per wave of CTAs the chain of one CTA
    /// (start-up round trip, its chunk streamed and computed, its output written), then for
    /// split sequences the combine (release, arrival, wait, one load round trip of the
    /// partials). Constants are H200 figures: ~0.8 us per DRAM round trip, ~0.5 us per L2 /
    /// atomic round trip, ~3.6 TB/s of DRAM and ~7 TB/s of L2 shared by the CTAs that run, at
    /// most ~150 GB/s into one SM, mma.sync at ~430 TFLOP/s per chip.
    fn estimate_us(p: &MfaDecodeProblem, c: &MfaDecodeConfig, limits: &DeviceLimits) -> f64 {
        const LAUNCH_S: f64 = 3.2e-6; // empty kernel, as measured (L2 flushed, CUDA events)
        const DRAM_RT_S: f64 = 0.8e-6;
        const L2_RT_S: f64 = 0.5e-6;
        const DRAM_BPS: f64 = 3.6e12;
        const L2_BPS: f64 = 7.0e12;
        const SM_BPS: f64 = 150e9;
        const MMA_FLOPS: f64 = 430e12;
        let sms = limits.sms.max(1) as f64;
        let bpt = p.kv_dtype.bytes_per_token() as f64;
        let s = splits(p, c) as f64;
        let chunk = chunk_tokens(p, c).min(p.context) as f64;
        let tiles = (chunk / c.tile_kv as f64).ceil().max(1.0);
        let per_sm = ctas_per_sm(c, p.kv_dtype) as f64;
        let ctas = p.batch as f64 * s;
        let slots = sms * per_sm;
        let waves = (ctas / slots).ceil();
        let concurrent = ctas.min(slots);
        let sharing = (concurrent / sms).ceil().max(1.0); // CTAs per busy SM
                                                          // Start-up: Q, the length and (contiguous) the first K tiles in one DRAM round trip;
                                                          // a paged cache waits for its block table first. Q's 32 KB come from L2 for all but
                                                          // the first CTA of a sequence.
        let paged = if p.paged() { DRAM_RT_S } else { 0.0 };
        let q_s = (concurrent * Q_BYTES as f64 / L2_BPS).max(Q_BYTES as f64 / SM_BPS);
        let front = DRAM_RT_S + paged + q_s;
        // Streaming: bytes in flight over a round trip, capped by the CTA's share of DRAM
        // and of its SM's port.
        let in_flight = (c.stages as f64 - 1.0) * c.tile_kv as f64 * bpt;
        let rate = (in_flight / DRAM_RT_S)
            .min(DRAM_BPS / concurrent)
            .min(SM_BPS / sharing);
        let mem = chunk * bpt / rate;
        // Tensor work at the SM's share; fp8 widens every K and V element in registers (run 3:
        // FP8 B=128 L=4K ran at ~235 TFLOP/s, compute-bound, so ~1.8x), or with wgmma once per
        // CTA into shared memory (run 36: the 64-token FP8 wgmma kernels ran ~5% faster than
        // the mma.sync ones at B=128 L=4K, so ~1.7x); 4 warps of mma.sync issue less densely
        // than 8 (a wgmma warp group is issued as one).
        let flops_token = 4.0 * HEADS as f64 * HEAD_DIM as f64;
        let widen = match (p.kv_dtype.is_fp8(), c.wgmma, c.ws) {
            (false, _, _) => 1.0,
            (true, false, _) => 1.8,
            (true, true, false) => 1.7,
            // The producer widens off the consumers' chain: run 8 of 2026-11-30 measured B=128
            // L=4K at 96 us against 144 for the 128-token mma.sync kernel (1.8 above).
            (true, true, true) => 1.2,
        };
        let density = if c.warps == 8 || c.wgmma { 1.0 } else { 0.85 };
        let cta_flops = MMA_FLOPS / sms * density / sharing;
        let compute = chunk * flops_token * widen / cta_flops;
        // Load and compute overlap across tiles; the first load and the last compute do not.
        let main = mem.max(compute) + mem.min(compute) / tiles;
        let out_s = (HEADS * HEAD_DIM * 2) as f64 / SM_BPS;
        let cta = front + main + out_s;
        let combine = if s > 1.0 {
            // Release (stores acknowledged), arrival, the last arrival seen, then the share's
            // partials and (m, l) in one round trip: ~one partial per combiner, all from L2.
            let partials = 2.0 * ctas * WS_SLOT_BYTES as f64 / L2_BPS;
            let share = (WS_SLOT_BYTES as f64 * (s / 64.0).max(1.0)) / SM_BPS;
            3.0 * L2_RT_S + L2_RT_S + share.max(partials) + out_s
        } else {
            0.0
        };
        (LAUNCH_S + waves * cta + combine) * 1e6
    }

    fn branch_problems() -> Vec<MfaDecodeProblem> {
        let mut out = Vec::new();
        for kv_dtype in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
            for page_size in [0, 16] {
                out.push(MfaDecodeProblem::step3(3, 1000, kv_dtype, page_size));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
