//! Building a `Gemma<B>` from a `WeightSource`: every decoder linear (Gemma 4's per-layer-input projections
//! included) becomes a frozen dense/NF4/int8 base (the same set of layers transformers + bitsandbytes quantize);
//! embeddings and norms stay f32.
use std::sync::Arc;

use burn::tensor::{DType, Tensor, TensorData};

use crate::config::{Arch, GemmaConfig};
use crate::error::{ModelError, Result};
use crate::gemma::model::{DecoderLayer, Gemma};
use crate::io::weights::{HostTensor, WeightSource};
use crate::nn::attention::Attention;
use crate::nn::embedding::TokenTable;
use crate::nn::linear::FrozenLinear;
use crate::nn::lora::LoraLinear;
use crate::nn::mlp::Mlp;
use crate::nn::moe::{MoeBlock, Router};
use crate::nn::norm::RmsNorm;
use crate::nn::per_layer::{PerLayerBlock, PerLayerEmbedding};
use crate::ops::gemma_backend::GemmaBackend;
use crate::quant::{GgmlWeight, PackedWeight, QuantKind};

/// Finds a tensor under the names the text model's weights take in the checkpoints we read:
/// `model.…` (Gemma*ForCausalLM), `language_model.model.…` (transformers 4.x Gemma3ForConditionalGeneration)
/// and `model.language_model.…` (5.x).
struct Names<'a> {
    src: &'a dyn WeightSource,
    prefix: &'static str,
}

impl<'a> Names<'a> {
    fn new(src: &'a dyn WeightSource) -> Self {
        let names = src.names();
        let prefix = [
            "model.embed_tokens.weight",
            "language_model.model.embed_tokens.weight",
            "model.language_model.embed_tokens.weight",
        ]
        .iter()
        .zip(["model.", "language_model.model.", "model.language_model."])
        .find(|(n, _)| names.iter().any(|x| x == *n))
        .map_or("model.", |(_, p)| p);
        Self { src, prefix }
    }

    /// `rel` is relative to the text model, e.g. `layers.0.self_attn.q_proj.weight`.
    fn get(&self, rel: &str, expected: &[usize]) -> Result<HostTensor> {
        let name = format!("{}{rel}", self.prefix);
        let t = self.src.get(&name)?;
        self.check_shape(name, expected, t.shape.clone())?;
        Ok(t)
    }

    /// The weight as a pre-quantized checkpoint stores it (bitsandbytes), `None` where it is stored dense.
    fn packed(&self, rel: &str, expected: [usize; 2]) -> Result<Option<PackedWeight>> {
        let name = format!("{}{rel}", self.prefix);
        let p = self.src.packed(&name)?;
        if let Some(p) = &p {
            self.check_shape(name, &expected, p.shape().to_vec())?;
        }
        Ok(p)
    }

    /// The tensor in the file's own ggml blocks (`--quant gguf`); an error naming the file where the source
    /// has none (a safetensors directory).
    fn ggml(&self, rel: &str, expected: [usize; 2]) -> Result<GgmlWeight> {
        let name = format!("{}{rel}", self.prefix);
        let Some(w) = self.src.ggml(&name)? else {
            return Err(ModelError::format(
                self.src.path(),
                format!("`{name}` is not stored in GGUF blocks: --quant gguf needs a .gguf model (use --quant nf4)"),
            ));
        };
        self.check_shape(name, &expected, w.shape.to_vec())?;
        Ok(w)
    }

    /// A 3-D expert stack in the file's own ggml blocks, one `[out, in]` weight per expert (`--quant gguf`).
    fn ggml_experts(&self, rel: &str, expected: [usize; 3]) -> Result<Vec<GgmlWeight>> {
        let name = format!("{}{rel}", self.prefix);
        let Some(each) = self.src.ggml_experts(&name)? else {
            return Err(ModelError::format(
                self.src.path(),
                format!("`{name}` is not stored in GGUF blocks: --quant gguf needs a .gguf model (use --quant nf4)"),
            ));
        };
        let [experts, out, inp] = expected;
        let shape = |w: &GgmlWeight| vec![w.shape[0], w.shape[1]];
        let actual = match each.first() {
            Some(w) if each.iter().all(|x| x.shape == w.shape) => [vec![each.len()], shape(w)].concat(),
            _ => vec![each.len()],
        };
        self.check_shape(name, &[experts, out, inp], actual)?;
        Ok(each)
    }

