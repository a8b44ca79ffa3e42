//! The weight-streaming kernel of `gemm_bf16` (`templates/gemm_bf16_stream.cu.tera`): decode
//! GEMMs with M <= 32 tokens, where the weight B is read once and bandwidth is everything.
//! The template's header explains the swap-AB fragment mapping, work split and reduction.
//!
//! A CTA owns `rows` m16 tiles of weight rows (16 * `rows` columns of C) for all M tokens
//! (`tokens8` n8 tiles), and one of `split_k` slices of K; its `warps` warps take chunks of
//! `unroll` 32-wide K blocks in turn. Grid: `[ceil(N / (16 * rows)), 1, split_k]`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_grid_and_workspace, illegal, is_aligned, GemmBf16Problem};
use crate::family::{DeviceLimits, Illegal, LaunchGeometry, RenderVars};

/// Most tokens the stream kernel serves (4 n8 tiles); larger M goes to the tiled kernel.
pub const MAX_M: u32 = 32;

/// K elements per block: two k16 mma steps fed by one 16-byte load per lane and row.
pub const K_BLOCK: u32 = 32;

/// A point of the stream kernel's space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Warps per CTA; they split the CTA's K range in chunks.
    pub warps: u32,
    /// m16 tiles of weight rows per CTA (16 * rows columns of C).
    pub rows: u32,
    /// 32-wide K blocks one warp loads before its mma's (its bytes in flight).
    pub unroll: u32,
    /// n8 tiles of tokens: serves M <= 8 * tokens8.
    pub tokens8: u32,
    /// K slices reduced in-kernel (grid.z).
    pub split_k: u32,
    /// Chunks a warp keeps in flight: 1 waits for each chunk before loading the next, 2
    /// issues the next chunk's loads before the current chunk's mma's (two register
    /// buffers). Configs tuned before the field existed are depth 1.
    #[serde(default = "depth_one")]
    pub depth: u32,
    /// Split-K reduced inside a thread-block cluster of the `split_k` CTAs of a tile (compiled
    /// in, `__cluster_dims__(1, 1, split_k)`): the partials stay in the CTAs' shared memory and
    /// each CTA sums a slice of the tile over distributed shared memory, with no workspace,
    /// counter or L2 round trip. `split_k` 2..=8 (the portable cluster size). Configs tuned
    /// before the field existed reduce through the workspace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
}

fn depth_one() -> u32 {
    1
}

