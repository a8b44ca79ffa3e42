//! `adam`: one fused Adam / AdamW step over a parameter arena (PI-BasisNet and the WGAN-GP
//! generator and critic train with Adam). Every element is independent: read `p, g, m, v`,
//! write `p, m, v`, so the kernel is a bandwidth-bound elementwise sweep (7 x 4 bytes per
//! parameter).
//!
//! # The update (`torch.optim.Adam` / `AdamW` semantics, `t` = step, 1-based)
//!
//! ```text
//! g' = g + wd * p                    (weight_decay = l2 only)
//! p  = p * (1 - lr * wd)             (weight_decay = decoupled only, AdamW)
//! m  = b1 * m + (1 - b1) * g'
//! v  = b2 * v + (1 - b2) * g'^2
//! p  = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! Bias correction is computed **on the host, in f64, from the step** ([`AdamScalars::new`])
//! and passed as two floats, `step_size = lr / (1 - b1^t)` and `rsqrt_bc2 = 1 / sqrt(1 -
//! b2^t)` (plus `decay = 1 - lr * wd`): exact to fp32 rounding at any step, no `powf` per
//! thread. The price: a captured CUDA graph must update the node's arguments each step.
//!
//! # Launch contract
//!
//! Arguments ([`Adam::args`]): `params, grads, m, v, n, beta1, beta2, eps, weight_decay,
//! decay, step_size, rsqrt_bc2`; four fp32 arrays of `n` elements (`params`, `m`, `v`
//! updated in place; they must not overlap). Any alignment: the vector path runs only when
//! all four pointers are aligned to the vector width, else the whole sweep is scalar; the
//! last `n % vec_width` elements are always scalar. Grid-stride over the grid of
//! [`Adam::geometry`] (at most one full wave). No scratch.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

/// The family.
pub struct Adam;

/// Element type of the arena (fp32 only: the state of a training run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdamDtype {
    Fp32,
}

/// How weight decay enters the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDecay {
    /// None (the `weight_decay` scalar is ignored).
    None,
    /// Classic L2: `wd * p` added to the gradient (`torch.optim.Adam`).
    L2,
    /// Decoupled: `p *= 1 - lr * wd` before the step (`torch.optim.AdamW`).
    Decoupled,
}

impl WeightDecay {
    fn tag(self) -> &'static str {
        match self {
            WeightDecay::None => "none",
            WeightDecay::L2 => "l2",
            WeightDecay::Decoupled => "adamw",
        }
    }
}

/// One step over an arena of `params` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AdamProblem {
    pub params: u64,
    pub dtype: AdamDtype,
    pub weight_decay: WeightDecay,
}

impl AdamProblem {
    pub fn fp32(params: u64, weight_decay: WeightDecay) -> Self {
        AdamProblem {
            params,
            dtype: AdamDtype::Fp32,
            weight_decay,
        }
    }
}

/// A point of the search space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AdamConfig {
    pub threads: u32,
    /// Floats per load: 1, 2 (float2) or 4 (float4).
    pub vec_width: u32,
    /// Vectors a thread loads (of each array) before it computes: memory-level parallelism.
    pub vecs_per_thread: u32,
}

/// The runtime hyper-parameters of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamHyper {
    /// The same values rounded to fp32, as the kernel sees them (`1 - beta` is then exact in
    /// fp32): what a reference of the kernel must be run with.
    pub fn rounded_to_f32(&self) -> Self {
        let r = |x: f64| x as f32 as f64;
        AdamHyper {
            lr: r(self.lr),
            beta1: r(self.beta1),
            beta2: r(self.beta2),
            eps: r(self.eps),
            weight_decay: r(self.weight_decay),
        }
    }
}

