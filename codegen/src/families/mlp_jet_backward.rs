//! `mlp_jet_backward`: the reverse pass of [`mlp_jet`](super::mlp_jet) (a tanh MLP with its
//! value, gradient and Laplacian streams) to every weight and bias, fused with the forward
//! jets and the loss head, so that one launch (plus a small ordered reduction) is a whole
//! training step's gradient of a physics-informed loss.
//!
//! # The loss
//!
//! Streams per point: `u`, `grad u` (d tangents) and `Lap u`, as `mlp_jet` computes them
//! ([`Streams::ValueGradLaplacian`]). Two heads ([`Loss`]):
//!
//! * [`Loss::LaplacianResidual`] (scalar `u`, p = 1): `L = (1/N) sum_n (r_n^2 + w_n (u_n -
//!   g_n)^2)` with the residual `r_n = -Lap u(x_n) - f_n` of the Poisson-type equation
//!   `-Lap u = f`, and an optional data term (targets `g`, weights `w >= 0`; `w = 0` on
//!   collocation-only points). Output cotangents: `dL/dLap u_n = -2 r_n / N`, `dL/du_n = 2
//!   w_n (u_n - g_n) / N`, `dL/dgrad u_n = 0`.
//! * [`Loss::Cotangents`] (any p up to [`MAX_P`]): given `dL/du [n, p]`, `dL/dgrad [n, d, p]`,
//!   `dL/dLap [n, p]` (each may be absent, i.e. zero), the gradient of `L` with respect to the
//!   parameters: the backward of any loss built on the three streams.
//!
//! # Reverse mode through the jets
//!
//! Forward through a hidden layer (`mlp_jet`): `z = W a + b`, `z'_i = W a'_i`, `Lz = W La`;
//! `s = tanh z`, `s1 = 1 - s^2`, `s2 = -2 s s1`; outputs `A = s`, `T_i = s1 z'_i`,
//! `M = s1 Lz + s2 Q` with `Q = sum_i z'_i^2`. Given the output cotangents `Ab, Tb_i, Mb`
//! (bars), with `s3 = s2' = -2 s1^2 - 2 s s2 = s1 (6 s^2 - 2)` (the derivative of `s2` enters
//! through `M`):
//!
//! ```text
//! zb   = s1 Ab + s2 sum_i Tb_i z'_i + Mb (s2 Lz + s3 Q)
//! zb'_i = s1 Tb_i + 2 s2 Mb z'_i
//! Lzb  = s1 Mb
//! ```
//!
//! The kernel stores the layer's *outputs* (`s`, `a'_i = s1 z'_i`, `La = M`), so it rewrites
//! these with `s2 z'_i = -2 s a'_i`, `s2 Lz = -2 s (La - s2 Q)` and `2 s s2 + s3 = -2 s1^2`:
//! `zb = s1 Ab - 2 s (sum_i Tb_i a'_i + Mb La) - 2 Mb sum_i a'_i^2`, `zb'_i = s1 Tb_i - 4 s Mb
//! a'_i` (no division, no pre-activation). Through the linear part, for every stream `k`
//! (value, tangents, Laplacian) of the layer's input `a_k`:
//!
//! ```text
//! dW += sum_points sum_k zb_k a_k^T      db += sum_points zb_value      ab_k = W^T zb_k
//! ```
//!
//! so `dW` is a GEMM over `K = points x streams`. Layer 0's inputs are `a = x`, `a'_i = e_i`,
//! `La = 0`: `dW_0[j][i] = sum_points (zb_j x_i + zb'_{i,j})`. The last layer is linear: its
//! `zb` streams are the output cotangents. The f64 [`reference`] implements the plain form
//! above (with `s3`), and is checked against finite differences of the loss.
//!
//! # Memory layout and launch contract
//!
//! `x [points, d]`, `params` (`mlp_jet`'s arena: `W_l [out, in]`, `b_l`, layer by layer; 16-byte
//! aligned), `f, target, weight [points]` (residual head; `target` and `weight` both null
//! without a data term), `cot_u [points, p]`, `cot_grad [points, d, p]`, `cot_lap [points,
//! p]` (cotangent head; null = zero). Two entries of one module:
//!
//! 1. [`MlpJetBackward::entry`] with [`MlpJetBackward::args`]: `x, params, f, target, weight,
//!    cot_u, cot_grad, cot_lap, partial, n`; grid [`MlpJetBackward::geometry`] (persistent,
//!    one CTA per SM at most). Each CTA writes its partial gradient arena `partial[cta]
//!    [partial_stride]` (the parameter layout, then its loss sum at index `param_count`).
//!    `partial` is scratch of [`partial_floats`] floats; no initialisation needed (the pack
//!    entry writes the part past the arenas that the main entry reads).
//! 2. `<entry>_reduce(partial, grads, loss, ctas, scale)` ([`REDUCE_ARGS`]): `grads
//!    [param_count] = scale * sum_cta partial[cta]` in CTA order in f64, `loss[0]` likewise
//!    (null: not written); `ctas` = the first launch's grid, `scale` = [`scale`]. Grid
//!    [`reduce_geometry`].
//!
//! With [`MlpJetBackwardConfig::packed_weights`] (split16) a third entry runs before the
//! first: `<entry>_pack(params, partial, ctas)` ([`PACK_ARGS`], grid [`pack_geometry`], `ctas`
//! = the main launch's grid) splits the hidden weights into packed A fragments at
//! [`packed_offset`] of `partial`, which the main entry reads.
//!
//! # Arithmetic
//!
//! fp32 throughout. The three hidden-layer products of a tile (forward `W H`, backward
//! `W^T Zb`, weights `Zb H^T`) run as fp32 FMAs ([`Math::Fma`], the default) or on tensor cores
//! ([`Math::Tf32x3`]: `mma.sync` TF32 with each operand split into a TF32 high part and
//! remainder, three products, ~fp32 accuracy; [`Math::Split16`]: the same split on fp16 and
//! bf16 `mma.sync` at half the tensor time, ~2^-20 per product: mlp_jet's scaled fp16 cross
//! terms cost the d = 2 training step 4.8% that its 1e-4 tolerance does not need); the elementwise
//! passes are
//! the same for all.
//! Hidden `dW` is accumulated per CTA with vector reductions whose order per address is program
//! order, so every path is deterministic.
//!
//! The template (`templates/mlp_jet_backward.cu.tera`) explains the work split.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::families::mlp_jet::{param_count, Math, MlpJetProblem, Streams};
use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

