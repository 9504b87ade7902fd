//! AVX-512 (F, BW, VL) kernels. Each has a scalar twin in `generic.rs`.
//!
//! MXFP4 rows are read 64 code bytes (four blocks) at a time as 16 dwords, each
//! holding 8 nibbles. `vpermps` looks up the 16-entry E2M1 table with the low 4 bits
//! of each lane, so shifting the dwords right by 4k brings nibble k to every lane with
//! no byte shuffling: 8 permutes decode 128 weights. Activations are in the matching
//! `Planes` layout. The scales of the four blocks are applied per 128-bit lane. Rows
//! whose block count is not a multiple of four finish with a per-block loop on the
//! `Split` layout.
//!
//! bf16 rows are read 32 values (64 bytes) at a time as 16 dwords: `dword << 16` is the
//! even value as f32 and `dword & 0xffff0000` the odd one, so activations are in the
//! `Split` layout and widening needs no shuffle.

use super::layout::PLANE_GROUP;
use crate::mxfp4::{has_special_scale, BLOCK, BLOCK_BYTES, E2M1, E8M0};
use std::arch::x86_64::*;

/// Prefetch distance of streamed MXFP4 weight rows, in bytes (tuned with bench/gemv.rs,
/// alternating). The int8/int16 MXFP4 GEMVs prefetch into L2 (T1): a thread's few L1
/// miss buffers, not the DRAM, limit its streaming rate, and T1 prefetches do not hold
/// them (the int16 GEMV read 12.5-13 instead of 9-9.5 GB/s with one thread); the f32
/// MXFP4 GEMV measured faster with T0. The bf16 GEMV, one sequential stream, is left to
/// the hardware prefetcher: a T1 prefetch 2 KB ahead made it slower (1 thread: 74-83%
/// of the read bandwidth against 89-91% without; 2 threads 89-97% against 96-100%).
const MXFP4_PREFETCH: usize = 2048;
/// The Q8 GEMV's rows (one stream at a time, like bf16, but with about three times the
/// arithmetic per byte) prefetch into L2 8 KB ahead: 1 thread 19-21 GB/s against 15-17
/// without, 2 threads 28-37 against 24-30 (8-12 KB measured alike; 1-3 KB no faster).
const Q8_PREFETCH: usize = 8192;

#[inline(always)]
unsafe fn hsum(v: __m512) -> f32 {
    _mm512_reduce_add_ps(v)
}

/// The four scales of a group as [s0 x4, s1 x4, s2 x4, s3 x4] (one per 128-bit lane).
#[inline(always)]
unsafe fn group_scales(sp: *const u8) -> __m512 {
    let s4 = (sp as *const u32).read_unaligned();
    if has_special_scale(s4) {
        return table_scales(sp, 4);
    }
    plain_scales(s4)
}

/// `group_scales` of four bytes none of which is 0 or 255: each `byte << 23`, the bits
/// of 2^(byte - 127).
#[inline(always)]
unsafe fn plain_scales(s4: u32) -> __m512 {
    // Byte m of the broadcast dword, zero-extended into every dword of 128-bit lane m.
    let pattern = _mm512_set_epi32(
        0x8080_8003u32 as i32,
        0x8080_8003u32 as i32,
        0x8080_8003u32 as i32,
        0x8080_8003u32 as i32,
        0x8080_8002u32 as i32,
        0x8080_8002u32 as i32,
        0x8080_8002u32 as i32,
        0x8080_8002u32 as i32,
        0x8080_8001u32 as i32,
        0x8080_8001u32 as i32,
        0x8080_8001u32 as i32,
        0x8080_8001u32 as i32,
        0x8080_8000u32 as i32,
        0x8080_8000u32 as i32,
        0x8080_8000u32 as i32,
        0x8080_8000u32 as i32,
    );
    let b = _mm512_shuffle_epi8(_mm512_set1_epi32(s4 as i32), pattern);
    _mm512_castsi512_ps(_mm512_slli_epi32::<23>(b))
}

/// Groups of four blocks whose scales `scale_words` prepares at a time: 64 scale bytes,
/// one masked load per row.
const SCALE_CHUNK: usize = 16;

/// A row's scale bytes `sp[..len]` (len <= 4 * SCALE_CHUNK) as bf16 words, `s << 7`:
/// the bits of 2^(s - 127) for every byte but 0 and 255, so that one `vpshufb` of a
/// broadcast quad gives a group's four f32 scales (`word_scales`), against a
/// broadcast, a shuffle and a shift from the bytes. Writes all 4 * SCALE_CHUNK words
/// (zeros past len); returns whether a byte lies outside [lo, hi] (within [1, 254]:
/// then the chunk takes `group_scales` and `scaled_add_exact`).
#[inline(always)]
unsafe fn scale_words(sp: *const u8, len: usize, out: *mut u16, lo: u8, hi: u8) -> bool {
    debug_assert!(len <= 4 * SCALE_CHUNK);
    let m = if len >= 64 { !0u64 } else { (1u64 << len) - 1 };
    let b = _mm512_maskz_loadu_epi8(m, sp as *const i8);
    let special = bytes_outside(b, m, lo, hi);
    let lo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(b));
    let hi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(b));
    _mm512_storeu_si512(out as *mut __m512i, _mm512_slli_epi16::<7>(lo));
    _mm512_storeu_si512(out.add(32) as *mut __m512i, _mm512_slli_epi16::<7>(hi));
    special != 0
}

/// The four scales of a group from its four `scale_words` as [s0 x4, s1 x4, s2 x4, s3 x4]
/// (each word into the high half of its lane's dwords).
#[inline(always)]
unsafe fn word_scales(wp: *const u16) -> __m512 {
    let pattern = _mm512_set_epi32(
        0x0706_8080,
        0x0706_8080,
        0x0706_8080,
        0x0706_8080,
        0x0504_8080,
        0x0504_8080,
        0x0504_8080,
        0x0504_8080,
        0x0302_8080,
        0x0302_8080,
        0x0302_8080,
        0x0302_8080,
        0x0100_8080,
        0x0100_8080,
        0x0100_8080,
        0x0100_8080,
    );
    let quad = _mm512_broadcastq_epi64(_mm_loadl_epi64(wp as *const __m128i));
    _mm512_castsi512_ps(_mm512_shuffle_epi8(quad, pattern))
}

