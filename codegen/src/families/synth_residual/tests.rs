use super::*;
use std::collections::HashSet;

/// A small deterministic generator (xorshift), uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

struct Inputs {
    c_u: Vec<f64>,
    c_k: Vec<f64>,
    basis: Vec<f64>,
    f: Vec<f64>,
}

fn inputs(p: &SynthResidualProblem, seed: u64) -> Inputs {
    let mut r = Rng(seed | 1);
    let (nb, nx, pp) = (p.samples as usize, p.points as usize, p.p as usize);
    Inputs {
        c_u: r.vec(nb * pp),
        c_k: r.vec(nb * pp),
        basis: r.vec(nx * p.streams() * pp),
        f: r.vec(match p.forcing {
            Forcing::PerSample => nb * nx,
            Forcing::Shared => nx,
        }),
    }
}

fn problem(
    residual: Residual,
    d: u32,
    forcing: Forcing,
    nb: u32,
    nx: u32,
    p: u32,
) -> SynthResidualProblem {
    SynthResidualProblem {
        residual,
        samples: nb,
        points: nx,
        p,
        d,
        forcing,
        dcoef: true,
        dbasis: true,
    }
}

fn small_problems() -> Vec<SynthResidualProblem> {
    vec![
        problem(Residual::Elliptic1d, 1, Forcing::PerSample, 3, 5, 4),
        problem(Residual::Elliptic1d, 1, Forcing::Shared, 2, 3, 5),
        problem(Residual::Poisson, 2, Forcing::Shared, 3, 4, 3),
        problem(Residual::Poisson, 3, Forcing::PerSample, 2, 5, 4),
    ]
}

/// Entry `i` of the coefficients of u (0), of k (1) or of the basis (2).
fn slot(x: &mut Inputs, which: usize, i: usize) -> &mut f64 {
    match which {
        0 => &mut x.c_u[i],
        1 => &mut x.c_k[i],
        _ => &mut x.basis[i],
    }
}

/// The largest |analytic - central difference| over every coefficient and basis entry,
/// relative to the largest |analytic| gradient.
fn fd_mismatch(p: &SynthResidualProblem, x: &Inputs, got: &Reference) -> f64 {
    let h = 1e-6;
    let loss = |x: &Inputs| reference(p, &x.c_u, &x.c_k, &x.basis, &x.f).loss;
    let mut worst = 0.0f64;
    let mut scale = 1e-300f64;
    let mut check = |which: usize, analytic: &[f64]| {
        for (i, &a) in analytic.iter().enumerate() {
            let mut xp = Inputs {
                c_u: x.c_u.clone(),
                c_k: x.c_k.clone(),
                basis: x.basis.clone(),
                f: x.f.clone(),
            };
            let v0 = *slot(&mut xp, which, i);
            *slot(&mut xp, which, i) = v0 + h;
            let lp = loss(&xp);
            *slot(&mut xp, which, i) = v0 - h;
            let lm = loss(&xp);
            let fd = (lp - lm) / (2.0 * h);
            worst = worst.max((fd - a).abs());
            scale = scale.max(a.abs());
        }
    };
    check(0, &got.dc_u);
    if p.coef_sets() == 2 {
        check(1, &got.dc_k);
    }
    check(2, &got.dbasis);
    worst / scale
}

#[test]
fn reference_gradients_match_finite_differences() {
    for (i, p) in small_problems().iter().enumerate() {
        let x = inputs(p, 0x9e37 + i as u64);
        let r = reference(p, &x.c_u, &x.c_k, &x.basis, &x.f);
        assert!(r.loss > 0.0);
        let m = fd_mismatch(p, &x, &r);
        assert!(m < 1e-6, "{p:?}: gradient vs finite differences {m:e}");
    }
}

#[test]
fn a_perturbed_gradient_is_caught() {
    for (i, p) in small_problems().iter().enumerate() {
        let x = inputs(p, 0x51 + i as u64);
        let good = reference(p, &x.c_u, &x.c_k, &x.basis, &x.f);
        // One entry of dbasis the residual reads, and one of dc_u, off by 1% of the scale.
        let used = p.used_streams()[0].0;
        let scale = good.dbasis.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        let mut bad = good.clone();
        bad.dbasis[used * p.p as usize] += 0.01 * scale;
        assert!(
            fd_mismatch(p, &x, &bad) > 1e-3,
            "{p:?}: dbasis perturbation not caught"
        );
        let mut bad = good.clone();
        bad.dc_u[1] += 0.01 * scale;
        assert!(
            fd_mismatch(p, &x, &bad) > 1e-3,
            "{p:?}: dc_u perturbation not caught"
        );
    }
}

#[test]
fn unread_streams_have_no_gradient() {
    let p = problem(Residual::Poisson, 2, Forcing::PerSample, 2, 3, 4);
    let x = inputs(&p, 7);
    let r = reference(&p, &x.c_u, &x.c_k, &x.basis, &x.f);
    let pp = p.p as usize;
    for xi in 0..3 {
        for s in 0..p.streams() {
            let row = &r.dbasis[(xi * p.streams() + s) * pp..][..pp];
            assert_eq!(row.iter().any(|&v| v != 0.0), s == 3, "stream {s}");
        }
    }
}

#[test]
fn space_variants_and_geometry() {
    let limits = DeviceLimits::HOPPER;
    let legal = SynthResidual::legal_space(&limits);
    assert_eq!(legal.len(), SynthResidual::space().len());
    let mut entries = HashSet::new();
    for c in &legal {
        for p in SynthResidual::branch_problems() {
            SynthResidual::supports(&p).unwrap();
            if SynthResidual::check_problem(&p, c).is_err() {
                continue;
            }
            entries.insert(SynthResidual::entry(&p, c));
            let g = SynthResidual::geometry(&p, c);
            assert!(g.dynamic_smem_bytes <= limits.max_dynamic_smem_per_block);
            assert!(
                acc_per_thread(&p, c) * c.threads as usize
                    >= c.tile_points as usize * p.used_streams().len() * p.p as usize
            );
        }
    }
    assert!(
        (16..40).contains(&entries.len()),
        "{} variants",
        entries.len()
    );
    for p in SynthResidual::branch_problems() {
        let c = SynthResidual::default_config(&p);
        SynthResidual::check_config(&c, &limits).unwrap();
        SynthResidual::check_problem(&p, &c).unwrap();
    }
}

#[test]
fn workspace_counts_partials() {
    let p = problem(Residual::Elliptic1d, 1, Forcing::PerSample, 100, 401, 128);
    let c = SynthResidualConfig {
        threads: 256,
        tile_samples: 32,
        tile_points: 16,
        sample_splits: 8,
    };
    // 26 point tiles, 4 sample tiles (splits capped at 4).
    assert_eq!(point_tiles(&p, &c), 26);
    assert_eq!(splits(&p, &c), 4);
    assert_eq!(
        workspace_floats(&p, &c),
        26 * 100 * 2 * 128 + 4 * 401 * 4 * 128 + 26 * 4
    );
    let only_loss = SynthResidualProblem {
        dcoef: false,
        dbasis: false,
        ..p
    };
    assert_eq!(workspace_floats(&only_loss, &c), 26 * 4);
}

#[test]
fn unsupported_problems_say_why() {
    let mut p = problem(Residual::Elliptic1d, 2, Forcing::Shared, 1, 1, 8);
    assert!(SynthResidual::supports(&p)
        .unwrap_err()
        .reason
        .contains("1-D"));
    p = problem(Residual::Poisson, 2, Forcing::Shared, 1, 1, 129);
    assert!(SynthResidual::supports(&p).is_err());
}
