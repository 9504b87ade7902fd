//! Matmuls over MXFP4 and bf16 weights: y[m, out] = x[m, n] @ W[out, n]^T (+ bias).
//!
//! One driver for every weight format and ISA, four shapes of work:
//! - `m < GEMM_MIN_ROWS` (with quantized activations `m <= INT_GEMV_MAX_ROWS` for Q8,
//!   `mxfp4_gemv_max_rows` for MXFP4, up to 4 activation rows per kernel call): GEMV,
//!   weights streamed straight from memory, four rows at a time;
//! - `m < PACKED_MIN_ROWS`: small GEMM, a chunk of weight rows decoded to f32 once (in a
//!   thread-local buffer) and reused for every row of x with 4x4 dot-product tiles;
//! - larger `m` (prefill): packed GEMM, x packed once per call into groups of tokens
//!   ([k][token] order), decoded weight values broadcast against a group's tokens
//!   (`gemm_panel`: 12 rows x 32 tokens of accumulators on AVX-512);
//! - larger `m`, MXFP4 at the int precisions on x86, NEON with dotprod and the scalar path:
//!   quantized packed GEMM, x quantized once per call into groups of 16 tokens
//!   (`quant::QPack`), weight codes decoded once per task, exact integer sums per block:
//!   u8 codes and `vpdpbusd` with AVX-512 VNNI (`qgemm_panel`: 4 rows x 32 tokens), i16
//!   words and `vpmaddwd` on the limbs joined into i16s elsewhere (`qgemm_panel_pairs`:
//!   4 rows x 16 tokens).
//!
//! Work is split over output rows on the threads of whatever rayon pool the caller
//! installed, through `crate::par` (a forward pass's spinning team): GEMV batches
//! (decode) on every thread at once, each claiming runs of rows from a shared cursor,
//! shorter as the rows run out (`run_guided`); GEMMs as tasks claimed one by one.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod generic;
pub mod layout;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod quant;

use crate::cpu::Isa;
use crate::mxfp4::{BLOCK, BLOCK_BYTES};
use layout::XLayout;
use quant::{QLayout, QPack, QRow, QuantX, QPACK_TOKENS};

/// Activation precision of a matmul. Weights are always used exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 activations: error ~1e-7 of sum|x||w| (tested: 1e-5).
    F32,
    /// MXFP4 and Q8 GEMVs (`Path::QuantGemv`) and MXFP4 packed GEMMs (where the ISA
    /// has integer dot products, see `Path::QuantPacked`) with activations quantized per
    /// 32-block to int8 (see `quant`); everything else as `F32`.
    Int8,
    /// As `Int8` with a second int8 limb for the remainder (16-bit activations):
    /// ~250x smaller activation error than `Int8` for ~1.3x its work.
    Int16,
}

/// Buffers a caller keeps between matmuls (no allocation once grown): one set per job
/// of a batch.
#[derive(Default)]
pub struct Scratch {
    jobs: Vec<JobScratch>,
    /// Per job: the earlier job whose quantized activations it shares, if any.
    shared: Vec<Option<usize>>,
    /// Per job: its output.
    outs: Vec<OutPtr>,
    /// The jobs in the order of a guided dispatch's shared row space, where each one's
    /// rows start in it, and the end.
    order: Vec<usize>,
    starts: Vec<usize>,
    /// (job, first row, end row) of each task of a task-split dispatch.
    tasks: Vec<(usize, usize, usize)>,
}

#[derive(Default)]
struct JobScratch {
    /// Reordered f32 activations.
    x: Vec<f32>,
    /// Quantized activations.
    q: QuantX,
    reordered: bool,
    path: Path,
    /// A second limb (the "int16" precision).
    two: bool,
    /// Packed-GEMM activations: [groups][n][tokens], zero-padded.
    packed: Vec<f32>,
    /// Quantized packed-GEMM activations.
    qpack: QPack,
}
use rayon::prelude::*;
use std::cell::RefCell;

/// m from which the GEMM path is taken.
pub const GEMM_MIN_ROWS: usize = 4;
/// Activation rows of one quantized-GEMV kernel call (each code group decoded once for
/// all of them), and the largest m whose Q8 matmuls take the GEMV (cheaper than
/// decoding to f32 for a small GEMM); MXFP4 takes it up to `mxfp4_gemv_max_rows`.
pub const INT_GEMV_MAX_ROWS: usize = 4;
/// The largest m of any quantized GEMV (`mxfp4_gemv_max_rows`).
pub const MAX_GEMV_ROWS: usize = 11;
/// m from which the packed GEMM path is taken.
pub const PACKED_MIN_ROWS: usize = 16;
/// Weight rows per GEMM task (their decoded f32 copy, 48 x 2880 x 4 bytes, stays in L2).
const GEMM_MAX_TASK_ROWS: usize = 48;
/// Values a packed-GEMM accumulator sums before it is added into the result (bounds
/// the f32 rounding growth to ~GEMM_K_CHUNK + n / GEMM_K_CHUNK terms).
pub(crate) const GEMM_K_CHUNK: usize = 64;

/// Largest m whose MXFP4 matmul at the int precisions takes the GEMV path, in chunks of
/// at most `INT_GEMV_MAX_ROWS` activation rows against each tile of weight rows (the
/// tile stays in L1 from chunk to chunk). A prefill's experts meet such m: 16 tokens
/// route about 2 to each expert, 64 about 8. The packed GEMM computes a whole group of
/// 16 tokens (AVX-512 VNNI) or 8 (AVX2) whatever m, so below these m the chunks cost
/// less: gemv bench from memory (`--m M`, 2 threads, GB/s of weights), AVX-512 VNNI
/// m = 5: 7.8-10.2 against 4.4; m = 8: 5.3-6.6 against 4.3; m = 11: 4.4-4.5 against
/// 3.9-4.1; m = 12: 3.2-3.9 against 4.2. AVX2: m = 5-6: 4.6-5.1 against 3.3-3.8; m = 8:
/// 2.7 against 2.6; m = 12: 2.2 against 2.7. NEON and the scalar path: not timed here,
/// kept at `INT_GEMV_MAX_ROWS`.
fn mxfp4_gemv_max_rows(isa: Isa) -> usize {
    const _: () = assert!(8 <= MAX_GEMV_ROWS && INT_GEMV_MAX_ROWS <= MAX_GEMV_ROWS);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if vnni() => MAX_GEMV_ROWS,
        Isa::Avx512 | Isa::Avx2 => 8,
        _ => INT_GEMV_MAX_ROWS,
    }
}

