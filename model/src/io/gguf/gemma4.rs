//! Gemma 4 GGUFs as llama.cpp's converter (`conversion/gemma.py`, `Gemma4Model`) writes them: the
//! `config.json` transformers 5.x would write for the model, rebuilt from the `gemma4.*` metadata and the
//! tensors present, and the HF tensors the file stores in another form.
//!
//! What the converter writes, and how it is read back here:
//! * `attention.sliding_window_pattern`: one bool per layer (true = sliding) -> `layer_types`.
//! * `attention.key_length` / `value_length`: the global layers' head_dim (`per_layer_config`),
//!   `attention.key_length_swa` / `value_length_swa`: `head_dim`.
//! * `attention.head_count_kv`: a number, or one per layer when the global layers have their own KV heads
//!   (`num_global_key_value_heads`) -> `num_key_value_heads` (the sliding layers') and `per_layer_config`.
//! * `feed_forward_length`: a number, or one per layer when `use_double_wide_mlp` doubles the KV-shared layers'.
//! * `attention.shared_kv_layers` -> `num_kv_shared_layers`; `embedding_length_per_layer_input` ->
//!   `hidden_size_per_layer_input` (its table's rows give `vocab_size_per_layer_input`).
//! * `attention_k_eq_v` is not written: the global layers' missing `attn_v` says it (llama.cpp then uses K).
//! * RoPE: `rope.freq_base` / `rope.freq_base_swa` are the global / sliding thetas. The global layers'
//!   proportional RoPE is written as a full rotation (`rope.dimension_count` = their head_dim) with frequency
//!   factors `rope_freqs.weight` = `[1] * n + [1e30] * rest`: the first n frequency pairs rotate, the rest are
//!   divided by 1e30 (still), i.e. `partial_rotary_factor` = 2n / head_dim.
//! * `expert_count`, `expert_used_count`, `expert_feed_forward_length` -> the mixture of experts.
//!
//! A setting the file does not record, or records in a form transformers' config cannot express, is an error
//! naming the key (or tensor), never a default.
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::arch::{f32_to_json_f64, GemmaArch, Source};
use super::file::{GgufFile, GgufValue};
use crate::error::{ModelError, Result};

const ARCH: &str = "gemma4";

fn key(suffix: &str) -> String {
    format!("{ARCH}.{suffix}")
}

fn config_err(file: &GgufFile, key: impl Into<String>, msg: impl Into<String>) -> ModelError {
    ModelError::Config { path: file.path().to_path_buf(), key: key.into(), msg: msg.into() }
}

fn has(file: &GgufFile, name: &str) -> bool {
    file.tensor_info(name).is_some()
}

/// HF tensors a Gemma 4 file holds in another form: experts whose gate and up halves are two tensors, and the
/// `layer_scalar` of a layer that has no `layer_output_scale` (llama.cpp's is optional: 1).
pub(super) fn add_derived_sources(file: &GgufFile, map: &mut BTreeMap<String, Source>) -> Result<()> {
    let Some(layers) = file.get_u32(&key("block_count"))? else {
        return Ok(()); // config_json says what is missing
    };
    for i in 0..layers as usize {
        let gate_up = format!("model.layers.{i}.experts.gate_up_proj");
        let (gate, up) = (format!("blk.{i}.ffn_gate_exps.weight"), format!("blk.{i}.ffn_up_exps.weight"));
        if !map.contains_key(&gate_up) && (has(file, &gate) || has(file, &up)) {
            let g = file.tensor_info(&gate).map(|t| t.shape());
            let u = file.tensor_info(&up).map(|t| t.shape());
            match (g, u) {
                (Some(g), Some(u)) if g == u && g.len() == 3 => {
                    map.insert(gate_up, Source::GateUp { gate, up });
                }
                (g, u) => {
                    return Err(ModelError::format(
                        file.path(),
                        format!(
                            "`{gate}` ({g:?}) and `{up}` ({u:?}) must both be there, 3-D and of one shape \
                             (they make `{gate_up}`)"
                        ),
                    ))
                }
            }
        }
        map.entry(format!("model.layers.{i}.layer_scalar")).or_insert(Source::One);
    }
    Ok(())
}