    fn check_shape(&self, name: String, expected: &[usize], actual: Vec<usize>) -> Result<()> {
        if actual != expected {
            let path = self.src.path().to_path_buf();
            return Err(ModelError::Shape { path, name, expected: expected.to_vec(), actual });
        }
        Ok(())
    }
}

/// `data` as bf16 (exactly: the caller checked) without holding both copies whole: converted from the back
/// in chunks, the f32 vector shortened (its memory returned) as it goes. For E2B's per-layer table that is a
/// peak of 8.75 GiB instead of 13.1.
fn narrow_to_bf16(mut data: Vec<f32>) -> Vec<half::bf16> {
    const CHUNK: usize = 1 << 22;
    // A zeroed allocation: its pages are only touched as they are written.
    let mut out = vec![0u16; data.len()];
    while !data.is_empty() {
        let start = data.len().saturating_sub(CHUNK);
        for (o, x) in out[start..].iter_mut().zip(&data[start..]) {
            *o = half::bf16::from_f32(*x).to_bits();
        }
        data.truncate(start);
        data.shrink_to_fit();
    }
    bytemuck::cast_vec(out)
}

/// Unique per (layer, projection): keys LoRA init and dropout streams.
pub fn linear_key(layer: usize, proj: &str) -> u64 {
    let p = match proj {
        "per_layer_input_gate" => 8,
        "per_layer_projection" => 9,
        _ => crate::nn::lora::TARGETS.iter().position(|t| *t == proj).unwrap_or(10),
    } as u64;
    (layer as u64) * 16 + p + 1
}