/// How one job's work is done: decided once per call, from the ISA, its weight format,
/// the precision and m.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Path {
    /// m < GEMM_MIN_ROWS with f32 activations: weights streamed, four rows at a time.
    #[default]
    Gemv,
    /// Small m with quantized activations (MXFP4 at the int precisions up to
    /// `mxfp4_gemv_max_rows`; Q8 up to INT_GEMV_MAX_ROWS): each code group decoded once
    /// for up to INT_GEMV_MAX_ROWS of the m rows.
    QuantGemv,
    /// GEMM_MIN_ROWS <= m < PACKED_MIN_ROWS: decoded weight rows, 4x4 dot-product tiles.
    Tiles,
    /// m >= PACKED_MIN_ROWS: packed activations, broadcast weights (`gemm_panel`).
    Packed,
    /// m past `mxfp4_gemv_max_rows`, MXFP4 at the int precisions on x86, NEON with
    /// dotprod and the scalar path:
    /// quantized activations in token groups, exact integer sums per block
    /// (`qgemm_panel`, `qgemm_panel_pairs`). From 5 tokens on it beats the f32 small
    /// GEMM despite padding a group to 16 (AVX-512 VNNI, pp96: +20%).
    QuantPacked,
}

impl Path {
    fn of(isa: Isa, precision: Precision, w: &Weight, m: usize) -> Path {
        // Q8 weights are only ever multiplied with quantized activations in GEMVs.
        let quantized = match w {
            Weight::Mxfp4 { .. } => precision != Precision::F32,
            Weight::Q8 { .. } => true,
            Weight::Bf16 { .. } => false,
        };
        let int_gemm = match isa {
            Isa::Avx512 | Isa::Avx2 => cfg!(target_arch = "x86_64"),
            // NEON takes the quantized packed GEMM with `sdot`; without dotprod its
            // prefill GEMMs keep f32 activations (its packed f32 GEMM is far faster than
            // the scalar quantized one).
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => dotprod(),
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon => false,
            Isa::Scalar => true,
        };
        let gemv_rows = match w {
            Weight::Mxfp4 { .. } => mxfp4_gemv_max_rows(isa),
            _ => INT_GEMV_MAX_ROWS,
        };
        if quantized && m <= gemv_rows {
            Path::QuantGemv
        } else if quantized && int_gemm && matches!(w, Weight::Mxfp4 { .. }) {
            Path::QuantPacked
        } else if m < GEMM_MIN_ROWS {
            Path::Gemv
        } else if m < PACKED_MIN_ROWS {
            Path::Tiles
        } else {
            Path::Packed
        }
    }
}

/// The most weight rows any ISA's packed-GEMM step takes.
const MAX_PANEL_ROWS: usize = 12;

/// (weight rows, tokens) of one packed-GEMM step on this ISA.
fn panel_shape(isa: Isa) -> (usize, usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (avx512::PANEL_ROWS, avx512::PANEL_TOKENS),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (avx2::PANEL_ROWS, avx2::PANEL_TOKENS),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => (neon::PANEL_ROWS, neon::PANEL_TOKENS),
        _ => (4, 16),
    }
}

/// One packed-GEMM step: c[j][t] for the rows `w` and the first `used` tokens of a packed
/// group `xg` of n values (the SIMD kernels skip a short last group's padding in halves).
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn gemm_panel(isa: Isa, w: &[&[f32]], xg: &[f32], n: usize, used: usize, c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let half = panel_shape(isa).1 / 2;
    match isa {
        // SAFETY: the path was selected for this CPU; `w` has the ISA's row count (the
        // driver builds it from `panel_shape`), each row n values, xg and c sized alike.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if used <= half => unsafe { avx512::gemm_panel::<1>(w.try_into().expect("panel rows"), xg, n, c) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::gemm_panel::<2>(w.try_into().expect("panel rows"), xg, n, c) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if used <= half => unsafe { avx2::gemm_panel::<1>(w.try_into().expect("panel rows"), xg, n, c) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::gemm_panel::<2>(w.try_into().expect("panel rows"), xg, n, c) },
        // NEON computes the whole group (a short group's padding is zeros).
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::gemm_panel(w.try_into().expect("panel rows"), xg, n, c) },
        _ => generic::gemm_panel(w, xg, n, panel_shape(isa).1, c),
    }
}

/// A weight matrix [rows, cols] borrowed from a checkpoint (or any byte buffer).
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    /// MXFP4: `blocks` [rows, cols/32, 16], `scales` [rows, cols/32].
    Mxfp4 { blocks: &'a [u8], scales: &'a [u8], rows: usize, cols: usize },
    /// bf16, little-endian, row-major [rows, cols].
    Bf16 { data: &'a [u8], rows: usize, cols: usize },
    /// Q8 (see `crate::q8`): `codes` [rows, cols] (q + 128), `scales` [rows, cols/32] bf16 bits.
    Q8 { codes: &'a [u8], scales: &'a [u16], rows: usize, cols: usize },
}

