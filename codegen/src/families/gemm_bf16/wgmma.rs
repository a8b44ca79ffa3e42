//! The wgmma kernel of `gemm_bf16` (`templates/gemm_bf16_wgmma.cu.tera`, sm_90a): Hopper's
//! warpgroup MMA reading both operands from 128-byte-swizzled shared memory, fed by a
//! `cp.async` pipeline, with the tiled kernel's grouped raster and deterministic split-K.
//! K % 8 == 0 only (16-byte copies). The template's header explains layout and pipeline.
//!
//! A CTA computes a `bm x bn` tile (`bm / 64` warpgroups, each one m64 x bn wgmma per k16
//! step). Grid: `[tiles, 1, split_k]`; block `2 * bm` threads (128 per warpgroup).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    check_grid_and_workspace, check_rows_16_byte_aligned, illegal, is_aligned, GemmBf16Problem,
    GROUP_M,
};
use crate::family::{DeviceLimits, Illegal, LaunchGeometry, RenderVars};

/// K elements per pipeline stage: one 128-byte swizzle row of bf16.
pub const BK: u32 = 64;

/// The tile widths (wgmma N) of the space, for 64-row tiles (M <= 64 and split-K): besides
/// the powers of two, 56 splits o_proj's N = 7168 into 128 column tiles (128 of the H200's
/// 132 SMs in one wave where 64 columns give 112), and 40 and 80 do the same for qkv's
/// N = 2560 (64 tiles x split-K 2, 32 x 4; run 18 measured 80 the winner at M = 128 and 256:
/// 21.1 vs 24.1 us and 31.1 vs 38.3). A 112-column width for 128-row tiles (o_proj M = 256 in
/// 128 tiles) measured 136 us against 114 for 128 columns (run 18) and crowded the 128-column
/// configs out of the tuner's shortlist, so it is not in the space.
pub const BNS: [u32; 6] = [40, 56, 64, 80, 128, 256];

/// A point of the wgmma kernel's space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WgmmaConfig {
    /// CTA tile rows: 64 (one warpgroup) or 128 (two).
    pub bm: u32,
    /// CTA tile columns = the wgmma's N: one of [`BNS`].
    pub bn: u32,
    /// Shared-memory pipeline stages of 64 K elements.
    pub stages: u32,
    /// K slices reduced in-kernel (grid.z).
    pub split_k: u32,
}

impl WgmmaConfig {
    pub fn threads(&self) -> u32 {
        2 * self.bm
    }
    /// fp32 accumulators per thread.
    pub fn acc_per_thread(&self) -> u32 {
        self.bn / 2
    }
    /// Stages of A and B tiles, plus 1 KiB to align the base to a swizzle atom.
    pub fn smem_bytes(&self) -> u32 {
        self.stages * (self.bm + self.bn) * BK * 2 + 1024
    }
}

pub fn tiles(p: &GemmBf16Problem, c: &WgmmaConfig) -> u64 {
    (p.m as u64).div_ceil(c.bm as u64) * (p.n as u64).div_ceil(c.bn as u64)
}

pub fn k_tiles(p: &GemmBf16Problem) -> u64 {
    (p.k as u64).div_ceil(BK as u64)
}

pub fn workspace_floats(p: &GemmBf16Problem, c: &WgmmaConfig) -> u64 {
    if c.split_k > 1 {
        c.split_k as u64 * tiles(p, c) * c.bm as u64 * c.bn as u64
    } else {
        0
    }
}

pub fn counters_len(p: &GemmBf16Problem, c: &WgmmaConfig) -> usize {
    if c.split_k > 1 {
        tiles(p, c) as usize
    } else {
        0
    }
}

pub fn space() -> Vec<WgmmaConfig> {
    let mut out = Vec::new();
    for bm in [64, 128] {
        for bn in BNS {
            for stages in [3, 4, 5, 6] {
                for split_k in [1, 2, 4, 8] {
                    out.push(WgmmaConfig {
                        bm,
                        bn,
                        stages,
                        split_k,
                    });
                }
            }
        }
    }
    out
}

