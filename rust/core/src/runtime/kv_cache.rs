//! The KV cache: K and V rows of every past position, for every layer.
//!
//! Design choice: sliding-window layers keep their K/V for the whole context too, not
//! only the last `sliding_window` positions. Memory: f32 K+V is
//! 2 * kv_heads * head_dim * 4 bytes per token per layer (gpt-oss-20b: 4 KiB, so 96 KiB
//! per token over 24 layers; 768 MiB at 8k tokens). A window-only ring would halve that
//! (sliding layers are half of all), but `truncate(n)` to any n (chat prefix reuse rolls
//! back thousands of tokens) would then have to recompute the dropped window from the
//! token ids. Keeping everything makes truncate O(1) and exact.
//!
//! Storage is head-major, [kv_heads][capacity][head_dim]: the keys (and values) one
//! attention task reads, those of one kv head, are one contiguous run instead of a
//! 256-byte slice of every 2 KiB position row. Strided that way, the rows defeated the
//! hardware prefetcher and mapped to a few cache sets (the 2 KiB stride): decode
//! attention over 4096 positions of 12 full layers took 19.5-27 ms with 2 threads
//! against 9.8-12 head-major (a standalone loop over `attention::attend_group`).
//!
//! Within a head, V is one row per position, and K is transposed in tiles of
//! `attention::KEY_TILE` (16) positions, [capacity / 16][head_dim][16]: dimension d of 16
//! consecutive keys is one vector, so a query's 16 scores are head_dim multiply-adds
//! with no sums across lanes (see `attention`). The capacity is `max_context` rounded up
//! to a whole tile.
//!
//! The storage is allocated zeroed up front, which reserves address space only: pages
//! become resident as positions are written.
//!
//! Rows are f32, or bf16 in the q8 mode (`Model::kv_dtype`): half the memory (48 instead
//! of 96 KiB per token for gpt-oss-20b) and half the bytes attention reads at depth.

use crate::error::{Error, Result};
use crate::model::attention::KEY_TILE;

/// How K and V rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// bf16 bits, rounded to nearest even.
    Bf16,
}

/// One layer's K and V, each kv_heads * capacity * head_dim elements (K in tiles, see
/// above), in one element type.
pub enum LayerKv {
    F32 { k: Vec<f32>, v: Vec<f32> },
    Bf16 { k: Vec<u16>, v: Vec<u16> },
}

/// A read-only view of a `LayerKv`'s storage.
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    Bf16 { k: &'a [u16], v: &'a [u16] },
}

impl LayerKv {
    fn zeroed(dtype: KvDtype, n: usize) -> LayerKv {
        match dtype {
            KvDtype::F32 => LayerKv::F32 { k: vec![0.0; n], v: vec![0.0; n] },
            KvDtype::Bf16 => LayerKv::Bf16 { k: vec![0; n], v: vec![0; n] },
        }
    }

    pub fn view(&self) -> KvRows<'_> {
        match self {
            LayerKv::F32 { k, v } => KvRows::F32 { k, v },
            LayerKv::Bf16 { k, v } => KvRows::Bf16 { k, v },
        }
    }
}

pub struct KvCache {
    pub layers: Vec<LayerKv>,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_context: usize,
    /// Positions each head's storage holds: max_context rounded up to a whole key tile.
    capacity: usize,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize, kv_heads: usize, head_dim: usize, max_context: usize, dtype: KvDtype) -> KvCache {
        let capacity = max_context.div_ceil(KEY_TILE) * KEY_TILE;
        let n = kv_heads * capacity * head_dim;
        let layers = (0..num_layers).map(|_| LayerKv::zeroed(dtype, n)).collect();
        KvCache { layers, kv_heads, head_dim, max_context, capacity, len: 0 }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where kv head `h`'s storage starts in a layer's K and V: V's row of position p is
    /// `p * head_dim` further on; K's tile of positions 16t.. is `16 t head_dim` further.
    pub fn head_offset(&self, h: usize) -> usize {
        h * self.capacity * self.head_dim
    }

    /// Write the K and V rows of the next positions (len..) of layer `li`, given in f32
    /// as [n, kv_heads * head_dim] (rounded to nearest even when stored as bf16). They
    /// are not cached until `commit`; a later write replaces them.
    pub fn write(&mut self, li: usize, new_k: &[f32], new_v: &[f32]) {
        let (hd, kv_dim, pos) = (self.head_dim, self.kv_heads * self.head_dim, self.len);
        let n = new_k.len() / kv_dim;
        assert!(new_k.len() == n * kv_dim && new_v.len() == n * kv_dim && pos + n <= self.max_context);
        let head_stride = self.head_offset(1);
        // Element d of head h at position p goes to head_offset(h) + at(p, d).
        let v_at = |p: usize, d: usize| p * hd + d;
        let k_at = |p: usize, d: usize| (p / KEY_TILE * hd + d) * KEY_TILE + p % KEY_TILE;
        fn scatter<T>(
            dst: &mut [T],
            src: &[f32],
            (kv_dim, hd, pos, hs): (usize, usize, usize, usize),
            at: impl Fn(usize, usize) -> usize,
            f: fn(f32) -> T,
        ) {
            for (t, row) in src.chunks_exact(kv_dim).enumerate() {
                for (h, head) in row.chunks_exact(hd).enumerate() {
                    for (d, &x) in head.iter().enumerate() {
                        dst[h * hs + at(pos + t, d)] = f(x);
                    }
                }
            }
        }
        let shape = (kv_dim, hd, pos, head_stride);
        match &mut self.layers[li] {
            LayerKv::F32 { k, v } => {
                scatter(k, new_k, shape, k_at, |x| x);
                scatter(v, new_v, shape, v_at, |x| x);
            }
            LayerKv::Bf16 { k, v } => {
                scatter(k, new_k, shape, k_at, crate::bf16::from_f32);
                scatter(v, new_v, shape, v_at, crate::bf16::from_f32);
            }
        }
    }

    /// Check that `n` more tokens fit.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.max_context {
            return Err(Error::ContextLength(format!(
                "{} cached + {} new tokens = {} exceeds the context of {} tokens",
                self.len,
                n,
                self.len + n,
                self.max_context
            )));
        }
        Ok(())
    }

    /// Record that `n` tokens were written to every layer.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Keep the first `n` tokens (n <= len).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.len {
            return Err(Error::Value(format!("cannot truncate to {n} tokens: the cache holds {}", self.len)));
        }
        self.len = n;
        Ok(())
    }
}
