//! Kernel unit tests: every ISA path against the scalar twin, the scalar twin against
//! an f64 reference built from `mxfp4::dequantize` / exact bf16 widening.

use super::*;
use crate::cpu::Isa;
use crate::mxfp4;

/// SplitMix64: a tiny deterministic generator for test data.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// f32 values as their bits, for exact comparisons (NaN equal to itself).
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

pub(crate) fn simd_paths() -> Vec<Isa> {
    Isa::available().into_iter().filter(|i| *i != Isa::Scalar).collect()
}

fn reference(x: &[f32], m: usize, wf: &[f32], rows: usize, n: usize, bias: Option<&[f32]>) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; m * rows];
    let mut mag = vec![0f64; m * rows];
    for i in 0..m {
        for r in 0..rows {
            let (mut s, mut a) = (0f64, 0f64);
            for k in 0..n {
                let p = x[i * n + k] as f64 * wf[r * n + k] as f64;
                s += p;
                a += p.abs();
            }
            y[i * rows + r] = s + bias.map_or(0.0, |b| b[r] as f64);
            mag[i * rows + r] = a + bias.map_or(0.0, |b| (b[r] as f64).abs());
        }
    }
    (y, mag)
}

fn check_close(got: &[f32], want: &[f64], mag: &[f64], rel: f64, what: &str) {
    for (idx, ((&g, &w), &a)) in got.iter().zip(want).zip(mag).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= rel * a + 1e-30, "{what}: element {idx}: got {g}, want {w}, err {err} > {rel} * {a}");
    }
}

fn mxfp4_case(rng: &mut Rng, rows: usize, n: usize) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    let blocks = rng.bytes(rows * n / 2);
    let scales: Vec<u8> = (0..rows * n / 32).map(|_| 115 + (rng.next_u64() % 20) as u8).collect();
    let mut wf = vec![0f32; rows * n];
    mxfp4::dequantize(&blocks, &scales, &mut wf);
    (blocks, scales, wf)
}

#[test]
fn mxfp4_matmul_all_paths_against_reference() {
    let mut rng = Rng(7);
    for &(m, rows, n) in &[
        (1, 1, 32),
        (1, 7, 64),
        (2, 13, 96),
        (3, 33, 160),
        (4, 5, 32),
        (5, 37, 320),
        (17, 64, 2880),
        (16, 13, 96),
        (33, 50, 2880),
    ] {
        let (blocks, scales, wf) = mxfp4_case(&mut rng, rows, n);
        let x: Vec<f32> = (0..m * n).map(|_| rng.uniform()).collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.uniform()).collect();
        let (want, mag) = reference(&x, m, &wf, rows, n, Some(&bias));
        let w = Weight::mxfp4(&blocks, &scales, rows, n);
        let mut scalar = vec![0f32; m * rows];
        matmul(Isa::Scalar, Precision::F32, &x, m, &w, Some(&bias), &mut scalar, &mut Scratch::default());
        check_close(&scalar, &want, &mag, 1e-5, "scalar");
        for isa in simd_paths() {
            let mut got = vec![0f32; m * rows];
            matmul(isa, Precision::F32, &x, m, &w, Some(&bias), &mut got, &mut Scratch::default());
            check_close(&got, &want, &mag, 1e-5, isa.name());
            // And close to the scalar twin itself.
            let twin: Vec<f64> = scalar.iter().map(|&v| v as f64).collect();
            check_close(&got, &twin, &mag, 2e-5, &format!("{} vs scalar", isa.name()));
        }
    }
}

#[test]
fn bf16_matmul_all_paths_against_reference() {
    let mut rng = Rng(11);
    for &(m, rows, n) in &[
        (1, 1, 1),
        (1, 5, 17),
        (2, 9, 96),
        (3, 4, 33),
        (4, 3, 7),
        (6, 21, 130),
        (9, 40, 2880),
        (20, 25, 130),
        (40, 7, 2880),
        (16, 1, 1),
        // One activation row (one row at a time, 64 values a step, then 32, then the
        // rest): rows not a multiple of four, a 32-value step after the 64s (160, 300),
        // and tails of 1 and 12 values.
        (1, 13, 2880),
        (1, 64, 160),
        (1, 8, 33),
        (1, 24, 300),
    ] {
        let wf: Vec<f32> = (0..rows * n).map(|_| rng.uniform()).collect();
        let data: Vec<u8> = wf.iter().flat_map(|&v| crate::bf16::from_f32(v).to_le_bytes()).collect();
        let mut wq = vec![0f32; rows * n];
        crate::bf16::widen(&data, &mut wq);
        let x: Vec<f32> = (0..m * n).map(|_| rng.uniform()).collect();
        let (want, mag) = reference(&x, m, &wq, rows, n, None);
        let w = Weight::bf16(&data, rows, n);
        for isa in Isa::available() {
            let mut got = vec![0f32; m * rows];
            matmul(isa, Precision::F32, &x, m, &w, None, &mut got, &mut Scratch::default());
            check_close(&got, &want, &mag, 1e-5, isa.name());
        }
    }
}

/// The greedy lm_head screen recomputes the rows it keeps as a matrix of their own and
/// needs the full logits' bits: a bf16 row's GEMV result must not depend on the rows
/// beside it (which four rows share a call, which task).
#[test]
fn bf16_gemv_row_results_do_not_depend_on_their_neighbours() {
    let mut rng = Rng(12);
    let (rows, n) = (150, 2880);
    let data: Vec<u8> = (0..rows * n).flat_map(|_| crate::bf16::from_f32(rng.uniform()).to_le_bytes()).collect();
    let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    let w = Weight::bf16(&data, rows, n);
    for isa in Isa::available() {
        let mut all = vec![0f32; rows];
        matmul(isa, Precision::F32, &x, 1, &w, None, &mut all, &mut Scratch::default());
        for (r0, r1) in [(0, 1), (3, 4), (5, 13), (17, 150), (140, 149)] {
            let part = w.slice_rows(r0, r1);
            let mut got = vec![0f32; r1 - r0];
            matmul(isa, Precision::F32, &x, 1, &part, None, &mut got, &mut Scratch::default());
            assert_eq!(bits(&got), bits(&all[r0..r1]), "{} rows {r0}..{r1}", isa.name());
        }
    }
}

/// The int GEMVs give an activation row the same bits whether it comes alone or with
/// up to three others (batched decode and prompt-lookup drafts put a token's expert
/// rows into matmuls of 2-4 rows; decode alone, of one), on every path: the
/// multi-row kernels decode each line of codes once, then sum each row as alone.
#[test]
fn int_gemv_rows_do_not_depend_on_the_other_activation_rows() {
    let mut rng = Rng(44);
    // 91 blocks: a tail past the last full group; 203 rows: rows past a row block.
    let (rows, n) = (203, 91 * 32);
    let (blocks, scales, _) = mxfp4_case(&mut rng, rows, n);
    let w = Weight::mxfp4(&blocks, &scales, rows, n);
    let x: Vec<f32> = (0..4 * n).map(|_| rng.uniform()).collect();
    for isa in Isa::available() {
        for precision in [Precision::Int8, Precision::Int16] {
            let alone: Vec<Vec<f32>> = (0..4)
                .map(|i| {
                    let mut out = vec![0f32; rows];
                    matmul(isa, precision, &x[i * n..(i + 1) * n], 1, &w, None, &mut out, &mut Scratch::default());
                    out
                })
                .collect();
            for m in 2..=4 {
                let mut out = vec![0f32; m * rows];
                matmul(isa, precision, &x[..m * n], m, &w, None, &mut out, &mut Scratch::default());
                for i in 0..m {
                    assert_eq!(
                        bits(&out[i * rows..(i + 1) * rows]),
                        bits(&alone[i]),
                        "{} {precision:?}: row {i} of {m}",
                        isa.name()
                    );
                }
            }
        }
    }
}

