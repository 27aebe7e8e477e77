//! llama-quantize's choice of a type per tensor (`llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp),
//! for Gemma models: a single type for every quantizable tensor (`llama-quantize --pure TYPE`) or the presets
//! Q4_K_M / Q5_K_M, each with llama.cpp's fallback for rows that are not whole blocks of the chosen type
//! (Gemma 3 270M's hidden size, 640, is not a multiple of 256: Q4_K becomes Q5_0, Q5_K Q5_1, Q6_K Q8_0, Q2_K and
//! Q3_K Q4_0). The presets count attn_v and ffn_down tensors in llama.cpp's processing order (by layer number,
//! then name), so the whole plan is made at once in [`Planner::new`].
use std::collections::HashMap;

use super::types::GgmlType;

/// What to quantize to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One type for every quantizable tensor, as `llama-quantize --pure TYPE` (with its fallbacks).
    Single(GgmlType),
    /// llama.cpp's Q4_K_M mix: Q4_K, with attn_v and ffn_down of some layers in Q6_K and a tied token
    /// embedding in Q6_K (Q8_0 when its rows are not whole 256-blocks).
    Q4KM,
    /// The Q5_K_M mix: as Q4_K_M with Q5_K as the base type.
    Q5KM,
}

/// The single types [`Target::Single`] takes: those `encode::encode` writes.
const SINGLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The model architectures (GGUF `general.architecture`) whose rules this follows; others have exceptions
/// (Falcon, MoE expert counts, …) not ported.
pub const ARCHS: &[&str] = &["gemma", "gemma2", "gemma3"];

impl Target {
    /// `Q4_K_M`, `Q5_K_M` or a type name (`Q8_0`, `q4_k`, `F16`, …), as llama-quantize spells them.
    /// `Q4_K` / `Q5_K` are the single type: llama-quantize's aliases for the presets differ only without --pure.
    pub fn from_name(name: &str) -> Result<Target, String> {
        let up = name.to_ascii_uppercase();
        match up.as_str() {
            "Q4_K_M" => return Ok(Target::Q4KM),
            "Q5_K_M" => return Ok(Target::Q5KM),
            _ => {}
        }
        SINGLE.iter().find(|t| t.to_string() == up).map(|t| Target::Single(*t)).ok_or_else(|| {
            let names: Vec<String> = SINGLE.iter().map(|t| t.to_string()).collect();
            format!("unknown quantization {name:?}: expected Q4_K_M, Q5_K_M or one of {}", names.join(", "))
        })
    }

    /// The type llama-quantize starts every quantizable tensor from (`llama_ftype_get_default_type`).
    fn default_type(self) -> GgmlType {
        match self {
            Target::Single(t) => t,
            Target::Q4KM => GgmlType::Q4_K,
            Target::Q5KM => GgmlType::Q5_K,
        }
    }
}

/// The planned type of every tensor of one model.
#[derive(Debug, Clone)]
pub struct Planner {
    types: HashMap<String, GgmlType>,
    n_fallback: usize,
}

/// llama.cpp's broad tensor categories (`tensor_get_category`), checked in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") || name.contains("attn_kv_b.weight") || name.contains("attn_v.weight") {
        // category_is_attn_v: these three share the attn_v rules (and counter).
        Category::AttnV
    } else if name.contains("attn_k.weight")
        || name.contains("attn_q.weight")
        || name.contains("attn_output.weight")
        || name.contains("ffn_up")
        || name.contains("ffn_gate")
    {
        Category::Other
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// `ggml_n_dims`: dimensions up to the last one larger than 1 (a `[1, n]` tensor is 1-D).
fn n_dims(shape: &[usize]) -> usize {
    shape.iter().rev().enumerate().filter(|(_, &n)| n > 1).map(|(i, _)| i + 1).max().unwrap_or(1)
}

/// `tensor_allows_quantization` for default parameters, the name rules that can apply to a Gemma file.
fn allows_quantization(name: &str, shape: &[usize]) -> bool {
    n_dims(shape) >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("altup")
        && !name.contains("laurel")
        && !name.contains("per_layer_model_proj")
}

/// `blk.N.` → N, else -1: llama.cpp's `weight_name_comparer` orders by this, then by name.
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| {
            let digits: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .unwrap_or(-1)
}

/// The order llama-quantize processes and writes tensors in (its `weight_name_comparer`: layer number, then
/// name; tensors outside `blk.N.` first), as indices into `names`.
pub fn llama_quantize_order(names: &[&str]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| (layer_of(names[a]), names[a].as_bytes()).cmp(&(layer_of(names[b]), names[b].as_bytes())));
    order
}

fn block_size(t: GgmlType) -> usize {
    t.block_layout().map(|(b, _)| b).unwrap_or(1)
}

