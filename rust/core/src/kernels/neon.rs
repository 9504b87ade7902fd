//! aarch64 NEON kernels. Each has a scalar twin in `generic.rs` and reads activations in
//! the same natural order: `vld2q` splits a block's elements into evens and odds, which
//! is where the low and high nibbles of its 16 code bytes go.
//!
//! MXFP4 codes become 2 * E2M1 (an integer in [-12, 12]) through one `vqtbl1q_s8` per 16
//! codes; the block's scale is then E8M0 / 2. With quantized activations the per-block
//! sums are exact integers (`dot32_s8`, or `sdot` where the CPU has FEAT_DotProd: the
//! `_sdot` kernels, which `mod.rs` picks at run time), combined in f32 in the scalar
//! twins' order, so those kernels give the scalar results bit for bit.
//!
//! NEON is part of every aarch64 target this crate builds for, so these functions only
//! need the `neon` feature that the target already enables; the dispatch in `mod.rs`
//! still checks it at run time like the x86 paths.

use super::quant::{QRow, LIMB2, W2};
use crate::mxfp4::{BLOCK, BLOCK_BYTES, E8M0};
use std::arch::aarch64::*;

/// Weight rows and tokens of one `gemm_panel` step (16 accumulators of 4 lanes).
pub const PANEL_ROWS: usize = 4;
pub const PANEL_TOKENS: usize = 16;

/// One block's 16 code bytes as the codes of its even elements (low nibbles) and of its
/// odd elements (high nibbles).
#[inline(always)]
unsafe fn block_codes(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(v))
}

/// One block's 16 code bytes as 2 * E2M1 of its (even, odd) elements.
#[inline(always)]
unsafe fn block_w2(table: int8x16_t, p: *const u8) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = block_codes(p);
    (vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi))
}

/// The sign bit of 16 codes (their bit 3) at bit 31 of four u32 vectors, lanes in
/// `block_f32`'s order: the integer path loses the sign of code 8, -0.0.
#[inline(always)]
unsafe fn code_signs(codes: uint8x16_t) -> [uint32x4_t; 4] {
    let b = vandq_u8(codes, vdupq_n_u8(8));
    let (l, h) = (vmovl_u8(vget_low_u8(b)), vmovl_high_u8(b));
    [vmovl_u16(vget_low_u16(l)), vmovl_high_u16(l), vmovl_u16(vget_low_u16(h)), vmovl_high_u16(h)]
        .map(|v| vshlq_n_u32::<28>(v))
}

/// Lanes 0-3 / 4-7 of 8 int16 as f32.
#[inline(always)]
unsafe fn lo_f32(v: int16x8_t) -> float32x4_t {
    vcvtq_f32_s32(vmovl_s16(vget_low_s16(v)))
}
#[inline(always)]
unsafe fn hi_f32(v: int16x8_t) -> float32x4_t {
    vcvtq_f32_s32(vmovl_high_s16(v))
}

/// The 32 values of a block's (evens, odds) as four (evens, odds) pairs of 4 lanes, in
/// element order: pair i holds elements 8i..8i+8.
#[inline(always)]
unsafe fn block_f32(we: int8x16_t, wo: int8x16_t) -> [(float32x4_t, float32x4_t); 4] {
    let (e0, o0) = (vmovl_s8(vget_low_s8(we)), vmovl_s8(vget_low_s8(wo)));
    let (e1, o1) = (vmovl_high_s8(we), vmovl_high_s8(wo));
    [(lo_f32(e0), lo_f32(o0)), (hi_f32(e0), hi_f32(o0)), (lo_f32(e1), lo_f32(o1)), (hi_f32(e1), hi_f32(o1))]
}

/// sum_j a0[j] * b0[j] + a1[j] * b1[j] over 16 lanes each, exactly: every int16 lane
/// adds two products of at most 128 * 127 in magnitude.
#[inline(always)]
unsafe fn dot32_s8(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> i32 {
    let lo = vmlal_s8(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)), vget_low_s8(a1), vget_low_s8(b1));
    let hi = vmlal_high_s8(vmull_high_s8(a0, b0), a1, b1);
    vaddvq_s32(vpadalq_s16(vpaddlq_s16(lo), hi))
}

