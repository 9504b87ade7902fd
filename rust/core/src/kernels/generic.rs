//! Portable scalar kernels: the reference twin of every SIMD kernel.
//!
//! MXFP4 activations are in natural order here (`x_layout_split() == false`).

use crate::bf16;
use crate::mxfp4::{BLOCK, BLOCK_BYTES, E2M1, E8M0};

/// Dot products of one activation row `x` [n] with four MXFP4 weight rows.
/// Per block the 32 products are summed, then scaled: the scale is a power of two.
pub fn mxfp4_dot4(x: &[f32], blocks: [&[u8]; 4], scales: [&[u8]; 4]) -> [f32; 4] {
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut acc = 0f32;
        for (g, (blk, &s)) in blocks[r].chunks_exact(BLOCK_BYTES).zip(scales[r]).enumerate() {
            let xb = &x[g * BLOCK..(g + 1) * BLOCK];
            let mut t = 0f32;
            for (j, &byte) in blk.iter().enumerate() {
                t += E2M1[(byte & 0x0f) as usize] * xb[2 * j];
                t += E2M1[(byte >> 4) as usize] * xb[2 * j + 1];
            }
            acc += t * E8M0[s as usize];
        }
        out[r] = acc;
    }
    out
}

/// Decode one MXFP4 row to f32 in natural order.
pub fn mxfp4_decode(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    crate::mxfp4::dequantize(blocks, scales, out);
}

/// Sum of `term(k)` for k in 0..n, in chunks of 32 (partial sums, then their sum): the
/// rounding error grows with 32 + n/32 terms rather than n.
#[inline]
fn blocked_sum(n: usize, term: impl Fn(usize) -> f32) -> f32 {
    let mut acc = 0f32;
    let mut k = 0;
    while k < n {
        let end = (k + BLOCK).min(n);
        acc += (k..end).map(&term).sum::<f32>();
        k = end;
    }
    acc
}

/// Dot products of `x` [n] with four bf16 rows (2n bytes each).
pub fn bf16_dot4(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    rows.map(|row| blocked_sum(x.len(), |k| x[k] * bf16::to_f32(row[2 * k], row[2 * k + 1])))
}

/// Widen one bf16 row to f32.
pub fn bf16_decode(row: &[u8], out: &mut [f32]) {
    bf16::widen(row, out);
}

/// 4x4 tile of dot products: out[i][j] = x[i] . w[j] over the first `n` elements.
pub fn f32_tile(x: [&[f32]; 4], w: [&[f32]; 4], n: usize) -> [[f32; 4]; 4] {
    let mut out = [[0f32; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            out[i][j] = blocked_sum(n, |k| x[i][k] * w[j][k]);
        }
    }
    out
}

/// "int8" (`TWO` = false) and "int16" (`TWO`: a second int8 limb) precisions: four
/// MXFP4 rows against one quantized activation row (natural order). Exact integer sums
/// per block and limb, then scaled by d/2 and the E8M0 scale.
pub fn mxfp4_dot4_int8<const TWO: bool>(x: &super::quant::QRow, blocks: [&[u8]; 4], scales: [&[u8]; 4]) -> [f32; 4] {
    use super::quant::{LIMB2, W2};
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut acc = 0f32;
        for (b, (blk, &s)) in blocks[r].chunks_exact(BLOCK_BYTES).zip(scales[r]).enumerate() {
            let dot = |q: &[i8]| -> i32 {
                let q = &q[b * BLOCK..(b + 1) * BLOCK];
                blk.iter()
                    .enumerate()
                    .map(|(j, &byte)| {
                        W2[(byte & 0x0f) as usize] as i32 * q[2 * j] as i32
                            + W2[(byte >> 4) as usize] as i32 * q[2 * j + 1] as i32
                    })
                    .sum()
            };
            let mut v = dot(x.q) as f32;
            if TWO {
                v += dot(x.q2) as f32 * LIMB2;
            }
            acc += v * x.half_d[b] * E8M0[s as usize];
        }
        out[r] = acc;
    }
    out
}

/// Q8 weights (biased codes, bf16 scales; see `crate::q8`) against one quantized
/// activation row (natural order), one limb or two (`TWO`). Exact integer sums per
/// block and limb, then scaled by the activation's d and the weight's d.
pub fn q8_dot4_int8<const TWO: bool>(x: &super::quant::QRow, codes: [&[u8]; 4], scales: [&[u16]; 4]) -> [f32; 4] {
    use super::quant::LIMB2;
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut acc = 0f32;
        for (b, (blk, &s)) in codes[r].chunks_exact(BLOCK).zip(scales[r]).enumerate() {
            let dot = |q: &[i8]| -> i32 {
                blk.iter().zip(&q[b * BLOCK..(b + 1) * BLOCK]).map(|(&c, &q)| (c as i32 - 128) * q as i32).sum()
            };
            let mut v = dot(x.q) as f32;
            if TWO {
                v += dot(x.q2) as f32 * LIMB2;
            }
            acc += v * (2.0 * x.half_d[b]) * crate::q8::scale(s);
        }
        out[r] = acc;
    }
    out
}

