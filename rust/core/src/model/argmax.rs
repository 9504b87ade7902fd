//! The index of the largest logit, exactly, without computing every logit exactly
//! (greedy decoding).
//!
//! Greedy decoding needs only argmax(h @ lm_head^T). On gpt-oss, lm_head (201088 x 2880
//! bf16, 1.16 GB) is the largest single matrix a decoded token reads. A `Screen` holds a
//! Q8 copy of it (0.62 GB, quantized once, on first use), bounds how far each logit it
//! gives can be from the exact one, and the exact logits are then computed, with the
//! kernel and precision of the full logits, only for the rows whose bound leaves them a
//! chance of being the largest. The answer is the index that the full logits' argmax
//! gives (the first one on ties), not an approximation of it.
//!
//! The bound, for row i with exact logit l_i = sum_j w_ij x_j and screened logit
//! a_i = sum_j ŵ_ij x̂_j (ŵ the Q8 weights with block scales d_ib, x̂ the "int16"
//! activations):
//!
//! ```text
//! l_i - a_i = sum_j (w_ij - ŵ_ij) x_j + sum_j ŵ_ij (x_j - x̂_j) + f32 rounding of both sums
//! |w - ŵ| <= d/2 (1 + 2^-14)             (q8.rs: d >= amax/127, q rounded to nearest)
//! |ŵ| <= 127 d,  |x - x̂| <= e_b = amax_b (1/65024 + 2^-20)   (quant.rs; blocks under
//!                                          TINY quantize to zero: e_b = amax_b)
//! rounding <= 2 (n + 64) 2^-24 sum_j |w||x| <= 2 (n + 64) 2^-24 127.5 sum_b d_ib A_b
//! => |l_i - a_i| <= sum_b d_ib (c A_b + 32 * 127 e_b) = B_i,  A_b = sum_{j in b} |x_j|
//! ```
//!
//! with c = 1/2 (1 + 2^-14) + the rounding factor + 0.01 of margin (the f32 sums
//! A_b); the bounds carry 2% more for their own f32 sums and the f32 comparisons.
//! d_ib is replaced by its maximum over `CHUNK` consecutive rows (a
//! small table), so one bound serves a chunk. The rows kept are those with
//! a_i + B_i >= max_k (a_k - B_k). The argmax k* has l_k* >= l_k for every k, hence
//! a_k* + B_k* >= l_k* >= l_k >= a_k - B_k: it is always kept, and so are all rows tied
//! with it.

use super::checkpoint::{Checkpoint, TensorInfo};
use crate::kernels::quant::TINY;
use crate::mxfp4::BLOCK;
use crate::q8::{self, Q8Matrix};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Consecutive rows that share one bound.
pub const CHUNK: usize = 16;
/// With more rows kept than this, the caller computes every logit instead (a
/// distribution too flat for the screen to pay).
pub const MAX_KEPT: usize = 4096;
/// Rows quantized per positioned read while building.
const ROWS_PER_READ: usize = 256;

/// A Q8 copy of a bf16 matrix and the per-chunk scale maxima its bounds need.
pub struct Screen {
    pub q: Q8Matrix,
    /// [cols / 32, rows.div_ceil(CHUNK)]: the largest Q8 scale of each block over each
    /// chunk's rows (blocks outer, so that the bounds of all chunks sum as vectors)
    chunk_scale: Vec<f32>,
}

