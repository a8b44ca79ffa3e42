use super::*;
use std::collections::{BTreeSet, HashMap, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

fn prob(batch: u32, context: u32, kv_dtype: KvDtype, page_size: u32) -> MfaDecodeProblem {
    MfaDecodeProblem::step3(batch, context, kv_dtype, page_size)
}

fn template_names() -> BTreeSet<String> {
    crate::families::template_tags::template_names(MfaDecode::TEMPLATE)
}

#[test]
fn legal_space_is_large_enough_and_small_enough() {
    let legal = MfaDecode::legal_space(&limits());
    assert!(legal.len() >= 60, "only {} legal configs", legal.len());
    // Distinct kernels (split_tokens only shapes the grid) stay cheap to compile in CI.
    let kernels: HashSet<_> = legal
        .iter()
        .map(|c| (c.tile_kv, c.stages, c.warps))
        .collect();
    assert!(
        (10..=20).contains(&kernels.len()),
        "{} distinct kernels",
        kernels.len()
    );
    assert!(legal.iter().any(|c| c.warps == 4) && legal.iter().any(|c| c.warps == 8));
    for tile in TILE_CHOICES {
        assert!(
            legal.iter().any(|c| c.tile_kv == tile),
            "no {tile}-token tile"
        );
    }
    for split in SPLIT_CHOICES {
        assert!(
            legal.iter().any(|c| c.split_tokens == split),
            "no split of {split}"
        );
    }
    // 4 warps never take 128-token tiles (128 score registers per thread); 8 warps never take
    // 16-token tiles (each group needs a whole 16-token k-step).
    assert!(!legal.iter().any(|c| c.warps == 4 && c.tile_kv == 128));
    assert!(!legal.iter().any(|c| c.warps == 8 && c.tile_kv == 16));
    // Splits hold whole tiles: 16-token splits only for 16-token tiles.
    assert!(legal
        .iter()
        .filter(|c| c.split_tokens == 16)
        .all(|c| c.tile_kv == 16));
    // wgmma: 32- and 64-token tiles only.
    assert!(legal.iter().any(|c| c.wgmma && c.tile_kv == 32));
    assert!(legal.iter().any(|c| c.wgmma && c.tile_kv == 64));
    assert!(!legal
        .iter()
        .any(|c| c.wgmma && !(c.tile_kv == 32 || c.tile_kv == 64)));
    // Warp specialisation: on wgmma only, with one or two consumer warp groups.
    assert!(legal.iter().all(|c| !c.ws || c.wgmma));
    assert!(legal.iter().any(|c| c.ws && c.warps == 4));
    assert!(legal.iter().any(|c| c.ws && c.warps == 8));
    // Consumer groups widening: a variant of the ws kernels only.
    assert!(legal
        .iter()
        .all(|c| !c.consumer_widen || (c.ws && c.tile_kv == 64)));
    assert!(legal
        .iter()
        .any(|c| c.consumer_widen && c.stages == 4 && c.tile_kv == 64));
    assert!(legal.len() <= 650, "{} legal configs", legal.len());
}

#[test]
fn variants_cover_every_kernel_once_per_branch() {
    let f = crate::registry::family("mfa_decode").unwrap();
    let variants = f.variants(&limits());
    let entries: HashSet<_> = variants.iter().map(|v| v.entry.clone()).collect();
    assert_eq!(entries.len(), variants.len());
    // BF16 drops the configs whose 2x larger tiles do not fit.
    let per_branch = |tag: &str| variants.iter().filter(|v| v.entry.contains(tag)).count();
    assert!(
        per_branch("_bf16_contig") >= 8,
        "{}",
        per_branch("_bf16_contig")
    );
    assert_eq!(per_branch("_bf16_contig"), per_branch("_bf16_paged"));
    assert_eq!(per_branch("_fp8_contig"), per_branch("_fp8_paged"));
    assert!(per_branch("_fp8_contig") > per_branch("_bf16_contig"));
    // Warp specialisation is FP8 only.
    assert!(per_branch("_ws_") > 0);
    assert!(!variants
        .iter()
        .any(|v| v.entry.contains("_ws_") && v.entry.contains("_bf16")));
    assert!(
        variants.len() <= 160,
        "{} variants to compile",
        variants.len()
    );
}

#[test]
fn entries_name_exactly_what_the_source_depends_on() {
    // Same entry <=> same render vars, across configs and branch problems.
    let mut by_entry: HashMap<String, RenderVars> = HashMap::new();
    let mut by_vars: HashMap<String, String> = HashMap::new();
    for c in MfaDecode::legal_space(&limits()) {
        for p in MfaDecode::branch_problems() {
            if MfaDecode::check_problem(&p, &c).is_err() {
                continue;
            }
            let e = MfaDecode::entry(&p, &c);
            let v = MfaDecode::render_vars(&p, &c);
            let key = serde_json::to_string(&v).unwrap();
            if let Some(prev) = by_entry.insert(e.clone(), v.clone()) {
                assert_eq!(prev, v, "entry {e} names two sources");
            }
            if let Some(prev) = by_vars.insert(key, e.clone()) {
                assert_eq!(prev, e, "one source under two entries");
            }
        }
    }
    // Batch, context and page size do not change the source.
    let c = MfaDecode::default_config(&prob(8, 4096, KvDtype::Bf16, 0));
    assert_eq!(
        MfaDecode::render_vars(&prob(8, 4096, KvDtype::Bf16, 16), &c),
        MfaDecode::render_vars(&prob(1, 100, KvDtype::Bf16, 1), &c)
    );
    assert_ne!(
        MfaDecode::render_vars(&prob(8, 4096, KvDtype::Bf16, 0), &c),
        MfaDecode::render_vars(&prob(8, 4096, KvDtype::Bf16, 16), &c)
    );
}

#[test]
fn render_vars_match_the_template() {
    let used = template_names();
    for c in [
        MfaDecode::legal_space(&limits()).remove(0),
        MfaDecode::default_config(&prob(1, 4096, KvDtype::Bf16, 0)),
    ] {
        for p in MfaDecode::branch_problems() {
            let vars = MfaDecode::render_vars(&p, &c);
            let keys: BTreeSet<String> = vars.keys().cloned().collect();
            let missing: Vec<_> = used.difference(&keys).collect();
            let unused: Vec<_> = keys.difference(&used).collect();
            assert!(
                missing.is_empty(),
                "template uses {missing:?}, render_vars lacks them"
            );
            assert!(
                unused.is_empty(),
                "render_vars has {unused:?}, the template never reads them"
            );
            assert_eq!(vars["entry"], json!(MfaDecode::entry(&p, &c)));
        }
    }
}

#[cfg(feature = "jit")]
#[test]
fn every_variant_renders() {
    for c in MfaDecode::legal_space(&limits()) {
        for p in MfaDecode::branch_problems() {
            if MfaDecode::check_problem(&p, &c).is_ok() {
                let src = crate::render::render::<MfaDecode>(&p, &c).unwrap();
                assert!(src
                    .source
                    .contains(&format!("{}(", MfaDecode::entry(&p, &c))));
                assert!(!src.source.contains("{{") && !src.source.contains("{%"));
            }
        }
    }
}

#[test]
fn default_config_is_legal_for_many_problems() {
    let l = limits();
    for kv in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
        for page in [0u32, 1, 16, 64] {
            for batch in [1u32, 2, 3, 8, 32, 64, 100, 128, 256, 1000, 65535] {
                for context in [
                    1u32,
                    17,
                    63,
                    64,
                    1000,
                    1024,
                    4096,
                    16384,
                    65536,
                    131072,
                    1 << 20,
                ] {
                    let p = prob(batch, context, kv, page);
                    MfaDecode::supports(&p).unwrap();
                    let c = MfaDecode::default_config(&p);
                    MfaDecode::check_config(&c, &l)
                        .unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                    MfaDecode::check_problem(&p, &c)
                        .unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                }
            }
        }
    }
    // B = 1 spreads a 4K context over many CTAs of short tiles; B = 128 needs two CTAs per
    // SM (32-token tiles, two splits; run 17) and FP8 the warp-specialised kernel unsplit.
    let one = prob(1, 4096, KvDtype::Bf16, 0);
    let c = MfaDecode::default_config(&one);
    assert!(splits(&one, &c) >= 32, "{c:?}");
    assert!(c.tile_kv <= 32, "{c:?}");
    let short = prob(1, 1024, KvDtype::Bf16, 0);
    assert!(splits(&short, &MfaDecode::default_config(&short)) >= 16);
    let many = prob(128, 4096, KvDtype::Bf16, 0);
    let c = MfaDecode::default_config(&many);
    assert_eq!(splits(&many, &c), 2);
    assert_eq!((c.tile_kv, c.stages, c.warps), (32, 2, 4));
    let many8 = prob(128, 4096, KvDtype::Fp8e4m3, 0);
    let c = MfaDecode::default_config(&many8);
    assert_eq!(
        (c.tile_kv, c.stages, c.warps, c.ws, splits(&many8, &c)),
        (64, 3, 8, true, 1)
    );
    let mid = prob(8, 4096, KvDtype::Bf16, 16);
    let s = splits(&mid, &MfaDecode::default_config(&mid));
    assert!((8..=32).contains(&s), "{s} splits for B=8");
}

