//! How the frozen base is stored: NF4 (bitsandbytes' 4-bit NormalFloat with double quantization) and int8
//! (`LLM.int8()`'s row-wise absmax), packed on the host. Storage only; multiplying by them is `crate::ops`.
mod dynamic_map;
pub mod int8;
pub mod nf4;
pub mod packed;

pub use int8::Int8Weight;
pub use nf4::Nf4Weight;
pub use packed::{PackedWeight, QuantKind};
