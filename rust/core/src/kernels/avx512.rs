//! AVX-512 (F, BW, VL) kernels. Each has a scalar twin in `generic.rs`.
//!
//! MXFP4 activations use the split layout (`crate::mxfp4::split_even_odd`): per block
//! the 16 even elements, then the 16 odd ones, so that the low nibbles of a block's 16
//! bytes (zero-extended to 16 lanes) meet the evens and the high nibbles the odds.
//! `vpermps` indexes the 16-entry E2M1 table with the low 4 bits of each lane, so the
//! low nibble needs no mask.

use crate::mxfp4::{BLOCK, BLOCK_BYTES, E2M1, E8M0};
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn hsum(v: __m512) -> f32 {
    _mm512_reduce_add_ps(v)
}

/// Four MXFP4 rows against one split-layout activation row `xp`.
///
/// # Safety
/// The CPU must support avx512f/bw/vl; `xp.len() >= 32 * nb` and each
/// `blocks[r].len() >= 16 * nb`, where nb = `scales[0].len()` (all rows alike).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn mxfp4_dot4(xp: &[f32], blocks: [&[u8]; 4], scales: [&[u8]; 4]) -> [f32; 4] {
    let nb = scales[0].len();
    debug_assert!(xp.len() >= nb * BLOCK);
    for r in 0..4 {
        debug_assert!(blocks[r].len() >= nb * BLOCK_BYTES && scales[r].len() >= nb);
    }
    let table = _mm512_loadu_ps(E2M1.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let xptr = xp.as_ptr();
    for g in 0..nb {
        let xe = _mm512_loadu_ps(xptr.add(g * BLOCK));
        let xo = _mm512_loadu_ps(xptr.add(g * BLOCK + 16));
        for r in 0..4 {
            let bytes = _mm_loadu_si128(blocks[r].as_ptr().add(g * BLOCK_BYTES) as *const __m128i);
            let v = _mm512_cvtepu8_epi32(bytes);
            let lo = _mm512_permutexvar_ps(v, table);
            let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), table);
            let t = _mm512_fmadd_ps(hi, xo, _mm512_mul_ps(lo, xe));
            let s = _mm512_set1_ps(*E8M0.get_unchecked(*scales[r].get_unchecked(g) as usize));
            acc[r] = _mm512_fmadd_ps(t, s, acc[r]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// Decode one MXFP4 row to f32 in the split layout.
///
/// # Safety
/// avx512f/bw/vl; `blocks.len() == 16 * scales.len()`, `out.len() == 32 * scales.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn mxfp4_decode(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    debug_assert!(blocks.len() == scales.len() * BLOCK_BYTES && out.len() == scales.len() * BLOCK);
    let table = _mm512_loadu_ps(E2M1.as_ptr());
    for (g, &s) in scales.iter().enumerate() {
        let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(blocks.as_ptr().add(g * BLOCK_BYTES) as *const __m128i));
        let sc = _mm512_set1_ps(E8M0[s as usize]);
        let lo = _mm512_mul_ps(_mm512_permutexvar_ps(v, table), sc);
        let hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), table), sc);
        _mm512_storeu_ps(out.as_mut_ptr().add(g * BLOCK), lo);
        _mm512_storeu_ps(out.as_mut_ptr().add(g * BLOCK + 16), hi);
    }
}

#[inline(always)]
unsafe fn widen16(p: *const u8) -> __m512 {
    let h = _mm256_loadu_si256(p as *const __m256i);
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

#[inline(always)]
unsafe fn widen16_masked(p: *const u8, m: __mmask16) -> __m512 {
    let h = _mm256_maskz_loadu_epi16(m, p as *const i16);
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// Four bf16 rows against one f32 activation row (natural layout).
///
/// # Safety
/// avx512f/bw/vl; each `rows[r].len() == 2 * x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn bf16_dot4(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let n = x.len();
    for r in 0..4 {
        debug_assert!(rows[r].len() >= 2 * n);
    }
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut k = 0;
    while k + 16 <= n {
        let xv = _mm512_loadu_ps(x.as_ptr().add(k));
        for r in 0..4 {
            acc[r] = _mm512_fmadd_ps(widen16(rows[r].as_ptr().add(2 * k)), xv, acc[r]);
        }
        k += 16;
    }
    if k < n {
        let m: __mmask16 = (1u32 << (n - k)) as u16 - 1;
        let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(k));
        for r in 0..4 {
            acc[r] = _mm512_fmadd_ps(widen16_masked(rows[r].as_ptr().add(2 * k), m), xv, acc[r]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// Widen one bf16 row to f32.
///
/// # Safety
/// avx512f/bw/vl; `row.len() == 2 * out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn bf16_decode(row: &[u8], out: &mut [f32]) {
    let n = out.len();
    debug_assert!(row.len() >= 2 * n);
    let mut k = 0;
    while k + 16 <= n {
        _mm512_storeu_ps(out.as_mut_ptr().add(k), widen16(row.as_ptr().add(2 * k)));
        k += 16;
    }
    if k < n {
        let m: __mmask16 = (1u32 << (n - k)) as u16 - 1;
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(k), m, widen16_masked(row.as_ptr().add(2 * k), m));
    }
}

/// 4x4 tile of dot products over the first `n` elements.
///
/// # Safety
/// avx512f/bw/vl; every slice holds at least `n` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f32_tile(x: [&[f32]; 4], w: [&[f32]; 4], n: usize) -> [[f32; 4]; 4] {
    for i in 0..4 {
        debug_assert!(x[i].len() >= n && w[i].len() >= n);
    }
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let mut k = 0;
    while k < n {
        let m: __mmask16 = if k + 16 <= n { 0xffff } else { ((1u32 << (n - k)) - 1) as u16 };
        let xv = [
            _mm512_maskz_loadu_ps(m, x[0].as_ptr().add(k)),
            _mm512_maskz_loadu_ps(m, x[1].as_ptr().add(k)),
            _mm512_maskz_loadu_ps(m, x[2].as_ptr().add(k)),
            _mm512_maskz_loadu_ps(m, x[3].as_ptr().add(k)),
        ];
        for j in 0..4 {
            let wv = _mm512_maskz_loadu_ps(m, w[j].as_ptr().add(k));
            for i in 0..4 {
                acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
        k += 16;
    }
    let mut out = [[0f32; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            out[i][j] = hsum(acc[i][j]);
        }
    }
    out
}