/// A key that holds one number, or one per layer (llama.cpp's `get_key_or_arr`): the per-layer values.
fn per_layer(file: &GgufFile, suffix: &str, n: usize) -> Result<Vec<u32>> {
    let k = key(suffix);
    let v = file.get(&k).ok_or_else(|| config_err(file, &k, "missing"))?;
    let as_u32 = |v: &GgufValue| v.as_u64().and_then(|x| u32::try_from(x).ok());
    match v {
        GgufValue::Array { items, .. } => {
            if items.len() != n {
                return Err(config_err(file, &k, format!("has {} entries for {n} layers", items.len())));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    as_u32(x).ok_or_else(|| config_err(file, &k, format!("entry {i} is not an unsigned integer")))
                })
                .collect()
        }
        other => as_u32(other).map(|x| vec![x; n]).ok_or_else(|| {
            config_err(
                file,
                &k,
                format!("expected an unsigned integer or an array of them, found {}", other.type_name()),
            )
        }),
    }
}

/// The one value every listed layer has, or an error saying transformers' config has one value for them.
fn same(file: &GgufFile, suffix: &str, values: &[u32], which: &[usize], what: &str) -> Result<Option<u32>> {
    let mut it = which.iter().map(|&i| values[i]);
    let Some(first) = it.next() else { return Ok(None) };
    if it.any(|v| v != first) {
        let listed: Vec<u32> = which.iter().map(|&i| values[i]).collect();
        return Err(config_err(
            file,
            key(suffix),
            format!("{what} differ ({listed:?}); transformers' Gemma 4 config has one value for them"),
        ));
    }
    Ok(Some(first))
}

fn opt_u32(file: &GgufFile, suffix: &str) -> Result<Option<u32>> {
    file.get_u32(&key(suffix))
}

fn opt_f32(file: &GgufFile, suffix: &str) -> Result<Option<f32>> {
    file.get_f32(&key(suffix))
}

fn req_u32(file: &GgufFile, suffix: &str) -> Result<u32> {
    opt_u32(file, suffix)?.ok_or_else(|| config_err(file, key(suffix), "missing"))
}

fn req_f32(file: &GgufFile, suffix: &str, why: &str) -> Result<f32> {
    opt_f32(file, suffix)?.ok_or_else(|| config_err(file, key(suffix), format!("missing{why}")))
}

/// The global layers' rotated fraction from `rope_freqs.weight` (see the module doc).
fn partial_rotary_factor(file: &GgufFile, head_dim: u32) -> Result<f64> {
    let name = "rope_freqs.weight";
    let t = file.dequantize(name).map_err(|e| match e {
        ModelError::MissingTensor { .. } => ModelError::MissingTensor {
            path: file.path().to_path_buf(),
            name: format!("{name} (the global layers' RoPE frequency factors)"),
        },
        e => e,
    })?;
    let half = head_dim as usize / 2;
    let bad = |msg: String| ModelError::format(file.path(), format!("tensor `{name}`: {msg}"));
    if t.data.len() != half {
        return Err(bad(format!("{} factors for a global head_dim of {head_dim} (expected {half})", t.data.len())));
    }
    let rotated = t.data.iter().take_while(|&&x| x == 1.0).count();
    // The converter writes 1e30 for the pairs that do not rotate; anything that large stops them as well.
    if let Some((i, x)) = t.data.iter().enumerate().skip(rotated).find(|(_, &x)| x < 1e20 || x.is_nan()) {
        return Err(bad(format!(
            "factor {i} is {x}: only leading 1s (rotated pairs) then 1e30s (still pairs), transformers' \
             proportional RoPE, can be expressed"
        )));
    }
    if rotated == 0 {
        return Err(bad("no pair rotates".into()));
    }
    let fraction = 2.0 * rotated as f64 / head_dim as f64;
    // transformers rotates int(partial_rotary_factor * head_dim // 2) pairs: the same count.
    debug_assert_eq!((fraction * head_dim as f64 / 2.0).floor() as usize, rotated);
    Ok(fraction)
}

