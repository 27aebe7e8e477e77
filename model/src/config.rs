//! Gemma architecture description, read from a transformers `config.json`.
//!
//! One `GemmaConfig` describes all three generations; the per-generation differences are explicit fields
//! (`arch`, softcapping, layer pattern, RoPE bases) rather than separate model types, because the layers
//! themselves are the same blocks arranged slightly differently (see `decoder.rs`).
//!
//! `config.json` comes in two dialects and both are read:
//! - transformers 4.x, as the published checkpoints are written: `rope_theta`, `rope_local_base_freq`,
//!   `rope_scaling`, `sliding_window_pattern` (Gemma 3) or the implicit every-other-layer pattern (Gemma 2);
//! - transformers 5.x: `rope_parameters` (per layer type for Gemma 3) and an explicit `layer_types` list.
use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Gemma 1 (`model_type = "gemma"`).
    Gemma,
    /// Gemma 2 (`gemma2`).
    Gemma2,
    /// Gemma 3 text (`gemma3_text`, or the `text_config` of a `gemma3` checkpoint).
    Gemma3,
    /// Gemma 4 text (`gemma4_text`, or the `text_config` of a `gemma4` checkpoint); see [`LayerSpec`] and
    /// [`PerLayerInput`] for what its layers add.
    Gemma4,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
            Arch::Gemma4 => "gemma4_text",
        }
    }

    /// `general.architecture` in llama.cpp's GGUF files.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Gemma4 => "gemma4",
        }
    }

    /// Gemma 1-3's RMSNorm scales by `1 + w`; Gemma 4's by `w` itself.
    pub fn norm_adds_one(self) -> bool {
        self != Arch::Gemma4
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    Full,
    Sliding,
}

/// RoPE frequencies of one layer type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// Linear position interpolation: positions are divided by this factor (1.0 = none).
    pub linear_factor: f64,
    /// transformers' `proportional` RoPE (Gemma 4's global layers): only the first
    /// `floor(fraction · head_dim / 2)` frequency pairs rotate, with exponents over the whole head_dim; the
    /// rest have frequency 0 (pass through). 1.0 = every pair rotates (default RoPE).
    pub rotated_fraction: f64,
}

impl RopeConfig {
    pub fn plain(theta: f64) -> Self {
        Self { theta, linear_factor: 1.0, rotated_fraction: 1.0 }
    }
}

/// The attention and MLP shape of one decoder layer. Gemma 1-3 layers all have the model's; Gemma 4's global
/// layers have their own head_dim and KV heads (`per_layer_config`), its last `num_kv_shared_layers` layers
/// reuse an earlier layer's keys and values, and those layers' MLP may be twice as wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    pub head_dim: usize,
    pub kv_heads: usize,
    /// Gemma 4 `attention_k_eq_v` on a global layer: no v_proj, the values are the key projection (before the
    /// key norm and RoPE).
    pub values_from_keys: bool,
    /// A KV-shared layer: no k/v projections, it attends over the keys and values of this earlier layer.
    pub kv_source: Option<usize>,
    pub intermediate_size: usize,
}

/// Gemma 4's mixture of experts (`enable_moe_block`): beside each layer's dense MLP, `experts` GeGLU experts
/// of width `intermediate`, of which a router picks `top_k` per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeSpec {
    pub experts: usize,
    pub top_k: usize,
    pub intermediate: usize,
}