impl<'a> Weight<'a> {
    /// Check sizes; every kernel relies on them.
    pub fn mxfp4(blocks: &'a [u8], scales: &'a [u8], rows: usize, cols: usize) -> Weight<'a> {
        assert!(cols % BLOCK == 0, "mxfp4 cols {cols} not a multiple of 32");
        assert_eq!(blocks.len(), rows * cols / 2, "mxfp4 blocks length");
        assert_eq!(scales.len(), rows * cols / BLOCK, "mxfp4 scales length");
        Weight::Mxfp4 { blocks, scales, rows, cols }
    }

    pub fn bf16(data: &'a [u8], rows: usize, cols: usize) -> Weight<'a> {
        assert_eq!(data.len(), rows * cols * 2, "bf16 data length");
        Weight::Bf16 { data, rows, cols }
    }

    pub fn q8(m: &'a crate::q8::Q8Matrix) -> Weight<'a> {
        Weight::Q8 { codes: &m.codes, scales: &m.scales, rows: m.rows, cols: m.cols }
    }

    pub fn rows(&self) -> usize {
        match *self {
            Weight::Mxfp4 { rows, .. } | Weight::Bf16 { rows, .. } | Weight::Q8 { rows, .. } => rows,
        }
    }

    pub fn cols(&self) -> usize {
        match *self {
            Weight::Mxfp4 { cols, .. } | Weight::Bf16 { cols, .. } | Weight::Q8 { cols, .. } => cols,
        }
    }

    /// Bytes of weight data (what one full pass reads).
    pub fn nbytes(&self) -> usize {
        match *self {
            Weight::Mxfp4 { blocks, scales, .. } => blocks.len() + scales.len(),
            Weight::Bf16 { data, .. } => data.len(),
            Weight::Q8 { codes, scales, .. } => codes.len() + 2 * scales.len(),
        }
    }

    /// Rows `r0..r1` as a weight of their own.
    pub fn slice_rows(&self, r0: usize, r1: usize) -> Weight<'a> {
        match *self {
            Weight::Mxfp4 { blocks, scales, cols, .. } => {
                let nb = cols / BLOCK;
                Weight::Mxfp4 {
                    blocks: &blocks[r0 * nb * BLOCK_BYTES..r1 * nb * BLOCK_BYTES],
                    scales: &scales[r0 * nb..r1 * nb],
                    rows: r1 - r0,
                    cols,
                }
            }
            Weight::Bf16 { data, cols, .. } => {
                Weight::Bf16 { data: &data[r0 * cols * 2..r1 * cols * 2], rows: r1 - r0, cols }
            }
            Weight::Q8 { codes, scales, cols, .. } => Weight::Q8 {
                codes: &codes[r0 * cols..r1 * cols],
                scales: &scales[r0 * cols / BLOCK..r1 * cols / BLOCK],
                rows: r1 - r0,
                cols,
            },
        }
    }

    /// Row `r` of a Q8 weight: (codes, scales).
    fn q8_row(&self, r: usize) -> (&'a [u8], &'a [u16]) {
        let Weight::Q8 { codes, scales, cols, .. } = *self else { unreachable!("not a Q8 weight") };
        let nb = cols / BLOCK;
        (&codes[r * cols..(r + 1) * cols], &scales[r * nb..(r + 1) * nb])
    }

    /// Row `r` of an MXFP4 weight: (code bytes, scale bytes).
    fn mxfp4_row(&self, r: usize) -> (&'a [u8], &'a [u8]) {
        self.mxfp4_rows(r, 1)
    }

    /// Rows `r..r + count` of an MXFP4 weight (contiguous): (blocks, scales).
    fn mxfp4_rows(&self, r: usize, count: usize) -> (&'a [u8], &'a [u8]) {
        let Weight::Mxfp4 { blocks, scales, cols, .. } = *self else { unreachable!("not an MXFP4 weight") };
        let nb = cols / BLOCK;
        (&blocks[r * nb * BLOCK_BYTES..(r + count) * nb * BLOCK_BYTES], &scales[r * nb..(r + count) * nb])
    }

    /// Row `r` of a bf16 weight, as bytes.
    fn bf16_row(&self, r: usize) -> &'a [u8] {
        let Weight::Bf16 { data, cols, .. } = *self else { unreachable!("not a bf16 weight") };
        &data[r * cols * 2..(r + 1) * cols * 2]
    }

    /// The activation order this ISA's kernels read for this weight format.
    pub fn x_layout(&self, isa: Isa) -> XLayout {
        match (self, isa) {
            (Weight::Mxfp4 { .. }, Isa::Avx512) => XLayout::Planes,
            (Weight::Mxfp4 { .. }, Isa::Avx2) => XLayout::Split,
            (Weight::Bf16 { .. }, Isa::Avx512) => XLayout::Split,
            _ => XLayout::Natural,
        }
    }
}

/// Four dot products of one prepared activation row with weight rows `r`.
#[inline]
fn dot4(isa: Isa, x: &[f32], w: &Weight, r: [usize; 4]) -> [f32; 4] {
    match *w {
        Weight::Mxfp4 { .. } => {
            let rows = r.map(|r| w.mxfp4_row(r));
            let (b, s) = (rows.map(|p| p.0), rows.map(|p| p.1));
            match isa {
                // SAFETY: `isa` is only ever a path `cpu::select` found supported, and
                // the slices were sized by `Weight::mxfp4` and the driver.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::mxfp4_dot4(x, b, s) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2::mxfp4_dot4(x, b, s) },
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => unsafe { neon::mxfp4_dot4(x, b, s) },
                _ => generic::mxfp4_dot4(x, b, s),
            }
        }
        Weight::Bf16 { .. } => {
            let rows = r.map(|r| w.bf16_row(r));
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::bf16_dot4(x, rows) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2::bf16_dot4(x, rows) },
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => unsafe { neon::bf16_dot4(x, rows) },
                _ => generic::bf16_dot4(x, rows),
            }
        }
        Weight::Q8 { .. } => unreachable!("Q8 GEMVs take quantized activations (dot4_int8)"),
    }
}

/// Decode weight row `r` to f32, in the activation layout of `Weight::x_layout`.
#[inline]
fn decode_row(isa: Isa, w: &Weight, r: usize, out: &mut [f32]) {
    match *w {
        Weight::Mxfp4 { .. } => {
            let (b, s) = w.mxfp4_row(r);
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::mxfp4_decode(b, s, out) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2::mxfp4_decode(b, s, out) },
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => unsafe { neon::mxfp4_decode(b, s, out) },
                _ => generic::mxfp4_decode(b, s, out),
            }
        }
        Weight::Bf16 { .. } => {
            let row = w.bf16_row(r);
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::bf16_decode(row, out) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2::bf16_decode(row, out) },
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => unsafe { neon::bf16_decode(row, out) },
                _ => generic::bf16_decode(row, out),
            }
        }
        Weight::Q8 { .. } => {
            // Once per row per GEMM task, reused for every row of x: not worth a SIMD twin.
            let (c, s) = w.q8_row(r);
            crate::q8::dequantize_row(c, s, out);
        }
    }
}

/// "int8"/"int16" precisions: four dot products of each of M quantized activation rows
/// (M <= INT_GEMV_MAX_ROWS: one chunk of the GEMV path) with MXFP4 or Q8 rows.
#[inline]
fn dot4_int8<const TWO: bool, const M: usize>(isa: Isa, xs: &[&QRow; M], w: &Weight, r: [usize; 4]) -> [[f32; 4]; M] {
    if let Weight::Q8 { .. } = w {
        let rows = r.map(|r| w.q8_row(r));
        let (c, s) = (rows.map(|p| p.0), rows.map(|p| p.1));
        return xs.map(|x| match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if vnni() => unsafe { avx512::q8_dot4_int8::<TWO>(x, c, s) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx2 => unsafe { avx2::q8_dot4_int8::<TWO>(x, c, s) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if dotprod() => unsafe { neon::q8_dot4_int8_sdot::<TWO>(x, c, s) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::q8_dot4_int8::<TWO>(x, c, s) },
            _ => generic::q8_dot4_int8::<TWO>(x, c, s),
        });
    }
    let rows = r.map(|r| w.mxfp4_row(r));
    let (b, s) = (rows.map(|p| p.0), rows.map(|p| p.1));
    match isa {
        // The AVX-512 kernel decodes each code group once for all M rows.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if vnni() && vbmi() => unsafe { avx512::mxfp4_dot4_int8::<TWO, M>(xs, b, s) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if vnni() => unsafe { avx512::mxfp4_dot4_int8_no_vbmi::<TWO, M>(xs, b, s) },
        // Two limbs joined as i16s (`QLayout::Words`), one limb as bytes (`Grouped`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if TWO && avxvnni() => unsafe { avx2::mxfp4_dot4_words_avxvnni::<M>(xs, b, s) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 if TWO => unsafe { avx2::mxfp4_dot4_words::<M>(xs, b, s) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if avxvnni() => unsafe { avx2::mxfp4_dot4_int8_avxvnni::<M>(xs, b, s) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { avx2::mxfp4_dot4_int8::<M>(xs, b, s) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if dotprod() => xs.map(|x| unsafe { neon::mxfp4_dot4_int8_sdot::<TWO>(x, b, s) }),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => xs.map(|x| unsafe { neon::mxfp4_dot4_int8::<TWO>(x, b, s) }),
        _ => xs.map(|x| generic::mxfp4_dot4_int8::<TWO>(x, b, s)),
    }
}

/// Whether `dot4_int8`'s MXFP4 kernel on this path reads its four rows interleaved
/// (group by group) rather than one after another.
fn interleaves_rows(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        return vnni();
    }
    let _ = isa;
    false
}

