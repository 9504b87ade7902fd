//! The MXFP4 format (OCP Microscaling): 32 FP4 E2M1 values share one E8M0 scale.
//!
//! A block is 16 bytes of codes plus one scale byte. Two codes per byte: the LOW
//! nibble is the even element, the HIGH nibble the odd one. A code is sign (bit 3)
//! and a magnitude index (bits 0-2) into [0, 0.5, 1, 1.5, 2, 3, 4, 6]. The scale
//! byte b means 2^(b - 127); 255 is NaN.

use crate::error::{Error, Result};

/// Values per block.
pub const BLOCK: usize = 32;
/// Code bytes per block.
pub const BLOCK_BYTES: usize = 16;

/// The packed codes of one block (the scale lives in a separate tensor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCodes(pub [u8; BLOCK_BYTES]);
const _: () = assert!(std::mem::size_of::<BlockCodes>() == BLOCK_BYTES);

/// E2M1 value of each 4-bit code.
pub const E2M1: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// f32 value of an E8M0 scale byte: 2^(b - 127), exact (bytes 0 and 1 are f32
/// subnormal / smallest normal), 255 is NaN.
pub const fn e8m0_to_f32(b: u8) -> f32 {
    match b {
        0 => f32::from_bits(0x0040_0000), // 2^-127 is subnormal in f32
        255 => f32::NAN,
        _ => f32::from_bits((b as u32) << 23),
    }
}

/// `e8m0_to_f32` for every byte.
pub static E8M0: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e8m0_to_f32(i as u8);
        i += 1;
    }
    t
};

/// Whether any of four scale bytes (packed little-endian in `s4`) is 0 or 255, the two
/// without a plain `b << 23` f32 encoding (the SIMD kernels build the others' scales
/// by that shift).
#[inline(always)]
pub fn has_special_scale(s4: u32) -> bool {
    let has_zero = |v: u32| v.wrapping_sub(0x0101_0101) & !v & 0x8080_8080 != 0;
    has_zero(s4) || has_zero(!s4)
}

/// Dequantize `blocks` [rows*nb*16] with `scales` [rows*nb] into `out` [rows*nb*32],
/// exactly as the reference does: value = E2M1[code] * 2^(scale - 127) in f32.
pub fn dequantize(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    assert_eq!(blocks.len(), scales.len() * BLOCK_BYTES);
    assert_eq!(out.len(), scales.len() * BLOCK);
    for ((blk, &s), o) in blocks.chunks_exact(BLOCK_BYTES).zip(scales).zip(out.chunks_exact_mut(BLOCK)) {
        let scale = E8M0[s as usize];
        for (j, &byte) in blk.iter().enumerate() {
            o[2 * j] = E2M1[(byte & 0x0f) as usize] * scale;
            o[2 * j + 1] = E2M1[(byte >> 4) as usize] * scale;
        }
    }
}

/// floor(log2(|x|)) for a finite non-zero f32, exact (done on f64 bits, where every
/// f32 subnormal is normal).
fn floor_log2(x: f32) -> i32 {
    let bits = (x.abs() as f64).to_bits();
    ((bits >> 52) & 0x7ff) as i32 - 1023
}

/// Nearest E2M1 magnitude index of `a` (>= 0), ties to the even code, saturating at 6.
fn e2m1_index(a: f64) -> u8 {
    // Midpoints between neighbours; "<=" at a midpoint picks the lower (even) code,
    // "<" the upper (even) one.
    if a <= 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a <= 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a <= 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a <= 5.0 {
        6
    } else {
        7
    }
}

