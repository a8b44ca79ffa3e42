//! Random `gemm_fp8` operands, and the scales that let the row-wise cuBLASLt baseline be
//! checked against the block-scaled reference.

use std::sync::OnceLock;

use kiln_codegen::families::gemm_fp8::{fp8, GemmFp8Problem, SCALE_BLOCK};
use rand::{Rng, RngCore, SeedableRng};
use rayon::prelude::*;

/// Host copies of one problem's operands: e4m3 codes and fp32 scales in kiln's layouts.
#[derive(Clone, Debug)]
pub struct Fp8Inputs {
    /// [M, K] codes.
    pub x: Vec<u8>,
    /// [M, K/128].
    pub sx: Vec<f32>,
    /// [N, K] codes.
    pub w: Vec<u8>,
    /// [ceil(N/128), K/128].
    pub sw: Vec<f32>,
}

/// The e4m3 code of 65536 evenly spaced values across [-448, 448]: a uniform 16-bit draw through
/// it is a value uniform over the e4m3 range, rounded as the quantiser rounds (never NaN).
fn code_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..65536u32)
            .map(|u| fp8::e4m3_encode(((u as f32 + 0.5) / 65536.0 * 2.0 - 1.0) * fp8::E4M3_MAX))
            .collect()
    })
}

/// `len` e4m3 codes of values uniform over (-448, 448), what quantising a group of values
/// uniform in (-a, a) with scale a / 448 gives; in parallel, reproducible from `seed`.
pub fn random_codes(seed: u64, len: usize) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    let table = code_table();
    let mut out = vec![0u8; len];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            for quad in chunk.chunks_mut(4) {
                let r = rng.next_u64();
                for (j, c) in quad.iter_mut().enumerate() {
                    *c = table[((r >> (16 * j)) & 0xffff) as usize];
                }
            }
        });
    out
}

/// Scales of groups whose magnitudes spread over ~e^3 (exp of a value uniform in (-1.5, 1.5),
/// over 448), as the quantisers give for the GPU tests' inputs.
pub fn random_scales(rng: &mut impl Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(-1.5f32..1.5).exp() / fp8::E4M3_MAX)
        .collect()
}

/// Fresh random operands for `p` (codes and scales drawn directly; see [`random_codes`]).
pub fn random_inputs(p: &GemmFp8Problem, seed: u64) -> Fp8Inputs {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let kb = k / SCALE_BLOCK as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sx = random_scales(&mut rng, m * kb);
    let sw = random_scales(&mut rng, n.div_ceil(SCALE_BLOCK as usize) * kb);
    let x = random_codes(rng.next_u64(), m * k);
    let w = random_codes(rng.next_u64(), n * k);
    Fp8Inputs { x, sx, w, sw }
}

/// Row-wise scales standing in for block ones: per token its first block's scale, per weight
/// row its block row's first scale. With them, the row-wise product equals the block-scaled
/// reference run on scales constant along K (see [`row_scales_as_blocks`]), so the row-wise
/// baseline is validated as exactly as the block one.
pub fn rowwise_scales(p: &GemmFp8Problem, sx: &[f32], sw: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let kb = (p.k / SCALE_BLOCK) as usize;
    let sx_row = (0..p.m as usize).map(|r| sx[r * kb]).collect();
    let sw_row = (0..p.n as usize)
        .map(|r| sw[(r / SCALE_BLOCK as usize) * kb])
        .collect();
    (sx_row, sw_row)
}

/// The block-layout scales (SX [M][K/128], SW [ceil(N/128)][K/128]) equal to row-wise ones
/// that are constant within each 128-row weight block.
pub fn row_scales_as_blocks(
    p: &GemmFp8Problem,
    sx_row: &[f32],
    sw_row: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let kb = (p.k / SCALE_BLOCK) as usize;
    let nb = (p.n as usize).div_ceil(SCALE_BLOCK as usize);
    let sx = sx_row
        .iter()
        .flat_map(|&s| std::iter::repeat_n(s, kb))
        .collect();
    let sw = (0..nb)
        .flat_map(|b| std::iter::repeat_n(sw_row[b * SCALE_BLOCK as usize], kb))
        .collect();
    (sx, sw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_codes_are_finite_reproducible_and_spread() {
        let a = random_codes(7, 3 << 20 | 5);
        assert_eq!(a, random_codes(7, 3 << 20 | 5));
        assert_ne!(a[..4096], random_codes(8, 4096)[..]);
        assert!(a.iter().all(|&c| c & 0x7f != 0x7f), "a NaN code");
        let big = a.iter().filter(|&&c| c & 0x7f >= 0x78).count() as f64 / a.len() as f64;
        let neg = a.iter().filter(|&&c| c & 0x80 != 0).count() as f64 / a.len() as f64;
        // Uniform over (-448, 448): half negative, and exponent 15 (|v| >= 256, which |v| >= 248
        // rounds to) for 200/448 of them.
        assert!((neg - 0.5).abs() < 0.01, "{neg}");
        assert!((big - 200.0 / 448.0).abs() < 0.01, "{big}");
    }

    #[test]
    fn row_scales_as_blocks_match_the_rowwise_product() {
        let p = GemmFp8Problem {
            m: 3,
            n: 200,
            k: 256,
        };
        let inputs = random_inputs(&p, 1);
        let (sxr, swr) = rowwise_scales(&p, &inputs.sx, &inputs.sw);
        assert_eq!((sxr.len(), swr.len()), (3, 200));
        let (bx, bw) = row_scales_as_blocks(&p, &sxr, &swr);
        let y = fp8::reference_cpu(&inputs.x, &bx, &inputs.w, &bw, 3, 200, 256);
        let dec = |c: u8| fp8::e4m3_decode(c) as f64;
        for i in 0..3 {
            for j in 0..200 {
                let dot: f64 = (0..256)
                    .map(|c| dec(inputs.x[i * 256 + c]) * dec(inputs.w[j * 256 + c]))
                    .sum();
                let want = dot * sxr[i] as f64 * swr[j] as f64;
                assert!((y[i * 200 + j] - want).abs() <= 1e-9 * want.abs().max(1e-6));
            }
        }
    }
}
