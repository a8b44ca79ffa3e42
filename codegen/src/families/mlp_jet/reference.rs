//! The f64 CPU reference of `mlp_jet`, and the parameter initialisation the tests use.
//!
//! The reference carries forward jets in f64 through every layer with the generic rule
//! (`z = W a + b` on the value, `W a'` on each tangent, `W La` on the second-order streams,
//! then the tanh update), starting from `a = x`, `a'_i = e_i`, zero second-order streams.
//! It does not share the kernel's special case for layer 0, so it checks that too.

use super::{layer_offsets, MlpJetProblem};

/// Reference outputs of a set of points, in the kernel's layouts restricted to those points:
/// `u [m, p]`, `grad [m, d, p]`, `second [m, p]` or `[m, d, p]` (empty when not computed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Jets {
    pub u: Vec<f64>,
    pub grad: Vec<f64>,
    pub second: Vec<f64>,
}

/// Xavier-uniform weights (`U(-a, a)`, `a = gain * sqrt(6 / (fan_in + fan_out))`) and
/// biases `U(-0.1, 0.1)` for the net of `p`, from `uniform` (values in `[-1, 1)`). With
/// inputs in `[-1, 1]` and gain 1 the tanh layers stay well inside their linear range.
pub fn init_params(p: &MlpJetProblem, gain: f64, mut uniform: impl FnMut() -> f64) -> Vec<f32> {
    let offsets = layer_offsets(p.d, p.width, p.depth, p.p);
    let mut out = Vec::with_capacity(super::param_count(p.d, p.width, p.depth, p.p));
    for (l, &(w_at, b_at)) in offsets.iter().enumerate() {
        let fan_in = if l == 0 { p.d } else { p.width } as f64;
        let fan_out = (b_at - w_at) as f64 / fan_in;
        let a = gain * (6.0 / (fan_in + fan_out)).sqrt();
        debug_assert_eq!(out.len(), w_at);
        out.extend((w_at..b_at).map(|_| (a * uniform()) as f32));
        out.extend((0..fan_out as usize).map(|_| (0.1 * uniform()) as f32));
    }
    out
}

/// Forward jets of one point: value, tangents and second-order streams of every output.
struct PointJet {
    value: Vec<f64>,
    /// `[tangent][neuron]`
    tangents: Vec<Vec<f64>>,
    /// `[stream][neuron]`: one Laplacian stream, or one per input dimension.
    seconds: Vec<Vec<f64>>,
}

fn matvec(w: &[f32], b: Option<&[f32]>, a: &[f64], fan_out: usize) -> Vec<f64> {
    let fan_in = a.len();
    (0..fan_out)
        .map(|j| {
            let row = &w[j * fan_in..(j + 1) * fan_in];
            let dot: f64 = row.iter().zip(a).map(|(&wv, &av)| wv as f64 * av).sum();
            dot + b.map_or(0.0, |b| b[j] as f64)
        })
        .collect()
}

fn point_jet(p: &MlpJetProblem, x: &[f32], params: &[f32]) -> PointJet {
    let d = p.d as usize;
    let nt = p.streams.tangents(p.d) as usize;
    let nsec = p.streams.seconds(p.d) as usize;
    let hess = p.streams.hessdiag();
    let mut a: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut at: Vec<Vec<f64>> = (0..nt)
        .map(|i| (0..d).map(|k| if k == i { 1.0 } else { 0.0 }).collect())
        .collect();
    let mut a2: Vec<Vec<f64>> = vec![vec![0.0; d]; nsec];
    let offsets = layer_offsets(p.d, p.width, p.depth, p.p);
    for (l, &(w_at, b_at)) in offsets.iter().enumerate() {
        let fan_out = if l == p.depth as usize { p.p } else { p.width } as usize;
        let w = &params[w_at..b_at];
        let b = &params[b_at..b_at + fan_out];
        let z = matvec(w, Some(b), &a, fan_out);
        let zt: Vec<Vec<f64>> = at.iter().map(|v| matvec(w, None, v, fan_out)).collect();
        let z2: Vec<Vec<f64>> = a2.iter().map(|v| matvec(w, None, v, fan_out)).collect();
        if l == p.depth as usize {
            return PointJet {
                value: z,
                tangents: zt,
                seconds: z2,
            };
        }
        let s: Vec<f64> = z.iter().map(|v| v.tanh()).collect();
        let s1: Vec<f64> = s.iter().map(|v| 1.0 - v * v).collect();
        let s2: Vec<f64> = s.iter().zip(&s1).map(|(v, d1)| -2.0 * v * d1).collect();
        at = zt
            .iter()
            .map(|t| t.iter().zip(&s1).map(|(zv, d1)| d1 * zv).collect())
            .collect();
        a2 = if hess {
            z2.iter()
                .zip(&zt)
                .map(|(zz, t)| {
                    (0..fan_out)
                        .map(|j| s1[j] * zz[j] + s2[j] * t[j] * t[j])
                        .collect()
                })
                .collect()
        } else {
            z2.iter()
                .map(|lz| {
                    (0..fan_out)
                        .map(|j| {
                            let sq: f64 = zt.iter().map(|t| t[j] * t[j]).sum();
                            s1[j] * lz[j] + s2[j] * sq
                        })
                        .collect()
                })
                .collect()
        };
        a = s;
    }
    unreachable!("the last layer returns")
}

