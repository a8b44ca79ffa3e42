//! `gemm_bf16`: C[M,N] = A[M,K] · B[N,K]^T with BF16 operands, fp32 accumulation and BF16
//! output (round to nearest even). A is row-major (lda = K), B is a linear layer's weight,
//! row-major [N,K] (ldb = K), C is row-major (ldc = N).
//!
//! Two kernels share the family, its signature and its split-K scheme; a config names its
//! kernel (`{"kernel": "tiled", ...}` or `{"kernel": "stream", ...}`):
//!
//! * **tiled** (`templates/gemm_bf16.cu.tera`): an Ampere-style tensor-core GEMM, `mma.sync`
//!   m16n8k16, `ldmatrix.x4` from XOR-swizzled shared memory, a `cp.async` pipeline of
//!   `stages` K tiles, optional split-K with an in-kernel, deterministic reduction. Its
//!   header comment explains tiling, pipeline, swizzle and split-K. Any M.
//! * **stream** (`templates/gemm_bf16_stream.cu.tera`, [`stream`]): decode, M <= 32. Swap-AB
//!   `mma.sync` with weight rows as the m16 dimension and tokens as n8 tiles; the weight
//!   streams from global memory straight into registers (a K permutation makes one 16-byte
//!   load per lane and row fill the fragments), warps split K and reduce through shared
//!   memory, CTAs split K (grid.z) and reduce like the tiled kernel.
//!
//! The family's template is the two files in one text: `{% if stream %}` picks the kernel.
//!
//! # Launch contract
//!
//! Arguments, in order (see [`GemmBf16::args`]): `A, B, C, workspace, counters, M, N, K`.
//!
//! * Grid (tiled): `[tiles_m * tiles_n, 1, split_k]` with `tiles_m = ceil(M/bm)`, `tiles_n =
//!   ceil(N/bn)`. The kernel maps the linear `blockIdx.x` to a tile itself (grouped raster of
//!   [`GROUP_M`] tile rows) so `grid.y`'s 65535 limit never binds.
//!   Grid (stream): `[ceil(N / (16 * rows)), 1, split_k]`.
//! * `workspace` (fp32) holds `split_k` partial tiles per output tile (tiled: `bm * bn`
//!   floats each, stream: `16 * rows * 8 * tokens8`): [`GemmBf16::workspace_bytes`].
//!   It needs no initialisation and is only touched when `split_k > 1` (pass any pointer,
//!   even null, otherwise).
//! * `counters` (u32) is a separate array of [`counters_len`] entries, one per output tile,
//!   used only when `split_k > 1`. The caller zeroes it **once** when it allocates it; every
//!   launch leaves it zeroed again (the last CTA of each tile resets its counter), so
//!   back-to-back launches and CUDA-graph replays need no memset. Two launches that run
//!   concurrently must not share a workspace or counters.
//! * Alignment: the aligned branch (K % 8 == 0) issues 16-byte loads, so A and B must be
//!   16-byte aligned (any `cudaMalloc` pointer is); C must be 4-byte aligned when N is even.
//! * Index math: row offsets are 64-bit, per-dimension values are `int`; [`GemmBf16::supports`]
//!   keeps each of m, n, k at most 2^30 and each operand at most 2^36 elements.
//!
//! The generated source depends on the problem only through `aligned` (K % 8 == 0), so all
//! aligned problems share one cubin per config.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

pub mod stream;
pub use stream::StreamConfig;

/// The family.
pub struct GemmBf16;

/// One GEMM: C[m,n] = A[m,k] · B[n,k]^T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GemmBf16Problem {
    pub m: u32,
    pub n: u32,
    pub k: u32,
}

/// A point of the search space: a kernel and its parameters. Serialised with the kernel's
/// name as a tag, `{"kernel": "tiled", "bm": 128, ...}`, so artifacts say which one they hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum GemmBf16Config {
    Tiled(TiledConfig),
    Stream(StreamConfig),
}

impl GemmBf16Config {
    pub fn threads(&self) -> u32 {
        match self {
            GemmBf16Config::Tiled(c) => c.threads(),
            GemmBf16Config::Stream(c) => c.threads(),
        }
    }
    /// K slices reduced in-kernel (grid.z).
    pub fn split_k(&self) -> u32 {
        match self {
            GemmBf16Config::Tiled(c) => c.split_k,
            GemmBf16Config::Stream(c) => c.split_k,
        }
    }
}

/// The tiled kernel's parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TiledConfig {
    /// CTA tile rows (M).
    pub bm: u32,
    /// CTA tile columns (N).
    pub bn: u32,
    /// K depth of one pipeline stage.
    pub bk: u32,
    pub warps_m: u32,
    pub warps_n: u32,
    /// Shared-memory pipeline stages.
    pub stages: u32,
    /// K slices reduced in-kernel (grid.z).
    pub split_k: u32,
}

/// Tile rows walked together by the grouped raster (L2 reuse of B across them).
pub const GROUP_M: u32 = 8;

/// Largest split-K workspace a config may ask for.
pub const MAX_WORKSPACE_BYTES: usize = 256 << 20;

/// The naive reference kernel (plain CUDA, no template variables).
pub const REFERENCE_SOURCE: &str = include_str!("../../../templates/gemm_bf16_ref.cu");
/// Its entry point: `(const bf16* A, const bf16* B, bf16* C, int M, int N, int K)`.
pub const REFERENCE_ENTRY: &str = "kiln_gemm_bf16_ref";

const REFERENCE_THREADS: u32 = 256;

/// Launch geometry of [`REFERENCE_ENTRY`]: one thread per output (grid-stride past 2^31 - 1
/// blocks, which supported problems never reach).
pub fn reference_geometry(m: u32, n: u32) -> LaunchGeometry {
    let outputs = m as u64 * n as u64;
    let blocks = outputs
        .div_ceil(REFERENCE_THREADS as u64)
        .clamp(1, i32::MAX as u64) as u32;
    LaunchGeometry {
        grid: [blocks, 1, 1],
        block: [REFERENCE_THREADS, 1, 1],
        dynamic_smem_bytes: 0,
        cluster: [1, 1, 1],
    }
}