/// The family.
pub struct MlpJetBackward;

/// f64 CPU reference: loss and parameter gradients.
pub mod reference;

/// What closes the chain at the outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Given output cotangents.
    Cotangents,
    /// Mean squared residual of `-Lap u = f`, plus an optional weighted data term.
    LaplacianResidual,
}

/// One call: the net, the point count and the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MlpJetBackwardProblem {
    pub d: u32,
    pub width: u32,
    /// Hidden tanh layers.
    pub depth: u32,
    pub p: u32,
    pub points: u32,
    pub loss: Loss,
}

impl MlpJetBackwardProblem {
    /// The forward problem of the same net (u, grad u and the Laplacian).
    pub fn jet_problem(&self) -> MlpJetProblem {
        MlpJetProblem {
            d: self.d,
            width: self.width,
            depth: self.depth,
            p: self.p,
            points: self.points,
            streams: Streams::ValueGradLaplacian,
        }
    }
    /// Streams per point: value, d tangents, Laplacian.
    pub fn streams(&self) -> u32 {
        self.d + 2
    }
    /// Floats of the parameter arena (and of the gradient).
    pub fn params(&self) -> usize {
        param_count(self.d, self.width, self.depth, self.p)
    }
}

/// A point of the search space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MlpJetBackwardConfig {
    /// Rows (neurons) per thread in the forward and W^T products: 4 or 8.
    pub rows: u32,
    /// Points per tile.
    pub tile_points: u32,
    /// How the three hidden-layer products run: fp32 FMA, or 3xTF32 `mma.sync` (the same
    /// split as [`mlp_jet`](super::mlp_jet)'s). Configs written before this field existed
    /// read as FMA.
    #[serde(default)]
    pub math: Math,
    /// k depth of a weight slab: 32, or 16 (twice the slabs and their barriers per tile, 16 KB
    /// less shared memory at width 128), legal only where the 32-deep slabs do not fit the
    /// tile, so it exists to reach larger tiles. Configs written before this field existed
    /// read as 32.
    #[serde(default = "default_slab_k")]
    pub slab_k: u32,
    /// With three or more hidden layers, keep DEPTH - 1 stream slots instead of DEPTH: the
    /// first layer's output shares the third's slot and is recomputed from x for the bottom
    /// of the backward pass (an extra barrier and tanh per tile; 2-7% slower at equal tiles,
    /// run 60). Legal only where the tile does not fit without it. Configs written before
    /// this field existed read as false.
    #[serde(default)]
    pub share_slot: bool,
    /// split16 only: the weights are split once per launch, by a `_pack` entry, into the A
    /// fragments the forward and W^T products read (into [`partial_floats`]' scratch past the
    /// CTA arenas), instead of by every warp across the columns on every tile. Each slab then
    /// takes 1.5 words per weight instead of one (plus padding). Configs written before this
    /// field existed read as false.
    #[serde(default)]
    pub packed_weights: bool,
}

