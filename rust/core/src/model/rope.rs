//! Rotary position embedding with YaRN scaling, computed as both references do.
//!
//! inv_freq is built in f32 following transformers' `_compute_yarn_parameters`; the angle
//! is the f32 product f32(position) * inv_freq (float64 angles drift from the references
//! by up to 1e-4 in the logits past position 4000). cos and sin are scaled by the YaRN
//! concentration 0.1 * ln(factor) + 1, so q and k each carry it.
//!
//! The base frequencies theta^(2i/d) are correctly rounded from f64; torch's f32 `pow`
//! differs from that by at most 1 ulp on a few entries (tested against the fixtures'
//! stored table), which moves angles by < 1e-5 rad at position 4096.

use super::config::Config;
use std::f64::consts::PI;

pub struct Rope {
    /// [head_dim / 2]
    pub inv_freq: Vec<f32>,
    pub attention_scaling: f32,
}

impl Rope {
    pub fn new(c: &Config) -> Rope {
        let dim = c.head_dim;
        let half = dim / 2;
        let base = c.rope_theta;
        let factor = c.rope_factor;
        let correction = |rotations: f64| {
            (dim as f64 * (c.rope_original_max_position / (rotations * 2.0 * PI)).ln()) / (2.0 * base.ln())
        };
        let low = correction(c.rope_beta_fast);
        let mut high = correction(c.rope_beta_slow);
        if low == high {
            high += 0.001;
        }
        let inv_freq = (0..half)
            .map(|i| {
                let pos_freq = (base.powf((2 * i) as f32 as f64 / dim as f64)) as f32;
                let extrapolation = 1.0f32 / pos_freq;
                let interpolation = 1.0f32 / (factor as f32 * pos_freq);
                let ramp = (((i as f32) - low as f32) / ((high - low) as f32)).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0f32 - ramp;
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
            })
            .collect();
        let attention_scaling = if factor <= 1.0 { 1.0 } else { (0.1 * factor.ln() + 1.0) as f32 };
        Rope { inv_freq, attention_scaling }
    }

    /// cos and sin [half] at `pos`, scaled by the concentration.
    pub fn cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let p = pos as f32;
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let angle = p * f;
            cos[i] = angle.cos() * self.attention_scaling;
            sin[i] = angle.sin() * self.attention_scaling;
        }
    }

    /// Rotate one head vector [head_dim] in place: halves (x1, x2) ->
    /// (x1 cos - x2 sin, x2 cos + x1 sin).
    #[inline]
    pub fn apply(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        let (x1, x2) = x.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (x1[i], x2[i]);
            x1[i] = a * cos[i] - b * sin[i];
            x2[i] = b * cos[i] + a * sin[i];
        }
    }
}
