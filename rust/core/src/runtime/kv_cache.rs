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

/// One layer's K or V rows, [len, kv_dim].
pub enum KvRows {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// A read-only view of `KvRows`.
#[derive(Clone, Copy)]
pub enum KvView<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl KvView<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvView::F32(v) => v.len(),
            KvView::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KvRows {
    fn with_capacity(dtype: KvDtype, n: usize) -> KvRows {
        match dtype {
            KvDtype::F32 => KvRows::F32(Vec::with_capacity(n)),
            KvDtype::Bf16 => KvRows::Bf16(Vec::with_capacity(n)),
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn truncate(&mut self, n: usize) {
        match self {
            KvRows::F32(v) => v.truncate(n),
            KvRows::Bf16(v) => v.truncate(n),
        }
    }

    /// Append rows given in f32 (rounded when stored as bf16).
    pub fn extend_from_f32(&mut self, x: &[f32]) {
        match self {
            KvRows::F32(v) => v.extend_from_slice(x),
            KvRows::Bf16(v) => v.extend(x.iter().map(|&f| crate::bf16::from_f32(f))),
        }
    }

    pub fn view(&self) -> KvView<'_> {
        match self {
            KvRows::F32(v) => KvView::F32(v),
            KvRows::Bf16(v) => KvView::Bf16(v),
        }
    }
}

pub struct LayerKv {
    /// [len, kv_dim]
    pub k: KvRows,
    /// [len, kv_dim]
    pub v: KvRows,
}

pub struct KvCache {
    pub layers: Vec<LayerKv>,
    pub kv_dim: usize,
    pub max_context: usize,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize, kv_dim: usize, max_context: usize, dtype: KvDtype) -> KvCache {
        let layers = (0..num_layers)
            .map(|_| LayerKv {
                k: KvRows::with_capacity(dtype, max_context * kv_dim),
                v: KvRows::with_capacity(dtype, max_context * kv_dim),
            })
            .collect();
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
            debug_assert_eq!(l.k.len(), self.len * self.kv_dim);
        }
    }

    /// Keep the first `n` tokens (n <= len).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.len {
            return Err(Error::Value(format!("cannot truncate to {n} tokens: the cache holds {}", self.len)));
        }
        for l in &mut self.layers {
            l.k.truncate(n * self.kv_dim);
            l.v.truncate(n * self.kv_dim);
        }
        self.len = n;
        Ok(())
    }

    /// Roll back a partially appended step (layers hold more than `len`).
    pub(crate) fn rollback(&mut self) {
        let keep = self.len * self.kv_dim;
        for l in &mut self.layers {
            l.k.truncate(keep);
            l.v.truncate(keep);
        }
    }
}