#[test]
fn supports_only_step3_heads() {
    assert!(MfaDecode::supports(&prob(1, 1, KvDtype::Bf16, 0)).is_ok());
    let mut p = prob(1, 1, KvDtype::Bf16, 0);
    p.heads = 32;
    assert!(MfaDecode::supports(&p)
        .unwrap_err()
        .to_string()
        .contains("64 query heads"));
    let mut p = prob(1, 1, KvDtype::Bf16, 0);
    p.head_dim = 128;
    assert!(MfaDecode::supports(&p).is_err());
    assert!(MfaDecode::supports(&prob(0, 1, KvDtype::Bf16, 0)).is_err());
    assert!(MfaDecode::supports(&prob(1, 0, KvDtype::Bf16, 0)).is_err());
    assert!(MfaDecode::supports(&prob(65536, 1, KvDtype::Bf16, 0)).is_err());
}

#[test]
fn legal_configs_have_sane_geometry() {
    let l = limits();
    for c in MfaDecode::legal_space(&l) {
        for p in [
            prob(1, 1, KvDtype::Bf16, 0),
            prob(3, 1000, KvDtype::Fp8e4m3, 16),
            prob(128, 65536, KvDtype::Bf16, 0),
        ] {
            if MfaDecode::check_problem(&p, &c).is_err() {
                continue;
            }
            let g = MfaDecode::geometry(&p, &c);
            assert_eq!(g.block, [c.threads(), 1, 1]);
            assert_eq!(g.grid, [splits(&p, &c), p.batch, 1]);
            assert!(g.dynamic_smem_bytes <= l.max_dynamic_smem_per_block);
            assert_eq!(g.cluster, [1, 1, 1]);
            // Every sequence length up to context maps to at most grid.x splits.
            let chunk = chunk_tokens(&p, &c);
            assert_eq!(chunk % c.tile_kv, 0);
            assert!(p.context.div_ceil(chunk) <= g.grid[0]);
            assert!(chunk <= c.split_tokens.max(c.tile_kv));
        }
    }
}