/// Four MXFP4 rows against one `Planes`-layout activation row `xp`.
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
    let groups = nb / 4;
    let xptr = xp.as_ptr();
    // One row at a time: a single sequential stream for the hardware prefetcher.
    for r in 0..4 {
        let row = blocks[r].as_ptr();
        let sp = scales[r].as_ptr();
        // Scales are a second, slow stream (nb bytes per row): fetch 4 rows ahead.
        _mm_prefetch::<_MM_HINT_T0>(sp.add(4 * nb) as *const i8);
        let mut a = _mm512_setzero_ps();
        for g in 0..groups {
            let xg = xptr.add(g * PLANE_GROUP);
            let bp = row.add(g * 4 * BLOCK_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(bp.add(MXFP4_PREFETCH) as *const i8);
            let v = _mm512_loadu_si512(bp as *const __m512i);
            let plane = |v: __m512i| _mm512_permutexvar_ps(v, table);
            let mut t0 = _mm512_mul_ps(plane(v), _mm512_loadu_ps(xg));
            let mut t1 = _mm512_mul_ps(plane(_mm512_srli_epi32::<4>(v)), _mm512_loadu_ps(xg.add(16)));
            t0 = _mm512_fmadd_ps(plane(_mm512_srli_epi32::<8>(v)), _mm512_loadu_ps(xg.add(32)), t0);
            t1 = _mm512_fmadd_ps(plane(_mm512_srli_epi32::<12>(v)), _mm512_loadu_ps(xg.add(48)), t1);
            t0 = _mm512_fmadd_ps(plane(_mm512_srli_epi32::<16>(v)), _mm512_loadu_ps(xg.add(64)), t0);
            t1 = _mm512_fmadd_ps(plane(_mm512_srli_epi32::<20>(v)), _mm512_loadu_ps(xg.add(80)), t1);
            t0 = _mm512_fmadd_ps(plane(_mm512_srli_epi32::<24>(v)), _mm512_loadu_ps(xg.add(96)), t0);
            t1 = _mm512_fmadd_ps(plane(_mm512_srli_epi32::<28>(v)), _mm512_loadu_ps(xg.add(112)), t1);
            a = _mm512_fmadd_ps(_mm512_add_ps(t0, t1), group_scales(sp.add(g * 4)), a);
        }
        acc[r] = a;
    }
    // Remaining blocks: one at a time, `Split` layout.
    for b in groups * 4..nb {
        let xe = _mm512_loadu_ps(xptr.add(b * BLOCK));
        let xo = _mm512_loadu_ps(xptr.add(b * BLOCK + 16));
        for r in 0..4 {
            let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(blocks[r].as_ptr().add(b * BLOCK_BYTES) as *const __m128i));
            let lo = _mm512_permutexvar_ps(v, table);
            let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), table);
            let t = _mm512_fmadd_ps(hi, xo, _mm512_mul_ps(lo, xe));
            let s = _mm512_set1_ps(E8M0[*scales[r].get_unchecked(b) as usize]);
            acc[r] = _mm512_fmadd_ps(t, s, acc[r]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// Decode one MXFP4 row to f32 in the `Planes` layout.
///
/// # Safety
/// avx512f/bw/vl; `blocks.len() == 16 * scales.len()`, `out.len() == 32 * scales.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn mxfp4_decode(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    let nb = scales.len();
    debug_assert!(blocks.len() == nb * BLOCK_BYTES && out.len() == nb * BLOCK);
    let table = _mm512_loadu_ps(E2M1.as_ptr());
    let o = out.as_mut_ptr();
    let groups = nb / 4;
    for g in 0..groups {
        let v = _mm512_loadu_si512(blocks.as_ptr().add(g * 4 * BLOCK_BYTES) as *const __m512i);
        let s = group_scales(scales.as_ptr().add(g * 4));
        let og = o.add(g * PLANE_GROUP);
        _mm512_storeu_ps(og, _mm512_mul_ps(_mm512_permutexvar_ps(v, table), s));
        _mm512_storeu_ps(og.add(16), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), table), s));
        _mm512_storeu_ps(og.add(32), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<8>(v), table), s));
        _mm512_storeu_ps(og.add(48), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<12>(v), table), s));
        _mm512_storeu_ps(og.add(64), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<16>(v), table), s));
        _mm512_storeu_ps(og.add(80), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<20>(v), table), s));
        _mm512_storeu_ps(og.add(96), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<24>(v), table), s));
        _mm512_storeu_ps(og.add(112), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<28>(v), table), s));
    }
    for b in groups * 4..nb {
        let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(blocks.as_ptr().add(b * BLOCK_BYTES) as *const __m128i));
        let sc = _mm512_set1_ps(E8M0[scales[b] as usize]);
        _mm512_storeu_ps(o.add(b * BLOCK), _mm512_mul_ps(_mm512_permutexvar_ps(v, table), sc));
        _mm512_storeu_ps(
            o.add(b * BLOCK + 16),
            _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), table), sc),
        );
    }
}

/// 32 bf16 values (64 bytes) as (evens, odds) in f32.
#[inline(always)]
unsafe fn widen32(p: *const u8) -> (__m512, __m512) {
    let w = _mm512_loadu_si512(p as *const __m512i);
    let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w));
    let odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(0xffff_0000u32 as i32)));
    (even, odd)
}

/// Four bf16 rows against one `Split`-layout activation row.
///
/// # Safety
/// avx512f/bw/vl; each `rows[r].len() >= 2 * x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn bf16_dot4(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let n = x.len();
    for r in 0..4 {
        debug_assert!(rows[r].len() >= 2 * n);
    }
    let mut acc = [_mm512_setzero_ps(); 4];
    let full = n / 32 * 32;
    // One row at a time (a single sequential stream: the hardware prefetcher follows one
    // stream far better than four), 128 bytes per step into four accumulators.
    for r in 0..4 {
        let mut a = [_mm512_setzero_ps(); 4];
        let row = rows[r].as_ptr();
        let xp = x.as_ptr();
        let mut k = 0;
        while k + 64 <= full {
            let (e0, o0) = widen32(row.add(2 * k));
            let (e1, o1) = widen32(row.add(2 * k + 64));
            a[0] = _mm512_fmadd_ps(e0, _mm512_loadu_ps(xp.add(k)), a[0]);
            a[1] = _mm512_fmadd_ps(o0, _mm512_loadu_ps(xp.add(k + 16)), a[1]);
            a[2] = _mm512_fmadd_ps(e1, _mm512_loadu_ps(xp.add(k + 32)), a[2]);
            a[3] = _mm512_fmadd_ps(o1, _mm512_loadu_ps(xp.add(k + 48)), a[3]);
            k += 64;
        }
        if k < full {
            let (e0, o0) = widen32(row.add(2 * k));
            a[0] = _mm512_fmadd_ps(e0, _mm512_loadu_ps(xp.add(k)), a[0]);
            a[1] = _mm512_fmadd_ps(o0, _mm512_loadu_ps(xp.add(k + 16)), a[1]);
        }
        acc[r] = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    }
    let mut out = [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])];
    // Tail (< 32 values) is in natural order.
    for r in 0..4 {
        for kk in full..n {
            out[r] += x[kk] * crate::bf16::to_f32(rows[r][2 * kk], rows[r][2 * kk + 1]);
        }
    }
    out
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
    // Partial sums over 256 values at a time, then added into `total`: the rounding
    // error grows with 16 + n/256 terms per lane rather than n/16.
    let mut total = [[_mm512_setzero_ps(); 4]; 4];
    let mut k = 0;
    while k < n {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let end = (k + 256).min(n);
        while k < end {
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
        for i in 0..4 {
            for j in 0..4 {
                total[i][j] = _mm512_add_ps(total[i][j], acc[i][j]);
            }
        }
    }
    let acc = total;
    let mut out = [[0f32; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            out[i][j] = hsum(acc[i][j]);
        }
    }
    out
}

/// One group of four blocks of a quantized activation row, as the int GEMVs read it:
/// per limb the even and odd elements (`vpdpbusd` operands against the low and high
/// nibbles' codes), the first limb's chain start and, with two limbs, the byte that
/// joins the second (`decoded`), and what scales each lane (`mult`).
#[derive(Clone, Copy)]
struct GroupX {
    xe: __m512i,
    xo: __m512i,
    xe2: __m512i,
    xo2: __m512i,
    /// One limb: the lanes' -12*sum(q). Two: the joined lanes' correction c (-12 *
    /// the sum of 256 q + q2) shifted right by 8, where the first limb's sum starts.
    start: __m512i,
    /// Two limbs: c's low byte, where the second limb's sum starts.
    low: __m512i,
    /// Per lane: its block's multiplier (d/2, over 256 with two limbs), or with
    /// `FAST` its `QuantX::lane_scale_bits` (as f32 bits, for `vpaddd`).
    mult: __m512,
}