/// `dot32_s8` by two `sdot`s (FEAT_DotProd: Armv8.2 and later, every Apple M-series and
/// Neoverse core), each four 4-way dot products into i32 lanes, then one `addv`: the
/// same exact integer in 3 instructions instead of 7. Written as `asm!`: the `vdotq_s32`
/// intrinsic is not stable in the Rust that CI's aarch64 job builds with (1.85).
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dot32_sdot(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> i32 {
    let mut acc = vdupq_n_s32(0);
    std::arch::asm!(
        "sdot {acc:v}.4s, {a0:v}.16b, {b0:v}.16b",
        "sdot {acc:v}.4s, {a1:v}.16b, {b1:v}.16b",
        acc = inout(vreg) acc,
        a0 = in(vreg) a0,
        b0 = in(vreg) b0,
        a1 = in(vreg) a1,
        b1 = in(vreg) b1,
        options(pure, nomem, nostack, preserves_flags),
    );
    vaddvq_s32(acc)
}

/// A block's value with one activation limb `q`, or two (`TWO`: `q2` weighs 1/256), as
/// the scalar twins combine the exact sums (`w` and each limb in the same lane order);
/// with `SDOT` the sums come from `sdot` (only inlined where dotprod is enabled).
#[inline(always)]
unsafe fn limbs_sum<const TWO: bool, const SDOT: bool>(
    w: (int8x16_t, int8x16_t),
    q: int8x16x2_t,
    q2: int8x16x2_t,
) -> f32 {
    let dot = |b: int8x16x2_t| if SDOT { dot32_sdot(w.0, w.1, b.0, b.1) } else { dot32_s8(w.0, w.1, b.0, b.1) };
    let mut v = dot(q) as f32;
    if TWO {
        v += dot(q2) as f32 * LIMB2;
    }
    v
}

/// Four MXFP4 rows against one natural-order activation row `x`.
///
/// # Safety
/// NEON; `x.len() >= 32 * nb` and each `blocks[r].len() >= 16 * nb`, where
/// nb = `scales[0].len()` (all rows alike).
#[target_feature(enable = "neon")]
pub unsafe fn mxfp4_dot4(x: &[f32], blocks: [&[u8]; 4], scales: [&[u8]; 4]) -> [f32; 4] {
    let nb = scales[0].len();
    debug_assert!(x.len() >= nb * BLOCK);
    let table = vld1q_s8(W2.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    for b in 0..nb {
        // The block's activations as (evens, odds), once for the four rows.
        let xp = x.as_ptr().add(b * BLOCK);
        let xs = [vld2q_f32(xp), vld2q_f32(xp.add(8)), vld2q_f32(xp.add(16)), vld2q_f32(xp.add(24))];
        for r in 0..4 {
            debug_assert!(blocks[r].len() >= nb * BLOCK_BYTES && scales[r].len() >= nb);
            let (we, wo) = block_w2(table, blocks[r].as_ptr().add(b * BLOCK_BYTES));
            let mut t = vdupq_n_f32(0.0);
            for (xv, (e, o)) in xs.iter().zip(block_f32(we, wo)) {
                t = vfmaq_f32(t, e, xv.0);
                t = vfmaq_f32(t, o, xv.1);
            }
            acc[r] = vfmaq_n_f32(acc[r], t, 0.5 * E8M0[*scales[r].get_unchecked(b) as usize]);
        }
    }
    acc.map(|a| vaddvq_f32(a))
}

/// Decode one MXFP4 row to f32 in natural order (equal to `mxfp4::dequantize` bit for
/// bit: (2 * E2M1) * (E8M0 / 2) is the same exact product).
///
/// # Safety
/// NEON; `blocks.len() == 16 * scales.len()`, `out.len() == 32 * scales.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn mxfp4_decode(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    let nb = scales.len();
    debug_assert!(blocks.len() == nb * BLOCK_BYTES && out.len() == nb * BLOCK);
    let table = vld1q_s8(W2.as_ptr());
    for (b, &s) in scales.iter().enumerate() {
        let (lo, hi) = block_codes(blocks.as_ptr().add(b * BLOCK_BYTES));
        let (se, so) = (code_signs(lo), code_signs(hi));
        let s = 0.5 * E8M0[s as usize];
        let signed =
            |v: float32x4_t, sign: uint32x4_t| vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(v), sign));
        let o = out.as_mut_ptr().add(b * BLOCK);
        for (i, (e, od)) in block_f32(vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi)).into_iter().enumerate() {
            // vst2q interleaves: evens to elements 8i, 8i+2, ..., odds between them.
            vst2q_f32(o.add(8 * i), float32x4x2_t(signed(vmulq_n_f32(e, s), se[i]), signed(vmulq_n_f32(od, s), so[i])));
        }
    }
}

