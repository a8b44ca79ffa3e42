//! e4m3 codes and DeepSeek-V3 block quantisation on the CPU: the encoder the activation
//! quantiser (`templates/quant_fp8.cu`) must match bit for bit, the weight quantiser the tests
//! use, and the f64 reference product of the dequantised operands.
//!
//! The codec itself is the one `mfa_decode` reads FP8 KV caches with (round to nearest even,
//! saturating to +-448, NaN to 0x7F); it is re-exported here so FP8 code has one home for it.

pub use crate::families::mfa_decode::{e4m3_decode, e4m3_encode};

/// Channels (and weight rows) per scale block.
pub const GROUP: usize = 128;
/// Largest finite e4m3 magnitude.
pub const E4M3_MAX: f32 = 448.0;
/// Smallest amax a scale is computed from (an all-zero group gets scale 1e-4 / 448, codes 0);
/// the GPU quantiser uses the same constant (`KILN_AMAX_FLOOR`).
pub const AMAX_FLOOR: f32 = 1e-4;

/// The scale of a group whose largest magnitude is `amax`, in fp32 exactly as the GPU does it.
pub fn scale_for(amax: f32) -> f32 {
    amax.max(AMAX_FLOOR) / E4M3_MAX
}

/// Per token (row of `m`) and 128-channel group: scale = max(amax, floor) / 448 and codes
/// e4m3(x / scale). Returns codes [m, k] and scales [m, k / 128], row-major. `k % 128 == 0`.
pub fn quantize_blockwise(x: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(x.len(), m * k, "x must hold m*k values");
    assert_eq!(k % GROUP, 0, "k must be a multiple of 128");
    let groups = k / GROUP;
    let mut codes = vec![0u8; m * k];
    let mut scales = vec![0f32; m * groups];
    for row in 0..m {
        for gi in 0..groups {
            let at = row * k + gi * GROUP;
            let xs = &x[at..at + GROUP];
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = scale_for(amax);
            scales[row * groups + gi] = s;
            for (c, v) in codes[at..at + GROUP].iter_mut().zip(xs) {
                *c = e4m3_encode(v / s);
            }
        }
    }
    (codes, scales)
}

/// Per 128 x 128 block of a weight [n, k] (the last row block may be short): scale =
/// max(amax, floor) / 448 and codes e4m3(w / scale). Returns codes [n, k] and scales
/// [ceil(n / 128), k / 128], row-major. `k % 128 == 0`.
pub fn quantize_weights_128x128(w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(w.len(), n * k, "w must hold n*k values");
    assert_eq!(k % GROUP, 0, "k must be a multiple of 128");
    let (rb, kb) = (n.div_ceil(GROUP), k / GROUP);
    let mut codes = vec![0u8; n * k];
    let mut scales = vec![0f32; rb * kb];
    for bi in 0..rb {
        let rows = bi * GROUP..((bi + 1) * GROUP).min(n);
        for bj in 0..kb {
            let cols = bj * GROUP..(bj + 1) * GROUP;
            let amax = rows.clone().fold(0f32, |a, r| {
                w[r * k + cols.start..r * k + cols.end]
                    .iter()
                    .fold(a, |a, v| a.max(v.abs()))
            });
            let s = scale_for(amax);
            scales[bi * kb + bj] = s;
            for r in rows.clone() {
                for c in cols.clone() {
                    codes[r * k + c] = e4m3_encode(w[r * k + c] / s);
                }
            }
        }
    }
    (codes, scales)
}

