//! Attention for one (token, kv head): the query heads that share the kv head read each
//! K and V row once (grouped-query attention).
//!
//! scores[h][j] = q_h . k_j / sqrt(head_dim) over the visible keys, one extra logit per
//! head (its learned sink) joins the softmax and is dropped, out_h = sum_j p[h][j] v_j.
//!
//! K is stored transposed in tiles of 16 keys (`KEY_TILE`, see `kv_cache`): one vector
//! holds dimension d of 16 keys, so a head's 16 scores are head_dim multiply-adds of
//! that vector by q_h[d], with no sums across lanes; every query head of the group
//! reads the tile while it is in L1. Scores are computed for whole tiles; the keys of
//! the first and last tile outside lo..lo+nkeys get scores that are never used.
//!
//! One body, written so the compiler can vectorize it, compiled three times: plain, and
//! with AVX2 or AVX-512 enabled; `cpu::Isa` picks which at run time. AVX-512 has its
//! own body with the heads' accumulators in registers. Each is generic over the cache's
//! element type (f32, or bf16 widened as it is read).

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

/// Keys per tile of the K storage.
pub const KEY_TILE: usize = 16;

/// The inputs of one group.
pub struct Group<'a> {
    /// [group, head_dim]: the query heads sharing this kv head
    pub q: &'a [f32],
    /// the layer's K and V storage
    pub kv: KvRows<'a>,
    /// where this kv head's storage starts: V's row of position p at off + p head_dim,
    /// K's tile of positions 16t.. at off + 16 t head_dim, [head_dim][16]
    pub off: usize,
    /// first visible key, and how many
    pub lo: usize,
    pub nkeys: usize,
    pub head_dim: usize,
    /// [group]
    pub sinks: &'a [f32],
    pub scale: f32,
}

impl Group<'_> {
    /// The key tiles covering lo..lo+nkeys (first, end), and where key lo falls in the
    /// first.
    fn tiles(&self) -> (usize, usize, usize) {
        let t0 = self.lo / KEY_TILE;
        (t0, (self.lo + self.nkeys).div_ceil(KEY_TILE), self.lo - t0 * KEY_TILE)
    }

    /// Scores per head: the keys of whole tiles.
    fn span(&self) -> usize {
        let (t0, t1, _) = self.tiles();
        (t1 - t0) * KEY_TILE
    }

    /// Scratch `attend_group` needs for scores.
    pub fn scores_len(&self) -> usize {
        self.sinks.len() * self.span()
    }

    /// Elements of K and V storage it reads, from 0.
    fn storage_end(&self) -> usize {
        let (_, t1, _) = self.tiles();
        let k_end = self.off + t1 * KEY_TILE * self.head_dim;
        let v_end = self.off + (self.lo + self.nkeys) * self.head_dim;
        k_end.max(v_end)
    }
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for x <= 0 (softmax inputs after subtracting the max): range reduction to
/// |r| <= ln2/2 and a degree-6 polynomial (Cephes' expf, ~1 ulp); branch-free so that
/// it vectorizes. Below -87 it returns e^-87 (~1.6e-38), which no softmax can notice.
///
/// 2^n is built without a float-to-int cast (Rust's saturating `as i32` compiled to a
/// scalar convert-and-compare per lane, a quarter of decode attention's time at depth
/// 4096): n + 127 + 2^23 holds n + 127 in its low mantissa bits, and shifting the bits
/// left by 23 drops the rest.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 2^23 + the exponent bias
    const MAGIC: f32 = 8_388_608.0 + 127.0;
    // max/min rather than clamp: a NaN input gives e^-87, as before, instead of panicking
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(0.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // n in -126..=0: n + 127 in 1..=127, a normal power of two.
    e * f32::from_bits((n + MAGIC).to_bits() << 23)
}

