use super::reference::{self, Net};
use super::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap, HashSet};

fn limits() -> DeviceLimits {
    DeviceLimits::HOPPER
}

fn every_variant() -> Vec<(SmallMlpProblem, SmallMlpConfig)> {
    let mut out = Vec::new();
    for c in SmallMlp::legal_space(&limits()) {
        for p in SmallMlp::branch_problems() {
            if SmallMlp::check_problem(&p, &c).is_ok() {
                out.push((p, c));
            }
        }
    }
    out
}

#[test]
fn space_and_variants() {
    // (128, 32) would put 8 rows on a warp.
    assert_eq!(SmallMlp::legal_space(&limits()).len(), 5);
    let f = crate::registry::family("small_mlp").unwrap();
    let variants = f.variants(&limits());
    let entries: HashSet<_> = variants.iter().map(|v| v.entry.clone()).collect();
    assert_eq!(entries.len(), variants.len());
    // 9 branch problems x 5 configs (the penalty on width 256 needs at most 2 x 4 x 8
    // accumulators: every config serves it).
    assert_eq!(variants.len(), 9 * 5, "{} variants", variants.len());
    for p in SmallMlp::branch_problems() {
        SmallMlp::supports(&p).unwrap();
    }
}

#[test]
fn entries_name_exactly_what_the_source_depends_on() {
    let used = crate::families::template_tags::template_names(SmallMlp::TEMPLATE);
    let mut by_entry: HashMap<String, RenderVars> = HashMap::new();
    for (p, c) in every_variant() {
        let v = SmallMlp::render_vars(&p, &c);
        let keys: BTreeSet<String> = v.keys().cloned().collect();
        assert_eq!(keys, used, "render vars vs template names");
        let e = SmallMlp::entry(&p, &c);
        if let Some(prev) = by_entry.insert(e.clone(), v.clone()) {
            assert_eq!(prev, v, "entry {e} names two sources");
        }
        // The row count never reaches the source.
        let other = SmallMlpProblem { rows: 7, ..p };
        assert_eq!(SmallMlp::render_vars(&other, &c), v);
    }
    let values: HashSet<String> = by_entry
        .values()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect();
    assert_eq!(values.len(), by_entry.len(), "one source under two entries");
}

#[cfg(feature = "jit")]
#[test]
fn every_variant_renders() {
    for (p, c) in every_variant() {
        let src = crate::render::render::<SmallMlp>(&p, &c).unwrap();
        assert!(src
            .source
            .contains(&format!("{}(", SmallMlp::entry(&p, &c))));
    }
}

#[test]
fn args_match_the_template_signature() {
    let names = crate::families::template_tags::signatures(SmallMlp::TEMPLATE, "{{ entry }}(");
    let want: Vec<&str> = SmallMlp::args().iter().map(|a| a.name).collect();
    assert_eq!(names, vec![want]);
}

#[test]
fn default_config_geometry_and_scratch() {
    let l = limits();
    for pass in [
        Pass::Forward,
        Pass::InputVjp,
        Pass::ParamGrad,
        Pass::PenaltyGrad,
    ] {
        for width in WIDTHS {
            for depth in DEPTHS {
                for (d_in, d_out) in [(1u32, 1u32), (64, 1), (256, 1), (32, 256), (3, 7)] {
                    for rows in [1u32, 7, 1000, 100_003] {
                        for activation in [Activation::Tanh, Activation::LeakyRelu] {
                            let p = SmallMlpProblem {
                                pass,
                                d_in,
                                width,
                                depth,
                                d_out,
                                activation,
                                rows,
                            };
                            if SmallMlp::supports(&p).is_err() {
                                assert!(pass == Pass::PenaltyGrad && d_out != 1);
                                continue;
                            }
                            let c = SmallMlp::default_config(&p);
                            SmallMlp::check_config(&c, &l).unwrap();
                            SmallMlp::check_problem(&p, &c)
                                .unwrap_or_else(|e| panic!("{p:?} -> {c:?}: {e}"));
                            let g = SmallMlp::geometry(&p, &c);
                            assert!(g.grid[0] >= 1 && g.grid[0] <= 132 * 8);
                            if pass.has_weight_grads() {
                                // The grid barrier needs every CTA resident: one per SM.
                                assert!(g.grid[0] <= 132);
                                let s = SmallMlp::scratch(&p, &c);
                                assert_eq!(s.len(), 2);
                                assert!(s[0].bytes > 0 && s[1].zero_init);
                            } else {
                                assert!(SmallMlp::scratch(&p, &c).is_empty());
                            }
                            assert!(SmallMlp::estimate_us(&p, &c, &l).is_finite());
                            assert!(SmallMlp::flops(&p) > 0.0 && SmallMlp::min_bytes(&p) > 0.0);
                        }
                    }
                }
            }
        }
    }
    let bad = SmallMlpProblem {
        width: 100,
        ..wgan_critic(Pass::Forward, 10)
    };
    assert!(SmallMlp::supports(&bad).is_err());
    assert!(SmallMlp::supports(&wgan_generator(Pass::PenaltyGrad, 10)).is_err());
}

