//! Published Gemma shapes with random weights, for benchmarks: the speed and memory of a training step depend
//! on the shapes, not on the values, so `lapidary bench --model gemma-2b` measures a 2B model without its
//! (undownloadable here) weights. The configs are those of the published checkpoints, in transformers 4.x's
//! `config.json` dialect, read by the same parser as real checkpoints; scripts/peers/hf_qlora_bench.py
//! (transformers + PEFT + bitsandbytes) builds its models from the same numbers.
use std::path::Path;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::config::GemmaConfig;
use crate::error::{ModelError, Result};
use crate::io::weights::{HostTensor, WeightSource};

/// Names `lapidary bench --model` accepts.
pub const NAMES: [&str; 5] = ["gemma-2b", "gemma-7b", "gemma2-2b", "gemma3-270m", "gemma3-1b"];

/// The published `config.json` of a named shape.
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
        _ => return None,
    };
    Some(v)
}

/// The parsed config of a named shape.
pub fn config(name: &str) -> Option<GemmaConfig> {
    let v = config_json(name)?;
    Some(GemmaConfig::from_json(&v, Path::new(name)).expect("the built-in shapes are valid configs"))
}

/// Every tensor a Gemma checkpoint of `config` has, with random values: linears and embeddings uniform with
/// transformers' init std (0.02), norm weights zero (transformers' init). Deterministic per name and seed.
pub struct RandomWeights {
    label: std::path::PathBuf,
    shapes: Vec<(String, Vec<usize>)>,
    seed: u64,
}

impl RandomWeights {
    pub fn new(name: &str, config: &GemmaConfig, seed: u64) -> Self {
        let c = config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h])];
        shapes.push(("model.norm.weight".to_string(), vec![h]));
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            shapes.push((p("self_attn.q_proj"), vec![c.num_attention_heads * d, h]));
            shapes.push((p("self_attn.k_proj"), vec![c.num_key_value_heads * d, h]));
            shapes.push((p("self_attn.v_proj"), vec![c.num_key_value_heads * d, h]));
            shapes.push((p("self_attn.o_proj"), vec![h, c.num_attention_heads * d]));
            shapes.push((p("mlp.gate_proj"), vec![c.intermediate_size, h]));
            shapes.push((p("mlp.up_proj"), vec![c.intermediate_size, h]));
            shapes.push((p("mlp.down_proj"), vec![h, c.intermediate_size]));
            for n in ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm"] {
                shapes.push((p(n), vec![h]));
            }
            shapes.push((p("post_feedforward_layernorm"), vec![h]));
            shapes.push((p("self_attn.q_norm"), vec![d]));
            shapes.push((p("self_attn.k_norm"), vec![d]));
        }
        Self { label: format!("<random {name}>").into(), shapes, seed }
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
            return Ok(HostTensor::new(shape, vec![0.0; n]));
        }
        // Uniform on ±0.02·√3 has std 0.02. Chunks are seeded independently so the draw is parallel and
        // still deterministic.
        let bound = 0.02f32 * 3f32.sqrt();
        let key =
            name.bytes().fold(self.seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut data = vec![0f32; n];
        data.par_chunks_mut(1 << 20).enumerate().for_each(|(i, chunk)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(key.wrapping_add(i as u64));
            chunk.iter_mut().for_each(|x| *x = rng.random_range(-bound..bound));
        });
        Ok(HostTensor::new(shape, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes' parameter counts are those of the published models (from their model cards / HF hub:
    /// Gemma 2B 2.51B, 7B 8.54B, Gemma 2 2B 2.61B, Gemma 3 1B 1.00B, Gemma 3 270M 268M).
    #[test]
    fn parameter_counts_match_the_published_models() {
        for (name, billions) in [
            ("gemma-2b", 2.506),
            ("gemma-7b", 8.538),
            ("gemma2-2b", 2.614),
            ("gemma3-1b", 0.9999),
            ("gemma3-270m", 0.268),
        ] {
            let c = config(name).unwrap();
            let w = RandomWeights::new(name, &c, 0);
            let gemma1 = c.arch == crate::config::Arch::Gemma;
            let n: usize = w
                .shapes
                .iter()
                // Gemma 1 has no pre/post-feedforward norms, no Gemma 3 q/k norms: counted only where they exist.
                .filter(|(k, _)| {
                    let extra_norm = k.contains("feedforward_layernorm");
                    let qk = k.contains("q_norm") || k.contains("k_norm");
                    !(gemma1 && extra_norm || qk && c.arch != crate::config::Arch::Gemma3)
                })
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            let got = n as f64 / 1e9;
            assert!((got - billions).abs() / billions < 0.002, "{name}: {got:.4}B vs published {billions}B");
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
    }
}
