//! AVX2 + FMA kernels. Each has a scalar twin in `generic.rs`.
//!
//! Same split activation layout as the AVX-512 path. A block's 16 bytes are widened
//! in two halves of 8 lanes; `vpermps` only has an 8-entry table here, so the
//! magnitude comes from bits 0-2 and the sign bit (bit 3 of the nibble) is moved to
//! bit 31 and xor-ed in.

use crate::mxfp4::{has_special_scale, BLOCK, BLOCK_BYTES, E2M1, E8M0};
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The sum of a vector's 8 dwords (wrapping, as integer adds do).
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

/// Decode 8 bytes (zero-extended in `v`) into the 8 low-nibble and 8 high-nibble values.
#[inline(always)]
unsafe fn decode8(v: __m256i, mags: __m256, sign: __m256i) -> (__m256, __m256) {
    let lo_mag = _mm256_permutevar8x32_ps(mags, v);
    let lo_sign = _mm256_and_si256(_mm256_slli_epi32::<28>(v), sign);
    let hi_mag = _mm256_permutevar8x32_ps(mags, _mm256_srli_epi32::<4>(v));
    let hi_sign = _mm256_and_si256(_mm256_slli_epi32::<24>(v), sign);
    (_mm256_xor_ps(lo_mag, _mm256_castsi256_ps(lo_sign)), _mm256_xor_ps(hi_mag, _mm256_castsi256_ps(hi_sign)))
}

/// Four MXFP4 rows against one split-layout activation row `xp`.
///
/// # Safety
/// The CPU must support avx2 and fma; `xp.len() >= 32 * nb` and each
/// `blocks[r].len() >= 16 * nb`, where nb = `scales[0].len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn mxfp4_dot4(xp: &[f32], blocks: [&[u8]; 4], scales: [&[u8]; 4]) -> [f32; 4] {
    let nb = scales[0].len();
    debug_assert!(xp.len() >= nb * BLOCK);
    for r in 0..4 {
        debug_assert!(blocks[r].len() >= nb * BLOCK_BYTES && scales[r].len() >= nb);
    }
    let mags = _mm256_loadu_ps(E2M1.as_ptr());
    let sign = _mm256_set1_epi32(i32::MIN);
    let mut acc = [_mm256_setzero_ps(); 4];
    let xptr = xp.as_ptr();
    for g in 0..nb {
        let xb = xptr.add(g * BLOCK);
        let (xe0, xe1) = (_mm256_loadu_ps(xb), _mm256_loadu_ps(xb.add(8)));
        let (xo0, xo1) = (_mm256_loadu_ps(xb.add(16)), _mm256_loadu_ps(xb.add(24)));
        for r in 0..4 {
            let bytes = _mm_loadu_si128(blocks[r].as_ptr().add(g * BLOCK_BYTES) as *const __m128i);
            let (lo0, hi0) = decode8(_mm256_cvtepu8_epi32(bytes), mags, sign);
            let (lo1, hi1) = decode8(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(bytes)), mags, sign);
            let t = _mm256_mul_ps(lo0, xe0);
            let t = _mm256_fmadd_ps(lo1, xe1, t);
            let t = _mm256_fmadd_ps(hi0, xo0, t);
            let t = _mm256_fmadd_ps(hi1, xo1, t);
            let s = _mm256_set1_ps(*E8M0.get_unchecked(*scales[r].get_unchecked(g) as usize));
            acc[r] = _mm256_fmadd_ps(t, s, acc[r]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// Decode one MXFP4 row to f32 in the split layout.
///
/// # Safety
/// avx2/fma; `blocks.len() == 16 * scales.len()`, `out.len() == 32 * scales.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn mxfp4_decode(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    debug_assert!(blocks.len() == scales.len() * BLOCK_BYTES && out.len() == scales.len() * BLOCK);
    let mags = _mm256_loadu_ps(E2M1.as_ptr());
    let sign = _mm256_set1_epi32(i32::MIN);
    for (g, &s) in scales.iter().enumerate() {
        let bytes = _mm_loadu_si128(blocks.as_ptr().add(g * BLOCK_BYTES) as *const __m128i);
        let sc = _mm256_set1_ps(E8M0[s as usize]);
        let (lo0, hi0) = decode8(_mm256_cvtepu8_epi32(bytes), mags, sign);
        let (lo1, hi1) = decode8(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(bytes)), mags, sign);
        let o = out.as_mut_ptr().add(g * BLOCK);
        _mm256_storeu_ps(o, _mm256_mul_ps(lo0, sc));
        _mm256_storeu_ps(o.add(8), _mm256_mul_ps(lo1, sc));
        _mm256_storeu_ps(o.add(16), _mm256_mul_ps(hi0, sc));
        _mm256_storeu_ps(o.add(24), _mm256_mul_ps(hi1, sc));
    }
}

#[inline(always)]
unsafe fn widen8(p: *const u8) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

/// Four bf16 rows against one f32 activation row (natural layout), one row after
/// another: a single sequential stream for the hardware prefetcher (four interleaved
/// rows read 27 GB/s at 2 threads in decode, where the AVX-512 kernel, row by row,
/// reads about 50), with x from L1.
///
/// # Safety
/// avx2/fma; each `rows[r].len() >= 2 * x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn bf16_dot4(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let n = x.len();
    for r in 0..4 {
        debug_assert!(rows[r].len() >= 2 * n);
    }
    let n8 = n / 8 * 8;
    let xp = x.as_ptr();
    let mut out = [0f32; 4];
    for r in 0..4 {
        let row = rows[r].as_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut k = 0;
        // Partial sums over 256 values, then added into `acc` (bounded rounding growth).
        while k < n8 {
            let end = (k + 256).min(n8);
            // Four chains of FMAs (two held the loop to their latency): gemv bench from L2,
            // 1 thread, 47.9-48.6 against 42.6-43.0 GB/s; lm_head from memory, 1 thread,
            // 90-94% of the read bandwidth against 71-72%.
            let mut part = [_mm256_setzero_ps(); 4];
            while k + 32 <= end {
                for (i, p) in part.iter_mut().enumerate() {
                    *p = _mm256_fmadd_ps(widen8(row.add(2 * (k + 8 * i))), _mm256_loadu_ps(xp.add(k + 8 * i)), *p);
                }
                k += 32;
            }
            while k < end {
                part[0] = _mm256_fmadd_ps(widen8(row.add(2 * k)), _mm256_loadu_ps(xp.add(k)), part[0]);
                k += 8;
            }
            acc = _mm256_add_ps(acc, _mm256_add_ps(_mm256_add_ps(part[0], part[1]), _mm256_add_ps(part[2], part[3])));
        }
        let mut v = hsum(acc);
        for kk in n8..n {
            v += x[kk] * crate::bf16::to_f32(rows[r][2 * kk], rows[r][2 * kk + 1]);
        }
        out[r] = v;
    }
    out
}