/// NEON's int GEMV kernels, with `sdot` and without, give their scalar twins' results bit
/// for bit (MXFP4 and Q8 weights, one limb and two, a row length with a partial group).
/// `matmul` takes `sdot` wherever the CPU has it, so this is where the plain NEON
/// kernels run on such a CPU (CI's qemu has it).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_int_kernels_with_and_without_sdot_match_their_scalar_twins() {
    let mut rng = Rng(45);
    let (nb, n) = (91, 91 * 32);
    let (blocks, scales, _) = mxfp4_case(&mut rng, 4, n);
    let b = [0, 1, 2, 3].map(|r| &blocks[r * nb * 16..(r + 1) * nb * 16]);
    let s = [0, 1, 2, 3].map(|r| &scales[r * nb..(r + 1) * nb]);
    let data: Vec<u8> = (0..4 * n).flat_map(|_| bf16_pair(rng.uniform()).0.to_le_bytes()).collect();
    let q8 = crate::q8::Q8Matrix::from_bf16(&data, 4, n);
    let c = [0, 1, 2, 3].map(|r| &q8.codes[r * n..(r + 1) * n]);
    let cs = [0, 1, 2, 3].map(|r| &q8.scales[r * nb..(r + 1) * nb]);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform() * if rng.next_u64() % 7 == 0 { 50.0 } else { 1.0 }).collect();
    fn check<const TWO: bool>(x: &[f32], b: [&[u8]; 4], s: [&[u8]; 4], c: [&[u8]; 4], cs: [&[u16]; 4]) {
        let mut qx = quant::QuantX::default();
        qx.quantize(Isa::Scalar, quant::QLayout::Natural, TWO, x, 1, x.len());
        let xr = qx.row(0);
        // SAFETY: NEON is part of every aarch64 target; the sdot kernels only run where
        // the CPU has dotprod. Sizes: 4 rows of nb blocks, x quantized from n values.
        let kernels: [(&str, [f32; 4], [f32; 4], Option<[f32; 4]>); 2] = unsafe {
            [
                (
                    "mxfp4",
                    generic::mxfp4_dot4_int8::<TWO>(&xr, b, s),
                    neon::mxfp4_dot4_int8::<TWO>(&xr, b, s),
                    dotprod().then(|| neon::mxfp4_dot4_int8_sdot::<TWO>(&xr, b, s)),
                ),
                (
                    "q8",
                    generic::q8_dot4_int8::<TWO>(&xr, c, cs),
                    neon::q8_dot4_int8::<TWO>(&xr, c, cs),
                    dotprod().then(|| neon::q8_dot4_int8_sdot::<TWO>(&xr, c, cs)),
                ),
            ]
        };
        for (what, want, plain, sdot) in kernels {
            assert_eq!(bits(&plain), bits(&want), "{what}, two limbs {TWO}");
            if let Some(sdot) = sdot {
                assert_eq!(bits(&sdot), bits(&want), "{what} sdot, two limbs {TWO}");
            }
        }
    }
    check::<false>(&x, b, s, c, cs);
    check::<true>(&x, b, s, c, cs);
    println!("dotprod: {}", dotprod());
}