impl GroupX {
    /// Full group `g` (`Grouped` order). Without `TWO` the second limb repeats the first
    /// (unread). `FAST` loads the multipliers' scale bits.
    #[inline(always)]
    unsafe fn load<const TWO: bool, const FAST: bool>(x: &super::quant::QRow, g: usize) -> GroupX {
        let at = |q: &[i8], k: usize| _mm512_loadu_si512(q.as_ptr().add(g * 128 + k) as *const __m512i);
        let lanes = |c: &[i32]| _mm512_loadu_si512(c.as_ptr().add(g * 16) as *const __m512i);
        let lanes_f = |c: &[f32]| _mm512_loadu_ps(c.as_ptr().add(g * 16));
        let (xe, xo) = (at(x.q, 0), at(x.q, 64));
        let mult = if FAST {
            _mm512_castsi512_ps(lanes(x.lane_scale_bits))
        } else if TWO {
            lanes_f(x.lane_half_d_joint)
        } else {
            lanes_f(x.lane_half_d)
        };
        if TWO {
            let (start, low) = split_correction(lanes(x.lane_neg_corr_joint));
            GroupX { xe, xo, xe2: at(x.q2, 0), xo2: at(x.q2, 64), start, low, mult }
        } else {
            let start = lanes(x.lane_neg_corr);
            GroupX { xe, xo, xe2: xe, xo2: xo, start, low: start, mult }
        }
    }

    /// The `nb % 4` (1-3) blocks past the last full group, which the `Grouped` order
    /// keeps as 16 evens then 16 odds each, made a group whose missing blocks are zero
    /// (their products and corrections are then zero, whatever codes meet them).
    /// Multipliers as floats (the tail takes `scaled_add_exact`).
    #[inline(always)]
    unsafe fn tail<const TWO: bool>(x: &super::quant::QRow, nb: usize) -> GroupX {
        use super::quant::{LIMB2, LIMB2_SHIFT};
        let first = nb / 4 * 4;
        let t = nb - first;
        debug_assert!((1..4).contains(&t));
        let (xe, xo, nc) = tail_limb(x.q, first, t);
        let hds = _mm512_maskz_loadu_ps((1 << t) - 1, x.half_d.as_ptr().add(first));
        let hd = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), hds);
        if TWO {
            let (xe2, xo2, nc2) = tail_limb(x.q2, first, t);
            let joint = _mm512_add_epi32(_mm512_slli_epi32::<LIMB2_SHIFT>(nc), nc2);
            let (start, low) = split_correction(joint);
            GroupX { xe, xo, xe2, xo2, start, low, mult: _mm512_mul_ps(hd, _mm512_set1_ps(LIMB2)) }
        } else {
            GroupX { xe, xo, xe2: xe, xo2: xo, start: nc, low: nc, mult: hd }
        }
    }

    /// A line of codes (64 bytes: four blocks of one weight row) against this group:
    /// each dword lane's exact integer sum, in units of its `mult`.
    #[inline(always)]
    unsafe fn line<const TWO: bool, const VBMI: bool>(&self, v: __m512i) -> __m512 {
        let (wl, wh) = int_codes::<VBMI>(v);
        self.decoded::<TWO>(wl, wh)
    }

    /// `line` from codes already made 2*E2M1+12 (low nibbles `wl`, high `wh`). With two
    /// limbs the sum is joined in integers, 256 * s1 + s2 + c: the first limb's sum
    /// starts from c >> 8 and the second's from c's low byte, then a shift by 8 and an
    /// add (at most 256*12192 + 12288 in magnitude: exact in i32 and as f32). Two
    /// operations off the multiply pipes where two conversions and an FMA joined them
    /// as floats. (One chain through `vpshldd`, which brings in the low byte as it
    /// shifts, measured the same and needs VBMI2.)
    #[inline(always)]
    unsafe fn decoded<const TWO: bool>(&self, wl: __m512i, wh: __m512i) -> __m512 {
        use super::quant::LIMB2_SHIFT;
        let s1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(self.start, wl, self.xe), wh, self.xo);
        if TWO {
            let s2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(self.low, wl, self.xe2), wh, self.xo2);
            _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32::<LIMB2_SHIFT>(s1), s2))
        } else {
            _mm512_cvtepi32_ps(s1)
        }
    }

    /// acc + f * multiplier * scale per lane (scales in the `group_scales` layout). With
    /// `FAST` (every scale byte in the rows' `scale_range`) the multiplier times the
    /// scale is one integer add of the scale's bits, exact: a normal f32.
    #[inline(always)]
    unsafe fn scaled_add<const FAST: bool>(&self, f: __m512, scales: __m512, acc: __m512) -> __m512 {
        if FAST {
            let m = _mm512_add_epi32(_mm512_castps_si512(self.mult), _mm512_castps_si512(scales));
            _mm512_fmadd_ps(f, _mm512_castsi512_ps(m), acc)
        } else {
            scaled_add_exact(f, self.mult, scales, acc)
        }
    }
}

/// acc + f * mult * scale for any scale (0 and 255 included, or past a range): where
/// mult * scale is a normal f32, f times that product, the `FAST` path's bits; else
/// (subnormal, zero, infinite or NaN) f * mult first, then times the scale, so that a
/// subnormal product does not lose f's precision and an overflow meets a zero sum as
/// zero. `generic::qgemm_panel` takes the same steps.
#[inline(always)]
unsafe fn scaled_add_exact(f: __m512, mult: __m512, scales: __m512, acc: __m512) -> __m512 {
    let m = _mm512_mul_ps(mult, scales);
    // Ordered comparisons: false for NaN.
    let normal = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(m, _mm512_set1_ps(f32::MIN_POSITIVE))
        & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(m, _mm512_set1_ps(f32::MAX));
    let in_order = _mm512_fmadd_ps(_mm512_mul_ps(f, mult), scales, acc);
    _mm512_mask_blend_ps(normal, in_order, _mm512_fmadd_ps(f, m, acc))
}

/// A joined lane correction c as the two limbs' chain starts: c >> 8 (arithmetic) for
/// the first, c & 255 for the second; 256 * (c >> 8) + (c & 255) = c.
#[inline(always)]
unsafe fn split_correction(c: __m512i) -> (__m512i, __m512i) {
    use super::quant::LIMB2_SHIFT;
    (_mm512_srai_epi32::<LIMB2_SHIFT>(c), _mm512_and_si512(c, _mm512_set1_epi32(255)))
}

/// One limb of `GroupX::tail`: its evens, odds and lane corrections (t blocks of q from
/// block `first`).
#[inline(always)]
unsafe fn tail_limb(q: &[i8], first: usize, t: usize) -> (__m512i, __m512i, __m512i) {
    // 128-bit lanes [e0, o0, e1, o1 | e2, o2, 0, 0] -> evens [e0, e1, e2, 0], odds alike.
    let p = q.as_ptr().add(first * BLOCK);
    let lo = _mm512_maskz_loadu_epi8(if t >= 2 { !0 } else { (1 << 32) - 1 }, p);
    let hi = if t == 3 { _mm512_maskz_loadu_epi8((1 << 32) - 1, p.add(64)) } else { _mm512_setzero_si512() };
    let xe = _mm512_permutex2var_epi64(lo, _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0), hi);
    let xo = _mm512_permutex2var_epi64(lo, _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2), hi);
    // -12 * the sum of each lane's 8 values, as `Grouped` stores for full groups (one
    // correction per block would round the lanes' large opposite terms).
    let twelve = _mm512_set1_epi8(12);
    let c = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), twelve, xe), twelve, xo);
    (xe, xo, _mm512_sub_epi32(_mm512_setzero_si512(), c))
}

