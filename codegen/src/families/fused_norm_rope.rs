//! `fused_norm_rope`: the glue kernels around Step-3's MFA attention, one decode token per
//! sequence. Two ops (the problem's `op` tag picks the template branch):
//!
//! * `rms_norm` (before wq): `y = x * rsqrt(mean(x^2) + 1e-5) * weight` over rows of `hidden`
//!   BF16 values (2048 for Step-3's q_low), fp32 math, one BF16 rounding.
//! * `rope_append` (after wq): rotate-half RoPE (dim 256, theta 5e5) at each sequence's
//!   position on `q [batch, heads, 256]` (in place) and on the new key, then the key and the new
//!   value are written into the KV cache row of that position (contiguous or paged, BF16 or FP8
//!   e4m3 with a per-token scale `amax / 448`, as `mfa_decode` reads it).
//!
//! # Launch contract
//!
//! Both entries take one argument list ([`FusedNormRope::args`]): `x, weight, y, q, k_new,
//! v_new, positions, k_cache, v_cache, k_scale, v_scale, block_table, rows, max_len, max_pages,
//! page_size`; each op ignores the other's (pass null / 0).
//!
//! * `rms_norm` reads `x, weight, y, rows`; grid `[ceil(batch / rows_per_cta), 1, 1]`;
//!   `x`, `y` `[batch, hidden]` (may alias), `weight [hidden]`, all 16-byte aligned.
//! * `rope_append` reads the rest; grid `[batch, heads / heads_per_cta, 1]`.
//!   `q [batch, heads, 256]` rotated in place; `k_new`, `v_new` `[batch, 256]`; `positions
//!   [batch]` int32 (negative: a padding token, nothing is touched); cache layout as in
//!   `mfa_decode` (contiguous `[batch, max_len, 256]`, or pages through `block_table[batch,
//!   max_pages]`); a position outside the cache writes no row. Scales are written for FP8 only.
//!
//! No scratch. RoPE theta and the RMSNorm epsilon are Step-3's ([`ROPE_THETA`], [`RMS_EPS`]).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::families::mfa_decode::KvDtype;
use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch, Unsupported,
};

/// The family.
pub struct FusedNormRope;

/// Step-3's RoPE base.
pub const ROPE_THETA: f64 = 500000.0;
/// Step-3's RMSNorm epsilon.
pub const RMS_EPS: f64 = 1e-5;
/// The rotary dimension (= head_dim) the kernel is written for.
pub const HEAD_DIM: u32 = 256;
/// Largest RMSNorm row (512 threads x 8 chunks of 8 values in registers).
pub const MAX_HIDDEN: u32 = 32768;

/// One launch: which op, and its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FusedNormRopeProblem {
    RmsNorm {
        batch: u32,
        hidden: u32,
    },
    RopeAppend {
        batch: u32,
        heads: u32,
        head_dim: u32,
        kv_dtype: KvDtype,
        /// Tokens per page of a paged cache; 0 = contiguous cache.
        #[serde(default)]
        page_size: u32,
    },
}

/// A point of the search space (tagged by the op it serves).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FusedNormRopeConfig {
    RmsNorm { threads: u32, rows_per_cta: u32 },
    RopeAppend { threads: u32, heads_per_cta: u32 },
}

impl FusedNormRopeProblem {
    pub fn batch(&self) -> u32 {
        match *self {
            FusedNormRopeProblem::RmsNorm { batch, .. }
            | FusedNormRopeProblem::RopeAppend { batch, .. } => batch,
        }
    }
    /// Step-3's q_low norm.
    pub fn step3_norm(batch: u32) -> Self {
        FusedNormRopeProblem::RmsNorm {
            batch,
            hidden: 2048,
        }
    }
    /// Step-3's RoPE + cache append.
    pub fn step3_rope(batch: u32, kv_dtype: KvDtype, page_size: u32) -> Self {
        FusedNormRopeProblem::RopeAppend {
            batch,
            heads: 64,
            head_dim: HEAD_DIM,
            kv_dtype,
            page_size,
        }
    }
}