#[test]
fn smem_per_dtype() {
    let c = |tile_kv, stages, warps| MfaDecodeConfig {
        tile_kv,
        stages,
        warps,
        split_tokens: 4096,
        wgmma: false,
        ws: false,
        consumer_widen: false,
    };
    // 64-token BF16 tiles: 3 stages fit (32 KB of Q + 3 x 64 KB), 4 do not.
    assert_eq!(c(64, 3, 8).smem_bytes(KvDtype::Bf16), 32768 + 3 * 65536);
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Bf16, 0), &c(64, 3, 8)).is_ok());
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Bf16, 0), &c(64, 4, 8)).is_err());
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Fp8e4m3, 0), &c(64, 4, 8)).is_ok());
    // The 8-warp merge buffer sets a floor.
    assert_eq!(c(32, 2, 8).smem_bytes(KvDtype::Fp8e4m3), MERGE_BYTES);
    assert_eq!(
        c(32, 2, 8).stage_bytes(KvDtype::Fp8e4m3),
        2 * (32 * 256 + 32 * 4)
    );
    // wgmma on an FP8 cache adds an f16 V tile (1024-byte aligned) and Q's 64 row scales
    // after the stages (unpadded: K tiles, V tiles and scales are three rings) and Q's 64 row
    // scales, 1024-byte aligned; a BF16 cache's tiles are read where they land.
    let w = |tile_kv, stages, warps| MfaDecodeConfig {
        wgmma: true,
        ..c(tile_kv, stages, warps)
    };
    assert_eq!(w(32, 2, 4).wide_bytes(KvDtype::Fp8e4m3), 32 * 512);
    assert_eq!(
        w(32, 2, 4).stage_bytes(KvDtype::Fp8e4m3),
        2 * (32 * 256 + 32 * 4)
    );
    assert_eq!(
        w(32, 2, 4).smem_bytes(KvDtype::Fp8e4m3),
        (32768u32 + 2 * 16640 + 64 * 4).next_multiple_of(1024) + 32 * 512
    );
    // Warp specialisation on 64-token FP8 tiles, the producer widening: 3 stages fit next to
    // the three f16 slots and the mbarriers (full, kempty, vland per stage, vempty per slot),
    // 4 do not. With each consumer group widening into its own slot, 4 stages fit exactly.
    let ws = |tile_kv, stages, warps| MfaDecodeConfig {
        ws: true,
        ..w(tile_kv, stages, warps)
    };
    assert_eq!(
        ws(64, 3, 8).smem_bytes(KvDtype::Fp8e4m3),
        (32768u32 + 3 * 33280 + 64 * 4 + 12 * 8).next_multiple_of(1024) + 3 * 32768
    );
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Fp8e4m3, 0), &ws(64, 3, 8)).is_ok());
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Fp8e4m3, 0), &ws(64, 4, 8)).is_err());
    let cw = |tile_kv, stages, warps| MfaDecodeConfig {
        consumer_widen: true,
        ..ws(tile_kv, stages, warps)
    };
    assert_eq!(cw(64, 4, 8).wide_bytes(KvDtype::Fp8e4m3), 2 * 32768);
    assert_eq!(
        cw(64, 4, 8).smem_bytes(KvDtype::Fp8e4m3),
        (32768u32 + 4 * 33280 + 64 * 4 + 12 * 8).next_multiple_of(1024) + 2 * 32768
    );
    assert_eq!(cw(64, 4, 8).smem_bytes(KvDtype::Fp8e4m3), 232448);
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Fp8e4m3, 0), &cw(64, 4, 8)).is_ok());
    // Only the ws kernel has consumer groups that widen.
    assert!(MfaDecode::check_config(
        &MfaDecodeConfig {
            consumer_widen: true,
            ..w(64, 3, 8)
        },
        &limits()
    )
    .is_err());
    assert_eq!(w(32, 2, 4).wide_bytes(KvDtype::Bf16), 0);
    assert_eq!(
        w(64, 2, 4).smem_bytes(KvDtype::Bf16),
        c(64, 2, 4).smem_bytes(KvDtype::Bf16)
    );
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Fp8e4m3, 0), &w(64, 3, 8)).is_ok());
    // With one f16 tile instead of two, 4 stages of 64 FP8 tokens fit as well.
    assert!(MfaDecode::check_problem(&prob(1, 64, KvDtype::Fp8e4m3, 0), &w(64, 4, 8)).is_ok());
}

