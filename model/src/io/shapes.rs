//! Published Gemma shapes with random weights, for benchmarks: the speed and memory of a training step depend
//! on the shapes, not on the values, so `lapidary bench --model gemma-2b` measures a 2B model without its
//! (undownloadable here) weights. The configs are those of the published checkpoints, read by the same parser
//! as real checkpoints: Gemma 1-3 in transformers 4.x's `config.json` dialect (scripts/peers/hf_qlora_bench.py,
//! transformers + PEFT + bitsandbytes, builds its models from the same numbers), Gemma 4 in 5.x's
//! `gemma4_text` one (see [`config_json`] for where its numbers come from).
use std::path::Path;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::config::{Arch, GemmaConfig};
use crate::error::{ModelError, Result};
use crate::io::weights::{HostTensor, WeightSource};

/// Names `lapidary bench --model` accepts.
pub const NAMES: [&str; 9] = [
    "gemma-2b",
    "gemma-7b",
    "gemma2-2b",
    "gemma3-270m",
    "gemma3-1b",
    "gemma4-e2b",
    "gemma4-e4b",
    "gemma4-26b-a4b",
    "gemma4-31b",
];

/// Gemma 4's `layer_types`: `sliding` sliding-window layers then a global one, repeated over `layers`.
fn gemma4_layer_types(sliding: usize, layers: usize) -> Vec<&'static str> {
    (0..layers).map(|i| if (i + 1) % (sliding + 1) == 0 { "full_attention" } else { "sliding_attention" }).collect()
}

/// A Gemma 4 `text_config`: the settings every published size shares (`rope_parameters` is the conversion
/// script's `_ROPE_PARAMS`; the rest are `Gemma4TextConfig` defaults it does not override), then `size`'s.
fn gemma4(size: Value) -> Value {
    let mut v = json!({"model_type": "gemma4_text", "vocab_size": 262144, "head_dim": 256, "global_head_dim": 512,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0,
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        "vocab_size_per_layer_input": 262144, "tie_word_embeddings": true, "attention_bias": false,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0});
    if let (Some(base), Value::Object(size)) = (v.as_object_mut(), size) {
        base.extend(size);
    }
    v
}

