//! The Gemma decoder: embedding → N decoder layers → final norm → tied LM head.
//!
//! Generation differences, each applied where noted:
//! - embeddings are multiplied by `sqrt(hidden_size)` (all generations);
//! - Gemma 1: `x + attn(norm(x))`, then `h + mlp(post_attention_layernorm(h))` — in Gemma 1 the norm called
//!   `post_attention_layernorm` is the *pre*-MLP norm;
//! - Gemma 2/3: the attention and MLP outputs are themselves normed before the residual add
//!   (`post_attention_layernorm`, `post_feedforward_layernorm`), and `pre_feedforward_layernorm` precedes the MLP;
//! - Gemma 2: `tanh` softcapping of attention scores and of the final logits;
//! - Gemma 2/3: sliding-window layers; Gemma 3: q/k norms and a separate RoPE base for sliding layers.
use std::rc::Rc;
use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::config::{Arch, GemmaConfig, LayerType};
use crate::layers::attention::{Attention, LayerCache};
use crate::layers::lora::LoraRuntime;
use crate::layers::mask::{AttnMask, Span};
use crate::layers::mlp::Mlp;
use crate::layers::norm::RmsNorm;
use crate::layers::rope::RopeTables;
use crate::quant::FrozenMatmul;

#[derive(Debug, Clone)]
pub struct DecoderLayer<B: FrozenMatmul> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    /// Gemma 2/3 only.
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Gemma 2/3 only.
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
}

#[derive(Debug, Clone)]
pub struct Gemma<B: FrozenMatmul> {
    pub config: GemmaConfig,
    /// `[vocab, hidden]`, also the LM head (tied).
    pub embed_tokens: Tensor<B, 2>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub device: B::Device,
}

/// Token ids with their positions and (for packed rows) segment ids, row-major `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
    pub positions: Vec<usize>,
    /// `None`: each row is one sequence. Otherwise tokens attend only within their segment id.
    pub segments: Option<Vec<u32>>,
}

impl TokenBatch {
    /// The queries' side of the attention mask.
    pub fn span(&self) -> Span {
        Span { positions: self.positions.clone(), segments: self.segments.clone() }
    }

    /// Rows of equal length, positions 0..seq.
    pub fn from_rows(rows: &[Vec<u32>]) -> Self {
        let batch = rows.len();
        let seq = rows.first().map_or(0, Vec::len);
        assert!(rows.iter().all(|r| r.len() == seq), "TokenBatch::from_rows needs rows of equal length");
        Self { ids: rows.concat(), batch, seq, positions: (0..batch).flat_map(|_| 0..seq).collect(), segments: None }
    }
}

/// The KV cache of a whole model, batch-major like the batch it was built for.
#[derive(Debug, Clone)]
pub struct KvCache<B: FrozenMatmul> {
    pub layers: Vec<Option<LayerCache<B>>>,
}

impl<B: FrozenMatmul> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: vec![None; n_layers] }
    }
    /// Number of tokens seen (the next position).
    pub fn next_position(&self) -> usize {
        self.layers.iter().flatten().map(|c| c.positions.last().map_or(0, |p| p + 1)).max().unwrap_or(0)
    }
}

/// The per-layer inputs that depend only on the tokens and the layer's type — RoPE tables and attention
/// masks — built once per kind on first use and shared by the layers of that kind.
pub struct LayerContext<B: FrozenMatmul> {
    ropes: Vec<(LayerType, Rc<RopeTables<B>>)>,
    masks: Vec<(Option<usize>, Arc<AttnMask>)>,
}

impl<B: FrozenMatmul> Default for LayerContext<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: FrozenMatmul> LayerContext<B> {
    pub fn new() -> Self {
        Self { ropes: Vec::new(), masks: Vec::new() }
    }

    fn rope(&mut self, m: &Gemma<B>, tokens: &TokenBatch, layer: usize) -> Rc<RopeTables<B>> {
        let lt = m.config.layer_types[layer];
        if let Some((_, r)) = self.ropes.iter().find(|(t, _)| *t == lt) {
            return r.clone();
        }
        let r = Rc::new(RopeTables::new(
            &m.config.rope_for(layer),
            m.config.head_dim,
            &tokens.positions,
            tokens.batch,
            &m.device,
        ));
        self.ropes.push((lt, r.clone()));
        r
    }

    /// The self-attention mask (no cache) of `layer`.
    fn mask(&mut self, m: &Gemma<B>, tokens: &TokenBatch, layer: usize) -> Arc<AttnMask> {
        let window = m.config.window_for(layer);
        if let Some((_, mask)) = self.masks.iter().find(|(w, _)| *w == window) {
            return mask.clone();
        }
        let span = tokens.span();
        let mask = Arc::new(AttnMask::new(tokens.batch, span.clone(), span, window));
        self.masks.push((window, mask.clone()));
        mask
    }
}

