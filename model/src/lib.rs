//! lapidary-model: Gemma 1/2/3 in Burn with a frozen dense/NF4/int8 base and LoRA adapters.
pub mod adapter;
pub mod backend;
pub mod checkpointing;
pub mod compute;
pub mod config;
pub mod cpu;
#[cfg(feature = "cube")]
pub mod cube;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decoder;
pub mod error;
pub mod fused_attention;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod layers;
pub mod lm_head_loss;
pub mod load;
pub mod loss;
pub mod merge;
pub mod ops;
pub mod quant;
pub mod safetensors_dir;
pub mod shapes;
pub mod source;
pub mod weights;

pub use config::{Arch, GemmaConfig, LayerType};
pub use decoder::{Gemma, KvCache, TokenBatch};
pub use error::{ModelError, Result};
pub use source::ModelFiles;
pub use weights::{HostTensor, WeightSource};
