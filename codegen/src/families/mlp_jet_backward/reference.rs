//! The f64 CPU reference of `mlp_jet_backward`: the loss and its gradient with respect to
//! every parameter, by forward jets and the reverse-mode recurrences of the family module
//! written in their plain form (pre-activation streams kept, `s'''` used), so that it checks
//! the kernel's rearranged form rather than sharing it.

use super::{Loss, MlpJetBackwardProblem};
use crate::families::mlp_jet::{layer_offsets, param_count};

/// What closes the chain at the outputs, as the kernel reads it (all fp32, kiln's layouts).
#[derive(Clone, Copy, Debug)]
pub enum Head<'a> {
    /// Given output cotangents: `u [n, p]`, `grad [n, d, p]`, `lap [n, p]`; an empty slice
    /// is zero. The "loss" is then the linear functional `sum <cotangent, output>`.
    Cotangents {
        u: &'a [f32],
        grad: &'a [f32],
        lap: &'a [f32],
    },
    /// `L = (1/N) sum_n (r_n^2 + w_n (u_n - g_n)^2)`, `r_n = -Lap u(x_n) - f_n`; the data
    /// term (`target` g and `weight` w, both `[n]`) is optional.
    Residual {
        f: &'a [f32],
        data: Option<(&'a [f32], &'a [f32])>,
    },
}

impl Head<'_> {
    /// The loss kind of the problem this head serves.
    pub fn loss(&self) -> Loss {
        match self {
            Head::Cotangents { .. } => Loss::Cotangents,
            Head::Residual { .. } => Loss::LaplacianResidual,
        }
    }
}

/// A loss (or its part from some points) and its gradient, in the parameter arena's layout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossGrads {
    pub loss: f64,
    pub grads: Vec<f64>,
}

/// The forward jets of one layer's output: value, `d` tangents, Laplacian, per neuron.
#[derive(Clone)]
struct Jet {
    v: Vec<f64>,
    t: Vec<Vec<f64>>,
    l: Vec<f64>,
}

/// `W a` (+ `b`) for a weight block `w [fan_out, a.len()]` of the arena.
fn matvec(w: &[f64], b: Option<&[f64]>, a: &[f64], fan_out: usize) -> Vec<f64> {
    let fan_in = a.len();
    (0..fan_out)
        .map(|j| {
            let row = &w[j * fan_in..(j + 1) * fan_in];
            let dot: f64 = row.iter().zip(a).map(|(wv, av)| wv * av).sum();
            dot + b.map_or(0.0, |b| b[j])
        })
        .collect()
}

/// `W^T c` for a weight block `w [c.len(), fan_in]`.
fn matvec_t(w: &[f64], c: &[f64], fan_in: usize) -> Vec<f64> {
    let mut out = vec![0.0; fan_in];
    for (o, cv) in c.iter().enumerate() {
        for (k, acc) in out.iter_mut().enumerate() {
            *acc += w[o * fan_in + k] * cv;
        }
    }
    out
}

