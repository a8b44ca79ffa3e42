//! `gemm_bf16`: `C[M,N] = A[M,K] · B[N,K]^T` with BF16 operands, fp32 accumulation and BF16
//! output (round to nearest even). A is row-major (lda = K), B is a linear layer's weight,
//! row-major `[N,K]` (ldb = K), C is row-major (ldc = N).
//!
//! Four kernels share the family and its signature; a config names its kernel
//! (`{"kernel": "tiled" | "stream" | "ring" | "wgmma", ...}`) and the tuner picks per problem:
//!
//! * **tiled** (`templates/gemm_bf16.cu.tera`): an Ampere-style tensor-core GEMM, `mma.sync`
//!   m16n8k16, `ldmatrix.x4` from XOR-swizzled shared memory, a `cp.async` pipeline of
//!   `stages` K tiles, optional split-K with an in-kernel, deterministic reduction. Its
//!   header comment explains tiling, pipeline, swizzle and split-K. Any M, any K.
//! * **wgmma** (`templates/gemm_bf16_wgmma.cu.tera`, [`wgmma`]): sm_90a warpgroup MMA
//!   (m64nBNk16) reading both operands through descriptors from 128-byte-swizzled shared
//!   memory, the tiled kernel's pipeline, raster and split-K. K % 8 == 0.
//! * **stream** (`templates/gemm_bf16_stream.cu.tera`, [`stream`]): decode, M <= 32. Swap-AB
//!   `mma.sync` with weight rows as the m16 dimension and tokens as n8 tiles; the weight
//!   streams from global memory straight into registers (a K permutation makes one 16-byte
//!   load per lane and row fill the fragments), warps split K and reduce through shared
//!   memory, CTAs split K (grid.z) and reduce like the tiled kernel.
//! * **ring** (`templates/gemm_bf16_ring.cu.tera`, [`ring`]): decode, M <= 32, K % 8 == 0. A
//!   persistent grid splits the problem's K stages evenly (stream-K); producer warps fill an
//!   mbarrier ring of shared-memory slots, consumer warps run swap-AB `mma.sync` from it; tiles
//!   cut between CTAs are reduced in-kernel, deterministically.
//!
//! The family's template is the four files in one text: `{% if ring %}`, `{% elif stream %}`,
//! `{% elif wgmma %}`, `{% else %}` (tiled) pick the kernel.
//!
//! # Launch contract
//!
//! Arguments, in order (see [`GemmBf16::args`]): `A, B, C, workspace, counters, M, N, K`.
//! [`GemmBf16::geometry`] gives grid, block and dynamic shared memory of every config.
//!
//! * Grid (tiled, wgmma): `[tiles_m * tiles_n, 1, split_k]` with `tiles_m = ceil(M/bm)`,
//!   `tiles_n = ceil(N/bn)`. The kernel maps the linear `blockIdx.x` to a tile itself (grouped
//!   raster of [`GROUP_M`] tile rows) so `grid.y`'s 65535 limit never binds.
//!   Grid (stream): `[ceil(N / (16 * rows)), 1, split_k]`. Grid (ring): `[min(ctas, stages of
//!   the problem), 1, 1]` (the kernel relies on never getting more CTAs than stages).
//! * `workspace` (fp32): tiled and wgmma hold `split_k` partial tiles per output tile (`bm * bn`
//!   floats each), stream `split_k` partials of `16 * rows * 8 * tokens8`, ring two partial
//!   tiles per CTA: [`GemmBf16::workspace_bytes`]. It needs no initialisation; tiled, wgmma and
//!   stream touch it only when `split_k > 1` (pass any pointer, even null, otherwise).
//! * `counters` (u32) is a separate array of [`counters_len`] entries, one per output tile,
//!   used when `split_k > 1` and always by the ring kernel. The caller zeroes it **once** when
//!   it allocates it; every launch leaves it zeroed again (the last CTA of each tile resets its
//!   counter), so back-to-back launches and CUDA-graph replays need no memset. Two launches
//!   that run concurrently must not share a workspace or counters.
//! * Alignment: the aligned branch (K % 8 == 0) issues 16-byte loads, so A and B must be
//!   16-byte aligned (any `cudaMalloc` pointer is); C must be 4-byte aligned when N is even.
//! * Index math: row offsets are 64-bit, per-dimension values are `int`; [`GemmBf16::supports`]
//!   keeps each of m, n, k at most 2^30 and each operand at most 2^36 elements.
//!
//! The generated source depends on the problem only through `aligned` (K % 8 == 0), so all
//! aligned problems share one cubin per config (ring and wgmma exist for aligned K only).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