pub fn check_config(c: &WgmmaConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
    // One or two warpgroups of m64.
    illegal(![64, 128].contains(&c.bm), || {
        format!("bm {} is not 64 or 128", c.bm)
    })?;
    // wgmma N: a multiple of 8 up to 256 (the template renders the operand list).
    illegal(!BNS.contains(&c.bn), || {
        format!("bn {} is not one of {BNS:?}", c.bn)
    })?;
    // The odd widths serve 64-row tiles only.
    illegal([40, 56, 80].contains(&c.bn) && c.bm != 64, || {
        format!(
            "a {}x{} tile (40, 56 and 80 columns go with 64 rows)",
            c.bm, c.bn
        )
    })?;
    // Prefetch distance stages - 2 (two stages are read by the wgmma's in flight).
    illegal(!(3..=6).contains(&c.stages), || {
        format!("{} stages is not 3..=6", c.stages)
    })?;
    illegal(![1, 2, 4, 8].contains(&c.split_k), || {
        format!("split_k {} is not 1, 2, 4 or 8", c.split_k)
    })?;
    illegal(c.threads() > limits.max_threads_per_block, || {
        format!("{} threads exceed the device's limit", c.threads())
    })?;
    illegal(c.smem_bytes() > limits.max_dynamic_smem_per_block, || {
        format!(
            "{} B of shared memory exceed {}",
            c.smem_bytes(),
            limits.max_dynamic_smem_per_block
        )
    })?;
    // Split-K serves few tiles (small M): partial tiles of at most 128 x 128.
    illegal(c.split_k > 1 && c.bm * c.bn > 128 * 128, || {
        format!("split_k {} of a {}x{} tile", c.split_k, c.bm, c.bn)
    })?;
    // Six stages only where a stage is small (64-row tiles of 64 or 128 columns).
    illegal(c.stages == 6 && c.bm + c.bn > 192, || {
        format!("6 stages of a {}x{} tile", c.bm, c.bn)
    })?;
    Ok(())
}

pub fn check_problem(p: &GemmBf16Problem, c: &WgmmaConfig) -> Result<(), Illegal> {
    // 16-byte copies from 16-byte aligned rows.
    check_rows_16_byte_aligned(p)?;
    // Every split gets at least one K tile.
    illegal(k_tiles(p) < c.split_k as u64, || {
        format!(
            "k {} has {} tiles of {BK} for split_k {}",
            p.k,
            k_tiles(p),
            c.split_k
        )
    })?;
    check_grid_and_workspace(tiles(p, c), workspace_floats(p, c))
}

pub fn entry(_p: &GemmBf16Problem, c: &WgmmaConfig) -> String {
    format!(
        "kiln_gemm_bf16_wgmma_m{}_n{}_s{}_sk{}",
        c.bm, c.bn, c.stages, c.split_k
    )
}

