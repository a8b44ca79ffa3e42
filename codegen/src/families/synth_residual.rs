//! `synth_residual`: the physics-informed loss of a basis synthesis `u_b(x) = sum_j C[b, j]
//! phi_j(x)` (PI-BasisNet / PI-GeM, DESIGN.md section 6), with its gradients with respect to
//! the coefficients and to every basis stream, without ever writing the fields `B x N_x x S`.
//!
//! # The loss (`r` = residual, `inv = 1 / (B n_x)`)
//!
//! ```text
//! L = inv * sum_{b, x} r[b, x]^2
//! elliptic_1d: r = -0.1 (k_x u_x + k u_xx) - f,  u = C_u . phi_u,  k = C_k . phi_k
//! poisson:     r = -Lap(u) - f,                  u = C_u . phi_u   (d spatial dimensions)
//! ```
//!
//! `k` is the field itself, as the 1-D stochastic elliptic benchmark writes it (a caller
//! that learns log-k synthesises the log and maps it outside). Only the streams the residual
//! reads carry a gradient: `u_x, u_xx, k, k_x` (elliptic) and the Laplacian (poisson); the
//! other entries of `dbasis` are written as zeros.
//!
//! With `g = 2 r inv` and `G[b, x, s] = g * dr/dF_s` (F_s = the field stream s):
//! `dC_c[b, j] = sum_{x, s of c} G[b, x, s] phi[x, s, j]` and
//! `dbasis[x, s, j] = sum_b G[b, x, s] C_c(s)[b, j]`: two GEMM-shaped products of `G`, which
//! lives only in shared memory, per tile.
//!
//! # Memory layout (fp32, row-major, no padding)
//!
//! * `c_u [B, p]`, `c_k [B, p]` (elliptic only; null for poisson);
//! * `basis [n_x, S, p]`: poisson `S = d + 2` (value, `d` gradient components, Laplacian:
//!   the streams of `mlp_jet`, interleaved per point); elliptic `S = 6` (`u, u_x, u_xx, k,
//!   k_x, k_xx`);
//! * `f [B, n_x]` ([`Forcing::PerSample`]) or `[n_x]` ([`Forcing::Shared`]);
//! * outputs `loss [1]`, `dc_u, dc_k [B, p]` (when `dcoef`), `dbasis [n_x, S, p]` (when
//!   `dbasis`).
//!
//! # Launch contract: two entries of one module
//!
//! 1. `<entry>(c_u, c_k, basis, f, nb, nx, splits, workspace)`: grid `[ceil(n_x / TX),
//!    splits, 1]`; CTA `(t, s)` owns points `t*TX..` and sample tiles `s, s + splits, ..`;
//!    it writes its dC partial (one per point tile and sample), its dbasis partial (one per
//!    split) and its loss partial into `workspace` ([`workspace_floats`]; no initialisation).
//! 2. `<entry>_reduce(workspace, dc_u, dc_k, dbasis, loss, nb, nx, splits)`: sums the
//!    partials in a fixed order ([`reduce_geometry`]). No atomics: results are bitwise
//!    reproducible for a given (problem, config).
//!
//! `sample_splits` is a launch parameter (grid and workspace), not a source parameter, so
//! configs that differ only in it share a kernel.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::family::{
    DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Unsupported,
};

/// The family.
pub struct SynthResidual;

/// The PDE residual the loss is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Residual {
    /// `-0.1 (k_x u_x + k u_xx) - f` in 1-D, separate u and k bases.
    #[serde(rename = "elliptic_1d")]
    Elliptic1d,
    /// `-Lap(u) - f` in `d` dimensions.
    #[serde(rename = "poisson")]
    Poisson,
}

/// Shape of the forcing `f`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forcing {
    /// `f [B, n_x]`: one forcing per sample.
    PerSample,
    /// `f [n_x]`: every sample shares it.
    Shared,
}

/// One loss (and gradient) evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SynthResidualProblem {
    pub residual: Residual,
    /// Samples B.
    pub samples: u32,
    /// Points n_x.
    pub points: u32,
    /// Basis size.
    pub p: u32,
    /// Spatial dimensions (1 for elliptic_1d).
    pub d: u32,
    pub forcing: Forcing,
    /// Write `dc_u` (and `dc_k`).
    pub dcoef: bool,
    /// Write `dbasis`.
    pub dbasis: bool,
}