/// Packed GEMM step, any shape: c[j][t] = sum_k w[j][k] * xg[k * tokens + t] for every
/// row of `w` and `tokens` tokens, summed over `super::GEMM_K_CHUNK` values at a time
/// as the SIMD twins do.
pub fn gemm_panel(w: &[&[f32]], xg: &[f32], n: usize, tokens: usize, c: &mut [f32]) {
    c[..w.len() * tokens].fill(0.0);
    for k0 in (0..n).step_by(super::GEMM_K_CHUNK) {
        let k1 = (k0 + super::GEMM_K_CHUNK).min(n);
        for (j, row) in w.iter().enumerate() {
            for t in 0..tokens {
                let s: f32 = (k0..k1).map(|k| row[k] * xg[k * tokens + t]).sum();
                c[j * tokens + t] += s;
            }
        }
    }
}

/// One MXFP4 row's codes as u8 2*E2M1+12 in natural order (`out.len() == 2 * blocks.len()`).
pub fn mxfp4_codes(blocks: &[u8], out: &mut [u8]) {
    use super::quant::W2_PLUS_12;
    for (o, &byte) in out.chunks_exact_mut(2).zip(blocks) {
        o[0] = W2_PLUS_12[(byte & 0x0f) as usize];
        o[1] = W2_PLUS_12[(byte >> 4) as usize];
    }
}

/// One MXFP4 row's weights as i16 2*E2M1 values, natural order (`QForm::Pairs`).
pub fn mxfp4_words(blocks: &[u8], out: &mut [i16]) {
    use super::quant::W2;
    for (o, &byte) in out.chunks_exact_mut(2).zip(blocks) {
        o[0] = W2[(byte & 0x0f) as usize] as i16;
        o[1] = W2[(byte >> 4) as usize] as i16;
    }
}

/// Quantized packed-GEMM step on `QForm::Pairs` groups, any number of rows and groups:
/// c[j][16 g + t] (see `avx2::qgemm_panel_pairs`, whose sums this repeats exactly, in
/// the same order of f32 steps). Per block the exact integer sum of the weight words
/// times the joined values (at most 32 * 12 * 32640 < 2^24 in magnitude: exact in f32),
/// times the token's d/2 (over 256 with two limbs), then the block's scale.
pub fn qgemm_panel_pairs(words: &[&[i16]], scales: &[&[f32]], xg: &[super::quant::QGroup], nb: usize, c: &mut [f32]) {
    use super::quant::{PAIRS, QPACK_TOKENS as T};
    let g = xg.len();
    for (j, (row, sc)) in words.iter().zip(scales).enumerate() {
        for (gi, x) in xg.iter().enumerate() {
            for t in 0..T {
                let mut acc = 0f32;
                for b in 0..nb {
                    let mut s = 0i32;
                    for k in 0..BLOCK {
                        s += row[b * BLOCK + k] as i32 * x.joint[((b * PAIRS + k / 2) * T + t) * 2 + k % 2] as i32;
                    }
                    acc = (s as f32 * x.half_d[b * T + t]).mul_add(sc[b], acc);
                }
                c[(j * g + gi) * T + t] = acc;
            }
        }
    }
}

/// Quantized packed-GEMM step, any number of rows and groups: c[j][16 g + t] (see
/// `avx512::qgemm_panel`, whose sums this repeats exactly, in the same order of f32
/// steps: the limbs joined in integers, then times the token's multiplier times the
/// block's scale where that product is a normal f32, else times each in turn).
pub fn qgemm_panel<const TWO: bool>(
    codes: &[&[u8]],
    scales: &[&[f32]],
    xg: &[super::quant::QGroup],
    nb: usize,
    c: &mut [f32],
) {
    use super::quant::{LIMB2_JOIN, QPACK_TOKENS as T, QUADS};
    let limbs = if TWO { 2 } else { 1 };
    let g = xg.len();
    for (j, (row, sc)) in codes.iter().zip(scales).enumerate() {
        for (gi, x) in xg.iter().enumerate() {
            for t in 0..T {
                let mut acc = 0f32;
                for b in 0..nb {
                    let sum = |limb: usize| -> i32 {
                        let mut s = x.neg_corr[(b * limbs + limb) * T + t];
                        for quad in 0..QUADS {
                            let q = &x.q[(((b * QUADS + quad) * limbs + limb) * T + t) * 4..][..4];
                            for e in 0..4 {
                                s += row[b * BLOCK + quad * 4 + e] as i32 * q[e] as i32;
                            }
                        }
                        s
                    };
                    let f = if TWO { (LIMB2_JOIN * sum(0) + sum(1)) as f32 } else { sum(0) as f32 };
                    // As `avx512::scaled_add_exact`: f times a normal product, else in order.
                    let (hd, s) = (x.half_d[b * T + t], sc[b]);
                    let m = hd * s;
                    acc = if m.is_normal() { f.mul_add(m, acc) } else { (f * hd).mul_add(s, acc) };
                }
                c[(j * g + gi) * T + t] = acc;
            }
        }
    }
}