/// A line of MXFP4 codes as u8 2*E2M1+12, low nibbles and high. With `VBMI`, `vpermb`
/// looks up the 16 codes with the low 6 bits of each byte, so the table is repeated
/// four times and no mask is needed: two lookups and one shift per line (the int16
/// GEMV's lines 8-12% faster than with the masks). Without it (Cascade Lake),
/// `vpshufb` of the masked nibbles.
#[inline(always)]
unsafe fn int_codes<const VBMI: bool>(v: __m512i) -> (__m512i, __m512i) {
    use super::quant::W2_PLUS_12;
    let lut = _mm512_broadcast_i32x4(_mm_loadu_si128(W2_PLUS_12.as_ptr() as *const __m128i));
    let high = _mm512_srli_epi16::<4>(v);
    if VBMI {
        (_mm512_permutexvar_epi8(v, lut), _mm512_permutexvar_epi8(high, lut))
    } else {
        let nib = _mm512_set1_epi8(0x0f);
        (_mm512_shuffle_epi8(lut, _mm512_and_si512(v, nib)), _mm512_shuffle_epi8(lut, _mm512_and_si512(high, nib)))
    }
}

/// The scales of t <= 4 blocks at `sp` through the E8M0 table (any byte), laid out as
/// `group_scales`, zero past the t-th: a group with a 0 or 255, or the blocks past a
/// row's last full group.
#[inline(always)]
unsafe fn table_scales(sp: *const u8, t: usize) -> __m512 {
    let f = |i: usize| if i < t { E8M0[*sp.add(i) as usize] } else { 0.0 };
    let lanes = _mm_set_ps(f(3), f(2), f(1), f(0));
    let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(lanes))
}

/// A row's codes past its last full group (`nb % 4` blocks at `p`), zero-padded to a line.
#[inline(always)]
unsafe fn tail_codes(p: *const u8, t: usize) -> __m512i {
    _mm512_maskz_loadu_epi8((1u64 << (16 * t)) - 1, p as *const i8)
}

/// Which of the bytes of `b` selected by `m` lie outside [lo, hi] (unsigned).
#[inline(always)]
unsafe fn bytes_outside(b: __m512i, m: __mmask64, lo: u8, hi: u8) -> __mmask64 {
    _mm512_mask_cmplt_epu8_mask(m, b, _mm512_set1_epi8(lo as i8))
        | _mm512_mask_cmpgt_epu8_mask(m, b, _mm512_set1_epi8(hi as i8))
}

/// Whether every byte of `s` lies in [lo, hi].
#[inline(always)]
unsafe fn bytes_within(s: &[u8], lo: u8, hi: u8) -> bool {
    s.chunks(64).all(|c| {
        let m = if c.len() == 64 { !0 } else { (1u64 << c.len()) - 1 };
        bytes_outside(_mm512_maskz_loadu_epi8(m, c.as_ptr() as *const i8), m, lo, hi) == 0
    })
}

/// "int8" precision with AVX-512 VNNI: four MXFP4 rows against M quantized activation
/// rows (`Grouped` order; M = 1..4, the GEMV path). Codes become 2*E2M1+12
/// (`int_codes`); `vpdpbusd` sums u8 x s8 products exactly into 16 dword lanes (four
/// per block), starting from the lanes' -12*sum(q) correction (`GroupX::decoded`); each
/// lane is then scaled by its block's d/2 and scale in one FMA. The blocks past the
/// last full group are one more group, zero-padded (`GroupX::tail`), summed into the
/// same lanes as `mxfp4_rows_int8` sums them, so both kernels give a row the same bits.
///
/// Where every scale byte of the call lies in the activation rows' `scale_range`
/// (always, for real weights and activations), a lane's d/2 times its scale is one
/// integer add (`GroupX::scaled_add`), off the multiply pipes that the `vpdpbusd`s
/// fill; else `scaled_add_exact`, to the same bits wherever both apply.
///
/// Groups outer, weight rows next, activation rows inner: each group of codes is
/// decoded once for the M activation rows, and the activations stay in L1. The four
/// interleaved weight streams defeat the hardware prefetcher, so each row prefetches the
/// same group of the row four below it: the driver gives each call one row from each
/// quarter of its task, so that is four calls ahead in the same stream. Into L1 (T0):
/// with 2-4 activation rows a line stays in use long enough that the GEMV bench from
/// memory read 4-5% more with one thread than with T1 (stop 27: 2 rows 12.5-12.6
/// against 11.7-12.1 GB/s, 3 rows 9.1-9.3 against 8.5-8.9, 4 rows 7.2-7.5 against
/// 6.8-7.1; 8 rows ahead instead of 4 was slower).
///
/// # Safety
/// avx512f/bw/vl/vnni/vbmi; sizes as for `mxfp4_dot4`, every `xs[i]` quantized in
/// `Grouped` order. With `TWO`, the second limb ("int16" precision) is joined to the
/// first (`GroupX::decoded`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn mxfp4_dot4_int8<const TWO: bool, const M: usize>(
    xs: &[&super::quant::QRow; M],
    blocks: [&[u8]; 4],
    scales: [&[u8]; 4],
) -> [[f32; 4]; M] {
    dot4_int8::<TWO, M, true>(xs, blocks, scales)
}

/// `mxfp4_dot4_int8` without VBMI (`int_codes`); the same bits.
///
/// # Safety
/// avx512f/bw/vl/vnni; as `mxfp4_dot4_int8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn mxfp4_dot4_int8_no_vbmi<const TWO: bool, const M: usize>(
    xs: &[&super::quant::QRow; M],
    blocks: [&[u8]; 4],
    scales: [&[u8]; 4],
) -> [[f32; 4]; M] {
    dot4_int8::<TWO, M, false>(xs, blocks, scales)
}

#[inline(always)]
unsafe fn dot4_int8<const TWO: bool, const M: usize, const VBMI: bool>(
    xs: &[&super::quant::QRow; M],
    blocks: [&[u8]; 4],
    scales: [&[u8]; 4],
) -> [[f32; 4]; M] {
    let nb = scales[0].len();
    let groups = nb / 4;
    for x in xs {
        debug_assert!(x.q.len() >= nb * BLOCK && x.lane_scale_bits.len() >= groups * 16);
        debug_assert!(!TWO || (x.q2.len() >= nb * BLOCK && x.lane_neg_corr_joint.len() >= groups * 16));
    }
    for r in 0..4 {
        debug_assert!(blocks[r].len() >= nb * BLOCK_BYTES && scales[r].len() >= nb);
    }
    let ahead = 4 * nb * BLOCK_BYTES;
    for r in 0..4 {
        _mm_prefetch::<_MM_HINT_T0>(scales[r].as_ptr().add(4 * nb) as *const i8);
    }
    let (lo, hi) = xs.iter().fold((1, 254), |(lo, hi), x| (x.scale_lo.max(lo), x.scale_hi.min(hi)));
    let fast = lo <= hi && scales.iter().all(|s| bytes_within(&s[..groups * 4], lo, hi));
    let mut acc = [[_mm512_setzero_ps(); 4]; M];
    for g in 0..groups {
        for r in 0..4 {
            _mm_prefetch::<_MM_HINT_T0>(blocks[r].as_ptr().add(g * 4 * BLOCK_BYTES).wrapping_add(ahead) as *const i8);
        }
        if fast {
            dot4_group::<TWO, M, true, VBMI>(xs, &blocks, &scales, Some(g), &mut acc);
        } else {
            dot4_group::<TWO, M, false, VBMI>(xs, &blocks, &scales, Some(g), &mut acc);
        }
    }
    if nb % 4 > 0 {
        dot4_group::<TWO, M, false, VBMI>(xs, &blocks, &scales, None, &mut acc);
    }
    let mut out = [[0f32; 4]; M];
    for i in 0..M {
        for r in 0..4 {
            out[i][r] = hsum(acc[i][r]);
        }
    }
    out
}

