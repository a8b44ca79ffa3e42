//! `mlp_jet`: a tanh MLP evaluated together with its spatial derivatives (PI-BasisNet's
//! basis network `phi: R^d -> R^p`), in one fused pass over a tile of points with the
//! weights staged through shared memory.
//!
//! Layers `z = W a + b`, `s = tanh(z)`. Every derivative stream flows through the same
//! weights: tangents `z'_i = W a'_i`, `a'_i = s' z'_i`; Laplacian `Lz = W La`,
//! `La = s' Lz + s'' sum_i (z'_i)^2`; Hessian diagonal `a''_ii = s' z''_ii + s'' (z'_i)^2`,
//! with `s' = 1 - s^2`, `s'' = -2 s s'`. The input layer starts from `a = x`, `a'_i = e_i`,
//! `La = 0`; the last layer is linear (no tanh). The 1-D second derivative is the Laplacian
//! with `d = 1` (same kernel).
//!
//! # Memory layout (all fp32, row-major, no padding)
//!
//! * `x [points, d]`.
//! * `params`: one arena, layer by layer, `W_l [out_l, in_l]` then `b_l [out_l]`, for
//!   `l = 0..=depth`: layer 0 is `d -> width`, layers `1..depth` are `width -> width`, layer
//!   `depth` is `width -> p` ([`param_count`] floats; [`layer_offsets`] gives each offset).
//!   Must be 16-byte aligned (a `cudaMalloc` pointer is).
//! * `u [points, p]`; `grad [points, d, p]` (`grad[n][i][o] = d u_o / d x_i`);
//!   `second [points, p]` (Laplacian, or `d2u/dx2` when d = 1) or `[points, d, p]` (Hessian
//!   diagonal, `second[n][i][o] = d2 u_o / dx_i^2`). Streams that a problem does not ask for
//!   are not written (pass null).
//!
//! # Launch contract
//!
//! Arguments ([`MlpJet::args`]): `x, params, packed, u, grad, second, n` with `n = points`.
//! The grid is persistent (at most the CTAs that are resident at once); each CTA walks tiles
//! of [`tile_points`] points. `packed` is null unless the config packs its weights
//! ([`MlpJetConfig::packed_weights`] with split16, and every wgmma config, see
//! [`packs_weights`]): then `<entry>_pack(params, packed)`
//! ([`PACK_ARGS`], grid [`pack_geometry`]) runs first on the same stream and fills
//! [`packed_floats`] floats of it (scratch, no initialisation needed; one launch in flight per
//! buffer).
//!
//! The template (`templates/mlp_jet.cu.tera`) explains the work split and the pipeline.
//! Several ways to compute each layer's product ([`Math`]): fp32 FMA (the default, exact
//! fp32), and on tensor cores 3xTF32, split16, or split16 on wgmma in three layouts (`wgmma`,
//! `wgmma_duo`, `wgmma_cols`), tuning candidates validated before they may win.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

/// The family.
pub struct MlpJet;

/// f64 CPU reference and parameter initialisation.
pub mod reference;
pub use reference::{init_params, reference_points, reference_points_f32, Jets};

/// Which derivative streams one call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Streams {
    /// `u` only.
    Value,
    /// `u` and `grad u`.
    ValueGrad,
    /// `u`, `du/dx` and `d2u/dx2` (d = 1).
    ValueD2,
    /// `u`, `grad u` and the Laplacian.
    ValueGradLaplacian,
    /// `u`, `grad u` and the diagonal of the Hessian.
    ValueGradHessdiag,
}

/// One call: the net's shape, the number of points and the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MlpJetProblem {
    /// Input (spatial) dimension.
    pub d: u32,
    /// Hidden width.
    pub width: u32,
    /// Hidden tanh layers (depth + 1 linear layers).
    pub depth: u32,
    /// Outputs (basis functions).
    pub p: u32,
    /// Points evaluated (`N`).
    pub points: u32,
    pub streams: Streams,
}

/// How the per-layer product is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Math {
    /// fp32 FMA on the CUDA cores: exact fp32 arithmetic.
    #[default]
    Fma,
    /// Tensor cores, `mma.sync` m16n8k8 TF32 with each fp32 operand split into a TF32 high
    /// part and a TF32 remainder, three products (hi*hi + hi*lo + lo*hi): ~fp32 accuracy at
    /// tensor-core rate. Needs 8 lanes down (the fragment's 8 x 4 lane grid); streams are
    /// carried in pairs (an odd count wastes one column per point).
    Tf32x3,
    /// Tensor cores on 16-deep `mma.sync` steps: x = hi + lo with hi = fp16(x) (TF32's bits
    /// where x is in fp16's range), hi*hi on one fp16 m16n8k16 product and the cross terms
    /// x*lo + lo*x of each 8-deep half on one more, x scaled by 2^-6 and lo by 2^6 so that both
    /// stay normal fp16; so half of tf32x3's tensor time. The cross terms keep 11 bits, ~2^-23
    /// of each product (tf32x3: ~2^-22; bf16 cross terms, the first version: ~2^-20, which
    /// `mlp_jet_backward` keeps: its outputs are held to 1e-4). Lane grid and stream pairs as
    /// for tf32x3.
    Split16,
    /// split16's operands on warpgroup `wgmma` (sm_90a): a warpgroup takes 32 points, every
    /// layer's input stays in registers as the wgmma A operand (rows = point x stream,
    /// K = neurons) and the weights, split once per launch by the `_pack` entry, stay in
    /// shared memory for the whole launch as the B operand. No shared-memory activations, no
    /// barriers after the weights are loaded. Needs the width a multiple of 64 and the
    /// fragments within [`WGMMA_FRAG_REGS`] registers (width 64: up to 4 streams; 128: 2),
    /// and every weight in shared memory ([`wgmma_smem_bytes`]).
    Wgmma,
    /// wgmma with two warpgroups per 32-point tile, one per stream pair (3 or 4 streams; width
    /// 64 or 128), built for width 128, where one warpgroup cannot hold both pairs' fragments
    /// and 6-byte weights do not fit shared memory: weights at 4 bytes (fp16 hi and the 2^11-scaled fp16 remainder,
    /// a second accumulator for the cross terms), pair 1's jet update fed pair 0's tanh and
    /// squared tangent through shared memory. 8 warps, the output layer fused; legal where the
    /// weights, the exchange buffer, the biases and layer 0 fit shared memory
    /// ([`duo_smem_bytes`]).
    WgmmaDuo,
    /// split16's operands on `wgmma` the other way round, for nets with many streams (the d =
    /// 20 target: 22), whose per-point fragments no warpgroup's registers hold: the weights
    /// are the A operand (M = neurons, 64 per warpgroup, one warp per 16), streamed through
    /// shared memory one 128-byte K block at a time; the tile's activations are the B operand
    /// in shared memory (N = [`cols_n`], points x padded streams, at most 256). The lane layout,
    /// the jet update and the fused output layer are split16's (one point group, 16 neurons a
    /// warp: `warps = width / 16`). Width 64 or 128, the output layer fused, and the
    /// activations plus at least [`COLS_MIN_STAGES`] slabs in shared memory ([`cols_stages`]).
    WgmmaCols,
}

