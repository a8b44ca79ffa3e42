//! `small_mlp`: a persistent fused MLP for ~10^3 rows and width <= 256 (PI-GeM's WGAN-GP
//! generator and critic): forward, input VJP, parameter backward and the gradient-penalty
//! double backward, each one launch over all layers.
//!
//! # The net
//!
//! Layers `l = 0..=depth`: `z_l = W_l a_{l-1} + b_l`, `a_l = s(z_l)` for `l < depth`, and the
//! output `y = z_depth` (linear); `a_{-1} = x`. Layer 0 is `d_in -> width`, layers
//! `1..depth` are `width -> width`, layer `depth` is `width -> d_out`. The activation `s` is
//! tanh (`s' = 1 - t^2`, `s'' = -2 t (1 - t^2)`, `t = tanh z`), ReLU, or leaky ReLU with slope
//! [`LEAKY_SLOPE`] (`s' = 1` for `z > 0`, else the slope, as PyTorch differentiates it at 0;
//! `s'' = 0`).
//!
//! # The passes (`problem.pass`)
//!
//! * `forward`: `y [B, d_out]`, and the hidden activations `a_l = s(z_l)`, `l < depth`, into
//!   `stash [depth, B, width]` (null stash: not written). The backward passes read them: every
//!   derivative they need is a function of `a_l` (`s' = 1 - a^2` and `s'' = -2 a (1 - a^2)`
//!   for tanh; for (leaky) ReLU `a > 0` exactly where `z > 0`), so the stash keeps the
//!   activations rather than the pre-activations, and no backward pass evaluates a tanh.
//! * `input_vjp`: given `gy = dL/dy [B, d_out]`, `dx = dL/dx [B, d_in]`:
//!   `d_depth = gy`, `d_{l-1} = s'(z_{l-1}) . (W_l^T d_l)`, `dx = W_0^T d_0`.
//! * `param_grad`: given `gy`, `dL/dW_l = sum_b d_l[b] a_{l-1}[b]^T`, `dL/db_l = sum_b d_l[b]`
//!   (summed over rows), into `grads` (the parameter arena's layout).
//! * `penalty_grad` (scalar critic, `d_out = 1`): the gradient of the WGAN-GP penalty
//!   `P = (1/B) sum_b (|u_b| - 1)^2`, `u_b = grad_x D(x_b)`, with respect to every `W_l, b_l`.
//!
//! # The penalty's double backward (reverse over forward)
//!
//! `dP/dtheta = sum_b ubar_b^T du_b/dtheta` with `ubar_b = dP/du_b = (2/B)(|u_b| - 1) u_b /
//! |u_b|` (0 where `u_b = 0`), held fixed. Since `u_b = J_x D(x_b)^T`, `ubar^T u = J_x D
//! ubar` is the forward-mode tangent of `D` at `x_b` in the direction `ubar_b`; so `dP/dtheta
//! = grad_theta T` where `T` is the output of the tangent net (no bias on tangents):
//!
//! ```text
//! zdot_l = W_l adot_{l-1},  adot_l = s'(z_l) zdot_l,  adot_{-1} = ubar,  T = zdot_depth.
//! ```
//!
//! Reverse mode through the pairs `(z_l, zdot_l)`, seeded with `zbar_depth = 0`,
//! `tbar_depth = dT/dzdot_depth = 1`:
//!
//! ```text
//! dW_l += zbar_l a_{l-1}^T + tbar_l adot_{l-1}^T,   db_l += zbar_l,
//! abar = W_l^T zbar_l,  adotbar = W_l^T tbar_l,
//! tbar_{l-1} = s'(z_{l-1}) adotbar,
//! zbar_{l-1} = s'(z_{l-1}) abar + s''(z_{l-1}) zdot_{l-1} adotbar.
//! ```
//!
//! One launch does, per row tile: the input VJP (`u`), `ubar`, the tangent forward, and the
//! reverse sweep; then, after a grid-wide barrier, the weight gradients. `y` (when not null)
//! receives the per-row penalty terms `(|u_b| - 1)^2` and `dx` (when not null) `u`.
//!
//! # Determinism
//!
//! No float atomics. Row-parallel work writes per-row adjoints to a scratch buffer; after a
//! grid barrier (a counter in the `barrier` scratch word, so the two gradient passes need all
//! CTAs resident: the runtime launches them cooperatively), each weight-gradient entry is a
//! sum over rows `b = 0..B` in order, by one thread. The result does not depend on the grid.
//!
//! # Memory layout (fp32, row-major)
//!
//! `x [B, d_in]`; `params` and `grads`: the arena of [`layer_offsets`] (`W_l [out, in]` then
//! `b_l [out]`, layer by layer; 16-byte aligned); `stash [depth, B, width]`; `gy`, `y [B,
//! d_out]`; `dx [B, d_in]`. Scratch ([`SmallMlp::scratch`]): `workspace` (floats of
//! [`workspace_floats`]) and `barrier` (one u32, zero before the first launch; the kernel
//! leaves its low 31 bits zero).
//!
//! # Launch contract
//!
//! One argument list for every pass ([`SmallMlp::args`]): `x, params, stash, gy, y, dx, grads,
//! workspace, barrier, rows`; a pass ignores what it does not use (null). Grid: persistent,
//! [`SmallMlp::geometry`]; `param_grad` and `penalty_grad` must be launched cooperatively (any
//! grid up to the resident CTAs is correct: every loop is grid-strided).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

