//! The forward pass, top to bottom, as in the reference model.
//!
//! For T new tokens at positions p0..p0+T (p0 = tokens already cached):
//!
//! ```text
//! x = embed[ids]                                         // [T, H], bf16 -> f32
//! for layer in layers:
//!     h = rmsnorm(x) * attn_norm
//!     q, k, v = h @ Wq^T + bq, h @ Wk^T + bk, h @ Wv^T + bv   // [T, nH*hd], [T, nKV*hd] x2
//!     q, k = rope(q, pos), rope(k, pos); cache += k, v
//!     a = softmax([q.k / sqrt(hd), sink]) minus the sink column, @ V   // sliding or full
//!     x += a @ Wo^T + bo
//!     h = rmsnorm(x) * mlp_norm
//!     r = h @ Wr^T + br; top-k experts per token, softmax over those k
//!     for each expert e (its tokens batched):  x[t] += w * (swiglu(h[t] @ W1[e]^T + b1[e]) @ W2[e]^T + b2[e])
//! logits = rmsnorm(x[wanted]) * norm @ lm_head^T          // only the rows asked for
//! ```
//!
//! Prefill groups the tokens by expert so each expert's weights are read once per call.
//! All activations, norms, softmaxes and accumulations are f32.

use super::attention;
use super::config::Attention;
use super::rope::Rope;
use super::weights::Layer;
use super::Model;
use crate::error::{Error, Result};
use crate::kernels::{self, with_thread_buffer, Job, OutPtr, Weight};
use crate::runtime::kv_cache::KvCache;
use crate::runtime::Logits;

/// One sequence of a batch: new tokens for one cache, and which logits to return.
pub struct Segment<'a> {
    pub cache: &'a mut KvCache,
    pub ids: &'a [u32],
    pub want: Logits,
}

/// SwiGLU's sigmoid slope (gpt-oss uses a fixed 1.702).
const SWIGLU_ALPHA: f32 = 1.702;

/// Buffers reused from call to call (grown once, never shrunk).
#[derive(Default)]
pub struct Workspace {
    /// One embedding row's bf16 bytes.
    embed_row: Vec<u8>,
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    router: Vec<f32>,
    xin: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    y: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    scratch: kernels::Scratch,
    routes: Vec<(usize, usize, f32)>,
    /// Routing scratch: experts by logit, one token's top-k, (expert, first route, end).
    route_order: Vec<usize>,
    route_top: Vec<(usize, f32)>,
    expert_groups: Vec<(usize, usize, usize)>,
    /// Greedy decoding: logits (or their screened approximation), the screen's scratch,
    /// the rows it keeps, their bf16 bytes and exact logits.
    logits: Vec<f32>,
    screen_coef: Vec<f32>,
    screen_bound: Vec<f32>,
    kept: Vec<u32>,
    kept_rows: Vec<u8>,
    kept_logits: Vec<f32>,
    /// When set, every layer's router logits [T, E] are appended here.
    router_log: Option<Vec<f32>>,
}

/// `v[..n]`, growing `v` if needed.
fn buf(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// The index of the largest value, the first one on ties (numpy's argmax; NaN wins).
fn first_argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if v[best].is_nan() {
            break;
        }
        if x > v[best] || x.is_nan() {
            best = i;
        }
    }
    best
}

/// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, rows of length w.len().
fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n as f64;
        let inv = 1.0 / ((ms as f32) + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    }
}

/// Interleaved gate/up [m, 2I] -> clamped SwiGLU with the +1 on up [m, I].
fn swiglu(gu: &[f32], limit: f32, out: &mut [f32]) {
    for (o, pair) in out.iter_mut().zip(gu.chunks_exact(2)) {
        let gate = pair[0].min(limit);
        let up = pair[1].clamp(-limit, limit);
        let glu = gate * (1.0 / (1.0 + (-SWIGLU_ALPHA * gate).exp()));
        *o = (up + 1.0) * glu;
    }
}

