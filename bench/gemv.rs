//! GEMV at gpt-oss-20b's real shapes, as a fraction of the memory read bandwidth measured
//! in the same run (alternating passes, same thread count).
//!
//!     cargo bench -p gptoss-core --bench gemv [-- --reps N --threads 1,2 --int8 --int16 --cache --only NAME --m M]
//!
//! `--m M` multiplies M activation rows at once (2-4: batched decode's experts).
//!
//! The Q8 cases are the `precision="q8"` mode's attention and lm_head matrices (int8
//! codes, a bf16 scale per 32; always multiplied with quantized activations: 16-bit,
//! or 8-bit with --int8).
//!
//! Each case rotates through enough copies of its matrix to exceed the caches by far
//! (hundreds of MB), so weights come from memory, as in decode. A pass reads every copy
//! once; "GB/s" is weight bytes read per second; "ratio" is that over the plain read
//! bandwidth of the same buffers (a parallel sum) in the neighbouring pass.

use gptoss_core::cpu;
use gptoss_core::kernels::{self, Weight};
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Mxfp4,
    Bf16,
    Q8,
}

struct Case {
    name: &'static str,
    format: Format,
    rows: usize,
    cols: usize,
    copies: usize,
}

fn fill(buf: &mut [u8], seed: u64, lo: u8, hi: u8) {
    let mut s = seed | 1;
    for b in buf.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = lo + (s % (hi as u64 - lo as u64 + 1)) as u8;
    }
}