/// f64 CPU references of the four passes.
pub mod reference;

/// The family.
pub struct SmallMlp;

/// Which kernel of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    Forward,
    InputVjp,
    ParamGrad,
    PenaltyGrad,
}

/// Hidden-layer activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Tanh,
    Relu,
    /// Slope [`LEAKY_SLOPE`] for `z <= 0` (WGAN critics).
    LeakyRelu,
}

/// Leaky ReLU's negative slope.
pub const LEAKY_SLOPE: f64 = 0.2;

impl Pass {
    fn id(self) -> u32 {
        match self {
            Pass::Forward => 0,
            Pass::InputVjp => 1,
            Pass::ParamGrad => 2,
            Pass::PenaltyGrad => 3,
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Pass::Forward => "fwd",
            Pass::InputVjp => "vjp",
            Pass::ParamGrad => "pgrad",
            Pass::PenaltyGrad => "gp",
        }
    }
    /// Whether the pass ends with the weight gradients (grid barrier, scratch).
    pub fn has_weight_grads(self) -> bool {
        matches!(self, Pass::ParamGrad | Pass::PenaltyGrad)
    }
}

impl Activation {
    fn tag(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::LeakyRelu => "lrelu",
        }
    }
    /// The negative slope of a (leaky) ReLU; 0 for tanh (unused).
    pub fn slope(self) -> f64 {
        match self {
            Activation::LeakyRelu => LEAKY_SLOPE,
            _ => 0.0,
        }
    }
    /// Whether `s''` is nonzero (the penalty's reverse sweep then needs `zdot`).
    pub fn curved(self) -> bool {
        self == Activation::Tanh
    }
}

/// One launch: the net, the pass and the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SmallMlpProblem {
    pub pass: Pass,
    pub d_in: u32,
    pub width: u32,
    /// Hidden layers (depth + 1 linear layers).
    pub depth: u32,
    pub d_out: u32,
    pub activation: Activation,
    /// Rows `B` (not in the kernel's source).
    pub rows: u32,
}

/// A point of the search space: a row tile of `rows_per_cta` rows per CTA of `threads`.
///
/// Warps split the tile's rows (`rows_per_cta / warps` each), lanes the layer's outputs
/// (output `lane + 32 c`); weights stream through shared memory 32 reduction indices at a
/// time, double-buffered with `cp.async`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SmallMlpConfig {
    pub threads: u32,
    pub rows_per_cta: u32,
}