/// Gemma 4's per-layer inputs (PLE): a second token table `[vocab, layers · hidden]` plus a projection of the
/// embeddings, giving each decoder layer a `hidden`-wide input of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerLayerInput {
    pub hidden: usize,
    pub vocab: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Gemma's head_dim is not hidden/heads (2B: 2048/8 heads but head_dim 256).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` (Gemma 1: head_dim).
    pub query_pre_attn_scalar: f64,
    /// Gemma 2: `tanh(s / cap) * cap` on attention scores.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: the same on the final logits.
    pub final_logit_softcapping: Option<f64>,
    /// Keys at distance >= window from the query are invisible in sliding layers.
    pub sliding_window: Option<usize>,
    pub layer_types: Vec<LayerType>,
    pub rope_global: RopeConfig,
    /// Gemma 3 sliding layers use their own (smaller) base; other generations use the global one.
    pub rope_local: RopeConfig,
    pub tie_word_embeddings: bool,
    /// One per layer.
    pub layer_specs: Vec<LayerSpec>,
    /// Gemma 4 only.
    pub per_layer_input: Option<PerLayerInput>,
    /// Gemma 4 only: every layer has the experts.
    pub moe: Option<MoeSpec>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The JSON it was read from (written back unchanged by merge/convert).
    pub raw: Value,
}

struct Reader<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl<'a> Reader<'a> {
    fn err(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Config { path: self.path.to_path_buf(), key: key.to_string(), msg: msg.into() }
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key).ok_or_else(|| self.err(key, "missing (required for this architecture)"))?;
        v.as_u64().map(|x| x as usize).ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}")))
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_some() {
            self.usize(key)
        } else {
            Ok(default)
        }
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|x| x as u32).ok_or_else(|| self.err(key, "expected token ids")))
                .collect(),
            Some(v) => {
                v.as_u64().map(|x| vec![x as u32]).ok_or_else(|| self.err(key, format!("expected a token id, got {v}")))
            }
        }
    }
}

const SUPPORTED: &str = "gemma, gemma2, gemma3_text, gemma3, gemma4_text or gemma4";

