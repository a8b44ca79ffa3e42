//! The ring weight-streaming kernel of `gemm_bf16` (`templates/gemm_bf16_ring.cu.tera`):
//! decode GEMMs with M <= 32 tokens and K % 8 == 0. A CTA keeps a ring of
//! `stages` shared-memory slots filled with `cp.async` copies by four producer warps (completing on an mbarrier per
//! slot); `rows` consumer warps run swap-AB `mma.sync` from the ring. The grid is persistent
//! and splits the problem's stages stream-K style: every CTA streams the same number of
//! bytes (+-1 stage); tiles cut between CTAs are reduced in-kernel, deterministically. The
//! template's header explains it.
//!
//! Grid: `[min(ctas, stages of the problem), 1, 1]`; block `32 * (rows + 4)`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_grid_and_workspace, check_rows_16_byte_aligned, illegal, GemmBf16Problem};
use crate::family::{DeviceLimits, Illegal, LaunchGeometry, RenderVars};

/// Producer warps of a CTA (the template's PRODUCERS): one per SM sub-partition.
pub const PRODUCERS: u32 = 4;

/// Most tokens the ring kernel serves (4 n8 tiles).
pub const MAX_M: u32 = 32;

/// A point of the ring kernel's space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingConfig {
    /// Consumer warps, each owning one m16 tile of weight rows: a tile is 16 * rows rows of N.
    pub rows: u32,
    /// K elements of one pipeline stage (2 * kstage bytes of each weight row).
    pub kstage: u32,
    /// Shared-memory ring slots; `stages - 1` are in flight while one is consumed.
    pub stages: u32,
    /// n8 tiles of tokens: serves M <= 8 * tokens8.
    pub tokens8: u32,
    /// Persistent CTAs (a multiple of the SM count: one or two per SM).
    pub ctas: u32,
}

impl RingConfig {
    pub fn threads(&self) -> u32 {
        32 * (self.rows + PRODUCERS)
    }
    /// Weight rows (columns of C) per tile.
    pub fn tile_n(&self) -> u32 {
        16 * self.rows
    }
    /// Token rows per tile.
    pub fn tile_m(&self) -> u32 {
        8 * self.tokens8
    }
    pub fn outputs(&self) -> u32 {
        self.tile_n() * self.tile_m()
    }
    /// A row of a slot: 2 * kstage bytes plus 16 of padding (conflict-free ldmatrix).
    pub fn row_bytes(&self) -> u32 {
        2 * self.kstage + 16
    }
    pub fn slot_bytes(&self) -> u32 {
        (self.tile_n() + self.tile_m()) * self.row_bytes()
    }
    /// The 2 * stages mbarriers, padded to 128 bytes.
    pub fn barrier_bytes(&self) -> u32 {
        (16 * self.stages).div_ceil(128) * 128
    }
    /// Dynamic shared memory: barriers and the ring.
    pub fn smem_bytes(&self) -> u32 {
        self.barrier_bytes() + self.stages * self.slot_bytes()
    }
    /// Weight bytes of one full stage.
    pub fn stage_weight_bytes(&self) -> u32 {
        self.tile_n() * self.kstage * 2
    }
}

/// The fewest token tiles (1, 2 or 4 n8 tiles) that hold `m` tokens.
pub fn tokens8_for(m: u32) -> u32 {
    super::stream::tokens8_for(m)
}

/// Whether the tuner should measure `c` for `p` (see [`super::stream::worth_measuring`]).
pub fn worth_measuring(p: &GemmBf16Problem, c: &RingConfig) -> bool {
    c.tokens8 == tokens8_for(p.m)
}

/// Tiles of 16 * rows weight rows.
pub fn tiles(p: &GemmBf16Problem, c: &RingConfig) -> u64 {
    (p.n as u64).div_ceil(c.tile_n() as u64)
}

/// K stages of a tile.
pub fn k_stages(p: &GemmBf16Problem, c: &RingConfig) -> u64 {
    (p.k as u64).div_ceil(c.kstage as u64)
}

/// Stages of the whole problem (the unit the CTAs split).
pub fn total_stages(p: &GemmBf16Problem, c: &RingConfig) -> u64 {
    tiles(p, c) * k_stages(p, c)
}

