//! A session: one conversation's KV cache plus the token ids it holds.

use super::kv_cache::KvCache;
use crate::error::{Error, Result};
use crate::model::forward::{Segment, Workspace};
use crate::model::Model;
use std::sync::Arc;

/// Tokens per forward pass when a session is fed a long input.
pub const PREFILL_CHUNK: usize = 512;

/// Which positions' logits `append` computes (lm_head runs only there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
    /// The index of the last position's largest logit (the first on ties), returned as
    /// one f32 (exact: vocabularies are far below 2^24), computed without every logit
    /// (`model::argmax`).
    Argmax,
}

pub struct Session {
    pub model: Arc<Model>,
    pub cache: KvCache,
    pub tokens: Vec<u32>,
    ws: Workspace,
}

impl Session {
    pub fn new(model: Arc<Model>) -> Session {
        let cache = model.new_cache();
        Session { model, cache, tokens: Vec::new(), ws: Workspace::default() }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Feed `ids` after what is cached; returns logits [rows, vocab] as asked.
    ///
    /// Long inputs go through in chunks of `PREFILL_CHUNK` tokens, which bounds the
    /// activations' memory (an 8k-token prompt in one pass would need ~2.5 GB of them for
    /// gpt-oss-20b) while keeping batches large enough to read each expert once per chunk.
    pub fn append(&mut self, ids: &[u32], logits: Logits) -> Result<Vec<f32>> {
        // Check everything before the first chunk changes the cache.
        self.cache.check_room(ids.len())?;
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Value(format!("token id {bad} is out of range for the vocabulary of {vocab}")));
        }
        let mut out = Vec::new();
        let chunks = ids.len().div_ceil(PREFILL_CHUNK).max(1);
        for (i, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
            let want = match logits {
                Logits::Last | Logits::Argmax if i + 1 < chunks => Logits::None,
                other => other,
            };
            let part = self.model.forward(&mut self.cache, &mut self.ws, chunk, want, None)?;
            self.tokens.extend_from_slice(chunk);
            out.extend_from_slice(&part);
        }
        Ok(out)
    }

    /// Feed `ids` (at least one) and return the id of the last position's largest logit,
    /// the first one on ties: what `append(ids, Logits::Last)` and an argmax give.
    pub fn append_argmax(&mut self, ids: &[u32]) -> Result<u32> {
        if ids.is_empty() {
            return Err(Error::Value("append_argmax needs at least one token id".into()));
        }
        let out = self.append(ids, Logits::Argmax)?;
        Ok(out[0] as u32)
    }

    /// Like `append` but records the residual stream after the embedding and after every
    /// layer into `hidden` ([layers+1, len(ids), hidden]).
    pub fn append_with_hidden(&mut self, ids: &[u32], logits: Logits, hidden: &mut Vec<f32>) -> Result<Vec<f32>> {
        let out = self.model.forward(&mut self.cache, &mut self.ws, ids, logits, Some(hidden))?;
        self.tokens.extend_from_slice(ids);
        Ok(out)
    }

    /// Advance several sessions of the same model by one token each, in one pass that
    /// reads every weight once for all of them. Returns the last-token logits of each,
    /// [sessions, vocab] in order.
    pub fn step_batch(sessions: &mut [&mut Session], ids: &[u32]) -> Result<Vec<f32>> {
        if sessions.len() != ids.len() {
            return Err(Error::Value(format!("{} sessions but {} token ids", sessions.len(), ids.len())));
        }
        let Some(first) = sessions.first() else {
            return Ok(Vec::new());
        };
        let model = first.model.clone();
        if sessions.iter().any(|s| !Arc::ptr_eq(&s.model, &model)) {
            return Err(Error::Value("all sessions of a batch must belong to the same model".into()));
        }
        let mut ws = std::mem::take(&mut sessions[0].ws);
        let result = {
            let mut segs: Vec<Segment> = sessions
                .iter_mut()
                .zip(ids.chunks(1))
                .map(|(s, id)| Segment { cache: &mut s.cache, ids: id, want: Logits::Last })
                .collect();
            model.forward_batch(&mut segs, &mut ws, None)
        };
        sessions[0].ws = ws;
        let out = result?;
        for (s, &id) in sessions.iter_mut().zip(ids) {
            s.tokens.push(id);
        }
        Ok(out.concat())
    }

    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.len() {
            return Err(Error::Value(format!("cannot truncate to {n} tokens: the session holds {}", self.len())));
        }
        self.cache.truncate(n)?;
        self.tokens.truncate(n);
        Ok(())
    }

    pub fn reset(&mut self) {
        self.truncate(0).expect("truncate(0) always fits");
    }
}
