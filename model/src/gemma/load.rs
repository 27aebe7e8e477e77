//! Building a `Gemma<B>` from a `WeightSource`: every decoder linear becomes a frozen dense/NF4/int8 base
//! (the same set of layers transformers + bitsandbytes quantize); embeddings and norms stay f32.
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
use crate::nn::norm::RmsNorm;
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

    fn check_shape(&self, name: String, expected: &[usize], actual: Vec<usize>) -> Result<()> {
        if actual != expected {
            let path = self.src.path().to_path_buf();
            return Err(ModelError::Shape { path, name, expected: expected.to_vec(), actual });
        }
        Ok(())
    }
}

/// Unique per (layer, projection): keys LoRA init and dropout streams.
pub fn linear_key(layer: usize, proj: &str) -> u64 {
    let p = crate::nn::lora::TARGETS.iter().position(|t| *t == proj).unwrap_or(7) as u64;
    (layer as u64) * 16 + p + 1
}

pub fn load_gemma<B: GemmaBackend>(
    config: &GemmaConfig,
    src: &dyn WeightSource,
    quant: QuantKind,
    device: &B::Device,
) -> Result<Gemma<B>> {
    let names = Names::new(src);
    let c = config;
    let (h, d) = (c.hidden_size, c.head_dim);
    let norm = |rel: &str, dim: usize| -> Result<RmsNorm<B>> {
        Ok(RmsNorm::from_weight(&names.get(rel, &[dim])?.data, c.rms_norm_eps, device))
    };
    let linear = |layer: usize, group: &str, proj: &str, out: usize, inp: usize| -> Result<LoraLinear<B>> {
        let rel = format!("layers.{layer}.{group}.{proj}.weight");
        let base = match quant {
            QuantKind::Gguf => FrozenLinear::Packed(Arc::new(PackedWeight::Ggml(names.ggml(&rel, [out, inp])?))),
            _ => FrozenLinear::new(names.get(&rel, &[out, inp])?.data, [out, inp], quant, device),
        };
        Ok(LoraLinear::frozen(base, linear_key(layer, proj)))
    };
    // The table is the largest tensor of a small Gemma: under `gguf` it stays in the file's blocks too.
    // NF4 / int8 leave it dense, as bitsandbytes does (it quantizes linear layers only).
    let embed_tokens = match quant {
        QuantKind::Gguf => {
            let w = names.ggml("embed_tokens.weight", [c.vocab_size, h])?;
            TokenTable::Packed(Arc::new(PackedWeight::Ggml(w)), DType::F32)
        }
        _ => {
            let embed = names.get("embed_tokens.weight", &[c.vocab_size, h])?;
            TokenTable::Dense(Tensor::from_data(TensorData::new(embed.data, [c.vocab_size, h]), device))
        }
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let gemma23 = c.arch != Arch::Gemma;
        let self_attn = Attention {
            q_proj: linear(i, "self_attn", "q_proj", c.num_attention_heads * d, h)?,
            k_proj: linear(i, "self_attn", "k_proj", c.num_key_value_heads * d, h)?,
            v_proj: linear(i, "self_attn", "v_proj", c.num_key_value_heads * d, h)?,
            o_proj: linear(i, "self_attn", "o_proj", h, c.num_attention_heads * d)?,
            q_norm: if c.arch == Arch::Gemma3 {
                Some(norm(&format!("layers.{i}.self_attn.q_norm.weight"), d)?)
            } else {
                None
            },
            k_norm: if c.arch == Arch::Gemma3 {
                Some(norm(&format!("layers.{i}.self_attn.k_norm.weight"), d)?)
            } else {
                None
            },
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: d,
            scaling: c.query_pre_attn_scalar.powf(-0.5),
            softcap: c.attn_logit_softcapping,
        };
        let mlp = Mlp {
            gate_proj: linear(i, "mlp", "gate_proj", c.intermediate_size, h)?,
            up_proj: linear(i, "mlp", "up_proj", c.intermediate_size, h)?,
            down_proj: linear(i, "mlp", "down_proj", h, c.intermediate_size)?,
        };
        let opt_norm = |name: &str| -> Result<Option<RmsNorm<B>>> {
            if gemma23 {
                Ok(Some(norm(&format!("layers.{i}.{name}.weight"), h)?))
            } else {
                Ok(None)
            }
        };
        layers.push(DecoderLayer {
            self_attn,
            mlp,
            input_layernorm: norm(&format!("layers.{i}.input_layernorm.weight"), h)?,
            post_attention_layernorm: norm(&format!("layers.{i}.post_attention_layernorm.weight"), h)?,
            pre_feedforward_layernorm: opt_norm("pre_feedforward_layernorm")?,
            post_feedforward_layernorm: opt_norm("post_feedforward_layernorm")?,
        });
    }
    Ok(Gemma { config: c.clone(), embed_tokens, layers, norm: norm("norm.weight", h)?, device: device.clone() })
}