/// The f64 reference at the points `which` (indices into `x [points, d]`).
pub fn reference_points(p: &MlpJetProblem, x: &[f32], params: &[f32], which: &[usize]) -> Jets {
    let (d, np) = (p.d as usize, p.p as usize);
    assert!(x.len() >= p.points as usize * d, "x is [points, d]");
    assert_eq!(
        params.len(),
        super::param_count(p.d, p.width, p.depth, p.p),
        "parameter arena size"
    );
    let mut out = Jets::default();
    for &n in which {
        let j = point_jet(p, &x[n * d..(n + 1) * d], params);
        out.u.extend_from_slice(&j.value);
        // [d, p] per point: tangent i, then output o.
        for t in &j.tangents {
            out.grad.extend_from_slice(t);
        }
        for s in &j.seconds {
            out.second.extend_from_slice(s);
        }
        debug_assert_eq!(j.value.len(), np);
    }
    out
}

/// The f64 reference at every point.
pub fn reference_all(p: &MlpJetProblem, x: &[f32], params: &[f32]) -> Jets {
    let all: Vec<usize> = (0..p.points as usize).collect();
    reference_points(p, x, params, &all)
}

/// The same jets evaluated in f32 (products fused and summed in k order, f32 tanh), at the
/// points `which`: what exact fp32 arithmetic achieves on this net. Tests compare a kernel's
/// error with this floor where a net is ill-conditioned for the max-norm metric (an output
/// far smaller than the terms summed into it).
pub fn reference_points_f32(p: &MlpJetProblem, x: &[f32], params: &[f32], which: &[usize]) -> Jets {
    let d = p.d as usize;
    let nt = p.streams.tangents(p.d) as usize;
    let nsec = p.streams.seconds(p.d) as usize;
    let offsets = layer_offsets(p.d, p.width, p.depth, p.p);
    let mut out = Jets::default();
    for &n in which {
        let mut a: Vec<f32> = x[n * d..(n + 1) * d].to_vec();
        let mut at: Vec<Vec<f32>> = (0..nt)
            .map(|i| (0..d).map(|k| if k == i { 1.0 } else { 0.0 }).collect())
            .collect();
        let mut a2: Vec<Vec<f32>> = vec![vec![0.0; d]; nsec];
        for (l, &(w_at, b_at)) in offsets.iter().enumerate() {
            let fan_out = if l == p.depth as usize { p.p } else { p.width } as usize;
            let fan_in = a.len();
            let w = &params[w_at..b_at];
            let mv = |v: &[f32], bias: bool| -> Vec<f32> {
                (0..fan_out)
                    .map(|j| {
                        let row = &w[j * fan_in..(j + 1) * fan_in];
                        let init = if bias { params[b_at + j] } else { 0.0 };
                        row.iter()
                            .zip(v)
                            .fold(init, |c, (&wv, &av)| wv.mul_add(av, c))
                    })
                    .collect()
            };
            let z = mv(&a, true);
            let zt: Vec<Vec<f32>> = at.iter().map(|v| mv(v, false)).collect();
            let z2: Vec<Vec<f32>> = a2.iter().map(|v| mv(v, false)).collect();
            if l == p.depth as usize {
                out.u.extend(z.iter().map(|&v| v as f64));
                out.grad.extend(zt.iter().flatten().map(|&v| v as f64));
                out.second.extend(z2.iter().flatten().map(|&v| v as f64));
                break;
            }
            let s: Vec<f32> = z.iter().map(|v| v.tanh()).collect();
            let s1: Vec<f32> = s.iter().map(|v| 1.0 - v * v).collect();
            let s2: Vec<f32> = s.iter().zip(&s1).map(|(v, d1)| -2.0 * v * d1).collect();
            a2 = if p.streams.hessdiag() {
                z2.iter()
                    .zip(&zt)
                    .map(|(zz, t)| {
                        (0..fan_out)
                            .map(|j| s1[j].mul_add(zz[j], s2[j] * t[j] * t[j]))
                            .collect()
                    })
                    .collect()
            } else {
                z2.iter()
                    .map(|lz| {
                        (0..fan_out)
                            .map(|j| {
                                let sq = zt.iter().fold(0.0f32, |c, t| t[j].mul_add(t[j], c));
                                s1[j].mul_add(lz[j], s2[j] * sq)
                            })
                            .collect()
                    })
                    .collect()
            };
            at = zt
                .iter()
                .map(|t| t.iter().zip(&s1).map(|(zv, d1)| d1 * zv).collect())
                .collect();
            a = s;
        }
    }
    out
}

