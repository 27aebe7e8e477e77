//! A PEFT LoRA adapter as the GGUF adapter llama.cpp loads with `--lora`: what its `convert_lora_to_gguf.py`
//! writes from the same adapter directory. Metadata `general.architecture`, `general.type = adapter`,
//! `adapter.type = lora`, `general.name`, `adapter.lora.alpha`, `general.quantization_version`; tensors in the
//! adapter file's (sorted) order, named after the base GGUF's (`blk.0.attn_q.weight.lora_a`, `.lora_b`), with
//! PEFT's row-major data as is (`lora_a` `ne = [in, r]`, `lora_b` `ne = [r, out]`).
//!
//! rsLoRA: llama.cpp scales an adapter by `alpha / r`; PEFT's rsLoRA by `alpha / √r`. We store
//! `alpha · √r`, so llama.cpp applies PEFT's scale (the converter copies `lora_alpha` as it is, which makes
//! an rsLoRA adapter √r times too weak in llama.cpp).
//!
//! Types (`--dtype`): f32, f16, bf16 for every tensor; q8_0 where a row is whole blocks of 32, else f16 (as
//! the converter falls back: a `lora_b`'s rows are `r` long).
use std::path::Path;

use super::adapter::read_adapter_files;
use crate::config::Arch;
use crate::error::{ModelError, Result};
use crate::io::gguf::file::GgufValue;
use crate::io::gguf::writer::GgufWriter;
use crate::quant::ggml::encode::encode;
use crate::quant::ggml::GgmlType;

/// The GGUF adapter for the adapter in `dir` on a base of architecture `arch`, its tensors in `dtype`.
pub fn adapter_to_gguf(dir: &Path, arch: Arch, dtype: GgmlType) -> Result<GgufWriter> {
    let (cfg, tensors) = read_adapter_files(dir)?;
    let st_path = dir.join("adapter_model.safetensors");
    if cfg.use_dora {
        // llama.cpp's adapters are A/B pairs only: its convert_lora_to_gguf.py stops at a magnitude tensor.
        return Err(ModelError::Config {
            path: dir.join("adapter_config.json"),
            key: "use_dora".into(),
            msg: "a DoRA adapter has no llama.cpp GGUF adapter form (its magnitude vectors are not LoRA \
                  matrices); merge it into the model with `lapidary merge` instead"
                .into(),
        });
    }
    let mut w = GgufWriter::new();
    let s = |v: &str| GgufValue::String(v.to_owned());
    w.set("general.architecture", s(arch.gguf_name()));
    w.set("general.type", s("adapter"));
    w.set("adapter.type", s("lora"));
    let dir_name = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    w.set("general.name", s(&title_case(dir_name.as_deref().unwrap_or("adapter"))));
    let alpha = if cfg.use_rslora { cfg.lora_alpha * (cfg.r as f64).sqrt() } else { cfg.lora_alpha };
    w.set("adapter.lora.alpha", GgufValue::F32(alpha as f32));
    w.set("general.quantization_version", GgufValue::U32(2));
    for (key, (shape, data)) in &tensors {
        let name = gguf_lora_name(key).ok_or_else(|| {
            ModelError::format(&st_path, format!("tensor `{key}` is not a LoRA matrix of a Gemma projection"))
        })?;
        let [rows, cols] = shape[..] else {
            return Err(ModelError::format(&st_path, format!("tensor `{key}` has shape {shape:?}, expected 2-D")));
        };
        let t = if dtype == GgmlType::Q8_0 && !cols.is_multiple_of(32) { GgmlType::F16 } else { dtype };
        let bytes = encode(t, data, cols).map_err(|msg| ModelError::format(&st_path, format!("`{key}`: {msg}")))?;
        w.add_tensor(&name, t, &[rows, cols], bytes);
    }
    if tensors.is_empty() {
        return Err(ModelError::format(&st_path, "no LoRA tensors"));
    }
    Ok(w)
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` → `blk.3.attn_q.weight.lora_a`.
fn gguf_lora_name(peft_key: &str) -> Option<String> {
    let rest = peft_key.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok().filter(|l| l.to_string() == layer)?;
    let (module, ab) = rest.rsplit_once(".lora_")?;
    let ab = match ab {
        "A.weight" => "a",
        "B.weight" => "b",
        _ => return None,
    };
    let base = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{base}.weight.lora_{ab}"))
}

/// Python's `str.title()` on ASCII names, which the converter applies to the adapter directory's name
/// (`adapter_rslora` → `Adapter_Rslora`).
fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_letter = false;
    for c in s.chars() {
        out.extend(if prev_letter { c.to_lowercase().collect::<Vec<_>>() } else { c.to_uppercase().collect() });
        prev_letter = c.is_alphabetic();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_title_case() {
        let k = "base_model.model.model.layers.12.mlp.down_proj.lora_B.weight";
        assert_eq!(gguf_lora_name(k).as_deref(), Some("blk.12.ffn_down.weight.lora_b"));
        assert_eq!(
            gguf_lora_name("base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight").unwrap(),
            "blk.0.attn_output.weight.lora_a"
        );
        assert_eq!(gguf_lora_name("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(gguf_lora_name("base_model.model.model.layers.01.mlp.up_proj.lora_A.weight"), None);
        assert_eq!(title_case("adapter_rslora"), "Adapter_Rslora");
        assert_eq!(title_case("my-adapter2x"), "My-Adapter2X");
    }
}
