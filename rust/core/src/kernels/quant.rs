//! Activation quantization for the "int8" and "int16" precisions: per 32-value block,
//! x ≈ d * q with d = amax / 127 and q = round(x / d) in [-127, 127]. "int16" adds a
//! second int8 limb for the remainder: x ≈ d * (q + q2 / 256), q2 = round((x/d - q) * 256)
//! in [-128, 127] (where that rounds to 128, q takes one more and q2 is -128: the same
//! value). Weights stay exact: twice an E2M1 value is an integer in [-12, 12], so each
//! block's dot product with each limb is an exact integer sum, scaled once by d/2 and
//! the block's E8M0 scale.
//!
//! Error per element: |x - d q| <= d/2 = amax/254 (int8), d/512 = amax/65024 (int16).
//! The limbs weigh 256 and 1, so the x86 int16 kernels join them as one integer, 256 q +
//! q2 (a shift; at most 32640 in magnitude), and the second limb's weight is a power of
//! two: converting the joined sum is exact. A row's result is off by at most
//! sum_b (amax_b / 254 or / 65024) * sum_j |w_bj|, plus the f32 rounding of the
//! per-block sums.
//!
//! Four orders of q: `Natural` (the scalar twins), `Grouped` (the SIMD MXFP4 kernels):
//! per four blocks, 64 bytes holding the even elements block by block, then 64 bytes of
//! odd elements, matching the low and high nibbles of the 64 code bytes (blocks past
//! the last full group hold 16 evens then 16 odds each), `Lanes` (the SIMD Q8
//! kernels): natural order, with -128 * (sum of each block's values) per block, the
//! correction for Q8's biased codes (the kernel moves it into one dword lane of the
//! block), and `Words` (AVX2's two-limb MXFP4 GEMV, `avx2::mxfp4_dot4_words`): q and q2
//! in natural order, and the limbs joined as i16s, 256 q + q2, per two blocks in the
//! order of the code words' nibbles. The packed GEMM takes many rows as a `QPack`:
//! tokens in groups of 16, each dword quad of a block stored for all 16 tokens side by
//! side (or, for AVX2's `vpmaddwd`, each pair of values joined into i16s:
//! `QForm::Pairs`).

use crate::cpu::Isa;
use crate::mxfp4::BLOCK;

/// 2 * E2M1 value of each code, plus 12 so that it is unsigned (for u8 x s8 dot
/// products); the +12 is corrected with 12 * sum(q).
pub const W2_PLUS_12: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];
/// 2 * E2M1 value of each code.
pub const W2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QLayout {
    Natural,
    Grouped,
    Lanes,
    Words,
}

/// Quantized activations of up to a few rows, reused between calls.
#[derive(Default)]
pub struct QuantX {
    pub n: usize,
    pub layout: Option<QLayout>,
    /// [rows, n] in the layout's order
    pub q: Vec<i8>,
    /// [rows, n/32]: d/2 of each block
    pub half_d: Vec<f32>,
    /// [rows, n/32]: 12 * sum(q) of each block
    pub corr: Vec<i32>,
    /// Grouped, [rows, groups, 16]: -12 * (sum of the 8 q of each dword lane);
    /// Lanes, [rows, n/32]: -128 * (sum of the 32 q of each block)
    pub lane_neg_corr: Vec<i32>,
    /// Grouped only, [rows, groups, 16]: d/2 of each lane's block
    pub lane_half_d: Vec<f32>,
    /// Second limb ("int16" only; else empty): q2, 12 * sum(q2) per block, and the lanes'
    /// -12 * sum(q2), laid out as the first limb's.
    pub q2: Vec<i8>,
    pub corr2: Vec<i32>,
    pub lane_neg_corr2: Vec<i32>,
    /// Grouped with two limbs, [rows, groups, 16]: the limbs joined as one integer
    /// 256 q + q2 (the AVX-512 kernels' form): each lane's -12 * (sum of its 8 joined
    /// values), and its d/2 / 256.
    pub lane_neg_corr_joint: Vec<i32>,
    pub lane_half_d_joint: Vec<f32>,
    /// Grouped, [rows, groups, 16]: what multiplies each lane's integer sum (d/2 / 256
    /// with two limbs, d/2 with one) as its f32 bits minus those of 1.0; 0 for a block
    /// quantized to zero. Adding a block's E8M0 scale byte << 23 gives the bits of
    /// that multiplier times the scale, exactly, for every byte in the row's
    /// `scale_range`: one integer add where a multiply would be (AVX-512 int GEMVs).
    pub lane_scale_bits: Vec<i32>,
    /// Grouped, per row: the E8M0 bytes [lo, hi] for which every lane's sum above is
    /// a normal f32 (lo > hi, none, where a block is not finite).
    pub scale_range: Vec<[u8; 2]>,
    /// Words, [rows, half lines, 64]: each half line's (two blocks') values joined as
    /// i16s, 256 q + q2 (or q with one limb), value 4j + t at 16 t + j (the AVX2 int
    /// GEMV's order: `avx2::word_codes`); past an odd last block, zeros.
    pub words: Vec<i16>,
    /// Words, [rows, half lines, 8]: what multiplies each dword lane's sum of 8 products
    /// with weights 256 * 2 * E2M1: d/2 / 256^2 (d/2 / 256 with one limb); zero past an
    /// odd last block.
    pub words_mult: Vec<f32>,
}