/// The value of every output at one point (f64 arithmetic on f64 inputs), for finite
/// differences.
pub fn value_f64(p: &MlpJetProblem, x: &[f64], params: &[f32]) -> Vec<f64> {
    let offsets = layer_offsets(p.d, p.width, p.depth, p.p);
    let mut a = x.to_vec();
    for (l, &(w_at, b_at)) in offsets.iter().enumerate() {
        let fan_out = if l == p.depth as usize { p.p } else { p.width } as usize;
        let z = matvec(
            &params[w_at..b_at],
            Some(&params[b_at..b_at + fan_out]),
            &a,
            fan_out,
        );
        if l == p.depth as usize {
            return z;
        }
        a = z.iter().map(|v| v.tanh()).collect();
    }
    unreachable!("the last layer returns")
}

#[cfg(test)]
mod tests {
    use super::super::Streams;
    use super::*;

    fn uniform(seed: u64) -> impl FnMut() -> f64 {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        move || rng.random_range(-1.0..1.0)
    }

    fn net(d: u32, width: u32, depth: u32, p: u32, streams: Streams) -> MlpJetProblem {
        MlpJetProblem {
            d,
            width,
            depth,
            p,
            points: 5,
            streams,
        }
    }

    /// Largest error of the reference's gradient and second derivatives (computed with
    /// `ref_params`) against central differences of `value_f64` (with `params`), relative
    /// to the largest reference magnitude.
    fn fd_errors(p: &MlpJetProblem, params: &[f32], ref_params: &[f32], x: &[f32]) -> (f64, f64) {
        let (d, np) = (p.d as usize, p.p as usize);
        let jets = reference_all(p, x, ref_params);
        let (h1, h2) = (1e-5, 1e-4);
        let (mut g_err, mut g_max, mut s_err, mut s_max) = (0f64, 0f64, 0f64, 0f64);
        for n in 0..p.points as usize {
            let x0: Vec<f64> = x[n * d..(n + 1) * d].iter().map(|&v| v as f64).collect();
            let f0 = value_f64(p, &x0, params);
            let mut lap = vec![0.0; np];
            for i in 0..d {
                let shifted = |h: f64| {
                    let mut xs = x0.clone();
                    xs[i] += h;
                    value_f64(p, &xs, params)
                };
                let (gp, gm) = (shifted(h1), shifted(-h1));
                let (sp, sm) = (shifted(h2), shifted(-h2));
                for o in 0..np {
                    let fd_g = (gp[o] - gm[o]) / (2.0 * h1);
                    let fd_s = (sp[o] - 2.0 * f0[o] + sm[o]) / (h2 * h2);
                    lap[o] += fd_s;
                    if !jets.grad.is_empty() {
                        let g = jets.grad[(n * d + i) * np + o];
                        g_err = g_err.max((g - fd_g).abs());
                        g_max = g_max.max(g.abs());
                    }
                    if p.streams.hessdiag() {
                        let s = jets.second[(n * d + i) * np + o];
                        s_err = s_err.max((s - fd_s).abs());
                        s_max = s_max.max(s.abs());
                    }
                }
            }
            if p.streams.seconds(p.d) == 1 {
                for (o, fd) in lap.iter().enumerate() {
                    let s = jets.second[n * np + o];
                    s_err = s_err.max((s - fd).abs());
                    s_max = s_max.max(s.abs());
                }
            }
        }
        (g_err / g_max.max(1e-300), s_err / s_max.max(1e-300))
    }

    /// A random net (gain 2 drives the tanh layers into their curved range, so the
    /// second-order terms matter) and random points in [-1, 1]^d.
    fn random_net(p: &MlpJetProblem, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut u = uniform(seed);
        let params = init_params(p, 2.0, &mut u);
        let x = (0..p.points as usize * p.d as usize)
            .map(|_| u() as f32)
            .collect();
        (params, x)
    }

    #[test]
    fn value_matches_the_plain_forward_pass() {
        let p = net(3, 16, 3, 4, Streams::ValueGradLaplacian);
        let (params, x) = random_net(&p, 3);
        let jets = reference_all(&p, &x, &params);
        for n in 0..5 {
            let x0: Vec<f64> = x[n * 3..n * 3 + 3].iter().map(|&v| v as f64).collect();
            for (o, v) in value_f64(&p, &x0, &params).iter().enumerate() {
                assert!((v - jets.u[n * 4 + o]).abs() < 1e-12);
            }
        }
        assert_eq!(jets.grad.len(), 5 * 3 * 4);
        assert_eq!(jets.second.len(), 5 * 4);
    }

