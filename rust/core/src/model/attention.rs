//! Attention for one (token, kv head): the query heads that share the kv head read each
//! K and V row once (grouped-query attention).
//!
//! scores[h][j] = q_h . k_j / sqrt(head_dim) over the visible keys, one extra logit per
//! head (its learned sink) joins the softmax and is dropped, out_h = sum_j p[h][j] v_j.
//!
//! One body, written so the compiler can vectorize it (independent partial sums, no
//! reductions across lanes in the inner loops), compiled three times: plain, and with
//! AVX2 or AVX-512 enabled; `cpu::Isa` picks which at run time.

use crate::cpu::Isa;

/// The inputs of one group.
pub struct Group<'a> {
    /// [group, head_dim]: the query heads sharing this kv head
    pub q: &'a [f32],
    /// the layer's cache, [len, kv_dim]
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub kv_dim: usize,
    /// this kv head's offset in a cache row
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
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn body(g: &Group, scores: &mut [f32], out: &mut [f32]) {
    let (group, hd, n) = (g.sinks.len(), g.head_dim, g.nkeys);
    for j in 0..n {
        let row = (g.lo + j) * g.kv_dim + g.off;
        let kr = &g.k[row..row + hd];
        for h in 0..group {
            scores[h * n + j] = dot(&g.q[h * hd..(h + 1) * hd], kr) * g.scale;
        }
    }
    // Softmax over keys + sink, per head, in place (the sink's share is left out).
    for h in 0..group {
        let s = &mut scores[h * n..(h + 1) * n];
        let max = s.iter().fold(g.sinks[h], |m, &x| m.max(x));
        for x in s.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / (s.iter().sum::<f32>() + exp(g.sinks[h] - max));
        for x in s.iter_mut() {
            *x *= inv;
        }
    }
    out.fill(0.0);
    for j in 0..n {
        let row = (g.lo + j) * g.kv_dim + g.off;
        let vr = &g.v[row..row + hd];
        for h in 0..group {
            let p = scores[h * n + j];
            let o = &mut out[h * hd..(h + 1) * hd];
            for (o, &x) in o.iter_mut().zip(vr) {
                *o += p * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn body_avx512(g: &Group, scores: &mut [f32], out: &mut [f32]) {
    body(g, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2(g: &Group, scores: &mut [f32], out: &mut [f32]) {
    body(g, scores, out)
}

/// Attention of one group: `scores` is scratch of at least group * nkeys; `out` is
/// [group, head_dim].
pub fn attend_group(isa: Isa, g: &Group, scores: &mut [f32], out: &mut [f32]) {
    assert!(scores.len() >= g.sinks.len() * g.nkeys && out.len() == g.sinks.len() * g.head_dim);
    assert!((g.lo + g.nkeys) * g.kv_dim <= g.k.len() && g.off + g.head_dim <= g.kv_dim);
    match isa {
        // SAFETY: `isa` comes from `cpu::select`, which checked the CPU has these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { body_avx512(g, scores, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { body_avx2(g, scores, out) },
        _ => body(g, scores, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (group, hd, kv_dim, len) = (3usize, 40usize, 80usize, 37usize);
        let f = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        let q: Vec<f32> = (0..group * hd).map(f).collect();
        let k: Vec<f32> = (0..len * kv_dim).map(|i| f(i + 7)).collect();
        let v: Vec<f32> = (0..len * kv_dim).map(|i| f(i + 13)).collect();
        let sinks = [0.3f32, -1.0, 2.0];
        let g =
            Group { q: &q, k: &k, v: &v, kv_dim, off: 40, lo: 5, nkeys: 30, head_dim: hd, sinks: &sinks, scale: 0.2 };
        for isa in Isa::available() {
            let mut scores = vec![0f32; group * 30];
            let mut out = vec![0f32; group * hd];
            attend_group(isa, &g, &mut scores, &mut out);
            for h in 0..group {
                let s: Vec<f64> = (0..30)
                    .map(|j| {
                        (0..hd).map(|d| q[h * hd + d] as f64 * k[(5 + j) * kv_dim + 40 + d] as f64).sum::<f64>() * 0.2
                    })
                    .collect();
                let max = s.iter().cloned().fold(sinks[h] as f64, f64::max);
                let denom: f64 = s.iter().map(|x| (x - max).exp()).sum::<f64>() + (sinks[h] as f64 - max).exp();
                for d in 0..hd {
                    let want: f64 =
                        (0..30).map(|j| (s[j] - max).exp() / denom * v[(5 + j) * kv_dim + 40 + d] as f64).sum();
                    assert!((out[h * hd + d] as f64 - want).abs() < 1e-5, "{isa:?} h{h} d{d}");
                }
            }
        }
    }
}