/// Hidden widths the kernel is written for (whole 32-lane column groups).
pub const WIDTHS: [u32; 4] = [32, 64, 128, 256];
/// Largest input and output dimensions.
pub const MAX_D_IN: u32 = 256;
pub const MAX_D_OUT: u32 = 256;
/// Hidden layers supported.
pub const DEPTHS: std::ops::RangeInclusive<u32> = 1..=6;
/// Most rows one call may take.
pub const MAX_ROWS: u32 = 1 << 24;
/// Reduction indices per weight slab.
pub const SLAB_K: u32 = 32;
/// Most fp32 accumulators a lane may hold (products x rows x 32-column groups).
pub const MAX_ACC: u32 = 64;
/// SMs of the grid the geometry plans for (H100 / H200); the runtime clamps to the device.
const SMS: u32 = 132;

/// The WGAN-GP critic of the issue: 64 -> 128 x 3 (leaky ReLU) -> 1, B = 1000.
pub fn wgan_critic(pass: Pass, rows: u32) -> SmallMlpProblem {
    SmallMlpProblem {
        pass,
        d_in: 64,
        width: 128,
        depth: 3,
        d_out: 1,
        activation: Activation::LeakyRelu,
        rows,
    }
}

/// The WGAN-GP generator of the issue: 32 (noise) -> 128 x 3 (tanh) -> 64, B = 1000.
pub fn wgan_generator(pass: Pass, rows: u32) -> SmallMlpProblem {
    SmallMlpProblem {
        pass,
        d_in: 32,
        width: 128,
        depth: 3,
        d_out: 64,
        activation: Activation::Tanh,
        rows,
    }
}

/// The parameter arena is `mlp_jet`'s layout (`W_l` [out, in] row-major, then `b_l`, layer by
/// layer; here with `d_in` inputs and `d_out` outputs): its offsets and size serve both.
pub use super::mlp_jet::{layer_offsets, param_count};

impl SmallMlpProblem {
    pub fn params(&self) -> usize {
        param_count(self.d_in, self.width, self.depth, self.d_out)
    }
    /// `(fan_in, fan_out)` of layer `l`.
    pub fn layer(&self, l: u32) -> (u32, u32) {
        let fan_in = if l == 0 { self.d_in } else { self.width };
        let fan_out = if l == self.depth {
            self.d_out
        } else {
            self.width
        };
        (fan_in, fan_out)
    }
    /// Floats of the stash (`[depth, B, width]`).
    pub fn stash_len(&self) -> usize {
        self.depth as usize * self.rows as usize * self.width as usize
    }
    /// The same net and rows for another pass.
    pub fn with_pass(&self, pass: Pass) -> Self {
        SmallMlpProblem { pass, ..*self }
    }
}

/// Floats of the `workspace` scratch: per-row adjoints `[depth + 1, B, max(width, d_out)]`;
/// the penalty adds the tangent adjoints (same shape), the tangents `adot_{l-1}` `[depth + 1,
/// B, max(d_in, width)]` and, for tanh, `zdot` `[depth, B, width]`.
pub fn workspace_floats(p: &SmallMlpProblem) -> usize {
    let (b, l) = (p.rows as usize, p.depth as usize + 1);
    let nadj = p.width.max(p.d_out) as usize;
    let ntan = p.width.max(p.d_in) as usize;
    match p.pass {
        Pass::Forward | Pass::InputVjp => 0,
        Pass::ParamGrad => l * b * nadj,
        Pass::PenaltyGrad => {
            let zdot = if p.activation.curved() {
                p.stash_len()
            } else {
                0
            };
            2 * l * b * nadj + l * b * ntan + zdot
        }
    }
}