impl SynthResidualProblem {
    /// Streams per point of `basis`.
    pub fn streams(&self) -> usize {
        match self.residual {
            Residual::Elliptic1d => 6,
            Residual::Poisson => self.d as usize + 2,
        }
    }
    /// Coefficient sets (u, and k for elliptic).
    pub fn coef_sets(&self) -> usize {
        match self.residual {
            Residual::Elliptic1d => 2,
            Residual::Poisson => 1,
        }
    }
    /// The streams the residual reads, each with its coefficient set.
    pub fn used_streams(&self) -> Vec<(usize, usize)> {
        match self.residual {
            Residual::Elliptic1d => vec![(1, 0), (2, 0), (3, 1), (4, 1)],
            Residual::Poisson => vec![(self.d as usize + 1, 0)],
        }
    }
}

/// A point of the search space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SynthResidualConfig {
    pub threads: u32,
    /// Samples per tile (TB).
    pub tile_samples: u32,
    /// Points per CTA (TX).
    pub tile_points: u32,
    /// CTAs along the samples (grid.y), capped at the number of sample tiles.
    pub sample_splits: u32,
}

/// Largest basis.
pub const MAX_P: u32 = 128;
/// Largest spatial dimension of the poisson residual.
pub const MAX_D: u32 = 32;
/// dbasis accumulators per thread (registers) at most.
const MAX_ACC: usize = 32;
/// Threads of the reduce entry.
pub const REDUCE_THREADS: u32 = 256;

fn illegal(cond: bool, why: impl FnOnce() -> String) -> Result<(), Illegal> {
    if cond {
        Err(Illegal(why()))
    } else {
        Ok(())
    }
}

/// The smallest odd number >= n: a row stride that spreads 32 consecutive rows over 32 banks.
fn odd(n: usize) -> usize {
    n | 1
}

/// dbasis accumulators per thread.
pub fn acc_per_thread(p: &SynthResidualProblem, c: &SynthResidualConfig) -> usize {
    (c.tile_points as usize * p.used_streams().len() * p.p as usize).div_ceil(c.threads as usize)
}

/// Dynamic shared memory of the main entry: basis tile, coefficient tile, G tile, reduction.
pub fn smem_bytes(p: &SynthResidualProblem, c: &SynthResidualConfig) -> usize {
    let (u, nc, pp) = (p.used_streams().len(), p.coef_sets(), p.p as usize);
    let (tb, tx) = (c.tile_samples as usize, c.tile_points as usize);
    4 * (tx * odd(u * pp) + tb * odd(nc * pp) + tb * tx * u + c.threads as usize)
}

/// Point tiles (grid.x).
pub fn point_tiles(p: &SynthResidualProblem, c: &SynthResidualConfig) -> usize {
    (p.points as usize).div_ceil(c.tile_points as usize)
}

/// The sample splits a launch uses (grid.y): the config's, capped at the sample tiles.
pub fn splits(p: &SynthResidualProblem, c: &SynthResidualConfig) -> usize {
    let tiles = (p.samples as usize).div_ceil(c.tile_samples as usize);
    (c.sample_splits as usize).clamp(1, tiles.max(1))
}

/// Floats of the workspace: dC partials `[point_tiles][B][coef_sets][p]` (when `dcoef`),
/// dbasis partials `[splits][n_x][used][p]` (when `dbasis`), loss partials
/// `[splits][point_tiles]`.
pub fn workspace_floats(p: &SynthResidualProblem, c: &SynthResidualConfig) -> usize {
    let (xt, sp) = (point_tiles(p, c), splits(p, c));
    let pp = p.p as usize;
    let dc = if p.dcoef {
        xt * p.samples as usize * p.coef_sets() * pp
    } else {
        0
    };
    let db = if p.dbasis {
        sp * p.points as usize * p.used_streams().len() * pp
    } else {
        0
    };
    dc + db + xt * sp
}

/// The reduce entry's grid: one thread per output value (and the loss), at most 8 waves.
pub fn reduce_geometry(p: &SynthResidualProblem) -> LaunchGeometry {
    let pp = p.p as usize;
    let dc = if p.dcoef {
        p.samples as usize * p.coef_sets() * pp
    } else {
        0
    };
    let db = if p.dbasis {
        p.points as usize * p.streams() * pp
    } else {
        0
    };
    let blocks = (dc + db + 1)
        .div_ceil(REDUCE_THREADS as usize)
        .min(132 * 8 * 8);
    LaunchGeometry {
        grid: [blocks as u32, 1, 1],
        block: [REDUCE_THREADS, 1, 1],
        dynamic_smem_bytes: 0,
        cluster: [1, 1, 1],
    }
}

