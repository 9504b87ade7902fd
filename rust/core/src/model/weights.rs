//! Typed views of a checkpoint's tensors, for both name layouts.
//!
//! Hugging Face names (`model.layers.N.self_attn.q_proj.weight`, ...) and OpenAI's
//! `original/` names (`block.N.attn.qkv.weight` with q, k, v fused, ...) map onto the
//! same structure. Matrices stay in the memory map; only the small 1-D tensors
//! (norms, biases, sinks) are widened to f32 at load.

use super::checkpoint::{Checkpoint, Dtype, TensorInfo};
use super::config::{Attention, Config};
use crate::error::Result;
use crate::kernels::Weight;
use crate::mxfp4::{BLOCK, BLOCK_BYTES};
use crate::q8::Q8Matrix;

/// Rows `r0..r1` of a bf16 matrix tensor, or their Q8 copy (`precision="q8"`).
pub struct MatRef {
    pub t: TensorInfo,
    pub r0: usize,
    pub r1: usize,
    pub q8: Option<Q8Matrix>,
}

impl MatRef {
    pub fn weight<'a>(&'a self, ck: &'a Checkpoint) -> Weight<'a> {
        match &self.q8 {
            Some(q) => Weight::q8(q),
            None => self.bf16(ck),
        }
    }

    fn bf16<'a>(&self, ck: &'a Checkpoint) -> Weight<'a> {
        let cols = self.t.shape[1];
        Weight::bf16(ck.bytes(&self.t), self.t.shape[0], cols).slice_rows(self.r0, self.r1)
    }

    /// Quantize these rows to Q8 (they are then read from the copy). A matrix whose rows
    /// are not whole 32-value blocks stays bf16.
    fn quantize_q8(&mut self, ck: &Checkpoint) {
        if let Weight::Bf16 { data, rows, cols } = self.bf16(ck) {
            if cols % BLOCK == 0 {
                self.q8 = Some(Q8Matrix::from_bf16(data, rows, cols));
            }
        }
    }
}

/// The MXFP4 matrices of all experts of one projection: [E, rows, cols].
#[derive(Clone, Debug)]
pub struct Experts {
    pub blocks: TensorInfo,
    pub scales: TensorInfo,
    /// [E * rows]
    pub bias: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Experts {
    /// Expert `e`'s matrix, zero-copy.
    pub fn weight<'a>(&self, ck: &'a Checkpoint, e: usize) -> Weight<'a> {
        let nb = self.cols / BLOCK;
        let per_b = self.rows * nb * BLOCK_BYTES;
        let per_s = self.rows * nb;
        Weight::mxfp4(
            &ck.bytes(&self.blocks)[e * per_b..(e + 1) * per_b],
            &ck.bytes(&self.scales)[e * per_s..(e + 1) * per_s],
            self.rows,
            self.cols,
        )
    }

    pub fn bias(&self, e: usize) -> &[f32] {
        &self.bias[e * self.rows..(e + 1) * self.rows]
    }
}

pub struct Layer {
    pub attention: Attention,
    pub attn_norm: Vec<f32>,
    pub q: MatRef,
    pub k: MatRef,
    pub v: MatRef,
    pub q_bias: Vec<f32>,
    pub k_bias: Vec<f32>,
    pub v_bias: Vec<f32>,
    pub o: MatRef,
    pub o_bias: Vec<f32>,
    pub sinks: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    pub router: MatRef,
    pub router_bias: Vec<f32>,
    /// gate/up, interleaved rows: [E, 2I, H]
    pub mlp1: Experts,
    /// down: [E, H, I]
    pub mlp2: Experts,
}

pub struct Weights {
    pub embed: TensorInfo,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    pub lm_head: MatRef,
}

/// Tensor names of one layout.
struct Names {
    original: bool,
}

impl Names {
    fn embed(&self) -> String {
        if self.original {
            "embedding.weight".into()
        } else {
            "model.embed_tokens.weight".into()
        }
    }
    fn norm(&self) -> String {
        if self.original {
            "norm.scale".into()
        } else {
            "model.norm.weight".into()
        }
    }
    fn lm_head(&self) -> String {
        if self.original {
            "unembedding.weight".into()
        } else {
            "lm_head.weight".into()
        }
    }
    fn layer(&self, i: usize, hf: &str, orig: &str) -> String {
        if self.original {
            format!("block.{i}.{orig}")
        } else {
            format!("model.layers.{i}.{hf}")
        }
    }
}

fn matrix(ck: &Checkpoint, name: &str, rows: usize, cols: usize) -> Result<MatRef> {
    let t = ck.expect(name, &[Dtype::Bf16], &[rows, cols])?.clone();
    Ok(MatRef { t, r0: 0, r1: rows, q8: None })
}

fn experts(
    ck: &Checkpoint,
    blocks: &str,
    scales: &str,
    bias: &str,
    e: usize,
    rows: usize,
    cols: usize,
) -> Result<Experts> {
    let nb = cols / BLOCK;
    let b = ck.expect(blocks, &[Dtype::U8], &[e, rows, nb, BLOCK_BYTES])?.clone();
    let s = ck.expect(scales, &[Dtype::U8], &[e, rows, nb])?.clone();
    let bt = ck.expect(bias, &[Dtype::Bf16, Dtype::F32], &[e, rows])?;
    Ok(Experts { blocks: b, scales: s, bias: ck.to_f32(bt), rows, cols })
}

