//! `lapidary-model`: Gemma 1/2/3 in Burn with a frozen dense/NF4/int8 base and LoRA adapters.
//!
//! Dependencies point one way, down this list (tests/module_graph.rs checks that no module reaches itself):
//!
//! ```text
//! error, config, dtype, mask   the vocabulary: errors, config.json, the compute dtype, attention masks
//! quant/                       how the frozen base is stored: NF4, int8, ggml blocks (storage only)
//! cpu/                         host kernels (gemm front, products by packed weights as stored, softmax rows,
//!                              tiled attention, LM-head loss, RoPE, GeGLU)
//! io/                          weights in and out: safetensors dirs, GGUF (+ its tokenizer, a writer), HF dirs
//! ops/                         the backend traits (Kernels, GemmaBackend), one reference file per op,
//!                              the CPU backends' and Autodiff's implementations
//! cube/, cuda/                 the same ops as CubeCL kernels (any CubeCL runtime), cuBLAS on CUDA
//! backends                     the concrete backend types the CLI and tests instantiate
//! nn/                          layers: the token table, FrozenLinear, LoraLinear, RmsNorm, RoPE tables,
//!                              attention, KV cache, MLP
//! gemma/                       the model: decoder, load, loss, generate, recompute (gradient checkpointing)
//! peft/                        PEFT adapters: read/write, merge, as llama.cpp GGUF adapters
//! testing/                     helpers for tests (feature `testing`; compiled into the library's own tests)
//! ```
//!
//! Where to start: the NF4 product is `ops::frozen` (reference) and `quant::nf4` (storage); the LoRA layer
//! `nn::lora` and its op `ops::lora`; attention `ops::attention` (reference), `cpu::attention` (CPU kernel),
//! `cube::attention` (GPU); the model's forward `gemma::model`.
pub mod backends;
pub mod config;
pub mod cpu;
#[cfg(feature = "cube")]
pub mod cube;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod gemma;
pub mod io;
pub mod mask;
pub mod nn;
pub mod ops;
pub mod peft;
pub mod quant;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{Arch, GemmaConfig, LayerType};
pub use error::{ModelError, Result};
pub use gemma::model::{Gemma, TokenBatch};
pub use io::files::ModelFiles;
pub use io::weights::{HostTensor, WeightSource};
pub use nn::kv_cache::KvCache;
pub use ops::gemma_backend::GemmaBackend;