impl Math {
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Math::Fma => "fma",
            Math::Tf32x3 => "tf32x3",
            Math::Split16 => "split16",
            Math::Wgmma => "wgmma",
            Math::WgmmaDuo => "wgmma_duo",
            Math::WgmmaCols => "wgmma_cols",
        }
    }

    /// Tensor time of one 16-row x 8-column product tile over 8 k, in TF32 m16n8k8 units (the
    /// estimates' cost of an mma path): tf32x3 issues three; split16 issues three m16n8k16,
    /// each a TF32 m16n8k8's time, per 16 k. The FMA path issues none.
    pub(crate) fn mma_per_k8(self) -> f64 {
        match self {
            Math::Fma => 0.0,
            Math::Tf32x3 => 3.0,
            Math::Split16 | Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols => 1.5,
        }
    }
}

/// A point of the search space.
///
/// Lanes of a warp form a `lane_rows x (32 / lane_rows)` grid: neurons of the layer output
/// down, groups of points across. A lane holds its neurons times `points_per_lane` points
/// times every stream of those points in registers. Warps split the points, and also the
/// neurons only as far as the registers require ([`row_warps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MlpJetConfig {
    pub warps: u32,
    /// Lanes of a warp splitting the neurons: 8, 16 or 32.
    pub lane_rows: u32,
    /// Points per lane.
    pub points_per_lane: u32,
    pub math: Math,
    /// split16 only: the hidden weights are split once per launch, by a `_pack` entry, into
    /// the A fragments the slab product reads (into the `packed` scratch, [`packed_floats`]),
    /// instead of by every warp across the points on every tile. A hidden slab then takes 1.5
    /// words per weight. Configs written before this field existed read as false.
    #[serde(default)]
    pub packed_weights: bool,
}

/// Input dimensions supported.
pub const MAX_D: u32 = 32;
/// Outputs supported.
pub const MAX_P: u32 = 128;
/// Hidden widths the kernel is written for (multiples of the weight slab).
pub const WIDTHS: [u32; 4] = [32, 64, 128, 256];
/// Hidden layers supported.
pub const DEPTHS: std::ops::RangeInclusive<u32> = 2..=8;
/// Most points one call may evaluate (output offsets stay below 2^40 floats).
pub const MAX_POINTS: u32 = 1 << 28;
/// Columns of a weight slab: the K depth one shared-memory stage holds.
pub const SLAB_K: u32 = 32;
/// Floats of a slab row: `SLAB_K` plus 4 of padding, so that the rows lanes read at once
/// fall on distinct banks.
pub const SLAB_LD: u32 = SLAB_K + 4;
/// Slab buffers (double buffering: the next slab loads while this one is used).
pub const SLAB_STAGES: u32 = 2;
/// Most fp32 accumulators a lane may hold (neurons x points x streams).
pub const MAX_ACC: u32 = 96;
/// SMs of the grid the launch geometry plans for (H100 / H200).
const SMS: u32 = 132;
/// wgmma: most registers a lane's A fragments and accumulators of one layer may take
/// (stream pairs x (width / 16 x 12 fragment words + width / 2 accumulators)).
pub const WGMMA_FRAG_REGS: u32 = 160;
/// wgmma: points of a warpgroup tile (the 64 rows of the A operand are 32 points x a stream
/// pair).
pub const WGMMA_TILE: u32 = 32;
/// The tensor-core paths compute the output layer on the CUDA cores, fused into the last
/// hidden layer's jet update ([`fused_output`]), where a lane's output partial sums (points x
/// padded streams x p) number at most this: p = 1 with up to 24 streams, which a PINN's
/// scalar u is.
pub const FUSED_OUT_PARTIALS: u32 = 24;
/// wgmma_cols: fewest weight slabs in flight (the one in use, the one its refill waits out,
/// one landing).
pub const COLS_MIN_STAGES: u32 = 3;
/// wgmma_cols: most weight slabs (deeper buys nothing once a copy's latency is covered).
pub const COLS_MAX_STAGES: u32 = 6;

impl Streams {
    /// Tangent streams (one per input dimension, or none).
    pub fn tangents(self, d: u32) -> u32 {
        match self {
            Streams::Value => 0,
            _ => d,
        }
    }
    /// Second-order streams: 1 (Laplacian, d2), d (Hessian diagonal) or 0.
    pub fn seconds(self, d: u32) -> u32 {
        match self {
            Streams::Value | Streams::ValueGrad => 0,
            Streams::ValueD2 | Streams::ValueGradLaplacian => 1,
            Streams::ValueGradHessdiag => d,
        }
    }
    /// Whether the second-order streams are the Hessian diagonal (else the Laplacian).
    pub fn hessdiag(self) -> bool {
        self == Streams::ValueGradHessdiag
    }
    /// Short tag of what the kernel computes (`value_d2` is the Laplacian at d = 1).
    fn tag(self) -> &'static str {
        match self {
            Streams::Value => "v",
            Streams::ValueGrad => "vg",
            Streams::ValueD2 | Streams::ValueGradLaplacian => "vgl",
            Streams::ValueGradHessdiag => "vgh",
        }
    }
}

impl MlpJetProblem {
    /// Streams carried per point: value, tangents, second-order streams.
    pub fn streams_per_point(&self) -> u32 {
        1 + self.streams.tangents(self.d) + self.streams.seconds(self.d)
    }
    /// The nets the PINN targets name: u, grad u and the Laplacian.
    pub fn laplacian(d: u32, width: u32, depth: u32, p: u32, points: u32) -> Self {
        MlpJetProblem {
            d,
            width,
            depth,
            p,
            points,
            streams: Streams::ValueGradLaplacian,
        }
    }
    /// Floats of each output: `u`, `grad`, `second` (0 when not computed).
    pub fn output_lens(&self) -> [usize; 3] {
        let (n, p) = (self.points as usize, self.p as usize);
        let t = self.streams.tangents(self.d) as usize;
        let s = self.streams.seconds(self.d) as usize;
        [n * p, n * t * p, n * s * p]
    }
}

/// Offsets (in floats) of `W_l` and `b_l` in the arena, for `l = 0..=depth`.
pub fn layer_offsets(d: u32, width: u32, depth: u32, p: u32) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for l in 0..=depth {
        let fan_in = if l == 0 { d } else { width } as usize;
        let fan_out = if l == depth { p } else { width } as usize;
        out.push((at, at + fan_out * fan_in));
        at += fan_out * fan_in + fan_out;
    }
    out
}

/// Floats of the parameter arena.
pub fn param_count(d: u32, width: u32, depth: u32, p: u32) -> usize {
    let (_, b) = *layer_offsets(d, width, depth, p)
        .last()
        .expect("depth + 1 layers");
    b + p as usize
}