/// Derived shape of one (problem, config): what the template is rendered with.
#[derive(Clone, Copy, Debug)]
struct Shape {
    warps: u32,
    /// Rows per warp.
    rt: u32,
    /// Widest layer dimension, rounded up to 32 (columns of an activation buffer).
    maxd: u32,
    slab_floats: u32,
    /// Activation buffers of a row tile.
    nbuf: u32,
    /// Rows per chunk of the weight-gradient phase.
    chunk_rows: u32,
    smem_bytes: u32,
    /// Accumulators per lane in the widest product.
    acc: u32,
}

fn shape(p: &SmallMlpProblem, c: &SmallMlpConfig) -> Shape {
    let warps = (c.threads / 32).max(1);
    let rt = (c.rows_per_cta / warps).max(1);
    let maxd = p.d_in.max(p.width).max(p.d_out).div_ceil(32) * 32;
    // Forward: [j][33] (j < 32 c); backward: [32][32 c + 1]; both fit maxd x 33.
    let slab_floats = maxd * (SLAB_K + 1);
    let nbuf = if p.pass == Pass::PenaltyGrad { 4 } else { 2 };
    let phase1 = 2 * slab_floats + nbuf * c.rows_per_cta * maxd;
    // Weight gradients: chunks of threads / 4 rows of a 32 x 32 tile; two operand pairs for
    // the penalty (adjoints [rows][32], activations [rows][33]).
    let chunk_rows = c.threads / 4;
    let pairs = if p.pass == Pass::PenaltyGrad { 2 } else { 1 };
    let phase2 = if p.pass.has_weight_grads() {
        pairs * chunk_rows * (32 + 33)
    } else {
        0
    };
    let products = if p.pass == Pass::PenaltyGrad { 2 } else { 1 };
    Shape {
        warps,
        rt,
        maxd,
        slab_floats,
        nbuf,
        chunk_rows,
        smem_bytes: 4 * phase1.max(phase2),
        acc: products * rt * maxd.div_ceil(32),
    }
}

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

/// CTAs resident per SM: shared memory, and registers planned at 255 per thread; one for the
/// gradient passes (their grid barrier needs every CTA resident: plan for the worst case).
fn ctas_per_sm(p: &SmallMlpProblem, sh: &Shape, threads: u32) -> u32 {
    if p.pass.has_weight_grads() {
        return 1;
    }
    let smem_fit = (228 * 1024) / (sh.smem_bytes + 1024);
    let reg_fit = 65536 / (threads * 256);
    smem_fit.min(reg_fit).max(1)
}

/// Tiles of the weight-gradient phase (32 x 32 entries of `[W_l | b_l]`).
pub fn weight_tiles(p: &SmallMlpProblem) -> u32 {
    (0..=p.depth)
        .map(|l| {
            let (fan_in, fan_out) = p.layer(l);
            fan_out.div_ceil(32) * (fan_in + 1).div_ceil(32)
        })
        .sum()
}

impl Family for SmallMlp {
    type Problem = SmallMlpProblem;
    type Config = SmallMlpConfig;

    const NAME: &'static str = "small_mlp";
    const TEMPLATE: &'static str = include_str!("../../../templates/small_mlp.cu.tera");

    fn space() -> Vec<SmallMlpConfig> {
        let mut out = Vec::new();
        for threads in [128, 256] {
            for rows_per_cta in [8, 16, 32] {
                out.push(SmallMlpConfig {
                    threads,
                    rows_per_cta,
                });
            }
        }
        out
    }

