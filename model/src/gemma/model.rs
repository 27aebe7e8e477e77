//! The Gemma decoder: embedding → N decoder layers → final norm → tied LM head.
//!
//! Generation differences, each applied where noted:
//! - embeddings are multiplied by `sqrt(hidden_size)` (all generations);
//! - Gemma 1: `x + attn(norm(x))`, then `h + mlp(post_attention_layernorm(h))` — in Gemma 1 the norm called
//!   `post_attention_layernorm` is the *pre*-MLP norm;
//! - Gemma 2/3/4: the attention and MLP outputs are themselves normed before the residual add
//!   (`post_attention_layernorm`, `post_feedforward_layernorm`), and `pre_feedforward_layernorm` precedes the MLP;
//! - Gemma 2: `tanh` softcapping of attention scores and of the final logits (Gemma 4: of the logits);
//! - Gemma 2/3/4: sliding-window layers; Gemma 3/4: q/k norms and a separate RoPE base for sliding layers;
//! - Gemma 4: per-layer inputs (`crate::nn::per_layer`) after the MLP, each layer's output times its
//!   `layer_scalar`, global layers with their own head shape, and the last layers attending over an earlier
//!   layer's keys and values (`LayerSpec::kv_source`; the [`LayerContext`] carries them between layers).
use std::rc::Rc;
use std::sync::Arc;

use burn::tensor::{DType, Tensor};

use crate::config::{Arch, GemmaConfig, LayerType};
use crate::dtype::{cast, ComputeDtype};
use crate::mask::{AttnMask, Span};
use crate::nn::attention::{Attention, KeysValues, KvInput};
use crate::nn::embedding::TokenTable;
use crate::nn::kv_cache::{KvCache, LayerCache};
use crate::nn::linear::FrozenLinear;
use crate::nn::lora::{LoraLinear, LoraRuntime};
use crate::nn::mlp::Mlp;
use crate::nn::moe::MoeBlock;
use crate::nn::norm::RmsNorm;
use crate::nn::per_layer::{PerLayerBlock, PerLayerEmbedding};
use crate::nn::rope::RopeTables;
use crate::ops::gemma_backend::GemmaBackend;

#[derive(Debug, Clone)]
pub struct DecoderLayer<B: GemmaBackend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    /// Gemma 2/3/4 only.
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Gemma 2/3/4 only.
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Gemma 4 with per-layer inputs.
    pub per_layer: Option<PerLayerBlock<B>>,
    /// Gemma 4: the layer's output is multiplied by this (`layer_scalar`).
    pub layer_scalar: Option<f32>,
    /// Gemma 4 with `enable_moe_block`: the experts beside the dense MLP.
    pub moe: Option<MoeBlock<B>>,
}

#[derive(Debug, Clone)]
pub struct Gemma<B: GemmaBackend> {
    pub config: GemmaConfig,
    /// `[vocab, hidden]`, also the LM head (tied).
    pub embed_tokens: TokenTable<B>,
    /// Gemma 4's per-layer inputs.
    pub per_layer: Option<PerLayerEmbedding<B>>,
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

/// What the layers of one forward pass share, built on first use: RoPE tables and attention masks per kind of
/// layer, Gemma 4's per-layer inputs, and the keys and values (with the keys' positions) of the layers whose
/// keys and values later layers reuse.
pub struct LayerContext<B: GemmaBackend> {
    /// Keyed by layer type and head_dim (Gemma 4's global layers have their own).
    ropes: Vec<(RopeKey, Rc<RopeTables<B>>)>,
    masks: Vec<(Option<usize>, Arc<AttnMask>)>,
    per_layer: Option<Tensor<B, 4>>,
    shared: Vec<Option<SharedKv<B>>>,
}

type RopeKey = (LayerType, usize);

/// A reused layer's keys and values, with the keys' positions when they come from a cache.
type SharedKv<B> = (KeysValues<B>, Option<Span>);

impl<B: GemmaBackend> Default for LayerContext<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: GemmaBackend> LayerContext<B> {
    pub fn new() -> Self {
        Self { ropes: Vec::new(), masks: Vec::new(), per_layer: None, shared: Vec::new() }
    }