/// Widen one bf16 row to f32.
///
/// # Safety
/// avx2/fma; `row.len() >= 2 * out.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn bf16_decode(row: &[u8], out: &mut [f32]) {
    let n = out.len();
    debug_assert!(row.len() >= 2 * n);
    let mut k = 0;
    while k + 8 <= n {
        _mm256_storeu_ps(out.as_mut_ptr().add(k), widen8(row.as_ptr().add(2 * k)));
        k += 8;
    }
    crate::bf16::widen(&row[2 * k..2 * n], &mut out[k..]);
}

/// The 4x4 tile of dot products over the first `n` elements, for any weight format:
/// `w8(j, k)` gives weight row j's values k..k+8 as f32, `w1(j, k)` its value k (the
/// fewer than 8 past the last full 8). Two 4x2 passes: 16 ymm registers cannot hold 16
/// accumulators plus the loads. `prefetch(j, k)` is called for each pass's two rows
/// once per 32 values.
#[inline(always)]
unsafe fn tile4x4(
    x: [&[f32]; 4],
    n: usize,
    prefetch: impl Fn(usize, usize),
    w8: impl Fn(usize, usize) -> __m256,
    w1: impl Fn(usize, usize) -> f32,
) -> [[f32; 4]; 4] {
    let mut out = [[0f32; 4]; 4];
    let n8 = n & !7;
    for jp in [0usize, 2] {
        // Partial sums over 256 values, then added into `acc` (error grows with
        // 32 + n/256 terms per lane rather than n/8).
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut k = 0;
        while k < n8 {
            let mut part = [[_mm256_setzero_ps(); 2]; 4];
            let end = (k + 256).min(n8);
            let mut step = |k: usize| {
                let (wa, wb) = (w8(jp, k), w8(jp + 1, k));
                for i in 0..4 {
                    let xv = _mm256_loadu_ps(x[i].as_ptr().add(k));
                    part[i][0] = _mm256_fmadd_ps(xv, wa, part[i][0]);
                    part[i][1] = _mm256_fmadd_ps(xv, wb, part[i][1]);
                }
            };
            while k + 32 <= end {
                prefetch(jp, k);
                prefetch(jp + 1, k);
                for o in [0, 8, 16, 24] {
                    step(k + o);
                }
                k += 32;
            }
            while k < end {
                step(k);
                k += 8;
            }
            for i in 0..4 {
                for j in 0..2 {
                    acc[i][j] = _mm256_add_ps(acc[i][j], part[i][j]);
                }
            }
        }
        for i in 0..4 {
            for j in 0..2 {
                let mut s = hsum(acc[i][j]);
                for kk in n8..n {
                    s += x[i][kk] * w1(jp + j, kk);
                }
                out[i][jp + j] = s;
            }
        }
    }
    out
}

/// 4x4 tile of dot products over the first `n` elements of f32 rows.
///
/// # Safety
/// avx2/fma; every slice holds at least `n` elements.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_tile(x: [&[f32]; 4], w: [&[f32]; 4], n: usize) -> [[f32; 4]; 4] {
    for i in 0..4 {
        debug_assert!(x[i].len() >= n && w[i].len() >= n);
    }
    tile4x4(x, n, |_, _| (), |j, k| _mm256_loadu_ps(w[j].as_ptr().add(k)), |j, k| w[j][k])
}

/// `f32_tile` straight from bf16 rows, widened in registers (no decoded copy): the
/// same bits as `f32_tile` on the rows `bf16_decode` gives. Batched decode's attention
/// and lm_head.
///
/// # Safety
/// avx2/fma; each x row holds n values and each weight row 2n bytes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn bf16_tile(x: [&[f32]; 4], w: [&[u8]; 4], n: usize) -> [[f32; 4]; 4] {
    for i in 0..4 {
        debug_assert!(x[i].len() >= n && w[i].len() >= 2 * n);
    }
    // The next call's rows (the four below: consecutive in the tensor) into L2, a line
    // of each per 32 values: the passes' interleaved row streams defeat the hardware
    // prefetcher (AVX2 8-session step 484-496 ms against 566-580 without).
    let prefetch =
        |j: usize, k: usize| _mm_prefetch::<_MM_HINT_T1>(w[j].as_ptr().wrapping_add(2 * k + 8 * n) as *const i8);
    let w8 = |j: usize, k: usize| widen8(w[j].as_ptr().add(2 * k));
    tile4x4(x, n, prefetch, w8, |j, k| crate::bf16::to_f32(w[j][2 * k], w[j][2 * k + 1]))
}