impl GemmaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("not valid JSON: {e}")))?;
        Self::from_json(&v, path)
    }

    /// `path` is only used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let top = Reader { path, v };
        let model_type = top.get("model_type").and_then(Value::as_str).unwrap_or("");
        // A multimodal `gemma3` checkpoint keeps the language model's config in `text_config`.
        let (arch, v) = match model_type {
            "gemma" => (Arch::Gemma, v),
            "gemma2" => (Arch::Gemma2, v),
            "gemma3_text" => (Arch::Gemma3, v),
            "gemma3" => (
                Arch::Gemma3,
                top.get("text_config")
                    .ok_or_else(|| top.err("text_config", "a `gemma3` config must have a text_config"))?,
            ),
            "gemma4_text" => (Arch::Gemma4, v),
            "gemma4" => (
                Arch::Gemma4,
                top.get("text_config")
                    .ok_or_else(|| top.err("text_config", "a `gemma4` config must have a text_config"))?,
            ),
            "" => return Err(top.err("model_type", format!("missing; expected one of {SUPPORTED}"))),
            other => {
                return Err(top.err("model_type", format!("`{other}` is not supported; expected one of {SUPPORTED}")))
            }
        };
        let r = Reader { path, v };
        if arch == Arch::Gemma4 {
            check_gemma4(&r)?;
        }
        let hidden_size = r.usize("hidden_size")?;
        let num_attention_heads = r.usize("num_attention_heads")?;
        let num_hidden_layers = r.usize("num_hidden_layers")?;
        let head_dim = r.usize_or("head_dim", hidden_size / num_attention_heads.max(1))?;
        let num_key_value_heads = r.usize_or("num_key_value_heads", num_attention_heads)?;
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(r.err(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must be positive and divide num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let sliding_window = match arch {
            Arch::Gemma => None,
            // transformers' Gemma4TextConfig default.
            Arch::Gemma4 => Some(r.usize_or("sliding_window", 512)?),
            _ => r.get("sliding_window").and_then(Value::as_u64).map(|x| x as usize),
        };
        let layer_types = read_layer_types(&r, arch, num_hidden_layers)?;
        let (rope_global, rope_local) = read_rope(&r, arch)?;
        let softcap = |key: &str| -> Result<Option<f64>> {
            Ok(match arch {
                Arch::Gemma2 | Arch::Gemma3 => r.f64_opt(key)?.filter(|c| *c > 0.0),
                Arch::Gemma4 if key == "final_logit_softcapping" => r.f64_opt(key)?.filter(|c| *c > 0.0),
                Arch::Gemma | Arch::Gemma4 => None,
            })
        };
        let intermediate_size = r.usize("intermediate_size")?;
        let base = LayerSpec {
            head_dim,
            kv_heads: num_key_value_heads,
            values_from_keys: false,
            kv_source: None,
            intermediate_size,
        };
        let (layer_specs, per_layer_input) = match arch {
            Arch::Gemma4 => read_gemma4_layers(&r, base, &layer_types, num_attention_heads)?,
            _ => (vec![base; num_hidden_layers], None),
        };
        let mut eos = top.ids("eos_token_id")?;
        if eos.is_empty() {
            eos = r.ids("eos_token_id")?;
        }
        let single = |key: &str| -> Result<Option<u32>> {
            let ids = if top.get(key).is_some() { top.ids(key)? } else { r.ids(key)? };
            Ok(ids.first().copied())
        };
        Ok(GemmaConfig {
            arch,
            vocab_size: r.usize("vocab_size")?,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: r.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings: r.usize_or("max_position_embeddings", 8192)?,
            query_pre_attn_scalar: match arch {
                Arch::Gemma => head_dim as f64,
                // Gemma 4 scales scores by 1 (its q/k norms fix their size): scalar 1 gives `1^-0.5`.
                Arch::Gemma4 => 1.0,
                _ => r.f64_opt("query_pre_attn_scalar")?.unwrap_or(head_dim as f64),
            },
            attn_logit_softcapping: softcap("attn_logit_softcapping")?,
            final_logit_softcapping: softcap("final_logit_softcapping")?,
            sliding_window,
            layer_types,
            rope_global,
            rope_local,
            tie_word_embeddings: top.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
            layer_specs,
            per_layer_input,
            moe: if arch == Arch::Gemma4 { read_moe(&r)? } else { None },
            bos_token_id: single("bos_token_id")?,
            eos_token_ids: eos,
            pad_token_id: single("pad_token_id")?,
            raw: top.v.clone(),
        })
    }

    pub fn num_queries_per_kv(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    pub fn rope_for(&self, layer: usize) -> RopeConfig {
        match self.layer_types[layer] {
            LayerType::Full => self.rope_global,
            LayerType::Sliding => self.rope_local,
        }
    }

    /// The window a layer attends within (None = the whole causal prefix).
    pub fn window_for(&self, layer: usize) -> Option<usize> {
        match self.layer_types[layer] {
            LayerType::Full => None,
            LayerType::Sliding => self.sliding_window,
        }
    }
}

fn read_layer_types(r: &Reader, arch: Arch, n: usize) -> Result<Vec<LayerType>> {
    if arch == Arch::Gemma {
        return Ok(vec![LayerType::Full; n]);
    }
    let mut types = read_layer_type_list(r, arch, n)?;
    // transformers' Gemma4TextConfig forces the last layer to be global (with a warning).
    if arch == Arch::Gemma4 {
        if let Some(last) = types.last_mut() {
            *last = LayerType::Full;
        }
    }
    Ok(types)
}

fn read_layer_type_list(r: &Reader, arch: Arch, n: usize) -> Result<Vec<LayerType>> {
    // 5.x: an explicit list.
    if let Some(list) = r.get("layer_types") {
        let list = list.as_array().ok_or_else(|| r.err("layer_types", "expected a list"))?;
        if list.len() != n {
            return Err(r.err("layer_types", format!("has {} entries but num_hidden_layers = {n}", list.len())));
        }
        return list
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(LayerType::Full),
                Some("sliding_attention") => Ok(LayerType::Sliding),
                _ => Err(r.err("layer_types", format!("unknown layer type {t}"))),
            })
            .collect();
    }
    Ok((0..n)
        .map(|i| match arch {
            // Gemma 2 (transformers 4.x): even layers slide, odd layers are global.
            Arch::Gemma2 => {
                if i % 2 == 0 {
                    LayerType::Sliding
                } else {
                    LayerType::Full
                }
            }
            // Gemma 3: every `sliding_window_pattern`-th layer is global (5 local : 1 global by default).
            _ => {
                let pattern = r.get("sliding_window_pattern").and_then(Value::as_u64).unwrap_or(6) as usize;
                if pattern > 0 && (i + 1) % pattern == 0 {
                    LayerType::Full
                } else {
                    LayerType::Sliding
                }
            }
        })
        .collect())
}