pub mod ring;
pub mod stream;
pub mod wgmma;
pub use ring::RingConfig;
pub use stream::StreamConfig;
pub use wgmma::WgmmaConfig;

/// The family.
pub struct GemmBf16;

/// One GEMM: `C[m,n] = A[m,k] · B[n,k]^T`.
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
    Ring(RingConfig),
    Wgmma(WgmmaConfig),
}

impl GemmBf16Config {
    pub fn threads(&self) -> u32 {
        match self {
            GemmBf16Config::Tiled(c) => c.threads(),
            GemmBf16Config::Stream(c) => c.threads(),
            GemmBf16Config::Ring(c) => c.threads(),
            GemmBf16Config::Wgmma(c) => c.threads(),
        }
    }
    /// K slices reduced in-kernel (grid.z).
    pub fn split_k(&self) -> u32 {
        match self {
            GemmBf16Config::Tiled(c) => c.split_k,
            GemmBf16Config::Stream(c) => c.split_k,
            // Stream-K: each CTA's range of stages; counted as one slice.
            GemmBf16Config::Ring(_) => 1,
            GemmBf16Config::Wgmma(c) => c.split_k,
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
        GemmBf16Config::Stream(c) if c.split_k > 1 && !c.cluster => {
            stream::tiles(problem, c) as usize
        }
        GemmBf16Config::Ring(c) => ring::counters_len(problem, c),
        GemmBf16Config::Wgmma(c) => wgmma::counters_len(problem, c),
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
        GemmBf16Config::Ring(c) => ring::workspace_floats(p, c),
        GemmBf16Config::Wgmma(c) => wgmma::workspace_floats(p, c),
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

/// Rules every kernel of the family checks on a problem: `tiles` CTAs (or tile counters) fit
/// an `int` / grid.x, and the fp32 split workspace stays a modest scratch buffer.
fn check_grid_and_workspace(tiles: u64, workspace_floats: u64) -> Result<(), Illegal> {
    illegal(tiles > i32::MAX as u64, || {
        format!("{tiles} tiles exceed grid.x")
    })?;
    let ws = workspace_floats * 4;
    illegal(ws > MAX_WORKSPACE_BYTES as u64, || {
        format!("split workspace of {ws} B exceeds {MAX_WORKSPACE_BYTES}")
    })
}

/// The rule of the kernels that copy rows in 16-byte units (ring, wgmma).
fn check_rows_16_byte_aligned(p: &GemmBf16Problem) -> Result<(), Illegal> {
    illegal(!is_aligned(p), || {
        format!(
            "k {} is not a multiple of 8 (rows are not 16-byte aligned)",
            p.k
        )
    })
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
        illegal(
            !c.bm.is_multiple_of(c.warps_m) || !c.bn.is_multiple_of(c.warps_n),
            || {
                format!(
                    "{}x{} tile over {}x{} warps",
                    c.bm, c.bn, c.warps_m, c.warps_n
                )
            },
        )?;
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
        check_grid_and_workspace(tiles(p, c), tiled_workspace_floats(p, c))
    }

    fn render_vars(p: &GemmBf16Problem, c: &TiledConfig) -> RenderVars {
        let threads = c.threads();
        let chunks_per_row = c.bk / 8;
        let vars = json!({
            "stream": false,
            "ring": false,
            "wgmma": false,
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
    /// The kernels' templates in one text; the `ring`, `stream` and `wgmma` variables pick one.
    const TEMPLATE: &'static str = concat!(
        "{% if ring %}",
        include_str!("../../../templates/gemm_bf16_ring.cu.tera"),
        "{% elif stream %}",
        include_str!("../../../templates/gemm_bf16_stream.cu.tera"),
        "{% elif wgmma %}",
        include_str!("../../../templates/wgmma_epilogue.cuh"),
        include_str!("../../../templates/gemm_bf16_wgmma.cu.tera"),
        "{% else %}",
        include_str!("../../../templates/gemm_bf16.cu.tera"),
        "{% endif %}"
    );

    /// The tiled, stream, ring and wgmma spaces, in that order.
    fn space() -> Vec<GemmBf16Config> {
        let tiled = Tiled::space().into_iter().map(GemmBf16Config::Tiled);
        let stream = stream::space().into_iter().map(GemmBf16Config::Stream);
        let ring = ring::space().into_iter().map(GemmBf16Config::Ring);
        let wgmma = wgmma::space().into_iter().map(GemmBf16Config::Wgmma);
        tiled.chain(stream).chain(ring).chain(wgmma).collect()
    }

    fn check_config(c: &GemmBf16Config, limits: &DeviceLimits) -> Result<(), Illegal> {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::check_config(c, limits),
            GemmBf16Config::Stream(c) => stream::check_config(c, limits),
            GemmBf16Config::Ring(c) => ring::check_config(c, limits),
            GemmBf16Config::Wgmma(c) => wgmma::check_config(c, limits),
        }
    }

    fn check_problem(p: &GemmBf16Problem, c: &GemmBf16Config) -> Result<(), Illegal> {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::check_problem(p, c),
            GemmBf16Config::Stream(c) => stream::check_problem(p, c),
            GemmBf16Config::Ring(c) => ring::check_problem(p, c),
            GemmBf16Config::Wgmma(c) => wgmma::check_problem(p, c),
        }
    }

    fn render_vars(p: &GemmBf16Problem, c: &GemmBf16Config) -> RenderVars {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::render_vars(p, c),
            GemmBf16Config::Stream(c) => stream::render_vars(p, c),
            GemmBf16Config::Ring(c) => ring::render_vars(p, c),
            GemmBf16Config::Wgmma(c) => wgmma::render_vars(p, c),
        }
    }

    fn entry(p: &GemmBf16Problem, c: &GemmBf16Config) -> String {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::entry(p, c),
            GemmBf16Config::Stream(c) => stream::entry(p, c),
            GemmBf16Config::Ring(c) => ring::entry(p, c),
            GemmBf16Config::Wgmma(c) => wgmma::entry(p, c),
        }
    }