fn default_slab_k() -> u32 {
    SLAB_K
}

pub const MAX_D: u32 = 32;
/// Outputs of the cotangent head (the residual head is scalar).
pub const MAX_P: u32 = 8;
/// Hidden widths: the dW block of 16 x 16 threads holds at most 8 x 8 per thread.
pub const WIDTHS: [u32; 3] = [32, 64, 128];
pub const DEPTHS: std::ops::RangeInclusive<u32> = 2..=8;
pub const MAX_POINTS: u32 = 1 << 28;
const THREADS: u32 = 256;
/// k depth of a weight slab unless the tile needs the shallower one.
pub const SLAB_K: u32 = 32;
/// The shallower slab depth.
pub const SLAB_K_SMALL: u32 = 16;
/// SMs the persistent grid plans for (H100 / H200).
const SMS: u32 = 132;
/// Tile sizes of the space.
const TILES: [u32; 15] = [1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 40, 48, 64, 80];
/// The reduce entry's arguments.
pub const REDUCE_ARGS: [KernelArg; 5] = [
    KernelArg {
        name: "partial",
        c_type: "const float*",
    },
    KernelArg {
        name: "grads",
        c_type: "float*",
    },
    KernelArg {
        name: "loss",
        c_type: "float*",
    },
    KernelArg {
        name: "ctas",
        c_type: "int",
    },
    KernelArg {
        name: "scale",
        c_type: "double",
    },
];

/// Derived shape of one (problem, config).
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Floats of the packed weight slabs past the CTA arenas (0 without `packed_weights`).
    packed_floats: u32,
    row_warps: u32,
    /// Columns (points x streams) padded to the column split.
    cols: u32,
    cols_per_thread: u32,
    slab_floats: u32,
    slots_floats: u32,
    dw_vec: u32,
    partial_stride: u32,
    smem_bytes: u32,
}

