//! Attention for one (token, kv head): the query heads that share the kv head read each
//! K and V row once (grouped-query attention).
//!
//! scores[h][j] = q_h . k_j / sqrt(head_dim) over the visible keys, one extra logit per
//! head (its learned sink) joins the softmax and is dropped, out_h = sum_j p[h][j] v_j.
//!
//! One body, written so the compiler can vectorize it (independent partial sums, no
//! reductions across lanes in the inner loops), compiled three times: plain, and with
//! AVX2 or AVX-512 enabled; `cpu::Isa` picks which at run time. Each is generic over the
//! cache's element type (f32, or bf16 widened as it is read).

use crate::cpu::Isa;
use crate::runtime::kv_cache::KvRows;

/// An element of cached K/V rows.
pub trait KvElem: Copy {
    fn to_f32(self) -> f32;
    /// 16 consecutive elements as f32.
    ///
    /// # Safety
    /// AVX-512F; 16 elements readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

/// bf16 bits: the top half of an f32.
impl KvElem for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::bf16::bits_to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
    }
}

/// The inputs of one group.
pub struct Group<'a> {
    /// [group, head_dim]: the query heads sharing this kv head
    pub q: &'a [f32],
    /// the layer's K and V storage
    pub kv: KvRows<'a>,
    /// elements from one position's row to the next (head_dim in the head-major cache)
    pub row_stride: usize,
    /// where this kv head's row of position 0 starts
    pub off: usize,
    /// first visible key, and how many
    pub lo: usize,
    pub nkeys: usize,
    pub head_dim: usize,
    /// [group]
    pub sinks: &'a [f32],
    pub scale: f32,
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for x <= 0 (softmax inputs after subtracting the max): range reduction to
/// |r| <= ln2/2 and a degree-6 polynomial (Cephes' expf, ~1 ulp); branch-free so that
/// it vectorizes. Below -87 it returns e^-87 (~1.6e-38), which no softmax can notice.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// a . b with 16 independent partial sums (vectorizable).
#[inline(always)]
fn dot<E: KvElem>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l].to_f32();
        }
    }
    let mut s = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y.to_f32();
    }
    acc.iter().sum::<f32>() + s
}

/// Sum with 16 independent partial sums (vectorizable).
#[inline(always)]
fn sum16(s: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut c = s.chunks_exact(16);
    for x in &mut c {
        for l in 0..16 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + c.remainder().iter().sum::<f32>()
}

/// The largest of `init` and `s`, with 16 independent partial maxima (vectorizable; a
/// single running maximum is a chain of dependent compares, one per score).
#[inline(always)]
fn max16(init: f32, s: &[f32]) -> f32 {
    let mut acc = [init; 16];
    let mut c = s.chunks_exact(16);
    for x in &mut c {
        for l in 0..16 {
            acc[l] = acc[l].max(x[l]);
        }
    }
    acc.iter().chain(c.remainder()).fold(init, |m, &x| m.max(x))
}

/// Softmax over keys + sink of each head's scores, in place (the sink's share is left out).
#[inline(always)]
fn softmax_with_sinks(sinks: &[f32], n: usize, scores: &mut [f32]) {
    for (h, &sink) in sinks.iter().enumerate() {
        let s = &mut scores[h * n..(h + 1) * n];
        let max = max16(sink, s);
        for x in s.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / (sum16(s) + exp(sink - max));
        for x in s.iter_mut() {
            *x *= inv;
        }
    }
}

#[inline(always)]
fn body<E: KvElem>(g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    let (group, hd, n) = (g.sinks.len(), g.head_dim, g.nkeys);
    for j in 0..n {
        let row = (g.lo + j) * g.row_stride + g.off;
        let kr = &k[row..row + hd];
        for h in 0..group {
            scores[h * n + j] = dot(&g.q[h * hd..(h + 1) * hd], kr) * g.scale;
        }
    }
    softmax_with_sinks(g.sinks, n, scores);
    out.fill(0.0);
    for j in 0..n {
        let row = (g.lo + j) * g.row_stride + g.off;
        let vr = &v[row..row + hd];
        for h in 0..group {
            let p = scores[h * n + j];
            let o = &mut out[h * hd..(h + 1) * hd];
            for (o, &x) in o.iter_mut().zip(vr) {
                *o += p * x.to_f32();
            }
        }
    }
}

/// AVX-512 attention of one group, for head_dim a multiple of 16 up to 64 (gpt-oss: 64).
/// Scores of 16 keys at a time: one accumulator per key, reduced together by a
/// transpose-add tree (45 shuffles and adds for 16 dot products instead of a horizontal
/// sum each); the weighted sum of V keeps four heads' outputs in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn body_avx512<E: KvElem>(g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    match g.head_dim {
        64 => body_avx512_chunks::<E, 4>(g, k, v, scores, out),
        48 => body_avx512_chunks::<E, 3>(g, k, v, scores, out),
        32 => body_avx512_chunks::<E, 2>(g, k, v, scores, out),
        16 => body_avx512_chunks::<E, 1>(g, k, v, scores, out),
        _ => body(g, k, v, scores, out),
    }
}

