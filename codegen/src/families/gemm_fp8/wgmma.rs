//! The wgmma kernel of `gemm_fp8` (`templates/gemm_fp8_wgmma.cu.tera`, sm_90a): Hopper's
//! warpgroup MMA on e4m3 operands read from 128-byte-swizzled shared memory, fed either by a
//! `cp.async` pipeline all threads copy into or by a producer warpgroup issuing TMA copies;
//! each 128-wide K tile is one scale block, summed by the tensor cores into a temporary
//! fragment and promoted into the fp32 accumulators with its two scales. Serves any M
//! (prefill, FFN and the decode batches past the stream kernel's 32 tokens). The template's
//! header explains layout, pipeline and the promotion schedules.
//!
//! A CTA computes a `bm x bn` tile (`bm / 64` consumer warpgroups, each `bn / wn` m64 x wn
//! wgmma's per k32 step), optionally with a producer warpgroup (TMA, optionally multicast in
//! clusters of two along M, optionally a persistent grid). Grid: `[CTAs, 1, split_k]` (CTAs:
//! the tiles, or at most [`PERSISTENT_CTAS`]); block `2 * bm` threads (128 per warpgroup), +
//! 128 with a producer.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{illegal, scale_blocks, GemmFp8Problem, MAX_WORKSPACE_BYTES, SCALE_BLOCK};
use crate::family::{DeviceLimits, Illegal, LaunchGeometry, RenderVars};

/// K elements (bytes) per pipeline stage: one 128-byte swizzle row = one scale block.
pub const BK: u32 = SCALE_BLOCK;
/// Tile rows grouped in the raster (resident CTAs share X and W rows in L2).
pub const GROUP_M: u32 = 8;
/// Activation scales a stage holds beyond the tile's rows: up to 3 weight scales, padded.
const SW_SLOTS: u32 = 4;
/// Bytes per row of the epilogue's staging buffer (64 bf16 + 16 bytes of padding):
/// `KILN_EPI_ROW` of `templates/wgmma_epilogue.cuh`.
pub const EPI_ROW: u32 = 144;

/// A point of the wgmma kernel's space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WgmmaConfig {
    /// CTA tile rows (tokens): 64 (one warpgroup) or 128 (two).
    pub bm: u32,
    /// CTA tile columns (weight rows): 64, 96, 128, 160, 192 or 256.
    pub bn: u32,
    /// Columns per wgmma (the temporary fragment's width); `bn / wn` passes per K tile.
    pub wn: u32,
    /// Shared-memory pipeline stages of one 128-wide K tile each.
    pub stages: u32,
    /// K slices reduced in-kernel (grid.z).
    pub split_k: u32,
    /// Two temporary fragments, so a tile's promotion overlaps the next tile's wgmma's.
    pub double_tmp: bool,
    /// A producer warpgroup does the copying (mbarrier pipeline, no CTA barrier per tile).
    pub producer: bool,
    /// The producer copies the operand tiles with TMA (one thread, tensor maps). Required with
    /// a producer: its `cp.async` version (every producer thread copying) lost every shape
    /// and is gone; artifacts written before this field deserialize it as false.
    #[serde(default)]
    pub tma: bool,
    /// CTAs of a thread-block cluster along M (1 or 2) that share each W tile: with 2, each
    /// loads half of it and multicasts it to both (TMA only, no split-K).
    #[serde(default = "one")]
    pub cluster_m: u32,
    /// A persistent grid (producer schedules without split-K): at most [`PERSISTENT_CTAS`]
    /// CTAs, each looping over tiles, so the producer loads the next tile's first K tiles while
    /// the consumers store the last one.
    #[serde(default)]
    pub persistent: bool,
    /// Split-K slices of a tile form one thread-block cluster along z and sum their partials
    /// through distributed shared memory (no workspace or counters; TMA producer, 64-row tiles).
    #[serde(default)]
    pub cluster_k: bool,
}

/// CTAs of a persistent grid: one per SM of the H200 (any grid size is correct; this one fills
/// the GPU the artifacts are tuned on).
pub const PERSISTENT_CTAS: u32 = 132;

fn one() -> u32 {
    1
}

/// Registers a producer thread keeps (setmaxnreg.dec) and a consumer thread gets
/// (setmaxnreg.inc) with two consumer warpgroups: 128 x 40 + 256 x 232 <= 65536.
pub const PRODUCER_REGISTERS: u32 = 40;
pub const CONSUMER_REGISTERS: u32 = 232;