/// `f32_tile` straight from Q8 rows (codes unbiased, converted and scaled in
/// registers): the same bits as `f32_tile` on the rows `q8::dequantize_row` gives.
///
/// # Safety
/// avx2/fma; n % 32 == 0, each x row holds n values, each `codes[j]` n bytes and each
/// `scales[j]` n / 32 words.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_tile(x: [&[f32]; 4], codes: [&[u8]; 4], scales: [&[u16]; 4], n: usize) -> [[f32; 4]; 4] {
    debug_assert!(n % BLOCK == 0);
    for i in 0..4 {
        debug_assert!(x[i].len() >= n && codes[i].len() >= n && scales[i].len() >= n / BLOCK);
    }
    let bias = _mm256_set1_epi32(128);
    let w8 = |j: usize, k: usize| {
        let c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes[j].as_ptr().add(k) as *const __m128i));
        let d = crate::q8::scale(*scales[j].get_unchecked(k / BLOCK));
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, bias)), _mm256_set1_ps(d))
    };
    // As `bf16_tile`: a line of each of the next call's rows per 64 codes.
    let prefetch = |j: usize, k: usize| {
        if k % 64 == 0 {
            _mm_prefetch::<_MM_HINT_T1>(codes[j].as_ptr().wrapping_add(k + 4 * n) as *const i8);
        }
    };
    tile4x4(x, n, prefetch, w8, |_, _| unreachable!("Q8 rows are whole blocks"))
}

/// A group's four scales as two halves, [s0 x4, s1 x4] and [s2 x4, s3 x4] (one per
/// dword lane of the half lines), through the E8M0 table if a byte is 0 or 255.
#[inline(always)]
unsafe fn group_scales(sp: *const u8) -> [__m256; 2] {
    let s4 = (sp as *const u32).read_unaligned();
    if has_special_scale(s4) {
        let e = |i: usize| E8M0[*sp.add(i) as usize];
        return [
            _mm256_set_m128(_mm_set1_ps(e(1)), _mm_set1_ps(e(0))),
            _mm256_set_m128(_mm_set1_ps(e(3)), _mm_set1_ps(e(2))),
        ];
    }
    // Byte m of the broadcast dword, zero-extended into dwords 4(m % 2) .. 4(m % 2) + 3,
    // then shifted into the exponent: 2^(s - 127).
    let b = _mm256_set1_epi32(s4 as i32);
    let lanes = |lo: i32, hi: i32| {
        let pattern = _mm256_setr_epi32(lo, lo, lo, lo, hi, hi, hi, hi);
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_shuffle_epi8(b, pattern)))
    };
    [lanes(0x8080_8000u32 as i32, 0x8080_8001u32 as i32), lanes(0x8080_8002u32 as i32, 0x8080_8003u32 as i32)]
}

/// How far ahead of its line the int MXFP4 GEMV prefetches (T0). Its rows are one
/// sequential stream, yet with about 19 vector operations per half line between loads
/// the hardware prefetcher alone keeps too few lines in flight: gemv bench, 2 threads,
/// 3 alternating rounds, gate_up 25.2-27.0 GB/s against 24.8-25.1 without, down
/// 25.3-25.9 against 23.3-23.8 (1 KB ahead alike; T1 8 KB ahead 18-19, far worse).
const INT_PREFETCH: usize = 2048;

/// The scales of t <= 4 blocks at `sp` through the E8M0 table (any byte), laid out as
/// `scale_bits`, zero past the t-th.
#[inline(always)]
unsafe fn table_scales(sp: *const u8, t: usize) -> [__m256; 2] {
    let e = |i: usize| _mm_set1_ps(if i < t { E8M0[*sp.add(i) as usize] } else { 0.0 });
    [_mm256_set_m128(e(1), e(0)), _mm256_set_m128(e(3), e(2))]
}

/// The codes of blocks b and b + 1 of a row of nb (zeros for block b + 1 if b is the
/// last): a half line past the row's last full group.
#[inline(always)]
unsafe fn tail_codes(row: *const u8, b: usize, nb: usize) -> __m256i {
    if b + 1 < nb {
        _mm256_loadu_si256(row.add(b * BLOCK_BYTES) as *const __m256i)
    } else {
        _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(row.add(b * BLOCK_BYTES) as *const __m128i))
    }
}

/// How the AVX2 int GEMV sums u8 x s8 products into dword lanes.
struct Dot;

impl Dot {
    /// `vpmaddubsw` into words, `vpmaddwd` into dwords (every AVX2 CPU).
    const WORDS: u8 = 0;
    /// 256-bit `vpdpbusd`, VEX-encoded (AVX-VNNI: Intel from Alder Lake, AMD Zen 5).
    const VEX: u8 = 1;
    /// 256-bit `vpdpbusd`, EVEX-encoded (AVX-512 VNNI with VL): the same operation,
    /// through which the tests run the `VEX` body on CPUs without AVX-VNNI.
    const EVEX: u8 = 2;
}