/// One group of `mxfp4_dot4_int8`: full group `g`, or with None the zero-padded group of
/// the blocks past the last full one (never `FAST`). The four rows' codes are decoded
/// once, then summed against each activation row into `acc`. Inlined into each call
/// site, where `g` is known to be Some or None.
#[inline(always)]
unsafe fn dot4_group<const TWO: bool, const M: usize, const FAST: bool, const VBMI: bool>(
    xs: &[&super::quant::QRow; M],
    blocks: &[&[u8]; 4],
    scales: &[&[u8]; 4],
    g: Option<usize>,
    acc: &mut [[__m512; 4]; M],
) {
    let nb = scales[0].len();
    let (first, t) = match g {
        Some(g) => (g * 4, 4),
        None => (nb / 4 * 4, nb % 4),
    };
    let mut wl = [_mm512_setzero_si512(); 4];
    let mut wh = [_mm512_setzero_si512(); 4];
    let mut sc = [_mm512_setzero_ps(); 4];
    for r in 0..4 {
        let (bp, sp) = (blocks[r].as_ptr().add(first * BLOCK_BYTES), scales[r].as_ptr().add(first));
        let codes = if g.is_some() { _mm512_loadu_si512(bp as *const __m512i) } else { tail_codes(bp, t) };
        (wl[r], wh[r]) = int_codes::<VBMI>(codes);
        sc[r] = match g {
            Some(_) if FAST => plain_scales((sp as *const u32).read_unaligned()),
            Some(_) => group_scales(sp),
            None => table_scales(sp, t),
        };
    }
    for (x, acc) in xs.iter().zip(acc.iter_mut()) {
        let gx = match g {
            Some(g) => GroupX::load::<TWO, FAST>(x, g),
            None => GroupX::tail::<TWO>(x, nb),
        };
        for r in 0..4 {
            acc[r] = gx.scaled_add::<FAST>(gx.decoded::<TWO>(wl[r], wh[r]), sc[r], acc[r]);
        }
    }
}

/// Consecutive rows per call of `mxfp4_rows_int8`.
pub const ROW_BLOCK: usize = 8;

/// The "int8"/"int16" GEMV with one activation row (decode), `ROW_BLOCK` consecutive
/// rows per call, code group outer: each group of the activation row (7 vectors with
/// two limbs) is loaded once into registers for the block's eight lines, and each row
/// keeps its accumulator in a register. A line of codes then carries about 3 loads
/// (its codes, its four scales, 7/8 of the activations') against 3.75 in
/// `mxfp4_dot4_int8`, whose four rows are also four interleaved streams. While a block
/// is computed, `next` (the next block's codes; `next_scales` its scales) is
/// prefetched into L2 line by line, in address order: one stream, and the block's
/// 11.5 KB are read from L2. A line takes 13 vector operations with two limbs (two
/// `vpermb`, a shift, four `vpdpbusd`, the join's shift and add, a conversion, the
/// scales' shuffle, the `vpaddd` of `scaled_add`, an FMA), about 9.8 cycles from L1:
/// at 2 threads it streams 28-35 GB/s of weights whatever the DRAM's minute (README,
/// "What limits each figure").
///
/// The scales are made bf16 words a chunk at a time (`scale_words`), so that a line's
/// four take one shuffle; a chunk with a byte outside the row's `scale_range` (a 0 or
/// 255, or extreme activations) takes `scaled_add_exact` from the bytes. The blocks past the
/// last full group are one more, zero-padded group, as in `mxfp4_dot4_int8`.
///
/// # Safety
/// avx512f/bw/vl/vnni/vbmi; `blocks` and `scales` hold `ROW_BLOCK` rows of nb
/// blocks (nb = scales.len() / ROW_BLOCK), `x` quantized in `Grouped` order from
/// 32 * nb values (two limbs if `TWO`). `next`/`next_scales` are only prefetched (any
/// address).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn mxfp4_rows_int8<const TWO: bool>(
    x: &super::quant::QRow,
    blocks: &[u8],
    scales: &[u8],
    next: *const u8,
    next_scales: *const u8,
) -> [f32; ROW_BLOCK] {
    rows_int8::<TWO, true>(x, blocks, scales, next, next_scales)
}

/// `mxfp4_rows_int8` without VBMI (`int_codes`); the same bits.
///
/// # Safety
/// avx512f/bw/vl/vnni; as `mxfp4_rows_int8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn mxfp4_rows_int8_no_vbmi<const TWO: bool>(
    x: &super::quant::QRow,
    blocks: &[u8],
    scales: &[u8],
    next: *const u8,
    next_scales: *const u8,
) -> [f32; ROW_BLOCK] {
    rows_int8::<TWO, false>(x, blocks, scales, next, next_scales)
}

#[inline(always)]
unsafe fn rows_int8<const TWO: bool, const VBMI: bool>(
    x: &super::quant::QRow,
    blocks: &[u8],
    scales: &[u8],
    next: *const u8,
    next_scales: *const u8,
) -> [f32; ROW_BLOCK] {
    const R: usize = ROW_BLOCK;
    let nb = scales.len() / R;
    let groups = nb / 4;
    let rb = nb * BLOCK_BYTES;
    debug_assert!(blocks.len() >= R * rb && scales.len() >= R * nb);
    debug_assert!(x.q.len() >= nb * BLOCK && x.lane_scale_bits.len() >= groups * 16);
    debug_assert!(!TWO || (x.q2.len() >= nb * BLOCK && x.lane_neg_corr_joint.len() >= groups * 16));
    let (bp, sp) = (blocks.as_ptr(), scales.as_ptr());
    let mut acc = [_mm512_setzero_ps(); R];
    let rows = RowsBlock { bp, nb, next, next_scales };
    // SCALE_CHUNK groups at a time, their scales first made words (or, with a byte
    // outside the row's scale range among them, read as bytes line by line).
    let mut words = std::mem::MaybeUninit::<[[u16; 4 * SCALE_CHUNK]; R]>::uninit();
    let wp = words.as_mut_ptr() as *mut u16;
    for c0 in (0..groups).step_by(SCALE_CHUNK) {
        let c1 = groups.min(c0 + SCALE_CHUNK);
        let mut special = x.scale_lo > x.scale_hi;
        for j in 0..R {
            let at = j * nb + c0 * 4;
            special |= scale_words(sp.add(at), 4 * (c1 - c0), wp.add(j * 4 * SCALE_CHUNK), x.scale_lo, x.scale_hi);
        }
        if special {
            for g in c0..c1 {
                rows.group::<TWO, false, VBMI>(x, g, &mut acc, |j| group_scales(sp.add(j * nb + g * 4)));
            }
        } else {
            for g in c0..c1 {
                rows.group::<TWO, true, VBMI>(x, g, &mut acc, |j| {
                    word_scales(wp.add(j * 4 * SCALE_CHUNK + (g - c0) * 4))
                });
            }
        }
    }
    // The blocks past the last full group, then the next block's last lines.
    let t = nb % 4;
    if t > 0 {
        let gx = GroupX::tail::<TWO>(x, nb);
        for j in 0..R {
            let v = tail_codes(bp.add(j * rb + groups * 64), t);
            let scales = table_scales(sp.add(j * nb + groups * 4), t);
            acc[j] = gx.scaled_add::<false>(gx.line::<TWO, VBMI>(v), scales, acc[j]);
        }
    }
    for k in groups * R..R * rb / 64 + 1 {
        _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(k * 64) as *const i8);
    }
    acc.map(|a| hsum(a))
}