impl WgmmaConfig {
    pub fn threads(&self) -> u32 {
        2 * self.bm + if self.producer { 128 } else { 0 }
    }
    /// fp32 registers of one temporary fragment (a wgmma's m64 x wn result) per thread.
    pub fn frag(&self) -> u32 {
        self.wn / 2
    }
    /// fp32 accumulator registers per thread (the whole 64 x bn slice).
    pub fn acc(&self) -> u32 {
        self.bn / 2
    }
    /// wgmma passes per K tile.
    pub fn halves(&self) -> u32 {
        self.bn / self.wn
    }
    /// Fragments live across the main loop: the accumulators and one or two temporaries.
    pub fn fragment_registers(&self) -> u32 {
        self.acc() + self.frag() * if self.double_tmp { 2 } else { 1 }
    }
    /// One stage: the X tile, the W tile and the tile's scales.
    pub fn stage_bytes(&self) -> u32 {
        (self.bm + self.bn) * BK + (self.bm + SW_SLOTS) * 4
    }
    /// Every stage (+ two mbarriers each with a producer), the epilogue's staging buffers, plus
    /// 1 KiB to align the base to a swizzle atom.
    pub fn smem_bytes(&self) -> u32 {
        let bars = if self.producer { 16 * self.stages } else { 0 };
        self.stages * self.stage_bytes() + bars + self.epilogue_bytes() + 1024
    }
    /// The epilogue's staging buffers: per consumer warp, 16 rows of 64 bf16 columns padded to
    /// [`EPI_ROW`] bytes.
    pub fn epilogue_bytes(&self) -> u32 {
        (self.bm / 16) * 16 * EPI_ROW
    }
    /// Whether the warpgroups rebalance registers (a producer beside two consumers; with one
    /// consumer the 256 threads get 255 registers each anyway).
    pub fn setmaxnreg(&self) -> bool {
        self.producer && self.bm == 128
    }
    /// Tiles read by wgmma's while later ones load (the prefetch distance is `stages - this`).
    fn busy_stages(&self) -> u32 {
        if self.double_tmp {
            2
        } else {
            1
        }
    }
}

pub fn tiles(p: &GemmFp8Problem, c: &WgmmaConfig) -> u64 {
    (p.m as u64).div_ceil(c.bm as u64) * (p.n as u64).div_ceil(c.bn as u64)
}

/// grid.x: every CTA, or a persistent grid of at most [`PERSISTENT_CTAS`] (whole clusters).
pub fn grid_x(p: &GemmFp8Problem, c: &WgmmaConfig) -> u32 {
    let all = ctas(p, c).min(i32::MAX as u64) as u32;
    if c.persistent {
        let cm = c.cluster_m.max(1);
        all.min(PERSISTENT_CTAS / cm * cm)
    } else {
        all
    }
}

/// CTAs of the grid: the tiles, with the tile rows rounded up to whole clusters.
pub fn ctas(p: &GemmFp8Problem, c: &WgmmaConfig) -> u64 {
    let cm = c.cluster_m.max(1) as u64;
    (p.m as u64).div_ceil(c.bm as u64).div_ceil(cm) * cm * (p.n as u64).div_ceil(c.bn as u64)
}

pub fn workspace_floats(p: &GemmFp8Problem, c: &WgmmaConfig) -> u64 {
    if c.split_k > 1 && !c.cluster_k {
        c.split_k as u64 * tiles(p, c) * c.bm as u64 * c.bn as u64
    } else {
        0
    }
}

pub fn counters_len(p: &GemmFp8Problem, c: &WgmmaConfig) -> usize {
    if c.split_k > 1 && !c.cluster_k {
        tiles(p, c) as usize
    } else {
        0
    }
}

/// Tile widths below 64 or not a multiple of 32, for 64-row tiles only (see [`space`]).
pub const NARROW_BNS: [u32; 3] = [40, 56, 80];