/// Whether the AVX-512 int8 kernel's VNNI is there (cached by std).
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    is_x86_feature_detected!("avx512vnni")
}

/// Whether the AVX2 int GEMV can take 256-bit `vpdpbusd` (AVX-VNNI; cached by std).
#[cfg(target_arch = "x86_64")]
fn avxvnni() -> bool {
    is_x86_feature_detected!("avxvnni")
}

/// Whether the AVX-512 int GEMVs can decode codes with `vpermb` (cached by std; Ice
/// Lake and Zen 4 on, not Cascade Lake).
#[cfg(target_arch = "x86_64")]
fn vbmi() -> bool {
    is_x86_feature_detected!("avx512vbmi")
}

/// Whether the quantized packed GEMM on this path takes the limbs joined as i16s for
/// `vpmaddwd` (`quant::QForm::Pairs`: AVX2, or AVX-512 without VNNI).
fn joins_limbs(isa: Isa) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => !vnni(),
        Isa::Avx2 => true,
        _ => false,
    }
}

/// The quantized packed GEMM's activation form on `isa`: int8 limbs for `vpdpbusd`
/// (AVX-512 VNNI), `sdot` (NEON with dotprod) and the scalar twin, joined i16s for
/// `vpmaddwd` (AVX2).
fn qpack_form(isa: Isa) -> quant::QForm {
    if joins_limbs(isa) {
        quant::QForm::Pairs
    } else {
        quant::QForm::Quads
    }
}

/// Whether the NEON int kernels can take `sdot` (cached by std; `cpu::features` reports it).
#[cfg(target_arch = "aarch64")]
pub(crate) fn dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// The order `dot4_int8`'s kernel for this weight format (and number of limbs) reads
/// quantized activations in.
fn q_layout(isa: Isa, w: &Weight, two: bool) -> QLayout {
    match (isa, w) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, Weight::Q8 { .. }) if vnni() => QLayout::Lanes,
        (_, Weight::Q8 { .. }) => QLayout::Natural,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, _) if vnni() => QLayout::Grouped,
        (Isa::Avx512 | Isa::Avx2, _) if two => QLayout::Words,
        (Isa::Avx512 | Isa::Avx2, _) => QLayout::Grouped,
        _ => QLayout::Natural,
    }
}

#[inline]
fn tile(isa: Isa, x: [&[f32]; 4], w: [&[f32]; 4], n: usize) -> [[f32; 4]; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::f32_tile(x, w, n) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::f32_tile(x, w, n) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::f32_tile(x, w, n) },
        _ => generic::f32_tile(x, w, n),
    }
}

/// Output pointer shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    static DECODED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with a thread-local f32 buffer of `len` elements from `key` (grown once, then
/// reused; a fresh one if the thread's buffer is already in use).
pub(crate) fn with_thread_buffer<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

/// Rows per task for a job of `rows` in a batch of `total_rows`: enough tasks to
/// balance the threads, few enough to amortise.
fn chunk_rows(rows: usize, per_row_bytes: usize, total_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // About 8 tasks per thread over the whole batch, shared out by rows.
    let tasks = (threads * 8 * rows / total_rows.max(rows)).max(1);
    let target = rows.div_ceil(tasks);
    // At least ~64 KB of weights per task.
    let min_rows = (65536 / per_row_bytes.max(1)).max(4);
    let c = target.max(min_rows).min(rows.max(1));
    c.div_ceil(4) * 4
}

/// One matmul of a batch: y[m, rows] = x[m, cols] @ W^T (+ bias[rows]).
pub struct Job<'a, 'w> {
    pub x: &'a [f32],
    pub m: usize,
    pub w: Weight<'w>,
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

/// y[m, rows] = x[m, cols] @ W^T (+ bias[rows]).
///
/// `scratch` holds the prepared activations between calls (no allocation once grown).
/// Panics on inconsistent sizes: callers validate user input first.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    isa: Isa,
    precision: Precision,
    x: &[f32],
    m: usize,
    w: &Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    matmul_batch(isa, precision, &mut [Job { x, m, w: *w, bias, out }], scratch);
}

/// Activations of one job, prepared for its kernels.
struct Prepared<'a> {
    path: Path,
    /// f32 activations (Gemv, Tiles), reordered when the kernels read another order.
    xs: &'a [f32],
    /// Quantized activations (QuantGemv).
    q: Option<&'a QuantX>,
    two: bool,
    /// Packed activations (Packed).
    packed: &'a [f32],
    /// Quantized packed activations (QuantPacked).
    qpack: &'a QPack,
}

