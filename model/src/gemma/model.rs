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

use burn::tensor::{DType, Tensor};

use crate::config::{Arch, GemmaConfig, LayerType};
use crate::dtype::{cast, ComputeDtype};
use crate::mask::{AttnMask, Span};
use crate::nn::attention::Attention;
use crate::nn::embedding::TokenTable;
use crate::nn::kv_cache::{KvCache, LayerCache};
use crate::nn::linear::FrozenLinear;
use crate::nn::lora::{LoraLinear, LoraRuntime};
use crate::nn::mlp::Mlp;
use crate::nn::norm::RmsNorm;
use crate::nn::rope::RopeTables;
use crate::ops::gemma_backend::GemmaBackend;

#[derive(Debug, Clone)]
pub struct DecoderLayer<B: GemmaBackend> {
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
pub struct Gemma<B: GemmaBackend> {
    pub config: GemmaConfig,
    /// `[vocab, hidden]`, also the LM head (tied).
    pub embed_tokens: TokenTable<B>,
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

/// The per-layer inputs that depend only on the tokens and the layer's type — RoPE tables and attention
/// masks — built once per kind on first use and shared by the layers of that kind.
pub struct LayerContext<B: GemmaBackend> {
    ropes: Vec<(LayerType, Rc<RopeTables<B>>)>,
    masks: Vec<(Option<usize>, Arc<AttnMask>)>,
}

impl<B: GemmaBackend> Default for LayerContext<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: GemmaBackend> LayerContext<B> {
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

impl<B: GemmaBackend> DecoderLayer<B> {
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
                    let lc: &mut LayerCache<B> = c.layer(i, kv, x.dtype(), &self.device);
                    let k_span = lc.extend_positions(&tokens.positions[..tokens.seq], tokens.batch);
                    let mask = Arc::new(AttnMask::new(tokens.batch, tokens.span(), k_span, window));
                    x = layer.forward(cfg.arch, x, &rope, &mask, Some(&mut *lc), rt);
                    if let Some(w) = window {
                        lc.trim(w);
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
        for (_, l) in linears_mut(&mut self) {
            if let FrozenLinear::Dense(w) = &mut l.base {
                *w = cast(w.clone(), dt);
            }
        }
        self
    }

    /// What the model computes in: its embedding table's dtype.
    pub fn compute_dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }
}

/// Every (PEFT module path, linear) pair of the model, mutably, in the same order as [`linears`].
pub fn linears_mut<B: GemmaBackend>(model: &mut Gemma<B>) -> Vec<(String, &mut LoraLinear<B>)> {
    let mut out = Vec::new();
    for (i, l) in model.layers.iter_mut().enumerate() {
        let (a, m) = (&mut l.self_attn, &mut l.mlp);
        for (name, lin) in [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ] {
            out.push((format!("layers.{i}.{name}"), lin));
        }
    }
    out
}

/// Every (PEFT module path, linear) pair of the model, e.g. `("layers.0.self_attn.q_proj", ..)`.
pub fn linears<B: GemmaBackend>(model: &Gemma<B>) -> Vec<(String, &LoraLinear<B>)> {
    let mut out = Vec::new();
    for (i, l) in model.layers.iter().enumerate() {
        let a = &l.self_attn;
        let m = &l.mlp;
        for (name, lin) in [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ] {
            out.push((format!("layers.{i}.{name}"), lin));
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
    use crate::testing::scaled_err;

    fn read(path: &PathBuf, name: &str) -> (Vec<usize>, Vec<f32>) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = match t.dtype() {
            safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(t.data()),
            safetensors::Dtype::I64 => {
                bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|x| x as f32).collect()
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (t.shape().to_vec(), data)
    }

    /// In bf16 the tiny Gemma 1/2/3 give transformers' bf16 loss (scripts/make_bf16_fixtures.py) to ~1e-4 and
    /// its bf16 logits to within bf16's own spread: on these random models rounding to bf16 moves the logits
    /// by ~3-4% of their scale (transformers' eager and sdpa bf16 paths differ from each other by as much), so
    /// the logits are held to that yardstick (transformers' bf16-vs-f32 distance) and the loss, where the
    /// rounding averages out, to 2e-4. The logits must also differ from f32 (bf16 really ran).
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
            assert!((nll - want_nll).abs() < 2e-4 * want_nll, "{arch}: NLL {nll} vs transformers' bf16 {want_nll}");
        }
    }
}