pub fn space() -> Vec<WgmmaConfig> {
    let mut out = Vec::new();
    // Every thread copies; one wgmma pass per K tile. Besides the main widths, narrow 64-row
    // tiles fill the SMs on the decode shapes (M <= 64): 56 columns cut o_proj's N = 7168 into
    // 128 tiles, 40 and 80 qkv's 2560 into 64 and 32 (x split-K 2 / 4).
    let main = [64, 96, 128, 160].map(|bn| (bn, [64, 128].as_slice(), [4, 5, 6, 8].as_slice()));
    let narrow = NARROW_BNS.map(|bn| (bn, [64].as_slice(), [4, 6].as_slice()));
    for (bn, bms, stage_choices) in main.into_iter().chain(narrow) {
        for &bm in bms {
            for &stages in stage_choices {
                for split_k in [1, 2, 4, 8] {
                    for double_tmp in [false, true] {
                        out.push(WgmmaConfig {
                            bm,
                            bn,
                            wn: bn,
                            stages,
                            split_k,
                            double_tmp,
                            producer: false,
                            tma: false,
                            cluster_m: 1,
                            persistent: false,
                            cluster_k: false,
                        });
                    }
                }
            }
        }
    }
    // A TMA producer and two consumers: one pass (one or two temporaries) or two passes; alone
    // or in clusters of two along M that multicast W tiles.
    for (bn, wn, double_tmp) in [
        (128, 128, false),
        (128, 128, true),
        (160, 160, false),
        (192, 96, false),
        (256, 128, false),
    ] {
        for stages in [3, 4, 5, 6] {
            for cluster_m in [1, 2] {
                for persistent in [false, true] {
                    out.push(WgmmaConfig {
                        bm: 128,
                        bn,
                        wn,
                        stages,
                        split_k: 1,
                        double_tmp,
                        producer: true,
                        tma: true,
                        cluster_m,
                        persistent,
                        cluster_k: false,
                    });
                }
            }
        }
    }
    // A TMA producer and one consumer for decode batches: deep pipelines of 64-row tiles
    // stream the weight; split-K fills the SMs; from 128 tokens, clusters of two tile rows
    // multicast the W tiles.
    for bn in [64, 128].into_iter().chain(NARROW_BNS) {
        for double_tmp in [false, true] {
            for stages in [4, 6, 8] {
                for split_k in [1, 2, 4, 8] {
                    for cluster_m in [1, 2] {
                        if cluster_m == 2 && (split_k > 1 || NARROW_BNS.contains(&bn)) {
                            continue;
                        }
                        // The K slices of a tile in one cluster, at the deeper pipelines.
                        let cluster_ks: &[bool] = if split_k > 1 && cluster_m == 1 && stages >= 6 {
                            &[false, true]
                        } else {
                            &[false]
                        };
                        for &cluster_k in cluster_ks {
                            out.push(WgmmaConfig {
                                bm: 64,
                                bn,
                                wn: bn,
                                stages,
                                split_k,
                                double_tmp,
                                producer: true,
                                tma: true,
                                cluster_m,
                                persistent: false,
                                cluster_k,
                            });
                        }
                    }
                }
                // Persistent, one-CTA-per-SM grids of 128-column tiles.
                if bn == 128 {
                    out.push(WgmmaConfig {
                        bm: 64,
                        bn,
                        wn: bn,
                        stages,
                        split_k: 1,
                        double_tmp,
                        producer: true,
                        tma: true,
                        cluster_m: 1,
                        persistent: true,
                        cluster_k: false,
                    });
                }
            }
        }
    }
    out
}

/// Registers per thread the fragments may take. ptxas needs ~60-70 more for addresses, the
/// descriptors, the scales and the loop: at 192 fragment registers (128 columns with two
/// temporaries, or 192 with one) NVRTC 13.0 spills 4-104 bytes at the 255 cap.
pub const FRAGMENT_BUDGET: u32 = 160;
/// The same for a consumer of the producer schedule (232 registers, fewer addresses to keep).
pub const PRODUCER_FRAGMENT_BUDGET: u32 = 192;

