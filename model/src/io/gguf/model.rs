//! [`GgufModel`]: a Gemma / Gemma 2 / Gemma 3 / Gemma 4 GGUF seen as a [`WeightSource`] under Hugging Face
//! names.
//!
//! Conventions checked against llama.cpp's `convert_hf_to_gguf.py` (GemmaModel, Gemma2Model, Gemma3Model),
//! gguf-py's tensor name map and transformers' GGUF loader (`modeling_gguf_pytorch_utils.py`,
//! `Gemma2TensorProcessor`, used for both gemma2 and gemma3):
//! * The converter adds 1 to every HF tensor whose name ends in `norm.weight` (Gemma's RMSNorm computes
//!   `x * (1 + w)`; llama.cpp's computes `x * w`), so every GGUF `*norm.weight` tensor (attn_norm, ffn_norm,
//!   post_attention_norm, post_ffw_norm, attn_q_norm, attn_k_norm, output_norm) is `1 + w`; we subtract 1, as
//!   transformers does (`if "norm.weight" in name: weights = weights - 1`).
//! * No q/k row permutation: that is done only by the llama-family converters (`LlamaModel.permute`), which the
//!   Gemma classes do not inherit from; transformers applies its reverse permutation only for `llama`.
//! * Gemma 1's FFN_NORM (`ffn_norm`) is HF `post_attention_layernorm` (the norm before the MLP). For Gemma 2/3,
//!   `ffn_norm` is `pre_feedforward_layernorm` and HF `post_attention_layernorm` is `post_attention_norm`.
//! * `token_embd.weight` is stored unscaled (the `sqrt(hidden)` factor is applied in the forward pass in both).
//!
//! Gemma 4 (`gemma4`, llama.cpp's `Gemma4Model` converter; its names and metadata are in [`super::gemma4`]):
//! * No norm shift: Gemma 4's RMSNorm scales by `w` itself (the converter's `norm_shift` is 0).
//! * Every other tensor is stored as transformers holds it, under gguf-py's names: the per-layer-input table
//!   unscaled (both scale it by `sqrt(hidden_size_per_layer_input)` in the forward pass), `layer_scalar` as
//!   `blk.N.layer_output_scale.weight`, the router's `scale` and `per_expert_scale` as
//!   `blk.N.ffn_gate_inp.scale` / `blk.N.ffn_down_exps.scale`, the experts as 3-D tensors in HF's
//!   `[experts, out, in]` order (`ffn_gate_up_exps`: each expert's gate rows then its up rows).
//! * `rope_freqs.weight` is generated (not a weight): it encodes the global layers' partial rotation and is
//!   read into the config.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::arch::{f32_to_json_f64, Source};
pub use super::arch::{GemmaArch, GGUF_NORM_SHIFT};
use super::file::GgufFile;
use crate::error::{ModelError, Result};
use crate::io::weights::{HostTensor, WeightSource};
use crate::quant::ggml::GgmlWeight;

