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
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
        }
    }

    /// `general.architecture` in llama.cpp's GGUF files.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
        }
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
            "" => return Err(top.err("model_type", "missing; expected gemma, gemma2, gemma3_text or gemma3")),
            other => {
                return Err(top.err(
                    "model_type",
                    format!("`{other}` is not supported; expected gemma, gemma2, gemma3_text or gemma3"),
                ))
            }
        };
        let r = Reader { path, v };
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
            _ => r.get("sliding_window").and_then(Value::as_u64).map(|x| x as usize),
        };
        let layer_types = read_layer_types(&r, arch, num_hidden_layers)?;
        let (rope_global, rope_local) = read_rope(&r, arch)?;
        let softcap = |key: &str| -> Result<Option<f64>> {
            Ok(match arch {
                Arch::Gemma2 | Arch::Gemma3 => r.f64_opt(key)?.filter(|c| *c > 0.0),
                Arch::Gemma => None,
            })
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
            intermediate_size: r.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: r.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings: r.usize_or("max_position_embeddings", 8192)?,
            query_pre_attn_scalar: match arch {
                Arch::Gemma => head_dim as f64,
                _ => r.f64_opt("query_pre_attn_scalar")?.unwrap_or(head_dim as f64),
            },
            attn_logit_softcapping: softcap("attn_logit_softcapping")?,
            final_logit_softcapping: softcap("final_logit_softcapping")?,
            sliding_window,
            layer_types,
            rope_global,
            rope_local,
            tie_word_embeddings: top.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
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
    let linear_factor = match kind {
        "default" => 1.0,
        "linear" => {
            v.get("factor").and_then(Value::as_f64).ok_or_else(|| r.err(key, "linear RoPE scaling needs a `factor`"))?
        }
        other => return Err(r.err(key, format!("RoPE type `{other}` is not supported (default and linear are)"))),
    };
    Ok(RopeConfig { theta, linear_factor })
}

fn read_rope(r: &Reader, arch: Arch) -> Result<(RopeConfig, RopeConfig)> {
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
        None => RopeConfig { theta, linear_factor: 1.0 },
    };
    let local = match arch {
        Arch::Gemma3 => {
            RopeConfig { theta: r.f64_opt("rope_local_base_freq")?.unwrap_or(10_000.0), linear_factor: 1.0 }
        }
        _ => global,
    };
    Ok((global, local))
}
