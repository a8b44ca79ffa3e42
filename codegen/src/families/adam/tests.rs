use super::*;
use std::collections::{BTreeSet, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

/// The kernel's arithmetic on the CPU in fp32 (same scalars, same operation order).
#[allow(clippy::needless_range_loop)] // four arrays in lockstep
fn kernel_step_f32(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamScalars,
    mode: WeightDecay,
) {
    for i in 0..p.len() {
        let mut gi = g[i];
        if mode == WeightDecay::L2 {
            gi = s.weight_decay.mul_add(p[i], gi);
        }
        if mode == WeightDecay::Decoupled {
            p[i] *= s.decay;
        }
        m[i] = s.beta1.mul_add(m[i], (1.0 - s.beta1) * gi);
        v[i] = s.beta2.mul_add(v[i], (1.0 - s.beta2) * (gi * gi));
        let denom = v[i].sqrt().mul_add(s.rsqrt_bc2, s.eps);
        p[i] -= s.step_size * (m[i] / denom);
    }
}

fn rel(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |a, (&g, &w)| a.max((g as f64 - w).abs()));
    err / scale.max(1e-300)
}

#[test]
fn space_and_variants() {
    let legal = Adam::legal_space(&limits());
    // 3 thread counts x (vec, unroll) with vec * unroll <= 8: 8 of 9 pairs.
    assert_eq!(legal.len(), 24);
    let f = crate::registry::family("adam").unwrap();
    let variants = f.variants(&limits());
    let entries: HashSet<_> = variants.iter().map(|v| v.entry.clone()).collect();
    assert_eq!(entries.len(), variants.len());
    assert_eq!(variants.len(), 72);
}

#[test]
fn render_vars_match_the_template_and_entries_name_the_source() {
    let used = crate::families::template_tags::template_names(Adam::TEMPLATE);
    let mut seen = std::collections::HashMap::new();
    for c in Adam::legal_space(&limits()) {
        for p in Adam::branch_problems() {
            let vars = Adam::render_vars(&p, &c);
            let keys: BTreeSet<String> = vars.keys().cloned().collect();
            assert_eq!(keys, used);
            let e = Adam::entry(&p, &c);
            assert!(seen
                .insert(e, serde_json::to_string(&vars).unwrap())
                .is_none());
        }
    }
    // The length never reaches the source.
    let c = Adam::default_config(&AdamProblem::fp32(10, WeightDecay::None));
    assert_eq!(
        Adam::render_vars(&AdamProblem::fp32(10, WeightDecay::L2), &c),
        Adam::render_vars(&AdamProblem::fp32(12345, WeightDecay::L2), &c)
    );
}

#[cfg(feature = "jit")]
#[test]
fn every_variant_renders() {
    for c in Adam::legal_space(&limits()) {
        for p in Adam::branch_problems() {
            let src = crate::render::render::<Adam>(&p, &c).unwrap();
            assert!(src.source.contains(&format!("{}(", Adam::entry(&p, &c))));
        }
    }
}

#[test]
fn args_match_the_template_signature() {
    let names = crate::families::template_tags::signatures(Adam::TEMPLATE, "{{ entry }}(");
    let want: Vec<&str> = Adam::args().iter().map(|a| a.name).collect();
    assert_eq!(names, vec![want]);
}