    #[test]
    fn gradient_and_laplacian_match_finite_differences() {
        for (i, (d, width, depth, np)) in [(1, 8, 2, 3), (3, 16, 3, 2), (5, 12, 4, 4)]
            .into_iter()
            .enumerate()
        {
            let p = net(d, width, depth, np, Streams::ValueGradLaplacian);
            let (params, x) = random_net(&p, 11 + i as u64);
            let (g, s) = fd_errors(&p, &params, &params, &x);
            assert!(g < 1e-7, "{p:?}: gradient rel err {g:e}");
            assert!(s < 1e-5, "{p:?}: Laplacian rel err {s:e}");
        }
    }

    #[test]
    fn hessian_diagonal_and_d2_match_finite_differences() {
        let p = net(4, 10, 3, 3, Streams::ValueGradHessdiag);
        let (params, x) = random_net(&p, 5);
        let (g, s) = fd_errors(&p, &params, &params, &x);
        assert!(g < 1e-7 && s < 1e-5, "grad {g:e}, hessdiag {s:e}");
        // The diagonal sums to the Laplacian.
        let lap = reference_all(
            &MlpJetProblem {
                streams: Streams::ValueGradLaplacian,
                ..p
            },
            &x,
            &params,
        );
        let hd = reference_all(&p, &x, &params);
        for n in 0..5 {
            for o in 0..3 {
                let sum: f64 = (0..4).map(|i| hd.second[(n * 4 + i) * 3 + o]).sum();
                assert!((sum - lap.second[n * 3 + o]).abs() < 1e-12);
            }
        }
        let p = net(1, 16, 5, 2, Streams::ValueD2);
        let (params, x) = random_net(&p, 6);
        let (g, s) = fd_errors(&p, &params, &params, &x);
        assert!(g < 1e-7 && s < 1e-5, "grad {g:e}, d2 {s:e}");
    }

    #[test]
    fn the_finite_difference_check_catches_a_small_error() {
        // The reference of a net with one weight of a middle layer moved by 1e-3 (far less
        // than any slip in a jet formula would move the result) fails the same bounds.
        let p = net(3, 12, 3, 2, Streams::ValueGradLaplacian);
        let (params, x) = random_net(&p, 21);
        let mut moved = params.clone();
        let (w1, _) = layer_offsets(3, 12, 3, 2)[1];
        moved[w1 + 5] += 1e-3;
        let (g, s) = fd_errors(&p, &params, &moved, &x);
        assert!(
            g > 1e-7 && s > 1e-5,
            "grad {g:e}, Laplacian {s:e}: undetected"
        );
    }

    #[test]
    fn the_f32_evaluation_is_close_to_f64_and_not_equal() {
        for streams in [
            Streams::ValueGradLaplacian,
            Streams::ValueGradHessdiag,
            Streams::Value,
        ] {
            let p = net(3, 32, 3, 4, streams);
            let (params, x) = random_net(&p, 8);
            let all: Vec<usize> = (0..5).collect();
            let want = reference_points(&p, &x, &params, &all);
            let got = reference_points_f32(&p, &x, &params, &all);
            for (g, w) in [
                (&got.u, &want.u),
                (&got.grad, &want.grad),
                (&got.second, &want.second),
            ] {
                assert_eq!(g.len(), w.len());
                let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
                let err = g
                    .iter()
                    .zip(w.iter())
                    .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 1e-5 * scale, "{streams:?}: {err:e} of {scale:e}");
                assert!(
                    w.is_empty() || err > 0.0,
                    "{streams:?}: f32 equals f64 exactly"
                );
            }
        }
    }

    #[test]
    fn init_params_is_xavier_sized_and_laid_out() {
        let p = net(3, 32, 2, 5, Streams::Value);
        let params = init_params(&p, 1.0, uniform(1));
        assert_eq!(params.len(), 32 * 3 + 32 + 32 * 32 + 32 + 5 * 32 + 5);
        let a0 = (6.0f64 / 35.0).sqrt() as f32;
        assert!(params[..96].iter().all(|v| v.abs() <= a0));
        assert!(params[..96].iter().any(|v| v.abs() > 0.5 * a0));
        let offsets = layer_offsets(3, 32, 2, 5);
        assert_eq!(offsets, vec![(0, 96), (128, 1152), (1184, 1344)]);
        assert!(params[96..128].iter().all(|v| v.abs() <= 0.1));
    }
}
