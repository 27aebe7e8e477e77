//! Where weights come from, independent of the file format: a `WeightSource` hands out full-precision host
//! tensors under Hugging Face parameter names (`model.layers.0.self_attn.q_proj.weight`), in transformers'
//! conventions (row-major, `[out_features, in_features]` for linears, Gemma norms stored as `w`, not `1 + w`).
use crate::error::Result;
use crate::quant::ggml::GgmlWeight;
use crate::quant::{PackedWeight, QuantKind};

/// A dense f32 tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

pub trait WeightSource {
    /// The file or directory this source reads, for error messages.
    fn path(&self) -> &std::path::Path;
    /// Every tensor name, in Hugging Face naming.
    fn names(&self) -> Vec<String>;
    /// Shape without reading the data.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// The tensor converted to f32.
    fn get(&self, name: &str) -> Result<HostTensor>;
    /// A 2-D tensor in the blocks a GGUF file stores it in, for `--quant gguf`: `None` where the source keeps
    /// no such blocks (safetensors) or the tensor is not stored as it is used (GGUF norms, stored as `1 + w`).
    fn ggml(&self, name: &str) -> Result<Option<GgmlWeight>> {
        let _ = name;
        Ok(None)
    }
    /// The kind a pre-quantized checkpoint stores its linears in (a bitsandbytes `load_in_4bit` / `load_in_8bit`
    /// directory: `Nf4` / `Int8`); `None` for full-precision weights.
    fn stored_quant(&self) -> Option<QuantKind> {
        None
    }
    /// A weight as the checkpoint stores it quantized (bitsandbytes' NF4 or int8 state, taken as it is);
    /// `None` where it is stored in full precision. `get` gives the same tensor dequantized.
    fn packed(&self, name: &str) -> Result<Option<PackedWeight>> {
        let _ = name;
        Ok(None)
    }
    /// A 3-D `[experts, out, in]` tensor (Gemma 4's `experts.gate_up_proj` / `down_proj`) as one `[out, in]`
    /// weight per expert in the blocks a GGUF file stores it in, for `--quant gguf`; `None` where the source
    /// keeps no such blocks.
    fn ggml_experts(&self, name: &str) -> Result<Option<Vec<GgmlWeight>>> {
        let _ = name;
        Ok(None)
    }
}