impl StreamConfig {
    pub fn threads(&self) -> u32 {
        32 * self.warps
    }
    /// Columns of C (weight rows) per CTA.
    pub fn tile_n(&self) -> u32 {
        16 * self.rows
    }
    /// Rows of C (tokens) per CTA.
    pub fn tile_m(&self) -> u32 {
        8 * self.tokens8
    }
    /// Outputs per CTA.
    pub fn outputs(&self) -> u32 {
        self.tile_n() * self.tile_m()
    }
    /// fp32 accumulators per lane.
    pub fn frag(&self) -> u32 {
        self.rows * self.tokens8 * 4
    }
    /// 32-bit registers a chunk's loads hold at once: `unroll` blocks of 2 * rows weight
    /// chunks and tokens8 token chunks, 4 registers each.
    pub fn load_registers(&self) -> u32 {
        self.unroll * (8 * self.rows + 4 * self.tokens8)
    }
    /// Load registers live at once: `depth` chunks' worth.
    pub fn buffer_registers(&self) -> u32 {
        self.depth * self.load_registers()
    }
    /// Rough registers per thread: loads, accumulators, pointers and indices.
    pub fn register_estimate(&self) -> u32 {
        self.buffer_registers() + self.frag() + 4 * self.rows + 2 * self.tokens8 + 32
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

/// The fewest token tiles (1, 2 or 4 n8 tiles) that hold `m` tokens.
pub fn tokens8_for(m: u32) -> u32 {
    match m {
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

/// Whether the tuner should measure `c` for `p`: a wider token tile than M needs also
/// serves it (dispatch may reuse a config tuned for a larger M), but only adds registers
/// and mma's on zeros, so it never beats the tightest one.
pub fn worth_measuring(p: &GemmBf16Problem, c: &StreamConfig) -> bool {
    c.tokens8 == tokens8_for(p.m)
}

/// 32-wide K blocks of a problem.
pub fn k_blocks(p: &GemmBf16Problem) -> u64 {
    (p.k as u64).div_ceil(K_BLOCK as u64)
}

/// K blocks a split takes whole: 4 (256 bytes of a row, an `L2::256B` prefetch region).
pub const SPLIT_GROUP: u64 = 4;

/// Groups of [`SPLIT_GROUP`] K blocks: the unit split-K divides.
pub fn k_groups(p: &GemmBf16Problem) -> u64 {
    k_blocks(p).div_ceil(SPLIT_GROUP)
}

/// K blocks of the largest split.
pub fn blocks_per_split(p: &GemmBf16Problem, c: &StreamConfig) -> u64 {
    (k_groups(p).div_ceil(c.split_k as u64) * SPLIT_GROUP).min(k_blocks(p))
}

/// CTAs along N (grid.x).
pub fn tiles(p: &GemmBf16Problem, c: &StreamConfig) -> u64 {
    (p.n as u64).div_ceil(c.tile_n() as u64)
}

pub fn workspace_floats(p: &GemmBf16Problem, c: &StreamConfig) -> u64 {
    if c.split_k > 1 && !c.cluster {
        c.split_k as u64 * tiles(p, c) * c.outputs() as u64
    } else {
        0
    }
}

pub fn space() -> Vec<StreamConfig> {
    let mut out = Vec::new();
    for warps in [4, 8] {
        for rows in [1, 2, 4] {
            for unroll in [2, 4, 8] {
                for tokens8 in [1, 2, 4] {
                    for split_k in [1, 2, 4, 8, 16, 32] {
                        for depth in [1, 2] {
                            out.push(StreamConfig {
                                warps,
                                rows,
                                unroll,
                                tokens8,
                                split_k,
                                depth,
                                cluster: false,
                            });
                        }
                    }
                }
            }
        }
    }
    // Each split of 2..=8 at depth 2 with 4 warps again, reduced in a cluster.
    let clustered: Vec<StreamConfig> = out
        .iter()
        .filter(|c| (2..=8).contains(&c.split_k) && c.depth == 2 && c.warps == 4)
        .map(|c| StreamConfig {
            cluster: true,
            ..c.clone()
        })
        .collect();
    out.extend(clustered);
    out
}

pub fn check_config(c: &StreamConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
    // 4 or 8 warps: enough loads in flight per CTA, and at most 256 threads so two or more
    // CTAs share an SM.
    illegal(![4, 8].contains(&c.warps), || {
        format!("{} warps is not 4 or 8", c.warps)
    })?;
    illegal(c.threads() > limits.max_threads_per_block, || {
        format!(
            "{} threads exceed the device's {}",
            c.threads(),
            limits.max_threads_per_block
        )
    })?;
    // Row tiles the template is written for (a CTA owns 16, 32 or 64 weight rows).
    illegal(![1, 2, 4].contains(&c.rows), || {
        format!("rows {} is not 1, 2 or 4", c.rows)
    })?;
    // 2 to 8 K blocks per chunk: 2 KiB of weight per warp and row tile in flight at least.
    illegal(![2, 4, 8].contains(&c.unroll), || {
        format!("unroll {} is not 2, 4 or 8", c.unroll)
    })?;
    // Token tiles: 8, 16 or 32 tokens.
    illegal(![1, 2, 4].contains(&c.tokens8), || {
        format!("tokens8 {} is not 1, 2 or 4", c.tokens8)
    })?;
    // The split counts the reduction is written for.
    illegal(![1, 2, 4, 8, 16, 32].contains(&c.split_k), || {
        format!("split_k {} is not a power of two up to 32", c.split_k)
    })?;
    // Pipeline depth: 1 (wait for each chunk) or 2 (two register buffers).
    illegal(![1, 2].contains(&c.depth), || {
        format!("depth {} is not 1 or 2", c.depth)
    })?;
    // Registers: a chunk's loads are all live before its first mma, and at depth 2 the next
    // chunk's too; at most 160 of them (plus accumulators) keeps every variant under 255
    // registers without spills.
    illegal(c.buffer_registers() + c.frag() > 160, || {
        format!(
            "{} load registers and {} accumulators exceed 160",
            c.buffer_registers(),
            c.frag()
        )
    })?;
    // Pruning (keeps the space compilable in CI). Depth 1 with 8 blocks a chunk never won a
    // measurement (depth 2 at 4 blocks has as many bytes in flight, without the bursts).
    illegal(c.depth == 1 && c.unroll == 8, || {
        "unroll 8 at depth 1: depth 2 at unroll 4 covers it".to_string()
    })?;
    // Depth 1 at split 2 never won either (1 and 4 bracket it).
    illegal(c.depth == 1 && c.split_k == 2, || {
        "split_k 2 at depth 1: splits 1 and 4 bracket it".to_string()
    })?;
    // Splits of 16 and 32 serve small N, where a split is a few chunks per warp: latency
    // bound at any depth, so they stay depth 1.
    illegal(c.depth == 2 && c.split_k >= 16, || {
        format!("split_k {} at depth 2: a few chunks per warp", c.split_k)
    })?;
    // A cluster holds the split_k CTAs of a tile: 2 to 8 (portable cluster sizes); pruned to
    // depth 2 and 4 warps (the streaming half is the workspace variant's, which won the split
    // decode shapes at depth 2 and mostly with 4 warps).
    illegal(c.cluster && !(2..=8).contains(&c.split_k), || {
        format!("a cluster of split_k {} CTAs (2..=8)", c.split_k)
    })?;
    illegal(c.cluster && (c.depth != 2 || c.warps != 4), || {
        format!(
            "cluster split-K at depth {} with {} warps (depth 2, 4 warps only)",
            c.depth, c.warps
        )
    })?;
    // The cross-warp sum fits the opt-in shared memory.
    illegal(c.smem_bytes() > limits.max_dynamic_smem_per_block, || {
        format!(
            "{} B of shared memory exceed {}",
            c.smem_bytes(),
            limits.max_dynamic_smem_per_block
        )
    })?;
    // The last CTA of a tile reads at most 64 KiB of partials: deeper splits of wide tiles
    // serialise the reduction.
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

pub fn check_problem(p: &GemmBf16Problem, c: &StreamConfig) -> Result<(), Illegal> {
    // Every token has an n8 column (larger M goes to the tiled kernel).
    illegal(p.m > c.tile_m(), || {
        format!("m {} exceeds 8 * tokens8 = {}", p.m, c.tile_m())
    })?;
    // Every split gets at least one group of 4 K blocks (128 elements).
    illegal(k_groups(p) < c.split_k as u64, || {
        format!(
            "k {} has {} groups of {} for split_k {}",
            p.k,
            k_groups(p),
            SPLIT_GROUP * K_BLOCK as u64,
            c.split_k
        )
    })?;
    check_grid_and_workspace(tiles(p, c), workspace_floats(p, c))
}

pub fn entry(p: &GemmBf16Problem, c: &StreamConfig) -> String {
    format!(
        "kiln_gemm_bf16_stream_w{}_r{}_u{}_d{}_t{}_sk{}{}_a{}",
        c.warps,
        c.rows,
        c.unroll,
        c.depth,
        c.tokens8,
        c.split_k,
        if c.cluster { "c" } else { "" },
        if is_aligned(p) { 16 } else { 2 }
    )
}

pub fn render_vars(p: &GemmBf16Problem, c: &StreamConfig) -> RenderVars {
    let vars = json!({
        "stream": true,
        "ring": false,
        "wgmma": false,
        "entry": entry(p, c),
        "aligned": is_aligned(p),
        "use_split_k": c.split_k > 1,
        "cluster_k": c.cluster,
        "warps": c.warps,
        "threads": c.threads(),
        "min_blocks": 1,
        "rows": c.rows,
        "unroll": c.unroll,
        "depth": c.depth,
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

pub fn geometry(p: &GemmBf16Problem, c: &StreamConfig) -> LaunchGeometry {
    // A cluster config carries its shape in the cubin (`__cluster_dims__`), so it launches
    // like any other kernel (plain cuLaunchKernel) and reports no launch-time cluster.
    LaunchGeometry {
        grid: [tiles(p, c).min(i32::MAX as u64) as u32, 1, c.split_k],
        block: [c.threads(), 1, 1],
        dynamic_smem_bytes: c.smem_bytes(),
        cluster: [1, 1, 1],
    }
}

/// The stream config used when nothing is tuned (M <= [`MAX_M`]).
pub fn default_config(p: &GemmBf16Problem) -> StreamConfig {
    const SMS: u64 = 132;
    // Fewest token tiles that hold M; at 32 tokens, two row tiles per CTA halve the token
    // re-reads per weight byte.
    let tokens8 = tokens8_for(p.m);
    let mut c = StreamConfig {
        warps: 4,
        rows: if tokens8 == 4 { 2 } else { 1 },
        unroll: 4,
        tokens8,
        split_k: 1,
        depth: 1,
        cluster: false,
    };
    // Split K until there are >= 4 CTAs per SM (the block scheduler then evens the bytes
    // per SM out), while every split keeps a group of K blocks and the reduction its bounds.
    // Splits the space prunes (split 2 at depth 1) are skipped.
    for split in [2, 4, 8, 16, 32] {
        if tiles(p, &c) * c.split_k as u64 >= 4 * SMS {
            break;
        }
        let s = StreamConfig {
            split_k: split,
            ..c.clone()
        };
        if check_config(&s, &DeviceLimits::HOPPER).is_err() || check_problem(p, &s).is_err() {
            continue;
        }
        c = s;
    }
    c
}

/// Analytical time in microseconds. Weight bytes stream at up to 4 TB/s (the H200's copy
/// ceiling is 4.19), limited by the bytes each SM has in flight (~1 us loaded DRAM latency)
/// and by the busiest SM; tokens and the reduction add L1 and L2 work on the side.
pub fn estimate_us(p: &GemmBf16Problem, c: &StreamConfig, limits: &DeviceLimits) -> f64 {
    const DRAM_BPS: f64 = 4.0e12;
    // What one SM pulls at most: a little above its fair share of DRAM (4e12 / 132 = 30
    // GB/s), so the busiest SM sets the pace when CTAs spread unevenly. A guess to calibrate:
    // the tiled kernel's busiest SMs pulled 27-33 GB/s on the H200 decode shapes.
    const SM_BPS: f64 = 36e9;
    const LATENCY_S: f64 = 1.0e-6;
    const CLOCK_HZ: f64 = 1.75e9;
    let sms = limits.sms.max(1) as f64;
    let tiles = tiles(p, c) as f64;
    let split = c.split_k as f64;
    let ctas = tiles * split;
    let kb_split = blocks_per_split(p, c) as f64;
    let threads = c.threads() as f64;

    // Resident CTAs per SM: threads, registers, shared memory.
    let regs = (c.register_estimate() as f64).min(255.0);
    let per_sm = (2048.0 / threads)
        .floor()
        .min((65536.0 / (threads * regs)).floor())
        .min(((228.0 * 1024.0) / (c.smem_bytes() as f64 + 1024.0)).floor())
        .max(1.0);
    let ctas_per_sm = (ctas / sms).ceil(); // on the busiest SM
    let waves = (ctas_per_sm / per_sm).ceil();
    // Chunks a warp walks in turn (one DRAM round trip each at depth 1; at depth 2 the
    // next chunk's trip overlaps the current one), and the warps that get one.
    let chunks = (kb_split / (c.warps * c.unroll) as f64).ceil();
    let rounds = (chunks / c.depth as f64).ceil();
    let busy_warps = (kb_split / c.unroll as f64).ceil().min(c.warps as f64);
    // The unaligned branch gathers 2-byte elements, one block per round trip.
    let (scale, rounds) = if is_aligned(p) {
        (1.0, rounds)
    } else {
        (0.1, rounds * c.unroll as f64)
    };

    let rows = (p.n as f64).min(c.tile_n() as f64);
    let cta_bytes = rows * (kb_split * K_BLOCK as f64).min(p.k as f64) * 2.0;
    // Bytes in flight over time: a depth-1 warp has its chunk out for one round trip and
    // then nothing while its mma's run and the next loads start (about half a chunk on
    // average as the chunk drains); a depth-2 warp keeps one to two chunks out.
    let avg_chunks = if c.depth >= 2 { 1.5 } else { 0.5 };
    let inflight =
        per_sm.min(ctas_per_sm) * busy_warps * (c.unroll * c.rows) as f64 * 1024.0 * avg_chunks;
    let sm_bps = (inflight / LATENCY_S).min(SM_BPS) * scale;
    let weight_bytes = p.n as f64 * p.k as f64 * 2.0;
    let memory_s = (weight_bytes / (DRAM_BPS * scale)).max(ctas_per_sm * cta_bytes / sm_bps);
    let latency_s = waves * rounds * LATENCY_S;
    // SM work on the busiest SM, per K block and CTA: 2 * rows weight and tokens8 token load
    // instructions of 8 rows each (~8 L1 cycles), and 2 * rows * tokens8 mma's (~2 cycles
    // each per SM). It overlaps the stream.
    // Token loads of tiles past M are predicated off.
    let token_loads = tokens8_for(p.m).min(c.tokens8);
    let sm_cycles =
        (2 * c.rows + token_loads) as f64 * 8.0 / scale + (4 * c.rows * c.tokens8) as f64;
    let sm_s = ctas_per_sm * kb_split * sm_cycles / CLOCK_HZ;
    // Bubbles: at depth 1 every chunk after a warp's first waits a round trip with nothing
    // of the warp in flight, which other warps cover only in part (~1 us more measured).
    let fill_s = if c.depth >= 2 { 0.0 } else { LATENCY_S };
    let stream_s = memory_s.max(latency_s).max(sm_s) + fill_s;

    // Split-K: partials out and back through L2, one round trip per batch of outputs; in a
    // cluster, two cluster barriers and distributed shared-memory reads.
    let reduce_s = if c.cluster {
        0.4e-6
    } else if c.split_k > 1 {
        let batches = (c.outputs() as f64 / (threads * c.reduce_batch() as f64)).ceil();
        1.0e-6 + batches * 0.3e-6
    } else {
        0.0
    };
    let launch_s = 2.0e-6;
    (launch_s + stream_s + reduce_s) * 1e6
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // lane loops read as the hardware numbers lanes
mod tests {
    use super::*;

    fn prob(m: u32, n: u32, k: u32) -> GemmBf16Problem {
        GemmBf16Problem { m, n, k }
    }

    fn legal() -> Vec<StreamConfig> {
        space()
            .into_iter()
            .filter(|c| check_config(c, &DeviceLimits::HOPPER).is_ok())
            .collect()
    }

    #[test]
    fn space_is_pruned_to_a_compilable_size() {
        let l = legal();
        assert!(l.len() >= 100, "only {} legal stream configs", l.len());
        assert!(l.len() <= 250, "{} legal stream configs", l.len());
        for t in [1, 2, 4] {
            assert!(l.iter().any(|c| c.tokens8 == t && c.split_k == 32));
            assert!(l.iter().any(|c| c.tokens8 == t && c.split_k == 1));
        }
        assert!(l.iter().any(|c| c.rows == 4));
        assert!(l.iter().any(|c| c.cluster && c.split_k == 8));
        assert!(l.iter().all(|c| !c.cluster || (2..=8).contains(&c.split_k)));
        for d in [1, 2] {
            assert!(l
                .iter()
                .any(|c| c.depth == d && c.unroll == 2 && c.split_k == 1));
            assert!(l
                .iter()
                .any(|c| c.depth == d && c.unroll == 4 && c.split_k == 4));
        }
        // The measured winners of depth 1 keep a depth-2 twin where registers allow, among
        // them the M = 32 one (rows 2, unroll 2, 4 warps).
        assert!(l
            .iter()
            .any(|c| c.depth == 2 && c.tokens8 == 4 && c.rows == 2 && c.unroll == 2));
        assert!(l.iter().any(|c| c.depth == 2
            && c.tokens8 == 1
            && c.rows == 1
            && c.unroll == 4
            && c.warps == 8));
        for c in &l {
            assert!(c.register_estimate() <= 255, "{c:?}");
            assert!(c.reduce_batch() * c.split_k <= 32, "{c:?}");
            assert!(c.buffer_registers() + c.frag() <= 160, "{c:?}");
        }
        // Entry names tell every config apart.
        let p = prob(1, 2560, 7168);
        let names: std::collections::HashSet<String> = l.iter().map(|c| entry(&p, c)).collect();
        assert_eq!(names.len(), l.len());
    }

    #[test]
    fn configs_without_a_depth_are_depth_one() {
        let c: StreamConfig = serde_json::from_value(serde_json::json!({"warps": 4, "rows": 1,
            "unroll": 2, "tokens8": 1, "split_k": 4}))
        .unwrap();
        assert_eq!(c.depth, 1);
    }

    #[test]
    fn pipelining_ranks_above_waiting_for_large_weights() {
        let l = DeviceLimits::HOPPER;
        for (m, n, k) in [
            (1, 2560, 7168),
            (1, 16384, 2048),
            (1, 7168, 16384),
            (32, 7168, 16384),
            (32, 2560, 7168),
        ] {
            let p = prob(m, n, k);
            let best = |d: u32| {
                legal()
                    .into_iter()
                    .filter(|c| c.depth == d && worth_measuring(&p, c))
                    .filter(|c| check_problem(&p, c).is_ok())
                    .map(|c| estimate_us(&p, &c, &l))
                    .fold(f64::INFINITY, f64::min)
            };
            let (one, two) = (best(1), best(2));
            assert!(two < one, "{p:?}: depth 2 {two} us, depth 1 {one} us");
        }
    }

    #[test]
    fn fragment_slots_cover_every_output_once() {
        // The template's fragment_slot, written again: every (token, row) of a CTA maps to a
        // distinct (accumulator, lane) of the C fragments.
        for c in legal() {
            let mut seen = std::collections::HashSet::new();
            for o in 0..c.outputs() {
                let (row, token) = (o % c.tile_n(), o / c.tile_n());
                let lane = (row & 7) * 4 + ((token & 7) >> 1);
                let j = ((row >> 4) * c.tokens8 + (token >> 3)) * 4
                    + ((row >> 3) & 1) * 2
                    + (token & 1);
                assert!(j < c.frag() && lane < 32);
                assert!(seen.insert(j * 32 + lane));
            }
            assert_eq!(seen.len() as u32, c.frag() * 32);
        }
    }

    #[test]
    fn the_k_permutation_is_a_bijection_shared_by_both_operands() {
        // Lane (g, t), step s: A column 2t+i <- chunk element 4s+i, column 2t+8+i <- 4s+2+i;
        // B row k = 2t+i and 2t+8+i take the same elements. Chunk element j is K offset 8t+j.
        let mut hit = [0u32; 32];
        for s in 0..2 {
            for t in 0..4 {
                for i in 0..2 {
                    for (col, elem) in [(2 * t + i, 4 * s + i), (2 * t + 8 + i, 4 * s + 2 + i)] {
                        assert!(col < 16);
                        hit[8 * t + elem] += 1;
                    }
                }
            }
        }
        assert!(hit.iter().all(|&h| h == 1), "{hit:?}");
    }

    #[test]
    fn the_templates_register_assembly_computes_the_block_product() {
        // One 32-wide K block of 16 weight rows and 8 tokens, small integers (exact).
        let w: Vec<Vec<i64>> = (0..16)
            .map(|r| {
                (0..32)
                    .map(|k| ((r * 37 + k * 11) % 13) as i64 - 6)
                    .collect()
            })
            .collect();
        let x: Vec<Vec<i64>> = (0..8)
            .map(|n| {
                (0..32)
                    .map(|k| ((n * 17 + k * 5) % 11) as i64 - 5)
                    .collect()
            })
            .collect();
        // Lane (g, t) loads elements 8t..8t+8 of weight rows g, g+8 and token row g; word v of
        // a chunk is elements (2v, 2v+1). mma_block: step s takes words 2s and 2s+1, with
        // a = { w[g].word(2s), w[g+8].word(2s), w[g].word(2s+1), w[g+8].word(2s+1) },
        // b = { x[g].word(2s), x[g].word(2s+1) }.
        let word =
            |row: &Vec<i64>, t: usize, v: usize| [row[8 * t + 2 * v], row[8 * t + 2 * v + 1]];
        let mut d = [[0i64; 4]; 32];
        for s in 0..2 {
            let mut a = [[[0i64; 2]; 4]; 32];
            let mut b = [[[0i64; 2]; 2]; 32];
            for lane in 0..32 {
                let (g, t) = (lane / 4, lane % 4);
                a[lane] = [
                    word(&w[g], t, 2 * s),
                    word(&w[g + 8], t, 2 * s),
                    word(&w[g], t, 2 * s + 1),
                    word(&w[g + 8], t, 2 * s + 1),
                ];
                b[lane] = [word(&x[g], t, 2 * s), word(&x[g], t, 2 * s + 1)];
            }
            crate::families::mma_emulation::mma_m16n8k16(&a, &b, &mut d);
        }
        // c0, c1: weight row g, tokens 2t, 2t+1; c2, c3: row g+8.
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for i in 0..4 {
                let row = g + if i >= 2 { 8 } else { 0 };
                let token = 2 * t + (i & 1);
                let want: i64 = (0..32).map(|k| w[row][k] * x[token][k]).sum();
                assert_eq!(d[lane][i], want, "lane {lane} c{i}");
            }
        }
    }

    #[test]
    fn problems_outside_the_kernel_are_refused() {
        let c = StreamConfig {
            warps: 4,
            rows: 1,
            unroll: 4,
            tokens8: 1,
            split_k: 8,
            depth: 1,
            cluster: false,
        };
        assert!(check_problem(&prob(8, 48, 7168), &c).is_ok());
        assert!(check_problem(&prob(9, 48, 7168), &c).is_err());
        // 7 groups of 128 for 8 splits.
        assert!(check_problem(&prob(1, 48, 896), &c).is_err());
        assert!(check_problem(&prob(1, 48, 897), &c).is_ok());
        assert_eq!(blocks_per_split(&prob(1, 48, 897), &c), 4);
        assert_eq!(blocks_per_split(&prob(1, 48, 7168), &c), 28);
        assert_eq!(workspace_floats(&prob(1, 48, 7168), &c), 8 * 3 * 128);
        let g = geometry(&prob(1, 48, 7168), &c);
        assert_eq!(g.grid, [3, 1, 8]);
        assert_eq!(g.dynamic_smem_bytes, 4 * 4 * 32 * 4);
    }

    #[test]
    fn default_splits_small_grids_only() {
        let router = default_config(&prob(1, 48, 7168));
        assert_eq!((router.tokens8, router.split_k), (1, 32));
        assert_eq!(default_config(&prob(32, 48, 7168)).tokens8, 4);
        assert_eq!(default_config(&prob(1, 16384, 2048)).split_k, 1);
        assert_eq!(default_config(&prob(1, 128815, 7168)).split_k, 1);
        let qkv = default_config(&prob(1, 2560, 7168));
        assert!(tiles(&prob(1, 2560, 7168), &qkv) * qkv.split_k as u64 >= 4 * 132);
        assert_eq!(default_config(&prob(1, 48, 7)).split_k, 1);
    }
}
