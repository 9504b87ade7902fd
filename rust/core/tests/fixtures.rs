//! The forward pass against the golden fixtures (../shared/fixtures, outputs of
//! Hugging Face transformers, cross-checked against OpenAI's torch reference).

use gptoss_core::cpu::{self, Isa};
use gptoss_core::kernels::Precision;
use gptoss_core::model::checkpoint::{Checkpoint, Dtype};
use gptoss_core::model::forward::route;
use gptoss_core::model::{LoadOptions, Model};
use gptoss_core::runtime::{Logits, Session};
use std::path::PathBuf;
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(name)
}

struct Golden(Checkpoint);

impl Golden {
    fn open(name: &str) -> Golden {
        Golden(Checkpoint::open(&[fixture(name).join("golden.safetensors")]).unwrap())
    }
    fn f32(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let t = self.0.get(key).unwrap();
        assert_eq!(t.dtype, Dtype::F32);
        (self.0.to_f32(t), t.shape.clone())
    }
    fn i64(&self, key: &str) -> (Vec<i64>, Vec<usize>) {
        let t = self.0.get(key).unwrap();
        assert_eq!(t.dtype, Dtype::I64);
        let v = self.0.bytes(t).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        (v, t.shape.clone())
    }
}

fn load(name: &str, isa: Isa) -> Arc<Model> {
    Arc::new(
        Model::load(&fixture(name), LoadOptions { max_context: Some(4096), isa, precision: Precision::F32, q8: false })
            .unwrap(),
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
}

fn paths() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    v.push(cpu::best());
    v.dedup();
    v
}

/// `read_at` (the embedding's row reads, which must not go through the map) returns the
/// same bytes as the map, at the first, a middle and the last row.
#[test]
fn read_at_matches_the_map() {
    let dir = fixture("tiny-a");
    let ck = Checkpoint::open(&Checkpoint::files_in(&dir).unwrap().0).unwrap();
    let t = ck.get("model.embed_tokens.weight").or_else(|| ck.get("embedding.weight")).unwrap().clone();
    let (rows, row_bytes) = (t.shape[0], t.shape[1] * 2);
    let whole = ck.bytes(&t);
    for r in [0, rows / 2, rows - 1] {
        let mut buf = vec![0u8; row_bytes];
        ck.read_at(&t, r * row_bytes, &mut buf).unwrap();
        assert_eq!(buf, &whole[r * row_bytes..(r + 1) * row_bytes], "row {r}");
    }
}

#[test]
fn rope_inv_freq_matches_reference_table() {
    for name in ["tiny-a", "tiny-b"] {
        let m = load(name, Isa::Scalar);
        let g = Golden::open(name);
        let (want, _) = g.f32("rope_inv_freq");
        assert_eq!(m.rope.inv_freq.len(), want.len());
        // Within 1 ulp of the references' f32 table (torch's f32 pow is not correctly rounded).
        for (i, (a, b)) in m.rope.inv_freq.iter().zip(&want).enumerate() {
            let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
            assert!(ulps <= 1, "{name} inv_freq[{i}]: {a} vs {b} ({ulps} ulps)");
        }
        let (scale, _) = g.f32("rope_attention_scaling");
        assert_eq!(m.rope.attention_scaling, scale[0]);
    }
}