/// An int GEMV kernel's three entry points, each `$body::<M, DOT>` under its target
/// features: the plain AVX2 form (`Dot::WORDS`, documented where the macro is invoked),
/// AVX-VNNI (`Dot::VEX`: `vpdpbusd`/`vpdpwssd` where `vpmaddubsw`/`vpmaddwd` and adds
/// were) and, for the tests, the EVEX encoding of those (`Dot::EVEX`).
macro_rules! dot_forms {
    ($(#[$doc:meta])* $plain:ident, $vex:ident, $evex:ident, $body:ident) => {
        dot_form!($(#[$doc])* $plain, "avx2,fma", Dot::WORDS, $body);
        dot_form!(
            #[doc = concat!("`", stringify!($plain), "` with 256-bit VNNI (AVX-VNNI): the same bits.")]
            ///
            /// # Safety
            #[doc = concat!("avx2/fma/avxvnni; as `", stringify!($plain), "`.")]
            $vex, "avx2,fma,avxvnni", Dot::VEX, $body
        );
        dot_form!(
            #[doc = concat!("`", stringify!($vex), "` through the EVEX encoding of the same instructions, so")]
            /// that the tests run its body on AVX-512 VNNI CPUs (which take the AVX-512 kernels).
            ///
            /// # Safety
            #[doc = concat!("avx2/fma/avx512vnni/avx512vl; as `", stringify!($plain), "`.")]
            #[cfg(test)]
            $evex, "avx2,fma,avx512vnni,avx512vl", Dot::EVEX, $body
        );
    };
}

/// One entry point of `dot_forms!`.
macro_rules! dot_form {
    ($(#[$attr:meta])* $name:ident, $features:literal, $dot:expr, $body:ident) => {
        $(#[$attr])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name<const M: usize>(
            xs: &[&super::quant::QRow; M],
            blocks: [&[u8]; 4],
            scales: [&[u8]; 4],
        ) -> [[f32; 4]; M] {
            $body::<M, { $dot }>(xs, blocks, scales)
        }
    };
}

/// One half line's activations (two blocks), one limb: the evens and odds
/// (`vpmaddubsw` operands against the low and high nibbles' codes) and each dword
/// lane's correction (-12 times the sum of its values).
#[derive(Clone, Copy)]
struct HalfX {
    xe: __m256i,
    xo: __m256i,
    corr: __m256i,
}

impl HalfX {
    /// Half line k of full group g (`Grouped` order).
    #[inline(always)]
    unsafe fn load(x: &super::quant::QRow, g: usize, k: usize) -> HalfX {
        let h = g * 128 + 32 * k;
        let at = |o: usize| _mm256_loadu_si256(x.q.as_ptr().add(h + o) as *const __m256i);
        let corr = _mm256_loadu_si256(x.lane_neg_corr.as_ptr().add(g * 16 + 8 * k) as *const __m256i);
        HalfX { xe: at(0), xo: at(64), corr }
    }

    /// Blocks b and b + 1 (if `pair`, else zeros in its place) past a row's last full
    /// group, which the `Grouped` order keeps as 16 evens then 16 odds each; the missing
    /// block's products and corrections are zero, whatever codes meet them. Also each
    /// lane's multiplier (d/2; zero for the missing block).
    #[inline(always)]
    unsafe fn tail(x: &super::quant::QRow, b: usize, pair: bool) -> (HalfX, __m256) {
        let half = |o: usize| {
            let lo = _mm_loadu_si128(x.q.as_ptr().add(b * BLOCK + o) as *const __m128i);
            let hi = if pair {
                _mm_loadu_si128(x.q.as_ptr().add((b + 1) * BLOCK + o) as *const __m128i)
            } else {
                _mm_setzero_si128()
            };
            _mm256_set_m128i(hi, lo)
        };
        let zero = HalfX { xe: half(0), xo: half(16), corr: _mm256_setzero_si256() };
        // The lanes' sums against weights of 12: the corrections, negated.
        let twelve = _mm256_set1_epi8(12);
        let corr = _mm256_sub_epi32(_mm256_setzero_si256(), zero.lanes::<{ Dot::WORDS }>(twelve, twelve));
        let mult = |b: usize| _mm_set1_ps(x.half_d[b]);
        let mult = _mm256_set_m128(if pair { mult(b + 1) } else { _mm_setzero_ps() }, mult(b));
        (HalfX { corr, ..zero }, mult)
    }

    /// Codes made u8 2*E2M1+12 (low nibbles `wl`, high `wh`) against these activations:
    /// each dword lane's exact integer sum over its 8 values (pairs of words at most
    /// 2*24*127 each), corrected. With `DOT` (not `Dot::Words`) the lanes are two
    /// 256-bit `vpdpbusd`s instead of two `vpmaddubsw`, a `vpaddw` and a `vpmaddwd`: the
    /// same integers.
    #[inline(always)]
    unsafe fn lanes<const DOT: u8>(&self, wl: __m256i, wh: __m256i) -> __m256i {
        let sum = match DOT {
            Dot::WORDS => _mm256_madd_epi16(
                _mm256_add_epi16(_mm256_maddubs_epi16(wl, self.xe), _mm256_maddubs_epi16(wh, self.xo)),
                _mm256_set1_epi16(1),
            ),
            Dot::EVEX => _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(self.corr, wl, self.xe), wh, self.xo),
            _ => _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(self.corr, wl, self.xe), wh, self.xo),
        };
        if DOT == Dot::WORDS {
            _mm256_add_epi32(sum, self.corr)
        } else {
            sum
        }
    }
}

/// A half line of MXFP4 codes (32 bytes: two blocks) as u8 2*E2M1+12, low nibbles and high.
#[inline(always)]
unsafe fn int_codes(v: __m256i) -> (__m256i, __m256i) {
    use super::quant::W2_PLUS_12;
    let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(W2_PLUS_12.as_ptr() as *const __m128i));
    let nib = _mm256_set1_epi8(0x0f);
    let wl = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, nib));
    (wl, _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib)))
}

dot_forms! {
    /// "int8" precision with AVX2: four MXFP4 rows against M = 1-4 activation rows
    /// quantized to one int8 limb (`Grouped` order, as the AVX-512 kernels read it), one
    /// weight row after another (a single stream, prefetched `INT_PREFETCH` ahead). Per
    /// half line (two blocks, 32 code bytes) the low and high nibbles become u8
    /// 2*E2M1+12 (`vpshufb`), once for the M activation rows, each summed as if alone;
    /// `vpmaddubsw` multiplies them with the two blocks' evens and odds (at most 2*24*127
    /// per word, and twice that after adding evens' and odds' words: no i16 saturation)
    /// and `vpmaddwd` sums the words into 8 dword lanes, four per block, each the exact
    /// integer sum of the AVX-512 kernels' lane, from the same -12*sum(q) lane correction
    /// (`HalfX::lanes`). ("int16", two limbs, takes `mxfp4_dot4_words`.)
    ///
    /// Each lane is then scaled by its d/2 and block scale into a vector accumulator (no
    /// horizontal sum per block). The blocks past the last full group are one or two more
    /// half lines, zero-padded (`HalfX::tail`), where they went one block at a time through
    /// horizontal integer sums: 90-block rows (gpt-oss) 6-8% faster from L1, stop 27.
    /// (The AVX-512 kernels' exponent add in place of the multiply by d/2, with a per-row
    /// scale range check, measured 4% slower here: the `vpaddd` and the check cost what
    /// the multiply did.)
    ///
    /// # Safety
    /// avx2/fma; sizes as for `mxfp4_dot4`, `x` quantized in `Grouped` order, one limb.
    mxfp4_dot4_int8,
    mxfp4_dot4_int8_avxvnni,
    mxfp4_dot4_int8_evex,
    int_dot4
}