impl MlpJetConfig {
    pub fn threads(&self) -> u32 {
        32 * self.warps
    }
    fn lane_cols(&self) -> u32 {
        32 / self.lane_rows
    }
}

/// Warps splitting the neurons of `p` under `c`: the fewest (a power of two dividing the
/// warps) that bring a lane's accumulators (neurons x points x streams) to at most
/// [`MAX_ACC`]; more would only cut the points a tile shares its weight reads over. `None`
/// when even a split over every warp does not fit, or does not divide the width.
// is_multiple_of is newer than the workspace's rust-version.
#[allow(clippy::manual_is_multiple_of)]
pub fn row_warps(p: &MlpJetProblem, c: &MlpJetConfig) -> Option<u32> {
    let s = acc_streams(p, c);
    if c.math == Math::WgmmaCols {
        // A warp per 16 neurons (a warpgroup per 64), all points in one group.
        return (16 * c.warps == p.width && 2 * c.points_per_lane * s <= MAX_ACC)
            .then_some(c.warps);
    }
    // tf32x3, split16: a lane holds rows g and g + 8 of each 16-row tile, so an even number of
    // rows.
    let unit = if c.math == Math::Fma { 1 } else { 2 };
    let mut wr = 1;
    while wr <= c.warps {
        let span = c.lane_rows * wr;
        if span * unit > p.width || p.width % (span * unit) != 0 {
            return None;
        }
        if (p.width / span) * c.points_per_lane * s <= MAX_ACC {
            return Some(wr);
        }
        wr *= 2;
    }
    None
}

/// Streams a lane accumulates per point: all of them, padded to pairs for tf32x3 (a lane's
/// accumulator fragment holds two adjacent columns).
fn acc_streams(p: &MlpJetProblem, c: &MlpJetConfig) -> u32 {
    let s = p.streams_per_point();
    match c.math {
        Math::Fma => s,
        Math::Tf32x3 | Math::Split16 | Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols => {
            s.div_ceil(2) * 2
        }
    }
}

/// Whether the output layer runs on the CUDA cores, fused into the last hidden layer's jet
/// update (the tensor-core paths with at most [`FUSED_OUT_PARTIALS`] partial sums per lane),
/// instead of as tensor-core passes of at least 8 (wgmma) or 16 (mma.sync) output rows, all
/// but p of them zero. The FMA path keeps its output passes.
/// wgmma_cols counts one point's partial sums (its lanes hold more points and streams than
/// any mma.sync lane, and it has no output passes).
pub fn fused_output(p: &MlpJetProblem, c: &MlpJetConfig) -> bool {
    let points = if c.math == Math::WgmmaCols {
        1
    } else {
        c.points_per_lane
    };
    c.math != Math::Fma && fuses(points, p)
}

/// Whether `points` points per lane of `p` (padded streams x p partial sums each) are at most
/// [`FUSED_OUT_PARTIALS`].
fn fuses(points: u32, p: &MlpJetProblem) -> bool {
    points * p.streams_per_point().div_ceil(2) * 2 * p.p <= FUSED_OUT_PARTIALS
}

/// wgmma_cols: the tile's activation columns, the wgmma N (4 points per lane slot x padded
/// streams).
pub fn cols_n(p: &MlpJetProblem, c: &MlpJetConfig) -> u32 {
    4 * c.points_per_lane * acc_streams(p, c)
}

/// wgmma_cols: bytes of the tile's activations (hi and cross operand tiles, 6 bytes per
/// neuron and column) and of one weight slab (a 128-byte K block of every neuron).
pub fn cols_bytes(p: &MlpJetProblem, c: &MlpJetConfig) -> (u32, u32) {
    (6 * cols_n(p, c) * p.width, 128 * p.width)
}

/// wgmma_cols: the weight slabs that fit shared memory beside the activations and the fused
/// output's partial sums, at most [`COLS_MAX_STAGES`] (fewer than [`COLS_MIN_STAGES`]: the
/// config cannot serve `p`).
pub fn cols_stages(p: &MlpJetProblem, c: &MlpJetConfig) -> u32 {
    let (act, slab) = cols_bytes(p, c);
    let limit = DeviceLimits::HOPPER.max_dynamic_smem_per_block;
    (limit.saturating_sub(act + 4 * red_floats(p, c)) / slab).min(COLS_MAX_STAGES)
}

/// The fused output layer's partial sums in shared memory, `red` [warps down][tile points]
/// [streams][p] floats ([`fused_output`]), for the lane grid's tile (the slab paths' and
/// wgmma_cols'); 0 without.
fn red_floats(p: &MlpJetProblem, c: &MlpJetConfig) -> u32 {
    if !fused_output(p, c) {
        return 0;
    }
    let row_warps = row_warps(p, c).unwrap_or(c.warps);
    let tile = (c.warps / row_warps) * c.lane_cols() * c.points_per_lane;
    row_warps * tile * p.streams_per_point() * p.p
}

/// wgmma (one point per lane): [`fused_output`].
fn wgmma_fused(p: &MlpJetProblem) -> bool {
    fuses(1, p)
}

/// wgmma: registers of one layer's A fragments and accumulators per lane (see
/// [`WGMMA_FRAG_REGS`]).
pub fn wgmma_frag_regs(p: &MlpJetProblem) -> u32 {
    let pairs = p.streams_per_point().div_ceil(2);
    pairs * (p.width / 16 * 12 + p.width / 2)
}

/// Points of one CTA tile of `p` under `c` (1 when the config cannot serve `p`).
pub fn tile_points(p: &MlpJetProblem, c: &MlpJetConfig) -> u32 {
    match c.math {
        Math::Wgmma => return WGMMA_TILE * c.warps / 4,
        Math::WgmmaDuo => return WGMMA_TILE,
        Math::WgmmaCols => return 4 * c.points_per_lane,
        _ => {}
    }
    let wr = row_warps(p, c).unwrap_or(c.warps);
    (c.warps / wr) * c.lane_cols() * c.points_per_lane
}

/// Outputs of the PINN target nets: a scalar u, as a PINN's autograd loss computes it (its
/// cost in PyTorch grows with p: one backward pass per output and per output and input).
pub const TARGET_P: u32 = 1;

/// The PINN targets (u, grad u and the Laplacian, p = [`TARGET_P`]): (d, width, depth,
/// points) = (1, 64, 4, 2^20), (2, 128, 4, 2^18), (20, 128, 4, 2^16). The PyTorch autograd
/// baseline (`benches/peers/pinn_torch.py`) runs the same nets.
pub fn pinn_targets() -> [MlpJetProblem; 3] {
    [
        MlpJetProblem::laplacian(1, 64, 4, TARGET_P, 1 << 20),
        MlpJetProblem::laplacian(2, 128, 4, TARGET_P, 1 << 18),
        MlpJetProblem::laplacian(20, 128, 4, TARGET_P, 1 << 16),
    ]
}

