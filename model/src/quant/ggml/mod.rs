//! ggml's quantized blocks (the tensor types of GGUF files: Q4_0…Q8_0, the k-quants, F16/BF16/F32), as
//! llama.cpp stores them: the element types and their block layouts (`types`), dequantization bit-identical
//! to ggml's reference (`dequant`), and a frozen weight kept in the file's own blocks (`weight`), which
//! `--quant gguf` multiplies by; and the other way, encoders byte-identical to ggml's reference quantizers
//! (`encode`, `kquants`) with llama-quantize's per-tensor choice of type (`preset`).
pub mod dequant;
pub mod encode;
mod kquants;
pub mod preset;
pub mod types;
pub mod weight;

pub use dequant::dequantize_blocks;
pub use encode::encode;
pub use preset::{Planner, Target};
pub use types::{GgmlType, SUPPORTED_TYPES};
pub use weight::GgmlWeight;