/// The published `config.json` of a named shape.
///
/// Gemma 4: no byte-exact copy of the Hub's `google/gemma-4-*` config.json files could be read where this was
/// written, so these are not Hub copies. The numbers are the `text_config` arguments in transformers'
/// `src/transformers/models/gemma4/convert_gemma4_weights.py` (`_VARIANTS`, at commit
/// 0f3f0632a38798af2adf264adc752130ecc5fa66), the script that converted the released checkpoints, with the
/// `Gemma4TextConfig` defaults it relies on written out; they agree with public dumps of the released
/// configs (gemma-4-E4B, 26B-A4B and 31B text_configs). Key order and the keys a given transformers version
/// adds (`per_layer_config` in place of `global_head_dim` / `num_global_key_value_heads`, ...) may differ from
/// the Hub files; the model they describe does not.
pub fn config_json(name: &str) -> Option<Value> {
    let v = match name {
        "gemma-2b" => json!({"model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384,
            "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
            "vocab_size": 256000, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192,
            "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}),
        "gemma-7b" => json!({"model_type": "gemma", "hidden_size": 3072, "intermediate_size": 24576,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
            "vocab_size": 256000, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192,
            "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}),
        "gemma2-2b" => json!({"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "vocab_size": 256000, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192,
            "query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}),
        "gemma3-1b" => json!({"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
            "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "vocab_size": 262144, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "bos_token_id": 2, "eos_token_id": [1, 106],
            "pad_token_id": 0}),
        "gemma3-270m" => json!({"model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
            "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "vocab_size": 262144, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "bos_token_id": 2, "eos_token_id": [1, 106],
            "pad_token_id": 0}),
        // Per-layer inputs; the last 20 layers reuse earlier layers' keys and values, with MLPs twice as wide.
        "gemma4-e2b" => gemma4(json!({"hidden_size": 1536, "intermediate_size": 6144, "num_hidden_layers": 35,
            "layer_types": gemma4_layer_types(4, 35), "num_attention_heads": 8, "num_key_value_heads": 1,
            "num_global_key_value_heads": null, "attention_k_eq_v": false, "hidden_size_per_layer_input": 256,
            "num_kv_shared_layers": 20, "use_double_wide_mlp": true, "sliding_window": 512,
            "max_position_embeddings": 131072, "use_bidirectional_attention": null, "enable_moe_block": false})),
        // Per-layer inputs; the last 18 layers reuse earlier layers' keys and values.
        "gemma4-e4b" => gemma4(json!({"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 42,
            "layer_types": gemma4_layer_types(5, 42), "num_attention_heads": 8, "num_key_value_heads": 2,
            "num_global_key_value_heads": null, "attention_k_eq_v": false, "hidden_size_per_layer_input": 256,
            "num_kv_shared_layers": 18, "use_double_wide_mlp": false, "sliding_window": 512,
            "max_position_embeddings": 131072, "use_bidirectional_attention": null, "enable_moe_block": false})),
        // 128 experts of width 704, 8 per token, beside each layer's dense MLP (2112 wide).
        "gemma4-26b-a4b" => gemma4(json!({"hidden_size": 2816, "intermediate_size": 2112, "num_hidden_layers": 30,
            "layer_types": gemma4_layer_types(5, 30), "num_attention_heads": 16, "num_key_value_heads": 8,
            "num_global_key_value_heads": 2, "attention_k_eq_v": true, "hidden_size_per_layer_input": 0,
            "num_kv_shared_layers": 0, "use_double_wide_mlp": false, "sliding_window": 1024,
            "max_position_embeddings": 262144, "use_bidirectional_attention": "vision", "enable_moe_block": true,
            "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704})),
        "gemma4-31b" => gemma4(json!({"hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 60,
            "layer_types": gemma4_layer_types(5, 60), "num_attention_heads": 32, "num_key_value_heads": 16,
            "num_global_key_value_heads": 4, "attention_k_eq_v": true, "hidden_size_per_layer_input": 0,
            "num_kv_shared_layers": 0, "use_double_wide_mlp": false, "sliding_window": 1024,
            "max_position_embeddings": 262144, "use_bidirectional_attention": "vision", "enable_moe_block": false})),
        _ => return None,
    };
    Some(v)
}

/// The parsed config of a named shape.
pub fn config(name: &str) -> Option<GemmaConfig> {
    let v = config_json(name)?;
    Some(GemmaConfig::from_json(&v, Path::new(name)).expect("the built-in shapes are valid configs"))
}

/// Every tensor a Gemma checkpoint of `config` has (the names and shapes transformers saves), with random
/// values: linears, embeddings and Gemma 4's experts uniform with transformers' init std (0.02), rounded to bf16
/// as published checkpoints are; 1-D tensors
/// as transformers initialises them: zero for Gemma 1-3 (their norms scale by `1 + w`), one for Gemma 4 (norms,
/// `layer_scalar`, the router's scales). Deterministic per name and seed.
pub struct RandomWeights {
    label: std::path::PathBuf,
    shapes: Vec<(String, Vec<usize>)>,
    /// The value of every 1-D tensor.
    vector_value: f32,
    seed: u64,
}

impl RandomWeights {
    pub fn new(name: &str, config: &GemmaConfig, seed: u64) -> Self {
        let c = config;
        let h = c.hidden_size;
        let n = c.num_hidden_layers;
        let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h])];
        shapes.push(("model.norm.weight".to_string(), vec![h]));
        if let Some(ple) = c.per_layer_input {
            shapes.push(("model.embed_tokens_per_layer.weight".to_string(), vec![ple.vocab, n * ple.hidden]));
            shapes.push(("model.per_layer_model_projection.weight".to_string(), vec![n * ple.hidden, h]));
            shapes.push(("model.per_layer_projection_norm.weight".to_string(), vec![ple.hidden]));
        }
        let ffw_norms = c.arch != Arch::Gemma;
        let qk_norms = matches!(c.arch, Arch::Gemma3 | Arch::Gemma4);
        for (i, spec) in c.layer_specs.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            let (d, kv) = (spec.head_dim, spec.kv_heads);
            // A KV-shared layer (Gemma 4) has no key/value projections of its own; `attention_k_eq_v` layers
            // no value projection.
            let owns_kv = spec.kv_source.is_none();
            shapes.push((p("self_attn.q_proj"), vec![c.num_attention_heads * d, h]));
            if owns_kv {
                shapes.push((p("self_attn.k_proj"), vec![kv * d, h]));
                if !spec.values_from_keys {
                    shapes.push((p("self_attn.v_proj"), vec![kv * d, h]));
                }
            }
            shapes.push((p("self_attn.o_proj"), vec![h, c.num_attention_heads * d]));
            let inter = spec.intermediate_size;
            shapes.push((p("mlp.gate_proj"), vec![inter, h]));
            shapes.push((p("mlp.up_proj"), vec![inter, h]));
            shapes.push((p("mlp.down_proj"), vec![h, inter]));
            shapes.push((p("input_layernorm"), vec![h]));
            shapes.push((p("post_attention_layernorm"), vec![h]));
            if ffw_norms {
                shapes.push((p("pre_feedforward_layernorm"), vec![h]));
                shapes.push((p("post_feedforward_layernorm"), vec![h]));
            }
            if qk_norms {
                shapes.push((p("self_attn.q_norm"), vec![d]));
                if owns_kv {
                    shapes.push((p("self_attn.k_norm"), vec![d]));
                }
            }
            if c.arch == Arch::Gemma4 {
                // A buffer, saved without `.weight`.
                shapes.push((format!("model.layers.{i}.layer_scalar"), vec![1]));
            }
            if let Some(ple) = c.per_layer_input {
                shapes.push((p("per_layer_input_gate"), vec![ple.hidden, h]));
                shapes.push((p("per_layer_projection"), vec![h, ple.hidden]));
                shapes.push((p("post_per_layer_input_norm"), vec![h]));
            }
            if let Some(m) = c.moe {
                // The experts and the router's scales are parameters, saved without `.weight`.
                let q = |s: &str| format!("model.layers.{i}.{s}");
                shapes.push((q("experts.gate_up_proj"), vec![m.experts, 2 * m.intermediate, h]));
                shapes.push((q("experts.down_proj"), vec![m.experts, h, m.intermediate]));
                shapes.push((p("router.proj"), vec![m.experts, h]));
                shapes.push((q("router.scale"), vec![h]));
                shapes.push((q("router.per_expert_scale"), vec![m.experts]));
                for norm in
                    ["pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2"]
                {
                    shapes.push((p(norm), vec![h]));
                }
            }
        }
        let vector_value = if c.arch.norm_adds_one() { 0.0 } else { 1.0 };
        Self { label: format!("<random {name}>").into(), shapes, vector_value, seed }
    }
}

impl WeightSource for RandomWeights {
    fn path(&self) -> &Path {
        &self.label
    }
    fn names(&self) -> Vec<String> {
        self.shapes.iter().map(|(n, _)| n.clone()).collect()
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| ModelError::format(&self.label, format!("no tensor `{name}`")))
    }
    fn get(&self, name: &str) -> Result<HostTensor> {
        let shape = self.shape(name)?;
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            return Ok(HostTensor::new(shape, vec![self.vector_value; n]));
        }
        // Uniform on ±0.02·√3 has std 0.02. Chunks are seeded independently so the draw is parallel and
        // still deterministic.
        let bound = 0.02f32 * 3f32.sqrt();
        let key =
            name.bytes().fold(self.seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut data = vec![0f32; n];
        data.par_chunks_mut(1 << 20).enumerate().for_each(|(i, chunk)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(key.wrapping_add(i as u64));
            // Rounded to bf16, the dtype published checkpoints store: a loader that keeps such values narrow
            // (Gemma 4's per-layer table) then holds what it would for the real weights.
            chunk.iter_mut().for_each(|x| *x = half::bf16::from_f32(rng.random_range(-bound..bound)).to_f32());
        });
        Ok(HostTensor::new(shape, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(w: &RandomWeights) -> usize {
        w.shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Gemma 1-3: the parameter counts of the published models (from their model cards / HF hub: Gemma 2B
    /// 2.51B, 7B 8.54B, Gemma 2 2B 2.61B, Gemma 3 1B 1.00B, Gemma 3 270M 268M).
    /// Gemma 4: the tensors and values of transformers 5.23.0's `Gemma4ForCausalLM` built from the same
    /// `Gemma4TextConfig` arguments (convert_gemma4_weights.py's) on the meta device, its `state_dict()`
    /// without the tied `lm_head.weight` (the `layer_scalar` buffers included, as checkpoints save them). The
    /// text models only: the Hub's totals (E2B 5.1B, E4B 8B, 26B A4B 25.2B, 31B 30.7B) add the vision and
    /// audio encoders to E2B/E4B.
    #[test]
    fn every_named_shape_parses_with_the_published_size() {
        let gemma1_3 = [
            ("gemma-2b", 2.506),
            ("gemma-7b", 8.538),
            ("gemma2-2b", 2.614),
            ("gemma3-1b", 0.9999),
            ("gemma3-270m", 0.268),
        ];
        let gemma4 = [
            ("gemma4-e2b", 540, 4_628_569_379),
            ("gemma4-e4b", 665, 7_463_013_418),
            ("gemma4-26b-a4b", 657, 25_233_141_790),
            ("gemma4-31b", 832, 30_697_345_340),
        ];
        let mut seen = Vec::new();
        for (name, billions) in gemma1_3 {
            let c = config(name).unwrap();
            let got = values(&RandomWeights::new(name, &c, 0)) as f64 / 1e9;
            assert!((got - billions).abs() / billions < 0.002, "{name}: {got:.4}B vs published {billions}B");
            seen.push(name);
        }
        for (name, tensors, total) in gemma4 {
            let c = config(name).unwrap();
            assert_eq!(c.arch, Arch::Gemma4, "{name}");
            let w = RandomWeights::new(name, &c, 0);
            assert_eq!((w.shapes.len(), values(&w)), (tensors, total), "{name}: (tensors, values)");
            seen.push(name);
        }
        seen.sort();
        let mut names = NAMES.to_vec();
        names.sort();
        assert_eq!(seen, names, "every named shape is checked");
    }

    /// What the Gemma 4 configs describe, as transformers derives it (convert_gemma4_weights.py's comments and
    /// Gemma4TextConfig: E2B's KV-shared layers 15-34 with MLPs twice as wide, E4B's 24-41; 26B/31B's global
    /// layers with 512-wide heads, fewer KV heads and values from the keys).
    #[test]
    fn gemma4_shapes_have_the_published_structure() {
        let e2b = config("gemma4-e2b").unwrap();
        assert_eq!(e2b.per_layer_input.map(|p| (p.hidden, p.vocab)), Some((256, 262144)));
        assert_eq!(e2b.layer_specs.iter().position(|s| s.kv_source.is_some()), Some(15));
        assert_eq!((e2b.layer_specs[14].intermediate_size, e2b.layer_specs[15].intermediate_size), (6144, 12288));
        assert_eq!(e2b.layer_specs[4].head_dim, 512);
        let e4b = config("gemma4-e4b").unwrap();
        assert_eq!(e4b.layer_specs.iter().position(|s| s.kv_source.is_some()), Some(24));
        assert!(e4b.layer_specs.iter().all(|s| s.intermediate_size == 10240));
        let moe = config("gemma4-26b-a4b").unwrap();
        assert_eq!(moe.moe.map(|m| (m.experts, m.top_k, m.intermediate)), Some((128, 8, 704)));
        assert!(moe.per_layer_input.is_none());
        let big = config("gemma4-31b").unwrap();
        let global = big.layer_specs[5];
        assert_eq!((global.head_dim, global.kv_heads, global.values_from_keys), (512, 4, true));
        assert_eq!((big.layer_specs[4].head_dim, big.layer_specs[4].kv_heads), (256, 16));
        assert_eq!((big.sliding_window, big.final_logit_softcapping), (Some(1024), Some(30.0)));
        assert!(big.moe.is_none() && big.per_layer_input.is_none());
    }

    /// On the tiny fixtures' configs (scripts/make_*fixtures.py, saved by transformers), the random weights
    /// have exactly the tensors of the saved checkpoint: names and shapes.
    #[test]
    fn random_weights_have_a_checkpoints_tensors() {
        for arch in ["gemma1", "gemma2", "gemma3", "gemma4", "gemma4_moe"] {
            let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(arch);
            let files = crate::io::files::ModelFiles::open(&dir).expect("fixture");
            let listing = |w: &dyn WeightSource| {
                let mut v: Vec<_> = w.names().into_iter().map(|n| (w.shape(&n).unwrap(), n)).collect();
                v.sort_by(|a, b| a.1.cmp(&b.1));
                v
            };
            let ours = RandomWeights::new(arch, &files.config, 0);
            assert_eq!(listing(&ours), listing(files.weights.as_ref()), "{arch}");
        }
    }

    #[test]
    fn random_weights_are_deterministic_with_the_init_std() {
        let c = config("gemma3-270m").unwrap();
        let a = RandomWeights::new("x", &c, 7).get("model.layers.3.mlp.up_proj.weight").unwrap();
        let b = RandomWeights::new("x", &c, 7).get("model.layers.3.mlp.up_proj.weight").unwrap();
        assert_eq!(a, b);
        let std = (a.data.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.numel() as f64).sqrt();
        assert!((std - 0.02).abs() < 2e-4, "{std}");
        assert!(RandomWeights::new("x", &c, 7).get("model.norm.weight").unwrap().data.iter().all(|x| *x == 0.0));
        // Gemma 4's norms scale by `w`: ones, as transformers initialises them.
        let c = config("gemma4-26b-a4b").unwrap();
        let w = RandomWeights::new("x", &c, 7);
        for name in ["model.norm.weight", "model.layers.2.layer_scalar", "model.layers.2.router.per_expert_scale"] {
            assert!(w.get(name).unwrap().data.iter().all(|x| *x == 1.0), "{name}");
        }
    }
}