#[inline(always)]
unsafe fn int_dot4<const M: usize, const DOT: u8>(
    xs: &[&super::quant::QRow; M],
    blocks: [&[u8]; 4],
    scales: [&[u8]; 4],
) -> [[f32; 4]; M] {
    let nb = scales[0].len();
    let groups = nb / 4;
    for x in xs {
        debug_assert!(x.q.len() >= nb * BLOCK && x.lane_half_d.len() >= groups * 16);
    }
    for r in 0..4 {
        debug_assert!(blocks[r].len() >= nb * BLOCK_BYTES && scales[r].len() >= nb);
    }
    // The blocks past the last full group: one or two zero-padded half lines.
    let first = groups * 4;
    let tails = (nb - first).div_ceil(2);
    let z = _mm256_setzero_si256();
    let mut tail = [[(HalfX { xe: z, xo: z, corr: z }, _mm256_setzero_ps()); 2]; M];
    for (x, tail) in xs.iter().zip(tail.iter_mut()) {
        for (j, t) in tail.iter_mut().enumerate().take(tails) {
            let b = first + 2 * j;
            *t = HalfX::tail(x, b, b + 1 < nb);
        }
    }
    let mut out = [[0f32; 4]; M];
    for r in 0..4 {
        let row = blocks[r].as_ptr();
        let sp = scales[r].as_ptr();
        let mut acc = [_mm256_setzero_ps(); M];
        for g in 0..groups {
            _mm_prefetch::<_MM_HINT_T0>(row.add(g * 4 * BLOCK_BYTES).wrapping_add(INT_PREFETCH) as *const i8);
            let sc = group_scales(sp.add(4 * g));
            for (k, &s) in sc.iter().enumerate() {
                // The half line's codes, decoded once for the M activation rows.
                let (wl, wh) = int_codes(_mm256_loadu_si256(row.add(g * 4 * BLOCK_BYTES + 32 * k) as *const __m256i));
                let l = g * 16 + 8 * k;
                for (x, acc) in xs.iter().zip(acc.iter_mut()) {
                    let f = _mm256_cvtepi32_ps(HalfX::load(x, g, k).lanes::<DOT>(wl, wh));
                    *acc = _mm256_fmadd_ps(_mm256_mul_ps(f, _mm256_loadu_ps(x.lane_half_d.as_ptr().add(l))), s, *acc);
                }
            }
        }
        for j in 0..tails {
            let (wl, wh) = int_codes(tail_codes(row, first + 2 * j, nb));
            let s = table_scales(sp.add(first), nb - first)[j];
            for (acc, tail) in acc.iter_mut().zip(&tail) {
                let (hx, mult) = tail[j];
                let f = _mm256_cvtepi32_ps(hx.lanes::<DOT>(wl, wh));
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(f, mult), s, *acc);
            }
        }
        for i in 0..M {
            out[i][r] = hsum(acc[i]);
        }
    }
    out
}

/// A half line of MXFP4 codes (32 bytes: two blocks) as four vectors of i16 weights,
/// 256 * 2*E2M1 each (the signed byte shifted into the word's high byte, or masked in
/// place: no sign extension), in `QLayout::Words` order: vector t, word j holds the
/// weight of the half line's value 4j + t. Word j is code bytes 2j, 2j + 1, whose low
/// nibbles are values 4j and 4j + 2, and high nibbles 4j + 1 and 4j + 3.
#[inline(always)]
unsafe fn word_codes(v: __m256i) -> [__m256i; 4] {
    use super::quant::W2;
    let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(W2.as_ptr() as *const __m128i));
    let nib = _mm256_set1_epi8(0x0f);
    let wl = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, nib));
    let wh = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib));
    let high = _mm256_set1_epi16(0xff00u16 as i16);
    [_mm256_slli_epi16::<8>(wl), _mm256_slli_epi16::<8>(wh), _mm256_and_si256(wl, high), _mm256_and_si256(wh, high)]
}

dot_forms! {
    /// "int16" precision with AVX2: four MXFP4 rows against M = 1-4 activation rows
    /// quantized in `QLayout::Words` order (the limbs joined as i16s, 256 q + q2), one
    /// weight row after another (a single stream, prefetched `INT_PREFETCH` ahead). Per
    /// half line (two blocks) the codes become four vectors of i16 weights
    /// (`word_codes`), once for the M rows; four `vpmaddwd` against the row's joined
    /// values give 8 dword lanes, four per block, each the exact sum of its 8 products
    /// (at most 8 * 32640 * 3072 < 2^31; a multiple of 256 below 2^32, so exact in f32
    /// too), then scaled by its d/2 / 256^2 and block scale into a vector accumulator.
    /// Where `mxfp4_dot4_int8`'s `vpmaddubsw` form took six multiplies per half line and
    /// row with two limbs (four into words, two joining the limbs into dwords) and a
    /// correction for biased codes, this takes four. The lanes are the same integers, so
    /// the results were the same bits (checked before two limbs left that kernel, stop
    /// 30); from L1 one activation row runs as fast (as many vector operations: the
    /// words' shifts and masks), two rows 13% faster. A row's blocks past its last full
    /// group are one more half line, zero-padded.
    ///
    /// # Safety
    /// avx2/fma; sizes as for `mxfp4_dot4`, `x` quantized in `Words` order.
    mxfp4_dot4_words,
    mxfp4_dot4_words_avxvnni,
    mxfp4_dot4_words_evex,
    words_dot4
}

/// Half line h of a row (codes `v`, its lanes' block scales `s`) into each activation
/// row's accumulator.
#[inline(always)]
unsafe fn words_line<const M: usize, const DOT: u8>(
    xs: &[&super::quant::QRow; M],
    h: usize,
    v: __m256i,
    s: __m256,
    acc: &mut [__m256; M],
) {
    let w = word_codes(v);
    for (x, acc) in xs.iter().zip(acc.iter_mut()) {
        let xp = x.words.as_ptr().add(64 * h) as *const __m256i;
        let z = _mm256_setzero_si256();
        let lo =
            words_dot::<DOT>(words_dot::<DOT>(z, w[0], _mm256_loadu_si256(xp)), w[1], _mm256_loadu_si256(xp.add(1)));
        let hi = words_dot::<DOT>(
            words_dot::<DOT>(z, w[2], _mm256_loadu_si256(xp.add(2))),
            w[3],
            _mm256_loadu_si256(xp.add(3)),
        );
        let f = _mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi));
        *acc = _mm256_fmadd_ps(_mm256_mul_ps(f, _mm256_loadu_ps(x.words_mult.as_ptr().add(8 * h))), s, *acc);
    }
}