/// 8 bf16 values (16 bytes) as two f32 vectors (lanes 0-3, 4-7): bf16 bits << 16.
#[inline(always)]
unsafe fn widen8(p: *const u8) -> (float32x4_t, float32x4_t) {
    let v = vreinterpretq_u16_u8(vld1q_u8(p));
    (vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(v))), vreinterpretq_f32_u32(vshll_high_n_u16::<16>(v)))
}

/// Four bf16 rows (2n bytes each) against one natural-order activation row.
///
/// # Safety
/// NEON; each `rows[r].len() >= 2 * x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn bf16_dot4(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let n = x.len();
    let full = n / 16 * 16;
    let xp = x.as_ptr();
    let mut out = [0f32; 4];
    for r in 0..4 {
        debug_assert!(rows[r].len() >= 2 * n);
        let row = rows[r].as_ptr();
        let mut a = [vdupq_n_f32(0.0); 4];
        for k in (0..full).step_by(16) {
            let (w0, w1) = widen8(row.add(2 * k));
            let (w2, w3) = widen8(row.add(2 * k + 16));
            a[0] = vfmaq_f32(a[0], w0, vld1q_f32(xp.add(k)));
            a[1] = vfmaq_f32(a[1], w1, vld1q_f32(xp.add(k + 4)));
            a[2] = vfmaq_f32(a[2], w2, vld1q_f32(xp.add(k + 8)));
            a[3] = vfmaq_f32(a[3], w3, vld1q_f32(xp.add(k + 12)));
        }
        let mut v = vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])));
        for k in full..n {
            v += x[k] * crate::bf16::to_f32(rows[r][2 * k], rows[r][2 * k + 1]);
        }
        out[r] = v;
    }
    out
}

/// Widen one bf16 row to f32.
///
/// # Safety
/// NEON; `row.len() == 2 * out.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn bf16_decode(row: &[u8], out: &mut [f32]) {
    debug_assert!(row.len() == 2 * out.len());
    let full = out.len() / 8 * 8;
    for k in (0..full).step_by(8) {
        let (lo, hi) = widen8(row.as_ptr().add(2 * k));
        vst1q_f32(out.as_mut_ptr().add(k), lo);
        vst1q_f32(out.as_mut_ptr().add(k + 4), hi);
    }
    crate::bf16::widen(&row[2 * full..], &mut out[full..]);
}