/// Each x of `s` replaced by e^(x - max); returns their sum, taken with 16 independent
/// partial sums (vectorizable) in the same pass.
#[inline(always)]
fn exp_in_place_sum(s: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut c = s.chunks_exact_mut(16);
    for x in &mut c {
        for l in 0..16 {
            x[l] = exp(x[l] - max);
            acc[l] += x[l];
        }
    }
    let mut tail = 0f32;
    for x in c.into_remainder() {
        *x = exp(*x - max);
        tail += *x;
    }
    acc.iter().sum::<f32>() + tail
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

/// Softmax over keys + sink of each head's scores, in place (the sink's share is left
/// out): head h's n scores start at h * span + skip.
#[inline(always)]
fn softmax_with_sinks(sinks: &[f32], span: usize, skip: usize, n: usize, scores: &mut [f32]) {
    for (h, &sink) in sinks.iter().enumerate() {
        let s = &mut scores[h * span + skip..h * span + skip + n];
        let max = max16(sink, s);
        let inv = 1.0 / (exp_in_place_sum(s, max) + exp(sink - max));
        for x in s.iter_mut() {
            *x *= inv;
        }
    }
}

#[inline(always)]
fn body<E: KvElem>(g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    let (group, hd, n) = (g.sinks.len(), g.head_dim, g.nkeys);
    let (t0, t1, skip) = g.tiles();
    let span = g.span();
    // scores[h][16 (t - t0) + l] = q_h . k_{16 t + l} * scale, a tile's 16 keys together.
    for t in t0..t1 {
        let tile = &k[g.off + t * KEY_TILE * hd..g.off + (t + 1) * KEY_TILE * hd];
        for h in 0..group {
            let mut acc = [0f32; KEY_TILE];
            for (&qd, kd) in g.q[h * hd..(h + 1) * hd].iter().zip(tile.chunks_exact(KEY_TILE)) {
                for l in 0..KEY_TILE {
                    acc[l] += qd * kd[l].to_f32();
                }
            }
            let at = h * span + (t - t0) * KEY_TILE;
            for (s, a) in scores[at..at + KEY_TILE].iter_mut().zip(acc) {
                *s = a * g.scale;
            }
        }
    }
    softmax_with_sinks(g.sinks, span, skip, n, scores);
    out.fill(0.0);
    for j in 0..n {
        let row = g.off + (g.lo + j) * hd;
        let vr = &v[row..row + hd];
        for h in 0..group {
            let p = scores[h * span + skip + j];
            let o = &mut out[h * hd..(h + 1) * hd];
            for (o, &x) in o.iter_mut().zip(vr) {
                *o += p * x.to_f32();
            }
        }
    }
}

/// AVX-512 attention of one group, for head_dim 16, 32, 48 or 64 (gpt-oss: 64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn body_avx512<E: KvElem>(g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    let group = g.sinks.len();
    if !matches!(g.head_dim, 16 | 32 | 48 | 64) {
        return body(g, k, v, scores, out);
    }
    for (h0, h) in head_runs(group, 8) {
        match h {
            8 => scores_avx512::<E, 8>(g, h0, k, scores),
            4 => scores_avx512::<E, 4>(g, h0, k, scores),
            2 => scores_avx512::<E, 2>(g, h0, k, scores),
            _ => scores_avx512::<E, 1>(g, h0, k, scores),
        }
    }
    let (_, _, skip) = g.tiles();
    softmax_with_sinks(g.sinks, g.span(), skip, g.nkeys, scores);
    match g.head_dim {
        64 => weighted_v_avx512::<E, 4>(g, v, scores, out),
        48 => weighted_v_avx512::<E, 3>(g, v, scores, out),
        32 => weighted_v_avx512::<E, 2>(g, v, scores, out),
        _ => weighted_v_avx512::<E, 1>(g, v, scores, out),
    }
}

/// The heads 0..group in runs (first, count) of `max`, then 4, 2 and 1 (powers of two
/// up to `max`), for kernels with a constant count of heads in registers.
#[cfg(target_arch = "x86_64")]
fn head_runs(group: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut h0 = 0;
    std::iter::from_fn(move || {
        let left = group - h0;
        if left == 0 {
            return None;
        }
        let h = (1..=max).rev().find(|&h| h.is_power_of_two() && h <= left).unwrap_or(1);
        h0 += h;
        Some((h0 - h, h))
    })
}