impl FusedNormRopeConfig {
    pub fn threads(&self) -> u32 {
        match *self {
            FusedNormRopeConfig::RmsNorm { threads, .. }
            | FusedNormRopeConfig::RopeAppend { threads, .. } => threads,
        }
    }
}

/// 16-byte chunks per thread for an RMSNorm row of `hidden` values.
fn chunks_per_thread(hidden: u32, threads: u32) -> u32 {
    (hidden / 8).div_ceil(threads)
}

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

impl Family for FusedNormRope {
    type Problem = FusedNormRopeProblem;
    type Config = FusedNormRopeConfig;

    const NAME: &'static str = "fused_norm_rope";
    const TEMPLATE: &'static str = include_str!("../../../templates/fused_norm_rope.cu.tera");

    fn space() -> Vec<FusedNormRopeConfig> {
        let mut out = Vec::new();
        for threads in [64, 128, 256, 512] {
            for rows_per_cta in [1, 2, 4] {
                out.push(FusedNormRopeConfig::RmsNorm {
                    threads,
                    rows_per_cta,
                });
            }
            for heads_per_cta in [8, 16, 32, 64] {
                out.push(FusedNormRopeConfig::RopeAppend {
                    threads,
                    heads_per_cta,
                });
            }
        }
        out
    }