/// One row's view.
pub struct QRow<'a> {
    pub q: &'a [i8],
    pub half_d: &'a [f32],
    pub corr: &'a [i32],
    pub lane_neg_corr: &'a [i32],
    pub lane_half_d: &'a [f32],
    pub q2: &'a [i8],
    pub corr2: &'a [i32],
    pub lane_neg_corr2: &'a [i32],
    pub lane_neg_corr_joint: &'a [i32],
    pub lane_half_d_joint: &'a [f32],
    pub lane_scale_bits: &'a [i32],
    /// `QuantX::scale_range` ([1, 254] outside Grouped).
    pub scale_lo: u8,
    pub scale_hi: u8,
    pub words: &'a [i16],
    pub words_mult: &'a [f32],
}

/// Blocks whose amax is below this (2^-100) quantize to zero: their scale d = amax/127
/// would be an f32 subnormal without the precision the bound needs. They add at most
/// amax_b * sum|w_b| each to a result's error.
pub const TINY: f32 = 7.888_609e-31;

/// The limbs joined as one integer: LIMB2_JOIN * q + q2, LIMB2_JOIN = 1 << LIMB2_SHIFT.
pub const LIMB2_SHIFT: u32 = 8;
pub const LIMB2_JOIN: i32 = 1 << LIMB2_SHIFT;
/// Weight of the second limb.
pub const LIMB2: f32 = 1.0 / LIMB2_JOIN as f32;

/// What multiplies a block's integer sum: d/2, over LIMB2_JOIN with two limbs (their
/// sums joined).
fn sum_multiplier(half_d: f32, two_limbs: bool) -> f32 {
    if two_limbs {
        half_d * LIMB2
    } else {
        half_d
    }
}