/// 4x4 tile of dot products: out[i][j] = x[i] . w[j] over the first `n` elements.
///
/// # Safety
/// NEON; every row holds at least n values.
#[target_feature(enable = "neon")]
pub unsafe fn f32_tile(x: [&[f32]; 4], w: [&[f32]; 4], n: usize) -> [[f32; 4]; 4] {
    for i in 0..4 {
        debug_assert!(x[i].len() >= n && w[i].len() >= n);
    }
    let full = n / 4 * 4;
    let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
    for k in (0..full).step_by(4) {
        let xv = x.map(|r| vld1q_f32(r.as_ptr().add(k)));
        let wv = w.map(|r| vld1q_f32(r.as_ptr().add(k)));
        for i in 0..4 {
            for j in 0..4 {
                acc[i][j] = vfmaq_f32(acc[i][j], xv[i], wv[j]);
            }
        }
    }
    let mut out = [[0f32; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            out[i][j] = vaddvq_f32(acc[i][j]) + (full..n).map(|k| x[i][k] * w[j][k]).sum::<f32>();
        }
    }
    out
}

/// Packed GEMM step: c[j][t] = sum_k w[j][k] * xg[k * 16 + t] for 4 weight rows and a
/// packed group of 16 tokens, summed over `super::GEMM_K_CHUNK` values at a time (as
/// the scalar twin), then added into `c`.
///
/// # Safety
/// NEON; each `w[j]` holds n values, `xg` n * 16, `c` 4 * 16.
#[target_feature(enable = "neon")]
pub unsafe fn gemm_panel(w: &[&[f32]; PANEL_ROWS], xg: &[f32], n: usize, c: &mut [f32]) {
    debug_assert!(xg.len() >= n * PANEL_TOKENS && c.len() >= PANEL_ROWS * PANEL_TOKENS);
    for r in w {
        debug_assert!(r.len() >= n);
    }
    let (xp, cp) = (xg.as_ptr(), c.as_mut_ptr());
    c[..PANEL_ROWS * PANEL_TOKENS].fill(0.0);
    for k0 in (0..n).step_by(super::GEMM_K_CHUNK) {
        let k1 = (k0 + super::GEMM_K_CHUNK).min(n);
        // acc[j][v]: row j, tokens 4v..4v+4.
        let mut acc = [[vdupq_n_f32(0.0); 4]; PANEL_ROWS];
        for k in k0..k1 {
            let xk = xp.add(k * PANEL_TOKENS);
            let xv = [vld1q_f32(xk), vld1q_f32(xk.add(4)), vld1q_f32(xk.add(8)), vld1q_f32(xk.add(12))];
            for j in 0..PANEL_ROWS {
                let wk = *w[j].get_unchecked(k);
                for v in 0..4 {
                    acc[j][v] = vfmaq_n_f32(acc[j][v], xv[v], wk);
                }
            }
        }
        for j in 0..PANEL_ROWS {
            for v in 0..4 {
                let p = cp.add(j * PANEL_TOKENS + 4 * v);
                vst1q_f32(p, vaddq_f32(vld1q_f32(p), acc[j][v]));
            }
        }
    }
}

/// "int8" / "int16" (`TWO`) precisions: four MXFP4 rows against one natural-order
/// quantized activation row, each block's sums exact, then scaled as the scalar twin
/// does (same f32 steps, same results).
///
/// # Safety
/// NEON; `x.q` (and `x.q2` with `TWO`) hold 32 * nb values and `x.half_d` nb, each
/// `blocks[r].len() >= 16 * nb`, where nb = `scales[0].len()`.
#[target_feature(enable = "neon")]
pub unsafe fn mxfp4_dot4_int8<const TWO: bool>(x: &QRow, blocks: [&[u8]; 4], scales: [&[u8]; 4]) -> [f32; 4] {
    mxfp4_dot4_int8_body::<TWO, false>(x, blocks, scales)
}

/// `mxfp4_dot4_int8` with `sdot` (the same results).
///
/// # Safety
/// As `mxfp4_dot4_int8`, on a CPU with dotprod.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn mxfp4_dot4_int8_sdot<const TWO: bool>(x: &QRow, blocks: [&[u8]; 4], scales: [&[u8]; 4]) -> [f32; 4] {
    mxfp4_dot4_int8_body::<TWO, true>(x, blocks, scales)
}