pub fn check_config(c: &WgmmaConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
    // One or two warpgroups of m64.
    illegal(![64, 128].contains(&c.bm), || {
        format!("bm {} is not 64 or 128", c.bm)
    })?;
    // Tile widths of the space (multiples of 8: W tiles are whole 1024-byte swizzle atoms; the
    // loader's last round may be partial). The narrow ones go with 64-row tiles in one pass.
    illegal(
        ![64, 96, 128, 160, 192, 256].contains(&c.bn) && !NARROW_BNS.contains(&c.bn),
        || {
            format!(
                "bn {} is not 64, 96, 128, 160, 192, 256 or one of {NARROW_BNS:?}",
                c.bn
            )
        },
    )?;
    illegal(
        NARROW_BNS.contains(&c.bn) && (c.bm != 64 || c.wn != c.bn),
        || format!("a {}-column tile is a 64-row, one-pass tile", c.bn),
    )?;
    // wgmma widths: multiples of 8 up to 160 that divide the tile. (One pass of 192 with a TMA
    // producer compiles without spills but lost every FFN shape by 3-40%, run 45.)
    illegal(
        c.wn == 0 || !c.wn.is_multiple_of(8) || c.wn > 160 || !c.bn.is_multiple_of(c.wn),
        || format!("wn {} does not split bn {} into wgmma passes", c.wn, c.bn),
    )?;
    illegal(!(3..=8).contains(&c.stages), || {
        format!("{} stages is not 3..=8", c.stages)
    })?;
    // TMA copies are issued by a producer warpgroup, and a producer copies with TMA (its
    // cp.async version lost to TMA on every shape, runs 39-40, and was removed).
    illegal(c.tma != c.producer, || {
        "a producer warpgroup issues TMA copies, and only it".to_string()
    })?;
    // The tile loop lives in the producer schedules; split-K slices are one tile each.
    illegal(c.persistent && (!c.producer || c.split_k > 1), || {
        "a persistent grid needs a producer warpgroup and no split-K".to_string()
    })?;
    // A cluster of K slices: a TMA producer's 64-row tile split 2-8 ways (a portable
    // cluster), alone along M, one tile per CTA.
    illegal(
        c.cluster_k && (!c.tma || c.bm != 64 || c.split_k < 2 || c.cluster_m > 1 || c.persistent),
        || {
            format!(
                "a cluster of {} K slices needs a TMA producer's 64-row tile, split, alone along M",
                c.split_k
            )
        },
    )?;
    illegal(![1, 2].contains(&c.cluster_m), || {
        format!("cluster_m {} is not 1 or 2", c.cluster_m)
    })?;
    // Multicast halves of the W tile: TMA copies, whole swizzle atoms, one K slice per tile.
    illegal(
        c.cluster_m > 1 && (!c.tma || c.split_k > 1 || !(c.bn / c.cluster_m).is_multiple_of(8)),
        || {
            format!(
                "a cluster of {} multicasts W halves of a {}-column tile: TMA, no split-K",
                c.cluster_m, c.bn
            )
        },
    )?;
    // A producer beside two consumers spills in the split-K epilogue (NVRTC 13.0, 4 bytes).
    illegal(c.producer && c.bm == 128 && c.split_k > 1, || {
        "a producer warpgroup beside two consumers does not split K".to_string()
    })?;
    // Two temporaries alternate between K tiles, one pass each.
    illegal(c.double_tmp && c.wn != c.bn, || {
        "two temporaries need one wgmma pass per K tile".to_string()
    })?;
    illegal(![1, 2, 4, 8].contains(&c.split_k), || {
        format!("split_k {} is not 1, 2, 4 or 8", c.split_k)
    })?;
    illegal(c.threads() > limits.max_threads_per_block, || {
        format!("{} threads exceed the device's limit", c.threads())
    })?;
    // The accumulators and temporaries stay in registers.
    let budget = if c.producer {
        PRODUCER_FRAGMENT_BUDGET
    } else {
        FRAGMENT_BUDGET
    };
    illegal(c.fragment_registers() > budget, || {
        format!(
            "{} fragment registers (bn {}, wn {}, double_tmp {}) exceed {budget}",
            c.fragment_registers(),
            c.bn,
            c.wn,
            c.double_tmp
        )
    })?;
    illegal(c.smem_bytes() > limits.max_dynamic_smem_per_block, || {
        format!(
            "{} B of shared memory exceed {}",
            c.smem_bytes(),
            limits.max_dynamic_smem_per_block
        )
    })?;
    // At least one tile loads while the busy ones are read (the producer schedule keeps
    // stages - 1 tiles in flight).
    let min_stages = if c.producer && !c.double_tmp {
        3
    } else {
        c.busy_stages() + 2
    };
    illegal(c.stages < min_stages, || {
        format!("{} stages leave too little prefetch", c.stages)
    })?;
    // Split-K serves few tiles (small M): partial tiles of at most 128 x 128.
    illegal(c.split_k > 1 && c.bm * c.bn > 128 * 128, || {
        format!("split_k {} of a {}x{} tile", c.split_k, c.bm, c.bn)
    })?;
    // Eight stages only where a stage is small (at most 20 KiB: 64-row tiles of <= 96 columns;
    // 24 KiB, 128 columns, with a TMA producer).
    let eight_rows = if c.tma { 192 } else { 160 };
    illegal(c.stages == 8 && c.bm + c.bn > eight_rows, || {
        format!("8 stages of a {}x{} tile", c.bm, c.bn)
    })?;
    // With one warpgroup ptxas gives the loop more registers and a 64 x 160 tile spills
    // (NVRTC 13.0: 4 bytes at 255 registers).
    illegal(c.bm == 64 && c.bn == 160, || {
        "a 64x160 tile spills registers".to_string()
    })?;
    Ok(())
}

