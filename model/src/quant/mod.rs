//! How the frozen base is stored: NF4 (bitsandbytes' 4-bit NormalFloat with double quantization), int8
//! (`LLM.int8()`'s row-wise absmax), or a GGUF file's own ggml blocks, packed on the host. Storage only;
//! multiplying by them is `crate::ops`.
mod dynamic_map;
pub mod ggml;
pub mod int8;
pub mod nf4;
pub mod packed;

pub use ggml::GgmlWeight;
pub use int8::Int8Weight;
pub use nf4::Nf4Weight;
pub use packed::{PackedWeight, QuantKind};
