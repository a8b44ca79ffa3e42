use super::*;
use std::collections::{BTreeSet, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

fn prob(m: u32, n: u32, k: u32) -> GemmFp8Problem {
    GemmFp8Problem { m, n, k }
}

fn stream(c: &GemmFp8Config) -> &StreamConfig {
    match c {
        GemmFp8Config::Stream(s) => s,
        other => panic!("not a stream config: {other:?}"),
    }
}

/// The stream kernel's legal configs.
fn legal() -> Vec<StreamConfig> {
    GemmFp8::legal_space(&limits())
        .iter()
        .filter_map(|c| match c {
            GemmFp8Config::Stream(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The wgmma kernel's legal configs.
fn legal_wgmma() -> Vec<WgmmaConfig> {
    GemmFp8::legal_space(&limits())
        .iter()
        .filter_map(|c| match c {
            GemmFp8Config::Wgmma(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// Step-3 linear layers the decode kernel serves: qkv, wq, o_proj.
const STEP3: [(u32, u32); 3] = [(2560, 7168), (16384, 2048), (7168, 16384)];

#[test]
fn space_is_small_and_covers_every_axis() {
    let l = legal();
    assert!(l.len() >= 40, "only {} legal configs", l.len());
    assert!(
        l.len() <= 64,
        "{} legal configs: too many to compile in CI",
        l.len()
    );
    for t in [1, 4] {
        for s in [1, 16] {
            assert!(
                l.iter().any(|c| c.tokens8 == t && c.split_k == s),
                "t {t} s {s}"
            );
        }
    }
    // 32 weight rows per CTA fit the registers with one token tile only.
    assert!(l.iter().any(|c| c.tokens8 == 1 && c.rows == 2));
    assert!(l.iter().all(|c| c.tokens8 == 1 || c.rows == 1));
    for u in [2, 4] {
        assert!(l.iter().any(|c| c.unroll == u));
    }
    for c in &l {
        assert!(c.register_estimate() <= 255, "{c:?}");
        assert!(c.reduce_batch() * c.split_k <= 32, "{c:?}");
        assert!(128 % c.tile_n() == 0, "{c:?}");
    }
}

#[test]
fn configs_say_which_kernel_they_are() {
    let c = GemmFp8Config::Stream(StreamConfig {
        warps: 4,
        rows: 1,
        unroll: 4,
        tokens8: 1,
        split_k: 8,
    });
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["kernel"], "stream");
    assert_eq!(serde_json::from_value::<GemmFp8Config>(v).unwrap(), c);
}

#[test]
fn entry_names_are_unique() {
    let l = GemmFp8::legal_space(&limits());
    let p = GemmFp8::branch_problems()[0];
    let names: HashSet<String> = l.iter().map(|c| GemmFp8::entry(&p, c)).collect();
    assert_eq!(names.len(), l.len());
    for c in &l {
        GemmFp8::check_problem(&p, c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

/// Names each kernel's template reads, plus the selector both see.
fn template_names(wgmma: bool) -> BTreeSet<String> {
    use crate::families::template_tags::template_names as names;
    const STREAM: &str = include_str!("../../../../templates/gemm_fp8.cu.tera");
    const WGMMA: &str = include_str!("../../../../templates/gemm_fp8_wgmma.cu.tera");
    const EPILOGUE: &str = include_str!("../../../../templates/wgmma_epilogue.cuh");
    assert_eq!(
        GemmFp8::TEMPLATE,
        format!("{{% if wgmma %}}{EPILOGUE}{WGMMA}{{% else %}}{STREAM}{{% endif %}}")
    );
    let mut used = names(if wgmma { WGMMA } else { STREAM });
    used.insert("wgmma".into());
    used
}

#[test]
fn render_vars_match_the_template() {
    assert!(template_names(false).contains("unroll"));
    assert!(template_names(true).contains("double_tmp"));
    let p = GemmFp8::branch_problems()[0];
    for c in GemmFp8::legal_space(&limits()) {
        let wgmma = matches!(c, GemmFp8Config::Wgmma(_));
        let vars = GemmFp8::render_vars(&p, &c);
        let keys: BTreeSet<String> = vars.keys().cloned().collect();
        assert_eq!(keys, template_names(wgmma), "{c:?}");
        assert_eq!(vars["entry"], json!(GemmFp8::entry(&p, &c)));
        assert_eq!(vars["wgmma"], json!(wgmma));
        // The source does not depend on the problem.
        assert_eq!(vars, GemmFp8::render_vars(&prob(1, 7168, 16384), &c));
    }
}

// is_multiple_of is newer than the workspace's rust-version.
#[allow(clippy::manual_is_multiple_of)]
#[test]
fn wgmma_space_is_modest_and_fits_registers_and_smem() {
    let l = legal_wgmma();
    assert!(
        (40..=550).contains(&l.len()),
        "{} legal wgmma configs",
        l.len()
    );
    // The narrow decode widths: 64-row, one-pass tiles.
    for bn in wgmma::NARROW_BNS {
        assert!(l.iter().any(|c| c.bn == bn && c.split_k == 1));
        assert!(l
            .iter()
            .filter(|c| c.bn == bn)
            .all(|c| c.bm == 64 && c.wn == bn && (!c.producer || c.tma)));
    }
    for bn in [64, 96, 128, 160] {
        assert!(l.iter().any(|c| c.bm == 128 && c.bn == bn));
    }
    assert!(l.iter().any(|c| c.double_tmp && c.bn == 96 && c.bm == 128));
    assert!(l
        .iter()
        .any(|c| !c.double_tmp && c.bn == 160 && c.bm == 128));
    // The producer schedule, including 256-wide tiles in two passes.
    assert!(l.iter().any(|c| c.producer && c.bn == 256 && c.wn == 128));
    assert!(l.iter().any(|c| c.producer && c.bn == 192 && c.wn == 96));
    // TMA producers: beside two consumers (one or two temporaries, no split-K) or one
    // consumer (decode batches, split-K).
    for c in l.iter().filter(|c| c.tma) {
        assert!(c.producer);
        assert_eq!(c.threads(), 2 * c.bm + 128);
        assert_eq!(c.setmaxnreg(), c.bm == 128);
        assert!(c.bm == 64 || c.split_k == 1);
    }
    assert!(l.iter().any(|c| c.tma && c.bm == 128 && c.double_tmp));
    // Multicast clusters: TMA tiles without split-K, W halves of whole swizzle atoms.
    for c in l.iter().filter(|c| c.cluster_m > 1) {
        assert!(c.tma && c.split_k == 1 && (c.bn / c.cluster_m * wgmma::BK) % 1024 == 0);
    }
    assert!(l
        .iter()
        .any(|c| c.cluster_m == 2 && c.bm == 128 && c.bn == 256));
    // Persistent grids: producer schedules without split-K, at most one CTA per SM.
    for c in l.iter().filter(|c| c.persistent) {
        assert!(c.producer && c.split_k == 1);
        let p = prob(4096, 7168, 18432);
        let g = wgmma::geometry(&p, c);
        assert!(
            g.grid[0] <= wgmma::PERSISTENT_CTAS && g.grid[0] % c.cluster_m == 0,
            "{c:?}"
        );
    }
    assert!(l.iter().any(|c| c.persistent && c.cluster_m == 2));
    assert!(l
        .iter()
        .any(|c| c.tma && c.bm == 64 && c.split_k == 8 && c.bn == 56));
    // The registers setmaxnreg hands out fit the register file.
    const { assert!(128 * wgmma::PRODUCER_REGISTERS + 256 * wgmma::CONSUMER_REGISTERS <= 65536) };
    assert!(l.iter().any(|c| c.bm == 64 && c.split_k == 8));
    // Clusters of K slices: split 64-row TMA tiles only, every split of the decode tiles.
    for c in l.iter().filter(|c| c.cluster_k) {
        assert!(c.tma && c.bm == 64 && c.split_k > 1 && c.cluster_m == 1 && !c.persistent);
    }
    for s in [2, 4, 8] {
        assert!(l
            .iter()
            .any(|c| c.cluster_k && c.split_k == s && c.bn == 80));
    }
    for c in &l {
        let budget = if c.producer {
            wgmma::PRODUCER_FRAGMENT_BUDGET
        } else {
            wgmma::FRAGMENT_BUDGET
        };
        assert!(c.fragment_registers() <= budget, "{c:?}");
        assert!(
            c.smem_bytes() <= limits().max_dynamic_smem_per_block,
            "{c:?}"
        );
        // Operand tiles are whole 1024-byte swizzle atoms.
        assert_eq!((c.bm * wgmma::BK) % 1024, 0);
        assert_eq!((c.bn * wgmma::BK) % 1024, 0);
    }
}

#[test]
fn wgmma_serves_every_m_and_the_default_switches_at_32() {
    let l = limits();
    for (n, k) in STEP3.iter().copied().chain([
        (36864, 7168),
        (7168, 18432),
        (10240, 7168),
        (7168, 5120),
        (2563, 128),
        (48, 1024),
    ]) {
        for m in [33, 64, 77, 128, 200, 256, 512, 4096] {
            let p = prob(m, n, k);
            GemmFp8::supports(&p).unwrap();
            let c = GemmFp8::default_config(&p);
            assert!(matches!(c, GemmFp8Config::Wgmma(_)), "{p:?} -> {c:?}");
            GemmFp8::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
            GemmFp8::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
            let cands = GemmFp8::candidates(&p, &l);
            assert!(cands.contains(&c), "{p:?}: default {c:?} not a candidate");
            assert!(cands.iter().all(|c| matches!(c, GemmFp8Config::Wgmma(_))));
        }
    }
    // Decode batches split K on the narrow qkv weight, the slices in one cluster; FFN batches
    // do not split.
    match GemmFp8::default_config(&prob(128, 2560, 7168)) {
        GemmFp8Config::Wgmma(w) => assert!(w.split_k > 1 && w.cluster_k, "{w:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        GemmFp8::default_config(&prob(4096, 7168, 18432)).split_k(),
        1
    );
    // Prefill-sized M: a TMA producer with 128 x 256 tiles (run 44's FFN winner); decode
    // batches: a TMA producer beside one consumer.
    match GemmFp8::default_config(&prob(512, 36864, 7168)) {
        GemmFp8Config::Wgmma(w) => assert!(w.tma && w.bn == 256 && w.wn == 128),
        other => panic!("{other:?}"),
    }
    match GemmFp8::default_config(&prob(128, 7168, 16384)) {
        GemmFp8Config::Wgmma(w) => assert!(w.tma && w.bm == 64),
        other => panic!("{other:?}"),
    }
    // Both kernels compete at M <= 32.
    let cands = GemmFp8::candidates(&prob(16, 7168, 16384), &l);
    assert!(cands.iter().any(|c| matches!(c, GemmFp8Config::Wgmma(_))));
    assert!(cands.iter().any(|c| matches!(c, GemmFp8Config::Stream(_))));
}

#[test]
fn wgmma_geometry_and_workspace() {
    let c = WgmmaConfig {
        bm: 64,
        bn: 128,
        wn: 128,
        stages: 6,
        split_k: 4,
        double_tmp: false,
        producer: false,
        tma: false,
        cluster_m: 1,
        persistent: false,
        cluster_k: false,
    };
    let p = prob(77, 2563, 1024);
    let g = wgmma::geometry(&p, &c);
    assert_eq!(g.grid, [2 * 21, 1, 4]);
    assert_eq!(g.block, [128, 1, 1]);
    assert_eq!(
        g.dynamic_smem_bytes,
        6 * (192 * 128 + 68 * 4) + 4 * 16 * 144 + 1024
    );
    let gc = GemmFp8Config::Wgmma(c.clone());
    assert_eq!(counters_len(&p, &gc), 42);
    assert_eq!(GemmFp8::workspace_bytes(&p, &gc), 4 * 42 * 64 * 128 * 4);
    // A cluster of K slices (TMA producer) needs no workspace: the partials stay on chip.
    let ck = GemmFp8Config::Wgmma(WgmmaConfig {
        producer: true,
        tma: true,
        cluster_k: true,
        ..c.clone()
    });
    assert!(GemmFp8::check_config(&ck, &limits()).is_ok());
    assert_eq!(counters_len(&p, &ck), 0);
    assert_eq!(GemmFp8::workspace_bytes(&p, &ck), 0);
    assert_eq!(
        wgmma::geometry(
            &p,
            match &ck {
                GemmFp8Config::Wgmma(w) => w,
                _ => unreachable!(),
            }
        )
        .grid,
        [2 * 21, 1, 4]
    );
    // ... and a split: one slice is no cluster.
    assert!(GemmFp8::check_config(
        &GemmFp8Config::Wgmma(WgmmaConfig {
            producer: true,
            tma: true,
            cluster_k: true,
            split_k: 1,
            ..c.clone()
        }),
        &limits()
    )
    .is_err());
    // 8 scale blocks cannot feed more than 8 splits; 4 blocks not 8.
    assert!(GemmFp8::check_problem(
        &prob(77, 2563, 512),
        &GemmFp8Config::Wgmma(WgmmaConfig {
            split_k: 8,
            ..c.clone()
        })
    )
    .is_err());
}

#[test]
fn a_cluster_split_compiles_its_cluster_shape_and_launches_matching_slices() {
    // The kernel carries its cluster shape (__cluster_dims__(1, 1, split)); the launch's grid.z
    // must be that same split, or the cluster barrier would pair the wrong CTAs.
    let p = prob(64, 2560, 7168);
    for c in legal_wgmma().into_iter().filter(|c| c.cluster_k) {
        let src = crate::render::render::<GemmFp8>(&p, &GemmFp8Config::Wgmma(c.clone()))
            .unwrap_or_else(|e| panic!("{c:?}: {e}"))
            .source;
        assert!(src.contains("#define KILN_CLUSTER_K 1"), "{c:?}");
        assert!(
            src.contains(&format!("#define KILN_SPLITS {}", c.split_k)),
            "{c:?}"
        );
        assert_eq!(wgmma::geometry(&p, &c).grid[2], c.split_k, "{c:?}");
        assert_eq!(wgmma::workspace_floats(&p, &c), 0, "{c:?}");
    }
}

#[test]
fn the_epilogue_staging_row_matches_the_shared_snippet() {
    let snippet = include_str!("../../../../templates/wgmma_epilogue.cuh");
    assert!(snippet.contains(&format!("constexpr int KILN_EPI_ROW = {};", wgmma::EPI_ROW)));
    // The snippet is rendered by tera with each wgmma template: it must hold no tag.
    for tag in ["{{", "{%", "{#"] {
        assert!(!snippet.contains(tag), "{tag}");
    }
}

#[test]
fn quant_source_names_its_entry() {
    assert!(QUANT_SOURCE.contains(&format!("\n{QUANT_ENTRY}(")));
    // The GPU's amax floor is the CPU encoder's.
    let floor: f32 = QUANT_SOURCE
        .lines()
        .find_map(|l| l.strip_prefix("#define KILN_AMAX_FLOOR "))
        .and_then(|v| v.trim().trim_end_matches('f').parse().ok())
        .expect("the quantiser defines KILN_AMAX_FLOOR");
    assert_eq!(floor, fp8::AMAX_FLOOR);
    let g = quant_geometry(3, 1024);
    assert_eq!(g.grid[0] * g.block[0] / 32, 24);
    assert_eq!(quant_geometry(1, 128).grid, [1, 1, 1]);
}

#[test]
fn supports_whole_scale_blocks_and_any_m() {
    assert!(GemmFp8::supports(&prob(1, 2560, 7168)).is_ok());
    assert!(GemmFp8::supports(&prob(32, 2563, 128)).is_ok());
    let e = GemmFp8::supports(&prob(1, 2560, 7100)).unwrap_err();
    assert!(e.reason.contains("multiple of 128"), "{e}");
    assert!(GemmFp8::supports(&prob(33, 2560, 7168)).is_ok());
    assert!(GemmFp8::supports(&prob(4096, 36864, 7168)).is_ok());
    assert!(GemmFp8::supports(&prob(0, 2560, 7168)).is_err());
    assert!(GemmFp8::supports(&prob(1 << 31, 2560, 7168)).is_err());
}

#[test]
fn default_config_is_legal_for_every_decode_m() {
    let l = limits();
    let mut shapes: Vec<(u32, u32)> = STEP3.to_vec();
    shapes.extend([
        (48, 7168),
        (2563, 7168),
        (48, 128),
        (200, 1024),
        (2563, 128),
        (1, 128),
    ]);
    for (n, k) in shapes {
        for m in 1..=MAX_M {
            let p = prob(m, n, k);
            GemmFp8::supports(&p).unwrap();
            let c = GemmFp8::default_config(&p);
            GemmFp8::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
            GemmFp8::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
            assert!(worth_measuring(&p, stream(&c)), "{p:?} -> {c:?}");
        }
    }
    // Small grids split K; the wide wq weight does not.
    assert!(GemmFp8::default_config(&prob(1, 2560, 7168)).split_k() > 1);
    assert!(GemmFp8::default_config(&prob(16, 48, 7168)).split_k() > 1);
    assert_eq!(GemmFp8::default_config(&prob(1, 16384, 2048)).split_k(), 1);
}

#[test]
fn workspace_counters_and_geometry() {
    let p = prob(3, 200, 1024);
    let c = GemmFp8Config::Stream(StreamConfig {
        warps: 4,
        rows: 2,
        unroll: 2,
        tokens8: 1,
        split_k: 8,
    });
    GemmFp8::check_config(&c, &limits()).unwrap();
    GemmFp8::check_problem(&p, &c).unwrap();
    assert_eq!(counters_len(&p, &c), 7);
    assert_eq!(GemmFp8::workspace_bytes(&p, &c), 8 * 7 * 32 * 8 * 4);
    let g = GemmFp8::geometry(&p, &c);
    assert_eq!(g.grid, [7, 1, 8]);
    assert_eq!(g.block, [128, 1, 1]);
    assert_eq!(g.dynamic_smem_bytes, 4 * 8 * 32 * 4);
    // 8 scale blocks cannot feed 16 splits.
    let deep = GemmFp8Config::Stream(StreamConfig {
        split_k: 16,
        ..stream(&c).clone()
    });
    assert!(GemmFp8::check_problem(&p, &deep).is_err());
    assert_eq!(blocks_per_split(&prob(1, 48, 7168), stream(&c)), 14);
    let one = GemmFp8Config::Stream(StreamConfig {
        split_k: 1,
        ..stream(&c).clone()
    });
    assert_eq!(
        (GemmFp8::workspace_bytes(&p, &one), counters_len(&p, &one)),
        (0, 0)
    );
}

#[test]
fn flops_and_bytes() {
    let p = prob(2, 256, 1024);
    assert_eq!(GemmFp8::flops(&p), 2.0 * 2.0 * 256.0 * 1024.0);
    let want = 256.0 * 1024.0 + 2.0 * 1024.0 + 4.0 * (2.0 * 8.0 + 2.0 * 8.0) + 2.0 * 2.0 * 256.0;
    assert_eq!(GemmFp8::min_bytes(&p), want);
}

#[test]
fn estimates_follow_the_weight_bytes() {
    let l = limits();
    let best = |p: &GemmFp8Problem| {
        GemmFp8::candidates(p, &l)
            .iter()
            .map(|c| GemmFp8::estimate_us(p, c, &l))
            .fold(f64::INFINITY, f64::min)
    };
    let (qkv, wq, o) = (
        prob(1, 2560, 7168),
        prob(1, 16384, 2048),
        prob(1, 7168, 16384),
    );
    assert!(best(&qkv) < best(&wq) && best(&wq) < best(&o));
    assert!(best(&o) > weight_bytes(&o) / 4.0e12 * 1e6);
}

#[test]
fn fragment_slots_cover_every_output_once() {
    // The template's fragment_slot, written again.
    for c in legal() {
        let mut seen = HashSet::new();
        for o in 0..c.outputs() {
            let (row, token) = (o % c.tile_n(), o / c.tile_n());
            let lane = (row & 7) * 4 + ((token & 7) >> 1);
            let j =
                ((row >> 4) * c.tokens8 + (token >> 3)) * 4 + ((row >> 3) & 1) * 2 + (token & 1);
            assert!(j < c.frag() && lane < 32);
            assert!(seen.insert(j * 32 + lane));
        }
        assert_eq!(seen.len() as u32, c.frag() * 32);
    }
}

#[test]
fn the_templates_register_assembly_computes_the_block_product() {
    // One 64-wide K block of 16 weight rows and 8 tokens, small integers (exact).
    let w: Vec<Vec<i64>> = (0..16)
        .map(|r| {
            (0..64)
                .map(|k| ((r * 37 + k * 11) % 13) as i64 - 6)
                .collect()
        })
        .collect();
    let x: Vec<Vec<i64>> = (0..8)
        .map(|n| {
            (0..64)
                .map(|k| ((n * 17 + k * 5) % 11) as i64 - 5)
                .collect()
        })
        .collect();
    // Lane (g, t) loads bytes 16t..16t+16 (a chunk) of weight rows g, g+8 and token row
    // g and widens it to h[0..8], h[p] = chunk elements 2p, 2p+1 (widen: h[2v] and
    // h[2v+1] are the low and high halves of word v, low byte first). mma_chunk: step s
    // (0..3) takes a = { hw(g)[2s], hw(g+8)[2s], hw(g)[2s+1], hw(g+8)[2s+1] } and
    // b = { hx(g)[2s], hx(g)[2s+1] }.
    let h = |row: &Vec<i64>, t: usize, p: usize| [row[16 * t + 2 * p], row[16 * t + 2 * p + 1]];
    let mut d = [[0i64; 4]; 32];
    for s in 0..4 {
        let mut a = [[[0i64; 2]; 4]; 32];
        let mut b = [[[0i64; 2]; 2]; 32];
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            a[lane] = [
                h(&w[g], t, 2 * s),
                h(&w[g + 8], t, 2 * s),
                h(&w[g], t, 2 * s + 1),
                h(&w[g + 8], t, 2 * s + 1),
            ];
            b[lane] = [h(&x[g], t, 2 * s), h(&x[g], t, 2 * s + 1)];
        }
        crate::families::mma_emulation::mma_m16n8k16(&a, &b, &mut d);
    }
    // c0, c1: weight row g, tokens 2t, 2t+1; c2, c3: row g+8.
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for i in 0..4 {
            let row = g + if i >= 2 { 8 } else { 0 };
            let token = 2 * t + (i & 1);
            let want: i64 = (0..64).map(|k| w[row][k] * x[token][k]).sum();
            assert_eq!(d[lane][i], want, "lane {lane} c{i}");
        }
    }
}

#[test]
fn widening_a_word_keeps_byte_order() {
    // widen(): h[2v] = cvt(word v & 0xffff) holds bytes 0, 1 (low byte in the low half),
    // h[2v+1] = cvt(word v >> 16) bytes 2, 3: chunk elements 4v .. 4v+3 in order, as
    // the permutation above assumes (little-endian words of a 16-byte load).
    let chunk: Vec<u8> = (0..16).collect();
    for v in 0..4 {
        let word = u32::from_le_bytes(chunk[4 * v..4 * v + 4].try_into().unwrap());
        let halves = [word & 0xffff, word >> 16];
        for (q, half) in halves.iter().enumerate() {
            let p = 2 * v + q;
            assert_eq!(
                [*half as u8, (*half >> 8) as u8],
                [chunk[2 * p], chunk[2 * p + 1]]
            );
        }
    }
}