/// The HF name of a GGUF tensor for this architecture, and whether it is a shifted RMSNorm weight.
pub fn gguf_to_hf_name(arch: GemmaArch, gguf: &str) -> Option<(String, bool)> {
    let shift = arch.shifts_norms() && gguf.ends_with("norm.weight");
    let direct = match (gguf, arch) {
        ("token_embd.weight", _) => Some("model.embed_tokens.weight"),
        ("output_norm.weight", _) => Some("model.norm.weight"),
        ("output.weight", _) => Some("lm_head.weight"),
        ("per_layer_token_embd.weight", GemmaArch::Gemma4) => Some("model.embed_tokens_per_layer.weight"),
        ("per_layer_model_proj.weight", GemmaArch::Gemma4) => Some("model.per_layer_model_projection.weight"),
        ("per_layer_proj_norm.weight", GemmaArch::Gemma4) => Some("model.per_layer_projection_norm.weight"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some((n.to_owned(), shift));
    }
    let (layer, tail) = split_layer(gguf)?;
    use GemmaArch::*;
    let hf = match (tail, arch) {
        ("attn_q.weight", _) => "self_attn.q_proj.weight",
        ("attn_k.weight", _) => "self_attn.k_proj.weight",
        ("attn_v.weight", _) => "self_attn.v_proj.weight",
        ("attn_output.weight", _) => "self_attn.o_proj.weight",
        ("ffn_gate.weight", _) => "mlp.gate_proj.weight",
        ("ffn_up.weight", _) => "mlp.up_proj.weight",
        ("ffn_down.weight", _) => "mlp.down_proj.weight",
        ("attn_norm.weight", _) => "input_layernorm.weight",
        ("ffn_norm.weight", Gemma) => "post_attention_layernorm.weight",
        ("ffn_norm.weight", _) => "pre_feedforward_layernorm.weight",
        ("post_attention_norm.weight", Gemma2 | Gemma3 | Gemma4) => "post_attention_layernorm.weight",
        ("post_ffw_norm.weight", Gemma2 | Gemma3 | Gemma4) => "post_feedforward_layernorm.weight",
        ("attn_q_norm.weight", Gemma3 | Gemma4) => "self_attn.q_norm.weight",
        ("attn_k_norm.weight", Gemma3 | Gemma4) => "self_attn.k_norm.weight",
        // Gemma 4: the layer's output scale, per-layer inputs, and the mixture of experts.
        ("layer_output_scale.weight", Gemma4) => "layer_scalar",
        ("inp_gate.weight", Gemma4) => "per_layer_input_gate.weight",
        ("proj.weight", Gemma4) => "per_layer_projection.weight",
        ("post_norm.weight", Gemma4) => "post_per_layer_input_norm.weight",
        ("ffn_gate_inp.weight", Gemma4) => "router.proj.weight",
        ("ffn_gate_inp.scale", Gemma4) => "router.scale",
        ("ffn_down_exps.scale", Gemma4) => "router.per_expert_scale",
        ("ffn_gate_up_exps.weight", Gemma4) => "experts.gate_up_proj",
        ("ffn_down_exps.weight", Gemma4) => "experts.down_proj",
        ("pre_ffw_norm_2.weight", Gemma4) => "pre_feedforward_layernorm_2.weight",
        ("post_ffw_norm_1.weight", Gemma4) => "post_feedforward_layernorm_1.weight",
        ("post_ffw_norm_2.weight", Gemma4) => "post_feedforward_layernorm_2.weight",
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), shift))
}

/// `blk.N.rest` -> (N, rest); `None` for other names and for non-canonical numbers ("01", "+1").
fn split_layer(gguf: &str) -> Option<(usize, &str)> {
    let rest = gguf.strip_prefix("blk.")?;
    let (layer_raw, tail) = rest.split_once('.')?;
    let layer: usize = layer_raw.parse().ok()?;
    if layer.to_string() != layer_raw {
        return None;
    }
    Some((layer, tail))
}

/// A Gemma-family GGUF as a [`WeightSource`] with Hugging Face names and conventions.
pub struct GgufModel {
    pub(super) file: GgufFile,
    arch: GemmaArch,
    /// HF name -> where its values are.
    map: BTreeMap<String, Source>,
}

impl std::fmt::Debug for GgufModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModel").field("file", &self.file).field("arch", &self.arch).finish()
    }
}

impl GgufModel {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel> {
        Self::new(GgufFile::open(path)?)
    }