/// CTAs launched: one range of stages each, never an empty one.
pub fn grid(p: &GemmBf16Problem, c: &RingConfig) -> u64 {
    total_stages(p, c).min(c.ctas as u64)
}

/// Two partial tiles per CTA at most (its first and its last).
pub fn workspace_floats(p: &GemmBf16Problem, c: &RingConfig) -> u64 {
    grid(p, c) * 2 * c.outputs() as u64
}

/// One counter per tile.
pub fn counters_len(p: &GemmBf16Problem, c: &RingConfig) -> usize {
    tiles(p, c) as usize
}

pub fn space() -> Vec<RingConfig> {
    let mut out = Vec::new();
    for rows in [2, 4, 8] {
        for kstage in [128, 256, 512] {
            for stages in [3, 4, 6, 8] {
                for tokens8 in [1, 2, 4] {
                    for ctas in [132, 264] {
                        out.push(RingConfig {
                            rows,
                            kstage,
                            stages,
                            tokens8,
                            ctas,
                        });
                    }
                }
            }
        }
    }
    out
}

pub fn check_config(c: &RingConfig, limits: &DeviceLimits) -> Result<(), Illegal> {
    // Consumer warps: 32, 64 or 128 weight rows a tile.
    illegal(![2, 4, 8].contains(&c.rows), || {
        format!("rows {} is not 2, 4 or 8", c.rows)
    })?;
    // Stage depths the template is written for (whole k16 steps; 256 B to 1 KiB a row copy).
    illegal(![128, 256, 512].contains(&c.kstage), || {
        format!("kstage {} is not 128, 256 or 512", c.kstage)
    })?;
    illegal(!(3..=8).contains(&c.stages), || {
        format!("{} stages is not 3..=8", c.stages)
    })?;
    illegal(![1, 2, 4].contains(&c.tokens8), || {
        format!("tokens8 {} is not 1, 2 or 4", c.tokens8)
    })?;
    // One or two persistent CTAs per SM.
    let per_sm = c.ctas / limits.sms.max(1);
    illegal(
        !c.ctas.is_multiple_of(limits.sms.max(1)) || !(1..=2).contains(&per_sm),
        || format!("{} CTAs is not 1 or 2 per SM of {}", c.ctas, limits.sms),
    )?;
    // The ring fits the SM's shared memory at that many CTAs per SM (228 KiB an SM, 1 KiB
    // reserved per CTA).
    let budget = (limits.max_dynamic_smem_per_block + 1024) / per_sm.max(1) - 1024;
    illegal(c.smem_bytes() > budget, || {
        format!(
            "{} B of shared memory exceed {budget} B ({per_sm} CTAs per SM)",
            c.smem_bytes()
        )
    })?;
    // Pruning: bytes in flight per SM below 48 KiB cannot cover the DRAM latency at the
    // SM's share of the bandwidth (4.2 TB/s x ~1.2 us / 132 SMs ~ 38 KB), and above 160 KiB
    // add nothing but a longer ramp.
    let inflight = per_sm * (c.stages - 1) * c.stage_weight_bytes();
    illegal(!(48 << 10..=160 << 10).contains(&inflight), || {
        format!("{inflight} B in flight per SM is outside 48..160 KiB")
    })?;
    Ok(())
}

pub fn check_problem(p: &GemmBf16Problem, c: &RingConfig) -> Result<(), Illegal> {
    // Every token has an n8 column.
    illegal(p.m > c.tile_m(), || {
        format!("m {} exceeds 8 * tokens8 = {}", p.m, c.tile_m())
    })?;
    // 16-byte copies from 16-byte aligned rows.
    check_rows_16_byte_aligned(p)?;
    // The stage counter math of the kernel stays in range (S * G in 64 bits, tiles in int).
    check_grid_and_workspace(tiles(p, c), workspace_floats(p, c))
}

pub fn entry(_p: &GemmBf16Problem, c: &RingConfig) -> String {
    format!(
        "kiln_gemm_bf16_ring_r{}_k{}_s{}_t{}_c{}",
        c.rows, c.kstage, c.stages, c.tokens8, c.ctas
    )
}