/// The weight rows of one `mxfp4_rows_int8` call: codes at `bp`, nb blocks per row, and
/// what to prefetch.
struct RowsBlock {
    bp: *const u8,
    nb: usize,
    next: *const u8,
    next_scales: *const u8,
}

impl RowsBlock {
    /// Group g's lines of the `ROW_BLOCK` rows into acc, row j's scales from `scale(j)`
    /// (`FAST`: each in the row's scale range, as f32 bits).
    #[inline(always)]
    unsafe fn group<const TWO: bool, const FAST: bool, const VBMI: bool>(
        &self,
        x: &super::quant::QRow,
        g: usize,
        acc: &mut [__m512; ROW_BLOCK],
        scale: impl Fn(usize) -> __m512,
    ) {
        const R: usize = ROW_BLOCK;
        let gx = GroupX::load::<TWO, FAST>(x, g);
        if g < R * self.nb / 64 + 1 {
            _mm_prefetch::<_MM_HINT_T1>(self.next_scales.wrapping_add(g * 64) as *const i8);
        }
        for j in 0..R {
            _mm_prefetch::<_MM_HINT_T1>(self.next.wrapping_add((g * R + j) * 64) as *const i8);
            let v = _mm512_loadu_si512(self.bp.add(j * self.nb * BLOCK_BYTES + g * 64) as *const __m512i);
            acc[j] = gx.scaled_add::<FAST>(gx.line::<TWO, VBMI>(v), scale(j), acc[j]);
        }
    }
}

/// 4x4 tile of dot products straight from bf16 weight rows (widened in registers, no
/// decoded copy): x rows in the `Split` layout, n values.
///
/// # Safety
/// avx512f/bw/vl; each x row holds n values and each weight row 2n bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn bf16_tile(x: [&[f32]; 4], w: [&[u8]; 4], n: usize) -> [[f32; 4]; 4] {
    for i in 0..4 {
        debug_assert!(x[i].len() >= n && w[i].len() >= 2 * n);
    }
    let full = n / 32 * 32;
    let mut total = [[_mm512_setzero_ps(); 4]; 4];
    let mut k = 0;
    while k < full {
        // Partial sums over 256 values, then added into `total` (bounded rounding growth).
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let end = (k + 256).min(full);
        while k < end {
            // The next call's rows (the four below: consecutive in the tensor) into L2:
            // four interleaved streams defeat the hardware prefetcher.
            for wr in &w {
                _mm_prefetch::<_MM_HINT_T1>(wr.as_ptr().wrapping_add(2 * k + 8 * n) as *const i8);
            }
            let wv = [
                widen32(w[0].as_ptr().add(2 * k)),
                widen32(w[1].as_ptr().add(2 * k)),
                widen32(w[2].as_ptr().add(2 * k)),
                widen32(w[3].as_ptr().add(2 * k)),
            ];
            for i in 0..4 {
                let xe = _mm512_loadu_ps(x[i].as_ptr().add(k));
                let xo = _mm512_loadu_ps(x[i].as_ptr().add(k + 16));
                for j in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(wv[j].0, xe, acc[i][j]);
                    acc[i][j] = _mm512_fmadd_ps(wv[j].1, xo, acc[i][j]);
                }
            }
            k += 32;
        }
        for i in 0..4 {
            for j in 0..4 {
                total[i][j] = _mm512_add_ps(total[i][j], acc[i][j]);
            }
        }
    }
    let mut out = [[0f32; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            let mut s = hsum(total[i][j]);
            // Tail (< 32 values) is in natural order.
            for kk in full..n {
                s += x[i][kk] * crate::bf16::to_f32(w[j][2 * kk], w[j][2 * kk + 1]);
            }
            out[i][j] = s;
        }
    }
    out
}

/// 4x4 tile of dot products straight from Q8 rows (each 16 codes widened, unbiased and
/// scaled in registers: no decoded copy), f32 activations in natural order: the bits of
/// `f32_tile` on the rows `q8::dequantize_row` decodes (the same products, summed in the
/// same order). Batched decode's attention and lm_head under `precision="q8"`.
///
/// # Safety
/// avx512f/bw/vl; n % 32 == 0, each x row holds n values, each `codes[j]` n bytes and
/// each `scales[j]` n / 32 words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn q8_tile(x: [&[f32]; 4], codes: [&[u8]; 4], scales: [&[u16]; 4], n: usize) -> [[f32; 4]; 4] {
    debug_assert!(n % BLOCK == 0);
    for i in 0..4 {
        debug_assert!(x[i].len() >= n && codes[i].len() >= n && scales[i].len() >= n / BLOCK);
    }
    let bias = _mm512_set1_epi32(128);
    // (q - 128) * d for 16 codes at p, as `q8::dequantize_row` computes it.
    let decode = |p: *const u8, d: __m512| {
        let q = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)), bias);
        _mm512_mul_ps(_mm512_cvtepi32_ps(q), d)
    };
    let mut total = [[_mm512_setzero_ps(); 4]; 4];
    let mut k = 0;
    while k < n {
        // Partial sums over 256 values, then added into `total`, as `f32_tile`.
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let end = (k + 256).min(n);
        while k < end {
            // The next call's rows (the four below: consecutive in the tensor) into L2,
            // as `bf16_tile` does.
            if k % 64 == 0 {
                for c in &codes {
                    _mm_prefetch::<_MM_HINT_T1>(c.as_ptr().wrapping_add(k + 4 * n) as *const i8);
                }
            }
            // One block: 32 values, 16 at a time into each accumulator.
            let xv = [0, 1, 2, 3]
                .map(|i| (_mm512_loadu_ps(x[i].as_ptr().add(k)), _mm512_loadu_ps(x[i].as_ptr().add(k + 16))));
            for j in 0..4 {
                let d = _mm512_set1_ps(crate::q8::scale(*scales[j].get_unchecked(k / BLOCK)));
                let (w0, w1) = (decode(codes[j].as_ptr().add(k), d), decode(codes[j].as_ptr().add(k + 16), d));
                for i in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(xv[i].0, w0, acc[i][j]);
                    acc[i][j] = _mm512_fmadd_ps(xv[i].1, w1, acc[i][j]);
                }
            }
            k += BLOCK;
        }
        for i in 0..4 {
            for j in 0..4 {
                total[i][j] = _mm512_add_ps(total[i][j], acc[i][j]);
            }
        }
    }
    total.map(|row| row.map(|a| hsum(a)))
}

