//! The f64 CPU reference of `mfa_decode`, and the FP8 e4m3 codec tests build caches with.
//!
//! The reference reads the cache exactly as the kernel's contract describes it (ragged
//! lengths clamped to `[0, context]`, contiguous or paged rows, e4m3 codes times their
//! per-token scale) and computes `softmax(q k^T / sqrt(head_dim)) v` in f64.

use super::{MfaDecodeProblem, HEADS, HEAD_DIM};

/// The value of an e4m3 code (OCP FP8: bias 7, no infinities, 0x7F / 0xFF are NaN).
pub fn e4m3_decode(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((code >> 3) & 0x0f) as i32;
    let m = (code & 0x07) as f32;
    if e == 15 && code & 0x07 == 7 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    sign * mag
}

/// The e4m3 code nearest to `x` (ties to even), saturating to +-448; NaN maps to 0x7F.
pub fn e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = (x as f64).abs();
    const MAX_CODE: u8 = 0x7e; // 448
    if a >= 448.0 {
        return sign | MAX_CODE;
    }
    let min_normal = 2f64.powi(-6);
    let code = if a < min_normal {
        // Subnormals (and the step into the first normal): multiples of 2^-9.
        (a * 512.0).round_ties_even() as u8
    } else {
        // a = 2^e * (1 + f): e from the f64 exponent field (exact), 3 mantissa bits.
        let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
        let frac = a / 2f64.powi(e) - 1.0;
        let q = (frac * 8.0).round_ties_even() as i32;
        let (e, q) = if q == 8 { (e + 1, 0) } else { (e, q) };
        (((e + 7) << 3) | q) as u8
    };
    sign | code.min(MAX_CODE)
}

/// One cache pool (K or V) as rows of `HEAD_DIM` values.
#[derive(Clone, Copy, Debug)]
pub enum KvPool<'a> {
    /// BF16 values, already widened to f32.
    Bf16(&'a [f32]),
    /// e4m3 codes and one fp32 scale per row.
    Fp8 { codes: &'a [u8], scales: &'a [f32] },
}

impl KvPool<'_> {
    fn row(&self, row: usize, out: &mut [f64]) {
        let d = HEAD_DIM as usize;
        match self {
            KvPool::Bf16(v) => {
                for (o, &x) in out.iter_mut().zip(&v[row * d..(row + 1) * d]) {
                    *o = x as f64;
                }
            }
            KvPool::Fp8 { codes, scales } => {
                let s = scales[row] as f64;
                for (o, &c) in out.iter_mut().zip(&codes[row * d..(row + 1) * d]) {
                    *o = e4m3_decode(c) as f64 * s;
                }
            }
        }
    }
}

/// Where token `t` of sequence `b` lives in the pools.
#[derive(Clone, Copy, Debug)]
pub enum KvLayout<'a> {
    /// `[batch, max_len, HEAD_DIM]`.
    Contiguous { max_len: usize },
    /// `[num_pages, page_size, HEAD_DIM]` through `block_table[batch, max_pages]`.
    Paged {
        page_size: usize,
        block_table: &'a [i32],
        max_pages: usize,
    },
}

impl KvLayout<'_> {
    /// Pool row of token `t` of sequence `b`.
    pub fn row(&self, b: usize, t: usize) -> usize {
        match *self {
            KvLayout::Contiguous { max_len } => b * max_len + t,
            KvLayout::Paged {
                page_size,
                block_table,
                max_pages,
            } => {
                let page = block_table[b * max_pages + t / page_size];
                assert!(page >= 0, "block_table[{b}][{}] is negative", t / page_size);
                page as usize * page_size + t % page_size
            }
        }
    }
}

/// O of sequence `b` (`HEADS x HEAD_DIM`, row-major) in f64. `q` holds this sequence's
/// `HEADS x HEAD_DIM` query values; `len` is its length before clamping to `context`.
pub fn reference_cpu_sequence(
    context: usize,
    q: &[f32],
    k: KvPool,
    v: KvPool,
    layout: KvLayout,
    b: usize,
    len: i32,
) -> Vec<f64> {
    let (h, d) = (HEADS as usize, HEAD_DIM as usize);
    assert_eq!(
        q.len(),
        h * d,
        "q must hold one sequence's heads x head_dim values"
    );
    let len = (len.max(0) as usize).min(context);
    let mut out = vec![0.0f64; h * d];
    if len == 0 {
        return out;
    }
    let scale = 1.0 / (d as f64).sqrt();
    let mut scores = vec![0.0f64; h * len];
    let mut krow = vec![0.0f64; d];
    for t in 0..len {
        k.row(layout.row(b, t), &mut krow);
        for head in 0..h {
            let qr = &q[head * d..(head + 1) * d];
            let dot: f64 = qr.iter().zip(&krow).map(|(&x, &y)| x as f64 * y).sum();
            scores[head * len + t] = dot * scale;
        }
    }
    for head in 0..h {
        let s = &mut scores[head * len..(head + 1) * len];
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - m).exp();
            sum += *x;
        }
        for x in s.iter_mut() {
            *x /= sum;
        }
    }
    let mut vrow = vec![0.0f64; d];
    for t in 0..len {
        v.row(layout.row(b, t), &mut vrow);
        for head in 0..h {
            let p = scores[head * len + t];
            let o = &mut out[head * d..(head + 1) * d];
            for (x, &y) in o.iter_mut().zip(&vrow) {
                *x += p * y;
            }
        }
    }
    out
}

/// O for the whole batch (`batch x HEADS x HEAD_DIM`) in f64; `q` is `batch x HEADS x HEAD_DIM`.
pub fn reference_cpu(
    problem: &MfaDecodeProblem,
    q: &[f32],
    k: KvPool,
    v: KvPool,
    layout: KvLayout,
    seq_lens: &[i32],
) -> Vec<f64> {
    let per = (HEADS * HEAD_DIM) as usize;
    let batch = problem.batch as usize;
    assert_eq!(
        q.len(),
        batch * per,
        "q must hold batch x heads x head_dim values"
    );
    assert!(seq_lens.len() >= batch, "one length per sequence");
    let mut out = Vec::with_capacity(batch * per);
    for b in 0..batch {
        out.extend(reference_cpu_sequence(
            problem.context as usize,
            &q[b * per..(b + 1) * per],
            k,
            v,
            layout,
            b,
            seq_lens[b],
        ));
    }
    out
}