#[test]
fn problems_serialise_and_bucket() {
    let p = wgan_critic(Pass::PenaltyGrad, 1000);
    let v = serde_json::to_value(p).unwrap();
    assert_eq!(v["pass"], "penalty_grad");
    assert_eq!(v["activation"], "leaky_relu");
    assert_eq!(serde_json::from_value::<SmallMlpProblem>(v).unwrap(), p);
    assert_eq!(
        SmallMlp::bucket_distance(&wgan_critic(Pass::PenaltyGrad, 500), &p).unwrap(),
        2f64.ln()
    );
    assert_eq!(
        SmallMlp::bucket_distance(&wgan_critic(Pass::Forward, 1000), &p),
        None
    );
    // The arena of the critic: 64*128 + 128 + 2 (128*128 + 128) + 128 + 1.
    assert_eq!(p.params(), 64 * 128 + 128 + 2 * (128 * 128 + 128) + 128 + 1);
    assert_eq!(weight_tiles(&p), 4 * 3 + 2 * 4 * 5 + 5);
}

// ---- references against finite differences ----

fn random_net(rng: &mut impl Rng, dims: [usize; 4], activation: Activation) -> (Net, Vec<f32>) {
    let [d_in, width, depth, d_out] = dims;
    let n = param_count(d_in as u32, width as u32, depth as u32, d_out as u32);
    let params: Vec<f32> = (0..n).map(|_| rng.random_range(-0.9f32..0.9)).collect();
    (
        Net::new(d_in, width, depth, d_out, activation, &params),
        params,
    )
}

fn random(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0f64..1.0)).collect()
}

/// max |a - b| / max |b|.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    err / b.iter().fold(1e-300f64, |m, y| m.max(y.abs()))
}