/// Plain parallel read of every buffer.
fn read_all(bufs: &[Vec<u8>]) -> u64 {
    bufs.iter().map(|b| kernels::read_all(b)).fold(0, |a, b| a.wrapping_add(b))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let reps: usize = get("--reps").and_then(|s| s.parse().ok()).unwrap_or(7);
    let threads: Vec<usize> =
        get("--threads").map(|s| s.split(',').filter_map(|t| t.parse().ok()).collect()).unwrap_or_else(|| vec![1, 2]);
    // --cache: one copy per case, so the weights stay in cache (the kernels' compute ceiling).
    let in_cache = args.iter().any(|a| a == "--cache");
    let (isa, why) = cpu::select(None).expect("kernel path");
    // --int8: the "int8" precision for the MXFP4 cases (activations quantized per block).
    let precision = if args.iter().any(|a| a == "--int8") {
        kernels::Precision::Int8
    } else if args.iter().any(|a| a == "--int16") {
        kernels::Precision::Int16
    } else {
        kernels::Precision::F32
    };
    println!("kernels: {} ({why}); precision {precision:?}; reps {reps}", isa.name());

    let cases = [
        Case { name: "mxfp4 gate_up 5760x2880", format: Format::Mxfp4, rows: 5760, cols: 2880, copies: 64 },
        Case { name: "mxfp4 down    2880x2880", format: Format::Mxfp4, rows: 2880, cols: 2880, copies: 128 },
        Case { name: "bf16  qkv     5120x2880", format: Format::Bf16, rows: 5120, cols: 2880, copies: 20 },
        Case { name: "bf16  lm_head 201088x2880", format: Format::Bf16, rows: 201088, cols: 2880, copies: 1 },
        Case { name: "q8    qkv     5120x2880", format: Format::Q8, rows: 5120, cols: 2880, copies: 40 },
        Case { name: "q8    lm_head 201088x2880", format: Format::Q8, rows: 201088, cols: 2880, copies: 1 },
    ];
    println!("{:<28} {:>3} {:>9} {:>9} {:>9} {:>6}", "case", "thr", "MB/pass", "GB/s", "read GB/s", "ratio");
    let l2_cases = [
        Case { name: "mxfp4 in L2   256x2880", format: Format::Mxfp4, rows: 256, cols: 2880, copies: 1 },
        Case { name: "bf16  in L2   128x2880", format: Format::Bf16, rows: 128, cols: 2880, copies: 1 },
        Case { name: "q8    in L2   256x2880", format: Format::Q8, rows: 256, cols: 2880, copies: 1 },
    ];
    let cases: &[Case] = if in_cache { &l2_cases } else { &cases };
    // --batch K: K matrices per call (`matmul_batch`), as decode runs its experts.
    let batch: usize = get("--batch").and_then(|s| s.parse().ok()).unwrap_or(1);
    // --only NAME: the cases whose name contains NAME (e.g. "q8", "mxfp4").
    let only = get("--only");
    let m: usize = get("--m").and_then(|s| s.parse().ok()).unwrap_or(1);
    for case in cases.iter().filter(|c| only.as_deref().is_none_or(|o| c.name.contains(o))) {
        // One buffer per copy: blocks+scales back to back for MXFP4, bf16 bits otherwise.
        let nb = case.cols / 32;
        let (bytes_b, bytes_s) = match case.format {
            Format::Mxfp4 => (case.rows * nb * 16, case.rows * nb),
            Format::Bf16 => (case.rows * case.cols * 2, 0),
            // Codes here, the bf16 scales in `q8_scales`.
            Format::Q8 => (case.rows * case.cols, 0),
        };
        let copies = if in_cache { 1 } else { case.copies };
        // In cache, one call is too short to time: repeat it.
        let passes = if in_cache { 500 } else { 1 };
        let bufs: Vec<Vec<u8>> = (0..copies)
            .map(|i| {
                let mut v = vec![0u8; bytes_b + bytes_s];
                if case.format == Format::Mxfp4 {
                    fill(&mut v[..bytes_b], 1 + i as u64, 0, 255);
                    fill(&mut v[bytes_b..], 7 + i as u64, 118, 122);
                } else if case.format == Format::Q8 {
                    fill(&mut v, 5 + i as u64, 0, 255);
                } else {
                    // bf16 values of moderate magnitude: high byte 0x3c..0x3e or 0xbc..0xbe.
                    fill(&mut v, 3 + i as u64, 0, 255);
                    for pair in v.chunks_exact_mut(2) {
                        pair[1] = 0x3c + (pair[1] & 0x02) + (pair[1] & 0x80);
                    }
                }
                v
            })
            .collect();
        // bf16 scales of moderate magnitude (~2^-7) for the Q8 cases.
        let q8_scales: Vec<Vec<u16>> = (0..if case.format == Format::Q8 { copies } else { 0 })
            .map(|i| (0..case.rows * nb).map(|j| 0x3c00 + ((i + j) % 64) as u16).collect())
            .collect();
        let weights: Vec<Weight> = bufs
            .iter()
            .enumerate()
            .map(|(i, v)| match case.format {
                Format::Mxfp4 => Weight::mxfp4(&v[..bytes_b], &v[bytes_b..], case.rows, case.cols),
                Format::Bf16 => Weight::bf16(v, case.rows, case.cols),
                Format::Q8 => Weight::Q8 { codes: v, scales: &q8_scales[i], rows: case.rows, cols: case.cols },
            })
            .collect();
        let total: usize =
            bufs.iter().map(|b| b.len()).sum::<usize>() + q8_scales.iter().map(|s| 2 * s.len()).sum::<usize>();
        let x: Vec<f32> = (0..m * case.cols).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut out = vec![0f32; m * case.rows];
        let mut outs = vec![0f32; m * case.rows * batch];
        let mut scratch = kernels::Scratch::default();
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            pool.install(|| {
                // Warm up both (page faults, thread start).
                black_box(read_all(&bufs));
                for w in &weights {
                    kernels::matmul(isa, precision, &x, m, w, None, &mut out, &mut scratch);
                }
                let (mut gemv, mut read) = (Vec::new(), Vec::new());
                for _ in 0..reps {
                    let t0 = Instant::now();
                    black_box(read_all(&bufs));
                    read.push(total as f64 / t0.elapsed().as_secs_f64() / 1e9);
                    let t0 = Instant::now();
                    for _ in 0..passes {
                        if batch > 1 {
                            for ws in weights.chunks(batch) {
                                let mut jobs: Vec<kernels::Job> = ws
                                    .iter()
                                    .zip(outs.chunks_exact_mut(m * case.rows))
                                    .map(|(w, o)| kernels::Job { x: &x, m, w: *w, bias: None, out: o })
                                    .collect();
                                kernels::matmul_batch(isa, precision, &mut jobs, &mut scratch);
                                black_box(&jobs);
                            }
                        } else {
                            for w in &weights {
                                kernels::matmul(isa, precision, &x, m, w, None, &mut out, &mut scratch);
                                black_box(&out);
                            }
                        }
                    }
                    gemv.push((passes * total) as f64 / t0.elapsed().as_secs_f64() / 1e9);
                }
                let ratios: Vec<f64> = gemv.iter().zip(&read).map(|(g, r)| g / r).collect();
                let mut rs = ratios.clone();
                println!(
                    "{:<28} {:>3} {:>9.0} {:>9.1} {:>9.1} {:>5.0}%",
                    case.name,
                    t,
                    total as f64 / 1e6,
                    median(&mut gemv),
                    median(&mut read),
                    100.0 * median(&mut rs)
                );
            });
        }
    }
}