    // is_multiple_of is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn check_config(c: &FusedNormRopeConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        // Whole warps, within the device's block size.
        illegal(
            c.threads() % 32 != 0 || c.threads() > limits.max_threads_per_block,
            || format!("{} threads", c.threads()),
        )?;
        match *c {
            FusedNormRopeConfig::RmsNorm { rows_per_cta, .. } => {
                // One to four rows per CTA: more only lengthens the serial chain of reductions.
                illegal(!(1..=4).contains(&rows_per_cta), || {
                    format!("{rows_per_cta} rows per CTA is outside 1..=4")
                })?;
            }
            FusedNormRopeConfig::RopeAppend {
                threads,
                heads_per_cta,
            } => {
                // 128 threads at least: one per rotary frequency computes its cos/sin.
                illegal(threads < 128, || {
                    format!("{threads} threads: rope needs 128 (one per frequency)")
                })?;
                // Every thread has an item (16 items of 8 pairs per head).
                illegal(heads_per_cta * 16 < threads, || {
                    format!("{heads_per_cta} heads per CTA leave threads of {threads} idle")
                })?;
                // Head groups of a power-of-two size divide 64 heads.
                illegal(!heads_per_cta.is_power_of_two(), || {
                    format!("{heads_per_cta} heads per CTA is not a power of two")
                })?;
            }
        }
        Ok(())
    }

    fn check_problem(p: &FusedNormRopeProblem, c: &FusedNormRopeConfig) -> Result<(), Illegal> {
        match (*p, c) {
            (
                FusedNormRopeProblem::RmsNorm { hidden, .. },
                FusedNormRopeConfig::RmsNorm { threads, .. },
            ) => {
                // Every thread holds at least one chunk of the row (short rows: 64 threads) ...
                illegal(hidden / 8 < *threads && *threads > 64, || {
                    format!(
                        "{threads} threads for {} chunks leave threads idle",
                        hidden / 8
                    )
                })?;
                // ... and at most 8 (64 values in registers).
                let cpt = chunks_per_thread(hidden, *threads);
                illegal(cpt > 8, || {
                    format!("{cpt} chunks per thread exceed 8 registers' worth")
                })?;
                Ok(())
            }
            (
                FusedNormRopeProblem::RopeAppend { heads, .. },
                FusedNormRopeConfig::RopeAppend { heads_per_cta, .. },
            ) => {
                // Head groups divide the heads.
                illegal(heads % heads_per_cta != 0, || {
                    format!("{heads_per_cta} heads per CTA do not divide {heads}")
                })?;
                Ok(())
            }
            _ => Err(Illegal("the config serves the other op".into())),
        }
    }

    fn supports(p: &FusedNormRopeProblem) -> Result<(), Unsupported> {
        let no = |reason: String| Unsupported {
            family: Self::NAME,
            problem: format!("{p:?}"),
            reason,
        };
        match *p {
            FusedNormRopeProblem::RmsNorm { batch, hidden } => {
                if batch == 0 || batch > 1 << 24 {
                    return Err(no("batch must be 1..=2^24".into()));
                }
                if hidden == 0 || hidden % 8 != 0 || hidden > MAX_HIDDEN {
                    return Err(no(format!(
                        "hidden must be a multiple of 8 in 8..={MAX_HIDDEN} (16-byte rows), got {hidden}"
                    )));
                }
            }
            FusedNormRopeProblem::RopeAppend {
                batch,
                heads,
                head_dim,
                page_size,
                ..
            } => {
                if head_dim != HEAD_DIM {
                    return Err(no(format!(
                        "only head_dim {HEAD_DIM} (Step-3) is supported"
                    )));
                }
                if batch == 0 || batch > 65535 {
                    return Err(no("batch must be 1..=65535 (grid.x)".into()));
                }
                if heads == 0 || heads > 1024 || !heads.is_power_of_two() || heads < 8 {
                    return Err(no(format!(
                        "heads must be a power of two in 8..=1024, got {heads}"
                    )));
                }
                if page_size > 1 << 24 {
                    return Err(no("page_size must be at most 2^24".into()));
                }
            }
        }
        Ok(())
    }

    fn render_vars(p: &FusedNormRopeProblem, c: &FusedNormRopeConfig) -> RenderVars {
        let (norm, hidden, heads, kv_dtype, paged) = match *p {
            FusedNormRopeProblem::RmsNorm { hidden, .. } => (true, hidden, 0, KvDtype::Bf16, false),
            FusedNormRopeProblem::RopeAppend {
                heads,
                kv_dtype,
                page_size,
                ..
            } => (false, 0, heads, kv_dtype, page_size > 0),
        };
        let (rows_per_cta, heads_per_cta) = match *c {
            FusedNormRopeConfig::RmsNorm { rows_per_cta, .. } => (rows_per_cta, 1),
            FusedNormRopeConfig::RopeAppend { heads_per_cta, .. } => (1, heads_per_cta),
        };
        let vars = json!({
            "entry": Self::entry(p, c),
            "norm": norm,
            "fp8": kv_dtype.is_fp8(),
            "paged": paged,
            "threads": c.threads(),
            "hidden": hidden,
            "rows_per_cta": rows_per_cta,
            "chunks_per_thread": if norm { chunks_per_thread(hidden, c.threads()) } else { 0 },
            "eps": format!("{:.9e}f", RMS_EPS),
            "heads": heads,
            "heads_per_cta": heads_per_cta,
            "head_dim": HEAD_DIM,
            "theta": format!("{ROPE_THETA:.1}"),
        });
        match vars {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal"),
        }
    }

    fn entry(p: &FusedNormRopeProblem, c: &FusedNormRopeConfig) -> String {
        match (*p, c) {
            (
                FusedNormRopeProblem::RmsNorm { hidden, .. },
                FusedNormRopeConfig::RmsNorm {
                    threads,
                    rows_per_cta,
                },
            ) => {
                format!("kiln_rms_norm_h{hidden}_t{threads}_r{rows_per_cta}")
            }
            (
                FusedNormRopeProblem::RopeAppend {
                    heads,
                    kv_dtype,
                    page_size,
                    ..
                },
                FusedNormRopeConfig::RopeAppend {
                    threads,
                    heads_per_cta,
                },
            ) => format!(
                "kiln_rope_append_h{heads}_t{threads}_g{heads_per_cta}_{}_{}",
                if kv_dtype.is_fp8() { "fp8" } else { "bf16" },
                if page_size > 0 { "paged" } else { "contig" }
            ),
            // Never rendered (check_problem rejects it), but named distinctly.
            _ => format!("kiln_fused_norm_rope_mismatch_t{}", c.threads()),
        }
    }

    /// One list for both ops (each ignores the other's arguments: pass null / 0).
    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("x", "const __nv_bfloat16*"),
            arg("weight", "const __nv_bfloat16*"),
            arg("y", "__nv_bfloat16*"),
            arg("q", "__nv_bfloat16*"),
            arg("k_new", "const __nv_bfloat16*"),
            arg("v_new", "const __nv_bfloat16*"),
            arg("positions", "const int*"),
            arg("k_cache", "void*"),
            arg("v_cache", "void*"),
            arg("k_scale", "float*"),
            arg("v_scale", "float*"),
            arg("block_table", "const int*"),
            arg("rows", "int"),
            arg("max_len", "int"),
            arg("max_pages", "int"),
            arg("page_size", "int"),
        ]
    }

    fn geometry(p: &FusedNormRopeProblem, c: &FusedNormRopeConfig) -> LaunchGeometry {
        let grid = match (*p, c) {
            (
                FusedNormRopeProblem::RmsNorm { batch, .. },
                FusedNormRopeConfig::RmsNorm { rows_per_cta, .. },
            ) => [batch.div_ceil(*rows_per_cta), 1, 1],
            (
                FusedNormRopeProblem::RopeAppend { batch, heads, .. },
                FusedNormRopeConfig::RopeAppend { heads_per_cta, .. },
            ) => [batch, heads / heads_per_cta, 1],
            _ => [1, 1, 1],
        };
        LaunchGeometry {
            grid,
            block: [c.threads(), 1, 1],
            dynamic_smem_bytes: 0,
            cluster: [1, 1, 1],
        }
    }

    /// No scratch.
    fn scratch(_p: &FusedNormRopeProblem, _c: &FusedNormRopeConfig) -> Vec<Scratch> {
        Vec::new()
    }

    /// RMSNorm: square, sum, scale, weight (4 per value). RoPE: 6 per rotated pair of q and k.
    fn flops(p: &FusedNormRopeProblem) -> f64 {
        match *p {
            FusedNormRopeProblem::RmsNorm { batch, hidden } => 4.0 * batch as f64 * hidden as f64,
            FusedNormRopeProblem::RopeAppend {
                batch,
                heads,
                head_dim,
                ..
            } => 6.0 * batch as f64 * (heads as f64 + 1.0) * head_dim as f64 / 2.0,
        }
    }

    /// RMSNorm: x read, y written, weight read. RoPE: q read and written, k and v read, their
    /// cache rows (and FP8 scales) written.
    fn min_bytes(p: &FusedNormRopeProblem) -> f64 {
        match *p {
            FusedNormRopeProblem::RmsNorm { batch, hidden } => {
                2.0 * hidden as f64 * (2.0 * batch as f64 + 1.0)
            }
            FusedNormRopeProblem::RopeAppend {
                batch,
                heads,
                head_dim,
                kv_dtype,
                ..
            } => {
                let b = batch as f64;
                let d = head_dim as f64;
                let q = 2.0 * 2.0 * b * heads as f64 * d;
                let kv_in = 2.0 * 2.0 * b * d;
                let kv_out = b * kv_dtype.bytes_per_token() as f64;
                q + kv_in + kv_out + 4.0 * b
            }
        }
    }

    fn default_config(p: &FusedNormRopeProblem) -> FusedNormRopeConfig {
        match *p {
            FusedNormRopeProblem::RmsNorm { batch, hidden } => {
                // One chunk per thread where the row allows it (256 threads for 2048), fewer
                // rows per CTA than SMs' worth of CTAs would need.
                let chunks = hidden / 8;
                let threads = if chunks <= 64 {
                    64
                } else {
                    [256u32, 128, 64, 512]
                        .into_iter()
                        .find(|&t| t <= chunks && chunks_per_thread(hidden, t) <= 8)
                        .unwrap_or(512)
                };
                let rows_per_cta = if batch >= 1024 {
                    4
                } else if batch >= 264 {
                    2
                } else {
                    1
                };
                FusedNormRopeConfig::RmsNorm {
                    threads,
                    rows_per_cta,
                }
            }
            FusedNormRopeProblem::RopeAppend { batch, heads, .. } => {
                // Small batches spread heads over more CTAs.
                let heads_per_cta = if batch >= 64 {
                    heads.min(32)
                } else {
                    heads.min(8)
                };
                FusedNormRopeConfig::RopeAppend {
                    threads: 128,
                    heads_per_cta,
                }
            }
        }
    }

    fn estimate_us(
        p: &FusedNormRopeProblem,
        c: &FusedNormRopeConfig,
        limits: &DeviceLimits,
    ) -> f64 {
        // Memory bound at ~3 TB/s for these short kernels, plus the per-CTA serial part
        // (~0.5 us per RMSNorm row, ~1 us for the cos/sin table) over the waves.
        let g = Self::geometry(p, c);
        let ctas = (g.grid[0] * g.grid[1]) as f64;
        let slots = limits.sms.max(1) as f64 * (2048 / c.threads()).min(16) as f64;
        let waves = (ctas / slots).ceil();
        let serial = match *c {
            FusedNormRopeConfig::RmsNorm { rows_per_cta, .. } => 0.5 * rows_per_cta as f64,
            FusedNormRopeConfig::RopeAppend { .. } => 1.0,
        };
        Self::min_bytes(p) / 3.0e12 * 1e6 + waves * serial + 2.0
    }

    /// Same op and shape up to the batch; the nearest batch (log ratio).
    fn bucket_distance(tuned: &FusedNormRopeProblem, wanted: &FusedNormRopeProblem) -> Option<f64> {
        let strip = |p: &FusedNormRopeProblem| match *p {
            FusedNormRopeProblem::RmsNorm { hidden, .. } => {
                FusedNormRopeProblem::RmsNorm { batch: 1, hidden }
            }
            FusedNormRopeProblem::RopeAppend {
                heads,
                head_dim,
                kv_dtype,
                page_size,
                ..
            } => FusedNormRopeProblem::RopeAppend {
                batch: 1,
                heads,
                head_dim,
                kv_dtype,
                page_size,
            },
        };
        if strip(tuned) != strip(wanted) {
            return None;
        }
        Some((tuned.batch() as f64 / wanted.batch() as f64).ln().abs())
    }

    fn branch_problems() -> Vec<FusedNormRopeProblem> {
        let mut out = vec![FusedNormRopeProblem::step3_norm(128)];
        for kv in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
            for page in [0, 16] {
                out.push(FusedNormRopeProblem::step3_rope(128, kv, page));
            }
        }
        out
    }
}

/// f64 RMSNorm of one row: `x * (mean(x^2) + eps)^-1/2 * weight`.
pub fn reference_rms_norm(x: &[f32], weight: &[f32]) -> Vec<f64> {
    assert_eq!(x.len(), weight.len());
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + RMS_EPS).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| v as f64 * r * w as f64)
        .collect()
}

/// f64 rotate-half RoPE of one `head_dim` vector at position `pos`.
pub fn reference_rope(x: &[f32], pos: i64) -> Vec<f64> {
    let half = x.len() / 2;
    let mut out = vec![0.0; x.len()];
    for i in 0..half {
        let freq = ROPE_THETA.powf(-(i as f64) / half as f64);
        let (s, c) = (pos as f64 * freq).sin_cos();
        let (a, b) = (x[i] as f64, x[i + half] as f64);
        out[i] = a * c - b * s;
        out[i + half] = b * c + a * s;
    }
    out
}

#[cfg(test)]
mod tests;