#[inline(always)]
unsafe fn mxfp4_dot4_int8_body<const TWO: bool, const SDOT: bool>(
    x: &QRow,
    blocks: [&[u8]; 4],
    scales: [&[u8]; 4],
) -> [f32; 4] {
    let nb = scales[0].len();
    debug_assert!(x.q.len() >= nb * BLOCK && x.half_d.len() >= nb && (!TWO || x.q2.len() >= nb * BLOCK));
    let table = vld1q_s8(W2.as_ptr());
    let mut acc = [0f32; 4];
    for b in 0..nb {
        // The block's activations as (evens, odds), once for the four rows.
        let q = vld2q_s8(x.q.as_ptr().add(b * BLOCK));
        let q2 = if TWO { vld2q_s8(x.q2.as_ptr().add(b * BLOCK)) } else { q };
        for r in 0..4 {
            debug_assert!(blocks[r].len() >= nb * BLOCK_BYTES && scales[r].len() >= nb);
            let w = block_w2(table, blocks[r].as_ptr().add(b * BLOCK_BYTES));
            acc[r] += limbs_sum::<TWO, SDOT>(w, q, q2) * x.half_d[b] * E8M0[*scales[r].get_unchecked(b) as usize];
        }
    }
    acc
}

/// Q8 weights (biased codes, bf16 scales; see `crate::q8`) against one natural-order
/// quantized activation row, one limb or two (`TWO`): exact sums per block, scaled as
/// the scalar twin does.
///
/// # Safety
/// NEON; `x.q` (and `x.q2`) hold 32 * nb values, `x.half_d` nb, each
/// `codes[r].len() >= 32 * nb` and `scales[r].len() >= nb`, nb = `scales[0].len()`.
#[target_feature(enable = "neon")]
pub unsafe fn q8_dot4_int8<const TWO: bool>(x: &QRow, codes: [&[u8]; 4], scales: [&[u16]; 4]) -> [f32; 4] {
    q8_dot4_int8_body::<TWO, false>(x, codes, scales)
}

/// `q8_dot4_int8` with `sdot` (the same results).
///
/// # Safety
/// As `q8_dot4_int8`, on a CPU with dotprod.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q8_dot4_int8_sdot<const TWO: bool>(x: &QRow, codes: [&[u8]; 4], scales: [&[u16]; 4]) -> [f32; 4] {
    q8_dot4_int8_body::<TWO, true>(x, codes, scales)
}

#[inline(always)]
unsafe fn q8_dot4_int8_body<const TWO: bool, const SDOT: bool>(
    x: &QRow,
    codes: [&[u8]; 4],
    scales: [&[u16]; 4],
) -> [f32; 4] {
    let nb = scales[0].len();
    debug_assert!(x.q.len() >= nb * BLOCK && x.half_d.len() >= nb && (!TWO || x.q2.len() >= nb * BLOCK));
    let bias = vdupq_n_u8(0x80);
    let mut acc = [0f32; 4];
    for b in 0..nb {
        let q = vld1q_s8_x2(x.q.as_ptr().add(b * BLOCK));
        let q2 = if TWO { vld1q_s8_x2(x.q2.as_ptr().add(b * BLOCK)) } else { q };
        for r in 0..4 {
            debug_assert!(codes[r].len() >= nb * BLOCK && scales[r].len() >= nb);
            // Codes are q + 128: flipping the top bit gives q as int8.
            let cp = codes[r].as_ptr().add(b * BLOCK);
            let w0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(cp), bias));
            let w1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(cp.add(16)), bias));
            acc[r] += limbs_sum::<TWO, SDOT>((w0, w1), q, q2)
                * (2.0 * x.half_d[b])
                * crate::q8::scale(*scales[r].get_unchecked(b));
        }
    }
    acc
}