/// CPU reference: `a` is m x k, `b` is n x k (row-major, values already rounded to bf16),
/// the result m x n accumulated in f64.
pub fn reference_cpu(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "a must hold m*k values");
    assert_eq!(b.len(), n * k, "b must hold n*k values");
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        let ar = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let br = &b[j * k..(j + 1) * k];
            c[i * n + j] = ar.iter().zip(br).map(|(&x, &y)| x as f64 * y as f64).sum();
        }
    }
    c
}

/// Entries of the u32 `counters` array a launch needs (0 without split-K): one per output tile.
pub fn counters_len(problem: &GemmBf16Problem, config: &GemmBf16Config) -> usize {
    match config {
        GemmBf16Config::Tiled(c) if c.split_k > 1 => tiles(problem, c) as usize,
        GemmBf16Config::Stream(c) if c.split_k > 1 => stream::tiles(problem, c) as usize,
        _ => 0,
    }
}

/// Whether a problem takes the 16-byte (cp.async) branch of the template.
pub fn is_aligned(problem: &GemmBf16Problem) -> bool {
    problem.k.is_multiple_of(8)
}

fn tiles(p: &GemmBf16Problem, c: &TiledConfig) -> u64 {
    (p.m as u64).div_ceil(c.bm as u64) * (p.n as u64).div_ceil(c.bn as u64)
}

fn k_tiles(p: &GemmBf16Problem, c: &TiledConfig) -> u64 {
    (p.k as u64).div_ceil(c.bk as u64)
}

fn tiled_workspace_floats(p: &GemmBf16Problem, c: &TiledConfig) -> u64 {
    if c.split_k > 1 {
        c.split_k as u64 * tiles(p, c) * c.bm as u64 * c.bn as u64
    } else {
        0
    }
}

fn workspace_floats(p: &GemmBf16Problem, c: &GemmBf16Config) -> u64 {
    match c {
        GemmBf16Config::Tiled(c) => tiled_workspace_floats(p, c),
        GemmBf16Config::Stream(c) => stream::workspace_floats(p, c),
    }
}

impl TiledConfig {
    pub fn threads(&self) -> u32 {
        32 * self.warps_m * self.warps_n
    }
    /// Rows of C one warp owns.
    pub fn warp_tile_m(&self) -> u32 {
        self.bm / self.warps_m
    }
    /// Columns of C one warp owns.
    pub fn warp_tile_n(&self) -> u32 {
        self.bn / self.warps_n
    }
    /// fp32 accumulators per thread.
    pub fn acc_per_thread(&self) -> u32 {
        self.warp_tile_m() * self.warp_tile_n() / 32
    }
    /// Dynamic shared memory: `stages` A and B tiles of bf16.
    pub fn smem_bytes(&self) -> u32 {
        self.stages * (self.bm + self.bn) * self.bk * 2
    }
}

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

/// Largest u32 value any dimension may take (keeps `int` index math in the kernel exact).
const MAX_DIM: u32 = 1 << 30;
/// Largest operand, in elements (2^36 bf16 = 128 GiB: no single GPU holds more).
const MAX_OPERAND: u64 = 1 << 36;

/// The tiled kernel's rules, rendering and estimate (the family dispatches to them).
struct Tiled;