#[test]
fn default_config_and_geometry() {
    let l = limits();
    for n in [1u64, 3, 4, 1000, 1 << 20, 100_000_007, MAX_PARAMS] {
        for wd in [WeightDecay::None, WeightDecay::L2, WeightDecay::Decoupled] {
            let p = AdamProblem::fp32(n, wd);
            Adam::supports(&p).unwrap();
            let c = Adam::default_config(&p);
            Adam::check_config(&c, &l).unwrap();
            let g = Adam::geometry(&p, &c);
            assert!(g.grid[0] >= 1 && g.grid[0] <= 132 * 16);
            // One grid-stride step covers small arenas whole.
            if n <= 1 << 20 {
                assert!(g.grid[0] as u64 * c.floats_per_cta_step() >= n);
            }
            assert!(Adam::estimate_us(&p, &c, &l).is_finite());
        }
    }
    assert!(Adam::supports(&AdamProblem::fp32(0, WeightDecay::None)).is_err());
    assert!(Adam::check_config(
        &AdamConfig {
            threads: 256,
            vec_width: 3,
            vecs_per_thread: 1
        },
        &l
    )
    .is_err());
    let p: AdamProblem =
        serde_json::from_str(r#"{"params": 7, "dtype": "fp32", "weight_decay": "decoupled"}"#)
            .unwrap();
    assert_eq!(p, AdamProblem::fp32(7, WeightDecay::Decoupled));
    assert_eq!(
        Adam::bucket_distance(&AdamProblem::fp32(14, WeightDecay::Decoupled), &p).unwrap(),
        2f64.ln()
    );
    assert_eq!(
        Adam::bucket_distance(&AdamProblem::fp32(7, WeightDecay::L2), &p),
        None
    );
    assert_eq!(Adam::min_bytes(&p), 7.0 * 28.0);
}

#[test]
fn first_step_is_lr_times_the_sign() {
    // Step 1 from zero moments: m_hat = g, sqrt(v_hat) = |g|, so p moves by lr g / (|g| + eps).
    let h = AdamHyper {
        lr: 0.01,
        ..AdamHyper::default()
    };
    let g = [0.5f32, -2.0, 1e-3, 0.0];
    let mut s = AdamState::from_f32(&[1.0; 4], &[0.0; 4], &[0.0; 4]);
    reference_step(&mut s, &g, &h, 1, WeightDecay::None);
    for (i, (&gi, &got)) in g.iter().zip(&s.params).enumerate() {
        let gi = gi as f64;
        let want = 1.0 - h.lr * gi / (gi.abs() + h.eps);
        assert!((got - want).abs() < 1e-15, "{i}: {got} vs {want}");
    }
    assert_eq!(s.params[3], 1.0);
}

#[test]
fn weight_decay_modes_differ_as_documented() {
    let h = AdamHyper {
        lr: 0.1,
        weight_decay: 0.5,
        ..AdamHyper::default()
    };
    // Zero gradient: decoupled decay shrinks p by 1 - lr wd and leaves the moments at 0;
    // L2 decay turns wd p into a gradient, so p moves by ~lr; none leaves p alone.
    let mut d = AdamState::from_f32(&[2.0], &[0.0], &[0.0]);
    reference_step(&mut d, &[0.0], &h, 1, WeightDecay::Decoupled);
    assert!((d.params[0] - 2.0 * 0.95).abs() < 1e-15 && d.m[0] == 0.0);
    let mut l = AdamState::from_f32(&[2.0], &[0.0], &[0.0]);
    reference_step(&mut l, &[0.0], &h, 1, WeightDecay::L2);
    assert!((l.params[0] - (2.0 - 0.1)).abs() < 1e-6 && l.m[0] > 0.0);
    let mut n = AdamState::from_f32(&[2.0], &[0.0], &[0.0]);
    reference_step(&mut n, &[0.0], &h, 1, WeightDecay::None);
    assert_eq!(n.params[0], 2.0);
}

#[test]
fn host_scalars_and_kernel_arithmetic_follow_the_reference() {
    // The kernel's fp32 arithmetic with AdamScalars, emulated on the CPU, tracks the f64
    // reference over 20 steps of random gradients in every mode; a wrong bias correction
    // (e.g. the step off by one) would not.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n = 257;
    for mode in [WeightDecay::None, WeightDecay::L2, WeightDecay::Decoupled] {
        let h = AdamHyper {
            lr: 0.02,
            weight_decay: 0.1,
            ..AdamHyper::default()
        }
        .rounded_to_f32();
        let mut p: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut m = vec![0.0f32; n];
        let mut v = vec![0.0f32; n];
        let mut refs = AdamState::from_f32(&p, &m, &v);
        let mut off_by_one = refs.clone();
        for step in 1..=20u64 {
            let g: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            kernel_step_f32(
                &mut p,
                &g,
                &mut m,
                &mut v,
                &AdamScalars::new(&h, step),
                mode,
            );
            reference_step(&mut refs, &g, &h, step, mode);
            reference_step(&mut off_by_one, &g, &h, step + 1, mode);
            assert!(rel(&p, &refs.params) < 1e-6, "{mode:?} step {step} params");
            assert!(rel(&m, &refs.m) < 1e-6, "{mode:?} step {step} m");
            assert!(rel(&v, &refs.v) < 1e-6, "{mode:?} step {step} v");
        }
        assert!(
            rel(&p, &off_by_one.params) > 1e-4,
            "the check cannot tell a shifted bias correction"
        );
    }
}
