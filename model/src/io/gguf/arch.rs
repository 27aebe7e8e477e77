//! What the GGUF reader's two halves share: which Gemma generation a file holds, where each Hugging Face tensor's
//! values come from, and how an f32 metadata value is written back to JSON. Its own module so that `model`
//! (Gemma 1-4) and `gemma4` (Gemma 4's metadata) both depend on it rather than on each other.
/// The offset GGUF Gemma files add to RMSNorm weights (`1 + w`); subtracted on load.
pub const GGUF_NORM_SHIFT: f32 = 1.0;

/// Which Gemma generation a GGUF holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmaArch {
    Gemma,
    Gemma2,
    Gemma3,
    Gemma4,
}

impl GemmaArch {
    pub(super) fn from_gguf(arch: &str) -> Option<GemmaArch> {
        match arch {
            "gemma" => Some(GemmaArch::Gemma),
            "gemma2" => Some(GemmaArch::Gemma2),
            "gemma3" => Some(GemmaArch::Gemma3),
            "gemma4" => Some(GemmaArch::Gemma4),
            _ => None,
        }
    }
    /// The GGUF architecture string (metadata key prefix).
    pub fn gguf_name(self) -> &'static str {
        match self {
            GemmaArch::Gemma => "gemma",
            GemmaArch::Gemma2 => "gemma2",
            GemmaArch::Gemma3 => "gemma3",
            GemmaArch::Gemma4 => "gemma4",
        }
    }
    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            GemmaArch::Gemma => "gemma",
            GemmaArch::Gemma2 => "gemma2",
            GemmaArch::Gemma3 => "gemma3_text",
            GemmaArch::Gemma4 => "gemma4_text",
        }
    }
    pub(super) fn hf_class(self) -> &'static str {
        match self {
            GemmaArch::Gemma => "GemmaForCausalLM",
            GemmaArch::Gemma2 => "Gemma2ForCausalLM",
            GemmaArch::Gemma3 => "Gemma3ForCausalLM",
            GemmaArch::Gemma4 => "Gemma4ForCausalLM",
        }
    }
    /// Whether the converter stores RMSNorm weights as `1 + w` (Gemma 1-3, not Gemma 4).
    pub fn shifts_norms(self) -> bool {
        self != GemmaArch::Gemma4
    }
}

/// Where the values of one HF tensor come from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// One GGUF tensor; `shift`: subtract [`GGUF_NORM_SHIFT`] after dequantizing.
    Tensor { gguf: String, shift: bool },
    /// Gemma 4 experts stored as two tensors, `ffn_gate_exps` and `ffn_up_exps` (llama.cpp's loader takes
    /// them in place of the fused `ffn_gate_up_exps`): HF's `experts.gate_up_proj` holds each expert's gate
    /// rows, then its up rows.
    GateUp { gate: String, up: String },
    /// A Gemma 4 `layer_scalar` the file does not store: llama.cpp's `layer_output_scale` is optional and a
    /// layer without one is not scaled, i.e. scaled by 1.
    One,
}

/// An f32 metadata value as the f64 its shortest decimal spelling denotes (`1e-6f32` -> `1e-06`), which is
/// what the original `config.json` held before the converter narrowed it.
pub(crate) fn f32_to_json_f64(x: f32) -> f64 {
    format!("{x}").parse::<f64>().unwrap_or(x as f64)
}
