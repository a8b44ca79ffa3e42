// kiln: fp32 products on half-precision tensor cores, the `split16` math of the mlp_jet
// families (prepended to each template's text by its family; used where KILN_SPLIT16 is set).
//
// Each fp32 operand x = hi + lo with hi = fp16(x) (round to nearest, saturating at 65504: the
// TF32 bits of x wherever x is in fp16's range) and lo = x - hi, exact in fp32. A 16-deep k
// step is three mma.sync m16n8k16: hi*hi on one fp16 product, and the cross terms x*lo + lo*x
// of each 8-deep half on one more fp16 product, each factor scaled by a power of two so that
// both stay normal: x / 2^6 beside lo * 2^6 (their product unchanged). lo is at most 2^-12 of
// |x|, so both factors are about 2^-6 of |x| and stay normal fp16 down to |x| = 2^-8, and the
// cross terms keep 11 bits: about 2^-23 of a product, near fp32's 2^-24. (bf16 cross terms,
// the first version, kept 8: 2^-20, and the gradient streams of the target nets missed 1e-5
// on 5 of 24 random nets, 3 of 8 at d = 1, where fp32 itself met it: 2026-11-30, session 16.) An
// m16n8k16 takes the tensor time of a TF32 m16n8k8, so this is half of 3xTF32's six.
//
// KILN_SPLIT16_BF16_CROSS = 1 (a family that defines it before this header: mlp_jet_backward)
// keeps the bf16 cross terms: (x, lo) unscaled on one bf16 product (bf16's range holds any
// remainder). Its outputs are held to 1e-4, which ~2^-20 per product meets with room, and the
// scaling's two multiplies per split element cost the d = 2 training step 4.8% (session 16:
// 4623 -> 4845 us).
//
// A lane loads the elements it loads for a TF32 m16n8k8 (g = lane / 4, t = lane % 4: A rows
// g, g + 8 and B column g, each at k t and t + 4), for both 8-deep halves, and packs them by
// slot. In the fp16 product, slots 2t, 2t + 1, 2t + 8, 2t + 9 hold k t, t + 8, t + 4, t + 12;
// in a half's cross-term product they hold (x, lo) of k t and of k t + 4 in A, (lo, x) in B
// (scaled as above). The
// order of k within an mma does not change its sum, so packing needs only the lane's own
// registers. C: rows g, g + 8, columns 2t, 2t + 1, as for TF32.
//
// Tera note: braces are never followed by a percent sign.

#ifndef KILN_SPLIT16_BF16_CROSS
#define KILN_SPLIT16_BF16_CROSS 0
#endif