/// Derived shape of one (problem, config): what the template is rendered with.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Streams per point.
    s: u32,
    /// Warps down the neurons.
    row_warps: u32,
    /// Hidden neurons per lane.
    rows: u32,
    /// Output neurons per lane in one output pass (at most `rows`).
    out_rows: u32,
    /// Output neurons per pass, and passes.
    pass_rows: u32,
    passes: u32,
    tile: u32,
    /// Floats of one point group's columns in shared memory (padded, see the template).
    group_floats: u32,
    act_floats: u32,
    slab_floats: u32,
    /// Weight slab buffers.
    slab_stages: u32,
    /// The fused output layer's partial sums ([`fused_output`]): warps down x tile points x
    /// streams x p floats; 0 without.
    red_floats: u32,
    smem_bytes: u32,
}

/// Whether the activation columns are stored pre-split: split16 with more than one warp down
/// the neurons, so that each column has several readers (with one, the reader splitting fp32
/// columns is cheaper: d = 1 lost 7% pre-split, 2026-11-30 session 13, call 3).
pub fn presplit(c: &MlpJetConfig, row_warps: u32) -> bool {
    c.math == Math::Split16 && row_warps > 1
}

/// 4-byte words of one activation column when pre-split (see [`presplit`]): per 16 neurons, 8 fp16 pairs and 16
/// scaled fp16 cross-term pairs (the B fragments, split once by the layer that writes them), padded to
/// 8 mod 32 words so that the 64-bit fragment loads of a half-warp (4 columns x 4 lanes) hit 32
/// distinct banks.
pub fn split16_column_words(width: u32) -> u32 {
    let words = width / 16 * 24;
    words + (8 + 32 - words % 32) % 32
}

/// Whether launches of `c` run the `_pack` entry first.
pub fn packs_weights(c: &MlpJetConfig) -> bool {
    (c.packed_weights && c.math == Math::Split16)
        || matches!(c.math, Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols)
}

/// Floats of the `packed` scratch of `p` under `c`: 1.5 words per weight, the hidden slabs
/// (split16, wgmma_cols) or every weight past layer 0 (wgmma, [`wgmma_pack_bytes`]); 0 without
/// packed weights.
pub fn packed_floats(p: &MlpJetProblem, c: &MlpJetConfig) -> usize {
    match c.math {
        Math::Wgmma => wgmma_pack_bytes(p) as usize / 4,
        Math::WgmmaDuo => duo_pack_bytes(p) as usize / 4,
        _ if packs_weights(c) => (p.depth as usize - 1) * (p.width as usize).pow(2) * 3 / 2,
        _ => 0,
    }
}

/// The most floats of `packed` scratch any config of `p`'s net needs (wgmma's, which holds the
/// hidden slabs' count and the output layer; wgmma_duo's 4 bytes a weight are less).
pub fn packed_floats_max(p: &MlpJetProblem) -> usize {
    wgmma_pack_bytes(p) as usize / 4
}

/// wgmma_duo: bytes of the packed weights, two fp16 operand tiles (hi, scaled remainder) per
/// hidden layer.
pub fn duo_pack_bytes(p: &MlpJetProblem) -> u32 {
    4 * p.width * p.width * (p.depth - 1)
}

/// wgmma_duo: dynamic shared memory, the packed weights, the exchange buffer (a float2 per
/// neuron of each of 128 threads), the hidden biases and layer 0 (`W_0`, `b_0`) in fp32.
/// The d = 2 target net takes all of it: 196608 + 32768 + 1536 + 1536 = 227 KB.
pub fn duo_smem_bytes(p: &MlpJetProblem) -> u32 {
    duo_pack_bytes(p)
        + 8 * 128 * p.width / 4
        + 4 * (p.depth - 1) * p.width
        + 4 * p.width * (p.d + 1)
}

/// wgmma: output neurons per output chunk (one wgmma N: p rounded up to 8, at most 32), and p
/// rounded up to whole chunks: the output rows on tensor cores, 0 when the output layer is
/// fused ([`fused_output`]).
pub fn wgmma_out_chunk(p: &MlpJetProblem) -> (u32, u32) {
    let n = p.p.div_ceil(8).min(4) * 8;
    (
        n,
        if wgmma_fused(p) {
            0
        } else {
            p.p.div_ceil(n) * n
        },
    )
}

/// wgmma: bytes of the packed weights, three fp16 operand tiles (hi, two cross-term halves)
/// of 2 bytes per weight for each hidden layer and, unless fused, for the output layer padded
/// to whole chunks.
pub fn wgmma_pack_bytes(p: &MlpJetProblem) -> u32 {
    let (_, p_pad) = wgmma_out_chunk(p);
    6 * p.width * ((p.depth - 1) * p.width + p_pad)
}

/// wgmma: dynamic shared memory, the packed weights then the biases (hidden and padded output
/// chunks) and layer 0 (`W_0` and `b_0`) in fp32.
pub fn wgmma_smem_bytes(p: &MlpJetProblem) -> u32 {
    let (_, p_pad) = wgmma_out_chunk(p);
    wgmma_pack_bytes(p) + 4 * ((p.depth - 1) * p.width + p_pad) + 4 * p.width * (p.d + 1)
}

/// The pack entry's grid. split16: one thread per (hidden slab, 16-deep step, 16-row tile,
/// lane), which is 32 lanes per 16 x 16 block of each hidden matrix; the wgmma paths: one
/// thread per 16-byte chunk of the packed weights.
pub fn pack_geometry(p: &MlpJetProblem, c: &MlpJetConfig) -> LaunchGeometry {
    let bytes = match c.math {
        Math::WgmmaDuo => duo_pack_bytes(p),
        Math::Wgmma => wgmma_pack_bytes(p),
        Math::WgmmaCols => 4 * packed_floats(p, c) as u32,
        _ => return packed_fragment_grid(p.depth - 1, p.width),
    };
    LaunchGeometry {
        grid: [(bytes / 16).div_ceil(256), 1, 1],
        block: [256, 1, 1],
        dynamic_smem_bytes: 0,
        cluster: [1, 1, 1],
    }
}

/// A grid of 256-thread blocks with one thread per lane of every 16 x 16 block of `matrices`
/// `width x width` matrices: the pack entries of both PINN families.
pub(crate) fn packed_fragment_grid(matrices: u32, width: u32) -> LaunchGeometry {
    let threads = matrices * (width / 16) * (width / 16) * 32;
    LaunchGeometry {
        grid: [threads.div_ceil(256), 1, 1],
        block: [256, 1, 1],
        dynamic_smem_bytes: 0,
        cluster: [1, 1, 1],
    }
}

/// The pack entry's arguments.
pub const PACK_ARGS: [KernelArg; 2] = [
    KernelArg {
        name: "params",
        c_type: "const float*",
    },
    KernelArg {
        name: "packed",
        c_type: "float*",
    },
];

