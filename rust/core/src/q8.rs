//! Q8: int8 weights with one bf16 scale per 32 values, the opt-in format of the attention
//! and lm_head matrices (`precision="q8"`). Quantized once at load from the checkpoint's
//! bf16 matrices, a row reads 34 bytes per 32 weights instead of 64 (the size of
//! llama.cpp's Q8_0).
//!
//! Per block of 32: d = amax / 127 rounded *up* to bf16, q = round(w / d) in [-127, 127]
//! (ties to even). Rounding d up keeps |w / d| <= 127, so no value clamps and
//! |w - d q| <= d / 2 <= amax / 254 * (1 + 2^-7) for every weight. bf16 scales cover every
//! bf16 weight's range (no f16 subnormal scales for small blocks).
//!
//! Codes are stored biased, q + 128 as u8, so VNNI's u8 x s8 dot product takes them as
//! they are; kernels subtract 128 * sum(x) per lane.

use crate::bf16;
use crate::mxfp4::BLOCK;
use rayon::prelude::*;

/// Bytes per block: 32 codes + a bf16 scale.
pub const BLOCK_BYTES: usize = BLOCK + 2;

/// An owned Q8 matrix [rows, cols].
pub struct Q8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// [rows, cols]: q + 128
    pub codes: Vec<u8>,
    /// [rows, cols / 32]: bf16 bits of d
    pub scales: Vec<u16>,
}

/// The smallest bf16 >= v (v finite, >= 0), as bits.
fn bf16_round_up(v: f32) -> u16 {
    let bits = v.to_bits();
    let hi = (bits >> 16) as u16;
    if bits & 0xffff == 0 {
        hi
    } else {
        hi + 1
    }
}

/// Quantize one block of 32 values: (biased codes, scale bits).
pub fn quantize_block(w: &[f32], codes: &mut [u8]) -> u16 {
    debug_assert_eq!(w.len(), BLOCK);
    let amax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
    if !amax.is_finite() {
        // Non-finite weights: a NaN scale makes every result of this block NaN, as f32
        // arithmetic with the original weights would (inf * 0 aside).
        codes.fill(128);
        return 0x7fc0;
    }
    let d_bits = bf16_round_up(amax / 127.0);
    let d = scale(d_bits);
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    // Round half to even by adding and subtracting 1.5 * 2^23 (|v * inv| <= 127 up to
    // the rounding of inv; the clamp covers that), a form the compiler vectorizes.
    const MAGIC: f32 = 12_582_912.0;
    for (c, &v) in codes.iter_mut().zip(w) {
        let q = (((v * inv) + MAGIC) - MAGIC).clamp(-127.0, 127.0);
        *c = (q as i32 + 128) as u8;
    }
    d_bits
}

impl Q8Matrix {
    /// Quantize a bf16 matrix (little-endian bytes, [rows, cols]), rows in parallel.
    pub fn from_bf16(data: &[u8], rows: usize, cols: usize) -> Q8Matrix {
        assert!(cols % BLOCK == 0, "q8 cols {cols} not a multiple of 32");
        assert_eq!(data.len(), rows * cols * 2, "bf16 data length");
        let nb = cols / BLOCK;
        let mut codes = vec![0u8; rows * cols];
        let mut scales = vec![0u16; rows * nb];
        codes
            .par_chunks_mut(cols)
            .zip(scales.par_chunks_mut(nb))
            .zip(data.par_chunks(cols * 2))
            .for_each_init(|| vec![0f32; cols], |row, ((c, s), src)| quantize_row(src, row, c, s));
        Q8Matrix { rows, cols, codes, scales }
    }
}

/// Quantize one bf16 row (little-endian bytes, `cols` values) into its codes [cols] and
/// scales [cols / 32]; `tmp` holds `cols` f32 of scratch.
pub fn quantize_row(src: &[u8], tmp: &mut [f32], codes: &mut [u8], scales: &mut [u16]) {
    bf16::widen(src, tmp);
    for ((w, cb), sb) in tmp.chunks_exact(BLOCK).zip(codes.chunks_exact_mut(BLOCK)).zip(scales.iter_mut()) {
        *sb = quantize_block(w, cb);
    }
}

/// A block's scale as f32.
#[inline]
pub fn scale(bits: u16) -> f32 {
    crate::bf16::bits_to_f32(bits)
}

/// Decode one row (codes [cols], scales [cols/32]) to f32.
pub fn dequantize_row(codes: &[u8], scales: &[u16], out: &mut [f32]) {
    for ((o, c), &s) in out.chunks_exact_mut(BLOCK).zip(codes.chunks_exact(BLOCK)).zip(scales) {
        let d = scale(s);
        for (v, &q) in o.iter_mut().zip(c) {
            *v = (q as i32 - 128) as f32 * d;
        }
    }
}
