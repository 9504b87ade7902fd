//! Decode attention at depth: one token's attention over `--depth` cached positions in
//! the 12 full-attention layers of gpt-oss-20b (8 kv heads of 8 query heads, head_dim
//! 64), as a fraction of the memory read bandwidth measured in the same run
//! (alternating passes, same thread count).
//!
//!     cargo bench -p gptoss-core --bench attention [-- --depth 4096 --reps N --threads 1,2]
//!
//! Both cache element types: f32 (the default precisions) and bf16 (`precision="q8"`).
//! "ms" is the time of the 12 layers, what one decoded token spends in full attention
//! (the sliding layers read 128 positions); "GB/s" is K and V bytes read per second;
//! "ratio" is that over a plain parallel read of the same storage in the neighbouring
//! pass. At depth 4096 the storage (201 MB in f32) exceeds the caches, as in decode.

use gptoss_core::cpu;
use gptoss_core::kernels;
use gptoss_core::model::attention::{attend_group, Group};
use gptoss_core::runtime::kv_cache::{KvCache, KvDtype, KvRows};
use rayon::prelude::*;
use std::cell::RefCell;
use std::time::Instant;

const LAYERS: usize = 12;
const KV_HEADS: usize = 8;
const GROUP: usize = 8;
const HEAD_DIM: usize = 64;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The bytes of a layer's K and V storage.
fn storage_bytes(rows: KvRows<'_>) -> [&[u8]; 2] {
    // SAFETY: plain-old-data slices viewed as bytes, for reading only.
    unsafe fn bytes<T>(s: &[T]) -> &[u8] {
        std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s))
    }
    match rows {
        KvRows::F32 { k, v } => unsafe { [bytes(k), bytes(v)] },
        KvRows::Bf16 { k, v } => unsafe { [bytes(k), bytes(v)] },
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let depth: usize = get("--depth").and_then(|s| s.parse().ok()).unwrap_or(4096);
    let reps: usize = get("--reps").and_then(|s| s.parse().ok()).unwrap_or(15);
    let threads: Vec<usize> =
        get("--threads").map(|s| s.split(',').filter_map(|t| t.parse().ok()).collect()).unwrap_or_else(|| vec![1, 2]);
    let (isa, why) = cpu::select(None).expect("kernel path");
    println!("attention at depth {depth}, {LAYERS} layers x {KV_HEADS} kv heads x {GROUP} query heads; kernels {isa:?} ({why})");

    let f = |i: usize| ((i.wrapping_mul(2654435761)) % 1000) as f32 / 500.0 - 1.0;
    let rows: Vec<f32> = (0..depth * KV_HEADS * HEAD_DIM).map(f).collect();
    let q: Vec<f32> = (0..KV_HEADS * GROUP * HEAD_DIM).map(|i| f(i + 3) * 0.2).collect();
    let sinks = vec![0.5f32; GROUP];
    println!("{:>6} {:>7} {:>9} {:>9} {:>9} {:>7}", "cache", "threads", "ms", "GB/s", "read GB/s", "ratio");
    for dtype in [KvDtype::F32, KvDtype::Bf16] {
        let mut cache = KvCache::new(LAYERS, KV_HEADS, HEAD_DIM, depth, dtype);
        for li in 0..LAYERS {
            cache.write(li, &rows, &rows);
        }
        let elem = if dtype == KvDtype::F32 { 4 } else { 2 };
        let kv_bytes = (LAYERS * KV_HEADS * depth * HEAD_DIM * 2 * elem) as f64;
        let mut out = vec![0f32; KV_HEADS * GROUP * HEAD_DIM];
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            pool.install(|| {
                let (mut attn, mut read) = (Vec::new(), Vec::new());
                for _ in 0..reps {
                    let start = Instant::now();
                    for li in 0..LAYERS {
                        out.par_chunks_mut(GROUP * HEAD_DIM).enumerate().for_each(|(g, o)| {
                            let args = Group {
                                q: &q[g * GROUP * HEAD_DIM..(g + 1) * GROUP * HEAD_DIM],
                                kv: cache.layers[li].view(),
                                off: cache.head_offset(g),
                                lo: 0,
                                nkeys: depth,
                                head_dim: HEAD_DIM,
                                sinks: &sinks,
                                scale: 0.125,
                            };
                            SCORES.with(|s| {
                                let mut s = s.borrow_mut();
                                s.resize(args.scores_len(), 0.0);
                                attend_group(isa, &args, &mut s, o);
                            });
                        });
                    }
                    attn.push(start.elapsed().as_secs_f64());
                    let start = Instant::now();
                    let mut sum = 0u64;
                    for li in 0..LAYERS {
                        for b in storage_bytes(cache.layers[li].view()) {
                            sum = sum.wrapping_add(kernels::read_all(b));
                        }
                    }
                    std::hint::black_box(sum);
                    read.push(start.elapsed().as_secs_f64());
                }
                // The read covers the whole storage (capacity rounded to a tile): per byte.
                let stored: usize = (0..LAYERS).map(|li| storage_bytes(cache.layers[li].view())[0].len() * 2).sum();
                let (a, r) = (median(&mut attn), median(&mut read));
                let (gbs, read_gbs) = (kv_bytes / a / 1e9, stored as f64 / r / 1e9);
                let name = if dtype == KvDtype::F32 { "f32" } else { "bf16" };
                println!(
                    "{name:>6} {t:>7} {:>9.2} {gbs:>9.1} {read_gbs:>9.1} {:>6.0}%",
                    a * 1e3,
                    100.0 * gbs / read_gbs
                );
            });
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM")) {
        println!("peak RSS: {}", hwm.trim_start_matches("VmHWM:").trim());
    }
}