/// scores[h][..] = q_h . k * scale for the H heads from h0, over every key tile: per
/// dimension, one load of the tile's row and H multiply-adds by q_h[d] broadcast (8
/// independent chains hide the FMA latency). Left to the hardware prefetcher: the
/// tiles are one sequential stream (software prefetches 1-8 tiles ahead were slower).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_avx512<E: KvElem, const H: usize>(g: &Group, h0: usize, k: &[E], scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = g.head_dim;
    let (t0, t1, _) = g.tiles();
    let span = g.span();
    let scale = _mm512_set1_ps(g.scale);
    let q = g.q.as_ptr().add(h0 * hd);
    for t in t0..t1 {
        let tile = k.as_ptr().add(g.off + t * KEY_TILE * hd);
        let mut acc = [_mm512_setzero_ps(); H];
        for d in 0..hd {
            let kd = E::load16(tile.add(d * KEY_TILE));
            for (h, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(h * hd + d)), kd, *a);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            let at = (h0 + h) * span + (t - t0) * KEY_TILE;
            _mm512_storeu_ps(scores.as_mut_ptr().add(at), _mm512_mul_ps(*a, scale));
        }
    }
}

/// out_h = sum_j p[h][j] v_j, head_dim = 16 NC. Keys go in blocks of 64 whose V rows
/// (16 KB in f32) stay in L1 while runs of up to four heads sum over them with their
/// outputs in registers: the rows are read from memory once, in order, for all heads.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_v_avx512<E: KvElem, const NC: usize>(g: &Group, v: &[E], scores: &[f32], out: &mut [f32]) {
    const BLOCK_KEYS: usize = 64;
    out.fill(0.0);
    for j0 in (0..g.nkeys).step_by(BLOCK_KEYS) {
        let keys = j0..(j0 + BLOCK_KEYS).min(g.nkeys);
        for (h0, h) in head_runs(g.sinks.len(), 4) {
            match h {
                4 => weighted_v_block::<E, NC, 4>(g, h0, keys.clone(), v, scores, out),
                2 => weighted_v_block::<E, NC, 2>(g, h0, keys.clone(), v, scores, out),
                _ => weighted_v_block::<E, NC, 1>(g, h0, keys.clone(), v, scores, out),
            }
        }
    }
}