impl Screen {
    /// Quantize rows `r0..r0 + rows` of the bf16 matrix tensor `t` ([.., cols]). The rows
    /// are read with positioned reads, not through the map, so the bf16 pages do not
    /// join this process's RSS. None where the screen cannot serve: cols not whole
    /// blocks, a weight that is not finite (the full logits keep f32's NaN and inf
    /// behaviour), or a read error.
    pub fn build(ck: &Checkpoint, t: &TensorInfo, r0: usize, rows: usize, cols: usize) -> Option<Screen> {
        if rows == 0 || cols == 0 || cols % BLOCK != 0 {
            return None;
        }
        let nb = cols / BLOCK;
        let mut codes = vec![0u8; rows * cols];
        let mut scales = vec![0u16; rows * nb];
        // Chunks of ROWS_PER_READ rows, one per claim (each lock is taken once).
        let chunks: Vec<Mutex<(&mut [u8], &mut [u16])>> =
            codes.chunks_mut(ROWS_PER_READ * cols).zip(scales.chunks_mut(ROWS_PER_READ * nb)).map(Mutex::new).collect();
        let read_failed = AtomicBool::new(false);
        crate::par::for_each(chunks.len(), |i| {
            let mut chunk = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
            let (c, s) = &mut *chunk;
            let n = s.len() / nb;
            let mut raw = vec![0u8; n * cols * 2];
            if ck.read_at(t, (r0 + i * ROWS_PER_READ) * cols * 2, &mut raw).is_err() {
                read_failed.store(true, Ordering::Relaxed);
                return;
            }
            let mut tmp = vec![0f32; cols];
            for ((src, cr), sr) in raw.chunks_exact(cols * 2).zip(c.chunks_exact_mut(cols)).zip(s.chunks_exact_mut(nb))
            {
                q8::quantize_row(src, &mut tmp, cr, sr);
            }
        });
        drop(chunks);
        if read_failed.into_inner() {
            return None;
        }
        Screen::from_q8(Q8Matrix { rows, cols, codes, scales })
    }

    /// The screen of a Q8 matrix; None where a scale is not finite.
    pub fn from_q8(q: Q8Matrix) -> Option<Screen> {
        let (rows, nb, scales) = (q.rows, q.cols / BLOCK, &q.scales);
        let chunks = rows.div_ceil(CHUNK);
        let mut chunk_scale = vec![0f32; nb * chunks];
        for (r, sr) in scales.chunks_exact(nb).enumerate() {
            for (b, &bits) in sr.iter().enumerate() {
                let d = q8::scale(bits);
                if !d.is_finite() {
                    return None;
                }
                let m = &mut chunk_scale[b * chunks + r / CHUNK];
                *m = m.max(d);
            }
        }
        Some(Screen { q, chunk_scale })
    }