fn read_rope_params(r: &Reader, key: &str, v: &Value, default_theta: f64) -> Result<RopeConfig> {
    let theta = v.get("rope_theta").and_then(Value::as_f64).unwrap_or(default_theta);
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let partial = v.get("partial_rotary_factor").and_then(Value::as_f64);
    let (linear_factor, rotated_fraction) = match kind {
        "default" => (1.0, 1.0),
        "linear" => (
            v.get("factor")
                .and_then(Value::as_f64)
                .ok_or_else(|| r.err(key, "linear RoPE scaling needs a `factor`"))?,
            1.0,
        ),
        "proportional" => (v.get("factor").and_then(Value::as_f64).unwrap_or(1.0), partial.unwrap_or(1.0)),
        other => {
            return Err(
                r.err(key, format!("RoPE type `{other}` is not supported (default, linear and proportional are)"))
            )
        }
    };
    if kind != "proportional" && partial.is_some_and(|p| p != 1.0) {
        return Err(r.err(key, format!("partial_rotary_factor with RoPE type `{kind}` is not supported")));
    }
    if !(rotated_fraction > 0.0 && rotated_fraction <= 1.0) {
        return Err(r.err(key, format!("partial_rotary_factor {rotated_fraction} must be in (0, 1]")));
    }
    Ok(RopeConfig { theta, linear_factor, rotated_fraction })
}

fn read_rope(r: &Reader, arch: Arch) -> Result<(RopeConfig, RopeConfig)> {
    // Gemma4TextConfig's default when a config has none.
    if arch == Arch::Gemma4 && r.get("rope_parameters").is_none() {
        let global = RopeConfig { theta: 1_000_000.0, linear_factor: 1.0, rotated_fraction: 0.25 };
        return Ok((global, RopeConfig::plain(10_000.0)));
    }
    // 5.x: `rope_parameters`, either one dict or one per layer type (Gemma 3).
    if let Some(params) = r.get("rope_parameters") {
        if let (Some(full), Some(sliding)) = (params.get("full_attention"), params.get("sliding_attention")) {
            let g = read_rope_params(r, "rope_parameters.full_attention", full, 10_000.0)?;
            let l = read_rope_params(r, "rope_parameters.sliding_attention", sliding, 10_000.0)?;
            return Ok((g, l));
        }
        let g = read_rope_params(r, "rope_parameters", params, 10_000.0)?;
        return Ok((g, g));
    }
    // 4.x: `rope_theta` + optional `rope_scaling`; Gemma 3 adds `rope_local_base_freq` for sliding layers,
    // which are never scaled.
    let theta = r.f64_opt("rope_theta")?.unwrap_or(10_000.0);
    let global = match r.get("rope_scaling") {
        Some(s) => {
            let mut s = s.clone();
            s["rope_theta"] = theta.into();
            read_rope_params(r, "rope_scaling", &s, theta)?
        }
        None => RopeConfig::plain(theta),
    };
    let local = match arch {
        Arch::Gemma3 => RopeConfig::plain(r.f64_opt("rope_local_base_freq")?.unwrap_or(10_000.0)),
        _ => global,
    };
    Ok((global, local))
}