/// One MXFP4 row's codes as u8 2*E2M1+12 in natural order (`generic::mxfp4_codes`'s
/// twin): the operand `qgemm_panel_sdot` multiplies. Codes up to 24 are the same bytes
/// as i8, so `sdot` (signed) takes them with the corrections `vpdpbusd` takes.
///
/// # Safety
/// NEON; `out.len() == 2 * blocks.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn mxfp4_codes(blocks: &[u8], out: &mut [u8]) {
    use super::quant::W2_PLUS_12;
    debug_assert_eq!(out.len(), 2 * blocks.len());
    let table = vld1q_u8(W2_PLUS_12.as_ptr());
    let full = blocks.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        let (lo, hi) = block_codes(blocks.as_ptr().add(i));
        // Interleaved: element 2k is byte k's low nibble, 2k + 1 its high one.
        vst2q_u8(out.as_mut_ptr().add(2 * i), uint8x16x2_t(vqtbl1q_u8(table, lo), vqtbl1q_u8(table, hi)));
    }
    super::generic::mxfp4_codes(&blocks[full..], &mut out[2 * full..]);
}

/// `sdot` by element: each 4-byte group of `x` against bytes 4L..4L+4 of `w`, into the
/// four i32 lanes of `acc` (asm, as `dot32_sdot`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot_lane<const L: i32>(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    std::arch::asm!(
        "sdot {acc:v}.4s, {x:v}.16b, {w:v}.4b[{l}]",
        acc = inout(vreg) acc,
        x = in(vreg) x,
        w = in(vreg) w,
        l = const L,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// Quad `quad` of block b (codes 4L..4L+4 of the 16 bytes in `w`, one register per
/// row) against the 16 tokens of group `x`: each limb's four vectors of 4 tokens.
#[inline(always)]
unsafe fn qgemm_quad<const TWO: bool, const L: i32>(
    x: &super::quant::QGroup,
    b: usize,
    quad: usize,
    w: [int8x16_t; 2],
    s1: &mut [[int32x4_t; 4]; 2],
    s2: &mut [[int32x4_t; 4]; 2],
) {
    use super::quant::{QPACK_TOKENS as T, QUADS};
    let limbs = if TWO { 2 } else { 1 };
    let p = x.q.as_ptr().add((b * QUADS + quad) * limbs * T * 4);
    for k in 0..4 {
        let x1 = vld1q_s8(p.add(16 * k));
        for r in 0..2 {
            s1[r][k] = sdot_lane::<L>(s1[r][k], x1, w[r]);
        }
        if TWO {
            let x2 = vld1q_s8(p.add(T * 4 + 16 * k));
            for r in 0..2 {
                s2[r][k] = sdot_lane::<L>(s2[r][k], x2, w[r]);
            }
        }
    }
}

