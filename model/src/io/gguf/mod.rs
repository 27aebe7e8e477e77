//! GGUF, the file format of llama.cpp / ggml: the container (`file`), a Gemma GGUF seen as a checkpoint under
//! transformers' names (`model`; Gemma 4's metadata in `gemma4`; what both share in `arch`) and the tokenizer transformers builds from
//! its metadata (`tokenizer`); a whole Gemma 1-3 model written as GGUF (`model_writer`, its tokenizer metadata
//! from a model directory in `tokenizer_meta`).
//! ggml's block types and their dequantization are storage, in `crate::quant::ggml`.
mod arch;
pub mod file;
mod gemma4;
pub mod model;
pub mod model_writer;
pub mod tokenizer;
mod tokenizer_meta;
pub mod writer;

pub use crate::quant::ggml::{dequantize_blocks, GgmlType, SUPPORTED_TYPES};
pub use file::{GgufFile, GgufValue, TensorInfo};
pub use model::{gguf_to_hf_name, GemmaArch, GgufModel, GGUF_NORM_SHIFT};
pub use writer::GgufWriter;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_gemma4;