/// Central differences of `f` at `v`, one coordinate at a time.
fn fd(v: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut w = v.to_vec();
    (0..v.len())
        .map(|i| {
            w[i] = v[i] + h;
            let up = f(&w);
            w[i] = v[i] - h;
            let down = f(&w);
            w[i] = v[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

const ACTS: [Activation; 3] = [Activation::Tanh, Activation::Relu, Activation::LeakyRelu];
const H: f64 = 1e-6;
const FD_TOL: f64 = 1e-6;

#[test]
fn input_vjp_matches_finite_differences() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for act in ACTS {
        for dims in [[3, 5, 1, 2], [4, 6, 3, 3], [2, 4, 2, 1]] {
            let (net, _) = random_net(&mut rng, dims, act);
            let rows = 3;
            let x = random(&mut rng, rows * dims[0]);
            let gy = random(&mut rng, rows * dims[3]);
            let dx = reference::input_vjp(&net, &x, &gy);
            let loss = |xv: &[f64]| -> f64 {
                let (y, _) = reference::forward(&net, xv);
                y.iter().zip(&gy).map(|(a, b)| a * b).sum()
            };
            let want = fd(&x, H, loss);
            let e = rel(&dx, &want);
            assert!(e < FD_TOL, "{act:?} {dims:?}: rel err {e:.2e}");
        }
    }
}

#[test]
fn param_grad_matches_finite_differences() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for act in ACTS {
        for dims in [[3, 5, 1, 2], [4, 6, 3, 3]] {
            let (net, _) = random_net(&mut rng, dims, act);
            let rows = 4;
            let x = random(&mut rng, rows * dims[0]);
            let gy = random(&mut rng, rows * dims[3]);
            let g = reference::param_grad(&net, &x, &gy);
            let mut probe = net.clone();
            let want = fd(&net.params, H, |p| {
                probe.params.copy_from_slice(p);
                let (y, _) = reference::forward(&probe, &x);
                y.iter().zip(&gy).map(|(a, b)| a * b).sum()
            });
            let e = rel(&g, &want);
            assert!(e < FD_TOL, "{act:?} {dims:?}: rel err {e:.2e}");
        }
    }
}

#[test]
fn penalty_grad_matches_finite_differences() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for act in ACTS {
        for dims in [[3, 5, 1, 1], [4, 6, 3, 1], [2, 4, 2, 1]] {
            let (net, _) = random_net(&mut rng, dims, act);
            let rows = 5;
            // Inputs scaled so that |u| lands on both sides of 1 across rows.
            let x: Vec<f64> = random(&mut rng, rows * dims[0])
                .iter()
                .map(|v| 2.0 * v)
                .collect();
            let g = reference::penalty_grad(&net, &x);
            let mut probe = net.clone();
            let want = fd(&net.params, H, |p| {
                probe.params.copy_from_slice(p);
                reference::penalty(&probe, &x).0
            });
            let e = rel(&g, &want);
            assert!(e < FD_TOL, "{act:?} {dims:?}: rel err {e:.2e}");
            // The output bias never changes the penalty.
            let last_bias = net.param_count() - 1;
            assert_eq!(g[last_bias], 0.0);
        }
    }
}

#[test]
fn the_penalty_check_catches_a_missing_second_derivative() {
    // Without s'' the tanh penalty gradient is wrong, and the same check says so; for leaky
    // ReLU (s'' = 0) nothing changes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let (net, _) = random_net(&mut rng, [3, 6, 2, 1], Activation::Tanh);
    let x = random(&mut rng, 4 * 3);
    let mut probe = net.clone();
    let want = fd(&net.params, H, |p| {
        probe.params.copy_from_slice(p);
        reference::penalty(&probe, &x).0
    });
    let wrong = reference::penalty_grad_with(&net, &x, false);
    assert!(rel(&wrong, &want) > 1e-3, "{:.2e}", rel(&wrong, &want));
    let (leaky, _) = random_net(&mut rng, [3, 6, 2, 1], Activation::LeakyRelu);
    assert_eq!(
        reference::penalty_grad_with(&leaky, &x, false),
        reference::penalty_grad(&leaky, &x)
    );
}

#[test]
fn forward_stash_and_penalty_are_consistent() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let (net, params) = random_net(&mut rng, [2, 4, 2, 1], Activation::LeakyRelu);
    let x = random(&mut rng, 3 * 2);
    let (y, stash) = reference::forward(&net, &x);
    assert_eq!((y.len(), stash.len()), (3, 2 * 3 * 4));
    // Row 1's first activation, by hand.
    let z = params[0] as f64 * x[2] + params[1] as f64 * x[3] + params[8] as f64;
    let a = if z > 0.0 { z } else { LEAKY_SLOPE * z };
    assert!((stash[4] - a).abs() < 1e-15);
    let z = reference::hidden_preactivations(&net, &x);
    for (a, z) in stash.iter().zip(&z) {
        assert_eq!(*a, reference::activation(Activation::LeakyRelu, *z).0);
    }
    // The penalty's u is the VJP with gy = 1; P is the mean of (|u| - 1)^2.
    let (p, u) = reference::penalty(&net, &x);
    assert_eq!(u, reference::input_vjp(&net, &x, &[1.0f64; 3]));
    let want: f64 = u
        .chunks(2)
        .map(|r| ((r[0] * r[0] + r[1] * r[1]).sqrt() - 1.0).powi(2))
        .sum::<f64>()
        / 3.0;
    assert!((p - want).abs() < 1e-15);
}

#[test]
fn output_term_sizes_bound_the_output_and_count_every_term() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for act in ACTS {
        let (net, _) = random_net(&mut rng, [3, 5, 2, 2], act);
        let x = random(&mut rng, 4 * 3);
        let (y, _) = reference::forward(&net, &x);
        let sizes = reference::output_term_sizes(&net, &x);
        assert_eq!(sizes.len(), y.len());
        for (s, v) in sizes.iter().zip(&y) {
            assert!(*s >= v.abs() - 1e-12, "{s} < |{v}|");
        }
    }
    // With the last layer's weights negated every output flips sign; the sizes do not change.
    let (mut net, _) = random_net(&mut rng, [3, 5, 1, 1], Activation::Tanh);
    let x = random(&mut rng, 2 * 3);
    let before = reference::output_term_sizes(&net, &x);
    let (y0, _) = reference::forward(&net, &x);
    let last = net.params.len() - (5 + 1);
    for p in &mut net.params[last..] {
        *p = -*p;
    }
    let (y1, _) = reference::forward(&net, &x);
    let after = reference::output_term_sizes(&net, &x);
    for i in 0..y0.len() {
        assert!((y0[i] + y1[i]).abs() < 1e-12);
        assert!((before[i] - after[i]).abs() < 1e-12);
        assert!(before[i] > 0.0);
    }
}