    pub fn new(file: GgufFile) -> Result<GgufModel> {
        let arch_name = file.architecture()?;
        let arch = GemmaArch::from_gguf(arch_name).ok_or_else(|| ModelError::Config {
            path: file.path().to_path_buf(),
            key: "general.architecture".into(),
            msg: format!("architecture `{arch_name}` is not supported (supported: gemma, gemma2, gemma3, gemma4)"),
        })?;
        let mut map = BTreeMap::new();
        for t in file.tensors() {
            if let Some((hf, shift)) = gguf_to_hf_name(arch, &t.name) {
                map.insert(hf, Source::Tensor { gguf: t.name.clone(), shift });
            }
        }
        if !map.contains_key("model.embed_tokens.weight") {
            return Err(ModelError::MissingTensor {
                path: file.path().to_path_buf(),
                name: "token_embd.weight (model.embed_tokens.weight)".into(),
            });
        }
        if arch == GemmaArch::Gemma4 {
            super::gemma4::add_derived_sources(&file, &mut map)?;
        }
        Ok(GgufModel { file, arch, map })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
    pub fn arch(&self) -> GemmaArch {
        self.arch
    }

    /// The GGUF name behind an HF name (for experts stored as separate gate and up tensors: the gate's; for a
    /// `layer_scalar` the file does not store: none).
    pub fn gguf_name(&self, hf_name: &str) -> Option<&str> {
        match self.map.get(hf_name)? {
            Source::Tensor { gguf, .. } => Some(gguf),
            Source::GateUp { gate, .. } => Some(gate),
            Source::One => None,
        }
    }

    /// GGUF tensors that have no HF name here (e.g. `rope_freqs.weight`); they are not served.
    pub fn unmapped_tensors(&self) -> Vec<&str> {
        let used: std::collections::BTreeSet<&str> = self
            .map
            .values()
            .flat_map(|s| match s {
                Source::Tensor { gguf, .. } => vec![gguf.as_str()],
                Source::GateUp { gate, up } => vec![gate.as_str(), up.as_str()],
                Source::One => vec![],
            })
            .collect();
        self.file.tensors().iter().map(|t| t.name.as_str()).filter(|n| !used.contains(n)).collect()
    }

    fn mapped(&self, name: &str) -> Result<&Source> {
        self.map
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.file.path().to_path_buf(), name: name.to_owned() })
    }

    /// The tokenizer transformers builds for this file (see `super::tokenizer`).
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        crate::io::gguf::tokenizer::tokenizer_from_gguf(&self.file)
    }

    /// `tokenizer.chat_template`, when the file has one.
    pub fn chat_template(&self) -> Option<String> {
        self.file.get_str("tokenizer.chat_template").ok().flatten().map(str::to_owned)
    }

    pub(super) fn key(&self, suffix: &str) -> String {
        format!("{}.{}", self.arch.gguf_name(), suffix)
    }
    pub(super) fn req_u32(&self, suffix: &str) -> Result<u32> {
        let key = self.key(suffix);
        self.file.get_u32(&key)?.ok_or_else(|| ModelError::Config {
            path: self.file.path().to_path_buf(),
            key,
            msg: "missing".into(),
        })
    }
    pub(super) fn opt_u32(&self, suffix: &str) -> Result<Option<u32>> {
        self.file.get_u32(&self.key(suffix))
    }
    pub(super) fn opt_f32(&self, suffix: &str) -> Result<Option<f32>> {
        self.file.get_f32(&self.key(suffix))
    }

    /// A `config.json` as transformers 4.x writes it for this model, rebuilt from the GGUF metadata.
    ///
    /// Values GGUF does not store are filled as transformers' GGUF loader leaves them (its config class
    /// defaults) or as llama.cpp hard-codes them; each is marked below.
    ///
    /// Gemma 4 files are read by [`super::gemma4`]: there every value comes from the file (a model setting it
    /// does not record is an error naming the key), as transformers 5.x writes a `gemma4_text` config.
    pub fn config_json(&self) -> Result<Value> {
        let arch = self.arch;
        if arch == GemmaArch::Gemma4 {
            return super::gemma4::config_json(&self.file);
        }
        let hidden = self.req_u32("embedding_length")?;
        let layers = self.req_u32("block_count")?;
        let heads = self.req_u32("attention.head_count")?;
        let kv_heads = self.opt_u32("attention.head_count_kv")?.unwrap_or(heads);
        // key_length == value_length == head_dim for Gemma (convert_hf_to_gguf writes head_dim into both).
        let head_dim = match self.opt_u32("attention.key_length")? {
            Some(k) => k,
            None => hidden / heads.max(1),
        };
        let intermediate = self.req_u32("feed_forward_length")?;
        let ctx = self.opt_u32("context_length")?;
        // f32 in the file; widen through its shortest decimal so 1e-6 reads as 1e-06, not 9.99999997e-07.
        let eps = self.opt_f32("attention.layer_norm_rms_epsilon")?.map(f32_to_json_f64).unwrap_or(1e-6);
        let rope_theta = self.opt_f32("rope.freq_base")?.map(f32_to_json_f64).unwrap_or(10_000.0);
        // transformers takes vocab_size from the number of tokens; the embedding rows are what the weights need.
        let vocab = match self.file.tensor_info("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
            _ => self.file.get_array("tokenizer.ggml.tokens")?.map(|a| a.len()).unwrap_or(0),
        };
        let tok = |k: &str| -> Result<Option<u32>> { self.file.get_u32(&format!("tokenizer.ggml.{k}")) };
        let bos = tok("bos_token_id")?.unwrap_or(2);
        let eos = tok("eos_token_id")?.unwrap_or(1);
        let pad = tok("padding_token_id")?.unwrap_or(0);
        let tie = self.file.tensor_info("output.weight").is_none();

        let mut c = serde_json::Map::new();
        c.insert("architectures".into(), json!([arch.hf_class()]));
        c.insert("model_type".into(), json!(arch.model_type()));
        c.insert("vocab_size".into(), json!(vocab));
        c.insert("hidden_size".into(), json!(hidden));
        c.insert("intermediate_size".into(), json!(intermediate));
        c.insert("num_hidden_layers".into(), json!(layers));
        c.insert("num_attention_heads".into(), json!(heads));
        c.insert("num_key_value_heads".into(), json!(kv_heads));
        c.insert("head_dim".into(), json!(head_dim));
        c.insert("rms_norm_eps".into(), json!(eps));
        c.insert("rope_theta".into(), json!(rope_theta));
        // Class defaults when GGUF has no context length: Gemma/Gemma2 8192, Gemma3 131072.
        let default_ctx = if arch == GemmaArch::Gemma3 { 131_072 } else { 8192 };
        c.insert("max_position_embeddings".into(), json!(ctx.unwrap_or(default_ctx)));
        c.insert("bos_token_id".into(), json!(bos));
        c.insert("eos_token_id".into(), json!(eos));
        c.insert("pad_token_id".into(), json!(pad));
        // Not in GGUF: every Gemma uses tanh-approximated GELU (llama.cpp: LLM_FFN_GELU); class default.
        c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        c.insert("hidden_act".into(), json!("gelu_pytorch_tanh"));
        // As transformers' loader decides it: tied unless the file has an `output.weight`.
        c.insert("tie_word_embeddings".into(), json!(tie));
        // Not in GGUF; class defaults.
        c.insert("attention_bias".into(), json!(false));
        c.insert("attention_dropout".into(), json!(0.0));
        c.insert("initializer_range".into(), json!(0.02));
        c.insert("use_cache".into(), json!(true));
        c.insert("torch_dtype".into(), json!("float32"));

        if arch != GemmaArch::Gemma {
            // Not in GGUF. transformers' loader keeps the class default (256); llama.cpp scales queries by
            // 1/sqrt(head_dim), except for the 27B models, where it uses 1/sqrt(hidden / heads) -- which is what
            // their HF configs say (Gemma 2 27B: 144, Gemma 3 27B: 168). We follow llama.cpp, which agrees with
            // transformers' default for every model whose head_dim is 256 (all but those two).
            let is_27b = (arch == GemmaArch::Gemma2 && layers == 46) || (arch == GemmaArch::Gemma3 && layers == 62);
            let qpas = if is_27b { hidden / heads.max(1) } else { head_dim };
            c.insert("query_pre_attn_scalar".into(), json!(qpas));
            let sliding = self.opt_u32("attention.sliding_window")?;
            // Not in GGUF: the layer pattern. llama.cpp hard-codes it (gemma2: every other layer sliding,
            // starting with layer 0; gemma3: 5 sliding then 1 full), as do the transformers config classes.
            let pattern: usize = if arch == GemmaArch::Gemma2 { 2 } else { 6 };
            let layer_types: Vec<&str> = (0..layers as usize)
                .map(|i| if (i + 1) % pattern != 0 { "sliding_attention" } else { "full_attention" })
                .collect();
            c.insert("layer_types".into(), json!(layer_types));
            if arch == GemmaArch::Gemma2 {
                // Written by convert_hf_to_gguf for gemma2; defaults are Gemma2Config's.
                let attn_cap = self.opt_f32("attn_logit_softcapping")?.map(f32_to_json_f64).unwrap_or(50.0);
                let final_cap = self.opt_f32("final_logit_softcapping")?.map(f32_to_json_f64).unwrap_or(30.0);
                c.insert("attn_logit_softcapping".into(), json!(attn_cap));
                c.insert("final_logit_softcapping".into(), json!(final_cap));
                c.insert("sliding_window".into(), json!(sliding.unwrap_or(4096)));
                c.insert("cache_implementation".into(), json!("hybrid"));
            } else {
                // Gemma 3 has no attention soft-capping; a final one only when the file says so.
                let final_cap = self.opt_f32("final_logit_softcapping")?.map(f32_to_json_f64);
                c.insert("attn_logit_softcapping".into(), Value::Null);
                c.insert("final_logit_softcapping".into(), json!(final_cap));
                c.insert("sliding_window".into(), json!(sliding.unwrap_or(4096)));
                c.insert("sliding_window_pattern".into(), json!(pattern));
                c.insert("_sliding_window_pattern".into(), json!(pattern));
                // Not in GGUF: the local (sliding) layers' RoPE base. llama.cpp hard-codes 10000
                // (rope_freq_base_train_swa) for gemma3, as does Gemma3TextConfig's default.
                c.insert("rope_local_base_freq".into(), json!(10_000.0));
                // Linear RoPE scaling of the global layers (4B/12B/27B: factor 8), stored by the converter as
                // `gemma3.rope.scaling.type` / `.factor`; absent (null) for 270M and 1B.
                let scaling_type = self.file.get_str(&self.key("rope.scaling.type"))?;
                let factor = self.opt_f32("rope.scaling.factor")?;
                let rope_scaling = match factor {
                    Some(f) if f != 1.0 && f != 0.0 && scaling_type != Some("none") => {
                        json!({"rope_type": scaling_type.unwrap_or("linear"), "factor": f32_to_json_f64(f)})
                    }
                    _ => Value::Null,
                };
                c.insert("rope_scaling".into(), rope_scaling);
                c.insert("use_bidirectional_attention".into(), json!(false));
                c.insert("cache_implementation".into(), json!("hybrid"));
            }
        }
        Ok(Value::Object(c))
    }
}