impl Default for AdamHyper {
    /// PyTorch's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, no decay).
    fn default() -> Self {
        AdamHyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The scalar kernel arguments of step `step` (1-based), formed in f64 and rounded once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamScalars {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// The L2 coefficient `wd` (used by `l2` only).
    pub weight_decay: f32,
    /// `1 - lr * wd` (used by `decoupled` only).
    pub decay: f32,
    /// `lr / (1 - beta1^step)`.
    pub step_size: f32,
    /// `1 / sqrt(1 - beta2^step)`.
    pub rsqrt_bc2: f32,
}

impl AdamScalars {
    /// `step` counts from 1 (the first update); 0 is treated as 1.
    pub fn new(h: &AdamHyper, step: u64) -> Self {
        let t = step.max(1).min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        AdamScalars {
            beta1: h.beta1 as f32,
            beta2: h.beta2 as f32,
            eps: h.eps as f32,
            weight_decay: h.weight_decay as f32,
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            step_size: (h.lr / bc1) as f32,
            rsqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        }
    }
}

/// Most parameters of one call (indices stay in a signed 64-bit range with room to spare).
pub const MAX_PARAMS: u64 = 1 << 40;
/// SMs the grid plans for (H100 / H200).
const SMS: u32 = 132;
/// Resident threads per SM on Hopper.
const THREADS_PER_SM: u32 = 2048;

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

impl AdamConfig {
    /// Floats one CTA covers per grid-stride step.
    pub fn floats_per_cta_step(&self) -> u64 {
        (self.threads * self.vec_width * self.vecs_per_thread) as u64
    }
}

impl Family for Adam {
    type Problem = AdamProblem;
    type Config = AdamConfig;

    const NAME: &'static str = "adam";
    const TEMPLATE: &'static str = include_str!("../../../templates/adam.cu.tera");

    fn space() -> Vec<AdamConfig> {
        let mut out = Vec::new();
        for threads in [128, 256, 512] {
            for vec_width in [1, 2, 4] {
                for vecs_per_thread in [1, 2, 4] {
                    out.push(AdamConfig {
                        threads,
                        vec_width,
                        vecs_per_thread,
                    });
                }
            }
        }
        out
    }

    // is_multiple_of is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn check_config(c: &AdamConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        // Whole warps, within the device's block.
        illegal(
            c.threads % 32 != 0 || c.threads == 0 || c.threads > limits.max_threads_per_block,
            || format!("{} threads", c.threads),
        )?;
        // Native vector loads only.
        illegal(![1, 2, 4].contains(&c.vec_width), || {
            format!("vector width {} is not 1, 2 or 4", c.vec_width)
        })?;
        // 1..=4 vectors in flight per array and thread.
        illegal(!(1..=4).contains(&c.vecs_per_thread), || {
            format!("{} vectors per thread is outside 1..=4", c.vecs_per_thread)
        })?;
        // At most 8 floats of each of four arrays in registers (32 live values): wider
        // register tiles add nothing to a stream that is already past the latency knee.
        illegal(c.vec_width * c.vecs_per_thread > 8, || {
            format!(
                "{} x {} floats per array and thread exceed 8",
                c.vec_width, c.vecs_per_thread
            )
        })?;
        Ok(())
    }

    fn supports(p: &AdamProblem) -> Result<(), Unsupported> {
        if p.params == 0 || p.params > MAX_PARAMS {
            return Err(Unsupported {
                family: Self::NAME,
                problem: format!("{p:?}"),
                reason: format!("params must be 1..={MAX_PARAMS}, got {}", p.params),
            });
        }
        Ok(())
    }

    fn render_vars(p: &AdamProblem, c: &AdamConfig) -> RenderVars {
        let vars = json!({
            "entry": Self::entry(p, c),
            "l2": p.weight_decay == WeightDecay::L2,
            "decoupled": p.weight_decay == WeightDecay::Decoupled,
            "threads": c.threads,
            "vec_width": c.vec_width,
            "vecs_per_thread": c.vecs_per_thread,
        });
        match vars {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal"),
        }
    }

    /// The length is not in the name: it is a runtime argument.
    fn entry(p: &AdamProblem, c: &AdamConfig) -> String {
        format!(
            "kiln_adam_f32_{}_t{}_v{}_u{}",
            p.weight_decay.tag(),
            c.threads,
            c.vec_width,
            c.vecs_per_thread
        )
    }

    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("params", "float*"),
            arg("grads", "const float*"),
            arg("m", "float*"),
            arg("v", "float*"),
            arg("n", "long long"),
            arg("beta1", "float"),
            arg("beta2", "float"),
            arg("eps", "float"),
            arg("weight_decay", "float"),
            arg("decay", "float"),
            arg("step_size", "float"),
            arg("rsqrt_bc2", "float"),
        ]
    }

    /// Enough CTAs for one grid-stride step over the arena, at most one full wave.
    fn geometry(p: &AdamProblem, c: &AdamConfig) -> LaunchGeometry {
        let needed = p.params.div_ceil(c.floats_per_cta_step()).max(1);
        let wave = (SMS * (THREADS_PER_SM / c.threads).max(1)) as u64;
        LaunchGeometry {
            grid: [needed.min(wave) as u32, 1, 1],
            block: [c.threads, 1, 1],
            dynamic_smem_bytes: 0,
            cluster: [1, 1, 1],
        }
    }

    /// No scratch.
    fn scratch(_p: &AdamProblem, _c: &AdamConfig) -> Vec<Scratch> {
        Vec::new()
    }

    /// Per element: two moment updates (3 each), sqrt, scale, add, divide, update (2): 12;
    /// weight decay adds 2 (L2, a multiply-add) or 1 (decoupled, a multiply).
    fn flops(p: &AdamProblem) -> f64 {
        let extra = match p.weight_decay {
            WeightDecay::None => 0.0,
            WeightDecay::L2 => 2.0,
            WeightDecay::Decoupled => 1.0,
        };
        (12.0 + extra) * p.params as f64
    }

    /// `p, g, m, v` read, `p, m, v` written: 7 x 4 bytes per element.
    fn min_bytes(p: &AdamProblem) -> f64 {
        28.0 * p.params as f64
    }

    fn default_config(p: &AdamProblem) -> AdamConfig {
        // float4 with two vectors in flight: 8 x 16 bytes outstanding per thread saturate
        // HBM with a full wave of 256-thread CTAs; short arenas prefer smaller CTAs (more SMs).
        let threads = if p.params < 1 << 18 { 128 } else { 256 };
        AdamConfig {
            threads,
            vec_width: 4,
            vecs_per_thread: 2,
        }
    }

    fn estimate_us(p: &AdamProblem, c: &AdamConfig, limits: &DeviceLimits) -> f64 {
        // Bandwidth over the bytes in flight: an SM needs ~40 KB outstanding to reach its
        // share of ~3.9 TB/s; fewer bytes per thread (narrow vectors, one vector) fall short.
        let g = Self::geometry(p, c);
        let ctas_per_sm = (g.grid[0] as f64 / limits.sms.max(1) as f64).clamp(0.0, 16.0);
        let in_flight = ctas_per_sm
            * c.threads as f64
            * (4 * 4 * c.vec_width * c.vecs_per_thread) as f64
            * (THREADS_PER_SM as f64 / (c.threads as f64 * ctas_per_sm.max(1.0))).min(1.0);
        let efficiency = (in_flight / 40e3).clamp(0.05, 1.0);
        Self::min_bytes(p) / (3.9e12 * efficiency) * 1e6 + 2.5
    }

    /// Same decay mode; the nearest length (log ratio).
    fn bucket_distance(tuned: &AdamProblem, wanted: &AdamProblem) -> Option<f64> {
        if tuned.weight_decay != wanted.weight_decay || tuned.dtype != wanted.dtype {
            return None;
        }
        Some((tuned.params as f64 / wanted.params as f64).ln().abs())
    }

    /// One problem per decay mode (the length does not change the source).
    fn branch_problems() -> Vec<AdamProblem> {
        [WeightDecay::None, WeightDecay::L2, WeightDecay::Decoupled]
            .into_iter()
            .map(|wd| AdamProblem::fp32(1_000_003, wd))
            .collect()
    }
}