/// The contribution of one point: its loss term, added gradient, from f64 parameters.
/// `head` maps (u, grad, Laplacian) of the point (grad `[d][p]`) to its loss term and the
/// cotangents of the three.
#[allow(clippy::type_complexity)]
fn point(
    p: &MlpJetBackwardProblem,
    x: &[f64],
    params: &[f64],
    grads: &mut [f64],
    head: impl Fn(&Jet) -> (f64, Jet),
) -> f64 {
    let (d, width, depth) = (p.d as usize, p.width as usize, p.depth as usize);
    let offsets = layer_offsets(p.d, p.width, p.depth, p.p);
    // inputs[l]: the jets entering layer l; pre[l]: layer l's pre-activation jets.
    let mut inputs: Vec<Jet> = vec![Jet {
        v: x.to_vec(),
        t: (0..d)
            .map(|i| (0..d).map(|k| if k == i { 1.0 } else { 0.0 }).collect())
            .collect(),
        l: vec![0.0; d],
    }];
    let mut pre: Vec<Jet> = Vec::new();
    for (l, &(w_at, b_at)) in offsets.iter().enumerate() {
        let fan_out = if l == depth { p.p as usize } else { width };
        let w = &params[w_at..b_at];
        let a = inputs.last().expect("the input jets");
        let z = Jet {
            v: matvec(w, Some(&params[b_at..b_at + fan_out]), &a.v, fan_out),
            t: a.t.iter().map(|v| matvec(w, None, v, fan_out)).collect(),
            l: matvec(w, None, &a.l, fan_out),
        };
        if l < depth {
            let mut out = Jet {
                v: vec![0.0; fan_out],
                t: vec![vec![0.0; fan_out]; d],
                l: vec![0.0; fan_out],
            };
            for j in 0..fan_out {
                let s = z.v[j].tanh();
                let (s1, s2) = (1.0 - s * s, -2.0 * s * (1.0 - s * s));
                let q: f64 = z.t.iter().map(|t| t[j] * t[j]).sum();
                out.v[j] = s;
                for i in 0..d {
                    out.t[i][j] = s1 * z.t[i][j];
                }
                out.l[j] = s1 * z.l[j] + s2 * q;
            }
            inputs.push(out);
        }
        pre.push(z);
    }
    let (loss, mut bar) = head(&pre[depth]);
    // Walk back: `bar` holds the cotangents of layer l's pre-activation streams.
    for l in (0..=depth).rev() {
        let (w_at, b_at) = offsets[l];
        let fan_out = bar.v.len();
        let a = &inputs[l];
        let fan_in = a.v.len();
        for o in 0..fan_out {
            let row = &mut grads[w_at + o * fan_in..w_at + (o + 1) * fan_in];
            for (k, g) in row.iter_mut().enumerate() {
                let tangents: f64 = (0..d).map(|i| bar.t[i][o] * a.t[i][k]).sum();
                *g += bar.v[o] * a.v[k] + tangents + bar.l[o] * a.l[k];
            }
            grads[b_at + o] += bar.v[o];
        }
        if l == 0 {
            break;
        }
        let w = &params[w_at..b_at];
        // Cotangents of layer l - 1's output jets ...
        let ab = matvec_t(w, &bar.v, fan_in);
        let atb: Vec<Vec<f64>> = bar.t.iter().map(|c| matvec_t(w, c, fan_in)).collect();
        let lab = matvec_t(w, &bar.l, fan_in);
        // ... then through its tanh jet: A = s, T_i = s' z'_i, M = s' Lz + s'' sum_i z'_i^2.
        let z = &pre[l - 1];
        let mut next = Jet {
            v: vec![0.0; fan_in],
            t: vec![vec![0.0; fan_in]; d],
            l: vec![0.0; fan_in],
        };
        for j in 0..fan_in {
            let s = z.v[j].tanh();
            let s1 = 1.0 - s * s;
            let s2 = -2.0 * s * s1;
            let s3 = -2.0 * s1 * s1 - 2.0 * s * s2;
            let q: f64 = z.t.iter().map(|t| t[j] * t[j]).sum();
            let tz: f64 = (0..d).map(|i| atb[i][j] * z.t[i][j]).sum();
            next.v[j] = s1 * ab[j] + s2 * tz + lab[j] * (s2 * z.l[j] + s3 * q);
            for ((nt, tb), zt) in next.t.iter_mut().zip(&atb).zip(&z.t) {
                nt[j] = s1 * tb[j] + 2.0 * s2 * lab[j] * zt[j];
            }
            next.l[j] = s1 * lab[j];
        }
        bar = next;
    }
    loss
}

/// The loss and gradient contributed by the points `which` (indices into `x [points, d]`),
/// from f64 parameters: summing over every point gives `L` and `dL/dparams`.
pub fn loss_and_grads_f64(
    p: &MlpJetBackwardProblem,
    x: &[f32],
    params: &[f64],
    head: &Head<'_>,
    which: &[usize],
) -> LossGrads {
    accumulate(p, x, params, head, which, None)
}

/// [`loss_and_grads`] and, per parameter, the sum over the points `which` of the absolute
/// value of each point's contribution to its gradient: the scale at which a sum over points
/// carries rounding error (the gradient itself can be far smaller when the terms cancel).
pub fn loss_grads_and_scale(
    p: &MlpJetBackwardProblem,
    x: &[f32],
    params: &[f32],
    head: &Head<'_>,
    which: &[usize],
) -> (LossGrads, Vec<f64>) {
    let params: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let mut scale = vec![0.0; params.len()];
    let out = accumulate(p, x, &params, head, which, Some(&mut scale));
    (out, scale)
}