    fn rope(&mut self, m: &Gemma<B>, tokens: &TokenBatch, layer: usize) -> Rc<RopeTables<B>> {
        let key = (m.config.layer_types[layer], m.config.layer_specs[layer].head_dim);
        if let Some((_, r)) = self.ropes.iter().find(|(k, _)| *k == key) {
            return r.clone();
        }
        let r = Rc::new(RopeTables::new(&m.config.rope_for(layer), key.1, &tokens.positions, tokens.batch, &m.device));
        self.ropes.push((key, r.clone()));
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

    /// The context of a pass given its first layer's input, the scaled embeddings of `tokens`: Gemma 4's
    /// per-layer inputs are computed from them (not from a second lookup of the tokens).
    pub fn with_embeddings(mut self, m: &Gemma<B>, tokens: &TokenBatch, embeds: &Tensor<B, 3>) -> Self {
        if let Some(ple) = &m.per_layer {
            self.per_layer = Some(ple.inputs(&tokens.ids, embeds.clone(), &m.device, &LoraRuntime::default()));
        }
        self
    }

    /// Layer `layer`'s per-layer input `[batch, seq, P]` (Gemma 4), from those [`Self::with_embeddings`] made.
    fn per_layer_input(&self, m: &Gemma<B>, layer: usize) -> Option<Tensor<B, 3>> {
        m.per_layer.as_ref()?;
        let all = self.per_layer.as_ref().expect("a Gemma 4 pass builds its context with_embeddings");
        let [b, s, _, p] = all.dims();
        Some(all.clone().narrow(2, layer, 1).reshape([b, s, p]))
    }

    /// The keys and values layer `layer` attended over, if it is one that later layers reuse.
    pub fn shared_kv(&self, layer: usize) -> Option<KeysValues<B>> {
        self.shared.get(layer)?.as_ref().map(|(kv, _)| kv.clone())
    }

    /// Replaces layer `layer`'s shared keys and values (the checkpointed backward makes them leaves).
    pub fn set_shared_kv(&mut self, layer: usize, kv: KeysValues<B>) {
        let span = self.shared.get(layer).and_then(|e| e.as_ref()).and_then(|(_, s)| s.clone());
        self.store(layer, kv, span);
    }

    fn store(&mut self, layer: usize, kv: KeysValues<B>, span: Option<Span>) {
        if self.shared.len() <= layer {
            self.shared.resize_with(layer + 1, || None);
        }
        self.shared[layer] = Some((kv, span));
    }

    fn shared_entry(&self, layer: usize) -> SharedKv<B> {
        self.shared.get(layer).and_then(|e| e.clone()).expect("a KV-sharing layer runs after the layer it reuses")
    }
}

impl<B: GemmaBackend> DecoderLayer<B> {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        arch: Arch,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Arc<AttnMask>,
        kv: KvInput<'_, B>,
        per_layer_input: Option<Tensor<B, 3>>,
        rt: &LoraRuntime,
    ) -> (Tensor<B, 3>, KeysValues<B>) {
        let (attn, kv) = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, mask, kv, rt);
        let out = match arch {
            Arch::Gemma => {
                let h = x + attn;
                let m = self.mlp.forward(self.post_attention_layernorm.forward(h.clone()), rt);
                h + m
            }
            Arch::Gemma2 | Arch::Gemma3 | Arch::Gemma4 => {
                let h = x + self.post_attention_layernorm.forward(attn);
                let pre =
                    self.pre_feedforward_layernorm.as_ref().expect("gemma2-4 layer has pre_feedforward_layernorm");
                let post =
                    self.post_feedforward_layernorm.as_ref().expect("gemma2-4 layer has post_feedforward_layernorm");
                let m = self.mlp.forward(pre.forward(h.clone()), rt);
                let m = match &self.moe {
                    Some(moe) => moe.forward(h.clone(), m, rt),
                    None => m,
                };
                let mut h = h + post.forward(m);
                if let (Some(block), Some(input)) = (&self.per_layer, per_layer_input) {
                    h = block.forward(h, input, rt);
                }
                match self.layer_scalar {
                    Some(s) => h * s,
                    None => h,
                }
            }
        };
        (out, kv)
    }
}

impl<B: GemmaBackend> Gemma<B> {
    /// Scaled embeddings of `ids`: `[batch, seq, hidden]`.
    fn embed(&self, tokens: &TokenBatch) -> Tensor<B, 3> {
        let h = self.config.hidden_size;
        // transformers casts sqrt(hidden) to the activation dtype before multiplying.
        let normalizer = match self.embed_tokens.dtype() {
            DType::BF16 => half::bf16::from_f32((h as f32).sqrt()).to_f32(),
            _ => (h as f32).sqrt(),
        };
        self.embed_tokens.lookup(&tokens.ids, &self.device).reshape([tokens.batch, tokens.seq, h]) * normalizer
    }