pub fn render_vars(p: &GemmBf16Problem, c: &RingConfig) -> RenderVars {
    let vars = json!({
        "ring": true,
        "stream": false,
        "wgmma": false,
        "entry": entry(p, c),
        "rows": c.rows,
        "threads": c.threads(),
        "kstage": c.kstage,
        "stages": c.stages,
        "tokens8": c.tokens8,
        "barrier_bytes": c.barrier_bytes(),
    });
    match vars {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal"),
    }
}

pub fn geometry(p: &GemmBf16Problem, c: &RingConfig) -> LaunchGeometry {
    LaunchGeometry {
        grid: [grid(p, c) as u32, 1, 1],
        block: [c.threads(), 1, 1],
        dynamic_smem_bytes: c.smem_bytes(),
        cluster: [1, 1, 1],
    }
}

/// A config for `p` when nothing is tuned: 64-row tiles, 256-element stages, one CTA per
/// SM with 4 stages (96 KiB of weight in flight per SM).
pub fn default_config(p: &GemmBf16Problem) -> RingConfig {
    RingConfig {
        rows: 4,
        kstage: 256,
        stages: 4,
        tokens8: tokens8_for(p.m),
        ctas: DeviceLimits::HOPPER.sms,
    }
}

/// Analytical time in microseconds: the busiest CTA's bytes at the SM's share of the DRAM
/// bandwidth (or what its bytes in flight sustain over ~1.2 us of loaded latency), one
/// latency to fill the ring, and an L2 round trip or two when tiles are cut between CTAs.
pub fn estimate_us(p: &GemmBf16Problem, c: &RingConfig, limits: &DeviceLimits) -> f64 {
    const DRAM_BPS: f64 = 4.1e12;
    const LATENCY_S: f64 = 1.2e-6;
    let sms = limits.sms.max(1) as f64;
    let g = grid(p, c) as f64;
    let per_sm = (c.ctas as f64 / sms).max(1.0);
    let stages_per_cta = (total_stages(p, c) as f64 / g).ceil();
    let rows = (p.n as f64).min(c.tile_n() as f64);
    let stage_bytes = rows * (p.k as f64).min(c.kstage as f64) * 2.0;
    let sm_share = DRAM_BPS / sms;
    let inflight = per_sm * (c.stages - 1) as f64 * stage_bytes;
    let sm_bps = sm_share.min(inflight / LATENCY_S);
    let busiest_sm = stages_per_cta * stage_bytes * per_sm.min((g / sms).ceil());
    let weight_bytes = p.n as f64 * p.k as f64 * 2.0;
    let memory_s = (weight_bytes / DRAM_BPS).max(busiest_sm / sm_bps);
    // Tokens come from L2 with every stage: 8 * tokens8 rows beside the weight rows.
    let token_s = memory_s * (p.m.min(c.tile_m()) as f64 / rows) * 0.25;
    // Tiles are cut between CTAs unless every range is a whole number of tiles.
    let (s, gi, kst) = (total_stages(p, c), grid(p, c), k_stages(p, c));
    let cut = s % gi != 0 || (s / gi) % kst != 0;
    let reduce_s = if cut { 1.5e-6 } else { 0.0 };
    let launch_s = 2.0e-6;
    (launch_s + LATENCY_S + memory_s + token_s + reduce_s) * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prob(m: u32, n: u32, k: u32) -> GemmBf16Problem {
        GemmBf16Problem { m, n, k }
    }

    fn legal() -> Vec<RingConfig> {
        space()
            .into_iter()
            .filter(|c| check_config(c, &DeviceLimits::HOPPER).is_ok())
            .collect()
    }

    /// The kernel's stream-K split, written again: CTA c takes [c*S/G, (c+1)*S/G), the owner
    /// of stage i is the largest c whose range starts at or before i.
    fn owner(i: u64, s: u64, g: u64) -> u64 {
        ((i + 1) * g - 1) / s
    }

    #[test]
    fn space_is_pruned_to_a_compilable_size() {
        let l = legal();
        assert!(l.len() >= 24, "only {} legal ring configs", l.len());
        assert!(l.len() <= 120, "{} legal ring configs", l.len());
        for t in [1, 2, 4] {
            assert!(l.iter().any(|c| c.tokens8 == t && c.ctas == 132));
            assert!(l.iter().any(|c| c.tokens8 == t && c.ctas == 264));
        }
        assert!(check_config(&default_config(&prob(1, 2560, 7168)), &DeviceLimits::HOPPER).is_ok());
        assert!(check_config(
            &default_config(&prob(32, 2560, 7168)),
            &DeviceLimits::HOPPER
        )
        .is_ok());
        for c in &l {
            assert!(c.smem_bytes() <= DeviceLimits::HOPPER.max_dynamic_smem_per_block);
        }
        let p = prob(1, 2560, 7168);
        let names: std::collections::HashSet<String> = l.iter().map(|c| entry(&p, c)).collect();
        assert_eq!(names.len(), l.len());
    }

    #[test]
    fn every_stage_has_one_owner_and_tiles_are_cut_at_most_twice_per_cta() {
        for (n, k) in [
            (2560u32, 7168u32),
            (48, 7168),
            (16384, 2048),
            (75, 4104),
            (7168, 16384),
        ] {
            for c in legal().into_iter().filter(|c| c.tokens8 == 1) {
                let p = prob(1, n, k);
                let (s, g, kst) = (total_stages(&p, &c), grid(&p, &c), k_stages(&p, &c));
                assert!(g >= 1 && g <= s);
                let mut partials = vec![Vec::new(); g as usize];
                for cta in 0..g {
                    let (b, e) = (cta * s / g, (cta + 1) * s / g);
                    assert!(e > b, "empty range");
                    for i in b..e {
                        assert_eq!(owner(i, s, g), cta);
                    }
                }
                for tile in 0..tiles(&p, &c) {
                    let (cf, cl) = (owner(tile * kst, s, g), owner(tile * kst + kst - 1, s, g));
                    if cf != cl {
                        for cta in cf..=cl {
                            partials[cta as usize].push(tile);
                        }
                    }
                }
                // A CTA's partial tiles are its first and last (slots 0 and 1 of the
                // template: slot 0 iff the tile holds the CTA's first stage).
                for (cta, ts) in partials.iter().enumerate() {
                    let cta = cta as u64;
                    let first_tile = (cta * s / g) / kst;
                    let last_tile = ((cta + 1) * s / g - 1) / kst;
                    assert!(ts.len() <= 2, "{n}x{k} {c:?}");
                    let slots: Vec<u64> = ts.iter().map(|&t| u64::from(t != first_tile)).collect();
                    assert!(ts.iter().all(|&t| t == first_tile || t == last_tile));
                    assert!(slots.len() < 2 || slots[0] != slots[1]);
                }
            }
        }
    }

    #[test]
    fn problems_outside_the_kernel_are_refused() {
        let c = default_config(&prob(1, 48, 7168));
        assert!(check_problem(&prob(8, 48, 7168), &c).is_ok());
        assert!(check_problem(&prob(9, 48, 7168), &c).is_err());
        assert!(check_problem(&prob(1, 48, 7163), &c).is_err());
        let g = geometry(&prob(1, 48, 7168), &c);
        // 1 tile of 64 rows x 28 stages of 256: 28 CTAs.
        assert_eq!(g.grid, [28, 1, 1]);
        assert_eq!(g.block, [256, 1, 1]);
        assert_eq!(workspace_floats(&prob(1, 48, 7168), &c), 28 * 2 * 64 * 8);
    }

    #[test]
    fn the_estimate_prefers_enough_bytes_in_flight() {
        let l = DeviceLimits::HOPPER;
        let p = prob(1, 7168, 16384);
        let shallow = RingConfig {
            rows: 2,
            kstage: 128,
            stages: 3,
            tokens8: 1,
            ctas: 132,
        };
        let deep = RingConfig {
            stages: 8,
            ..shallow.clone()
        };
        assert!(estimate_us(&p, &deep, &l) < estimate_us(&p, &shallow, &l));
        // o_proj at M = 1: 235 MB at ~4 TB/s is ~57 us; the estimate is near it.
        let best = legal()
            .into_iter()
            .filter(|c| worth_measuring(&p, c))
            .map(|c| estimate_us(&p, &c, &l))
            .fold(f64::INFINITY, f64::min);
        assert!((55.0..75.0).contains(&best), "{best}");
    }
}