#[test]
fn logits_hidden_states_and_routing_match_golden() {
    for name in ["tiny-a", "tiny-b"] {
        let g = Golden::open(name);
        let (ids, ishape) = g.i64("input_ids");
        let (pos, _) = g.i64("logits_positions");
        let (gold, lshape) = g.f32("logits");
        let (n, t_len) = (ishape[0], ishape[1]);
        let vocab = lshape[2];
        for isa in paths() {
            let m = load(name, isa);
            for b in 0..n {
                let prompt: Vec<u32> = ids[b * t_len..(b + 1) * t_len].iter().map(|&v| v as u32).collect();
                let mut s = Session::new(m.clone());
                let logits = s.append(&prompt, Logits::All).unwrap();
                for (i, &p) in pos.iter().enumerate() {
                    let got = &logits[p as usize * vocab..(p as usize + 1) * vocab];
                    let want = &gold[(b * pos.len() + i) * vocab..(b * pos.len() + i + 1) * vocab];
                    let d = max_abs_diff(got, want);
                    assert!(d <= 1e-4, "{name} {isa:?} prompt {b} position {p}: max |dlogit| {d}");
                    assert_eq!(argmax(got), argmax(want), "{name} prompt {b} position {p}: argmax");
                }
            }
            // Hidden states of prompt 0 after the embedding and each layer.
            let (hs_gold, hshape) = g.f32("hidden_states");
            let prompt0: Vec<u32> = ids[..t_len].iter().map(|&v| v as u32).collect();
            let mut s = Session::new(m.clone());
            let mut hs = Vec::new();
            s.append_with_hidden(&prompt0, Logits::None, &mut hs).unwrap();
            assert_eq!(hs.len(), hshape.iter().product::<usize>());
            let d = max_abs_diff(&hs, &hs_gold);
            assert!(d <= 1e-4, "{name} {isa:?} hidden states: {d}");
            // Layer-0 router logits and top-k.
            let (rl_gold, rshape) = g.f32("router_logits_layer0");
            let (top_gold, _) = g.i64("router_topk_indices_layer0");
            let (topw_gold, _) = g.f32("router_topk_weights_layer0");
            let rl = m.router_logits(&prompt0).unwrap();
            let ne = rshape[1];
            assert!(max_abs_diff(&rl[..t_len * ne], &rl_gold) <= 1e-4);
            let k = m.config.num_experts_per_tok;
            let (mut order, mut top) = (Vec::new(), Vec::new());
            for t in 0..t_len {
                route(&rl[t * ne..(t + 1) * ne], k, &mut order, &mut top);
                let idx: Vec<i64> = top.iter().map(|p| p.0 as i64).collect();
                assert_eq!(idx, top_gold[t * k..(t + 1) * k], "{name} token {t} router top-k");
                let wts: Vec<f32> = top.iter().map(|p| p.1).collect();
                assert!(max_abs_diff(&wts, &topw_gold[t * k..(t + 1) * k]) <= 1e-5);
            }
        }
    }
}

#[test]
fn greedy_decode_through_the_session_reproduces_golden_tokens() {
    for name in ["tiny-a", "tiny-b"] {
        let g = Golden::open(name);
        let (prompt, _) = g.i64("greedy_prompt");
        let (tokens, _) = g.i64("greedy_tokens");
        let (glogits, gshape) = g.f32("greedy_logits");
        let vocab = gshape[1];
        for isa in paths() {
            let m = load(name, isa);
            let mut s = Session::new(m.clone());
            let prompt: Vec<u32> = prompt.iter().map(|&v| v as u32).collect();
            let mut logits = s.append(&prompt, Logits::Last).unwrap();
            for (j, &want) in tokens.iter().enumerate() {
                let d = max_abs_diff(&logits, &glogits[j * vocab..(j + 1) * vocab]);
                assert!(d <= 1e-4, "{name} {isa:?} step {j}: max |dlogit| {d}");
                let next = argmax(&logits);
                assert_eq!(next as i64, want, "{name} {isa:?} greedy step {j}");
                logits = s.append(&[next as u32], Logits::Last).unwrap();
            }
        }
    }
}

/// `append_argmax` (lm_head screened through its Q8 copy, the kept rows exact) gives the
/// golden greedy tokens, and at every step the argmax of the full logits of a session
/// fed the same tokens.
#[test]
fn append_argmax_reproduces_golden_greedy_tokens() {
    for name in ["tiny-a", "tiny-b"] {
        let g = Golden::open(name);
        let (prompt, _) = g.i64("greedy_prompt");
        let (tokens, _) = g.i64("greedy_tokens");
        for isa in paths() {
            let m = load(name, isa);
            let (mut greedy, mut full) = (Session::new(m.clone()), Session::new(m.clone()));
            let mut ids: Vec<u32> = prompt.iter().map(|&v| v as u32).collect();
            for (j, &want) in tokens.iter().enumerate() {
                let next = greedy.append_argmax(&ids).unwrap();
                let logits = full.append(&ids, Logits::Last).unwrap();
                assert_eq!(next as usize, argmax(&logits), "{name} {isa:?} step {j}: against the full logits");
                assert_eq!(next as i64, want, "{name} {isa:?} greedy step {j}");
                ids = vec![next];
            }
            assert!(m.screen.get().is_some_and(|s| s.is_some()), "{name}: the screen was not used");
        }
    }
}
