//! Test support: one warp's `mma.sync.m16n8k16` (row.col) emulated element by
//! element from the PTX ISA's fragment tables, so a kernel's register
//! assembly (which lane holds which element) can be checked on the CPU.

/// `a[lane][r]` holds A elements a(2r), a(2r+1) of the lane's fragment,
/// `b[lane][r]` holds b(2r), b(2r+1); adds A·B into `d[lane][0..4]`.
/// Integers keep the check exact.
#[allow(clippy::needless_range_loop)] // lane and element loops read as the hardware numbers them
pub(crate) fn mma_m16n8k16(
    a: &[[[i64; 2]; 4]; 32],
    b: &[[[i64; 2]; 2]; 32],
    d: &mut [[i64; 4]; 32],
) {
    let mut am = [[0i64; 16]; 16];
    let mut bm = [[0i64; 8]; 16];
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for i in 0..8 {
            // a0 a1: row g; a2 a3: row g+8; a4 a5: row g, cols +8; a6 a7: row g+8, cols +8.
            let row = if i < 2 || (4..6).contains(&i) {
                g
            } else {
                g + 8
            };
            let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
            am[row][col] = a[lane][i / 2][i % 2];
        }
        for i in 0..4 {
            let k = t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
            bm[k][g] = b[lane][i / 2][i % 2];
        }
    }
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for i in 0..4 {
            let row = g + if i >= 2 { 8 } else { 0 };
            let col = t * 2 + (i & 1);
            d[lane][i] += (0..16).map(|k| am[row][k] * bm[k][col]).sum::<i64>();
        }
    }
}