/// Q8 weights with VNNI: four rows against one quantized activation row (`Lanes`
/// order). 64 code bytes (two blocks) per step: `vpdpbusd` sums biased-code x q
/// products exactly into 16 dword lanes (8 per block), starting from the two blocks'
/// -128*sum(q) corrections in the first lane of each (permuted from a register that
/// holds 16 blocks' corrections: two activation loads per step, not four). Scales are
/// applied per 16 blocks: their bf16 weight scales times the activation scales, one
/// vector, permuted to each block pair's lanes.
///
/// # Safety
/// avx512f/bw/vl/vnni; `x` quantized in `Lanes` order with n = 32 * nb values, where
/// nb = `scales[0].len()`; each `codes[r].len() >= 32 * nb` and `scales[r].len() >= nb`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q8_dot4_int8<const TWO: bool>(
    x: &super::quant::QRow,
    codes: [&[u8]; 4],
    scales: [&[u16]; 4],
) -> [f32; 4] {
    use super::quant::LIMB2;
    let nb = scales[0].len();
    debug_assert!(x.q.len() >= nb * BLOCK && x.lane_neg_corr.len() >= nb);
    for r in 0..4 {
        debug_assert!(codes[r].len() >= nb * BLOCK && scales[r].len() >= nb);
    }
    // Lanes 0-7 take block 2c's scale, lanes 8-15 block 2c + 1's; with the mask, lane 0
    // takes block 2c's correction and lane 8 block 2c + 1's, the other lanes 0.
    let pair_idx: [__m512i; 8] = std::array::from_fn(|c| {
        let c = 2 * c as i32;
        _mm512_set_epi32(c + 1, c + 1, c + 1, c + 1, c + 1, c + 1, c + 1, c + 1, c, c, c, c, c, c, c, c)
    });
    const FIRST_LANES: __mmask16 = 0x0101;
    let (qp, ncp) = (x.q.as_ptr(), x.lane_neg_corr.as_ptr());
    let (q2p, nc2p) = (x.q2.as_ptr(), x.lane_neg_corr2.as_ptr());
    let pairs_end = nb / 2 * 2;
    let mut out = [0f32; 4];
    for r in 0..4 {
        let cp = codes[r].as_ptr();
        let sp = scales[r].as_ptr();
        let mut acc = _mm512_setzero_ps();
        let mut b = 0;
        while b < pairs_end {
            // Up to 16 blocks (an even count) share one scale vector.
            let count = (pairs_end - b).min(16);
            let mask: __mmask16 = ((1u32 << count) - 1) as __mmask16;
            let ws = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, sp.add(b) as *const i16));
            let ws = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(ws));
            let s16 = _mm512_mul_ps(ws, _mm512_maskz_loadu_ps(mask, x.half_d.as_ptr().add(b)));
            let nc16 = _mm512_maskz_loadu_epi32(mask, ncp.add(b));
            let nc2_16 = if TWO { _mm512_maskz_loadu_epi32(mask, nc2p.add(b)) } else { nc16 };
            for (c, idx) in pair_idx.iter().enumerate().take(count / 2) {
                let k = (b + 2 * c) * BLOCK;
                _mm_prefetch::<_MM_HINT_T1>(cp.wrapping_add(k + Q8_PREFETCH) as *const i8);
                let v = _mm512_loadu_si512(cp.add(k) as *const __m512i);
                let limb = |q: *const i8, nc16: __m512i| {
                    let q = _mm512_loadu_si512(q.add(k) as *const __m512i);
                    let nc = _mm512_maskz_permutexvar_epi32(FIRST_LANES, *idx, nc16);
                    _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, v, q))
                };
                let mut f = limb(qp, nc16);
                if TWO {
                    f = _mm512_fmadd_ps(limb(q2p, nc2_16), _mm512_set1_ps(LIMB2), f);
                }
                acc = _mm512_fmadd_ps(f, _mm512_permutexvar_ps(*idx, s16), acc);
            }
            b += count;
        }
        let mut v = 2.0 * hsum(acc);
        if pairs_end < nb {
            // An odd last block, as the scalar twin does it.
            let k = pairs_end * BLOCK;
            let dot = |q: *const i8| -> i32 {
                (0..BLOCK).map(|j| (*cp.add(k + j) as i32 - 128) * *q.add(k + j) as i32).sum()
            };
            let mut t = dot(qp) as f32;
            if TWO {
                t += dot(q2p) as f32 * LIMB2;
            }
            v += t * (2.0 * x.half_d[pairs_end]) * crate::q8::scale(*sp.add(pairs_end));
        }
        out[r] = v;
    }
    out
}

/// Weight rows per packed-GEMM step and tokens per packed activation group.
pub const PANEL_ROWS: usize = 12;
pub const PANEL_TOKENS: usize = 32;

/// Packed GEMM step: c[j][t] = sum_k w[j][k] * xg[k][t] for 12 weight rows and the first
/// 16 V tokens of a group of 32 (V = 2; V = 1 for a last group of at most 16 tokens, so
/// that its padding costs no work). Each weight value is broadcast and multiplied with
/// the tokens' activations: 24 accumulators, 14 loads per 24 FMAs, and a working set of
/// a few cache lines per k. Sums run over `super::GEMM_K_CHUNK` values at a time, then
/// add into `c`.
///
/// # Safety
/// avx512f; each `w[j]` holds n values, `xg` n * 32 (a packed group), `c` 12 * 32.
#[target_feature(enable = "avx512f")]
pub unsafe fn gemm_panel<const V: usize>(w: &[&[f32]; PANEL_ROWS], xg: &[f32], n: usize, c: &mut [f32]) {
    debug_assert!(xg.len() >= n * PANEL_TOKENS && c.len() >= PANEL_ROWS * PANEL_TOKENS);
    for r in w {
        debug_assert!(r.len() >= n);
    }
    let wp: [*const f32; PANEL_ROWS] = w.map(|r| r.as_ptr());
    let (xp, cp) = (xg.as_ptr(), c.as_mut_ptr());
    for v in 0..2 * PANEL_ROWS {
        _mm512_storeu_ps(cp.add(16 * v), _mm512_setzero_ps());
    }
    debug_assert!(V == 1 || V == 2);
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + super::GEMM_K_CHUNK).min(n);
        let mut acc = [[_mm512_setzero_ps(); V]; PANEL_ROWS];
        for k in k0..k1 {
            let xv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(xp.add(k * PANEL_TOKENS + 16 * v)));
            for j in 0..PANEL_ROWS {
                let b = _mm512_set1_ps(*wp[j].add(k));
                for v in 0..V {
                    acc[j][v] = _mm512_fmadd_ps(b, xv[v], acc[j][v]);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            for (v, &av) in a.iter().enumerate() {
                let p = cp.add(j * PANEL_TOKENS + 16 * v);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), av));
            }
        }
        k0 = k1;
    }
}

/// Widen one bf16 row to f32 in the `Split` layout (the GEMM's decode of bf16 rows).
///
/// # Safety
/// avx512f/bw/vl; `row.len() >= 2 * out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn bf16_decode(row: &[u8], out: &mut [f32]) {
    let n = out.len();
    debug_assert!(row.len() >= 2 * n);
    let full = n / 32 * 32;
    let mut k = 0;
    while k < full {
        let (e, o) = widen32(row.as_ptr().add(2 * k));
        _mm512_storeu_ps(out.as_mut_ptr().add(k), e);
        _mm512_storeu_ps(out.as_mut_ptr().add(k + 16), o);
        k += 32;
    }
    crate::bf16::widen(&row[2 * full..2 * n], &mut out[full..]);
}

use super::QPANEL_ROWS;

/// One MXFP4 row's codes as u8 2*E2M1+12 in natural order (`out.len() == 2 * blocks.len()`):
/// the unsigned operand of `vpdpbusd` in `qgemm_panel`.
///
/// # Safety
/// avx512f/bw/vl.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn mxfp4_codes(blocks: &[u8], out: &mut [u8]) {
    use super::quant::W2_PLUS_12;
    debug_assert_eq!(out.len(), 2 * blocks.len());
    let lut128 = _mm_loadu_si128(W2_PLUS_12.as_ptr() as *const __m128i);
    let lut = _mm512_broadcast_i32x4(lut128);
    let nib = _mm512_set1_epi8(0x0f);
    // After the byte interleave, 128-bit lane L of `a` holds values 0..16 of block L and
    // lane L of `b` values 16..32: gather them block by block.
    let first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    let second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    let full = blocks.len() / 64 * 64;
    for i in (0..full).step_by(64) {
        let v = _mm512_loadu_si512(blocks.as_ptr().add(i) as *const __m512i);
        let lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, nib));
        let hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib));
        let a = _mm512_unpacklo_epi8(lo, hi);
        let b = _mm512_unpackhi_epi8(lo, hi);
        let o = out.as_mut_ptr().add(2 * i);
        _mm512_storeu_si512(o as *mut __m512i, _mm512_permutex2var_epi64(a, first, b));
        _mm512_storeu_si512(o.add(64) as *mut __m512i, _mm512_permutex2var_epi64(a, second, b));
    }
    super::generic::mxfp4_codes(&blocks[full..], &mut out[2 * full..]);
}