#[test]
fn workspace_and_counters() {
    let c = MfaDecodeConfig {
        tile_kv: 64,
        stages: 3,
        warps: 8,
        split_tokens: 64,
        wgmma: false,
        ws: false,
        consumer_widen: false,
    };
    let p = prob(2, 4096, KvDtype::Bf16, 0);
    assert_eq!(splits(&p, &c), 64);
    // One slot: bf16 O [64 x 256], then fp32 (m, l) per row.
    assert_eq!(WS_SLOT_BYTES, 64 * 256 * 2 + 64 * 8);
    assert_eq!(MfaDecode::workspace_bytes(&p, &c), 2 * 64 * 33280);
    assert_eq!(MfaDecode::workspace_bytes(&p, &c) % 4, 0); // allocated as f32
    assert_eq!(counters_len(&p, &c), 6);
    let scratch = MfaDecode::scratch(&p, &c);
    assert!(!scratch[0].zero_init && scratch[1].zero_init);
    assert_eq!(scratch[1].bytes, 24);
    let one = MfaDecodeConfig {
        split_tokens: 4096,
        ..c.clone()
    };
    assert_eq!(MfaDecode::workspace_bytes(&p, &one), 0);
    assert_eq!(counters_len(&p, &one), 0);
    // Too many splits or too large a workspace is rejected.
    assert!(MfaDecode::check_problem(&prob(1, 1 << 20, KvDtype::Bf16, 0), &c).is_err());
    assert!(MfaDecode::check_problem(&prob(1024, 8192, KvDtype::Bf16, 0), &c).is_err());
    // Ragged chunking: context 1000 over 256-token splits is 4 chunks of 256.
    let c256 = MfaDecodeConfig {
        split_tokens: 256,
        ..c
    };
    let p = prob(3, 1000, KvDtype::Bf16, 0);
    assert_eq!((splits(&p, &c256), chunk_tokens(&p, &c256)), (4, 256));
}

