//! f64 CPU references of the four `small_mlp` passes, row by row, written from the formulas
//! of the family doc (no shared code with the kernel). Inputs fp32 (what the GPU reads) or
//! f64 (finite differences), all arithmetic f64. Nets of any width (the unit tests use tiny ones).

use super::{layer_offsets, Activation, SmallMlpProblem};

/// A net's shape and its parameters (the family's arena layout).
#[derive(Clone, Debug)]
pub struct Net {
    pub d_in: usize,
    pub width: usize,
    pub depth: usize,
    pub d_out: usize,
    pub activation: Activation,
    /// `W_l [out, in]`, `b_l [out]`, layer by layer, as f64.
    pub params: Vec<f64>,
}

/// The per-row values of a forward pass.
struct Trace {
    /// `a_{l-1}` for `l = 0..=depth` (`a_{-1} = x`).
    inputs: Vec<Vec<f64>>,
    /// `z_l` for `l = 0..=depth` (`z_depth = y`).
    z: Vec<Vec<f64>>,
}

/// `s`, `s'`, `s''` of the activation at `z`.
pub fn activation(a: Activation, z: f64) -> (f64, f64, f64) {
    match a {
        Activation::Tanh => {
            let t = z.tanh();
            let d1 = 1.0 - t * t;
            (t, d1, -2.0 * t * d1)
        }
        Activation::Relu | Activation::LeakyRelu => {
            let s = a.slope();
            if z > 0.0 {
                (z, 1.0, 0.0)
            } else {
                (s * z, s, 0.0)
            }
        }
    }
}

/// Xavier-uniform weights (`U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`) and biases
/// `U(-0.1, 0.1)`, from `uniform` in `[-1, 1)`: the initialisation of the GPU tests and of the
/// PyTorch baseline.
pub fn init_params(p: &SmallMlpProblem, mut uniform: impl FnMut() -> f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(p.params());
    for l in 0..=p.depth {
        let (fan_in, fan_out) = p.layer(l);
        let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
        out.extend((0..fan_in * fan_out).map(|_| (a * uniform()) as f32));
        out.extend((0..fan_out).map(|_| (0.1 * uniform()) as f32));
    }
    out
}

impl Net {
    /// The net of `p` with `params` (the family's arena).
    pub fn of(p: &SmallMlpProblem, params: &[f32]) -> Net {
        Net::new(
            p.d_in as usize,
            p.width as usize,
            p.depth as usize,
            p.d_out as usize,
            p.activation,
            params,
        )
    }

    pub fn new(
        d_in: usize,
        width: usize,
        depth: usize,
        d_out: usize,
        activation: Activation,
        params: &[f32],
    ) -> Net {
        let net = Net {
            d_in,
            width,
            depth,
            d_out,
            activation,
            params: params.iter().map(|&v| v as f64).collect(),
        };
        assert_eq!(params.len(), net.param_count(), "arena length");
        net
    }

    pub fn param_count(&self) -> usize {
        let (_, b) = *self.offsets().last().expect("layers");
        b + self.d_out
    }

    fn offsets(&self) -> Vec<(usize, usize)> {
        layer_offsets(
            self.d_in as u32,
            self.width as u32,
            self.depth as u32,
            self.d_out as u32,
        )
    }

    /// `(fan_in, fan_out)` of layer `l`.
    fn dims(&self, l: usize) -> (usize, usize) {
        (
            if l == 0 { self.d_in } else { self.width },
            if l == self.depth {
                self.d_out
            } else {
                self.width
            },
        )
    }

    /// `W_l v` (+ `b_l` when `bias`).
    fn apply(&self, l: usize, v: &[f64], bias: bool) -> Vec<f64> {
        let (fi, fo) = self.dims(l);
        let (w, b) = self.offsets()[l];
        (0..fo)
            .map(|o| {
                let row = &self.params[w + o * fi..w + (o + 1) * fi];
                let dot: f64 = row.iter().zip(v).map(|(a, b)| a * b).sum();
                if bias {
                    dot + self.params[b + o]
                } else {
                    dot
                }
            })
            .collect()
    }

    /// `W_l^T v`.
    fn apply_t(&self, l: usize, v: &[f64]) -> Vec<f64> {
        let (fi, fo) = self.dims(l);
        let (w, _) = self.offsets()[l];
        let mut out = vec![0.0; fi];
        for (o, &vo) in v.iter().enumerate().take(fo) {
            for (i, oi) in out.iter_mut().enumerate() {
                *oi += self.params[w + o * fi + i] * vo;
            }
        }
        out
    }