/// Quantized packed-GEMM step with `sdot` (`avx512::qgemm_panel`'s form and sums, the
/// scalar twin's f32 steps: the same bits): c[j][16 g + t] for `QPANEL_ROWS` weight
/// rows and the token groups of a `QPack` (`QForm::Quads`). Two rows and one group at
/// a time: per block and limb, each quad of a row's codes is taken by element against
/// that quad of the group's 16 tokens (four vectors), 16 multiply-adds per `sdot`,
/// from the groups' -12*sum(q) corrections; the limbs' sums are joined in integers
/// (256 s1 + s2), converted once and scaled as `qgemm_panel` does, one integer add
/// for d/2 times the scale with `FAST`, else `scaled_add_exact`'s steps.
///
/// Not timed on aarch64 hardware (none here; CI runs it under qemu). Per block and
/// pair of rows (1024 multiply-adds with two limbs) it issues 128 `sdot`s and 64 loads
/// of activations, where the f32 packed GEMM it replaces on CPUs with dotprod issues
/// 256 FMAs: half the arithmetic instructions with two limbs, a quarter with one.
///
/// # Safety
/// NEON and dotprod; `codes[j]` hold 32 * nb bytes (u8 2*E2M1+12), `scales[j]` nb
/// values, each group a `QPack` group of nb blocks with 1 + TWO limbs, `c.len() >=
/// QPANEL_ROWS * 16 * xg.len()`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn qgemm_panel_sdot<const TWO: bool, const FAST: bool>(
    codes: [&[u8]; super::QPANEL_ROWS],
    scales: [&[f32]; super::QPANEL_ROWS],
    xg: &[super::quant::QGroup],
    nb: usize,
    c: &mut [f32],
) {
    use super::quant::{LIMB2_SHIFT, QPACK_TOKENS as T, QUADS};
    const R: usize = super::QPANEL_ROWS;
    let limbs = if TWO { 2 } else { 1 };
    let g = xg.len();
    for j in 0..R {
        debug_assert!(codes[j].len() >= nb * BLOCK && scales[j].len() >= nb);
    }
    debug_assert!(c.len() >= R * T * g);
    for (t, x) in xg.iter().enumerate() {
        debug_assert!(x.q.len() >= nb * QUADS * limbs * T * 4 && x.half_d.len() >= nb * T);
        for j0 in (0..R).step_by(2) {
            let mut acc = [[vdupq_n_f32(0.0); 4]; 2];
            for b in 0..nb {
                let nc = x.neg_corr.as_ptr().add(b * limbs * T);
                let mut s1 = [[vdupq_n_s32(0); 4]; 2];
                let mut s2 = [[vdupq_n_s32(0); 4]; 2];
                for k in 0..4 {
                    let (c1, c2) = (vld1q_s32(nc.add(4 * k)), vld1q_s32(nc.add((limbs - 1) * T + 4 * k)));
                    for r in 0..2 {
                        s1[r][k] = c1;
                        s2[r][k] = c2;
                    }
                }
                for half in 0..2 {
                    let w = [0, 1].map(|r| vld1q_s8(codes[j0 + r].as_ptr().add(b * BLOCK + 16 * half) as *const i8));
                    qgemm_quad::<TWO, 0>(x, b, 4 * half, w, &mut s1, &mut s2);
                    qgemm_quad::<TWO, 1>(x, b, 4 * half + 1, w, &mut s1, &mut s2);
                    qgemm_quad::<TWO, 2>(x, b, 4 * half + 2, w, &mut s1, &mut s2);
                    qgemm_quad::<TWO, 3>(x, b, 4 * half + 3, w, &mut s1, &mut s2);
                }
                for k in 0..4 {
                    let hd = vld1q_f32(x.half_d.as_ptr().add(b * T + 4 * k));
                    let bits = vld1q_s32(x.scale_bits.as_ptr().add(b * T + 4 * k));
                    for r in 0..2 {
                        let sum = if TWO {
                            vaddq_s32(vshlq_n_s32::<{ LIMB2_SHIFT as i32 }>(s1[r][k]), s2[r][k])
                        } else {
                            s1[r][k]
                        };
                        let f = vcvtq_f32_s32(sum);
                        let s = *scales[j0 + r].get_unchecked(b);
                        acc[r][k] = if FAST {
                            let m = vaddq_s32(bits, vdupq_n_s32(s.to_bits() as i32));
                            vfmaq_f32(acc[r][k], f, vreinterpretq_f32_s32(m))
                        } else {
                            // f times d/2 times the scale where that product is a normal
                            // f32, else in order (`avx512::scaled_add_exact`).
                            let m = vmulq_n_f32(hd, s);
                            let normal = vandq_u32(
                                vcgeq_f32(m, vdupq_n_f32(f32::MIN_POSITIVE)),
                                vcleq_f32(m, vdupq_n_f32(f32::MAX)),
                            );
                            let in_order = vfmaq_n_f32(acc[r][k], vmulq_f32(f, hd), s);
                            vbslq_f32(normal, vfmaq_f32(acc[r][k], f, m), in_order)
                        };
                    }
                }
            }
            for r in 0..2 {
                for k in 0..4 {
                    vst1q_f32(c.as_mut_ptr().add(((j0 + r) * g + t) * T + 4 * k), acc[r][k]);
                }
            }
        }
    }
}