    /// Whether a later layer reuses layer `i`'s keys and values.
    fn is_kv_source(&self, i: usize) -> bool {
        self.config.layer_specs.iter().any(|s| s.kv_source == Some(i))
    }

    /// Final hidden states after the last norm, `[batch, seq, hidden]`. With a cache (one sequence per row,
    /// no segments), the new keys and values are appended and sliding layers are trimmed to their window.
    pub fn forward_hidden(
        &self,
        tokens: &TokenBatch,
        cache: Option<&mut KvCache<B>>,
        rt: &LoraRuntime,
    ) -> Tensor<B, 3> {
        let cfg = &self.config;
        let mut x = self.embed(tokens);
        let mut ctx = LayerContext::new().with_embeddings(self, tokens, &x);
        let Some(c) = cache else {
            for i in 0..self.layers.len() {
                x = self.forward_layer(i, x, tokens, &mut ctx, rt);
            }
            return self.norm.forward(x);
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let window = cfg.window_for(i);
            let rope = ctx.rope(self, tokens, i);
            let ple = ctx.per_layer_input(self, i);
            let spec = cfg.layer_specs[i];
            let (y, _) = match spec.kv_source {
                Some(src) => {
                    let (kv, k_span) = ctx.shared_entry(src);
                    let k_span = k_span.expect("a cached forward records the reused keys' positions");
                    let mask = Arc::new(AttnMask::new(tokens.batch, tokens.span(), k_span, window));
                    layer.forward(cfg.arch, x, &rope, &mask, KvInput::Shared(kv), ple, rt)
                }
                None => {
                    let kv = [tokens.batch, 0, spec.kv_heads, spec.head_dim];
                    let lc: &mut LayerCache<B> = c.layer(i, kv, x.dtype(), &self.device);
                    let k_span = lc.extend_positions(&tokens.positions[..tokens.seq], tokens.batch);
                    let mask = Arc::new(AttnMask::new(tokens.batch, tokens.span(), k_span.clone(), window));
                    let out = layer.forward(cfg.arch, x, &rope, &mask, KvInput::Cached(&mut *lc), ple, rt);
                    if self.is_kv_source(i) {
                        ctx.store(i, out.1.clone(), Some(k_span));
                    }
                    out
                }
            };
            x = y;
        }
        // Trimmed only now: a later layer may attend over a sliding layer's keys within this step.
        for i in 0..self.layers.len() {
            if let (Some(w), Some(lc)) = (cfg.window_for(i), c.layers[i].as_mut()) {
                lc.trim(w);
            }
        }
        self.norm.forward(x)
    }

    /// Decoder layer `i` alone, without a cache (`ctx` built for the same `tokens`, the layers before `i`
    /// already run through it when `i` reuses their keys and values).
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
        let ple = ctx.per_layer_input(self, i);
        let kv = match self.config.layer_specs[i].kv_source {
            Some(src) => {
                let (kv, _) = ctx.shared_entry(src);
                KvInput::Shared(kv)
            }
            None => KvInput::Own,
        };
        let (y, kv) = self.layers[i].forward(self.config.arch, x, &rope, &mask, kv, ple, rt);
        if self.is_kv_source(i) {
            ctx.store(i, kv, None);
        }
        y
    }

    /// Scaled embeddings of the tokens, the first layer's input.
    pub fn embed_tokens_of(&self, tokens: &TokenBatch) -> Tensor<B, 3> {
        self.embed(tokens)
    }

    /// Logits from final hidden states `[.., hidden]` → `[.., vocab]`, softcapped for Gemma 2 and 4.
    pub fn lm_head<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let dims = hidden.dims();
        let n: usize = dims[..D - 1].iter().product();
        let h = hidden.reshape([n, self.config.hidden_size]);
        let logits = self.embed_tokens.logits(h);
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