/// Quantize `values` [nblocks*32] to MXFP4 by the OCP rules: per block the shared
/// exponent is floor(log2(amax)) - 2 clamped to E8M0's range, each value / 2^e rounds
/// to the nearest E2M1 value (ties to even, saturating at +-6); an all-zero block gets
/// scale byte 0. Non-finite inputs are an error.
pub fn quantize(values: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<()> {
    assert_eq!(values.len() % BLOCK, 0);
    assert_eq!(blocks.len(), values.len() / 2);
    assert_eq!(scales.len(), values.len() / BLOCK);
    for (g, ((v, blk), s)) in
        values.chunks_exact(BLOCK).zip(blocks.chunks_exact_mut(BLOCK_BYTES)).zip(scales.iter_mut()).enumerate()
    {
        if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::Value(format!("quantize: value {} at index {} is not finite", v[bad], g * BLOCK + bad)));
        }
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        if amax == 0.0 {
            *s = 0;
            blk.fill(0);
            continue;
        }
        let e = (floor_log2(amax) - 2).clamp(-127, 127);
        *s = (e + 127) as u8;
        let inv = 2f64.powi(-e); // exact power of two in f64
        for (j, b) in blk.iter_mut().enumerate() {
            let code = |x: f32| {
                let q = x as f64 * inv;
                e2m1_index(q.abs()) | if q < 0.0 { 8 } else { 0 }
            };
            *b = code(v[2 * j]) | (code(v[2 * j + 1]) << 4);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_table() {
        assert_eq!(E8M0[127], 1.0);
        assert_eq!(E8M0[128], 2.0);
        assert_eq!(E8M0[126], 0.5);
        assert_eq!(E8M0[1], f32::MIN_POSITIVE);
        assert_eq!(E8M0[0], f32::MIN_POSITIVE / 2.0);
        assert_eq!(E8M0[254], 2f32.powi(127));
        assert!(E8M0[255].is_nan());
    }

    #[test]
    fn dequantize_nibble_order_and_overflow() {
        // byte 0x72: low nibble 2 (1.0) is element 0, high nibble 7 (6.0) is element 1.
        let mut blk = [0u8; 16];
        blk[0] = 0x72;
        blk[1] = 0x9f; // low 0xf = -6, high 0x9 = -0.5
        let mut out = [0f32; 32];
        dequantize(&blk, &[128], &mut out);
        assert_eq!(&out[..4], &[2.0, 12.0, -12.0, -1.0]);
        dequantize(&blk, &[254], &mut out);
        assert_eq!(out[1], f32::INFINITY);
        assert_eq!(out[2], f32::NEG_INFINITY);
        dequantize(&blk, &[255], &mut out);
        assert!(out.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn quantize_rules() {
        // amax 6 -> e = floor(log2 6) - 2 = 0 -> byte 127; ties to even.
        let mut v = [0f32; 32];
        v[..8].copy_from_slice(&[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]);
        v[8] = 100.0; // amax 100 -> e = 6 - 2 = 4, scale 16: 6.0/16 = 0.375 -> 0.5
        let (mut b, mut s) = ([0u8; 16], [0u8; 1]);
        quantize(&v, &mut b, &mut s).unwrap();
        assert_eq!(s[0], 131);
        let mut out = [0f32; 32];
        dequantize(&b, &s, &mut out);
        assert_eq!(out[0], 8.0); // 6/16 = 0.375 rounds to 0.5 -> 8
        assert_eq!(out[8], 96.0); // 100/16 = 6.25 saturates at 6 -> 96
        let v2: Vec<f32> = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -7.0]
            .into_iter()
            .chain(std::iter::repeat(0.0))
            .take(32)
            .collect();
        quantize(&v2, &mut b, &mut s).unwrap();
        assert_eq!(s[0], 127);
        dequantize(&b, &s, &mut out);
        assert_eq!(&out[..9], &[6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -6.0]);
        // All zero -> byte 0; non-finite -> error.
        quantize(&[0.0; 32], &mut b, &mut s).unwrap();
        assert_eq!((s[0], b), (0, [0u8; 16]));
        let mut bad = [0f32; 32];
        bad[3] = f32::NAN;
        assert!(quantize(&bad, &mut b, &mut s).is_err());
    }

    #[test]
    fn quantize_dequantize_round_trip_every_byte_and_scale() {
        // Scales up to 252 keep every code finite (6 * 2^126 overflows f32).
        let blocks: Vec<u8> = (0..=255u8).collect::<Vec<_>>();
        for s in 0..=252u8 {
            let scales = vec![s; blocks.len() / 16];
            let mut vals = vec![0f32; scales.len() * 32];
            dequantize(&blocks, &scales, &mut vals);
            let (mut b2, mut s2) = (vec![0u8; blocks.len()], vec![0u8; scales.len()]);
            quantize(&vals, &mut b2, &mut s2).unwrap();
            let mut back = vec![0f32; vals.len()];
            dequantize(&b2, &s2, &mut back);
            assert_eq!(vals, back, "scale {s}");
        }
    }
}
