//! Activation layouts. A kernel reads x in the order its weight decoding produces
//! values; since a dot product is a sum, permuting x and w alike changes nothing.
//! x is reordered once per call (it is shared by every weight row).

/// How a kernel wants the activations of one row ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XLayout {
    /// As given.
    Natural,
    /// Per 32 values: the 16 even elements, then the 16 odd ones (full chunks of 32;
    /// a shorter tail stays natural).
    Split,
    /// Per 128 values (four MXFP4 blocks): 8 planes of 16, plane k lane j holding
    /// element 8j + k, which is where nibble k of dword j of the 64 code bytes lands.
    /// Blocks past the last full group use `Split`.
    Planes,
}

/// Values per `Planes` group.
pub const PLANE_GROUP: usize = 128;

/// Reorder one row `x` into `out` (same length).
pub fn reorder(layout: XLayout, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    match layout {
        XLayout::Natural => out.copy_from_slice(x),
        XLayout::Split => split(x, out),
        XLayout::Planes => {
            let full = x.len() / PLANE_GROUP * PLANE_GROUP;
            for (xg, og) in x[..full].chunks_exact(PLANE_GROUP).zip(out[..full].chunks_exact_mut(PLANE_GROUP)) {
                for k in 0..8 {
                    for j in 0..16 {
                        og[k * 16 + j] = xg[8 * j + k];
                    }
                }
            }
            split(&x[full..], &mut out[full..]);
        }
    }
}

fn split(x: &[f32], out: &mut [f32]) {
    let full = x.len() / 32 * 32;
    for (xb, ob) in x[..full].chunks_exact(32).zip(out[..full].chunks_exact_mut(32)) {
        for j in 0..16 {
            ob[j] = xb[2 * j];
            ob[16 + j] = xb[2 * j + 1];
        }
    }
    out[full..].copy_from_slice(&x[full..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_permutations() {
        for n in [0usize, 7, 32, 96, 128, 160, 2880, 2890] {
            let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            for layout in [XLayout::Natural, XLayout::Split, XLayout::Planes] {
                let mut out = vec![0f32; n];
                reorder(layout, &x, &mut out);
                let mut sorted = out.clone();
                sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
                assert_eq!(sorted, x, "{layout:?} n={n}");
            }
        }
        let x: Vec<f32> = (0..128).map(|i| i as f32).collect();
        let mut out = vec![0f32; 128];
        reorder(XLayout::Planes, &x, &mut out);
        assert_eq!(&out[..3], &[0.0, 8.0, 16.0]);
        assert_eq!(out[16], 1.0);
    }
}