/// Quantized packed-GEMM step ("int8"/"int16" precisions, m > 4): c[j][16 g + t] for
/// `QPANEL_ROWS` weight rows and G token groups of a `QPack`. Per block, each quad of 4
/// weight codes is broadcast and `vpdpbusd` sums it against that quad of all 16 tokens
/// of a group (exact integer sums from the groups' -12*sum(q) corrections); the limbs'
/// sums are joined in integers, 256 s1 + s2, converted once and scaled as in
/// `mxfp4_dot4_int8`: times the token's multiplier (d/2 / 256) times the block's scale,
/// that product one integer add with `FAST` (every scale byte of the rows in the pack's
/// `scale_range`), else `scaled_add_exact` (the same bits wherever both apply). 10% more
/// multiply-adds per ns than two conversions, a limb FMA and a multiply
/// (`gemm_panel_speed`: 106-109 against 97-98).
///
/// # Safety
/// avx512f/bw/vl/vnni; `codes[j]` hold 32 * nb bytes, `scales[j]` nb values, each group
/// is a `QPack` group of nb blocks with 1 + TWO limbs, `c.len() >= QPANEL_ROWS * 16 * G`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn qgemm_panel<const TWO: bool, const G: usize, const FAST: bool>(
    codes: [&[u8]; QPANEL_ROWS],
    scales: [&[f32]; QPANEL_ROWS],
    xg: [super::quant::QGroup; G],
    nb: usize,
    c: &mut [f32],
) {
    use super::quant::{LIMB2_SHIFT, QPACK_TOKENS, QUADS};
    const T: usize = QPACK_TOKENS;
    let limbs = if TWO { 2 } else { 1 };
    for j in 0..QPANEL_ROWS {
        debug_assert!(codes[j].len() >= nb * BLOCK && scales[j].len() >= nb);
    }
    for x in &xg {
        debug_assert!(x.q.len() >= nb * QUADS * limbs * T * 4 && x.half_d.len() >= nb * T);
    }
    let mut acc = [[_mm512_setzero_ps(); G]; QPANEL_ROWS];
    for b in 0..nb {
        let mut s1 = [[_mm512_setzero_si512(); G]; QPANEL_ROWS];
        let mut s2 = [[_mm512_setzero_si512(); G]; QPANEL_ROWS];
        for t in 0..G {
            let nc = xg[t].neg_corr.as_ptr().add(b * limbs * T);
            let nc1 = _mm512_loadu_si512(nc as *const __m512i);
            let nc2 = if TWO { _mm512_loadu_si512(nc.add(T) as *const __m512i) } else { nc1 };
            for j in 0..QPANEL_ROWS {
                s1[j][t] = nc1;
                s2[j][t] = nc2;
            }
        }
        for quad in 0..QUADS {
            let mut x1 = [_mm512_setzero_si512(); G];
            let mut x2 = [_mm512_setzero_si512(); G];
            for t in 0..G {
                let p = xg[t].q.as_ptr().add((b * QUADS + quad) * limbs * T * 4);
                x1[t] = _mm512_loadu_si512(p as *const __m512i);
                if TWO {
                    x2[t] = _mm512_loadu_si512(p.add(T * 4) as *const __m512i);
                }
            }
            for j in 0..QPANEL_ROWS {
                let w4 = (codes[j].as_ptr().add(b * BLOCK + quad * 4) as *const i32).read_unaligned();
                let wb = _mm512_set1_epi32(w4);
                for t in 0..G {
                    s1[j][t] = _mm512_dpbusd_epi32(s1[j][t], wb, x1[t]);
                    if TWO {
                        s2[j][t] = _mm512_dpbusd_epi32(s2[j][t], wb, x2[t]);
                    }
                }
            }
        }
        for t in 0..G {
            let mult = if FAST {
                _mm512_loadu_si512(xg[t].scale_bits.as_ptr().add(b * T) as *const __m512i)
            } else {
                _mm512_castps_si512(_mm512_loadu_ps(xg[t].half_d.as_ptr().add(b * T)))
            };
            for j in 0..QPANEL_ROWS {
                let f = if TWO {
                    _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32::<LIMB2_SHIFT>(s1[j][t]), s2[j][t]))
                } else {
                    _mm512_cvtepi32_ps(s1[j][t])
                };
                let s = *scales[j].get_unchecked(b);
                acc[j][t] = if FAST {
                    let m = _mm512_add_epi32(mult, _mm512_set1_epi32(s.to_bits() as i32));
                    _mm512_fmadd_ps(f, _mm512_castsi512_ps(m), acc[j][t])
                } else {
                    scaled_add_exact(f, _mm512_castsi512_ps(mult), _mm512_set1_ps(s), acc[j][t])
                };
            }
        }
    }
    for j in 0..QPANEL_ROWS {
        for t in 0..G {
            _mm512_storeu_ps(c.as_mut_ptr().add((j * G + t) * T), acc[j][t]);
        }
    }
}

/// `quant::quantize_block`'s twin: the same f32 operations lane by lane, so the same
/// bytes, sums and d/2 (a block with a non-finite value: zeros and NaN).
///
/// # Safety
/// avx512f/bw/vl; `xb` holds 32 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn quantize_block(
    xb: &[f32],
    two_limbs: bool,
    qb: &mut [i8; BLOCK],
    qb2: &mut [i8; BLOCK],
) -> (f32, i32, i32) {
    use super::quant::MAGIC;
    assert!(xb.len() >= BLOCK);
    let v = [_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(16))];
    let abs = v.map(|v| _mm512_abs_ps(v));
    // |v| < inf is false for inf and NaN.
    let inf = _mm512_set1_ps(f32::INFINITY);
    let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs[0], inf) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs[1], inf);
    if finite != 0xffff {
        qb.fill(0);
        qb2.fill(0);
        return (f32::NAN, 0, 0);
    }
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs[0], abs[1]));
    let (d, inv) = super::quant::block_scale(amax);
    let (magic, lo, hi) = (_mm512_set1_ps(MAGIC), _mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    let round = |y: __m512| _mm512_max_ps(_mm512_min_ps(_mm512_sub_ps(_mm512_add_ps(y, magic), magic), hi), lo);
    let (mut sum, mut sum2) = (0, 0);
    for h in 0..2 {
        let y = _mm512_mul_ps(v[h], _mm512_set1_ps(inv));
        let r = round(y);
        let mut q = _mm512_cvtps_epi32(r);
        if two_limbs {
            // y - r is exact (Sterbenz) and in [-0.5, 0.5]; t = 128 carries into q.
            let t =
                _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(y, r), _mm512_set1_ps(256.0)), magic), magic);
            let carry = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(t, _mm512_set1_ps(128.0));
            q = _mm512_mask_add_epi32(q, carry, q, _mm512_set1_epi32(1));
            let q2 = _mm512_mask_mov_epi32(_mm512_cvtps_epi32(t), carry, _mm512_set1_epi32(-128));
            _mm_storeu_si128(qb2.as_mut_ptr().add(16 * h) as *mut __m128i, _mm512_cvtsepi32_epi8(q2));
            sum2 += _mm512_reduce_add_epi32(q2);
        }
        _mm_storeu_si128(qb.as_mut_ptr().add(16 * h) as *mut __m128i, _mm512_cvtsepi32_epi8(q));
        sum += _mm512_reduce_add_epi32(q);
    }
    (d * 0.5, sum, sum2)
}