pub fn load_gemma<B: GemmaBackend>(
    config: &GemmaConfig,
    src: &dyn WeightSource,
    quant: QuantKind,
    device: &B::Device,
) -> Result<Gemma<B>> {
    let names = Names::new(src);
    // A pre-quantized (bitsandbytes) checkpoint: with its own kind each weight is taken as stored, and what
    // it stores in 16-bit (`llm_int8_skip_modules`, 3-D experts) stays dense, as transformers loads it; `none`
    // dequantizes; any other kind would quantize already-quantized values a second time.
    let as_stored = src.stored_quant().is_some_and(|s| s == quant);
    if let Some(stored) = src.stored_quant() {
        if !as_stored && quant != QuantKind::None {
            let name = |q: QuantKind| format!("{q:?}").to_lowercase();
            return Err(ModelError::format(
                src.path().join("config.json"),
                format!(
                    "quantization_config: the checkpoint is stored quantized by bitsandbytes ({stored}); quant \
                     {asked} would quantize its dequantized weights a second time: use quant {stored} (the weights as \
                     stored) or none (dequantized to f32)",
                    stored = name(stored),
                    asked = name(quant),
                ),
            ));
        }
    }
    let c = config;
    let h = c.hidden_size;
    let adds_one = c.arch.norm_adds_one();
    let norm = |rel: &str, dim: usize| -> Result<RmsNorm<B>> {
        Ok(RmsNorm::from_weight_in(&names.get(rel, &[dim])?.data, c.rms_norm_eps, adds_one, device))
    };
    let frozen = |rel: &str, out: usize, inp: usize, key: u64| -> Result<LoraLinear<B>> {
        let base = match quant {
            QuantKind::Gguf => FrozenLinear::Packed(Arc::new(PackedWeight::Ggml(names.ggml(rel, [out, inp])?))),
            _ if as_stored => match names.packed(rel, [out, inp])? {
                Some(p) => FrozenLinear::Packed(Arc::new(p)),
                None => FrozenLinear::new(names.get(rel, &[out, inp])?.data, [out, inp], QuantKind::None, device),
            },
            _ => FrozenLinear::new(names.get(rel, &[out, inp])?.data, [out, inp], quant, device),
        };
        Ok(LoraLinear::frozen(base, key))
    };
    let linear = |layer: usize, group: &str, proj: &str, out: usize, inp: usize| -> Result<LoraLinear<B>> {
        frozen(&format!("layers.{layer}.{group}.{proj}.weight"), out, inp, linear_key(layer, proj))
    };
    // The table is the largest tensor of a small Gemma: under `gguf` it stays in the file's blocks too.
    // NF4 / int8 leave it dense, as bitsandbytes does (it quantizes linear layers only).
    // `narrow`: keep the table in bf16 when every value is a bf16 (no rounding; the backend must hold bf16).
    let table = |rel: &str, rows: usize, cols: usize, narrow: bool| -> Result<TokenTable<B>> {
        Ok(match quant {
            QuantKind::Gguf => {
                TokenTable::Packed(Arc::new(PackedWeight::Ggml(names.ggml(rel, [rows, cols])?)), DType::F32)
            }
            _ => {
                let t = names.get(rel, &[rows, cols])?;
                let exact = |x: &f32| half::bf16::from_f32(*x).to_f32().to_bits() == x.to_bits();
                if narrow && B::supports_dtype(device, DType::BF16) && t.data.iter().all(exact) {
                    let v = narrow_to_bf16(t.data);
                    TokenTable::Dense(Tensor::from_data(TensorData::new(v, [rows, cols]), (device, DType::BF16)))
                } else {
                    TokenTable::Dense(Tensor::from_data(TensorData::new(t.data, [rows, cols]), device))
                }
            }
        })
    };
    let embed_tokens = table("embed_tokens.weight", c.vocab_size, h, false)?;
    let n = c.num_hidden_layers;
    let per_layer = match c.per_layer_input {
        Some(ple) => Some(PerLayerEmbedding {
            // Gemma 4 E2B's is 262144 × 35·256 values: 8.75 GiB in f32, half in bf16, as published checkpoints
            // (and transformers) hold it; it is only ever looked up (`PerLayerEmbedding::inputs` casts rows).
            table: table("embed_tokens_per_layer.weight", ple.vocab, n * ple.hidden, true)?,
            // bitsandbytes quantizes this linear too (every nn.Linear but the LM head).
            projection: frozen("per_layer_model_projection.weight", n * ple.hidden, h, u64::MAX)?,
            norm: norm("per_layer_projection_norm.weight", ple.hidden)?,
            layers: n,
            dim: ple.hidden,
        }),
        None => None,
    };
    let mut layers = Vec::with_capacity(n);
    for i in 0..n {
        let spec = c.layer_specs[i];
        let d = spec.head_dim;
        let gemma1 = c.arch == Arch::Gemma;
        let gemma4 = c.arch == Arch::Gemma4;
        let qk_norm = matches!(c.arch, Arch::Gemma3 | Arch::Gemma4);
        let owns_kv = spec.kv_source.is_none();
        let attn_norm = |name: &str, on: bool| -> Result<Option<RmsNorm<B>>> {
            if on {
                Ok(Some(norm(&format!("layers.{i}.self_attn.{name}.weight"), d)?))
            } else {
                Ok(None)
            }
        };
        let self_attn = Attention {
            q_proj: linear(i, "self_attn", "q_proj", c.num_attention_heads * d, h)?,
            k_proj: if owns_kv { Some(linear(i, "self_attn", "k_proj", spec.kv_heads * d, h)?) } else { None },
            v_proj: if owns_kv && !spec.values_from_keys {
                Some(linear(i, "self_attn", "v_proj", spec.kv_heads * d, h)?)
            } else {
                None
            },
            o_proj: linear(i, "self_attn", "o_proj", h, c.num_attention_heads * d)?,
            q_norm: attn_norm("q_norm", qk_norm)?,
            k_norm: attn_norm("k_norm", qk_norm && owns_kv)?,
            v_norm: if gemma4 && owns_kv { Some(RmsNorm::unscaled(d, c.rms_norm_eps, device)) } else { None },
            num_heads: c.num_attention_heads,
            num_kv_heads: spec.kv_heads,
            head_dim: d,
            scaling: c.query_pre_attn_scalar.powf(-0.5),
            softcap: c.attn_logit_softcapping,
        };
        let inter = spec.intermediate_size;
        let mlp = Mlp {
            gate_proj: linear(i, "mlp", "gate_proj", inter, h)?,
            up_proj: linear(i, "mlp", "up_proj", inter, h)?,
            down_proj: linear(i, "mlp", "down_proj", h, inter)?,
        };
        let opt_norm = |name: &str| -> Result<Option<RmsNorm<B>>> {
            if gemma1 {
                Ok(None)
            } else {
                Ok(Some(norm(&format!("layers.{i}.{name}.weight"), h)?))
            }
        };
        let per_layer_block = match c.per_layer_input {
            Some(ple) => Some(PerLayerBlock {
                gate: frozen(
                    &format!("layers.{i}.per_layer_input_gate.weight"),
                    ple.hidden,
                    h,
                    linear_key(i, "per_layer_input_gate"),
                )?,
                projection: frozen(
                    &format!("layers.{i}.per_layer_projection.weight"),
                    h,
                    ple.hidden,
                    linear_key(i, "per_layer_projection"),
                )?,
                norm: norm(&format!("layers.{i}.post_per_layer_input_norm.weight"), h)?,
            }),
            None => None,
        };
        let moe = match c.moe {
            Some(m) => {
                let stack = |param: &str, out: usize, inp: usize| -> Result<LoraLinear<B>> {
                    let rel = format!("layers.{i}.experts.{param}");
                    let each: Vec<FrozenLinear<B>> = if matches!(quant, QuantKind::Gguf) {
                        // Each expert's rows of the file's 3-D tensor, in its own blocks.
                        names
                            .ggml_experts(&rel, [m.experts, out, inp])?
                            .into_iter()
                            .map(|w| FrozenLinear::Packed(Arc::new(PackedWeight::Ggml(w))))
                            .collect()
                    } else {
                        let t = names.get(&rel, &[m.experts, out, inp])?;
                        // bitsandbytes leaves 3-D parameters in 16-bit: so does loading its checkpoints as stored.
                        let q = if as_stored { QuantKind::None } else { quant };
                        t.data.chunks(out * inp).map(|w| FrozenLinear::new(w.to_vec(), [out, inp], q, device)).collect()
                    };
                    Ok(LoraLinear::frozen(
                        FrozenLinear::Experts(Arc::new(each)),
                        linear_key(i, &format!("experts.{param}")),
                    ))
                };
                let scale = names.get(&format!("layers.{i}.router.scale"), &[h])?.data;
                Some(MoeBlock {
                    router: Router {
                        norm: RmsNorm::unscaled(h, c.rms_norm_eps, device),
                        scale: Tensor::from_data(TensorData::new(scale, [h]), device),
                        // bitsandbytes quantizes the router's linear too; the experts (3-D parameters) it
                        // leaves unquantized, we quantize (they hold most of an MoE's memory).
                        proj: frozen(&format!("layers.{i}.router.proj.weight"), m.experts, h, linear_key(i, "router"))?,
                        per_expert_scale: names.get(&format!("layers.{i}.router.per_expert_scale"), &[m.experts])?.data,
                    },
                    gate_up: stack("gate_up_proj", 2 * m.intermediate, h)?,
                    down: stack("down_proj", h, m.intermediate)?,
                    pre_norm: norm(&format!("layers.{i}.pre_feedforward_layernorm_2.weight"), h)?,
                    post_norm_dense: norm(&format!("layers.{i}.post_feedforward_layernorm_1.weight"), h)?,
                    post_norm: norm(&format!("layers.{i}.post_feedforward_layernorm_2.weight"), h)?,
                    top_k: m.top_k,
                })
            }
            None => None,
        };
        let layer_scalar =
            if gemma4 { Some(names.get(&format!("layers.{i}.layer_scalar"), &[1])?.data[0]) } else { None };
        layers.push(DecoderLayer {
            self_attn,
            mlp,
            input_layernorm: norm(&format!("layers.{i}.input_layernorm.weight"), h)?,
            post_attention_layernorm: norm(&format!("layers.{i}.post_attention_layernorm.weight"), h)?,
            pre_feedforward_layernorm: opt_norm("pre_feedforward_layernorm")?,
            post_feedforward_layernorm: opt_norm("post_feedforward_layernorm")?,
            per_layer: per_layer_block,
            layer_scalar,
            moe,
        });
    }
    Ok(Gemma {
        config: c.clone(),
        embed_tokens,
        per_layer,
        layers,
        norm: norm("norm.weight", h)?,
        device: device.clone(),
    })
}