impl<B: FrozenMatmul> DecoderLayer<B> {
    fn forward(
        &self,
        arch: Arch,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Arc<AttnMask>,
        cache: Option<&mut LayerCache<B>>,
        rt: &LoraRuntime,
    ) -> Tensor<B, 3> {
        let attn = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, mask, cache, rt);
        match arch {
            Arch::Gemma => {
                let h = x + attn;
                let m = self.mlp.forward(self.post_attention_layernorm.forward(h.clone()), rt);
                h + m
            }
            Arch::Gemma2 | Arch::Gemma3 => {
                let h = x + self.post_attention_layernorm.forward(attn);
                let pre =
                    self.pre_feedforward_layernorm.as_ref().expect("gemma2/3 layer has pre_feedforward_layernorm");
                let post =
                    self.post_feedforward_layernorm.as_ref().expect("gemma2/3 layer has post_feedforward_layernorm");
                let m = self.mlp.forward(pre.forward(h.clone()), rt);
                h + post.forward(m)
            }
        }
    }
}

impl<B: FrozenMatmul> Gemma<B> {
    /// Scaled embeddings of `ids`: `[batch, seq, hidden]`.
    fn embed(&self, tokens: &TokenBatch) -> Tensor<B, 3> {
        let ids: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [tokens.ids.len()]), &self.device);
        let h = self.config.hidden_size;
        // transformers casts sqrt(hidden) to the activation dtype before multiplying.
        let normalizer = match self.embed_tokens.dtype() {
            DType::BF16 => half::bf16::from_f32((h as f32).sqrt()).to_f32(),
            _ => (h as f32).sqrt(),
        };
        self.embed_tokens.clone().select(0, idx).reshape([tokens.batch, tokens.seq, h]) * normalizer
    }

    /// Final hidden states after the last norm, `[batch, seq, hidden]`. With a cache (one sequence per row,
    /// no segments), the new keys and values are appended and sliding layers are trimmed to their window.
    pub fn forward_hidden(
        &self,
        tokens: &TokenBatch,
        mut cache: Option<&mut KvCache<B>>,
        rt: &LoraRuntime,
    ) -> Tensor<B, 3> {
        let cfg = &self.config;
        let mut x = self.embed(tokens);
        let mut ctx = LayerContext::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let window = cfg.window_for(i);
            let rope = ctx.rope(self, tokens, i);
            match cache.as_deref_mut() {
                Some(c) => {
                    let kv = [tokens.batch, 0, cfg.num_key_value_heads, cfg.head_dim];
                    let dt = x.dtype();
                    let lc = c.layers[i].get_or_insert_with(|| LayerCache {
                        k: Tensor::zeros(kv, (&self.device, dt)),
                        v: Tensor::zeros(kv, (&self.device, dt)),
                        positions: Vec::new(),
                    });
                    // Key positions: the cached ones, then the new ones (the same for every row).
                    lc.positions.extend(tokens.positions[..tokens.seq].iter().copied());
                    let kpos: Vec<usize> = (0..tokens.batch).flat_map(|_| lc.positions.iter().copied()).collect();
                    let k_span = Span { positions: kpos, segments: None };
                    let mask = Arc::new(AttnMask::new(tokens.batch, tokens.span(), k_span, window));
                    x = layer.forward(cfg.arch, x, &rope, &mask, Some(&mut *lc), rt);
                    // A sliding layer never looks further back than its window: drop older entries.
                    if let Some(w) = window {
                        let len = lc.positions.len();
                        if len > w {
                            lc.positions.drain(..len - w);
                            lc.k = lc.k.clone().narrow(1, len - w, w);
                            lc.v = lc.v.clone().narrow(1, len - w, w);
                        }
                    }
                }
                None => {
                    let mask = ctx.mask(self, tokens, i);
                    x = layer.forward(cfg.arch, x, &rope, &mask, None, rt);
                }
            }
        }
        self.norm.forward(x)
    }

    /// Decoder layer `i` alone, without a cache (`ctx` built for the same `tokens`).
    pub fn forward_layer(
        &self,
        i: usize,
        x: Tensor<B, 3>,
        tokens: &TokenBatch,
        ctx: &mut LayerContext<B>,
        rt: &LoraRuntime,
    ) -> Tensor<B, 3> {
        let rope = ctx.rope(self, tokens, i);
        let mask = ctx.mask(self, tokens, i);
        self.layers[i].forward(self.config.arch, x, &rope, &mask, None, rt)
    }

    /// Scaled embeddings of the tokens, the first layer's input.
    pub fn embed_tokens_of(&self, tokens: &TokenBatch) -> Tensor<B, 3> {
        self.embed(tokens)
    }

    /// Logits from final hidden states `[.., hidden]` → `[.., vocab]`, softcapped for Gemma 2.
    pub fn lm_head<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let dims = hidden.dims();
        let n: usize = dims[..D - 1].iter().product();
        // `(E · hᵀ)ᵀ` rather than `h · Eᵀ`: the `[vocab, hidden]` table stays contiguous on the left, where
        // every backend multiplies it without copying it.
        let h = hidden.reshape([n, self.config.hidden_size]);
        let logits = self.embed_tokens.clone().matmul(h.transpose()).transpose();
        let logits = match self.config.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        };
        let mut out = dims;
        out[D - 1] = self.config.vocab_size;
        logits.reshape(out)
    }

    /// Full logits `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: &TokenBatch, rt: &LoraRuntime) -> Tensor<B, 3> {
        self.lm_head(self.forward_hidden(tokens, None, rt))
    }
}
