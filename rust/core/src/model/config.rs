//! The model's hyper-parameters, from either config.json layout.
//!
//! Hugging Face keys (`num_local_experts`, `layer_types`, `rope_scaling`, ...) and OpenAI's
//! `original/` keys (`num_experts`, `experts_per_token`, `rope_scaling_factor`, ...) both
//! parse into one `Config`; `validate` checks that the numbers are consistent.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Which attention a layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// The last `sliding_window` keys, the query's own included.
    Sliding,
    /// Every key up to the query.
    Full,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub sliding_window: usize,
    pub layer_types: Vec<Attention>,
    pub rope_theta: f64,
    pub rope_factor: f64,
    pub rope_beta_fast: f64,
    pub rope_beta_slow: f64,
    pub rope_original_max_position: f64,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub swiglu_limit: f32,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// Ids of the real tokenizer, for the `original/` layout that does not name them.
pub const REAL_EOS: u32 = 200002;
pub const REAL_PAD: u32 = 199999;

/// gpt-oss's default attention pattern: even layers slide, starting at layer 0.
fn alternating(layers: usize) -> Vec<Attention> {
    (0..layers).map(|i| if i % 2 == 0 { Attention::Sliding } else { Attention::Full }).collect()
}

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    file: &'a str,
}

impl Fields<'_> {
    fn err(&self, key: &str, what: &str) -> Error {
        Error::Checkpoint(format!("{}: field {key:?}: {what}", self.file))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        match self.obj.get(key) {
            None => Err(self.err(key, "missing")),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.err(key, &format!("expected a non-negative integer, found {v}"))),
        }
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.obj.contains_key(key) {
            self.usize(key)
        } else {
            Ok(default)
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, &format!("expected a number, found {v}"))),
        }
    }
    fn ids(&self, key: &str) -> Result<Option<Vec<u32>>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                Ok(Some(vec![n.as_u64().ok_or_else(|| self.err(key, "expected a token id"))? as u32]))
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| self.err(key, "expected token ids")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.err(key, &format!("expected a token id or a list, found {v}"))),
        }
    }
}