#[test]
fn combine_shares_fit_the_template_layout() {
    // The template's combine: min(active, MAX_SHARES) shares of whole rows; a share's (m, l)
    // over all splits fit ML_CAP entries, and one split of its rows fits the staging area of
    // every legal config.
    for active in 2..=MAX_SPLITS {
        let nsh = active.min(MAX_SHARES);
        let mut rows = 0;
        for share in 0..nsh {
            let r0 = share * HEADS / nsh;
            let nr = (share + 1) * HEADS / nsh - r0;
            assert!((1..=HEADS / 2).contains(&nr), "active {active}: {nr} rows");
            assert!(
                nr * active <= ML_CAP,
                "active {active}: {} (m, l)",
                nr * active
            );
            rows += nr;
        }
        assert_eq!(rows, HEADS);
    }
    for c in MfaDecode::legal_space(&limits()) {
        for dtype in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
            let smem = c.smem_bytes(dtype);
            // One split of a 32-row share fits after the (m, l) entries; the output tile too.
            assert!(
                smem >= COMBINE_DATA_OFFSET + HEADS / 2 * HEAD_DIM * 2,
                "{c:?}"
            );
            assert!(smem >= O_TILE_BYTES, "{c:?}");
        }
    }
}

#[test]
fn default_split_follows_batch_and_context() {
    // More work per sequence or more sequences: never more CTAs per token.
    for kv in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
        for batch in [1u32, 8, 32, 128] {
            let mut prev = 0;
            for context in [1024u32, 4096, 16384, 65536] {
                let p = prob(batch, context, kv, 0);
                let c = MfaDecode::default_config(&p);
                assert!(chunk_tokens(&p, &c) >= prev, "{p:?} -> {c:?}");
                prev = chunk_tokens(&p, &c);
            }
        }
        for context in [1024u32, 4096, 16384] {
            let mut prev = 0;
            for batch in [1u32, 8, 32, 128] {
                let p = prob(batch, context, kv, 0);
                let c = MfaDecode::default_config(&p);
                assert!(chunk_tokens(&p, &c) >= prev, "{p:?} -> {c:?}");
                prev = chunk_tokens(&p, &c);
            }
        }
    }
}

#[test]
fn estimate_ranks_obvious_cases() {
    let l = limits();
    let p = prob(1, 4096, KvDtype::Bf16, 0);
    let base = MfaDecode::default_config(&p);
    let no_split = MfaDecodeConfig {
        split_tokens: 4096,
        ..base.clone()
    };
    let (a, b) = (
        MfaDecode::estimate_us(&p, &base, &l),
        MfaDecode::estimate_us(&p, &no_split, &l),
    );
    assert!(a.is_finite() && a > 0.0 && a * 3.0 < b, "{a} vs {b}");
    for c in MfaDecode::legal_space(&l) {
        for p in [
            prob(1, 1, KvDtype::Bf16, 0),
            prob(128, 4096, KvDtype::Fp8e4m3, 16),
            prob(32, 65536, KvDtype::Bf16, 0),
        ] {
            let t = MfaDecode::estimate_us(&p, &c, &l);
            assert!(t.is_finite() && t > 0.0, "{c:?} on {p:?}: {t}");
        }
    }
    // A big batch streams near the copy ceiling: 512 MB in well under 200 us.
    let big = prob(128, 4096, KvDtype::Bf16, 0);
    let t = MfaDecode::estimate_us(&big, &MfaDecode::default_config(&big), &l);
    assert!((100.0..200.0).contains(&t), "{t}");
}

#[test]
fn flops_bytes_and_buckets() {
    let p = prob(2, 10, KvDtype::Bf16, 0);
    assert_eq!(MfaDecode::flops(&p), 4.0 * 2.0 * 10.0 * 64.0 * 256.0);
    assert_eq!(
        MfaDecode::min_bytes(&p),
        2.0 * 10.0 * 1024.0 + 2.0 * 2.0 * 64.0 * 256.0 * 2.0
    );
    let f = prob(2, 10, KvDtype::Fp8e4m3, 0);
    assert_eq!(f.kv_bytes(), 2.0 * 10.0 * 520.0);
    assert_eq!(MfaDecode::bucket_distance(&p, &p), Some(0.0));
    assert_eq!(MfaDecode::bucket_distance(&p, &f), None);
    assert_eq!(
        MfaDecode::bucket_distance(&p, &prob(2, 10, KvDtype::Bf16, 16)),
        None
    );
    let near = MfaDecode::bucket_distance(&prob(4, 10, KvDtype::Bf16, 0), &p).unwrap();
    let far = MfaDecode::bucket_distance(&prob(16, 10, KvDtype::Bf16, 0), &p).unwrap();
    assert!(near < far);
}