impl<B: GemmaBackend> Gemma<B> {
    /// The model computing in `dtype`: the embedding table and dense frozen weights cast (norm scales, packed
    /// weights and LoRA factors are untouched; see the module's notes).
    pub fn with_compute_dtype(mut self, dtype: ComputeDtype) -> Self {
        let dt = dtype.dtype();
        self.embed_tokens = self.embed_tokens.with_dtype(dt);
        let cast_base = |l: &mut LoraLinear<B>| match &mut l.base {
            FrozenLinear::Dense(w) => *w = cast(w.clone(), dt),
            FrozenLinear::Experts(stack) => {
                let cast_one = |f: &FrozenLinear<B>| match f {
                    FrozenLinear::Dense(w) => FrozenLinear::Dense(cast(w.clone(), dt)),
                    other => other.clone(),
                };
                *stack = Arc::new(stack.iter().map(cast_one).collect());
            }
            FrozenLinear::Packed(_) => {}
        };
        if let Some(p) = self.per_layer.as_mut() {
            // The per-layer table keeps its storage (bf16 where exact): its rows are cast as looked up.
            cast_base(&mut p.projection);
        }
        for l in self.layers.iter_mut() {
            if let Some(b) = l.per_layer.as_mut() {
                cast_base(&mut b.gate);
                cast_base(&mut b.projection);
            }
            if let Some(m) = l.moe.as_mut() {
                cast_base(&mut m.router.proj);
            }
        }
        for (_, l) in linears_mut(&mut self) {
            cast_base(l);
        }
        self
    }

    /// What the model computes in: its embedding table's dtype.
    pub fn compute_dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }
}

/// Every (PEFT module path, linear) pair of the model, mutably, in the same order as [`linears`]: the seven
/// projections LoRA can target, where the layer has them (Gemma 4's KV-shared layers have no k/v projection,
/// its `attention_k_eq_v` global layers no v projection).
pub fn linears_mut<B: GemmaBackend>(model: &mut Gemma<B>) -> Vec<(String, &mut LoraLinear<B>)> {
    let mut out = Vec::new();
    for (i, l) in model.layers.iter_mut().enumerate() {
        let (a, m) = (&mut l.self_attn, &mut l.mlp);
        for (name, lin) in [
            ("self_attn.q_proj", Some(&mut a.q_proj)),
            ("self_attn.k_proj", a.k_proj.as_mut()),
            ("self_attn.v_proj", a.v_proj.as_mut()),
            ("self_attn.o_proj", Some(&mut a.o_proj)),
            ("mlp.gate_proj", Some(&mut m.gate_proj)),
            ("mlp.up_proj", Some(&mut m.up_proj)),
            ("mlp.down_proj", Some(&mut m.down_proj)),
        ] {
            if let Some(lin) = lin {
                out.push((format!("layers.{i}.{name}"), lin));
            }
        }
        if let Some(moe) = l.moe.as_mut() {
            out.push((format!("layers.{i}.{EXPERTS_GATE_UP}"), &mut moe.gate_up));
            out.push((format!("layers.{i}.{EXPERTS_DOWN}"), &mut moe.down));
        }
    }
    out
}

/// The PEFT module paths (within a layer) of the expert stacks' LoRA, as PEFT names them when an adapter
/// targets `target_parameters = ["experts.gate_up_proj", "experts.down_proj"]` in that order: the first
/// parameter's `ParamWrapper` is wrapped by the second's, hence `base_layer` (see `peft::adapter` for other
/// orders).
pub const EXPERTS_GATE_UP: &str = "experts.base_layer";
pub const EXPERTS_DOWN: &str = "experts";

/// Every (PEFT module path, linear) pair of the model, e.g. `("layers.0.self_attn.q_proj", ..)`.
pub fn linears<B: GemmaBackend>(model: &Gemma<B>) -> Vec<(String, &LoraLinear<B>)> {
    let mut out = Vec::new();
    for (i, l) in model.layers.iter().enumerate() {
        let (a, m) = (&l.self_attn, &l.mlp);
        for (name, lin) in [
            ("self_attn.q_proj", Some(&a.q_proj)),
            ("self_attn.k_proj", a.k_proj.as_ref()),
            ("self_attn.v_proj", a.v_proj.as_ref()),
            ("self_attn.o_proj", Some(&a.o_proj)),
            ("mlp.gate_proj", Some(&m.gate_proj)),
            ("mlp.up_proj", Some(&m.up_proj)),
            ("mlp.down_proj", Some(&m.down_proj)),
        ] {
            if let Some(lin) = lin {
                out.push((format!("layers.{i}.{name}"), lin));
            }
        }
        if let Some(moe) = &l.moe {
            out.push((format!("layers.{i}.{EXPERTS_GATE_UP}"), &moe.gate_up));
            out.push((format!("layers.{i}.{EXPERTS_DOWN}"), &moe.down));
        }
    }
    out
}