/// The body of [`loss_and_grads_f64`]; with `abs_sums`, each point's gradient goes through a
/// buffer of its own so that its absolute value can be added there too.
fn accumulate(
    p: &MlpJetBackwardProblem,
    x: &[f32],
    params: &[f64],
    head: &Head<'_>,
    which: &[usize],
    mut abs_sums: Option<&mut Vec<f64>>,
) -> LossGrads {
    let (d, np) = (p.d as usize, p.p as usize);
    assert_eq!(head.loss(), p.loss, "the head serves the problem's loss");
    assert!(x.len() >= p.points as usize * d, "x is [points, d]");
    assert_eq!(params.len(), param_count(p.d, p.width, p.depth, p.p));
    let scale = match p.loss {
        Loss::Cotangents => 1.0,
        Loss::LaplacianResidual => 1.0 / p.points as f64,
    };
    let mut out = LossGrads {
        loss: 0.0,
        grads: vec![0.0; params.len()],
    };
    let mut one = if abs_sums.is_some() {
        vec![0.0; params.len()]
    } else {
        Vec::new()
    };
    for &n in which {
        let xv: Vec<f64> = x[n * d..(n + 1) * d].iter().map(|&v| v as f64).collect();
        let at = |v: &[f32], i: usize| v.get(i).map_or(0.0, |&v| v as f64);
        let grads = if abs_sums.is_some() {
            one.fill(0.0);
            &mut one
        } else {
            &mut out.grads
        };
        let loss = point(p, &xv, params, grads, |y: &Jet| match *head {
            Head::Cotangents { u, grad, lap } => {
                let bar = Jet {
                    v: (0..np).map(|o| at(u, n * np + o)).collect(),
                    t: (0..d)
                        .map(|i| (0..np).map(|o| at(grad, (n * d + i) * np + o)).collect())
                        .collect(),
                    l: (0..np).map(|o| at(lap, n * np + o)).collect(),
                };
                let mut loss = 0.0;
                for o in 0..np {
                    loss += bar.v[o] * y.v[o] + bar.l[o] * y.l[o];
                    loss += (0..d).map(|i| bar.t[i][o] * y.t[i][o]).sum::<f64>();
                }
                (loss, bar)
            }
            Head::Residual { f, data } => {
                let r = -y.l[0] - f[n] as f64;
                let (e, w) = data.map_or((0.0, 0.0), |(g, w)| (y.v[0] - g[n] as f64, w[n] as f64));
                let bar = Jet {
                    v: vec![2.0 * w * e * scale],
                    t: vec![vec![0.0]; d],
                    l: vec![-2.0 * r * scale],
                };
                ((r * r + w * e * e) * scale, bar)
            }
        });
        out.loss += loss;
        if let Some(sc) = abs_sums.as_deref_mut() {
            for ((g, s), v) in out.grads.iter_mut().zip(sc.iter_mut()).zip(&one) {
                *g += v;
                *s += v.abs();
            }
        }
    }
    out
}