#[test]
fn branch_problems_cover_every_branch() {
    let branches: HashSet<(bool, bool)> = MfaDecode::branch_problems()
        .iter()
        .map(|p| (p.kv_dtype.is_fp8(), p.paged()))
        .collect();
    assert_eq!(branches.len(), 4);
    for p in MfaDecode::branch_problems() {
        MfaDecode::supports(&p).unwrap();
    }
}

#[test]
fn e4m3_codec() {
    // Every finite code round-trips.
    for code in 0u8..=255 {
        let x = e4m3_decode(code);
        if x.is_nan() {
            assert!(code & 0x7f == 0x7f);
            continue;
        }
        let back = e4m3_encode(x);
        if x == 0.0 {
            assert_eq!(back & 0x7f, 0);
        } else {
            assert_eq!(back, code, "{code:#x} = {x}");
        }
    }
    assert_eq!(e4m3_decode(0x7e), 448.0);
    assert_eq!(e4m3_decode(0x01), 2f32.powi(-9));
    assert_eq!(e4m3_decode(0x08), 2f32.powi(-6));
    assert_eq!(e4m3_decode(0x38), 1.0);
    assert_eq!(e4m3_decode(0xb8), -1.0);
    // Saturation and rounding to nearest even.
    assert_eq!(e4m3_encode(1e6), 0x7e);
    assert_eq!(e4m3_encode(-500.0), 0xfe);
    assert_eq!(e4m3_encode(1.0625), 0x38); // halfway 1 | 1.125: even mantissa 0
    assert_eq!(e4m3_encode(1.1875), 0x3a); // halfway 1.125 | 1.25: even mantissa 2
    assert_eq!(e4m3_encode(1.07), 0x39);
    assert_eq!(e4m3_encode(2f32.powi(-10)), 0x00); // halfway 0 | 2^-9: even
    assert_eq!(e4m3_encode(3.0 * 2f32.powi(-10)), 0x02);
    assert_eq!(e4m3_encode(0.0153), 0x08); // rounds up into the first normal
    assert_eq!(e4m3_encode(f32::NAN), 0x7f);
    // Every value in range lands on the nearest code.
    let mut x = -460.0f32;
    while x < 460.0 {
        let c = e4m3_encode(x);
        let err = (e4m3_decode(c) - x.clamp(-448.0, 448.0)).abs();
        for other in 0u8..=255 {
            let y = e4m3_decode(other);
            if y.is_finite() {
                assert!(
                    err <= (y - x.clamp(-448.0, 448.0)).abs() + 1e-6,
                    "{x}: {c:#x} vs {other:#x}"
                );
            }
        }
        x += 0.37;
    }
}

/// A tiny batch: random q, contiguous bf16 values.
fn tiny(len: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    };
    let d = HEAD_DIM as usize;
    let q = (0..64 * d).map(|_| next()).collect();
    let k = (0..len * d).map(|_| next()).collect();
    let v = (0..len * d).map(|_| next()).collect();
    (q, k, v)
}

#[test]
fn reference_with_one_token_returns_v() {
    let (q, k, v) = tiny(1, 7);
    let layout = KvLayout::Contiguous { max_len: 1 };
    let o = reference_cpu_sequence(1, &q, KvPool::Bf16(&k), KvPool::Bf16(&v), layout, 0, 1);
    for head in 0..64 {
        for d in 0..256 {
            assert!((o[head * 256 + d] - v[d] as f64).abs() < 1e-12);
        }
    }
}

#[test]
fn reference_with_uniform_keys_averages_v() {
    let (q, _, v) = tiny(5, 9);
    let k = vec![0.25f32; 5 * 256];
    let layout = KvLayout::Contiguous { max_len: 5 };
    let o = reference_cpu_sequence(5, &q, KvPool::Bf16(&k), KvPool::Bf16(&v), layout, 0, 5);
    for head in 0..64 {
        for d in 0..256 {
            let mean = (0..5).map(|t| v[t * 256 + d] as f64).sum::<f64>() / 5.0;
            assert!((o[head * 256 + d] - mean).abs() < 1e-12);
        }
    }
}

#[test]
fn reference_clamps_lengths_and_zeroes_empty_sequences() {
    let (q, k, v) = tiny(8, 3);
    let layout = KvLayout::Contiguous { max_len: 8 };
    let full = reference_cpu_sequence(4, &q, KvPool::Bf16(&k), KvPool::Bf16(&v), layout, 0, 4);
    let over = reference_cpu_sequence(4, &q, KvPool::Bf16(&k), KvPool::Bf16(&v), layout, 0, 8);
    assert_eq!(full, over);
    let empty = reference_cpu_sequence(4, &q, KvPool::Bf16(&k), KvPool::Bf16(&v), layout, 0, 0);
    assert!(empty.iter().all(|&x| x == 0.0));
    let negative = reference_cpu_sequence(4, &q, KvPool::Bf16(&k), KvPool::Bf16(&v), layout, 0, -3);
    assert!(negative.iter().all(|&x| x == 0.0));
}