fn is_quantized(t: GgmlType) -> bool {
    !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// `use_more_bits`: the first and last eighth of the layers and every third in between.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

impl Planner {
    /// Plans every tensor of a model: `arch` is the GGUF architecture, `n_layer` its block count, `tensors` the
    /// GGUF tensor names with row-major shapes (`[rows, cols]`, ggml's `ne` reversed). The head counts
    /// llama.cpp also consults matter only for presets not offered here (Q2_K, Q3_K_*, IQ*), so none is taken.
    pub fn new(target: Target, arch: &str, n_layer: usize, tensors: &[(String, Vec<usize>)]) -> Result<Self, String> {
        if !ARCHS.contains(&arch) {
            return Err(format!(
                "quantizing architecture {arch:?} is not supported: llama-quantize's per-tensor rules are \
                 ported for {}",
                ARCHS.join(", ")
            ));
        }
        if let Target::Single(t) = target {
            if !SINGLE.contains(&t) {
                return Err(format!("quantizing to {t} is not supported"));
            }
        }
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        let order = llama_quantize_order(&names).into_iter().map(|i| &tensors[i]);
        let n_attention_wv = tensors.iter().filter(|(n, _)| category(n) == Category::AttnV).count() as i64;
        let tied = !tensors.iter().any(|(n, _)| category(n) == Category::Output);
        let n_ffn_down = n_layer as i64;
        let (mut i_attention_wv, mut i_ffn_down) = (0i64, 0i64);
        let mut n_fallback = 0;
        let mut types = HashMap::with_capacity(tensors.len());
        let default_type = target.default_type();
        for (name, shape) in order {
            if types.contains_key(name) {
                return Err(format!("tensor {name} is listed twice"));
            }
            let cols = shape.last().copied().unwrap_or(1);
            if !allows_quantization(name, shape) {
                types.insert(name.clone(), GgmlType::F32);
                continue;
            }
            let mut t = default_type;
            if !is_quantized(t) {
                types.insert(name.clone(), t);
                continue;
            }
            if matches!(target, Target::Q4KM | Target::Q5KM) {
                // llama_tensor_get_type_impl, the branches these two presets reach for a dense Gemma.
                let cat = category(name);
                if cat == Category::Output || (tied && cat == Category::TokenEmbd) {
                    if !cols.is_multiple_of(block_size(t)) {
                        t = GgmlType::Q8_0;
                    } else if t != GgmlType::Q8_0 {
                        t = GgmlType::Q6_K;
                    }
                } else if cat == Category::AttnV {
                    if use_more_bits(i_attention_wv, n_attention_wv) {
                        t = GgmlType::Q6_K;
                    }
                    i_attention_wv += 1;
                } else if cat == Category::FfnDown {
                    // Without experts llama.cpp takes the counter, not the name's layer, as the layer.
                    if use_more_bits(i_ffn_down, n_ffn_down) {
                        t = GgmlType::Q6_K;
                    }
                    i_ffn_down += 1;
                }
            }
            // tensor_type_fallback: rows that are not whole blocks of the chosen type.
            if !cols.is_multiple_of(block_size(t)) {
                n_fallback += 1;
                t = match t {
                    GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
                    GgmlType::Q4_K => GgmlType::Q5_0,
                    GgmlType::Q5_K => GgmlType::Q5_1,
                    GgmlType::Q6_K => GgmlType::Q8_0,
                    other => other,
                };
                if !cols.is_multiple_of(block_size(t)) {
                    t = GgmlType::F16;
                }
            }
            types.insert(name.clone(), t);
        }
        Ok(Planner { types, n_fallback })
    }

    /// The type llama-quantize gives this tensor; what it leaves unquantized (1-D tensors, norms) stays F32,
    /// the type of the f32 GGUF llama-quantize reads. `Err` for a tensor that was not in [`Planner::new`]'s list.
    pub fn tensor_type(&self, name: &str) -> Result<GgmlType, String> {
        self.types.get(name).copied().ok_or_else(|| format!("tensor {name} was not planned for quantization"))
    }

    /// How many tensors fell back to another type for their row width (llama-quantize warns about each).
    pub fn n_fallback(&self) -> usize {
        self.n_fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_order_follows_llama_cpp() {
        assert_eq!(Target::from_name("q4_k_m").unwrap(), Target::Q4KM);
        assert_eq!(Target::from_name("Q6_K").unwrap(), Target::Single(GgmlType::Q6_K));
        assert!(Target::from_name("IQ4_XS").unwrap_err().contains("IQ4_XS"));
        assert_eq!(layer_of("blk.12.attn_v.weight"), 12);
        assert_eq!(layer_of("token_embd.weight"), -1);
        assert_eq!(n_dims(&[1, 640]), 1);
        assert_eq!(n_dims(&[256, 640]), 2);
        assert!(Planner::new(Target::Q4KM, "llama", 1, &[]).unwrap_err().contains("llama"));
    }
}