impl Tiled {
    fn space() -> Vec<TiledConfig> {
        let mut out = Vec::new();
        for bm in [16, 32, 64, 128, 256] {
            for bn in [64, 128, 256] {
                for bk in [32, 64] {
                    for warps_m in [1, 2, 4] {
                        for warps_n in [1, 2, 4] {
                            for stages in [3, 4, 5] {
                                for split_k in [1, 2, 4, 8, 16] {
                                    out.push(TiledConfig {
                                        bm,
                                        bn,
                                        bk,
                                        warps_m,
                                        warps_n,
                                        stages,
                                        split_k,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn check_config(c: &TiledConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        let (wtm, wtn) = (c.warp_tile_m(), c.warp_tile_n());
        let threads = c.threads();
        // Warps split the tile evenly.
        illegal(!c.bm.is_multiple_of(c.warps_m) || !c.bn.is_multiple_of(c.warps_n), || {
            format!(
                "{}x{} tile over {}x{} warps",
                c.bm, c.bn, c.warps_m, c.warps_n
            )
        })?;
        // A warp's rows are whole m16 mma tiles (ldmatrix.x4 reads 16 rows of A).
        illegal(wtm % 16 != 0, || {
            format!("warp tile m {wtm} is not a multiple of 16")
        })?;
        // A warp's columns are pairs of n8 tiles (ldmatrix.x4 reads 16 rows of B).
        illegal(wtn % 16 != 0, || {
            format!("warp tile n {wtn} is not a multiple of 16")
        })?;
        // Swizzle: a row is 4 or 8 16-byte chunks (bk 32 or 64), so a k-step only flips chunk bits.
        illegal(c.bk != 32 && c.bk != 64, || {
            format!("bk {} is not 32 or 64", c.bk)
        })?;
        // Loader: THREADS/8 must be a multiple of 8 lines (64 threads at least); 256 keeps 255 registers.
        illegal(!(64..=256).contains(&threads), || {
            format!("{threads} threads is outside 64..=256")
        })?;
        illegal(threads > limits.max_threads_per_block, || {
            format!(
                "{threads} threads exceed the device's {}",
                limits.max_threads_per_block
            )
        })?;
        // Shared memory of all stages fits the opt-in limit.
        illegal(c.smem_bytes() > limits.max_dynamic_smem_per_block, || {
            format!(
                "{} B of shared memory exceed {}",
                c.smem_bytes(),
                limits.max_dynamic_smem_per_block
            )
        })?;
        // Register pressure: at most 128 fp32 accumulators per thread (a 64x64 warp tile).
        illegal(c.acc_per_thread() > 128, || {
            format!("{} accumulators per thread exceed 128", c.acc_per_thread())
        })?;
        // Two-warp CTAs carry at most 64 accumulators: with 128 the loader's 16 chunks per
        // operand push the unaligned branch past 255 registers.
        illegal(threads == 64 && c.acc_per_thread() > 64, || {
            format!("64 threads with {} accumulators each", c.acc_per_thread())
        })?;
        // Warp tiles above 64 in either dimension need more accumulators than registers allow.
        illegal(wtm > 64 || wtn > 64, || {
            format!("warp tile {wtm}x{wtn} exceeds 64 in a dimension")
        })?;
        // Thin warp tiles starve the tensor cores on ldmatrix traffic: at least 32 columns, and
        // at least 32 rows unless the whole CTA tile is 16 rows.
        illegal(wtn < 32 || wtm < c.bm.min(32), || {
            format!("warp tile {wtm}x{wtn} is too thin")
        })?;
        // ... and at least 32 accumulators (a 16x64 or 32x32 warp tile).
        illegal(c.acc_per_thread() < 32, || {
            format!("{} accumulators per thread are too few", c.acc_per_thread())
        })?;
        // Tiles of 128x128 and more use warp tiles of at least 64x32 (64 accumulators).
        illegal(c.bm * c.bn >= 128 * 128 && c.acc_per_thread() < 64, || {
            "large tile with small warp tiles".to_string()
        })?;
        // Tall tiles (rows > 2 x columns) re-read B more than A saves; the transposed tile is in the space.
        illegal(c.bm > 2 * c.bn, || {
            format!("{}x{} tile is too tall", c.bm, c.bn)
        })?;
        // 128 to 256 K elements in flight: enough to hide latency, no deeper than shared memory pays.
        illegal(!(128..=256).contains(&(c.stages * c.bk)), || {
            format!("{} stages of bk {} is not 128..=256 deep", c.stages, c.bk)
        })?;
        // Tiles under 128 rows serve small M, which is memory bound: deep bk 64 stages.
        illegal(c.bm < 128 && c.bk != 64, || {
            format!("bm {} needs bk 64", c.bm)
        })?;
        // Split-K is for small M (few tiles): one warp row and at most 128 columns per tile.
        illegal(c.split_k > 1 && (c.warps_m != 1 || c.bn > 128), || {
            format!("split_k {} needs warps_m 1 and bn <= 128", c.split_k)
        })?;
        // The split counts the reduction is written for.
        illegal(![1, 2, 4, 8, 16].contains(&c.split_k), || {
            format!("split_k {} is not 1, 2, 4, 8 or 16", c.split_k)
        })?;
        Ok(())
    }

    fn check_problem(p: &GemmBf16Problem, c: &TiledConfig) -> Result<(), Illegal> {
        // Every split gets at least one bk block of K.
        illegal(k_tiles(p, c) < c.split_k as u64, || {
            format!(
                "k {} has {} blocks of {} for split_k {}",
                p.k,
                k_tiles(p, c),
                c.bk,
                c.split_k
            )
        })?;
        // grid.x holds every tile.
        illegal(tiles(p, c) > i32::MAX as u64, || {
            format!("{} tiles exceed grid.x", tiles(p, c))
        })?;
        // The fp32 partials stay a modest scratch buffer.
        let ws = tiled_workspace_floats(p, c) * 4;
        illegal(ws > MAX_WORKSPACE_BYTES as u64, || {
            format!("split-K workspace of {ws} B exceeds {MAX_WORKSPACE_BYTES}")
        })?;
        Ok(())
    }

    fn render_vars(p: &GemmBf16Problem, c: &TiledConfig) -> RenderVars {
        let threads = c.threads();
        let chunks_per_row = c.bk / 8;
        let vars = json!({
            "stream": false,
            "entry": Self::entry(p, c),
            "aligned": is_aligned(p),
            "use_split_k": c.split_k > 1,
            "bm": c.bm,
            "bn": c.bn,
            "bk": c.bk,
            "warps_m": c.warps_m,
            "warps_n": c.warps_n,
            "threads": threads,
            "min_blocks": 1,
            "stages": c.stages,
            "split_k": c.split_k,
            "warp_tile_m": c.warp_tile_m(),
            "warp_tile_n": c.warp_tile_n(),
            "mma_tiles_m": c.warp_tile_m() / 16,
            "mma_tiles_n": c.warp_tile_n() / 8,
            "k_steps": c.bk / 16,
            "chunks_per_row": chunks_per_row,
            "a_load_iters": (c.bm * chunks_per_row).div_ceil(threads),
            "b_load_iters": (c.bn * chunks_per_row).div_ceil(threads),
            "rows_per_load_iter": threads / chunks_per_row,
            "a_stage_bytes": c.bm * c.bk * 2,
            "b_stage_bytes": c.bn * c.bk * 2,
            "group_m": GROUP_M,
        });
        match vars {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal"),
        }
    }

    fn entry(p: &GemmBf16Problem, c: &TiledConfig) -> String {
        format!(
            "kiln_gemm_bf16_bm{}_bn{}_bk{}_wm{}_wn{}_s{}_sk{}_a{}",
            c.bm,
            c.bn,
            c.bk,
            c.warps_m,
            c.warps_n,
            c.stages,
            c.split_k,
            if is_aligned(p) { 16 } else { 2 }
        )
    }

    fn geometry(p: &GemmBf16Problem, c: &TiledConfig) -> LaunchGeometry {
        LaunchGeometry {
            grid: [tiles(p, c).min(i32::MAX as u64) as u32, 1, c.split_k],
            block: [c.threads(), 1, 1],
            dynamic_smem_bytes: c.smem_bytes(),
            cluster: [1, 1, 1],
        }
    }

    /// The family uses it for M > 32 (stream below); its small-M arms stay the tiled
    /// kernel's best guesses there.
    fn default_config(p: &GemmBf16Problem) -> TiledConfig {
        const SMS: u64 = 132;
        let cfg = |bm, bn, bk, warps_m, warps_n, stages| TiledConfig {
            bm,
            bn,
            bk,
            warps_m,
            warps_n,
            stages,
            split_k: 1,
        };
        // Small M is memory bound: one warp row, deep bk-64 stages. Large problems: 128x128 tiles
        // with the 64x64 warp tile mma.sync likes best, once they fill both CTA slots of every SM.
        // In between: 64x128 tiles with 64x32 warp tiles (and split-K below when few).
        let large = cfg(128, 128, 64, 2, 2, 3);
        let mut c = if p.n <= 64 && p.m <= 32 {
            // Narrow outputs (a router): 64-column tiles waste less of the tile.
            cfg(32, 64, 64, 1, 2, 4)
        } else if p.n <= 64 && p.m <= 256 {
            cfg(64, 64, 64, 1, 2, 3)
        } else if p.m <= 16 {
            cfg(16, 128, 64, 1, 2, 4)
        } else if p.m <= 32 {
            cfg(32, 128, 64, 1, 4, 4)
        } else if p.m > 64 && tiles(p, &large) >= 2 * SMS {
            large
        } else {
            cfg(64, 128, 64, 1, 4, 3)
        };
        // Too few tiles for the SMs: split K (skinny configs only), keeping >= 4 K blocks per
        // split so the pipeline fills, and the workspace within bounds.
        if c.warps_m == 1 {
            for split in [16, 8, 4, 2] {
                let s = TiledConfig {
                    split_k: split,
                    ..c.clone()
                };
                if tiles(p, &s) * split as u64 <= 2 * SMS
                    && k_tiles(p, &s) >= 4 * split as u64
                    && Self::check_problem(p, &s).is_ok()
                {
                    c = s;
                    break;
                }
            }
        }
        c
    }

    fn estimate_us(p: &GemmBf16Problem, c: &TiledConfig, limits: &DeviceLimits) -> f64 {
        let tiles_m = (p.m as u64).div_ceil(c.bm as u64) as f64;
        let tiles_n = (p.n as u64).div_ceil(c.bn as u64) as f64;
        let kt = k_tiles(p, c) as f64;
        let split = c.split_k as f64;
        let threads = c.threads() as f64;
        let sms = limits.sms.max(1) as f64;

        // Resident CTAs per SM: shared memory (228 KiB per SM, 1 KiB reserved per CTA),
        // threads (2048) and registers (64 Ki; estimate accumulators + 64 per thread).
        let smem_fit = ((228.0 * 1024.0) / (c.smem_bytes() as f64 + 1024.0)).floor();
        let thread_fit = (2048.0 / threads).floor();
        let regs = (c.acc_per_thread() as f64 + 64.0).min(255.0);
        let reg_fit = (65536.0 / (threads * regs)).floor();
        let per_sm = smem_fit.min(thread_fit).min(reg_fit).max(1.0);
        let ctas = tiles_m * tiles_n * split;
        let slots = sms * per_sm;
        let waves = (ctas / slots).ceil();

        // Tensor-core time: padded tile work, quantised to whole waves. mma.sync reaches
        // ~430 TFLOP/s on an H200 with 64x64 warp tiles (its pipe peak is ~600) and less
        // with smaller ones.
        let warp_tile = (c.warp_tile_m() * c.warp_tile_n()) as f64 / (64.0 * 64.0);
        let warps_per_sm = (per_sm * threads / 32.0).min(16.0);
        // Each K tile costs a barrier and a pipeline bubble: deeper bk amortises it.
        let per_tile = c.bk as f64 / (c.bk as f64 + 8.0);
        let efficiency = (0.45 + 0.55 * warp_tile) * (warps_per_sm / 8.0).min(1.0) * per_tile;
        let cta_flops = 2.0 * c.bm as f64 * c.bn as f64 * (kt / split).ceil() * c.bk as f64;
        // The unaligned branch gathers with 2-byte loads: ~0.3x the tensor rate and ~0.4x the
        // streaming rate of the cp.async branch on H200 measurements.
        let (compute_scale, memory_scale) = if is_aligned(p) {
            (1.0, 1.0)
        } else {
            (0.3, 0.4)
        };
        let compute_s = waves * slots * cta_flops / (efficiency * compute_scale * 480e12);

        // DRAM bytes: A once per launch (a group's rows stay in L2), B once per group of
        // GROUP_M tile rows, C once, split-K partials written and read back once; ~4 TB/s
        // (measured streaming rate of this kernel on an H200).
        let k = p.k as f64;
        let a_bytes = tiles_m * c.bm as f64 * k * 2.0;
        let b_bytes = tiles_n * c.bn as f64 * k * 2.0 * (tiles_m / GROUP_M as f64).ceil();
        let c_bytes = p.m as f64 * p.n as f64 * 2.0;
        let ws_bytes = 2.0 * tiled_workspace_floats(p, c) as f64 * 4.0;
        let memory_s = (a_bytes + b_bytes + c_bytes + ws_bytes) / (memory_scale * 4.0e12);

        // Latency: each CTA walks its K slice serially, ~0.8 us per DRAM round trip with
        // stages-1 tiles in flight.
        let latency_s = waves * (kt / split).ceil() * 0.8e-6 / (c.stages as f64 - 1.0);

        let launch_s = 3e-6 + if c.split_k > 1 { 1e-6 } else { 0.0 };
        (compute_s.max(memory_s).max(latency_s) + launch_s) * 1e6
    }
}

impl Family for GemmBf16 {
    type Problem = GemmBf16Problem;
    type Config = GemmBf16Config;

    const NAME: &'static str = "gemm_bf16";
    /// Both kernels' templates in one text; the `stream` variable picks one.
    const TEMPLATE: &'static str = concat!(
        "{% if stream %}",
        include_str!("../../../templates/gemm_bf16_stream.cu.tera"),
        "{% else %}",
        include_str!("../../../templates/gemm_bf16.cu.tera"),
        "{% endif %}"
    );

    /// The tiled space, then the stream space.
    fn space() -> Vec<GemmBf16Config> {
        let tiled = Tiled::space().into_iter().map(GemmBf16Config::Tiled);
        let stream = stream::space().into_iter().map(GemmBf16Config::Stream);
        tiled.chain(stream).collect()
    }

    fn check_config(c: &GemmBf16Config, limits: &DeviceLimits) -> Result<(), Illegal> {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::check_config(c, limits),
            GemmBf16Config::Stream(c) => stream::check_config(c, limits),
        }
    }

    fn check_problem(p: &GemmBf16Problem, c: &GemmBf16Config) -> Result<(), Illegal> {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::check_problem(p, c),
            GemmBf16Config::Stream(c) => stream::check_problem(p, c),
        }
    }

    fn render_vars(p: &GemmBf16Problem, c: &GemmBf16Config) -> RenderVars {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::render_vars(p, c),
            GemmBf16Config::Stream(c) => stream::render_vars(p, c),
        }
    }

    fn entry(p: &GemmBf16Problem, c: &GemmBf16Config) -> String {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::entry(p, c),
            GemmBf16Config::Stream(c) => stream::entry(p, c),
        }
    }

    fn geometry(p: &GemmBf16Problem, c: &GemmBf16Config) -> LaunchGeometry {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::geometry(p, c),
            GemmBf16Config::Stream(c) => stream::geometry(p, c),
        }
    }

    /// Decode (M <= 32) streams the weight; anything larger is tiled.
    fn default_config(p: &GemmBf16Problem) -> GemmBf16Config {
        if p.m <= stream::MAX_M {
            GemmBf16Config::Stream(stream::default_config(p))
        } else {
            GemmBf16Config::Tiled(Tiled::default_config(p))
        }
    }

    fn estimate_us(p: &GemmBf16Problem, c: &GemmBf16Config, limits: &DeviceLimits) -> f64 {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::estimate_us(p, c, limits),
            GemmBf16Config::Stream(c) => stream::estimate_us(p, c, limits),
        }
    }

    /// Legal configs that serve `problem`, less stream configs with a wider token tile than
    /// M needs (legal, and useful to dispatch, but never faster than the tightest one).
    fn candidates(problem: &GemmBf16Problem, limits: &DeviceLimits) -> Vec<GemmBf16Config> {
        Self::legal_space(limits)
            .into_iter()
            .filter(|c| Self::check_problem(problem, c).is_ok())
            .filter(|c| match c {
                GemmBf16Config::Stream(s) => stream::worth_measuring(problem, s),
                GemmBf16Config::Tiled(_) => true,
            })
            .collect()
    }

    fn supports(p: &GemmBf16Problem) -> Result<(), Unsupported> {
        let no = |reason: String| Unsupported {
            family: Self::NAME,
            problem: format!("{p:?}"),
            reason,
        };
        if p.m == 0 || p.n == 0 || p.k == 0 {
            return Err(no("m, n and k must be at least 1".into()));
        }
        if p.m > MAX_DIM || p.n > MAX_DIM || p.k > MAX_DIM {
            return Err(no(
                "m, n and k must be at most 2^30 (the kernel indexes with int)".into(),
            ));
        }
        let (m, n, k) = (p.m as u64, p.n as u64, p.k as u64);
        if m * k > MAX_OPERAND || n * k > MAX_OPERAND || m * n > MAX_OPERAND {
            return Err(no(
                "an operand exceeds 2^36 elements (128 GiB of bf16)".into()
            ));
        }
        Ok(())
    }

    fn args() -> Vec<KernelArg> {
        vec![
            KernelArg {
                name: "A",
                c_type: "const __nv_bfloat16*",
            },
            KernelArg {
                name: "B",
                c_type: "const __nv_bfloat16*",
            },
            KernelArg {
                name: "C",
                c_type: "__nv_bfloat16*",
            },
            KernelArg {
                name: "workspace",
                c_type: "float*",
            },
            KernelArg {
                name: "counters",
                c_type: "unsigned int*",
            },
            KernelArg {
                name: "M",
                c_type: "int",
            },
            KernelArg {
                name: "N",
                c_type: "int",
            },
            KernelArg {
                name: "K",
                c_type: "int",
            },
        ]
    }

    /// The fp32 partials only; the u32 counters are a separate array of [`counters_len`].
    fn workspace_bytes(p: &GemmBf16Problem, c: &GemmBf16Config) -> usize {
        (workspace_floats(p, c) * 4) as usize
    }

    /// Split-K needs both: fp32 partials (no init) and per-tile counters
    /// (zeroed once; every launch leaves them zero).
    fn scratch(p: &GemmBf16Problem, c: &GemmBf16Config) -> Vec<Scratch> {
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

    /// A config tuned for the same N and K serves any M; the nearest M at or
    /// above the wanted one is preferred (its tiles and split cover the rows),
    /// then the nearest below.
    fn bucket_distance(tuned: &GemmBf16Problem, wanted: &GemmBf16Problem) -> Option<f64> {
        if tuned.n != wanted.n || tuned.k != wanted.k || is_aligned(tuned) != is_aligned(wanted) {
            return None;
        }
        let (t, w) = (tuned.m as f64, wanted.m as f64);
        Some(if t >= w {
            t / w - 1.0
        } else {
            1e6 * (w / t - 1.0)
        })
    }

    fn flops(p: &GemmBf16Problem) -> f64 {
        2.0 * p.m as f64 * p.n as f64 * p.k as f64
    }

    fn min_bytes(p: &GemmBf16Problem) -> f64 {
        let (m, n, k) = (p.m as f64, p.n as f64, p.k as f64);
        2.0 * (m * k + n * k + m * n)
    }

    /// One aligned and one unaligned problem. Both are small enough in M for every stream
    /// config and deep enough in K for every split of both kernels, so each legal config
    /// renders both branches (the other branches are config-driven: split-K, token tiles).
    fn branch_problems() -> Vec<GemmBf16Problem> {
        vec![
            GemmBf16Problem {
                m: 8,
                n: 136,
                k: 4096,
            },
            GemmBf16Problem {
                m: 7,
                n: 75,
                k: 4103,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    fn limits() -> DeviceLimits {
        DeviceLimits::HOPPER
    }

    fn prob(m: u32, n: u32, k: u32) -> GemmBf16Problem {
        GemmBf16Problem { m, n, k }
    }

    fn tiled(c: &GemmBf16Config) -> &TiledConfig {
        match c {
            GemmBf16Config::Tiled(t) => t,
            other => panic!("expected a tiled config, got {other:?}"),
        }
    }

    fn legal_tiled() -> Vec<TiledConfig> {
        GemmBf16::legal_space(&limits())
            .iter()
            .filter_map(|c| match c {
                GemmBf16Config::Tiled(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn legal_stream() -> Vec<StreamConfig> {
        GemmBf16::legal_space(&limits())
            .iter()
            .filter_map(|c| match c {
                GemmBf16Config::Stream(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Names the template reads (`{{ name }}` and `{% if name %}`), by kernel: the branches
    /// of the top-level `{% if stream %}` are "stream" and "tiled"; the rest is "common".
    fn template_names() -> BTreeMap<&'static str, BTreeSet<String>> {
        let t = GemmBf16::TEMPLATE;
        let mut names: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        // Open ifs: (is the top-level stream if, in its else branch).
        let mut stack: Vec<(bool, bool)> = Vec::new();
        let mut section = "common";
        let mut rest = t;
        loop {
            let next = ["{{", "{%"]
                .iter()
                .filter_map(|o| rest.find(o).map(|i| (i, *o)))
                .min();
            let Some((i, open)) = next else { break };
            let close = if open == "{{" { "}}" } else { "%}" };
            let after = &rest[i + open.len()..];
            let j = after.find(close).expect("unclosed tera tag");
            let words: Vec<&str> = after[..j].split_whitespace().collect();
            match words.as_slice() {
                [name] if open == "{{" => {
                    names.entry(section).or_default().insert(name.to_string());
                }
                ["if", name] => {
                    let top = stack.is_empty() && *name == "stream";
                    if top {
                        section = "stream";
                    }
                    names.entry("common").or_default().insert(name.to_string());
                    if !top {
                        names.entry(section).or_default().insert(name.to_string());
                    }
                    stack.push((top, false));
                }
                ["else"] => {
                    let top = stack.last_mut().expect("else without if");
                    top.1 = true;
                    if top.0 {
                        section = "tiled";
                    }
                }
                ["endif"] => {
                    let (top, _) = stack.pop().expect("endif without if");
                    if top {
                        section = "common";
                    }
                }
                other => panic!("template tag {other:?} is more than a name or an if"),
            }
            rest = &after[j + close.len()..];
        }
        assert!(stack.is_empty(), "unclosed if");
        names
    }

    #[test]
    fn legal_space_is_large_enough_and_small_enough() {
        let tiled = legal_tiled();
        assert!(
            tiled.len() >= 20,
            "only {} legal tiled configs",
            tiled.len()
        );
        assert!(
            tiled.len() <= 150,
            "{} legal tiled configs: too many to compile in CI",
            tiled.len()
        );
        assert!(tiled.iter().any(|c| c.split_k == 16));
        assert!(tiled.iter().any(|c| c.bm == 16));
        assert!(tiled.iter().any(|c| c.bm == 256));
        let stream = legal_stream();
        assert!(
            stream.len() >= 100,
            "only {} legal stream configs",
            stream.len()
        );
        assert!(
            stream.len() <= 250,
            "{} legal stream configs: too many to compile in CI",
            stream.len()
        );
        for t in [1, 2, 4] {
            assert!(stream.iter().any(|c| c.tokens8 == t));
        }
        assert_eq!(
            GemmBf16::legal_space(&limits()).len(),
            tiled.len() + stream.len()
        );
    }

    #[test]
    fn configs_say_which_kernel_they_are() {
        let t: GemmBf16Config = serde_json::from_value(json!({"kernel": "tiled", "bm": 16,
            "bn": 128, "bk": 64, "warps_m": 1, "warps_n": 2, "stages": 4, "split_k": 4}))
        .unwrap();
        assert_eq!(tiled(&t).bn, 128);
        let s = GemmBf16Config::Stream(StreamConfig {
            warps: 4,
            rows: 1,
            unroll: 4,
            tokens8: 1,
            split_k: 8,
            depth: 1,
        });
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kernel"], "stream");
        assert_eq!(v["unroll"], 4);
        assert_eq!(serde_json::from_value::<GemmBf16Config>(v).unwrap(), s);
        // Untagged (pre-stream) configs no longer parse: dispatch falls back to the default.
        assert!(
            serde_json::from_value::<GemmBf16Config>(json!({"bm": 16, "bn": 128, "bk": 64,
            "warps_m": 1, "warps_n": 2, "stages": 4, "split_k": 4}))
            .is_err()
        );
    }

    #[test]
    fn legal_configs_have_sane_geometry() {
        let l = limits();
        for c in GemmBf16::legal_space(&l) {
            for p in [prob(1, 1, 1), prob(4096, 4096, 4096), prob(7, 75, 77)] {
                let g = GemmBf16::geometry(&p, &c);
                assert_eq!(g.block, [c.threads(), 1, 1]);
                assert!(g.threads_per_block() <= l.max_threads_per_block);
                assert!(g.dynamic_smem_bytes <= l.max_dynamic_smem_per_block);
                assert_eq!(g.grid[2], c.split_k());
                assert_eq!(g.cluster, [1, 1, 1]);
                match &c {
                    GemmBf16Config::Tiled(c) => {
                        assert!(
                            g.dynamic_smem_bytes >= 4,
                            "split-K flag lives in shared memory"
                        );
                        assert_eq!(g.grid[0] as u64, tiles(&p, c));
                        // Loader mapping the template asserts.
                        assert_eq!((c.threads() / (c.bk / 8)) * (c.bk / 8), c.threads());
                        assert_eq!((c.threads() / 8) % 8, 0);
                        assert_eq!((c.warp_tile_n() / 8) % 2, 0);
                    }
                    GemmBf16Config::Stream(c) => {
                        assert_eq!(g.grid[0] as u64, p.n.div_ceil(16 * c.rows) as u64);
                        assert_eq!(g.dynamic_smem_bytes, c.warps * c.frag() * 128);
                    }
                }
            }
        }
    }

    #[test]
    fn default_config_is_legal_for_many_problems() {
        let l = limits();
        let dims = [
            1u32, 2, 7, 8, 15, 16, 17, 31, 48, 64, 65, 127, 128, 129, 255, 256, 1000, 2048, 7168,
            36864, 128815,
        ];
        let ks = [
            1u32, 7, 8, 9, 63, 64, 77, 1024, 2048, 7167, 7168, 16384, 18432,
        ];
        for &m in &dims {
            for &n in &dims {
                for &k in &ks {
                    let p = prob(m, n, k);
                    if GemmBf16::supports(&p).is_err() {
                        continue;
                    }
                    let c = GemmBf16::default_config(&p);
                    GemmBf16::check_config(&c, &l)
                        .unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                    GemmBf16::check_problem(&p, &c)
                        .unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                    // Decode streams the weight.
                    assert_eq!(
                        matches!(c, GemmBf16Config::Stream(_)),
                        m <= stream::MAX_M,
                        "{p:?} -> {c:?}"
                    );
                }
            }
        }
        assert_eq!(GemmBf16::default_config(&prob(1, 48, 7)).split_k(), 1);
        // Decode router shape: three row tiles, so split K.
        assert!(GemmBf16::default_config(&prob(16, 48, 7168)).split_k() > 1);
        assert_eq!(
            tiled(&GemmBf16::default_config(&prob(2048, 36864, 7168))).bm,
            128
        );
    }

    #[test]
    fn default_config_is_legal_for_every_m_up_to_300() {
        let l = limits();
        for (n, k) in [
            (48, 7168),
            (2560, 7168),
            (16384, 2048),
            (7168, 16384),
            (128815, 7168),
            (75, 7),
            (4096, 7167),
            (1, 1),
        ] {
            for m in 1..=300 {
                let p = prob(m, n, k);
                let c = GemmBf16::default_config(&p);
                GemmBf16::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                GemmBf16::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
            }
        }
    }

    #[test]
    fn extreme_supported_problems_have_a_default() {
        for p in [
            prob(1 << 30, 64, 64),
            prob(64, 1 << 30, 64),
            prob(1, 1 << 30, 64),
            prob(1, 1, 1 << 30),
            prob(32, 1, 1 << 30),
            prob(1 << 18, 1 << 18, 1),
        ] {
            GemmBf16::supports(&p).unwrap();
            let c = GemmBf16::default_config(&p);
            GemmBf16::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        }
        assert!(GemmBf16::supports(&prob(0, 1, 1)).is_err());
        assert!(GemmBf16::supports(&prob((1 << 30) + 1, 1, 1)).is_err());
        assert!(GemmBf16::supports(&prob(1 << 20, 1 << 20, 1)).is_err());
    }

    #[test]
    fn entry_names_are_unique() {
        let mut seen = HashSet::new();
        let legal = GemmBf16::legal_space(&limits());
        for c in &legal {
            for p in GemmBf16::branch_problems() {
                assert!(
                    seen.insert(GemmBf16::entry(&p, c)),
                    "duplicate entry for {c:?}"
                );
            }
        }
        assert_eq!(seen.len(), 2 * legal.len());
    }

    #[test]
    fn branch_problems_cover_every_branch_of_every_config() {
        let aligned: HashSet<bool> = GemmBf16::branch_problems().iter().map(is_aligned).collect();
        assert_eq!(aligned.len(), 2);
        for p in GemmBf16::branch_problems() {
            GemmBf16::supports(&p).unwrap();
            // Every legal config (both kernels, every split and token count) can be built
            // for both branches.
            for c in GemmBf16::legal_space(&limits()) {
                GemmBf16::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} {c:?}: {e}"));
            }
        }
        let stream = legal_stream();
        let split: HashSet<bool> = stream.iter().map(|c| c.split_k > 1).collect();
        assert_eq!(split.len(), 2);
    }

    #[test]
    fn render_vars_match_the_template() {
        let names = template_names();
        assert!(names["stream"].contains("rows") && names["tiled"].contains("stages"));
        let legal = GemmBf16::legal_space(&limits());
        let first_tiled = legal.iter().find(|c| matches!(c, GemmBf16Config::Tiled(_)));
        let first_stream = legal
            .iter()
            .find(|c| matches!(c, GemmBf16Config::Stream(_)));
        for (kernel, c) in [("tiled", first_tiled), ("stream", first_stream)] {
            let c = c.expect("both kernels have legal configs");
            let used: BTreeSet<String> = names["common"].union(&names[kernel]).cloned().collect();
            for p in GemmBf16::branch_problems() {
                let vars = GemmBf16::render_vars(&p, c);
                let keys: BTreeSet<String> = vars.keys().cloned().collect();
                let missing: Vec<_> = used.difference(&keys).collect();
                let unused: Vec<_> = keys.difference(&used).collect();
                assert!(
                    missing.is_empty(),
                    "{kernel}: template uses {missing:?}, render_vars lacks them"
                );
                assert!(
                    unused.is_empty(),
                    "{kernel}: render_vars has {unused:?}, the template never reads them"
                );
                assert_eq!(vars["entry"], json!(GemmBf16::entry(&p, c)));
                assert_eq!(vars["stream"], json!(kernel == "stream"));
            }
        }
    }

    #[test]
    fn source_depends_on_the_problem_only_through_alignment() {
        for c in [
            GemmBf16::default_config(&prob(4096, 4096, 4096)),
            GemmBf16::default_config(&prob(1, 4096, 4096)),
        ] {
            assert_eq!(
                GemmBf16::render_vars(&prob(4096, 4096, 4096), &c),
                GemmBf16::render_vars(&prob(3, 5, 8), &c)
            );
            assert_ne!(
                GemmBf16::render_vars(&prob(4096, 4096, 4096), &c),
                GemmBf16::render_vars(&prob(3, 5, 7), &c)
            );
        }
    }

    #[test]
    fn reference_names_its_entry() {
        assert!(REFERENCE_SOURCE.contains(&format!("void {REFERENCE_ENTRY}(")));
        let g = reference_geometry(3, 100);
        assert_eq!(g.grid[0] * g.block[0], 512);
        assert_eq!(reference_geometry(1, 1).grid, [1, 1, 1]);
    }

    #[test]
    fn cpu_reference_multiplies_by_b_transposed() {
        // A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8], [1, 0]] (n = 3): C = A B^T.
        let c = reference_cpu(
            &[1.0, 2.0, 3.0, 4.0],
            &[5.0, 6.0, 7.0, 8.0, 1.0, 0.0],
            2,
            3,
            2,
        );
        assert_eq!(c, vec![17.0, 23.0, 1.0, 39.0, 53.0, 3.0]);
    }

    fn small_tile(split_k: u32) -> TiledConfig {
        TiledConfig {
            bm: 16,
            bn: 128,
            bk: 64,
            warps_m: 1,
            warps_n: 2,
            stages: 4,
            split_k,
        }
    }

    #[test]
    fn workspace_and_counters() {
        let p = prob(16, 48, 7168);
        let c = GemmBf16Config::Tiled(small_tile(8));
        assert!(GemmBf16::check_config(&c, &limits()).is_ok());
        assert_eq!(GemmBf16::workspace_bytes(&p, &c), 8 * 16 * 128 * 4);
        assert_eq!(counters_len(&p, &c), 1);
        let one = GemmBf16Config::Tiled(small_tile(1));
        assert_eq!(GemmBf16::workspace_bytes(&p, &one), 0);
        assert_eq!(counters_len(&p, &one), 0);
        // Splits deeper than K allows, and absurd workspaces, are rejected.
        assert!(GemmBf16::check_problem(&prob(16, 48, 64 * 7), &c).is_err());
        let big = GemmBf16Config::Tiled(TiledConfig {
            bm: 64,
            bn: 128,
            bk: 64,
            warps_m: 1,
            warps_n: 4,
            stages: 4,
            split_k: 16,
        });
        assert!(GemmBf16::check_problem(&prob(8192, 8192, 8192), &big).is_err());
        // Stream: one counter per 16 * rows weight rows, partials of 8 * tokens8 tokens.
        let s = GemmBf16Config::Stream(StreamConfig {
            warps: 4,
            rows: 2,
            unroll: 4,
            tokens8: 2,
            split_k: 4,
            depth: 1,
        });
        assert!(GemmBf16::check_config(&s, &limits()).is_ok());
        assert_eq!(counters_len(&p, &s), 2);
        assert_eq!(GemmBf16::workspace_bytes(&p, &s), 4 * 2 * 32 * 16 * 4);
        let scratch = GemmBf16::scratch(&p, &s);
        assert_eq!(scratch[1].bytes, 2 * 4);
        assert!(GemmBf16::check_problem(&prob(17, 48, 7168), &s).is_err());
    }

    #[test]
    fn estimate_ranks_obvious_cases() {
        let l = limits();
        let big = prob(4096, 4096, 4096);
        let large_tile = GemmBf16Config::Tiled(TiledConfig {
            bm: 128,
            bn: 128,
            bk: 32,
            warps_m: 2,
            warps_n: 2,
            stages: 4,
            split_k: 1,
        });
        let small = GemmBf16Config::Tiled(small_tile(1));
        let (a, b) = (
            GemmBf16::estimate_us(&big, &large_tile, &l),
            GemmBf16::estimate_us(&big, &small, &l),
        );
        assert!(a.is_finite() && a > 0.0 && a < b, "{a} vs {b}");
        let decode = prob(16, 48, 7168);
        let split = GemmBf16Config::Tiled(small_tile(8));
        assert!(
            GemmBf16::estimate_us(&decode, &split, &l) < GemmBf16::estimate_us(&decode, &small, &l)
        );
        for c in GemmBf16::legal_space(&l) {
            for p in [
                prob(1, 1, 7168),
                prob(1, 7, 7),
                prob(2048, 36864, 7168),
                prob(256, 128815, 7168),
                prob(32, 128815, 7167),
            ] {
                let t = GemmBf16::estimate_us(&p, &c, &l);
                assert!(t.is_finite() && t > 0.0, "{c:?} on {p:?}: {t}");
            }
        }
    }

    /// The tuner measures the 24 best estimates: for decode shapes those must be mostly
    /// stream configs with the smallest token tile, led by one.
    #[test]
    fn decode_shortlists_are_led_by_the_stream_kernel() {
        let l = limits();
        for (n, k) in [
            (2560, 7168),
            (16384, 2048),
            (7168, 16384),
            (48, 7168),
            (128815, 7168),
        ] {
            for m in [1, 8, 16, 32] {
                let p = prob(m, n, k);
                let mut ranked: Vec<(f64, GemmBf16Config)> = GemmBf16::candidates(&p, &l)
                    .into_iter()
                    .map(|c| (GemmBf16::estimate_us(&p, &c, &l), c))
                    .collect();
                ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
                let top = &ranked[..24];
                let streams: Vec<&StreamConfig> = top
                    .iter()
                    .filter_map(|(_, c)| match c {
                        GemmBf16Config::Stream(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                assert!(
                    matches!(top[0].1, GemmBf16Config::Stream(_)),
                    "{p:?}: best estimate {:?} at {:.1} us",
                    top[0].1,
                    top[0].0
                );
                assert!(
                    streams.len() >= 12,
                    "{p:?}: {} stream configs shortlisted",
                    streams.len()
                );
                let tightest = m.div_ceil(8).next_power_of_two();
                assert!(
                    streams.iter().all(|s| s.tokens8 == tightest),
                    "{p:?}: a wider token tile than {tightest} was shortlisted"
                );
            }
        }
    }

    #[test]
    fn stream_estimates_follow_the_weight_bytes() {
        let l = limits();
        // Best stream estimate for large decode shapes: within 25% of weight bytes at 4 TB/s
        // plus launch.
        for (n, k) in [(2560, 7168), (16384, 2048), (7168, 16384), (128815, 7168)] {
            let p = prob(1, n, k);
            let best = legal_stream()
                .into_iter()
                .filter(|c| stream::check_problem(&p, c).is_ok())
                .map(|c| stream::estimate_us(&p, &c, &l))
                .fold(f64::INFINITY, f64::min);
            let ideal = n as f64 * k as f64 * 2.0 / 4.0e12 * 1e6 + 2.0;
            assert!(
                best >= ideal * 0.99 && best <= ideal * 1.25,
                "{p:?}: {best} vs {ideal}"
            );
        }
    }

    #[test]
    fn flops_and_bytes() {
        let p = prob(2, 3, 4);
        assert_eq!(GemmBf16::flops(&p), 48.0);
        assert_eq!(GemmBf16::min_bytes(&p), 2.0 * (8.0 + 12.0 + 6.0));
    }
}