#[test]
fn reference_paged_matches_contiguous_and_fp8_matches_dequantised() {
    // Two sequences of 5 and 3 tokens; pages of 2 tokens, scattered in reverse order.
    let (q1, k, v) = tiny(10, 11);
    let (q2, _, _) = tiny(1, 12);
    let d = 256;
    let q: Vec<f32> = q1.iter().chain(&q2).cloned().collect();
    let p = MfaDecodeProblem::step3(2, 5, KvDtype::Bf16, 0);
    let lens = [5, 3];
    let contig = reference_cpu(
        &p,
        &q,
        KvPool::Bf16(&k),
        KvPool::Bf16(&v),
        KvLayout::Contiguous { max_len: 5 },
        &lens,
    );
    // Pool of 6 pages of 2 rows; sequence b's page i goes to pool page table[b][i].
    let table = [5, 3, 1, 4, 2, 0];
    let mut kp = vec![0.0f32; 12 * d];
    let mut vp = vec![0.0f32; 12 * d];
    for b in 0..2 {
        for t in 0..5 {
            let row = table[b * 3 + t / 2] as usize * 2 + t % 2;
            kp[row * d..(row + 1) * d].copy_from_slice(&k[(b * 5 + t) * d..(b * 5 + t + 1) * d]);
            vp[row * d..(row + 1) * d].copy_from_slice(&v[(b * 5 + t) * d..(b * 5 + t + 1) * d]);
        }
    }
    let layout = KvLayout::Paged {
        page_size: 2,
        block_table: &table,
        max_pages: 3,
    };
    let paged = reference_cpu(&p, &q, KvPool::Bf16(&kp), KvPool::Bf16(&vp), layout, &lens);
    assert_eq!(contig, paged);

    // FP8: codes with per-row scales equal the BF16 reference on the dequantised values.
    let scales: Vec<f32> = (0..10).map(|r| 0.01 * (r + 1) as f32).collect();
    let codes = |x: &[f32]| -> Vec<u8> {
        x.iter()
            .enumerate()
            .map(|(i, &y)| e4m3_encode(y / scales[i / d]))
            .collect()
    };
    let (kc, vc) = (codes(&k), codes(&v));
    let deq = |c: &[u8]| -> Vec<f32> {
        c.iter()
            .enumerate()
            .map(|(i, &x)| e4m3_decode(x) * scales[i / d])
            .collect()
    };
    let (kd, vd) = (deq(&kc), deq(&vc));
    let fp8 = reference_cpu(
        &p,
        &q,
        KvPool::Fp8 {
            codes: &kc,
            scales: &scales,
        },
        KvPool::Fp8 {
            codes: &vc,
            scales: &scales,
        },
        KvLayout::Contiguous { max_len: 5 },
        &lens,
    );
    let want = reference_cpu(
        &p,
        &q,
        KvPool::Bf16(&kd),
        KvPool::Bf16(&vd),
        KvLayout::Contiguous { max_len: 5 },
        &lens,
    );
    for (a, b) in fp8.iter().zip(&want) {
        // The dequantised copy rounds each value to f32 once.
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }
}

#[test]
fn args_match_the_template_signature() {
    // The parameter list between "{{ entry }}(" and ")\n{" names the arguments in order.
    let t = MfaDecode::TEMPLATE;
    let start = t.find("{{ entry }}(").expect("entry signature") + "{{ entry }}(".len();
    let end = start + t[start..].find(")\n{").expect("end of signature");
    let params: Vec<(String, String)> = t[start..end]
        .split(',')
        .map(|p| {
            let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
            let name = p.rsplit(' ').next().unwrap().to_string();
            let ty = p[..p.len() - name.len()]
                .replace("__restrict__", "")
                .trim()
                .to_string();
            (name, ty)
        })
        .collect();
    let args = MfaDecode::args();
    assert_eq!(params.len(), args.len());
    for ((name, ty), a) in params.iter().zip(&args) {
        assert_eq!(name, a.name);
        assert_eq!(
            ty.replace(' ', ""),
            a.c_type.replace(' ', ""),
            "type of {name}"
        );
    }
    // Scratch buffers are pointer arguments.
    let c = MfaDecode::default_config(&prob(8, 4096, KvDtype::Bf16, 0));
    for s in MfaDecode::scratch(&prob(8, 4096, KvDtype::Bf16, 0), &c) {
        let a = args.iter().find(|a| a.name == s.arg).unwrap();
        assert!(a.c_type.ends_with('*'));
    }
}