impl Weights {
    /// `precision="q8"`: quantize the attention and lm_head matrices to Q8 copies and
    /// unmap their bf16 pages (the router and the embedding stay bf16: the router is
    /// tiny, and the embedding is read one row per token).
    pub fn quantize_q8(&mut self, ck: &Checkpoint) {
        let mut mats: Vec<&mut MatRef> = Vec::new();
        for l in &mut self.layers {
            mats.extend([&mut l.q, &mut l.k, &mut l.v, &mut l.o]);
        }
        mats.push(&mut self.lm_head);
        for m in &mut mats {
            m.quantize_q8(ck);
        }
        // After every part of a fused tensor (original/'s qkv) has been quantized.
        for m in mats.iter().filter(|m| m.q8.is_some()) {
            ck.release(&m.t);
        }
    }

    /// Find, check and view every tensor the forward pass needs.
    pub fn load(ck: &Checkpoint, c: &Config) -> Result<Weights> {
        let n =
            Names { original: ck.get("embedding.weight").is_some() && ck.get("model.embed_tokens.weight").is_none() };
        let (h, q_dim, kv_dim) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let (e, inter) = (c.num_local_experts, c.intermediate_size);
        let embed = ck.expect(&n.embed(), &[Dtype::Bf16], &[c.vocab_size, h])?.clone();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = |hf: &str, orig: &str| n.layer(i, hf, orig);
            let (q, k, v, q_bias, k_bias, v_bias) = if n.original {
                let fused = matrix(ck, &l("", "attn.qkv.weight"), q_dim + 2 * kv_dim, h)?;
                let bias = ck.vector_f32(&l("", "attn.qkv.bias"), q_dim + 2 * kv_dim)?;
                let part = |r0: usize, r1: usize| MatRef { t: fused.t.clone(), r0, r1, q8: None };
                (
                    part(0, q_dim),
                    part(q_dim, q_dim + kv_dim),
                    part(q_dim + kv_dim, q_dim + 2 * kv_dim),
                    bias[..q_dim].to_vec(),
                    bias[q_dim..q_dim + kv_dim].to_vec(),
                    bias[q_dim + kv_dim..].to_vec(),
                )
            } else {
                (
                    matrix(ck, &l("self_attn.q_proj.weight", ""), q_dim, h)?,
                    matrix(ck, &l("self_attn.k_proj.weight", ""), kv_dim, h)?,
                    matrix(ck, &l("self_attn.v_proj.weight", ""), kv_dim, h)?,
                    ck.vector_f32(&l("self_attn.q_proj.bias", ""), q_dim)?,
                    ck.vector_f32(&l("self_attn.k_proj.bias", ""), kv_dim)?,
                    ck.vector_f32(&l("self_attn.v_proj.bias", ""), kv_dim)?,
                )
            };
            layers.push(Layer {
                attention: c.layer_types[i],
                attn_norm: ck.vector_f32(&l("input_layernorm.weight", "attn.norm.scale"), h)?,
                q,
                k,
                v,
                q_bias,
                k_bias,
                v_bias,
                o: matrix(ck, &l("self_attn.o_proj.weight", "attn.out.weight"), h, q_dim)?,
                o_bias: ck.vector_f32(&l("self_attn.o_proj.bias", "attn.out.bias"), h)?,
                sinks: ck.vector_f32(&l("self_attn.sinks", "attn.sinks"), c.num_attention_heads)?,
                mlp_norm: ck.vector_f32(&l("post_attention_layernorm.weight", "mlp.norm.scale"), h)?,
                router: matrix(ck, &l("mlp.router.weight", "mlp.gate.weight"), e, h)?,
                router_bias: ck.vector_f32(&l("mlp.router.bias", "mlp.gate.bias"), e)?,
                mlp1: experts(
                    ck,
                    &l("mlp.experts.gate_up_proj_blocks", "mlp.mlp1_weight.blocks"),
                    &l("mlp.experts.gate_up_proj_scales", "mlp.mlp1_weight.scales"),
                    &l("mlp.experts.gate_up_proj_bias", "mlp.mlp1_bias"),
                    e,
                    2 * inter,
                    h,
                )?,
                mlp2: experts(
                    ck,
                    &l("mlp.experts.down_proj_blocks", "mlp.mlp2_weight.blocks"),
                    &l("mlp.experts.down_proj_scales", "mlp.mlp2_weight.scales"),
                    &l("mlp.experts.down_proj_bias", "mlp.mlp2_bias"),
                    e,
                    h,
                    inter,
                )?,
            });
        }
        Ok(Weights {
            embed,
            layers,
            norm: ck.vector_f32(&n.norm(), h)?,
            lm_head: matrix(ck, &n.lm_head(), c.vocab_size, h)?,
        })
    }
}