/// The frozen linears that are not LoRA targets (Gemma 4's per-layer-input projections), with their
/// checkpoint names relative to the text model: quantized like the others, merged never.
pub fn other_linears<B: GemmaBackend>(model: &Gemma<B>) -> Vec<(String, &LoraLinear<B>)> {
    let mut out = Vec::new();
    if let Some(p) = &model.per_layer {
        out.push(("per_layer_model_projection".to_string(), &p.projection));
    }
    for (i, l) in model.layers.iter().enumerate() {
        if let Some(b) = &l.per_layer {
            out.push((format!("layers.{i}.per_layer_input_gate"), &b.gate));
            out.push((format!("layers.{i}.per_layer_projection"), &b.projection));
        }
        if let Some(m) = &l.moe {
            out.push((format!("layers.{i}.router.proj"), &m.router.proj));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use burn::tensor::Tensor;

    use super::*;
    use crate::backends::FlexCpu;
    use crate::gemma::load::load_gemma;
    use crate::gemma::loss::shifted_targets;
    use crate::io::files::ModelFiles;
    use crate::quant::QuantKind;
    use crate::testing::{read_safetensor as read, scaled_err};

    /// In bf16 the tiny Gemma 1/2/3 give transformers' bf16 loss (scripts/make_bf16_fixtures.py) to ~1e-4 and
    /// its bf16 logits to within bf16's own spread: on these random models rounding to bf16 moves the logits
    /// by ~3-4% of their scale (transformers' eager and sdpa bf16 paths differ from each other by as much), so
    /// the logits are held to that yardstick (transformers' bf16-vs-f32 distance) and the loss, where the
    /// rounding averages out, to 3e-4 of itself: transformers' own bf16 paths spread by as much (eager vs sdpa:
    /// 1.6e-4 on gemma1; bf16 vs f32: 3.0e-4 on gemma3; the recorded eager loss moved by 4e-5 between
    /// transformers releases). The logits must also differ from f32 (bf16 really ran).
    #[test]
    fn bf16_logits_and_loss_equal_transformers_bf16() {
        for arch in ["gemma1", "gemma2", "gemma3"] {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(arch);
            let files = ModelFiles::open(&dir).expect("fixture");
            let model =
                load_gemma::<FlexCpu>(&files.config, files.weights.as_ref(), QuantKind::None, &Default::default())
                    .expect("load")
                    .with_compute_dtype(ComputeDtype::Bf16);
            assert_eq!(model.compute_dtype(), DType::BF16);
            let (shape, ids) = read(&dir.join("reference.safetensors"), "input_ids");
            let rows: Vec<Vec<u32>> = ids.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
            let tokens = TokenBatch::from_rows(&rows);
            let logits: Tensor<FlexCpu, 3> = model.forward(&tokens, &LoraRuntime::default());
            assert_eq!(logits.dtype(), DType::BF16);
            let ours = logits.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            let reference = dir.join("reference_bf16.safetensors");
            let (_, want) = read(&reference, "logits");
            let (_, f32_ref) = read(&reference, "logits_f32_ref");
            let (err, err_f32) = (scaled_err(&ours, &want), scaled_err(&ours, &f32_ref));
            let spread = scaled_err(&want, &f32_ref);
            let labels: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
            let nll = model.eval_nll(&tokens, &shifted_targets(&labels, tokens.batch, tokens.seq));
            let want_nll = read(&reference, "nll_sum").1[0] as f64;
            eprintln!(
                "{arch}: logits {err:.2e} of scale from transformers' bf16, {err_f32:.2e} from f32 (transformers' \
                 bf16 is {spread:.2e} from f32); NLL {nll} vs {want_nll}"
            );
            assert!(err < 1.5 * spread, "{arch}: bf16 logits {err:e} of their scale from transformers' ({spread:e})");
            assert!(err_f32 > 0.1 * spread, "{arch}: bf16 logits only {err_f32:e} from f32: did bf16 run?");
            assert!((nll - want_nll).abs() < 3e-4 * want_nll, "{arch}: NLL {nll} vs transformers' bf16 {want_nll}");
        }
    }
}