    // is_multiple_of is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn check_config(c: &SmallMlpConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        // 4 or 8 warps: enough to hide shared-memory latency, few enough for 255 registers.
        illegal(c.threads != 128 && c.threads != 256, || {
            format!("{} threads is not 128 or 256", c.threads)
        })?;
        illegal(c.threads > limits.max_threads_per_block, || {
            format!("{} threads exceed the device's block", c.threads)
        })?;
        // Every warp owns whole rows of the tile, at most 4 (more rows per warp multiply the
        // accumulators and the unrolled epilogues past the compile-time budget).
        let warps = c.threads / 32;
        illegal(
            c.rows_per_cta < warps || c.rows_per_cta % warps != 0 || c.rows_per_cta / warps > 4,
            || {
                format!(
                    "{} rows per CTA do not split over {warps} warps in 1..=4 rows each",
                    c.rows_per_cta
                )
            },
        )?;
        Ok(())
    }

    fn check_problem(p: &SmallMlpProblem, c: &SmallMlpConfig) -> Result<(), Illegal> {
        let sh = shape(p, c);
        // A lane's accumulators (products x rows x column groups) fit the register budget.
        illegal(sh.acc > MAX_ACC, || {
            format!(
                "{} accumulators per lane (rows {} x column groups {}) exceed {MAX_ACC}",
                sh.acc,
                sh.rt,
                sh.maxd / 32
            )
        })?;
        let limit = DeviceLimits::HOPPER.max_dynamic_smem_per_block;
        illegal(sh.smem_bytes > limit, || {
            format!("{} B of shared memory exceed {limit}", sh.smem_bytes)
        })?;
        Ok(())
    }

    fn supports(p: &SmallMlpProblem) -> Result<(), Unsupported> {
        let no = |reason: String| Unsupported {
            family: Self::NAME,
            problem: format!("{p:?}"),
            reason,
        };
        if !WIDTHS.contains(&p.width) {
            return Err(no(format!(
                "width must be one of {WIDTHS:?}, got {}; pad the net with zero neurons",
                p.width
            )));
        }
        if !DEPTHS.contains(&p.depth) {
            return Err(no(format!(
                "depth (hidden layers) must be {}..={}, got {}",
                DEPTHS.start(),
                DEPTHS.end(),
                p.depth
            )));
        }
        if !(1..=MAX_D_IN).contains(&p.d_in) || !(1..=MAX_D_OUT).contains(&p.d_out) {
            return Err(no(format!(
                "d_in must be 1..={MAX_D_IN} and d_out 1..={MAX_D_OUT}, got {} and {}",
                p.d_in, p.d_out
            )));
        }
        if p.rows == 0 || p.rows > MAX_ROWS {
            return Err(no(format!("rows must be 1..={MAX_ROWS}, got {}", p.rows)));
        }
        if p.pass == Pass::PenaltyGrad && p.d_out != 1 {
            return Err(no(format!(
                "the gradient penalty is for a scalar critic (d_out = 1), got d_out = {}",
                p.d_out
            )));
        }
        Ok(())
    }

    fn render_vars(p: &SmallMlpProblem, c: &SmallMlpConfig) -> RenderVars {
        let sh = shape(p, c);
        let vars = json!({
            "entry": Self::entry(p, c),
            "pass_id": p.pass.id(),
            "tanh": p.activation == Activation::Tanh,
            "slope": format!("{:.9e}f", p.activation.slope()),
            "d_in": p.d_in,
            "width": p.width,
            "depth": p.depth,
            "d_out": p.d_out,
            "threads": c.threads,
            "warps": sh.warps,
            "rows_per_cta": c.rows_per_cta,
            "rows_per_warp": sh.rt,
            "maxd": sh.maxd,
            "slab_k": SLAB_K,
            "slab_floats": sh.slab_floats,
            "nbuf": sh.nbuf,
            "chunk_rows": sh.chunk_rows,
            "smem_bytes": sh.smem_bytes,
        });
        match vars {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal"),
        }
    }

    /// The row count is not in the name: it is a runtime argument.
    fn entry(p: &SmallMlpProblem, c: &SmallMlpConfig) -> String {
        format!(
            "kiln_small_mlp_{}_{}_i{}_w{}_l{}_o{}_t{}_r{}",
            p.pass.tag(),
            p.activation.tag(),
            p.d_in,
            p.width,
            p.depth,
            p.d_out,
            c.threads,
            c.rows_per_cta
        )
    }

    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("x", "const float*"),
            arg("params", "const float*"),
            arg("stash", "float*"),
            arg("gy", "const float*"),
            arg("y", "float*"),
            arg("dx", "float*"),
            arg("grads", "float*"),
            arg("workspace", "float*"),
            arg("barrier", "unsigned int*"),
            arg("rows", "int"),
        ]
    }

    fn geometry(p: &SmallMlpProblem, c: &SmallMlpConfig) -> LaunchGeometry {
        let sh = shape(p, c);
        let row_tiles = p.rows.div_ceil(c.rows_per_cta);
        let work = if p.pass.has_weight_grads() {
            row_tiles.max(weight_tiles(p))
        } else {
            row_tiles
        };
        let resident = SMS * ctas_per_sm(p, &sh, c.threads);
        LaunchGeometry {
            grid: [work.min(resident).max(1), 1, 1],
            block: [c.threads, 1, 1],
            dynamic_smem_bytes: sh.smem_bytes,
            cluster: [1, 1, 1],
        }
    }

    fn workspace_bytes(p: &SmallMlpProblem, _c: &SmallMlpConfig) -> usize {
        4 * workspace_floats(p)
    }

    /// The gradient passes: the adjoint scratch and the barrier word (zeroed once).
    fn scratch(p: &SmallMlpProblem, c: &SmallMlpConfig) -> Vec<Scratch> {
        if !p.pass.has_weight_grads() {
            return Vec::new();
        }
        vec![
            Scratch {
                arg: "workspace",
                bytes: Self::workspace_bytes(p, c),
                zero_init: false,
            },
            Scratch {
                arg: "barrier",
                bytes: 4,
                zero_init: true,
            },
        ]
    }

    /// Products only (2 per multiply-add). Forward: every layer. VJP: every layer's
    /// transpose. Parameter backward: the transposes of layers 1..=depth and one product per
    /// weight and bias. Penalty: the VJP, the tangent forward (layers 0..depth), the reverse
    /// sweep (one transpose for the output layer, two for each hidden layer) and two products
    /// per weight (one per bias).
    fn flops(p: &SmallMlpProblem) -> f64 {
        let b = p.rows as f64;
        let mac = |l: u32| {
            let (i, o) = p.layer(l);
            i as f64 * o as f64
        };
        let all: f64 = (0..=p.depth).map(mac).sum();
        let biases: f64 = (0..=p.depth).map(|l| p.layer(l).1 as f64).sum();
        let per_row = match p.pass {
            Pass::Forward | Pass::InputVjp => all,
            Pass::ParamGrad => (all - mac(0)) + all + biases,
            Pass::PenaltyGrad => {
                let hidden: f64 = (1..p.depth).map(mac).sum();
                all + (all - mac(p.depth)) + (mac(p.depth) + 2.0 * hidden) + 2.0 * all + biases
            }
        };
        2.0 * b * per_row
    }

    /// Inputs read once, outputs written once (the optional outputs of the penalty pass not
    /// counted).
    fn min_bytes(p: &SmallMlpProblem) -> f64 {
        let b = p.rows as f64;
        let params = p.params() as f64;
        let stash = p.stash_len() as f64;
        let (x, y) = (b * p.d_in as f64, b * p.d_out as f64);
        4.0 * match p.pass {
            Pass::Forward => x + params + y + stash,
            Pass::InputVjp => params + stash + y + x,
            Pass::ParamGrad => x + 2.0 * params + stash + y,
            Pass::PenaltyGrad => x + 2.0 * params + stash,
        }
    }

    fn default_config(p: &SmallMlpProblem) -> SmallMlpConfig {
        // Every supported problem has a candidate: 256 threads x 8 rows give one row per warp
        // and at most 2 x 8 accumulators, with 4 x 8 x 256 floats of buffers.
        Self::best_estimated(p, &DeviceLimits::HOPPER, |_| true).unwrap_or(SmallMlpConfig {
            threads: 256,
            rows_per_cta: 8,
        })
    }

    fn estimate_us(p: &SmallMlpProblem, c: &SmallMlpConfig, limits: &DeviceLimits) -> f64 {
        // Latency-bound at these sizes: each CTA walks its row tiles layer by layer, one
        // 32-deep weight slab at a time (~0.4 us per slab for the copy, sync and FMAs); the
        // FMAs of a slab cost rows x columns / (threads x ~0.5 per clock).
        let sh = shape(p, c);
        let g = Self::geometry(p, c);
        let ctas = g.grid[0].min(limits.sms.max(1) * ctas_per_sm(p, &sh, c.threads)) as f64;
        let row_tiles = p.rows.div_ceil(c.rows_per_cta) as f64;
        let waves = (row_tiles / ctas).ceil();
        let slabs: f64 = (0..=p.depth)
            .map(|l| (p.layer(l).0.div_ceil(SLAB_K) + p.layer(l).1.div_ceil(SLAB_K)) as f64 / 2.0)
            .sum();
        let passes = match p.pass {
            Pass::Forward => 1.0,
            Pass::InputVjp | Pass::ParamGrad => 1.0,
            Pass::PenaltyGrad => 3.0,
        };
        let fma_per_slab = c.rows_per_cta as f64 * sh.maxd as f64 * SLAB_K as f64;
        let slab_us = 0.4 + fma_per_slab / (c.threads as f64 * 0.5) / 1.7e3;
        let mut t = waves * passes * slabs * slab_us;
        if p.pass.has_weight_grads() {
            // One 32 x 32 tile per CTA (or more), chunks of threads / 4 rows, ~0.5 us each.
            let tiles = weight_tiles(p) as f64;
            let chunks = (p.rows as f64 / sh.chunk_rows as f64).ceil();
            let pairs = if p.pass == Pass::PenaltyGrad {
                2.0
            } else {
                1.0
            };
            t += (tiles / g.grid[0] as f64).ceil() * chunks * 0.5 * pairs + 2.0;
        }
        t + 3.0
    }

    /// Same net and pass; the nearest row count (log ratio).
    fn bucket_distance(tuned: &SmallMlpProblem, wanted: &SmallMlpProblem) -> Option<f64> {
        let strip = |p: &SmallMlpProblem| SmallMlpProblem { rows: 1, ..*p };
        if strip(tuned) != strip(wanted) {
            return None;
        }
        Some((tuned.rows as f64 / wanted.rows as f64).ln().abs())
    }

    /// Every pass with tanh and leaky ReLU (ReLU shares leaky ReLU's code with slope 0: one
    /// forward), on the WGAN nets and on nets with dimensions off the 32-column grid, width
    /// 256 included.
    fn branch_problems() -> Vec<SmallMlpProblem> {
        let net = |pass, d_in, width, depth, d_out, activation| SmallMlpProblem {
            pass,
            d_in,
            width,
            depth,
            d_out,
            activation,
            rows: 1000,
        };
        vec![
            wgan_generator(Pass::Forward, 1000),
            wgan_critic(Pass::Forward, 1000),
            net(Pass::Forward, 3, 256, 2, 5, Activation::Relu),
            net(Pass::InputVjp, 5, 64, 2, 3, Activation::Tanh),
            wgan_critic(Pass::InputVjp, 1000),
            wgan_generator(Pass::ParamGrad, 1000),
            wgan_critic(Pass::ParamGrad, 1000),
            net(Pass::PenaltyGrad, 7, 256, 2, 1, Activation::Tanh),
            wgan_critic(Pass::PenaltyGrad, 1000),
        ]
    }
}

#[cfg(test)]
mod tests;