/// acc + the sums of adjacent products of i16s w and x, into dwords.
#[inline(always)]
unsafe fn words_dot<const DOT: u8>(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    match DOT {
        Dot::WORDS => _mm256_add_epi32(acc, _mm256_madd_epi16(w, x)),
        Dot::EVEX => _mm256_dpwssd_epi32(acc, w, x),
        _ => _mm256_dpwssd_avx_epi32(acc, w, x),
    }
}

#[inline(always)]
unsafe fn words_dot4<const M: usize, const DOT: u8>(
    xs: &[&super::quant::QRow; M],
    blocks: [&[u8]; 4],
    scales: [&[u8]; 4],
) -> [[f32; 4]; M] {
    let nb = scales[0].len();
    let (groups, halves) = (nb / 4, nb.div_ceil(2));
    for x in xs {
        debug_assert!(x.words.len() >= halves * 64 && x.words_mult.len() >= halves * 8);
    }
    for r in 0..4 {
        debug_assert!(blocks[r].len() >= nb * BLOCK_BYTES && scales[r].len() >= nb);
    }
    let mut out = [[0f32; 4]; M];
    for r in 0..4 {
        let row = blocks[r].as_ptr();
        let sp = scales[r].as_ptr();
        let mut acc = [_mm256_setzero_ps(); M];
        for g in 0..groups {
            _mm_prefetch::<_MM_HINT_T0>(row.add(g * 4 * BLOCK_BYTES).wrapping_add(INT_PREFETCH) as *const i8);
            let sc = group_scales(sp.add(4 * g));
            for (k, &s) in sc.iter().enumerate() {
                let v = _mm256_loadu_si256(row.add(g * 4 * BLOCK_BYTES + 32 * k) as *const __m256i);
                words_line::<M, DOT>(xs, 2 * g + k, v, s, &mut acc);
            }
        }
        // The blocks past the last full group: one or two half lines, zero-padded.
        let first = groups * 4;
        for h in 2 * groups..halves {
            let (v, s) = (tail_codes(row, 2 * h, nb), table_scales(sp.add(first), nb - first)[h - 2 * groups]);
            words_line::<M, DOT>(xs, h, v, s, &mut acc);
        }
        for i in 0..M {
            out[i][r] = hsum(acc[i]);
        }
    }
    out
}

/// Q8 weights with AVX2: four rows against one quantized activation row (natural
/// order), one row after another. Per block: the codes unbiased to s8 (`xor 0x80`),
/// `vpsignb` moves q's sign onto them so that `vpmaddubsw` takes |q| as the unsigned
/// side (codes 1-255 are -127..127 unbiased, so the sign never overflows; pairs at most
/// 2*127*127: no i16 saturation), `vpmaddwd` sums the words into 8 exact dword lanes
/// (with two limbs, weighing the first limb's words 256: the limbs joined), which are
/// converted once and scaled by the block's 2 * d/2 * weight scale into a vector
/// accumulator (no horizontal sum per block). The rows are one stream, prefetched
/// `INT_PREFETCH` ahead.
///
/// # Safety
/// avx2/fma; `x` quantized in `Natural` order, n = 32 * nb; each `codes[r].len() >= 32 * nb`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_dot4_int8<const TWO: bool>(
    x: &super::quant::QRow,
    codes: [&[u8]; 4],
    scales: [&[u16]; 4],
) -> [f32; 4] {
    use super::quant::LIMB2;
    let nb = scales[0].len();
    debug_assert!(x.q.len() >= nb * BLOCK && x.half_d.len() >= nb);
    for r in 0..4 {
        debug_assert!(codes[r].len() >= nb * BLOCK && scales[r].len() >= nb);
    }
    let bias = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let join = _mm256_set1_epi16(super::quant::LIMB2_JOIN as i16);
    let mut out = [0f32; 4];
    for r in 0..4 {
        let cp = codes[r].as_ptr();
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            _mm_prefetch::<_MM_HINT_T0>(cp.add(b * BLOCK).wrapping_add(INT_PREFETCH) as *const i8);
            let w = _mm256_xor_si256(_mm256_loadu_si256(cp.add(b * BLOCK) as *const __m256i), bias);
            // Words of products (at most 2*127*127) of the codes with one limb.
            let words = |q: &[i8]| {
                let q = _mm256_loadu_si256(q.as_ptr().add(b * BLOCK) as *const __m256i);
                _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(w, q))
            };
            // With two limbs, joined as in the MXFP4 kernel: lanes over 256 q + q2, at most
            // 4*127*32640 < 2^24 (exact in f32), weighed 1/256 in the block's scale.
            let (lanes, limb_weight) = if TWO {
                (_mm256_add_epi32(_mm256_madd_epi16(words(x.q), join), _mm256_madd_epi16(words(x.q2), ones)), LIMB2)
            } else {
                (_mm256_madd_epi16(words(x.q), ones), 1.0)
            };
            let s = 2.0 * *x.half_d.get_unchecked(b) * crate::q8::scale(*scales[r].get_unchecked(b)) * limb_weight;
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(s), acc);
        }
        out[r] = hsum(acc);
    }
    out
}