    fn trace(&self, x: &[f64]) -> Trace {
        let mut inputs = vec![x.to_vec()];
        let mut z = Vec::new();
        for l in 0..=self.depth {
            let zl = self.apply(l, inputs.last().expect("input"), true);
            if l < self.depth {
                inputs.push(
                    zl.iter()
                        .map(|&v| activation(self.activation, v).0)
                        .collect(),
                );
            }
            z.push(zl);
        }
        Trace { inputs, z }
    }

    /// `d_l` for `l = 0..=depth` from `d_depth = gy` (the VJP's adjoints of `z_l`).
    fn adjoints(&self, t: &Trace, gy: &[f64]) -> Vec<Vec<f64>> {
        let mut d = vec![Vec::new(); self.depth + 1];
        d[self.depth] = gy.to_vec();
        for l in (1..=self.depth).rev() {
            let h = self.apply_t(l, &d[l]);
            d[l - 1] = h
                .iter()
                .zip(&t.z[l - 1])
                .map(|(h, &z)| h * activation(self.activation, z).1)
                .collect();
        }
        d
    }

    /// Accumulate `dW_l += dz a^T`, `db_l += dz` into `grads`.
    fn outer(&self, grads: &mut [f64], l: usize, dz: &[f64], a: &[f64], bias: bool) {
        let (fi, fo) = self.dims(l);
        let (w, b) = self.offsets()[l];
        for o in 0..fo {
            for i in 0..fi {
                grads[w + o * fi + i] += dz[o] * a[i];
            }
            if bias {
                grads[b + o] += dz[o];
            }
        }
    }
}

/// Rows of a row-major `[rows, d]` array as f64.
fn rows_of<T: Copy + Into<f64>>(v: &[T], d: usize) -> Vec<Vec<f64>> {
    v.chunks(d)
        .map(|r| r.iter().map(|&a| a.into()).collect())
        .collect()
}

/// The forward pass: `y [B, d_out]` and the stash `[depth, B, width]` (activations `a_l`).
pub fn forward<T: Copy + Into<f64>>(net: &Net, x: &[T]) -> (Vec<f64>, Vec<f64>) {
    let xs = rows_of(x, net.d_in);
    let b = xs.len();
    let mut y = Vec::with_capacity(b * net.d_out);
    let mut stash = vec![0.0; net.depth * b * net.width];
    for (r, xr) in xs.iter().enumerate() {
        let t = net.trace(xr);
        y.extend_from_slice(&t.z[net.depth]);
        for l in 0..net.depth {
            stash[(l * b + r) * net.width..(l * b + r + 1) * net.width]
                .copy_from_slice(&t.inputs[l + 1]);
        }
    }
    (y, stash)
}

/// Per output of the forward pass, the size of the terms summed into it:
/// `sum_j |W_depth[o, j] a_{depth-1}[j]| + |b_depth[o]|`, `[B, d_out]`. The rounding error of
/// an fp32 evaluation is proportional to this, not to the output itself, which cancellation can
/// make arbitrarily small (one output of one row has nothing else to set the scale).
pub fn output_term_sizes<T: Copy + Into<f64>>(net: &Net, x: &[T]) -> Vec<f64> {
    let l = net.depth;
    let (fi, fo) = net.dims(l);
    let (w, b) = net.offsets()[l];
    let mut out = Vec::new();
    for xr in rows_of(x, net.d_in) {
        let t = net.trace(&xr);
        let a = &t.inputs[l];
        for o in 0..fo {
            let row = &net.params[w + o * fi..w + (o + 1) * fi];
            let terms: f64 = row.iter().zip(a).map(|(p, v)| (p * v).abs()).sum();
            out.push(terms + net.params[b + o].abs());
        }
    }
    out
}

/// The hidden pre-activations `z_l`, `l < depth`, `[depth, B, width]` (to keep test inputs
/// off the kinks of a (leaky) ReLU).
pub fn hidden_preactivations<T: Copy + Into<f64>>(net: &Net, x: &[T]) -> Vec<f64> {
    let xs = rows_of(x, net.d_in);
    let b = xs.len();
    let mut z = vec![0.0; net.depth * b * net.width];
    for (r, xr) in xs.iter().enumerate() {
        let t = net.trace(xr);
        for l in 0..net.depth {
            z[(l * b + r) * net.width..(l * b + r + 1) * net.width].copy_from_slice(&t.z[l]);
        }
    }
    z
}