/// [`loss_and_grads_f64`] of the fp32 parameter arena the kernel reads.
pub fn loss_and_grads(
    p: &MlpJetBackwardProblem,
    x: &[f32],
    params: &[f32],
    head: &Head<'_>,
    which: &[usize],
) -> LossGrads {
    let params: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    loss_and_grads_f64(p, x, &params, head, which)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::mlp_jet::{init_params, reference_points, MlpJetProblem, Streams};
    use rand::{Rng, SeedableRng};

    fn net(
        d: u32,
        width: u32,
        depth: u32,
        p: u32,
        points: u32,
        loss: Loss,
    ) -> MlpJetBackwardProblem {
        MlpJetBackwardProblem {
            d,
            width,
            depth,
            p,
            points,
            loss,
        }
    }

    struct Inputs {
        params: Vec<f32>,
        x: Vec<f32>,
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
    }

    /// Gain 2 weights (the tanh layers curve), x in [-1, 1]^d, and three random per-point
    /// arrays sized for the cotangents (u, grad, lap) or residual inputs (f, target, weight).
    fn inputs(p: &MlpJetBackwardProblem, seed: u64) -> Inputs {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut u = move || rng.random_range(-1.0f64..1.0);
        let params = init_params(&p.jet_problem(), 2.0, &mut u);
        let (n, d, np) = (p.points as usize, p.d as usize, p.p as usize);
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| u() as f32).collect() };
        let x = draw(n * d);
        let (a, b, c) = match p.loss {
            Loss::Cotangents => (draw(n * np), draw(n * d * np), draw(n * np)),
            Loss::LaplacianResidual => {
                let w = draw(n).iter().map(|v| v.abs()).collect();
                (draw(n), draw(n), w)
            }
        };
        Inputs { params, x, a, b, c }
    }

    fn head<'a>(p: &MlpJetBackwardProblem, i: &'a Inputs, data: bool) -> Head<'a> {
        match p.loss {
            Loss::Cotangents => Head::Cotangents {
                u: &i.a,
                grad: &i.b,
                lap: &i.c,
            },
            Loss::LaplacianResidual => Head::Residual {
                f: &i.a,
                data: data.then_some((&i.b[..], &i.c[..])),
            },
        }
    }

    /// max |grads - central differences of the f64 loss| / max |grads| over every parameter.
    fn fd_error(p: &MlpJetBackwardProblem, inp: &Inputs, head: &Head<'_>, grads: &[f64]) -> f64 {
        let all: Vec<usize> = (0..p.points as usize).collect();
        let base: Vec<f64> = inp.params.iter().map(|&v| v as f64).collect();
        let h = 1e-6;
        let (mut err, mut scale) = (0f64, 0f64);
        for k in 0..base.len() {
            let mut shifted = base.clone();
            shifted[k] += h;
            let up = loss_and_grads_f64(p, &inp.x, &shifted, head, &all).loss;
            shifted[k] -= 2.0 * h;
            let down = loss_and_grads_f64(p, &inp.x, &shifted, head, &all).loss;
            err = err.max(((up - down) / (2.0 * h) - grads[k]).abs());
            scale = scale.max(grads[k].abs());
        }
        err / scale
    }

    #[test]
    fn the_scale_sums_each_points_absolute_contribution() {
        for p in [
            net(2, 32, 2, 1, 9, Loss::LaplacianResidual),
            net(3, 32, 3, 2, 7, Loss::Cotangents),
        ] {
            let inp = inputs(&p, 11);
            let h = head(&p, &inp, true);
            let all: Vec<usize> = (0..p.points as usize).collect();
            let plain = loss_and_grads(&p, &inp.x, &inp.params, &h, &all);
            let (out, scale) = loss_grads_and_scale(&p, &inp.x, &inp.params, &h, &all);
            assert!((out.loss - plain.loss).abs() <= 1e-12 * plain.loss.abs().max(1.0));
            let mut by_point = vec![0.0; scale.len()];
            for n in 0..p.points as usize {
                let one = loss_and_grads(&p, &inp.x, &inp.params, &h, &[n]);
                for (s, g) in by_point.iter_mut().zip(&one.grads) {
                    *s += g.abs();
                }
            }
            for k in 0..scale.len() {
                assert!((out.grads[k] - plain.grads[k]).abs() <= 1e-12 * scale[k].max(1e-300));
                assert!((scale[k] - by_point[k]).abs() <= 1e-12 * scale[k].max(1e-300));
                assert!(scale[k] >= out.grads[k].abs());
            }
            // Random signs over points: some entry's terms cancel, so the scale is not
            // merely |gradient|.
            assert!((0..scale.len()).any(|k| scale[k] > 1.5 * out.grads[k].abs()));
        }
    }

    #[test]
    fn gradients_match_finite_differences_of_the_loss() {
        let cases = [
            (net(1, 6, 2, 1, 5, Loss::LaplacianResidual), true),
            (net(3, 5, 3, 1, 4, Loss::LaplacianResidual), false),
            (net(2, 4, 4, 1, 3, Loss::LaplacianResidual), true),
            (net(2, 5, 2, 3, 4, Loss::Cotangents), false),
            (net(4, 6, 3, 1, 3, Loss::Cotangents), false),
        ];
        for (i, (p, data)) in cases.into_iter().enumerate() {
            let inp = inputs(&p, 40 + i as u64);
            let h = head(&p, &inp, data);
            let all: Vec<usize> = (0..p.points as usize).collect();
            let g = loss_and_grads(&p, &inp.x, &inp.params, &h, &all);
            let e = fd_error(&p, &inp, &h, &g.grads);
            assert!(e < 1e-7, "{p:?} data {data}: rel err {e:e}");
        }
    }

    #[test]
    fn the_finite_difference_check_catches_a_small_error() {
        // One entry of a middle layer's gradient moved by 1e-4 of the largest: far less than
        // a dropped term of the recurrences (the s''' one, say) would move it.
        let p = net(2, 6, 3, 1, 4, Loss::LaplacianResidual);
        let inp = inputs(&p, 9);
        let h = head(&p, &inp, true);
        let all: Vec<usize> = (0..4).collect();
        let mut g = loss_and_grads(&p, &inp.x, &inp.params, &h, &all).grads;
        let scale = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        let (w1, _) = layer_offsets(2, 6, 3, 1)[1];
        g[w1 + 7] += 1e-4 * scale;
        assert!(fd_error(&p, &inp, &h, &g) > 1e-7, "undetected");
    }

    #[test]
    fn the_kernels_rearranged_tanh_backward_equals_the_plain_one() {
        // The template computes the cotangents from the stored outputs (s, a'_i, La) with no
        // division: zb = s1 Ab - 2 s (sum Tb_i a'_i + Mb La) - 2 Mb sum a'_i^2, zb'_i = s1
        // Tb_i - 4 s Mb a'_i. The plain form (as in `point`) uses z'_i, Lz and s3 = s2'.
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut u = move |scale: f64| scale * rng.random_range(-1.0f64..1.0);
        for _ in 0..200 {
            let (z, lz, ab, mb) = (u(4.0), u(2.0), u(1.0), u(1.0));
            let (zt, tb): (Vec<f64>, Vec<f64>) = (0..3).map(|_| (u(2.0), u(1.0))).unzip();
            let s = z.tanh();
            let (s1, s2) = (1.0 - s * s, -2.0 * s * (1.0 - s * s));
            let s3 = -2.0 * s1 * s1 - 2.0 * s * s2;
            let q: f64 = zt.iter().map(|v| v * v).sum();
            let tz: f64 = zt.iter().zip(&tb).map(|(a, b)| a * b).sum();
            let plain = s1 * ab + s2 * tz + mb * (s2 * lz + s3 * q);
            let at: Vec<f64> = zt.iter().map(|v| s1 * v).collect();
            let la = s1 * lz + s2 * q;
            let ta: f64 = tb.iter().zip(&at).map(|(a, b)| a * b).sum();
            let aa: f64 = at.iter().map(|v| v * v).sum();
            let kernel = s1 * ab - 2.0 * s * (ta + mb * la) - 2.0 * mb * aa;
            assert!(
                (plain - kernel).abs() < 1e-12 * (1.0 + plain.abs()),
                "{plain} {kernel}"
            );
            for i in 0..3 {
                let plain = s1 * tb[i] + 2.0 * s2 * mb * zt[i];
                let kernel = s1 * tb[i] - 4.0 * s * mb * at[i];
                assert!((plain - kernel).abs() < 1e-12 * (1.0 + plain.abs()));
            }
        }
    }

    #[test]
    fn the_loss_is_the_residual_of_the_forward_jets() {
        // The loss agrees with mlp_jet's f64 forward reference, and sums over point subsets.
        let p = net(3, 16, 3, 1, 9, Loss::LaplacianResidual);
        let inp = inputs(&p, 3);
        let h = head(&p, &inp, true);
        let jets = reference_points(
            &MlpJetProblem {
                streams: Streams::ValueGradLaplacian,
                ..p.jet_problem()
            },
            &inp.x,
            &inp.params,
            &(0..9).collect::<Vec<_>>(),
        );
        let want: f64 = (0..9)
            .map(|n| {
                let r = -jets.second[n] - inp.a[n] as f64;
                let e = jets.u[n] - inp.b[n] as f64;
                (r * r + inp.c[n] as f64 * e * e) / 9.0
            })
            .sum();
        let all = loss_and_grads(&p, &inp.x, &inp.params, &h, &(0..9).collect::<Vec<_>>());
        assert!((all.loss - want).abs() < 1e-12 * want.abs().max(1.0));
        let first = loss_and_grads(&p, &inp.x, &inp.params, &h, &[0, 1, 2, 3]);
        let rest = loss_and_grads(&p, &inp.x, &inp.params, &h, &[4, 5, 6, 7, 8]);
        assert!((first.loss + rest.loss - all.loss).abs() < 1e-12);
        for k in 0..all.grads.len() {
            assert!((first.grads[k] + rest.grads[k] - all.grads[k]).abs() < 1e-12);
        }
    }
}