/// The f64 state of a reference run.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub params: Vec<f64>,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
}

impl AdamState {
    pub fn from_f32(params: &[f32], m: &[f32], v: &[f32]) -> Self {
        let f = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        AdamState {
            params: f(params),
            m: f(m),
            v: f(v),
        }
    }
}

/// f64 reference of one step `step` (1-based) with gradient `grads`, written from the
/// formulas of the module doc (bias corrections from `step` directly, not from
/// [`AdamScalars`]).
pub fn reference_step(
    state: &mut AdamState,
    grads: &[f32],
    h: &AdamHyper,
    step: u64,
    mode: WeightDecay,
) {
    let n = state.params.len();
    assert!(grads.len() == n && state.m.len() == n && state.v.len() == n);
    let t = step.max(1) as f64;
    let bc1 = 1.0 - h.beta1.powf(t);
    let bc2 = 1.0 - h.beta2.powf(t);
    #[allow(clippy::needless_range_loop)] // four arrays in lockstep
    for i in 0..n {
        let mut p = state.params[i];
        let mut g = grads[i] as f64;
        match mode {
            WeightDecay::None => {}
            WeightDecay::L2 => g += h.weight_decay * p,
            WeightDecay::Decoupled => p *= 1.0 - h.lr * h.weight_decay,
        }
        let m = h.beta1 * state.m[i] + (1.0 - h.beta1) * g;
        let v = h.beta2 * state.v[i] + (1.0 - h.beta2) * g * g;
        p -= h.lr / bc1 * m / (v.sqrt() / bc2.sqrt() + h.eps);
        state.params[i] = p;
        state.m[i] = m;
        state.v[i] = v;
    }
}

#[cfg(test)]
mod tests;