/// A batch of GEMV jobs (decode's experts: one activation row for some, several for
/// others, none for some) gives each job what `matmul` alone gives it, however the
/// threads claim the rows (one, two or three threads; with mixed row counts half of
/// them claim from the back of the row space), dispatched by rayon or, three times in
/// a row, by a forward pass's thread team (`par::with_team`).
#[test]
fn matmul_batch_of_mixed_jobs_matches_single_matmuls() {
    let mut rng = Rng(41);
    // Enough bytes that the claims are many (about 64 KB each).
    let n = 1024;
    let shapes = [(1, 200), (3, 40), (1, 72), (2, 128), (0, 40), (1, 8), (4, 64), (1, 1000)];
    let weights: Vec<(Vec<u8>, Vec<u8>, Vec<f32>)> =
        shapes.iter().map(|&(_, rows)| mxfp4_case(&mut rng, rows, n)).collect();
    let xs: Vec<Vec<f32>> = shapes.iter().map(|&(m, _)| (0..m * n).map(|_| rng.uniform()).collect()).collect();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for isa in Isa::available() {
            for (precision, team) in
                [Precision::F32, Precision::Int16].into_iter().flat_map(|p| [(p, false), (p, true)])
            {
                let batch = |outs: &mut Vec<Vec<f32>>| {
                    let mut jobs: Vec<Job> = shapes
                        .iter()
                        .zip(&weights)
                        .zip(&xs)
                        .zip(outs.iter_mut())
                        .map(|(((&(m, rows), (b, s, _)), x), out)| Job {
                            x,
                            m,
                            w: Weight::mxfp4(b, s, rows, n),
                            bias: None,
                            out,
                        })
                        .collect();
                    matmul_batch(isa, precision, &mut jobs, &mut Scratch::default());
                };
                let fresh = || -> Vec<Vec<f32>> { shapes.iter().map(|&(m, rows)| vec![f32::NAN; m * rows]).collect() };
                let results: Vec<Vec<Vec<f32>>> = pool.install(|| {
                    let run = || {
                        (0..if team { 3 } else { 1 })
                            .map(|_| {
                                let mut o = fresh();
                                batch(&mut o);
                                o
                            })
                            .collect()
                    };
                    if team {
                        crate::par::with_team(run)
                    } else {
                        run()
                    }
                });
                for outs in &results {
                    for (k, &(m, rows)) in shapes.iter().enumerate() {
                        let mut want = vec![0f32; m * rows];
                        let w = Weight::mxfp4(&weights[k].0, &weights[k].1, rows, n);
                        pool.install(|| {
                            matmul(isa, precision, &xs[k], m, &w, None, &mut want, &mut Scratch::default())
                        });
                        let how = if team { "a team" } else { "rayon" };
                        assert_eq!(
                            bits(&outs[k]),
                            bits(&want),
                            "{} {precision:?} {threads} threads, {how}, job {k}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn mxfp4_decode_paths_match_dequantize() {
    let mut rng = Rng(3);
    // Every byte value in every position, scales 0..=254 (255 is NaN, checked below);
    // 17 blocks: four full groups of four and one tail block.
    let blocks: Vec<u8> = (0..=255u8).chain(0..16).collect();
    for s in 0..=254u8 {
        let scales = vec![s; 17];
        let mut want = vec![0f32; 544];
        mxfp4::dequantize(&blocks, &scales, &mut want);
        for isa in simd_paths() {
            let mut got = vec![0f32; 544];
            decode_row(isa, &Weight::mxfp4(&blocks, &scales, 1, 544), 0, &mut got);
            let mut split = vec![0f32; 544];
            let w = Weight::mxfp4(&blocks, &scales, 1, 544);
            layout::reorder(w.x_layout(isa), &want, &mut split);
            for (a, b) in got.iter().zip(&split) {
                assert_eq!(a.to_bits(), b.to_bits(), "{} scale {s}", isa.name());
            }
        }
    }
    let nan = rng.bytes(16);
    for isa in Isa::available() {
        let mut got = vec![0f32; 32];
        decode_row(isa, &Weight::mxfp4(&nan, &[255], 1, 32), 0, &mut got);
        assert!(got.iter().all(|v| v.is_nan()));
    }
}

/// Scale bytes 0 (2^-127) and 255 (NaN) in the int GEMVs (the AVX-512 kernels make a
/// chunk of scales words, and read its bytes one group at a time only when the chunk has
/// one): rows with a 255 give NaN, the others their reference within the stated bound,
/// whether or not a special scale sits in the same call or chunk, in a full group or in
/// the tail.
#[test]
fn mxfp4_int_gemv_special_scales() {
    let mut rng = Rng(31);
    // 71 blocks: 17 full groups (scale chunks of groups 0-15 and 16) and a 3-block tail.
    let (rows, n) = (20, 71 * 32);
    let (blocks, mut scales, _) = mxfp4_case(&mut rng, rows, n);
    let nb = n / 32;
    // With one activation row on AVX-512 VNNI, rows 0-7 and 8-15 are two calls of
    // `mxfp4_rows_int8` and rows 16-19 one of the four-row kernel:
    // - rows 0-7: 0 (row 1) and 255 (row 5) in the first chunk, 0 in the second (row 3)
    //   and 0 in the tail (row 6);
    // - rows 8-15: a plain first chunk, 0 in the second (row 12);
    // - rows 16-19: 255 in the tail (row 18).
    // With more activation rows the four-row kernel takes rows t, t+5, t+10, t+15, so
    // calls mix special and plain rows; 20 rows take the quantized packed GEMM.
    for (r, b, v) in [(1, 2, 0u8), (5, 1, 255), (3, 66, 0), (6, 69, 0), (12, 66, 0), (18, 70, 255)] {
        scales[r * nb + b] = v;
    }
    // Rows whose every scale is 0 or 1 (2^-127, 2^-126): d/2 times the scale is
    // subnormal, so the kernels must not form that product first (its rounding would
    // be far outside the bound, which is as small as the row's weights).
    scales[9 * nb..10 * nb].fill(0);
    scales[17 * nb..18 * nb].fill(1);
    let mut wf = vec![0f32; rows * n];
    mxfp4::dequantize(&blocks, &scales, &mut wf);
    let w = Weight::mxfp4(&blocks, &scales, rows, n);
    for (precision, per) in [(Precision::Int8, 254.0), (Precision::Int16, 65024.0)] {
        // 1-4: one GEMV call per tile; 5-11: chunks (GEMV on AVX-512 VNNI up to 11, on
        // AVX2 up to 8, the packed GEMM past them); 12 and 20: the packed GEMM.
        for m in (1..=MAX_GEMV_ROWS + 1).chain([20]) {
            let x: Vec<f32> = (0..m * n).map(|_| rng.uniform()).collect();
            let (want, mag) = reference(&x, m, &wf, rows, n, None);
            for isa in Isa::available() {
                let mut got = vec![0f32; m * rows];
                matmul(isa, precision, &x, m, &w, None, &mut got, &mut Scratch::default());
                for i in 0..m {
                    for r in 0..rows {
                        let k = i * rows + r;
                        let what = format!("{} {precision:?} m={m} row {r}", isa.name());
                        if r == 5 || r == 18 {
                            assert!(got[k].is_nan(), "{what}: {} instead of NaN", got[k]);
                            continue;
                        }
                        let xb = |b: usize| &x[i * n + b * 32..i * n + b * 32 + 32];
                        let bound: f64 = (0..nb)
                            .map(|b| {
                                let amax = xb(b).iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                                let wsum: f64 = wf[r * n + b * 32..][..32].iter().map(|v| v.abs() as f64).sum();
                                amax / per * wsum
                            })
                            .sum::<f64>()
                            + 1e-5 * mag[k];
                        let err = (got[k] as f64 - want[k]).abs();
                        assert!(err <= bound, "{what}: err {err} > {bound}");
                    }
                }
            }
        }
    }
}

#[test]
fn mxfp4_int8_and_int16_precisions_all_paths_within_stated_bounds() {
    for (precision, per) in [(Precision::Int8, 254.0), (Precision::Int16, 65024.0)] {
        int8_case(precision, per);
    }
}

fn int8_case(precision: Precision, per: f64) {
    let mut rng = Rng(17);
    for &(m, rows, n) in &[
        (1, 1, 32),
        (1, 9, 96),
        (2, 13, 128),
        (3, 33, 160),
        (1, 40, 2880),
        // One activation row: blocks of 8 rows (AVX-512 VNNI), with rows left over,
        // one group and a tail block, no full group.
        (1, 13, 2880),
        (1, 64, 160),
        (1, 8, 32),
        (2, 5, 2912),
        (4, 21, 2880),
        (5, 9, 96),
        // The quantized packed GEMM: one group, a short second group, two full pairs
        // and a short fifth group; rows not a multiple of the panel's 4 or of a task.
        (16, 7, 96),
        (17, 5, 160),
        (64, 50, 2880),
        (77, 9, 2912),
        (33, 101, 96),
    ] {
        let (blocks, scales, wf) = mxfp4_case(&mut rng, rows, n);
        let x: Vec<f32> =
            (0..m * n).map(|_| rng.uniform() * if rng.next_u64() % 7 == 0 { 50.0 } else { 1.0 }).collect();
        let w = Weight::mxfp4(&blocks, &scales, rows, n);
        let (want, mag) = reference(&x, m, &wf, rows, n, None);
        // Stated bound: sum over blocks of (amax_b / 254) * sum_j |w_bj|, plus f32 rounding.
        let mut bound = vec![0f64; m * rows];
        for i in 0..m {
            for r in 0..rows {
                let mut b = 0f64;
                for g in 0..n / 32 {
                    let amax = x[i * n + g * 32..i * n + g * 32 + 32].iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    let wsum: f64 = wf[r * n + g * 32..r * n + g * 32 + 32].iter().map(|v| v.abs() as f64).sum();
                    b += amax / per * wsum;
                }
                bound[i * rows + r] = b + 1e-5 * mag[i * rows + r];
            }
        }
        let mut scalar = vec![0f32; m * rows];
        matmul(Isa::Scalar, precision, &x, m, &w, None, &mut scalar, &mut Scratch::default());
        for isa in Isa::available() {
            let mut got = vec![0f32; m * rows];
            matmul(isa, precision, &x, m, &w, None, &mut got, &mut Scratch::default());
            for k in 0..m * rows {
                let err = (got[k] as f64 - want[k]).abs();
                assert!(err <= bound[k], "{} {precision:?} [{m},{rows},{n}] {k}: err {err} > {}", isa.name(), bound[k]);
                // Same quantized values as the scalar path on the same path: only f32
                // rounding differs (AVX2 joins the limbs before converting; NEON's m > 4
                // matmuls keep f32 activations, another path).
                if Path::of(isa, precision, &w, m) == Path::of(Isa::Scalar, precision, &w, m) {
                    let d = (got[k] - scalar[k]).abs() as f64;
                    assert!(d <= 1e-5 * mag[k] + 1e-30, "{} vs scalar: {d}", isa.name());
                }
            }
        }
    }
}

#[test]
fn quantized_gemm_kernels_match_their_scalar_twins() {
    let mut rng = Rng(23);
    // Codes: every byte value, in full 4-block groups and a tail.
    let blocks: Vec<u8> = (0..=255u8).chain(rng.bytes(16 * 7 - 256 % 16)).collect::<Vec<_>>()[..16 * 23].to_vec();
    let mut want = vec![0u8; 2 * blocks.len()];
    generic::mxfp4_codes(&blocks, &mut want);
    for (i, &byte) in blocks.iter().enumerate() {
        assert_eq!(want[2 * i] as i32 - 12, quant::W2[(byte & 15) as usize] as i32);
        assert_eq!(want[2 * i + 1] as i32 - 12, quant::W2[(byte >> 4) as usize] as i32);
    }
    for isa in simd_paths() {
        let mut got = vec![0u8; want.len()];
        mxfp4_codes(isa, &blocks, &mut got);
        assert_eq!(got, want, "{}", isa.name());
    }
    // The i16 words (QForm::Pairs), every byte value.
    let mut want_words = vec![0i16; 2 * blocks.len()];
    generic::mxfp4_words(&blocks, &mut want_words);
    for (i, &byte) in blocks.iter().enumerate() {
        assert_eq!(want_words[2 * i], quant::W2[(byte & 15) as usize] as i16);
        assert_eq!(want_words[2 * i + 1], quant::W2[(byte >> 4) as usize] as i16);
    }
    for isa in simd_paths() {
        if qpack_form(isa) == quant::QForm::Pairs {
            let mut got = vec![0i16; want_words.len()];
            mxfp4_words(isa, &blocks, &mut got);
            assert_eq!(got, want_words, "{}", isa.name());
        }
    }
    // Panels: one and two groups, one and two limbs, each form's SIMD step against its
    // twin: the same f32 steps, so the same bits (Quads: with the scales' exponent add
    // and with a multiply; the scales are E8M0 values, as the driver decodes them).
    let (nb, m) = (7, 29);
    let n = nb * BLOCK;
    let x: Vec<f32> = (0..m * n).map(|_| rng.uniform() * 3.0).collect();
    let codes: Vec<Vec<u8>> = (0..QPANEL_ROWS).map(|_| rng.bytes(n).iter().map(|b| b % 25).collect()).collect();
    let words: Vec<Vec<i16>> = codes.iter().map(|r| r.iter().map(|&c| c as i16 - 12).collect()).collect();
    let scale_bytes: Vec<Vec<u8>> =
        (0..QPANEL_ROWS).map(|_| (0..nb).map(|_| 110 + (rng.next_u64() % 30) as u8).collect()).collect();
    let scales: Vec<Vec<f32>> =
        scale_bytes.iter().map(|r| r.iter().map(|&e| crate::mxfp4::E8M0[e as usize]).collect()).collect();
    let cr: [&[u8]; QPANEL_ROWS] = std::array::from_fn(|j| &codes[j][..]);
    let wr: [&[i16]; QPANEL_ROWS] = std::array::from_fn(|j| &words[j][..]);
    let sr: [&[f32]; QPANEL_ROWS] = std::array::from_fn(|j| &scales[j][..]);
    for two in [false, true] {
        for form in [quant::QForm::Quads, quant::QForm::Pairs] {
            let mut qp = QPack::default();
            qp.pack(Isa::Scalar, form, two, &x, m, n);
            let [lo, hi] = qp.scale_range;
            assert!(scale_bytes.iter().flatten().all(|e| (lo..=hi).contains(e)), "[{lo}, {hi}]");
            for groups in [&[qp.group(0)][..], &[qp.group(0), qp.group(1)][..]] {
                let len = QPANEL_ROWS * groups.len() * QPACK_TOKENS;
                // Pairs: every count of needed tokens (the kernel skips a short group's half).
                for used in
                    (1..=groups.len() * QPACK_TOKENS).filter(|&u| form == quant::QForm::Pairs || u == len / QPANEL_ROWS)
                {
                    let panel = |isa: Isa, fast: bool, c: &mut [f32]| match form {
                        quant::QForm::Quads => qgemm_panel(isa, two, fast, cr, sr, groups, nb, c),
                        quant::QForm::Pairs => qgemm_panel_pairs(isa, wr, sr, groups, used, nb, c),
                    };
                    let mut want = vec![0f32; len];
                    panel(Isa::Scalar, false, &mut want);
                    for isa in simd_paths() {
                        if qpack_form(isa) != form
                            || Path::of(isa, Precision::Int16, &Weight::mxfp4(&[0; 16], &[127], 1, 32), 16)
                                != Path::QuantPacked
                        {
                            continue;
                        }
                        for fast in [false, true] {
                            let mut got = vec![0f32; len];
                            panel(isa, fast, &mut got);
                            let per_row = len / QPANEL_ROWS;
                            for (k, (g, w)) in got.iter().zip(&want).enumerate().filter(|(k, _)| k % per_row < used) {
                                assert_eq!(
                                    g.to_bits(),
                                    w.to_bits(),
                                    "{} two={two} fast={fast} used={used} {k}",
                                    isa.name()
                                )
                            }
                        }
                    }
                }
            }
        }
    }
    // The two forms' sums agree up to f32 rounding (the same quantized values).
    for two in [false, true] {
        let (mut quads, mut pairs) = (QPack::default(), QPack::default());
        quads.pack(Isa::Scalar, quant::QForm::Quads, two, &x, m, n);
        pairs.pack(Isa::Scalar, quant::QForm::Pairs, two, &x, m, n);
        let (mut a, mut b) = (vec![0f32; QPANEL_ROWS * QPACK_TOKENS], vec![0f32; QPANEL_ROWS * QPACK_TOKENS]);
        qgemm_panel(Isa::Scalar, two, false, cr, sr, &[quads.group(1)], nb, &mut a);
        qgemm_panel_pairs(Isa::Scalar, wr, sr, &[pairs.group(1)], QPACK_TOKENS, nb, &mut b);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "two={two}: {p} vs {q}");
        }
    }
}

/// bf16 bits of `v` (round to nearest even) and their value.
fn bf16_pair(v: f32) -> (u16, f32) {
    let b = crate::bf16::from_f32(v);
    (b, crate::bf16::bits_to_f32(b))
}

#[test]
fn q8_quantize_within_stated_bound() {
    let mut rng = Rng(23);
    // Magnitudes from 1e-35 to 1e35, zeros, and one large value per block.
    for case in 0..400 {
        let mag = 10f32.powi((case % 71) - 35);
        let vals: Vec<f32> = (0..64)
            .map(|j| match (case + j) % 9 {
                0 => 0.0,
                1 => mag * 100.0 * rng.uniform(),
                _ => mag * rng.uniform(),
            })
            .collect();
        let data: Vec<u8> = vals.iter().flat_map(|&v| bf16_pair(v).0.to_le_bytes()).collect();
        let q = crate::q8::Q8Matrix::from_bf16(&data, 1, 64);
        let mut back = vec![0f32; 64];
        crate::q8::dequantize_row(&q.codes, &q.scales, &mut back);
        for b in 0..2 {
            let w: Vec<f32> = vals[b * 32..(b + 1) * 32].iter().map(|&v| bf16_pair(v).1).collect();
            let amax = w.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
            let d = crate::q8::scale(q.scales[b]) as f64;
            assert!(d >= amax / 127.0 && d <= amax / 127.0 * (1.0 + 1.0 / 128.0), "case {case}: d {d} amax {amax}");
            for j in 0..32 {
                let code = q.codes[b * 32 + j];
                assert!(code >= 1, "code 0 (q = -128) never occurs");
                let err = (back[b * 32 + j] as f64 - w[j] as f64).abs();
                assert!(err <= d / 2.0, "case {case}: |w - d q| = {err} > d/2 = {}", d / 2.0);
            }
        }
    }
    // Non-finite weights: a NaN scale, so results are NaN rather than silently finite.
    let data: Vec<u8> =
        (0..32).flat_map(|j| bf16_pair(if j == 3 { f32::INFINITY } else { 1.0 }).0.to_le_bytes()).collect();
    let q = crate::q8::Q8Matrix::from_bf16(&data, 1, 32);
    assert!(crate::q8::scale(q.scales[0]).is_nan());
}

#[test]
fn q8_matmul_all_paths_within_stated_bounds() {
    let mut rng = Rng(29);
    for precision in [Precision::F32, Precision::Int16, Precision::Int8] {
        // Activation error per element: amax_b / 254 (one limb), / 65024 (two limbs).
        let per = if precision == Precision::Int8 { 254.0 } else { 65024.0 };
        for &(m, rows, n) in &[
            (1, 1, 32),
            (1, 9, 96),
            (2, 13, 544),
            (3, 33, 160),
            (1, 40, 2880),
            // One activation row: an odd last block per row (summed apart) with rows not a
            // multiple of four, and rows of three scale chunks (16 + 16 + 2 blocks).
            (1, 19, 544),
            (1, 16, 1088),
            (5, 11, 2880),
            (4, 6, 64),
            (18, 14, 544),
        ] {
            let wsrc: Vec<f32> =
                (0..rows * n).map(|_| rng.uniform() * if rng.next_u64() % 5 == 0 { 8.0 } else { 1.0 }).collect();
            let data: Vec<u8> = wsrc.iter().flat_map(|&v| bf16_pair(v).0.to_le_bytes()).collect();
            let q = crate::q8::Q8Matrix::from_bf16(&data, rows, n);
            // The reference multiplies the dequantized Q8 weights: weight error is the
            // format's (tested above), activation error the precision's.
            let mut wf = vec![0f32; rows * n];
            for r in 0..rows {
                crate::q8::dequantize_row(
                    &q.codes[r * n..(r + 1) * n],
                    &q.scales[r * n / 32..(r + 1) * n / 32],
                    &mut wf[r * n..(r + 1) * n],
                );
            }
            let x: Vec<f32> =
                (0..m * n).map(|_| rng.uniform() * if rng.next_u64() % 7 == 0 { 50.0 } else { 1.0 }).collect();
            let bias: Vec<f32> = (0..rows).map(|_| rng.uniform()).collect();
            let (want, mag) = reference(&x, m, &wf, rows, n, Some(&bias));
            let mut bound = vec![0f64; m * rows];
            for i in 0..m {
                for r in 0..rows {
                    let mut b = 0f64;
                    if m <= INT_GEMV_MAX_ROWS {
                        for g in 0..n / 32 {
                            let xb = &x[i * n + g * 32..i * n + g * 32 + 32];
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            let wsum: f64 =
                                wf[r * n + g * 32..r * n + g * 32 + 32].iter().map(|v| v.abs() as f64).sum();
                            b += amax / per * wsum;
                        }
                    }
                    bound[i * rows + r] = b + 1e-5 * mag[i * rows + r];
                }
            }
            let w = Weight::q8(&q);
            let mut scalar = vec![0f32; m * rows];
            matmul(Isa::Scalar, precision, &x, m, &w, Some(&bias), &mut scalar, &mut Scratch::default());
            for isa in Isa::available() {
                let mut got = vec![0f32; m * rows];
                matmul(isa, precision, &x, m, &w, Some(&bias), &mut got, &mut Scratch::default());
                for k in 0..m * rows {
                    let err = (got[k] as f64 - want[k]).abs();
                    assert!(
                        err <= bound[k],
                        "{} q8 {precision:?} [{m},{rows},{n}] {k}: err {err} > {}",
                        isa.name(),
                        bound[k]
                    );
                    let d = (got[k] - scalar[k]).abs() as f64;
                    assert!(d <= 1e-5 * mag[k] + 1e-30, "{} vs scalar: {d}", isa.name());
                }
            }
        }
    }
}

/// Kernel-only timing (no driver, data in L1/L2): `cargo test --release -p gptoss-core
/// kernel_speed -- --ignored --nocapture`.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn kernel_speed() {
    let mut rng = Rng(5);
    let (rows, n) = (4, 2880);
    let (blocks, scales, _) = mxfp4_case(&mut rng, rows, n);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    let nb = n / 32;
    let b = [0, 1, 2, 3].map(|r| &blocks[r * nb * 16..(r + 1) * nb * 16]);
    let s = [0, 1, 2, 3].map(|r| &scales[r * nb..(r + 1) * nb]);
    let mut qx = quant::QuantX::default();
    qx.quantize(Isa::Scalar, quant::QLayout::Grouped, true, &x, 1, n);
    let mut xp = vec![0f32; n];
    layout::reorder(layout::XLayout::Planes, &x, &mut xp);
    let iters = 200_000;
    let f32_kernel = || unsafe { avx512::mxfp4_dot4(&xp, b, s) };
    let int8_kernel = || unsafe { avx512::mxfp4_dot4_int8::<false, 1>(&[&qx.row(0)], b, s)[0] };
    let int16_kernel = || unsafe { avx512::mxfp4_dot4_int8::<true, 1>(&[&qx.row(0)], b, s)[0] };
    // Two and three activation rows (each line of codes decoded once for them).
    let mut qx3 = quant::QuantX::default();
    let x3: Vec<f32> = (0..3 * n).map(|_| rng.uniform()).collect();
    qx3.quantize(Isa::Scalar, quant::QLayout::Grouped, true, &x3, 3, n);
    let int16_m2 = || unsafe { avx512::mxfp4_dot4_int8::<true, 2>(&[&qx3.row(0), &qx3.row(1)], b, s)[1] };
    let int16_m3 = || unsafe { avx512::mxfp4_dot4_int8::<true, 3>(&[&qx3.row(0), &qx3.row(1), &qx3.row(2)], b, s)[2] };
    // The one-row kernel decode takes, over ROW_BLOCK rows (the four above, repeated).
    let rb = avx512::ROW_BLOCK;
    let rows_b: Vec<u8> = (0..rb).flat_map(|r| b[r % 4].iter().copied()).collect();
    let rows_s: Vec<u8> = (0..rb).flat_map(|r| s[r % 4].iter().copied()).collect();
    let int16_rows = || unsafe {
        let d = avx512::mxfp4_rows_int8::<true>(&qx.row(0), &rows_b, &rows_s, rows_b.as_ptr(), rows_s.as_ptr());
        [d[0], d[1], d[2], d[3]]
    };
    // The same over 40 different row blocks (460 KB: from L2), each call prefetching the
    // next as the driver does.
    let l2_blocks = 40;
    let many_b: Vec<u8> = (0..l2_blocks).flat_map(|_| rows_b.iter().copied()).collect();
    let many_s: Vec<u8> = (0..l2_blocks).flat_map(|_| rows_s.iter().copied()).collect();
    let which = std::cell::Cell::new(0usize);
    let int16_rows_l2 = || unsafe {
        let i = which.get();
        which.set((i + 1) % l2_blocks);
        let (bl, sl) = (rows_b.len(), rows_s.len());
        let j = (i + 1) % l2_blocks;
        let d = avx512::mxfp4_rows_int8::<true>(
            &qx.row(0),
            &many_b[i * bl..(i + 1) * bl],
            &many_s[i * sl..(i + 1) * sl],
            many_b.as_ptr().add(j * bl),
            many_s.as_ptr().add(j * sl),
        );
        [d[0], d[1], d[2], d[3]]
    };
    // AVX2: int16 in `Words` order, int8 in `Grouped`.
    let mut qw = quant::QuantX::default();
    qw.quantize(Isa::Scalar, quant::QLayout::Words, true, &x, 1, n);
    let mut qw3 = quant::QuantX::default();
    qw3.quantize(Isa::Scalar, quant::QLayout::Words, true, &x3, 3, n);
    let mut q8x = quant::QuantX::default();
    q8x.quantize(Isa::Scalar, quant::QLayout::Grouped, false, &x, 1, n);
    let avx2_int16 = || unsafe { avx2::mxfp4_dot4_words::<1>(&[&qw.row(0)], b, s)[0] };
    let avx2_int16_m2 = || unsafe { avx2::mxfp4_dot4_words::<2>(&[&qw3.row(0), &qw3.row(1)], b, s)[1] };
    let avx2_int8 = || unsafe { avx2::mxfp4_dot4_int8::<1>(&[&q8x.row(0)], b, s)[0] };
    let evex_int16 = || unsafe { avx2::mxfp4_dot4_words_evex::<1>(&[&qw.row(0)], b, s)[0] };
    let evex_int8 = || unsafe { avx2::mxfp4_dot4_int8_evex::<1>(&[&q8x.row(0)], b, s)[0] };
    // 88 of the 90 blocks: no blocks past the last full group.
    let b88 = b.map(|r| &r[..88 * 16]);
    let s88 = s.map(|r| &r[..88]);
    let avx2_int16_88 = || unsafe { avx2::mxfp4_dot4_words::<1>(&[&qw.row(0)], b88, s88)[0] };
    // Two activation rows over 64 different sets of four rows (1.5 MB: L2 and beyond).
    let sets = 64;
    let many4_b: Vec<u8> = (0..sets * 4).flat_map(|r| b[r % 4].iter().copied()).collect();
    let many4_s: Vec<u8> = (0..sets * 4).flat_map(|r| s[r % 4].iter().copied()).collect();
    let which4 = std::cell::Cell::new(0usize);
    let int16_m2_l2 = || unsafe {
        let i = which4.get();
        which4.set((i + 1) % sets);
        let bb: [&[u8]; 4] = std::array::from_fn(|k| &many4_b[(4 * i + k) * nb * 16..][..nb * 16]);
        let ss: [&[u8]; 4] = std::array::from_fn(|k| &many4_s[(4 * i + k) * nb..][..nb]);
        avx512::mxfp4_dot4_int8::<true, 2>(&[&qx3.row(0), &qx3.row(1)], bb, ss)[1]
    };
    // (name, kernel, weight rows times activation rows per call, needs AVX-512 VNNI/VBMI)
    let kernels: [(&str, &dyn Fn() -> [f32; 4], usize, bool); 14] = [
        ("avx2 int16", &avx2_int16, 4, false),
        ("avx2 int16, 2 rows (per row)", &avx2_int16_m2, 8, false),
        ("avx2 int8", &avx2_int8, 4, false),
        ("avx2 + 256-bit VNNI int16", &evex_int16, 4, true),
        ("avx2 + 256-bit VNNI int8", &evex_int8, 4, true),
        ("avx2 int16 88 blocks (x 88/90)", &avx2_int16_88, 4, false),
        ("int16, row block from L2", &int16_rows_l2, rb, true),
        ("f32  ", &f32_kernel, 4, true),
        ("int8 ", &int8_kernel, 4, true),
        ("int16", &int16_kernel, 4, true),
        ("int16, row block", &int16_rows, rb, true),
        ("int16, 2 rows (per row)", &int16_m2, 8, true),
        ("int16, 2 rows (per row) from L2", &int16_m2_l2, 8, true),
        ("int16, 3 rows (per row)", &int16_m3, 12, true),
    ];
    let avx512 = Isa::Avx512.supported() && vnni() && vbmi();
    for (name, f, lines, needs_avx512) in kernels {
        if needs_avx512 && !avx512 {
            println!("{name}: skipped (no AVX-512 VNNI/VBMI on this CPU)");
            continue;
        }
        let t0 = std::time::Instant::now();
        let mut acc = 0f32;
        for _ in 0..iters {
            acc += std::hint::black_box(f())[0];
        }
        let dt = t0.elapsed().as_secs_f64();
        let blocks_done = (iters * lines * nb) as f64;
        println!(
            "{name}: {:.2} ns/block, {:.1} GB/s of weights ({acc})",
            dt * 1e9 / blocks_done,
            blocks_done * 17.0 / dt / 1e9
        );
    }
}

/// Timing, not a check (`cargo test --release -p gptoss-core gemm_panel_speed -- --ignored
/// --nocapture`): multiply-adds per ns of one thread in the packed GEMM steps, from L1/L2
/// (n = 2880, one task's rows).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn gemm_panel_speed() {
    let mut rng = Rng(6);
    let (nb, m) = (90, 32);
    let n = nb * BLOCK;
    let x: Vec<f32> = (0..m * n).map(|_| rng.uniform()).collect();
    let codes: Vec<Vec<u8>> = (0..QPANEL_ROWS).map(|_| rng.bytes(n).iter().map(|b| b % 25).collect()).collect();
    let words: Vec<Vec<i16>> = codes.iter().map(|r| r.iter().map(|&c| c as i16 - 12).collect()).collect();
    // E8M0 scales, as the driver decodes them (the VNNI panel adds their exponents).
    let scales: Vec<Vec<f32>> = (0..QPANEL_ROWS)
        .map(|_| (0..nb).map(|_| crate::mxfp4::E8M0[120 + (rng.next_u64() % 15) as usize]).collect())
        .collect();
    let cr: [&[u8]; QPANEL_ROWS] = std::array::from_fn(|j| &codes[j][..]);
    let wr: [&[i16]; QPANEL_ROWS] = std::array::from_fn(|j| &words[j][..]);
    let sr: [&[f32]; QPANEL_ROWS] = std::array::from_fn(|j| &scales[j][..]);
    let (mut quads, mut pairs) = (QPack::default(), QPack::default());
    quads.pack(Isa::Scalar, quant::QForm::Quads, true, &x, m, n);
    pairs.pack(Isa::Scalar, quant::QForm::Pairs, true, &x, m, n);
    let (qg, pg) = ([quads.group(0), quads.group(1)], [pairs.group(0), pairs.group(1)]);
    let rows6: Vec<Vec<f32>> = (0..6).map(|_| (0..n).map(|_| rng.uniform()).collect()).collect();
    let w6: [&[f32]; 6] = std::array::from_fn(|j| &rows6[j][..]);
    let xg: Vec<f32> = (0..n * 16).map(|_| rng.uniform()).collect();
    let mut c = vec![0f32; 6 * 32];
    let mut time = |name: &str, macs: usize, f: &mut dyn FnMut(&mut [f32])| {
        let iters = 2000;
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            f(&mut c);
            std::hint::black_box(&c);
        }
        println!("{name}: {:.1} multiply-adds per ns", (iters * macs) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    };
    // SAFETY (each kernel): its features are checked first; sizes as built above.
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        time("avx2 f32 gemm_panel, 6 rows x 16 tokens", 6 * 16 * n, &mut |c| unsafe {
            avx2::gemm_panel::<2>(&w6, &xg, n, c)
        });
        time("avx2 qgemm_panel_pairs, 4 rows x 16 tokens", 4 * 16 * n, &mut |c| unsafe {
            avx2::qgemm_panel_pairs::<2>(wr, sr, &pg[0], nb, c, 16)
        });
        time("avx2 qgemm_panel_pairs, 4 rows x 8 tokens", 4 * 8 * n, &mut |c| unsafe {
            avx2::qgemm_panel_pairs::<1>(wr, sr, &pg[0], nb, c, 16)
        });
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            time("avx2 + 256-bit VNNI qgemm_panel_pairs, 4 rows x 16 tokens", 4 * 16 * n, &mut |c| unsafe {
                avx2::qgemm_panel_pairs_evex::<2>(wr, sr, &pg[0], nb, c, 16)
            });
        }
    }
    if Isa::available().contains(&Isa::Avx512) {
        let w12: [&[f32]; avx512::PANEL_ROWS] = std::array::from_fn(|j| &rows6[j % 6][..]);
        let xg32: Vec<f32> = (0..n * avx512::PANEL_TOKENS).map(|_| rng.uniform()).collect();
        let mut c12 = vec![0f32; avx512::PANEL_ROWS * avx512::PANEL_TOKENS];
        time(
            "avx512 f32 gemm_panel, 12 rows x 32 tokens",
            avx512::PANEL_ROWS * avx512::PANEL_TOKENS * n,
            &mut |_| unsafe { avx512::gemm_panel::<2>(&w12, &xg32, n, &mut c12) },
        );
        if vnni() {
            time("avx512 qgemm_panel (vnni), 4 rows x 32 tokens", 4 * 32 * n, &mut |c| unsafe {
                avx512::qgemm_panel::<true, 2, true>(cr, sr, qg, nb, c)
            });
        }
    }
}