/// `quant::quantize_block`'s twin (as `avx512::quantize_block`): the same f32 operations
/// lane by lane, so the same bytes, sums and d/2 (a block with a non-finite value:
/// zeros and NaN).
///
/// # Safety
/// avx2/fma; `xb` holds 32 values.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_block(
    xb: &[f32],
    two_limbs: bool,
    qb: &mut [i8; BLOCK],
    qb2: &mut [i8; BLOCK],
) -> (f32, i32, i32) {
    use super::quant::MAGIC;
    assert!(xb.len() >= BLOCK);
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
    let abs = v.map(|v| _mm256_andnot_ps(_mm256_set1_ps(-0.0), v));
    // |v| < inf is false for inf and NaN.
    let inf = _mm256_set1_ps(f32::INFINITY);
    let finite = abs.iter().fold(0xff, |m, &a| m & _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(a, inf)));
    if finite != 0xff {
        qb.fill(0);
        qb2.fill(0);
        return (f32::NAN, 0, 0);
    }
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)));
    let (d, inv) = super::quant::block_scale(amax);
    let (magic, lo, hi) = (_mm256_set1_ps(MAGIC), _mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let round = |y: __m256| _mm256_max_ps(_mm256_min_ps(_mm256_sub_ps(_mm256_add_ps(y, magic), magic), hi), lo);
    // Four vectors of dwords in [-127, 127] to 32 bytes in order, and their sum.
    let store = |q: [__m256i; 4], out: &mut [i8; BLOCK]| -> i32 {
        // packs work per 128-bit half: dword k of the result holds values 4k..4k+4 of
        // vector k % 4's half k / 4.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, ordered);
        hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])))
    };
    let y = v.map(|v| _mm256_mul_ps(v, _mm256_set1_ps(inv)));
    let r = y.map(round);
    let mut q = r.map(|r| _mm256_cvtps_epi32(r));
    let mut sum2 = 0;
    if two_limbs {
        // y - r is exact (Sterbenz) and in [-0.5, 0.5]; t = 128 carries into q.
        let mut q2 = [_mm256_setzero_si256(); 4];
        for i in 0..4 {
            let t = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(y[i], r[i]), _mm256_set1_ps(256.0)), magic),
                magic,
            );
            let carry = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(t, _mm256_set1_ps(128.0)));
            // carry lanes are -1: q - (-1), and -128 in place of 128.
            q[i] = _mm256_sub_epi32(q[i], carry);
            q2[i] = _mm256_blendv_epi8(_mm256_cvtps_epi32(t), _mm256_set1_epi32(-128), carry);
        }
        sum2 = store(q2, qb2);
    }
    let sum = store(q, qb);
    (d * 0.5, sum, sum2)
}

/// `quant::place`'s twin for a block of a full group in the `Grouped` layout: its 16
/// even values to `evens`, its 16 odd values to `odds`, and -12 * the sum of each run
/// of 8 values (one dword lane of the kernels) to `lanes`.
///
/// # Safety
/// avx2; `evens` and `odds` hold 16 values, `lanes` 4.
#[target_feature(enable = "avx2")]
pub unsafe fn place_grouped(qb: &[i8; BLOCK], evens: &mut [i8], odds: &mut [i8], lanes: &mut [i32]) {
    assert!(evens.len() >= 16 && odds.len() >= 16 && lanes.len() >= 4);
    let v = _mm256_loadu_si256(qb.as_ptr() as *const __m256i);
    // Per 128-bit half: its 8 evens, then its 8 odds; then the quadwords reordered to
    // [evens 0-7, evens 8-15, odds 0-7, odds 8-15].
    let split = _mm256_setr_epi8(
        0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
    );
    let t = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, split));
    _mm_storeu_si128(evens.as_mut_ptr() as *mut __m128i, _mm256_castsi256_si128(t));
    _mm_storeu_si128(odds.as_mut_ptr() as *mut __m128i, _mm256_extracti128_si256::<1>(t));
    // sad(q + 128, 0) sums each run of 8 as unsigned: 8 * 128 more than the signed sum.
    let sums = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(-128)), _mm256_setzero_si256());
    let mut s = [0u64; 4];
    _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, sums);
    for l in 0..4 {
        lanes[l] = -12 * (s[l] as i32 - 1024);
    }
}

/// `generic::mxfp4_words`'s twin: per block, the nibbles through the signed 2*E2M1
/// table (`vpshufb`), interleaved back into natural order and widened to i16.
///
/// # Safety
/// avx2; `out.len() >= 2 * blocks.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn mxfp4_words(blocks: &[u8], out: &mut [i16]) {
    use super::quant::W2;
    debug_assert!(out.len() >= 2 * blocks.len());
    let lut = _mm_loadu_si128(W2.as_ptr() as *const __m128i);
    let nib = _mm_set1_epi8(0x0f);
    let full = blocks.len() / BLOCK_BYTES * BLOCK_BYTES;
    for i in (0..full).step_by(BLOCK_BYTES) {
        let v = _mm_loadu_si128(blocks.as_ptr().add(i) as *const __m128i);
        let lo = _mm_shuffle_epi8(lut, _mm_and_si128(v, nib));
        let hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16::<4>(v), nib));
        let o = out.as_mut_ptr().add(2 * i) as *mut __m256i;
        _mm256_storeu_si256(o, _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(lo, hi)));
        _mm256_storeu_si256(o.add(1), _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(lo, hi)));
    }
    super::generic::mxfp4_words(&blocks[full..], &mut out[2 * full..]);
}

/// Quantized packed-GEMM step ("int8"/"int16" precisions, m > 4) on one `QForm::Pairs`
/// group: c[j * stride + t] for `QPANEL_ROWS` weight rows and the group's first 8 V
/// tokens (V = 2, or 1 for a short last group). Per block, each pair of i16 weights is
/// broadcast and `vpmaddwd` multiplies it with that pair of joined values (256 q + q2)
/// of 8 tokens, two products summed per dword: 16 multiply-adds per instruction, twice
/// an f32 FMA's, issued as often on Zen 4 (two per cycle, with the `vpaddd` beside
/// them; `gemm_panel_speed`: 75 against 56 multiply-adds per ns for `gemm_panel`). The
/// dword sums of a block are exact (at most 32 * 12 * 32640 < 2^24), converted once,
/// scaled by the tokens' d/2 / 256 and the block's scale: `generic::qgemm_panel_pairs`'s
/// steps.
///
/// # Safety
/// avx2/fma; `words[j]` hold 32 * nb values, `scales[j]` nb, `x` is a `QForm::Pairs`
/// group of nb blocks, `c.len() >= (QPANEL_ROWS - 1) * stride + 8 * V`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn qgemm_panel_pairs<const V: usize>(
    words: [&[i16]; super::QPANEL_ROWS],
    scales: [&[f32]; super::QPANEL_ROWS],
    x: &super::quant::QGroup,
    nb: usize,
    c: &mut [f32],
    stride: usize,
) {
    pairs_panel::<V, { Dot::WORDS }>(words, scales, x, nb, c, stride)
}