/// The top-k experts of one token's router logits and their mixing weights (softmax
/// over the k chosen logits). Descending logit; ties keep the lower index first.
/// `order` is scratch of any content.
pub fn route(logits: &[f32], k: usize, order: &mut Vec<usize>, out: &mut Vec<(usize, f32)>) {
    order.clear();
    order.extend(0..logits.len());
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let max = logits[order[0]];
    out.clear();
    out.extend(order[..k].iter().map(|&e| (e, (logits[e] - max).exp())));
    let sum: f32 = out.iter().map(|p| p.1).sum();
    for p in out.iter_mut() {
        p.1 /= sum;
    }
}

thread_local! {
    /// Attention scores of one task (grown once per thread, then reused).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One matmul job per expert group: rows first..end of the input (`x(first, end)`,
/// [end - first, n_in]) through the expert's weight into the same rows of `out` [R, n_out].
fn expert_jobs<'a, 'w>(
    groups: &[(usize, usize, usize)],
    x: impl Fn(usize, usize) -> &'a [f32],
    out: &'a mut [f32],
    n_out: usize,
    weight: impl Fn(usize) -> (Weight<'w>, &'a [f32]),
) -> Vec<Job<'a, 'w>> {
    let mut jobs = Vec::with_capacity(groups.len());
    let mut rest = out;
    for &(e, first, end) in groups {
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut((end - first) * n_out);
        rest = tail;
        let (w, bias) = weight(e);
        jobs.push(Job { x: x(first, end), m: end - first, w, bias: Some(bias), out: mine });
    }
    jobs
}

impl Model {
    fn matmul(
        &self,
        x: &[f32],
        m: usize,
        w: &Weight,
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut kernels::Scratch,
    ) {
        kernels::matmul(self.isa, self.precision, x, m, w, bias, out, scratch);
    }

    /// Run `ids` through the model after what `cache` holds, appending their K/V.
    /// Returns logits [rows, vocab] for the rows `want` selects. With `hidden`, records
    /// the residual stream after the embedding and after each layer: [layers+1, T, H].
    pub fn forward(
        &self,
        cache: &mut KvCache,
        ws: &mut Workspace,
        ids: &[u32],
        want: Logits,
        hidden: Option<&mut Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let mut segs = [Segment { cache, ids, want }];
        Ok(self.forward_batch(&mut segs, ws, hidden)?.pop().unwrap_or_default())
    }

    /// Several sequences in one pass: every segment's tokens go through the matmuls
    /// together (each weight is read once for all of them), and attend to their own
    /// cache. Returns each segment's logits as its `want` asks. With `hidden` (rows of
    /// all segments, in order), the residual stream as in `forward`.
    pub fn forward_batch(
        &self,
        segs: &mut [Segment<'_>],
        ws: &mut Workspace,
        hidden: Option<&mut Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        // The pool's threads wait for this pass's parallel jobs spinning, not asleep.
        crate::par::with_team(|| self.forward_batch_in_team(segs, ws, hidden))
    }

    fn forward_batch_in_team(
        &self,
        segs: &mut [Segment<'_>],
        ws: &mut Workspace,
        mut hidden: Option<&mut Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let hd = c.hidden_size;
        for seg in segs.iter_mut() {
            if let Some(&bad) = seg.ids.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(Error::Value(format!(
                    "token id {bad} is out of range for the vocabulary of {}",
                    c.vocab_size
                )));
            }
            seg.cache.check_room(seg.ids.len())?;
        }
        // Token t of the batch: its segment and its position in that segment's sequence.
        let mut tok_seg = Vec::new();
        let mut tok_pos = Vec::new();
        for (s, seg) in segs.iter().enumerate() {
            for j in 0..seg.ids.len() {
                tok_seg.push(s);
                tok_pos.push(seg.cache.len() + j);
            }
        }
        let t_n = tok_seg.len();
        if t_n == 0 {
            return Ok(segs.iter().map(|_| Vec::new()).collect());
        }
        let ck = &self.ckpt;
        let w = &self.weights;

        // x = embed[ids]: [T, H], each bf16 row read from the file, not the map (see
        // `Checkpoint::read_at`: keeps the 1.16 GB table out of the RSS)
        let x = buf(&mut ws.x, t_n * hd);
        let mut row = std::mem::take(&mut ws.embed_row);
        row.resize(hd * 2, 0);
        for (t, &id) in segs.iter().flat_map(|s| s.ids.iter()).enumerate() {
            ck.read_at(&w.embed, id as usize * hd * 2, &mut row)?;
            crate::bf16::widen(&row, &mut x[t * hd..(t + 1) * hd]);
        }
        ws.embed_row = row;
        if let Some(hs) = hidden.as_deref_mut() {
            hs.clear();
            hs.extend_from_slice(x);
        }

        // cos/sin of every new position: [T, head_dim/2]
        let half = c.head_dim / 2;
        let cos = buf(&mut ws.cos, t_n * half);
        let sin = buf(&mut ws.sin, t_n * half);
        for t in 0..t_n {
            self.rope.cos_sin(tok_pos[t], &mut cos[t * half..(t + 1) * half], &mut sin[t * half..(t + 1) * half]);
        }

        for (li, layer) in w.layers.iter().enumerate() {
            self.attention_block(layer, li, segs, &tok_seg, &tok_pos, ws);
            self.moe_block(layer, t_n, ws);
            if let Some(hs) = hidden.as_deref_mut() {
                hs.extend_from_slice(&ws.x[..t_n * hd]);
            }
        }
        for seg in segs.iter_mut() {
            seg.cache.commit(seg.ids.len());
        }

        // logits = rmsnorm(x[rows]) * norm @ lm_head^T, only for the rows asked for
        let mut rows: Vec<usize> = Vec::new();
        let mut counts = Vec::with_capacity(segs.len());
        let mut first = 0;
        for seg in segs.iter() {
            let n = seg.ids.len();
            let before = rows.len();
            match seg.want {
                Logits::None => {}
                Logits::Last | Logits::Argmax if n > 0 => rows.push(first + n - 1),
                Logits::Last | Logits::Argmax => {}
                Logits::All => rows.extend(first..first + n),
            }
            counts.push(rows.len() - before);
            first += n;
        }
        let h = buf(&mut ws.h, rows.len() * hd);
        for (i, &t) in rows.iter().enumerate() {
            rmsnorm(&ws.x[t * hd..(t + 1) * hd], &w.norm, c.rms_norm_eps, &mut h[i * hd..(i + 1) * hd]);
        }
        // A batch of argmax-only segments goes through the screen; anything else gets
        // every logit of its rows.
        if !rows.is_empty() && segs.iter().all(|s| matches!(s.want, Logits::Argmax)) {
            // Rows of h in order, one per segment that has tokens.
            let h = std::mem::take(&mut ws.h);
            let mut hrows = h.chunks_exact(hd);
            let out = counts
                .iter()
                .map(|&n| match n {
                    0 => Vec::new(),
                    _ => vec![self.lm_head_argmax(hrows.next().expect("one h row per segment"), ws) as f32],
                })
                .collect();
            ws.h = h;
            return Ok(out);
        }
        let mut logits = vec![0f32; rows.len() * c.vocab_size];
        if !rows.is_empty() {
            self.matmul(
                &ws.h[..rows.len() * hd],
                rows.len(),
                &w.lm_head.weight(ck),
                None,
                &mut logits,
                &mut ws.scratch,
            );
        }
        if let [seg] = segs {
            if seg.want != Logits::Argmax {
                return Ok(vec![logits]); // one segment: its logits are all of them, uncopied
            }
        }
        let mut out = Vec::with_capacity(segs.len());
        let mut rest = &logits[..];
        for (n, seg) in counts.into_iter().zip(segs.iter()) {
            let (mine, tail) = rest.split_at(n * c.vocab_size);
            out.push(if seg.want == Logits::Argmax && n > 0 { vec![first_argmax(mine) as f32] } else { mine.to_vec() });
            rest = tail;
        }
        Ok(out)
    }

    /// argmax(h @ lm_head^T) for one row h [hidden] (the first index on ties), as the
    /// full logits give it: through lm_head's screen where it has one (`argmax.rs`),
    /// with only the rows the screen keeps computed exactly.
    fn lm_head_argmax(&self, h: &[f32], ws: &mut Workspace) -> usize {
        let c = &self.config;
        let lm = &self.weights.lm_head;
        let vocab = lm.r1 - lm.r0;
        let full = |ws: &mut Workspace| {
            let logits = buf(&mut ws.logits, vocab);
            self.matmul(h, 1, &lm.weight(&self.ckpt), None, logits, &mut ws.scratch);
            first_argmax(logits)
        };
        if self.screen.get().is_none() {
            // Whoever takes the lock builds; a call that finds it taken (another session, or
            // this very thread inside the build's parallel loop) computes every logit.
            let Ok(_building) = self.screen_building.try_lock() else {
                return full(ws);
            };
            if self.screen.get().is_none() {
                let screen = if lm.q8.is_some() {
                    None
                } else {
                    // Earlier full logits mapped the bf16 pages: unmap them first, so that the
                    // copy replaces them in the RSS rather than adding to its peak (the screen
                    // reads rows with `pread`, not through the map).
                    self.ckpt.release(&lm.t);
                    super::argmax::Screen::build(&self.ckpt, &lm.t, lm.r0, vocab, c.hidden_size)
                };
                let _ = self.screen.set(screen);
            }
        }
        let Some(Some(screen)) = self.screen.get() else {
            return full(ws);
        };
        // approx[vocab] = x̂ @ Q8(lm_head)^T, "int16" activations
        let approx = buf(&mut ws.logits, vocab);
        kernels::matmul(
            self.isa,
            kernels::Precision::Int16,
            h,
            1,
            &Weight::q8(&screen.q),
            None,
            approx,
            &mut ws.scratch,
        );
        if !screen.keep(h, approx, &mut ws.screen_coef, &mut ws.screen_bound, &mut ws.kept) {
            return full(ws);
        }
        // The kept rows' exact logits, by the full logits' kernel and precision, from bf16
        // rows read at their offsets (runs of consecutive rows in one read).
        let (k, row_bytes) = (ws.kept.len(), c.hidden_size * 2);
        ws.kept_rows.resize(k * row_bytes, 0);
        let mut i = 0;
        while i < k {
            let mut j = i + 1;
            while j < k && ws.kept[j] == ws.kept[j - 1] + 1 {
                j += 1;
            }
            let r = lm.r0 + ws.kept[i] as usize;
            if self.ckpt.read_at(&lm.t, r * row_bytes, &mut ws.kept_rows[i * row_bytes..j * row_bytes]).is_err() {
                return full(ws);
            }
            i = j;
        }
        let exact = buf(&mut ws.kept_logits, k);
        let rows = Weight::bf16(&ws.kept_rows[..k * row_bytes], k, c.hidden_size);
        self.matmul(h, 1, &rows, None, exact, &mut ws.scratch);
        if exact.iter().any(|v| v.is_nan()) {
            return full(ws);
        }
        ws.kept[first_argmax(exact)] as usize
    }

    /// x += attention(rmsnorm(x)) for every token of the batch, appending each
    /// segment's K/V to its own cache (layer `li`).
    fn attention_block(
        &self,
        layer: &Layer,
        li: usize,
        segs: &mut [Segment<'_>],
        tok_seg: &[usize],
        tok_pos: &[usize],
        ws: &mut Workspace,
    ) {
        let c = &self.config;
        let ck = &self.ckpt;
        let t_n = tok_seg.len();
        let (hd, head_dim) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let half = head_dim / 2;

        let h = buf(&mut ws.h, t_n * hd);
        rmsnorm(&ws.x[..t_n * hd], &layer.attn_norm, c.rms_norm_eps, h);
        // h[T, H] @ Wq[q_dim, H]^T -> q[T, q_dim]; likewise k, v -> [T, kv_dim]
        let q = buf(&mut ws.q, t_n * q_dim);
        let k = buf(&mut ws.k, t_n * kv_dim);
        let v = buf(&mut ws.v, t_n * kv_dim);
        let mut qkv = [
            Job { x: h, m: t_n, w: layer.q.weight(ck), bias: Some(&layer.q_bias), out: q },
            Job { x: h, m: t_n, w: layer.k.weight(ck), bias: Some(&layer.k_bias), out: k },
            Job { x: h, m: t_n, w: layer.v.weight(ck), bias: Some(&layer.v_bias), out: v },
        ];
        kernels::matmul_batch(self.isa, self.precision, &mut qkv, &mut ws.scratch);
        let [Job { out: q, .. }, Job { out: k, .. }, Job { out: v, .. }] = qkv;
        for t in 0..t_n {
            let (cs, sn) = (&ws.cos[t * half..(t + 1) * half], &ws.sin[t * half..(t + 1) * half]);
            for head in q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(head_dim) {
                Rope::apply(head, cs, sn);
            }
            for head in k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(head_dim) {
                Rope::apply(head, cs, sn);
            }
        }
        // Each segment's rows are contiguous: write them after its cached positions.
        let mut first = 0;
        for seg in segs.iter_mut() {
            let n = seg.ids.len();
            let rows = first * kv_dim..(first + n) * kv_dim;
            seg.cache.write(li, &k[rows.clone()], &v[rows]);
            first += n;
        }

        let caches: Vec<&KvCache> = segs.iter().map(|s| &*s.cache).collect();
        let attn = buf(&mut ws.attn, t_n * q_dim);
        self.attend(layer, li, q, &caches, tok_seg, tok_pos, attn);
        // attn[T, q_dim] @ Wo[H, q_dim]^T -> o[T, H]; x += o
        let o = buf(&mut ws.o, t_n * hd);
        self.matmul(attn, t_n, &layer.o.weight(ck), Some(&layer.o_bias), o, &mut ws.scratch);
        for (xv, ov) in ws.x[..t_n * hd].iter_mut().zip(o.iter()) {
            *xv += ov;
        }
    }

    /// Scaled dot-product attention with a learned sink per head, over the visible keys
    /// (all up to the query, or the last `sliding_window` including it). One task per
    /// (token, kv head) handles the query heads that share that kv head.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        layer: &Layer,
        li: usize,
        q: &[f32],
        caches: &[&KvCache],
        tok_seg: &[usize],
        tok_pos: &[usize],
        out: &mut [f32],
    ) {
        let t_n = tok_seg.len();
        let c = &self.config;
        let (nh, nkv, head_dim) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let q_dim = c.q_dim();
        let group = nh / nkv;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let window = match layer.attention {
            Attention::Sliding => Some(c.sliding_window),
            Attention::Full => None,
        };
        let optr = OutPtr(out.as_mut_ptr());
        crate::par::for_each(t_n * nkv, |task| {
            let optr = optr;
            let (t, g) = (task / nkv, task % nkv);
            let (cache, pos) = (caches[tok_seg[t]], tok_pos[t]);
            let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let heads = g * group..(g + 1) * group;
            let args = attention::Group {
                q: &q[t * q_dim + heads.start * head_dim..t * q_dim + heads.end * head_dim],
                kv: cache.layers[li].view(),
                off: cache.head_offset(g),
                lo,
                nkeys: pos + 1 - lo,
                head_dim,
                sinks: &layer.sinks[heads.clone()],
                scale,
            };
            // SAFETY: heads g*group..(g+1)*group of token t are written by this task only.
            let o = unsafe {
                std::slice::from_raw_parts_mut(optr.0.add(t * q_dim + heads.start * head_dim), group * head_dim)
            };
            with_thread_buffer(&SCORES, args.scores_len(), |scores| {
                attention::attend_group(self.isa, &args, scores, o)
            });
        });
    }

    /// x += MoE(rmsnorm(x)): route each token to its top-k experts and run each expert
    /// once on all the tokens routed to it.
    fn moe_block(&self, layer: &Layer, t_n: usize, ws: &mut Workspace) {
        let c = &self.config;
        let ck = &self.ckpt;
        let (hd, inter, ne, topk) = (c.hidden_size, c.intermediate_size, c.num_local_experts, c.num_experts_per_tok);

        let h = buf(&mut ws.h, t_n * hd);
        rmsnorm(&ws.x[..t_n * hd], &layer.mlp_norm, c.rms_norm_eps, h);
        // h[T, H] @ Wr[E, H]^T -> r[T, E]
        let r = buf(&mut ws.router, t_n * ne);
        self.matmul(h, t_n, &layer.router.weight(ck), Some(&layer.router_bias), r, &mut ws.scratch);

        if let Some(log) = ws.router_log.as_mut() {
            log.extend_from_slice(r);
        }
        // (expert, token, weight) for every routing decision, then grouped by expert.
        ws.routes.clear();
        for t in 0..t_n {
            route(&r[t * ne..(t + 1) * ne], topk, &mut ws.route_order, &mut ws.route_top);
            ws.routes.extend(ws.route_top.iter().map(|&(e, wgt)| (e, t, wgt)));
        }
        ws.routes.sort_by_key(|&(e, t, _)| (e, t));

        // Expert groups: runs of routes with the same expert (routes are sorted by expert).
        let groups = &mut ws.expert_groups; // (expert, first route, end)
        groups.clear();
        for (i, &(e, _, _)) in ws.routes.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if g.0 == e => g.2 = i + 1,
                _ => groups.push((e, i, i + 1)),
            }
        }
        let r_n = ws.routes.len();
        // gather the tokens of each expert with more than one: xin[R, H], grouped by expert.
        // An expert with one token reads that token's row of h itself: the experts of one
        // token then share one slice, which the matmuls quantize once.
        let xin = buf(&mut ws.xin, r_n * hd);
        for &(_, first, end) in groups.iter().filter(|g| g.2 - g.1 > 1) {
            for i in first..end {
                let t = ws.routes[i].1;
                xin[i * hd..(i + 1) * hd].copy_from_slice(&h[t * hd..(t + 1) * hd]);
            }
        }
        // every expert at once: xin[m_e, H] @ W1[e][2I, H]^T -> gu[m_e, 2I]
        let gu = buf(&mut ws.gu, r_n * 2 * inter);
        let (h, routes) = (&*h, &ws.routes);
        let x_of = |first: usize, end: usize| match end - first {
            1 => &h[routes[first].1 * hd..(routes[first].1 + 1) * hd],
            _ => &xin[first * hd..end * hd],
        };
        let mut jobs = expert_jobs(&groups, x_of, gu, 2 * inter, |e| (layer.mlp1.weight(ck, e), layer.mlp1.bias(e)));
        kernels::matmul_batch(self.isa, self.precision, &mut jobs, &mut ws.scratch);
        drop(jobs);
        // swiglu -> act[R, I]; act[m_e, I] @ W2[e][H, I]^T -> y[m_e, H]
        let act = buf(&mut ws.act, r_n * inter);
        swiglu(gu, c.swiglu_limit, act);
        let y = buf(&mut ws.y, r_n * hd);
        let mut jobs = expert_jobs(
            &groups,
            |a, b| &act[a * inter..b * inter],
            y,
            hd,
            |e| (layer.mlp2.weight(ck, e), layer.mlp2.bias(e)),
        );
        kernels::matmul_batch(self.isa, self.precision, &mut jobs, &mut ws.scratch);
        drop(jobs);
        // x[t] += weight * y[route]
        for (i, &(_, t, wgt)) in ws.routes.iter().enumerate() {
            for (xv, &yv) in ws.x[t * hd..(t + 1) * hd].iter_mut().zip(&y[i * hd..(i + 1) * hd]) {
                *xv += wgt * yv;
            }
        }
    }

    /// Every layer's router logits for `ids` on a fresh context: [layers, T, experts].
    /// For tests that check routing against the references.
    pub fn router_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.new_cache();
        let mut ws = Workspace { router_log: Some(Vec::new()), ..Workspace::default() };
        self.forward(&mut cache, &mut ws, ids, Logits::None, None)?;
        Ok(ws.router_log.unwrap_or_default())
    }
}