#[test]
fn large_bf16_batches_default_to_two_ctas_per_sm() {
    // Runs 17-19's measured winners (see two_ctas_per_sm): 32-token tiles, 2 stages, 4 warps.
    for (b, l) in [
        (8, 65536),
        (32, 16384),
        (32, 65536),
        (128, 4096),
        (128, 16384),
        (128, 65536),
    ] {
        let p = prob(b, l, KvDtype::Bf16, 0);
        let c = MfaDecode::default_config(&p);
        assert_eq!(
            (c.tile_kv, c.stages, c.warps),
            (32, 2, 4),
            "B={b} L={l}: {c:?}"
        );
        assert!(b * splits(&p, &c) <= 264, "B={b} L={l}: {c:?}");
    }
    let paged = prob(128, 4096, KvDtype::Bf16, 16);
    assert_eq!(MfaDecode::default_config(&paged).tile_kv, 32);
    // Not where it measured slower: short chunks (the split's combine), FP8.
    let c = MfaDecode::default_config(&prob(128, 1024, KvDtype::Bf16, 0));
    assert_ne!((c.tile_kv, c.stages), (32, 2), "B=128 L=1K: {c:?}");
    let fp8 = MfaDecode::default_config(&prob(128, 4096, KvDtype::Fp8e4m3, 0));
    assert!(fp8.ws, "{fp8:?}");
}

#[test]
fn defaults_use_wgmma_for_bf16_and_warp_specialised_wgmma_for_fp8() {
    // BF16: every default with a 32- or 64-token tile runs on wgmma.
    for (b, l) in [(1, 4096), (8, 65536), (32, 4096), (128, 4096), (128, 65536)] {
        let c = MfaDecode::default_config(&prob(b, l, KvDtype::Bf16, 0));
        assert!(
            c.wgmma && (c.tile_kv == 32 || c.tile_kv == 64),
            "B={b} L={l}: {c:?}"
        );
    }
    // FP8: the warp-specialised wgmma kernel, one sequence or 128 (runs 6-7 of 2026-11-30).
    for b in [1, 128] {
        for page in [0, 16] {
            let c = MfaDecode::default_config(&prob(b, 4096, KvDtype::Fp8e4m3, page));
            assert!(c.wgmma && c.ws, "B={b} page {page}: {c:?}");
            // A paged cache: the consumer groups widen (4 stages where they fit).
            assert_eq!(c.consumer_widen, page > 0, "B={b} page {page}: {c:?}");
        }
    }
}

#[test]
fn ws_register_asks_fit_the_launch_allocation() {
    // Three warp groups launch with the most registers 384 threads get (in steps of 8); the
    // producer's setmaxnreg.dec and the consumers' setmaxnreg.inc must fit that pool, or
    // setmaxnreg.inc waits forever (run 3 of 2026-11-30 hung on 48 + 2 x 232).
    let ws8 = MfaDecodeConfig {
        tile_kv: 64,
        stages: 3,
        warps: 8,
        split_tokens: 4096,
        wgmma: true,
        ws: true,
        consumer_widen: false,
    };
    let threads = ws8.threads();
    assert_eq!(threads, 384);
    let per_thread = (65536 / threads) / 8 * 8;
    assert_eq!(per_thread, 168);
    assert!(
        128 * WS_PRODUCER_REGISTERS + 256 * WS_CONSUMER_REGISTERS <= threads * per_thread,
        "{} + {} > {}",
        128 * WS_PRODUCER_REGISTERS,
        256 * WS_CONSUMER_REGISTERS,
        threads * per_thread
    );
    // .inc may only grow and .dec only shrink a warp's count.
    assert!((WS_PRODUCER_REGISTERS..=WS_CONSUMER_REGISTERS).contains(&per_thread));
    // Only two consumer groups ask for setmaxnreg; one group (256 threads) keeps the launch count.
    let ws4 = MfaDecodeConfig { warps: 4, ..ws8 };
    let p = prob(128, 4096, KvDtype::Fp8e4m3, 0);
    let vars = MfaDecode::render_vars(&p, &ws4);
    assert_eq!(vars["ws_setmaxnreg"], serde_json::json!(false));
    let vars = MfaDecode::render_vars(&p, &ws8);
    assert_eq!(vars["ws_setmaxnreg"], serde_json::json!(true));
}
