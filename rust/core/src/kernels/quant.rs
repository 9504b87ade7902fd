//! Activation quantization for the "int8" precision: per 32-value block, x ≈ d * q with
//! d = amax / 127 and q = round(x / d) in [-127, 127]. Weights stay exact: twice an
//! E2M1 value is an integer in [-12, 12], so each block's dot product is an exact
//! integer sum, scaled once by d/2 and the block's E8M0 scale.
//!
//! Error: |x - d q| <= d / 2 = amax / 254 per element, so a row's result is off by at
//! most sum_b (amax_b / 254) * sum_j |w_bj| (plus f32 rounding of the per-block sums).
//!
//! Two orders of q: `Natural` (the scalar twin) and `Grouped` (the SIMD kernels): per
//! four blocks, 64 bytes holding the even elements block by block, then 64 bytes of
//! odd elements, matching the low and high nibbles of the 64 code bytes. Blocks past
//! the last full group hold 16 evens then 16 odds each.

use crate::mxfp4::BLOCK;

/// 2 * E2M1 value of each code, plus 12 so that it is unsigned (for u8 x s8 dot
/// products); the +12 is corrected with 12 * sum(q).
pub const W2_PLUS_12: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];
/// 2 * E2M1 value of each code.
pub const W2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QLayout {
    Natural,
    Grouped,
}

/// Quantized activations of up to a few rows, reused between calls.
#[derive(Default)]
pub struct QuantX {
    pub n: usize,
    /// [rows, n] in the layout's order
    pub q: Vec<i8>,
    /// [rows, n/32]: d/2 of each block
    pub half_d: Vec<f32>,
    /// [rows, n/32]: 12 * sum(q) of each block
    pub corr: Vec<i32>,
    /// Grouped only, [rows, groups, 16]: -12 * (sum of the 8 q of each dword lane)
    pub lane_neg_corr: Vec<i32>,
    /// Grouped only, [rows, groups, 16]: d/2 of each lane's block
    pub lane_half_d: Vec<f32>,
}

/// One row's view.
pub struct QRow<'a> {
    pub q: &'a [i8],
    pub half_d: &'a [f32],
    pub corr: &'a [i32],
    pub lane_neg_corr: &'a [i32],
    pub lane_half_d: &'a [f32],
}

impl QuantX {
    pub fn row(&self, i: usize) -> QRow<'_> {
        let (n, nb) = (self.n, self.n / BLOCK);
        let ng = nb / 4 * 16;
        QRow {
            q: &self.q[i * n..(i + 1) * n],
            half_d: &self.half_d[i * nb..(i + 1) * nb],
            corr: &self.corr[i * nb..(i + 1) * nb],
            lane_neg_corr: if self.lane_neg_corr.is_empty() { &[] } else { &self.lane_neg_corr[i * ng..(i + 1) * ng] },
            lane_half_d: if self.lane_half_d.is_empty() { &[] } else { &self.lane_half_d[i * ng..(i + 1) * ng] },
        }
    }

    /// Quantize `x` [m, n] (n % 32 == 0).
    pub fn quantize(&mut self, layout: QLayout, x: &[f32], m: usize, n: usize) {
        assert_eq!(n % BLOCK, 0);
        assert_eq!(x.len(), m * n);
        let nb = n / BLOCK;
        let groups = nb / 4;
        self.n = n;
        self.q.resize(m * n, 0);
        self.half_d.resize(m * nb, 0.0);
        self.corr.resize(m * nb, 0);
        let lanes = if layout == QLayout::Grouped { m * groups * 16 } else { 0 };
        self.lane_neg_corr.resize(lanes, 0);
        self.lane_half_d.resize(lanes, 0.0);
        let mut qb = [0i8; BLOCK];
        for i in 0..m {
            for b in 0..nb {
                let xb = &x[i * n + b * BLOCK..i * n + (b + 1) * BLOCK];
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (d, inv) = if amax > 0.0 && amax.is_finite() { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) };
                let mut sum = 0i32;
                // Round to nearest even by the 1.5 * 2^23 trick (|v * inv| <= 127).
                const MAGIC: f32 = 12_582_912.0;
                for (q, &v) in qb.iter_mut().zip(xb) {
                    *q = ((v * inv + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i8;
                    sum += *q as i32;
                }
                // A non-finite block makes its result NaN, as f32 arithmetic would.
                self.half_d[i * nb + b] = if amax.is_finite() { d * 0.5 } else { f32::NAN };
                self.corr[i * nb + b] = 12 * sum;
                let row = &mut self.q[i * n..(i + 1) * n];
                match layout {
                    QLayout::Natural => row[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&qb),
                    QLayout::Grouped if b < groups * 4 => {
                        let (g, mm) = (b / 4, b % 4);
                        for j in 0..16 {
                            row[g * 128 + mm * 16 + j] = qb[2 * j];
                            row[g * 128 + 64 + mm * 16 + j] = qb[2 * j + 1];
                        }
                        for l in 0..4 {
                            let lane = i * groups * 16 + g * 16 + mm * 4 + l;
                            let s: i32 = (0..4).map(|t| qb[2 * (4 * l + t)] as i32 + qb[2 * (4 * l + t) + 1] as i32).sum();
                            self.lane_neg_corr[lane] = -12 * s;
                            self.lane_half_d[lane] = self.half_d[i * nb + b];
                        }
                    }
                    QLayout::Grouped => {
                        for j in 0..16 {
                            row[b * BLOCK + j] = qb[2 * j];
                            row[b * BLOCK + 16 + j] = qb[2 * j + 1];
                        }
                    }
                }
            }
        }
    }
}
