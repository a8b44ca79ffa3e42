use super::*;
use std::collections::{BTreeSet, HashMap, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

fn template_names() -> BTreeSet<String> {
    crate::families::template_tags::template_names(MlpJet::TEMPLATE)
}

fn targets() -> Vec<MlpJetProblem> {
    pinn_targets().to_vec()
}

fn every_problem() -> Vec<MlpJetProblem> {
    let mut out = Vec::new();
    for d in [1u32, 2, 5, 20, 32] {
        for width in WIDTHS {
            for depth in [2u32, 4, 8] {
                for p in [1u32, 7, 32, 100, 128] {
                    for streams in [
                        Streams::Value,
                        Streams::ValueGrad,
                        Streams::ValueD2,
                        Streams::ValueGradLaplacian,
                        Streams::ValueGradHessdiag,
                    ] {
                        if streams == Streams::ValueD2 && d != 1 {
                            continue;
                        }
                        out.push(MlpJetProblem {
                            d,
                            width,
                            depth,
                            p,
                            points: 1001,
                            streams,
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
    let legal = MlpJet::legal_space(&limits());
    assert_eq!(legal.len(), 45);
    assert_eq!(legal.iter().filter(|c| c.math == Math::WgmmaDuo).count(), 1);
    assert_eq!(
        legal.iter().filter(|c| c.math == Math::WgmmaCols).count(),
        6
    );
    assert_eq!(legal.iter().filter(|c| c.math == Math::Tf32x3).count(), 6);
    assert_eq!(legal.iter().filter(|c| c.math == Math::Split16).count(), 12);
    assert_eq!(legal.iter().filter(|c| c.math == Math::Wgmma).count(), 2);
    assert!(legal
        .iter()
        .all(|c| !c.packed_weights || c.math == Math::Split16));
    let f = crate::registry::family("mlp_jet").unwrap();
    let variants = f.variants(&limits());
    let entries: HashSet<_> = variants.iter().map(|v| v.entry.clone()).collect();
    assert_eq!(entries.len(), variants.len());
    assert!(
        (130..=330).contains(&variants.len()),
        "{} variants to compile",
        variants.len()
    );
    // Every legal config of every PINN target net is among them (the artifact's winners).
    for p in pinn_targets() {
        for c in MlpJet::candidates(&p, &limits()) {
            let e = MlpJet::entry(&p, &c);
            assert!(entries.contains(&e), "{e}");
        }
    }
    // Every stream kind is compiled.
    for tag in ["_v_", "_vgl_", "_vgh_"] {
        for math in ["_fma_", "_tf32x3_", "_split16_"] {
            assert!(
                variants
                    .iter()
                    .any(|v| v.entry.contains(tag) && v.entry.contains(math)),
                "{tag}{math}"
            );
        }
    }
}

#[test]
fn warps_split_neurons_only_as_registers_require() {
    let cfg = |warps, lane_rows, points_per_lane| MlpJetConfig {
        warps,
        lane_rows,
        points_per_lane,
        math: Math::Fma,
        packed_weights: false,
    };
    // S = 4: 8 neurons x 2 points x 4 streams = 64 fit without a split; 4 points need two
    // warps down (4 neurons each).
    let p = MlpJetProblem::laplacian(2, 128, 4, 32, 100);
    assert_eq!(row_warps(&p, &cfg(8, 16, 2)), Some(1));
    assert_eq!(row_warps(&p, &cfg(8, 16, 4)), Some(2));
    // S = 22: 4 neurons x 1 point fit (88); 2 points need two warps down (2 x 2 x 22).
    let p = MlpJetProblem::laplacian(20, 128, 4, 32, 100);
    assert_eq!(row_warps(&p, &cfg(8, 32, 1)), Some(1));
    assert_eq!(row_warps(&p, &cfg(8, 32, 2)), Some(2));
    assert_eq!(tile_points(&p, &cfg(8, 32, 2)), 8);
    // Hessian diagonal at d = 32 (S = 65) on width 256: one neuron per lane, 8 warps down.
    let p = MlpJetProblem {
        streams: Streams::ValueGradHessdiag,
        ..MlpJetProblem::laplacian(32, 256, 2, 1, 100)
    };
    assert_eq!(row_warps(&p, &cfg(8, 32, 1)), Some(8));
    assert_eq!(row_warps(&p, &cfg(4, 32, 1)), None);
    assert!(MlpJet::check_problem(&p, &cfg(4, 32, 1)).is_err());
    // 32 lanes down a width-32 net with two warps down would leave lanes without a neuron.
    let p = MlpJetProblem::laplacian(32, 32, 2, 1, 100);
    assert_eq!(row_warps(&p, &cfg(8, 32, 4)), None);
}

#[test]
fn branch_problems_reach_multi_pass_outputs_and_padded_rows() {
    let mut multi_pass = false;
    let mut partial = false;
    for p in MlpJet::branch_problems() {
        for c in MlpJet::candidates(&p, &limits()) {
            let sh = shape(&p, &c);
            multi_pass |= sh.passes > 1;
            partial |= sh.passes * sh.pass_rows > p.p;
        }
    }
    assert!(multi_pass && partial);
}

#[test]
fn entries_name_exactly_what_the_source_depends_on() {
    let mut by_entry: HashMap<String, RenderVars> = HashMap::new();
    let mut problems = MlpJet::branch_problems();
    problems.extend(targets());
    // value_d2 is the Laplacian at d = 1, and so is the Hessian diagonal: one kernel each.
    let lap1 = MlpJetProblem::laplacian(1, 64, 3, 5, 100);
    problems.push(MlpJetProblem {
        streams: Streams::ValueD2,
        ..lap1
    });
    problems.push(lap1);
    for c in MlpJet::legal_space(&limits()) {
        for p in &problems {
            if MlpJet::check_problem(p, &c).is_err() {
                continue;
            }
            let e = MlpJet::entry(p, &c);
            let v = MlpJet::render_vars(p, &c);
            if let Some(prev) = by_entry.insert(e.clone(), v.clone()) {
                assert_eq!(prev, v, "entry {e} names two sources");
            }
        }
    }
    let values: HashSet<String> = by_entry
        .values()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect();
    assert_eq!(values.len(), by_entry.len(), "one source under two entries");
    let c = MlpJet::default_config(&lap1);
    let d2 = MlpJetProblem {
        streams: Streams::ValueD2,
        ..lap1
    };
    assert_eq!(MlpJet::entry(&d2, &c), MlpJet::entry(&lap1, &c));
    // The point count only shapes the grid.
    let more = MlpJetProblem {
        points: 1 << 20,
        ..lap1
    };
    assert_eq!(MlpJet::entry(&more, &c), MlpJet::entry(&lap1, &c));
}

#[test]
fn render_vars_match_the_template() {
    // The wgmma path and the others render different parts of the template: each config's
    // names are the template's, and the two sets together are all of them.
    let used = template_names();
    let mut seen = BTreeSet::new();
    for c in MlpJet::legal_space(&limits()) {
        for p in MlpJet::branch_problems() {
            if MlpJet::check_problem(&p, &c).is_err() {
                continue;
            }
            let keys: BTreeSet<String> = MlpJet::render_vars(&p, &c).keys().cloned().collect();
            assert!(
                keys.is_subset(&used),
                "render vars vs template names: {keys:?}"
            );
            seen.extend(keys);
        }
    }
    assert_eq!(seen, used, "render vars vs template names");
}

#[cfg(feature = "jit")]
#[test]
fn every_variant_renders() {
    for c in MlpJet::legal_space(&limits()) {
        for p in MlpJet::branch_problems() {
            if MlpJet::check_problem(&p, &c).is_ok() {
                let src = crate::render::render::<MlpJet>(&p, &c).unwrap();
                assert!(src.source.contains(&format!("{}(", MlpJet::entry(&p, &c))));
                assert_eq!(
                    src.source.contains("#define KILN_PACKED 1"),
                    packs_weights(&c)
                );
            }
        }
    }
}

#[test]
fn args_match_the_template_signature() {
    // Four of each: the wgmma_duo path's, the wgmma path's, the wgmma_cols path's and the
    // other paths'.
    let names = |open| crate::families::template_tags::signatures(MlpJet::TEMPLATE, open);
    let want: Vec<&str> = MlpJet::args().iter().map(|a| a.name).collect();
    assert_eq!(names("{{ entry }}("), vec![want.clone(); 4]);
    let want: Vec<&str> = PACK_ARGS.iter().map(|a| a.name).collect();
    assert_eq!(names("{{ entry }}_pack("), vec![want.clone(); 4]);
}

#[test]
fn packed_weights_size_their_scratch_and_slabs() {
    let t = pinn_targets();
    let c = MlpJetConfig {
        warps: 4,
        lane_rows: 8,
        points_per_lane: 1,
        math: Math::Split16,
        packed_weights: true,
    };
    let plain = MlpJetConfig {
        packed_weights: false,
        ..c
    };
    // d = 20: 3 hidden 128 x 128 matrices at 1.5 words a weight; slabs of 32 k x 128 rows.
    assert_eq!(packed_floats(&t[2], &c), 3 * 128 * 128 * 3 / 2);
    assert_eq!(packed_floats(&t[2], &plain), 0);
    assert_eq!(
        MlpJet::scratch(&t[2], &c),
        vec![Scratch {
            arg: "packed",
            bytes: 4 * 3 * 128 * 128 * 3 / 2,
            zero_init: false,
        }]
    );
    assert!(MlpJet::scratch(&t[2], &plain).is_empty());
    assert_eq!(shape(&t[2], &c).slab_floats, 32 * 128 * 3 / 2);
    assert_eq!(shape(&t[2], &plain).slab_floats, 128 * SLAB_LD);
    assert_eq!(pack_geometry(&t[2], &c).grid[0] * 256, 3 * 64 * 32);
    assert!(MlpJet::entry(&t[2], &c).ends_with("_q1_pk"));
    assert!(MlpJet::entry(&t[2], &plain).ends_with("_q1"));
    // Only split16 packs; configs written before the field read as unpacked.
    let bad = MlpJetConfig {
        math: Math::Tf32x3,
        ..c
    };
    assert!(MlpJet::check_config(&bad, &limits()).is_err());
    let old: MlpJetConfig = serde_json::from_str(
        r#"{"warps": 4, "lane_rows": 8, "points_per_lane": 1, "math": "split16"}"#,
    )
    .unwrap();
    assert_eq!(old, plain);
}

#[test]
fn every_supported_problem_has_a_legal_default() {
    let l = limits();
    let mut n = 0;
    for p in every_problem() {
        MlpJet::supports(&p).unwrap_or_else(|e| panic!("{e}"));
        let c = MlpJet::default_config(&p);
        MlpJet::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
        MlpJet::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
        let g = MlpJet::geometry(&p, &c);
        assert!(g.grid[0] >= 1 && g.grid[0] <= 2 * 132);
        assert!(g.dynamic_smem_bytes <= l.max_dynamic_smem_per_block);
        assert!(MlpJet::estimate_us(&p, &c, &l).is_finite());
        n += 1;
    }
    assert!(n > 1000);
}

#[test]
fn unsupported_problems_say_why() {
    let ok = MlpJetProblem::laplacian(2, 64, 3, 8, 100);
    MlpJet::supports(&ok).unwrap();
    let bad = [
        MlpJetProblem { d: 0, ..ok },
        MlpJetProblem { d: 33, ..ok },
        MlpJetProblem { width: 96, ..ok },
        MlpJetProblem { depth: 1, ..ok },
        MlpJetProblem { depth: 9, ..ok },
        MlpJetProblem { p: 0, ..ok },
        MlpJetProblem { p: 129, ..ok },
        MlpJetProblem { points: 0, ..ok },
        MlpJetProblem {
            streams: Streams::ValueD2,
            ..ok
        },
    ];
    for p in bad {
        assert!(MlpJet::supports(&p).is_err(), "{p:?}");
    }
    let e = MlpJet::supports(&MlpJetProblem { width: 96, ..ok }).unwrap_err();
    assert!(e.to_string().contains("pad the net"));
}

#[test]
fn shapes_cover_the_outputs_and_fit() {
    for p in every_problem() {
        for c in MlpJet::candidates(&p, &limits()) {
            if matches!(c.math, Math::Wgmma | Math::WgmmaDuo) {
                continue; // no lane grid or slabs (`wgmma_fits_registers_and_shared_memory`)
            }
            let sh = shape(&p, &c);
            assert_eq!(sh.rows * c.lane_rows * sh.row_warps, p.width);
            assert_eq!(sh.tile, tile_points(&p, &c));
            assert!(sh.out_rows <= sh.rows);
            if fused_output(&p, &c) {
                assert_eq!(sh.passes, 0);
                assert_eq!(sh.red_floats, sh.row_warps * sh.tile * sh.s * p.p);
            } else {
                assert!(sh.passes * sh.pass_rows >= p.p);
                assert!((sh.passes - 1) * sh.pass_rows < p.p, "an empty pass");
                assert_eq!(sh.red_floats, 0);
            }
            assert_eq!(
                sh.smem_bytes,
                4 * (sh.act_floats + sh.slab_stages * sh.slab_floats + sh.red_floats)
            );
            assert!(sh.smem_bytes <= limits().max_dynamic_smem_per_block);
            if c.math == Math::WgmmaCols {
                assert!((COLS_MIN_STAGES..=COLS_MAX_STAGES).contains(&sh.slab_stages));
                assert_eq!(
                    (sh.rows, sh.row_warps, sh.tile),
                    (2, c.warps, 4 * c.points_per_lane)
                );
            } else {
                assert_eq!(sh.slab_stages, SLAB_STAGES);
            }
            assert!(sh.rows * c.points_per_lane * sh.s <= MAX_ACC);
            match c.math {
                Math::Fma => assert_eq!((sh.group_floats / 4) % 2, 1),
                Math::Tf32x3 | Math::Split16 | Math::Wgmma | Math::WgmmaDuo | Math::WgmmaCols => {
                    assert_eq!(sh.rows % 2, 0);
                    assert_eq!(sh.out_rows % 2, 0);
                    assert!(sh.rows * c.points_per_lane * acc_streams(&p, &c) <= MAX_ACC);
                }
            }
        }
    }
}

#[test]
fn targets_get_fast_configs() {
    for p in targets() {
        let c = MlpJet::default_config(&p);
        let sh = shape(&p, &c);
        // A lane does at least 48 multiply-adds per shared-memory load it issues.
        let fma = 4 * sh.rows * c.points_per_lane * sh.s;
        let loads = sh.rows + c.points_per_lane * sh.s;
        assert!(fma >= 2 * loads, "{p:?} -> {c:?}");
        assert!(sh.rows * c.points_per_lane * sh.s >= 64, "{p:?} -> {c:?}");
        assert_eq!(c.math, Math::Fma);
    }
}

#[test]
fn tf32x3_pads_streams_to_pairs_and_needs_even_rows() {
    let c = MlpJetConfig {
        warps: 4,
        lane_rows: 8,
        points_per_lane: 2,
        math: Math::Tf32x3,
        packed_weights: false,
    };
    // S = 3 carried as 4: 8 rows x 2 points x 4 = 64.
    let p = MlpJetProblem::laplacian(1, 64, 4, 1, 100);
    assert_eq!(acc_streams(&p, &c), 4);
    assert_eq!(row_warps(&p, &c), Some(1));
    let sh = shape(&p, &c);
    assert_eq!((sh.rows, sh.out_rows, sh.pass_rows), (8, 2, 16));
    assert_eq!(sh.act_floats, 4 * 2 * 4 * 4 * 68);
    // Width 32 over 4 warps down would leave one row per lane: not a 16-row tile.
    let p = MlpJetProblem {
        streams: Streams::ValueGradHessdiag,
        ..MlpJetProblem::laplacian(12, 32, 2, 1, 100)
    };
    assert_eq!(row_warps(&p, &c), None);
    assert!(MlpJet::check_config(&MlpJetConfig { lane_rows: 16, ..c }, &limits()).is_err());
}

#[test]
fn arena_layout_flops_and_bytes() {
    let p = MlpJetProblem::laplacian(2, 64, 3, 5, 10);
    let offs = layer_offsets(2, 64, 3, 5);
    assert_eq!(offs[0], (0, 128));
    assert_eq!(offs[1], (192, 192 + 4096));
    assert_eq!(offs[3].0, 192 + 2 * (4096 + 64));
    assert_eq!(param_count(2, 64, 3, 5), offs[3].1 + 5);
    // 16-byte aligned weight matrices (cp.async).
    for w in [32u32, 64, 128, 256] {
        for d in 1..=32 {
            for (at, _) in layer_offsets(d, w, 4, 7).into_iter().skip(1) {
                assert_eq!(at % 4, 0);
            }
        }
    }
    assert_eq!(p.streams_per_point(), 4);
    assert_eq!(p.output_lens(), [50, 100, 50]);
    let f = MlpJet::flops(&p);
    assert_eq!(
        f,
        2.0 * 10.0 * (64.0 * 2.0 + 2.0 * 64.0 * 64.0 * 4.0 + 5.0 * 64.0 * 4.0)
    );
    let b = MlpJet::min_bytes(&p);
    assert_eq!(b, 4.0 * (20.0 + param_count(2, 64, 3, 5) as f64 + 200.0));
    let h = MlpJetProblem {
        streams: Streams::ValueGradHessdiag,
        ..p
    };
    assert_eq!(h.output_lens(), [50, 100, 100]);
    assert_eq!(h.streams_per_point(), 5);
}

#[test]
fn buckets_and_serde() {
    let p = MlpJetProblem::laplacian(2, 128, 4, 32, 1 << 18);
    let v = serde_json::to_value(p).unwrap();
    assert_eq!(v["streams"], "value_grad_laplacian");
    let back: MlpJetProblem = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
    let q = MlpJetProblem {
        points: 1 << 16,
        ..p
    };
    let dist = MlpJet::bucket_distance(&p, &q).unwrap();
    assert!((dist - 4f64.ln()).abs() < 1e-12, "{dist}");
    assert_eq!(
        MlpJet::bucket_distance(&p, &MlpJetProblem { d: 3, ..q }),
        None
    );
    let c = MlpJet::default_config(&p);
    let cv = serde_json::to_value(c).unwrap();
    assert_eq!(cv["math"], "fma");
}

#[test]
fn estimate_prefers_register_tiles_that_reuse_loads() {
    let p = MlpJetProblem::laplacian(1, 64, 4, 32, 1 << 20);
    let l = limits();
    let small = MlpJetConfig {
        warps: 8,
        lane_rows: 32,
        points_per_lane: 1,
        math: Math::Fma,
        packed_weights: false,
    };
    let big = MlpJetConfig {
        warps: 8,
        lane_rows: 8,
        points_per_lane: 4,
        math: Math::Fma,
        packed_weights: false,
    };
    MlpJet::check_problem(&p, &small).unwrap();
    MlpJet::check_problem(&p, &big).unwrap();
    assert!(MlpJet::estimate_us(&p, &big, &l) < MlpJet::estimate_us(&p, &small, &l));
}

#[test]
fn split16_pre_splits_columns_only_with_several_row_warps() {
    let [d1, _, d20] = pinn_targets();
    let config = |points_per_lane| MlpJetConfig {
        warps: 4,
        lane_rows: 8,
        points_per_lane,
        math: Math::Split16,
        packed_weights: false,
    };
    // d = 1, 2 points per lane: one warp down the 64 neurons, fp32 columns.
    let c = config(2);
    assert_eq!(row_warps(&d1, &c), Some(1));
    let vars = MlpJet::render_vars(&d1, &c);
    assert_eq!(vars["presplit"], false);
    assert_eq!(shape(&d1, &c).group_floats, 2 * 4 * 4 * (64 + 4));
    // d = 20: four warps down the neurons, pre-split columns of 200 words (192 + 8).
    let c = config(1);
    assert_eq!(row_warps(&d20, &c), Some(4));
    let vars = MlpJet::render_vars(&d20, &c);
    assert_eq!(vars["presplit"], true);
    assert_eq!(split16_column_words(128), 200);
    assert_eq!(shape(&d20, &c).group_floats, 4 * 22 * 200);
    // Column strides of 8 mod 32 words at every width.
    for w in [32, 64, 128, 256] {
        let words = split16_column_words(w);
        assert_eq!(words % 32, 8, "width {w}");
        assert!(words >= w / 16 * 24 && words < w / 16 * 24 + 32);
    }
    // tf32x3 never pre-splits.
    let c = MlpJetConfig {
        math: Math::Tf32x3,
        ..config(1)
    };
    assert!(!presplit(&c, 4));
}

#[test]
fn wgmma_fits_registers_and_shared_memory() {
    let t = pinn_targets();
    let c = MlpJetConfig {
        warps: 8,
        lane_rows: 8,
        points_per_lane: 1,
        math: Math::Wgmma,
        packed_weights: false,
    };
    // d = 1: 2 stream pairs x (4 x 12 fragment words + 32 accumulators) = 160 registers; three
    // 64 x 64 hidden layers at 6 bytes a weight, and the output layer (p = 1) fused: no output
    // rows on tensor cores.
    assert!(MlpJet::check_problem(&t[0], &c).is_ok());
    assert_eq!(wgmma_frag_regs(&t[0]), 160);
    assert!(fused_output(&t[0], &c));
    assert_eq!(wgmma_out_chunk(&t[0]), (8, 0));
    assert_eq!(wgmma_pack_bytes(&t[0]), 6 * 64 * 3 * 64);
    assert_eq!(
        packed_floats(&t[0], &c) * 4,
        wgmma_pack_bytes(&t[0]) as usize
    );
    assert!(packed_floats_max(&t[0]) >= packed_floats(&t[0], &c));
    assert_eq!(
        wgmma_smem_bytes(&t[0]),
        wgmma_pack_bytes(&t[0]) + 4 * 3 * 64 + 4 * 64 * 2
    );
    assert!(packs_weights(&c) && MlpJet::entry(&t[0], &c).ends_with("_wgmma_w8_lr8_q1_pk"));
    assert_eq!(
        pack_geometry(&t[0], &c).grid[0],
        (wgmma_pack_bytes(&t[0]) / 16).div_ceil(256)
    );
    assert_eq!(tile_points(&t[0], &c), 64);
    let g = MlpJet::geometry(&t[0], &c);
    assert_eq!(
        (g.block[0], g.dynamic_smem_bytes),
        (256, wgmma_smem_bytes(&t[0]))
    );
    // Width 128 with 4 streams needs 320 registers; one stream fits (160).
    let e = MlpJet::check_problem(&t[1], &c).unwrap_err();
    assert!(e.0.contains("fragment registers"), "{}", e.0);
    let one = MlpJetProblem {
        streams: Streams::Value,
        depth: 2,
        p: 70,
        ..t[1]
    };
    assert!(MlpJet::check_problem(&one, &c).is_ok());
    assert!(!fused_output(&one, &c));
    assert_eq!(wgmma_out_chunk(&one), (32, 96));
    assert_eq!(wgmma_pack_bytes(&one), 6 * 128 * (128 + 96));
    // Three 128 x 128 hidden layers do not fit shared memory.
    let deep = MlpJetProblem { depth: 4, ..one };
    assert!(MlpJet::check_problem(&deep, &c)
        .unwrap_err()
        .0
        .contains("shared memory"));
    // Width 32 has no whole 128-byte K block; only one point per lane.
    let narrow = MlpJetProblem { width: 32, ..t[0] };
    assert!(MlpJet::check_problem(&narrow, &c)
        .unwrap_err()
        .0
        .contains("multiple of 64"));
    assert!(MlpJet::check_config(
        &MlpJetConfig {
            points_per_lane: 2,
            ..c
        },
        &limits()
    )
    .is_err());
    // 12 warps (three warpgroups, 168 registers a thread) measured slower and are not offered.
    assert!(MlpJet::check_config(&MlpJetConfig { warps: 12, ..c }, &limits()).is_err());
    // The rendered operand lists: 32 accumulators, then A in %32..%35 and the descriptor %36.
    let v = MlpJet::render_vars(&t[0], &c);
    assert_eq!(v["hid_a_operands"], "%32, %33, %34, %35");
    assert_eq!(v["hid_desc_operand"], "%36");
    assert_eq!(v["out_desc_operand"], "%8");
    assert_eq!(v["warpgroups"], 2);
}

#[test]
fn small_outputs_are_fused_on_the_tensor_core_paths() {
    let cfg = |math, q| MlpJetConfig {
        warps: 8,
        lane_rows: 8,
        points_per_lane: q,
        math,
        packed_weights: false,
    };
    let t = targets();
    // Every target net (p = 1) on every tensor-core path: d = 20 has 22 streams, 22 partials.
    for p in &t {
        for math in [Math::Tf32x3, Math::Split16, Math::Wgmma] {
            assert!(fused_output(p, &cfg(math, 1)), "{p:?} {math:?}");
        }
        assert!(!fused_output(p, &cfg(Math::Fma, 1)));
    }
    // d = 20 split16 (4 warps down, 8-point tiles): red holds 4 x 8 x 22 partials, no passes.
    let c = cfg(Math::Split16, 1);
    let sh = shape(&t[2], &c);
    assert_eq!((sh.row_warps, sh.tile, sh.passes), (4, 8, 0));
    assert_eq!(sh.red_floats, 4 * 8 * 22);
    // Partials = points x padded streams x p: 2 points of the d = 20 net, or p = 2, are past 24.
    assert!(!fused_output(&t[2], &cfg(Math::Split16, 2)));
    let two = MlpJetProblem { p: 2, ..t[2] };
    assert!(!fused_output(&two, &c) && shape(&two, &c).passes == 1);
    // 4 streams (d = 2) x p = 6 = 24 fuse; p = 7 does not.
    let six = MlpJetProblem { p: 6, ..t[1] };
    assert!(fused_output(&six, &c));
    assert!(!fused_output(&MlpJetProblem { p: 7, ..six }, &c));
    // Some branch problem of the compile-all set fuses with p > 1, and some does not fuse.
    let fused: Vec<bool> = MlpJet::branch_problems()
        .iter()
        .flat_map(|p| {
            MlpJet::candidates(p, &limits())
                .into_iter()
                .map(move |c| (p.p > 1, fused_output(p, &c)))
        })
        .filter(|&(many, _)| many)
        .map(|(_, f)| f)
        .collect();
    assert!(fused.contains(&true) && fused.contains(&false));
}

#[test]
fn wgmma_cols_serves_the_d20_target() {
    let c = MlpJetConfig {
        warps: 8,
        lane_rows: 8,
        points_per_lane: 2,
        math: Math::WgmmaCols,
        packed_weights: false,
    };
    let t = targets();
    // d = 20: 22 streams x 8 points = 176 columns; act 176 x 128 x 6 bytes, slabs of 128 rows x
    // 128 bytes, 5 of them beside act and the fused output's 8 warps x 8 points x 22 partials.
    assert!(MlpJet::check_problem(&t[2], &c).is_ok());
    assert_eq!(cols_n(&t[2], &c), 176);
    assert_eq!(cols_bytes(&t[2], &c), (135168, 16384));
    assert_eq!(cols_stages(&t[2], &c), 5);
    let sh = shape(&t[2], &c);
    assert_eq!((sh.row_warps, sh.rows, sh.tile, sh.passes), (8, 2, 8, 0));
    assert_eq!(sh.smem_bytes, 135168 + 5 * 16384 + 4 * 8 * 8 * 22);
    assert_eq!(tile_points(&t[2], &c), 8);
    // 1.5 words a hidden weight, packed by one thread per 16 bytes.
    assert_eq!(packed_floats(&t[2], &c), 3 * 128 * 128 * 3 / 2);
    assert_eq!(
        pack_geometry(&t[2], &c).grid[0],
        3 * 128 * 128 * 6 / 16 / 256
    );
    let g = MlpJet::geometry(&t[2], &c);
    assert_eq!((g.block[0], g.grid[0]), (256, 132));
    assert!(MlpJet::entry(&t[2], &c).ends_with("_wgmma_cols_w8_lr8_q2_pk"));
    // 4 points per lane: 352 columns, past wgmma's N; a warp per 16 neurons only.
    let q4 = MlpJetConfig {
        points_per_lane: 4,
        ..c
    };
    assert!(MlpJet::check_problem(&t[2], &q4)
        .unwrap_err()
        .0
        .contains("N of 256"));
    let w4 = MlpJetConfig { warps: 4, ..c };
    assert!(MlpJet::check_problem(&t[2], &w4).is_err());
    // The d = 1 target (width 64) on one warpgroup; p = 2 at d = 20 (44 partials) does not fuse.
    assert!(MlpJet::check_problem(&t[0], &w4).is_ok());
    let p2 = MlpJetProblem { p: 2, ..t[2] };
    assert!(MlpJet::check_problem(&p2, &c)
        .unwrap_err()
        .0
        .contains("fuses"));
}

#[test]
fn wgmma_duo_serves_the_d2_target_in_all_of_shared_memory() {
    let c = MlpJetConfig {
        warps: 8,
        lane_rows: 8,
        points_per_lane: 1,
        math: Math::WgmmaDuo,
        packed_weights: false,
    };
    let t = targets();
    // d = 2, width 128, depth 4: three 128 x 128 layers at 4 bytes a weight, the exchange
    // buffer (16 blocks x 2 neurons x 128 threads x 8 bytes), biases and layer 0: 227 KB.
    assert!(MlpJet::check_problem(&t[1], &c).is_ok());
    assert_eq!(duo_pack_bytes(&t[1]), 3 * 128 * 128 * 4);
    assert_eq!(duo_smem_bytes(&t[1]), 196608 + 32768 + 1536 + 1536);
    assert_eq!(duo_smem_bytes(&t[1]), limits().max_dynamic_smem_per_block);
    assert_eq!(packed_floats(&t[1], &c) * 4, duo_pack_bytes(&t[1]) as usize);
    assert!(packed_floats_max(&t[1]) >= packed_floats(&t[1], &c));
    assert_eq!(tile_points(&t[1], &c), 32);
    let g = MlpJet::geometry(&t[1], &c);
    assert_eq!(
        (g.block[0], g.dynamic_smem_bytes),
        (256, duo_smem_bytes(&t[1]))
    );
    assert_eq!(
        pack_geometry(&t[1], &c).grid[0],
        (duo_pack_bytes(&t[1]) / 16).div_ceil(256)
    );
    assert!(MlpJet::entry(&t[1], &c).ends_with("_wgmma_duo_w8_lr8_q1_pk"));
    // One more hidden layer, or d = 3, no longer fits; d = 20 carries 22 streams.
    let deep = MlpJetProblem { depth: 5, ..t[1] };
    assert!(MlpJet::check_problem(&deep, &c)
        .unwrap_err()
        .0
        .contains("shared memory"));
    let d3 = MlpJetProblem { d: 3, ..t[1] };
    assert!(MlpJet::check_problem(&d3, &c).is_err());
    assert!(MlpJet::check_problem(&t[2], &c)
        .unwrap_err()
        .0
        .contains("3 or 4 streams"));
    // The d = 1 target (width 64) fits too; p = 7 would not fuse.
    assert!(MlpJet::check_problem(&t[0], &c).is_ok());
    let p7 = MlpJetProblem { p: 7, ..t[0] };
    assert!(MlpJet::check_problem(&p7, &c).is_err());
    // Only 8 warps, one point per lane.
    assert!(MlpJet::check_config(&MlpJetConfig { warps: 4, ..c }, &limits()).is_err());
}