pub fn check_problem(p: &GemmFp8Problem, c: &WgmmaConfig) -> Result<(), Illegal> {
    // Every split gets at least one scale block.
    illegal(scale_blocks(p) < c.split_k as u64, || {
        format!(
            "k {} has {} scale blocks for split_k {}",
            p.k,
            scale_blocks(p),
            c.split_k
        )
    })?;
    illegal(ctas(p, c) > i32::MAX as u64, || {
        format!("{} CTAs exceed grid.x", ctas(p, c))
    })?;
    let ws = workspace_floats(p, c) * 4;
    illegal(ws > MAX_WORKSPACE_BYTES as u64, || {
        format!("split-K workspace of {ws} B exceeds {MAX_WORKSPACE_BYTES}")
    })?;
    Ok(())
}

pub fn entry(c: &WgmmaConfig) -> String {
    format!(
        "kiln_gemm_fp8_wgmma_m{}_n{}_w{}_s{}_sk{}_d{}_p{}{}",
        c.bm,
        c.bn,
        c.wn,
        c.stages,
        c.split_k,
        c.double_tmp as u32,
        c.producer as u32,
        if c.tma { "_tma" } else { "" }
    ) + &if c.cluster_m > 1 {
        format!("_c{}", c.cluster_m)
    } else {
        String::new()
    } + if c.persistent { "_pers" } else { "" }
        + if c.cluster_k { "_ck" } else { "" }
}

pub fn render_vars(c: &WgmmaConfig) -> RenderVars {
    // The wgmma's operand list: the fragment's registers %0 .. %(frag-1), bound to d[0..frag),
    // then the two descriptors and the accumulate flag.
    let n = c.frag();
    let (d_operands, d_bindings) = crate::families::wgmma_accumulator_operands(n);
    let vars = json!({
        "d_operands": d_operands,
        "d_bindings": d_bindings,
        "desc_a_operand": n,
        "desc_b_operand": n + 1,
        "flag_operand": n + 2,
        "wgmma": true,
        "entry": entry(c),
        "use_split_k": c.split_k > 1,
        "double_tmp": c.double_tmp,
        "producer": c.producer,
        "tma": c.tma,
        "setmaxnreg": c.setmaxnreg(),
        "cluster_m": c.cluster_m,
        "cluster_k": c.cluster_k,
        "producer_registers": PRODUCER_REGISTERS,
        "consumer_registers": CONSUMER_REGISTERS,
        "bm": c.bm,
        "bn": c.bn,
        "wn": c.wn,
        "threads": c.threads(),
        "stages": c.stages,
        "split_k": c.split_k,
        "group_m": GROUP_M,
    });
    match vars {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal"),
    }
}

pub fn geometry(p: &GemmFp8Problem, c: &WgmmaConfig) -> LaunchGeometry {
    LaunchGeometry {
        grid: [grid_x(p, c), 1, c.split_k],
        block: [c.threads(), 1, 1],
        dynamic_smem_bytes: c.smem_bytes(),
        // A multicast or cluster-split config carries its cluster shape in the cubin
        // (`__cluster_dims__`), so it launches like any other kernel and reports no launch-time
        // cluster.
        cluster: [1, 1, 1],
    }
}

/// The wgmma config used when nothing is tuned (M > 32), from the every-config re-tune of run
/// 44 (2026-11-29). Prefill-sized M (> 256): 128 x 256 tiles in two n128 passes, a TMA producer
/// beside two consumer warpgroups, 3 stages (the winner or within 5% on the FFN shapes).
/// Decode-sized M: 64-row tiles with a TMA producer and one consumer, 128 columns, 6 stages;
/// split-K while tiles x splits stays within 1.5 waves and every split keeps >= 4 K tiles, the
/// slices of a tile in one cluster (at this tile it beat the workspace reduction on 9 of the 10
/// split pairs of session 12's call-1 re-tune, by 1-9%).
pub fn default_config(p: &GemmFp8Problem) -> WgmmaConfig {
    const SMS: u64 = 132;
    if p.m > 256 {
        return WgmmaConfig {
            bm: 128,
            bn: 256,
            wn: 128,
            stages: 3,
            split_k: 1,
            double_tmp: false,
            producer: true,
            tma: true,
            cluster_m: 1,
            persistent: false,
            cluster_k: false,
        };
    }
    let mut c = WgmmaConfig {
        bm: 64,
        bn: 128,
        wn: 128,
        stages: 6,
        split_k: 1,
        double_tmp: false,
        producer: true,
        tma: true,
        cluster_m: 1,
        persistent: false,
        cluster_k: false,
    };
    for split in [8, 4, 2] {
        let s = WgmmaConfig {
            split_k: split,
            cluster_k: true,
            ..c.clone()
        };
        if tiles(p, &s) * split as u64 <= SMS * 3 / 2
            && scale_blocks(p) >= 4 * split as u64
            && check_problem(p, &s).is_ok()
        {
            c = s;
            break;
        }
    }
    c
}