/// Activation quantization (`QuantX` and `QPack`) gives the same bytes on every path: blocks of ordinary,
/// huge, tiny (below `quant::TINY`), zero and non-finite values, every layout, one limb
/// and two, several rows and a row length with a partial group.
#[test]
fn quantize_paths_match_scalar() {
    let mut rng = Rng(41);
    let specials = [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-38, f32::MAX, -f32::MAX, 127.5, -0.5];
    for &(m, n) in &[(1, 2880), (3, 96), (2, 32 * 7)] {
        let nb = n / 32;
        let mut x = vec![0f32; m * n];
        for (b, block) in x.chunks_exact_mut(32).enumerate() {
            // Per block one magnitude from 1e-35 to 1e35, some blocks with a special value.
            let scale = 10f32.powi((rng.next_u64() % 71) as i32 - 35);
            for v in block.iter_mut() {
                *v = rng.uniform() * scale;
            }
            if b % 5 == 1 {
                block[(rng.next_u64() % 32) as usize] = specials[(rng.next_u64() % specials.len() as u64) as usize];
            }
            if b % 11 == 3 {
                block.fill(0.0);
            }
            if b % 13 == 7 {
                // amax 127, so d = 1: half-integers whose remainder 0.5 (ties to even
                // below) or 0.499 rounds to q2 = 128, which carries into q.
                for (j, v) in block.iter_mut().enumerate() {
                    let k = (j as f32 - 16.0) * 7.0;
                    *v = k + [0.5, 0.499, -0.5, -0.499][j % 4];
                }
                block[0] = 127.0;
            }
        }
        for layout in [quant::QLayout::Natural, quant::QLayout::Grouped, quant::QLayout::Lanes, quant::QLayout::Words] {
            for two in [false, true] {
                let mut want = quant::QuantX::default();
                want.quantize(Isa::Scalar, layout, two, &x, m, n);
                for isa in simd_paths() {
                    let mut got = quant::QuantX::default();
                    got.quantize(isa, layout, two, &x, m, n);
                    let what = format!("{isa:?} {layout:?} two={two} m={m} n={n}");
                    assert_eq!(got.q, want.q, "{what}: q");
                    assert_eq!(got.q2, want.q2, "{what}: q2");
                    assert_eq!(bits(&got.half_d), bits(&want.half_d), "{what}: d/2");
                    assert_eq!(got.corr, want.corr, "{what}: corr");
                    assert_eq!(got.corr2, want.corr2, "{what}: corr2");
                    assert_eq!(got.lane_neg_corr, want.lane_neg_corr, "{what}: lanes");
                    assert_eq!(got.lane_neg_corr2, want.lane_neg_corr2, "{what}: lanes2");
                    assert_eq!(bits(&got.lane_half_d), bits(&want.lane_half_d), "{what}: lane d/2");
                    assert_eq!(got.lane_neg_corr_joint, want.lane_neg_corr_joint, "{what}: joint lanes");
                    assert_eq!(got.lane_scale_bits, want.lane_scale_bits, "{what}: scale bits");
                    assert_eq!(got.scale_range, want.scale_range, "{what}: scale range");
                    assert_eq!(got.words, want.words, "{what}: words");
                    assert_eq!(bits(&got.words_mult), bits(&want.words_mult), "{what}: words' multipliers");
                }
                if layout == quant::QLayout::Words {
                    // Each half line's value v (block b, element k) at 16 (v % 4) + v / 4,
                    // joined as 256 q + q2 (or q), zero past an odd last block; each lane's
                    // multiplier d/2 / 256^2 (or / 256), four lanes per block.
                    let mut natural = quant::QuantX::default();
                    natural.quantize(Isa::Scalar, quant::QLayout::Natural, two, &x, m, n);
                    let halves = nb.div_ceil(2);
                    assert_eq!((want.words.len(), want.words_mult.len()), (m * halves * 64, m * halves * 8));
                    assert_eq!(want.q, natural.q);
                    for i in 0..m {
                        for b in 0..2 * halves {
                            let line = &want.words[(i * halves + b / 2) * 64..][..64];
                            let mult = &want.words_mult[(i * halves + b / 2) * 8 + (b % 2) * 4..][..4];
                            let hd = if b < nb { natural.half_d[i * nb + b] } else { 0.0 };
                            let hd = if two { hd / 65536.0 } else { hd / 256.0 };
                            assert!(mult.iter().all(|v| v.to_bits() == hd.to_bits()), "row {i} block {b}: {mult:?}");
                            for k in 0..32 {
                                let v = (b % 2) * 32 + k;
                                let joined = if b >= nb {
                                    0
                                } else {
                                    let at = i * n + b * 32 + k;
                                    let q = natural.q[at] as i16;
                                    if two {
                                        256 * q + natural.q2[at] as i16
                                    } else {
                                        q
                                    }
                                };
                                assert_eq!(line[16 * (v % 4) + v / 4], joined, "row {i} block {b} value {k}");
                            }
                        }
                    }
                }
                if layout == quant::QLayout::Natural {
                    // The packed GEMM's quantization (any layout: it has its own order).
                    for form in [quant::QForm::Quads, quant::QForm::Pairs] {
                        let mut packed = quant::QPack::default();
                        packed.pack(Isa::Scalar, form, two, &x, m, n);
                        for isa in simd_paths() {
                            let mut got = quant::QPack::default();
                            got.pack(isa, form, two, &x, m, n);
                            let what = format!("{isa:?} QPack {form:?} two={two} m={m} n={n}");
                            assert_eq!(got.q, packed.q, "{what}: q");
                            assert_eq!(got.neg_corr, packed.neg_corr, "{what}: corrections");
                            assert_eq!(got.joint, packed.joint, "{what}: joined values");
                            assert_eq!(bits(&got.half_d), bits(&packed.half_d), "{what}: d/2");
                            assert_eq!(got.scale_bits, packed.scale_bits, "{what}: scale bits");
                            assert_eq!(got.scale_range, packed.scale_range, "{what}: scale range");
                        }
                        // Both forms: d/2 over 256 with two limbs; Pairs: the rows' values
                        // joined (256 q + q2, or q).
                        const T: usize = QPACK_TOKENS;
                        for i in 0..m {
                            for b in 0..nb {
                                let gb = (i / T) * nb + b;
                                let hd = want.half_d[i * nb + b];
                                let hd = if two { hd * quant::LIMB2 } else { hd };
                                assert_eq!(packed.half_d[gb * T + i % T].to_bits(), hd.to_bits());
                                if form == quant::QForm::Pairs {
                                    for k in 0..32 {
                                        let q = want.q[i * n + b * 32 + k] as i16;
                                        let v = if two { 256 * q + want.q2[i * n + b * 32 + k] as i16 } else { q };
                                        let at = ((gb * quant::PAIRS + k / 2) * T + i % T) * 2 + k % 2;
                                        assert_eq!(packed.joint[at], v, "row {i} block {b} value {k}");
                                    }
                                }
                            }
                        }
                    }
                }
                assert_eq!(want.half_d.len(), m * nb);
                if layout == quant::QLayout::Natural {
                    // |x - d (q + q2/256)| <= d/512 with two limbs, d/2 with one.
                    for (b, block) in x.chunks_exact(32).enumerate() {
                        let d = 2.0 * want.half_d[b] as f64;
                        if !d.is_finite() {
                            continue;
                        }
                        for (j, &v) in block.iter().enumerate() {
                            let q = want.q[b * 32 + j] as f64;
                            let (got, tol) = if two {
                                (d * (q + want.q2[b * 32 + j] as f64 / 256.0), d / 512.0)
                            } else {
                                (d * q, d / 2.0)
                            };
                            // d = 0 for blocks below TINY: then |x| < TINY. Else y = x / d
                            // (|y| <= 127) is an f32 product, off by up to 127 * 2^-24 of d.
                            let tol = if d == 0.0 { quant::TINY as f64 } else { tol + 127.0 * d / 16_777_216.0 };
                            assert!((v as f64 - got).abs() <= tol, "block {b} value {j}: {v} vs {got}");
                        }
                    }
                }
                // The special blocks really are special: NaN d/2 where a value is not finite.
                for (b, block) in x.chunks_exact(32).enumerate() {
                    assert_eq!(want.half_d[b].is_nan(), block.iter().any(|v| !v.is_finite()));
                }
            }
        }
    }
}