/// out_h += sum_j p[h][j] v_j over `keys`, for the H heads from h0.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_v_block<E: KvElem, const NC: usize, const H: usize>(
    g: &Group,
    h0: usize,
    keys: std::ops::Range<usize>,
    v: &[E],
    scores: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = g.head_dim;
    let (_, _, skip) = g.tiles();
    let span = g.span();
    let p = scores.as_ptr().add(h0 * span + skip);
    let o = out.as_mut_ptr().add(h0 * hd);
    let mut acc: [[__m512; NC]; H] =
        std::array::from_fn(|h| std::array::from_fn(|c| _mm512_loadu_ps(o.add(h * hd + c * 16))));
    for j in keys {
        let row = v.as_ptr().add(g.off + (g.lo + j) * hd);
        let vj: [__m512; NC] = std::array::from_fn(|c| E::load16(row.add(c * 16)));
        for (h, ah) in acc.iter_mut().enumerate() {
            let pj = _mm512_set1_ps(*p.add(h * span + j));
            for (a, &x) in ah.iter_mut().zip(&vj) {
                *a = _mm512_fmadd_ps(pj, x, *a);
            }
        }
    }
    for (h, ah) in acc.iter().enumerate() {
        for (c, a) in ah.iter().enumerate() {
            _mm512_storeu_ps(o.add(h * hd + c * 16), *a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2<E: KvElem>(g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    body(g, k, v, scores, out)
}

/// Attention of one group: `scores` is scratch of at least `g.scores_len()`; `out` is
/// [group, head_dim].
pub fn attend_group(isa: Isa, g: &Group, scores: &mut [f32], out: &mut [f32]) {
    match g.kv {
        KvRows::F32 { k, v } => attend_rows(isa, g, k, v, scores, out),
        KvRows::Bf16 { k, v } => attend_rows(isa, g, k, v, scores, out),
    }
}

fn attend_rows<E: KvElem>(isa: Isa, g: &Group, k: &[E], v: &[E], scores: &mut [f32], out: &mut [f32]) {
    assert!(scores.len() >= g.scores_len() && out.len() == g.sinks.len() * g.head_dim);
    assert!(g.q.len() == out.len() && g.storage_end() <= k.len().min(v.len()));
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
        // (group, head_dim, cache positions, head offset, first key, keys): the real shape
        // (8 x 64) with keys starting and ending inside tiles, group sizes that split into
        // runs of 4 + 1 and 2 + 1 heads, exactly one tile, fewer keys than a tile, one key,
        // a head_dim the AVX-512 body leaves to the plain one (40), and a later head's
        // storage (nonzero offset).
        for &(group, hd, len, off, lo, nkeys) in &[
            (8usize, 64usize, 400usize, 0usize, 7usize, 333usize),
            (8, 64, 304, 3 * 304 * 64, 128, 160),
            (5, 64, 20, 64 * 32, 4, 16),
            (3, 32, 9, 0, 0, 9),
            (2, 32, 32, 0, 16, 16),
            (1, 80, 40, 80 * 48, 0, 40),
            (3, 40, 37, 0, 5, 30),
            (8, 64, 17, 0, 16, 1),
        ] {
            let f = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
            let q: Vec<f32> = (0..group * hd).map(f).collect();
            // Position-major rows for the reference; the storage as the cache lays it out.
            let k_rows: Vec<f32> = (0..len * hd).map(|i| f(i + 7)).collect();
            let v_rows: Vec<f32> = (0..len * hd).map(|i| f(i + 13)).collect();
            let size = off + len.div_ceil(KEY_TILE) * KEY_TILE * hd;
            let mut k32 = vec![f32::NAN; size];
            let mut v32 = vec![f32::NAN; size];
            for p in 0..len {
                for d in 0..hd {
                    k32[off + (p / KEY_TILE * hd + d) * KEY_TILE + p % KEY_TILE] = k_rows[p * hd + d];
                    v32[off + p * hd + d] = v_rows[p * hd + d];
                }
            }
            // Positions past `len` in the last tile: storage never written.
            for x in k32[..off].iter_mut().chain(v32[..off].iter_mut()) {
                *x = 0.0;
            }
            let sinks: Vec<f32> = (0..group).map(|h| [0.3f32, -1.0, 2.0][h % 3] + h as f32 * 0.1).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            // The same cache as bf16; its reference reads the rounded values.
            let (k16, v16): (Vec<u16>, Vec<u16>) =
                (k32.iter().map(|&x| bf16::from_f32(x)).collect(), v32.iter().map(|&x| bf16::from_f32(x)).collect());
            let round = |r: &[f32]| -> Vec<f32> { r.iter().map(|&x| bf16::from_f32(x).to_f32()).collect() };
            let (k16r, v16r) = (round(&k_rows), round(&v_rows));
            let caches = [
                (KvRows::F32 { k: &k32, v: &v32 }, &k_rows, &v_rows),
                (KvRows::Bf16 { k: &k16, v: &v16 }, &k16r, &v16r),
            ];
            for ((rows, k, v), isa) in caches.iter().flat_map(|c| Isa::available().into_iter().map(move |isa| (c, isa)))
            {
                let g = Group { q: &q, kv: *rows, off, lo, nkeys, head_dim: hd, sinks: &sinks, scale };
                let mut scores = vec![0f32; g.scores_len()];
                let mut out = vec![0f32; group * hd];
                attend_group(isa, &g, &mut scores, &mut out);
                for h in 0..group {
                    let s: Vec<f64> = (0..nkeys)
                        .map(|j| {
                            (0..hd).map(|d| q[h * hd + d] as f64 * k[(lo + j) * hd + d] as f64).sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(sinks[h] as f64, f64::max);
                    let denom: f64 = s.iter().map(|x| (x - max).exp()).sum::<f64>() + (sinks[h] as f64 - max).exp();
                    for d in 0..hd {
                        let want: f64 =
                            (0..nkeys).map(|j| (s[j] - max).exp() / denom * v[(lo + j) * hd + d] as f64).sum();
                        let got = out[h * hd + d] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{isa:?} {group}x{hd} keys {lo}+{nkeys} h{h} d{d} ({} rows): {got} vs {want}",
                            if matches!(rows, KvRows::F32 { .. }) { "f32" } else { "bf16" }
                        );
                    }
                }
            }
        }
    }
}