/// The input VJP: `dx [B, d_in]` for `gy [B, d_out]`.
pub fn input_vjp<T: Copy + Into<f64>>(net: &Net, x: &[T], gy: &[T]) -> Vec<f64> {
    let mut dx = Vec::new();
    for (xr, gr) in rows_of(x, net.d_in).iter().zip(rows_of(gy, net.d_out)) {
        let t = net.trace(xr);
        let d = net.adjoints(&t, &gr);
        dx.extend(net.apply_t(0, &d[0]));
    }
    dx
}

/// The parameter backward: `dL/dW`, `dL/db` summed over rows, in the arena layout.
pub fn param_grad<T: Copy + Into<f64>>(net: &Net, x: &[T], gy: &[T]) -> Vec<f64> {
    let mut grads = vec![0.0; net.param_count()];
    for (xr, gr) in rows_of(x, net.d_in).iter().zip(rows_of(gy, net.d_out)) {
        let t = net.trace(xr);
        let d = net.adjoints(&t, &gr);
        for (l, (dl, al)) in d.iter().zip(&t.inputs).enumerate() {
            net.outer(&mut grads, l, dl, al, true);
        }
    }
    grads
}

/// The penalty `P = (1/B) sum_b (|u_b| - 1)^2` and `u [B, d_in]` (`u_b = grad_x D(x_b)`) of a
/// scalar critic.
pub fn penalty<T: Copy + Into<f64>>(net: &Net, x: &[T]) -> (f64, Vec<f64>) {
    assert_eq!(net.d_out, 1, "the penalty is for a scalar critic");
    let xs = rows_of(x, net.d_in);
    let b = xs.len() as f64;
    let u: Vec<f64> = xs
        .iter()
        .flat_map(|xr| {
            let d = net.adjoints(&net.trace(xr), &[1.0]);
            net.apply_t(0, &d[0])
        })
        .collect();
    let p = u
        .chunks(net.d_in)
        .map(|r| (r.iter().map(|v| v * v).sum::<f64>().sqrt() - 1.0).powi(2))
        .sum::<f64>()
        / b;
    (p, u)
}

/// `dP/dW`, `dP/db` of the penalty (reverse over forward, see the family doc).
pub fn penalty_grad<T: Copy + Into<f64>>(net: &Net, x: &[T]) -> Vec<f64> {
    penalty_grad_with(net, x, true)
}

/// `second_order = false` drops the `s''` term (a deliberately wrong derivative the unit tests
/// use to show the finite-difference check can tell).
pub(crate) fn penalty_grad_with<T: Copy + Into<f64>>(
    net: &Net,
    x: &[T],
    second_order: bool,
) -> Vec<f64> {
    assert_eq!(net.d_out, 1, "the penalty is for a scalar critic");
    let xs = rows_of(x, net.d_in);
    let nb = xs.len() as f64;
    let mut grads = vec![0.0; net.param_count()];
    for xr in &xs {
        let t = net.trace(xr);
        let d = net.adjoints(&t, &[1.0]);
        let u = net.apply_t(0, &d[0]);
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        let coef = if norm > 0.0 {
            2.0 * (norm - 1.0) / (norm * nb)
        } else {
            0.0
        };
        // Tangent forward: adot[l] = adot_{l-1} (adot[0] = ubar), zdot[l].
        let mut adot = vec![u.iter().map(|v| coef * v).collect::<Vec<f64>>()];
        let mut zdot = Vec::new();
        for l in 0..net.depth {
            let zd = net.apply(l, &adot[l], false);
            adot.push(
                zd.iter()
                    .zip(&t.z[l])
                    .map(|(zd, &z)| activation(net.activation, z).1 * zd)
                    .collect(),
            );
            zdot.push(zd);
        }
        // Reverse sweep from zbar_depth = 0, tbar_depth = 1.
        let mut zbar = vec![0.0; net.d_out];
        let mut tbar = vec![1.0; net.d_out];
        for l in (0..=net.depth).rev() {
            net.outer(&mut grads, l, &zbar, &t.inputs[l], true);
            net.outer(&mut grads, l, &tbar, &adot[l], false);
            if l == 0 {
                break;
            }
            let abar = net.apply_t(l, &zbar);
            let adbar = net.apply_t(l, &tbar);
            let (mut nz, mut nt) = (Vec::new(), Vec::new());
            for j in 0..net.width {
                let (_, d1, d2) = activation(net.activation, t.z[l - 1][j]);
                let d2 = if second_order { d2 } else { 0.0 };
                nt.push(d1 * adbar[j]);
                nz.push(d1 * abar[j] + d2 * zdot[l - 1][j] * adbar[j]);
            }
            zbar = nz;
            tbar = nt;
        }
    }
    grads
}