/// Every key transformers 5.x writes in a `gemma4_text` config (`Gemma4TextConfig().to_dict()`), plus the two
/// that older writers keep instead of `per_layer_config`. Anything else is a setting this implementation does
/// not know, so loading would silently build a different model: it is an error unless it is null/false.
const GEMMA4_KEYS: &[&str] = &[
    "_name_or_path",
    // Read by `crate::io::bnb` (a bitsandbytes checkpoint), not a model setting.
    "quantization_config",
    "architectures",
    "attention_bias",
    "attention_dropout",
    "attention_k_eq_v",
    "bos_token_id",
    "chunk_size_feed_forward",
    "dtype",
    "torch_dtype",
    "enable_moe_block",
    "eos_token_id",
    "final_logit_softcapping",
    "head_dim",
    "hidden_activation",
    "hidden_size",
    "hidden_size_per_layer_input",
    "id2label",
    "initializer_range",
    "intermediate_size",
    "is_encoder_decoder",
    "label2id",
    "layer_types",
    "max_position_embeddings",
    "model_type",
    "moe_intermediate_size",
    "num_attention_heads",
    "num_experts",
    "num_hidden_layers",
    "num_key_value_heads",
    "num_kv_shared_layers",
    "output_attentions",
    "output_hidden_states",
    "pad_token_id",
    "per_layer_config",
    "problem_type",
    "return_dict",
    "rms_norm_eps",
    "rope_parameters",
    "sliding_window",
    "tie_word_embeddings",
    "top_k_experts",
    "transformers_version",
    "use_bidirectional_attention",
    "use_cache",
    "use_double_wide_mlp",
    "vocab_size",
    "vocab_size_per_layer_input",
    "global_head_dim",
    "num_global_key_value_heads",
];

/// Gemma 4 settings that change the model and are not implemented are errors naming them.
fn check_gemma4(r: &Reader) -> Result<()> {
    let obj = r.v.as_object().ok_or_else(|| r.err("text_config", "expected an object"))?;
    for (key, value) in obj {
        let inactive = matches!(value, Value::Null | Value::Bool(false));
        if !GEMMA4_KEYS.contains(&key.as_str()) && !inactive {
            return Err(r.err(
                key,
                format!("is a Gemma 4 setting lapidary does not implement (value {value}); the model cannot be built faithfully"),
            ));
        }
    }
    if r.get("attention_bias").and_then(Value::as_bool) == Some(true) {
        return Err(r.err("attention_bias", "attention biases are not implemented (no published Gemma has them)"));
    }
    match r.get("use_bidirectional_attention").map(|v| v.as_str()) {
        None | Some(Some("vision")) => {}
        Some(other) => {
            return Err(r.err(
                "use_bidirectional_attention",
                format!("{other:?} is not supported: text is causal (null or \"vision\" are)"),
            ))
        }
    }
    if let Some(act) = r.get("hidden_activation") {
        if act.as_str() != Some("gelu_pytorch_tanh") {
            return Err(r.err("hidden_activation", format!("{act} is not supported (gelu_pytorch_tanh is)")));
        }
    }
    Ok(())
}