    /// The rows that may hold the largest exact logit of `x` [cols], given `approx`
    /// [rows] (x's logits through `self.q` with "int16" activations), in ascending
    /// order into `kept`. False where the screen cannot decide (a value that is not
    /// finite, or more than `MAX_KEPT` rows kept): compute every logit then.
    /// `coef` and `bound` are scratch.
    pub fn keep(
        &self,
        x: &[f32],
        approx: &[f32],
        coef: &mut Vec<f32>,
        bound: &mut Vec<f32>,
        kept: &mut Vec<u32>,
    ) -> bool {
        let (rows, cols) = (self.q.rows, self.q.cols);
        assert!(x.len() == cols && approx.len() == rows, "screen: x or approx of the wrong length");
        let c = 0.5 * (1.0 + 2f64.powi(-14)) + 2.0 * (cols as f64 + 64.0) * 2f64.powi(-24) * 127.5 + 0.01;
        // Per block: its share of the bound per unit of weight scale.
        coef.clear();
        for xb in x.chunks_exact(BLOCK) {
            let a: f64 = xb.iter().map(|v| v.abs() as f64).sum();
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let e = if amax < TINY as f64 { amax } else { amax * (1.0 / 65024.0 + 2f64.powi(-20)) };
            let k = c * a + 32.0 * 127.0 * e;
            if !k.is_finite() {
                return false;
            }
            coef.push(k as f32);
        }
        // B per chunk, summed in f32: 2% of margin covers the rounding of this sum (90 terms
        // of one sign: under 1e-5) and of the f32 comparisons below (a +- b rounds by at
        // most 2^-24 (|a| + b), and |a| <= 227 b: |a_i| <= sum_b d_ib 127 (A_b + 32 e_b)).
        let chunks = rows.div_ceil(CHUNK);
        bound.clear();
        bound.resize(chunks, 0.0);
        for (sb, &k) in self.chunk_scale.chunks_exact(chunks).zip(coef.iter()) {
            for (b, &d) in bound.iter_mut().zip(sb) {
                *b += d * k;
            }
        }
        for b in bound.iter_mut() {
            *b *= 1.02;
        }
        // floor = max_k (a_k - B_k), from each chunk's largest a; `z` turns NaN if any a is
        // NaN or infinite.
        let top = |ac: &[f32]| ac.iter().fold(f32::NEG_INFINITY, |m, &a| if a > m { a } else { m });
        let (mut floor, mut z) = (f32::NEG_INFINITY, 0f32);
        for (ac, &b) in approx.chunks(CHUNK).zip(bound.iter()) {
            z += ac.iter().fold(0f32, |z, &a| z + a * 0.0);
            floor = floor.max(top(ac) - b);
        }
        if !(z == 0.0 && floor.is_finite()) {
            return false;
        }
        kept.clear();
        for (ci, (ac, &b)) in approx.chunks(CHUNK).zip(bound.iter()).enumerate() {
            if top(ac) + b < floor {
                continue;
            }
            for (j, &a) in ac.iter().enumerate() {
                if a + b >= floor {
                    if kept.len() == MAX_KEPT {
                        return false;
                    }
                    kept.push((ci * CHUNK + j) as u32);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;
    use crate::kernels::tests::Rng;
    use crate::kernels::{self, Precision, Scratch, Weight};

    /// bf16 bits of v (truncated: any bf16 will do).
    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect()
    }

    /// A value of magnitude about 2^e, e in [lo, hi], random sign (0 with `zero_odds` in 256).
    fn value(rng: &mut Rng, lo: i32, hi: i32, zero_odds: u64) -> f32 {
        if rng.next_u64() % 256 < zero_odds {
            return 0.0;
        }
        let e = lo + (rng.next_u64() % (hi - lo + 1) as u64) as i32;
        rng.uniform() * 2f32.powi(e)
    }

    /// For every path, shape and value range: every row's exact logit is within its
    /// chunk's bound of the screened one, and where the screen decides, it keeps the
    /// exact argmax. Near-ties (rows that copy another with one weight nudged by a bf16
    /// ulp, exact copies) make the kept rows matter.
    #[test]
    fn bound_holds_and_the_argmax_is_kept() {
        let mut rng = Rng(11);
        let mut paths = vec![Isa::Scalar];
        paths.extend(kernels::tests::simd_paths());
        let (mut decided, mut several) = (0, 0);
        for case in 0..120 {
            let rows = [1, 5, 16, 17, 300, 1000][case % 6];
            let cols = [32, 96, 2880][case / 6 % 3];
            let nb = cols / BLOCK;
            // Per-block magnitudes for the weights and x: narrow or wide ranges.
            let (wlo, whi) = if case % 4 == 0 { (-40, 40) } else { (-6, 0) };
            let block_e: Vec<i32> = (0..nb).map(|_| wlo + (rng.next_u64() % (whi - wlo + 1) as u64) as i32).collect();
            let mut w = vec![0f32; rows * cols];
            for r in 0..rows {
                for j in 0..cols {
                    let e = block_e[j / BLOCK];
                    w[r * cols + j] = value(&mut rng, e - 3, e, 8);
                }
            }
            // Near-ties: a few rows copy row 0, some with one weight nudged by one bf16 ulp.
            for r in (1..rows).step_by(7) {
                let (src, dst) = w.split_at_mut(r * cols);
                dst[..cols].copy_from_slice(&src[..cols]);
                if r % 2 == 1 {
                    let j = (rng.next_u64() % cols as u64) as usize;
                    dst[j] = f32::from_bits(dst[j].to_bits().wrapping_add(1 << 16));
                }
            }
            let x: Vec<f32> = (0..cols)
                .map(|j| match case % 5 {
                    // tiny blocks (quantized to zero), zero blocks, wide ranges
                    0 if j / BLOCK % 3 == 0 => value(&mut rng, -130, -110, 0),
                    1 if j / BLOCK % 2 == 0 => 0.0,
                    2 => value(&mut rng, -30, 30, 16),
                    _ => value(&mut rng, -4, 2, 4),
                })
                .collect();
            let wb = bf16_bytes(&w);
            let screen = Screen::from_q8(q8::Q8Matrix::from_bf16(&wb, rows, cols)).expect("finite weights");
            for &isa in &paths {
                let mut scratch = Scratch::default();
                let mut exact = vec![0f32; rows];
                let mut approx = vec![0f32; rows];
                kernels::matmul(
                    isa,
                    Precision::F32,
                    &x,
                    1,
                    &Weight::bf16(&wb, rows, cols),
                    None,
                    &mut exact,
                    &mut scratch,
                );
                kernels::matmul(isa, Precision::Int16, &x, 1, &Weight::q8(&screen.q), None, &mut approx, &mut scratch);
                let (mut coef, mut bound, mut kept) = (Vec::new(), Vec::new(), Vec::new());
                let ok = screen.keep(&x, &approx, &mut coef, &mut bound, &mut kept);
                assert_eq!(bound.len(), rows.div_ceil(CHUNK), "case {case}");
                for i in 0..rows {
                    let err = (exact[i] as f64 - approx[i] as f64).abs();
                    assert!(
                        err <= bound[i / CHUNK] as f64,
                        "case {case} {isa:?} row {i}: |exact - screened| = {err:e} > bound {:e}",
                        bound[i / CHUNK]
                    );
                }
                if ok {
                    decided += 1;
                    let best = (0..rows).fold(0, |b, i| if exact[i] > exact[b] { i } else { b });
                    assert!(kept.contains(&(best as u32)), "case {case} {isa:?}: argmax {best} not kept");
                    assert!(kept.windows(2).all(|p| p[0] < p[1]), "kept rows not ascending");
                    several += usize::from(kept.len() > 1);
                }
            }
        }
        // The cases must exercise both the screen's decisions and its exact recomputation.
        assert!(decided > 100 && several > 50, "decided {decided}, several kept {several}");
    }

    /// Rounding pushed to the bound: rows 0-15 (one chunk) have weights just under half a
    /// step of their grid (Q8 rounds them down to 0), row 16 (the next chunk), on a
    /// slightly finer grid, just over (rounded up). Rows 0-15 are larger exactly, row 16
    /// by more than either chunk's bound on the screen: only the two-sided rule
    /// a_i + B_i >= max_k (a_k - B_k) keeps rows 0-15.
    #[test]
    fn adversarial_rounding_keeps_the_exact_argmax() {
        let (rows, cols) = (CHUNK + 1, 96);
        let d0 = q8::scale(0x3c02); // 0.0079345703125: the scale of a block with amax 1.0
        let v = f32::from_bits((d0 * 0.5).to_bits() - (1 << 16)); // the bf16 below d0/2
        let mut w = vec![v; rows * cols];
        for r in 0..rows {
            for b in 0..cols / BLOCK {
                // Row 16: 0.99 is 0.98828125 in bf16, its scale 0x3bff < d0: there v rounds up.
                w[r * cols + b * BLOCK] = if r == CHUNK { 0.99 } else { 1.0 };
            }
        }
        let wb = bf16_bytes(&w);
        let q = q8::Q8Matrix::from_bf16(&wb, rows, cols);
        assert_eq!((q.scales[0], q.scales[CHUNK * 3]), (0x3c02, 0x3bff));
        let screen = Screen::from_q8(q).unwrap();
        let x = vec![1f32; cols];
        for isa in std::iter::once(Isa::Scalar).chain(kernels::tests::simd_paths()) {
            let mut scratch = Scratch::default();
            let (mut exact, mut approx) = (vec![0f32; rows], vec![0f32; rows]);
            kernels::matmul(isa, Precision::F32, &x, 1, &Weight::bf16(&wb, rows, cols), None, &mut exact, &mut scratch);
            kernels::matmul(isa, Precision::Int16, &x, 1, &Weight::q8(&screen.q), None, &mut approx, &mut scratch);
            assert!(exact[0] > exact[CHUNK] && approx[CHUNK] > approx[0], "{exact:?} {approx:?}");
            let (mut coef, mut bound, mut kept) = (Vec::new(), Vec::new(), Vec::new());
            assert!(screen.keep(&x, &approx, &mut coef, &mut bound, &mut kept));
            let gap = approx[CHUNK] - approx[0];
            assert!(gap > bound[0] && gap > bound[1], "the case must need the two-sided rule: {gap} {bound:?}");
            assert_eq!(kept, (0..=CHUNK as u32).collect::<Vec<_>>(), "{isa:?}");
        }
    }

    #[test]
    fn non_finite_weights_have_no_screen() {
        let mut w = vec![0.5f32; 64];
        w[40] = f32::INFINITY;
        assert!(Screen::from_q8(q8::Q8Matrix::from_bf16(&bf16_bytes(&w), 2, 32)).is_none());
    }
}