impl QuantX {
    pub fn row(&self, i: usize) -> QRow<'_> {
        let (n, nb) = (self.n, self.n / BLOCK);
        let ng = lanes_per_row(self.layout.unwrap_or(QLayout::Natural), n);
        fn part<T>(v: &[T], i: usize, len: usize) -> &[T] {
            if v.is_empty() {
                &[]
            } else {
                &v[i * len..(i + 1) * len]
            }
        }
        QRow {
            q: &self.q[i * n..(i + 1) * n],
            half_d: &self.half_d[i * nb..(i + 1) * nb],
            corr: &self.corr[i * nb..(i + 1) * nb],
            lane_neg_corr: part(&self.lane_neg_corr, i, ng),
            lane_half_d: part(&self.lane_half_d, i, ng),
            q2: part(&self.q2, i, n),
            corr2: part(&self.corr2, i, nb),
            lane_neg_corr2: part(&self.lane_neg_corr2, i, ng),
            lane_neg_corr_joint: part(&self.lane_neg_corr_joint, i, ng),
            lane_half_d_joint: part(&self.lane_half_d_joint, i, ng),
            lane_scale_bits: part(&self.lane_scale_bits, i, ng),
            scale_lo: self.scale_range.get(i).map_or(1, |r| r[0]),
            scale_hi: self.scale_range.get(i).map_or(254, |r| r[1]),
            words: part(&self.words, i, n.div_ceil(2 * BLOCK) * 2 * BLOCK),
            words_mult: part(&self.words_mult, i, n.div_ceil(2 * BLOCK) * 8),
        }
    }

    /// Quantize `x` [m, n] (n % 32 == 0), with a second limb when `two_limbs`. Every
    /// ISA gives the same bytes (AVX-512 and AVX2 have SIMD twins of the per-block work).
    pub fn quantize(&mut self, isa: Isa, layout: QLayout, two_limbs: bool, x: &[f32], m: usize, n: usize) {
        assert_eq!(n % BLOCK, 0);
        assert_eq!(x.len(), m * n);
        let nb = n / BLOCK;
        let groups = nb / 4;
        self.n = n;
        self.layout = Some(layout);
        self.q.resize(m * n, 0);
        self.half_d.resize(m * nb, 0.0);
        self.corr.resize(m * nb, 0);
        let per_row = lanes_per_row(layout, n);
        let lanes = m * per_row;
        self.lane_neg_corr.resize(lanes, 0);
        self.lane_half_d.resize(if layout == QLayout::Grouped { lanes } else { 0 }, 0.0);
        let l2 = if two_limbs { 1 } else { 0 };
        self.q2.resize(l2 * m * n, 0);
        self.corr2.resize(l2 * m * nb, 0);
        self.lane_neg_corr2.resize(l2 * lanes, 0);
        let grouped = layout == QLayout::Grouped;
        let joint = if two_limbs && grouped { lanes } else { 0 };
        self.lane_neg_corr_joint.resize(joint, 0);
        self.lane_half_d_joint.resize(joint, 0.0);
        self.lane_scale_bits.resize(if grouped { lanes } else { 0 }, 0);
        self.scale_range.clear();
        let words = layout == QLayout::Words;
        let halves = nb.div_ceil(2);
        self.words.clear();
        self.words.resize(if words { m * halves * 2 * BLOCK } else { 0 }, 0);
        self.words_mult.clear();
        self.words_mult.resize(if words { m * halves * 8 } else { 0 }, 0.0);
        let mut qb = [0i8; BLOCK];
        let mut qb2 = [0i8; BLOCK];
        for i in 0..m {
            let mut range = ScaleRange::default();
            for b in 0..nb {
                let xb = &x[i * n + b * BLOCK..i * n + (b + 1) * BLOCK];
                let (half_d, sum, sum2) = quantize_block_on(isa, xb, two_limbs, &mut qb, &mut qb2);
                self.half_d[i * nb + b] = half_d;
                self.corr[i * nb + b] = 12 * sum;
                let lane_range = i * per_row..(i + 1) * per_row;
                place(
                    isa,
                    layout,
                    b,
                    groups,
                    &qb,
                    &mut self.q[i * n..(i + 1) * n],
                    &mut self.lane_neg_corr[lane_range.clone()],
                );
                if two_limbs {
                    self.corr2[i * nb + b] = 12 * sum2;
                    place(
                        isa,
                        layout,
                        b,
                        groups,
                        &qb2,
                        &mut self.q2[i * n..(i + 1) * n],
                        &mut self.lane_neg_corr2[lane_range],
                    );
                }
                if words {
                    // Value v of the half line at 16 (v % 4) + v / 4.
                    let line = &mut self.words[(i * halves + b / 2) * 2 * BLOCK..][..2 * BLOCK];
                    for (k, (&q, &q2)) in qb.iter().zip(&qb2).enumerate() {
                        let v = (b % 2) * BLOCK + k;
                        line[16 * (v % 4) + v / 4] =
                            if two_limbs { LIMB2_JOIN as i16 * q as i16 + q2 as i16 } else { q as i16 };
                    }
                    let at = (i * halves + b / 2) * 8 + (b % 2) * 4;
                    self.words_mult[at..at + 4].fill(sum_multiplier(half_d, two_limbs) * LIMB2);
                }
                if grouped && b < groups * 4 {
                    let first = i * groups * 16 + (b / 4) * 16 + (b % 4) * 4;
                    self.lane_half_d[first..first + 4].fill(half_d);
                    let mult = sum_multiplier(half_d, two_limbs);
                    if joint > 0 {
                        for l in first..first + 4 {
                            // At most 256 * 12192 + 12288 in magnitude.
                            self.lane_neg_corr_joint[l] = LIMB2_JOIN * self.lane_neg_corr[l] + self.lane_neg_corr2[l];
                        }
                        self.lane_half_d_joint[first..first + 4].fill(mult);
                    }
                    self.lane_scale_bits[first..first + 4].fill(range.add(mult));
                }
            }
            if grouped {
                self.scale_range.push(range.bytes());
            }
        }
    }
}

