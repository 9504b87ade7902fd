//! bfloat16 <-> f32. bf16 is the top half of an f32, so widening is exact.

/// Widen bf16 bits to f32.
#[inline(always)]
pub fn bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Widen one little-endian bf16 (two bytes) to f32.
#[inline(always)]
pub fn to_f32(lo: u8, hi: u8) -> f32 {
    bits_to_f32(u16::from_le_bytes([lo, hi]))
}

/// Round an f32 to bf16 bits, to nearest, ties to even (as torch does). NaN stays NaN.
#[inline]
pub fn from_f32(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// Widen a little-endian bf16 byte buffer into `out` (len = bytes.len() / 2).
pub fn widen(bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * 2);
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = to_f32(b[0], b[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rounding() {
        for &v in &[0.0f32, -0.0, 1.0, -2.5, 3.140625, f32::from_bits(0x0001_0000), f32::INFINITY] {
            let h = from_f32(v);
            let w = to_f32(h as u8, (h >> 8) as u8);
            assert_eq!(w.to_bits(), v.to_bits(), "{v}");
        }
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: ties to even -> 1.
        assert_eq!(from_f32(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3*2^-8 ties up to the even 1 + 2^-6.
        assert_eq!(from_f32(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(to_f32(from_f32(f32::NAN) as u8, (from_f32(f32::NAN) >> 8) as u8).is_nan());
    }
}