/// Several independent matmuls in one parallel dispatch (the q/k/v projections, the
/// experts of a layer): their output rows are split into tasks together, so the
/// threads start once and stay busy across all of them.
pub fn matmul_batch(isa: Isa, precision: Precision, jobs: &mut [Job<'_, '_>], scratch: &mut Scratch) {
    // Q8 under "f32" takes two limbs too: only "int8" asks for one.
    let two_limbs =
        |w: &Weight| precision == Precision::Int16 || (precision == Precision::F32 && matches!(w, Weight::Q8 { .. }));
    if scratch.jobs.len() < jobs.len() {
        scratch.jobs.resize_with(jobs.len(), Default::default);
    }
    // Per job: checks, then its activations in the order (or quantization) its kernels read.
    // A job whose activations are the very slice of an earlier quantized job's (the
    // experts of one token) reads that job's quantization: `shared[i]`.
    let Scratch { jobs: job_scratch, shared, outs, order, starts, tasks } = scratch;
    shared.clear();
    for (i, (job, js)) in jobs.iter().zip(job_scratch.iter_mut()).enumerate() {
        let (rows, n, m) = (job.w.rows(), job.w.cols(), job.m);
        assert_eq!(job.x.len(), m * n, "matmul: x is not [m, n]");
        assert_eq!(job.out.len(), m * rows, "matmul: out is not [m, rows]");
        if let Some(b) = job.bias {
            assert_eq!(b.len(), rows, "matmul: bias is not [rows]");
        }
        js.path = Path::of(isa, precision, &job.w, m);
        js.reordered = false;
        shared.push(None);
        if m == 0 {
            continue;
        }
        js.two = two_limbs(&job.w);
        if js.path == Path::QuantGemv {
            let layout = q_layout(isa, &job.w, js.two);
            let same = |j: &Job| {
                std::ptr::eq(j.x, job.x)
                    && j.m == m
                    && Path::of(isa, precision, &j.w, j.m) == Path::QuantGemv
                    && two_limbs(&j.w) == js.two
                    && q_layout(isa, &j.w, js.two) == layout
            };
            shared[i] = jobs[..i].iter().position(same);
            if shared[i].is_none() {
                js.q.quantize(isa, layout, js.two, job.x, m, n);
            }
        } else if js.path == Path::QuantPacked {
            js.qpack.pack(isa, qpack_form(isa), js.two, job.x, m, n);
        } else if js.path == Path::Packed {
            pack(job.w.x_layout(isa), panel_shape(isa).1, job.x, m, n, &mut js.x, &mut js.packed);
        } else if let layout @ (XLayout::Split | XLayout::Planes) = job.w.x_layout(isa) {
            if js.x.len() < m * n {
                js.x.resize(m * n, 0.0);
            }
            for (xr, or) in job.x.chunks_exact(n).zip(js.x[..m * n].chunks_exact_mut(n)) {
                layout::reorder(layout, xr, or);
            }
            js.reordered = true;
        }
    }
    outs.clear();
    outs.extend(jobs.iter_mut().map(|j| OutPtr(j.out.as_mut_ptr())));
    let jobs = &*jobs;
    let (job_scratch, shared) = (&*job_scratch, &*shared);
    // Job `ji`'s prepared activations: a few references, built where a task needs them.
    let prepared = |ji: usize| {
        let (job, js) = (&jobs[ji], &job_scratch[ji]);
        Prepared {
            path: js.path,
            xs: if js.reordered { &js.x[..job.m * job.w.cols()] } else { job.x },
            q: match (js.path, shared[ji]) {
                (Path::QuantGemv, Some(j)) => Some(&job_scratch[j].q),
                (Path::QuantGemv, None) => Some(&js.q),
                _ => None,
            },
            two: js.two,
            packed: &js.packed,
            qpack: &js.qpack,
        }
    };
    // Weights streamed with no per-task buffer (GEMVs; bf16 tiles on AVX-512: decode,
    // batched decode): the threads start together and finish together (with tasks
    // of 1/16 of the work, decode's threads were busy 92% of its matmuls' time; this way
    // 97%).
    let streamed = |ji: usize| match job_scratch[ji].path {
        Path::Gemv | Path::QuantGemv => true,
        Path::Tiles => {
            matches!(isa, Isa::Avx512 | Isa::Avx2) && matches!(jobs[ji].w, Weight::Bf16 { .. } | Weight::Q8 { .. })
        }
        _ => false,
    };
    if (0..jobs.len()).all(streamed) {
        run_guided(isa, jobs, &prepared, outs, order, starts);
        return;
    }
    // Tasks: (job, first row, end row) over every job's rows.
    tasks.clear();
    let total_rows: usize = jobs.iter().map(|j| j.w.rows()).sum();
    for (ji, job) in jobs.iter().enumerate() {
        let rows = job.w.rows();
        if job.m == 0 || rows == 0 {
            continue;
        }
        let mut chunk = chunk_rows(rows, job.w.nbytes() / rows, total_rows);
        if matches!(job_scratch[ji].path, Path::Tiles | Path::Packed | Path::QuantPacked) {
            // The GEMM path decodes its rows into a per-thread buffer: keep that in cache.
            chunk = chunk.min(GEMM_MAX_TASK_ROWS);
        }
        for r0 in (0..rows).step_by(chunk) {
            tasks.push((ji, r0, (r0 + chunk).min(rows)));
        }
    }
    let (outs, tasks) = (&*outs, &*tasks);
    crate::par::for_each(tasks.len(), |i| {
        let (ji, r0, r1) = tasks[i];
        run_task(isa, &jobs[ji], &prepared(ji), outs[ji], r0, r1);
    });
}

/// GEMV jobs on every thread of the pool at once, each thread claiming runs of rows
/// from a shared cursor over all the jobs' rows: large runs first, smaller ones as the
/// rows run out, so that the threads finish together.
///
/// When some jobs have one activation row and others several (batched decode's
/// experts), the shared row space puts the several-row jobs first and half the threads
/// claim from its front, half from its back: the one-row GEMVs, bound by memory, run
/// beside the several-row ones, bound by arithmetic, rather than after them. `order`
/// and `starts` are scratch.
fn run_guided<'p>(
    isa: Isa,
    jobs: &[Job],
    prepared: &(dyn Fn(usize) -> Prepared<'p> + Sync),
    outs: &[OutPtr],
    order: &mut Vec<usize>,
    starts: &mut Vec<usize>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let threads = rayon::current_num_threads().max(1);
    let mixed = jobs.iter().any(|j| j.m == 1) && jobs.iter().any(|j| j.m > 1);
    order.clear();
    order.extend(0..jobs.len());
    if mixed {
        order.sort_by_key(|&ji| std::cmp::Reverse(jobs[ji].m)); // stable
    }
    let order = &*order;
    // Row offsets of the jobs in the shared row space.
    starts.clear();
    let mut total = 0;
    for &ji in order {
        starts.push(total);
        total += if jobs[ji].m == 0 { 0 } else { jobs[ji].w.rows() };
    }
    starts.push(total);
    let starts = &*starts;
    let bytes: usize = jobs.iter().filter(|j| j.m > 0).map(|j| j.w.nbytes()).sum();
    if total == 0 {
        return;
    }
    // At least ~64 KB of weights per claim.
    let min_rows = ((65536 * total).div_ceil(bytes.max(1))).max(4).div_ceil(4) * 4;
    // The rows not yet claimed, [front, back), packed as back << 32 | front.
    assert!(total < 1 << 32, "matmul: too many rows in one batch");
    let cursor = AtomicU64::new((total as u64) << 32);
    let claim = |from_back: bool| -> Option<(usize, usize)> {
        let mut cur = cursor.load(Ordering::Relaxed);
        loop {
            let (front, back) = ((cur & 0xffff_ffff) as usize, (cur >> 32) as usize);
            if front >= back {
                return None;
            }
            let want = ((back - front) / (2 * threads)).max(min_rows).div_ceil(4) * 4;
            let (a, b) = if from_back {
                (back.saturating_sub(want).max(front), back)
            } else {
                (front, (front + want).min(back))
            };
            let next = if from_back { (a as u64) << 32 | front as u64 } else { (back as u64) << 32 | b as u64 };
            match cursor.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((a, b)),
                Err(seen) => cur = seen,
            }
        }
    };
    let work = |from_back: bool| {
        while let Some((a, b)) = claim(from_back) {
            // [a, b) may cover the end of one job and the start of the next.
            let mut k = starts.partition_point(|&s| s <= a) - 1;
            let mut r = a;
            while r < b {
                let end = b.min(starts[k + 1]);
                if end > r {
                    let ji = order[k];
                    run_task(isa, &jobs[ji], &prepared(ji), outs[ji], r - starts[k], end - starts[k]);
                }
                r = end;
                k += 1;
            }
        }
    };
    if threads == 1 || total <= min_rows {
        work(false);
    } else {
        crate::par::run(&|index| work(mixed && index % 2 == 1));
    }
}