/// The shape of a config that serves `p` (callers check [`row_warps`] first; a config that
/// cannot serve gets the all-warps split, which `check_problem` rejects).
fn shape(p: &MlpJetProblem, c: &MlpJetConfig) -> Shape {
    let s = p.streams_per_point();
    let row_warps = row_warps(p, c).unwrap_or(c.warps);
    let span = c.lane_rows * row_warps;
    let rows = (p.width / span).max(1);
    let mut out_rows = p.p.div_ceil(span).min(rows);
    debug_assert_eq!(rows * span, p.width);
    let groups = (c.warps / row_warps) * c.lane_cols();
    let (group_floats, act_floats) = match c.math {
        Math::Fma => {
            // +4 floats: consecutive groups start 4 banks apart (an odd number of 16-byte
            // chunks).
            let g = c.points_per_lane * s * p.width + 4;
            (g, groups * g)
        }
        Math::WgmmaCols => {
            // The hi and cross operand tiles of one point group.
            out_rows = out_rows.div_ceil(2) * 2;
            let act = cols_bytes(p, c).0 / 4;
            (act, act)
        }
        Math::Tf32x3 | Math::Split16 | Math::Wgmma | Math::WgmmaDuo => {
            // Whole 16-row tiles; a warp's columns (points x paired streams), each a k-vector
            // padded by 4 floats so the 8 columns of a fragment fall on distinct banks
            // (split16: the column's pre-split words, see `split16_column_words`).
            out_rows = out_rows.div_ceil(2) * 2;
            let column = if presplit(c, row_warps) {
                split16_column_words(p.width)
            } else {
                p.width + 4
            };
            let g = c.points_per_lane * 4 * acc_streams(p, c) * column;
            (g, (c.warps / row_warps) * g)
        }
    };
    let pass_rows = span * out_rows;
    let fused = fused_output(p, c);
    let passes = if fused { 0 } else { p.p.div_ceil(pass_rows) };
    // A packed hidden slab: 16-deep steps x 16-row tiles x 32 lanes x 12 words (wgmma_cols:
    // a 128-byte K block of every neuron).
    let (slab_floats, slab_stages) = if c.math == Math::WgmmaCols {
        (cols_bytes(p, c).1 / 4, cols_stages(p, c))
    } else if packs_weights(c) {
        (
            (p.width * SLAB_LD).max(SLAB_K * p.width * 3 / 2),
            SLAB_STAGES,
        )
    } else {
        (p.width * SLAB_LD, SLAB_STAGES)
    };
    let tile = groups * c.points_per_lane;
    let red_floats = red_floats(p, c);
    let smem_bytes = 4 * (act_floats + slab_stages * slab_floats + red_floats);
    Shape {
        s,
        row_warps,
        rows,
        out_rows,
        pass_rows,
        passes,
        tile,
        group_floats,
        act_floats,
        slab_floats,
        slab_stages,
        red_floats,
        smem_bytes,
    }
}