impl Config {
    /// Read and validate `config.json` (either layout).
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Checkpoint(format!("{}: cannot read config: {e}", path.display())))?;
        Config::from_json(&text, &path.display().to_string())
    }

    pub fn from_json(text: &str, file: &str) -> Result<Config> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::Checkpoint(format!("{file}: invalid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| Error::Checkpoint(format!("{file}: expected a JSON object")))?;
        let f = Fields { obj, file };
        let original = !obj.contains_key("num_local_experts") && obj.contains_key("num_experts");
        let num_hidden_layers = f.usize("num_hidden_layers")?;
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let cfg = if original {
            let sliding_window = f.usize("sliding_window")?;
            let factor = f.f64_or("rope_scaling_factor", 32.0)?;
            let initial = f.usize_or("initial_context_length", 4096)?;
            Config {
                vocab_size: f.usize("vocab_size")?,
                hidden_size,
                intermediate_size: f.usize("intermediate_size")?,
                num_hidden_layers,
                num_attention_heads,
                num_key_value_heads: f.usize("num_key_value_heads")?,
                head_dim: f.usize_or("head_dim", 64)?,
                num_local_experts: f.usize("num_experts")?,
                num_experts_per_tok: f.usize("experts_per_token")?,
                sliding_window,
                // Even layers slide, starting at layer 0.
                layer_types: alternating(num_hidden_layers),
                rope_theta: f.f64_or("rope_theta", 150000.0)?,
                rope_factor: factor,
                rope_beta_fast: f.f64_or("rope_ntk_beta", 32.0)?,
                rope_beta_slow: f.f64_or("rope_ntk_alpha", 1.0)?,
                rope_original_max_position: initial as f64,
                max_position_embeddings: (initial as f64 * factor) as usize,
                rms_norm_eps: 1e-5,
                swiglu_limit: f.f64_or("swiglu_limit", 7.0)? as f32,
                eos_token_ids: vec![REAL_EOS],
                pad_token_id: Some(REAL_PAD),
            }
        } else {
            let layer_types = match obj.get("layer_types") {
                None | Some(Value::Null) => alternating(num_hidden_layers),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(Attention::Sliding),
                        Some("full_attention") => Ok(Attention::Full),
                        _ => Err(f.err("layer_types", &format!("unknown layer type {t}"))),
                    })
                    .collect::<Result<Vec<_>>>()?,
                Some(v) => return Err(f.err("layer_types", &format!("expected a list, found {v}"))),
            };
            let empty = Map::new();
            let rs = match obj.get("rope_scaling") {
                Some(Value::Object(m)) => m,
                None | Some(Value::Null) => &empty,
                Some(v) => return Err(f.err("rope_scaling", &format!("expected an object, found {v}"))),
            };
            let r = Fields { obj: rs, file };
            let rope_type = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|v| v.as_str()).unwrap_or("yarn");
            if rope_type != "yarn" {
                return Err(
                    f.err("rope_scaling", &format!("rope_type {rope_type:?} is not supported (expected \"yarn\")"))
                );
            }
            if rs.get("truncate").and_then(|v| v.as_bool()).unwrap_or(false) {
                return Err(f.err("rope_scaling", "truncate=true is not supported (gpt-oss uses false)"));
            }
            Config {
                vocab_size: f.usize("vocab_size")?,
                hidden_size,
                intermediate_size: f.usize("intermediate_size")?,
                num_hidden_layers,
                num_attention_heads,
                num_key_value_heads: f.usize("num_key_value_heads")?,
                head_dim: match obj.get("head_dim") {
                    Some(_) => f.usize("head_dim")?,
                    None => hidden_size / num_attention_heads.max(1),
                },
                num_local_experts: f.usize("num_local_experts")?,
                num_experts_per_tok: match obj.get("num_experts_per_tok") {
                    Some(_) => f.usize("num_experts_per_tok")?,
                    None => f.usize("experts_per_token")?,
                },
                sliding_window: f.usize("sliding_window")?,
                layer_types,
                rope_theta: f.f64_or("rope_theta", 150000.0)?,
                rope_factor: r.f64_or("factor", 32.0)?,
                rope_beta_fast: r.f64_or("beta_fast", 32.0)?,
                rope_beta_slow: r.f64_or("beta_slow", 1.0)?,
                rope_original_max_position: r.f64_or("original_max_position_embeddings", 4096.0)?,
                max_position_embeddings: f.usize_or("max_position_embeddings", 131072)?,
                rms_norm_eps: f.f64_or("rms_norm_eps", 1e-5)? as f32,
                swiglu_limit: f.f64_or("swiglu_limit", 7.0)? as f32,
                eos_token_ids: f.ids("eos_token_id")?.unwrap_or_default(),
                pad_token_id: f.ids("pad_token_id")?.and_then(|v| v.first().copied()),
            }
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Consistency checks; each failure names the field and both numbers.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Checkpoint(format!("{file}: {m}")));
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("sliding_window", self.sliding_window),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (k, v) in positive {
            if v == 0 {
                return bad(format!("{k} must be positive, found 0"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) must be divisible by num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.hidden_size % 32 != 0 {
            return bad(format!("hidden_size ({}) must be a multiple of 32 (MXFP4 blocks)", self.hidden_size));
        }
        if self.intermediate_size % 32 != 0 {
            return bad(format!(
                "intermediate_size ({}) must be a multiple of 32 (MXFP4 blocks)",
                self.intermediate_size
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim ({}) must be even (RoPE pairs halves)", self.head_dim));
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return bad(format!(
                "num_experts_per_tok ({}) must be <= num_local_experts ({})",
                self.num_experts_per_tok, self.num_local_experts
            ));
        }
        if self.layer_types.len() != self.num_hidden_layers {
            return bad(format!(
                "layer_types has {} entries, expected num_hidden_layers = {}",
                self.layer_types.len(),
                self.num_hidden_layers
            ));
        }
        if !(self.rms_norm_eps > 0.0)
            || !(self.swiglu_limit > 0.0)
            || !(self.rope_theta > 1.0)
            || !(self.rope_factor >= 1.0)
        {
            return bad("rms_norm_eps, swiglu_limit must be > 0, rope_theta > 1 and rope factor >= 1".into());
        }
        Ok(())
    }

    /// The config as Hugging Face-style JSON (what Python shows as `model.config`).
    pub fn to_hf_json(&self) -> Value {
        json!({
            "model_type": "gpt_oss",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "experts_per_token": self.num_experts_per_tok,
            "sliding_window": self.sliding_window,
            "layer_types": self.layer_types.iter().map(|t| match t {
                Attention::Sliding => "sliding_attention",
                Attention::Full => "full_attention",
            }).collect::<Vec<_>>(),
            "rope_theta": self.rope_theta,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": self.rope_factor,
                "beta_fast": self.rope_beta_fast,
                "beta_slow": self.rope_beta_slow,
                "original_max_position_embeddings": self.rope_original_max_position,
                "truncate": false,
            },
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "swiglu_limit": self.swiglu_limit,
            "eos_token_id": if self.eos_token_ids.len() == 1 { json!(self.eos_token_ids[0]) } else { json!(self.eos_token_ids) },
            "pad_token_id": self.pad_token_id,
            "tie_word_embeddings": false,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}