/// The reduce entry's arguments.
pub fn reduce_args() -> Vec<KernelArg> {
    let arg = |name, c_type| KernelArg { name, c_type };
    vec![
        arg("workspace", "const float*"),
        arg("dc_u", "float*"),
        arg("dc_k", "float*"),
        arg("dbasis", "float*"),
        arg("loss", "float*"),
        arg("nb", "int"),
        arg("nx", "int"),
        arg("splits", "int"),
    ]
}

impl Family for SynthResidual {
    type Problem = SynthResidualProblem;
    type Config = SynthResidualConfig;

    const NAME: &'static str = "synth_residual";
    const TEMPLATE: &'static str = include_str!("../../../templates/synth_residual.cu.tera");

    fn space() -> Vec<SynthResidualConfig> {
        let mut out = Vec::new();
        for threads in [128, 256] {
            for (tile_samples, tile_points) in [(16, 16), (32, 8), (32, 16), (64, 8)] {
                for sample_splits in [1, 8] {
                    out.push(SynthResidualConfig {
                        threads,
                        tile_samples,
                        tile_points,
                        sample_splits,
                    });
                }
            }
        }
        out
    }

    // is_multiple_of is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    fn check_config(c: &SynthResidualConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
        // The loss tree reduction halves the block: a power of two, whole warps.
        illegal(
            !c.threads.is_power_of_two()
                || c.threads < 32
                || c.threads > limits.max_threads_per_block,
            || format!("{} threads is not a power of two in 32..=1024", c.threads),
        )?;
        // Every thread has at least one (sample, point) pair of a tile: no idle field phase.
        illegal(c.tile_samples * c.tile_points < c.threads, || {
            format!(
                "a {}x{} tile has fewer pairs than {} threads",
                c.tile_samples, c.tile_points, c.threads
            )
        })?;
        illegal(c.sample_splits == 0, || "zero sample splits".into())?;
        Ok(())
    }

    fn check_problem(p: &SynthResidualProblem, c: &SynthResidualConfig) -> Result<(), Illegal> {
        // dbasis partials live in registers for the whole sweep over samples.
        illegal(acc_per_thread(p, c) > MAX_ACC, || {
            format!(
                "{} dbasis accumulators per thread exceed {MAX_ACC}",
                acc_per_thread(p, c)
            )
        })?;
        let smem = smem_bytes(p, c);
        illegal(
            smem > DeviceLimits::HOPPER.max_dynamic_smem_per_block as usize,
            || format!("{smem} B of shared memory"),
        )?;
        Ok(())
    }

    fn supports(p: &SynthResidualProblem) -> Result<(), Unsupported> {
        let bad = |reason: String| Unsupported {
            family: Self::NAME,
            problem: format!("{p:?}"),
            reason,
        };
        if p.samples == 0 || p.points == 0 || p.p == 0 || p.p > MAX_P {
            return Err(bad(format!(
                "samples and points must be positive and p in 1..={MAX_P}, got {} x {} x {}",
                p.samples, p.points, p.p
            )));
        }
        match p.residual {
            Residual::Elliptic1d if p.d != 1 => {
                return Err(bad(format!("elliptic_1d is 1-D, got d = {}", p.d)))
            }
            Residual::Poisson if p.d == 0 || p.d > MAX_D => {
                return Err(bad(format!("poisson needs d in 1..={MAX_D}, got {}", p.d)))
            }
            _ => {}
        }
        // 32-bit indices in the kernels.
        let biggest = (p.samples as u64 * p.points as u64)
            .max(p.points as u64 * p.streams() as u64 * p.p as u64)
            .max(p.samples as u64 * 2 * p.p as u64);
        if biggest * 64 > i32::MAX as u64 {
            return Err(bad("too large for 32-bit indexing".into()));
        }
        Ok(())
    }

    fn render_vars(p: &SynthResidualProblem, c: &SynthResidualConfig) -> RenderVars {
        let used = p.used_streams();
        let mut used_index = vec![-1i64; p.streams()];
        for (u, &(s, _)) in used.iter().enumerate() {
            used_index[s] = u as i64;
        }
        let join = |v: Vec<i64>| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let vars = json!({
            "entry": Self::entry(p, c),
            "elliptic": p.residual == Residual::Elliptic1d,
            "per_sample_forcing": p.forcing == Forcing::PerSample,
            "dcoef": p.dcoef,
            "dbasis": p.dbasis,
            "threads": c.threads,
            "tile_samples": c.tile_samples,
            "tile_points": c.tile_points,
            "p": p.p,
            "streams": p.streams(),
            "used": used.len(),
            "coef_sets": p.coef_sets(),
            "stream_of_used": join(used.iter().map(|&(s, _)| s as i64).collect()),
            "coef_of_used": join(used.iter().map(|&(_, c)| c as i64).collect()),
            "used_index": join(used_index),
            "phi_stride": odd(used.len() * p.p as usize),
            "c_stride": odd(p.coef_sets() * p.p as usize),
            "acc": acc_per_thread(p, c),
            "reduce_threads": REDUCE_THREADS,
        });
        match vars {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal"),
        }
    }

    /// Samples and points are runtime arguments; everything else is in the name.
    fn entry(p: &SynthResidualProblem, c: &SynthResidualConfig) -> String {
        let res = match p.residual {
            Residual::Elliptic1d => "elliptic1d".to_string(),
            Residual::Poisson => format!("poisson_d{}", p.d),
        };
        let forcing = match p.forcing {
            Forcing::PerSample => "fb",
            Forcing::Shared => "fx",
        };
        let grads = match (p.dcoef, p.dbasis) {
            (true, true) => "gcb",
            (true, false) => "gc",
            (false, true) => "gb",
            (false, false) => "gl",
        };
        format!(
            "kiln_synth_residual_{res}_{forcing}_{grads}_p{}_t{}_b{}_x{}",
            p.p, c.threads, c.tile_samples, c.tile_points
        )
    }

    fn args() -> Vec<KernelArg> {
        let arg = |name, c_type| KernelArg { name, c_type };
        vec![
            arg("c_u", "const float*"),
            arg("c_k", "const float*"),
            arg("basis", "const float*"),
            arg("f", "const float*"),
            arg("nb", "int"),
            arg("nx", "int"),
            arg("splits", "int"),
            arg("workspace", "float*"),
        ]
    }

    fn geometry(p: &SynthResidualProblem, c: &SynthResidualConfig) -> LaunchGeometry {
        LaunchGeometry {
            grid: [point_tiles(p, c) as u32, splits(p, c) as u32, 1],
            block: [c.threads, 1, 1],
            dynamic_smem_bytes: smem_bytes(p, c) as u32,
            cluster: [1, 1, 1],
        }
    }

    fn workspace_bytes(p: &SynthResidualProblem, c: &SynthResidualConfig) -> usize {
        4 * workspace_floats(p, c)
    }

    /// Fields `2 B n_x U p`, dC `2 B n_x U p`, dbasis `2 B n_x U p` (U = streams read).
    fn flops(p: &SynthResidualProblem) -> f64 {
        let products = 1.0 + p.dcoef as u8 as f64 + p.dbasis as u8 as f64;
        2.0 * products
            * p.samples as f64
            * p.points as f64
            * p.used_streams().len() as f64
            * p.p as f64
    }

    /// Coefficients, basis and forcing read once; gradients written once.
    fn min_bytes(p: &SynthResidualProblem) -> f64 {
        let c = (p.samples * p.p) as f64 * p.coef_sets() as f64;
        let basis = p.points as f64 * p.streams() as f64 * p.p as f64;
        let f = match p.forcing {
            Forcing::PerSample => p.samples as f64 * p.points as f64,
            Forcing::Shared => p.points as f64,
        };
        let out = 1.0 + if p.dcoef { c } else { 0.0 } + if p.dbasis { basis } else { 0.0 };
        4.0 * (c + basis + f + out)
    }

    fn default_config(p: &SynthResidualProblem) -> SynthResidualConfig {
        // Prefer 256 threads on a 32 x 16 tile; fall back to the smallest register and shared
        // memory footprint the space has (always legal for p <= 128).
        let preferred = [
            SynthResidualConfig {
                threads: 256,
                tile_samples: 32,
                tile_points: 16,
                sample_splits: 8,
            },
            SynthResidualConfig {
                threads: 256,
                tile_samples: 32,
                tile_points: 8,
                sample_splits: 8,
            },
        ];
        preferred
            .into_iter()
            .find(|c| Self::check_problem(p, c).is_ok())
            .unwrap_or(preferred[1])
    }

    fn estimate_us(
        p: &SynthResidualProblem,
        c: &SynthResidualConfig,
        limits: &DeviceLimits,
    ) -> f64 {
        // FMA throughput of the CTAs that fit in one wave, plus the partials' traffic.
        let g = Self::geometry(p, c);
        let ctas = (g.grid[0] * g.grid[1]) as f64;
        let occupancy = (ctas / limits.sms.max(1) as f64).min(1.0);
        let compute = Self::flops(p) / (30e12 * occupancy.max(0.05));
        let traffic = (Self::min_bytes(p) + 8.0 * workspace_floats(p, c) as f64) / 3.5e12;
        (compute + traffic) * 1e6 + 5.0
    }

    /// Same source parameters; nearest sample and point counts (log ratio).
    fn bucket_distance(t: &SynthResidualProblem, w: &SynthResidualProblem) -> Option<f64> {
        let same = SynthResidualProblem {
            samples: w.samples,
            points: w.points,
            ..*t
        };
        if same != *w {
            return None;
        }
        let l = |a: u32, b: u32| (a as f64 / b as f64).ln().abs();
        Some(l(t.samples, w.samples) + l(t.points, w.points))
    }

    /// Both residuals, both forcings and every gradient selection, on p that is odd, a
    /// multiple of 32 and the largest.
    fn branch_problems() -> Vec<SynthResidualProblem> {
        let base = SynthResidualProblem {
            residual: Residual::Elliptic1d,
            samples: 1000,
            points: 401,
            p: 128,
            d: 1,
            forcing: Forcing::PerSample,
            dcoef: true,
            dbasis: true,
        };
        vec![
            base,
            SynthResidualProblem {
                residual: Residual::Poisson,
                d: 2,
                p: 64,
                forcing: Forcing::Shared,
                dbasis: false,
                ..base
            },
            SynthResidualProblem {
                residual: Residual::Poisson,
                d: 3,
                p: 37,
                dcoef: false,
                ..base
            },
            SynthResidualProblem {
                p: 33,
                forcing: Forcing::Shared,
                dcoef: false,
                dbasis: false,
                ..base
            },
        ]
    }
}