/// The E8M0 scale bytes e for which a multiplier's f32 bits minus those of 1.0, plus
/// e << 23, are the bits of multiplier * 2^(e - 127), a normal f32: E + e - 127 in
/// [1, 254] for the multiplier's biased exponent E, over every multiplier added.
struct ScaleRange {
    lo: i32,
    hi: i32,
}

impl Default for ScaleRange {
    fn default() -> Self {
        ScaleRange { lo: 1, hi: 254 }
    }
}

impl ScaleRange {
    /// Narrow the range to `mult` (a block's d/2, or d/2 / 256) and return its bits
    /// (0 for zero: any scale then gives a normal f32, and its sums are zero).
    fn add(&mut self, mult: f32) -> i32 {
        if mult == 0.0 {
            return 0;
        }
        let e = (mult.to_bits() >> 23) as i32;
        if !mult.is_finite() || e == 0 {
            (self.lo, self.hi) = (255, 0);
        } else {
            (self.lo, self.hi) = (self.lo.max(128 - e), self.hi.min(381 - e));
        }
        mult.to_bits() as i32 - 1f32.to_bits() as i32
    }

    fn bytes(&self) -> [u8; 2] {
        [self.lo.clamp(0, 255) as u8, self.hi.clamp(0, 255) as u8]
    }
}

/// `quantize_block` on `isa`'s path (every path gives the same bytes).
fn quantize_block_on(
    isa: Isa,
    xb: &[f32],
    two_limbs: bool,
    qb: &mut [i8; BLOCK],
    qb2: &mut [i8; BLOCK],
) -> (f32, i32, i32) {
    match isa {
        // SAFETY: the Avx512 path is only selected on CPUs with avx512f/bw/vl.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { super::avx512::quantize_block(xb, two_limbs, qb, qb2) },
        // SAFETY: the Avx2 path is only selected on CPUs with avx2/fma.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { super::avx2::quantize_block(xb, two_limbs, qb, qb2) },
        _ => quantize_block(xb, two_limbs, qb, qb2),
    }
}

/// Quantize one block into `qb` (and its remainder into `qb2` when `two_limbs`):
/// returns (d/2, sum(q), sum(q2)). d/2 is NaN for a block with a non-finite value, so
/// that its results are NaN, as f32 arithmetic would make them.
fn quantize_block(xb: &[f32], two_limbs: bool, qb: &mut [i8; BLOCK], qb2: &mut [i8; BLOCK]) -> (f32, i32, i32) {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let finite = xb.iter().all(|v| v.is_finite());
    let (d, inv) = if finite { block_scale(amax) } else { (0.0, 0.0) };
    let (mut sum, mut sum2) = (0i32, 0i32);
    for ((q, q2), &v) in qb.iter_mut().zip(qb2.iter_mut()).zip(xb) {
        let y = v * inv;
        let r = ((y + MAGIC) - MAGIC).clamp(-127.0, 127.0);
        *q = r as i8;
        sum += *q as i32;
        if two_limbs {
            // y - r is exact (Sterbenz) and in [-0.5, 0.5], so t is in [-128, 128]; 128
            // (y - r >= 127.5/256, so r <= 126) carries into q.
            let t = ((y - r) * 256.0 + MAGIC) - MAGIC;
            let carry = t == 128.0;
            *q2 = if carry { -128 } else { t as i8 };
            if carry {
                *q += 1;
                sum += 1;
            }
            sum2 += *q2 as i32;
        }
    }
    (if finite { d * 0.5 } else { f32::NAN }, sum, sum2)
}

/// A finite block's scale d = amax / 127 and 127 / amax, the same on every path; blocks
/// below TINY (where d would be subnormal) quantize to zero.
#[inline(always)]
pub(crate) fn block_scale(amax: f32) -> (f32, f32) {
    if amax >= TINY {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    }
}

/// Rounds to nearest even by the 1.5 * 2^23 trick (for |y| <= 2^22): (y + MAGIC) - MAGIC.
pub(crate) const MAGIC: f32 = 12_582_912.0;

