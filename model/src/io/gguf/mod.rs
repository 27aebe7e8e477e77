//! GGUF, the file format of llama.cpp / ggml: the container (`file`), a Gemma GGUF seen as a checkpoint under
//! transformers' names (`model`; Gemma 4's metadata in `gemma4`; what both share in `arch`) and the tokenizer transformers builds from
//! its metadata (`tokenizer`).
//! ggml's block types and their dequantization are storage, in `crate::quant::ggml`.
mod arch;
pub mod file;
mod gemma4;
pub mod model;
pub mod tokenizer;
pub mod writer;

pub use crate::quant::ggml::{dequantize_blocks, GgmlType, SUPPORTED_TYPES};
pub use file::{GgufFile, GgufValue, TensorInfo};
pub use model::{gguf_to_hf_name, GemmaArch, GgufModel, GGUF_NORM_SHIFT};
pub use writer::GgufWriter;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_gemma4;