// is_multiple_of is newer than the workspace's rust-version.
#[allow(clippy::manual_is_multiple_of)]
fn shape(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> Option<Shape> {
    let span = 8 * c.rows;
    if p.width < span || p.width % span != 0 {
        return None;
    }
    let row_warps = p.width / span;
    let col_unit = col_unit(c, row_warps);
    let ts = c.tile_points * p.streams();
    let cols = ts.div_ceil(col_unit) * col_unit;
    let lda = p.width + 4;
    let sk = c.slab_k;
    // A packed slab: 16-deep steps x 16-row tiles x 32 lanes x 12 words = 1.5 words a weight.
    let packed = packs_weights(c);
    let slab_floats = if packed {
        sk * p.width * 3 / 2
    } else {
        (p.width * (sk + 4)).max(sk * (p.width + 4))
    };
    let slabs_per_tile = 2 * (p.depth - 1) * (p.width / sk);
    let ne = p.d + p.depth + 2 * p.p + 1;
    let slots_floats = (slots(p.depth, c.share_slot) * cols * lda).max(ne * THREADS);
    let pc = p.params() as u32;
    let smem_floats = 2 * slab_floats + slots_floats + c.tile_points * p.d + ts * p.p;
    Some(Shape {
        packed_floats: if packed {
            slabs_per_tile * slab_floats
        } else {
            0
        },
        row_warps,
        cols,
        cols_per_thread: cols / (4 * (8 / row_warps)),
        slab_floats,
        slots_floats,
        dw_vec: (p.width / 16).min(4),
        partial_stride: (pc + 1).div_ceil(4) * 4,
        smem_bytes: 4 * smem_floats,
    })
}

/// Stream slots a tile keeps in shared memory: one per hidden layer's output, except that
/// with `share` and three or more layers the first layer's shares the third's (the template
/// recomputes it from x for the bottom of the backward pass).
pub fn slots(depth: u32, share: bool) -> u32 {
    if share && depth >= 3 {
        depth - 1
    } else {
        depth
    }
}

/// Columns a tile pads to: 4 lanes across times the warps across the columns; an mma tile
/// is 8 columns wide, so the mma paths pad to twice that.
fn col_unit(c: &MlpJetBackwardConfig, row_warps: u32) -> u32 {
    let lanes = match c.math {
        Math::Fma => 4,
        // The wgmma paths are the jets' only (`check_config` rejects them here).
        Math::Tf32x3 | Math::Split16 | Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols => 8,
    };
    lanes * (8 / row_warps)
}

/// Floats of the `partial` scratch of a launch of `p` under `c`: the CTA arenas, then (with
/// `packed_weights`) the packed weight slabs at [`packed_offset`].
pub fn partial_floats(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> usize {
    packed_offset(p, c) + shape(p, c).map_or(0, |s| s.packed_floats) as usize
}

/// Where the packed weight slabs start in `partial` (floats): past the grid's CTA arenas.
pub fn packed_offset(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> usize {
    let stride = shape(p, c).map_or(0, |s| s.partial_stride) as usize;
    MlpJetBackward::geometry(p, c).grid[0] as usize * stride
}

/// Whether launches of `c` run the `_pack` entry first.
pub fn packs_weights(c: &MlpJetBackwardConfig) -> bool {
    c.packed_weights && c.math == Math::Split16
}

/// The pack entry's grid: one thread per (slab, 16-deep step, 16-row tile, lane), which is
/// 32 lanes per 16 x 16 block of each hidden matrix, twice (forward and W^T fragments).
pub fn pack_geometry(p: &MlpJetBackwardProblem) -> LaunchGeometry {
    crate::families::mlp_jet::packed_fragment_grid(2 * (p.depth - 1), p.width)
}

/// The pack entry's arguments.
pub const PACK_ARGS: [KernelArg; 3] = [
    KernelArg {
        name: "params",
        c_type: "const float*",
    },
    KernelArg {
        name: "partial",
        c_type: "float*",
    },
    KernelArg {
        name: "ctas",
        c_type: "int",
    },
];

/// The reduce entry's `scale`: 1/N for the residual mean, 1 for given cotangents.
pub fn scale(p: &MlpJetBackwardProblem) -> f64 {
    match p.loss {
        Loss::Cotangents => 1.0,
        Loss::LaplacianResidual => 1.0 / p.points as f64,
    }
}

/// The reduce entry's grid: one thread per gradient entry (and the loss).
pub fn reduce_geometry(p: &MlpJetBackwardProblem) -> LaunchGeometry {
    LaunchGeometry {
        grid: [(p.params() as u32 + 1).div_ceil(THREADS), 1, 1],
        block: [THREADS, 1, 1],
        dynamic_smem_bytes: 0,
        cluster: [1, 1, 1],
    }
}

/// The three PINN training-step targets: `mlp_jet`'s target nets with the residual loss.
pub fn pinn_targets() -> [MlpJetBackwardProblem; 3] {
    crate::families::mlp_jet::pinn_targets().map(|j| MlpJetBackwardProblem {
        d: j.d,
        width: j.width,
        depth: j.depth,
        p: j.p,
        points: j.points,
        loss: Loss::LaplacianResidual,
    })
}

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

impl Family for MlpJetBackward {
    type Problem = MlpJetBackwardProblem;
    type Config = MlpJetBackwardConfig;

    const NAME: &'static str = "mlp_jet_backward";
    /// The split16 helpers with bf16 cross terms (the outputs are held to 1e-4; see the
    /// header's note), then the kernel.
    const TEMPLATE: &'static str = concat!(
        "#define KILN_SPLIT16_BF16_CROSS 1\n",
        include_str!("../../../templates/mma_split16.cuh"),
        include_str!("../../../templates/mlp_jet_backward.cu.tera")
    );

    fn space() -> Vec<MlpJetBackwardConfig> {
        let mut out = Vec::new();
        for share_slot in [false, true] {
            for slab_k in [SLAB_K, SLAB_K_SMALL] {
                for math in [Math::Fma, Math::Tf32x3, Math::Split16] {
                    let packs: &[bool] = if math == Math::Split16 {
                        &[false, true]
                    } else {
                        &[false]
                    };
                    for &packed_weights in packs {
                        for rows in [4, 8] {
                            for tile_points in TILES {
                                out.push(MlpJetBackwardConfig {
                                    rows,
                                    tile_points,
                                    math,
                                    slab_k,
                                    share_slot,
                                    packed_weights,
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn check_config(c: &MlpJetBackwardConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        // 4 or 8 rows: whole float4 groups in the W^T product, at most 64 accumulators.
        illegal(c.rows != 4 && c.rows != 8, || {
            format!("rows {} is not 4 or 8", c.rows)
        })?;
        illegal(!TILES.contains(&c.tile_points), || {
            format!("tile_points {} is not one of {TILES:?}", c.tile_points)
        })?;
        illegal(c.slab_k != SLAB_K && c.slab_k != SLAB_K_SMALL, || {
            format!("slab_k {} is not {SLAB_K} or {SLAB_K_SMALL}", c.slab_k)
        })?;
        illegal(c.packed_weights && c.math != Math::Split16, || {
            format!("packed weights are split16's, not {}'s", c.math.tag())
        })?;
        illegal(
            matches!(c.math, Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols),
            || "wgmma is the jets' math (mlp_jet); the training step has no wgmma path".into(),
        )?;
        illegal(THREADS > limits.max_threads_per_block, || {
            "256 threads exceed the device's block".into()
        })?;
        Ok(())
    }

    fn check_problem(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> Result<(), Illegal> {
        // 8 lanes x rows cover the width with 1..8 warps down.
        let Some(sh) = shape(p, c) else {
            return Err(Illegal(format!(
                "{} rows per thread over 8 lanes do not tile width {}",
                c.rows, p.width
            )));
        };
        illegal(c.rows * sh.cols_per_thread > 64, || {
            format!(
                "{} rows x {} columns per thread exceed 64 accumulators",
                c.rows, sh.cols_per_thread
            )
        })?;
        // split16 steps 16 columns at a time through the dW product.
        illegal(c.math == Math::Split16 && sh.cols % 16 != 0, || {
            format!("split16 needs columns in 16s, the tile pads to {}", sh.cols)
        })?;
        // Tiles far larger than the point count only pad.
        illegal(c.tile_points > 1 && c.tile_points / 2 >= p.points, || {
            format!("tile of {} points for {} points", c.tile_points, p.points)
        })?;
        // Slots of every layer's streams plus two weight slabs fit the SM.
        let limit = DeviceLimits::HOPPER.max_dynamic_smem_per_block;
        illegal(sh.smem_bytes > limit, || {
            format!("{} B of shared memory exceed {limit}", sh.smem_bytes)
        })?;
        // Each memory saver (16-deep slabs, a shared slot) only where the tile does not fit
        // without it, the other setting unchanged: both cost time at equal tiles (runs 59-60).
        let fits =
            |alt: MlpJetBackwardConfig| shape(p, &alt).is_some_and(|d| d.smem_bytes <= limit);
        if c.slab_k == SLAB_K_SMALL {
            illegal(
                fits(MlpJetBackwardConfig {
                    slab_k: SLAB_K,
                    ..*c
                }),
                || {
                    format!(
                        "{SLAB_K_SMALL}-deep slabs where {SLAB_K}-deep ones fit ({} points)",
                        c.tile_points
                    )
                },
            )?;
        }
        if c.share_slot {
            illegal(p.depth < 3, || {
                format!("a shared slot needs three hidden layers, not {}", p.depth)
            })?;
            illegal(
                fits(MlpJetBackwardConfig {
                    share_slot: false,
                    ..*c
                }),
                || {
                    format!(
                        "a shared slot where every layer's fits ({} points)",
                        c.tile_points
                    )
                },
            )?;
        }
        Ok(())
    }

    fn supports(p: &MlpJetBackwardProblem) -> Result<(), Unsupported> {
        let no = |reason: String| Unsupported {
            family: Self::NAME,
            problem: format!("{p:?}"),
            reason,
        };
        if !(1..=MAX_D).contains(&p.d) {
            return Err(no(format!("d must be 1..={MAX_D}, got {}", p.d)));
        }
        if !WIDTHS.contains(&p.width) {
            return Err(no(format!(
                "width must be one of {WIDTHS:?}, got {}; pad the net with zero neurons",
                p.width
            )));
        }
        if !DEPTHS.contains(&p.depth) {
            return Err(no(format!(
                "depth (hidden tanh layers) must be {}..={}, got {}",
                DEPTHS.start(),
                DEPTHS.end(),
                p.depth
            )));
        }
        match p.loss {
            Loss::LaplacianResidual if p.p != 1 => {
                return Err(no(format!(
                    "the residual loss is for a scalar u (p = 1), got p = {}; use cotangents",
                    p.p
                )))
            }
            _ if !(1..=MAX_P).contains(&p.p) => {
                return Err(no(format!("p must be 1..={MAX_P}, got {}", p.p)))
            }
            _ => {}
        }
        if p.points == 0 || p.points > MAX_POINTS {
            return Err(no(format!("points must be 1..={MAX_POINTS}")));
        }
        Ok(())
    }

    fn render_vars(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> RenderVars {
        let sh = shape(p, c).expect("check_problem passed");
        let vars = json!({
            "entry": Self::entry(p, c),
            "residual": p.loss == Loss::LaplacianResidual,
            "d": p.d,
            "width": p.width,
            "depth": p.depth,
            "p": p.p,
            "tile_points": c.tile_points,
            "tf32x3": c.math == Math::Tf32x3,
            "split16": c.math == Math::Split16,
            "cols": sh.cols,
            "rows": c.rows,
            "row_warps": sh.row_warps,
            "cols_per_thread": sh.cols_per_thread,
            "slab_floats": sh.slab_floats,
            "slab_k": c.slab_k,
            "share_slot": c.share_slot && p.depth >= 3,
            "packed": packs_weights(c),
            "slots_floats": sh.slots_floats,
            "dw_vec": sh.dw_vec,
            "param_count": p.params(),
            "partial_stride": sh.partial_stride,
            "smem_bytes": sh.smem_bytes,
        });
        match vars {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal"),
        }
    }

    /// The point count is not in the name: it only shapes the grid.
    fn entry(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> String {
        let tag = match p.loss {
            Loss::Cotangents => "cot",
            Loss::LaplacianResidual => "res",
        };
        // 32-deep slabs and unshared slots keep the names entries had before `slab_k` and
        // `share_slot` existed.
        let mut slab = if c.slab_k == SLAB_K {
            String::new()
        } else {
            format!("_k{}", c.slab_k)
        };
        if c.share_slot {
            slab.push_str("_s");
        }
        if packs_weights(c) {
            slab.push_str("_pk");
        }
        format!(
            "kiln_mlp_jet_backward_{tag}_d{}_w{}_l{}_p{}_r{}_t{}_{}{slab}",
            p.d,
            p.width,
            p.depth,
            p.p,
            c.rows,
            c.tile_points,
            c.math.tag()
        )
    }

    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("x", "const float*"),
            arg("params", "const float*"),
            arg("f", "const float*"),
            arg("target", "const float*"),
            arg("weight", "const float*"),
            arg("cot_u", "const float*"),
            arg("cot_grad", "const float*"),
            arg("cot_lap", "const float*"),
            arg("partial", "float*"),
            arg("n", "int"),
        ]
    }

    fn geometry(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> LaunchGeometry {
        let smem = shape(p, c).map_or(0, |s| s.smem_bytes);
        // One CTA per SM: 256 threads at up to 255 registers fill the register file.
        let tiles = p.points.div_ceil(c.tile_points);
        LaunchGeometry {
            grid: [tiles.clamp(1, SMS), 1, 1],
            block: [THREADS, 1, 1],
            dynamic_smem_bytes: smem,
            cluster: [1, 1, 1],
        }
    }

    fn scratch(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig) -> Vec<Scratch> {
        vec![Scratch {
            arg: "partial",
            bytes: 4 * partial_floats(p, c),
            zero_init: false,
        }]
    }

    /// The products (2 per multiply-add): per point, the hidden layers' forward, W^T and
    /// dW products on every stream, and the input and output layers' (value-only input
    /// layer forward; its dW on value and tangents; the output layer forward, backward and
    /// dW on every stream).
    fn flops(p: &MlpJetBackwardProblem) -> f64 {
        let (w, s, d) = (p.width as f64, p.streams() as f64, p.d as f64);
        let hidden = 3.0 * (p.depth as f64 - 1.0) * w * w * s;
        let edges = w * d + 2.0 * w * d + 3.0 * p.p as f64 * w * s;
        2.0 * p.points as f64 * (hidden + edges)
    }

    /// x and the head's inputs read once, the parameters read and the gradient written once.
    fn min_bytes(p: &MlpJetBackwardProblem) -> f64 {
        let n = p.points as f64;
        let head = match p.loss {
            Loss::Cotangents => n * p.p as f64 * p.streams() as f64,
            Loss::LaplacianResidual => n,
        };
        4.0 * (n * p.d as f64 + head + 2.0 * p.params() as f64)
    }

    fn default_config(p: &MlpJetBackwardProblem) -> MlpJetBackwardConfig {
        // The exact fp32 path only, as in mlp_jet: tf32x3 competes in tuning (validated
        // before it may win). Every supported problem has a candidate: one point per tile, 4
        // rows per thread (see `every_supported_problem_has_a_legal_default`).
        Self::best_estimated(p, &DeviceLimits::HOPPER, |c| c.math == Math::Fma).unwrap_or(
            MlpJetBackwardConfig {
                rows: 4,
                tile_points: 1,
                math: Math::Fma,
                slab_k: SLAB_K,
                share_slot: false,
                packed_weights: false,
            },
        )
    }

    fn estimate_us(p: &MlpJetBackwardProblem, c: &MlpJetBackwardConfig, _l: &DeviceLimits) -> f64 {
        let Some(sh) = shape(p, c) else {
            return f64::INFINITY;
        };
        let (w, depth) = (p.width as f64, p.depth as f64 - 1.0);
        let (ro, cc) = (c.rows as f64, sh.cols_per_thread as f64);
        let ts = (c.tile_points * p.streams()) as f64;
        let (col_s, dw_s) = match c.math {
            Math::Fma => {
                // Column products: per 4-deep k step a thread issues 4 ro cc FMAs and ro + cc
                // loads; the dW product 64 FMAs per 4 loads at width 128 (fewer when narrower).
                let col_eff = 4.0 * ro * cc / (4.0 * ro * cc + ro + cc);
                let dw_per_thread = (w * w / THREADS as f64).min(64.0);
                let dw_eff = dw_per_thread / (dw_per_thread + 2.0 * (dw_per_thread.sqrt()));
                let fma_rate = 128.0 * 1.75e9 * 0.7; // per SM per second, at a 70% issue ceiling
                (
                    2.0 * depth * w * w * sh.cols as f64 / (fma_rate * col_eff),
                    depth * w * w * ts / (fma_rate * dw_eff),
                )
            }
            Math::Tf32x3 | Math::Split16 | Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols => {
                // Per 8-deep k step a warp issues 3 mma per (16-row, 8-column) tile and, per
                // fragment element, a load and a split (~4 instructions). mma.sync TF32 at ~60%
                // of 495 TFLOP/s is ~6.3 cycles per mma on a sub-partition; three per product.
                // split16: half that (`Math::mma_per_k8`), on 16-deep steps.
                // Packed weights: an A fragment is three 16-byte loads, no split (~10x less).
                let per = c.math.mma_per_k8();
                let a_cost = if packs_weights(c) { 0.4 } else { 4.0 };
                let eff = |mt: f64, nt: f64, a: f64| {
                    let mma = per * mt * nt;
                    let other = 4.0 * (a * mt + 2.0 * nt);
                    mma * 6.3 / (mma * 6.3).max(mma + other)
                };
                let mac_rate = 300e12 / 2.0 / SMS as f64; // tensor multiply-adds per SM per second
                let step = if c.math == Math::Split16 { 16.0 } else { 8.0 };
                let k8 = (ts / step).ceil() * step;
                (
                    2.0 * depth * w * w * sh.cols as f64 * per
                        / (mac_rate * eff(ro / 2.0, cc / 2.0, a_cost)),
                    depth * w * w * k8 * per / (mac_rate * eff(w / 32.0, w / 32.0, 4.0)),
                )
            }
        };
        // Per tile: a barrier per slab and per phase, and the dW read-modify-write (L2).
        let syncs = (2.0 * depth * (w / c.slab_k as f64) + 4.0 * depth + 8.0) * 1.0e-6 / 1.75e3;
        let rmw_s = depth * w * w * 8.0 / 60.0e9;
        let tile_s = col_s + dw_s + syncs + rmw_s;
        let g = Self::geometry(p, c);
        let tiles_per_cta = (p.points.div_ceil(c.tile_points) as f64 / g.grid[0] as f64).ceil();
        // A launch, and the pack entry's when it runs.
        let launches = if packs_weights(c) { 8e-6 } else { 5e-6 };
        (tile_s * tiles_per_cta + launches) * 1e6
    }

    /// Same net and head; the nearest point count (log ratio).
    fn bucket_distance(
        tuned: &MlpJetBackwardProblem,
        wanted: &MlpJetBackwardProblem,
    ) -> Option<f64> {
        let strip = |p: &MlpJetBackwardProblem| MlpJetBackwardProblem { points: 1, ..*p };
        if strip(tuned) != strip(wanted) {
            return None;
        }
        Some((tuned.points as f64 / wanted.points as f64).ln().abs())
    }

    /// Both heads; widths 32 (2-wide dW chunks), 64 and 128; p > 1; d = 1, 2 and 20 (the three
    /// PINN target nets among them).
    fn branch_problems() -> Vec<MlpJetBackwardProblem> {
        let prob = |d, width, depth, p, loss| MlpJetBackwardProblem {
            d,
            width,
            depth,
            p,
            points: 1000,
            loss,
        };
        vec![
            prob(1, 32, 2, 1, Loss::LaplacianResidual),
            prob(3, 64, 3, 4, Loss::Cotangents),
            prob(20, 128, 4, 1, Loss::LaplacianResidual),
            // The other two PINN target nets (d = 20 is the one above), so CI compiles the
            // variants the training-step benchmark runs.
            prob(1, 64, 4, 1, Loss::LaplacianResidual),
            prob(2, 128, 4, 1, Loss::LaplacianResidual),
        ]
    }
}

#[cfg(test)]
mod tests;
