//! GGUF, the file format of llama.cpp / ggml: the container (`file`), ggml's element types (`types`) and
//! their dequantization (`dequant`), a Gemma GGUF seen as a checkpoint under transformers' names (`model`)
//! and the tokenizer transformers builds from its metadata (`tokenizer`).
pub mod dequant;
pub mod file;
pub mod model;
pub mod tokenizer;
pub mod types;

pub use dequant::dequantize_blocks;
pub use file::{GgufFile, GgufValue, TensorInfo};
pub use model::{gguf_to_hf_name, GemmaArch, GgufModel, GGUF_NORM_SHIFT};
pub use types::{GgmlType, SUPPORTED_TYPES};

#[cfg(test)]
mod tests;