/// Tokens per group of a `QPack`.
pub const QPACK_TOKENS: usize = 16;
/// Dword quads (4 values each) per 32-value block.
pub const QUADS: usize = BLOCK / 4;

/// Quantized activations of many rows (the quantized packed GEMM, m > 4), in groups of
/// `QPACK_TOKENS` tokens, in one of two forms (`QForm`). Tokens past m are zero (d/2 = 0).
#[derive(Default)]
pub struct QPack {
    pub groups: usize,
    pub nb: usize,
    pub limbs: usize,
    pub form: QForm,
    /// Quads: [groups][nb][QUADS][limbs][16 tokens][4]
    pub q: Vec<i8>,
    /// Quads: [groups][nb][limbs][16 tokens]: -12 * sum(q) of each token's block
    pub neg_corr: Vec<i32>,
    /// [groups][nb][16 tokens]: what multiplies each token's integer block sum: d/2,
    /// over 256 with two limbs (their sums joined, 256 s1 + s2)
    pub half_d: Vec<f32>,
    /// [groups][nb][16 tokens]: that multiplier as `QuantX::lane_scale_bits` has it
    /// (f32 bits minus those of 1.0; 0 for a block quantized to zero or a token past m)
    pub scale_bits: Vec<i32>,
    /// The E8M0 bytes [lo, hi] for which every token's bits plus `byte << 23` are the
    /// exact product, a normal f32 (lo > hi: none).
    pub scale_range: [u8; 2],
    /// Pairs: [groups][nb][PAIRS][16 tokens][2]: 256 q + q2 (two limbs) or q (one)
    pub joint: Vec<i16>,
}

/// How a `QPack` stores a group's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QForm {
    /// For `vpdpbusd` (AVX-512 VNNI, the scalar twin): int8 limbs, each dword quad of a
    /// block stored for all 16 tokens side by side (one 512-bit register), against a
    /// broadcast quad of u8 weight codes.
    #[default]
    Quads,
    /// For `vpmaddwd` (AVX2): the limbs joined as one i16 (at most 256 * 127 + 128 =
    /// 32640 in magnitude), each pair of values stored for all 16 tokens side by side
    /// (two 256-bit registers), against a broadcast pair of i16 weights.
    Pairs,
}

/// i16 pairs per 32-value block (`QForm::Pairs`).
pub const PAIRS: usize = BLOCK / 2;

/// One group of a `QPack`.
#[derive(Clone, Copy)]
pub struct QGroup<'a> {
    pub q: &'a [i8],
    pub neg_corr: &'a [i32],
    pub half_d: &'a [f32],
    pub scale_bits: &'a [i32],
    pub joint: &'a [i16],
}

impl QPack {
    /// Quantize `x` [m, n] (as `QuantX::quantize`: the same values, another order) in
    /// `form`.
    pub fn pack(&mut self, isa: Isa, form: QForm, two_limbs: bool, x: &[f32], m: usize, n: usize) {
        assert_eq!(n % BLOCK, 0);
        assert_eq!(x.len(), m * n);
        let (nb, limbs, groups) = (n / BLOCK, if two_limbs { 2 } else { 1 }, m.div_ceil(QPACK_TOKENS));
        (self.groups, self.nb, self.limbs, self.form) = (groups, nb, limbs, form);
        const T: usize = QPACK_TOKENS;
        let quads = form == QForm::Quads;
        self.q.clear();
        self.q.resize(if quads { groups * nb * QUADS * limbs * T * 4 } else { 0 }, 0);
        self.neg_corr.clear();
        self.neg_corr.resize(if quads { groups * nb * limbs * T } else { 0 }, 0);
        self.half_d.clear();
        self.half_d.resize(groups * nb * T, 0.0);
        self.scale_bits.clear();
        self.scale_bits.resize(groups * nb * T, 0);
        let mut range = ScaleRange::default();
        self.joint.clear();
        self.joint.resize(if quads { 0 } else { groups * nb * BLOCK * T }, 0);
        let (mut qb, mut qb2) = ([0i8; BLOCK], [0i8; BLOCK]);
        for i in 0..m {
            let (g, t) = (i / T, i % T);
            for b in 0..nb {
                let (half_d, sum, sum2) =
                    quantize_block_on(isa, &x[i * n + b * BLOCK..][..BLOCK], two_limbs, &mut qb, &mut qb2);
                let gb = g * nb + b;
                let mult = sum_multiplier(half_d, two_limbs);
                self.half_d[gb * T + t] = mult;
                self.scale_bits[gb * T + t] = range.add(mult);
                if !quads {
                    for (k, (&q, &q2)) in qb.iter().zip(&qb2).enumerate() {
                        let v = if two_limbs { LIMB2_JOIN as i16 * q as i16 + q2 as i16 } else { q as i16 };
                        self.joint[((gb * PAIRS + k / 2) * T + t) * 2 + k % 2] = v;
                    }
                    continue;
                }
                for (limb, (qv, s)) in [(&qb, sum), (&qb2, sum2)].into_iter().take(limbs).enumerate() {
                    self.neg_corr[(gb * limbs + limb) * T + t] = -12 * s;
                    for quad in 0..QUADS {
                        let at = (((gb * QUADS + quad) * limbs + limb) * T + t) * 4;
                        self.q[at..at + 4].copy_from_slice(&qv[quad * 4..quad * 4 + 4]);
                    }
                }
            }
        }
        self.scale_range = range.bytes();
    }