/// Analytical time in microseconds: tensor work at ~1000 TFLOP/s with overlapped promotion
/// (less without, and for narrow N), DRAM bytes at ~3.8 TB/s, a round trip per prefetched
/// tile along a CTA's K slice, whole waves, launch and split-K overhead.
pub fn estimate_us(p: &GemmFp8Problem, c: &WgmmaConfig, limits: &DeviceLimits) -> f64 {
    let sms = limits.sms.max(1) as f64;
    let tiles_m = (p.m as u64).div_ceil(c.bm as u64) as f64;
    let tiles_n = (p.n as u64).div_ceil(c.bn as u64) as f64;
    let split = c.split_k as f64;
    let kt = (scale_blocks(p) as f64 / split).ceil();
    let per_sm = ((228.0 * 1024.0) / (c.smem_bytes() as f64 + 1024.0))
        .floor()
        .clamp(1.0, 2.0);
    let ctas = tiles_m * tiles_n * split;
    let slots = sms * per_sm;
    let waves = (ctas / slots).ceil();
    let n_eff = match c.bn {
        0..=63 => 0.7 * c.bn as f64 / 64.0,
        64 => 0.7,
        65..=96 => 0.8,
        128 => 0.9,
        160 => 0.95,
        _ => 1.0,
    };
    let promote_eff = match (c.producer, c.double_tmp, c.bm) {
        (true, _, _) if c.tma => 1.25,
        (true, _, _) => 1.1,
        (false, true, _) => 1.0,
        (false, false, 128) => 0.85,
        (false, false, _) => 0.65,
    };
    let cta_flops = 2.0 * c.bm as f64 * c.bn as f64 * kt * BK as f64;
    let compute_s = waves * slots * cta_flops / (n_eff * promote_eff * 1000e12);
    let k = p.k as f64;
    let a_bytes = tiles_m * c.bm as f64 * k * (tiles_n / 64.0).ceil();
    let b_bytes = tiles_n * c.bn as f64 * k * (tiles_m / GROUP_M as f64).ceil();
    let y_bytes = p.m as f64 * p.n as f64 * 2.0;
    let ws_bytes = 2.0 * workspace_floats(p, c) as f64 * 4.0;
    // Slots left idle in the waves draw no bandwidth (10% slack for SMs that run ahead).
    let bw_share = (1.1 * ctas / (waves * slots)).min(1.0);
    let memory_s = (a_bytes + b_bytes + y_bytes + ws_bytes) / (3.8e12 * bw_share);
    // Operand tiles from L2 into shared memory: ~5.2 TB/s over all SMs (where the TMA kernels
    // levelled off in run 39, whatever the tile shape); a cluster's CTAs share each W tile.
    let tile_bytes = (c.bm as f64 + c.bn as f64 / c.cluster_m.max(1) as f64) * BK as f64;
    let l2_s = ctas * kt * tile_bytes / (5.2e12 * bw_share);
    let ahead = (c.stages - c.busy_stages()) as f64;
    let latency_s = waves * kt * 0.8e-6 / ahead;
    // A persistent grid hides each tile's pipeline fill behind the previous tile's stores. A
    // split reduced in a cluster skips the workspace's global round trips (0.5-0.9 us faster
    // than the workspace reduction in session 12's call 1).
    let split_s = match (c.split_k > 1, c.cluster_k) {
        (false, _) => 0.0,
        (true, false) => 1e-6,
        (true, true) => 0.4e-6,
    };
    let launch_s = 3e-6 + split_s
        - if c.persistent {
            0.3e-6 * (waves - 1.0)
        } else {
            0.0
        };
    (compute_s.max(memory_s).max(l2_s).max(latency_s) + launch_s) * 1e6
}