impl WeightSource for GgufModel {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(match self.mapped(name)? {
            Source::Tensor { gguf, .. } => self.file.tensor_info(gguf).expect("mapped tensors exist").shape(),
            Source::GateUp { gate, .. } => {
                let mut s = self.file.tensor_info(gate).expect("mapped tensors exist").shape();
                s[1] *= 2;
                s
            }
            Source::One => vec![1],
        })
    }

    fn get(&self, name: &str) -> Result<HostTensor> {
        match self.mapped(name)? {
            Source::Tensor { gguf, shift } => {
                let mut t = self.file.dequantize(gguf).map_err(|e| with_hf_name(e, name))?;
                if *shift {
                    for v in &mut t.data {
                        *v -= GGUF_NORM_SHIFT;
                    }
                }
                Ok(t)
            }
            Source::GateUp { gate, up } => {
                let g = self.file.dequantize(gate).map_err(|e| with_hf_name(e, name))?;
                let u = self.file.dequantize(up).map_err(|e| with_hf_name(e, name))?;
                let (experts, per) = (g.shape[0], g.data.len() / g.shape[0].max(1));
                let mut data = Vec::with_capacity(2 * g.data.len());
                for e in 0..experts {
                    data.extend_from_slice(&g.data[e * per..(e + 1) * per]);
                    data.extend_from_slice(&u.data[e * per..(e + 1) * per]);
                }
                Ok(HostTensor::new(vec![g.shape[0], 2 * g.shape[1], g.shape[2]], data))
            }
            Source::One => Ok(HostTensor::new(vec![1], vec![1.0])),
        }
    }

    fn ggml(&self, name: &str) -> Result<Option<GgmlWeight>> {
        let Source::Tensor { gguf, shift } = self.mapped(name)? else { return Ok(None) };
        let shape = self.file.tensor_info(gguf).expect("mapped tensors exist").shape();
        if *shift || shape.len() != 2 {
            return Ok(None);
        }
        let (info, bytes) = self.blocks(gguf, name)?;
        GgmlWeight::new(info.dtype, [shape[0], shape[1]], bytes.to_vec())
            .map(Some)
            .map_err(|msg| self.blocks_err(gguf, name, msg))
    }

    fn ggml_experts(&self, name: &str) -> Result<Option<Vec<GgmlWeight>>> {
        let parts: Vec<&str> = match self.mapped(name)? {
            Source::Tensor { gguf, .. } => vec![gguf],
            Source::GateUp { gate, up } => vec![gate, up],
            Source::One => return Ok(None),
        };
        let first = self.file.tensor_info(parts[0]).expect("mapped tensors exist");
        let [experts, rows, cols] = match first.shape()[..] {
            [e, r, c] => [e, r, c],
            _ => return Ok(None),
        };
        // Each part is `experts` runs of `rows` whole rows of blocks; expert e's rows of every part, in order.
        let mut each: Vec<Vec<u8>> = vec![Vec::new(); experts];
        for part in &parts {
            let info = self.file.tensor_info(part).expect("mapped tensors exist");
            if info.dtype != first.dtype {
                return Err(ModelError::format(
                    self.file.path(),
                    format!(
                        "`{}` is {} but `{part}` is {}: --quant gguf needs both halves of {name} in one type \
                         (--quant nf4 re-quantizes them instead)",
                        parts[0], first.dtype, info.dtype
                    ),
                ));
            }
            let (_, bytes) = self.blocks(part, name)?;
            let per = bytes.len() / experts.max(1);
            for (e, out) in each.iter_mut().enumerate() {
                out.extend_from_slice(&bytes[e * per..(e + 1) * per]);
            }
        }
        let out_rows = rows * parts.len();
        each.into_iter()
            .map(|bytes| {
                GgmlWeight::new(first.dtype, [out_rows, cols], bytes)
                    .map_err(|msg| self.blocks_err(parts[0], name, msg))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

impl GgufModel {
    /// A tensor's info and bytes, with an error naming the HF tensor too where its type cannot be read.
    fn blocks(&self, gguf: &str, hf: &str) -> Result<(&super::file::TensorInfo, &[u8])> {
        let info = self.file.tensor_info(gguf).expect("mapped tensors exist");
        if !info.dtype.is_supported() {
            return Err(with_hf_name(self.file.unsupported(info), hf));
        }
        Ok((info, self.file.tensor_bytes(gguf)?))
    }
    fn blocks_err(&self, gguf: &str, hf: &str, msg: String) -> ModelError {
        ModelError::format(
            self.file.path(),
            format!("tensor `{gguf}` ({hf}): {msg}; --quant nf4 re-quantizes it instead"),
        )
    }
}

/// An unreadable-type error that also names the HF tensor, so the message says what the caller asked for.
fn with_hf_name(e: ModelError, hf: &str) -> ModelError {
    match e {
        ModelError::UnsupportedDtype { path, name: gguf, dtype, supported } => {
            ModelError::UnsupportedDtype { path, name: format!("{gguf} ({hf})"), dtype, supported }
        }
        other => other,
    }
}