/// `body_avx512` for head_dim = 16 * NC (a constant, so that a key's chunks and the
/// outputs stay in registers).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn body_avx512_chunks<E: KvElem, const NC: usize>(
    g: &Group,
    k: &[E],
    v: &[E],
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (group, hd, n) = (g.sinks.len(), g.head_dim, g.nkeys);
    let scale = _mm512_set1_ps(g.scale);
    let key = |j: usize| k.as_ptr().add((g.lo + j) * g.row_stride + g.off);
    // scores[h][j] = q_h . k_j * scale
    let full = n / 16 * 16;
    for j0 in (0..full).step_by(16) {
        for h in 0..group {
            let qh = g.q.as_ptr().add(h * hd);
            let mut acc = [_mm512_setzero_ps(); 16];
            for c in 0..NC {
                let qv = _mm512_loadu_ps(qh.add(c * 16));
                for (l, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(qv, E::load16(key(j0 + l).add(c * 16)), *a);
                }
            }
            let s = _mm512_mul_ps(reduce16(&acc), scale);
            _mm512_storeu_ps(scores.as_mut_ptr().add(h * n + j0), s);
        }
    }
    for j in full..n {
        for h in 0..group {
            let qh = g.q.as_ptr().add(h * hd);
            let mut a = _mm512_setzero_ps();
            for c in 0..NC {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qh.add(c * 16)), E::load16(key(j).add(c * 16)), a);
            }
            scores[h * n + j] = _mm512_reduce_add_ps(a) * g.scale;
        }
    }
    softmax_with_sinks(g.sinks, n, scores);
    // out_h = sum_j p[h][j] v_j, four heads at a time in registers.
    for h0 in (0..group).step_by(4) {
        let hn = (group - h0).min(4);
        let mut o = [[_mm512_setzero_ps(); NC]; 4];
        for j in 0..n {
            let vp = v.as_ptr().add((g.lo + j) * g.row_stride + g.off);
            let vv: [__m512; NC] = std::array::from_fn(|c| E::load16(vp.add(c * 16)));
            for (hh, oh) in o.iter_mut().enumerate().take(hn) {
                let p = _mm512_set1_ps(*scores.get_unchecked((h0 + hh) * n + j));
                for c in 0..NC {
                    oh[c] = _mm512_fmadd_ps(p, vv[c], oh[c]);
                }
            }
        }
        for (hh, oh) in o.iter().enumerate().take(hn) {
            for (c, &v) in oh.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add((h0 + hh) * hd + c * 16), v);
            }
        }
    }
}

/// Lane l of the result = the sum of the 16 lanes of a[l]. Inlined into its AVX-512
/// caller (an out-of-line call would pass the 16 vectors through memory).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn reduce16(a: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Pairs of keys: per 128-bit lane [x0+x2, y0+y2, x1+x3, y1+y3].
    let pair = |x: __m512, y: __m512| _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    // Quads: per 128-bit lane, that lane's sums of four keys in order.
    let quad = |x: __m512, y: __m512| {
        let (x, y) = (_mm512_castps_pd(x), _mm512_castps_pd(y));
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)))
    };
    // Across the 128-bit lanes: [x L0+L1, x L2+L3, y L0+L1, y L2+L3], then the totals.
    let half = |x: __m512, y: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y))
    };
    let q0 = quad(pair(a[0], a[1]), pair(a[2], a[3]));
    let q1 = quad(pair(a[4], a[5]), pair(a[6], a[7]));
    let q2 = quad(pair(a[8], a[9]), pair(a[10], a[11]));
    let q3 = quad(pair(a[12], a[13]), pair(a[14], a[15]));
    half(half(q0, q1), half(q2, q3))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2<E: KvElem>(g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    body(g, k, v, scores, out)
}