/// Gemma 4's per-layer shapes and per-layer inputs, as `Gemma4TextConfig` derives them (`per_layer_config`,
/// `kv_sharing_modes`, `use_double_wide_mlp`, `hidden_size_per_layer_input`).
fn read_gemma4_layers(
    r: &Reader,
    base: LayerSpec,
    types: &[LayerType],
    heads: usize,
) -> Result<(Vec<LayerSpec>, Option<PerLayerInput>)> {
    let n = types.len();
    let k_eq_v = r.get("attention_k_eq_v").and_then(Value::as_bool).unwrap_or(false);
    let mut specs = vec![base; n];
    match r.get("per_layer_config") {
        Some(plc) => {
            let plc =
                plc.as_object().ok_or_else(|| r.err("per_layer_config", "expected an object keyed by layer index"))?;
            for (idx, over) in plc {
                let key = format!("per_layer_config.{idx}");
                let i: usize = idx
                    .parse()
                    .ok()
                    .filter(|i| *i < n)
                    .ok_or_else(|| r.err(&key, format!("is not a layer index below {n}")))?;
                let over = over.as_object().ok_or_else(|| r.err(&key, "expected an object"))?;
                for (k, v) in over {
                    let x = v
                        .as_u64()
                        .map(|x| x as usize)
                        .ok_or_else(|| r.err(&format!("{key}.{k}"), format!("expected an integer, got {v}")))?;
                    match k.as_str() {
                        "head_dim" => specs[i].head_dim = x,
                        "num_key_value_heads" => specs[i].kv_heads = x,
                        _ => {
                            return Err(
                                r.err(&format!("{key}.{k}"), "is a per-layer setting lapidary does not implement")
                            )
                        }
                    }
                }
            }
        }
        None => {
            // What Gemma4TextConfig.__post_init__ builds from these two when per_layer_config is absent.
            let global_head_dim = r.usize_or("global_head_dim", 512)?;
            let global_kv = if k_eq_v { r.get("num_global_key_value_heads").and_then(Value::as_u64) } else { None };
            for (s, t) in specs.iter_mut().zip(types) {
                if *t == LayerType::Full {
                    s.head_dim = global_head_dim;
                    if let Some(kv) = global_kv {
                        s.kv_heads = kv as usize;
                    }
                }
            }
        }
    }
    for (i, s) in specs.iter().enumerate() {
        if s.kv_heads == 0 || !heads.is_multiple_of(s.kv_heads) || s.head_dim == 0 || !s.head_dim.is_multiple_of(2) {
            return Err(r.err(
                "per_layer_config",
                format!(
                    "layer {i}: {} KV heads must divide {heads} heads, head_dim {} must be even",
                    s.kv_heads, s.head_dim
                ),
            ));
        }
    }
    let shared = r.usize_or("num_kv_shared_layers", 0)?;
    if shared >= n && shared > 0 {
        return Err(r.err("num_kv_shared_layers", format!("{shared} must be below num_hidden_layers = {n}")));
    }
    let first_shared = n - shared;
    let double_wide = r.get("use_double_wide_mlp").and_then(Value::as_bool).unwrap_or(false);
    for i in 0..n {
        specs[i].values_from_keys = k_eq_v && types[i] == LayerType::Full;
        if i >= first_shared {
            // The last earlier (non-shared) layer of the same type produces the keys and values.
            let src = (0..first_shared).rev().find(|&j| types[j] == types[i]).ok_or_else(|| {
                r.err(
                    "num_kv_shared_layers",
                    format!("layer {i} shares keys and values but no earlier layer has its type"),
                )
            })?;
            if specs[src].head_dim != specs[i].head_dim || specs[src].kv_heads != specs[i].kv_heads {
                return Err(
                    r.err("per_layer_config", format!("layer {i} reuses layer {src}'s keys but their shapes differ"))
                );
            }
            specs[i].kv_source = Some(src);
            if double_wide {
                specs[i].intermediate_size *= 2;
            }
        }
    }
    // Gemma4TextConfig's default is 256 (per-layer inputs on); 0 or null turns them off.
    let ple = match r.get("hidden_size_per_layer_input") {
        None if r.v.get("hidden_size_per_layer_input").is_some() => None,
        _ => Some(r.usize_or("hidden_size_per_layer_input", 256)?).filter(|h| *h > 0),
    };
    let ple = match ple {
        Some(hidden) => Some(PerLayerInput { hidden, vocab: r.usize_or("vocab_size_per_layer_input", 262_144)? }),
        None => None,
    };
    Ok((specs, ple))
}

/// `enable_moe_block` with its three sizes, all required when it is on.
fn read_moe(r: &Reader) -> Result<Option<MoeSpec>> {
    if r.get("enable_moe_block").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let spec = MoeSpec {
        experts: r.usize("num_experts")?,
        top_k: r.usize("top_k_experts")?,
        intermediate: r.usize("moe_intermediate_size")?,
    };
    if spec.top_k == 0 || spec.top_k > spec.experts || spec.intermediate == 0 {
        return Err(r.err(
            "top_k_experts",
            format!(
                "{} must be between 1 and num_experts = {} (moe_intermediate_size {})",
                spec.top_k, spec.experts, spec.intermediate
            ),
        ));
    }
    Ok(Some(spec))
}