pub fn render_vars(p: &GemmBf16Problem, c: &WgmmaConfig) -> RenderVars {
    let (d_operands, d_constraints) =
        crate::families::wgmma_accumulator_operands(c.acc_per_thread());
    let vars = json!({
        "wgmma": true,
        "ring": false,
        "stream": false,
        "entry": entry(p, c),
        "use_split_k": c.split_k > 1,
        "bm": c.bm,
        "bn": c.bn,
        "wgmma_d_operands": d_operands,
        "wgmma_desc_operands": format!("%{}, %{}", c.acc_per_thread(), c.acc_per_thread() + 1),
        "wgmma_d_constraints": d_constraints,
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

pub fn geometry(p: &GemmBf16Problem, c: &WgmmaConfig) -> LaunchGeometry {
    LaunchGeometry {
        grid: [tiles(p, c).min(i32::MAX as u64) as u32, 1, c.split_k],
        block: [c.threads(), 1, 1],
        dynamic_smem_bytes: c.smem_bytes(),
        cluster: [1, 1, 1],
    }
}

/// The wgmma config used when nothing is tuned, for aligned problems with M > 64 and N > 64
/// (None otherwise: the tiled kernel's default serves them). 128-row tiles (two warpgroups);
/// 256 columns when that still gives every SM a tile, else 128 columns and, for few tiles, the
/// largest split-K that keeps tiles x splits within 1.5 waves and >= 4 K tiles per split.
/// Measured on the H200 (run 8): these picks are the tuned winners or within 10% of them on the
/// Step-3 decode shapes at M = 128 and 256, except qkv (the tiled kernel wins there by ~2%).
pub fn default_config(p: &GemmBf16Problem) -> Option<WgmmaConfig> {
    const SMS: u64 = 132;
    if !is_aligned(p) || p.m <= 64 || p.n <= 64 {
        return None;
    }
    let wide = WgmmaConfig {
        bm: 128,
        bn: 256,
        stages: 4,
        split_k: 1,
    };
    if tiles(p, &wide) >= SMS {
        return Some(wide);
    }
    let mut c = WgmmaConfig {
        bm: 128,
        bn: 128,
        stages: 5,
        split_k: 1,
    };
    for split in [8, 4, 2] {
        let s = WgmmaConfig {
            split_k: split,
            ..c.clone()
        };
        if tiles(p, &s) * split as u64 <= SMS * 3 / 2
            && k_tiles(p) >= 4 * split as u64
            && check_problem(p, &s).is_ok()
        {
            c = s;
            break;
        }
    }
    Some(c)
}

/// Analytical time in microseconds: tensor work at ~550 TFLOP/s (wgmma without warp
/// specialisation, one K tile's products in flight), DRAM bytes at ~4 TB/s times the share of
/// the waves' slots the grid fills, a round trip
/// per `stages - 2` K tiles along a CTA's K slice, whole waves, launch and split-K overhead.
pub fn estimate_us(p: &GemmBf16Problem, c: &WgmmaConfig, limits: &DeviceLimits) -> f64 {
    let sms = limits.sms.max(1) as f64;
    let tiles_m = (p.m as u64).div_ceil(c.bm as u64) as f64;
    let tiles_n = (p.n as u64).div_ceil(c.bn as u64) as f64;
    let split = c.split_k as f64;
    let kt = (k_tiles(p) as f64 / split).ceil();
    let per_sm = ((228.0 * 1024.0) / (c.smem_bytes() as f64 + 1024.0))
        .floor()
        .clamp(1.0, 2.0);
    let ctas = tiles_m * tiles_n * split;
    let slots = sms * per_sm;
    let waves = (ctas / slots).ceil();
    // wgmma with n >= 128 keeps the tensor pipe busiest; n64 re-reads A twice as often.
    let n_eff = match c.bn {
        0..=64 => 0.75 * c.bn as f64 / 64.0,
        65..=127 => 0.9,
        128 => 0.95,
        _ => 1.0,
    };
    let cta_flops = 2.0 * c.bm as f64 * c.bn as f64 * kt * BK as f64;
    let compute_s = waves * slots * cta_flops / (n_eff * 550e12);
    let k = p.k as f64;
    let a_bytes = tiles_m * c.bm as f64 * k * 2.0 * (tiles_n / 64.0).ceil();
    let b_bytes = tiles_n * c.bn as f64 * k * 2.0 * (tiles_m / GROUP_M as f64).ceil();
    let c_bytes = p.m as f64 * p.n as f64 * 2.0;
    let ws_bytes = 2.0 * workspace_floats(p, c) as f64 * 4.0;
    // Slots left idle in the waves draw no bandwidth: a grid that fills 112 of 132 SMs
    // streams ~its share of the ~4 TB/s (10% slack for the SMs that run ahead).
    let bw_share = (1.1 * ctas / (waves * slots)).min(1.0);
    let memory_s = (a_bytes + b_bytes + c_bytes + ws_bytes) / (4.0e12 * bw_share);
    let latency_s = waves * kt * 0.8e-6 / (c.stages as f64 - 2.0);
    let launch_s = 3e-6 + if c.split_k > 1 { 1e-6 } else { 0.0 };
    (compute_s.max(memory_s).max(latency_s) + launch_s) * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legal() -> Vec<WgmmaConfig> {
        space()
            .into_iter()
            .filter(|c| check_config(c, &DeviceLimits::HOPPER).is_ok())
            .collect()
    }

    #[test]
    fn space_is_modest_and_covers_both_tile_heights() {
        let l = legal();
        assert!(
            (60..=150).contains(&l.len()),
            "{} legal wgmma configs",
            l.len()
        );
        for bn in [64, 128, 256] {
            assert!(l.iter().any(|c| c.bm == 128 && c.bn == bn));
            assert!(l.iter().any(|c| c.bm == 64 && c.bn == bn && c.split_k == 8));
        }
        assert!(l.iter().any(|c| c.bm == 64 && c.bn == 56 && c.split_k == 1));
        assert!(l.iter().any(|c| c.bm == 64 && c.bn == 80 && c.split_k == 4));
        for c in &l {
            assert!(c.acc_per_thread() <= 128);
            // Stage tiles are whole 1024-byte swizzle atoms.
            assert_eq!((c.bm * BK * 2) % 1024, 0);
            assert_eq!((c.bn * BK * 2) % 1024, 0);
        }
    }

    #[test]
    fn defaults_follow_the_measured_winners() {
        let p = |m, n, k| GemmBf16Problem { m, n, k };
        let d = |m, n, k| default_config(&p(m, n, k));
        let l = DeviceLimits::HOPPER;
        // Run 8 winners: lm_head 128/256 -> 128x256; wq 128 -> 128x128; o_proj 128 -> split 2,
        // o_proj 256 -> no split.
        assert_eq!(
            d(128, 128815, 7168).map(|c| (c.bm, c.bn, c.split_k)),
            Some((128, 256, 1))
        );
        assert_eq!(
            d(128, 16384, 2048).map(|c| (c.bn, c.split_k)),
            Some((128, 1))
        );
        assert_eq!(
            d(128, 7168, 16384).map(|c| (c.bn, c.split_k)),
            Some((128, 2))
        );
        assert_eq!(
            d(256, 7168, 16384).map(|c| (c.bn, c.split_k)),
            Some((128, 1))
        );
        // Not served: small M, narrow N, unaligned K.
        assert!(d(64, 7168, 16384).is_none());
        assert!(d(128, 48, 7168).is_none());
        assert!(d(128, 7168, 7167).is_none());
        for (m, n, k) in [
            (65, 65, 8),
            (4096, 36864, 7168),
            (300, 1000, 64),
            (129, 70, 520),
        ] {
            let c = d(m, n, k).unwrap();
            check_config(&c, &l).unwrap();
            check_problem(&p(m, n, k), &c).unwrap();
        }
    }

    #[test]
    fn o_proj_decode_ranks_the_128_tile_width_first() {
        // M = 32, 7168 x 16384: 56 columns give 128 CTAs, 64 give 112 of 132 SMs.
        let p = GemmBf16Problem {
            m: 32,
            n: 7168,
            k: 16384,
        };
        let l = DeviceLimits::HOPPER;
        let c = |bn| WgmmaConfig {
            bm: 64,
            bn,
            stages: 6,
            split_k: 1,
        };
        assert_eq!(tiles(&p, &c(56)), 128);
        assert!(estimate_us(&p, &c(56), &l) < estimate_us(&p, &c(64), &l));
    }

    #[test]
    fn problems_outside_the_kernel_are_refused() {
        let c = WgmmaConfig {
            bm: 64,
            bn: 128,
            stages: 4,
            split_k: 8,
        };
        let p = |m, n, k| GemmBf16Problem { m, n, k };
        assert!(check_problem(&p(128, 2560, 7168), &c).is_ok());
        assert!(check_problem(&p(128, 2560, 7167), &c).is_err());
        // 7 K tiles for 8 splits.
        assert!(check_problem(&p(128, 2560, 448), &c).is_err());
        let g = geometry(&p(128, 2560, 7168), &c);
        assert_eq!(g.grid, [2 * 20, 1, 8]);
        assert_eq!(g.block, [128, 1, 1]);
        assert_eq!(workspace_floats(&p(128, 2560, 7168), &c), 8 * 40 * 64 * 128);
    }
}