/// A row's int GEMV result must not depend on which AVX-512 kernel computed it: the
/// threads' claims decide whether a row falls in a block of `mxfp4_rows_int8` or goes
/// through `mxfp4_dot4_int8`, and batched decode compares against single calls bit for
/// bit. Both kernels, with and without VBMI, every tail length (0-3 blocks past the
/// last full group), a 0 and a 255 scale among plain ones, activations so large that
/// plain scale bytes fall outside their `scale_range`, and each kernel with the range
/// emptied (every group through `scaled_add_exact`): the same bits everywhere.
#[cfg(target_arch = "x86_64")]
#[test]
fn mxfp4_int_gemv_kernels_agree_bit_for_bit() {
    if !(is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vbmi")) {
        eprintln!("skipped: needs AVX-512 VNNI and VBMI");
        return;
    }
    let mut rng = Rng(37);
    const R: usize = avx512::ROW_BLOCK;
    for nb in [1, 2, 3, 4, 5, 70, 90, 91] {
        let n = nb * 32;
        let (blocks, mut scales, _) = mxfp4_case(&mut rng, R, n);
        if nb == 70 {
            (scales[nb + 3], scales[5 * nb + 66]) = (0, 255);
        }
        if nb == 90 {
            // With activations near 1e-30 these plain bytes leave the scale range (their
            // products with d/2 would be subnormal).
            (scales[2 * nb + 7], scales[6 * nb + 80]) = (5, 3);
        }
        let magnitude = if nb == 90 { 1e-30 } else { 1.0 };
        let x: Vec<f32> = (0..n).map(|_| rng.uniform() * magnitude).collect();
        for two in [false, true] {
            let mut qx = quant::QuantX::default();
            qx.quantize(Isa::Avx512, quant::QLayout::Grouped, two, &x, 1, n);
            if nb == 90 {
                assert!(qx.row(0).scale_lo > 5, "the test needs bytes outside the range");
            }
            let row = |r: usize| (&blocks[r * nb * 16..(r + 1) * nb * 16], &scales[r * nb..(r + 1) * nb]);
            let mut results = vec![];
            for exact in [false, true] {
                let xr = if exact { quant::QRow { scale_lo: 255, scale_hi: 0, ..qx.row(0) } } else { qx.row(0) };
                // SAFETY: AVX-512 VNNI and VBMI checked above; 8 rows of nb blocks, x
                // quantized in Grouped order from n values with the limbs asked for.
                unsafe {
                    let (b, s) = (&blocks[..], &scales[..]);
                    let (p, q) = (b.as_ptr(), s.as_ptr());
                    results.push(match two {
                        true => avx512::mxfp4_rows_int8::<true>(&xr, b, s, p, q),
                        false => avx512::mxfp4_rows_int8::<false>(&xr, b, s, p, q),
                    });
                    results.push(match two {
                        true => avx512::mxfp4_rows_int8_no_vbmi::<true>(&xr, b, s, p, q),
                        false => avx512::mxfp4_rows_int8_no_vbmi::<false>(&xr, b, s, p, q),
                    });
                    for vbmi in [true, false] {
                        let mut four = [0f32; R];
                        for r0 in [0, 4] {
                            let (bs, ss) = ([0, 1, 2, 3].map(|k| row(r0 + k).0), [0, 1, 2, 3].map(|k| row(r0 + k).1));
                            let got = match (two, vbmi) {
                                (true, true) => avx512::mxfp4_dot4_int8::<true, 1>(&[&xr], bs, ss),
                                (false, true) => avx512::mxfp4_dot4_int8::<false, 1>(&[&xr], bs, ss),
                                (true, false) => avx512::mxfp4_dot4_int8_no_vbmi::<true, 1>(&[&xr], bs, ss),
                                (false, false) => avx512::mxfp4_dot4_int8_no_vbmi::<false, 1>(&[&xr], bs, ss),
                            };
                            four[r0..r0 + 4].copy_from_slice(&got[0]);
                        }
                        results.push(four);
                    }
                }
            }
            for (k, got) in results.iter().enumerate() {
                assert_eq!(bits(got), bits(&results[0]), "nb {nb}, two limbs {two}, result {k}");
            }
            let block = results[0];
            if nb == 70 {
                assert!(block[5].is_nan() && block.iter().filter(|v| v.is_nan()).count() == 1);
            }
            assert!(block.iter().all(|v| v.is_finite()) || nb == 70, "nb {nb}: {block:?}");
        }
    }
}