/// x [m, n] -> packed [groups][n][tokens] (zero-padded), each row first put in the
/// order the weights decode in (`tmp`: one row of scratch).
fn pack(layout: XLayout, tokens: usize, x: &[f32], m: usize, n: usize, tmp: &mut Vec<f32>, packed: &mut Vec<f32>) {
    let groups = m.div_ceil(tokens);
    packed.clear();
    packed.resize(groups * n * tokens, 0.0);
    tmp.resize(n.max(tmp.len()), 0.0);
    for (i, xr) in x.chunks_exact(n).enumerate() {
        layout::reorder(layout, xr, &mut tmp[..n]);
        let (g, t) = (i / tokens, i % tokens);
        let dst = &mut packed[g * n * tokens..(g + 1) * n * tokens];
        for (k, &v) in tmp[..n].iter().enumerate() {
            dst[k * tokens + t] = v;
        }
    }
}

thread_local! {
    /// One packed-GEMM step's results.
    static PANEL_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A task's weight rows as u8 codes (the quantized packed GEMM, `QForm::Quads`).
    static CODES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A task's weight rows as i16 words (the quantized packed GEMM, `QForm::Pairs`).
    static WORDS: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// Weight rows of one quantized packed-GEMM step.
pub(crate) const QPANEL_ROWS: usize = 4;

/// One MXFP4 row's codes as u8 2*E2M1+12, natural order.
fn mxfp4_codes(isa: Isa, blocks: &[u8], out: &mut [u8]) {
    match isa {
        // SAFETY: the path was selected for this CPU; out is twice the blocks' length.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::mxfp4_codes(blocks, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::mxfp4_codes(blocks, out) },
        _ => generic::mxfp4_codes(blocks, out),
    }
}

/// One MXFP4 row's weights as i16 2*E2M1 values, natural order.
fn mxfp4_words(isa: Isa, blocks: &[u8], out: &mut [i16]) {
    match isa {
        // SAFETY: the path was selected for this CPU (AVX-512 implies AVX2); out is
        // twice the blocks' length.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { avx2::mxfp4_words(blocks, out) },
        _ => generic::mxfp4_words(blocks, out),
    }
}

/// One quantized packed-GEMM step over one or two `QForm::Pairs` token groups, of which
/// the first `used` tokens are needed (the SIMD kernel skips a short last group's
/// second half).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn qgemm_panel_pairs(
    isa: Isa,
    words: [&[i16]; QPANEL_ROWS],
    scales: [&[f32]; QPANEL_ROWS],
    groups: &[quant::QGroup],
    used: usize,
    nb: usize,
    c: &mut [f32],
) {
    match isa {
        // SAFETY: the Pairs form is only packed on x86 paths (AVX-512 implies AVX2), and
        // the AVX-VNNI form runs where the CPU has it; the driver sized the rows (32 * nb
        // words, nb scales), the groups (packed for nb blocks) and c (QPANEL_ROWS *
        // groups * 16).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => {
            const T: usize = QPACK_TOKENS;
            let stride = groups.len() * T;
            for (gi, x) in groups.iter().enumerate() {
                let c = &mut c[gi * T..];
                let short = used <= gi * T + T / 2;
                unsafe {
                    match (avxvnni(), short) {
                        (true, true) => avx2::qgemm_panel_pairs_avxvnni::<1>(words, scales, x, nb, c, stride),
                        (true, false) => avx2::qgemm_panel_pairs_avxvnni::<2>(words, scales, x, nb, c, stride),
                        (false, true) => avx2::qgemm_panel_pairs::<1>(words, scales, x, nb, c, stride),
                        (false, false) => avx2::qgemm_panel_pairs::<2>(words, scales, x, nb, c, stride),
                    }
                }
            }
        }
        _ => generic::qgemm_panel_pairs(&words, &scales, groups, nb, c),
    }
}

/// One quantized packed-GEMM step over one or two token groups.
/// `fast`: every scale of the rows lies in the pack's `scale_range` (the AVX-512
/// kernel's exponent add; the same bits either way).
#[allow(clippy::too_many_arguments)]
fn qgemm_panel(
    isa: Isa,
    two: bool,
    fast: bool,
    codes: [&[u8]; QPANEL_ROWS],
    scales: [&[f32]; QPANEL_ROWS],
    groups: &[quant::QGroup],
    nb: usize,
    c: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        macro_rules! panel {
            ($two:literal, $fast:literal) => {
                // SAFETY: the Quads form is only packed on AVX-512 with VNNI (or scalar);
                // the driver sized the rows (32 * nb codes, nb scales), the groups (packed
                // for nb blocks with the job's limbs) and c (QPANEL_ROWS * 2 groups * 16),
                // and checked the scales against the range for `fast`.
                match groups {
                    &[a, b] => unsafe { avx512::qgemm_panel::<$two, 2, $fast>(codes, scales, [a, b], nb, c) },
                    &[a] => unsafe { avx512::qgemm_panel::<$two, 1, $fast>(codes, scales, [a], nb, c) },
                    _ => unreachable!("one or two groups per step"),
                }
            };
        }
        match (two, fast) {
            (true, true) => panel!(true, true),
            (true, false) => panel!(true, false),
            (false, true) => panel!(false, true),
            (false, false) => panel!(false, false),
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        // SAFETY: the Quads form is only packed on NEON where the CPU has dotprod
        // (`Path::of`); sizes as for the AVX-512 step above.
        unsafe {
            match (two, fast) {
                (true, true) => neon::qgemm_panel_sdot::<true, true>(codes, scales, groups, nb, c),
                (true, false) => neon::qgemm_panel_sdot::<true, false>(codes, scales, groups, nb, c),
                (false, true) => neon::qgemm_panel_sdot::<false, true>(codes, scales, groups, nb, c),
                (false, false) => neon::qgemm_panel_sdot::<false, false>(codes, scales, groups, nb, c),
            }
        }
        return;
    }
    let _ = fast;
    match two {
        true => generic::qgemm_panel::<true>(&codes, &scales, groups, nb, c),
        false => generic::qgemm_panel::<false>(&codes, &scales, groups, nb, c),
    }
}

