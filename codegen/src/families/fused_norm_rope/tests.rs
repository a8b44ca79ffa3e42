use super::*;
use std::collections::{BTreeSet, HashMap, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

fn template_names() -> BTreeSet<String> {
    crate::families::template_tags::template_names(FusedNormRope::TEMPLATE)
}

#[test]
fn space_and_variants() {
    let legal = FusedNormRope::legal_space(&limits());
    let norms = legal
        .iter()
        .filter(|c| matches!(c, FusedNormRopeConfig::RmsNorm { .. }))
        .count();
    assert_eq!(norms, 12);
    assert!(
        legal.len() - norms >= 6,
        "{} rope configs",
        legal.len() - norms
    );
    let f = crate::registry::family("fused_norm_rope").unwrap();
    let variants = f.variants(&limits());
    let entries: HashSet<_> = variants.iter().map(|v| v.entry.clone()).collect();
    assert_eq!(entries.len(), variants.len());
    // Every op config reaches every branch of its op: 4 rope branches, 1 norm branch (hidden
    // 2048 leaves 512 threads idle).
    assert!(variants.len() >= 9 + 4 * 6, "{} variants", variants.len());
    assert!(variants.len() <= 64);
}

#[test]
fn entries_name_exactly_what_the_source_depends_on() {
    let mut by_entry: HashMap<String, RenderVars> = HashMap::new();
    for c in FusedNormRope::legal_space(&limits()) {
        for p in FusedNormRope::branch_problems() {
            if FusedNormRope::check_problem(&p, &c).is_err() {
                continue;
            }
            let e = FusedNormRope::entry(&p, &c);
            let v = FusedNormRope::render_vars(&p, &c);
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
}

#[test]
fn render_vars_match_the_template() {
    let used = template_names();
    for c in FusedNormRope::legal_space(&limits()) {
        for p in FusedNormRope::branch_problems() {
            if FusedNormRope::check_problem(&p, &c).is_err() {
                continue;
            }
            let vars = FusedNormRope::render_vars(&p, &c);
            let keys: BTreeSet<String> = vars.keys().cloned().collect();
            assert_eq!(keys, used, "render vars vs template names");
        }
    }
}

#[cfg(feature = "jit")]
#[test]
fn every_variant_renders() {
    for c in FusedNormRope::legal_space(&limits()) {
        for p in FusedNormRope::branch_problems() {
            if FusedNormRope::check_problem(&p, &c).is_ok() {
                let src = crate::render::render::<FusedNormRope>(&p, &c).unwrap();
                assert!(src
                    .source
                    .contains(&format!("{}(", FusedNormRope::entry(&p, &c))));
            }
        }
    }
}

#[test]
fn args_match_both_template_signatures() {
    let names = crate::families::template_tags::signatures(FusedNormRope::TEMPLATE, "{{ entry }}(");
    let want: Vec<&str> = FusedNormRope::args().iter().map(|a| a.name).collect();
    assert_eq!(names, vec![want.clone(), want]);
    assert!(FusedNormRope::scratch(
        &FusedNormRopeProblem::step3_norm(1),
        &FusedNormRope::default_config(&FusedNormRopeProblem::step3_norm(1))
    )
    .is_empty());
}

#[test]
fn default_config_is_legal() {
    let l = limits();
    let mut problems = Vec::new();
    for batch in [1u32, 3, 64, 128, 300, 5000] {
        for hidden in [8u32, 64, 1024, 2048, 4096, 7168, 16384, 32768] {
            problems.push(FusedNormRopeProblem::RmsNorm { batch, hidden });
        }
        for kv in [KvDtype::Bf16, KvDtype::Fp8e4m3] {
            for page in [0u32, 1, 16] {
                problems.push(FusedNormRopeProblem::step3_rope(batch, kv, page));
            }
        }
    }
    for p in problems {
        FusedNormRope::supports(&p).unwrap();
        let c = FusedNormRope::default_config(&p);
        FusedNormRope::check_config(&c, &l).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
        FusedNormRope::check_problem(&p, &c).unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
        let g = FusedNormRope::geometry(&p, &c);
        assert!(g.grid.iter().all(|&d| d >= 1));
        assert!(FusedNormRope::estimate_us(&p, &c, &l).is_finite());
    }
    assert!(FusedNormRope::supports(&FusedNormRopeProblem::RmsNorm {
        batch: 1,
        hidden: 12
    })
    .is_err());
    let mut bad = FusedNormRopeProblem::step3_rope(1, KvDtype::Bf16, 0);
    if let FusedNormRopeProblem::RopeAppend { head_dim, .. } = &mut bad {
        *head_dim = 128;
    }
    assert!(FusedNormRope::supports(&bad).is_err());
    // A config of the other op never serves a problem.
    let norm_cfg = FusedNormRope::default_config(&FusedNormRopeProblem::step3_norm(8));
    assert!(FusedNormRope::check_problem(
        &FusedNormRopeProblem::step3_rope(8, KvDtype::Bf16, 0),
        &norm_cfg
    )
    .is_err());
}

#[test]
fn problems_serialise_with_the_op_tag() {
    let p = FusedNormRopeProblem::step3_rope(8, KvDtype::Fp8e4m3, 16);
    let v = serde_json::to_value(p).unwrap();
    assert_eq!(v["op"], "rope_append");
    assert_eq!(v["kv_dtype"], "fp8e4m3");
    let back: FusedNormRopeProblem = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
    let n: FusedNormRopeProblem =
        serde_json::from_str(r#"{"op":"rms_norm","batch":4,"hidden":2048}"#).unwrap();
    assert_eq!(n, FusedNormRopeProblem::step3_norm(4));
    assert_eq!(
        FusedNormRope::bucket_distance(&FusedNormRopeProblem::step3_norm(8), &n).unwrap(),
        2f64.ln()
    );
    assert_eq!(FusedNormRope::bucket_distance(&p, &n), None);
}

#[test]
fn references() {
    // RoPE at position 0 is the identity; any rotation keeps each pair's norm.
    let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
    let r0 = reference_rope(&x, 0);
    for (a, b) in r0.iter().zip(&x) {
        assert!((a - *b as f64).abs() < 1e-15);
    }
    let r = reference_rope(&x, 12345);
    for i in 0..128 {
        let before = (x[i] as f64).hypot(x[i + 128] as f64);
        let after = r[i].hypot(r[i + 128]);
        assert!((before - after).abs() < 1e-12);
    }
    // Frequency 0 (i = 0) rotates by the position itself.
    let mut e = vec![0.0f32; 256];
    e[0] = 1.0;
    let r = reference_rope(&e, 1);
    assert!((r[0] - 1f64.cos()).abs() < 1e-15 && (r[128] - 1f64.sin()).abs() < 1e-15);
    // RMSNorm of a constant row is the weight (up to eps).
    let y = reference_rms_norm(&[3.0; 16], &[0.5; 16]);
    for v in y {
        assert!((v - 0.5 / (1.0 + RMS_EPS / 9.0).sqrt()).abs() < 1e-12);
    }
}
