//! A packed frozen weight (NF4 or int8) and the choice of how the frozen base is stored (`QuantKind`).
//! Storage only: the products by these weights are ops of the backend (`crate::ops::kernels`).
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorData;

use super::ggml::GgmlWeight;
use super::int8::Int8Weight;
use super::nf4::Nf4Weight;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantKind {
    #[default]
    None,
    Nf4,
    Int8,
    /// Keep a GGUF model's projections in the file's own blocks (a GGUF model only).
    Gguf,
}

impl std::str::FromStr for QuantKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(QuantKind::None),
            "nf4" => Ok(QuantKind::Nf4),
            "int8" => Ok(QuantKind::Int8),
            "gguf" => Ok(QuantKind::Gguf),
            other => Err(format!("unknown quantization `{other}` (expected none, nf4, int8 or gguf)")),
        }
    }
}

/// A packed frozen weight that can rebuild its dense `[out, in]` form on demand.
#[derive(Debug, Clone)]
pub enum PackedWeight {
    Nf4(Nf4Weight),
    Int8(Int8Weight),
    /// A GGUF file's blocks as stored (`--quant gguf`).
    Ggml(GgmlWeight),
}

impl PackedWeight {
    pub fn shape(&self) -> [usize; 2] {
        match self {
            PackedWeight::Nf4(w) => w.shape,
            PackedWeight::Int8(w) => w.shape,
            PackedWeight::Ggml(w) => w.shape,
        }
    }
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            PackedWeight::Nf4(w) => w.dequantize(),
            PackedWeight::Int8(w) => w.dequantize(),
            PackedWeight::Ggml(w) => w.dequantize(),
        }
    }
    pub fn resident_bytes(&self) -> usize {
        match self {
            PackedWeight::Nf4(w) => w.resident_bytes(),
            PackedWeight::Int8(w) => w.resident_bytes(),
            PackedWeight::Ggml(w) => w.resident_bytes(),
        }
    }
    /// The dense weight `[out, in]` as a backend tensor.
    pub fn to_primitive<B: Backend>(&self, device: &B::Device) -> FloatTensor<B> {
        let data = TensorData::new(self.dequantize(), self.shape().to_vec());
        B::float_from_data(data, device)
    }
}