/// Output rows r0..r1 of one job.
fn run_task(isa: Isa, job: &Job, p: &Prepared, optr: OutPtr, r0: usize, r1: usize) {
    let (w, m, n, rows) = (&job.w, job.m, job.w.cols(), job.w.rows());
    let write = |i: usize, r: usize, v: f32| {
        let v = v + job.bias.map_or(0.0, |b| b[r]);
        // SAFETY: i < m and r in this task's r0..r1: each element written by one task.
        unsafe { *optr.0.add(i * rows + r) = v };
    };
    // One activation row on AVX-512 VNNI: blocks of consecutive rows, group outer
    // (`avx512::mxfp4_rows_int8`); the rows left over go through the four-row kernel.
    #[cfg(target_arch = "x86_64")]
    let r0 = match (p.q, w) {
        (Some(q), Weight::Mxfp4 { .. }) if m == 1 && isa == Isa::Avx512 && vnni() => {
            use avx512::ROW_BLOCK;
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            let x = q.row(0);
            let full = r0 + (r1 - r0) / ROW_BLOCK * ROW_BLOCK;
            if full > r0 {
                // The first block is not prefetched by a previous one: request all its
                // lines at once rather than miss on them one by one.
                let (blocks, scales) = w.mxfp4_rows(r0, ROW_BLOCK);
                for line in blocks.chunks(64).chain(scales.chunks(64)) {
                    // SAFETY: a prefetch (SSE, every x86_64 CPU) of mapped memory.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8) };
                }
            }
            for r in (r0..full).step_by(ROW_BLOCK) {
                let (blocks, scales) = w.mxfp4_rows(r, ROW_BLOCK);
                // Prefetch the next block of this task, or this one again at its end.
                let (nb_, ns_) = w.mxfp4_rows(if r + ROW_BLOCK < full { r + ROW_BLOCK } else { r }, ROW_BLOCK);
                // SAFETY: the path was selected for this CPU; x was quantized in the
                // Grouped order from this job's activations.
                let (nb_, ns_) = (nb_.as_ptr(), ns_.as_ptr());
                let d = unsafe {
                    match (p.two, vbmi()) {
                        (true, true) => avx512::mxfp4_rows_int8::<true>(&x, blocks, scales, nb_, ns_),
                        (false, true) => avx512::mxfp4_rows_int8::<false>(&x, blocks, scales, nb_, ns_),
                        (true, false) => avx512::mxfp4_rows_int8_no_vbmi::<true>(&x, blocks, scales, nb_, ns_),
                        (false, false) => avx512::mxfp4_rows_int8_no_vbmi::<false>(&x, blocks, scales, nb_, ns_),
                    }
                };
                for (j, &v) in d.iter().enumerate() {
                    write(0, r + j, v);
                }
            }
            full
        }
        _ => r0,
    };
    if r0 == r1 {
        return;
    }
    if matches!(p.path, Path::Gemv | Path::QuantGemv) {
        // Weight rows outer: with m > 1 the four rows are still in L1 for the next x row.
        // The activation rows' views, once per task (not per four weight rows).
        let qrows = p.q.map(|q| std::array::from_fn::<_, MAX_GEMV_ROWS, _>(|i| q.row(i.min(m - 1))));
        // Which rows a tile takes: four consecutive ones, or, for the AVX-512 integer
        // MXFP4 kernel (it interleaves its four rows), one from each quarter of the task,
        // so that each of its four row streams runs on through consecutive rows.
        let quarters = p.q.is_some() && matches!(w, Weight::Mxfp4 { .. }) && interleaves_rows(isa);
        let tiles = (r1 - r0).div_ceil(4);
        let stride = if quarters { tiles } else { 1 };
        for t in 0..tiles {
            let first = if quarters { r0 + t } else { r0 + 4 * t };
            // Rows past the task repeat the tile's first row; their results are dropped.
            let rows4 = [0, 1, 2, 3].map(|k| first + k * stride);
            let rr = rows4.map(|r| if r < r1 { r } else { first });
            let emit = |i: usize, d: [f32; 4]| {
                for (k, &v) in d.iter().enumerate() {
                    if rows4[k] < r1 {
                        write(i, rows4[k], v);
                    }
                }
            };
            match &qrows {
                Some(q) => {
                    // Chunks of at most INT_GEMV_MAX_ROWS activation rows, as even as they
                    // come; the tile's weight rows stay in L1 from one chunk to the next.
                    let chunks = m.div_ceil(INT_GEMV_MAX_ROWS);
                    let mut i0 = 0;
                    for c in 0..chunks {
                        let k = m / chunks + usize::from(c < m % chunks);
                        let x = |i: usize| &q[i0 + i];
                        let d: &[[f32; 4]] = match (k, p.two) {
                            (1, true) => &dot4_int8::<true, 1>(isa, &[x(0)], w, rr),
                            (1, false) => &dot4_int8::<false, 1>(isa, &[x(0)], w, rr),
                            (2, true) => &dot4_int8::<true, 2>(isa, &[x(0), x(1)], w, rr),
                            (2, false) => &dot4_int8::<false, 2>(isa, &[x(0), x(1)], w, rr),
                            (3, true) => &dot4_int8::<true, 3>(isa, &[x(0), x(1), x(2)], w, rr),
                            (3, false) => &dot4_int8::<false, 3>(isa, &[x(0), x(1), x(2)], w, rr),
                            (_, true) => &dot4_int8::<true, 4>(isa, &[x(0), x(1), x(2), x(3)], w, rr),
                            (_, false) => &dot4_int8::<false, 4>(isa, &[x(0), x(1), x(2), x(3)], w, rr),
                        };
                        for (i, &di) in d.iter().enumerate() {
                            emit(i0 + i, di);
                        }
                        i0 += k;
                    }
                }
                None => {
                    for i in 0..m {
                        emit(i, dot4(isa, &p.xs[i * n..(i + 1) * n], w, rr));
                    }
                }
            }
        }
        return;
    }
    let nr = r1 - r0;
    if p.path == Path::QuantPacked {
        let (nb, qp) = (n / BLOCK, p.qpack);
        with_thread_buffer(&DECODED, nr * nb, |scales| {
            let [lo, hi] = qp.scale_range;
            let mut fast = lo <= hi;
            for j in 0..nr {
                for (d, &e) in scales[j * nb..(j + 1) * nb].iter_mut().zip(w.mxfp4_row(r0 + j).1) {
                    *d = crate::mxfp4::E8M0[e as usize];
                    fast &= (lo..=hi).contains(&e);
                }
            }
            let scales = &*scales;
            let row_scales = |rows: [usize; QPANEL_ROWS]| rows.map(|j| &scales[j * nb..(j + 1) * nb]);
            // Every step of the task, `panel(rows, groups, used, c)`: QPANEL_ROWS of its
            // rows (a short last step repeats its last row; those results are dropped)
            // against one or two token groups, of which `used` tokens are needed.
            let steps = |panel: &dyn Fn([usize; QPANEL_ROWS], &[quant::QGroup], usize, &mut [f32])| {
                with_thread_buffer(&PANEL_OUT, QPANEL_ROWS * 2 * QPACK_TOKENS, |c| {
                    for g0 in (0..qp.groups).step_by(2) {
                        let groups = [qp.group(g0), qp.group((g0 + 1).min(qp.groups - 1))];
                        let ng = (qp.groups - g0).min(2);
                        for j0 in (0..nr).step_by(QPANEL_ROWS) {
                            let used = (m - g0 * QPACK_TOKENS).min(ng * QPACK_TOKENS);
                            panel(std::array::from_fn(|j| (j0 + j).min(nr - 1)), &groups[..ng], used, c);
                            for j in 0..(nr - j0).min(QPANEL_ROWS) {
                                for t in 0..used {
                                    write(g0 * QPACK_TOKENS + t, r0 + j0 + j, c[j * ng * QPACK_TOKENS + t]);
                                }
                            }
                        }
                    }
                });
            };
            // The task's rows decoded once, in the form the panel multiplies.
            match qp.form {
                quant::QForm::Quads => with_thread_buffer(&CODES, nr * n, |codes| {
                    for j in 0..nr {
                        mxfp4_codes(isa, w.mxfp4_row(r0 + j).0, &mut codes[j * n..(j + 1) * n]);
                    }
                    let codes = &*codes;
                    steps(&|rows, groups, _, c| {
                        let cr = rows.map(|j| &codes[j * n..(j + 1) * n]);
                        qgemm_panel(isa, p.two, fast, cr, row_scales(rows), groups, nb, c)
                    });
                }),
                quant::QForm::Pairs => with_thread_buffer(&WORDS, nr * n, |words| {
                    for j in 0..nr {
                        mxfp4_words(isa, w.mxfp4_row(r0 + j).0, &mut words[j * n..(j + 1) * n]);
                    }
                    let words = &*words;
                    steps(&|rows, groups, used, c| {
                        let wr = rows.map(|j| &words[j * n..(j + 1) * n]);
                        qgemm_panel_pairs(isa, wr, row_scales(rows), groups, used, nb, c)
                    });
                }),
            }
        });
        return;
    }
    if p.path == Path::Packed {
        let (prow, tokens) = panel_shape(isa);
        with_thread_buffer(&DECODED, nr * n, |dec| {
            for j in 0..nr {
                decode_row(isa, w, r0 + j, &mut dec[j * n..(j + 1) * n]);
            }
            with_thread_buffer(&PANEL_OUT, prow * tokens, |c| {
                let mut wrows: [&[f32]; MAX_PANEL_ROWS] = [&[]; MAX_PANEL_ROWS];
                for (g, xg) in p.packed.chunks_exact(n * tokens).enumerate() {
                    for j0 in (0..nr).step_by(prow) {
                        // A short last step repeats its last row; those results are dropped.
                        for (j, wr) in wrows[..prow].iter_mut().enumerate() {
                            *wr = &dec[(j0 + j).min(nr - 1) * n..][..n];
                        }
                        let used = (m - g * tokens).min(tokens);
                        gemm_panel(isa, &wrows[..prow], xg, n, used, c);
                        for j in 0..(nr - j0).min(prow) {
                            for t in 0..used {
                                write(g * tokens + t, r0 + j0 + j, c[j * tokens + t]);
                            }
                        }
                    }
                }
            });
        });
        return;
    }
    let xrow = |i: usize| &p.xs[i.min(m - 1) * n..(i.min(m - 1) + 1) * n];
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx2) && matches!(w, Weight::Bf16 { .. } | Weight::Q8 { .. }) {
        // bf16 and Q8 rows widen in registers: no decoded copy to write and read back.
        // Weight rows outer: four rows (4 x 2n or 4 x n bytes) stay in L1/L2 for every
        // group of four x rows, so each weight byte comes from memory once (x rows outer
        // streamed the task's rows from memory once per group: twice for 8 batched tokens).
        for r in (r0..r1).step_by(4) {
            let wr = [r, (r + 1).min(r1 - 1), (r + 2).min(r1 - 1), (r + 3).min(r1 - 1)];
            for i in (0..m).step_by(4) {
                let xt = [xrow(i), xrow(i + 1), xrow(i + 2), xrow(i + 3)];
                // SAFETY: the path was selected for this CPU; x rows hold n values, bf16
                // rows 2n bytes, Q8 rows n codes and n / 32 scales (n % 32 == 0).
                let d = unsafe {
                    match (w, isa) {
                        (Weight::Q8 { .. }, Isa::Avx512) => {
                            let rows = wr.map(|r| w.q8_row(r));
                            avx512::q8_tile(xt, rows.map(|p| p.0), rows.map(|p| p.1), n)
                        }
                        (Weight::Q8 { .. }, _) => {
                            let rows = wr.map(|r| w.q8_row(r));
                            avx2::q8_tile(xt, rows.map(|p| p.0), rows.map(|p| p.1), n)
                        }
                        (_, Isa::Avx512) => avx512::bf16_tile(xt, wr.map(|r| w.bf16_row(r)), n),
                        _ => avx2::bf16_tile(xt, wr.map(|r| w.bf16_row(r)), n),
                    }
                };
                for a in 0..(m - i).min(4) {
                    for b in 0..(r1 - r).min(4) {
                        write(i + a, r + b, d[a][b]);
                    }
                }
            }
        }
        return;
    }
    with_thread_buffer(&DECODED, nr * n, |dec| {
        for j in 0..nr {
            decode_row(isa, w, r0 + j, &mut dec[j * n..(j + 1) * n]);
        }
        let wrow = |j: usize| &dec[j.min(nr - 1) * n..(j.min(nr - 1) + 1) * n];
        for i in (0..m).step_by(4) {
            let xt = [xrow(i), xrow(i + 1), xrow(i + 2), xrow(i + 3)];
            for j in (0..nr).step_by(4) {
                let wt = [wrow(j), wrow(j + 1), wrow(j + 2), wrow(j + 3)];
                let d = tile(isa, xt, wt, n);
                for a in 0..(m - i).min(4) {
                    for b in 0..(nr - j).min(4) {
                        write(i + a, r0 + j + b, d[a][b]);
                    }
                }
            }
        }
    });
}

/// Read every byte of `buf` (a wrapping sum of its u64 words), in parallel over the
/// current pool: the plain memory-read baseline the benchmarks compare kernels with.
pub fn read_all(buf: &[u8]) -> u64 {
    buf.par_chunks(1 << 16)
        .map(|c| {
            // SAFETY: any bytes are valid u64s; align_to splits off unaligned ends.
            let (pre, words, post) = unsafe { c.align_to::<u64>() };
            let mut acc = [0u64; 8];
            for w in words.chunks_exact(8) {
                for i in 0..8 {
                    acc[i] = acc[i].wrapping_add(w[i]);
                }
            }
            let tail = words.chunks_exact(8).remainder().iter().fold(0u64, |a, &b| a.wrapping_add(b));
            acc.iter().fold(tail, |a, &b| a.wrapping_add(b)) + pre.iter().chain(post).map(|&v| v as u64).sum::<u64>()
        })
        .reduce(|| 0, |a, b| a.wrapping_add(b))
}

#[cfg(test)]
pub(crate) mod tests;