    pub fn group(&self, g: usize) -> QGroup<'_> {
        let (nb, limbs, t) = (self.nb, self.limbs, QPACK_TOKENS);
        let part = |len: usize| g * len..(g + 1) * len;
        match self.form {
            QForm::Quads => QGroup {
                q: &self.q[part(nb * QUADS * limbs * t * 4)],
                neg_corr: &self.neg_corr[part(nb * limbs * t)],
                half_d: &self.half_d[part(nb * t)],
                scale_bits: &self.scale_bits[part(nb * t)],
                joint: &[],
            },
            QForm::Pairs => QGroup {
                q: &[],
                neg_corr: &[],
                half_d: &self.half_d[part(nb * t)],
                scale_bits: &self.scale_bits[part(nb * t)],
                joint: &self.joint[part(nb * BLOCK * t)],
            },
        }
    }
}

/// Lane corrections per row of n values.
fn lanes_per_row(layout: QLayout, n: usize) -> usize {
    match layout {
        QLayout::Natural | QLayout::Words => 0,
        QLayout::Grouped => n / BLOCK / 4 * 16,
        QLayout::Lanes => n / BLOCK,
    }
}

/// Write block `b`'s quantized values into `row` in `layout` order, and its lanes'
/// corrections into `lanes` (the row's lanes): Grouped (full groups), -12 * the sum of
/// each dword lane's 8 values; Lanes, -128 * the sum of the block's values.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn place(isa: Isa, layout: QLayout, b: usize, groups: usize, qb: &[i8; BLOCK], row: &mut [i8], lanes: &mut [i32]) {
    match layout {
        // SAFETY: the Avx512 and Avx2 paths are only selected on CPUs with avx2.
        #[cfg(target_arch = "x86_64")]
        QLayout::Grouped if b < groups * 4 && matches!(isa, Isa::Avx512 | Isa::Avx2) => {
            let (g, mm) = (b / 4, b % 4);
            let (evens, odds) = row[g * 128..g * 128 + 128].split_at_mut(64);
            let lanes = &mut lanes[g * 16 + mm * 4..g * 16 + mm * 4 + 4];
            unsafe { super::avx2::place_grouped(qb, &mut evens[mm * 16..], &mut odds[mm * 16..], lanes) }
        }
        QLayout::Natural | QLayout::Words => row[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(qb),
        QLayout::Lanes => {
            row[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(qb);
            lanes[b] = -128 * qb.iter().map(|&q| q as i32).sum::<i32>();
        }
        QLayout::Grouped if b < groups * 4 => {
            let (g, mm) = (b / 4, b % 4);
            for j in 0..16 {
                row[g * 128 + mm * 16 + j] = qb[2 * j];
                row[g * 128 + 64 + mm * 16 + j] = qb[2 * j + 1];
            }
            for l in 0..4 {
                let s: i32 = (0..4).map(|t| qb[2 * (4 * l + t)] as i32 + qb[2 * (4 * l + t) + 1] as i32).sum();
                lanes[g * 16 + mm * 4 + l] = -12 * s;
            }
        }
        QLayout::Grouped => {
            for j in 0..16 {
                row[b * BLOCK + j] = qb[2 * j];
                row[b * BLOCK + 16 + j] = qb[2 * j + 1];
            }
        }
    }
}
