use super::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

fn prob(m: u32, n: u32, k: u32) -> GemmBf16Problem {
    GemmBf16Problem { m, n, k }
}

fn tiled(c: &GemmBf16Config) -> &TiledConfig {
    match c {
        GemmBf16Config::Tiled(t) => t,
        other => panic!("expected a tiled config, got {other:?}"),
    }
}

fn legal_tiled() -> Vec<TiledConfig> {
    GemmBf16::legal_space(&limits())
        .iter()
        .filter_map(|c| match c {
            GemmBf16Config::Tiled(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn legal_stream() -> Vec<StreamConfig> {
    GemmBf16::legal_space(&limits())
        .iter()
        .filter_map(|c| match c {
            GemmBf16Config::Stream(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Names each kernel's template reads (`{{ name }}` and `{% if name %}`), by kernel, and
/// "common": the selectors of the family's text, which is the four files joined by
/// `{% if ring %}`, `{% elif stream %}`, `{% elif wgmma %}` and `{% else %}`.
fn template_names() -> BTreeMap<&'static str, BTreeSet<String>> {
    use crate::families::template_tags::template_names as names;
    const TILED: &str = include_str!("../../../../templates/gemm_bf16.cu.tera");
    const STREAM: &str = include_str!("../../../../templates/gemm_bf16_stream.cu.tera");
    const RING: &str = include_str!("../../../../templates/gemm_bf16_ring.cu.tera");
    const WGMMA: &str = include_str!("../../../../templates/gemm_bf16_wgmma.cu.tera");
    const EPILOGUE: &str = include_str!("../../../../templates/wgmma_epilogue.cuh");
    assert_eq!(
        GemmBf16::TEMPLATE,
        format!(
            "{{% if ring %}}{RING}{{% elif stream %}}{STREAM}{{% elif wgmma %}}{EPILOGUE}{WGMMA}\
             {{% else %}}{TILED}{{% endif %}}"
        )
    );
    let mut out = BTreeMap::new();
    out.insert("tiled", names(TILED));
    out.insert("stream", names(STREAM));
    out.insert("ring", names(RING));
    out.insert("wgmma", names(WGMMA));
    out.insert(
        "common",
        ["ring", "stream", "wgmma"].map(String::from).into(),
    );
    out
}

#[test]
fn legal_space_is_large_enough_and_small_enough() {
    let tiled = legal_tiled();
    assert!(
        tiled.len() >= 20,
        "only {} legal tiled configs",
        tiled.len()
    );
    assert!(
        tiled.len() <= 150,
        "{} legal tiled configs: too many to compile in CI",
        tiled.len()
    );
    assert!(tiled.iter().any(|c| c.split_k == 16));
    assert!(tiled.iter().any(|c| c.bm == 16));
    assert!(tiled.iter().any(|c| c.bm == 256));
    let stream = legal_stream();
    assert!(
        stream.len() >= 100,
        "only {} legal stream configs",
        stream.len()
    );
    assert!(
        stream.len() <= 250,
        "{} legal stream configs: too many to compile in CI",
        stream.len()
    );
    for t in [1, 2, 4] {
        assert!(stream.iter().any(|c| c.tokens8 == t));
    }
    let ring = GemmBf16::legal_space(&limits())
        .into_iter()
        .filter(|c| matches!(c, GemmBf16Config::Ring(_)))
        .count();
    assert!((24..=120).contains(&ring), "{ring} legal ring configs");
    let wgmma = GemmBf16::legal_space(&limits())
        .into_iter()
        .filter(|c| matches!(c, GemmBf16Config::Wgmma(_)))
        .count();
    assert!((60..=150).contains(&wgmma), "{wgmma} legal wgmma configs");
    assert_eq!(
        GemmBf16::legal_space(&limits()).len(),
        tiled.len() + stream.len() + ring + wgmma
    );
}

#[test]
fn configs_say_which_kernel_they_are() {
    let t: GemmBf16Config = serde_json::from_value(json!({"kernel": "tiled", "bm": 16,
        "bn": 128, "bk": 64, "warps_m": 1, "warps_n": 2, "stages": 4, "split_k": 4}))
    .unwrap();
    assert_eq!(tiled(&t).bn, 128);
    let s = GemmBf16Config::Stream(StreamConfig {
        warps: 4,
        rows: 1,
        unroll: 4,
        tokens8: 1,
        split_k: 8,
        depth: 1,
        cluster: false,
    });
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["kernel"], "stream");
    assert_eq!(v["unroll"], 4);
    assert_eq!(serde_json::from_value::<GemmBf16Config>(v).unwrap(), s);
    // Untagged (pre-stream) configs no longer parse: dispatch falls back to the default.
    assert!(
        serde_json::from_value::<GemmBf16Config>(json!({"bm": 16, "bn": 128, "bk": 64,
        "warps_m": 1, "warps_n": 2, "stages": 4, "split_k": 4}))
        .is_err()
    );
}

#[test]
fn legal_configs_have_sane_geometry() {
    let l = limits();
    for c in GemmBf16::legal_space(&l) {
        for p in [prob(1, 1, 1), prob(4096, 4096, 4096), prob(7, 75, 77)] {
            let g = GemmBf16::geometry(&p, &c);
            assert_eq!(g.block, [c.threads(), 1, 1]);
            assert!(g.threads_per_block() <= l.max_threads_per_block);
            assert!(g.dynamic_smem_bytes <= l.max_dynamic_smem_per_block);
            assert_eq!(g.grid[2], c.split_k());
            assert_eq!(g.cluster, [1, 1, 1]);
            match &c {
                GemmBf16Config::Tiled(c) => {
                    assert!(
                        g.dynamic_smem_bytes >= 4,
                        "split-K flag lives in shared memory"
                    );
                    assert_eq!(g.grid[0] as u64, tiles(&p, c));
                    // Loader mapping the template asserts.
                    assert_eq!((c.threads() / (c.bk / 8)) * (c.bk / 8), c.threads());
                    assert_eq!((c.threads() / 8) % 8, 0);
                    assert_eq!((c.warp_tile_n() / 8) % 2, 0);
                }
                GemmBf16Config::Stream(c) => {
                    assert_eq!(g.grid[0] as u64, p.n.div_ceil(16 * c.rows) as u64);
                    assert_eq!(g.dynamic_smem_bytes, c.warps * c.frag() * 128);
                }
                GemmBf16Config::Wgmma(c) => {
                    assert_eq!(g.grid[0] as u64, wgmma::tiles(&p, c));
                    assert_eq!(g.dynamic_smem_bytes, c.smem_bytes());
                    assert_eq!(c.threads(), 2 * c.bm);
                }
                GemmBf16Config::Ring(c) => {
                    // Persistent: never more CTAs than stages, nor than the config's count.
                    assert!(g.grid[0] >= 1 && g.grid[0] <= c.ctas);
                    assert!(g.grid[0] as u64 <= ring::total_stages(&p, c));
                    assert_eq!(g.dynamic_smem_bytes, c.smem_bytes());
                }
            }
        }
    }
}

#[test]
fn default_config_is_legal_for_many_problems() {
    let l = limits();
    let dims = [
        1u32, 2, 7, 8, 15, 16, 17, 31, 48, 64, 65, 127, 128, 129, 255, 256, 1000, 2048, 7168,
        36864, 128815,
    ];
    let ks = [
        1u32, 7, 8, 9, 63, 64, 77, 1024, 2048, 7167, 7168, 16384, 18432,
    ];
    for &m in &dims {
        for &n in &dims {
            for &k in &ks {
                let p = prob(m, n, k);
                if GemmBf16::supports(&p).is_err() {
                    continue;
                }
                let c = GemmBf16::default_config(&p);
                GemmBf16::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                GemmBf16::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                // Decode streams the weight.
                assert_eq!(
                    matches!(c, GemmBf16Config::Stream(_)),
                    m <= stream::MAX_M,
                    "{p:?} -> {c:?}"
                );
            }
        }
    }
    assert_eq!(GemmBf16::default_config(&prob(1, 48, 7)).split_k(), 1);
    // Decode router shape: three row tiles, so split K.
    assert!(GemmBf16::default_config(&prob(16, 48, 7168)).split_k() > 1);
    // Large aligned problems take the wgmma kernel's 128 x 256 tile; unaligned ones the tiled
    // kernel's 128 x 128.
    assert!(matches!(
        GemmBf16::default_config(&prob(2048, 36864, 7168)),
        GemmBf16Config::Wgmma(WgmmaConfig {
            bm: 128,
            bn: 256,
            ..
        })
    ));
    assert_eq!(
        tiled(&GemmBf16::default_config(&prob(2048, 36864, 7167))).bm,
        128
    );
}

#[test]
fn default_config_is_legal_for_every_m_up_to_300() {
    let l = limits();
    for (n, k) in [
        (48, 7168),
        (2560, 7168),
        (16384, 2048),
        (7168, 16384),
        (128815, 7168),
        (75, 7),
        (4096, 7167),
        (1, 1),
    ] {
        for m in 1..=300 {
            let p = prob(m, n, k);
            let c = GemmBf16::default_config(&p);
            GemmBf16::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
            GemmBf16::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
        }
    }
}

#[test]
fn extreme_supported_problems_have_a_default() {
    for p in [
        prob(1 << 30, 64, 64),
        prob(64, 1 << 30, 64),
        prob(1, 1 << 30, 64),
        prob(1, 1, 1 << 30),
        prob(32, 1, 1 << 30),
        prob(1 << 18, 1 << 18, 1),
    ] {
        GemmBf16::supports(&p).unwrap();
        let c = GemmBf16::default_config(&p);
        GemmBf16::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    }
    assert!(GemmBf16::supports(&prob(0, 1, 1)).is_err());
    assert!(GemmBf16::supports(&prob((1 << 30) + 1, 1, 1)).is_err());
    assert!(GemmBf16::supports(&prob(1 << 20, 1 << 20, 1)).is_err());
}

#[test]
fn entry_names_are_unique() {
    let mut seen = HashSet::new();
    let legal = GemmBf16::legal_space(&limits());
    let mut built = 0;
    for c in &legal {
        for p in GemmBf16::branch_problems() {
            if GemmBf16::check_problem(&p, c).is_err() {
                continue;
            }
            built += 1;
            assert!(
                seen.insert(GemmBf16::entry(&p, c)),
                "duplicate entry for {c:?}"
            );
        }
    }
    assert_eq!(seen.len(), built);
}

#[test]
fn branch_problems_cover_every_branch_of_every_config() {
    let aligned: HashSet<bool> = GemmBf16::branch_problems().iter().map(is_aligned).collect();
    assert_eq!(aligned.len(), 2);
    for p in GemmBf16::branch_problems() {
        GemmBf16::supports(&p).unwrap();
        // Every legal config (every kernel, split and token count) can be built for both
        // branches; the ring and wgmma kernels have only the aligned one.
        for c in GemmBf16::legal_space(&limits()) {
            let aligned_only = matches!(c, GemmBf16Config::Ring(_) | GemmBf16Config::Wgmma(_));
            if aligned_only && !is_aligned(&p) {
                assert!(GemmBf16::check_problem(&p, &c).is_err());
                continue;
            }
            GemmBf16::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} {c:?}: {e}"));
        }
    }
    let stream = legal_stream();
    let split: HashSet<bool> = stream.iter().map(|c| c.split_k > 1).collect();
    assert_eq!(split.len(), 2);
}

#[test]
fn render_vars_match_the_template() {
    let names = template_names();
    assert!(names["stream"].contains("rows") && names["tiled"].contains("stages"));
    let legal = GemmBf16::legal_space(&limits());
    let first_tiled = legal.iter().find(|c| matches!(c, GemmBf16Config::Tiled(_)));
    let first_stream = legal
        .iter()
        .find(|c| matches!(c, GemmBf16Config::Stream(_)));
    let first_ring = legal.iter().find(|c| matches!(c, GemmBf16Config::Ring(_)));
    let first_wgmma = legal.iter().find(|c| matches!(c, GemmBf16Config::Wgmma(_)));
    for (kernel, c) in [
        ("tiled", first_tiled),
        ("stream", first_stream),
        ("ring", first_ring),
        ("wgmma", first_wgmma),
    ] {
        let c = c.expect("every kernel has legal configs");
        let used: BTreeSet<String> = names["common"].union(&names[kernel]).cloned().collect();
        for p in GemmBf16::branch_problems() {
            if GemmBf16::check_problem(&p, c).is_err() {
                continue; // ring, wgmma: aligned K only
            }
            let vars = GemmBf16::render_vars(&p, c);
            let keys: BTreeSet<String> = vars.keys().cloned().collect();
            let missing: Vec<_> = used.difference(&keys).collect();
            let unused: Vec<_> = keys.difference(&used).collect();
            assert!(
                missing.is_empty(),
                "{kernel}: template uses {missing:?}, render_vars lacks them"
            );
            assert!(
                unused.is_empty(),
                "{kernel}: render_vars has {unused:?}, the template never reads them"
            );
            assert_eq!(vars["entry"], json!(GemmBf16::entry(&p, c)));
            assert_eq!(vars["stream"], json!(kernel == "stream"));
            assert_eq!(vars["ring"], json!(kernel == "ring"));
            assert_eq!(vars["wgmma"], json!(kernel == "wgmma"));
        }
    }
}

#[test]
fn source_depends_on_the_problem_only_through_alignment() {
    // The kernels with both branches: tiled (the default of unaligned large problems) and
    // stream. The ring and wgmma kernels serve aligned K only.
    for c in [
        GemmBf16::default_config(&prob(4096, 4096, 4095)),
        GemmBf16::default_config(&prob(1, 4096, 4096)),
    ] {
        assert_eq!(
            GemmBf16::render_vars(&prob(4096, 4096, 4096), &c),
            GemmBf16::render_vars(&prob(3, 5, 8), &c)
        );
        assert_ne!(
            GemmBf16::render_vars(&prob(4096, 4096, 4096), &c),
            GemmBf16::render_vars(&prob(3, 5, 7), &c)
        );
    }
}

#[test]
fn reference_names_its_entry() {
    assert!(REFERENCE_SOURCE.contains(&format!("void {REFERENCE_ENTRY}(")));
    let g = reference_geometry(3, 100);
    assert_eq!(g.grid[0] * g.block[0], 512);
    assert_eq!(reference_geometry(1, 1).grid, [1, 1, 1]);
}

#[test]
fn cpu_reference_multiplies_by_b_transposed() {
    // A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8], [1, 0]] (n = 3): C = A B^T.
    let c = reference_cpu(
        &[1.0, 2.0, 3.0, 4.0],
        &[5.0, 6.0, 7.0, 8.0, 1.0, 0.0],
        2,
        3,
        2,
    );
    assert_eq!(c, vec![17.0, 23.0, 1.0, 39.0, 53.0, 3.0]);
}

fn small_tile(split_k: u32) -> TiledConfig {
    TiledConfig {
        bm: 16,
        bn: 128,
        bk: 64,
        warps_m: 1,
        warps_n: 2,
        stages: 4,
        split_k,
    }
}

#[test]
fn workspace_and_counters() {
    let p = prob(16, 48, 7168);
    let c = GemmBf16Config::Tiled(small_tile(8));
    assert!(GemmBf16::check_config(&c, &limits()).is_ok());
    assert_eq!(GemmBf16::workspace_bytes(&p, &c), 8 * 16 * 128 * 4);
    assert_eq!(counters_len(&p, &c), 1);
    let one = GemmBf16Config::Tiled(small_tile(1));
    assert_eq!(GemmBf16::workspace_bytes(&p, &one), 0);
    assert_eq!(counters_len(&p, &one), 0);
    // Splits deeper than K allows, and absurd workspaces, are rejected.
    assert!(GemmBf16::check_problem(&prob(16, 48, 64 * 7), &c).is_err());
    let big = GemmBf16Config::Tiled(TiledConfig {
        bm: 64,
        bn: 128,
        bk: 64,
        warps_m: 1,
        warps_n: 4,
        stages: 4,
        split_k: 16,
    });
    assert!(GemmBf16::check_problem(&prob(8192, 8192, 8192), &big).is_err());
    // Stream: one counter per 16 * rows weight rows, partials of 8 * tokens8 tokens.
    let s = GemmBf16Config::Stream(StreamConfig {
        warps: 4,
        rows: 2,
        unroll: 4,
        tokens8: 2,
        split_k: 4,
        depth: 1,
        cluster: false,
    });
    assert!(GemmBf16::check_config(&s, &limits()).is_ok());
    assert_eq!(counters_len(&p, &s), 2);
    assert_eq!(GemmBf16::workspace_bytes(&p, &s), 4 * 2 * 32 * 16 * 4);
    // The same split reduced in a cluster: no workspace, no counters, depth 2 only.
    let GemmBf16Config::Stream(sc) = &s else {
        unreachable!()
    };
    let cl = GemmBf16Config::Stream(StreamConfig {
        cluster: true,
        depth: 2,
        unroll: 2,
        ..sc.clone()
    });
    assert!(GemmBf16::check_config(&cl, &limits()).is_ok());
    assert_eq!(counters_len(&p, &cl), 0);
    assert_eq!(GemmBf16::workspace_bytes(&p, &cl), 0);
    let cl1 = GemmBf16Config::Stream(StreamConfig {
        cluster: true,
        ..sc.clone()
    });
    assert!(GemmBf16::check_config(&cl1, &limits()).is_err());
    let scratch = GemmBf16::scratch(&p, &s);
    assert_eq!(scratch[1].bytes, 2 * 4);
    assert!(GemmBf16::check_problem(&prob(17, 48, 7168), &s).is_err());
}

#[test]
fn estimate_ranks_obvious_cases() {
    let l = limits();
    let big = prob(4096, 4096, 4096);
    let large_tile = GemmBf16Config::Tiled(TiledConfig {
        bm: 128,
        bn: 128,
        bk: 32,
        warps_m: 2,
        warps_n: 2,
        stages: 4,
        split_k: 1,
    });
    let small = GemmBf16Config::Tiled(small_tile(1));
    let (a, b) = (
        GemmBf16::estimate_us(&big, &large_tile, &l),
        GemmBf16::estimate_us(&big, &small, &l),
    );
    assert!(a.is_finite() && a > 0.0 && a < b, "{a} vs {b}");
    let decode = prob(16, 48, 7168);
    let split = GemmBf16Config::Tiled(small_tile(8));
    assert!(
        GemmBf16::estimate_us(&decode, &split, &l) < GemmBf16::estimate_us(&decode, &small, &l)
    );
    for c in GemmBf16::legal_space(&l) {
        for p in [
            prob(1, 1, 7168),
            prob(1, 7, 7),
            prob(2048, 36864, 7168),
            prob(256, 128815, 7168),
            prob(32, 128815, 7167),
        ] {
            let t = GemmBf16::estimate_us(&p, &c, &l);
            assert!(t.is_finite() && t > 0.0, "{c:?} on {p:?}: {t}");
        }
    }
}

/// The tuner measures the 24 best estimates: for decode shapes those must be mostly
/// stream configs with the smallest token tile, led by one.
#[test]
fn decode_shortlists_are_led_by_a_streaming_kernel() {
    let l = limits();
    for (n, k) in [
        (2560, 7168),
        (16384, 2048),
        (7168, 16384),
        (48, 7168),
        (128815, 7168),
    ] {
        for m in [1, 8, 16, 32] {
            let p = prob(m, n, k);
            let mut ranked: Vec<(f64, GemmBf16Config)> = GemmBf16::candidates(&p, &l)
                .into_iter()
                .map(|c| (GemmBf16::estimate_us(&p, &c, &l), c))
                .collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
            let top = &ranked[..24];
            // Token tiles of the weight-streaming configs (stream and ring kernels).
            let streams: Vec<u32> = top
                .iter()
                .filter_map(|(_, c)| match c {
                    GemmBf16Config::Stream(s) => Some(s.tokens8),
                    GemmBf16Config::Ring(b) => Some(b.tokens8),
                    _ => None,
                })
                .collect();
            assert!(
                !matches!(top[0].1, GemmBf16Config::Tiled(_)),
                "{p:?}: best estimate {:?} at {:.1} us",
                top[0].1,
                top[0].0
            );
            assert!(
                streams.len() >= 8,
                "{p:?}: {} streaming configs shortlisted",
                streams.len()
            );
            let tightest = m.div_ceil(8).next_power_of_two();
            assert!(
                streams.iter().all(|&t| t == tightest),
                "{p:?}: a wider token tile than {tightest} was shortlisted"
            );
        }
    }
}

#[test]
fn stream_estimates_follow_the_weight_bytes() {
    let l = limits();
    // Best stream estimate for large decode shapes: within 25% of weight bytes at 4 TB/s
    // plus launch.
    for (n, k) in [(2560, 7168), (16384, 2048), (7168, 16384), (128815, 7168)] {
        let p = prob(1, n, k);
        let best = legal_stream()
            .into_iter()
            .filter(|c| stream::check_problem(&p, c).is_ok())
            .map(|c| stream::estimate_us(&p, &c, &l))
            .fold(f64::INFINITY, f64::min);
        let ideal = n as f64 * k as f64 * 2.0 / 4.0e12 * 1e6 + 2.0;
        assert!(
            best >= ideal * 0.99 && best <= ideal * 1.25,
            "{p:?}: {best} vs {ideal}"
        );
    }
}

#[test]
fn flops_and_bytes() {
    let p = prob(2, 3, 4);
    assert_eq!(GemmBf16::flops(&p), 48.0);
    assert_eq!(GemmBf16::min_bytes(&p), 2.0 * (8.0 + 12.0 + 6.0));
}
