//! ggml's quantized blocks (the tensor types of GGUF files: Q4_0…Q8_0, the k-quants, F16/BF16/F32), as
//! llama.cpp stores them: the element types and their block layouts (`types`), dequantization bit-identical
//! to ggml's reference (`dequant`), and a frozen weight kept in the file's own blocks (`weight`), which
//! `--quant gguf` multiplies by.
pub mod dequant;
pub mod encode;
pub mod types;
pub mod weight;

pub use dequant::dequantize_blocks;
pub use types::{GgmlType, SUPPORTED_TYPES};
pub use weight::GgmlWeight;