namespace kiln_split16 {

// ---- PTX wrappers: every inline-asm helper of the split16 math lives in this block ----

// c += a * b, one m16n8k16 tile of fp16 (F16) or bf16 operands.
template <bool F16>
__device__ __forceinline__ void mma_k16(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    if constexpr (F16) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 { %0, %1, %2, %3 }, { %4, %5, %6, %7 }, "
            "{ %8, %9 }, { %0, %1, %2, %3 };\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 { %0, %1, %2, %3 }, { %4, %5, %6, %7 }, "
            "{ %8, %9 }, { %0, %1, %2, %3 };\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

// h = (fp16(lo16), fp16(hi16)) as one register (lo16 in the low half), rounded to nearest,
// saturating at +-65504; f0, f1 = the two halves back in fp32.
__device__ __forceinline__ void f16_pair(float lo16, float hi16, unsigned& h, float& f0, float& f1) {
    asm("{\n.reg .b16 l, u;\n"
        "cvt.rn.satfinite.f16x2.f32 %0, %4, %3;\n"
        "mov.b32 { l, u }, %0;\n"
        "cvt.f32.f16 %1, l;\n"
        "cvt.f32.f16 %2, u;\n}\n"
        : "=r"(h), "=f"(f0), "=f"(f1)
        : "f"(lo16), "f"(hi16));
}

// (bf16(lo16), bf16(hi16)) as one register, lo16 in the low half.
__device__ __forceinline__ unsigned bf16_pair(float lo16, float hi16) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %2, %1;\n" : "=r"(r) : "f"(lo16), "f"(hi16));
    return r;
}

// ---- end of PTX wrappers ----

constexpr int KSTEP = 16;  // k per product step

// The cross terms' type (fp16 unless KILN_SPLIT16_BF16_CROSS) and their fp16 scale: x /
// CROSS_SCALE beside lo * CROSS_SCALE (see the header).
constexpr bool CROSS_F16 = !KILN_SPLIT16_BF16_CROSS;
constexpr float CROSS_SCALE = 64.f;

// x (A: low half) or lo (B: low half) with the other, for a half's cross-term product: fp16
// (x / 2^6, lo * 2^6) in A, (lo * 2^6, x / 2^6) in B; or bf16 (x, lo) and (lo, x).
template <bool A>
__device__ __forceinline__ unsigned cross_pair(float x, float lo) {
    if constexpr (!CROSS_F16) return A ? bf16_pair(x, lo) : bf16_pair(lo, x);
    const float xs = x * (1.f / CROSS_SCALE), ls = lo * CROSS_SCALE;
    unsigned h;
    float f0, f1;
    if (A)
        f16_pair(xs, ls, h, f0, f1);
    else
        f16_pair(ls, xs, h, f0, f1);
    return h;
}

// Two elements of a fragment, x at k and y at k + 8: their fp16 pair for the hi*hi product
// (x low), and the cross-term pair of each (half 0: x, half 1: y).
template <bool A>
__device__ __forceinline__ void split16(float x, float y, unsigned& h, unsigned& cx, unsigned& cy) {
    float hx, hy;
    f16_pair(x, y, h, hx, hy);
    cx = cross_pair<A>(x, x - hx);
    cy = cross_pair<A>(y, y - hy);
}

// A fragment of one step: the fp16 hi registers, and each half's cross-term ones.
struct FragA {
    unsigned h[4], c[2][4];
};
// B fragment of one step.
struct FragB {
    unsigned h[2], c[2][2];
};

// The A fragment of the step whose element (row g, k t) is at `a`: rows g and g + 8 are
// 8 * RS floats apart, k t and t + 4 are 4 * KD apart (t + 8 and t + 12: the second half).
template <int RS, int KD>
__device__ __forceinline__ void load_a(const float* a, FragA& f) {
    split16<true>(a[0], a[8 * KD], f.h[0], f.c[0][0], f.c[1][0]);
    split16<true>(a[8 * RS], a[8 * RS + 8 * KD], f.h[1], f.c[0][1], f.c[1][1]);
    split16<true>(a[4 * KD], a[12 * KD], f.h[2], f.c[0][2], f.c[1][2]);
    split16<true>(a[8 * RS + 4 * KD], a[8 * RS + 12 * KD], f.h[3], f.c[0][3], f.c[1][3]);
}

// The B fragment of the step whose element (k t, column g) is at `b`; k t and t + 4 are
// 4 * KD floats apart.
template <int KD>
__device__ __forceinline__ void load_b(const float* b, FragB& f) {
    split16<false>(b[0], b[8 * KD], f.h[0], f.c[0][0], f.c[1][0]);
    split16<false>(b[4 * KD], b[12 * KD], f.h[1], f.c[0][1], f.c[1][1]);
}

// c += a * b over one step, the cross terms first.
__device__ __forceinline__ void mma_step(float (&c)[4], const FragA& a, const FragB& b) {
    mma_k16<CROSS_F16>(c, a.c[0], b.c[0]);
    mma_k16<CROSS_F16>(c, a.c[1], b.c[1]);
    mma_k16<true>(c, a.h, b.h);
}

// Pre-split B columns. A k-vector that only ever serves as B can be split once, by the
// thread that writes it, instead of by every warp that reads it. Per 16 k, 24 words; lane t's
// six start at word 6t: the fp16 pairs (k t, t + 8) and (t + 4, t + 12), then the cross-term
// pairs of k t, t + 4, t + 8, t + 12, which is one step's B fragment in load order (three
// 64-bit loads).
constexpr int SPLIT_BLOCK_WORDS = 24;

// Write x0 at k = j and x1 at k = j + 8 (j % 16 < 8) of the pre-split column `col`.
__device__ __forceinline__ void store_b_pair(unsigned* col, int j, float x0, float x1) {
    unsigned* b = col + (j / 16) * SPLIT_BLOCK_WORDS;
    const int p = j % 16, lane_t = p % 4, m = p / 4;  // p = t + 4m for the lane t that reads it
    unsigned h;
    float h0, h1;
    f16_pair(x0, x1, h, h0, h1);
    b[6 * lane_t + m] = h;
    b[6 * lane_t + 2 + m] = cross_pair<false>(x0, x0 - h0);
    b[6 * lane_t + 4 + m] = cross_pair<false>(x1, x1 - h1);
}

// The B fragment of a step from the pre-split column block whose 16 k the step covers.
__device__ __forceinline__ void load_b_split(const unsigned* block, FragB& f) {
    const uint2* w = reinterpret_cast<const uint2*>(block + 6 * (threadIdx.x & 3));
    const uint2 h = w[0], c0 = w[1], c1 = w[2];
    f.h[0] = h.x;
    f.h[1] = h.y;
    f.c[0][0] = c0.x;
    f.c[0][1] = c0.y;
    f.c[1][0] = c1.x;
    f.c[1][1] = c1.y;
}

// Packed A fragments. A weight matrix that serves only as A, and whose values do not change
// during a launch, can be split once, before the kernel that reads it, into the registers
// of each lane's A fragment: 12 words (h[4], then c[0][4], c[1][4]) per lane, read back as
// three 16-byte loads (lanes 48 bytes apart: conflict-free). A packed slab is
// [16-deep step][16-row tile][lane][12 words].
constexpr int PACKED_FRAG_WORDS = 12;

__device__ __forceinline__ void store_a_packed(float* p, const FragA& f) {
    uint4* q = reinterpret_cast<uint4*>(p);
    q[0] = make_uint4(f.h[0], f.h[1], f.h[2], f.h[3]);
    q[1] = make_uint4(f.c[0][0], f.c[0][1], f.c[0][2], f.c[0][3]);
    q[2] = make_uint4(f.c[1][0], f.c[1][1], f.c[1][2], f.c[1][3]);
}

__device__ __forceinline__ void load_a_packed(const float* p, FragA& f) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
    const uint4 h = q[0], c0 = q[1], c1 = q[2];
    f.h[0] = h.x;
    f.h[1] = h.y;
    f.h[2] = h.z;
    f.h[3] = h.w;
    f.c[0][0] = c0.x;
    f.c[0][1] = c0.y;
    f.c[0][2] = c0.z;
    f.c[0][3] = c0.w;
    f.c[1][0] = c1.x;
    f.c[1][1] = c1.y;
    f.c[1][2] = c1.z;
    f.c[1][3] = c1.w;
}

// Lane `lane`'s packed A fragment of 16-row tile mt at 16-deep step st of a packed slab
// whose steps are MTILES tiles deep.
template <int MTILES>
__device__ __forceinline__ float* packed_frag(float* slab, int st, int mt, int lane) {
    return slab + ((st * MTILES + mt) * 32 + lane) * PACKED_FRAG_WORDS;
}

template <int MTILES>
__device__ __forceinline__ const float* packed_frag(const float* slab, int st, int mt, int lane) {
    return slab + ((st * MTILES + mt) * 32 + lane) * PACKED_FRAG_WORDS;
}

}  // namespace kiln_split16