/// Zero weights give exactly zero on every int path, whatever the activations and
/// scales: the biased codes' corrections must cancel lane by lane (a correction per
/// block instead left f32 rounding of the lanes' opposite terms, -9e-44 with scale 0).
#[test]
fn mxfp4_int_gemv_of_zero_weights_is_zero() {
    for nb in [1, 2, 3, 5, 91] {
        let n = nb * 32;
        for (rows, m) in [(1, 1), (8, 1), (4, 3)] {
            let blocks = vec![0u8; rows * nb * 16];
            for scale in [0u8, 1, 127, 254] {
                let scales = vec![scale; rows * nb];
                let w = Weight::mxfp4(&blocks, &scales, rows, n);
                let x: Vec<f32> = (0..m * n).map(|k| 2.25 - (k % 7) as f32).collect();
                for precision in [Precision::Int8, Precision::Int16] {
                    for isa in Isa::available() {
                        let mut got = vec![1f32; m * rows];
                        matmul(isa, precision, &x, m, &w, None, &mut got, &mut Scratch::default());
                        assert!(
                            got.iter().all(|&v| v == 0.0),
                            "{} {precision:?} nb {nb} scale {scale}: {got:?}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

/// The Q8 and bf16 tiles (batched decode's attention and lm_head) decode their rows in
/// registers: each must give the bits of its ISA's `f32_tile` on the rows that
/// `q8::dequantize_row` and `bf16_decode` decode, which the Tiles path took before (the
/// AVX-512 bf16 tile reads x split, so it is checked by the matmul tests instead). Rows
/// of 1 block, of a 256-value chunk and a tail, of 2880 values; weights from 1e-30 to
/// 1e30 and a row all zero.
#[cfg(target_arch = "x86_64")]
#[test]
fn register_tiles_match_f32_tile_on_decoded_rows_bit_for_bit() {
    let mut rng = Rng(47);
    let flat = |t: [[f32; 4]; 4]| t.iter().flatten().copied().collect::<Vec<f32>>();
    for n in [32, 288, 544, 2880] {
        for magnitude in [1e-30f32, 1.0, 1e30] {
            let wsrc: Vec<f32> = (0..4 * n)
                .map(|k| if k / n == 2 && magnitude == 1.0 { 0.0 } else { rng.uniform() * magnitude })
                .collect();
            let data: Vec<u8> = wsrc.iter().flat_map(|&v| crate::bf16::from_f32(v).to_le_bytes()).collect();
            let q = crate::q8::Q8Matrix::from_bf16(&data, 4, n);
            let mut dec = vec![0f32; 4 * n];
            for r in 0..4 {
                crate::q8::dequantize_row(
                    &q.codes[r * n..(r + 1) * n],
                    &q.scales[r * n / 32..(r + 1) * n / 32],
                    &mut dec[r * n..(r + 1) * n],
                );
            }
            let mut wide = vec![0f32; 4 * n];
            crate::bf16::widen(&data, &mut wide);
            let x: Vec<f32> = (0..4 * n).map(|_| rng.uniform() * 3.0).collect();
            let xt = [0, 1, 2, 3].map(|i| &x[i * n..(i + 1) * n]);
            let codes = [0, 1, 2, 3].map(|r| &q.codes[r * n..(r + 1) * n]);
            let scales = [0, 1, 2, 3].map(|r| &q.scales[r * n / 32..(r + 1) * n / 32]);
            let bf16_rows = [0, 1, 2, 3].map(|r| &data[2 * r * n..2 * (r + 1) * n]);
            let dec_rows = [0, 1, 2, 3].map(|r| &dec[r * n..(r + 1) * n]);
            let wide_rows = [0, 1, 2, 3].map(|r| &wide[r * n..(r + 1) * n]);
            let what = format!("n {n}, weights ~{magnitude}");
            if Isa::available().contains(&Isa::Avx512) {
                // SAFETY: AVX-512 checked; rows of n values, n codes and n / 32 scales.
                let (got, want) = unsafe { (avx512::q8_tile(xt, codes, scales, n), avx512::f32_tile(xt, dec_rows, n)) };
                assert_eq!(bits(&flat(got)), bits(&flat(want)), "avx512 q8, {what}");
                assert!(flat(got).iter().all(|v| v.is_finite()));
            }
            if Isa::available().contains(&Isa::Avx2) {
                // SAFETY: AVX2 checked; as above, bf16 rows of 2n bytes.
                let (got, want) = unsafe { (avx2::q8_tile(xt, codes, scales, n), avx2::f32_tile(xt, dec_rows, n)) };
                assert_eq!(bits(&flat(got)), bits(&flat(want)), "avx2 q8, {what}");
                let (got, want) = unsafe { (avx2::bf16_tile(xt, bf16_rows, n), avx2::f32_tile(xt, wide_rows, n)) };
                assert_eq!(bits(&flat(got)), bits(&flat(want)), "avx2 bf16, {what}");
            }
        }
    }
}

/// The f32 tiles with rows that end mid-vector (the driver only gives AVX-512 whole
/// MXFP4 blocks, but the kernel takes any n): every ISA's tile within f32 rounding of
/// the float64 dot products.
#[test]
fn f32_tiles_of_any_length_against_reference() {
    let mut rng = Rng(53);
    for n in [1, 7, 16, 17, 31, 33, 48, 250, 257, 300] {
        let x: Vec<f32> = (0..4 * n).map(|_| rng.uniform()).collect();
        let w: Vec<f32> = (0..4 * n).map(|_| rng.uniform()).collect();
        let (xt, wt) = ([0, 1, 2, 3].map(|i| &x[i * n..(i + 1) * n]), [0, 1, 2, 3].map(|j| &w[j * n..(j + 1) * n]));
        for isa in Isa::available() {
            let got = tile(isa, xt, wt, n);
            for i in 0..4 {
                for j in 0..4 {
                    let want: f64 = (0..n).map(|k| xt[i][k] as f64 * wt[j][k] as f64).sum();
                    let mag: f64 = (0..n).map(|k| (xt[i][k] as f64 * wt[j][k] as f64).abs()).sum();
                    let err = (got[i][j] as f64 - want).abs();
                    assert!(err <= 1e-6 * mag + 1e-30, "{} n {n} [{i}][{j}]: err {err}", isa.name());
                }
            }
        }
    }
}

/// `QuantX::lane_scale_bits` plus a scale byte's `e << 23` is the exact product of the
/// lane's multiplier (d/2, over 256 with two limbs) and 2^(e - 127), a normal f32, for
/// every byte of the row's `scale_range`; the range is empty where a block is not
/// finite, and as wide as it can be: one byte more on either side fails some lane.
/// `QPack` keeps the same bits and range per token.
#[test]
fn lane_scale_bits_are_exact_products_within_the_scale_range() {
    let mut rng = Rng(43);
    let n = 32 * 12;
    for case in 0..40 {
        let mut x = vec![0f32; n];
        for (b, block) in x.chunks_exact_mut(32).enumerate() {
            let scale = 10f32.powi((rng.next_u64() % 71) as i32 - 35);
            for v in block.iter_mut() {
                *v = rng.uniform() * scale;
            }
            if b == 5 {
                block.fill(0.0);
            }
        }
        if case % 10 == 9 {
            x[7] = f32::NAN;
        }
        for two in [false, true] {
            let mut q = quant::QuantX::default();
            q.quantize(Isa::Scalar, quant::QLayout::Grouped, two, &x, 1, n);
            let row = q.row(0);
            let mut packed = QPack::default();
            packed.pack(Isa::Scalar, quant::QForm::Quads, two, &x, 1, n);
            assert_eq!(packed.scale_range, [row.scale_lo, row.scale_hi]);
            for b in 0..n / 32 {
                // Token 0 of block b; lane 4 b % 16 of group b / 4 in the Grouped row.
                assert_eq!(packed.scale_bits[b * QPACK_TOKENS], row.lane_scale_bits[(b / 4) * 16 + (b % 4) * 4]);
                assert_eq!(packed.half_d[b * QPACK_TOKENS].to_bits(), {
                    let hd = row.half_d[b];
                    if two { hd * quant::LIMB2 } else { hd }.to_bits()
                });
            }
            let (lo, hi) = (row.scale_lo as i32, row.scale_hi as i32);
            if case % 10 == 9 {
                assert!(lo > hi, "a NaN block leaves no byte");
                continue;
            }
            let exact = |l: usize, e: i32| {
                let mult = if two { row.lane_half_d[l] * quant::LIMB2 } else { row.lane_half_d[l] };
                let got = f32::from_bits((row.lane_scale_bits[l] + (e << 23)) as u32);
                let want = mult as f64 * 2f64.powi(e - 127);
                if mult == 0.0 {
                    // A block quantized to zero: any finite multiplier (its sums are 0).
                    return got.is_normal();
                }
                got.is_normal() && got as f64 == want
            };
            assert!((1..=254).contains(&lo) && lo <= hi && hi <= 254, "case {case}: [{lo}, {hi}]");
            for l in 0..row.lane_scale_bits.len() {
                for e in lo..=hi {
                    assert!(exact(l, e), "case {case} two={two} lane {l} byte {e}");
                }
            }
            let lanes = 0..row.lane_scale_bits.len();
            if lo > 1 {
                assert!(lanes.clone().any(|l| !exact(l, lo - 1)), "case {case}: {} also fits", lo - 1);
            }
            if hi < 254 {
                assert!(lanes.clone().any(|l| !exact(l, hi + 1)), "case {case}: {} also fits", hi + 1);
            }
        }
    }
}

/// The AVX2 int GEMVs with 256-bit VNNI (AVX-VNNI) give their plain forms' bits: int8
/// with `vpdpbusd` the `vpmaddubsw` form's, int16 with `vpdpwssd` the `vpmaddwd` form's
/// (the same exact lane sums, then the same f32 steps). Run through the EVEX encoding
/// where the CPU has AVX-512 VNNI/VL, and the VEX one where it has AVX-VNNI; every tail
/// length (0-3 blocks past the last full group), 1-4 activation rows, one limb and two,
/// a 0 and a 255 scale among plain ones.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_int_gemv_with_vnni_matches_the_word_form() {
    let evex = is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl");
    let vex = is_x86_feature_detected!("avxvnni");
    if !is_x86_feature_detected!("avx2") || !(evex || vex) {
        eprintln!("skipped: needs AVX2 and 256-bit VNNI");
        return;
    }
    let mut rng = Rng(46);
    for nb in [1, 2, 3, 4, 5, 6, 7, 90, 91] {
        let n = nb * 32;
        let (blocks, mut scales, _) = mxfp4_case(&mut rng, 4, n);
        if nb >= 5 {
            scales[1] = 0;
            scales[2 * nb + nb - 1] = 255;
        }
        let b = [0, 1, 2, 3].map(|r| &blocks[r * nb * 16..(r + 1) * nb * 16]);
        let s = [0, 1, 2, 3].map(|r| &scales[r * nb..(r + 1) * nb]);
        let x: Vec<f32> =
            (0..4 * n).map(|_| rng.uniform() * if rng.next_u64() % 5 == 0 { 30.0 } else { 1.0 }).collect();
        for two in [false, true] {
            let mut qx = quant::QuantX::default();
            let layout = if two { quant::QLayout::Words } else { quant::QLayout::Grouped };
            qx.quantize(Isa::Avx2, layout, two, &x, 4, n);
            let rows = [qx.row(0), qx.row(1), qx.row(2), qx.row(3)];
            macro_rules! check {
                ($m:literal) => {{
                    let xs: [&quant::QRow; $m] = std::array::from_fn(|i| &rows[i]);
                    let (want, got_evex, got_vex) = unsafe {
                        if two {
                            (
                                avx2::mxfp4_dot4_words::<$m>(&xs, b, s),
                                evex.then(|| avx2::mxfp4_dot4_words_evex::<$m>(&xs, b, s)),
                                vex.then(|| avx2::mxfp4_dot4_words_avxvnni::<$m>(&xs, b, s)),
                            )
                        } else {
                            (
                                avx2::mxfp4_dot4_int8::<$m>(&xs, b, s),
                                evex.then(|| avx2::mxfp4_dot4_int8_evex::<$m>(&xs, b, s)),
                                vex.then(|| avx2::mxfp4_dot4_int8_avxvnni::<$m>(&xs, b, s)),
                            )
                        }
                    };
                    for got in [got_evex, got_vex].into_iter().flatten() {
                        for i in 0..$m {
                            assert_eq!(bits(&got[i]), bits(&want[i]), "nb={nb} two={two} m={} row {i}", $m);
                        }
                    }
                }};
            }
            check!(1);
            check!(2);
            check!(3);
            check!(4);
        }
    }
    // The packed GEMM's `vpdpwssd` form against its `vpmaddwd` form, full and short groups.
    let (nb, m) = (7, 29);
    let n = nb * BLOCK;
    let x: Vec<f32> = (0..m * n).map(|_| rng.uniform() * 3.0).collect();
    let words: Vec<Vec<i16>> =
        (0..QPANEL_ROWS).map(|_| rng.bytes(n).iter().map(|b| (b % 25) as i16 - 12).collect()).collect();
    let scales: Vec<Vec<f32>> = (0..QPANEL_ROWS)
        .map(|_| (0..nb).map(|_| crate::mxfp4::E8M0[110 + (rng.next_u64() % 30) as usize]).collect())
        .collect();
    let wr: [&[i16]; QPANEL_ROWS] = std::array::from_fn(|j| &words[j][..]);
    let sr: [&[f32]; QPANEL_ROWS] = std::array::from_fn(|j| &scales[j][..]);
    for two in [false, true] {
        let mut qp = QPack::default();
        qp.pack(Isa::Avx2, quant::QForm::Pairs, two, &x, m, n);
        for g in 0..qp.groups {
            let x = qp.group(g);
            let len = QPANEL_ROWS * QPACK_TOKENS;
            // Full groups (V = 2) and a short group's first 8 tokens (V = 1).
            for v in [1, 2] {
                let (mut want, mut got) = (vec![0f32; len], vec![0f32; len]);
                let used = 8 * v;
                unsafe {
                    match v {
                        1 => avx2::qgemm_panel_pairs::<1>(wr, sr, &x, nb, &mut want, QPACK_TOKENS),
                        _ => avx2::qgemm_panel_pairs::<2>(wr, sr, &x, nb, &mut want, QPACK_TOKENS),
                    }
                }
                let mut check = |name: &str, run: &dyn Fn(&mut [f32])| {
                    run(&mut got);
                    for j in 0..QPANEL_ROWS {
                        let r = j * QPACK_TOKENS..j * QPACK_TOKENS + used;
                        assert_eq!(bits(&got[r.clone()]), bits(&want[r]), "{name} two={two} group {g} v={v}");
                    }
                };
                // SAFETY: each form's features are checked.
                if evex {
                    check("evex", &|c| unsafe {
                        match v {
                            1 => avx2::qgemm_panel_pairs_evex::<1>(wr, sr, &x, nb, c, QPACK_TOKENS),
                            _ => avx2::qgemm_panel_pairs_evex::<2>(wr, sr, &x, nb, c, QPACK_TOKENS),
                        }
                    });
                }
                if vex {
                    check("vex", &|c| unsafe {
                        match v {
                            1 => avx2::qgemm_panel_pairs_avxvnni::<1>(wr, sr, &x, nb, c, QPACK_TOKENS),
                            _ => avx2::qgemm_panel_pairs_avxvnni::<2>(wr, sr, &x, nb, c, QPACK_TOKENS),
                        }
                    });
                }
            }
        }
    }
}