/// `config.json` (transformers 5.x `gemma4_text`) from a Gemma 4 file.
pub(super) fn config_json(file: &GgufFile) -> Result<Value> {
    let n = req_u32(file, "block_count")? as usize;
    if n == 0 {
        return Err(config_err(file, key("block_count"), "0 layers"));
    }
    let all: Vec<usize> = (0..n).collect();
    let hidden = req_u32(file, "embedding_length")?;

    // Layer types: true = sliding.
    let pattern_key = key("attention.sliding_window_pattern");
    let pattern: Vec<bool> = match file.get_array(&pattern_key)? {
        None => return Err(config_err(file, &pattern_key, "missing (which layers are sliding)")),
        Some(items) => items
            .iter()
            .map(|x| x.as_bool().ok_or_else(|| config_err(file, &pattern_key, "expected bools")))
            .collect::<Result<_>>()?,
    };
    if pattern.len() != n {
        return Err(config_err(file, &pattern_key, format!("has {} entries for {n} layers", pattern.len())));
    }
    if pattern[n - 1] {
        // transformers forces the last layer global, llama.cpp would keep it sliding: no config says both.
        return Err(config_err(
            file,
            &pattern_key,
            "the last layer is sliding; Gemma 4 (transformers' Gemma4TextConfig) makes it global",
        ));
    }
    let sliding: Vec<usize> = all.iter().copied().filter(|&i| pattern[i]).collect();
    let global: Vec<usize> = all.iter().copied().filter(|&i| !pattern[i]).collect();

    // Heads and head sizes.
    let heads = same(file, "attention.head_count", &per_layer(file, "attention.head_count", n)?, &all, "head counts")?
        .expect("n > 0");
    let kv = per_layer(file, "attention.head_count_kv", n)?;
    let kv_sliding = same(file, "attention.head_count_kv", &kv, &sliding, "the sliding layers' KV heads")?;
    let head_dim = req_u32(file, "attention.key_length_swa")?;
    let global_head_dim = req_u32(file, "attention.key_length")?;
    for (k, v) in
        [("attention.key_length_swa", "attention.value_length_swa"), ("attention.key_length", "attention.value_length")]
    {
        let (kk, vv) = (req_u32(file, k)?, req_u32(file, v)?);
        if kk != vv {
            return Err(config_err(
                file,
                key(v),
                format!("{vv} differs from {} = {kk}; Gemma 4 has one head size", key(k)),
            ));
        }
    }
    // Without sliding layers, the global layers' KV heads are the model's.
    let num_kv = kv_sliding.unwrap_or(kv[n - 1]);

    // KV sharing, and whether the global layers' values are their keys (no attn_v).
    let shared = req_u32(file, "attention.shared_kv_layers")? as usize;
    if shared >= n {
        return Err(config_err(file, key("attention.shared_kv_layers"), format!("{shared} of {n} layers")));
    }
    let first_shared = n - shared;
    let owners_global: Vec<usize> = global.iter().copied().filter(|&i| i < first_shared).collect();
    let with_v = owners_global.iter().filter(|&&i| has(file, &format!("blk.{i}.attn_v.weight"))).count();
    let k_eq_v = if with_v == 0 && !owners_global.is_empty() {
        true
    } else if with_v == owners_global.len() {
        false
    } else {
        return Err(ModelError::format(
            file.path(),
            format!(
                "{with_v} of the {} global layers that compute keys have `attn_v`: attention_k_eq_v is one \
                 setting for all of them",
                owners_global.len()
            ),
        ));
    };
    if let Some(i) =
        sliding.iter().copied().find(|&i| i < first_shared && !has(file, &format!("blk.{i}.attn_v.weight")))
    {
        return Err(ModelError::MissingTensor {
            path: file.path().to_path_buf(),
            name: format!("blk.{i}.attn_v.weight (sliding layers always have values of their own)"),
        });
    }

    // MLP widths: the KV-shared layers may be twice as wide (use_double_wide_mlp).
    let ff_key = "feed_forward_length";
    let ff = per_layer(file, ff_key, n)?;
    let intermediate = same(
        file,
        ff_key,
        &ff,
        &(0..first_shared).collect::<Vec<_>>(),
        "the MLP widths of the layers that compute keys",
    )?
    .expect("first_shared > 0");
    let shared_ff =
        same(file, ff_key, &ff, &(first_shared..n).collect::<Vec<_>>(), "the KV-shared layers' MLP widths")?;
    let double_wide = match shared_ff {
        None => false,
        Some(w) if w == intermediate => false,
        Some(w) if w == 2 * intermediate => true,
        Some(w) => {
            return Err(config_err(
                file,
                key(ff_key),
                format!("the KV-shared layers' MLP width {w} is neither {intermediate} nor twice it"),
            ))
        }
    };

    // RoPE.
    let why_theta = " (the RoPE base of the global / sliding layers)";
    let theta = req_f32(file, "rope.freq_base", why_theta)?;
    let theta_swa = req_f32(file, "rope.freq_base_swa", why_theta)?;
    for (suffix, want) in [("rope.dimension_count", global_head_dim), ("rope.dimension_count_swa", head_dim)] {
        let got = req_u32(file, suffix)?;
        if got != want {
            return Err(config_err(
                file,
                key(suffix),
                format!("{got} rotated dimensions of {want}: Gemma 4's converter rotates whole heads (partial rotation is in rope_freqs.weight)"),
            ));
        }
    }
    if let Some(f) = opt_f32(file, "rope.scaling.factor")?.filter(|&f| f != 0.0 && f != 1.0) {
        return Err(config_err(file, key("rope.scaling.factor"), format!("{f}: Gemma 4 has no RoPE scaling")));
    }
    let fraction = if global.is_empty() { 1.0 } else { partial_rotary_factor(file, global_head_dim)? };
    let rope_parameters = json!({
        "full_attention": {
            "partial_rotary_factor": fraction,
            "rope_theta": f32_to_json_f64(theta),
            "rope_type": "proportional",
        },
        "sliding_attention": {"rope_theta": f32_to_json_f64(theta_swa), "rope_type": "default"},
    });

    // The converter writes the cap only when the model has one; llama.cpp then falls back to 30 without it, so
    // a file without it does not say which.
    let softcap = req_f32(
        file,
        "final_logit_softcapping",
        " (written when the model caps its logits; llama.cpp assumes 30 without it)",
    )?;
    let eps = req_f32(file, "attention.layer_norm_rms_epsilon", "")?;
    let window = req_u32(file, "attention.sliding_window")?;
    let ctx = req_u32(file, "context_length")?;

    // Per-layer inputs.
    let ple = req_u32(file, "embedding_length_per_layer_input")?;
    let ple_vocab = if ple > 0 {
        let name = "per_layer_token_embd.weight";
        let t = file.tensor_info(name).ok_or_else(|| ModelError::MissingTensor {
            path: file.path().to_path_buf(),
            name: format!("{name} ({} = {ple})", key("embedding_length_per_layer_input")),
        })?;
        let shape = t.shape();
        if shape.len() != 2 || shape[1] != n * ple as usize {
            return Err(ModelError::format(
                file.path(),
                format!("tensor `{name}` has shape {shape:?}, expected [vocab, {}]", n * ple as usize),
            ));
        }
        Some(shape[0])
    } else {
        None
    };

    // Mixture of experts: every layer has it, or none.
    let routers = all.iter().filter(|&&i| has(file, &format!("blk.{i}.ffn_gate_inp.weight"))).count();
    let experts = opt_u32(file, "expert_count")?.filter(|&e| e > 0);
    let moe = match (experts, routers) {
        (None, 0) => None,
        (Some(e), r) if r == n => {
            let used = req_u32(file, "expert_used_count")?;
            let width = per_layer(file, "expert_feed_forward_length", n)?;
            let width = same(file, "expert_feed_forward_length", &width, &all, "the experts' widths")?.expect("n > 0");
            Some((e, used, width))
        }
        (e, r) => {
            return Err(config_err(
                file,
                key("expert_count"),
                format!("{e:?} experts but {r} of {n} layers have a router (ffn_gate_inp); Gemma 4 has experts in every layer or none"),
            ))
        }
    };

    // Vocabulary and special ids, as for the other generations.
    let vocab = match file.tensor_info("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
        _ => return Err(ModelError::format(file.path(), "tensor `token_embd.weight` is not 2-D")),
    };
    let tok = |k: &str| -> Result<Option<u32>> { file.get_u32(&format!("tokenizer.ggml.{k}")) };

    let layer_types: Vec<&str> =
        pattern.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
    let mut per_layer_config = Map::new();
    for &i in &global {
        let mut o = Map::new();
        o.insert("head_dim".into(), json!(global_head_dim));
        if kv[i] != num_kv {
            o.insert("num_key_value_heads".into(), json!(kv[i]));
        }
        per_layer_config.insert(i.to_string(), Value::Object(o));
    }

    let mut c = Map::new();
    c.insert("architectures".into(), json!([GemmaArch::Gemma4.hf_class()]));
    c.insert("model_type".into(), json!(GemmaArch::Gemma4.model_type()));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("intermediate_size".into(), json!(intermediate));
    c.insert("num_hidden_layers".into(), json!(n));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(num_kv));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("per_layer_config".into(), Value::Object(per_layer_config));
    c.insert("attention_k_eq_v".into(), json!(k_eq_v));
    c.insert("num_kv_shared_layers".into(), json!(shared));
    c.insert("use_double_wide_mlp".into(), json!(double_wide));
    c.insert("layer_types".into(), json!(layer_types));
    c.insert("sliding_window".into(), json!(window));
    c.insert("rope_parameters".into(), rope_parameters);
    c.insert("final_logit_softcapping".into(), json!(f32_to_json_f64(softcap)));
    c.insert("rms_norm_eps".into(), json!(f32_to_json_f64(eps)));
    c.insert("max_position_embeddings".into(), json!(ctx));
    c.insert("hidden_size_per_layer_input".into(), json!(ple));
    if let Some(v) = ple_vocab {
        c.insert("vocab_size_per_layer_input".into(), json!(v));
    }
    c.insert("enable_moe_block".into(), json!(moe.is_some()));
    c.insert("num_experts".into(), json!(moe.map(|m| m.0)));
    c.insert("top_k_experts".into(), json!(moe.map(|m| m.1)));
    c.insert("moe_intermediate_size".into(), json!(moe.map(|m| m.2)));
    c.insert("bos_token_id".into(), json!(tok("bos_token_id")?.unwrap_or(2)));
    c.insert("eos_token_id".into(), json!(tok("eos_token_id")?.unwrap_or(1)));
    c.insert("pad_token_id".into(), json!(tok("padding_token_id")?.unwrap_or(0)));
    // As transformers' loader decides it: tied unless the file has an `output.weight`.
    c.insert("tie_word_embeddings".into(), json!(!has(file, "output.weight")));
    // Not in GGUF; fixed by llama.cpp's graph (GELU-tanh MLPs, causal text attention, no biases), and the
    // class defaults that do not change the model.
    c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    c.insert("use_bidirectional_attention".into(), Value::Null);
    c.insert("attention_bias".into(), json!(false));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert("use_cache".into(), json!(true));
    c.insert("dtype".into(), json!("float32"));
    Ok(Value::Object(c))
}
