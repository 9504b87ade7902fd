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
//! Capacity is reserved up front for `max_context` tokens: the allocation is virtual
//! and pages become resident only as positions are written.
//!
//! Rows are f32, or bf16 in the q8 mode (`Model::kv_dtype`): half the memory (48 instead
//! of 96 KiB per token for gpt-oss-20b) and half the bytes attention reads at depth.

use crate::error::{Error, Result};

/// How K and V rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// bf16 bits, rounded to nearest even.
    Bf16,
}

/// One layer's K and V rows, each [len, kv_dim], in one element type.
pub enum LayerKv {
    F32 { k: Vec<f32>, v: Vec<f32> },
    Bf16 { k: Vec<u16>, v: Vec<u16> },
}

/// A read-only view of a `LayerKv`.
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    Bf16 { k: &'a [u16], v: &'a [u16] },
}

impl LayerKv {
    fn with_capacity(dtype: KvDtype, n: usize) -> LayerKv {
        match dtype {
            KvDtype::F32 => LayerKv::F32 { k: Vec::with_capacity(n), v: Vec::with_capacity(n) },
            KvDtype::Bf16 => LayerKv::Bf16 { k: Vec::with_capacity(n), v: Vec::with_capacity(n) },
        }
    }

    /// Values held in K (and in V).
    pub fn len(&self) -> usize {
        match self {
            LayerKv::F32 { k, .. } => k.len(),
            LayerKv::Bf16 { k, .. } => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn truncate(&mut self, n: usize) {
        match self {
            LayerKv::F32 { k, v } => {
                k.truncate(n);
                v.truncate(n);
            }
            LayerKv::Bf16 { k, v } => {
                k.truncate(n);
                v.truncate(n);
            }
        }
    }

    /// Append K and V rows given in f32 (rounded to nearest even when stored as bf16).
    pub fn extend_from_f32(&mut self, new_k: &[f32], new_v: &[f32]) {
        match self {
            LayerKv::F32 { k, v } => {
                k.extend_from_slice(new_k);
                v.extend_from_slice(new_v);
            }
            LayerKv::Bf16 { k, v } => {
                k.extend(new_k.iter().map(|&f| crate::bf16::from_f32(f)));
                v.extend(new_v.iter().map(|&f| crate::bf16::from_f32(f)));
            }
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
    pub kv_dim: usize,
    pub max_context: usize,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize, kv_dim: usize, max_context: usize, dtype: KvDtype) -> KvCache {
        let layers = (0..num_layers).map(|_| LayerKv::with_capacity(dtype, max_context * kv_dim)).collect();
        KvCache { layers, kv_dim, max_context, len: 0 }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    /// Record that `n` tokens were appended to every layer.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
        for l in &self.layers {
            debug_assert_eq!(l.len(), self.len * self.kv_dim);
        }
    }

    /// Keep the first `n` tokens (n <= len).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.len {
            return Err(Error::Value(format!("cannot truncate to {n} tokens: the cache holds {}", self.len)));
        }
        for l in &mut self.layers {
            l.truncate(n * self.kv_dim);
        }
        self.len = n;
        Ok(())
    }

    /// Roll back a partially appended step (layers hold more than `len`).
    pub(crate) fn rollback(&mut self) {
        let keep = self.len * self.kv_dim;
        for l in &mut self.layers {
            l.truncate(keep);
        }
    }
}