/// The dequantised product in f64: y[i, j] = sum over k of dec(xq[i,k]) * sx[i, k/128] *
/// dec(wq[j,k]) * sw[j/128, k/128]; returns y [m, n] row-major.
pub fn reference_cpu(
    xq: &[u8],
    sx: &[f32],
    wq: &[u8],
    sw: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f64> {
    assert_eq!(k % GROUP, 0, "k must be a multiple of 128");
    let kb = k / GROUP;
    assert_eq!(xq.len(), m * k, "xq must hold m*k codes");
    assert_eq!(wq.len(), n * k, "wq must hold n*k codes");
    assert_eq!(sx.len(), m * kb, "sx must hold m * k/128 scales");
    assert_eq!(
        sw.len(),
        n.div_ceil(GROUP) * kb,
        "sw must hold ceil(n/128) * k/128 scales"
    );
    let table: Vec<f64> = (0..=255u8).map(|c| e4m3_decode(c) as f64).collect();
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut total = 0f64;
            for b in 0..kb {
                let xs = &xq[i * k + b * GROUP..i * k + (b + 1) * GROUP];
                let ws = &wq[j * k + b * GROUP..j * k + (b + 1) * GROUP];
                let dot: f64 = xs
                    .iter()
                    .zip(ws)
                    .map(|(&a, &w)| table[a as usize] * table[w as usize])
                    .sum();
                total += dot * sx[i * kb + b] as f64 * sw[(j / GROUP) * kb + b] as f64;
            }
            y[i * n + j] = total;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_code_round_trips() {
        for c in 0..=255u8 {
            let v = e4m3_decode(c);
            if v.is_nan() {
                assert_eq!(c & 0x7f, 0x7f);
                continue;
            }
            // -0 encodes as 0x80, +0 as 0x00.
            assert_eq!(e4m3_encode(v), c, "code {c:#x} = {v}");
        }
        assert_eq!(e4m3_decode(0x7e), 448.0);
        assert_eq!(e4m3_decode(0x01), 2f32.powi(-9));
    }

    #[test]
    fn encoding_rounds_to_nearest_even_and_saturates() {
        // Between 1 (0x38) and 1.125 (0x39): the tie goes to the even code.
        assert_eq!(e4m3_encode(1.0625), 0x38);
        assert_eq!(e4m3_encode(1.0626), 0x39);
        // Between 1.125 and 1.25 (0x3a): the tie goes to 0x3a.
        assert_eq!(e4m3_encode(1.1875), 0x3a);
        assert_eq!(e4m3_encode(460.0), 0x7e);
        assert_eq!(e4m3_encode(-1e9), 0xfe);
        assert_eq!(e4m3_encode(f32::INFINITY), 0x7e);
        // Half the smallest subnormal ties to zero; just above rounds up.
        assert_eq!(e4m3_encode(2f32.powi(-10)), 0x00);
        assert_eq!(e4m3_encode(2f32.powi(-10) * 1.01), 0x01);
        assert_eq!(e4m3_encode(f32::NAN), 0x7f);
    }

    #[test]
    fn blockwise_scales_map_the_largest_value_to_448() {
        let (m, k) = (3, 256);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let (codes, scales) = quantize_blockwise(&x, m, k);
        assert_eq!((codes.len(), scales.len()), (m * k, m * 2));
        for row in 0..m {
            for g in 0..2 {
                let at = row * k + g * GROUP;
                let amax = x[at..at + GROUP].iter().fold(0f32, |a, v| a.max(v.abs()));
                assert_eq!(scales[row * 2 + g], amax / 448.0);
                let top = x[at..at + GROUP]
                    .iter()
                    .position(|v| v.abs() == amax)
                    .unwrap();
                assert_eq!(codes[at + top] & 0x7f, 0x7e);
                for (c, v) in codes[at..at + GROUP].iter().zip(&x[at..at + GROUP]) {
                    let back = e4m3_decode(*c) * scales[row * 2 + g];
                    assert!((back - v).abs() <= amax / 16.0 + 1e-12);
                }
            }
        }
        // An all-zero group: the floor scale, zero codes.
        let (c, s) = quantize_blockwise(&[0.0; 128], 1, 128);
        assert!(c.iter().all(|&c| c == 0));
        assert_eq!(s[0], AMAX_FLOOR / 448.0);
    }

    #[test]
    fn weight_blocks_cover_a_short_last_row_block() {
        let (n, k) = (130, 128);
        let w: Vec<f32> = (0..n * k)
            .map(|i| if i / k >= 128 { 8.0 } else { 1.0 })
            .collect();
        let (codes, scales) = quantize_weights_128x128(&w, n, k);
        assert_eq!(scales, vec![1.0 / 448.0, 8.0 / 448.0]);
        assert!(codes.iter().all(|&c| c == 0x7e));
    }

    #[test]
    fn reference_dequantises_both_operands() {
        let (m, n, k) = (2, 3, 256);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 31) as f32 - 15.0) * 0.01)
            .collect();
        let (xq, sx) = quantize_blockwise(&x, m, k);
        let (wq, sw) = quantize_weights_128x128(&w, n, k);
        let y = reference_cpu(&xq, &sx, &wq, &sw, m, n, k);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|c| {
                        let xv = e4m3_decode(xq[i * k + c]) as f64 * sx[i * 2 + c / 128] as f64;
                        let wv = e4m3_decode(wq[j * k + c]) as f64 * sw[c / 128] as f64;
                        xv * wv
                    })
                    .sum();
                assert!((y[i * n + j] - want).abs() <= 1e-9 * want.abs().max(1.0));
                // And close to the unquantised product.
                let exact: f64 = (0..k)
                    .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                    .sum();
                assert!((y[i * n + j] - exact).abs() < 0.1 * exact.abs().max(1.0));
            }
        }
    }
}