/// Attention of one group: `scores` is scratch of at least group * nkeys; `out` is
/// [group, head_dim].
pub fn attend_group(isa: Isa, g: &Group, scores: &mut [f32], out: &mut [f32]) {
    match g.kv {
        KvRows::F32 { k, v } => attend_rows(isa, g, k, v, scores, out),
        KvRows::Bf16 { k, v } => attend_rows(isa, g, k, v, scores, out),
    }
}

fn attend_rows<E: KvElem>(isa: Isa, g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    assert!(scores.len() >= g.sinks.len() * g.nkeys && out.len() == g.sinks.len() * g.head_dim);
    let end = if g.nkeys == 0 { 0 } else { (g.lo + g.nkeys - 1) * g.row_stride + g.off + g.head_dim };
    assert!(end <= k.len().min(v.len()) && g.head_dim <= g.row_stride);
    match isa {
        // SAFETY: `isa` comes from `cpu::select`, which checked the CPU has these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { body_avx512(g, k, v, scores, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { body_avx2(g, k, v, scores, out) },
        _ => body(g, k, v, scores, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001;
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn every_path_matches_a_float64_softmax() {
        // (group, head_dim, row stride, cache rows, head offset, first key, keys): the real shape
        // (8 x 64) with 16-key blocks and a tail, a partial group of four heads, exactly
        // 16 keys, fewer than 16, head_dims the AVX-512 kernel leaves to the plain body, and the
        // head-major cache's layout (rows head_dim apart, the fourth head's run).
        for &(group, hd, stride, len, off, lo, nkeys) in &[
            (8usize, 64usize, 512usize, 400usize, 192usize, 7usize, 333usize),
            (5, 64, 128, 20, 64, 4, 16),
            (2, 32, 64, 9, 0, 0, 9),
            (3, 40, 80, 37, 40, 5, 30),
            (1, 80, 160, 40, 80, 0, 40),
            (8, 64, 64, 300, 3 * 300 * 64, 5, 290),
        ] {
            let f = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
            let q: Vec<f32> = (0..group * hd).map(f).collect();
            let k32: Vec<f32> = (0..off + len * stride).map(|i| f(i + 7)).collect();
            let v32: Vec<f32> = (0..off + len * stride).map(|i| f(i + 13)).collect();
            let sinks: Vec<f32> = (0..group).map(|h| [0.3f32, -1.0, 2.0][h % 3] + h as f32 * 0.1).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            // The same cache as bf16 rows; its reference reads the rounded values.
            let (k16, v16): (Vec<u16>, Vec<u16>) =
                (k32.iter().map(|&x| bf16::from_f32(x)).collect(), v32.iter().map(|&x| bf16::from_f32(x)).collect());
            let (k16f, v16f): (Vec<f32>, Vec<f32>) =
                (k16.iter().map(|&b| b.to_f32()).collect(), v16.iter().map(|&b| b.to_f32()).collect());
            let caches =
                [(KvRows::F32 { k: &k32, v: &v32 }, &k32, &v32), (KvRows::Bf16 { k: &k16, v: &v16 }, &k16f, &v16f)];
            for ((rows, k, v), isa) in caches.iter().flat_map(|c| Isa::available().into_iter().map(move |isa| (c, isa)))
            {
                let g =
                    Group { q: &q, kv: *rows, row_stride: stride, off, lo, nkeys, head_dim: hd, sinks: &sinks, scale };
                let mut scores = vec![0f32; group * nkeys];
                let mut out = vec![0f32; group * hd];
                attend_group(isa, &g, &mut scores, &mut out);
                for h in 0..group {
                    let s: Vec<f64> = (0..nkeys)
                        .map(|j| {
                            (0..hd).map(|d| q[h * hd + d] as f64 * k[(lo + j) * stride + off + d] as f64).sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(sinks[h] as f64, f64::max);
                    let denom: f64 = s.iter().map(|x| (x - max).exp()).sum::<f64>() + (sinks[h] as f64 - max).exp();
                    for d in 0..hd {
                        let want: f64 = (0..nkeys)
                            .map(|j| (s[j] - max).exp() / denom * v[(lo + j) * stride + off + d] as f64)
                            .sum();
                        let got = out[h * hd + d] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{isa:?} {group}x{hd} keys {nkeys} h{h} d{d} ({} rows): {got} vs {want}",
                            if matches!(rows, KvRows::F32 { .. }) { "f32" } else { "bf16" }
                        );
                    }
                }
            }
        }
    }
}