    fn geometry(p: &GemmBf16Problem, c: &GemmBf16Config) -> LaunchGeometry {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::geometry(p, c),
            GemmBf16Config::Stream(c) => stream::geometry(p, c),
            GemmBf16Config::Ring(c) => ring::geometry(p, c),
            GemmBf16Config::Wgmma(c) => wgmma::geometry(p, c),
        }
    }

    /// Decode (M <= 32) streams the weight; aligned problems with M > 64 and N > 64 use the
    /// wgmma kernel; the rest is tiled.
    fn default_config(p: &GemmBf16Problem) -> GemmBf16Config {
        if p.m <= stream::MAX_M {
            GemmBf16Config::Stream(stream::default_config(p))
        } else if let Some(c) = wgmma::default_config(p) {
            GemmBf16Config::Wgmma(c)
        } else {
            GemmBf16Config::Tiled(Tiled::default_config(p))
        }
    }

    fn estimate_us(p: &GemmBf16Problem, c: &GemmBf16Config, limits: &DeviceLimits) -> f64 {
        match c {
            GemmBf16Config::Tiled(c) => Tiled::estimate_us(p, c, limits),
            GemmBf16Config::Stream(c) => stream::estimate_us(p, c, limits),
            GemmBf16Config::Ring(c) => ring::estimate_us(p, c, limits),
            GemmBf16Config::Wgmma(c) => wgmma::estimate_us(p, c, limits),
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
                GemmBf16Config::Ring(b) => ring::worth_measuring(problem, b),
                GemmBf16Config::Wgmma(_) => true,
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
mod tests;
