use super::*;
use std::collections::{BTreeSet, HashMap, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

fn every_problem() -> Vec<MlpJetBackwardProblem> {
    let mut out = Vec::new();
    for d in [1u32, 2, 5, 20, 32] {
        for width in WIDTHS {
            for depth in [2u32, 4, 8] {
                for (p, loss) in [
                    (1, Loss::LaplacianResidual),
                    (1, Loss::Cotangents),
                    (8, Loss::Cotangents),
                ] {
                    for points in [1u32, 7, 1001, 1 << 20] {
                        out.push(MlpJetBackwardProblem {
                            d,
                            width,
                            depth,
                            p,
                            points,
                            loss,
                        });
                    }
                }
            }
        }
    }
    out
}

#[test]
fn space_and_variants_stay_modest() {
    assert_eq!(MlpJetBackward::legal_space(&limits()).len(), 480);
    let f = crate::registry::family("mlp_jet_backward").unwrap();
    let variants = f.variants(&limits());
    let entries: HashSet<_> = variants.iter().map(|v| v.entry.clone()).collect();
    assert_eq!(entries.len(), variants.len());
    assert!(
        (350..=460).contains(&variants.len()),
        "{} variants to compile",
        variants.len()
    );
    for tag in ["_res_", "_cot_"] {
        assert!(variants.iter().any(|v| v.entry.contains(tag)), "{tag}");
    }
}

#[test]
fn render_vars_match_the_template() {
    let used = crate::families::template_tags::template_names(MlpJetBackward::TEMPLATE);
    for c in MlpJetBackward::legal_space(&limits()) {
        for p in MlpJetBackward::branch_problems() {
            if MlpJetBackward::check_problem(&p, &c).is_err() {
                continue;
            }
            let keys: BTreeSet<String> = MlpJetBackward::render_vars(&p, &c)
                .keys()
                .cloned()
                .collect();
            assert_eq!(keys, used, "render vars vs template names");
        }
    }
}

#[test]
fn entries_name_exactly_what_the_source_depends_on() {
    let mut by_entry: HashMap<String, RenderVars> = HashMap::new();
    let mut problems = MlpJetBackward::branch_problems();
    problems.extend(pinn_targets());
    for c in MlpJetBackward::legal_space(&limits()) {
        for p in &problems {
            if MlpJetBackward::check_problem(p, &c).is_err() {
                continue;
            }
            let e = MlpJetBackward::entry(p, &c);
            let v = MlpJetBackward::render_vars(p, &c);
            if let Some(prev) = by_entry.insert(e.clone(), v.clone()) {
                assert_eq!(prev, v, "entry {e} names two sources");
            }
            // The point count only shapes the grid.
            let more = MlpJetBackwardProblem {
                points: p.points * 3 + 1,
                ..*p
            };
            assert_eq!(MlpJetBackward::entry(&more, &c), e);
            assert_eq!(MlpJetBackward::render_vars(&more, &c), v);
        }
    }
}

#[test]
fn args_match_the_template_signatures() {
    // One definition of each entry.
    let names = |open| crate::families::template_tags::signatures(MlpJetBackward::TEMPLATE, open);
    let want: Vec<&str> = MlpJetBackward::args().iter().map(|a| a.name).collect();
    assert_eq!(names("{{ entry }}("), vec![want]);
    let want: Vec<&str> = REDUCE_ARGS.iter().map(|a| a.name).collect();
    assert_eq!(names("{{ entry }}_reduce("), vec![want]);
    let want: Vec<&str> = PACK_ARGS.iter().map(|a| a.name).collect();
    assert_eq!(names("{{ entry }}_pack("), vec![want]);
}

#[cfg(feature = "jit")]
#[test]
fn every_variant_renders_both_entries() {
    for c in MlpJetBackward::legal_space(&limits()) {
        for p in MlpJetBackward::branch_problems() {
            if MlpJetBackward::check_problem(&p, &c).is_ok() {
                let src = crate::render::render::<MlpJetBackward>(&p, &c).unwrap();
                let e = MlpJetBackward::entry(&p, &c);
                assert!(src.source.contains(&format!("{e}(")));
                assert!(src.source.contains(&format!("{e}_reduce(")));
                assert_eq!(
                    src.source.contains("#define KILN_PACKED 1"),
                    packs_weights(&c),
                    "{e}"
                );
            }
        }
    }
}

#[test]
fn every_supported_problem_has_a_legal_default() {
    let l = limits();
    let mut n = 0;
    for p in every_problem() {
        MlpJetBackward::supports(&p).unwrap_or_else(|e| panic!("{e}"));
        let c = MlpJetBackward::default_config(&p);
        MlpJetBackward::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
        MlpJetBackward::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
        let g = MlpJetBackward::geometry(&p, &c);
        assert!(g.grid[0] >= 1 && g.grid[0] <= 132);
        assert!(g.dynamic_smem_bytes <= l.max_dynamic_smem_per_block);
        assert!(MlpJetBackward::estimate_us(&p, &c, &l).is_finite());
        n += 1;
    }
    assert!(n > 500);
}

#[test]
fn unsupported_problems_say_why() {
    let ok = MlpJetBackwardProblem {
        d: 2,
        width: 64,
        depth: 3,
        p: 1,
        points: 100,
        loss: Loss::LaplacianResidual,
    };
    MlpJetBackward::supports(&ok).unwrap();
    let bad = [
        MlpJetBackwardProblem { d: 0, ..ok },
        MlpJetBackwardProblem { d: 33, ..ok },
        MlpJetBackwardProblem { width: 256, ..ok },
        MlpJetBackwardProblem { depth: 1, ..ok },
        MlpJetBackwardProblem { depth: 9, ..ok },
        MlpJetBackwardProblem { p: 2, ..ok },
        MlpJetBackwardProblem {
            p: 9,
            loss: Loss::Cotangents,
            ..ok
        },
        MlpJetBackwardProblem { points: 0, ..ok },
    ];
    for p in bad {
        assert!(MlpJetBackward::supports(&p).is_err(), "{p:?}");
    }
    let e = MlpJetBackward::supports(&MlpJetBackwardProblem { p: 2, ..ok }).unwrap_err();
    assert!(e.to_string().contains("use cotangents"));
}

// is_multiple_of is newer than the workspace's rust-version.
#[allow(clippy::manual_is_multiple_of)]
#[test]
fn shapes_tile_the_columns_and_fit() {
    for p in every_problem() {
        for c in MlpJetBackward::candidates(&p, &limits()) {
            let sh = shape(&p, &c).unwrap();
            let ts = c.tile_points * p.streams();
            assert!(
                sh.cols >= ts && sh.cols - ts < col_unit(&c, sh.row_warps),
                "{p:?} {c:?}"
            );
            assert_eq!(sh.cols % col_unit(&c, sh.row_warps), 0);
            assert_eq!(sh.row_warps * c.rows * 8, p.width);
            assert_eq!((8 / sh.row_warps) * 4 * sh.cols_per_thread, sh.cols);
            assert_eq!(((p.width + 4) / 4) % 2, 1);
            assert!(sh.partial_stride as usize > p.params() && sh.partial_stride % 4 == 0);
            assert_eq!(16 * sh.dw_vec * (p.width / (16 * sh.dw_vec)), p.width);
        }
    }
}

#[test]
fn targets_get_tiles_that_fill_the_columns() {
    // The three nets keep at least 40 columns per tile and pad less than 10%.
    for p in pinn_targets() {
        let c = MlpJetBackward::default_config(&p);
        let sh = shape(&p, &c).unwrap();
        let ts = c.tile_points * p.streams();
        assert!(ts >= 40, "{p:?} -> {c:?}");
        assert!(
            (sh.cols - ts) * 10 < sh.cols,
            "{p:?} -> {c:?}: {} of {}",
            ts,
            sh.cols
        );
        assert_eq!(MlpJetBackward::geometry(&p, &c).grid[0], 132);
    }
}

#[test]
fn scratch_scale_flops_and_bytes() {
    let p = MlpJetBackwardProblem {
        d: 2,
        width: 64,
        depth: 3,
        p: 1,
        points: 10,
        loss: Loss::LaplacianResidual,
    };
    let pc = param_count(2, 64, 3, 1);
    assert_eq!(p.params(), pc);
    let c = MlpJetBackwardConfig {
        rows: 4,
        tile_points: 2,
        math: Math::Fma,
        slab_k: SLAB_K,
        share_slot: false,
        packed_weights: false,
    };
    // 5 tiles, 5 CTAs, each an arena of the parameters + the loss, rounded to 4 floats.
    assert_eq!(MlpJetBackward::geometry(&p, &c).grid[0], 5);
    assert_eq!(partial_floats(&p, &c), 5 * (pc + 1).div_ceil(4) * 4);
    assert_eq!(
        MlpJetBackward::scratch(&p, &c)[0].bytes,
        4 * partial_floats(&p, &c)
    );
    assert_eq!(scale(&p), 0.1);
    assert_eq!(
        scale(&MlpJetBackwardProblem {
            loss: Loss::Cotangents,
            ..p
        }),
        1.0
    );
    let f = MlpJetBackward::flops(&p);
    let per_point = 3.0 * 2.0 * 64.0 * 64.0 * 4.0 + 3.0 * 64.0 * 2.0 + 3.0 * 64.0 * 4.0;
    assert_eq!(f, 2.0 * 10.0 * per_point);
    assert_eq!(
        MlpJetBackward::min_bytes(&p),
        4.0 * (20.0 + 10.0 + 2.0 * pc as f64)
    );
    assert_eq!(reduce_geometry(&p).grid[0], (pc as u32 + 1).div_ceil(256));
}

#[test]
fn buckets_and_serde() {
    let p = pinn_targets()[1];
    let v = serde_json::to_value(p).unwrap();
    assert_eq!(v["loss"], "laplacian_residual");
    let back: MlpJetBackwardProblem = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
    let q = MlpJetBackwardProblem {
        points: 1 << 16,
        ..p
    };
    let dist = MlpJetBackward::bucket_distance(&p, &q).unwrap();
    assert!((dist - 4f64.ln()).abs() < 1e-12);
    assert_eq!(
        MlpJetBackward::bucket_distance(
            &p,
            &MlpJetBackwardProblem {
                loss: Loss::Cotangents,
                ..q
            }
        ),
        None
    );
}

#[test]
fn shallow_slabs_only_reach_tiles_the_deep_ones_cannot() {
    // Configs recorded before `slab_k` existed read as 32-deep slabs, with their old names.
    let c: MlpJetBackwardConfig =
        serde_json::from_str(r#"{"rows": 4, "tile_points": 16, "math": "tf32x3"}"#).unwrap();
    assert_eq!(c.slab_k, SLAB_K);
    let t = pinn_targets();
    assert!(MlpJetBackward::entry(&t[1], &c).ends_with("_t16_tf32x3"));
    for p in every_problem() {
        for c in MlpJetBackward::candidates(&p, &limits()) {
            if c.slab_k != SLAB_K_SMALL {
                continue;
            }
            let deep = MlpJetBackwardConfig {
                slab_k: SLAB_K,
                ..c
            };
            assert!(
                MlpJetBackward::check_problem(&p, &deep).is_err(),
                "{p:?} {c:?}"
            );
            assert!(MlpJetBackward::entry(&p, &c).contains("_k16"));
        }
    }
    // Each memory saver only where the tile needs it: at d = 2, 16 points fit as they are,
    // 24 with 16-deep slabs or a shared slot, 32 with both; at d = 20, 4 points with either,
    // 5 with a shared slot.
    let has = |p: &MlpJetBackwardProblem, tile: u32, slab_k: u32, share_slot: bool| {
        MlpJetBackward::candidates(p, &limits()).contains(&MlpJetBackwardConfig {
            rows: 4,
            tile_points: tile,
            math: Math::Tf32x3,
            slab_k,
            share_slot,
            packed_weights: false,
        })
    };
    assert!(has(&t[1], 16, SLAB_K, false) && !has(&t[1], 16, SLAB_K, true));
    assert!(has(&t[1], 24, SLAB_K_SMALL, false) && has(&t[1], 24, SLAB_K, true));
    assert!(!has(&t[1], 24, SLAB_K_SMALL, true) && !has(&t[1], 24, SLAB_K, false));
    assert!(has(&t[1], 32, SLAB_K_SMALL, true) && !has(&t[1], 32, SLAB_K, true));
    assert!(has(&t[2], 4, SLAB_K_SMALL, false) && has(&t[2], 4, SLAB_K, true));
    assert!(has(&t[2], 5, SLAB_K, true));
    // d = 1 keeps every layer's slot up to 64 points; 80 shares one.
    assert!(has(&t[0], 64, SLAB_K, false) && !has(&t[0], 64, SLAB_K, true));
    assert!(has(&t[0], 80, SLAB_K, true));
    // Depth 2 has no slot to share.
    let shallow = MlpJetBackwardProblem { depth: 2, ..t[1] };
    assert!(MlpJetBackward::candidates(&shallow, &limits())
        .iter()
        .all(|c| !c.share_slot));
    let bad = MlpJetBackwardConfig { slab_k: 8, ..c };
    let shared = MlpJetBackwardConfig {
        share_slot: true,
        ..c
    };
    assert!(MlpJetBackward::entry(&t[1], &shared).ends_with("_tf32x3_s"));
    assert!(MlpJetBackward::check_config(&bad, &limits()).is_err());
}

#[test]
fn configs_without_math_read_as_fma_and_tensor_tiles_are_whole() {
    // Configs recorded before the `math` field existed still parse, as the FMA path.
    let c: MlpJetBackwardConfig =
        serde_json::from_str(r#"{"rows": 4, "tile_points": 16}"#).unwrap();
    assert_eq!(c.math, Math::Fma);
    // tf32x3: every warp's columns are whole 8-column mma tiles, and the entry names the path.
    for p in every_problem() {
        for c in MlpJetBackward::candidates(&p, &limits()) {
            if c.math != Math::Tf32x3 {
                continue;
            }
            let sh = shape(&p, &c).unwrap();
            assert_eq!((4 * sh.cols_per_thread) % 8, 0, "{p:?} {c:?}");
            assert!(MlpJetBackward::entry(&p, &c).contains("_tf32x3"));
            let fma = MlpJetBackwardConfig {
                math: Math::Fma,
                ..c
            };
            assert_ne!(
                MlpJetBackward::entry(&p, &c),
                MlpJetBackward::entry(&p, &fma)
            );
        }
    }
}

#[test]
fn the_first_layer_shares_a_slot_from_three_layers_on() {
    assert_eq!([2, 3, 4, 8].map(|d| slots(d, true)), [2, 2, 3, 7]);
    assert_eq!([2, 3, 4, 8].map(|d| slots(d, false)), [2, 3, 4, 8]);
    // The slot count is what the shared-memory size counts.
    let p = MlpJetBackwardProblem {
        d: 2,
        width: 64,
        depth: 4,
        p: 1,
        points: 1000,
        loss: Loss::LaplacianResidual,
    };
    let c = MlpJetBackwardConfig {
        rows: 4,
        tile_points: 8,
        math: Math::Fma,
        slab_k: SLAB_K,
        share_slot: false,
        packed_weights: false,
    };
    let all = shape(&p, &c).unwrap();
    let shared = shape(
        &p,
        &MlpJetBackwardConfig {
            share_slot: true,
            ..c
        },
    )
    .unwrap();
    assert_eq!(shared.slots_floats * 4, all.slots_floats * 3);
}

#[test]
fn packed_weights_are_split16_only_and_sized_in_the_scratch() {
    let t = pinn_targets();
    // The d = 2 training step's served tile (32 points, 16-deep slabs, a shared slot) still
    // fits with packed slabs: 12 KB each instead of 10.
    let c = MlpJetBackwardConfig {
        rows: 4,
        tile_points: 32,
        math: Math::Split16,
        slab_k: SLAB_K_SMALL,
        share_slot: true,
        packed_weights: true,
    };
    MlpJetBackward::check_problem(&t[1], &c).unwrap();
    let plain = MlpJetBackwardConfig {
        packed_weights: false,
        ..c
    };
    let (sp, sq) = (shape(&t[1], &c).unwrap(), shape(&t[1], &plain).unwrap());
    assert_eq!(sp.slab_floats, 16 * 128 * 3 / 2);
    assert_eq!(sq.slab_floats, 128 * 20);
    assert_eq!(sp.smem_bytes - sq.smem_bytes, 2 * 4 * (3072 - 2560));
    // The scratch: the arenas, then 2 directions x 3 hidden layers x 128 x 128 x 1.5 words.
    assert_eq!(packed_offset(&t[1], &c), partial_floats(&t[1], &plain));
    assert_eq!(
        partial_floats(&t[1], &c) - packed_offset(&t[1], &c),
        2 * 3 * 128 * 128 * 3 / 2
    );
    assert_eq!(
        MlpJetBackward::scratch(&t[1], &c)[0].bytes,
        4 * partial_floats(&t[1], &c)
    );
    // One pack thread per lane of each 16 x 16 block, both directions.
    assert_eq!(pack_geometry(&t[1]).grid[0] * 256, 2 * 3 * 64 * 32);
    assert!(MlpJetBackward::entry(&t[1], &c).ends_with("_split16_k16_s_pk"));
    assert_ne!(
        MlpJetBackward::entry(&t[1], &c),
        MlpJetBackward::entry(&t[1], &plain)
    );
    // Not for the other maths; and configs written before the field read as unpacked.
    for math in [Math::Fma, Math::Tf32x3] {
        let bad = MlpJetBackwardConfig { math, ..c };
        assert!(MlpJetBackward::check_config(&bad, &limits()).is_err());
    }
    let old: MlpJetBackwardConfig = serde_json::from_str(
        r#"{"rows": 4, "tile_points": 32, "math": "split16", "slab_k": 16, "share_slot": true}"#,
    )
    .unwrap();
    assert_eq!(old, plain);
    // Packed candidates are split16 ones.
    for p in every_problem() {
        for c in MlpJetBackward::candidates(&p, &limits()) {
            assert!(!c.packed_weights || c.math == Math::Split16, "{p:?} {c:?}");
        }
    }
}