/// `qgemm_panel_pairs` with 256-bit `vpdpwssd` (AVX-VNNI), one instruction where
/// `vpmaddwd` and `vpaddd` take two: the same bits.
///
/// # Safety
/// avx2/fma/avxvnni; as `qgemm_panel_pairs`.
#[target_feature(enable = "avx2,fma,avxvnni")]
pub unsafe fn qgemm_panel_pairs_avxvnni<const V: usize>(
    words: [&[i16]; super::QPANEL_ROWS],
    scales: [&[f32]; super::QPANEL_ROWS],
    x: &super::quant::QGroup,
    nb: usize,
    c: &mut [f32],
    stride: usize,
) {
    pairs_panel::<V, { Dot::VEX }>(words, scales, x, nb, c, stride)
}

/// `qgemm_panel_pairs_avxvnni` through the EVEX encoding (see `mxfp4_dot4_int8_evex`).
///
/// # Safety
/// avx2/fma/avx512vnni/avx512vl; as `qgemm_panel_pairs`.
#[cfg(test)]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
pub unsafe fn qgemm_panel_pairs_evex<const V: usize>(
    words: [&[i16]; super::QPANEL_ROWS],
    scales: [&[f32]; super::QPANEL_ROWS],
    x: &super::quant::QGroup,
    nb: usize,
    c: &mut [f32],
    stride: usize,
) {
    pairs_panel::<V, { Dot::EVEX }>(words, scales, x, nb, c, stride)
}

#[inline(always)]
unsafe fn pairs_panel<const V: usize, const DOT: u8>(
    words: [&[i16]; super::QPANEL_ROWS],
    scales: [&[f32]; super::QPANEL_ROWS],
    x: &super::quant::QGroup,
    nb: usize,
    c: &mut [f32],
    stride: usize,
) {
    use super::quant::{PAIRS, QPACK_TOKENS as T};
    const R: usize = super::QPANEL_ROWS;
    for j in 0..R {
        debug_assert!(words[j].len() >= nb * BLOCK && scales[j].len() >= nb);
    }
    debug_assert!(x.joint.len() >= nb * BLOCK * T && x.half_d.len() >= nb * T);
    debug_assert!(V <= 2 && c.len() >= (R - 1) * stride + 8 * V);
    // 4 rows x 8 V tokens: 4 V dword sums and 4 V accumulators.
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for b in 0..nb {
        let mut s = [[_mm256_setzero_si256(); V]; R];
        let xp = x.joint.as_ptr().add(b * PAIRS * T * 2);
        for p in 0..PAIRS {
            let xv: [__m256i; V] =
                std::array::from_fn(|v| _mm256_loadu_si256(xp.add((p * T + 8 * v) * 2) as *const __m256i));
            for j in 0..R {
                let pair = (words[j].as_ptr().add(b * BLOCK + 2 * p) as *const i32).read_unaligned();
                let wb = _mm256_set1_epi32(pair);
                for v in 0..V {
                    s[j][v] = words_dot::<DOT>(s[j][v], wb, xv[v]);
                }
            }
        }
        let hd: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(x.half_d.as_ptr().add(b * T + 8 * v)));
        for j in 0..R {
            let sc = _mm256_set1_ps(*scales[j].get_unchecked(b));
            for v in 0..V {
                acc[j][v] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s[j][v]), hd[v]), sc, acc[j][v]);
            }
        }
    }
    for j in 0..R {
        for v in 0..V {
            _mm256_storeu_ps(c.as_mut_ptr().add(j * stride + 8 * v), acc[j][v]);
        }
    }
}

/// Weight rows per packed-GEMM step and tokens per packed activation group.
pub const PANEL_ROWS: usize = 6;
pub const PANEL_TOKENS: usize = 16;

/// Packed GEMM step (see `avx512::gemm_panel`): 6 weight rows x the first 8 V tokens of
/// a group of 16 (V = 2, or 1 for a short last group), 12 accumulators in the 16 ymm
/// registers.
///
/// # Safety
/// avx2/fma; each `w[j]` holds n values, `xg` n * 16, `c` 6 * 16.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_panel<const V: usize>(w: &[&[f32]; PANEL_ROWS], xg: &[f32], n: usize, c: &mut [f32]) {
    debug_assert!(xg.len() >= n * PANEL_TOKENS && c.len() >= PANEL_ROWS * PANEL_TOKENS);
    for r in w {
        debug_assert!(r.len() >= n);
    }
    let wp: [*const f32; PANEL_ROWS] = w.map(|r| r.as_ptr());
    let (xp, cp) = (xg.as_ptr(), c.as_mut_ptr());
    for v in 0..2 * PANEL_ROWS {
        _mm256_storeu_ps(cp.add(8 * v), _mm256_setzero_ps());
    }
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + super::GEMM_K_CHUNK).min(n);
        let mut acc = [[_mm256_setzero_ps(); V]; PANEL_ROWS];
        for k in k0..k1 {
            let xv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(xp.add(k * PANEL_TOKENS + 8 * v)));
            for j in 0..PANEL_ROWS {
                let b = _mm256_broadcast_ss(&*wp[j].add(k));
                for v in 0..V {
                    acc[j][v] = _mm256_fmadd_ps(b, xv[v], acc[j][v]);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            for (v, &av) in a.iter().enumerate() {
                let p = cp.add(j * PANEL_TOKENS + 8 * v);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), av));
            }
        }
        k0 = k1;
    }
}