/// The f64 reference of one evaluation: loss and every gradient (whatever `dcoef` and
/// `dbasis` say).
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub loss: f64,
    pub dc_u: Vec<f64>,
    /// Empty for poisson.
    pub dc_k: Vec<f64>,
    pub dbasis: Vec<f64>,
}

/// The residual and its derivatives with respect to the streams of `fields` (the values of
/// the used streams, in [`SynthResidualProblem::used_streams`] order), minus `f`.
fn residual(kind: Residual, fields: &[f64], f: f64, dr: &mut [f64]) -> f64 {
    match kind {
        Residual::Elliptic1d => {
            let (ux, uxx, k, kx) = (fields[0], fields[1], fields[2], fields[3]);
            dr.copy_from_slice(&[-0.1 * kx, -0.1 * k, -0.1 * uxx, -0.1 * ux]);
            -0.1 * (kx * ux + k * uxx) - f
        }
        Residual::Poisson => {
            dr[0] = -1.0;
            -fields[0] - f
        }
    }
}

/// f64 reference, written from the formulas of the module doc: `c_u [B, p]`, `c_k [B, p]`
/// (elliptic; ignored for poisson), `basis [n_x, S, p]`, `f` as [`Forcing`] says.
pub fn reference(
    prob: &SynthResidualProblem,
    c_u: &[f64],
    c_k: &[f64],
    basis: &[f64],
    f: &[f64],
) -> Reference {
    let (nb, nx, p, s) = (
        prob.samples as usize,
        prob.points as usize,
        prob.p as usize,
        prob.streams(),
    );
    let used = prob.used_streams();
    let coefs: [&[f64]; 2] = [c_u, c_k];
    let inv = 1.0 / (nb as f64 * nx as f64);
    let mut out = Reference {
        loss: 0.0,
        dc_u: vec![0.0; nb * p],
        dc_k: vec![0.0; if prob.coef_sets() == 2 { nb * p } else { 0 }],
        dbasis: vec![0.0; nx * s * p],
    };
    let mut fields = vec![0.0; used.len()];
    let mut dr = vec![0.0; used.len()];
    for b in 0..nb {
        for x in 0..nx {
            for (u, &(st, c)) in used.iter().enumerate() {
                let phi = &basis[(x * s + st) * p..][..p];
                fields[u] = (0..p).map(|j| coefs[c][b * p + j] * phi[j]).sum();
            }
            let fv = match prob.forcing {
                Forcing::PerSample => f[b * nx + x],
                Forcing::Shared => f[x],
            };
            let r = residual(prob.residual, &fields, fv, &mut dr);
            out.loss += r * r * inv;
            let g = 2.0 * r * inv;
            for (u, &(st, c)) in used.iter().enumerate() {
                let gs = g * dr[u];
                for j in 0..p {
                    let phi = basis[(x * s + st) * p + j];
                    let dc = if c == 0 { &mut out.dc_u } else { &mut out.dc_k };
                    dc[b * p + j] += gs * phi;
                    out.dbasis[(x * s + st) * p + j] += gs * coefs[c][b * p + j];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