/// What the template's wgmma path is rendered with.
fn wgmma_render_vars(p: &MlpJetProblem, c: &MlpJetConfig) -> RenderVars {
    let (out_n, p_pad) = wgmma_out_chunk(p);
    let operands = |n: u32| {
        let (list, bindings) = crate::families::wgmma_accumulator_operands(n);
        let a = (n..n + 4)
            .map(|i| format!("%{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        (list, bindings, a, format!("%{}", n + 4))
    };
    let (hid_d, hid_c, hid_a, hid_desc) = operands(p.width / 2);
    let (out_d, out_c, out_a, out_desc) = operands(out_n / 2);
    let duo = c.math == Math::WgmmaDuo;
    let vars = json!({
        "wgmma": true,
        "wgcols": false,
        "warpgroups_any": true,
        "duo": duo,
        "tf32x3": false,
        "split16": false,
        "presplit": false,
        "packed": true,
        "fused_out": wgmma_fused(p),
        "streams": p.streams_per_point(),
        "threads": c.threads(),
        "warpgroups": c.warps / 4,
        "out_n": out_n,
        "p_pad": p_pad,
        "smem_bytes": if duo { duo_smem_bytes(p) } else { wgmma_smem_bytes(p) },
        "hid_d_operands": hid_d,
        "hid_d_constraints": hid_c,
        "hid_a_operands": hid_a,
        "hid_desc_operand": hid_desc,
        "out_d_operands": out_d,
        "out_d_constraints": out_c,
        "out_a_operands": out_a,
        "out_desc_operand": out_desc,
    });
    with_net_vars(p, c, vars)
}

/// `vars` (an object) with what every path renders of the net and its streams added.
fn with_net_vars(p: &MlpJetProblem, c: &MlpJetConfig, vars: Value) -> RenderVars {
    let Value::Object(mut map) = vars else {
        unreachable!("json! of an object literal")
    };
    let net = json!({
        "entry": MlpJet::entry(p, c),
        "d": p.d,
        "width": p.width,
        "depth": p.depth,
        "p": p.p,
        "tangents": p.streams.tangents(p.d),
        "seconds": p.streams.seconds(p.d),
        "hessdiag": p.streams.hessdiag() && p.d > 1,
    });
    if let Value::Object(net) = net {
        map.extend(net);
    }
    map
}

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

/// CTAs resident on one SM: shared memory, and registers planned at 255 per thread.
fn ctas_per_sm(smem_bytes: u32, threads: u32) -> u32 {
    let smem_fit = (228 * 1024) / (smem_bytes + 1024);
    let reg_fit = 65536 / (threads * 256);
    smem_fit.min(reg_fit).max(1)
}

impl Family for MlpJet {
    type Problem = MlpJetProblem;
    type Config = MlpJetConfig;

    const NAME: &'static str = "mlp_jet";
    /// The split16 helpers, then the kernel.
    const TEMPLATE: &'static str = concat!(
        include_str!("../../../templates/mma_split16.cuh"),
        include_str!("../../../templates/mlp_jet.cu.tera")
    );

    fn space() -> Vec<MlpJetConfig> {
        let mut out = Vec::new();
        for warps in [4, 8] {
            for points_per_lane in [1, 2, 4] {
                for lane_rows in [8, 16, 32] {
                    out.push(MlpJetConfig {
                        warps,
                        lane_rows,
                        points_per_lane,
                        math: Math::Fma,
                        packed_weights: false,
                    });
                }
                for (math, packed_weights) in [
                    (Math::Tf32x3, false),
                    (Math::Split16, false),
                    (Math::Split16, true),
                ] {
                    out.push(MlpJetConfig {
                        warps,
                        lane_rows: 8,
                        points_per_lane,
                        math,
                        packed_weights,
                    });
                }
            }
            // One or two warpgroups of 32-point tiles.
            out.push(MlpJetConfig {
                warps,
                lane_rows: 8,
                points_per_lane: 1,
                math: Math::Wgmma,
                packed_weights: false,
            });
        }
        // Two warpgroups on one 32-point tile, a stream pair each.
        out.push(MlpJetConfig {
            warps: 8,
            lane_rows: 8,
            points_per_lane: 1,
            math: Math::WgmmaDuo,
            packed_weights: false,
        });
        // Weights as A, activation columns as B: a warp per 16 neurons (width 64 or 128).
        for warps in [4, 8] {
            for points_per_lane in [1, 2, 4] {
                out.push(MlpJetConfig {
                    warps,
                    lane_rows: 8,
                    points_per_lane,
                    math: Math::WgmmaCols,
                    packed_weights: false,
                });
            }
        }
        out
    }

    // is_multiple_of is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn check_config(c: &MlpJetConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        // 4 or 8 warps: enough to hide shared-memory latency, few enough for 255 registers.
        illegal(c.warps != 4 && c.warps != 8, || {
            format!("{} warps is not 4 or 8", c.warps)
        })?;
        illegal(c.threads() > limits.max_threads_per_block, || {
            format!("{} threads exceed the device's block", c.threads())
        })?;
        // A lane grid of whole rows: 8, 16 or 32 lanes down (8 keeps weight reads conflict-free).
        illegal(![8, 16, 32].contains(&c.lane_rows), || {
            format!("lane_rows {} is not 8, 16 or 32", c.lane_rows)
        })?;
        // tf32x3, split16: the mma fragment's lane grid is 8 rows (g) x 4 columns (t).
        illegal(c.math != Math::Fma && c.lane_rows != 8, || {
            format!("{} needs 8 lanes down, got {}", c.math.tag(), c.lane_rows)
        })?;
        illegal(c.packed_weights && c.math != Math::Split16, || {
            format!("packed weights are split16's, not {}'s", c.math.tag())
        })?;
        // wgmma: a warpgroup's tile is 32 points, one per fragment row pair.
        illegal(c.math == Math::Wgmma && c.points_per_lane != 1, || {
            format!("wgmma takes 1 point per lane, got {}", c.points_per_lane)
        })?;
        // wgmma_duo: two warpgroups (one per stream pair) on one tile, one point per lane.
        illegal(
            c.math == Math::WgmmaDuo && (c.warps != 8 || c.points_per_lane != 1),
            || {
                format!(
                    "wgmma_duo takes 8 warps and 1 point per lane, got {} and {}",
                    c.warps, c.points_per_lane
                )
            },
        )?;
        // 1, 2 or 4 points per lane (more only multiplies registers).
        illegal(![1, 2, 4].contains(&c.points_per_lane), || {
            format!("{} points per lane is not 1, 2 or 4", c.points_per_lane)
        })?;
        Ok(())
    }

    // is_multiple_of is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn check_problem(p: &MlpJetProblem, c: &MlpJetConfig) -> Result<(), Illegal> {
        if c.math == Math::WgmmaDuo {
            // Two stream pairs (3 or 4 streams), 128-byte K blocks, the output layer fused, a
            // pair's fragments and both accumulators in registers (width 128: 64 + 128), and
            // everything in shared memory.
            let s = p.streams_per_point();
            illegal(!(3..=4).contains(&s), || {
                format!("wgmma_duo carries 3 or 4 streams, got {s}")
            })?;
            illegal(p.width % 64 != 0 || p.width > 128, || {
                format!("wgmma_duo needs width 64 or 128, got {}", p.width)
            })?;
            illegal(!fused_output(p, c), || {
                format!("wgmma_duo fuses the output layer: p = {} is past it", p.p)
            })?;
            let limit = DeviceLimits::HOPPER.max_dynamic_smem_per_block;
            let smem = duo_smem_bytes(p);
            return illegal(smem > limit, || {
                format!("{smem} B of weights, exchange and layer 0 in shared memory exceed {limit}")
            });
        }
        if c.math == Math::Wgmma {
            // 128-byte K blocks of the operand tiles; a layer's fragments in registers; every
            // weight in shared memory.
            illegal(p.width % 64 != 0, || {
                format!("wgmma needs the width a multiple of 64, got {}", p.width)
            })?;
            illegal(wgmma_frag_regs(p) > WGMMA_FRAG_REGS, || {
                format!(
                    "{} streams over width {} need {} fragment registers per lane, more than {WGMMA_FRAG_REGS}",
                    p.streams_per_point(),
                    p.width,
                    wgmma_frag_regs(p)
                )
            })?;
            let limit = DeviceLimits::HOPPER.max_dynamic_smem_per_block;
            let smem = wgmma_smem_bytes(p);
            return illegal(smem > limit, || {
                format!("{smem} B of weights in shared memory exceed {limit}")
            });
        }
        if c.math == Math::WgmmaCols {
            // A warp per 16 neurons; one wgmma N for the tile's columns; the output layer
            // fused; at least COLS_MIN_STAGES weight slabs beside the activations.
            illegal(16 * c.warps != p.width, || {
                format!(
                    "wgmma_cols takes a warp per 16 neurons: width {} with {} warps",
                    p.width, c.warps
                )
            })?;
            let n = cols_n(p, c);
            illegal(n > 256, || {
                format!("wgmma_cols: {n} activation columns exceed wgmma's N of 256")
            })?;
            illegal(!fused_output(p, c), || {
                format!("wgmma_cols fuses the output layer: p = {} is past it", p.p)
            })?;
            let stages = cols_stages(p, c);
            illegal(stages < COLS_MIN_STAGES, || {
                format!(
                    "wgmma_cols: {} B of activations leave room for {stages} weight slabs, fewer than {COLS_MIN_STAGES}",
                    cols_bytes(p, c).0
                )
            })?;
        }
        // Every lane owns whole neurons of every hidden layer, and its accumulators
        // (neurons x points x streams) fit MAX_ACC registers once warps split the neurons.
        illegal(row_warps(p, c).is_none(), || {
            format!(
                "{} streams of {} points per lane over width {} need more than {MAX_ACC} \
                 accumulators per lane, or {} lanes down do not divide the width",
                p.streams_per_point(),
                c.points_per_lane,
                p.width,
                c.lane_rows
            )
        })?;
        let sh = shape(p, c);
        // Activations of a tile plus two weight slabs fit a Hopper SM's opt-in shared memory.
        let limit = DeviceLimits::HOPPER.max_dynamic_smem_per_block;
        illegal(sh.smem_bytes > limit, || {
            format!("{} B of shared memory exceed {limit}", sh.smem_bytes)
        })?;
        Ok(())
    }

    fn supports(p: &MlpJetProblem) -> Result<(), Unsupported> {
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
        if !(1..=MAX_P).contains(&p.p) {
            return Err(no(format!("p must be 1..={MAX_P}, got {}", p.p)));
        }
        if p.points == 0 || p.points > MAX_POINTS {
            return Err(no(format!("points must be 1..={MAX_POINTS}")));
        }
        if p.streams == Streams::ValueD2 && p.d != 1 {
            return Err(no(format!(
                "value_d2 is the 1-D second derivative (d = 1), got d = {}; use value_grad_laplacian",
                p.d
            )));
        }
        Ok(())
    }

    fn render_vars(p: &MlpJetProblem, c: &MlpJetConfig) -> RenderVars {
        if matches!(c.math, Math::Wgmma | Math::WgmmaDuo) {
            return wgmma_render_vars(p, c);
        }
        let sh = shape(p, c);
        let wgcols = c.math == Math::WgmmaCols;
        // wgmma_cols: the accumulator operands of m64nNk16, then the two descriptors.
        let n = cols_n(p, c);
        let (cols_d, cols_c) =
            crate::families::wgmma_accumulator_operands(if wgcols { n / 2 } else { 0 });
        let vars = json!({
            "wgmma": false,
            "wgcols": wgcols,
            "warpgroups_any": wgcols,
            "cols_n": n,
            "cols_d_operands": cols_d,
            "cols_d_constraints": cols_c,
            "cols_a_operand": format!("%{}", n / 2),
            "cols_b_operand": format!("%{}", n / 2 + 1),
            "duo": false,
            "tf32x3": c.math == Math::Tf32x3,
            "split16": c.math == Math::Split16,
            "presplit": presplit(c, sh.row_warps),
            "packed": packs_weights(c),
            "fused_out": fused_output(p, c),
            "streams": sh.s,
            "warps": c.warps,
            "threads": c.threads(),
            "row_warps": sh.row_warps,
            "lane_rows": c.lane_rows,
            "points_per_lane": c.points_per_lane,
            "rows": sh.rows,
            "out_rows": sh.out_rows,
            "pass_rows": sh.pass_rows,
            "passes": sh.passes,
            "tile_points": sh.tile,
            "group_floats": sh.group_floats,
            "act_floats": sh.act_floats,
            "slab_k": SLAB_K,
            "slab_ld": SLAB_LD,
            "slab_floats": sh.slab_floats,
            "slab_stages": sh.slab_stages,
            "red_floats": sh.red_floats,
            "smem_bytes": sh.smem_bytes,
        });
        with_net_vars(p, c, vars)
    }

    /// The point count is not in the name: it only shapes the grid.
    fn entry(p: &MlpJetProblem, c: &MlpJetConfig) -> String {
        // The Hessian diagonal of a 1-D net is its Laplacian: one kernel.
        let tag = if p.streams.hessdiag() && p.d == 1 {
            "vgl"
        } else {
            p.streams.tag()
        };
        format!(
            "kiln_mlp_jet_{tag}_d{}_w{}_l{}_p{}_{}_w{}_lr{}_q{}{}",
            p.d,
            p.width,
            p.depth,
            p.p,
            c.math.tag(),
            c.warps,
            c.lane_rows,
            c.points_per_lane,
            if packs_weights(c) { "_pk" } else { "" }
        )
    }

    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("x", "const float*"),
            arg("params", "const float*"),
            arg("packed", "const float*"),
            arg("u", "float*"),
            arg("grad", "float*"),
            arg("second", "float*"),
            arg("n", "int"),
        ]
    }

    fn geometry(p: &MlpJetProblem, c: &MlpJetConfig) -> LaunchGeometry {
        if c.math == Math::WgmmaDuo {
            // One 32-point tile per CTA at a time; one CTA per SM (its shared memory).
            let smem = duo_smem_bytes(p);
            let tiles = p.points.div_ceil(WGMMA_TILE);
            let resident = SMS * ctas_per_sm(smem, c.threads());
            return LaunchGeometry {
                grid: [tiles.min(resident).max(1), 1, 1],
                block: [c.threads(), 1, 1],
                dynamic_smem_bytes: smem,
                cluster: [1, 1, 1],
            };
        }
        if c.math == Math::Wgmma {
            // One warpgroup per 32-point tile; as many CTAs as are resident, at most one per
            // `warps / 4` tiles.
            let smem = wgmma_smem_bytes(p);
            let tiles = p.points.div_ceil(WGMMA_TILE);
            let resident = SMS * ctas_per_sm(smem, c.threads());
            return LaunchGeometry {
                grid: [tiles.div_ceil(c.warps / 4).min(resident).max(1), 1, 1],
                block: [c.threads(), 1, 1],
                dynamic_smem_bytes: smem,
                cluster: [1, 1, 1],
            };
        }
        let sh = shape(p, c);
        let tiles = p.points.div_ceil(sh.tile);
        let resident = SMS * ctas_per_sm(sh.smem_bytes, c.threads());
        LaunchGeometry {
            grid: [tiles.min(resident).max(1), 1, 1],
            block: [c.threads(), 1, 1],
            dynamic_smem_bytes: sh.smem_bytes,
            cluster: [1, 1, 1],
        }
    }

    /// The packed weights, with `packed_weights` (written by the `_pack` entry first).
    fn scratch(p: &MlpJetProblem, c: &MlpJetConfig) -> Vec<Scratch> {
        if packs_weights(c) {
            vec![Scratch {
                arg: "packed",
                bytes: 4 * packed_floats(p, c),
                zero_init: false,
            }]
        } else {
            Vec::new()
        }
    }

    /// The products only (2 per multiply-add): the input layer on the value
    /// (`width x d`), and every other layer on every stream; the elementwise jet update
    /// (a tanh and ~S flops per neuron) is not counted.
    fn flops(p: &MlpJetProblem) -> f64 {
        let (w, s) = (p.width as f64, p.streams_per_point() as f64);
        let per_point = w * p.d as f64 + (p.depth as f64 - 1.0) * w * w * s + p.p as f64 * w * s;
        2.0 * p.points as f64 * per_point
    }

    /// x and the parameters read once, every output stream written once.
    fn min_bytes(p: &MlpJetProblem) -> f64 {
        let outs: usize = p.output_lens().iter().sum();
        let params = param_count(p.d, p.width, p.depth, p.p);
        4.0 * (p.points as f64 * p.d as f64 + params as f64 + outs as f64)
    }

    fn default_config(p: &MlpJetProblem) -> MlpJetConfig {
        // The exact fp32 path only: tf32x3 competes in tuning (every candidate is validated
        // before it may win) but is not a fallback.
        let best = Self::best_estimated(p, &DeviceLimits::HOPPER, |c| c.math == Math::Fma);
        // Every supported problem has a candidate: 8 warps x 32 lanes down give one neuron
        // per lane of width 256 and at most 1 x 65 accumulators (Hessian diagonal, d = 32).
        best.unwrap_or(MlpJetConfig {
            warps: 8,
            lane_rows: 32,
            points_per_lane: 1,
            math: Math::Fma,
            packed_weights: false,
        })
    }

    fn estimate_us(p: &MlpJetProblem, c: &MlpJetConfig, limits: &DeviceLimits) -> f64 {
        if matches!(c.math, Math::Wgmma | Math::WgmmaDuo) {
            // Three fp16 wgmma's per 16 k at ~60% of the 990 TFLOP/s dense rate, padded
            // streams included, and a jet update per neuron and point (~40 instructions)
            // overlapping them across warpgroups.
            let w = p.width as f64;
            let sp = acc_streams(p, c) as f64;
            let (_, p_pad) = wgmma_out_chunk(p);
            let macs = p.points as f64 * sp * w * ((p.depth as f64 - 1.0) * w + p_pad as f64);
            let tensor_s = 3.0 * 2.0 * macs / (0.6 * 990e12);
            let jet_s = p.points as f64 * w * p.depth as f64 * 40.0 / (132.0 * 128.0 * 1.7e9);
            let _ = limits;
            return (tensor_s.max(jet_s) + 0.3 * tensor_s.min(jet_s) + 6e-6) * 1e6;
        }
        if c.math == Math::WgmmaCols {
            // The same tensor work, with the weights streamed from L2 once per tile and the
            // jet update not overlapping the products (a barrier per layer).
            let w = p.width as f64;
            let sp = acc_streams(p, c) as f64;
            let macs = p.points as f64 * sp * w * w * (p.depth as f64 - 1.0);
            let tensor_s = 3.0 * 2.0 * macs / (0.6 * 990e12);
            let jet_s = p.points as f64 * w * p.depth as f64 * sp * 10.0 / (132.0 * 128.0 * 1.7e9);
            let _ = limits;
            return (tensor_s + jet_s + 6e-6) * 1e6;
        }
        let sh = shape(p, c);
        let q = c.points_per_lane as f64;
        let s = sh.s as f64;
        let rows = sh.rows as f64;
        let warps_sm = (c.warps * ctas_per_sm(sh.smem_bytes, c.threads())) as f64;
        let efficiency = match c.math {
            Math::Fma => {
                // Per 4-deep k step a lane issues rows x q x S x 4 FMAs, `rows` weight loads
                // and q x S activation loads; shared memory serves one 128-byte wavefront per
                // clock, weights cost lane_rows / 8 wavefronts per load, activations one.
                let fma = 4.0 * rows * q * s;
                let issue = fma + rows + q * s;
                let wavefronts = rows * (c.lane_rows as f64 / 8.0).max(1.0) + q * s;
                // Cycles per k4 step on an SM sub-partition vs the SM's shared memory.
                let issue_cycles = issue * warps_sm / 4.0;
                let smem_cycles = wavefronts * warps_sm;
                fma * warps_sm / 4.0 / issue_cycles.max(smem_cycles)
            }
            Math::Tf32x3 | Math::Split16 | Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols => {
                // Per 8-deep k step a warp issues 3 mma per (16-row tile, 8-column tile),
                // plus a load and a split (2 cvt, 1 sub) per fragment element. Relative to the
                // FMA rate: mma.sync TF32 at ~60% of 495 TFLOP/s is ~4.4x the fp32 FMA rate,
                // a third of that per product; padded stream columns are wasted.
                // split16: half that (`Math::mma_per_k8`).
                let per = c.math.mma_per_k8();
                let (mt, j) = (rows / 2.0, (acc_streams(p, c) / 2) as f64);
                // Packed weights: an A fragment is three 16-byte loads, no split.
                let a_cost = if packs_weights(c) { 0.4 } else { 4.0 };
                let mma = per * mt * q * j;
                let other = 4.0 * (a_cost * mt + 2.0 * q * j);
                let mma_cycles = mma * 2048.0 / (4.4 * 256.0 / 4.0);
                let busy = mma_cycles.max(mma + other);
                (4.4 / per) * (mma_cycles / busy) * s / (2.0 * j)
            }
        };
        // Few warps per sub-partition hide latency poorly; padded output rows are wasted.
        let latency = (warps_sm / 8.0).min(1.0) * 0.3 + 0.6;
        // (A fused output layer: a few FMAs per neuron, no padded rows.)
        let out_waste = if sh.passes == 0 {
            1.0
        } else {
            (sh.passes * sh.pass_rows) as f64 / p.p as f64
        };
        let w = p.width as f64;
        let useful = (p.depth as f64 - 1.0) * w * w + p.p as f64 * w;
        let done = (p.depth as f64 - 1.0) * w * w + p.p as f64 * w * out_waste;
        // The mma.sync paths ran 2.1-2.5x slower than this model on the H200 (2026-11-30: the
        // split16 target nets at 1443-2002 us against 620-954 estimated); scaled so that their
        // estimates rank against wgmma's.
        let mma_measured = if c.math == Math::Fma { 1.0 } else { 1.0 / 2.3 };
        let rate = 67e12 * efficiency * latency * mma_measured * useful / done;
        // Tail: tiles spread over the persistent grid.
        let g = Self::geometry(p, c);
        let tiles = p.points.div_ceil(sh.tile) as f64;
        let ctas = g.grid[0] as f64;
        let balance = (tiles / ctas).ceil() / (tiles / ctas);
        let compute_s = Self::flops(p) / rate * balance;
        let memory_s = Self::min_bytes(p) / 3.0e12;
        let _ = limits;
        // A launch, and the pack entry's when it runs.
        let launches = if packs_weights(c) { 6e-6 } else { 3e-6 };
        (compute_s.max(memory_s) + launches) * 1e6
    }

    /// Same net and streams; the nearest point count (log ratio).
    fn bucket_distance(tuned: &MlpJetProblem, wanted: &MlpJetProblem) -> Option<f64> {
        let strip = |p: &MlpJetProblem| MlpJetProblem { points: 1, ..*p };
        if strip(tuned) != strip(wanted) {
            return None;
        }
        Some((tuned.points as f64 / wanted.points as f64).ln().abs())
    }

    /// One problem per kind of stream set that changes the source: value only, Laplacian
    /// (tangents and one second-order stream), Hessian diagonal (d second-order streams);
    /// value + gradient compiles the tangent code of the Laplacian without its second-order
    /// line. p past one output pass for some configs, and a partial last pass; p > 1 with the
    /// output layer fused. Then the PINN target nets.
    fn branch_problems() -> Vec<MlpJetProblem> {
        let prob = |d, width, depth, p, streams| MlpJetProblem {
            d,
            width,
            depth,
            p,
            points: 1000,
            streams,
        };
        let mut out = vec![
            prob(3, 32, 2, 40, Streams::Value),
            prob(4, 128, 2, 17, Streams::ValueGradLaplacian),
            prob(6, 32, 2, 3, Streams::ValueGradHessdiag),
            // wgmma: two streams at width 128, and width 64 deep, over several output chunks.
            prob(1, 128, 2, 40, Streams::ValueGrad),
            prob(1, 64, 6, 100, Streams::ValueD2),
            // The output layer fused on the CUDA cores with p > 1 (4 streams x 5 outputs).
            prob(2, 64, 3, 5, Streams::ValueGrad),
        ];
        // The three PINN target nets, so compiling every variant covers every config the
        // benchmarks and the tuned artifact run.
        out.extend(pinn_targets());
        out
    }
}

#[cfg(test)]
mod tests;
